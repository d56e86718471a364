//! What the dashboard gives back, loaded into the programs people load it
//! into: every blocklist into dnsmasq, unbound-checkconf and
//! named-checkzone, every feed into a real feed parser (Python's
//! feedparser), each model's MUD file into yanglint; all on the demo fleet,
//! whose Redmi 1S finding must lead the home page and be in each of them.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use leakwatch::demo::run_pipeline;
use leakwatch_collector::server::{ServeConfig, Server};
use leakwatch_dashboard::aggregate::Finding;

use crate::dashboard::get;

/// The demo fleet through agent and collector; the published findings.
async fn demo(dir: &Path) -> (Server, Vec<Finding>) {
    let server = Server::start(ServeConfig::loopback(dir.join("collector"))).await.expect("start");
    run_pipeline(&server, dir, None, None).await.expect("the demo fleet through agent and collector");
    let findings = server.dashboard.published().snapshot.findings.clone();
    (server, findings)
}

async fn fetch(http: SocketAddr, path: &str) -> String {
    let (status, head, body) = get(http, path).await;
    let body = String::from_utf8(body).expect("utf-8");
    assert_eq!(status, 200, "GET {path}\n{body}");
    assert!(
        head.contains("link: <https://creativecommons.org/licenses/by/4.0/>; rel=\"license\""),
        "GET {path}: {head}"
    );
    body
}

/// Runs a consumer on `file`; its output when it accepts it.
#[track_caller]
fn consume(program: &str, args: &[&str], package: &str) -> String {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| {
        panic!("{program}: {e}: run `make test` (it installs {package}), or skip with `-- --skip consumers_`")
    });
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{program} {args:?} refused it:\n{text}");
    text
}

/// The Redmi 1S finding the demo fleet must put first.
fn lead(findings: &[Finding]) -> &Finding {
    let f = findings.first().expect("findings");
    assert_eq!((f.vendor.as_str(), f.model.as_str()), ("Xiaomi", "Redmi 1S"), "the lead finding: {}", f.claim);
    assert_eq!(f.rule, "consent_off_traffic", "{}", f.claim);
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_load_every_blocklist_and_feed_of_the_demo_fleet() {
    let python = crate::set_by_make_test("LEAKWATCH_TEST_PYTHON", " (it creates the venv)", "consumers_");
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, findings) = demo(dir.path()).await;
    let http = server.http_addr;
    let redmi = lead(&findings);
    let evidence = format!("/findings/{}", redmi.id);

    // The home page leads with it, as a readable entry with its links.
    let home = fetch(http, "/").await;
    let first = home.split("<ol class=\"entries\">").nth(1).and_then(|e| e.split("</li>").next()).expect("entries");
    assert!(first.contains(&evidence) && first.contains("Redmi 1S"), "{first}");
    for link in ["/models/Xiaomi/Redmi%201S", "#sql", "/lists/findings/", "/feeds/models/Xiaomi/Redmi%201S.atom"] {
        assert!(first.contains(link), "the lead entry lacks {link}: {first}");
    }

    // Every list of every scope that holds it loads into its consumer.
    let scopes = [
        "/lists".to_string(),
        "/lists/vendors/Xiaomi".into(),
        "/lists/models/Xiaomi/Redmi%201S".into(),
        format!("/lists{evidence}"),
    ];
    let files = dir.path().join("lists");
    std::fs::create_dir_all(&files).expect("dir");
    for scope in &scopes {
        // Where a list's entry covers subdomains, the Redmi 1S's finding
        // about xiaomi.com at boot covers its finding's host name.
        let wide = if scope.starts_with("/lists/findings/") { "api.account.xiaomi.com" } else { "xiaomi.com" };
        for format in leakwatch_dashboard::lists::ListFormat::ALL {
            let path = format!("{scope}/{}", format.file());
            let body = fetch(http, &path).await;
            assert!(
                body.contains("Licence: CC BY 4.0") && body.contains(&format!("Source: http://{http}{path}")),
                "{path}:\n{body}"
            );
            assert!(
                body.contains(&format!("http://{http}{evidence}")),
                "{path} does not name the Redmi 1S finding:\n{body}"
            );
            let file = files.join(path.replace('/', "_").replace("%20", "-"));
            std::fs::write(&file, &body).expect("write");
            let file = file.to_str().expect("utf-8 path");
            let entries: Vec<&str> = body.lines().filter(|l| !l.starts_with(['#', ';']) && !l.is_empty()).collect();
            match format.file() {
                "dnsmasq.conf" => {
                    let out = consume("/usr/sbin/dnsmasq", &["--test", &format!("--conf-file={file}")], "dnsmasq-base");
                    assert!(out.contains("syntax check OK"), "{out}");
                    assert!(entries.contains(&format!("address=/{wide}/").as_str()), "{path}:\n{body}");
                }
                "unbound.conf" => {
                    consume("/usr/sbin/unbound-checkconf", &[file], "unbound");
                    assert!(
                        entries.contains(&format!("    local-zone: \"{wide}.\" always_nxdomain").as_str()),
                        "{path}:\n{body}"
                    );
                }
                "rpz.zone" => {
                    let out = consume("/usr/bin/named-checkzone", &["rpz.leakwatch", file], "bind9-utils");
                    assert!(out.contains("OK"), "{out}");
                    assert!(
                        entries.contains(&format!("{wide} CNAME .").as_str())
                            && entries.contains(&format!("*.{wide} CNAME .").as_str()),
                        "{path}:\n{body}"
                    );
                }
                "hosts.txt" => {
                    for line in &entries {
                        let name = line.strip_prefix("0.0.0.0 ").unwrap_or_else(|| panic!("{path}: {line:?}"));
                        assert!(leakwatch_dashboard::lists::is_listable(name), "{path}: {line:?}");
                    }
                    assert!(entries.contains(&"0.0.0.0 api.account.xiaomi.com"), "{path}:\n{body}");
                }
                _ => {
                    assert!(entries.iter().all(|l| leakwatch_dashboard::lists::is_listable(l)), "{path}:\n{body}");
                    assert!(entries.contains(&"api.account.xiaomi.com"), "{path}:\n{body}");
                }
            }
        }
    }
    // The whole fleet's RPZ lists the unnamed network by address.
    let rpz = fetch(http, "/lists/rpz.zone").await;
    assert!(rpz.contains("24.0.186.212.91.rpz-ip CNAME ."), "{rpz}");
    assert!(rpz.contains("Not listed here: tcp/8886 (unnamed) has no name to block"), "{rpz}");

    // Feeds, parsed by feedparser: well formed, licensed, with the finding
    // under its permanent address as id.
    let feeds = ["/feeds/findings.atom", "/feeds/vendors/Xiaomi.atom", "/feeds/models/Xiaomi/Redmi%201S.atom"];
    let parse = |files: Vec<std::path::PathBuf>| {
        let script = "import feedparser, json, sys\n\
                      out = []\n\
                      for path in sys.argv[1:]:\n\
                      \x20   d = feedparser.parse(path)\n\
                      \x20   out.append({'bozo': bool(d.bozo), 'error': str(d.get('bozo_exception', '')), 'version': d.version,\n\
                      \x20               'title': d.feed.get('title', ''), 'rights': d.feed.get('rights', ''),\n\
                      \x20               'entries': [{'id': e.id, 'title': e.title, 'updated': e.updated, 'link': e.link} for e in d.entries]})\n\
                      print(json.dumps(out))\n";
        let out = Command::new(&python).arg("-c").arg(script).args(&files).output().expect("python");
        assert!(out.status.success(), "feedparser: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).expect("JSON")
    };
    let mut paths = Vec::new();
    for (i, feed) in feeds.iter().enumerate() {
        let body = fetch(http, feed).await;
        let file = files.join(format!("feed-{i}.atom"));
        std::fs::write(&file, body).expect("write");
        paths.push(file);
    }
    let parsed = parse(paths.clone());
    let url = format!("http://{http}{evidence}");
    for (feed, d) in feeds.iter().zip(&parsed) {
        assert_eq!(d["bozo"], false, "{feed}: {}", d["error"]);
        assert_eq!(d["version"], "atom10", "{feed}");
        assert!(d["rights"].as_str().is_some_and(|r| r.contains("CC BY 4.0")), "{feed}: {d}");
        let entry = d["entries"].as_array().expect("entries").iter().find(|e| e["id"] == url.as_str());
        let entry = entry.unwrap_or_else(|| panic!("{feed} lacks the Redmi 1S finding: {d}"));
        assert_eq!(entry["link"], url.as_str());
        assert!(entry["title"].as_str().is_some_and(|t| t.contains("Redmi 1S")), "{entry}");
    }
    // Ids and dates stay through a refresh that changes nothing.
    server.dashboard.refresh().await.expect("refresh");
    let again = fetch(http, feeds[0]).await;
    std::fs::write(&paths[0], again).expect("write");
    let reparsed = parse(vec![paths[0].clone()]);
    assert_eq!(reparsed[0]["entries"], parsed[0]["entries"], "a refresh that changed nothing changed the feed");
    assert!(home.contains("rel=\"alternate\" type=\"application/atom+xml\""), "the feed is linked from the pages");

    // The OpenAPI description: a valid OpenAPI 3.1 document
    // (openapi-spec-validator), which every real answer of the API matches
    // (each against its operation's 200 schema, with jsonschema).
    let spec = files.join("openapi.json");
    std::fs::write(&spec, fetch(http, "/api/openapi.json").await).expect("write");
    let model = format!("/api{}", leakwatch_dashboard::model_href("Xiaomi", "Redmi 1S"));
    let destination = format!("/api{}", leakwatch_dashboard::destination_href(&redmi.destination));
    let answers = [
        ("/api", "/api".to_string()),
        ("/api/findings", "/api/findings".into()),
        ("/api/findings", "/api/findings?vendor=Xiaomi&q=boot".into()),
        ("/api/findings/{id}", format!("/api{evidence}")),
        ("/api/models", "/api/models".into()),
        ("/api/models/{vendor}/{model}", model),
        ("/api/destinations", "/api/destinations".into()),
        ("/api/destinations/{name}", destination),
    ];
    let mut checks = Vec::new();
    for (i, (operation, path)) in answers.iter().enumerate() {
        let file = files.join(format!("answer-{i}.json"));
        std::fs::write(&file, fetch(http, path).await).expect("write");
        checks.push(format!("{operation}={}", file.display()));
    }
    let script = "import json, sys\n\
                  from openapi_spec_validator import validate\n\
                  from jsonschema import Draft202012Validator\n\
                  spec = json.load(open(sys.argv[1]))\n\
                  validate(spec)\n\
                  for check in sys.argv[2:]:\n\
                  \x20   op, path = check.split('=', 1)\n\
                  \x20   schema = spec['paths'][op]['get']['responses']['200']['content']['application/json']['schema']\n\
                  \x20   errors = list(Draft202012Validator({**spec, **schema}).iter_errors(json.load(open(path))))\n\
                  \x20   assert not errors, f'{op}: ' + '; '.join(f'{list(e.absolute_path)}: {e.message}' for e in errors[:5])\n\
                  print(len(sys.argv) - 2, 'answers match')\n";
    let out = Command::new(&python).arg("-c").arg(script).arg(&spec).args(&checks).output().expect("python");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.contains("8 answers match"), "OpenAPI:\n{said}");

    // `check` on one Redmi 1S capture, online and from a saved file,
    // reports the finding; a file that does not parse checks nothing.
    let manifest = leakwatch_agent::simulate::FleetManifest::read(&dir.path().join("captures")).expect("manifest");
    let capture = manifest.captures.iter().find(|c| c.model == "Redmi 1S").expect("a Redmi 1S capture");
    let capture = dir.path().join("captures").join(&capture.file);
    let saved = files.join("findings.json");
    std::fs::write(&saved, fetch(http, "/api/findings").await).expect("write");
    let garbage = files.join("not-findings.json");
    std::fs::write(&garbage, "<html>a login page</html>").expect("write");
    let state = dir.path().join("check-state");
    let check = move |findings: String| {
        let out = Command::new(crate::durability::agent_binary())
            .args(["check", "--findings", &findings, "--vendor", "Xiaomi", "--model", "Redmi 1S", "--state-dir"])
            .arg(&state)
            .arg(&capture)
            .output()
            .expect("run leakwatch-agent check");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for findings in [format!("http://{http}"), saved.display().to_string()] {
        let (code, stdout, stderr) = tokio::task::spawn_blocking({
            let check = check.clone();
            move || check(findings)
        })
        .await
        .expect("check");
        assert_eq!(code, Some(0), "{stdout}\n{stderr}");
        let line = stdout
            .lines()
            .find(|l| l.contains(&format!("http://{http}{evidence}")))
            .unwrap_or_else(|| panic!("check does not report the Redmi 1S finding:\n{stdout}\n{stderr}"));
        assert!(
            line.starts_with("your Xiaomi Redmi 1S contacted api.account.xiaomi.com ")
                && line.contains(" s after boot; so do 40 of 40 Xiaomi Redmi 1S devices: "),
            "{line}"
        );
        assert!(stderr.contains("nothing was sent") && stderr.contains("(data licence CC BY 4.0)"), "{stderr}");
    }
    // A plug whose cloud has no name is matched by the key its finding
    // names it by.
    let plug = manifest.captures.iter().find(|c| c.model == "SP111").expect("a Gosund SP111 capture");
    let out = Command::new(crate::durability::agent_binary())
        .args([
            "check",
            "--findings",
            saved.to_str().expect("utf-8"),
            "--vendor",
            "Gosund",
            "--model",
            "SP111",
            "--state-dir",
        ])
        .arg(dir.path().join("check-state-plug"))
        .arg(dir.path().join("captures").join(&plug.file))
        .output()
        .expect("run leakwatch-agent check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.lines().any(|l| l.starts_with("your Gosund SP111 contacted tcp/8886 (unnamed) ")), "{stdout}");
    let (code, stdout, stderr) = check(garbage.display().to_string());
    assert_eq!(code, Some(2), "{stdout}\n{stderr}");
    assert!(
        stdout.is_empty() && stderr.contains("not a findings document") && stderr.contains("nothing was checked"),
        "{stderr}"
    );

    // The about page names the licence.
    let about = fetch(http, "/about").await;
    assert!(about.contains("CC BY 4.0") && about.contains("leakwatch-agent check"), "{about}");
    server.shutdown().await.expect("shutdown");
}

/// yanglint, with the RFC 8520 modules of the shared test data, accepts
/// the MUD file of every model of the demo fleet; the Redmi 1S's allows
/// the destination of its lead finding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_every_models_mud_file_passes_yanglint() {
    let yang = crate::external("imports/mud/yang");
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, findings) = demo(dir.path()).await;
    let redmi = lead(&findings);
    let models: Vec<(String, String)> =
        server.dashboard.published().snapshot.models.iter().map(|m| (m.vendor.clone(), m.model.clone())).collect();
    assert!(models.len() >= 10, "{models:?}");
    let modules = [yang.join("ietf-mud@2019-01-28.yang"), yang.join("ietf-acldns@2019-01-28.yang")];
    for (vendor, model) in &models {
        let path = leakwatch_dashboard::mud::mud_href(vendor, model);
        let body = fetch(server.http_addr, &path).await;
        let file = dir.path().join(format!("{vendor}-{model}.json"));
        std::fs::write(&file, &body).expect("write");
        let mut args: Vec<&str> = vec!["-p", yang.to_str().expect("utf-8")];
        args.extend(modules.iter().map(|m| m.to_str().expect("utf-8")));
        args.push(file.to_str().expect("utf-8"));
        consume("/usr/bin/yanglint", &args, "libyang2-tools");
        let json: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(json["ietf-mud:mud"]["mfg-name"], vendor.as_str());
        assert_eq!(json["ietf-mud:mud"]["model-name"], model.as_str());
        if model == "Redmi 1S" {
            assert!(body.contains(&format!("\"ietf-acldns:dst-dnsname\": \"{}\"", redmi.domain)), "{body}");
        }
    }
    server.shutdown().await.expect("shutdown");
}

/// A vendor's MUD file, loaded for the demo fleet's Echo Dot (the shared
/// sample is MUDgee's, of an Amazon Echo), and the rule `outside_mud`: what
/// the devices contact beyond the file. Files that cannot be read whole are
/// refused with the offending node, and nothing of them is loaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_a_vendors_mud_file_shows_what_its_model_contacts_beyond_it() {
    let echo = crate::external("imports/mud/amazonEchoMud.json");
    let blipcare = crate::external("imports/mud/blipcareBPmeterMud.json");
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, _) = demo(dir.path()).await;
    let data_dir = dir.path().join("collector");
    let mud = |args: &[&std::ffi::OsStr]| {
        let out = crate::leakwatch().arg("mud").arg("--data-dir").arg(&data_dir).args(args).output().expect("run");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let os = |s: &str| std::ffi::OsString::from(s);

    // Refused whole: not JSON, an unsupported match, no model named.
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "<html>").expect("write");
    let (ok, _, err) =
        mud(&[&os("load"), bad.as_os_str(), &os("--vendor"), &os("Amazon"), &os("--model"), &os("Echo Dot")]);
    assert!(!ok && err.contains("refused, nothing loaded: /: not JSON"), "{err}");
    let text = std::fs::read_to_string(&echo).expect("read");
    let dscp = dir.path().join("dscp.json");
    std::fs::write(&dscp, text.replacen("\"protocol\" : 6,", "\"protocol\" : 6, \"dscp\" : 10,", 1)).expect("write");
    let (ok, _, err) =
        mud(&[&os("load"), dscp.as_os_str(), &os("--vendor"), &os("Amazon"), &os("--model"), &os("Echo Dot")]);
    assert!(
        !ok && err.contains("/ietf-access-control-list:access-lists/acl[name='from-ipv4-amazonecho']/aces/ace[name='from-ipv4-amazonecho-0']/matches/ipv4/dscp"),
        "{err}"
    );
    let huge = dir.path().join("huge.json");
    std::fs::File::create(&huge).expect("create").set_len(17 << 20).expect("grow");
    let (ok, _, err) =
        mud(&[&os("load"), huge.as_os_str(), &os("--vendor"), &os("Amazon"), &os("--model"), &os("Echo Dot")]);
    assert!(!ok && err.contains("more than the 16 MiB a MUD file may have; nothing loaded"), "{err}");
    let (ok, _, err) = mud(&[&os("load"), blipcare.as_os_str()]);
    assert!(!ok && err.contains("the file has no mfg-name; name it with --vendor"), "{err}");
    let (ok, listed, _) = mud(&[&os("list")]);
    assert!(ok && listed.trim() == "no MUD files loaded", "{listed}");

    // The Echo's file for the demo's Echo Dot.
    let (ok, out, err) =
        mud(&[&os("load"), echo.as_os_str(), &os("--vendor"), &os("Amazon"), &os("--model"), &os("Echo Dot")]);
    assert!(ok && out.contains("loaded https://amazonecho.com/amazonecho for Amazon Echo Dot"), "{out}{err}");
    let (_, listed, _) = mud(&[&os("list")]);
    assert!(listed.starts_with("Amazon\tEcho Dot\thttps://amazonecho.com/amazonecho\t"), "{listed}");

    // What the file allows by name, as the test reads the file itself.
    let file: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    let mut allowed = std::collections::BTreeSet::new();
    for acl in file["ietf-access-control-list:access-lists"]["acl"].as_array().expect("acls") {
        if acl["name"].as_str().is_some_and(|n| n.starts_with("from-")) {
            for ace in acl["aces"]["ace"].as_array().expect("aces") {
                if let Some(name) = ace["matches"]["ipv4"]["ietf-acldns:dst-dnsname"].as_str() {
                    allowed.insert(name.to_string());
                }
            }
        }
    }
    assert!(allowed.len() >= 15, "{allowed:?}");
    let session = server.sessions.session().await.expect("session");
    let run = |sql: String| {
        let session = &session;
        async move {
            leakwatch_query::format::render(
                &session.sql(&sql).await.expect("query"),
                leakwatch_query::format::OutputFormat::Csv,
            )
            .expect("csv")
        }
    };
    let rule = leakwatch_query::rules::rule("outside_mud").expect("rule").render(&Default::default()).expect("sql");
    let outside = run(rule).await;
    eprintln!("outside_mud with the Echo's MUD file:\n{outside}");
    let rows: Vec<&str> = outside.lines().skip(1).collect();
    assert!(!rows.is_empty(), "the Echo Dot contacts nothing outside its file?\n{outside}");
    for row in &rows {
        let fields: Vec<&str> = row.split(',').collect();
        assert_eq!(&fields[..2], ["Amazon", "Echo Dot"], "{row}");
        assert!(!allowed.contains(fields[2]), "{} is allowed by the file: {row}", fields[2]);
        assert!(row.contains("https://amazonecho.com/amazonecho"), "{row}");
    }
    // A name the devices contact that the file allows on the port used is
    // not listed.
    let contacted =
        run("SELECT DISTINCT domain FROM flows WHERE vendor = 'Amazon' AND model = 'Echo Dot' AND domain IS NOT NULL"
            .into())
        .await;
    let both: Vec<&str> = contacted.lines().skip(1).filter(|d| allowed.contains(*d)).collect();
    for d in &both {
        assert!(!rows.iter().any(|r| r.split(',').nth(2) == Some(d)), "{d} is allowed but listed:\n{outside}");
    }
    // The dashboard publishes it as a finding of its own.
    server.dashboard.refresh().await.expect("refresh");
    let published = server.dashboard.published();
    let finding = published.snapshot.findings.iter().find(|f| f.rule == "outside_mud").expect("an outside_mud finding");
    assert!(
        finding.claim.contains("Amazon Echo Dot devices contact") && finding.claim.contains("MUD file does not allow"),
        "{}",
        finding.claim
    );
    // Its devices are the rule's: each contacts the destination outside the file.
    let row = rows.iter().find(|r| r.split(',').nth(2) == Some(finding.domain.as_str())).expect("the finding's row");
    assert_eq!(row.split(',').nth(4), Some(finding.devices.to_string().as_str()), "{row} against {finding:?}");
    // Removing it empties the rule.
    let (ok, out, _) = mud(&[&os("remove"), &os("--vendor"), &os("Amazon"), &os("--model"), &os("Echo Dot")]);
    assert!(ok && out.contains("removed"), "{out}");
    let session = server.sessions.session().await.expect("session");
    let rule = leakwatch_query::rules::rule("outside_mud").expect("rule").render(&Default::default()).expect("sql");
    let batches = session.sql(&rule).await.expect("rule");
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 0);
    server.shutdown().await.expect("shutdown");
}

//! The public dashboard: thresholds, privacy, rate limit, and the pages in
//! a real headless Chromium.

use std::collections::{BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use leakwatch::demo::run_pipeline;
use leakwatch_agent::state::AgentState;
use leakwatch_agent::uploader::Uploader;
use leakwatch_collector::server::{ServeConfig, Server};
use leakwatch_dashboard::{DashboardConfig, Thresholds};
use leakwatch_proto::v1::{DeviceInfo, FlowRecord, ReportBatch};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A plain HTTP/1.1 GET: status, lower-cased headers, body.
pub async fn get(addr: SocketAddr, path: &str) -> (u16, String, Vec<u8>) {
    get_with(addr, path, "").await
}

/// [`get`] with more request header lines (each ending in `\r\n`).
pub async fn get_with(addr: SocketAddr, path: &str, headers: &str) -> (u16, String, Vec<u8>) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("read");
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("end of headers");
    let head = String::from_utf8_lossy(&raw[..split]).to_lowercase();
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("status");
    let mut body = raw[split + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let line_end = rest.windows(2).position(|w| w == b"\r\n").expect("chunk size");
            let size = usize::from_str_radix(std::str::from_utf8(&rest[..line_end]).expect("hex").trim(), 16)
                .expect("chunk size");
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[line_end + 2..line_end + 2 + size]);
            rest = &rest[line_end + 2 + size + 2..];
        }
        body = out;
    }
    (status, head, body)
}

/// One simulated device: `volunteer` reports it; it contacts each of
/// `hosts` a few seconds after boot (an empty host: a cloud no name was
/// seen for, on port 8886 at an address of its own).
struct Device {
    volunteer: usize,
    vendor: &'static str,
    model: &'static str,
    firmware: &'static str,
    consent: &'static [(&'static str, &'static str)],
    hosts: &'static [&'static str],
}

/// Epoch seconds of the first record: 2026-03-02 10:17 UTC.
const T0: i64 = 1_772_446_620;

fn batch(i: usize, d: &Device) -> ReportBatch {
    let records = d
        .hosts
        .iter()
        .enumerate()
        .map(|(j, host)| FlowRecord {
            seconds_since_boot: 2.0 + j as f64 + i as f64 * 0.1,
            window_start_unix_s: T0 + 60 * (i as i64 % 3) + 86_400 * (i as i64 % 2),
            transport: 1,
            dst_ip: if host.is_empty() { format!("52.58.{i}.21") } else { format!("203.0.113.{}", 10 + j) },
            dst_port: if host.is_empty() { 8886 } else { 443 },
            domain: (*host).to_string(),
            domain_source: 1,
            bytes_out: 900,
            bytes_in: 4000,
            packets_out: 5,
            packets_in: 6,
            connections: 1,
            ..Default::default()
        })
        .collect();
    ReportBatch {
        batch_id: format!("threshold-{i}"),
        sent_at_unix_ms: 0,
        device: Some(DeviceInfo {
            device_pseudonym: format!("devpseudo{i:04}"),
            vendor: d.vendor.into(),
            model: d.model.into(),
            os_version: d.firmware.into(),
            consent: d.consent.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            boot_pseudonym: format!("bootpseudo{i:04}"),
            boot_source: 2,
            source: 1,
        }),
        records,
    }
}

/// The planted fleet: one group above both thresholds (k = 5, m = 3), and
/// groups just below each, with the names that must never be published.
fn planted() -> Vec<Device> {
    let mut fleet = Vec::new();
    // Shown: 7 devices of 3 volunteers. Two of them also contact a host no
    // other device does, one runs a rare firmware, one declares a rare
    // consent setting: all small groups inside a public one.
    for i in 0..7 {
        fleet.push(Device {
            volunteer: i % 3,
            vendor: "Visible",
            model: "V1",
            firmware: if i == 0 { "9.9-rare" } else { "1.0" },
            consent: if i == 1 { &[("secret_toggle", "on"), ("cloud", "off")] } else { &[("cloud", "off")] },
            hosts: if i < 2 {
                &["api.visible-cloud.com", "rare.visible-cloud.com", ""]
            } else {
                &["api.visible-cloud.com", ""]
            },
        });
    }
    // Below k: 4 devices (of 3 volunteers).
    for i in 0..4 {
        fleet.push(Device {
            volunteer: 3 + i % 3,
            vendor: "Fewdev",
            model: "F1",
            firmware: "1.0",
            consent: &[],
            hosts: &["api.fewdev-cloud.com"],
        });
    }
    // Below m: 8 devices, but of only 2 volunteers.
    for i in 0..8 {
        fleet.push(Device {
            volunteer: 6 + i % 2,
            vendor: "Onevol",
            model: "O1",
            firmware: "1.0",
            consent: &[],
            hosts: &["api.onevol-cloud.com"],
        });
    }
    fleet
}

const NEVER: &[&str] =
    &["Fewdev", "fewdev-cloud", "Onevol", "onevol-cloud", "rare.visible-cloud", "9.9-rare", "secret_toggle"];

async fn upload(server: &Server, dir: &Path, fleet: &[Device]) {
    let url = format!("http://{}", server.grpc_addr);
    let volunteers: BTreeSet<usize> = fleet.iter().map(|d| d.volunteer).collect();
    for v in volunteers {
        let state = AgentState::open(&dir.join(format!("volunteer-{v}"))).expect("agent state");
        let mut up = Uploader::connect(&url, &state, "", Duration::from_secs(10)).await.expect("enroll");
        for (i, d) in fleet.iter().enumerate().filter(|(_, d)| d.volunteer == v) {
            up.send(&batch(i, d)).await.expect("send");
        }
    }
    server.flusher.flush().await.expect("flush");
    server.dashboard.refresh().await.expect("refresh");
}

fn links(html: &str) -> Vec<String> {
    html.split("href=\"")
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .filter(|h| h.starts_with('/'))
        .map(|h| h.replace("&amp;", "&"))
        .collect()
}

fn parquet_as_csv(bytes: Vec<u8>) -> String {
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(axum::body::Bytes::from(bytes))
        .expect("parquet")
        .build()
        .expect("reader");
    let batches: Vec<_> = reader.map(|b| b.expect("batch")).collect();
    leakwatch_query::format::render(&batches, leakwatch_query::format::OutputFormat::Csv).expect("csv")
}

/// A collector in `dir` whose dashboard publishes groups of k = 5 devices
/// and m = 3 volunteers, without a rate limit in the way of a crawl.
async fn public_server(dir: &Path) -> Server {
    let mut config = ServeConfig::loopback(dir.join("collector"));
    config.dashboard = DashboardConfig {
        thresholds: Thresholds::new(5, 3).expect("k, m"),
        requests_per_second: 100_000,
        ..DashboardConfig::default()
    };
    Server::start(config).await.expect("start")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_group_below_the_thresholds_is_published_anywhere() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = public_server(dir.path()).await;
    upload(&server, dir.path(), &planted()).await;
    let session = server.sessions.session().await.expect("session");

    // Without thresholds the rule would report the below-m group: the
    // test would catch a dashboard that forgot them.
    let sql = leakwatch_query::rules::rule("boot_phone_home").expect("rule").render(&Default::default()).expect("sql");
    let raw = leakwatch_query::format::render(
        &session.sql(&sql).await.expect("rule"),
        leakwatch_query::format::OutputFormat::Csv,
    )
    .expect("csv");
    assert!(raw.contains("Onevol,O1,onevol-cloud.com"), "the rule finds the 2-volunteer group:\n{raw}");
    assert!(raw.contains("Visible,V1,visible-cloud.com"), "and the public one:\n{raw}");
    let agents = leakwatch_query::format::render(
        &session.sql("SELECT DISTINCT agent_id FROM flows").await.expect("agents"),
        leakwatch_query::format::OutputFormat::Csv,
    )
    .expect("csv");
    let agents: Vec<&str> = agents.lines().skip(1).collect();
    assert_eq!(agents.len(), 8, "eight volunteers' agents");

    // Crawl every page and API answer reachable from the home page.
    let http = server.http_addr;
    let mut seen = BTreeSet::new();
    let mut queue: VecDeque<String> =
        ["/", "/api", "/api/findings", "/api/models", "/api/destinations", "/models", "/destinations", "/about"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    let mut bodies = Vec::new();
    while let Some(path) = queue.pop_front() {
        if !seen.insert(path.clone()) || seen.len() > 400 {
            continue;
        }
        let (status, _, body) = get(http, &path).await;
        let text =
            if path.ends_with(".parquet") { parquet_as_csv(body) } else { String::from_utf8(body).expect("utf-8") };
        assert!(status == 200, "GET {path}: {status}\n{text}");
        for link in links(&text) {
            queue.push_back(link.clone());
            // Every page's JSON twin.
            for prefix in ["/models/", "/destinations/", "/findings/"] {
                if link.starts_with(prefix) {
                    queue.push_back(format!("/api{link}"));
                }
            }
        }
        bodies.push((path, text));
    }
    let all: String = bodies.iter().map(|(p, b)| format!("== {p}\n{b}\n")).collect();
    assert!(seen.contains("/export/findings.parquet") && seen.contains("/export/findings.csv"), "exports linked");
    // What is given back is linked and crawled too: lists of every scope
    // and format, feeds, the model's MUD file.
    for path in [
        "/lists/hosts.txt",
        "/lists/rpz.zone",
        "/lists/vendors/Visible/dnsmasq.conf",
        "/lists/models/Visible/V1/unbound.conf",
        "/lists/models/Visible/V1/domains.txt",
        "/feeds/findings.atom",
        "/feeds/models/Visible/V1.atom",
        "/mud/Visible/V1.json",
    ] {
        assert!(seen.contains(path), "{path} is not linked: {seen:?}");
    }
    assert!(seen.iter().any(|p| p.starts_with("/lists/findings/")), "{seen:?}");
    let mud = &bodies.iter().find(|(p, _)| p == "/mud/Visible/V1.json").expect("fetched").1;
    assert!(mud.contains("\"ietf-acldns:dst-dnsname\": \"api.visible-cloud.com\""), "{mud}");
    assert!(seen.iter().any(|p| p.starts_with("/findings/")), "a finding page was reached");
    assert!(seen.contains("/models/Visible/V1") && seen.contains("/destinations/visible-cloud.com"), "{seen:?}");
    assert!(all.contains("api.visible-cloud.com"), "the public group's host is shown");
    // A cloud no name was seen for, under its key, on its pages and in the
    // exports.
    assert!(seen.contains("/destinations/tcp%2F8886%20%28unnamed%29"), "{seen:?}");
    for path in ["/api/findings", "/export/findings.csv", "/export/findings.parquet"] {
        let body = &bodies.iter().find(|(p, _)| p == path).expect("fetched").1;
        assert!(body.contains("tcp/8886 (unnamed)"), "{path}: {body}");
    }
    assert!(all.contains("cloud=off"), "the public group's consent is shown");
    for never in NEVER {
        let hits: Vec<&str> = bodies.iter().filter(|(_, b)| b.contains(never)).map(|(p, _)| p.as_str()).collect();
        assert!(hits.is_empty(), "{never:?} is below the thresholds but appears in {hits:?}");
    }
    for secret in agents.iter().copied().chain(["devpseudo", "bootpseudo"]) {
        assert!(!all.contains(secret), "pseudonym {secret:?} published");
    }
    // Record times are published as days only.
    for minute in ["10:17", "10:18", "10:19", "1772446620"] {
        assert!(!all.contains(minute), "exact record time {minute} published");
    }
    // Unknown pages are 404s in HTML and JSON, and so are the lists,
    // feeds and MUD files of groups below the thresholds.
    assert_eq!(get(http, "/models/Fewdev/F1").await.0, 404);
    assert_eq!(get(http, "/api/destinations/onevol-cloud.com").await.0, 404);
    for path in [
        "/lists/models/Fewdev/F1/hosts.txt",
        "/lists/vendors/Onevol/rpz.zone",
        "/feeds/models/Onevol/O1.atom",
        "/feeds/vendors/Fewdev.atom",
        "/mud/Fewdev/F1.json",
        "/mud/Onevol/O1.json",
    ] {
        let (status, _, body) = get(http, path).await;
        let body = String::from_utf8_lossy(&body);
        assert_eq!(status, 404, "{path}: {body}");
        assert!(body.contains("not published"), "{path}: {body}");
    }
    let (status, _, body) = get(http, "/lists/blocklist.exe").await;
    assert_eq!(status, 404);
    assert!(String::from_utf8_lossy(&body).contains("there are hosts.txt, dnsmasq.conf"), "{body:?}");
    server.shutdown().await.expect("shutdown");
}

/// Polls until `n` refreshes have completed; the time that took.
async fn refreshes_reach(server: &Server, n: u64, limit: Duration) -> Duration {
    let started = std::time::Instant::now();
    while server.dashboard.refreshes() < n {
        assert!(started.elapsed() < limit, "refresh {n} did not come within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_refreshes_the_dashboard_no_sooner_than_the_least_interval() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = ServeConfig::loopback(dir.path().join("collector"));
    config.flush_interval = Duration::from_millis(200);
    config.dashboard.min_refresh_interval = Duration::from_secs(3);
    let server = Server::start(config).await.expect("start");
    // The start refreshes at once (nothing to show yet).
    refreshes_reach(&server, 1, Duration::from_secs(30)).await;
    assert!(server.dashboard.published().snapshot.models.is_empty());

    // New rows: the flush task stores them within moments and asks for a
    // refresh, which waits out the interval; later asks fold into it.
    let url = format!("http://{}", server.grpc_addr);
    let fleet = planted();
    for v in fleet.iter().map(|d| d.volunteer).collect::<BTreeSet<_>>() {
        let state = AgentState::open(&dir.path().join(format!("volunteer-{v}"))).expect("agent state");
        let mut up = Uploader::connect(&url, &state, "", Duration::from_secs(10)).await.expect("enroll");
        for (i, d) in fleet.iter().enumerate().filter(|(_, d)| d.volunteer == v) {
            up.send(&batch(i, d)).await.expect("send");
        }
    }
    let sent = std::time::Instant::now();
    while server.log.watermark().expect("watermark") < server.log.durable_upto() {
        assert!(sent.elapsed() < Duration::from_secs(30), "the flush task did not flush");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.dashboard.request_refresh();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(server.dashboard.refreshes(), 1, "refreshed before the least interval");
    assert!(server.dashboard.published().snapshot.models.is_empty());
    refreshes_reach(&server, 2, Duration::from_secs(30)).await;
    let models: Vec<String> =
        server.dashboard.published().snapshot.models.iter().map(|m| format!("{}/{}", m.vendor, m.model)).collect();
    assert!(models.contains(&"Visible/V1".to_string()), "{models:?}");
    // The asks folded into that refresh leave none waiting.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(server.dashboard.refreshes(), 2);
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requested_refresh_that_a_later_refresh_answered_is_not_run_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = ServeConfig::loopback(dir.path().join("collector"));
    config.dashboard.min_refresh_interval = Duration::from_secs(2);
    let server = Server::start(config).await.expect("start");
    refreshes_reach(&server, 1, Duration::from_secs(30)).await;
    // Asked for (it waits out the interval), then a refresh now, which
    // reads everything the request was made for.
    server.dashboard.request_refresh();
    server.dashboard.refresh().await.expect("refresh");
    assert_eq!(server.dashboard.refreshes(), 2);
    // The request is answered: no third refresh once the interval passes.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert_eq!(server.dashboard.refreshes(), 2, "the answered request refreshed again");
    // A request made after that refresh still refreshes.
    server.dashboard.request_refresh();
    refreshes_reach(&server, 3, Duration::from_secs(30)).await;
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_refresh_is_not_bound_by_the_analysts_query_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = ServeConfig::loopback(dir.path().join("collector"));
    config.query.timeout = Duration::from_millis(1);
    let server = Server::start(config).await.expect("start");
    upload(&server, dir.path(), &planted()).await; // flushes, then refreshes or panics
    let sql = leakwatch_query::rules::rule("boot_phone_home").expect("rule").render(&Default::default()).expect("sql");
    let session = server.sessions.session().await.expect("session");
    let e = session.sql(&sql).await.expect_err("an analyst's query times out");
    assert!(matches!(e, leakwatch_query::Error::Timeout(_)), "{e}");
    let published = server.dashboard.published();
    assert!(published.snapshot.findings.iter().any(|f| f.vendor == "Visible"), "{:?}", published.snapshot.findings);
    server.shutdown().await.expect("shutdown");
}

/// Waits up to 30 s for `done`.
async fn eventually(what: &str, done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "{what}: not within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A requested refresh that fails (here: analysts' queries hold the
/// memory all sessions share) is tried again without another flush
/// asking for it, and `/metrics` says how many failed in a row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_that_failed_is_tried_again_without_another_flush() {
    use datafusion::execution::memory_pool::MemoryConsumer;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = ServeConfig::loopback(dir.path().join("collector"));
    config.dashboard.min_refresh_interval = Duration::from_secs(1);
    config.query.memory_limit_bytes = 64 << 20;
    config.query.total_memory = leakwatch_query::memory::QueryMemory::new(64 << 20);
    let server = Server::start(config).await.expect("start");
    run_pipeline(&server, dir.path(), Some(60), None).await.expect("fleet through agent and collector");
    let dashboard = server.dashboard.clone();
    let before = dashboard.refreshes();
    assert!(!dashboard.published().snapshot.models.is_empty(), "the fleet is published");

    // An analyst's query holds the whole total: the refresh a flush asks
    // for fails, and the published aggregates stay.
    let analyst = server.sessions.session().await.expect("session");
    let held = MemoryConsumer::new("an analyst's query").register(&analyst.context().runtime_env().memory_pool);
    held.try_grow(64 << 20).expect("the whole total");
    dashboard.request_refresh();
    eventually("a failed refresh", || dashboard.failures_in_a_row() >= 1).await;
    assert_eq!(dashboard.refreshes(), before, "nothing published while the memory is held");
    let (status, _, body) = get(server.http_addr, "/metrics").await;
    assert_eq!(status, 200);
    let metrics = String::from_utf8_lossy(&body).to_string();
    let failures = metrics
        .lines()
        .find_map(|l| l.strip_prefix("leakwatch_dashboard_refresh_failures "))
        .and_then(|v| v.trim().parse::<u32>().ok());
    assert!(failures.is_some_and(|n| n >= 1), "{metrics}");

    // The memory freed, the refresh is tried again and succeeds: no flush
    // asked for it.
    drop(held);
    eventually("a refresh after the failure", || dashboard.refreshes() > before).await;
    assert_eq!(dashboard.failures_in_a_row(), 0);
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thresholds_below_two_a_zero_rate_and_a_session_over_the_total_memory_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = ServeConfig::loopback(dir.path().join("collector"));
    config.dashboard.thresholds = Thresholds { min_devices: 1, min_volunteers: 3 };
    let e = Server::start(config.clone()).await.expect_err("k = 1 refused");
    assert!(e.to_string().contains("--public-min-devices: 1 is below 2"), "{e}");
    config.dashboard = DashboardConfig { requests_per_second: 0, ..DashboardConfig::default() };
    let e = Server::start(config.clone()).await.expect_err("rate 0 refused");
    assert!(e.to_string().contains("--public-rate"), "{e}");
    config.dashboard = DashboardConfig::default();
    config.query.memory_limit_bytes = 8 << 30;
    let e = Server::start(config).await.expect_err("a session's limit over the total refused");
    assert!(e.to_string().contains("--query-memory-total-mib 4096 is less than --query-memory-mib 8192"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_public_api_is_rate_limited_per_client_address() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = ServeConfig::loopback(dir.path().join("collector"));
    config.dashboard.requests_per_second = 1;
    let server = Server::start(config).await.expect("start");
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let (status, head, _) = get(server.http_addr, "/api/findings").await;
        if status == 429 {
            assert!(head.contains("retry-after:"), "{head}");
        }
        statuses.push(status);
    }
    assert_eq!(&statuses[..2], &[200, 200], "burst of two allowed: {statuses:?}");
    assert!(statuses[2..].contains(&429), "then refused: {statuses:?}");
    // What a browser is told: no framing, no sniffing, no referrer; the
    // JSON API may be read by any site's scripts, the pages not.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (_, api, _) = get(server.http_addr, "/api/findings").await;
    let (_, page, _) = get(server.http_addr, "/about").await;
    for head in [&api, &page] {
        for expected in ["frame-ancestors 'none'", "x-content-type-options: nosniff", "referrer-policy: no-referrer"] {
            assert!(head.contains(expected), "{expected} missing:\n{head}");
        }
    }
    assert!(api.contains("access-control-allow-origin: *"), "{api}");
    assert!(!page.contains("access-control-allow-origin"), "{page}");
    // Health and metrics are not public pages and are not limited.
    for _ in 0..5 {
        assert_eq!(get(server.http_addr, "/healthz").await.0, 200);
    }
    server.shutdown().await.expect("shutdown");
}

/// Answers carry the refresh's validators: a client that holds one gets
/// 304 and no body until the next refresh; text goes gzipped to a client
/// that takes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_carry_the_refresh_validators_and_go_gzipped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(ServeConfig::loopback(dir.path().join("collector"))).await.expect("start");
    server.dashboard.refresh().await.expect("refresh");
    let header = |head: &str, name: &str| {
        head.lines().find_map(|l| l.strip_prefix(&format!("{name}: ")).map(str::to_string)).unwrap_or_default()
    };
    let (status, head, plain) = get(server.http_addr, "/about").await;
    assert_eq!(status, 200);
    // (The helper lowers the head's case; sent back, they take the
    // server's case again.)
    let (etag, modified) = (header(&head, "etag"), header(&head, "last-modified"));
    assert!(etag.starts_with("w/\"") && modified.ends_with(" gmt"), "{head}");
    let etag = etag.replacen("w/", "W/", 1);
    let refreshed = server.dashboard.published().snapshot.refreshed_unix;
    let at = chrono::DateTime::from_timestamp(refreshed, 0).expect("time");
    let modified = at.format("%a, %d %b %Y %H:%M:%S GMT").to_string();
    assert_eq!(header(&head, "last-modified"), modified.to_lowercase());
    // Held: 304, no body; by tag or by date.
    for asked in [format!("If-None-Match: {etag}\r\n"), format!("If-Modified-Since: {modified}\r\n")] {
        let (status, head, body) = get_with(server.http_addr, "/about", &asked).await;
        assert_eq!((status, body.len()), (304, 0), "{asked}: {head}");
        assert!(head.contains(&format!("etag: {}", etag.to_lowercase())), "{head}");
    }
    // Gzipped when taken, the same page once unzipped.
    let (status, head, zipped) = get_with(server.http_addr, "/about", "Accept-Encoding: br, gzip\r\n").await;
    assert_eq!(status, 200);
    assert!(head.contains("content-encoding: gzip") && head.contains("vary: accept-encoding"), "{head}");
    let mut unzipped = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&zipped[..]), &mut unzipped).expect("gunzip");
    assert_eq!(unzipped, plain);
    assert!(zipped.len() < plain.len() * 3 / 4, "{} of {} bytes", zipped.len(), plain.len());
    // Binary exports go as they are.
    let (_, head, _) = get_with(server.http_addr, "/export/findings.parquet", "Accept-Encoding: gzip\r\n").await;
    assert!(!head.contains("content-encoding"), "{head}");
    // The next refresh: a new tag, and the old one gets the whole page.
    server.dashboard.refresh().await.expect("refresh");
    let (status, head, _) = get_with(server.http_addr, "/about", &format!("If-None-Match: {etag}\r\n")).await;
    assert_eq!(status, 200, "{head}");
    assert_ne!(header(&head, "etag"), etag.to_lowercase());
    server.shutdown().await.expect("shutdown");
}

/// A client allowed one connection at a time makes requests one straight
/// after another, each on a new connection: the last one's place is free
/// once the client sees it closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_connections_place_is_free_when_its_client_sees_the_close() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = ServeConfig::loopback(dir.path().join("collector"));
    config.http.per_client = 1;
    let server = Server::start(config).await.expect("start");
    for attempt in 0..50 {
        let (status, head, _) = get(server.http_addr, "/healthz").await;
        assert_eq!(status, 200, "attempt {attempt}: {head}");
    }
    server.shutdown().await.expect("shutdown");
}

/// Behind a trusted proxy (here the test's own loopback address) each
/// client the proxy names has its own limit, and the proxy's many
/// connections are not held to one client's; a peer that is not trusted
/// cannot pick the address it is counted under.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = ServeConfig::loopback(dir.path().join("collector"));
    config.dashboard.requests_per_second = 1;
    config.http.per_client = 1;
    let proxies = |nets: &[&str]| leakwatch_dashboard::TrustedProxies::parse("--trusted-proxies", nets).expect("parse");
    config.dashboard.trusted_proxies = proxies(&["127.0.0.0/8"]);
    let server = Server::start(config.clone()).await.expect("start");
    let as_client = |ip: &str| format!("X-Forwarded-For: 6.6.6.6, {ip}\r\n");
    let mut first = Vec::new();
    for _ in 0..3 {
        first.push(get_with(server.http_addr, "/api/findings", &as_client("203.0.113.1")).await.0);
    }
    assert_eq!(first, [200, 200, 429], "the first client's burst, then its limit");
    let forwarded = "Forwarded: for=\"[2001:db8::2]:4711\";proto=https\r\n";
    assert_eq!(get_with(server.http_addr, "/api/findings", forwarded).await.0, 200, "the second client is not limited");
    assert_eq!(get_with(server.http_addr, "/api/findings", &as_client("203.0.113.3")).await.0, 200);
    // An IPv6 client is counted by its /64: a new address in it for each
    // request does not escape its limit; another /64 has its own.
    let mut v6 = Vec::new();
    for ip in ["2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:ffff::3"] {
        let (status, _, body) = get_with(server.http_addr, "/api/findings", &as_client(ip)).await;
        v6.push(status);
        if status == 429 {
            assert!(String::from_utf8_lossy(&body).contains("from 2001:db8:1:2::/64"), "{body:?}");
        }
    }
    assert_eq!(v6, [200, 200, 429], "one limit for the /64");
    assert_eq!(get_with(server.http_addr, "/api/findings", &as_client("2001:db8:1:3::1")).await.0, 200);
    // An idle connection from the proxy does not keep the next one out
    // (at most one connection per client address otherwise).
    let idle = tokio::net::TcpStream::connect(server.http_addr).await.expect("connect");
    assert_eq!(get_with(server.http_addr, "/api/findings", &as_client("203.0.113.4")).await.0, 200);
    drop(idle);
    server.shutdown().await.expect("shutdown");

    // The same requests from a peer that is not a trusted proxy: its
    // headers are ignored and every request counts against its address.
    let dir = tempfile::tempdir().expect("tempdir");
    config.data_dir = dir.path().join("collector");
    config.dashboard.trusted_proxies = proxies(&["10.0.0.0/8"]);
    config.http.per_client = leakwatch_collector::http::DEFAULT_MAX_CONNECTIONS_PER_CLIENT;
    let server = Server::start(config).await.expect("start");
    let mut statuses = Vec::new();
    for ip in ["203.0.113.1", "203.0.113.2", "203.0.113.3"] {
        statuses.push(get_with(server.http_addr, "/api/findings", &as_client(ip)).await.0);
    }
    assert_eq!(statuses, [200, 200, 429], "one limit, whatever the header says");
    server.shutdown().await.expect("shutdown");
}

/// Headless Chromium (Debian's chromium and chromium-driver, which `make
/// test` installs and names in LEAKWATCH_CHROMEDRIVER) through home, model
/// and finding pages of the demo collector.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_shows_the_seed_case_with_its_sql_and_chart() {
    let driver = crate::set_by_make_test("LEAKWATCH_CHROMEDRIVER", " (it installs chromium-driver)", "browser_");
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(ServeConfig::loopback(dir.path().join("collector"))).await.expect("start");
    run_pipeline(&server, dir.path(), None, None).await.expect("the demo fleet through agent and collector");
    let shots = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots");
    std::fs::create_dir_all(&shots).expect("screenshot dir");

    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
    let mut chromedriver = std::process::Command::new(driver)
        .arg(format!("--port={port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let result = drive(port, server.http_addr, &shots).await;
    let _ = chromedriver.kill();
    let _ = chromedriver.wait();
    server.shutdown().await.expect("shutdown");
    if let Err(e) = result {
        panic!("{e}");
    }
}

async fn drive(port: u16, http: SocketAddr, shots: &Path) -> Result<(), String> {
    use fantoccini::{ClientBuilder, Locator};
    let chromium = std::env::var("LEAKWATCH_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let profile = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": chromium,
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--disable-dev-shm-usage", "--window-size=1280,1600",
                     format!("--user-data-dir={}", profile.path().display())]
        }),
    );
    let mut client = None;
    for _ in 0..50 {
        match ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
        {
            Ok(c) => {
                client = Some(c);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    let c = client.ok_or("chromedriver did not accept a session")?;
    let e = |what: &str| {
        let what = what.to_string();
        move |err: fantoccini::error::CmdError| format!("{what}: {err}")
    };
    let shot = |name: &'static str, png: Vec<u8>| {
        std::fs::write(shots.join(name), png).map_err(|err| format!("screenshot {name}: {err}"))
    };
    let base = format!("http://{http}");

    // Home: the seed case leads the findings, at a desktop's width and a
    // phone's, with nothing scrolling sideways.
    c.goto(&format!("{base}/")).await.map_err(e("open home"))?;
    let lead = text_of(&c, "ol.entries li").await?;
    if !(lead.contains("Redmi 1S") && lead.contains("xiaomi.com")) {
        return Err(format!("home does not lead with the seed case (Xiaomi Redmi 1S, xiaomi.com):\n{lead}"));
    }
    check_chart(&c, "home").await?;
    for (width, name) in [(1280, "home.png"), (390, "home-phone.png")] {
        c.set_window_size(width, 1600).await.map_err(e("window size"))?;
        no_sideways_scroll(&c, &format!("home at {width} px")).await?;
        shot(name, c.screenshot().await.map_err(e("screenshot"))?)?;
    }
    c.set_window_size(1280, 1600).await.map_err(e("window size"))?;

    // Filter by vendor with the form (no JavaScript needed).
    c.find(Locator::Css("select#vendor"))
        .await
        .map_err(e("vendor select"))?
        .select_by_value("Xiaomi")
        .await
        .map_err(e("choose Xiaomi"))?;
    c.find(Locator::Css("form.filters button"))
        .await
        .map_err(e("filter button"))?
        .click()
        .await
        .map_err(e("filter"))?;
    // The form loads a new page: read that one, not the page it left.
    wait_for_url(&c, "vendor=Xiaomi").await?;
    let filtered = text_of(&c, "ol.entries").await?;
    if filtered.contains("Amazon") || !filtered.contains("Redmi 1S") {
        return Err(format!("vendor filter did not keep only Xiaomi:\n{filtered}"));
    }

    // Model page: its chart of destinations after boot.
    c.find(Locator::LinkText("Xiaomi Redmi 1S"))
        .await
        .map_err(e("model link"))?
        .click()
        .await
        .map_err(e("open model"))?;
    wait_for_url(&c, "/models/Xiaomi/Redmi%201S").await?;
    let title = text_of(&c, "h1").await?;
    if title != "Xiaomi Redmi 1S" {
        return Err(format!("model page title {title:?}"));
    }
    check_chart(&c, "model").await?;
    shot("model.png", c.screenshot().await.map_err(e("screenshot"))?)?;

    // Finding page: the claim, the SQL and the chart.
    let finding = c
        .find(Locator::XPath("//main//ul/li/a[contains(., 'xiaomi.com') and contains(., 'within')]"))
        .await
        .map_err(e("boot_phone_home finding link on the model page"))?;
    finding.click().await.map_err(e("open finding"))?;
    wait_for_url(&c, "/findings/").await?;
    let claim = text_of(&c, "h1").await?;
    if !(claim.contains("Redmi 1S") && claim.contains("xiaomi.com") && claim.contains("seconds of booting")) {
        return Err(format!("finding claim {claim:?}"));
    }
    let sql = c.find(Locator::Css("pre.sql")).await.map_err(e("SQL block"))?.text().await.map_err(e("SQL"))?;
    if !(sql.contains("registrable_domain") && sql.contains("<= 60")) {
        return Err(format!("finding SQL lacks the rule with its parameters:\n{sql}"));
    }
    let page = c.find(Locator::Css("main")).await.map_err(e("main"))?.text().await.map_err(e("text"))?;
    if !page.contains("leakwatch sql --rule boot_phone_home --param window_s=60") {
        return Err(format!("finding page lacks the console command:\n{page}"));
    }
    check_chart(&c, "finding").await?;
    shot("finding.png", c.screenshot().await.map_err(e("screenshot"))?)?;

    // At phone width the page needs no horizontal scrolling.
    c.set_window_size(390, 844).await.map_err(e("phone width"))?;
    no_sideways_scroll(&c, "finding page at 390 px").await?;
    shot("finding-phone.png", c.screenshot().await.map_err(e("screenshot"))?)?;
    c.close().await.map_err(e("close"))?;
    Ok(())
}

/// The page is no wider than the window: the document's width equals the
/// viewport's, so nothing scrolls sideways.
async fn no_sideways_scroll(c: &fantoccini::Client, page: &str) -> Result<(), String> {
    let widths = c
        .execute(
            "return [document.documentElement.scrollWidth, document.documentElement.clientWidth, window.innerWidth];",
            vec![],
        )
        .await
        .map_err(|e| format!("{page}: measure width: {e}"))?;
    let w: Vec<i64> = widths.as_array().map(|a| a.iter().filter_map(|v| v.as_i64()).collect()).unwrap_or_default();
    match w[..] {
        [scroll, client, _] if scroll == client => Ok(()),
        _ => Err(format!(
            "{page}: the page is {widths} px wide (document scroll width, viewport, window): it scrolls sideways"
        )),
    }
}

/// The text of the first element matching `css`, retried while the page
/// is still being replaced by a navigation.
async fn text_of(c: &fantoccini::Client, css: &str) -> Result<String, String> {
    let mut last = String::new();
    for _ in 0..50 {
        match c.find(fantoccini::Locator::Css(css)).await {
            Ok(el) => match el.text().await {
                Ok(t) => return Ok(t),
                Err(e) => last = e.to_string(),
            },
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("{css}: {last}"))
}

/// Waits until the browser has navigated to a URL containing `part`.
async fn wait_for_url(c: &fantoccini::Client, part: &str) -> Result<(), String> {
    for _ in 0..100 {
        if c.current_url().await.is_ok_and(|u| u.as_str().contains(part)) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("the browser did not reach a URL containing {part:?}"))
}

/// The page has a labelled SVG chart that the browser laid out with a
/// real size and drew marks in.
async fn check_chart(c: &fantoccini::Client, page: &str) -> Result<(), String> {
    let info = c
        .execute(
            "const s = document.querySelector('figure svg[role=img]'); if (!s) return null; \
             const r = s.getBoundingClientRect(); \
             return [r.width, r.height, s.getAttribute('aria-label') || '', s.querySelectorAll('circle,polyline,rect').length];",
            vec![],
        )
        .await
        .map_err(|e| format!("{page} chart: {e}"))?;
    let arr = info.as_array().ok_or_else(|| format!("{page} page has no chart"))?;
    let (w, h) = (arr[0].as_f64().unwrap_or(0.0), arr[1].as_f64().unwrap_or(0.0));
    let marks = arr[3].as_u64().unwrap_or(0);
    if w < 200.0 || h < 100.0 || marks < 3 || arr[2].as_str().unwrap_or("").is_empty() {
        return Err(format!("{page} chart not rendered: {info}"));
    }
    Ok(())
}

/// A consent_off_traffic finding published `on_share =
/// 1.0` from one device of one volunteer, and a model_exclusive finding a
/// population of 9 beside 8 published devices, revealing a device of an
/// unpublished model. Every published number now comes from groups that
/// pass the thresholds: a rule's own columns only when its header names
/// them computed over the row's devices, populations and evidence from
/// published models only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_published_number_rests_on_groups_that_pass_the_thresholds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = public_server(dir.path()).await;
    let mut fleet: Vec<Device> = (0..8)
        .map(|i| Device {
            volunteer: i % 3,
            vendor: "Mixed",
            model: "M1",
            firmware: "1.0",
            consent: &[("cloud_account", "off")],
            hosts: &["api.mixed-cloud.com"],
        })
        .collect();
    // One device of another model, of a fourth volunteer, with the setting on.
    fleet.push(Device {
        volunteer: 3,
        vendor: "Mixed",
        model: "M2",
        firmware: "1.0",
        consent: &[("cloud_account", "on")],
        hosts: &["api.mixed-cloud.com"],
    });
    upload(&server, dir.path(), &fleet).await;

    // The rules themselves compute numbers over the single device.
    let session = server.sessions.session().await.expect("session");
    let run = async |name: &str| {
        let sql = leakwatch_query::rules::rule(name).expect("rule").render(&Default::default()).expect("sql");
        leakwatch_query::format::render(
            &session.sql(&sql).await.expect("rule"),
            leakwatch_query::format::OutputFormat::Csv,
        )
        .expect("csv")
    };
    let consent_off = run("consent_off_traffic").await;
    assert!(consent_off.contains(",1.0,") || consent_off.contains(",1,"), "on_share from one device:\n{consent_off}");
    let exclusive = run("model_exclusive").await;
    assert!(exclusive.contains("Mixed,api.mixed-cloud.com") && exclusive.ends_with(",9,capture\n"), "{exclusive}");

    let (status, _, body) = get(server.http_addr, "/api/findings").await;
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    let findings = json.as_array().or_else(|| json["findings"].as_array()).expect("a list of findings");
    let of = |rule: &str| findings.iter().find(|f| f["rule"] == rule).unwrap_or_else(|| panic!("no {rule} finding"));
    let consent_off = of("consent_off_traffic");
    let exclusive = of("model_exclusive");
    for f in findings {
        let rule = leakwatch_query::rules::rule(f["rule"].as_str().expect("rule")).expect("a rule");
        for pair in f["numbers"].as_array().expect("numbers") {
            let name = pair[0].as_str().expect("name");
            assert!(rule.public.iter().any(|c| c == name) || ["before", "after"].contains(&name), "{name} in {f}");
        }
    }
    let numbers = consent_off["numbers"].to_string();
    assert!(!numbers.contains("share"), "no share over another group of devices: {numbers}");
    assert_eq!(exclusive["devices"], 8, "the unpublished model's device is not counted: {exclusive}");
    assert_eq!(exclusive["population_devices"], 8, "{exclusive}");
    // What the finding was read from, counted over its published devices.
    assert_eq!(exclusive["sources"], serde_json::json!([{"value": "capture", "devices": 8}]), "{exclusive}");
    assert!(!body.windows(2).any(|w| w == b"M2"), "the unpublished model is not named");
    server.shutdown().await.expect("shutdown");
}

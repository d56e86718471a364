//! `leakwatch-agent check` against a dashboard it cannot trust: answers
//! too large, refused, not findings, unreachable; each checks nothing and
//! says why. And one that answers well, with a destination no name was
//! seen for.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;

/// A one-request HTTP server on loopback that answers `head` and then
/// `body_len` bytes of `body` repeated; its address.
fn serve_once(head: String, body: Vec<u8>, body_len: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        let Ok((mut stream, _)) = listener.accept() else { return };
        let mut request = [0u8; 4096];
        let _ = stream.read(&mut request);
        let _ = stream.write_all(head.as_bytes());
        let mut sent = 0;
        while sent < body_len {
            let n = body.len().min(body_len - sent);
            if stream.write_all(&body[..n]).is_err() {
                return;
            }
            sent += n;
        }
    });
    format!("http://{addr}")
}

fn check(findings: &str, capture: &std::path::Path, labels: &[&str]) -> (Option<i32>, String, String) {
    let state = tempfile::tempdir().expect("state");
    let out = Command::new(env!("CARGO_BIN_EXE_leakwatch-agent"))
        .args(["check", "--findings", findings])
        .args(labels)
        .arg("--state-dir")
        .arg(state.path())
        .arg(capture)
        .output()
        .expect("run check");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_dashboard_answer_that_is_not_findings_checks_nothing_and_says_why() {
    let (dir, manifest) = crate::simulated_fleet(12);
    let capture = dir.path().join(&manifest.captures[0].file);
    let big = 65usize << 20;
    let cases = [
        (
            serve_once(
                format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {big}\r\n\r\n"),
                vec![b' '; 1 << 16],
                big,
            ),
            "larger than 64 MiB",
        ),
        (
            serve_once(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".into(),
                b"10000\r\n".iter().copied().chain(std::iter::repeat_n(b'x', 0x10000)).chain(*b"\r\n").collect(),
                usize::MAX / 2,
            ),
            "larger than 64 MiB",
        ),
        (
            serve_once("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".into(), Vec::new(), 0),
            "the dashboard answered 404 Not Found",
        ),
        (
            serve_once("HTTP/1.1 200 OK\r\nContent-Length: 14\r\n\r\n".into(), b"<html>hi</html".to_vec(), 14),
            "not a findings document",
        ),
        (serve_once("garbage\r\n\r\n".into(), Vec::new(), 0), "--findings"),
    ];
    for (url, reason) in cases {
        let (code, stdout, stderr) = check(&url, &capture, &[]);
        assert_eq!(code, Some(2), "{url}: {stdout}\n{stderr}");
        assert!(stdout.is_empty(), "{url}: {stdout}");
        assert!(stderr.contains(reason) && stderr.contains("nothing was checked"), "{url}: {stderr}");
    }
    // Nobody listening.
    let port = TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let (code, _, stderr) = check(&format!("http://127.0.0.1:{port}"), &capture, &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("http://127.0.0.1:{port}/api/findings")) && stderr.contains("nothing was checked"),
        "{stderr}"
    );
    // A file too large is refused before it is read.
    let large = dir.path().join("findings.json");
    std::fs::File::create(&large).expect("create").set_len(65 << 20).expect("grow");
    let (code, _, stderr) = check(large.to_str().expect("utf-8"), &capture, &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("larger than 64 MiB"), "{stderr}");
}

/// A router's capture: each LAN device is compared with the findings about
/// its model, and named by its MAC on the volunteer's terminal.
#[test]
fn a_routers_capture_is_checked_device_by_device() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_leakwatch-agent"))
        .args(["simulate", "--devices", "30", "--seed", "7", "--lan", "--out"])
        .arg(dir.path())
        .output()
        .expect("simulate");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let findings = dir.path().join("findings.json");
    std::fs::write(
        &findings,
        r#"{"site": {"base": "https://leaks.example.org", "licence": {"name": "CC BY 4.0"}}, "findings": [
             {"id": "a1", "rule": "boot_phone_home", "vendor": "Xiaomi", "model": "Redmi 1S", "domain": "xiaomi.com",
              "claim": "Redmi 1S devices contact xiaomi.com at boot.", "devices": 40, "population_devices": 40}]}"#,
    )
    .expect("write");
    let (code, stdout, stderr) = check(
        findings.to_str().expect("utf-8"),
        &dir.path().join("lan.pcap"),
        &["--lan", "--device-labels", dir.path().join("lan-devices.toml").to_str().expect("utf-8")],
    );
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let line = stdout.lines().find(|l| l.contains("xiaomi.com")).unwrap_or_else(|| panic!("{stdout}\n{stderr}"));
    // "your Xiaomi Redmi 1S (aa:bb:cc:dd:ee:ff) contacted ..." or, for a
    // device the labels do not name, "your unlabelled device (...)".
    let mac = line.split(" (").nth(1).and_then(|r| r.split(')').next()).unwrap_or_default();
    assert!(mac.len() == 17 && mac.split(':').count() == 6, "{line}");
    assert!(line.ends_with("See https://leaks.example.org/findings/a1"), "{line}");
    assert!(stderr.contains("nothing was sent"), "{stderr}");
}

/// A phone's live stream (PCAPdroid over UDP, here replayed from a Redmi
/// 1S capture) is captured for `--seconds` and then checked.
#[test]
fn a_live_stream_is_captured_for_its_seconds_then_checked() {
    use std::io::BufRead as _;
    let (dir, manifest) = crate::simulated_fleet(12);
    let entry = manifest.captures.iter().find(|c| c.model == "Redmi 1S").expect("a Redmi 1S capture");
    let findings = dir.path().join("findings.json");
    std::fs::write(
        &findings,
        r#"{"site": {"base": "https://leaks.example.org"}, "findings": [
             {"id": "a1", "rule": "boot_phone_home", "vendor": "Xiaomi", "model": "Redmi 1S", "domain": "xiaomi.com",
              "claim": "Redmi 1S devices contact xiaomi.com at boot.", "devices": 40, "population_devices": 40}]}"#,
    )
    .expect("write");
    let state = tempfile::tempdir().expect("state");
    let mut child = Command::new(env!("CARGO_BIN_EXE_leakwatch-agent"))
        .args([
            "check",
            "--pcapdroid-udp",
            "127.0.0.1:0",
            "--seconds",
            "6",
            "--vendor",
            "Xiaomi",
            "--model",
            "Redmi 1S",
        ])
        .arg("--findings")
        .arg(&findings)
        .arg("--state-dir")
        .arg(state.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("check");
    let mut stderr = std::io::BufReader::new(child.stderr.take().expect("stderr"));
    let mut line = String::new();
    while !line.contains("udp://") {
        line.clear();
        assert!(stderr.read_line(&mut line).expect("read") > 0, "check ended before listening");
    }
    let addr = line.split("udp://").nth(1).and_then(|r| r.split_whitespace().next()).expect("address").to_string();
    let replay = Command::new(env!("CARGO_BIN_EXE_leakwatch-agent"))
        .args(["replay", "--speed", "100", "--to", &addr])
        .arg(dir.path().join(&entry.file))
        .output()
        .expect("replay");
    assert!(replay.status.success(), "{}", String::from_utf8_lossy(&replay.stderr));
    let out = child.wait_with_output().expect("wait");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).expect("stderr");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{rest}");
    assert!(
        stdout.lines().any(|l| l.starts_with("your Xiaomi Redmi 1S contacted ") && l.contains("xiaomi.com")),
        "{stdout}\n{rest}"
    );
    assert!(
        rest.contains("checked 1 devices against 1 published findings") && rest.contains("nothing was sent"),
        "{rest}"
    );
}

//! `run`: live capture from a phone's PCAPdroid stream and from an
//! interface.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::net::UdpSocket;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::simulated_fleet;

const AGENT: &str = env!("CARGO_BIN_EXE_leakwatch-agent");

/// Kills the child if the test fails early.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The records of a classic little-endian microsecond pcap file: (seconds,
/// microseconds, frame).
fn pcap_records(bytes: &[u8]) -> Vec<(u32, u32, Vec<u8>)> {
    assert_eq!(&bytes[..4], &0xa1b2_c3d4u32.to_le_bytes(), "simulated captures are LE microsecond pcap");
    let word = |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    let mut out = Vec::new();
    let mut at = 24;
    while at + 16 <= bytes.len() {
        let len = word(at + 8) as usize;
        out.push((word(at), word(at + 4), bytes[at + 16..at + 16 + len].to_vec()));
        at += 16 + len;
    }
    out
}

/// PCAPdroid's trailer for `app` (uid 10123).
fn trailer(app: &str) -> Vec<u8> {
    let mut t = 0x0107_2021u32.to_be_bytes().to_vec();
    t.extend_from_slice(&10123i32.to_be_bytes());
    let mut name = app.as_bytes().to_vec();
    name.resize(20, 0);
    t.extend_from_slice(&name);
    t.extend_from_slice(&[0; 4]);
    t
}

/// Sums bytes out per (domain, address, port, transport).
fn per_destination(lines: &[Value]) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for l in lines {
        let key = format!("{} {} {} {}", l["domain"], l["dst_ip"], l["dst_port"], l["transport"]);
        *out.entry(key).or_default() += l["bytes_out"].as_u64().unwrap_or(0);
    }
    out
}

fn jsonl(stdout: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}

fn terminate(child: &Child) {
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
    assert!(status.success());
}

/// Waits for a stderr line containing `marker`; returns it. The rest of
/// stderr is collected by a thread and returned by the handle.
fn wait_for_line(child: &mut Child, marker: &str) -> (String, std::thread::JoinHandle<String>) {
    let stderr = child.stderr.take().expect("stderr piped");
    let (tx, rx) = std::sync::mpsc::channel();
    let marker = marker.to_string();
    let handle = std::thread::spawn(move || {
        let mut all = String::new();
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !sent && line.contains(&marker) {
                let _ = tx.send(line.clone());
                sent = true;
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let line = rx.recv_timeout(Duration::from_secs(30)).expect("the agent announced its source");
    (line, handle)
}

/// Streams `file` to `run --pcapdroid-udp --dry-run` (with `extra` flags)
/// as PCAPdroid sends it, with its trailer naming `app` when given, stops
/// the agent with SIGTERM and returns its records, its stderr and the frames
/// sent.
fn run_stream(
    file: &std::path::Path,
    state: &std::path::Path,
    extra: &[&str],
    app: Option<&str>,
) -> (Vec<Value>, String, usize) {
    let mut child = Running(
        Command::new(AGENT)
            .args(["run", "--pcapdroid-udp", "127.0.0.1:0", "--dry-run", "--report-interval", "3600", "--state-dir"])
            .arg(state)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run"),
    );
    let (line, stderr) = wait_for_line(&mut child.0, "udp://");
    let addr = line.rsplit("udp://").next().expect("address").trim().to_string();
    // The pcap header (Ethernet), then records, several per datagram.
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let mut header = 0xa1b2_c3d4u32.to_le_bytes().to_vec();
    header.extend_from_slice(&[2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0]);
    header.extend_from_slice(&1u32.to_le_bytes());
    socket.send_to(&header, &addr).expect("send header");
    let records = pcap_records(&std::fs::read(file).expect("read capture"));
    let mut datagram = Vec::new();
    for (i, (secs, micros, frame)) in records.iter().enumerate() {
        let mut frame = frame.clone();
        if let Some(app) = app {
            frame.extend(trailer(app));
        }
        for word in [*secs, *micros, frame.len() as u32, frame.len() as u32] {
            datagram.extend_from_slice(&word.to_le_bytes());
        }
        datagram.extend_from_slice(&frame);
        if datagram.len() > 4000 || i + 1 == records.len() {
            socket.send_to(&datagram, &addr).expect("send");
            datagram.clear();
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    terminate(&child.0);
    let mut stdout = Vec::new();
    std::io::Read::read_to_end(&mut child.0.stdout.take().expect("stdout"), &mut stdout).expect("read stdout");
    let exit = child.0.wait().expect("wait");
    let stderr = stderr.join().expect("stderr thread");
    assert!(exit.success(), "{stderr}");
    (jsonl(&stdout), stderr, records.len())
}

fn import_dry_run(file: &std::path::Path, state: &std::path::Path, extra: &[&str]) -> Vec<Value> {
    let import = Command::new(AGENT)
        .args(["import", "--dry-run", "--format", "jsonl", "--state-dir"])
        .arg(state)
        .args(extra)
        .arg(file)
        .output()
        .expect("import");
    assert!(import.status.success(), "{}", String::from_utf8_lossy(&import.stderr));
    jsonl(&import.stdout)
}

#[test]
fn phone_stream_gives_the_same_records_as_the_capture_file_with_the_app() {
    let (dir, manifest) = simulated_fleet(1);
    let file = dir.path().join(&manifest.captures[0].file);
    let state = tempfile::tempdir().expect("state");
    let expected = per_destination(&import_dry_run(&file, state.path(), &[]));
    // The phone's labels from the configuration, as a service has them.
    let config = state.path().join("agent.toml");
    std::fs::write(&config, "[device]\nvendor = \"Fairphone\"\nmodel = \"FP4\"\n").expect("write config");
    let config_flag = ["--config", config.to_str().expect("utf-8 path")];
    let (lines, stderr, frames) = run_stream(&file, state.path(), &config_flag, Some("com.example.phone"));
    assert!(stderr.contains(&format!("captured {frames} frames")), "{stderr}");
    assert!(!lines.is_empty(), "{stderr}");
    for l in &lines {
        assert_eq!(l["app"], "com.example.phone", "{l}");
        assert_eq!((&l["device"]["vendor"], &l["device"]["model"]), (&"Fairphone".into(), &"FP4".into()), "{l}");
    }
    assert_eq!(per_destination(&lines), expected, "same destinations and bytes as importing the file");
}

#[test]
fn live_lan_mode_gives_each_device_its_boots_like_importing_the_capture() {
    let (dir, manifest) = simulated_fleet(6);
    let (lan, labels) =
        leakwatch_agent::simulate::write_lan_capture(dir.path(), &manifest).expect("LAN capture of the fleet");
    let labels = labels.to_string_lossy().to_string();
    let state = tempfile::tempdir().expect("state");
    let lan_flags = ["--lan", "--device-labels", labels.as_str()];
    let key = |lines: &[Value]| {
        let mut out: BTreeMap<String, u64> = BTreeMap::new();
        for l in lines {
            let d = &l["device"];
            let k = format!(
                "{} {} {} {} {} {} {}",
                d["vendor"],
                d["model"],
                d["boot_source"],
                l["domain"],
                l["dst_ip"],
                l["dst_port"],
                l["seconds_since_boot"]
            );
            *out.entry(k).or_default() += l["bytes_out"].as_u64().unwrap_or(0);
        }
        out
    };
    let expected = key(&import_dry_run(&lan, state.path(), &lan_flags));
    let (lines, stderr, _) = run_stream(&lan, state.path(), &lan_flags, None);
    let devices: std::collections::BTreeSet<String> =
        lines.iter().map(|l| l["device"]["device_pseudonym"].to_string()).collect();
    assert_eq!(devices.len(), manifest.devices as usize, "one device per LAN device: {stderr}");
    assert!(lines.iter().all(|l| l["device"]["boot_source"] == "BOOT_SOURCE_DHCP"));
    assert_eq!(key(&lines), expected, "same devices, boots, destinations and bytes as importing the capture");
}

/// Copies the agent binary where an unprivileged user can run it.
fn world_executable_agent() -> (tempfile::TempDir, std::path::PathBuf) {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod dir");
    let bin = dir.path().join("leakwatch-agent");
    std::fs::copy(AGENT, &bin).expect("copy agent");
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod bin");
    (dir, bin)
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}

#[test]
fn interface_capture_needs_cap_net_raw_and_says_so() {
    let (dir, bin) = world_executable_agent();
    let home = dir.path().join("home");
    std::fs::create_dir(&home).expect("home");
    std::fs::set_permissions(&home, std::os::unix::fs::PermissionsExt::from_mode(0o777)).expect("chmod home");
    let mut cmd = if is_root() {
        // Drop every capability by becoming nobody.
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"]).arg(&bin);
        c
    } else {
        Command::new(&bin)
    };
    let out = cmd
        .env("HOME", &home)
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("XDG_STATE_HOME")
        .args(["run", "--interface", "lo", "--dry-run", "--state-dir"])
        .arg(home.join("state"))
        .output()
        .expect("run agent unprivileged");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("CAP_NET_RAW") && stderr.contains("lo"), "{stderr}");

    let out = Command::new(AGENT)
        .args(["run", "--interface", "no-such-if0", "--dry-run", "--state-dir"])
        .arg(dir.path().join("state2"))
        .output()
        .expect("run agent");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("no interface \"no-such-if0\""), "{stderr}");
}

#[test]
fn interface_capture_sees_traffic_when_permitted() {
    if !is_root() {
        eprintln!("not root: interface capture is covered by the CAP_NET_RAW error test only");
        return;
    }
    let state = tempfile::tempdir().expect("state");
    let mut child = Running(
        Command::new(AGENT)
            .args(["run", "--interface", "lo", "--dry-run", "--report-interval", "1", "--state-dir"])
            .arg(state.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run"),
    );
    let (_, stderr) = wait_for_line(&mut child.0, "capturing on lo");
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let target = UdpSocket::bind("127.0.0.1:0").expect("target");
    for _ in 0..20 {
        socket.send_to(b"leakwatch", target.local_addr().expect("addr")).expect("send");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    terminate(&child.0);
    let exit = child.0.wait().expect("wait");
    let stderr = stderr.join().expect("stderr");
    assert!(exit.success(), "{stderr}");
    let frames: u64 = stderr
        .lines()
        .find_map(|l| l.strip_prefix("captured ").and_then(|r| r.split(' ').next()).and_then(|n| n.parse().ok()))
        .unwrap_or_else(|| panic!("no capture summary: {stderr}"));
    assert!(frames >= 20, "saw our 20 datagrams: {stderr}");
}

/// A device's cloud connection, opened 3 s after boot and never closed:
/// `run` reports it in the first report after it opened, while it is still
/// open (the device's boot phone-home reaches the collector at once, not
/// when the connection ends hours later), then its later traffic, counted
/// as one connection whose bytes add up.
#[test]
fn a_connection_kept_open_is_reported_in_the_first_report_after_it_opened() {
    use etherparse::PacketBuilder;
    use leakwatch_agent::simulate::PcapWriter;

    const S: i64 = 1_000_000;
    let (dev, cloud, router) = ([192, 168, 1, 20], [203, 0, 113, 50], [192, 168, 1, 1]);
    let (dev_mac, router_mac) = ([0x02, 0, 0, 0, 0, 0x20], [0x02, 0, 0, 0, 0, 1]);
    let dir = tempfile::tempdir().expect("tempdir");
    let capture = dir.path().join("open.pcap");
    let mut w = PcapWriter::new(std::fs::File::create(&capture).expect("create"), 1).expect("pcap");
    let frame = |b: etherparse::PacketBuilderStep<etherparse::TcpHeader>, payload: &[u8]| {
        let mut buf = Vec::new();
        b.write(&mut buf, payload).expect("frame");
        buf
    };
    let t0 = 1_800_000_000 * S;
    // Boot: the device's first packet (a DNS query to the router).
    let mut dns = Vec::new();
    PacketBuilder::ethernet2(dev_mac, router_mac)
        .ipv4(dev, router, 64)
        .udp(5353, 53)
        .write(&mut dns, b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x04time\x00\x00\x01\x00\x01")
        .expect("dns");
    w.write_frame(t0, &dns).expect("write");
    let out = |seq: u32| PacketBuilder::ethernet2(dev_mac, router_mac).ipv4(dev, cloud, 64).tcp(40000, 443, seq, 64240);
    w.write_frame(t0 + 3 * S, &frame(out(1000).syn(), &[])).expect("write");
    let hello = leakwatch_agent::parsers::tls::build_client_hello("cloud.vendor.example", &["h2"], [9; 32]);
    let mut seq = 1001;
    w.write_frame(t0 + 3 * S + 100_000, &frame(out(seq).ack(1).psh(), &hello)).expect("write");
    seq += hello.len() as u32;
    let mut sent_out = hello.len() as u64;
    // A keep-alive every half second until 7 s; no FIN.
    for i in 0..8 {
        w.write_frame(t0 + 3_500_000 + i * 500_000, &frame(out(seq).ack(1).psh(), &[0x17; 100])).expect("write");
        seq += 100;
        sent_out += 100;
    }
    w.finish().expect("finish");

    let state = tempfile::tempdir().expect("state");
    let mut child = Running(
        Command::new(AGENT)
            .args(["run", "--pcapdroid-udp", "127.0.0.1:0", "--dry-run", "--report-interval", "1"])
            .args(["--vendor", "Acme", "--model", "Plug", "--state-dir"])
            .arg(state.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run"),
    );
    let (line, stderr) = wait_for_line(&mut child.0, "udp://");
    let addr = line.rsplit("udp://").next().expect("address").trim().to_string();
    // Each record line with when it was printed.
    let stdout = child.0.stdout.take().expect("stdout");
    let lines = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .map(|l| (std::time::Instant::now(), serde_json::from_str::<Value>(&l).expect("json")))
            .collect::<Vec<_>>()
    });
    let replay =
        Command::new(AGENT).args(["replay", "--speed", "1", "--to", &addr]).arg(&capture).output().expect("replay");
    assert!(replay.status.success(), "{}", String::from_utf8_lossy(&replay.stderr));
    let replay_done = std::time::Instant::now();
    std::thread::sleep(Duration::from_millis(1500));
    terminate(&child.0);
    let exit = child.0.wait().expect("wait");
    let stderr = stderr.join().expect("stderr");
    assert!(exit.success(), "{stderr}");
    let cloud_lines: Vec<(std::time::Instant, Value)> =
        lines.join().expect("stdout").into_iter().filter(|(_, l)| l["domain"] == "cloud.vendor.example").collect();
    assert!(cloud_lines.len() >= 2, "reported in parts: {cloud_lines:?}\n{stderr}");
    let (printed, first) = &cloud_lines[0];
    assert!(*printed < replay_done, "reported while the connection was open: {first}");
    assert_eq!(first["connections"], 1, "{first}");
    let since_boot = first["seconds_since_boot"].as_f64().expect("seconds");
    assert!((2.5..4.5).contains(&since_boot), "opened about 3 s after boot: {first}");
    assert!(first["bytes_out"].as_u64().expect("bytes") < sent_out, "only what it did so far: {first}");
    assert_eq!(first["device"]["model"], "Plug");
    let connections: u64 = cloud_lines.iter().map(|(_, l)| l["connections"].as_u64().expect("connections")).sum();
    let bytes: u64 = cloud_lines.iter().map(|(_, l)| l["bytes_out"].as_u64().expect("bytes")).sum();
    assert_eq!((connections, bytes), (1, sent_out), "one connection; its bytes add up across reports");
}

/// Under systemd (`Type=notify`, `WatchdogSec=`), `run` says when it is
/// ready, pings the watchdog while its capture loop turns, and says when
/// it stops.
#[cfg(unix)]
#[test]
fn run_tells_systemd_it_is_ready_alive_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("notify.sock");
    let manager = UnixDatagram::bind(&path).expect("bind");
    manager.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut child = Running(
        Command::new(AGENT)
            .args(["run", "--pcapdroid-udp", "127.0.0.1:0", "--dry-run", "--vendor", "Acme", "--model", "Plug"])
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .env("NOTIFY_SOCKET", &path)
            .env("WATCHDOG_USEC", "200000")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run"),
    );
    let (_, stderr) = wait_for_line(&mut child.0, "udp://");
    let mut buf = [0u8; 512];
    let mut next = || {
        let n = manager.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let ready = next();
    assert!(ready.starts_with("READY=1\nSTATUS=receiving a PCAPdroid stream on udp://127.0.0.1:"), "{ready}");
    // Half the watchdog interval apart.
    let started = std::time::Instant::now();
    let mut pings = 0;
    while pings < 3 {
        if next() == "WATCHDOG=1" {
            pings += 1;
        }
    }
    assert!(started.elapsed() >= Duration::from_millis(200), "pings every 100 ms, not more often");
    terminate(&child.0);
    let mut stopping = String::new();
    while !stopping.starts_with("STOPPING=1") {
        stopping = next();
    }
    assert!(child.0.wait().expect("wait").success(), "{}", stderr.join().expect("stderr"));
}

/// A device on all day, reported as live mode reports it every 15
/// minutes: the contact it makes at boot and repeats all day (gaps of 5
/// to 15 minutes) gives a record in nearly every report, each inside the
/// day.
#[test]
fn a_day_long_boot_reported_every_15_minutes_gives_a_record_per_destination_and_window() {
    use leakwatch_agent::import::DeviceLabels;
    use leakwatch_agent::simulate::{FleetProfile, simulate_fleet};
    let profile = FleetProfile::from_toml(
        r#"
seed = 7
boots_per_device = [1, 1]
capture_seconds = 240
start = "2026-10-01T06:00:00Z"

[[destination]]
name = "cloud.vendor.example"
ip = "203.0.113.10"
port = 443
kind = "tls"
out_bytes = [800, 1200]
in_bytes = [400, 900]

[[model]]
vendor = "Vendor"
model = "Plug"
devices = 1
oui = "d8:f1:5b"
firmware = ["1.0"]
contact = [{ destination = "cloud.vendor.example", share = 1.0, at = [2.0, 4.0] }]
"#,
    )
    .expect("profile")
    .day_long();
    let dir = tempfile::tempdir().expect("tempdir");
    let manifest = simulate_fleet(&profile, dir.path(), None, None, |_, _| {}).expect("simulate");
    let state = leakwatch_agent::state::AgentState::open(&dir.path().join("state")).expect("state");
    let labels = DeviceLabels { vendor: "Vendor".into(), model: "Plug".into(), ..Default::default() };
    let batches = leakwatch_agent::live::report_capture(
        &dir.path().join(&manifest.captures[0].file),
        labels,
        &state,
        1000,
        Duration::from_secs(900),
    )
    .expect("report");
    let records: Vec<_> = batches.iter().flat_map(|b| &b.records).collect();
    // A connection record per report (its DNS lookups are records of
    // their own); its window starts at the minute of its first
    // packet (a connection that ended after a report counts in the next).
    let cloud: Vec<_> = records.iter().filter(|r| r.domain == "cloud.vendor.example" && r.dst_port == 443).collect();
    assert!((90..=97).contains(&cloud.len()), "{} records in 96 reports", cloud.len());
    let first = records.iter().map(|r| r.seconds_since_boot).fold(f64::INFINITY, f64::min);
    let last = records.iter().map(|r| r.seconds_since_boot).fold(0.0, f64::max);
    // The last report begins within the day's last half hour.
    assert!(first < 10.0 && last > 84_600.0 && last < 86_400.0, "{first} .. {last}");
    let connections: u64 = cloud.iter().map(|r| u64::from(r.connections)).sum();
    assert!((96..=300).contains(&connections), "{connections} connections in a day");
}

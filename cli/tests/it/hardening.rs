//! Regression tests of issue 29 (hardening a public collector): each
//! attack the issue found, tried again on the real collector.

use std::path::Path;
use std::time::Duration;

use http::uri::PathAndQuery;
use leakwatch_agent::state::AgentState;
use leakwatch_agent::uploader::Uploader;
use leakwatch_proto::v1::ReportAck;
use prost::bytes::BufMut as _;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::{Code, Request, Status};

use crate::durability::spawn_serve_env;

/// Peak resident memory of process `pid` so far, KiB (`VmHWM`).
pub fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

/// Sends message bytes as they are (the test builds them by hand).
#[derive(Debug, Default, Clone, Copy)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = ReportAck;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = ReportAck;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<ReportAck>, Status> {
        prost::Message::decode(src).map(Some).map_err(|e| Status::internal(e.to_string()))
    }
}

/// Sends `message` gzip-compressed as a `Report`, with `token` if any.
async fn send_raw(url: &str, message: Vec<u8>, token: Option<&str>) -> Result<ReportAck, Status> {
    let channel =
        tonic::transport::Endpoint::from_shared(url.to_string()).expect("url").connect().await.expect("connect");
    let mut grpc = tonic::client::Grpc::new(channel).send_compressed(CompressionEncoding::Gzip);
    let mut req = Request::new(message);
    if let Some(token) = token {
        req.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("metadata"));
    }
    grpc.ready().await.expect("ready");
    grpc.unary(req, PathAndQuery::from_static("/leakwatch.v1.Collector/Report"), RawCodec).await.map(|r| r.into_inner())
}

/// Enrolls an agent with the collector at `url`; its token.
async fn enroll(url: &str, dir: &Path) -> String {
    let state = AgentState::open(dir).expect("agent state");
    Uploader::connect(url, &state, "", Duration::from_secs(10)).await.expect("enroll");
    state.credentials(url).expect("read").expect("enrolled").agent_token
}

/// A 16 KB gzip body that inflates to 8 million empty
/// records is refused before it is decoded: without a token its body is
/// not even read, with one its records are counted before anything is
/// allocated for them. Before the fix the collector's memory grew by 3 GB
/// per request.
#[tokio::test]
async fn a_gzip_bomb_is_refused_before_it_is_decoded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (serving, url) = spawn_serve_env(&dir.path().join("data"), 3600, "127.0.0.1:0", &[], &[]);
    let token = enroll(&url, &dir.path().join("agent")).await;
    // Field 4 (records), length 0: an empty FlowRecord, 8 million times
    // (16 MB, under the 16 MiB message limit).
    let bomb: Vec<u8> = [0x22, 0x00].repeat(8_000_000);
    let before = peak_rss_kib(serving.id());
    let unauthenticated = (0..4).map(|_| send_raw(&url, bomb.clone(), None));
    for result in futures::future::join_all(unauthenticated).await {
        let err = result.expect_err("no token");
        assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    }
    let authenticated = (0..4).map(|_| send_raw(&url, bomb.clone(), Some(&token)));
    for result in futures::future::join_all(authenticated).await {
        let err = result.expect_err("too many records");
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains("records: more than 10000 records, at most 10000"), "{err:?}");
    }
    let grown_mib = (peak_rss_kib(serving.id()) - before) / 1024;
    // Four messages of 16 MiB decompressed at once, and buffers: well under
    // the gigabytes one decoded bomb takes.
    assert!(grown_mib < 256, "the collector's peak memory grew by {grown_mib} MiB");
}

/// A 20 KB query of 10,000 terms over Flight SQL aborted
/// the whole collector (a gRPC worker's stack overflowed while planning),
/// and `leakwatch sql` aborted from 8,000 terms. Now it is refused with an
/// error naming the bound, and the collector keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deeply_nested_query_is_refused_and_the_collector_keeps_serving() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let (mut serving, url) = spawn_serve_env(&data, 3600, "127.0.0.1:0", &[], &[]);
    let token = crate::flight::sql_token(&data);
    let deep = format!("SELECT 1{}", "+1".repeat(10_000));
    let channel = tonic::transport::Endpoint::from_shared(url.clone()).expect("url").connect().await.expect("connect");
    let mut client = arrow_flight::sql::client::FlightSqlServiceClient::new(channel);
    client.set_token(token);
    let err = client.execute(deep.clone(), None).await.expect_err("too deep");
    let text = err.to_string();
    assert!(text.contains("nested more than 128 levels deep"), "{text}");
    assert!(serving.try_wait().expect("wait").is_none(), "the collector is still running");
    // Ingest and SQL still answer.
    enroll(&url, &dir.path().join("agent")).await;
    let info = client.execute("SELECT 1 + 1 AS two".into(), None).await.expect("a plain query");
    assert!(!info.endpoint.is_empty());

    let out = tokio::task::block_in_place(|| {
        crate::leakwatch().args(["sql", "--data-dir"]).arg(&data).arg("-c").arg(&deep).output()
    })
    .expect("run leakwatch sql");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let shown: String = stderr.chars().take(400).collect();
    assert_eq!(out.status.code(), Some(1), "an error, not a crash: {shown}");
    assert!(stderr.contains("nested more than 128 levels deep"), "{shown}");
}

/// `leakwatch serve` with the open-file limit at `nofile`, open enrollment
/// and `extra` flags; the process, its gRPC URL and its HTTP address.
fn spawn_serve_limited(
    data: &Path,
    nofile: u32,
    extra: &[&str],
) -> (crate::durability::Serving, String, std::net::SocketAddr) {
    use std::io::BufRead as _;
    let mut child = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!("ulimit -n {nofile} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_leakwatch"))
        .args(["serve", "--open-enrollment", "--grpc-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .args(["--flush-interval-secs", "1", "--data-dir"])
        .arg(data)
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn leakwatch serve");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    std::io::BufReader::new(stdout).read_line(&mut line).expect("read banner");
    let grpc = line.split("gRPC on ").nth(1).and_then(|s| s.split(',').next()).expect("gRPC address").trim();
    let http = line.split("HTTP on http://").nth(1).expect("HTTP address").trim();
    (crate::durability::Serving(child), format!("http://{grpc}"), http.parse().expect("HTTP address"))
}

/// An agent enrolled in `agent_dir` delivers ten batches of 10,000
/// records to `url` (batch ids `{prefix}-0` to `{prefix}-9`), each accepted
/// whole.
async fn deliver_100_000_records(url: &str, agent_dir: &Path, prefix: &str) {
    let token = enroll(url, agent_dir).await;
    let mut client =
        leakwatch_proto::v1::collector_client::CollectorClient::connect(url.to_string()).await.expect("connect");
    for b in 0..10 {
        let batch = crate::hostile::numbered_batch(format!("{prefix}-{b}"), format!("device-{b}"), 10_000);
        let mut req = Request::new(batch);
        req.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("metadata"));
        let ack = client.report(req).await.expect("delivered").into_inner();
        assert_eq!(ack.records_accepted, 10_000);
    }
}

/// Open descriptors of process `pid`.
fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// 355 half-sent HTTP requests from one client, with the
/// collector's open-file limit at 256, used up its descriptors; an agent
/// then delivered nothing, and SIGTERM waited on them for ever. Now one
/// client gets a few connections, the rest are closed at once, a stalled
/// request is closed after the header timeout, ingest delivers every
/// record, and SIGTERM does not wait on stalled connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_http_clients_cannot_exhaust_the_collector() {
    use std::io::{Read as _, Write as _};
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut serving, url, http) =
        spawn_serve_limited(&dir.path().join("data"), 256, &["--http-header-timeout-secs", "3"]);
    let pid = serving.id();
    let before = open_files(pid);
    let mut stalled = Vec::new();
    for _ in 0..355 {
        let Ok(mut s) = std::net::TcpStream::connect(http) else { continue };
        // Half a request: the headers never end.
        let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: leakwatch\r\n");
        stalled.push(s);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = open_files(pid);
    assert!(
        during <= before + crate::hardening::MAX_CONNECTIONS_PER_CLIENT + 8,
        "{during} descriptors open with 355 stalled clients ({before} before)"
    );

    // Ingest is unaffected: 100,000 records delivered.
    deliver_100_000_records(&url, &dir.path().join("agent"), "slow").await;

    // The stalled requests are closed once the header timeout passed.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut open = 0;
    for s in &mut stalled {
        s.set_read_timeout(Some(Duration::from_millis(200))).expect("timeout");
        let mut buf = [0u8; 256];
        if matches!(s.read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut)
        {
            open += 1;
        }
    }
    assert_eq!(open, 0, "stalled connections still open after the header timeout");
    drop(stalled);
    // A real client is served again.
    let mut s = std::net::TcpStream::connect(http).expect("connect");
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: leakwatch\r\nConnection: close\r\n\r\n").expect("write");
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("read");
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok\n"), "{answer}");

    // SIGTERM with stalled connections open: the collector stops promptly.
    let stalled: Vec<_> = (0..10)
        .filter_map(|_| {
            let mut s = std::net::TcpStream::connect(http).ok()?;
            s.write_all(b"GET / HTTP/1.1\r\n").ok()?;
            Some(s)
        })
        .collect();
    let started = std::time::Instant::now();
    let killed = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("kill");
    assert!(killed.success());
    let status = loop {
        if let Some(status) = serving.try_wait().expect("wait") {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "SIGTERM waited on stalled connections");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "{status:?}");
    drop(stalled);
}

/// Connections to the gRPC port that never send, from one address, more
/// than the collector's open-file limit (256) holds: its accept failed
/// with "too many open files", which ended the gRPC server for good, and
/// no agent delivered anything again. Now one address gets a bounded
/// number of connections (the rest are closed as they are accepted), a
/// connection that has not sent the HTTP/2 preface within the handshake
/// timeout is closed, and an agent from another address delivers all the
/// while.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_grpc_clients_cannot_take_the_ingest_port() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (serving, url, _) = spawn_serve_limited(
        &dir.path().join("data"),
        256,
        &["--grpc-handshake-timeout-secs", "5", "--grpc-max-connections-per-client", "16"],
    );
    let grpc: std::net::SocketAddr = url.trim_start_matches("http://").parse().expect("gRPC address");
    let before = open_files(serving.id());
    let connecting = tokio::time::Instant::now();
    let mut silent = silent_connections(grpc, 400).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(connecting.elapsed() < Duration::from_secs(4), "connecting took {:?}", connecting.elapsed());
    assert_eq!(still_open(&mut silent).await, 16, "one address holds 16 connections, the rest are closed");
    let during = open_files(serving.id());
    assert!(
        during <= before + 16 + 8,
        "{during} descriptors open with {} silent clients ({before} before)",
        silent.len()
    );

    // An agent on another address delivers 100,000 records meanwhile.
    let delivered = tokio::time::timeout(
        Duration::from_secs(60),
        deliver_100_000_records(&url, &dir.path().join("agent"), "silent"),
    )
    .await;
    assert!(delivered.is_ok(), "the agent delivered nothing within 60 s");

    // Past the handshake timeout every silent connection is closed, and
    // the silent address is served again.
    tokio::time::sleep_until(connecting + Duration::from_secs(6)).await;
    assert_eq!(still_open(&mut silent).await, 0, "silent connections still open after the handshake timeout");
    drop(silent);
    let mut again = silent_connections(grpc, 1).await;
    assert_eq!(again.len(), 1, "the silent address connects again");
    assert_eq!(still_open(&mut again).await, 1, "a new connection from it is kept");
}

/// tonic leaves the requests one connection may have open at once
/// unbounded (and said nothing of them to clients): the collector's first
/// HTTP/2 SETTINGS frame tells a client 128. A connection that then stays
/// open does not hold up stopping (it waited for the connection to close).
#[tokio::test]
async fn a_grpc_connection_is_told_how_many_requests_it_may_have_open() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let t = crate::TestServer::start().await;
    let mut s = tokio::net::TcpStream::connect(t.server.grpc_addr).await.expect("connect");
    // The client preface and an empty SETTINGS frame.
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0").await.expect("preface");
    let mut header = [0u8; 9];
    s.read_exact(&mut header).await.expect("the server's first frame");
    assert_eq!(header[3], 4, "SETTINGS comes first: {header:?}");
    let mut payload = vec![0u8; u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize];
    s.read_exact(&mut payload).await.expect("its payload");
    let settings: std::collections::HashMap<u16, u32> = payload
        .chunks_exact(6)
        .map(|p| (u16::from_be_bytes([p[0], p[1]]), u32::from_be_bytes([p[2], p[3], p[4], p[5]])))
        .collect();
    // SETTINGS_MAX_CONCURRENT_STREAMS
    assert_eq!(settings.get(&3), Some(&leakwatch_collector::grpc::MAX_STREAMS_PER_CONNECTION), "{settings:?}");
    let stopping = std::time::Instant::now();
    t.server.shutdown().await.expect("shutdown");
    let took = stopping.elapsed();
    assert!(took < leakwatch_collector::grpc::SHUTDOWN_GRACE + Duration::from_secs(5), "stopping took {took:?}");
    drop(s);
}

/// `n` connections to `addr` from 127.0.0.2 that send nothing.
async fn silent_connections(addr: std::net::SocketAddr, n: usize) -> Vec<tokio::net::TcpStream> {
    let mut out = Vec::new();
    for _ in 0..n {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.bind(([127, 0, 0, 2], 0).into()).expect("bind 127.0.0.2");
        // A listener that stopped accepting leaves connects hanging once
        // its backlog is full.
        if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(1), socket.connect(addr)).await {
            out.push(s);
        }
    }
    out
}

/// How many of `streams` the other end has not closed: reading what it
/// sent (the server's HTTP/2 settings) neither ends nor fails within
/// 200 ms.
async fn still_open(streams: &mut [tokio::net::TcpStream]) -> usize {
    use tokio::io::AsyncReadExt as _;
    let checks = streams.iter_mut().map(|s| async move {
        let mut buf = [0u8; 256];
        let read_to_end = async { while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {} };
        tokio::time::timeout(Duration::from_millis(200), read_to_end).await.is_err()
    });
    futures::future::join_all(checks).await.into_iter().filter(|open| *open).count()
}

/// The collector's default per-client HTTP connection limit.
pub const MAX_CONNECTIONS_PER_CLIENT: usize = leakwatch_collector::http::DEFAULT_MAX_CONNECTIONS_PER_CLIENT;

/// A tmpfs of `mib` MiB mounted at `at` for the test's length (needs root,
/// as `make test` runs in CI).
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(at: &Path, mib: u32) -> Self {
        std::fs::create_dir_all(at).expect("mkdir");
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(at)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mounting a {mib} MiB tmpfs needs root: run the tests as root, or skip with `-- --skip a_full_disk`: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self(at.to_path_buf())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// After the disk filled and space came back, every
/// report was refused until a restart, while /healthz said ok and no
/// rejection was counted. Now the log is opened again once it can be
/// written, the failure shows in /readyz (and the failed flush beside it)
/// and the metrics meanwhile, /healthz stays alive, and nothing
/// acknowledged is lost or stored twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_reported_and_recovered_from_without_a_restart() {
    use leakwatch_proto::v1::collector_client::CollectorClient;
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = SmallDisk::mount(&dir.path().join("disk"), 48);
    let server =
        leakwatch_collector::server::Server::start(crate::serve_config(&disk.0.join("data"))).await.expect("start");
    let t = crate::TestServer { server, dir };
    let url = t.url();
    let token = enroll(&url, &t.dir.path().join("agent")).await;
    let mut client = CollectorClient::connect(url).await.expect("connect");
    let report = |i: usize| {
        let mut req = Request::new(crate::hostile::numbered_batch(format!("disk-{i}"), "d".into(), 200));
        req.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("metadata"));
        req
    };
    let health = async || {
        let (status, _, body) = crate::dashboard::get(t.server.http_addr, "/readyz").await;
        (status, String::from_utf8_lossy(&body).into_owned())
    };
    client.report(report(0)).await.expect("stored while there is room");
    // Fill the disk.
    let filler = disk.0.join("filler");
    {
        use std::io::Write as _;
        let mut f = std::fs::File::create(&filler).expect("filler");
        let chunk = vec![0u8; 1 << 20];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
    }
    let mut acked = vec![0];
    let mut refused = None;
    for i in 1..200 {
        match client.report(report(i)).await {
            Ok(_) => acked.push(i),
            Err(status) => {
                refused = Some(status);
                break;
            }
        }
    }
    let refused = refused.expect("a report is refused once the disk is full");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    let (status, body) = health().await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("the log cannot be written"), "{body}");
    // A flush meanwhile fails too (the disk is full), and says so.
    assert!(t.server.flusher.flush().await.is_err(), "a flush to a full disk");
    let (_, body) = health().await;
    assert!(body.contains("flushing the log to the store fails"), "{body}");
    // Alive all along: a liveness probe does not restart a collector that
    // recovers by itself.
    assert_eq!(crate::dashboard::get(t.server.http_addr, "/healthz").await.0, 200);
    let metrics = t.server.metrics.render(Default::default());
    assert!(!metrics.contains("reason=\"storage\"} 0"), "{metrics}");

    // Room again: the log is opened again and reports are taken.
    std::fs::remove_file(&filler).expect("free the disk");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while health().await.1.contains("the log cannot be written") {
        assert!(std::time::Instant::now() < deadline, "the log was not opened again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    t.server.flusher.flush().await.expect("a flush with room again");
    assert_eq!(health().await, (200, "ready\n".to_string()));
    let next = acked.len() + 1000;
    let ack = client.report(report(next)).await.expect("stored again without a restart").into_inner();
    assert_eq!(ack.records_accepted, 200);
    acked.push(next);
    let metrics = t.server.metrics.render(Default::default());
    assert!(metrics.contains("leakwatch_log_reopened_total 1"), "{metrics}");
    // Every acknowledged batch is there once, whole.
    let csv = t.csv("SELECT count(*) AS n, count(DISTINCT batch_id) AS b FROM flows").await;
    assert_eq!(csv.lines().nth(1), Some(format!("{},{}", acked.len() * 200, acked.len()).as_str()), "{csv}");
    t.server.shutdown().await.expect("shutdown");
}

/// One truncated Parquet file made every query fail
/// ("Corrupt footer", the file not named), on every day. Now queries leave
/// it out, the collector names it in its log and moves it to
/// `quarantine/`, and the metrics and the dashboard say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_parquet_file_is_set_aside_and_queries_answer_from_the_rest() {
    use leakwatch_proto::v1::collector_client::CollectorClient;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut config = crate::serve_config(&data);
    config.flush_interval = Duration::from_millis(200);
    let server = leakwatch_collector::server::Server::start(config).await.expect("start");
    let t = crate::TestServer { server, dir };
    let url = t.url();
    let token = enroll(&url, &t.dir.path().join("agent")).await;
    let mut client = CollectorClient::connect(url).await.expect("connect");
    for (i, day) in [(0, 0i64), (1, 1)] {
        let mut batch = crate::hostile::numbered_batch(format!("day-{i}"), "d".into(), 30);
        for r in &mut batch.records {
            r.window_start_unix_s += day * 86_400;
        }
        let mut req = Request::new(batch);
        req.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("metadata"));
        client.report(req).await.expect("stored");
    }
    t.server.flusher.flush().await.expect("flush");
    let first_day = data.join("store/flows/day=2023-11-14");
    let file = std::fs::read_dir(&first_day).expect("day dir").next().expect("a file").expect("entry").path();
    let bytes = std::fs::read(&file).expect("read");
    std::fs::write(&file, &bytes[..bytes.len() / 2]).expect("truncate");

    // Queries answer from the other day's file.
    let csv = t.csv("SELECT count(*) AS n FROM flows").await;
    assert_eq!(csv, "n\n30\n", "the truncated file's rows are left out, the rest answered");
    // The collector sets it aside, names it, and counts it.
    let name = file.file_name().expect("name").to_owned();
    let set_aside = data.join("store/quarantine/day=2023-11-14").join(&name);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !set_aside.exists() {
        assert!(std::time::Instant::now() < deadline, "{} was not set aside", file.display());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!file.exists());
    assert_eq!(std::fs::read(&set_aside).expect("kept"), &bytes[..bytes.len() / 2], "its bytes are kept");
    let metrics = t.server.metrics.render(Default::default());
    assert!(metrics.contains("leakwatch_files_quarantined_total 1"), "{metrics}");
    assert_eq!(t.csv("SELECT count(*) AS n FROM flows").await, "n\n30\n");
    t.server.dashboard.refresh().await.expect("refresh");
    let (_, _, page) = crate::dashboard::get(t.server.http_addr, "/about").await;
    let page = String::from_utf8_lossy(&page);
    assert!(page.contains("1 stored data files could not be read and were set aside"), "{page}");
    t.server.shutdown().await.expect("shutdown");
}

/// `/metrics` passes `promtool check metrics` (Debian's prometheus, which
/// `make test` installs and names in LEAKWATCH_PROMTOOL): HELP and TYPE
/// for every metric, histograms of ack latency (and of its stages), Flight SQL query time and
/// dashboard refresh time, the age of the published aggregates, build info.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_accepts_the_collectors_metrics() {
    let promtool = crate::set_by_make_test("LEAKWATCH_PROMTOOL", " (it installs prometheus)", "promtool_");
    let t = crate::TestServer::start().await;
    let (mut up, _state) = t.uploader().await;
    up.send(&crate::hostile::numbered_batch("metrics-1".into(), "d".into(), 10)).await.expect("send");
    t.server.flusher.flush().await.expect("flush");
    t.server.dashboard.refresh().await.expect("refresh");
    let (status, head, body) = crate::dashboard::get(t.server.http_addr, "/metrics").await;
    let text = String::from_utf8(body).expect("utf-8");
    assert_eq!(status, 200, "{text}");
    assert!(head.contains("content-type: text/plain; version=0.0.4"), "{head}");
    for expected in [
        "# HELP leakwatch_records_accepted_total Records stored.\n",
        "# TYPE leakwatch_records_accepted_total counter",
        "leakwatch_records_accepted_total 10",
        "# TYPE leakwatch_ack_seconds histogram",
        "leakwatch_ack_seconds_count 1",
        "leakwatch_ack_stage_seconds_count{stage=\"queued\"} 1",
        "leakwatch_ack_stage_seconds_count{stage=\"lookup\"} 1",
        "leakwatch_ack_stage_seconds_count{stage=\"write\"} 1",
        "leakwatch_ack_stage_seconds_count{stage=\"answer\"} 1",
        "leakwatch_dashboard_refresh_seconds_count ",
        "# TYPE leakwatch_published_age_seconds gauge",
        "# TYPE leakwatch_dashboard_refresh_failures gauge",
        "leakwatch_dashboard_refresh_failures 0",
        "# TYPE leakwatch_dashboard_digest_rows gauge",
        // The one flushed file: ten records, none sharing a group.
        "leakwatch_dashboard_refresh_files_undigested 1",
        // So the dashboard's own figures came from their SQL.
        "leakwatch_dashboard_refresh_merged 0",
        "leakwatch_build_info{version=\"",
        "leakwatch_reports_rejected_total{reason=\"busy\"} 0",
    ] {
        assert!(text.contains(expected), "{expected:?} missing:\n{text}");
    }
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), text.as_bytes()).expect("write");
    let out = child.wait_with_output().expect("promtool");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "promtool check metrics:\n{said}\n{text}");
    t.server.shutdown().await.expect("shutdown");
}

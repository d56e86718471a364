//! Capture → agent → gRPC → log → Parquet → SQL.

use leakwatch_agent::import::DeviceLabels;
use leakwatch_proto::v1::AckStatus;

use crate::{TestServer, external, send_capture};

#[tokio::test]
async fn external_capture_is_queryable_before_and_after_flush() {
    let t = TestServer::start().await;
    let (mut up, state) = t.uploader().await;
    let labels = DeviceLabels {
        device_id: Some("test-phone".into()),
        vendor: "Google".into(),
        model: "Pixel".into(),
        ..Default::default()
    };
    send_capture(&mut up, &state, &external("arkime/curl-enabled-tls13.pcap"), &labels).await;
    send_capture(&mut up, &state, &external("pcapdroid/metadata.pcap"), &labels).await;
    let query = "SELECT domain, domain_source FROM flows WHERE domain IN ('enabled.tls13.com', 'www.google.it') \
                 OR domain_source = 'dns' ORDER BY domain, domain_source LIMIT 50";
    // Unflushed: read from the log's tail.
    let before = t.csv(query).await;
    assert!(before.contains("enabled.tls13.com,sni"), "{before}");
    assert!(before.contains("www.google.it,sni"), "{before}");
    assert!(before.contains(",dns"), "a name learned from DNS answers: {before}");
    let flushed = t.server.flusher.flush().await.expect("flush");
    assert!(flushed.rows > 0 && flushed.files > 0);
    // Flushed: read from Parquet, same answer, nothing twice.
    assert_eq!(t.csv(query).await, before);
    let parquet: Vec<_> = walk(&t.dir.path().join("data/store/flows"));
    assert!(parquet.iter().any(|p| p.to_string_lossy().contains("day=")), "{parquet:?}");
    let counts = t.csv("SELECT count(*) AS n, count(DISTINCT batch_id) AS b FROM flows").await;
    assert_eq!(counts.lines().nth(1), Some(format!("{},2", flushed.rows).as_str()), "{counts}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        if entry.path().is_dir() {
            out.extend(walk(&entry.path()));
        } else {
            out.push(entry.path());
        }
    }
    out
}

#[tokio::test]
async fn same_batch_twice_is_stored_once() {
    let t = TestServer::start().await;
    let (mut up, state) = t.uploader().await;
    let (dir, manifest) = simulated(6);
    let entry = &manifest.captures[0];
    let labels = DeviceLabels {
        device_id: Some(entry.device_id.clone()),
        vendor: entry.vendor.clone(),
        model: entry.model.clone(),
        ..Default::default()
    };
    let imported =
        leakwatch_agent::import::import_capture(&dir.path().join(&entry.file), &labels, &state, 1000).expect("import");
    let batch = &imported.batches[0];
    let first = up.send(batch).await.expect("first");
    assert_eq!(first.status(), AckStatus::Accepted);
    let second = up.send(batch).await.expect("second");
    assert_eq!(second.status(), AckStatus::Duplicate);
    assert_eq!(second.records_already_stored, first.records_accepted);
    t.server.flusher.flush().await.expect("flush");
    // And once more after the flush.
    assert_eq!(up.send(batch).await.expect("third").status(), AckStatus::Duplicate);
    let n = t.csv("SELECT count(*) AS n FROM flows").await;
    assert_eq!(n.lines().nth(1), Some(batch.records.len().to_string().as_str()), "{n}");
}

pub fn simulated(devices: u32) -> (tempfile::TempDir, leakwatch_agent::simulate::FleetManifest) {
    let dir = tempfile::tempdir().expect("tempdir");
    let profile = leakwatch_agent::simulate::FleetProfile::from_toml(leakwatch_agent::simulate::DEFAULT_PROFILE)
        .expect("profile");
    let manifest = leakwatch_agent::simulate::simulate_fleet(&profile, dir.path(), Some(devices), Some(3), |_, _| {})
        .expect("simulate");
    (dir, manifest)
}

#[tokio::test]
async fn health_reflection_and_metrics_are_served() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let t = TestServer::start().await;
    let channel = tonic::transport::Endpoint::from_shared(t.url()).expect("url").connect().await.expect("connect");
    let mut health = HealthClient::new(channel.clone());
    let resp = health
        .check(HealthCheckRequest { service: leakwatch_proto::COLLECTOR_SERVICE_NAME.into() })
        .await
        .expect("health");
    assert_eq!(resp.into_inner().status(), ServingStatus::Serving);
    {
        use tonic_reflection::pb::v1::ServerReflectionRequest;
        use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
        let mut reflection = ServerReflectionClient::new(channel);
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut stream =
            reflection.server_reflection_info(tokio_stream::iter(vec![req])).await.expect("reflection").into_inner();
        let resp = stream.message().await.expect("answer").expect("one message");
        let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else { panic!("{resp:?}") };
        let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
        assert!(names.contains(&"leakwatch.v1.Collector") && names.contains(&"grpc.health.v1.Health"), "{names:?}");
    }
    let metrics = reqwest_like_get(t.server.http_addr, "/metrics").await;
    assert!(metrics.contains("leakwatch_batches_accepted_total 0"), "{metrics}");
    assert!(metrics.contains("leakwatch_reports_rejected_total{reason=\"invalid\"} 0"), "{metrics}");
    assert!(metrics.contains("# TYPE leakwatch_flush_lag_batches gauge\nleakwatch_flush_lag_batches 0"), "{metrics}");
    assert!(metrics.contains("leakwatch_log_bytes "), "{metrics}");
    let wal = metrics.lines().find_map(|l| l.strip_prefix("leakwatch_log_wal_bytes ")).expect("WAL gauge");
    assert!(wal.parse::<u64>().is_ok(), "{metrics}");
}

async fn reqwest_like_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    out
}

#[tokio::test]
async fn tls_collector_accepts_agents_that_trust_its_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = crate::self_signed_localhost(dir.path());
    let mut config = crate::serve_config(&dir.path().join("data"));
    config.tls = Some((cert.clone(), key));
    config.grpc.handshake_timeout = std::time::Duration::from_secs(2);
    let server = leakwatch_collector::server::Server::start(config).await.expect("start with TLS");
    let url = format!("https://localhost:{}", server.grpc_addr.port());
    // A client that starts a TLS record and stalls holds its connection
    // no longer than the handshake timeout; agents are served meanwhile.
    let stalled_since = std::time::Instant::now();
    let mut stalled = tokio::net::TcpStream::connect(server.grpc_addr).await.expect("connect");
    tokio::io::AsyncWriteExt::write_all(&mut stalled, &[0x16, 0x03, 0x01]).await.expect("write");
    let state = leakwatch_agent::state::AgentState::open(&dir.path().join("agent")).expect("state");
    let mut up = leakwatch_agent::uploader::Uploader::connect_with_ca(
        &url,
        Some(&cert),
        &state,
        "",
        std::time::Duration::from_secs(5),
    )
    .await
    .expect("enroll over TLS");
    let ack = up.send(&crate::hostile::good_batch()).await.expect("report over TLS");
    assert_eq!(ack.status(), AckStatus::Accepted);
    // A plain-text client gets nowhere.
    let plain = format!("http://localhost:{}", server.grpc_addr.port());
    let state2 = leakwatch_agent::state::AgentState::open(&dir.path().join("agent2")).expect("state");
    assert!(
        leakwatch_agent::uploader::Uploader::connect(&plain, &state2, "", std::time::Duration::from_secs(1))
            .await
            .is_err()
    );
    let mut buf = [0u8; 64];
    let closed =
        tokio::time::timeout(std::time::Duration::from_secs(5), tokio::io::AsyncReadExt::read(&mut stalled, &mut buf))
            .await
            .expect("the stalled handshake is closed");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    let held = stalled_since.elapsed();
    assert!(held >= std::time::Duration::from_secs(2), "closed after {held:?}, before the handshake timeout");
    server.shutdown().await.expect("shutdown");
}

/// A CA, a server certificate for localhost and a client certificate, all
/// as PEM files in `dir`: (ca, server cert, server key, client cert, client key).
fn mtls_files(dir: &std::path::Path) -> [std::path::PathBuf; 5] {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("ca key")).expect("ca");
    let leaf = |name: &str| {
        let key = KeyPair::generate().expect("key");
        let cert = CertificateParams::new(vec![name.to_string()]).expect("params").signed_by(&key, &ca).expect("sign");
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf("localhost");
    let (client_cert, client_key) = leaf("agent-1");
    let files = ["ca.pem", "server.pem", "server.key", "client.pem", "client.key"].map(|n| dir.join(n));
    for (path, pem) in files.iter().zip([ca.pem(), server_cert, server_key, client_cert, client_key]) {
        std::fs::write(path, pem).expect("write pem");
    }
    files
}

/// GET `path` over TLS, with the client certificate when given.
async fn https_get(
    addr: std::net::SocketAddr,
    ca: &std::path::Path,
    client: Option<(&std::path::Path, &std::path::Path)>,
    path: &str,
) -> Result<String, String> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).expect("ca") {
        roots.add(c.expect("ca cert")).expect("add root");
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let config = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(cert).expect("cert").map(|c| c.expect("cert")).collect(),
                PrivateKeyDer::from_pem_file(key).expect("key"),
            )
            .expect("client auth"),
        None => builder.with_no_client_auth(),
    };
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from("localhost").expect("name");
    let mut tls = connector.connect(name, tcp).await.map_err(|e| e.to_string())?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    tls.write_all(req.as_bytes()).await.map_err(|e| e.to_string())?;
    let mut out = String::new();
    tls.read_to_string(&mut out).await.map_err(|e| e.to_string())?;
    Ok(out)
}

#[tokio::test]
async fn client_certificates_are_required_on_grpc_and_http_when_a_client_ca_is_set() {
    let dir = tempfile::tempdir().expect("tempdir");
    let [ca, server_cert, server_key, client_cert, client_key] = mtls_files(dir.path());
    let mut config = crate::serve_config(&dir.path().join("data"));
    config.tls = Some((server_cert, server_key));
    config.client_ca = Some(ca.clone());
    let server = leakwatch_collector::server::Server::start(config).await.expect("start with mTLS");
    let url = format!("https://localhost:{}", server.grpc_addr.port());
    let timeout = std::time::Duration::from_secs(2);

    // Without a client certificate: refused.
    let state = leakwatch_agent::state::AgentState::open(&dir.path().join("anonymous")).expect("state");
    let tls = leakwatch_agent::uploader::ClientTls { ca_file: Some(ca.clone()), ..Default::default() };
    let mut up = leakwatch_agent::uploader::Uploader::open_with_tls(&url, &tls, &state, "", timeout).expect("open");
    assert!(up.ensure_enrolled().await.is_err(), "no client certificate, no enrollment");
    // With one: enrolled and reporting.
    let state = leakwatch_agent::state::AgentState::open(&dir.path().join("agent")).expect("state");
    let tls = leakwatch_agent::uploader::ClientTls {
        ca_file: Some(ca.clone()),
        cert: Some(client_cert.clone()),
        key: Some(client_key.clone()),
    };
    let mut up = leakwatch_agent::uploader::Uploader::open_with_tls(&url, &tls, &state, "", timeout).expect("open");
    let ack = up.send(&crate::hostile::good_batch()).await.expect("report over mTLS");
    assert_eq!(ack.status(), AckStatus::Accepted);

    // HTTP: TLS with the same rule.
    let ok = https_get(server.http_addr, &ca, Some((&client_cert, &client_key)), "/healthz").await.expect("healthz");
    assert!(ok.starts_with("HTTP/1.1 200") && ok.ends_with("ok\n"), "{ok}");
    let metrics = https_get(server.http_addr, &ca, Some((&client_cert, &client_key)), "/metrics").await.expect("m");
    assert!(metrics.contains("leakwatch_batches_accepted_total 1"), "{metrics}");
    assert!(https_get(server.http_addr, &ca, None, "/healthz").await.is_err(), "no client certificate, no answer");
    server.shutdown().await.expect("shutdown");
}

/// `run` end to end: a phone's PCAPdroid stream (the agent's own `replay`)
/// into `run --pcapdroid-udp`, which reports to the collector; SIGTERM
/// reports what is still open and delivers the spool before exiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_reports_a_phone_stream_to_the_collector() {
    use std::io::BufRead as _;
    let t = TestServer::start().await;
    let (caps, manifest) = simulated(1);
    let file = caps.path().join(&manifest.captures[0].file);
    let state = t.dir.path().join("phone-agent");
    let agent = crate::durability::agent_binary();
    let dry = std::process::Command::new(&agent)
        .args(["import", "--dry-run", "--format", "jsonl", "--state-dir"])
        .arg(&state)
        .arg(&file)
        .output()
        .expect("dry run");
    let expected = String::from_utf8_lossy(&dry.stdout).lines().count();
    assert!(expected > 0);

    let mut run = std::process::Command::new(&agent)
        .args(["run", "--pcapdroid-udp", "127.0.0.1:0", "--report-interval", "1", "--collector", &t.url()])
        .args(["--vendor", "Xiaomi", "--model", "Redmi 1S", "--state-dir"])
        .arg(&state)
        .env("HOME", t.dir.path())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run");
    let mut stderr = std::io::BufReader::new(run.stderr.take().expect("stderr"));
    let mut line = String::new();
    stderr.read_line(&mut line).expect("banner");
    let addr = line.rsplit("udp://").next().expect("address").trim().to_string();
    let replay = std::process::Command::new(&agent)
        .args(["replay", "--to", &addr, "--speed", "0", "--app", "com.example.phone"])
        .arg(&file)
        .output()
        .expect("replay");
    assert!(replay.status.success(), "{}", String::from_utf8_lossy(&replay.stderr));
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let status = std::process::Command::new("kill").args(["-TERM", &run.id().to_string()]).status().expect("kill");
    assert!(status.success());
    let exit = run.wait().expect("wait");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).expect("stderr");
    assert!(exit.success(), "{rest}");
    assert!(rest.contains("sent to"), "{rest}");

    let csv = t
        .csv("SELECT count(*) AS n, count(DISTINCT app) AS apps, min(app) AS app, min(vendor) AS v, min(source) AS s, max(source) AS s2 FROM flows")
        .await;
    assert_eq!(
        csv.lines().nth(1),
        Some(format!("{expected},1,com.example.phone,Xiaomi,live,live").as_str()),
        "{csv}\n{rest}"
    );
}

/// A real Tuya plug's boot names nothing (no DNS lookup; TLS with a
/// pre-shared key and no SNI to a remembered address): its phone-home on
/// port 8886 reaches the collector as a record the rules group by port.
#[tokio::test]
async fn external_a_plug_that_names_nothing_is_grouped_by_its_unusual_port() {
    let t = TestServer::start().await;
    let (mut up, state) = t.uploader().await;
    let labels = DeviceLabels {
        device_id: Some("plug".into()),
        vendor: "Tuya".into(),
        model: "Smart Plug".into(),
        ..Default::default()
    };
    send_capture(&mut up, &state, &external("devices/ssi2022/smart_power_plug_boot_measurements.pcap"), &labels).await;
    let keys = t
        .csv(
            "SELECT unnamed_destination(transport, dst_ip, CAST(dst_port AS VARCHAR)) AS destination, \
             round(min(seconds_since_boot), 1) AS first_s FROM flows WHERE domain IS NULL GROUP BY 1 ORDER BY 1",
        )
        .await;
    assert!(keys.contains("tcp/8886 (unnamed),0.1"), "{keys}");
    assert_eq!(
        t.csv("SELECT DISTINCT source FROM flows").await,
        "source\ncapture\n",
        "records say they came from a capture"
    );
    let params = [("min_devices".to_string(), "1".to_string())].into();
    let sql = leakwatch_query::rules::rule("boot_phone_home").expect("rule").render(&params).expect("render");
    let found = t.csv(&sql).await;
    assert!(found.contains("Tuya,Smart Plug,tcp/8886 (unnamed),tcp/8886 (unnamed),1,1,1.0"), "{found}");
}

//! Hostile reports are refused with InvalidArgument naming the field.

use http::uri::PathAndQuery;
use leakwatch_proto::v1::collector_client::CollectorClient;
use leakwatch_proto::v1::{DeviceInfo, FlowRecord, ReportAck, ReportBatch};
use tonic::{Code, Request};

use crate::TestServer;

async fn token(t: &TestServer) -> String {
    let (_, state) = t.uploader().await;
    state.credentials(&t.url()).expect("read").expect("enrolled").agent_token
}

fn authed<T>(msg: T, token: &str) -> Request<T> {
    let mut req = Request::new(msg);
    req.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("metadata"));
    req
}

pub fn good_batch() -> ReportBatch {
    ReportBatch {
        batch_id: "hostile-1".into(),
        sent_at_unix_ms: 0,
        device: Some(DeviceInfo { device_pseudonym: "abc".into(), ..Default::default() }),
        records: vec![FlowRecord {
            seconds_since_boot: 1.0,
            window_start_unix_s: 1_700_000_040,
            transport: 1,
            dst_ip: "93.184.216.34".into(),
            dst_port: 443,
            domain_source: 1,
            ..Default::default()
        }],
    }
}

/// [`good_batch`] as batch `batch_id` of device `device`, with `records`
/// records (ports 1000, 1001, ...).
pub fn numbered_batch(batch_id: String, device: String, records: usize) -> ReportBatch {
    let mut batch = good_batch();
    batch.batch_id = batch_id;
    batch.device = Some(DeviceInfo { device_pseudonym: device, ..Default::default() });
    let template = batch.records[0].clone();
    batch.records = (0..records).map(|r| FlowRecord { dst_port: 1000 + r as u32, ..template.clone() }).collect();
    batch
}

/// A `ReportBatch` look-alike whose string fields are raw bytes.
#[derive(Clone, PartialEq, prost::Message)]
struct RawBatch {
    #[prost(bytes = "vec", tag = "1")]
    batch_id: Vec<u8>,
    #[prost(message, optional, tag = "3")]
    device: Option<RawDevice>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RawDevice {
    #[prost(bytes = "vec", tag = "1")]
    device_pseudonym: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    vendor: Vec<u8>,
}

#[tokio::test]
async fn invalid_reports_name_the_field() {
    let t = TestServer::start().await;
    let token = token(&t).await;
    let mut client = CollectorClient::connect(t.url()).await.expect("connect");
    let mut cases: Vec<(ReportBatch, &str)> = Vec::new();
    let mut b = good_batch();
    b.device = None;
    cases.push((b, "device: missing"));
    let mut b = good_batch();
    b.records = vec![b.records[0].clone(); 10_001];
    cases.push((b, "records: more than 10000 records, at most 10000"));
    let mut b = good_batch();
    b.records[0].domain = "a".repeat(1000);
    cases.push((b, "records[0].domain: 1000 bytes"));
    let mut b = good_batch();
    b.records[0].dst_ip = "10.0.0.1".into();
    cases.push((b, "records[0].dst_ip"));
    let mut b = good_batch();
    b.records[0].dst_port = 0;
    cases.push((b, "records[0].dst_port"));
    let mut b = good_batch();
    b.records[0].dst_port = 70_000;
    cases.push((b, "records[0].dst_port: 70000 is outside 1..=65535"));
    let mut b = good_batch();
    b.records[0].transport = 0;
    cases.push((b, "records[0].transport: 0 is not"));
    let mut b = good_batch();
    b.records[0].domain_source = 42;
    cases.push((b, "records[0].domain_source: 42"));
    let mut b = good_batch();
    b.records[0].window_start_unix_s = chrono::Utc::now().timestamp() / 60 * 60 + 7 * 86_400;
    cases.push((b, "records[0].window_start_unix_s"));
    let mut b = good_batch();
    b.records[0].window_start_unix_s = 600;
    cases.push((b, "records[0].window_start_unix_s: 600 is outside"));
    let mut b = good_batch();
    b.records[0].seconds_since_boot = -1.0;
    cases.push((b, "records[0].seconds_since_boot"));
    let mut b = good_batch();
    b.records[0].interval_cv = f64::NAN;
    cases.push((b, "records[0].interval_cv"));
    let mut b = good_batch();
    if let Some(d) = b.device.as_mut() {
        d.vendor = "v".repeat(65);
    }
    cases.push((b, "device.vendor: 65 bytes"));
    let mut b = good_batch();
    if let Some(d) = b.device.as_mut() {
        d.consent = (0..40).map(|i| (format!("k{i}"), "on".to_string())).collect();
    }
    cases.push((b, "device.consent"));
    let mut b = good_batch();
    b.batch_id = "not a valid id!".into();
    cases.push((b, "batch_id"));
    let n_cases = cases.len();
    for (batch, want) in cases {
        let err = client.report(authed(batch, &token)).await.expect_err(want);
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains(want), "{:?} should name {want:?}", err.message());
    }
    // Unauthenticated without a token.
    let err = client.report(Request::new(good_batch())).await.expect_err("no token");
    assert_eq!(err.code(), Code::Unauthenticated);
    // Nothing was stored, and the refusals are counted by reason.
    let n = t.csv("SELECT count(*) AS n FROM flows").await;
    assert_eq!(n.lines().nth(1), Some("0"), "{n}");
    let metrics = t.server.metrics.render(Default::default());
    assert!(
        metrics.contains(&format!("leakwatch_reports_rejected_total{{reason=\"invalid\"}} {n_cases}")),
        "{metrics}"
    );
    assert!(metrics.contains("leakwatch_reports_rejected_total{reason=\"unauthenticated\"} 1"), "{metrics}");
}

#[tokio::test]
async fn invalid_utf8_is_invalid_argument_naming_the_field() {
    let t = TestServer::start().await;
    let token = token(&t).await;
    let channel = tonic::transport::Endpoint::from_shared(t.url()).expect("url").connect().await.expect("connect");
    let mut grpc = tonic::client::Grpc::new(channel);
    let raw = RawBatch {
        batch_id: b"ok-id".to_vec(),
        device: Some(RawDevice { device_pseudonym: b"abc".to_vec(), vendor: vec![0xff, 0xfe, b'x'] }),
    };
    grpc.ready().await.expect("ready");
    let err = grpc
        .unary::<RawBatch, ReportAck, _>(
            authed(raw, &token),
            PathAndQuery::from_static("/leakwatch.v1.Collector/Report"),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .expect_err("invalid UTF-8");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("DeviceInfo.vendor"), "{:?}", err.message());
}

#[tokio::test]
async fn oversized_message_is_refused_without_storing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = crate::serve_config(&dir.path().join("data"));
    config.max_message_bytes = 64 * 1024;
    let server = leakwatch_collector::server::Server::start(config).await.expect("start");
    let t = TestServer { server, dir };
    let token = token(&t).await;
    let mut client = CollectorClient::connect(t.url()).await.expect("connect");
    let mut b = good_batch();
    b.records = vec![b.records[0].clone(); 5000];
    let err = client.report(authed(b, &token)).await.expect_err("too large");
    assert!(matches!(err.code(), Code::OutOfRange | Code::ResourceExhausted | Code::InvalidArgument), "{err:?}");
    assert!(err.message().contains("65536"), "the limit is named: {:?}", err.message());
}

#[tokio::test]
async fn per_agent_rate_limit_answers_resource_exhausted_with_a_retry_hint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = crate::serve_config(&dir.path().join("data"));
    config.limits.agent_reports_per_sec = 1; // burst of 2
    let server = leakwatch_collector::server::Server::start(config).await.expect("start");
    let t = TestServer { server, dir };
    let token = token(&t).await;
    let mut client = CollectorClient::connect(t.url()).await.expect("connect");
    let mut limited = None;
    for i in 0..6 {
        let mut b = good_batch();
        b.batch_id = format!("rate-{i}");
        if let Err(status) = client.report(authed(b, &token)).await {
            limited = Some(status);
            break;
        }
    }
    let status = limited.expect("the bucket runs dry within 6 quick reports");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("1 reports/s"), "{}", status.message());
    let hint: u64 = status
        .metadata()
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("hint");
    assert!((1..=2000).contains(&hint), "{hint}");
    // The agent's uploader honours the hint and delivers everything.
    let (mut up, _) = t.uploader().await;
    for i in 0..4 {
        let mut b = good_batch();
        b.batch_id = format!("paced-{i}");
        up.send(&b).await.expect("delivered after waiting");
    }
    assert!(up.stats.retries > 0, "some sends waited for the bucket");
}

#[tokio::test]
async fn reports_wait_while_the_flusher_is_behind_and_are_taken_once_it_caught_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = crate::serve_config(&dir.path().join("data"));
    config.limits.max_unflushed_batches = 2;
    let server = leakwatch_collector::server::Server::start(config).await.expect("start");
    let t = TestServer { server, dir };
    let token = token(&t).await;
    let mut client = CollectorClient::connect(t.url()).await.expect("connect");
    let batch = |i: usize| {
        let mut b = good_batch();
        b.batch_id = format!("lag-{i}");
        authed(b, &token)
    };
    client.report(batch(0)).await.expect("stored");
    client.report(batch(1)).await.expect("stored");
    let status = client.report(batch(2)).await.expect_err("two batches wait for the flusher");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("2 acknowledged batches wait for the flusher (limit 2"), "{}", status.message());
    assert!(status.metadata().get("retry-after-ms").is_some(), "{status:?}");
    t.server.flusher.flush().await.expect("flush");
    client.report(batch(2)).await.expect("taken once flushed");
    let n = t.csv("SELECT count(DISTINCT batch_id) AS n FROM flows").await;
    assert_eq!(n.lines().nth(1), Some("3"), "{n}");
    let metrics = t.server.metrics.render(Default::default());
    assert!(metrics.contains("leakwatch_reports_rejected_total{reason=\"busy\"} 1"), "{metrics}");
}

#[tokio::test]
async fn a_batch_id_reused_with_different_content_is_refused() {
    let t = TestServer::start().await;
    let token = token(&t).await;
    let mut client = CollectorClient::connect(t.url()).await.expect("connect");
    let batch = good_batch();
    client.report(authed(batch.clone(), &token)).await.expect("stored");
    let mut changed = batch.clone();
    changed.records[0].bytes_out += 1;
    let err = client.report(authed(changed, &token)).await.expect_err("reused id");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("stored before with different content"), "{}", err.message());
    // The same content again is a plain duplicate.
    let ack = client.report(authed(batch, &token)).await.expect("duplicate").into_inner();
    assert_eq!(ack.status(), leakwatch_proto::v1::AckStatus::Duplicate);
    let n = t.csv("SELECT count(*) AS n FROM flows").await;
    assert_eq!(n.lines().nth(1), Some("1"), "{n}");
    let metrics = t.server.metrics.render(Default::default());
    assert!(metrics.contains("leakwatch_reports_rejected_total{reason=\"conflict\"} 1"), "{metrics}");
    assert!(metrics.contains("leakwatch_batches_accepted_total 1\n"), "{metrics}");
    let bytes = prost::Message::encoded_len(&good_batch());
    assert!(metrics.contains(&format!("leakwatch_bytes_accepted_total {bytes}\n")), "{metrics}");
}

#[tokio::test]
async fn a_batch_id_is_forgotten_once_retention_deleted_its_records_and_not_before() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = crate::serve_config(&dir.path().join("data"));
    config.retention_days = Some(30);
    config.flush_interval = std::time::Duration::from_millis(100);
    let server = leakwatch_collector::server::Server::start(config).await.expect("start");
    let t = TestServer { server, dir };
    let token = token(&t).await;
    let mut client = CollectorClient::connect(t.url()).await.expect("connect");
    let old = good_batch(); // 2023: past any 30-day retention
    let mut recent = good_batch();
    recent.batch_id = "recent".into();
    recent.records[0].window_start_unix_s = chrono::Utc::now().timestamp() / 60 * 60;
    let mut report =
        async |b: &ReportBatch| client.report(authed(b.clone(), &token)).await.expect("report").into_inner();
    let count = async |id: &str| {
        let csv = t.csv(&format!("SELECT count(*) AS n FROM flows WHERE batch_id = '{id}'")).await;
        csv.lines().nth(1).expect("a row").to_string()
    };
    for b in [&old, &recent] {
        assert_eq!(report(b).await.status(), leakwatch_proto::v1::AckStatus::Accepted);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    // The old batch's partition is deleted; a retry of it is stored again
    // once its id went with it (one pass after the deletion at most).
    loop {
        assert!(std::time::Instant::now() < deadline, "the old batch's id was never forgotten");
        if count("hostile-1").await == "0" && report(&old).await.status() == leakwatch_proto::v1::AckStatus::Accepted {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // The recent batch's id is kept, and its records.
    assert_eq!(report(&recent).await.status(), leakwatch_proto::v1::AckStatus::Duplicate);
    assert_eq!(count("recent").await, "1");
    let metrics = t.server.metrics.render(Default::default());
    let counter = |name: &str| -> u64 {
        let line = metrics.lines().find_map(|l| l.strip_prefix(&format!("{name} "))).expect(name);
        line.parse().expect("a count")
    };
    assert!(counter("leakwatch_files_expired_total") >= 1, "{metrics}");
    assert!(counter("leakwatch_batch_ids_expired_total") >= 1, "{metrics}");
}

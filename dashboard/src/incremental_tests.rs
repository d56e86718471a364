//! A refresh that reads only what was flushed since the last one publishes
//! what a refresh that reads everything publishes: a property test over
//! random flush histories of two collectors sharing one store (flushes,
//! compactions, deletions, copies of a batch held by both collectors).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arrow::array::AsArray as _;
use arrow::datatypes::Int64Type;
use leakwatch_query::digest::Digests;
use leakwatch_query::format::{OutputFormat, render};
use leakwatch_query::rules::builtin_rules;
use leakwatch_query::{
    BATCHES_KEY, BatchLabels, FlowBatchBuilder, FlowStore, QueryConfig, RecordValues, SessionFactory, TailError,
    TailSnapshot, TailSource, batch_list, flows_schema,
};
use object_store::ObjectStoreExt as _;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use parquet::file::metadata::KeyValue;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};

use crate::aggregate::{Snapshot, Thresholds, compute, evidence_of, rule_table};
use crate::merged::{ANSWERED, Merged};
use crate::queries::queries;

/// Models by device: device `d` is `MODELS[d % 3]`.
const MODELS: [(&str, &str); 3] = [("Acme", "Cam"), ("Acme", "Plug"), ("Globex", "Phone")];
/// Host names by vendor (`""`: a destination no name was seen for).
const HOSTS: [[&str; 4]; 2] = [
    ["api.acme.example", "cdn.shared.example", "time.shared.example", ""],
    ["tel.globex.example", "cdn.shared.example", "time.shared.example", ""],
];
/// Midnight UTC of the first day records fall on.
const DAY0: i64 = 1_795_996_800;
const COLLECTORS: [&str; 2] = ["a", "b"];

/// One record: small ranges, so that records share a digest row often.
#[derive(Debug, Clone)]
struct Rec {
    device: u8,
    boot: u8,
    host: u8,
    ip: u8,
    port: u8,
    seconds_since_boot: Option<u16>,
    minute: u16,
    bytes_out: Option<u16>,
    bytes_in: Option<u16>,
    timer: Option<(u8, u8)>,
}

fn rec() -> impl Strategy<Value = Rec> {
    (
        (0u8..18, 0u8..3, 0u8..4, 0u8..2, 0u8..2),
        (proptest::option::weighted(0.9, 0u16..400), 0u16..1440),
        (proptest::option::weighted(0.9, 0u16..9000), proptest::option::weighted(0.9, 0u16..3000)),
        proptest::option::weighted(0.5, (0u8..40, 0u8..4)),
    )
        .prop_map(
            |((device, boot, host, ip, port), (seconds_since_boot, minute), (bytes_out, bytes_in), timer)| Rec {
                device,
                boot,
                host,
                ip,
                port,
                seconds_since_boot,
                minute,
                bytes_out,
                bytes_in,
                timer,
            },
        )
}

/// A step of a store's history.
#[derive(Debug, Clone)]
enum Op {
    /// A collector writes a file of one day's records, with the list of
    /// its batches in the footer or without.
    Flush { collector: usize, day: u8, recs: Vec<Rec>, listed: bool },
    /// A collector merges its files of a day into one, deleting them or
    /// not yet.
    Compact { collector: usize, day: u8, delete: bool },
    /// A file goes (retention).
    Delete { file: usize },
    /// A batch of a file is stored by the other collector too.
    Copy { file: usize, batch: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..2usize, 0..2u8, proptest::collection::vec(rec(), 1..60), proptest::bool::weighted(0.8))
            .prop_map(|(collector, day, recs, listed)| Op::Flush { collector, day, recs, listed }),
        1 => (0..2usize, 0..2u8, any::<bool>()).prop_map(|(collector, day, delete)| Op::Compact { collector, day, delete }),
        1 => any::<usize>().prop_map(|file| Op::Delete { file }),
        2 => (any::<usize>(), any::<usize>()).prop_map(|(file, batch)| Op::Copy { file, batch }),
    ]
}

/// A batch: its id, device and records.
#[derive(Debug, Clone)]
struct Batch {
    id: String,
    device: u8,
    recs: Vec<Rec>,
}

/// A file in the store, as the test wrote it.
#[derive(Debug, Clone)]
struct Stored {
    collector: usize,
    day: u8,
    range: (u64, u64),
    batches: Vec<Batch>,
    key: Path,
}

/// The agent id collector `collector` gave the agent of `device`: each
/// collector gives its own, so the copies of a batch two collectors hold
/// differ by it.
fn agent(device: u8, collector: usize) -> String {
    format!("{}-agent-{}", COLLECTORS[collector], device % 5)
}

/// The rows of `batches` as collector `collector` stores them on `day`.
fn records(collector: usize, day: u8, batches: &[Batch]) -> FlowBatchBuilder {
    let mut rows = FlowBatchBuilder::new();
    for batch in batches {
        let (vendor, model) = MODELS[usize::from(batch.device) % 3];
        let device = format!("device-{}", batch.device);
        let boot_ids: Vec<String> = (0..3).map(|b| format!("boot-{}-{b}-{day}", batch.device)).collect();
        for r in &batch.recs {
            let agent_id = agent(batch.device, collector);
            rows.start_batch(&BatchLabels {
                agent_id: &agent_id,
                batch_id: &batch.id,
                received_at_ms: 0,
                device_pseudonym: &device,
                boot_pseudonym: &boot_ids[usize::from(r.boot)],
                boot_source: "uptime",
                vendor,
                model,
                os_version: if batch.device < 9 { "1.0" } else { "2.0" },
                consent: if batch.device % 2 == 0 { "cloud=off" } else { "cloud=on" },
                source: "capture",
            });
            let ip = format!("203.0.113.{}", r.ip);
            let (connections, interval_mean_s, interval_cv) = match r.timer {
                Some((mean, cv)) => (3, f64::from(mean), f64::from(cv) / 10.0),
                None => (0, 0.0, 0.0),
            };
            rows.push_record(&RecordValues::<String> {
                seconds_since_boot: r.seconds_since_boot.map(f64::from),
                window_start_s: DAY0 + i64::from(day) * 86_400 + i64::from(r.minute) * 60,
                transport: "tcp",
                dst_ip: &ip,
                dst_port: Some(if r.port == 0 { 443 } else { 8886 }),
                domain: HOSTS[usize::from(vendor == "Globex")][usize::from(r.host)],
                domain_source: "dns",
                bytes_out: r.bytes_out.map(i64::from),
                bytes_in: r.bytes_in.map(i64::from),
                packets_out: 1,
                packets_in: Some(1),
                app: "",
                tls_sni: "",
                tls_alpn: &[],
                tls_fingerprint: "",
                duration_s: 1.0,
                encrypted_dns: false,
                connections,
                interval_mean_s,
                interval_cv,
                blocked: None,
                initiated_by: None,
                via_website: None,
            });
        }
    }
    rows
}

/// The test's unflushed tail: what a step put there, read by both sessions.
#[derive(Default, Clone)]
struct Tail(Arc<std::sync::Mutex<Vec<arrow::array::RecordBatch>>>);

impl TailSource for Tail {
    fn snapshot(&self) -> Result<TailSnapshot, TailError> {
        Ok(TailSnapshot { watermark: u64::MAX, batches: self.0.lock().expect("tail").clone() })
    }
}

/// The history so far, and the store it wrote.
struct Store {
    client: Arc<LocalFileSystem>,
    files: Vec<Stored>,
    /// Inputs of a compaction not deleted yet: listed by no query, gone
    /// with the file that holds their rows.
    leftovers: Vec<Stored>,
    next: [u64; 2],
    batches: usize,
}

impl Store {
    async fn write(&mut self, collector: usize, day: u8, batches: Vec<Batch>, listed: bool, range: (u64, u64)) {
        let rows = records(collector, day, &batches);
        let pairs = rows.batch_pairs();
        let key = Path::from(format!(
            "fleet/{}/flows/day={}/{:020}-{:020}.parquet",
            COLLECTORS[collector],
            chrono::DateTime::from_timestamp(DAY0 + i64::from(day) * 86_400, 0).expect("day").format("%Y-%m-%d"),
            range.0,
            range.1
        ));
        let mut bytes = Vec::new();
        let mut writer = leakwatch_query::files::flow_writer(&mut bytes, flows_schema()).expect("writer");
        writer.write(&rows.finish()).expect("write");
        if listed {
            writer.append_key_value_metadata(KeyValue::new(BATCHES_KEY.to_string(), batch_list(&pairs)));
        }
        writer.close().expect("close");
        self.client.put(&key, bytes.into()).await.expect("put");
        self.files.push(Stored { collector, day, range, batches, key });
    }

    /// Applies `op`; false when it does nothing.
    async fn apply(&mut self, op: &Op) -> bool {
        match op.clone() {
            Op::Flush { collector, day, recs, listed } => {
                let mut by_device: BTreeMap<u8, Vec<Rec>> = BTreeMap::new();
                for r in recs {
                    by_device.entry(r.device).or_default().push(r);
                }
                let batches: Vec<Batch> = by_device
                    .into_iter()
                    .map(|(device, recs)| {
                        self.batches += 1;
                        Batch { id: format!("batch-{}", self.batches), device, recs }
                    })
                    .collect();
                let from = self.next[collector];
                let to = from + batches.len() as u64 - 1;
                self.next[collector] = to + 1;
                self.write(collector, day, batches, listed, (from, to)).await;
                true
            }
            Op::Compact { collector, day, delete } => {
                let inputs: Vec<usize> = (0..self.files.len())
                    .filter(|&i| self.files[i].collector == collector && self.files[i].day == day)
                    .collect();
                if inputs.len() < 2 {
                    return false;
                }
                let from = inputs.iter().map(|&i| self.files[i].range.0).min().unwrap_or(0);
                let to = inputs.iter().map(|&i| self.files[i].range.1).max().unwrap_or(0);
                let batches = inputs.iter().flat_map(|&i| self.files[i].batches.clone()).collect();
                for &i in inputs.iter().rev() {
                    let gone = self.files.remove(i);
                    if delete {
                        self.client.delete(&gone.key).await.expect("delete");
                    } else {
                        self.leftovers.push(gone);
                    }
                }
                self.write(collector, day, batches, true, (from, to)).await;
                true
            }
            Op::Delete { file } => {
                if self.files.is_empty() {
                    return false;
                }
                let gone = self.files.remove(file % self.files.len());
                self.client.delete(&gone.key).await.expect("delete");
                let within = |l: &Stored| {
                    l.collector == gone.collector
                        && l.day == gone.day
                        && leakwatch_query::range_within(l.range, gone.range)
                };
                for left in self.leftovers.iter().filter(|l| within(l)) {
                    self.client.delete(&left.key).await.expect("delete");
                }
                self.leftovers.retain(|l| !within(l));
                true
            }
            Op::Copy { file, batch } => {
                if self.files.is_empty() {
                    return false;
                }
                let from = &self.files[file % self.files.len()];
                let copy = from.batches[batch % from.batches.len()].clone();
                let (collector, day) = (1 - from.collector, from.day);
                let at = self.next[collector];
                self.next[collector] = at + 1;
                self.write(collector, day, vec![copy], true, (at, at)).await;
                true
            }
        }
    }
}

/// `snapshot` as JSON with its pages, each list sorted: what a reader
/// sees, whatever order rows of equal rank came out of a query in.
fn published(snapshot: &Snapshot) -> serde_json::Value {
    fn sorted(v: serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Array(items) => {
                let mut items: Vec<serde_json::Value> = items.into_iter().map(sorted).collect();
                items.sort_by_key(|i| i.to_string());
                serde_json::Value::Array(items)
            }
            serde_json::Value::Object(map) => map.into_iter().map(|(k, v)| (k, sorted(v))).collect(),
            other => other,
        }
    }
    let models: BTreeMap<String, &crate::aggregate::ModelPage> =
        snapshot.model_pages.iter().map(|((v, m), page)| (format!("{v}/{m}"), page)).collect();
    let destinations: BTreeMap<&String, &crate::aggregate::DestinationPage> =
        snapshot.destination_pages.iter().collect();
    let json = serde_json::json!({
        "findings": snapshot.findings,
        "models": snapshot.models,
        "destinations": snapshot.destinations,
        "model_pages": models,
        "destination_pages": destinations,
    });
    sorted(json)
}

/// The rows of `flows` as sorted CSV lines.
async fn rows(session: &leakwatch_query::QuerySession) -> Vec<String> {
    let batches = session.sql("SELECT * FROM flows").await.expect("rows");
    let mut lines: Vec<String> =
        render(&batches, OutputFormat::Csv).expect("csv").lines().map(str::to_string).collect();
    lines.sort();
    lines
}

/// Each query the merged aggregates answer, its rows as sorted lines: as
/// the aggregates answer it, and as its SQL does over `session`.
async fn answers(
    merged: &std::sync::Mutex<Merged>,
    session: &leakwatch_query::QuerySession,
    t: Thresholds,
) -> (BTreeMap<&'static str, Vec<String>>, BTreeMap<&'static str, Vec<String>>) {
    let queries = queries();
    let results = merged.lock().expect("merged").results(&queries, t).expect("results");
    let (mut from_merged, mut from_sql) = (BTreeMap::new(), BTreeMap::new());
    for name in ANSWERED {
        let query = &queries[name];
        from_merged.insert(name, query.read(&results[name]).expect("read").lines());
        from_sql.insert(name, query.run(session, t, &[]).await.expect("sql").lines());
    }
    (from_merged, from_sql)
}

/// Each rule's rows as sorted CSV lines.
async fn rule_rows(session: &leakwatch_query::QuerySession) -> BTreeMap<String, BTreeSet<String>> {
    let mut out = BTreeMap::new();
    for rule in builtin_rules() {
        let sql = rule.render(&BTreeMap::new()).expect("render");
        let batches = session.sql(&sql).await.unwrap_or_else(|e| panic!("rule {}: {e}", rule.name));
        let csv = render(&batches, OutputFormat::Csv).expect("csv");
        out.insert(rule.name.clone(), csv.lines().map(str::to_string).collect());
    }
    out
}

#[test]
fn a_refresh_of_new_files_only_publishes_what_a_full_one_does() {
    let published_findings = AtomicUsize::new(0);
    let merged_rows = AtomicUsize::new(0);
    let merged_answers = AtomicUsize::new(0);
    let evidence_rows = AtomicUsize::new(0);
    // The same eight histories at every run (proptest's fixed seed): a
    // failure can be run again, and the checks below that the test is not
    // vacuous cannot fail on a draw of histories that merged nothing.
    let mut runner = TestRunner::new_with_rng(
        Config { cases: 8, failure_persistence: None, ..Config::default() },
        TestRng::deterministic_rng(RngAlgorithm::ChaCha),
    );
    // Histories, each with the share of its rows above which a file's
    // digest is not kept (its records are read instead): every file, some,
    // none.
    // And the records a file is first judged by: a few (most files are
    // judged by a sample) or the default (every file is its own sample).
    let histories = (
        proptest::collection::vec(op(), 1..8),
        prop_oneof![1 => Just(0.0), 1 => Just(0.5), 3 => Just(2.0)],
        prop_oneof![Just(3usize), Just(leakwatch_query::digest::SAMPLE_RECORDS)],
    );
    let result = runner.run(&histories, |(ops, raw_share, sample)| {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        runtime.block_on(async {
            let dir = tempfile::tempdir().expect("tempdir");
            let client = Arc::new(LocalFileSystem::new_with_prefix(dir.path()).expect("fs"));
            let flows = FlowStore::in_bucket(client.clone(), "bucket", "fleet", None).expect("store");
            let tail = Tail::default();
            let factory = SessionFactory::new(QueryConfig::default(), flows, Arc::new(tail.clone()));
            let t = Thresholds::new(2, 2).expect("thresholds");
            let mut store = Store { client, files: Vec::new(), leftovers: Vec::new(), next: [1, 1], batches: 0 };
            let digests_dir = dir.path().join("digests");
            let merged = Arc::new(std::sync::Mutex::new(Merged::new()));
            let incremental = Digests::in_dir(&digests_dir)
                .expect("digests")
                .raw_share(raw_share)
                .sample_records(sample)
                .merging(merged.clone());
            let mut last = None;
            let mut stats_merged = false;
            for (step, op) in ops.iter().enumerate() {
                if !store.apply(op).await {
                    continue;
                }
                // A flush's records are in the tail too, under a batch of
                // their own, until the next step: the merged aggregates take
                // a tail for one refresh.
                *tail.0.lock().expect("tail") = match op {
                    Op::Flush { collector, day, recs, .. } => {
                        let batch = Batch { id: format!("tail-{step}"), device: recs[0].device, recs: recs.clone() };
                        vec![records(*collector, *day, &[batch]).finish()]
                    }
                    _ => Vec::new(),
                };
                let (session, stats) = factory.digest_session(&incremental).await.expect("digest session");
                let (fresh, everything) = factory
                    .digest_session(&Digests::in_memory().raw_share(raw_share).sample_records(sample))
                    .await
                    .expect("digest session");
                if let Op::Flush { .. } = op {
                    // The files that were there are not read again.
                    prop_assert_eq!(stats.digested, 1, "{:?}", stats);
                    prop_assert_eq!(stats.kept, store.files.len() - 1, "{:?}", stats);
                }
                prop_assert_eq!(incremental.len(), store.files.len());
                // The merged aggregates hold the digests whenever no file
                // is read as it is, and answer as the SQL does.
                prop_assert_eq!(stats.merged, stats.raw == 0, "{:?}", stats);
                if stats.merged {
                    let (from_merged, from_sql) = answers(&merged, &session, t).await;
                    prop_assert_eq!(&from_merged, &from_sql, "after {:?}", op);
                    merged_answers.fetch_add(from_sql.values().map(Vec::len).sum(), Ordering::Relaxed);
                }
                // The same digest rows, whatever order: then every query
                // over them answers the same.
                prop_assert_eq!(rows(&session).await, rows(&fresh).await, "after {:?}", op);
                let records = factory.session().await.expect("session");
                let n = records.sql("SELECT count(*) FROM flows").await.expect("count");
                let n = n.first().map_or(0, |b| b.column(0).as_primitive::<Int64Type>().value(0));
                let n = u64::try_from(n).unwrap_or(0);
                merged_rows
                    .fetch_add(usize::try_from(n.saturating_sub(everything.rows)).unwrap_or(0), Ordering::Relaxed);
                last = Some((session, fresh, records));
                stats_merged = stats.merged;
            }
            // At the end, what is published, and the rules over the digest
            // and over the records.
            if let Some((session, fresh, records)) = last {
                let answered = stats_merged.then_some(&*merged);
                let (inc, full) = (compute(&session, t, answered).await, compute(&fresh, t, None).await);
                let (inc, full) = (inc.expect("incremental"), full.expect("full"));
                prop_assert_eq!(published(&inc), published(&full));
                published_findings.fetch_add(inc.findings.len(), Ordering::Relaxed);
                // The evidence of all the rules' rows, read in one query
                // per kind of destination (the two at the same time), is
                // each rule's read alone.
                let models: BTreeMap<(String, String), (u64, u64)> = inc
                    .models
                    .iter()
                    .map(|m| ((m.vendor.clone(), m.model.clone()), (m.devices, m.volunteers)))
                    .collect();
                let rules = builtin_rules();
                let mut tables = Vec::new();
                for rule in &rules {
                    tables.push(rule_table(&session, rule).await.expect("rule").1);
                }
                let pairs: Vec<_> = rules.iter().zip(&tables).collect();
                // (The first seconds in any order: the findings sort them.)
                let sorted = |mut rules: Vec<Vec<crate::aggregate::Evidence>>| {
                    rules.iter_mut().flatten().for_each(|e| e.first_s.sort_by(f64::total_cmp));
                    rules
                };
                let together =
                    sorted(evidence_of(&session, &queries(), &pairs, t, &models, true).await.expect("evidence"));
                for (i, pair) in pairs.iter().enumerate() {
                    let alone = evidence_of(&session, &queries(), std::slice::from_ref(pair), t, &models, false).await;
                    let alone = sorted(alone.expect("evidence"));
                    prop_assert_eq!(&alone[0], &together[i], "{}", pair.0.name);
                    // A row about a published model has evidence: its
                    // destination is named as the rule names it.
                    for (row, e) in pair.1.iter().zip(&alone[0]) {
                        let text = |c: &str| row.get(c).cloned().flatten();
                        if let (Some(vendor), Some(model)) = (text("vendor"), text("model"))
                            && models.contains_key(&(vendor, model))
                        {
                            prop_assert!(!e.devices.is_empty(), "{}: no evidence of {:?}", pair.0.name, row);
                        }
                    }
                    evidence_rows
                        .fetch_add(alone[0].iter().filter(|e| !e.devices.is_empty()).count(), Ordering::Relaxed);
                }
                prop_assert_eq!(rule_rows(&records).await, rule_rows(&session).await);
                // A process started later reads the digests its
                // predecessor left, and no file again.
                let merged_again = Arc::new(std::sync::Mutex::new(Merged::new()));
                let reopened = Digests::in_dir(&digests_dir)
                    .expect("digests")
                    .raw_share(raw_share)
                    .sample_records(sample)
                    .merging(merged_again.clone());
                let (again, stats) = factory.digest_session(&reopened).await.expect("digest session");
                prop_assert_eq!((stats.digested, stats.kept), (0, store.files.len()), "{:?}", stats);
                prop_assert_eq!(rows(&again).await, rows(&fresh).await);
                if stats.merged {
                    let (from_merged, from_sql) = answers(&merged_again, &again, t).await;
                    prop_assert_eq!(from_merged, from_sql, "reopened");
                }
                // A digest that does not read is made again.
                let damaged = std::fs::read_dir(&digests_dir)
                    .expect("digests")
                    .flatten()
                    .map(|e| e.path())
                    .find(|p| p.extension().is_some_and(|x| x == "parquet"));
                if let Some(damaged) = damaged {
                    std::fs::write(&damaged, b"not parquet").expect("damage");
                    let reopened =
                        Digests::in_dir(&digests_dir).expect("digests").raw_share(raw_share).sample_records(sample);
                    let (again, stats) = factory.digest_session(&reopened).await.expect("digest session");
                    prop_assert_eq!(stats.digested, 1, "{:?}", stats);
                    prop_assert_eq!(rows(&again).await, rows(&fresh).await);
                }
            }
            Ok::<(), TestCaseError>(())
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    // Not a vacuous test: findings were published, and digests merged records.
    assert!(published_findings.load(Ordering::Relaxed) > 0, "no history published a finding");
    assert!(merged_rows.load(Ordering::Relaxed) > 0, "no digest row merged two records");
    assert!(merged_answers.load(Ordering::Relaxed) > 0, "the merged aggregates never answered a row");
    assert!(evidence_rows.load(Ordering::Relaxed) > 0, "no rule row had evidence");
}

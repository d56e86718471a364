//! Tests of flushing, compaction and retention, on a real local store.

use std::time::Duration;

use leakwatch_query::files::{ENCODED_COLUMNS, NO_STATISTICS, conform};
use leakwatch_query::{MICROSECOND_COLUMNS, batch_pairs, flows_schema};
use object_store::path::Path as StorePath;
use parquet::arrow::ArrowWriter;
use parquet::basic::Encoding;

use super::*;

fn rows(n: usize) -> arrow::array::RecordBatch {
    let mut b = FlowBatchBuilder::new();
    for i in 0..n {
        b.push(leakwatch_query::FlowRow { device_pseudonym: format!("d{i}"), ..Default::default() });
    }
    b.finish()
}

/// A flushed file of `batch` (in the `flows` schema), listing its
/// batches.
fn file_bytes(batch: &arrow::array::RecordBatch) -> Vec<u8> {
    let mut pairs = std::collections::HashSet::new();
    batch_pairs([batch], &mut pairs);
    parquet_bytes(batch, Some(&pairs)).expect("parquet")
}

fn names(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).expect("dir").flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

/// The rows of the Parquet file at `path`, in the `flows` schema.
fn read_file(path: &std::path::Path) -> arrow::array::RecordBatch {
    let file = std::fs::File::open(path).expect("open");
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .expect("read")
        .build()
        .expect("reader");
    let batches: Vec<_> = reader.map(|b| conform(&b.expect("batch")).expect("flows schema")).collect();
    arrow::compute::concat_batches(&flows_schema(), &batches).expect("concat")
}

fn rows_in(path: &std::path::Path) -> usize {
    read_file(path).num_rows()
}

#[test]
fn entries_laid_out_otherwise_flush_as_the_same_rows() {
    use leakwatch_proto::v1::{DeviceInfo, FlowRecord, ReportBatch};
    use prost::Message as _;
    let batch = |id: &str| ReportBatch {
        batch_id: id.into(),
        sent_at_unix_ms: 1,
        device: Some(DeviceInfo { device_pseudonym: format!("d-{id}"), vendor: "Acme".into(), ..Default::default() }),
        records: (0..5)
            .map(|i| FlowRecord {
                window_start_unix_s: 1_790_000_000 + i * 40_000,
                domain: format!("api{i}.example.com"),
                bytes_out: i as u64,
                ..Default::default()
            })
            .collect(),
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let (usual, odd) = (DurableLog::open(&a).expect("log"), DurableLog::open(&b).expect("log"));
    for (seq, id) in [(1, "x"), (2, "y")] {
        let whole = batch(id);
        usual.append("agent", &whole, 7).expect("append");
        // The batch in two parts (prost merges them): its records
        // first, then its other fields.
        let records = ReportBatch { records: whole.records.clone(), ..Default::default() };
        let rest = ReportBatch { records: Vec::new(), ..whole };
        let mut message = crate::log::StoredBatch { agent_id: "agent".into(), received_at_ms: 7, batch: Some(records) }
            .encode_to_vec();
        prost::encoding::message::encode(3, &rest, &mut message);
        assert!(crate::convert::split_stored(&message).is_none(), "read whole, not in place");
        odd.put_message(seq, &message).expect("put");
    }
    let usual = day_files(&usual, 1, 2, true).expect("flush");
    let odd = day_files(&odd, 1, 2, true).expect("flush");
    assert_eq!(usual.len(), 3, "records of three days");
    assert_eq!(odd, usual);
}

#[tokio::test]
async fn a_flusher_behind_flushes_at_ingests_priority_until_it_catches_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Arc::new(DurableLog::open(&dir.path().join("log")).expect("log"));
    let store = DataStore::local(dir.path().join("store")).expect("store");
    let metrics = Arc::new(IngestMetrics::default());
    let flusher = Flusher::new(log.clone(), store.clone(), metrics.clone()).catching_up_from(4);
    let never = Flusher::new(log.clone(), store, metrics);
    let sent = std::cell::Cell::new(0);
    let append = |n: usize| {
        for _ in 0..n {
            sent.set(sent.get() + 1);
            let batch = leakwatch_proto::v1::ReportBatch { batch_id: format!("b{}", sent.get()), ..Default::default() };
            log.append("agent", &batch, 1).expect("append");
        }
    };
    append(3);
    assert!(flusher.lowered(), "3 waiting: background priority");
    append(1);
    assert!(!flusher.lowered(), "4 waiting: ingest's priority");
    assert!(never.lowered(), "by default always background priority");
    flusher.flush().await.expect("flush");
    append(2);
    assert!(!flusher.lowered(), "2 waiting, half of 4: still catching up");
    append(1);
    flusher.flush().await.expect("flush");
    assert!(flusher.lowered(), "caught up: background priority again");
    append(3);
    assert!(flusher.lowered(), "3 waiting once caught up: background priority");
}

#[tokio::test]
async fn compaction_keeps_its_inputs_for_running_queries_and_never_merges_them_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = DataStore::local(dir.path().to_path_buf()).expect("store");
    let put = async |from: u64, to: u64, n: usize| {
        let path = StorePath::from(format!("flows/day=2026-10-01/{from:020}-{to:020}.parquet"));
        store.put_durable(&path, file_bytes(&rows(n))).await.expect("put");
    };
    put(1, 1, 2).await;
    put(2, 2, 3).await;
    let hour = Duration::from_secs(3600);
    // Merged, but the inputs stay for queries that listed them.
    assert_eq!(store.compact(2, 2, COMPACT_RUN_LIMIT, hour).await.expect("compact"), 0);
    let day = dir.path().join("flows/day=2026-10-01");
    assert_eq!(names(&day).len(), 3);
    // A later flush: the next merge takes the merged file and the new
    // one, never the inputs it already holds.
    put(3, 3, 4).await;
    assert_eq!(store.compact(3, 2, COMPACT_RUN_LIMIT, hour).await.expect("compact"), 0);
    assert_eq!(rows_in(&day.join("00000000000000000001-00000000000000000003.parquet")), 9);
    // Once the keep period is over, every covered file goes.
    assert_eq!(store.compact(3, 8, COMPACT_RUN_LIMIT, Duration::ZERO).await.expect("cleanup"), 4);
    assert_eq!(names(&day), ["00000000000000000001-00000000000000000003.parquet"]);
}

#[tokio::test]
async fn compaction_merges_flushed_files_of_a_day_and_keeps_every_row() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = DataStore::local(dir.path().to_path_buf()).expect("store");
    for (range, n) in [((1, 1), 2), ((2, 3), 3), ((4, 4), 4), ((5, 5), 7)] {
        let path = StorePath::from(format!("flows/day=2026-10-01/{:020}-{:020}.parquet", range.0, range.1));
        store.put_durable(&path, file_bytes(&rows(n))).await.expect("put");
    }
    // Watermark 4: the file of range 5 belongs to a flush in progress.
    assert_eq!(store.compact(4, 2, COMPACT_RUN_LIMIT, Duration::ZERO).await.expect("compact"), 3);
    let day = dir.path().join("flows/day=2026-10-01");
    assert_eq!(
        names(&day),
        ["00000000000000000001-00000000000000000004.parquet", "00000000000000000005-00000000000000000005.parquet"]
    );
    assert_eq!(rows_in(&day.join("00000000000000000001-00000000000000000004.parquet")), 9);
    // Too few files: nothing to do. Leftover inputs of an interrupted
    // compaction are deleted.
    assert_eq!(store.compact(5, 8, COMPACT_RUN_LIMIT, Duration::ZERO).await.expect("compact"), 0);
    let stale = StorePath::from("flows/day=2026-10-01/00000000000000000002-00000000000000000003.parquet");
    store.put_durable(&stale, file_bytes(&rows(3))).await.expect("put");
    assert_eq!(store.compact(4, 8, COMPACT_RUN_LIMIT, Duration::ZERO).await.expect("cleanup"), 1);
    assert_eq!(names(&day).len(), 2);
}

#[tokio::test]
async fn compaction_leaves_large_files_and_merges_runs_of_small_ones_within_the_size_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = DataStore::local(dir.path().to_path_buf()).expect("store");
    let (small, large) = (file_bytes(&rows(3)), file_bytes(&rows(5000)));
    // Two small files fit in the limit, three do not; the large file
    // is over it.
    let max_bytes = 2 * small.len() as u64 + small.len() as u64 / 2;
    assert!(large.len() as u64 >= max_bytes);
    for (n, bytes) in [(1, &small), (2, &small), (3, &small), (4, &large), (5, &small), (6, &small)] {
        let path = StorePath::from(format!("flows/day=2026-10-01/{n:020}-{n:020}.parquet"));
        store.put_durable(&path, bytes.clone()).await.expect("put");
    }
    let limit = RunLimit { bytes: max_bytes, rows: u64::MAX };
    assert_eq!(store.compact(6, 2, limit, Duration::ZERO).await.expect("compact"), 4);
    let day = dir.path().join("flows/day=2026-10-01");
    let name = |from: u64, to: u64| format!("{from:020}-{to:020}.parquet");
    assert_eq!(names(&day), [name(1, 2), name(3, 3), name(4, 4), name(5, 6)]);
    assert_eq!(rows_in(&day.join(name(1, 2))), 6);
    assert_eq!(rows_in(&day.join(name(4, 4))), 5000);
    assert_eq!(rows_in(&day.join(name(5, 6))), 6);
}

#[tokio::test]
async fn compaction_counts_rows_too_and_leaves_files_of_many_rows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = DataStore::local(dir.path().to_path_buf()).expect("store");
    // Rows from the files' footers: a store that did not write them.
    for (n, rows_n) in [(1, 3), (2, 3), (3, 3), (4, 10), (5, 2), (6, 2)] {
        let path = StorePath::from(format!("flows/day=2026-10-01/{n:020}-{n:020}.parquet"));
        std::fs::create_dir_all(dir.path().join("flows/day=2026-10-01")).expect("dir");
        std::fs::write(dir.path().join(path.as_ref()), file_bytes(&rows(rows_n))).expect("write");
    }
    let limit = RunLimit { bytes: u64::MAX, rows: 7 };
    assert_eq!(store.compact(6, 2, limit, Duration::ZERO).await.expect("compact"), 4);
    let day = dir.path().join("flows/day=2026-10-01");
    let name = |from: u64, to: u64| format!("{from:020}-{to:020}.parquet");
    assert_eq!(names(&day), [name(1, 2), name(3, 3), name(4, 4), name(5, 6)]);
    // The merged files' rows are known without reading them: 6 + 3 > 7.
    assert_eq!(store.compact(6, 2, limit, Duration::ZERO).await.expect("compact"), 0);
    assert_eq!(rows_in(&day.join(name(5, 6))), 4);
}

#[tokio::test]
async fn compaction_writes_a_run_sorted_as_a_flush_does() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = DataStore::local(dir.path().to_path_buf()).expect("store");
    // Two flushed files, each sorted, whose rows interleave.
    let file = |vendors: &[&str], times: &[f64]| {
        let mut b = FlowBatchBuilder::new();
        for (i, v) in vendors.iter().enumerate() {
            for &t in times {
                b.push(leakwatch_query::FlowRow {
                    vendor: (*v).into(),
                    device_pseudonym: format!("d{i}"),
                    domain: if i % 2 == 0 { "a.example".into() } else { String::new() },
                    seconds_since_boot: t,
                    ..Default::default()
                });
            }
        }
        b.sort_for_rules();
        b.finish()
    };
    let (first, second) = (file(&["Xiaomi", "Amazon"], &[9.0, 1.0]), file(&["Sonos", "Apple", "Xiaomi"], &[5.0]));
    for (n, rows) in [(1, &first), (2, &second)] {
        let path = StorePath::from(format!("flows/day=2026-10-01/{n:020}-{n:020}.parquet"));
        store.put_durable(&path, file_bytes(rows)).await.expect("put");
    }
    assert_eq!(store.compact(2, 2, COMPACT_RUN_LIMIT, Duration::ZERO).await.expect("compact"), 2);
    let merged = dir.path().join("flows/day=2026-10-01/00000000000000000001-00000000000000000002.parquet");
    let read = read_file(&merged);
    let column = |name: &str| -> Vec<String> {
        let c = arrow::compute::cast(read.column_by_name(name).expect("column"), &arrow::datatypes::DataType::Utf8)
            .expect("cast");
        let c = c.as_any().downcast_ref::<arrow::array::StringArray>().expect("strings");
        c.iter().map(|v| v.unwrap_or("NULL").to_string()).collect()
    };
    assert_eq!(column("vendor"), ["Amazon", "Amazon", "Apple", "Sonos", "Xiaomi", "Xiaomi", "Xiaomi"]);
    assert_eq!(column("domain"), ["NULL", "NULL", "NULL", "a.example", "a.example", "a.example", "a.example"]);
    assert_eq!(column("device_pseudonym"), ["d1", "d1", "d1", "d0", "d0", "d0", "d2"]);
    assert_eq!(column("seconds_since_boot"), ["1.0", "9.0", "5.0", "5.0", "1.0", "9.0", "5.0"]);
}

/// The batch list in the footer of the file at `path`, if any.
fn listed_batches(path: &std::path::Path) -> Option<String> {
    use parquet::file::reader::FileReader as _;
    let file =
        parquet::file::reader::SerializedFileReader::new(std::fs::File::open(path).expect("open")).expect("reader");
    let kv = file.metadata().file_metadata().key_value_metadata().cloned().unwrap_or_default();
    kv.into_iter().find(|kv| kv.key == BATCHES_KEY).and_then(|kv| kv.value)
}

#[tokio::test]
async fn only_a_shared_stores_files_list_their_batches() {
    use leakwatch_proto::v1::{FlowRecord, ReportBatch};
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Arc::new(DurableLog::open(&dir.path().join("log")).expect("log"));
    for id in ["x", "y"] {
        let records = vec![FlowRecord { window_start_unix_s: 1_790_000_000, ..Default::default() }];
        log.append("agent", &ReportBatch { batch_id: id.into(), records, ..Default::default() }, 7).expect("append");
    }
    // What a flush to a shared store writes: the list of its batches.
    let shared = day_files(&log, 1, 2, true).expect("flush");
    let path = dir.path().join("shared.parquet");
    std::fs::write(&path, &shared[0].1).expect("write");
    assert_eq!(listed_batches(&path).as_deref(), Some("agent x y\n"));
    std::fs::write(&path, &day_files(&log, 1, 2, false).expect("flush")[0].1).expect("write");
    assert_eq!(listed_batches(&path), None);

    // A local store's flush and compaction list none (here its inputs
    // listed theirs, as a file from a shared store would).
    let store = DataStore::local(dir.path().join("store")).expect("store");
    assert!(!store.lists_batches());
    let flusher = Flusher::new(log.clone(), store.clone(), Arc::new(IngestMetrics::default()));
    flusher.flush().await.expect("flush");
    let day = dir.path().join("store/flows/day=2026-09-21");
    assert_eq!(names(&day), ["00000000000000000001-00000000000000000002.parquet"]);
    assert_eq!(listed_batches(&day.join("00000000000000000001-00000000000000000002.parquet")), None);
    let listed = StorePath::from("flows/day=2026-09-21/00000000000000000003-00000000000000000003.parquet");
    store.put_durable(&listed, file_bytes(&rows(2))).await.expect("put");
    assert!(listed_batches(&day.join("00000000000000000003-00000000000000000003.parquet")).is_some());
    assert_eq!(store.compact(3, 2, COMPACT_RUN_LIMIT, Duration::ZERO).await.expect("compact"), 2);
    let merged = day.join("00000000000000000001-00000000000000000003.parquet");
    assert_eq!(rows_in(&merged), 4);
    assert_eq!(listed_batches(&merged), None);
}

#[tokio::test]
async fn measured_times_are_stored_as_microseconds_and_compaction_merges_files_of_doubles_with_them() {
    use rand::Rng as _;
    let mut rng = rand::rng();
    // Times to the microsecond up to validation's ten years, and some
    // finer ones, which rows hold rounded to the microsecond.
    let times: Vec<(f64, f64)> = (0..2000)
        .map(|i| {
            let mut micros = |max: u64| rng.random_range(0..max) as f64 / 1e6;
            match i % 4 {
                0 => (micros(1_000_000_000) + 1e-7, micros(1_000_000) * 0.999_999_9),
                1 => (micros(315_360_000_000_000), micros(1_000_000)),
                _ => (micros(600_000_000), micros(60_000_000)),
            }
        })
        .collect();
    let build = |range: std::ops::Range<usize>| {
        let mut b = FlowBatchBuilder::new();
        for &(t, d) in &times[range] {
            b.push(leakwatch_query::FlowRow { seconds_since_boot: t, duration_s: d, ..Default::default() });
        }
        b.finish()
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let store = DataStore::local(dir.path().to_path_buf()).expect("store");
    let day = dir.path().join("flows/day=2026-10-01");
    // An earlier release's file of doubles, then the flusher's files.
    let mut old = Vec::new();
    let mut w = ArrowWriter::try_new(&mut old, flows_schema(), None).expect("writer");
    w.write(&build(0..500)).expect("write");
    w.close().expect("close");
    store
        .put_durable(&StorePath::from(format!("flows/day=2026-10-01/{:020}-{:020}.parquet", 1, 1)), old)
        .await
        .expect("put");
    for (n, range) in [(2, 500..1200), (3, 1200..2000)] {
        let path = StorePath::from(format!("flows/day=2026-10-01/{n:020}-{n:020}.parquet"));
        store.put_durable(&path, file_bytes(&build(range))).await.expect("put");
    }
    let file = parquet::file::reader::SerializedFileReader::new(
        std::fs::File::open(day.join(format!("{:020}-{:020}.parquet", 2, 2))).expect("open"),
    )
    .expect("reader");
    use parquet::basic::ConvertedType;
    use parquet::file::reader::FileReader as _;
    let names: Vec<String> = file.metadata().row_group(0).columns().iter().map(|c| c.column_path().string()).collect();
    for (column, _) in ENCODED_COLUMNS {
        assert!(names.iter().any(|n| n == column), "{column} is not a column of a flushed file: {names:?}");
    }
    for column in file.metadata().row_group(0).columns() {
        let name = column.column_path().string();
        if MICROSECOND_COLUMNS.contains(&name.as_str()) {
            assert_eq!(column.column_type(), parquet::basic::Type::INT64, "{name}");
            let d = column.column_descr();
            assert_eq!((d.converted_type(), d.type_precision(), d.type_scale()), (ConvertedType::DECIMAL, 18, 6));
        }
        // The measured numbers in their own encodings, in no dictionary;
        // the strings in dictionaries.
        let encodings: Vec<Encoding> = column.encodings().collect();
        match ENCODED_COLUMNS.iter().find(|(c, _)| *c == name) {
            Some((_, encoding)) => {
                assert!(encodings.contains(encoding), "{name}: {encodings:?}");
                assert!(!encodings.contains(&Encoding::RLE_DICTIONARY), "{name}: {encodings:?}");
            }
            None if column.column_type() == parquet::basic::Type::BYTE_ARRAY => {
                assert!(encodings.contains(&Encoding::RLE_DICTIONARY), "{name}: {encodings:?}");
            }
            None => {}
        }
    }
    // A flushed file reads back as the rows SQL saw in the tail.
    assert_eq!(read_file(&day.join(format!("{:020}-{:020}.parquet", 2, 2))), build(500..1200));
    assert_eq!(store.compact(3, 2, COMPACT_RUN_LIMIT, Duration::ZERO).await.expect("compact"), 3);
    let merged = read_file(&day.join(format!("{:020}-{:020}.parquet", 1, 3)));
    let column = |name: &str| -> Vec<u64> {
        let c = merged.column_by_name(name).expect("column");
        let c = c.as_any().downcast_ref::<arrow::array::Float64Array>().expect("doubles");
        let mut v: Vec<u64> = c.values().iter().map(|x| x.to_bits()).collect();
        v.sort_unstable();
        v
    };
    let want = |f: fn(&(f64, f64)) -> f64| -> Vec<u64> {
        let mut v: Vec<u64> = times.iter().map(|x| leakwatch_query::to_microsecond(f(x)).to_bits()).collect();
        v.sort_unstable();
        v
    };
    assert_eq!(column("seconds_since_boot"), want(|x| x.0), "every time, to the bit");
    assert_eq!(column("duration_s"), want(|x| x.1));
}

#[test]
fn a_flushed_file_holds_the_builders_rows_and_batches_with_labels_encoded_once_per_batch() {
    let build = || {
        let mut b = FlowBatchBuilder::new();
        for (batch, (vendor, rows)) in [("Xiaomi", 3), ("Amazon", 2), ("Xiaomi", 4)].into_iter().enumerate() {
            for i in 0..rows {
                b.push(leakwatch_query::FlowRow {
                    agent_id: format!("agent{}", batch % 2),
                    batch_id: format!("batch{batch}"),
                    vendor: vendor.into(),
                    model: format!("m{i}"),
                    device_pseudonym: format!("d{batch}"),
                    consent: "cloud=off".into(),
                    domain: if i % 2 == 0 { "a.example".into() } else { String::new() },
                    seconds_since_boot: f64::from(i) * 1.5,
                    ..Default::default()
                });
            }
        }
        b.sort_for_rules();
        b
    };
    let encoded = build();
    let pairs = encoded.batch_pairs();
    let batch = encoded.finish_encoded();
    assert_eq!(batch.schema(), leakwatch_query::flows_encoded_schema());
    let bytes = parquet_bytes(&batch, Some(&pairs)).expect("parquet");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("f.parquet");
    std::fs::write(&path, &bytes).expect("write");
    let plain = build().finish();
    assert_eq!(read_file(&path), plain, "reads back as the plain rows");

    let file =
        parquet::file::reader::SerializedFileReader::new(std::fs::File::open(&path).expect("open")).expect("reader");
    use parquet::file::reader::FileReader as _;
    let meta = file.metadata();
    let mut from_rows = std::collections::HashSet::new();
    batch_pairs([&plain], &mut from_rows);
    assert_eq!(pairs, from_rows);
    assert_eq!(listed_batches(&path), Some(batch_list(&from_rows)));
    for column in meta.row_group(0).columns() {
        let name = column.column_path().string();
        let has_stats = column.statistics().is_some_and(|s| s.min_bytes_opt().is_some());
        if NO_STATISTICS.contains(&name.as_str()) {
            assert!(!has_stats, "{name}");
        } else if ["vendor", "model", "domain", "seconds_since_boot"].contains(&name.as_str()) {
            assert!(has_stats, "{name}");
        }
    }
}

#[tokio::test]
async fn retention_deletes_only_old_day_partitions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = DataStore::local(dir.path().to_path_buf()).expect("store");
    for day in ["2026-01-01", "2026-03-01", "2026-03-20"] {
        let path = StorePath::from(format!("flows/day={day}/00000000000000000001-00000000000000000001.parquet"));
        store.put_durable(&path, b"x".to_vec()).await.expect("put");
    }
    let today = chrono::NaiveDate::from_ymd_opt(2026, 3, 21).expect("date");
    let cutoff = today.checked_sub_days(chrono::Days::new(30)).expect("30 days before");
    assert_eq!(store.apply_retention(cutoff).await.expect("retention").deleted, 1);
    let left: Vec<String> = std::fs::read_dir(dir.path().join("flows"))
        .expect("dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(left, ["day=2026-03-01", "day=2026-03-20"]);
}

/// A file a running query planned to read stays until that query ends,
/// however long it runs: retention and compaction leave it for a later
/// pass, and the query answers from what it planned.
#[tokio::test]
async fn files_a_running_query_planned_to_read_stay_until_it_ends() {
    use leakwatch_query::{FilesOnly, QueryConfig, SessionFactory};
    let dir = tempfile::tempdir().expect("tempdir");
    let store = DataStore::local(dir.path().to_path_buf()).expect("store");
    let put = async |day: &str, n: u64| {
        let path = StorePath::from(format!("flows/day={day}/{n:020}-{n:020}.parquet"));
        store.put_durable(&path, file_bytes(&rows(3))).await.expect("put");
    };
    put("2026-01-01", 1).await;
    put("2026-10-01", 2).await;
    put("2026-10-01", 3).await;
    let sessions = SessionFactory::new(QueryConfig::default(), store.flow_store(), std::sync::Arc::new(FilesOnly));
    let count = async |session: &leakwatch_query::QuerySession| {
        let batches = session.sql("SELECT count(*) AS n FROM flows").await.expect("query");
        leakwatch_query::format::render(&batches, leakwatch_query::format::OutputFormat::Csv).expect("csv")
    };
    let running = sessions.session().await.expect("session");
    let cutoff = chrono::NaiveDate::from_ymd_opt(2026, 6, 1).expect("date");
    let pass = store.apply_retention(cutoff).await.expect("retention");
    assert_eq!((pass.deleted, pass.left), (0, 1), "retention left the file the query reads");
    assert_eq!(store.compact(3, 2, COMPACT_RUN_LIMIT, Duration::ZERO).await.expect("compact"), 0);
    let day = dir.path().join("flows/day=2026-10-01");
    assert_eq!(names(&day).len(), 3, "the merged file and both inputs");
    assert_eq!(count(&running).await, "n\n9\n", "the query reads what it planned, nothing twice");
    drop(running);
    let pass = store.apply_retention(cutoff).await.expect("retention");
    assert_eq!((pass.deleted, pass.left), (1, 0));
    assert_eq!(store.compact(3, 2, COMPACT_RUN_LIMIT, Duration::ZERO).await.expect("compact"), 2);
    assert_eq!(names(&day), ["00000000000000000002-00000000000000000003.parquet"]);
    assert_eq!(count(&sessions.session().await.expect("session")).await, "n\n6\n");
}

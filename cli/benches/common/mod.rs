//! What the collector benchmarks share: the simulated fleet, once through
//! agent and collector, and copies of its rows written as flushed Parquet.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array as _, ArrayRef, RecordBatch, StringArray};
use leakwatch::demo::FleetKind;
use leakwatch_collector::server::{ServeConfig, Server};

// The collector binary's allocator (see `src/main.rs`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A temporary directory under `BENCH_DIR` (default the system temp dir),
/// left in place when `BENCH_KEEP` is set, to run other SQL on its files.
pub fn bench_dir() -> tempfile::TempDir {
    let base_dir = std::env::var_os("BENCH_DIR").map(std::path::PathBuf::from).unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&base_dir).expect("bench dir");
    let mut dir = tempfile::tempdir_in(&base_dir).expect("tempdir");
    if std::env::var_os("BENCH_KEEP").is_some() {
        dir.disable_cleanup(true);
        println!("  BENCH_KEEP is set: the files stay in {}", dir.path().display());
    }
    // Every temporary directory of the run goes inside this one, so it
    // goes with it: Ballista's in-process executors keep their shuffle
    // files (gigabytes at 50 M records) in a temporary directory of their
    // own that nothing deletes.
    let scratch = dir.path().join("tmp");
    std::fs::create_dir_all(&scratch).expect("scratch dir");
    let _ = tempfile::env::override_temp_dir(&scratch);
    dir
}

/// What [`replicate`] wrote.
pub struct Copies {
    /// Rows written.
    pub rows: usize,
    /// Copies of the fleet written (the last log sequence number they stand for).
    pub copies: usize,
    /// Rows of the fleet.
    pub base_rows: usize,
    /// Bytes of Parquet written.
    pub bytes: u64,
    /// Time taken to write them.
    pub elapsed: Duration,
}

/// Runs the simulated fleet through agents and a collector in `dir`, then
/// writes copies of its rows into `flows` until there are `target` rows.
pub async fn replicate(dir: &Path, flows: &Path, target: usize) -> Copies {
    replicate_fleet(dir, flows, target, FleetKind::Boots, None).await.0
}

/// [`replicate`] of the fleet `kind` (of `devices` devices, default the
/// profile's), with the fleet's rows for more copies.
pub async fn replicate_fleet(
    dir: &Path,
    flows: &Path,
    target: usize,
    kind: FleetKind,
    devices: Option<u32>,
) -> (Copies, Arc<Vec<RecordBatch>>) {
    let base = Arc::new(fleet_rows(dir, kind, devices).await);
    let base_rows = base.iter().map(|b| b.num_rows()).sum();
    let started = Instant::now();
    let (rows, copies) = tokio::task::spawn_blocking({
        let (flows, base) = (flows.to_path_buf(), base.clone());
        move || write_copies(&base, &flows, target, leakwatch_collector::flusher::COMPACT_RUN_LIMIT.rows as usize)
    })
    .await
    .expect("write");
    let elapsed = started.elapsed();
    (Copies { rows, copies, base_rows, bytes: dir_bytes(flows), elapsed }, base)
}

/// The simulated fleet `kind`'s rows, after one pass through agents and a
/// collector in `dir`.
async fn fleet_rows(dir: &Path, kind: FleetKind, devices: Option<u32>) -> Vec<RecordBatch> {
    let server = Server::start(ServeConfig::loopback(dir.join("fleet"))).await.expect("start collector");
    leakwatch::demo::run_fleet(&[&server], &dir.join("fleet-work"), kind, devices, None).await.expect("fleet");
    let base = server.sessions.session().await.expect("session").sql("SELECT * FROM flows").await.expect("rows");
    server.shutdown().await.expect("shutdown");
    base
}

/// Writes `rows` rows of fresh copies of `base` (copy `first` and the
/// ones after it: pseudonyms no earlier copy has) into `flows` as one
/// file standing for log sequence number `seq`, as a flush of new
/// records would. (Only the dashboard benchmark's.)
#[allow(dead_code)]
pub fn write_new(base: &[RecordBatch], flows: &Path, first: usize, rows: usize, seq: u64) -> usize {
    let mut batches = Vec::new();
    let mut have = 0;
    let mut copy = first;
    while have < rows && base.iter().any(|b| b.num_rows() > 0) {
        for b in base {
            let take = b.num_rows().min(rows - have);
            if take > 0 {
                batches.push(copy_of(&b.slice(0, take), copy));
                have += take;
            }
        }
        copy += 1;
    }
    let day = flows.join("day=2026-01-01");
    std::fs::create_dir_all(&day).expect("day dir");
    write_flushed(&day, seq, seq, &batches);
    have
}

/// Writes `rows` into the day directory `day` as the flushed file of log
/// sequence numbers `from` to `to`, sorted as compaction sorts a merged
/// run.
fn write_flushed(day: &Path, from: u64, to: u64, rows: &[RecordBatch]) {
    let name = leakwatch_query::files::FlowFile::new("", from, to).name();
    let file = std::fs::File::create(day.join(name)).expect("create");
    let mut w = leakwatch_query::files::flow_writer(file, leakwatch_query::flows_schema()).expect("writer");
    w.write(&leakwatch_query::sorted_for_rules(rows).expect("sort")).expect("write");
    w.close().expect("close");
}

pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.replace('_', "").parse().ok()).unwrap_or(default)
}

/// `column` with `-{copy}` appended to every value.
fn suffixed(column: &ArrayRef, copy: usize) -> ArrayRef {
    let Some(strings) = column.as_any().downcast_ref::<StringArray>() else { return column.clone() };
    let out: StringArray = strings.iter().map(|v| v.map(|v| format!("{v}-{copy}"))).collect();
    Arc::new(out)
}

/// One copy of the fleet: the pseudonyms made distinct for copy `copy`.
fn copy_of(batch: &RecordBatch, copy: usize) -> RecordBatch {
    let schema = batch.schema();
    let columns = schema
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(f, c)| match f.name().as_str() {
            "device_pseudonym" | "boot_pseudonym" | "agent_id" | "batch_id" => suffixed(c, copy),
            _ => c.clone(),
        })
        .collect();
    #[allow(clippy::expect_used)]
    RecordBatch::try_new(schema, columns).expect("same schema")
}

/// Writes copies of `base` until `target` rows, in files of at most
/// `per_file` rows named like flushed files, copy `c` standing for log
/// sequence number `c + 1`, each file's rows sorted as compaction sorts a
/// merged run; returns the rows and the copies written.
fn write_copies(base: &[RecordBatch], flows: &Path, target: usize, per_file: usize) -> (usize, usize) {
    let base_rows: usize = base.iter().map(|b| b.num_rows()).sum();
    let copies = target.div_ceil(base_rows.max(1));
    let copies_per_file = (per_file / base_rows.max(1)).max(1);
    let day = flows.join("day=2026-01-01");
    std::fs::create_dir_all(&day).expect("day dir");
    let files: Vec<(usize, usize)> =
        (0..copies).step_by(copies_per_file).map(|c| (c, (c + copies_per_file).min(copies))).collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(&(from, to)) = files.get(i) else { break };
                    let rows: Vec<RecordBatch> =
                        (from..to).flat_map(|copy| base.iter().map(move |b| copy_of(b, copy))).collect();
                    write_flushed(&day, from as u64 + 1, to as u64, &rows);
                }
            });
        }
    });
    (copies * base_rows, copies)
}

/// Every file under `dir`, at any depth, with its length.
fn files_under(dir: &Path) -> Vec<(std::path::PathBuf, u64)> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                files.push((p, e.metadata().map(|m| m.len()).unwrap_or(0)));
            }
        }
    }
    files
}

pub fn dir_bytes(dir: &Path) -> u64 {
    files_under(dir).iter().map(|(_, len)| len).sum()
}

/// The Parquet files under `dir`: their bytes, their rows, and the
/// compressed bytes of each column (its pages, summed over row groups and
/// files), in schema order; what the files hold beyond their columns'
/// pages (footers, magic) is the rest. (Only the ingest benchmark's.)
#[allow(dead_code)]
pub struct ParquetSizes {
    pub bytes: u64,
    pub rows: u64,
    pub columns: Vec<(String, u64)>,
}

#[allow(dead_code)]
pub fn parquet_sizes(dir: &Path) -> ParquetSizes {
    use parquet::file::reader::{FileReader as _, SerializedFileReader};
    let mut sizes = ParquetSizes { bytes: 0, rows: 0, columns: Vec::new() };
    for (p, len) in files_under(dir) {
        if p.extension().is_none_or(|x| x != "parquet") {
            continue;
        }
        sizes.bytes += len;
        let file = std::fs::File::open(&p).expect("open a Parquet file");
        let reader = SerializedFileReader::new(file).expect("a Parquet footer");
        let meta = reader.metadata();
        sizes.rows += u64::try_from(meta.file_metadata().num_rows()).unwrap_or(0);
        for group in meta.row_groups() {
            for column in group.columns() {
                let name = column.column_path().string();
                let bytes = u64::try_from(column.compressed_size()).unwrap_or(0);
                match sizes.columns.iter_mut().find(|(n, _)| *n == name) {
                    Some((_, total)) => *total += bytes,
                    None => sizes.columns.push((name, bytes)),
                }
            }
        }
    }
    sizes
}

#[allow(dead_code)]
impl ParquetSizes {
    pub fn per_record(&self, bytes: u64) -> f64 {
        bytes as f64 / self.rows.max(1) as f64
    }

    /// Bytes of the files beyond their columns' pages.
    pub fn rest(&self) -> u64 {
        self.bytes.saturating_sub(self.columns.iter().map(|(_, b)| b).sum())
    }
}

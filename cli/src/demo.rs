//! `leakwatch demo`: the whole path on the built-in fleet.
//!
//! Starts a collector, simulates the default fleet into real pcap files,
//! imports every capture through the agent pipeline and uploads it over
//! gRPC (one agent per simulated volunteer, three devices each), flushes, runs `boot_phone_home` and prints the findings.
//! Re-running on the same data directory re-sends the same batch ids,
//! which the collector answers `duplicate`: nothing is counted twice.

use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use leakwatch_agent::import::{DEFAULT_BATCH_RECORDS, DeviceLabels, import_capture};
use leakwatch_agent::simulate::{DEFAULT_PROFILE, FleetManifest, FleetProfile, ManifestEntry, simulate_fleet};
use leakwatch_agent::state::AgentState;
use leakwatch_agent::uploader::Uploader;
use leakwatch_proto::v1::ReportBatch;
use leakwatch_query::format::{OutputFormat, render};
use leakwatch_query::rules::rule;

use leakwatch_collector::server::{ServeConfig, Server};

use crate::{Error, Result};

/// What the demo found, for callers that check it.
#[derive(Debug, Clone)]
pub struct DemoReport {
    /// Captures imported.
    pub captures: usize,
    /// Records the collector accepted in this run.
    pub records_accepted: u64,
    /// Batches it already had.
    pub batches_duplicate: u64,
    /// The findings table as printed.
    pub findings: String,
}

fn progress(tty: bool, text: &str) {
    if tty {
        eprint!("\r{text}");
    }
}

/// Which fleet, and how its captures reach the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FleetKind {
    /// The built-in fleet's four-minute boots, each capture imported whole
    /// (`leakwatch-agent import`): a record per destination and boot.
    Boots,
    /// The same fleet on for a day ([`FleetProfile::day_long`]), each
    /// capture reported as `leakwatch-agent run` reports live traffic
    /// every 15 minutes: a record per destination and window.
    DayLong,
}

impl FleetKind {
    /// Live mode's report interval for a day-long fleet.
    const DAY_REPORT_INTERVAL: Duration = Duration::from_secs(900);

    /// Where its captures go under a data directory.
    fn captures_dir(self, data_dir: &Path) -> PathBuf {
        match self {
            Self::Boots => data_dir.join("captures"),
            Self::DayLong => data_dir.join("captures-day"),
        }
    }

    /// The capture at `path` as the batches an agent sends.
    fn batches(self, path: &Path, labels: DeviceLabels, state: &AgentState) -> Result<Vec<ReportBatch>> {
        Ok(match self {
            Self::Boots => import_capture(path, &labels, state, DEFAULT_BATCH_RECORDS)?.batches,
            Self::DayLong => leakwatch_agent::live::report_capture(
                path,
                labels,
                state,
                DEFAULT_BATCH_RECORDS,
                Self::DAY_REPORT_INTERVAL,
            )?,
        })
    }
}

/// Prepares the fleet captures under `dir` (reusing them when present).
fn fleet(dir: &Path, kind: FleetKind, devices: Option<u32>, seed: Option<u64>) -> Result<FleetManifest> {
    if let Ok(manifest) = FleetManifest::read(dir) {
        let want_seed = seed.unwrap_or(manifest.seed);
        if manifest.seed == want_seed && devices.is_none_or(|d| d == manifest.devices) {
            return Ok(manifest);
        }
    }
    let profile = FleetProfile::from_toml(DEFAULT_PROFILE)?;
    let profile = match kind {
        FleetKind::Boots => profile,
        FleetKind::DayLong => profile.day_long(),
    };
    let tty = std::io::stderr().is_terminal();
    let manifest = simulate_fleet(&profile, dir, devices, seed, |done, total| {
        progress(tty, &format!("simulating devices {done}/{total}"));
    })?;
    if tty {
        eprintln!();
    }
    Ok(manifest)
}

/// Devices per simulated volunteer household.
const DEVICES_PER_VOLUNTEER: usize = 3;

/// The fleet's captures split among volunteers, each with its own agent:
/// device `i` (in order of first appearance) belongs to volunteer `i % V`,
/// so a model's devices are spread over several volunteers as in a real
/// crowd.
fn by_volunteer(manifest: &FleetManifest) -> Vec<Vec<&ManifestEntry>> {
    let mut index: BTreeMap<&str, usize> = BTreeMap::new();
    for entry in &manifest.captures {
        let next = index.len();
        index.entry(entry.device_id.as_str()).or_insert(next);
    }
    let volunteers = index.len().div_ceil(DEVICES_PER_VOLUNTEER).max(1);
    let mut out = vec![Vec::new(); volunteers];
    for entry in &manifest.captures {
        out[index[entry.device_id.as_str()] % volunteers].push(entry);
    }
    out
}

/// Runs the demo against a started `server`; `data_dir` holds captures and
/// the agent's state.
pub async fn run_pipeline(
    server: &Server,
    data_dir: &Path,
    devices: Option<u32>,
    seed: Option<u64>,
) -> Result<DemoReport> {
    run_pipeline_over(&[server], data_dir, devices, seed).await
}

/// [`run_pipeline`] with the volunteers spread over `servers` (volunteer
/// `v` reports to `servers[v % n]`, as a load balancer would place them);
/// each server flushes, and the first one refreshes its dashboard and
/// answers the findings.
pub async fn run_pipeline_over(
    servers: &[&Server],
    data_dir: &Path,
    devices: Option<u32>,
    seed: Option<u64>,
) -> Result<DemoReport> {
    run_fleet(servers, data_dir, FleetKind::Boots, devices, seed).await
}

/// [`run_pipeline_over`] with the fleet `kind`.
pub async fn run_fleet(
    servers: &[&Server],
    data_dir: &Path,
    kind: FleetKind,
    devices: Option<u32>,
    seed: Option<u64>,
) -> Result<DemoReport> {
    let Some(server) = servers.first() else { return Err(Error::Config("no collector to report to".into())) };
    let started = Instant::now();
    let captures_dir = kind.captures_dir(data_dir);
    let manifest = fleet(&captures_dir, kind, devices, seed)?;
    eprintln!(
        "fleet: {} devices, {} boot captures in {}",
        manifest.devices,
        manifest.captures.len(),
        captures_dir.display()
    );
    let tty = std::io::stderr().is_terminal();
    let total = manifest.captures.len();
    let mut sent = 0;
    let (mut accepted, mut duplicate) = (0, 0);
    for (volunteer, captures) in by_volunteer(&manifest).iter().enumerate() {
        let state = AgentState::open(&data_dir.join("volunteers").join(format!("{volunteer:03}")))?;
        let url = format!("http://{}", servers[volunteer % servers.len()].grpc_addr);
        let mut uploader = Uploader::connect(&url, &state, "", Duration::from_secs(30)).await?;
        for entry in captures {
            let labels = DeviceLabels {
                device_id: Some(entry.device_id.clone()),
                vendor: entry.vendor.clone(),
                model: entry.model.clone(),
                firmware: entry.firmware.clone(),
                consent: entry.consent.clone(),
                boot_time_us: None,
                app: None,
            };
            for batch in &kind.batches(&captures_dir.join(&entry.file), labels, &state)? {
                uploader.send(batch).await?;
            }
            sent += 1;
            if sent % 25 == 0 || sent == total {
                progress(tty, &format!("imported {sent}/{total} captures over gRPC"));
            }
        }
        accepted += uploader.stats.records_accepted;
        duplicate += uploader.stats.batches_duplicate;
    }
    if tty {
        eprintln!();
    }
    let mut flushed = leakwatch_collector::flusher::FlushOutcome::default();
    for server in servers {
        flushed = server.flusher.flush().await?;
    }
    eprintln!(
        "collector stored {} new records ({} batches already stored); flushed to Parquet up to log position {} in {:.1?}",
        accepted,
        duplicate,
        flushed.watermark,
        started.elapsed()
    );
    server.dashboard.refresh().await.map_err(leakwatch_collector::Error::from)?;
    let sql = rule("boot_phone_home")?.render(&BTreeMap::new())?;
    let session = server.sessions.session().await?;
    let batches = session.sql(&sql).await?;
    Ok(DemoReport {
        captures: total,
        records_accepted: accepted,
        batches_duplicate: duplicate,
        findings: render(&batches, OutputFormat::Table)?,
    })
}

/// Flags of `leakwatch demo`.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Data directory.
    pub data_dir: PathBuf,
    /// Exit after printing the findings.
    pub once: bool,
    /// Devices to simulate (default: the profile's 295).
    pub devices: Option<u32>,
    /// Simulator seed.
    pub seed: Option<u64>,
    /// Server settings.
    pub serve: ServeConfig,
}

/// Runs `leakwatch demo`.
pub async fn run(options: DemoOptions) -> Result<()> {
    let mut serve = options.serve.clone();
    serve.data_dir = options.data_dir.join("collector");
    serve.open_enrollment = true;
    let server = Server::start(serve).await?;
    let report = run_pipeline(&server, &options.data_dir, options.devices, options.seed).await;
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            let _ = server.shutdown().await;
            return Err(e);
        }
    };
    println!("boot_phone_home: vendor destinations contacted within 60 s of boot by most of a model's devices\n");
    println!("{}", report.findings);
    if options.once {
        return Ok(server.shutdown().await?);
    }
    let data = options.data_dir.join("collector");
    let exe = std::env::current_exe().map_or_else(|_| "leakwatch".to_string(), |p| p.display().to_string());
    println!(
        "\nThe collector keeps serving: gRPC on {}; the public leak dashboard on http://{}/ (JSON under /api, /metrics, /healthz).\n\
         Query it from another terminal:\n  \
         {exe} sql --data-dir {} -c \"SELECT vendor, model, count(DISTINCT device_pseudonym) AS devices FROM flows GROUP BY vendor, model ORDER BY devices DESC\"\n  \
         {exe} sql --data-dir {} --rule boot_phone_home\n\
         Press Ctrl-C to stop.",
        server.grpc_addr,
        server.http_addr,
        data.display(),
        data.display()
    );
    let _ = tokio::signal::ctrl_c().await;
    eprintln!("stopping: draining requests and flushing");
    Ok(server.shutdown().await?)
}

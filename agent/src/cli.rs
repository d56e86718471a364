//! The `leakwatch-agent` command line.

use std::collections::BTreeMap;
use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::{AgentConfig, default_config_path};
use crate::explain::{DryRunFormat, write_connections, write_dry_run};
use crate::import::{
    DEFAULT_BATCH_RECORDS, DeviceLabels, ImportedCapture, import_capture, parse_boot_time, read_capture,
};
use crate::lan::{LanLabels, import_lan};
use crate::simulate::{DEFAULT_PROFILE, FleetProfile, simulate_fleet, write_lan_capture};
use crate::state::{AgentState, default_state_dir};
use crate::uploader::Uploader;
use crate::{Error, Result};

/// leakwatch agent: report which destinations your devices contact,
/// anonymised, to a leakwatch collector.
#[derive(Debug, Parser)]
#[command(name = "leakwatch-agent", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Read capture files (pcap, pcapng; one file = one boot of the device)
    /// and report their flows.
    Import(Box<ImportArgs>),
    /// Write a commented configuration file.
    Init(InitArgs),
    /// Exchange an enrollment code for an agent token (kept, mode 0600, in
    /// the state directory); prints the agent id.
    Enroll(EnrollArgs),
    /// Show the full local flow table of capture files (source fields and
    /// Community IDs included); prints only, never sends anything.
    Flows(FlowsArgs),
    /// Write simulated per-boot captures of a device fleet.
    Simulate(SimulateArgs),
}

/// Flags of `import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Capture files.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Collector URL, e.g. http://127.0.0.1:50051 (required unless --dry-run).
    #[arg(long, env = "LEAKWATCH_COLLECTOR")]
    pub collector: Option<String>,
    /// Send nothing; print exactly what would be sent.
    #[arg(long)]
    pub dry_run: bool,
    /// Output format of --dry-run.
    #[arg(long, value_enum, default_value = "jsonl")]
    pub format: DryRunFormat,
    /// Router / LAN mode: each LAN device in the capture is its own device
    /// with its own boots (from its DHCP handshakes).
    #[arg(long)]
    pub lan: bool,
    /// LAN mode: TOML file labelling devices by MAC (vendor, model,
    /// firmware, consent); unlabelled devices get their vendor from the OUI.
    #[arg(long, requires = "lan")]
    pub device_labels: Option<PathBuf>,
    #[command(flatten)]
    /// Device labels.
    pub device: DeviceArgs,
    #[command(flatten)]
    /// State and delivery.
    pub agent: AgentArgs,
}

/// Labels of the device a capture comes from.
#[derive(Debug, Args)]
pub struct DeviceArgs {
    /// Your own name for the device; turned into a pseudonym with this
    /// install's secret and never sent. Default: the capture's MAC address
    /// (or address), pseudonymised the same way.
    #[arg(long)]
    pub device_id: Option<String>,
    /// Device vendor, e.g. Xiaomi.
    #[arg(long, default_value = "")]
    pub vendor: String,
    /// Device model, e.g. "Redmi 1S".
    #[arg(long, default_value = "")]
    pub model: String,
    /// OS or firmware version.
    #[arg(long, default_value = "")]
    pub firmware: String,
    /// Declared consent, KEY=VALUE (repeatable), e.g. cloud_account=off.
    #[arg(long = "consent", value_name = "KEY=VALUE")]
    pub consent: Vec<String>,
    /// Boot time (RFC 3339 or Unix seconds). Default: the capture's first packet.
    #[arg(long)]
    pub boot_time: Option<String>,
    /// Application that produced the traffic, if known.
    #[arg(long)]
    pub app: Option<String>,
}

/// State directory and delivery settings.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Configuration file (default: $XDG_CONFIG_HOME/leakwatch-agent/agent.toml; see `init`).
    #[arg(long, env = "LEAKWATCH_AGENT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Agent state directory (install secret, credentials).
    #[arg(long, env = "LEAKWATCH_AGENT_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Enrollment code from the collector's operator.
    #[arg(long, env = "LEAKWATCH_ENROLLMENT_CODE")]
    pub enrollment_code: Option<String>,
    /// How long to keep retrying delivery, seconds (default 30).
    #[arg(long, env = "LEAKWATCH_AGENT_DELIVER_TIMEOUT")]
    pub deliver_timeout: Option<u64>,
    /// CA certificates (PEM) to verify an https:// collector with
    /// (default: the system's roots).
    #[arg(long, env = "LEAKWATCH_AGENT_CA_FILE")]
    pub ca_file: Option<PathBuf>,
}

impl AgentArgs {
    fn config(&self) -> Result<AgentConfig> {
        match &self.config {
            Some(path) => AgentConfig::load(path, true),
            None => AgentConfig::load(&default_config_path(), false),
        }
    }
}

/// Flags of `enroll`.
#[derive(Debug, Args)]
pub struct EnrollArgs {
    /// Collector URL.
    #[arg(long, env = "LEAKWATCH_COLLECTOR")]
    pub collector: Option<String>,
    /// The code from the collector's operator.
    #[arg(long)]
    pub code: Option<String>,
    #[command(flatten)]
    /// State and delivery.
    pub agent: AgentArgs,
}

/// Flags of `init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Where to write the configuration (default: $XDG_CONFIG_HOME/leakwatch-agent/agent.toml).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Overwrite an existing file.
    #[arg(long)]
    pub force: bool,
}

/// Flags of `flows`.
#[derive(Debug, Args)]
pub struct FlowsArgs {
    /// Capture files.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: DryRunFormat,
}

/// Flags of `simulate`.
#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Directory for the captures and fleet.json.
    #[arg(long)]
    pub out: PathBuf,
    /// Number of devices (the profile's models are scaled to it).
    #[arg(long)]
    pub devices: Option<u32>,
    /// Random seed (default: the profile's).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Also write lan.pcap (every capture merged, as a router would see the
    /// fleet) and lan-devices.toml (labels for every second device).
    #[arg(long)]
    pub lan: bool,
    /// Fleet profile (TOML); default: the built-in one.
    #[arg(long)]
    pub profile: Option<PathBuf>,
}

impl DeviceArgs {
    /// The labels these flags declare.
    pub fn labels(&self) -> Result<DeviceLabels> {
        let mut consent = BTreeMap::new();
        for pair in &self.consent {
            let Some((k, v)) = pair.split_once('=') else {
                return Err(Error::InvalidArgument {
                    field: "--consent".into(),
                    reason: format!("{pair:?} is not KEY=VALUE"),
                });
            };
            consent.insert(k.trim().to_string(), v.trim().to_string());
        }
        let check = |field: &str, value: &str| {
            if value.len() > 64 {
                Err(Error::InvalidArgument {
                    field: field.into(),
                    reason: format!("{} bytes, at most 64", value.len()),
                })
            } else {
                Ok(())
            }
        };
        check("--vendor", &self.vendor)?;
        check("--model", &self.model)?;
        check("--firmware", &self.firmware)?;
        for (k, v) in &consent {
            check("--consent", k)?;
            check("--consent", v)?;
        }
        Ok(DeviceLabels {
            device_id: self.device_id.clone(),
            vendor: self.vendor.clone(),
            model: self.model.clone(),
            firmware: self.firmware.clone(),
            consent,
            boot_time_us: self.boot_time.as_deref().map(parse_boot_time).transpose()?,
            app: self.app.clone(),
        })
    }
}

/// One line about an imported capture, for the volunteer.
pub fn describe_import(imported: &ImportedCapture) -> String {
    let c = &imported.capture;
    let mut line =
        format!("{}: {} packets read, {} records", imported.path.display(), c.frames, imported.record_count());
    if let Some(skipped) = c.skipped_summary() {
        line.push_str(&format!("; {skipped}"));
    }
    if imported.anonymiser.dropped_local_names > 0 {
        line.push_str(&format!("; {} local DNS names dropped", imported.anonymiser.dropped_local_names));
    }
    if imported.anonymiser.dropped_non_public > 0 {
        line.push_str(&format!("; {} non-public destinations dropped", imported.anonymiser.dropped_non_public));
    }
    if let Some(stop) = &c.stopped_by {
        line.push_str(&format!("; stopped early: {stop}"));
    }
    if imported.untracked_connections > 0 {
        line.push_str(&format!(
            "; {} connections not tracked (flow table full at {})",
            imported.untracked_connections,
            crate::flow::MAX_CONNECTIONS
        ));
    }
    line.push_str(&format!("; boot time: {}", imported.boot_source.short_name()));
    line
}

/// Runs the command line; returns the process exit code.
pub async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Import(args) => import(*args).await,
        Command::Flows(args) => flows(args),
        Command::Enroll(args) => enroll(args).await,
        Command::Init(args) => {
            let path = args.config.unwrap_or_else(default_config_path);
            AgentConfig::write_sample(&path, args.force)?;
            println!("{}", path.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Simulate(args) => simulate(args),
    }
}

async fn enroll(args: EnrollArgs) -> Result<ExitCode> {
    let config = args.agent.config()?;
    let url = args.collector.or(config.collector).ok_or_else(|| Error::InvalidArgument {
        field: "--collector".into(),
        reason: "a collector URL is required (flag, LEAKWATCH_COLLECTOR or the config file)".into(),
    })?;
    let code = args.code.or(args.agent.enrollment_code.clone()).or(config.enrollment_code).unwrap_or_default();
    let state = AgentState::open(&args.agent.state_dir.clone().or(config.state_dir).unwrap_or_else(default_state_dir))?;
    state.forget_credentials(&url)?;
    let up = Uploader::connect_with_ca(
        &url,
        args.agent.ca_file.as_deref(),
        &state,
        &code,
        Duration::from_secs(args.agent.deliver_timeout.or(config.deliver_timeout_secs).unwrap_or(30)),
    )
    .await?;
    eprintln!("enrolled with {url}; token stored in {}", state.dir().display());
    println!("{}", up.agent_id());
    Ok(ExitCode::SUCCESS)
}

async fn import(mut args: ImportArgs) -> Result<ExitCode> {
    let labels = args.device.labels()?;
    // Flags and environment first, then the configuration file.
    let config = args.agent.config()?;
    args.collector = args.collector.or(config.collector);
    args.agent.state_dir = args.agent.state_dir.or(config.state_dir);
    args.agent.enrollment_code = args.agent.enrollment_code.or(config.enrollment_code);
    args.agent.deliver_timeout = args.agent.deliver_timeout.or(config.deliver_timeout_secs);
    args.device_labels = args.device_labels.or(config.device_labels.filter(|_| args.lan));
    if !args.dry_run && args.collector.is_none() {
        return Err(Error::InvalidArgument {
            field: "--collector".into(),
            reason: "a collector URL is required unless --dry-run is given".into(),
        });
    }
    let state_dir = args.agent.state_dir.clone().unwrap_or_else(default_state_dir);
    let state = AgentState::open(&state_dir)?;
    let mut imported = Vec::new();
    let mut failed = 0usize;
    let mut read_ok = 0usize;
    if args.lan {
        let d = &args.device;
        if d.device_id.is_some()
            || !d.vendor.is_empty()
            || !d.model.is_empty()
            || !d.firmware.is_empty()
            || !d.consent.is_empty()
        {
            return Err(Error::InvalidArgument {
                field: "--lan".into(),
                reason: "device flags (--device-id, --vendor, --model, --firmware, --consent) label one device; \
                         in LAN mode label devices by MAC in --device-labels"
                    .into(),
            });
        }
        let lan_labels = match &args.device_labels {
            Some(path) => LanLabels::from_toml(
                &std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.clone(), source })?,
            )?,
            None => LanLabels::default(),
        };
        for file in &args.files {
            match import_lan(file, &lan_labels, labels.boot_time_us, &state, DEFAULT_BATCH_RECORDS) {
                Ok(boots) => {
                    read_ok += 1;
                    if let Some(first) = boots.first() {
                        let devices: std::collections::BTreeSet<_> = boots.iter().map(|b| b.device).collect();
                        let records: usize = boots.iter().map(|b| b.import.record_count()).sum();
                        let dropped: u64 = boots.iter().map(|b| b.import.anonymiser.dropped_non_public).sum();
                        let c = &first.import.capture;
                        eprintln!(
                            "{}: {} packets read, {} skipped, {} LAN devices, {} boots, {records} records; {dropped} non-public destinations dropped",
                            file.display(),
                            c.frames,
                            c.skipped_total(),
                            devices.len(),
                            boots.len()
                        );
                    }
                    for b in boots {
                        let vendor = b
                            .import
                            .batches
                            .first()
                            .and_then(|x| x.device.as_ref())
                            .map(|d| format!("{} {}", d.vendor, d.model));
                        eprintln!(
                            "  device {} ({}): {} records, boot time: {}",
                            b.device.describe(),
                            vendor.unwrap_or_default(),
                            b.import.record_count(),
                            b.import.boot_source.short_name()
                        );
                        imported.push(b.import);
                    }
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    failed += 1;
                }
            }
        }
    } else {
        for file in &args.files {
            match import_capture(file, &labels, &state, DEFAULT_BATCH_RECORDS) {
                Ok(capture) => {
                    read_ok += 1;
                    eprintln!("{}", describe_import(&capture));
                    imported.push(capture);
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    failed += 1;
                }
            }
        }
    }
    if read_ok == 0 {
        eprintln!("error: none of the {failed} capture(s) could be read");
        return Ok(ExitCode::from(2));
    }
    if args.dry_run {
        let stdout = std::io::stdout();
        let mut out = std::io::BufWriter::with_capacity(1 << 16, stdout.lock());
        for capture in &imported {
            write_dry_run(&mut out, &capture.batches, args.format)
                .map_err(|source| Error::Io { path: "<stdout>".into(), source })?;
        }
        out.flush().ok();
        return Ok(ExitCode::SUCCESS);
    }
    let url = args.collector.unwrap_or_default();
    let mut uploader = Uploader::connect_with_ca(
        &url,
        args.agent.ca_file.as_deref(),
        &state,
        args.agent.enrollment_code.as_deref().unwrap_or_default(),
        Duration::from_secs(args.agent.deliver_timeout.unwrap_or(30)),
    )
    .await?;
    for capture in &imported {
        for batch in &capture.batches {
            uploader.send(batch).await?;
        }
    }
    let s = &uploader.stats;
    eprintln!(
        "sent to {url}: {} records in {} new batches, {} batches already stored, {} retries",
        s.records_accepted, s.batches_accepted, s.batches_duplicate, s.retries
    );
    Ok(if failed > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

fn flows(args: FlowsArgs) -> Result<ExitCode> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 16, stdout.lock());
    let mut read_any = false;
    for file in &args.files {
        match read_capture(file) {
            Ok(capture) => {
                read_any = true;
                write_connections(&mut out, &capture.table.connections(), args.format)
                    .map_err(|source| Error::Io { path: "<stdout>".into(), source })?;
                let s = &capture.stats;
                let mut line = format!("{}: {} packets read", file.display(), s.frames);
                if let Some(skipped) = s.skipped_summary() {
                    line.push_str(&format!("; {skipped}"));
                }
                if let Some(stop) = &s.stopped_by {
                    line.push_str(&format!("; stopped early: {stop}"));
                }
                eprintln!("{line}");
            }
            Err(e) => eprintln!("error: {e}"),
        }
    }
    Ok(if read_any { ExitCode::SUCCESS } else { ExitCode::from(2) })
}

fn simulate(args: SimulateArgs) -> Result<ExitCode> {
    let text = match &args.profile {
        Some(path) => std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.clone(), source })?,
        None => DEFAULT_PROFILE.to_string(),
    };
    let profile = FleetProfile::from_toml(&text)?;
    let tty = std::io::stderr().is_terminal();
    let manifest = simulate_fleet(&profile, &args.out, args.devices, args.seed, |done, total| {
        if tty {
            eprint!("\rsimulating devices: {done}/{total}");
        }
    })?;
    if tty {
        eprintln!();
    }
    if args.lan {
        let (lan, labels) = write_lan_capture(&args.out, &manifest)?;
        eprintln!("wrote {} and {}", lan.display(), labels.display());
    }
    eprintln!(
        "wrote {} captures of {} devices and fleet.json to {}",
        manifest.captures.len(),
        manifest.devices,
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

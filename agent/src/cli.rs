//! The `leakwatch-agent` command line.

use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use leakwatch_core::log::say;
use prost::Message as _;
use tracing::Level;

use crate::config::{AgentConfig, DeviceConfig, default_config_path};
use crate::delivery::{AgentStatus, deliver};
use crate::explain::{DryRunFormat, write_connections, write_dry_run};
use crate::import::{
    DEFAULT_BATCH_RECORDS, DeviceLabels, ImportedCapture, import_capture, parse_boot_time, read_capture,
};
use crate::lan::{LanLabels, import_lan};
use crate::live::{Capture, Harvester, LiveSource};
use crate::simulate::{DEFAULT_PROFILE, FleetProfile, simulate_fleet, write_lan_capture};
use crate::spool::{DEFAULT_MAX_BYTES, Spool, SpoolConfig};
use crate::state::{AgentState, default_state_dir};
use crate::uploader::{ClientTls, Uploader, collector_urls, transient};
use crate::{Error, Result};

/// leakwatch agent: report which destinations your devices contact,
/// anonymised, to a leakwatch collector.
#[derive(Debug, Parser)]
#[command(name = "leakwatch-agent", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// The log on stderr: `text`, or `json` for a log collector (one object a line); which
    /// events is `LEAKWATCH_LOG` (default `warn`).
    #[arg(long, global = true, env = "LEAKWATCH_LOG_FORMAT", default_value = "text",
          value_parser = leakwatch_core::log::FORMATS)]
    pub log_format: String,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Read capture files (pcap, pcapng; one file = one boot of the device)
    /// and report their flows.
    Import(Box<ImportArgs>),
    /// Tell which of this home's devices contact what published findings
    /// name (from capture files, a router's LAN capture or a DNS log, read
    /// as `import` reads them); compares on this machine, sends nothing.
    Check(Box<CheckArgs>),
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
    /// Capture live (a network interface, or a phone's PCAPdroid stream)
    /// and report continuously until stopped (Ctrl-C, SIGTERM).
    Run(Box<RunArgs>),
    /// Send a capture file as a PCAPdroid UDP stream (to try `run
    /// --pcapdroid-udp` without a phone).
    Replay(ReplayArgs),
    /// Write a hardened systemd unit that runs `run` at boot; prints the
    /// commands to start it.
    InstallService(InstallServiceArgs),
    /// Deliver what is queued in the spool; exits when it is empty (or the
    /// delivery timeout passed with the collector unreachable).
    Flush(FlushArgs),
    /// Show what was sent, what is queued, the last error and the
    /// collector's last answer.
    Status(StatusArgs),
    /// List the devices a router sees on the LAN (capture files, or an
    /// interface for a while), what each says about itself and what it
    /// probably is; prints only, never sends anything.
    Devices(DevicesArgs),
    /// Label a LAN device by its MAC in the labels file (added, or its
    /// entry updated; every other line and comment kept).
    Label(LabelArgs),
}

/// Flags of `devices`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["files", "interface"])))]
pub struct DevicesArgs {
    /// Capture files (pcap, pcapng) of the LAN.
    pub files: Vec<PathBuf>,
    /// Or: listen on this interface (needs CAP_NET_RAW), e.g. eth0.
    #[arg(long, requires = "for_secs", conflicts_with = "files")]
    pub interface: Option<String>,
    /// With --interface: how long to listen, seconds (devices announce
    /// themselves every few minutes; DHCP only when they join).
    #[arg(long = "for", value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub for_secs: Option<u64>,
    /// The labels file to show each device's entry from (default: the
    /// configuration's `device_labels`).
    #[arg(long)]
    pub device_labels: Option<PathBuf>,
    /// Configuration file (default: $XDG_CONFIG_HOME/leakwatch-agent/agent.toml).
    #[arg(long, env = "LEAKWATCH_AGENT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Output: text for reading, or one JSON object per device.
    #[arg(long, value_enum, default_value = "text")]
    pub format: DevicesFormat,
}

/// Output formats of `devices`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DevicesFormat {
    /// Lines for reading.
    Text,
    /// One JSON object per device.
    Jsonl,
}

/// Flags of `label`.
#[derive(Debug, Args)]
pub struct LabelArgs {
    /// The device's MAC, as `devices` lists it (aa:bb:cc:dd:ee:ff).
    pub mac: String,
    /// Vendor, e.g. D-Link.
    #[arg(long)]
    pub vendor: String,
    /// Model, e.g. DCS-930LB.
    #[arg(long)]
    pub model: String,
    /// Firmware or OS version.
    #[arg(long)]
    pub firmware: Option<String>,
    /// Declared consent, KEY=VALUE (repeatable); other entries are kept.
    #[arg(long = "consent", value_name = "KEY=VALUE")]
    pub consent: Vec<String>,
    /// Your own name for it (only its pseudonym is sent).
    #[arg(long)]
    pub name: Option<String>,
    /// The labels file (default: the configuration's `device_labels`);
    /// created when missing.
    #[arg(long)]
    pub device_labels: Option<PathBuf>,
    /// Configuration file (default: $XDG_CONFIG_HOME/leakwatch-agent/agent.toml).
    #[arg(long, env = "LEAKWATCH_AGENT_CONFIG")]
    pub config: Option<PathBuf>,
}

/// Flags of `run`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["interface", "pcapdroid_udp"])))]
pub struct RunArgs {
    /// Network interface to capture on (needs CAP_NET_RAW), e.g. eth0.
    #[arg(long, env = "LEAKWATCH_AGENT_INTERFACE")]
    pub interface: Option<String>,
    /// Receive a phone's PCAPdroid "UDP exporter" stream on this address,
    /// e.g. 0.0.0.0:5123 (port 0 picks a free one and prints it).
    #[arg(long, env = "LEAKWATCH_AGENT_PCAPDROID_UDP")]
    pub pcapdroid_udp: Option<std::net::SocketAddr>,
    /// Collector URL, or several separated by commas to fail over between
    /// (required unless --dry-run).
    #[arg(long, env = "LEAKWATCH_COLLECTOR")]
    pub collector: Option<String>,
    /// Send nothing; print what would be sent, interval by interval.
    #[arg(long)]
    pub dry_run: bool,
    /// Output format of --dry-run.
    #[arg(long, value_enum, default_value = "jsonl")]
    pub format: DryRunFormat,
    /// Seconds between reports of finished connections.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub report_interval: u64,
    #[command(flatten)]
    /// Router / LAN mode.
    pub lan: LanArgs,
    #[command(flatten)]
    /// Device labels.
    pub device: DeviceArgs,
    #[command(flatten)]
    /// State and delivery.
    pub agent: AgentArgs,
}

/// Flags of `replay`.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The capture file.
    pub file: PathBuf,
    /// Where `run --pcapdroid-udp` listens, e.g. 127.0.0.1:5123.
    #[arg(long)]
    pub to: std::net::SocketAddr,
    /// Playback speed (1 = the capture's own pacing; 0 = as fast as possible).
    #[arg(long, default_value_t = 1.0)]
    pub speed: f64,
    /// App name for PCAPdroid's trailer on every frame (Ethernet captures).
    #[arg(long)]
    pub app: Option<String>,
    /// Times to replay the file (0: until stopped).
    #[arg(long, default_value_t = 1)]
    pub times: u64,
    /// Pace the replay to about this many new connections a minute
    /// (overrides --speed; the file is read once first to count them).
    #[arg(long, conflicts_with = "speed")]
    pub flows_per_minute: Option<f64>,
}

/// Flags of `install-service`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["interface", "pcapdroid_udp"])))]
pub struct InstallServiceArgs {
    /// Interface the service captures on, e.g. eth0.
    #[arg(long)]
    pub interface: Option<String>,
    /// Or: the address receiving a phone's PCAPdroid stream, e.g. 0.0.0.0:5123.
    #[arg(long)]
    pub pcapdroid_udp: Option<std::net::SocketAddr>,
    /// Unit name.
    #[arg(long, default_value = "leakwatch-agent")]
    pub name: String,
    /// Where to write the unit.
    #[arg(long, default_value = "/etc/systemd/system")]
    pub unit_dir: PathBuf,
    /// The agent binary the unit runs (default: this one).
    #[arg(long)]
    pub binary: Option<PathBuf>,
    /// Overwrite an existing unit.
    #[arg(long)]
    pub force: bool,
    /// Router / LAN mode: every LAN device with its own boots (labels from
    /// `device_labels` in the config).
    #[arg(long)]
    pub lan: bool,
    /// The configuration the service reads: for one device, its `[device]`
    /// table must name the vendor and model.
    #[arg(long, default_value = "/etc/leakwatch-agent/agent.toml")]
    pub config: PathBuf,
}

/// Flags of `flush`.
#[derive(Debug, Args)]
pub struct FlushArgs {
    /// Collector URL, or several separated by commas.
    #[arg(long, env = "LEAKWATCH_COLLECTOR")]
    pub collector: Option<String>,
    #[command(flatten)]
    /// State and delivery.
    pub agent: AgentArgs,
}

/// Flags of `status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    /// State and delivery.
    pub agent: AgentArgs,
}

/// What `import` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ImportFrom {
    /// Packet captures (pcap, pcapng), PCAPdroid's with their app trailer.
    #[default]
    Capture,
    /// PCAPdroid's connection export (Connections → Export CSV).
    PcapdroidCsv,
    /// The iOS App Privacy Report (Settings → Privacy & Security → App
    /// Privacy Report → Save, an `.ndjson` file).
    IosPrivacy,
    /// Zeek logs: a log directory (conn, dns, ssl, dhcp; TSV or JSON, also
    /// gzipped) or single logs. Each LAN device is its own, as with --lan.
    Zeek,
    /// Pi-hole's query database (pihole-FTL.db), read-only; each client is
    /// its own device. Only queries after the last import's are read.
    Pihole,
}

/// Flags of `import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Files to read: captures, or what --from names.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// What the files are.
    #[arg(long, value_enum, default_value = "capture")]
    pub from: ImportFrom,
    /// Collector URL, e.g. http://127.0.0.1:50051, or several separated by
    /// commas to fail over between (required unless --dry-run).
    #[arg(long, env = "LEAKWATCH_COLLECTOR")]
    pub collector: Option<String>,
    /// Send nothing; print exactly what would be sent.
    #[arg(long)]
    pub dry_run: bool,
    /// Pi-hole: read every query, not only those after the last import.
    #[arg(long)]
    pub from_start: bool,
    /// Output format of --dry-run.
    #[arg(long, value_enum, default_value = "jsonl")]
    pub format: DryRunFormat,
    #[command(flatten)]
    /// Router / LAN mode.
    pub lan: LanArgs,
    #[command(flatten)]
    /// Device labels.
    pub device: DeviceArgs,
    #[command(flatten)]
    /// State and delivery.
    pub agent: AgentArgs,
}

/// Router / LAN mode, for `import` and `run`.
#[derive(Debug, Args)]
pub struct LanArgs {
    /// Router / LAN mode: each LAN device seen is its own device with its
    /// own boots (from its DHCP handshakes).
    #[arg(long)]
    pub lan: bool,
    /// LAN mode: TOML file labelling devices by MAC (vendor, model,
    /// firmware, consent); unlabelled devices get their vendor from the OUI.
    #[arg(long, requires = "lan")]
    pub device_labels: Option<PathBuf>,
}

impl LanArgs {
    /// The LAN labels (flag, else the config's `device_labels`, else none)
    /// in LAN mode; `None` otherwise. The one-device flags are refused in
    /// LAN mode.
    fn labels(&self, device: &DeviceArgs, settings: &Settings, always: bool) -> Result<Option<LanLabels>> {
        if !self.lan && !always {
            return Ok(None);
        }
        check_no_device_flags(device, settings)?;
        match self.device_labels.clone().or_else(|| settings.config.device_labels.clone()) {
            Some(path) => LanLabels::load(&path).map(Some),
            None => Ok(Some(LanLabels::default())),
        }
    }
}

/// Labels of the device a capture comes from: each flag, else its
/// environment variable, else the `[device]` table of the configuration.
#[derive(Debug, Args)]
pub struct DeviceArgs {
    /// Your own name for the device; turned into a pseudonym with this
    /// install's secret and never sent. Default: the capture's MAC address
    /// (or address), pseudonymised the same way.
    #[arg(long, env = "LEAKWATCH_AGENT_DEVICE_ID")]
    pub device_id: Option<String>,
    /// Device vendor, e.g. Xiaomi.
    #[arg(long, env = "LEAKWATCH_AGENT_VENDOR")]
    pub vendor: Option<String>,
    /// Device model, e.g. "Redmi 1S".
    #[arg(long, env = "LEAKWATCH_AGENT_MODEL")]
    pub model: Option<String>,
    /// OS or firmware version.
    #[arg(long, env = "LEAKWATCH_AGENT_FIRMWARE")]
    pub firmware: Option<String>,
    /// Declared consent, KEY=VALUE (repeatable; in the environment
    /// variable separated by ';'), e.g. cloud_account=off. Overrides the
    /// configuration's entry of the same key.
    #[arg(long = "consent", value_name = "KEY=VALUE", env = "LEAKWATCH_AGENT_CONSENT", value_delimiter = ';')]
    pub consent: Vec<String>,
    /// Boot time (RFC 3339 or Unix seconds). Default: the capture's first packet.
    #[arg(long)]
    pub boot_time: Option<String>,
    /// Application that produced the traffic, if known.
    #[arg(long, env = "LEAKWATCH_AGENT_APP")]
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
    /// Client certificate (PEM) for a collector that requires one; with
    /// --client-key.
    #[arg(long, env = "LEAKWATCH_AGENT_CLIENT_CERT", requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// Private key (PEM) of --client-cert.
    #[arg(long, env = "LEAKWATCH_AGENT_CLIENT_KEY", requires = "client_cert")]
    pub client_key: Option<PathBuf>,
    /// Bound of the spool of batches waiting for the collector, MiB
    /// (default 64); when full the oldest batches are dropped and counted.
    #[arg(long, env = "LEAKWATCH_AGENT_SPOOL_MAX_MIB", value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    pub spool_max_mib: Option<u64>,
}

/// Settings after flags, environment and the configuration file are merged
/// (in that order of precedence).
#[derive(Debug, Clone)]
struct Settings {
    config: AgentConfig,
    /// Where the configuration was read from (or would be).
    config_path: PathBuf,
    collector: Option<String>,
    state_dir: PathBuf,
    enrollment_code: String,
    deliver_timeout: Duration,
    tls: ClientTls,
    spool: SpoolConfig,
}

impl Settings {
    fn collector(&self) -> Result<&str> {
        self.collector.as_deref().ok_or_else(|| Error::InvalidArgument {
            field: "--collector".into(),
            reason: "a collector URL is required (flag, LEAKWATCH_COLLECTOR or `collector` in the config file)".into(),
        })
    }

    fn state(&self) -> Result<AgentState> {
        AgentState::open(&self.state_dir)
    }

    fn spool_dir(&self) -> PathBuf {
        self.state_dir.join("spool")
    }

    fn uploader(&self, state: &AgentState) -> Result<Uploader> {
        Uploader::open_with_tls(self.collector()?, &self.tls, state, &self.enrollment_code, self.deliver_timeout)
    }
}

impl AgentArgs {
    fn settings(&self, collector: Option<String>) -> Result<Settings> {
        let (config, config_path) = load_config(self.config.as_deref())?;
        Ok(Settings {
            collector: collector.or_else(|| config.collector.clone()),
            state_dir: self.state_dir.clone().or_else(|| config.state_dir.clone()).unwrap_or_else(default_state_dir),
            enrollment_code: self
                .enrollment_code
                .clone()
                .or_else(|| config.enrollment_code.clone())
                .unwrap_or_default(),
            deliver_timeout: Duration::from_secs(self.deliver_timeout.or(config.deliver_timeout_secs).unwrap_or(30)),
            tls: ClientTls {
                ca_file: self.ca_file.clone(),
                cert: self.client_cert.clone(),
                key: self.client_key.clone(),
            },
            spool: SpoolConfig::with_max_bytes(
                self.spool_max_mib.or(config.spool_max_mib).unwrap_or(DEFAULT_MAX_BYTES >> 20) << 20,
            ),
            config,
            config_path,
        })
    }
}

/// Flags of `enroll`.
#[derive(Debug, Args)]
pub struct EnrollArgs {
    /// Collector URL, or several separated by commas.
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

/// Flags of `check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The published findings: a dashboard's address (https://leaks.example.org, read at its
    /// /api/findings) or a file of that JSON saved before (to check offline).
    #[arg(long, env = "LEAKWATCH_FINDINGS")]
    pub findings: String,
    /// Files to check: captures (pcap, pcapng), or exports of the kind --from names.
    #[arg(required_unless_present_any = ["interface", "pcapdroid_udp"], conflicts_with_all = ["interface", "pcapdroid_udp"])]
    pub files: Vec<PathBuf>,
    /// Or: capture live on this interface (needs CAP_NET_RAW) for --seconds, then check.
    #[arg(long, conflicts_with = "pcapdroid_udp")]
    pub interface: Option<String>,
    /// Or: receive a phone's PCAPdroid stream on this UDP address for --seconds, then check.
    #[arg(long)]
    pub pcapdroid_udp: Option<std::net::SocketAddr>,
    /// With --interface or --pcapdroid-udp: how long to capture, seconds (Ctrl-C ends it
    /// sooner and checks what was captured).
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub seconds: u64,
    /// What the files are (as for `import`).
    #[arg(long, value_enum, default_value = "capture")]
    pub from: ImportFrom,
    #[command(flatten)]
    pub lan: LanArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
    #[command(flatten)]
    pub agent: AgentArgs,
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
    /// The labels in force: each flag (or its environment variable), else
    /// the configuration's `[device]` table (checked when it was read).
    pub fn labels(&self, config: &DeviceConfig) -> Result<DeviceLabels> {
        let given = consent_pairs(&self.consent, "--consent (or LEAKWATCH_AGENT_CONSENT)")?;
        // The protocol's rule for labels, refused here with the flag named.
        let check = |flag: &str, checked: std::result::Result<(), leakwatch_proto::Invalid>| {
            checked.map_err(|e| {
                crate::refused_label(flag, format!("--{flag} (or LEAKWATCH_AGENT_{})", flag.to_ascii_uppercase()), e)
            })
        };
        use leakwatch_proto::labels::{check_consent, check_label};
        let pick = |flag: &Option<String>, file: &Option<String>| flag.clone().or_else(|| file.clone());
        let (vendor, model, firmware) = (
            pick(&self.vendor, &config.vendor),
            pick(&self.model, &config.model),
            pick(&self.firmware, &config.firmware),
        );
        for (flag, value) in [("vendor", &self.vendor), ("model", &self.model), ("firmware", &self.firmware)] {
            if let Some(v) = value {
                check(flag, check_label(format_args!("--{flag}"), v))?;
            }
        }
        for (k, v) in &given {
            check("consent", check_consent("--consent", k, v))?;
        }
        let mut consent = config.consent.clone();
        consent.extend(given);
        if let Some(app) = &self.app {
            check("app", leakwatch_proto::labels::check_app("--app", app))?;
        }
        Ok(DeviceLabels {
            device_id: pick(&self.device_id, &config.device_id),
            vendor: vendor.unwrap_or_default(),
            model: model.unwrap_or_default(),
            firmware: firmware.unwrap_or_default(),
            consent,
            boot_time_us: self.boot_time.as_deref().map(parse_boot_time).transpose()?,
            app: pick(&self.app, &config.app),
        })
    }

    /// The labels the environment gives (no flags), as `run` would see them.
    fn from_env() -> Result<Self> {
        use clap::{Args as _, FromArgMatches as _};
        let bad = |e: clap::Error| Error::InvalidArgument { field: "environment".into(), reason: e.to_string() };
        let matches = Self::augment_args(clap::Command::new("env")).try_get_matches_from(["env"]).map_err(bad)?;
        Self::from_arg_matches(&matches).map_err(bad)
    }
}

/// Says when records will carry no vendor or model (which every rule
/// groups by), and where to set them.
fn warn_unlabelled(labels: &DeviceLabels, config: &Path) {
    if labels.vendor.is_empty() || labels.model.is_empty() {
        say(
            Level::WARN,
            &format_args!(
                "no device vendor and model: the rules group records by model, so these count for none; \
                 set vendor and model under [device] in {} (or --vendor and --model)",
                config.display()
            ),
        );
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
    if let Some(back) = c.time_went_back_summary() {
        line.push_str(&format!("; {back}"));
    }
    if imported.anonymiser.dropped_local_names > 0 {
        line.push_str(&format!("; {} local DNS names dropped", imported.anonymiser.dropped_local_names));
    }
    if imported.anonymiser.dropped_reverse_lookups > 0 {
        line.push_str(&format!(
            "; {} reverse lookups dropped (not destinations)",
            imported.anonymiser.dropped_reverse_lookups
        ));
    }
    if imported.anonymiser.dropped_non_public > 0 {
        line.push_str(&format!("; {} non-public destinations dropped", imported.anonymiser.dropped_non_public));
    }
    if imported.anonymiser.dropped_out_of_time > 0 {
        line.push_str(&format!("; {}", out_of_time(imported.anonymiser.dropped_out_of_time)));
    }
    if let Some(stop) = &c.stopped_by {
        line.push_str(&format!("; stopped early: {stop}"));
    }
    if imported.untracked_connections > 0 {
        line.push_str(&format!(
            "; {} connections not tracked (more than {} open at once, or to more than {} destinations)",
            imported.untracked_connections,
            crate::flow::MAX_CONNECTIONS,
            crate::flow::MAX_DESTINATIONS
        ));
    }
    line.push_str(&format!("; boot time: {}", imported.boot_source.short_name()));
    line
}

/// What the import summary says of records dropped for their dates.
fn out_of_time(n: u64) -> String {
    format!(
        "{n} records dated before 2000 or after tomorrow dropped (the collector refuses them; \
         the capturing machine's clock was not set)"
    )
}

/// Runs the command line; returns the process exit code.
pub async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Import(args) => import(*args, None).await,
        Command::Check(args) => check(*args).await,
        Command::Flows(args) => flows(args),
        Command::Enroll(args) => enroll(args).await,
        Command::Init(args) => {
            let path = args.config.unwrap_or_else(default_config_path);
            AgentConfig::write_sample(&path, args.force)?;
            println!("{}", path.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Simulate(args) => simulate(args),
        Command::Flush(args) => flush(args).await,
        Command::Run(args) => run_live(*args).await,
        Command::InstallService(args) => install_service(args),
        Command::Replay(mut args) => {
            if let Some(rate) = args.flows_per_minute {
                let capture = read_capture(&args.file)?;
                let conns = capture.table.connections();
                let span_us = conns.iter().map(|c| c.last_us).max().unwrap_or(0)
                    - conns.iter().map(|c| c.first_us).min().unwrap_or(0);
                if conns.is_empty() || span_us <= 0 || rate.is_nan() || rate <= 0.0 {
                    return Err(Error::InvalidArgument {
                        field: "--flows-per-minute".into(),
                        reason: format!("{rate}: needs a rate > 0 and a capture with connections over time"),
                    });
                }
                args.speed = rate * (span_us as f64 / 60e6) / conns.len() as f64;
                say(
                    Level::INFO,
                    &format_args!(
                        "{} connections over {:.0} s: replaying at {:.3}x for about {rate} a minute",
                        conns.len(),
                        span_us as f64 / 1e6,
                        args.speed
                    ),
                );
            }
            if args.speed.is_nan() || args.speed < 0.0 || args.speed.is_infinite() {
                return Err(Error::InvalidArgument {
                    field: "--speed".into(),
                    reason: format!("{} is not a finite number >= 0", args.speed),
                });
            }
            let options =
                crate::live::ReplayOptions { to: args.to, speed: args.speed, app: args.app, times: args.times };
            let sent = tokio::task::spawn_blocking(move || crate::live::replay(&args.file, &options))
                .await
                .map_err(|e| Error::State { path: "<replay>".into(), reason: e.to_string() })??;
            say(Level::INFO, &format_args!("sent {sent} frames"));
            Ok(ExitCode::SUCCESS)
        }
        Command::Status(args) => status(args),
        Command::Devices(args) => devices(args),
        Command::Label(args) => label(args),
    }
}

async fn enroll(args: EnrollArgs) -> Result<ExitCode> {
    let mut settings = args.agent.settings(args.collector)?;
    if let Some(code) = args.code {
        settings.enrollment_code = code;
    }
    let state = settings.state()?;
    // Each collector of a list gives this agent its own id and token.
    for url in collector_urls(settings.collector()?) {
        state.forget_credentials(&url)?;
        let mut up =
            Uploader::open_with_tls(&url, &settings.tls, &state, &settings.enrollment_code, settings.deliver_timeout)?;
        up.ensure_enrolled().await?;
        say(Level::INFO, &format_args!("enrolled with {url}; token stored in {}", state.dir().display()));
        println!("{}", up.agent_id());
    }
    Ok(ExitCode::SUCCESS)
}

/// The address of a dashboard's findings: `source` itself when it names
/// a path or is a file, else its `/api/findings`.
fn findings_source(source: &str) -> String {
    let web = source.starts_with("http://") || source.starts_with("https://");
    let bare = web && source.splitn(4, '/').nth(3).is_none_or(str::is_empty);
    if bare { format!("{}/api/findings", source.trim_end_matches('/')) } else { source.to_string() }
}

async fn check(args: CheckArgs) -> Result<ExitCode> {
    let source = findings_source(&args.findings);
    let published = match crate::check::Published::load(&source).await {
        Ok(p) => p,
        Err(e) => {
            say(Level::ERROR, &format_args!("{e}; nothing was checked"));
            return Ok(ExitCode::from(2));
        }
    };
    let mut checker = crate::check::Checker::default();
    let code = match LiveSource::from_flags(args.interface.clone(), args.pcapdroid_udp) {
        Some(source) => check_live(source, &args, &mut checker).await?,
        None => import(check_import_args(args), Some(&mut checker)).await?,
    };
    let matches = checker.matches(&published);
    let mut out = std::io::stdout().lock();
    let write = |out: &mut std::io::StdoutLock<'_>, line: &str| {
        writeln!(out, "{line}").map_err(|source| Error::Io { path: "<stdout>".into(), source })
    };
    for m in &matches {
        write(&mut out, &m.line)?;
    }
    let licence = match published.site.licence.name.as_str() {
        "" => String::new(),
        name => format!(" (data licence {name})"),
    };
    say(
        Level::INFO,
        &format_args!(
            "checked {} devices against {} published findings of {}{licence}: {} contacts match; nothing was sent",
            checker.devices(),
            published.findings.len(),
            if published.site.base.is_empty() { source.as_str() } else { published.site.base.as_str() },
            matches.len()
        ),
    );
    Ok(code)
}

/// `check`'s files read as `import --dry-run` reads them.
fn check_import_args(args: CheckArgs) -> ImportArgs {
    ImportArgs {
        files: args.files,
        from: args.from,
        collector: None,
        dry_run: true,
        from_start: true,
        format: DryRunFormat::Jsonl,
        lan: args.lan,
        device: args.device,
        agent: args.agent,
    }
}

/// Says on stderr where a live capture listens (tests and volunteers read
/// the `udp://` address of a stream from it), then `tail`.
fn announce(source: &LiveSource, capture: &Capture, tail: &str) {
    match (source, capture.local_addr()) {
        (_, Some(addr)) => say(Level::INFO, &format_args!("listening for a PCAPdroid stream on udp://{addr}{tail}")),
        (LiveSource::Interface(name), None) => say(Level::INFO, &format_args!("capturing on {name}{tail}")),
        _ => {}
    }
}

/// Captures from `source` for `--seconds` (or until Ctrl-C / SIGTERM) as
/// `run` does, and hands every connection to `checker`.
async fn check_live(source: LiveSource, args: &CheckArgs, checker: &mut crate::check::Checker) -> Result<ExitCode> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let settings = args.agent.settings(None)?;
    let labels = args.device.labels(&settings.config.device)?;
    let lan_labels = args.lan.labels(&args.device, &settings, false)?;
    if lan_labels.is_none() {
        warn_unlabelled(&labels, &settings.config_path);
    }
    let state = settings.state()?;
    let mut capture = Capture::open(&source)?;
    announce(&source, &capture, &format!(" for {} s", args.seconds));
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = std::time::Instant::now() + Duration::from_secs(args.seconds);
    let thread = {
        let stop = stop.clone();
        tokio::task::spawn_blocking(move || -> Result<(u64, Vec<leakwatch_proto::v1::ReportBatch>)> {
            let mut harvester = Harvester::for_capture(labels, lan_labels, &capture, &state, DEFAULT_BATCH_RECORDS);
            let mut stats = crate::capture::CaptureStats::default();
            while !stop.load(Ordering::SeqCst) && std::time::Instant::now() < deadline {
                capture.next_batch(&mut stats, &mut |frame| harvester.add(frame))?;
            }
            let batches = harvester.harvest(crate::live::now_us(), true);
            Ok((harvester.capture.frames, batches))
        })
    };
    let mut thread = thread;
    let joined = tokio::select! {
        joined = &mut thread => joined,
        () = wait_for_shutdown() => {
            say(Level::INFO, &format_args!("stopping: checking what was captured"));
            stop.store(true, Ordering::SeqCst);
            thread.await
        }
    };
    let (frames, batches) = joined.map_err(|e| Error::State { path: "<capture>".into(), reason: e.to_string() })??;
    let records: usize = batches.iter().map(|b| b.records.len()).sum();
    say(Level::INFO, &format_args!("captured {frames} frames; {records} records"));
    checker.add(&batches);
    Ok(ExitCode::SUCCESS)
}

async fn import(mut args: ImportArgs, checker: Option<&mut crate::check::Checker>) -> Result<ExitCode> {
    let settings = args.agent.settings(args.collector.take())?;
    let labels = args.device.labels(&settings.config.device)?;
    if !args.dry_run {
        settings.collector()?;
    }
    let lan_labels =
        args.lan.labels(&args.device, &settings, matches!(args.from, ImportFrom::Zeek | ImportFrom::Pihole))?;
    if lan_labels.is_some() && !matches!(args.from, ImportFrom::Capture | ImportFrom::Zeek | ImportFrom::Pihole) {
        return Err(Error::InvalidArgument {
            field: "--lan".into(),
            reason: "LAN mode reads a router's captures; this export is one device's (drop --lan)".into(),
        });
    }
    if lan_labels.is_none() {
        warn_unlabelled(&labels, &settings.config_path);
    }
    let state = settings.state()?;
    // Each file's batches go out (to stdout, or into the spool) before the
    // next file is read, so memory holds one capture's at a time.
    let mut sink = match (checker, args.dry_run) {
        (Some(checker), _) => ImportSink::Check(checker),
        (None, true) => {
            ImportSink::DryRun(std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock()), args.format)
        }
        (None, false) => ImportSink::Spool {
            spool: Spool::open(&settings.spool_dir(), settings.spool)?,
            records: 0,
            batches: 0,
            dropped: 0,
        },
    };
    let mut failed = 0usize;
    let mut read_ok = 0usize;
    let (mut accepted, mut out_of_time_total) = (0usize, 0u64);
    if let Some(lan_labels) = lan_labels {
        for file in &args.files {
            let mut devices = std::collections::BTreeMap::new();
            let (mut boots, mut records, mut dropped, mut sink_failed) = (0usize, 0usize, 0u64, false);
            let (mut file_out_of_time, mut untracked) = (0u64, 0u64);
            let each = |b: crate::lan::LanBoot| {
                let vendor = b
                    .import
                    .batches
                    .first()
                    .and_then(|x| x.device.as_ref())
                    .map(|d| format!("{} {}", d.vendor, d.model));
                // One write per line (stderr is unbuffered; a capture may
                // hold thousands of devices).
                let line = format!(
                    "  device {} ({}): {} records, boot time: {}\n",
                    b.device.describe(),
                    vendor.unwrap_or_default(),
                    b.import.record_count(),
                    b.import.boot_source.short_name()
                );
                let _ = std::io::stderr().write_all(line.as_bytes());
                *devices.entry(b.device).or_default() += b.import.record_count() as u64;
                boots += 1;
                records += b.import.record_count();
                dropped += b.import.anonymiser.dropped_non_public;
                file_out_of_time += b.import.anonymiser.dropped_out_of_time;
                // The whole file's, on every boot of it.
                untracked = b.import.untracked_connections;
                if let ImportSink::Check(checker) = &mut sink {
                    checker.describe(&b.import.batches, b.device.describe());
                }
                let put = sink.put(&b.import.batches);
                sink_failed = put.is_err();
                put
            };
            // What was read, for the summary line; Pi-hole's cursor moves
            // once the batches are queued.
            let mut cursor = None;
            let imported = match args.from {
                ImportFrom::Pihole => crate::imports::pihole::import(
                    file,
                    &lan_labels,
                    &state,
                    DEFAULT_BATCH_RECORDS,
                    args.from_start,
                    each,
                )
                .map(|p| {
                    cursor = p.cursor.clone();
                    let mut read = match p.after {
                        0 => format!("{} queries read", p.stats.queries),
                        after => {
                            format!("{} queries after query {after} (the last one queued before) read", p.stats.queries)
                        }
                    };
                    read.push_str(&format!(", {} of them blocked", p.stats.blocked));
                    if let Some(bad) = p.stats.bad.summary("rows") {
                        read.push_str(&format!(" ({})", bad.replace("line ", "query ")));
                    }
                    (read, String::new())
                }),
                ImportFrom::Zeek => crate::imports::zeek::import(
                    file,
                    &lan_labels,
                    labels.boot_time_us,
                    &state,
                    DEFAULT_BATCH_RECORDS,
                    each,
                )
                .map(|z| {
                    let rows: u64 = z.logs.iter().map(|(_, l)| l.rows).sum();
                    let mut read = format!("{rows} log rows read");
                    if z.untimed > 0 {
                        read.push_str(&format!(" ({} without a time in ts, left out)", z.untimed));
                    }
                    if z.other_protocols > 0 {
                        read.push_str(&format!(" ({} connections neither TCP nor UDP)", z.other_protocols));
                    }
                    for (log, l) in &z.logs {
                        if let Some(bad) = l.bad.summary("lines") {
                            read.push_str(&format!(" ({}: {bad})", log.display()));
                        }
                    }
                    (read, String::new())
                }),
                _ => import_lan(file, &lan_labels, labels.boot_time_us, &state, DEFAULT_BATCH_RECORDS, each).map(|c| {
                    let mut stopped = c.time_went_back_summary().map(|s| format!("; {s}")).unwrap_or_default();
                    stopped
                        .push_str(&c.stopped_by.as_ref().map(|s| format!("; stopped early: {s}")).unwrap_or_default());
                    (format!("{} packets read, {} skipped", c.frames, c.skipped_total()), stopped)
                }),
            };
            match imported {
                // The spool or stdout failed: no use reading on.
                Err(e) if sink_failed => return Err(e),
                Ok((read, stopped)) => {
                    read_ok += 1;
                    accepted += records;
                    if let (false, Some((key, last))) = (args.dry_run, &cursor) {
                        crate::imports::pihole::Cursors::advance(state.dir(), key, *last)?;
                    }
                    if !args.dry_run {
                        // For `status`: which devices still want labels.
                        crate::lan::SeenDevices::note(
                            state.dir(),
                            &devices,
                            crate::live::now_us().div_euclid(1_000_000),
                        )?;
                    }
                    out_of_time_total += file_out_of_time;
                    let mut dated = match file_out_of_time {
                        0 => String::new(),
                        n => format!("; {}", out_of_time(n)),
                    };
                    if untracked > 0 {
                        dated.push_str(&format!(
                            "; {untracked} connections not tracked (more than {} open at once, or to more than {} destinations)",
                            crate::flow::MAX_CONNECTIONS,
                            crate::flow::MAX_DESTINATIONS
                        ));
                    }
                    say(
                        Level::INFO,
                        &format_args!(
                            "{}: {read}, {} LAN devices, {boots} boots, {records} records; {dropped} non-public destinations dropped{dated}{stopped}",
                            file.display(),
                            devices.len(),
                        ),
                    );
                }
                Err(e) => {
                    say(Level::ERROR, &e);
                    failed += 1;
                }
            }
        }
    } else if args.from != ImportFrom::Capture {
        for file in &args.files {
            match crate::imports::import_file(args.from, file, &labels, &state, DEFAULT_BATCH_RECORDS) {
                Ok((imported, summary)) => {
                    read_ok += 1;
                    say(Level::INFO, &summary);
                    for boot in &imported {
                        accepted += boot.record_count();
                        out_of_time_total += boot.anonymiser.dropped_out_of_time;
                        sink.put(&boot.batches)?;
                    }
                }
                Err(e) => {
                    say(Level::ERROR, &e);
                    failed += 1;
                }
            }
        }
    } else {
        for file in &args.files {
            match import_capture(file, &labels, &state, DEFAULT_BATCH_RECORDS) {
                Ok(capture) => {
                    read_ok += 1;
                    accepted += capture.record_count();
                    out_of_time_total += capture.anonymiser.dropped_out_of_time;
                    say(Level::INFO, &format_args!("{}", describe_import(&capture)));
                    sink.put(&capture.batches)?;
                }
                Err(e) => {
                    say(Level::ERROR, &e);
                    failed += 1;
                }
            }
        }
    }
    if read_ok == 0 {
        say(Level::ERROR, &format_args!("none of the {failed} file(s) could be read"));
        return Ok(ExitCode::from(2));
    }
    if accepted == 0 && out_of_time_total > 0 {
        say(
            Level::ERROR,
            &format_args!(
                "nothing to send: all {out_of_time_total} records are dated before 2000 or after tomorrow, \
             which the collector refuses (the capturing machine's clock was not set)"
            ),
        );
        return Ok(ExitCode::from(1));
    }
    let spool = match sink {
        ImportSink::Check(_) => return Ok(if failed > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS }),
        ImportSink::DryRun(mut out, _) => {
            out.flush().map_err(|source| Error::Io { path: "<stdout>".into(), source })?;
            return Ok(ExitCode::SUCCESS);
        }
        ImportSink::Spool { spool, records, batches, dropped } => {
            say(Level::INFO, &format_args!("queued {records} records in {batches} batches"));
            if dropped > 0 {
                say(
                    Level::WARN,
                    &format_args!(
                        "the spool is full ({} MiB): dropped the {dropped} oldest batches",
                        settings.spool.max_bytes >> 20
                    ),
                );
            }
            spool
        }
    };
    // From here on nothing is lost, whatever happens to the collector or
    // to this process: the batches are in the spool.
    let delivered = deliver_spool(&std::sync::Mutex::new(spool), &settings, &state).await?;
    Ok(if delivered != ExitCode::SUCCESS {
        delivered
    } else if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Where `import` puts each capture's batches: stdout for a dry run,
/// `check`'s comparison, else the spool (with what went in).
enum ImportSink<'a> {
    DryRun(std::io::BufWriter<std::io::StdoutLock<'a>>, DryRunFormat),
    Check(&'a mut crate::check::Checker),
    Spool { spool: Spool, records: usize, batches: usize, dropped: u64 },
}

impl ImportSink<'_> {
    fn put(&mut self, batches: &[leakwatch_proto::v1::ReportBatch]) -> Result<()> {
        match self {
            Self::DryRun(out, format) => {
                write_dry_run(out, batches, *format).map_err(|source| Error::Io { path: "<stdout>".into(), source })
            }
            Self::Check(checker) => {
                checker.add(batches);
                Ok(())
            }
            Self::Spool { spool, records, batches: count, dropped } => {
                let entries: Vec<(u32, Vec<u8>)> =
                    batches.iter().map(|b| (b.records.len() as u32, b.encode_to_vec())).collect();
                *records += entries.iter().map(|(n, _)| *n as usize).sum::<usize>();
                *count += entries.len();
                *dropped += spool.append(&entries)?;
                Ok(())
            }
        }
    }
}

/// Delivers the spool until it is empty or the delivery timeout passed
/// with the collector unreachable; says what was sent and what is left.
/// Exit code: success unless the collector refused the agent.
async fn deliver_spool(spool: &std::sync::Mutex<Spool>, settings: &Settings, state: &AgentState) -> Result<ExitCode> {
    let mut uploader = settings.uploader(state)?;
    let started = std::time::Instant::now();
    let d = deliver(spool, &mut uploader, state.dir(), started + settings.deliver_timeout).await?;
    let mut line = format!("sent to {}: {} records in {} new batches", uploader.url(), d.records, d.batches);
    if d.duplicates > 0 {
        line.push_str(&format!(", {} batches already stored", d.duplicates));
    }
    if d.rejected > 0 {
        line.push_str(&format!(", {} batches refused as invalid (see `leakwatch-agent status`)", d.rejected));
    }
    line.push_str(&format!(", {} retries", uploader.stats.retries));
    if uploader.stats.failovers > 0 {
        line.push_str(&format!(", {} failovers to another collector", uploader.stats.failovers));
    }
    say(Level::INFO, &line);
    let left = &d.remaining;
    if left.entries == 0 {
        return Ok(ExitCode::SUCCESS);
    }
    say(
        Level::INFO,
        &format_args!(
            "{} records in {} batches still queued in {}; `leakwatch-agent flush` or `run` delivers them",
            left.records,
            left.entries,
            settings.spool_dir().display()
        ),
    );
    match d.stopped_by {
        Some(Error::Collector { status, .. }) if transient(&status) => {
            say(
                Level::INFO,
                &format_args!("collector unreachable for {:.0?}: {}", settings.deliver_timeout, status.message()),
            );
            Ok(ExitCode::SUCCESS)
        }
        Some(e) => {
            say(Level::ERROR, &e);
            Ok(ExitCode::from(1))
        }
        None => Ok(ExitCode::SUCCESS),
    }
}

/// In LAN mode devices are labelled by MAC, not by the one-device flags
/// or the configuration's `[device]` table.
fn check_no_device_flags(d: &DeviceArgs, settings: &Settings) -> Result<()> {
    if d.device_id.is_some() || d.vendor.is_some() || d.model.is_some() || d.firmware.is_some() || !d.consent.is_empty()
    {
        return Err(Error::InvalidArgument {
            field: "--lan".into(),
            reason: "device flags (--device-id, --vendor, --model, --firmware, --consent, or their \
                     LEAKWATCH_AGENT_* variables) label one device; in LAN mode label devices by MAC in --device-labels"
                .into(),
        });
    }
    if !settings.config.device.is_empty() {
        return Err(Error::InvalidArgument {
            field: "--lan".into(),
            reason: format!(
                "the [device] table of {} labels one device; in LAN mode label devices by MAC in device_labels \
                 (comment out the [device] keys, or run without --lan)",
                settings.config_path.display()
            ),
        });
    }
    Ok(())
}

async fn flush(args: FlushArgs) -> Result<ExitCode> {
    let settings = args.agent.settings(args.collector)?;
    let state = settings.state()?;
    let spool = Spool::open(&settings.spool_dir(), settings.spool)?;
    if spool.is_empty() {
        say(Level::INFO, &format_args!("nothing queued"));
        return Ok(ExitCode::SUCCESS);
    }
    let s = spool.summary();
    say(Level::INFO, &format_args!("delivering {} records in {} batches", s.records, s.entries));
    deliver_spool(&std::sync::Mutex::new(spool), &settings, &state).await
}

async fn run_live(mut args: RunArgs) -> Result<ExitCode> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    let settings = args.agent.settings(args.collector.take())?;
    let labels = args.device.labels(&settings.config.device)?;
    if !args.dry_run {
        settings.collector()?;
    }
    let lan_labels = args.lan.labels(&args.device, &settings, false)?;
    if lan_labels.is_none() {
        warn_unlabelled(&labels, &settings.config_path);
    }
    let state = settings.state()?;
    let Some(source) = LiveSource::from_flags(args.interface.clone(), args.pcapdroid_udp) else {
        return Err(Error::InvalidArgument {
            field: "run".into(),
            reason: "give --interface or --pcapdroid-udp".into(),
        });
    };
    let mut capture = Capture::open(&source)?;
    announce(&source, &capture, "");
    let spool = match args.dry_run {
        true => None,
        false => Some(Arc::new(Mutex::new(Spool::open(&settings.spool_dir(), settings.spool)?))),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let queued = Arc::new(tokio::sync::Notify::new());
    let interval = Duration::from_secs(args.report_interval);

    // Capture thread: frames → flow table; every interval, finished
    // connections → spool (or stdout in a dry run).
    let thread = {
        let (stop, queued, spool, state) = (stop.clone(), queued.clone(), spool.clone(), state.clone());
        let format = args.format;
        let source_text = match &source {
            LiveSource::Interface(name) => format!("capturing on {name}"),
            LiveSource::PcapdroidUdp(addr) => {
                format!("receiving a PCAPdroid stream on udp://{}", capture.local_addr().unwrap_or(*addr))
            }
        };
        std::thread::spawn(move || -> Result<(u64, u64)> {
            // Under systemd (`Type=notify`): ready once capturing, and alive
            // as long as this loop turns (`WatchdogSec=`).
            let mut notifier = crate::notify::Notifier::from_env();
            if let Some(n) = &notifier {
                n.send(&format!("READY=1\nSTATUS={source_text}"));
            }
            let mut harvester = Harvester::for_capture(labels, lan_labels, &capture, &state, DEFAULT_BATCH_RECORDS);
            harvester.report_open_connections(interval);
            let mut stream_stats = crate::capture::CaptureStats::default();
            let mut next = std::time::Instant::now() + interval;
            loop {
                let stopping = stop.load(Ordering::SeqCst);
                if let Some(n) = &mut notifier {
                    n.keep_alive();
                }
                capture.next_batch(&mut stream_stats, &mut |frame| harvester.add(frame))?;
                if !stopping && std::time::Instant::now() < next {
                    continue;
                }
                next = std::time::Instant::now() + interval;
                let batches = harvester.harvest(crate::live::now_us(), stopping);
                let records: usize = batches.iter().map(|b| b.records.len()).sum();
                match &spool {
                    Some(spool) if !batches.is_empty() => {
                        let entries: Vec<(u32, Vec<u8>)> =
                            batches.iter().map(|b| (b.records.len() as u32, b.encode_to_vec())).collect();
                        let dropped =
                            spool.lock().unwrap_or_else(std::sync::PoisonError::into_inner).append(&entries)?;
                        if dropped > 0 {
                            say(Level::WARN, &format_args!("the spool is full: dropped the {dropped} oldest batches"));
                        }
                        queued.notify_one();
                    }
                    Some(_) => {}
                    None => {
                        let stdout = std::io::stdout();
                        let mut out = stdout.lock();
                        write_dry_run(&mut out, &batches, format)
                            .and_then(|()| out.flush())
                            .map_err(|source| Error::Io { path: "<stdout>".into(), source })?;
                    }
                }
                let skipped = stream_stats.skipped_total() + harvester.capture.skipped_total();
                tracing::info!(records, open = harvester.open_connections(), skipped, "Reported an interval");
                if let Some(n) = &notifier {
                    n.send(&format!(
                        "STATUS={source_text}: {} records reported, {} connections open",
                        harvester.records,
                        harvester.open_connections()
                    ));
                }
                if stopping {
                    return Ok((harvester.capture.frames, harvester.records));
                }
            }
        })
    };

    // Deliverer: the spool to the collector, continuously.
    // Fails here, before capturing, on a bad URL or TLS file.
    let first_uploader = match &spool {
        Some(_) => Some(settings.uploader(&state)?),
        None => None,
    };
    let deliverer = spool.clone().zip(first_uploader).map(|(spool, mut uploader)| {
        let (settings, state) = (settings.clone(), state.clone());
        let settings_url = settings.collector.clone();
        let (queued, state_dir) = (queued.clone(), state.dir().to_path_buf());
        tokio::spawn(async move {
            loop {
                let d = match deliver(
                    &spool,
                    &mut uploader,
                    &state_dir,
                    std::time::Instant::now() + Duration::from_secs(60),
                )
                .await
                {
                    Ok(d) => d,
                    // The spool unreadable for now (a full disk, say):
                    // tried again, capture goes on into the spool.
                    Err(e) => {
                        say(Level::ERROR, &format_args!("spool: {e}; delivery tried again in a minute"));
                        tokio::time::sleep(Duration::from_secs(60)).await;
                        continue;
                    }
                };
                let wait = match &d.stopped_by {
                    None => Duration::from_secs(30),
                    Some(Error::Collector { status, .. }) if transient(status) => Duration::from_secs(5),
                    Some(e) => {
                        say(Level::ERROR, &e);
                        say(
                            Level::WARN,
                            &format_args!(
                                "delivery to {} paused for 5 minutes; capture goes on into the spool",
                                settings_url.as_deref().unwrap_or_default()
                            ),
                        );
                        // Credentials may change meanwhile (`leakwatch-agent enroll`).
                        tokio::time::sleep(Duration::from_secs(300)).await;
                        match settings.uploader(&state) {
                            Ok(fresh) => uploader = fresh,
                            Err(e) => say(Level::ERROR, &e),
                        }
                        Duration::ZERO
                    }
                };
                tokio::select! {
                    () = queued.notified(), if d.stopped_by.is_none() => {}
                    () = tokio::time::sleep(wait) => {}
                }
            }
        })
    });

    wait_for_shutdown().await;
    say(Level::INFO, &format_args!("stopping: reporting open connections"));
    if let Some(n) = crate::notify::Notifier::from_env() {
        n.send("STOPPING=1\nSTATUS=reporting open connections and delivering");
    }
    stop.store(true, Ordering::SeqCst);
    if let Some(d) = &deliverer {
        d.abort();
    }
    let (frames, records) = tokio::task::spawn_blocking(move || thread.join())
        .await
        .map_err(|e| Error::State { path: "<capture>".into(), reason: e.to_string() })?
        .map_err(|_| Error::State { path: "<capture>".into(), reason: "the capture thread panicked".into() })??;
    say(Level::INFO, &format_args!("captured {frames} frames; {records} records reported"));
    match spool {
        Some(spool) => deliver_spool(&spool, &settings, &state).await,
        None => Ok(ExitCode::SUCCESS),
    }
}

fn install_service(args: InstallServiceArgs) -> Result<ExitCode> {
    let Some(source) = LiveSource::from_flags(args.interface, args.pcapdroid_udp) else {
        return Err(Error::InvalidArgument {
            field: "install-service".into(),
            reason: "give --interface or --pcapdroid-udp".into(),
        });
    };
    let binary = match args.binary {
        Some(b) => b,
        None => std::env::current_exe().map_err(|source| Error::Io { path: "<current executable>".into(), source })?,
    };
    // The labels the service will send: its configuration's, checked now
    // rather than found missing in the collector's data.
    let config = AgentConfig::load(&args.config, false)?;
    if !args.lan {
        let d = &config.device;
        let missing: Vec<&str> = [("vendor", &d.vendor), ("model", &d.model)]
            .into_iter()
            .filter(|(_, v)| v.as_deref().is_none_or(str::is_empty))
            .map(|(key, _)| key)
            .collect();
        if !missing.is_empty() {
            let init = if args.config.exists() {
                String::new()
            } else {
                format!(" (`leakwatch-agent init --config {}` writes one to edit)", args.config.display())
            };
            return Err(Error::InvalidArgument {
                field: "install-service".into(),
                reason: format!(
                    "the service reports one device, and the rules group its records by vendor and model: \
                     set {} under [device] in {}{init}, or pass --lan on a router",
                    missing.join(" and "),
                    args.config.display()
                ),
            });
        }
    }
    let spec = crate::service::ServiceSpec {
        name: args.name.clone(),
        binary,
        source: Some(source),
        lan: args.lan,
        config: args.config.clone(),
    };
    let path = crate::service::install(&spec, &args.unit_dir, args.force)?;
    let name = &args.name;
    let config_path = args.config.display();
    println!("wrote {}", path.display());
    if !args.lan {
        let d = &config.device;
        println!(
            "It reports as {} {} (from [device] in {config_path}).",
            d.vendor.as_deref().unwrap_or_default(),
            d.model.as_deref().unwrap_or_default()
        );
    }
    println!("Configure the collector (and enrollment code) in {config_path}");
    if !args.config.exists() {
        println!("  sudo leakwatch-agent init --config {config_path}");
    }
    println!("Then start it:");
    println!("  sudo systemctl daemon-reload");
    println!("  sudo systemctl enable --now {name}.service");
    println!("Watch it:");
    println!("  journalctl -u {name} -f");
    println!("  sudo leakwatch-agent status --config {config_path} --state-dir /var/lib/leakwatch-agent");
    Ok(ExitCode::SUCCESS)
}

/// Waits for Ctrl-C or SIGTERM.
async fn wait_for_shutdown() {
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn status(args: StatusArgs) -> Result<ExitCode> {
    let settings = args.agent.settings(None)?;
    let spool = Spool::inspect(&settings.spool_dir())?;
    // What it last did with its collector: informational, and rewritten
    // at the next delivery; one that does not read is shown as empty, and
    // why, with everything else.
    let (status, unreadable) = match AgentStatus::load(&settings.state_dir) {
        Ok(status) => (status, None),
        Err(e) => (AgentStatus::default(), Some(e.to_string())),
    };
    // The labels `run` would send with this configuration and environment.
    let labels = DeviceArgs::from_env()?.labels(&settings.config.device)?;
    let lan_file = settings.config.device_labels.as_ref().map(|p| (p, LanLabels::load(p)));
    // LAN devices reported on, and those the labels file (as it is now)
    // does not label.
    let seen = crate::lan::SeenDevices::load(&settings.state_dir)?;
    let labelled = |mac: &str| {
        let lan = lan_file.as_ref().and_then(|(_, l)| l.as_ref().ok());
        crate::lan::parse_mac(mac).is_some_and(|m| lan.is_some_and(|l| l.get(m).is_some()))
    };
    let unlabelled: Vec<(&String, &crate::lan::SeenDevice)> =
        seen.devices.iter().filter(|(mac, _)| !labelled(mac)).collect();
    if args.json {
        let value = serde_json::json!({
            "config": settings.config_path,
            "device": {"vendor": labels.vendor, "model": labels.model, "firmware": labels.firmware,
                       "consent": labels.consent, "app": labels.app,
                       "device_id_set": labels.device_id.is_some()},
            "device_labels": lan_file.as_ref().map(|(p, l)| serde_json::json!({
                "file": p,
                "devices": l.as_ref().ok().map(|l| l.devices.len()),
                "error": l.as_ref().err().map(ToString::to_string),
            })),
            "lan_devices": seen.devices.iter().map(|(mac, d)| serde_json::json!({
                "device": mac, "records": d.records, "last_seen_unix_s": d.last_seen_unix_s, "labelled": labelled(mac),
            })).collect::<Vec<_>>(),
            "state_dir": settings.state_dir,
            "queued": {"batches": spool.entries, "records": spool.records, "bytes": spool.bytes,
                       "max_bytes": settings.spool.max_bytes},
            "spool": spool.counters,
            "delivery": status,
            "delivery_unreadable": unreadable,
        });
        println!("{value}");
        return Ok(ExitCode::SUCCESS);
    }
    let c = &spool.counters;
    println!("configuration: {}", settings.config_path.display());
    let unset = |v: &str| if v.is_empty() { "(not set)".to_string() } else { format!("{v:?}") };
    println!(
        "device labels (one device): vendor {}, model {}, firmware {}, consent {}{}",
        unset(&labels.vendor),
        unset(&labels.model),
        unset(&labels.firmware),
        if labels.consent.is_empty() {
            "(none)".to_string()
        } else {
            labels.consent.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(";")
        },
        labels.app.as_deref().map(|a| format!(", app {a:?}")).unwrap_or_default()
    );
    if labels.vendor.is_empty() || labels.model.is_empty() {
        println!(
            "  without vendor and model a device's records count for no rule: set them under [device] in {}",
            settings.config_path.display()
        );
    }
    match &lan_file {
        Some((path, Ok(lan))) => {
            println!("LAN labels: {} ({} devices labelled)", path.display(), lan.devices.len())
        }
        Some((path, Err(e))) => println!("LAN labels: {}: {e}", path.display()),
        None => {}
    }
    if !seen.devices.is_empty() {
        println!(
            "LAN devices reported on: {}, {} without labels{}",
            seen.devices.len(),
            unlabelled.len(),
            if unlabelled.is_empty() {
                ""
            } else {
                " (`leakwatch-agent devices` shows what each is, `leakwatch-agent label MAC --vendor V --model M` labels one):"
            }
        );
        let ouis = crate::lan::oui_vendors(unlabelled.iter().filter_map(|(mac, _)| crate::lan::parse_mac(mac)));
        for (mac, d) in &unlabelled {
            let oui =
                crate::lan::parse_mac(mac).and_then(|m| ouis.get(&m)).map_or("no registered maker", String::as_str);
            println!("  {mac} ({oui}): {} records, last reported {}", d.records, unix_time(d.last_seen_unix_s));
        }
    }
    println!("state directory: {}", settings.state_dir.display());
    println!("collector: {}", status.collector.as_deref().or(settings.collector.as_deref()).unwrap_or("(none yet)"));
    println!(
        "queued: {} records in {} batches, {} of {} bytes",
        spool.records, spool.entries, spool.bytes, settings.spool.max_bytes
    );
    println!(
        "sent: {} records in {} batches; {} batches were already stored; {} refused as invalid",
        status.sent_records, status.sent_batches, status.duplicate_batches, status.rejected_batches
    );
    println!(
        "dropped: {} batches ({} records) because the spool was full; {} torn entries cut off after a crash",
        c.dropped_entries, c.dropped_records, c.torn_entries
    );
    println!("last attempt: {}", status.last_attempt.as_deref().unwrap_or("never"));
    println!("last acknowledged: {}", status.last_success.as_deref().unwrap_or("never"));
    println!("collector's last answer: {}", status.last_answer.as_deref().unwrap_or("none"));
    println!("last error: {}", status.last_error.as_deref().unwrap_or("none"));
    if let Some(e) = unreadable {
        println!("(the delivery figures above are empty: {e}; the next delivery writes them again)");
    }
    Ok(ExitCode::SUCCESS)
}

/// The configuration at `path` (the default when `None`), and where it is.
fn load_config(path: Option<&Path>) -> Result<(AgentConfig, PathBuf)> {
    let at = path.map_or_else(default_config_path, Path::to_path_buf);
    Ok((AgentConfig::load(&at, path.is_some())?, at))
}

/// Splits `KEY=VALUE` consent flags (the last of a key's wins); `field`
/// names them in an error.
fn consent_pairs(pairs: &[String], field: &str) -> Result<std::collections::BTreeMap<String, String>> {
    pairs
        .iter()
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) => Ok((k.trim().to_string(), v.trim().to_string())),
            None => Err(Error::InvalidArgument { field: field.into(), reason: format!("{pair:?} is not KEY=VALUE") }),
        })
        .collect()
}

fn devices(args: DevicesArgs) -> Result<ExitCode> {
    use crate::discover::{DeviceReport, Discovery, suggest};
    let (config, config_path) = load_config(args.config.as_deref())?;
    let labels_path = args.device_labels.clone().or(config.device_labels.clone());
    let labels = match &labels_path {
        Some(path) if path.exists() || args.device_labels.is_some() => LanLabels::load(path)?,
        _ => LanLabels::default(),
    };
    let mut discovery = Discovery::default();
    let mut read_any = false;
    if let Some(name) = &args.interface {
        let mut capture = Capture::open(&LiveSource::Interface(name.clone()))?;
        let secs = args.for_secs.unwrap_or(60);
        say(Level::INFO, &format_args!("listening on {name} for {secs} s"));
        crate::discover::listen(&mut capture, std::time::Instant::now() + Duration::from_secs(secs), &mut discovery)?;
        read_any = true;
    }
    for file in &args.files {
        match crate::discover::read_file(file, &mut discovery) {
            Ok(stats) => {
                read_any = true;
                let mut line = format!("{}: {} packets read", file.display(), stats.frames);
                if let Some(skipped) = stats.skipped_summary() {
                    line.push_str(&format!("; {skipped}"));
                }
                if let Some(stop) = &stats.stopped_by {
                    line.push_str(&format!("; stopped early: {stop}"));
                }
                say(Level::INFO, &line);
            }
            Err(e) => say(Level::ERROR, &e),
        }
    }
    if !read_any {
        say(Level::ERROR, &format_args!("none of the {} capture(s) could be read", args.files.len()));
        return Ok(ExitCode::from(2));
    }
    let ouis = crate::lan::oui_vendors(discovery.devices().filter_map(|(k, _)| k.mac()));
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let (mut seen, mut labelled) = (0usize, 0usize);
    for (key, evidence) in discovery.devices() {
        let mac = key.mac();
        let oui = mac.and_then(|m| ouis.get(&m)).map(String::as_str);
        let report = DeviceReport {
            evidence,
            oui_vendor: oui.map(str::to_string),
            labels: mac.and_then(|m| labels.get(m)),
            suggestion: suggest(evidence, mac, oui),
        };
        seen += 1;
        labelled += usize::from(report.labels.is_some());
        let written = match args.format {
            DevicesFormat::Text => writeln!(out, "{}", report.text(key)),
            DevicesFormat::Jsonl => {
                serde_json::to_writer(&mut out, &report).map_err(std::io::Error::other).and_then(|()| writeln!(out))
            }
        };
        written.map_err(|source| Error::Io { path: "<stdout>".into(), source })?;
    }
    out.flush().map_err(|source| Error::Io { path: "<stdout>".into(), source })?;
    let file = labels_path.map_or_else(
        || format!("no labels file (set device_labels in {})", config_path.display()),
        |p| format!("labels from {}", p.display()),
    );
    let mut summary = format!("{seen} LAN devices, {labelled} labelled, {} not; {file}", seen - labelled);
    if discovery.untracked_devices > 0 {
        summary.push_str(&format!(
            "; {} more devices not listed (at most {})",
            discovery.untracked_devices,
            crate::discover::MAX_DEVICES
        ));
    }
    say(Level::INFO, &summary);
    Ok(ExitCode::SUCCESS)
}

fn label(args: LabelArgs) -> Result<ExitCode> {
    let (config, config_path) = load_config(args.config.as_deref())?;
    let Some(path) = args.device_labels.clone().or(config.device_labels.clone()) else {
        return Err(Error::InvalidArgument {
            field: "--device-labels".into(),
            reason: format!(
                "no labels file: pass --device-labels FILE, or set device_labels in {}",
                config_path.display()
            ),
        });
    };
    let mac = crate::lan::parse_mac(&args.mac).ok_or_else(|| Error::InvalidArgument {
        field: "MAC".into(),
        reason: format!("{:?} is not aa:bb:cc:dd:ee:ff", args.mac),
    })?;
    let update = crate::lan::LabelUpdate {
        vendor: args.vendor,
        model: args.model,
        firmware: args.firmware,
        consent: consent_pairs(&args.consent, "--consent")?,
        name: args.name,
    };
    let new = crate::lan::write_label(&path, mac, &update)?;
    say(
        Level::INFO,
        &format_args!(
            "{} {} in {}: {} {}",
            if new { "labelled" } else { "updated" },
            crate::lan::format_mac(mac),
            path.display(),
            update.vendor,
            update.model
        ),
    );
    Ok(ExitCode::SUCCESS)
}

/// Unix seconds as an RFC 3339 UTC time.
fn unix_time(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .map_or_else(|| secs.to_string(), |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
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
                say(Level::INFO, &line);
            }
            Err(e) => say(Level::ERROR, &e),
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
        say(Level::INFO, &format_args!("wrote {} and {}", lan.display(), labels.display()));
    }
    say(
        Level::INFO,
        &format_args!(
            "wrote {} captures of {} devices and fleet.json to {}",
            manifest.captures.len(),
            manifest.devices,
            args.out.display()
        ),
    );
    Ok(ExitCode::SUCCESS)
}

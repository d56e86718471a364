//! The agent's configuration file.
//!
//! `leakwatch-agent init` writes [`SAMPLE_CONFIG`] (commented) to
//! `$XDG_CONFIG_HOME/leakwatch-agent/agent.toml` (or `~/.config/...`, or
//! `--config FILE`). Settings apply where no flag or environment variable
//! (`LEAKWATCH_COLLECTOR`, `LEAKWATCH_AGENT_STATE_DIR`,
//! `LEAKWATCH_ENROLLMENT_CODE`, `LEAKWATCH_AGENT_DELIVER_TIMEOUT`,
//! `LEAKWATCH_AGENT_SPOOL_MAX_MIB`, `LEAKWATCH_AGENT_CA_FILE`) gives
//! them: flag or environment first, then the file, then the default.
//! The `[device]` table labels the one device the agent reports on (see
//! [`DeviceConfig`]). Unknown keys, and labels the protocol refuses, are an
//! error that names the file, the line and the key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The commented sample `init` writes.
pub const SAMPLE_CONFIG: &str = r#"# leakwatch agent configuration.
# A command-line flag or its environment variable overrides each setting.

# Collector gRPC URL (env LEAKWATCH_COLLECTOR). Several, separated by
# commas, share the load: the agent keeps to one and fails over to the
# next when it is away (each gives the agent its own token, obtained with
# the same enrollment code).
# collector = "http://127.0.0.1:50051"

# State directory: install secret and collector credentials
# (env LEAKWATCH_AGENT_STATE_DIR). Default: $XDG_STATE_HOME/leakwatch-agent
# or ~/.local/state/leakwatch-agent.
# state_dir = "/var/lib/leakwatch-agent"

# Enrollment code from the collector's operator, used once to obtain a
# token (env LEAKWATCH_ENROLLMENT_CODE).
# enrollment_code = ""

# Seconds to keep retrying delivery before giving up (default 30).
deliver_timeout_secs = 30

# Bound of the on-disk spool of batches waiting for the collector, MiB
# (env LEAKWATCH_AGENT_SPOOL_MAX_MIB, default 64). When full, the oldest
# batches are dropped first and counted (see `leakwatch-agent status`).
spool_max_mib = 64

# Router / LAN mode: label devices by MAC in this TOML file (see docs/agent.md).
# device_labels = "/etc/leakwatch-agent/devices.toml"

# The one device this agent reports on (a phone's PCAPdroid stream, or the
# machine's own interface): the rules group by vendor and model, so set
# both. A flag (--vendor, ...) or environment variable
# (LEAKWATCH_AGENT_VENDOR, _MODEL, _FIRMWARE, _CONSENT, _DEVICE_ID, _APP)
# overrides each; `leakwatch-agent status` shows the labels in force.
# Not used in LAN mode, where devices are labelled by MAC. Uncomment the
# table's header with its keys (keys below it belong to the table).
# [device]
# vendor = "Xiaomi"
# model = "Redmi 1S"
# firmware = "MIUI 12.5"
# Your own name for it, turned into a pseudonym and never sent
# (default: the capture's MAC address, pseudonymised the same way).
# device_id = "kitchen-phone"
# Application that produced the traffic, if one.
# app = ""
# Settings the owner chose, at most 64 bytes each.
# consent = { cloud_account = "off", analytics = "off" }
"#;

/// Settings of `agent.toml`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Collector gRPC URL, or several separated by commas.
    pub collector: Option<String>,
    /// State directory.
    pub state_dir: Option<PathBuf>,
    /// Enrollment code.
    pub enrollment_code: Option<String>,
    /// Seconds to keep retrying delivery (default 30).
    pub deliver_timeout_secs: Option<u64>,
    /// Spool bound, MiB (default 64).
    pub spool_max_mib: Option<u64>,
    /// LAN-mode labels file.
    pub device_labels: Option<PathBuf>,
    /// Labels of the one device reported on.
    #[serde(default, skip_serializing_if = "DeviceConfig::is_empty")]
    pub device: DeviceConfig,
}

/// The `[device]` table: labels of the one device the agent reports on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// Vendor, e.g. "Xiaomi".
    pub vendor: Option<String>,
    /// Model, e.g. "Redmi 1S".
    pub model: Option<String>,
    /// Firmware or OS version.
    pub firmware: Option<String>,
    /// The volunteer's own name for the device (pseudonymised, never sent).
    pub device_id: Option<String>,
    /// Application that produced the traffic.
    pub app: Option<String>,
    /// Declared consent settings.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub consent: BTreeMap<String, String>,
}

impl DeviceConfig {
    /// True when no label is set.
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }

    /// The protocol's rules for each label, refused naming `file`, the line
    /// of the key in `text` and the limit.
    fn check(&self, text: &str, file: &Path) -> Result<()> {
        use leakwatch_proto::labels::{check_app, check_consent, check_label};
        let refuse = |key: &str, e: leakwatch_proto::Invalid| {
            let line = line_of(text, &[Key::Name("device"), Key::Name(key)]);
            Error::InvalidArgument { field: at_line(file, line), reason: e.0 }
        };
        for (key, value) in [("vendor", &self.vendor), ("model", &self.model), ("firmware", &self.firmware)] {
            if let Some(v) = value {
                check_label(format_args!("[device] {key}"), v).map_err(|e| refuse(key, e))?;
            }
        }
        if let Some(app) = &self.app {
            check_app("[device] app", app).map_err(|e| refuse("app", e))?;
        }
        for (k, v) in &self.consent {
            check_consent("[device] consent", k, v).map_err(|e| refuse("consent", e))?;
        }
        Ok(())
    }
}

/// One step of a path into a TOML document.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Key<'a> {
    /// A table's key.
    Name(&'a str),
    /// An array's element.
    Index(usize),
}

/// The line (from 1) of the value at `path` in the TOML `text`, for
/// messages; `None` when the text does not parse or has no such value.
pub(crate) fn line_of(text: &str, path: &[Key<'_>]) -> Option<usize> {
    use toml::de::{DeArray, DeTable, DeValue};
    let doc = DeTable::parse(text).ok()?;
    let (mut span, mut table, mut array): (_, Option<&DeTable<'_>>, Option<&DeArray<'_>>) =
        (doc.span(), Some(doc.get_ref()), None);
    for key in path {
        let value = match (key, table, array) {
            (Key::Name(name), Some(t), _) => t.iter().find(|(k, _)| k.get_ref().as_ref() == *name).map(|(_, v)| v)?,
            (Key::Index(i), _, Some(a)) => a.get(*i)?,
            _ => return None,
        };
        span = value.span();
        (table, array) = match value.get_ref() {
            DeValue::Table(t) => (Some(t), None),
            DeValue::Array(a) => (None, Some(a)),
            _ => (None, None),
        };
    }
    Some(text[..span.start.min(text.len())].matches('\n').count() + 1)
}

/// "FILE line N" (or "FILE" when the line is not known).
pub(crate) fn at_line(file: &Path, line: Option<usize>) -> String {
    match line {
        Some(n) => format!("{} line {n}", file.display()),
        None => file.display().to_string(),
    }
}

/// Where `init` writes and commands read the configuration by default.
pub fn default_config_path() -> PathBuf {
    crate::state::user_path("XDG_CONFIG_HOME", ".config", "leakwatch-agent", "agent.toml", "agent.toml")
}

impl AgentConfig {
    /// Parses a configuration file's text.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self> {
        let config: Self = toml::from_str(text).map_err(|e| Error::InvalidArgument {
            field: format!("config {}", path.display()),
            reason: e.to_string(),
        })?;
        config.device.check(text, path)?;
        if config.deliver_timeout_secs == Some(0) {
            return Err(Error::InvalidArgument {
                field: format!("config {}: deliver_timeout_secs", path.display()),
                reason: "0 is below the minimum of 1".into(),
            });
        }
        if config.spool_max_mib == Some(0) {
            return Err(Error::InvalidArgument {
                field: format!("config {}: spool_max_mib", path.display()),
                reason: "0 is below the minimum of 1".into(),
            });
        }
        Ok(config)
    }

    /// Reads `path`; a missing file is an empty configuration unless
    /// `required` (a path the user named).
    pub fn load(path: &Path, required: bool) -> Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::from_toml(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => Ok(Self::default()),
            Err(source) => Err(Error::Io { path: path.to_path_buf(), source }),
        }
    }

    /// Writes [`SAMPLE_CONFIG`] to `path` (creating its directory); refuses
    /// to overwrite an existing file unless `force`.
    pub fn write_sample(path: &Path, force: bool) -> Result<()> {
        if path.exists() && !force {
            return Err(Error::InvalidArgument {
                field: "init".into(),
                reason: format!("{} exists; pass --force to overwrite it", path.display()),
            });
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| Error::Io { path: dir.to_path_buf(), source })?;
        }
        std::fs::write(path, SAMPLE_CONFIG).map_err(|source| Error::Io { path: path.to_path_buf(), source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_config_is_written_read_and_round_trips() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/agent.toml");
        AgentConfig::write_sample(&path, false).expect("write");
        let config = AgentConfig::load(&path, true).expect("read sample");
        assert_eq!(config.deliver_timeout_secs, Some(30));
        assert!(AgentConfig::write_sample(&path, false).is_err(), "no silent overwrite");
        let full = AgentConfig {
            collector: Some("http://127.0.0.1:50051".into()),
            state_dir: Some("/var/lib/leakwatch-agent".into()),
            enrollment_code: Some("abc".into()),
            deliver_timeout_secs: Some(10),
            spool_max_mib: Some(8),
            device_labels: Some("/etc/leakwatch-agent/devices.toml".into()),
            device: DeviceConfig {
                vendor: Some("Xiaomi".into()),
                model: Some("Redmi 1S".into()),
                firmware: Some("12".into()),
                device_id: Some("kitchen-phone".into()),
                app: Some("com.example".into()),
                consent: [("cloud_account".to_string(), "off".to_string())].into(),
            },
        };
        let text = toml::to_string(&full).expect("serialise");
        assert_eq!(AgentConfig::from_toml(&text, &path).expect("re-read"), full);
        // Every commented key (and table) of the sample is a real key.
        let uncommented: String = SAMPLE_CONFIG
            .lines()
            .map(|l| l.strip_prefix("# ").filter(|l| l.contains(" = ") || l.starts_with('[')).unwrap_or(l))
            .collect::<Vec<_>>()
            .join("\n");
        let all = AgentConfig::from_toml(&uncommented, &path).expect("all sample keys parse");
        assert_eq!(all.device.vendor.as_deref(), Some("Xiaomi"), "the sample's [device] keys are in the table");
    }

    #[test]
    fn device_labels_over_the_limits_are_refused_naming_file_line_and_limit() {
        let p = Path::new("/etc/leakwatch-agent/agent.toml");
        let text = format!("collector = \"http://x\"\n\n[device]\nvendor = \"Acme\"\nmodel = \"{}\"\n", "m".repeat(65));
        let err = AgentConfig::from_toml(&text, p).expect_err("too long").to_string();
        assert!(
            err.contains("agent.toml line 5") && err.contains("[device] model") && err.contains("at most 64"),
            "{err}"
        );
        let text = "[device]\nvendor = \"Acme\"\nconsent = { \"a;b\" = \"on\" }\n";
        let err = AgentConfig::from_toml(text, p).expect_err("separator").to_string();
        assert!(err.contains("agent.toml line 3") && err.contains("holds '=' or ';'"), "{err}");
        let text = format!("[device]\napp = \"{}\"\n", "a".repeat(129));
        let err = AgentConfig::from_toml(&text, p).expect_err("long app").to_string();
        assert!(err.contains("line 2") && err.contains("at most 128"), "{err}");
        let err = AgentConfig::from_toml("[device]\nvendor = \"Acme\"\nmodle = \"x\"\n", p).expect_err("typo");
        assert!(err.to_string().contains("modle") && err.to_string().contains("line 3"), "{err}");
        let ok = AgentConfig::from_toml("[device]\nvendor = \"Acme\"\nmodel = \"Plug 2\"\n", p).expect("valid");
        assert_eq!((ok.device.vendor.as_deref(), ok.device.model.as_deref()), (Some("Acme"), Some("Plug 2")));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let p = Path::new("agent.toml");
        let err = AgentConfig::from_toml("colector = \"x\"", p).expect_err("typo");
        assert!(err.to_string().contains("colector"), "{err}");
        let err = AgentConfig::from_toml("deliver_timeout_secs = 0", p).expect_err("zero");
        assert!(err.to_string().contains("deliver_timeout_secs"), "{err}");
    }
}

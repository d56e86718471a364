//! The agent's configuration file.
//!
//! `leakwatch-agent init` writes [`SAMPLE_CONFIG`] (commented) to
//! `$XDG_CONFIG_HOME/leakwatch-agent/agent.toml` (or `~/.config/...`, or
//! `--config FILE`). Settings apply where no flag or environment variable
//! (`LEAKWATCH_COLLECTOR`, `LEAKWATCH_AGENT_STATE_DIR`,
//! `LEAKWATCH_ENROLLMENT_CODE`, `LEAKWATCH_AGENT_DELIVER_TIMEOUT`,
//! `LEAKWATCH_AGENT_SPOOL_MAX_MIB`, `LEAKWATCH_AGENT_CA_FILE`) gives
//! them: flag or environment first, then the file, then the default.
//! Unknown keys are an error that names the key.

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
        };
        let text = toml::to_string(&full).expect("serialise");
        assert_eq!(AgentConfig::from_toml(&text, &path).expect("re-read"), full);
        // Every commented key of the sample is a real key.
        let uncommented: String = SAMPLE_CONFIG
            .lines()
            .map(|l| l.strip_prefix("# ").filter(|l| l.contains(" = ")).unwrap_or(l))
            .collect::<Vec<_>>()
            .join("\n");
        AgentConfig::from_toml(&uncommented, &path).expect("all sample keys parse");
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

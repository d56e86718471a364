//! `leakwatch-agent install-service`: a hardened systemd unit for `run`.
//!
//! The unit runs the agent as a dynamic, unprivileged user whose only
//! capability is `CAP_NET_RAW` (to capture), with the file system read-only
//! except its state directory (`/var/lib/leakwatch-agent`, the spool and
//! credentials), its configuration (`/etc/leakwatch-agent/agent.toml` unless
//! `--config` names another; under `/home` it cannot be read),
//! and the usual systemd sandboxing. SIGTERM makes the agent report its
//! open connections and deliver what it can before it exits.

use std::path::{Path, PathBuf};

use crate::live::LiveSource;
use crate::{Error, Result, io_error};

/// What the unit runs.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    /// Unit name without `.service`.
    pub name: String,
    /// The agent binary.
    pub binary: PathBuf,
    /// The capture source; `None` takes it from the environment file
    /// `/etc/default/<name>` (`LEAKWATCH_AGENT_INTERFACE` or
    /// `LEAKWATCH_AGENT_PCAPDROID_UDP`), as the packaged unit does.
    pub source: Option<LiveSource>,
    /// Router / LAN mode (`run --lan`; labels from the config's
    /// `device_labels`).
    pub lan: bool,
    /// The configuration file `run` reads (its `[device]` labels, the
    /// collector).
    pub config: PathBuf,
}

fn quote(arg: &str) -> String {
    if arg.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:=@".contains(c)) {
        arg.to_string()
    } else {
        format!("\"{}\"", arg.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

/// The unit file's text.
pub fn unit_text(spec: &ServiceSpec) -> String {
    let mut source = match &spec.source {
        Some(LiveSource::Interface(name)) => format!(" --interface {}", quote(name)),
        Some(LiveSource::PcapdroidUdp(addr)) => format!(" --pcapdroid-udp {addr}"),
        None => String::new(),
    };
    if spec.lan {
        source.push_str(" --lan");
    }
    let capture_caps = match spec.source {
        // A UDP listener on a port >= 1024 needs no capability at all.
        Some(LiveSource::PcapdroidUdp(_)) => "",
        Some(LiveSource::Interface(_)) | None => "CAP_NET_RAW",
    };
    let environment = match spec.source {
        Some(_) => String::new(),
        None => format!(
            "# The source: LEAKWATCH_AGENT_INTERFACE=eth0, or LEAKWATCH_AGENT_PCAPDROID_UDP=0.0.0.0:5123.\n\
             EnvironmentFile=/etc/default/{}\n",
            spec.name
        ),
    };
    format!(
        "# Written by `leakwatch-agent install-service`.
[Unit]
Description=leakwatch agent: reports which destinations devices contact, anonymised
Documentation=https://github.com/leakwatch/leakwatch
Wants=network-online.target
After=network-online.target

[Service]
# Ready once capturing; restarted when the capture loop stops turning.
Type=notify
NotifyAccess=main
WatchdogSec=60s
ExecStart={binary} run{source} --config {config}
{environment}Environment=LEAKWATCH_AGENT_STATE_DIR=/var/lib/leakwatch-agent
# A fresh unprivileged user; its only privilege is capturing packets.
DynamicUser=yes
CapabilityBoundingSet={capture_caps}
AmbientCapabilities={capture_caps}
NoNewPrivileges=yes
# The spool, install secret and credentials live here (mode 0700).
StateDirectory=leakwatch-agent
StateDirectoryMode=0700
ConfigurationDirectory=leakwatch-agent
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
RestrictAddressFamilies=AF_INET AF_INET6 AF_PACKET AF_NETLINK AF_UNIX
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallErrorNumber=EPERM
UMask=0077
MemoryMax=128M
# Stop: report open connections and deliver for up to the delivery timeout.
KillSignal=SIGTERM
TimeoutStopSec=60s
Restart=on-failure
RestartSec=10s

[Install]
WantedBy=multi-user.target
",
        binary = quote(&spec.binary.to_string_lossy()),
        config = quote(&spec.config.to_string_lossy()),
    )
}

/// Writes `<unit_dir>/<name>.service`; refuses to overwrite unless
/// `force`. Returns the path.
pub fn install(spec: &ServiceSpec, unit_dir: &Path, force: bool) -> Result<PathBuf> {
    if spec.name.is_empty() || !spec.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c)) {
        return Err(Error::InvalidArgument {
            field: "--name".into(),
            reason: format!("{:?}: use letters, digits and -_.@", spec.name),
        });
    }
    let path = unit_dir.join(format!("{}.service", spec.name));
    if path.exists() && !force {
        return Err(Error::InvalidArgument {
            field: "install-service".into(),
            reason: format!("{} exists; pass --force to overwrite it", path.display()),
        });
    }
    std::fs::create_dir_all(unit_dir).map_err(io_error(unit_dir))?;
    std::fs::write(&path, unit_text(spec)).map_err(io_error(&path))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_is_hardened_and_runs_the_source() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = ServiceSpec {
            name: "leakwatch-agent".into(),
            binary: "/usr/local/bin/leakwatch-agent".into(),
            source: Some(LiveSource::Interface("eth0".into())),
            lan: false,
            config: "/etc/leakwatch-agent/agent.toml".into(),
        };
        let path = install(&spec, dir.path(), false).expect("install");
        let text = std::fs::read_to_string(&path).expect("read");
        for line in [
            "ExecStart=/usr/local/bin/leakwatch-agent run --interface eth0 --config /etc/leakwatch-agent/agent.toml",
            "CapabilityBoundingSet=CAP_NET_RAW",
            "AmbientCapabilities=CAP_NET_RAW",
            "ProtectSystem=strict",
            "NoNewPrivileges=yes",
            "StateDirectory=leakwatch-agent",
            "DynamicUser=yes",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert!(install(&spec, dir.path(), false).is_err(), "no silent overwrite");
        let phone = ServiceSpec {
            source: Some(LiveSource::PcapdroidUdp("0.0.0.0:5123".parse().expect("addr"))),
            ..spec.clone()
        };
        let text = unit_text(&phone);
        assert!(text.contains("run --pcapdroid-udp 0.0.0.0:5123") && text.contains("CapabilityBoundingSet=\n"));
        let router = ServiceSpec { lan: true, ..spec.clone() };
        assert!(unit_text(&router).contains("run --interface eth0 --lan --config"));
        let packaged = ServiceSpec { source: None, ..spec };
        let text = unit_text(&packaged);
        assert!(text.contains("run --config /etc/leakwatch-agent/agent.toml\n"), "{text}");
        assert!(text.contains("EnvironmentFile=/etc/default/leakwatch-agent\n"), "{text}");
    }
}

//! `leakwatch-package-assets DIR`: writes what the agent's Debian package
//! (`make deb`) ships beside the binary into DIR:
//!
//! - `man/`: a man page per command and subcommand of both binaries
//!   (`leakwatch-agent.1`, `leakwatch-agent-import.1`, `leakwatch.1`, ...),
//! - `completions/`: bash, zsh and fish completions of both,
//! - `agent.toml`: the commented configuration `leakwatch-agent init`
//!   writes (a conffile under `/etc/leakwatch-agent/`),
//! - `leakwatch-agent.default`: the environment file naming the capture
//!   source (`/etc/default/leakwatch-agent`),
//! - `leakwatch-agent.service`: the hardened unit of `install-service`,
//!   its source from that environment file.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::CommandFactory as _;
use clap_complete::Shell;

/// The environment file the packaged unit reads.
const DEFAULT_FILE: &str = "# leakwatch agent: what the leakwatch-agent service captures (one of the two).
# A network interface (the unit grants CAP_NET_RAW):
#LEAKWATCH_AGENT_INTERFACE=eth0
# Or a phone's PCAPdroid \"UDP exporter\" stream, on this address:
#LEAKWATCH_AGENT_PCAPDROID_UDP=0.0.0.0:5123
# The collector and the device's labels are in /etc/leakwatch-agent/agent.toml;
# then: sudo systemctl enable --now leakwatch-agent
";

fn main() -> ExitCode {
    let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: leakwatch-package-assets DIR");
        return ExitCode::from(2);
    };
    match write_all(&dir) {
        Ok(files) => {
            eprintln!("wrote {files} files to {}", dir.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn write_all(dir: &Path) -> std::io::Result<usize> {
    let (man, completions) = (dir.join("man"), dir.join("completions"));
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&completions)?;
    let mut files = 0;
    for command in [leakwatch_agent::cli::Cli::command(), leakwatch::flags::Cli::command()] {
        files += man_pages(&command, &man)?;
        let name = command.get_name().to_string();
        for (shell, file) in [
            (Shell::Bash, format!("{name}.bash")),
            (Shell::Zsh, format!("_{name}")),
            (Shell::Fish, format!("{name}.fish")),
        ] {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut command.clone(), name.clone(), &mut out);
            std::fs::write(completions.join(file), out)?;
            files += 1;
        }
    }
    std::fs::write(dir.join("agent.toml"), leakwatch_agent::config::SAMPLE_CONFIG)?;
    std::fs::write(dir.join("leakwatch-agent.default"), DEFAULT_FILE)?;
    let unit = leakwatch_agent::service::ServiceSpec {
        name: "leakwatch-agent".into(),
        binary: "/usr/bin/leakwatch-agent".into(),
        source: None,
        lan: false,
        config: "/etc/leakwatch-agent/agent.toml".into(),
    };
    std::fs::write(dir.join("leakwatch-agent.service"), leakwatch_agent::service::unit_text(&unit))?;
    Ok(files + 3)
}

/// The man page of `command` and of each of its subcommands, named as
/// man(1) finds them (`leakwatch-agent-import.1`); how many were written.
fn man_pages(command: &clap::Command, dir: &Path) -> std::io::Result<usize> {
    let command = command.clone().disable_help_subcommand(true);
    let mut written = 0;
    let name = command.get_name().to_string();
    let mut out = Vec::new();
    clap_mangen::Man::new(command.clone()).render(&mut out)?;
    std::fs::write(dir.join(format!("{name}.1")), out)?;
    written += 1;
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        let full = format!("{name}-{}", sub.get_name());
        // clap names commands by `&'static str` (without its `string`
        // feature): this one-shot tool leaks the few it makes.
        let sub = sub.clone().name(&*Box::leak(full.into_boxed_str()));
        written += man_pages(&sub, dir)?;
    }
    Ok(written)
}

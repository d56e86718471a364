//! The systemd notification protocol (`sd_notify`): a service of
//! `Type=notify` says when it is ready, what it is doing, and, under
//! `WatchdogSec=`, that it is still alive; systemd restarts it when the
//! pings stop. Datagrams to the socket in `$NOTIFY_SOCKET` (a path, or an
//! abstract name written with a leading `@`); nothing when it is unset.

use std::time::{Duration, Instant};

/// A connection to the service manager.
#[derive(Debug)]
pub struct Notifier {
    #[cfg(unix)]
    socket: std::os::unix::net::UnixDatagram,
    #[cfg(unix)]
    to: std::os::unix::net::SocketAddr,
    /// How often to ping: half of `$WATCHDOG_USEC`, when it is set for
    /// this process.
    watchdog_every: Option<Duration>,
    last_ping: Instant,
}

impl Notifier {
    /// The manager in `$NOTIFY_SOCKET`, if there is one to tell.
    pub fn from_env() -> Option<Self> {
        #[cfg(unix)]
        {
            let path = std::env::var_os("NOTIFY_SOCKET")?;
            let to = address(&path)?;
            let socket = std::os::unix::net::UnixDatagram::unbound().ok()?;
            // Under `WatchdogSec=`; `$WATCHDOG_PID`, when set, names the
            // process meant.
            let for_us = std::env::var("WATCHDOG_PID").map_or(true, |pid| pid == std::process::id().to_string());
            let watchdog_every = std::env::var("WATCHDOG_USEC")
                .ok()
                .and_then(|us| us.parse::<u64>().ok())
                .filter(|&us| us > 0 && for_us)
                .map(|us| Duration::from_micros(us / 2));
            Some(Self { socket, to, watchdog_every, last_ping: Instant::now() })
        }
        #[cfg(not(unix))]
        None
    }

    /// Sends `state` (`READY=1`, `STATUS=...`, lines of `KEY=VALUE`); a
    /// manager that went away is no reason to stop capturing.
    pub fn send(&self, state: &str) {
        #[cfg(unix)]
        if let Err(e) = self.socket.send_to_addr(state.as_bytes(), &self.to) {
            tracing::debug!(error = %e, "Could not notify the service manager");
        }
    }

    /// `WATCHDOG=1` when half the watchdog interval passed since the last.
    pub fn keep_alive(&mut self) {
        if let Some(every) = self.watchdog_every
            && self.last_ping.elapsed() >= every
        {
            self.send("WATCHDOG=1");
            self.last_ping = Instant::now();
        }
    }
}

/// The socket address `$NOTIFY_SOCKET` names.
#[cfg(unix)]
fn address(path: &std::ffi::OsStr) -> Option<std::os::unix::net::SocketAddr> {
    use std::os::unix::ffi::OsStrExt as _;
    let bytes = path.as_bytes();
    match bytes.split_first() {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        Some((b'@', name)) => {
            use std::os::linux::net::SocketAddrExt as _;
            std::os::unix::net::SocketAddr::from_abstract_name(name).ok()
        }
        Some((b'/', _)) => std::os::unix::net::SocketAddr::from_pathname(path).ok(),
        _ => None,
    }
}

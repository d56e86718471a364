//! Which process on this host owns a connection: the Linux socket tables
//! (`/proc/net/{tcp,tcp6,udp,udp6}`) map a connection's addresses to a
//! socket inode, and the processes' open files (`/proc/PID/fd/*`, links
//! named `socket:[INODE]`) map the inode to a process, named by
//! `/proc/PID/comm`. `run --interface` uses it to fill `app` for flows of
//! the agent's own machine; reading other users' processes needs root (or
//! `CAP_SYS_PTRACE`), otherwise only the agent's own user's processes are
//! named.
//!
//! The tables are read again at most every [`REFRESH`], and only when a
//! connection is not found in the last reading, so a busy capture does not
//! scan `/proc` for every packet.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Least time between two readings of `/proc`.
pub const REFRESH: Duration = Duration::from_millis(500);

/// Transport of a socket table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    /// `/proc/net/tcp` and `tcp6`.
    Tcp,
    /// `/proc/net/udp` and `udp6`.
    Udp,
}

/// Parses an address of `/proc/net/*` ("0100007F:1F90", or 32 hex digits
/// for IPv6, each 32-bit word in host byte order).
pub fn parse_proc_addr(text: &str) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(u32::from_str_radix(ip, 16).ok()?.to_le_bytes())),
        32 => {
            let mut bytes = [0u8; 16];
            for (i, word) in bytes.chunks_mut(4).enumerate() {
                let w = u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16).ok()?;
                word.copy_from_slice(&w.to_le_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Socket inodes by (local, remote) address; UDP sockets that are not
/// connected are also found by their local address alone.
#[derive(Debug, Default)]
struct Sockets {
    by_pair: HashMap<(Proto, SocketAddr, SocketAddr), u64>,
    by_local: HashMap<(Proto, SocketAddr), u64>,
}

fn read_table(root: &Path, name: &str, proto: Proto, into: &mut Sockets) {
    let Ok(text) = std::fs::read_to_string(root.join("net").join(name)) else { return };
    for line in text.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(remote), Some(inode)) = (fields.get(1), fields.get(2), fields.get(9)) else {
            continue;
        };
        let (Some(local), Some(remote), Ok(inode)) = (parse_proc_addr(local), parse_proc_addr(remote), inode.parse())
        else {
            continue;
        };
        if inode == 0 {
            continue;
        }
        into.by_pair.insert((proto, local, remote), inode);
        into.by_local.entry((proto, local)).or_insert(inode);
    }
}

/// Maps sockets to process names, reading `/proc` lazily.
#[derive(Debug)]
pub struct ProcessTable {
    root: PathBuf,
    sockets: Sockets,
    owners: HashMap<u64, String>,
    read_at: Option<Instant>,
}

impl ProcessTable {
    /// A table over `/proc`.
    pub fn new() -> Self {
        Self::with_root("/proc")
    }

    /// A table over another procfs mount (for tests).
    pub fn with_root(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into(), sockets: Sockets::default(), owners: HashMap::new(), read_at: None }
    }

    fn refresh(&mut self) {
        let mut sockets = Sockets::default();
        for (name, proto) in [("tcp", Proto::Tcp), ("tcp6", Proto::Tcp), ("udp", Proto::Udp), ("udp6", Proto::Udp)] {
            read_table(&self.root, name, proto, &mut sockets);
        }
        let mut owners = HashMap::new();
        if let Ok(procs) = std::fs::read_dir(&self.root) {
            for p in procs.flatten() {
                let name = p.file_name();
                if !name.to_str().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit())) {
                    continue;
                }
                let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else { continue };
                let mut comm: Option<String> = None;
                for fd in fds.flatten() {
                    let Ok(target) = std::fs::read_link(fd.path()) else { continue };
                    let Some(inode) = target
                        .to_str()
                        .and_then(|t| t.strip_prefix("socket:["))
                        .and_then(|t| t.strip_suffix(']'))
                        .and_then(|t| t.parse::<u64>().ok())
                    else {
                        continue;
                    };
                    let name = comm.get_or_insert_with(|| {
                        std::fs::read_to_string(p.path().join("comm")).unwrap_or_default().trim().to_string()
                    });
                    if !name.is_empty() {
                        owners.entry(inode).or_insert_with(|| name.clone());
                    }
                }
            }
        }
        self.sockets = sockets;
        self.owners = owners;
        self.read_at = Some(Instant::now());
    }

    fn find(&self, proto: Proto, local: SocketAddr, remote: SocketAddr) -> Option<&str> {
        let inode = self
            .sockets
            .by_pair
            .get(&(proto, local, remote))
            .or_else(|| self.sockets.by_local.get(&(proto, local)))
            .or_else(|| {
                // A socket bound to every address.
                let any =
                    if local.is_ipv4() { IpAddr::V4(Ipv4Addr::UNSPECIFIED) } else { IpAddr::V6(Ipv6Addr::UNSPECIFIED) };
                self.sockets.by_local.get(&(proto, SocketAddr::new(any, local.port())))
            })?;
        self.owners.get(inode).map(String::as_str)
    }

    /// The name of the process owning the connection from `local` to
    /// `remote`, if this host has it and it can be seen.
    pub fn owner(&mut self, proto: Proto, local: SocketAddr, remote: SocketAddr) -> Option<String> {
        if let Some(name) = self.find(proto, local, remote) {
            return Some(name.to_string());
        }
        if self.read_at.is_some_and(|t| t.elapsed() < REFRESH) {
            return None;
        }
        self.refresh();
        self.find(proto, local, remote).map(str::to_string)
    }
}

impl Default for ProcessTable {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_addresses_parse() {
        assert_eq!(parse_proc_addr("0100007F:1F90"), Some("127.0.0.1:8080".parse().expect("addr")));
        assert_eq!(parse_proc_addr("00000000000000000000000001000000:0035"), Some("[::1]:53".parse().expect("addr")));
        assert_eq!(parse_proc_addr("zz:1"), None);
    }

    #[test]
    fn this_process_owns_its_connection() {
        if !Path::new("/proc/net/tcp").exists() {
            eprintln!("no /proc/net/tcp: not Linux");
            return;
        }
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
        let client = std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (_server, _) = listener.accept().expect("accept");
        let comm = std::fs::read_to_string("/proc/self/comm").expect("comm").trim().to_string();
        let mut table = ProcessTable::new();
        let local = client.local_addr().expect("local");
        let remote = client.peer_addr().expect("peer");
        assert_eq!(table.owner(Proto::Tcp, local, remote).as_deref(), Some(comm.as_str()));
        // Unknown connections are not named, and do not rescan at once.
        let nowhere: SocketAddr = "192.0.2.1:9".parse().expect("addr");
        assert_eq!(table.owner(Proto::Tcp, nowhere, nowhere), None);
    }
}

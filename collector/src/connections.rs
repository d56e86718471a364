//! How many connections a listener holds open: in all, held under a
//! quarter of the process's open-file limit so that one listener's
//! clients can never use up the descriptors ingest and the log need, and
//! per client (an IPv4 address, an IPv6 /64: [`client_network`]; trusted
//! proxies, which carry many clients' connections, exempt). The HTTP and
//! gRPC listeners close a connection over either bound as soon as they
//! accepted it.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use leakwatch_dashboard::TrustedProxies;
use leakwatch_dashboard::proxies::{ClientNetwork, client_network};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// `total`, held under a quarter of the process's open-file limit (and at
/// least 1).
pub fn under_a_quarter_of_open_files(total: usize) -> usize {
    let files = open_file_limit().unwrap_or(u64::MAX);
    total.min(usize::try_from(files / 4).unwrap_or(usize::MAX)).max(1)
}

/// The process's soft limit of open files, if known.
fn open_file_limit() -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        rustix::process::getrlimit(rustix::process::Resource::Nofile).current
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The listener holds its total.
    Total,
    /// The client's address holds its share.
    PerClient,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refused::Total => "too many open",
            Refused::PerClient => "too many from client",
        })
    }
}

/// The bounds one listener (or several sharing them) admits connections
/// within.
#[derive(Clone)]
pub(crate) struct Admission {
    open: Arc<Semaphore>,
    total: usize,
    per_client: usize,
    clients: Arc<PerClient>,
    proxies: TrustedProxies,
}

impl Admission {
    /// At most `total` (held under a quarter of the open-file limit) and
    /// `per_client` from one address but `proxies`.
    pub(crate) fn new(total: usize, per_client: usize, proxies: TrustedProxies) -> Self {
        let total = under_a_quarter_of_open_files(total);
        Self {
            open: Arc::new(Semaphore::new(total)),
            total,
            per_client: per_client.max(1),
            clients: Arc::default(),
            proxies,
        }
    }

    /// Connections admitted at once, in all.
    pub(crate) fn total(&self) -> usize {
        self.total
    }

    /// The next connection `listener` accepts that the bounds admit, with
    /// TCP_NODELAY set (else Nagle's algorithm holds back the last small
    /// write of a response until the peer's delayed ACK). A failed accept
    /// (out of descriptors, most likely) is logged and tried again after
    /// 50 ms; a connection over a bound is closed at once. `what` names
    /// the listener in the log.
    pub(crate) async fn accept(&self, listener: &TcpListener, what: &str) -> (TcpStream, SocketAddr, Held) {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors, most likely: wait for some to close.
                    tracing::warn!(error = %e, "{what} accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let held = match self.admit(peer.ip()) {
                Ok(held) => held,
                Err(why) => {
                    tracing::debug!(peer = %peer, "{what} connection refused: {why}");
                    continue;
                }
            };
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(error = %e, "TCP_NODELAY not set");
            }
            return (stream, peer, held);
        }
    }

    /// A place for a connection from `ip`, given back when dropped.
    pub(crate) fn admit(&self, ip: IpAddr) -> Result<Held, Refused> {
        let permit = self.open.clone().try_acquire_owned().map_err(|_| Refused::Total)?;
        let limit = if self.proxies.trusts(ip) { usize::MAX } else { self.per_client };
        let slot = ClientSlot::take(&self.clients, client_network(ip), limit).ok_or(Refused::PerClient)?;
        Ok(Held { _slot: slot, _permit: permit })
    }
}

/// An admitted connection's place in the bounds.
pub(crate) struct Held {
    _slot: ClientSlot,
    _permit: OwnedSemaphorePermit,
}

/// Connections open per client.
#[derive(Default)]
struct PerClient(Mutex<HashMap<ClientNetwork, usize>>);

impl PerClient {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ClientNetwork, usize>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A connection's place in the per-client count, given back on drop.
struct ClientSlot {
    clients: Arc<PerClient>,
    client: ClientNetwork,
}

impl ClientSlot {
    fn take(clients: &Arc<PerClient>, client: ClientNetwork, limit: usize) -> Option<Self> {
        let mut open = clients.lock();
        let n = open.entry(client).or_default();
        if *n >= limit {
            return None;
        }
        *n += 1;
        Some(Self { clients: clients.clone(), client })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self.clients.lock();
        if let Some(n) = open.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_gets_its_share_the_listener_its_total_and_each_comes_back() {
        let admission = Admission::new(3, 2, TrustedProxies::default());
        let (a, b) = (IpAddr::from([192, 0, 2, 1]), IpAddr::from([192, 0, 2, 2]));
        let a1 = admission.admit(a).expect("first of a");
        let _a2 = admission.admit(a).expect("second of a");
        assert_eq!(admission.admit(a).err(), Some(Refused::PerClient));
        let _b1 = admission.admit(b).expect("first of b");
        assert_eq!(admission.admit(b).err(), Some(Refused::Total));
        drop(a1);
        let _a3 = admission.admit(a).expect("a's place is back");
        assert_eq!(admission.admit(b).err(), Some(Refused::Total), "a refused admission holds nothing");
    }

    #[test]
    fn the_addresses_of_one_ipv6_64_share_its_share() {
        let admission = Admission::new(16, 2, TrustedProxies::default());
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        let _a = admission.admit(ip("2001:db8:1:2::1")).expect("first of the /64");
        let _b = admission.admit(ip("2001:db8:1:2::2")).expect("second of the /64");
        assert_eq!(admission.admit(ip("2001:db8:1:2::3")).err(), Some(Refused::PerClient));
        let _c = admission.admit(ip("2001:db8:1:3::1")).expect("another /64");
    }
}

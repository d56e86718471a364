//! Live capture for `leakwatch-agent run`.
//!
//! Sources:
//! - a Linux network interface, read through an `AF_PACKET` socket
//!   (`pnet_datalink`); this needs the `CAP_NET_RAW` capability;
//! - a UDP port receiving the stream of PCAPdroid's "UDP exporter" (an
//!   Android capture app): each datagram holds pcap records (16-byte record
//!   header and frame), the first one possibly the 24-byte pcap file header
//!   that names the link type. With PCAPdroid's trailer enabled, frames are
//!   Ethernet and end in a 32-byte trailer (magic `0x01072021`, the app's
//!   uid, its name in 20 bytes, a checksum), so records carry the app.
//!
//! A capture thread decodes frames into a [`FlowTable`]. Every report
//! interval a [`Harvester`] moves the finished connections out (closed,
//! or idle past the timeout), anonymises them like `import` does, and
//! returns their batches; at shutdown everything still open is reported.
//! Memory therefore holds only the open connections.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use leakwatch_proto::v1::{BootSource, DeviceInfo, ReportBatch};

use crate::anonymiser::AnonymiserStats;
use crate::capture::{self, CaptureStats, Frame};
use crate::flow::FlowTable;
use crate::import::{DeviceLabels, boot_records, build_batches};
use crate::state::AgentState;
use crate::{Error, Result};

/// PCAPdroid's trailer marker.
const PCAPDROID_TRAILER_MAGIC: u32 = 0x0107_2021;
/// Bytes of PCAPdroid's trailer.
const PCAPDROID_TRAILER_BYTES: usize = 32;
/// Largest frame accepted from a stream.
const MAX_FRAME_BYTES: usize = 262_144;
const LINKTYPE_ETHERNET: i32 = 1;
const LINKTYPE_RAW: i32 = 101;

/// Microseconds since the Unix epoch, now.
pub fn now_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64)
}

/// Where live packets come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LiveSource {
    /// A network interface by name.
    Interface(String),
    /// A UDP address receiving a PCAPdroid stream.
    PcapdroidUdp(SocketAddr),
}

impl LiveSource {
    /// The source `--interface` or `--pcapdroid-udp` names (the interface
    /// when both are given); None when neither is.
    pub fn from_flags(interface: Option<String>, pcapdroid_udp: Option<SocketAddr>) -> Option<Self> {
        match (interface, pcapdroid_udp) {
            (Some(name), _) => Some(Self::Interface(name)),
            (None, Some(addr)) => Some(Self::PcapdroidUdp(addr)),
            (None, None) => None,
        }
    }
}

/// One captured frame.
#[derive(Debug)]
pub struct LiveFrame<'a> {
    /// Capture time, microseconds since the Unix epoch.
    pub ts_us: i64,
    /// Link type of `data`.
    pub linktype: i32,
    /// The frame.
    pub data: &'a [u8],
    /// The application, when the source names it.
    pub app: Option<&'a str>,
}

/// An opened live source; [`Capture::next_batch`] waits at most `timeout`.
pub enum Capture {
    /// AF_PACKET.
    Interface {
        /// Receiver.
        rx: Box<dyn pnet_datalink::DataLinkReceiver>,
        /// The interface's own addresses.
        local: Vec<std::net::IpAddr>,
    },
    /// PCAPdroid over UDP.
    Udp {
        /// The socket.
        socket: UdpSocket,
        /// Link type from the stream's pcap header (raw IP until one is seen).
        linktype: i32,
        /// Byte order of the stream (little endian until a header says).
        big_endian: bool,
        /// Nanosecond timestamps (from the header's magic).
        nanos: bool,
        /// Receive buffer.
        buf: Vec<u8>,
    },
}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Interface { local, .. } => f.debug_struct("Capture::Interface").field("local", local).finish(),
            Self::Udp { socket, linktype, .. } => {
                f.debug_struct("Capture::Udp").field("socket", socket).field("linktype", linktype).finish()
            }
        }
    }
}

impl Capture {
    /// Opens `source`; errors name what is missing (the interface, the
    /// capability, the address).
    pub fn open(source: &LiveSource) -> Result<Self> {
        match source {
            LiveSource::Interface(name) => {
                let interfaces = pnet_datalink::interfaces();
                let Some(iface) = interfaces.iter().find(|i| &i.name == name) else {
                    let names: Vec<&str> = interfaces.iter().map(|i| i.name.as_str()).collect();
                    return Err(Error::InvalidArgument {
                        field: "--interface".into(),
                        reason: format!("no interface {name:?}; this machine has: {}", names.join(", ")),
                    });
                };
                let config =
                    pnet_datalink::Config { read_timeout: Some(Duration::from_millis(250)), ..Default::default() };
                match pnet_datalink::channel(iface, config) {
                    Ok(pnet_datalink::Channel::Ethernet(_tx, rx)) => {
                        Ok(Self::Interface { rx, local: iface.ips.iter().map(|n| n.ip()).collect() })
                    }
                    Ok(_) => Err(Error::InvalidArgument {
                        field: "--interface".into(),
                        reason: format!("{name}: not an Ethernet-like interface"),
                    }),
                    Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied || e.raw_os_error() == Some(1) => {
                        Err(Error::InvalidArgument {
                            field: "--interface".into(),
                            reason: format!(
                                "capturing on {name} needs the CAP_NET_RAW capability ({e}): run as root, \
                                 grant it with `sudo setcap cap_net_raw+ep $(command -v leakwatch-agent)`, \
                                 or run the systemd service from `leakwatch-agent install-service`"
                            ),
                        })
                    }
                    Err(e) => Err(Error::InvalidArgument {
                        field: "--interface".into(),
                        reason: format!("cannot capture on {name}: {e}"),
                    }),
                }
            }
            LiveSource::PcapdroidUdp(addr) => {
                let socket = UdpSocket::bind(addr).map_err(|e| Error::InvalidArgument {
                    field: "--pcapdroid-udp".into(),
                    reason: format!("cannot listen on {addr}: {e}"),
                })?;
                socket
                    .set_read_timeout(Some(Duration::from_millis(250)))
                    .map_err(|source| Error::Io { path: addr.to_string().into(), source })?;
                Ok(Self::Udp { socket, linktype: LINKTYPE_RAW, big_endian: false, nanos: false, buf: vec![0; 65_536] })
            }
        }
    }

    /// The local address of a UDP source.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            Self::Udp { socket, .. } => socket.local_addr().ok(),
            Self::Interface { .. } => None,
        }
    }

    /// The addresses of this host on a captured interface (none for a
    /// stream from elsewhere).
    pub fn host_addresses(&self) -> Vec<std::net::IpAddr> {
        match self {
            Self::Interface { local, .. } => local.clone(),
            Self::Udp { .. } => Vec::new(),
        }
    }

    /// Waits for the next frames (at most the read timeout) and hands each
    /// to `on_frame`; malformed input is counted in `stats`.
    pub fn next_batch(&mut self, stats: &mut CaptureStats, on_frame: &mut dyn FnMut(LiveFrame<'_>)) -> Result<()> {
        match self {
            Self::Interface { rx, .. } => match rx.next() {
                Ok(data) => {
                    on_frame(LiveFrame { ts_us: now_us(), linktype: LINKTYPE_ETHERNET, data, app: None });
                    Ok(())
                }
                Err(e) if matches!(e.kind(), std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Ok(()),
                Err(source) => Err(Error::Io { path: "<interface>".into(), source }),
            },
            Self::Udp { socket, linktype, big_endian, nanos, buf } => match socket.recv_from(buf) {
                Ok((n, _from)) => {
                    let mut stream = StreamState { linktype: *linktype, big_endian: *big_endian, nanos: *nanos };
                    parse_pcapdroid_datagram(&buf[..n], &mut stream, stats, on_frame);
                    (*linktype, *big_endian, *nanos) = (stream.linktype, stream.big_endian, stream.nanos);
                    Ok(())
                }
                Err(e) if matches!(e.kind(), std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Ok(()),
                Err(source) => Err(Error::Io { path: "<udp>".into(), source }),
            },
        }
    }
}

/// What a PCAPdroid stream declared so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamState {
    /// Link type of the frames.
    pub linktype: i32,
    /// Byte order of the record headers.
    pub big_endian: bool,
    /// Nanosecond timestamps.
    pub nanos: bool,
}

impl Default for StreamState {
    fn default() -> Self {
        Self { linktype: LINKTYPE_RAW, big_endian: false, nanos: false }
    }
}

/// Splits one datagram of a PCAPdroid stream into frames.
pub fn parse_pcapdroid_datagram(
    mut data: &[u8],
    stream: &mut StreamState,
    stats: &mut CaptureStats,
    on_frame: &mut dyn FnMut(LiveFrame<'_>),
) {
    let u32_at = |d: &[u8], i: usize, be: bool| {
        let b = [d[i], d[i + 1], d[i + 2], d[i + 3]];
        if be { u32::from_be_bytes(b) } else { u32::from_le_bytes(b) }
    };
    if data.len() >= 24 {
        let magic = u32_at(data, 0, false);
        let header = match magic {
            0xa1b2_c3d4 => Some((false, false)),
            0xa1b2_3c4d => Some((false, true)),
            0xd4c3_b2a1 => Some((true, false)),
            0x4d3c_b2a1 => Some((true, true)),
            _ => None,
        };
        if let Some((be, nanos)) = header {
            stream.big_endian = be;
            stream.nanos = nanos;
            stream.linktype = (u32_at(data, 20, be) & 0x0fff_ffff) as i32;
            data = &data[24..];
        }
    }
    while !data.is_empty() {
        if data.len() < 16 {
            stats.skip("stream datagram ends inside a record header");
            return;
        }
        let be = stream.big_endian;
        let (secs, frac, incl) = (u32_at(data, 0, be), u32_at(data, 4, be), u32_at(data, 8, be) as usize);
        if incl > MAX_FRAME_BYTES || incl > data.len() - 16 {
            stats.skip("stream record longer than its datagram");
            return;
        }
        let frame = &data[16..16 + incl];
        data = &data[16 + incl..];
        let micros = if stream.nanos { i64::from(frac) / 1000 } else { i64::from(frac) };
        let ts_us = i64::from(secs) * 1_000_000 + micros;
        let app = if stream.linktype == LINKTYPE_ETHERNET { pcapdroid_app(frame) } else { None };
        on_frame(LiveFrame { ts_us, linktype: stream.linktype, data: frame, app: app.as_deref() });
    }
}

/// The app named by a frame's PCAPdroid trailer: its name, else `uid:N`.
pub fn pcapdroid_app(frame: &[u8]) -> Option<String> {
    if frame.len() < 14 + PCAPDROID_TRAILER_BYTES {
        return None;
    }
    let t = &frame[frame.len() - PCAPDROID_TRAILER_BYTES..];
    if u32::from_be_bytes([t[0], t[1], t[2], t[3]]) != PCAPDROID_TRAILER_MAGIC {
        return None;
    }
    let uid = i32::from_be_bytes([t[4], t[5], t[6], t[7]]);
    let name = &t[8..28];
    let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
    // App names have spaces ("Google Play services", cut to 19 bytes).
    match std::str::from_utf8(name).map(str::trim) {
        Ok(n) if !n.is_empty() && n.chars().all(|c| c == ' ' || c.is_ascii_graphic()) => Some(n.to_string()),
        _ => Some(format!("uid:{uid}")),
    }
}

/// Options of [`replay`].
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// Where the stream goes.
    pub to: SocketAddr,
    /// Playback speed: 1.0 keeps the capture's pacing, 10.0 is ten times
    /// faster; 0 sends as fast as possible.
    pub speed: f64,
    /// Name an app in PCAPdroid's trailer on every frame (Ethernet
    /// captures only).
    pub app: Option<String>,
    /// Replay this many times (0: until killed).
    pub times: u64,
}

/// Sends a capture file as a PCAPdroid UDP stream (pcap header, then one
/// record per datagram, timestamps rewritten to now): for trying `run`
/// without a phone, and for benchmarks. Returns the frames sent.
pub fn replay(path: &std::path::Path, options: &ReplayOptions) -> Result<u64> {
    let socket = UdpSocket::bind(if options.to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })
        .map_err(|source| Error::Io { path: "<udp>".into(), source })?;
    let send_err = |source| Error::Io { path: options.to.to_string().into(), source };
    let mut sent = 0u64;
    let mut round = 0u64;
    let mut header_linktype = None;
    while options.times == 0 || round < options.times {
        round += 1;
        let started = std::time::Instant::now();
        let mut first_ts: Option<i64> = None;
        let mut failure = None;
        capture::read_capture_file(path, |frame, _| {
            if failure.is_some() {
                return;
            }
            if header_linktype != Some(frame.linktype) {
                header_linktype = Some(frame.linktype);
                let mut header = 0xa1b2_c3d4u32.to_le_bytes().to_vec();
                header.extend_from_slice(&[2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0]);
                header.extend_from_slice(&(frame.linktype as u32).to_le_bytes());
                if let Err(e) = socket.send_to(&header, options.to) {
                    failure = Some(e);
                    return;
                }
            }
            if let (Some(ts), true) = (frame.ts_us, options.speed > 0.0) {
                let first = *first_ts.get_or_insert(ts);
                let due = Duration::from_secs_f64(((ts - first).max(0) as f64 / 1e6) / options.speed);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
            let now = now_us();
            let mut data = frame.data.to_vec();
            if let Some(app) = &options.app
                && frame.linktype == LINKTYPE_ETHERNET
            {
                data.extend_from_slice(&PCAPDROID_TRAILER_MAGIC.to_be_bytes());
                data.extend_from_slice(&(-1i32).to_be_bytes());
                let mut name = app.as_bytes()[..app.len().min(20)].to_vec();
                name.resize(20, 0);
                data.extend_from_slice(&name);
                data.extend_from_slice(&[0; 4]);
            }
            let mut datagram = Vec::with_capacity(16 + data.len());
            for word in [(now / 1_000_000) as u32, (now % 1_000_000) as u32, data.len() as u32, data.len() as u32] {
                datagram.extend_from_slice(&word.to_le_bytes());
            }
            datagram.extend_from_slice(&data);
            match socket.send_to(&datagram, options.to) {
                Ok(_) => sent += 1,
                Err(e) => failure = Some(e),
            }
        })?;
        if let Some(e) = failure {
            return Err(send_err(e));
        }
    }
    Ok(sent)
}

/// What `run --report-interval INTERVAL` would have reported of the
/// traffic in the capture at `path` had it watched it live, as one device
/// with `labels`: the harvest of each interval of capture time (the
/// connections open longer than an interval reported window by window),
/// then the rest at the capture's end. A long capture so becomes a record
/// per destination and interval, where `import` gives one per boot.
pub fn report_capture(
    path: &std::path::Path,
    labels: DeviceLabels,
    state: &AgentState,
    batch_records: usize,
    interval: Duration,
) -> Result<Vec<ReportBatch>> {
    let mut harvester = Harvester::new(labels, state, batch_records);
    harvester.report_open_connections(interval);
    let step = i64::try_from(interval.as_micros()).unwrap_or(i64::MAX).max(1);
    let mut due: Option<i64> = None;
    let mut batches = Vec::new();
    capture::read_capture_file(path, |frame, _| {
        let Some(ts_us) = frame.ts_us else { return };
        let next = due.get_or_insert(ts_us.saturating_add(step));
        while ts_us >= *next {
            batches.extend(harvester.harvest(*next, false));
            *next = next.saturating_add(step);
        }
        harvester.add(LiveFrame { ts_us, linktype: frame.linktype, data: frame.data, app: None });
    })?;
    batches.extend(harvester.harvest(harvester.last_ts_us, true));
    Ok(batches)
}

/// Turns one boot's live traffic into batches, interval by interval.
#[derive(Debug)]
pub struct Harvester {
    table: FlowTable,
    device: DeviceInfo,
    boot_us: Option<i64>,
    labels: DeviceLabels,
    state: AgentState,
    batch_records: usize,
    seq: u64,
    last_ts_us: i64,
    /// What the source delivered.
    pub capture: CaptureStats,
    /// What the anonymiser removed.
    pub anonymiser: AnonymiserStats,
    /// Records reported so far.
    pub records: u64,
    /// Names the processes of this host behind its connections.
    processes: Option<(crate::host::ProcessTable, Vec<std::net::IpAddr>)>,
    /// Router / LAN mode: boots per LAN device, their labels, and this
    /// run's nonce for boot pseudonyms.
    lan: Option<(crate::lan::LanBootTracker, crate::lan::LanLabels, [u8; 16])>,
    /// Report connections open longer than this, µs, with what they did so
    /// far (see [`Harvester::report_open_connections`]).
    open_report_us: Option<i64>,
}

impl Harvester {
    /// Starts a boot: its pseudonym is random for this run (live capture
    /// has no file to derive it from), so two runs never share batch ids.
    pub fn new(labels: DeviceLabels, state: &AgentState, batch_records: usize) -> Self {
        let device_label = match &labels.device_id {
            Some(id) => format!("label:{id}"),
            None => "live".to_string(),
        };
        let device_pseudonym = state.pseudonym("device", device_label.as_bytes());
        let nonce: [u8; 16] = rand::random();
        let boot_pseudonym = state.pseudonym("boot", &nonce);
        let boot_source = if labels.boot_time_us.is_some() { BootSource::Explicit } else { BootSource::FirstPacket };
        let mut device = labels.device_info(device_pseudonym, boot_pseudonym, boot_source);
        device.source = leakwatch_proto::v1::RecordSource::Live as i32;
        Self {
            table: FlowTable::new(),
            device,
            boot_us: labels.boot_time_us,
            labels,
            state: state.clone(),
            batch_records,
            seq: 0,
            last_ts_us: 0,
            capture: CaptureStats::default(),
            anonymiser: AnonymiserStats::default(),
            records: 0,
            processes: None,
            lan: None,
            open_report_us: None,
        }
    }

    /// The harvester of a capture from `capture`: one device with `labels`,
    /// or with `lan` each LAN device its own (see [`Harvester::lan`]); the
    /// processes of this host named behind their connections.
    pub fn for_capture(
        labels: DeviceLabels,
        lan: Option<crate::lan::LanLabels>,
        capture: &Capture,
        state: &AgentState,
        batch_records: usize,
    ) -> Self {
        let mut h = match lan {
            Some(lan) => Self::lan(lan, labels.boot_time_us, state, batch_records),
            None => Self::new(labels, state, batch_records),
        };
        h.attribute_processes(capture.host_addresses());
        h
    }

    /// Router / LAN mode: each LAN device (by MAC, else local address) is
    /// its own device, with boots from its DHCP handshakes (else
    /// `explicit_boot_us`, else its first packet) and labels from `labels`.
    pub fn lan(
        labels: crate::lan::LanLabels,
        explicit_boot_us: Option<i64>,
        state: &AgentState,
        batch_records: usize,
    ) -> Self {
        let mut h = Self::new(DeviceLabels::default(), state, batch_records);
        h.lan = Some((crate::lan::LanBootTracker::new(explicit_boot_us), labels, rand::random()));
        h
    }

    /// Each harvest also reports the connections open longer than
    /// `interval` with what they did since their last report (a device's
    /// cloud connection, opened at boot and kept for days, is reported in
    /// the first report after it opened, then its traffic window by
    /// window, counted as one connection).
    pub fn report_open_connections(&mut self, interval: Duration) {
        self.open_report_us = Some(i64::try_from(interval.as_micros()).unwrap_or(i64::MAX));
    }

    /// Names the process behind each new connection from or to one of
    /// `host` (this machine's addresses), as `app` (see [`crate::host`]).
    pub fn attribute_processes(&mut self, host: Vec<std::net::IpAddr>) {
        if !host.is_empty() {
            self.processes = Some((crate::host::ProcessTable::new(), host));
        }
    }

    /// Adds one frame.
    pub fn add(&mut self, frame: LiveFrame<'_>) {
        self.capture.frames += 1;
        self.boot_us.get_or_insert(frame.ts_us);
        self.last_ts_us = self.last_ts_us.max(frame.ts_us);
        let f = Frame { ts_us: Some(frame.ts_us), linktype: frame.linktype, data: frame.data };
        if let Some(mut packet) = capture::decode(f, self.last_ts_us, &mut self.capture) {
            packet.app = frame.app;
            let mut owner = None;
            if let Some((table, host)) = &mut self.processes
                && packet.app.is_none()
            {
                // A TCP connection's owner is looked up at its SYN, a UDP
                // socket's on every datagram (cached).
                let proto = match packet.transport {
                    capture::Transport::Tcp if packet.syn => Some(crate::host::Proto::Tcp),
                    capture::Transport::Udp => Some(crate::host::Proto::Udp),
                    capture::Transport::Tcp => None,
                };
                let src = SocketAddr::new(packet.src_ip, packet.src_port);
                let dst = SocketAddr::new(packet.dst_ip, packet.dst_port);
                owner = match proto {
                    Some(p) if host.contains(&packet.src_ip) => table.owner(p, src, dst),
                    Some(p) if host.contains(&packet.dst_ip) => table.owner(p, dst, src),
                    _ => None,
                };
            }
            if owner.is_some() {
                packet.app = owner.as_deref();
            }
            self.table.add(&packet);
        }
    }

    /// Connections held now (open ones).
    pub fn open_connections(&self) -> usize {
        self.table.connection_count()
    }

    /// Batches of the connections finished by `now_us` (all of them when
    /// `everything`, at shutdown) and the DNS lookups seen since the last
    /// harvest.
    pub fn harvest(&mut self, now_us: i64, everything: bool) -> Vec<ReportBatch> {
        let mut done = match self.open_report_us {
            Some(after) => self.table.drain_for_report(now_us, everything, now_us.saturating_sub(after)),
            None => self.table.drain_finished(now_us, everything),
        };
        if let Some((tracker, labels, nonce)) = &mut self.lan {
            self.seq += 1;
            let template =
                crate::import::ImportedCapture::of_file(std::path::Path::new("live"), CaptureStats::default(), 0);
            let mut sums = crate::lan::LanSums::default();
            sums.add(tracker, &self.table, &mut done);
            let mut batches: Vec<ReportBatch> = Vec::new();
            let mut seen = std::collections::BTreeMap::new();
            let _: std::result::Result<(), std::convert::Infallible> = sums.boots(
                leakwatch_proto::v1::RecordSource::Live,
                labels,
                &self.state,
                nonce,
                self.batch_records,
                Some(self.seq),
                &template,
                |b| {
                    *seen.entry(b.device).or_default() += b.import.record_count() as u64;
                    batches.extend(b.import.batches);
                    Ok(())
                },
            );
            if let Err(e) = crate::lan::SeenDevices::note(self.state.dir(), &seen, now_us.div_euclid(1_000_000)) {
                tracing::warn!(error = %e, "Could not note the LAN devices seen (for `status`)");
            }
            self.records += batches.iter().map(|b| b.records.len() as u64).sum::<u64>();
            return batches;
        }
        let Some(boot_us) = self.boot_us else { return Vec::new() };
        let app = self.labels.app.as_deref();
        let records = boot_records(&done.summaries(), done.lookups(), boot_us, app, &mut self.anonymiser);
        if records.is_empty() {
            return Vec::new();
        }
        self.records += records.len() as u64;
        self.seq += 1;
        build_batches(records, &self.device, &self.state, self.batch_records, Some(self.seq))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(ts: u32, frame: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&ts.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        out.extend_from_slice(frame);
        out
    }

    #[test]
    fn connections_of_this_host_are_named_after_their_process() {
        if !std::path::Path::new("/proc/net/tcp").exists() {
            eprintln!("no /proc/net/tcp: not Linux");
            return;
        }
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
        let client = std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (_server, _) = listener.accept().expect("accept");
        let (local, remote) = (client.local_addr().expect("local"), client.peer_addr().expect("peer"));
        let comm = std::fs::read_to_string("/proc/self/comm").expect("comm").trim().to_string();
        let dir = tempfile::tempdir().expect("tempdir");
        let state = AgentState::open(dir.path()).expect("state");
        let mut h = Harvester::new(DeviceLabels::default(), &state, 1000);
        h.attribute_processes(vec![local.ip()]);
        let builder = etherparse::PacketBuilder::ipv4([127, 0, 0, 1], [127, 0, 0, 1], 64)
            .tcp(local.port(), remote.port(), 1, 64240)
            .syn();
        let mut syn = Vec::new();
        builder.write(&mut syn, &[]).expect("packet");
        h.add(LiveFrame { ts_us: now_us(), linktype: LINKTYPE_RAW, data: &syn, app: None });
        let summaries = h.table.summaries();
        assert_eq!(summaries.len(), 1);
        assert_eq!(summaries[0].app.as_deref(), Some(comm.as_str()));
    }

    #[test]
    fn stream_header_records_and_trailer() {
        let mut header = Vec::new();
        header.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
        header.extend_from_slice(&[2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0]);
        header.extend_from_slice(&1u32.to_le_bytes());
        let mut frame = vec![0u8; 14 + 20];
        frame.extend_from_slice(&PCAPDROID_TRAILER_MAGIC.to_be_bytes());
        frame.extend_from_slice(&10123i32.to_be_bytes());
        let mut name = b"com.example.app".to_vec();
        name.resize(20, 0);
        frame.extend_from_slice(&name);
        frame.extend_from_slice(&[0; 4]);
        let mut datagram = header.clone();
        datagram.extend(record(5, &frame));
        datagram.extend(record(6, &frame[..40]));
        let mut stream = StreamState::default();
        let mut stats = CaptureStats::default();
        let mut seen = Vec::new();
        parse_pcapdroid_datagram(&datagram, &mut stream, &mut stats, &mut |f| {
            seen.push((f.ts_us, f.linktype, f.app.map(str::to_string)))
        });
        assert_eq!(stream.linktype, 1);
        assert_eq!(
            seen,
            vec![(5_000_000, 1, Some("com.example.app".to_string())), (6_000_000, 1, None)],
            "the second frame has no trailer"
        );
        // A record cut short is counted, not read past.
        let mut cut = record(7, &frame);
        cut.truncate(30);
        parse_pcapdroid_datagram(&cut, &mut stream, &mut stats, &mut |_| panic!("no frame"));
        assert_eq!(stats.skipped_total(), 1);
        // Nameless trailers give the uid.
        let mut nameless = frame.clone();
        let n = nameless.len();
        nameless[n - 24..n - 4].fill(0);
        assert_eq!(pcapdroid_app(&nameless).as_deref(), Some("uid:10123"));
    }
}

//! Router / LAN mode: one capture that sees many LAN devices.
//!
//! Each LAN device (by MAC, or by local address where the link layer has
//! no MAC) is its own device with its own boot clock. A device's boot is
//! its latest DHCP Discover/Request before the flow (devices join the
//! network right after they boot), else `--boot-time`, else the device's
//! first packet; every batch says which (`boot_source`). Each DHCP
//! handshake starts a new boot. Labels come from a TOML file keyed by MAC;
//! unlabelled devices get their vendor from the MAC's OUI (the IEEE
//! registry, bundled) and model `unknown`.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::Path;

use leakwatch_proto::v1::{BootSource, DeviceInfo};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use leakwatch_proto::labels::{check_consent, check_label};

use crate::anonymiser::{AnonymiserStats, is_non_public};
use crate::capture::CaptureStats;
use crate::config::{Key, at_line, line_of};
use crate::flow::{DhcpHandshake, DnsLookup, FlowSummary, FlowSums, FlowTable, Origin};
use crate::import::{ImportedCapture, boot_records, build_batches, hash_file, read_capture_swept};
use crate::state::AgentState;
use crate::{Error, Result};

/// DHCP packets of one device this close together are one handshake.
const HANDSHAKE_GAP_US: i64 = 30_000_000;

/// The labels file of LAN mode (`--device-labels FILE`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LanLabels {
    /// One entry per labelled device.
    #[serde(default, rename = "device")]
    pub devices: Vec<LanDevice>,
}

/// Labels of one LAN device.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LanDevice {
    /// MAC address, "aa:bb:cc:dd:ee:ff".
    pub mac: String,
    /// Your own name for it (turned into the pseudonym; never sent).
    #[serde(default)]
    pub name: Option<String>,
    /// Vendor.
    pub vendor: String,
    /// Model.
    pub model: String,
    /// Firmware or OS version.
    #[serde(default)]
    pub firmware: String,
    /// Declared consent settings.
    #[serde(default)]
    pub consent: BTreeMap<String, String>,
}

/// Parses "aa:bb:cc:dd:ee:ff" (also with '-').
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let parts: Vec<u8> = text.split([':', '-']).map(|p| u8::from_str_radix(p, 16).ok()).collect::<Option<Vec<u8>>>()?;
    <[u8; 6]>::try_from(parts.as_slice()).ok()
}

/// "aa:bb:cc:dd:ee:ff".
pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// The IEEE registries (MA-L, MA-M, MA-S, CID, IAB) as sorted
/// "PREFIX<TAB>Organization" lines, gzip-compressed; rebuilt by
/// `scripts/update-oui.sh`. Streamed through for the MACs asked about
/// (never held unpacked: about 2 MB), and the answers cached.
static OUI_TABLE: &[u8] = include_bytes!("../data/oui.tsv.gz");

/// Vendors already looked up, by MAC (`None`: not registered).
type OuiCache = std::sync::Mutex<HashMap<[u8; 6], Option<Box<str>>>>;

fn oui_cache() -> &'static OuiCache {
    static CACHE: std::sync::OnceLock<OuiCache> = std::sync::OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// The vendor an IEEE registration names for each of `macs` (the longest
/// matching assignment: 36-, 28- or 24-bit), for those that have one.
pub fn oui_vendors(macs: impl IntoIterator<Item = [u8; 6]>) -> HashMap<[u8; 6], String> {
    use std::io::BufRead as _;
    let mut cache = oui_cache().lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let macs: Vec<[u8; 6]> = macs.into_iter().collect();
    // Each prefix (9, 7 and 6 hex digits) of the MACs not cached yet.
    let mut wanted: HashMap<String, Vec<[u8; 6]>> = HashMap::new();
    for mac in macs.iter().filter(|m| !cache.contains_key(*m)) {
        let hex: String = mac.iter().map(|b| format!("{b:02X}")).collect();
        for len in [9, 7, 6] {
            wanted.entry(hex[..len].to_string()).or_default().push(*mac);
        }
    }
    if !wanted.is_empty() {
        let mut found: HashMap<[u8; 6], (usize, Box<str>)> = HashMap::new();
        let mut reader = std::io::BufReader::new(flate2::read::GzDecoder::new(OUI_TABLE));
        let mut line = String::new();
        // The table is part of the binary; a read failure is a build defect,
        // and the lookup then finds nothing rather than crashing.
        while reader.read_line(&mut line).unwrap_or(0) > 0 {
            if let Some((prefix, name)) = line.trim_end_matches('\n').split_once('\t')
                && let Some(hits) = wanted.get(prefix)
            {
                for mac in hits {
                    if found.get(mac).is_none_or(|(len, _)| *len < prefix.len()) {
                        found.insert(*mac, (prefix.len(), name.into()));
                    }
                }
            }
            line.clear();
        }
        for mac in wanted.into_values().flatten() {
            let vendor = found.get(&mac).map(|(_, name)| name.clone());
            cache.insert(mac, vendor);
        }
    }
    macs.into_iter().filter_map(|m| Some((m, cache.get(&m)?.as_deref()?.to_string()))).collect()
}

/// The vendor an IEEE registration names for `mac`, if any (see
/// [`oui_vendors`]).
pub fn oui_vendor(mac: [u8; 6]) -> Option<String> {
    oui_vendors([mac]).remove(&mac)
}

impl LanLabels {
    /// Reads and checks the labels file at `path`.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
        Self::from_toml(&text, path)
    }

    /// Parses and checks a labels file's text (`path` names it in errors,
    /// with the line of what is wrong).
    pub fn from_toml(text: &str, path: &Path) -> Result<Self> {
        let labels: Self = toml::from_str(text)
            .map_err(|e| Error::InvalidArgument { field: path.display().to_string(), reason: e.to_string() })?;
        let mut seen: HashMap<[u8; 6], usize> = HashMap::new();
        for (i, d) in labels.devices.iter().enumerate() {
            let line = |key: &str| line_of(text, &[Key::Name("device"), Key::Index(i), Key::Name(key)]);
            let refuse = |key: &str, reason: String| Error::InvalidArgument { field: at_line(path, line(key)), reason };
            let Some(mac) = parse_mac(&d.mac) else {
                return Err(refuse("mac", format!("mac {:?} is not aa:bb:cc:dd:ee:ff", d.mac)));
            };
            if let Some(first) = seen.insert(mac, i) {
                let first_line = line_of(text, &[Key::Name("device"), Key::Index(first), Key::Name("mac")]);
                let earlier = first_line.map_or_else(|| "earlier".to_string(), |n| format!("on line {n}"));
                return Err(refuse("mac", format!("mac {} is labelled twice (also {earlier})", format_mac(mac))));
            }
            let device = |field: &str| format!("device {}: {field}", d.mac);
            let checked = |key: &str, r: std::result::Result<(), leakwatch_proto::Invalid>| {
                r.map_err(|leakwatch_proto::Invalid(e)| refuse(key, e))
            };
            checked("vendor", check_label(device("vendor"), &d.vendor))?;
            checked("model", check_label(device("model"), &d.model))?;
            checked("firmware", check_label(device("firmware"), &d.firmware))?;
            for (k, v) in &d.consent {
                checked("consent", check_consent(device("consent"), k, v))?;
            }
        }
        Ok(labels)
    }

    /// The entry of `mac`, if it is labelled.
    pub fn get(&self, mac: [u8; 6]) -> Option<&LanDevice> {
        self.devices.iter().find(|d| parse_mac(&d.mac) == Some(mac))
    }
}

/// The LAN devices this agent reported on, kept in the state directory
/// (`lan-devices.json`, mode 0600) so that `status` can list the ones
/// without labels. It holds MACs: it stays on this machine.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenDevices {
    /// By MAC (or local address).
    pub devices: BTreeMap<String, SeenDevice>,
}

/// One LAN device this agent reported on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenDevice {
    /// When its records were last reported, Unix seconds.
    pub last_seen_unix_s: i64,
    /// Records reported for it, in all.
    pub records: u64,
}

impl SeenDevices {
    /// Devices kept at most; the longest unseen go first.
    pub const MAX: usize = 4096;

    fn path(state_dir: &Path) -> std::path::PathBuf {
        state_dir.join("lan-devices.json")
    }

    /// Reads the list (empty when there is none yet).
    pub fn load(state_dir: &Path) -> Result<Self> {
        crate::state::read_json(Self::path(state_dir), "list of LAN devices")
    }

    /// Adds `records` reported at `now_s` for each device of `seen`.
    pub fn note(state_dir: &Path, seen: &BTreeMap<LanDeviceKey, u64>, now_s: i64) -> Result<()> {
        if seen.is_empty() {
            return Ok(());
        }
        // A damaged list starts over rather than stopping the reports.
        let mut list = Self::load(state_dir).unwrap_or_default();
        for (key, records) in seen {
            let d = list.devices.entry(key.describe()).or_default();
            d.last_seen_unix_s = d.last_seen_unix_s.max(now_s);
            d.records += records;
        }
        while list.devices.len() > Self::MAX {
            let oldest = list.devices.iter().min_by_key(|(_, d)| d.last_seen_unix_s).map(|(k, _)| k.clone());
            oldest.map(|k| list.devices.remove(&k));
        }
        let bytes = serde_json::to_vec_pretty(&list)
            .map_err(|e| Error::State { path: Self::path(state_dir), reason: e.to_string() })?;
        crate::state::write_private(&Self::path(state_dir), &bytes)
    }
}

/// What `leakwatch-agent label` sets for one device.
#[derive(Debug, Clone, Default)]
pub struct LabelUpdate {
    /// Vendor.
    pub vendor: String,
    /// Model.
    pub model: String,
    /// Firmware or OS version (kept when not given).
    pub firmware: Option<String>,
    /// Consent entries to set (others kept).
    pub consent: BTreeMap<String, String>,
    /// The volunteer's own name for it (kept when not given).
    pub name: Option<String>,
}

/// The first lines of a labels file `label` creates.
const NEW_LABELS_FILE: &str = "# leakwatch agent: LAN device labels, one [[device]] table per MAC (see docs/agent.md).
# `leakwatch-agent devices` lists the devices seen; `leakwatch-agent label` adds one here.
";

/// Adds or updates the entry of `mac` in the labels file at `path`
/// (created when missing), keeping every other entry, line and comment;
/// writes a temporary file beside it and renames it over the old one, so
/// that a crash leaves one or the other, never half of each. A file that
/// does not pass [`LanLabels::from_toml`] before or after is refused, and
/// left as it was. Returns true when the entry is new.
pub fn write_label(path: &Path, mac: [u8; 6], update: &LabelUpdate) -> Result<bool> {
    fn invalid(flag: &'static str) -> impl Fn(leakwatch_proto::Invalid) -> Error {
        move |e| crate::refused_label(flag, format!("--{flag}"), e)
    }
    check_label("--vendor", &update.vendor).map_err(invalid("vendor"))?;
    check_label("--model", &update.model).map_err(invalid("model"))?;
    if let Some(f) = &update.firmware {
        check_label("--firmware", f).map_err(invalid("firmware"))?;
    }
    for (k, v) in &update.consent {
        check_consent("--consent", k, v).map_err(invalid("consent"))?;
    }
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => NEW_LABELS_FILE.to_string(),
        Err(source) => return Err(Error::Io { path: path.to_path_buf(), source }),
    };
    LanLabels::from_toml(&text, path)?;
    let mut doc: toml_edit::DocumentMut = text.parse().map_err(|e: toml_edit::TomlError| Error::InvalidArgument {
        field: path.display().to_string(),
        reason: e.to_string(),
    })?;
    let not_tables = || Error::InvalidArgument {
        field: path.display().to_string(),
        reason: "`device` is not a list of [[device]] tables; edit this file by hand".into(),
    };
    let devices = doc
        .entry("device")
        .or_insert_with(|| toml_edit::Item::ArrayOfTables(toml_edit::ArrayOfTables::new()))
        .as_array_of_tables_mut()
        .ok_or_else(not_tables)?;
    let existing = devices.iter_mut().find(|t| t.get("mac").and_then(|m| m.as_str()).and_then(parse_mac) == Some(mac));
    let new = existing.is_none();
    let table = match existing {
        Some(t) => t,
        None => {
            let mut t = toml_edit::Table::new();
            t.insert("mac", toml_edit::value(format_mac(mac)));
            devices.push(t);
            devices.iter_mut().last().ok_or_else(not_tables)?
        }
    };
    if let Some(name) = &update.name {
        table.insert("name", toml_edit::value(name.as_str()));
    }
    table.insert("vendor", toml_edit::value(update.vendor.as_str()));
    table.insert("model", toml_edit::value(update.model.as_str()));
    if let Some(f) = &update.firmware {
        table.insert("firmware", toml_edit::value(f.as_str()));
    }
    if !update.consent.is_empty() {
        let consent = table
            .entry("consent")
            .or_insert_with(|| toml_edit::value(toml_edit::InlineTable::new()))
            .as_table_like_mut()
            .ok_or_else(|| Error::InvalidArgument {
                field: path.display().to_string(),
                reason: format!("the consent of {} is not a table; edit this file by hand", format_mac(mac)),
            })?;
        for (k, v) in &update.consent {
            consent.insert(k, toml_edit::value(v.as_str()));
        }
    }
    let written = doc.to_string();
    LanLabels::from_toml(&written, path)?;
    crate::state::write_atomically(path, written.as_bytes(), None)?;
    Ok(new)
}

/// A LAN device as the capture identifies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LanDeviceKey {
    /// By MAC.
    Mac([u8; 6]),
    /// By local address (no MAC on this link type).
    Addr(IpAddr),
}

impl LanDeviceKey {
    /// The LAN device that sent from `origin`; `None` for a public address.
    pub(crate) fn of(origin: Origin) -> Option<Self> {
        // Only LAN devices: an origin with a public address is a remote
        // host that opened a connection inward.
        if !is_non_public(origin.ip) {
            return None;
        }
        Some(match origin.mac {
            Some(mac) => Self::Mac(mac),
            None => Self::Addr(origin.ip),
        })
    }

    /// Its MAC, when the link layer gave one.
    pub fn mac(&self) -> Option<[u8; 6]> {
        match self {
            Self::Mac(mac) => Some(*mac),
            Self::Addr(_) => None,
        }
    }

    /// Text for the volunteer's own terminal (never sent).
    pub fn describe(&self) -> String {
        match self {
            Self::Mac(mac) => format_mac(*mac),
            Self::Addr(ip) => ip.to_string(),
        }
    }
}

/// One boot of one LAN device, imported.
#[derive(Debug, Clone)]
pub struct LanBoot {
    /// The device.
    pub device: LanDeviceKey,
    /// Its batches (the capture stats inside are the whole file's).
    pub import: ImportedCapture,
}

/// What is known so far about the boots of a capture's LAN devices: their
/// DHCP handshakes and first packets. A live capture feeds it interval by
/// interval; a file import sweep by sweep.
#[derive(Debug, Clone, Default)]
pub struct LanBootTracker {
    dhcp: FxHashMap<[u8; 6], Vec<i64>>,
    first: FxHashMap<LanDeviceKey, i64>,
    explicit_boot_us: Option<i64>,
}

/// A device's boot: the device, the boot time and how it was obtained.
pub type BootGroup = (LanDeviceKey, i64, i32);

impl LanBootTracker {
    /// A tracker; `explicit_boot_us` is the boot of devices without a DHCP
    /// handshake (else their first packet).
    pub fn new(explicit_boot_us: Option<i64>) -> Self {
        Self { explicit_boot_us, ..Self::default() }
    }

    /// Learns the DHCP handshakes and first packets in `table`.
    pub fn observe(&mut self, table: &FlowTable) {
        self.observe_parts(table.dhcp_handshakes(), first_sights(table));
    }

    /// Learns DHCP handshakes and first packets (origin, time).
    fn observe_parts(&mut self, dhcp: &[DhcpHandshake], origins: impl IntoIterator<Item = (Origin, i64)>) {
        for h in dhcp {
            let times = self.dhcp.entry(h.mac).or_default();
            if times.last().is_none_or(|&last| (h.ts_us - last).abs() > HANDSHAKE_GAP_US) {
                times.push(h.ts_us);
                times.sort_unstable();
            }
        }
        for (origin, t) in origins {
            if let Some(key) = LanDeviceKey::of(origin) {
                let e = self.first.entry(key).or_insert(t);
                *e = (*e).min(t);
            }
        }
    }

    /// The boot a packet of `origin` at `t` belongs to.
    pub fn boot_of(&self, origin: Origin, t: i64) -> Option<BootGroup> {
        let key = LanDeviceKey::of(origin)?;
        if let LanDeviceKey::Mac(mac) = key
            && let Some(&start) = self.dhcp.get(&mac).and_then(|times| times.iter().rev().find(|&&d| d <= t))
        {
            return Some((key, start, BootSource::Dhcp as i32));
        }
        match self.explicit_boot_us {
            Some(b) => Some((key, b, BootSource::Explicit as i32)),
            None => Some((key, *self.first.get(&key)?, BootSource::FirstPacket as i32)),
        }
    }
}

/// What boots are made of in a table still being filled: its DHCP
/// handshakes and the origins of its connections with their first packets.
#[derive(Debug, Default)]
pub struct OpenPart {
    dhcp: Vec<DhcpHandshake>,
    origins: Vec<(Origin, i64)>,
}

impl OpenPart {
    /// Taken from `table`.
    pub fn of(table: &FlowTable) -> Self {
        Self { dhcp: table.dhcp_handshakes().to_vec(), origins: first_sights(table).collect() }
    }
}

/// The origin of every connection and lookup of `table` with its first
/// packet time.
fn first_sights(table: &FlowTable) -> impl Iterator<Item = (Origin, i64)> + '_ {
    table.origins().chain(table.lookups().iter().map(|l| (l.origin, l.first_us)))
}

/// Boots of at least this many groups are built on a second thread while
/// the caller takes them.
const BOOTS_IN_PARALLEL_FROM: usize = 64;

/// Builds one boot's batches.
struct BootMaker<'a> {
    labels: &'a LanLabels,
    state: &'a AgentState,
    boot_salt: &'a [u8],
    batch_records: usize,
    part: Option<u64>,
    template: &'a ImportedCapture,
    vendors: HashMap<[u8; 6], String>,
    source: leakwatch_proto::v1::RecordSource,
}

impl BootMaker<'_> {
    fn make(&self, group: BootGroup, flows: &[FlowSummary], lookups: &[DnsLookup]) -> LanBoot {
        let (key, boot_us, boot_source) = group;
        let label = match key {
            LanDeviceKey::Mac(mac) => self.labels.get(mac),
            LanDeviceKey::Addr(_) => None,
        };
        let device_label = match (label.and_then(|l| l.name.as_ref()), key) {
            (Some(name), _) => format!("label:{name}"),
            (None, LanDeviceKey::Mac(mac)) => format!("mac:{}", hex::encode(mac)),
            (None, LanDeviceKey::Addr(ip)) => format!("addr:{ip}"),
        };
        let (vendor, model, firmware, consent) = match (label, key) {
            (Some(l), _) => (l.vendor.clone(), l.model.clone(), l.firmware.clone(), l.consent.clone()),
            (None, LanDeviceKey::Mac(mac)) => {
                let vendor = self
                    .vendors
                    .get(&mac)
                    .map_or("unknown", String::as_str)
                    .chars()
                    .filter(|&c| leakwatch_proto::labels::is_printable(c))
                    .scan(0, |len, c| {
                        *len += c.len_utf8();
                        (*len <= leakwatch_proto::labels::MAX_LABEL_BYTES).then_some(c)
                    })
                    .collect();
                (vendor, "unknown".into(), String::new(), BTreeMap::new())
            }
            (None, LanDeviceKey::Addr(_)) => ("unknown".into(), "unknown".into(), String::new(), BTreeMap::new()),
        };
        let device_pseudonym = self.state.pseudonym("device", device_label.as_bytes());
        let mut boot_input = device_pseudonym.clone().into_bytes();
        boot_input.extend_from_slice(&boot_us.to_be_bytes());
        boot_input.extend_from_slice(self.boot_salt);
        let boot_pseudonym = self.state.pseudonym("boot", &boot_input);
        let mut anon = AnonymiserStats::default();
        let records = boot_records(flows, lookups, boot_us, None, &mut anon);
        let device = DeviceInfo {
            device_pseudonym,
            vendor,
            model,
            os_version: firmware,
            consent: consent.into_iter().collect(),
            boot_pseudonym,
            boot_source,
            source: self.source as i32,
        };
        let batches = build_batches(records, &device, self.state, self.batch_records, self.part);
        LanBoot {
            device: key,
            import: ImportedCapture {
                anonymiser: anon,
                boot_source: BootSource::try_from(boot_source).unwrap_or_default(),
                batches,
                ..self.template.clone()
            },
        }
    }
}

/// The flows and lookups of a capture's LAN devices, per device and
/// boot, summed over the tables a capture is read in.
#[derive(Debug, Default)]
pub struct LanSums {
    flows: FlowSums<BootGroup>,
    lookups: BTreeMap<BootGroup, Vec<DnsLookup>>,
}

impl LanSums {
    /// Adds the connections and lookups of `done` (the finished part of a
    /// table) to the boots `tracker` puts them in, once it has observed
    /// them and the connections still `open` (a device's first packet may
    /// be on a connection still open).
    pub fn add(&mut self, tracker: &mut LanBootTracker, open: &FlowTable, done: &mut FlowTable) {
        tracker.observe(open);
        self.add_done(tracker, done);
    }

    /// [`LanSums::add`] with what the boots need of the open table taken
    /// beforehand (so that another thread can sum while the table is
    /// being filled).
    pub fn add_seen(&mut self, tracker: &mut LanBootTracker, open: OpenPart, done: &mut FlowTable) {
        tracker.observe_parts(&open.dhcp, open.origins);
        self.add_done(tracker, done);
    }

    /// Adds `done` once the open table's part is observed.
    fn add_done(&mut self, tracker: &mut LanBootTracker, done: &mut FlowTable) {
        tracker.observe(done);
        self.flows.add(done, |origin, t| tracker.boot_of(origin, t));
        for l in done.take_lookups() {
            if let Some(group) = tracker.boot_of(l.origin, l.first_us) {
                self.lookups.entry(group).or_default().push(l);
            }
        }
    }

    /// One [`LanBoot`] per device and boot, handed to `each` in turn (so
    /// that one boot's batches are held at a time). `boot_salt` makes boot
    /// pseudonyms (and so batch ids) unique to the capture (a file's
    /// content hash, a live run's random nonce); `part` numbers a live
    /// capture's report intervals; `source` is what the records were read
    /// from.
    #[allow(clippy::too_many_arguments)]
    pub fn boots<E>(
        self,
        source: leakwatch_proto::v1::RecordSource,
        labels: &LanLabels,
        state: &AgentState,
        boot_salt: &[u8],
        batch_records: usize,
        part: Option<u64>,
        template: &ImportedCapture,
        mut each: impl FnMut(LanBoot) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        let Self { flows, mut lookups } = self;
        let mut flows = flows.finish();
        let mut groups: Vec<BootGroup> = flows.keys().chain(lookups.keys()).copied().collect();
        groups.sort_unstable();
        groups.dedup();

        let vendors = oui_vendors(groups.iter().filter_map(|(key, _, _)| match key {
            LanDeviceKey::Mac(mac) if labels.get(*mac).is_none() => Some(*mac),
            _ => None,
        }));
        let maker = BootMaker { labels, state, boot_salt, batch_records, part, template, vendors, source };
        let mut make = move |group: BootGroup| {
            maker.make(group, &flows.remove(&group).unwrap_or_default(), &lookups.remove(&group).unwrap_or_default())
        };
        if groups.len() < BOOTS_IN_PARALLEL_FROM {
            return groups.into_iter().try_for_each(|group| each(make(group)));
        }
        // Many boots (a large capture): one thread builds them while this
        // one hands them on (stdout or the spool), in the same order.
        std::thread::scope(|s| {
            // Two chunks waiting at most: memory for the boots in flight,
            // not the speed, is what a router's agent runs short of.
            const PER_SEND: usize = 32;
            let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<LanBoot>>(1);
            s.spawn(move || {
                for chunk in groups.chunks(PER_SEND) {
                    // The receiver is gone when `each` failed: stop.
                    if tx.send(chunk.iter().map(|g| make(*g)).collect()).is_err() {
                        break;
                    }
                }
            });
            rx.into_iter().flatten().try_for_each(&mut each)
        })
    }
}

/// Imports a LAN capture: one [`LanBoot`] per device and boot, handed to
/// `each` in turn; returns what the reader saw. The file is summed up as it
/// is read (see [`read_capture_swept`]).
pub fn import_lan(
    path: &Path,
    labels: &LanLabels,
    explicit_boot_us: Option<i64>,
    state: &AgentState,
    batch_records: usize,
    each: impl FnMut(LanBoot) -> Result<()>,
) -> Result<CaptureStats> {
    // The connections finished at each sweep are summed into boots on a
    // second thread while this one reads on.
    let (read, (sums, untracked_connections)) = std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<(OpenPart, FlowTable)>(2);
        let summing = s.spawn(move || {
            let mut tracker = LanBootTracker::new(explicit_boot_us);
            let mut sums = LanSums::default();
            let mut untracked_connections = 0;
            for (open, mut done) in rx {
                untracked_connections += done.untracked_connections;
                sums.add_seen(&mut tracker, open, &mut done);
            }
            untracked_connections += sums.flows.untracked_connections;
            (sums, untracked_connections)
        });
        let read = read_capture_swept(path, |open, done| {
            // Fails only if the summing thread panicked; join says so.
            let _ = tx.send((OpenPart::of(open), done));
        });
        drop(tx);
        let summed = summing.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (read, summed)
    });
    let (stats, _) = read?;
    let template = ImportedCapture::of_file(path, stats, untracked_connections);
    let content_hash = hash_file(path)?;
    sums.boots(
        leakwatch_proto::v1::RecordSource::Capture,
        labels,
        state,
        &content_hash,
        batch_records,
        None,
        &template,
        each,
    )?;
    Ok(template.capture)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_file_round_trips_and_rejects_bad_macs() {
        let text = r#"
[[device]]
mac = "64:09:80:12:34:56"
name = "kitchen-phone"
vendor = "Xiaomi"
model = "Redmi 1S"
consent = { cloud_account = "off" }
"#;
        let file = Path::new("devices.toml");
        let labels = LanLabels::from_toml(text, file).expect("parses");
        assert_eq!(LanLabels::from_toml(&toml::to_string(&labels).expect("ser"), file).expect("re-read"), labels);
        let err = LanLabels::from_toml("[[device]]\nmac = \"nope\"\nvendor = \"x\"\nmodel = \"y\"", file)
            .expect_err("bad mac");
        assert!(err.to_string().contains("devices.toml line 2") && err.to_string().contains("nope"), "{err}");
        let err = LanLabels::from_toml(
            "[[device]]\nmac = \"64:09:80:12:34:56\"\nvendor = \"x\"\nmodel = \"y\"\ncolour = 1",
            file,
        )
        .expect_err("unknown field");
        assert!(err.to_string().contains("colour") && err.to_string().contains("line 5"), "{err}");
        let twice = "[[device]]\nmac = \"64:09:80:12:34:56\"\nvendor = \"x\"\nmodel = \"y\"\n\n\
                     [[device]]\nmac = \"64-09-80-12-34-56\"\nvendor = \"x\"\nmodel = \"z\"\n";
        let err = LanLabels::from_toml(twice, file).expect_err("duplicate").to_string();
        assert!(err.contains("devices.toml line 7") && err.contains("labelled twice (also on line 2)"), "{err}");
        let long = format!("[[device]]\nmac = \"64:09:80:12:34:56\"\nvendor = \"x\"\nmodel = \"{}\"", "m".repeat(65));
        let err = LanLabels::from_toml(&long, file).expect_err("too long").to_string();
        assert!(err.contains("devices.toml line 4") && err.contains("at most 64"), "{err}");
        // Labels that attack whoever shows them.
        for (entry, want) in [
            ("vendor = \"x\"\nmodel = \"evil\\u202egpj.exe\"", "device 64:09:80:12:34:56: model"),
            ("vendor = \"a\\u0000b\"\nmodel = \"y\"", "holds NUL"),
            ("vendor = \"x\"\nmodel = \"y\"\nconsent = { \"a;b\" = \"on\" }", "holds '=' or ';'"),
        ] {
            let text = format!("[[device]]\nmac = \"64:09:80:12:34:56\"\n{entry}");
            let err = LanLabels::from_toml(&text, Path::new("devices.toml")).expect_err(entry).to_string();
            assert!(err.contains(want), "{err}");
        }
    }

    #[test]
    fn oui_lookup_names_vendors() {
        let vendor = oui_vendor([0x64, 0x09, 0x80, 1, 2, 3]).expect("registered OUI");
        assert!(vendor.to_lowercase().contains("xiaomi"), "{vendor}");
        // A 36-bit (MA-S) assignment inside a shared 24-bit block wins.
        assert_eq!(oui_vendor([0x8c, 0x1f, 0x64, 0xaf, 0xa1, 0x23]).as_deref(), Some("DATA ELECTRONIC DEVICES, INC"));
        assert_eq!(oui_vendor([0x02, 0xff, 0xff, 0, 0, 0]), None, "locally administered: no vendor");
    }
}

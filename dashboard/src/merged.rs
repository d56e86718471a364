//! The dashboard's own aggregates kept up to date from digest rows, so
//! that a refresh after a flush costs what the new rows cost rather than
//! a query over every digest.
//!
//! [`Merged`] holds, for each of the queries in `sql/` that the pages are
//! built from (all but `evidence`, which reads the rules' rows), the state
//! its result is read from: per group, the devices and agents seen with a
//! count of the digest rows that hold each (so rows can be taken away
//! again when their file goes; each pseudonym is held once and the sets
//! hold its id), and for `model_destinations` each boot's
//! figures (first second after boot, first device and agent, byte sums)
//! from which the quartiles and sums over boots follow. [`Merged::results`]
//! answers each query as its SQL does over the same rows, row for row and
//! bit for bit; the property test in `incremental_tests.rs` checks what is
//! published from them against a refresh that runs the SQL. Answering
//! walks the groups and each destination's boots once (milliseconds at
//! tens of millions of records); adding or taking away a row touches only
//! its groups.
//!
//! The digests ([`leakwatch_query::digest::Digests::merging`]) tell it of
//! each file's digest rows as the file comes and goes, and of the tail's;
//! when they cannot (a file read as it is, a digest that does not read,
//! state over a quarter of the query memory limit) the refresh runs the
//! SQL instead.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Builder, Int64Builder, RecordBatch, StringArray, StringBuilder};
use arrow::datatypes::{DataType, Decimal128Type, Field, Float64Type, Int32Type, Int64Type, Schema, TimeUnit};
use leakwatch_query::digest::Merge;
use leakwatch_query::{registrable_domain, unnamed_destination};

use crate::aggregate::Thresholds;
use crate::queries::Query;

/// Seconds in a day: `date_trunc('day', ..)` in UTC.
const DAY: i64 = 86_400;

/// The queries [`Merged::results`] answers.
pub const ANSWERED: [&str; 8] = [
    "models",
    "model_hosts",
    "model_destinations",
    "model_ports",
    "firmware",
    "firmware_destinations",
    "destinations",
    "destination_trend",
];

/// Bytes counted for a name beside its text: the shared string's header,
/// its two references, its slot in the map and in the list of names.
const NAME_BYTES: usize = 16 + 2 * 16 + 16 + 16;

/// Bytes counted for an id in a set (its slot, the map's spare room).
const ID_BYTES: usize = 24;

/// Bytes counted for a group beside its sets' members.
const GROUP_BYTES: usize = 160;

/// Bytes counted for a boot's entry beside its names: the key, the entry,
/// the map's slot and the three sets' first values.
const BOOT_BYTES: usize =
    std::mem::size_of::<(Id, Id, Option<Id>, Id)>() + std::mem::size_of::<Boot>() + 16 + 2 * 16 + 16;

/// A float ordered as DataFusion orders one (`total_cmp`).
#[derive(Debug, Clone, Copy)]
struct Ordered(f64);

impl PartialEq for Ordered {
    fn eq(&self, other: &Self) -> bool {
        self.0.total_cmp(&other.0).is_eq()
    }
}
impl Eq for Ordered {}
impl PartialOrd for Ordered {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Ordered {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// A name held once: a pseudonym or label, however many groups hold it.
type Id = u32;

/// Names, each held once with the count of what holds it (a group's set,
/// a boot's key): the sets hold ids, a few bytes each, instead of a copy
/// of a 30-odd-character pseudonym.
#[derive(Debug, Default)]
struct Names {
    ids: HashMap<Arc<str>, (Id, u64)>,
    names: Vec<Option<Arc<str>>>,
    free: Vec<Id>,
}

impl Names {
    fn id(&self, name: &str) -> Option<Id> {
        self.ids.get(name).map(|(id, _)| *id)
    }

    /// The name of `id` (empty for an id no name has: never, while the
    /// counts are right).
    fn name(&self, id: Id) -> &str {
        self.names.get(id as usize).and_then(Option::as_deref).unwrap_or("")
    }

    /// The id of `name`, with one more holder.
    fn hold(&mut self, name: &str, bytes: &mut isize) -> Result<Id, String> {
        if let Some((id, holders)) = self.ids.get_mut(name) {
            *holders += 1;
            return Ok(*id);
        }
        let name: Arc<str> = Arc::from(name);
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                let id = Id::try_from(self.names.len()).map_err(|_| "more than 2^32 names".to_string())?;
                self.names.push(None);
                id
            }
        };
        self.names[id as usize] = Some(name.clone());
        *bytes += (name.len() + NAME_BYTES) as isize;
        self.ids.insert(name, (id, 1));
        Ok(id)
    }

    /// One more holder of `id`.
    fn hold_id(&mut self, id: Id) -> Result<(), String> {
        let name = self.names.get(id as usize).and_then(Option::clone).ok_or("an id no name has")?;
        let (_, holders) = self.ids.get_mut(&*name).ok_or("an id no name has")?;
        *holders += 1;
        Ok(())
    }

    /// One holder fewer of `id`; the name goes with its last.
    fn release(&mut self, id: Id, bytes: &mut isize) -> Result<(), String> {
        let name = self.names.get(id as usize).and_then(Option::clone).ok_or("an id no name has")?;
        let (_, holders) = self.ids.get_mut(&*name).ok_or("an id no name has")?;
        *holders -= 1;
        if *holders == 0 {
            self.ids.remove(&*name);
            self.names[id as usize] = None;
            self.free.push(id);
            *bytes -= (name.len() + NAME_BYTES) as isize;
        }
        Ok(())
    }
}

/// A set of ids, each with the count of rows holding it.
trait IdCounts {
    fn count_mut(&mut self, id: Id) -> Option<&mut i64>;
    fn take(&mut self, id: Id);
    fn put(&mut self, id: Id, count: i64);
}

impl IdCounts for HashMap<Id, i64> {
    fn count_mut(&mut self, id: Id) -> Option<&mut i64> {
        self.get_mut(&id)
    }
    fn take(&mut self, id: Id) {
        self.remove(&id);
    }
    fn put(&mut self, id: Id, count: i64) {
        self.insert(id, count);
    }
}

impl IdCounts for Counted<Id> {
    fn count_mut(&mut self, id: Id) -> Option<&mut i64> {
        let at = self.0.binary_search_by(|(k, _)| k.cmp(&id)).ok()?;
        Some(&mut self.0[at].1)
    }
    fn take(&mut self, id: Id) {
        if let Ok(at) = self.0.binary_search_by(|(k, _)| k.cmp(&id)) {
            self.0.remove(at);
        }
    }
    fn put(&mut self, id: Id, count: i64) {
        let at = self.0.binary_search_by(|(k, _)| k.cmp(&id)).unwrap_or_else(|at| at);
        self.0.insert(at, (id, count));
    }
}

/// Counts the name `name` (or the id `id` of a name held already) in
/// `set` by `by`: a new member holds its name, one whose count reaches
/// zero leaves and lets it go. Err when a count would go below zero (rows
/// taken away that were never added).
fn count_member(
    set: &mut impl IdCounts,
    names: &mut Names,
    member: Member<'_>,
    by: i64,
    bytes: &mut isize,
) -> Result<(), String> {
    let id = match member {
        Member::Name(name) => names.id(name),
        Member::Id(id) => Some(id),
    };
    if let Some(id) = id
        && let Some(n) = set.count_mut(id)
    {
        *n += by;
        match *n {
            0 => {
                set.take(id);
                *bytes -= ID_BYTES as isize;
                names.release(id, bytes)?;
            }
            n if n < 0 => return Err("a count went below zero".into()),
            _ => {}
        }
        return Ok(());
    }
    if by <= 0 {
        return Err("rows were taken away that were never added".into());
    }
    let id = match member {
        Member::Name(name) => names.hold(name, bytes)?,
        Member::Id(id) => {
            names.hold_id(id)?;
            id
        }
    };
    set.put(id, by);
    *bytes += ID_BYTES as isize;
    Ok(())
}

/// What [`count_member`] counts.
#[derive(Clone, Copy)]
enum Member<'a> {
    Name(&'a str),
    Id(Id),
}

/// Counts `key` in an ordered map (minima are read from its first key).
fn count_ordered<K: Ord + Clone>(map: &mut BTreeMap<K, i64>, key: &K, by: i64) -> Result<(), String> {
    match map.get_mut(key) {
        Some(n) => {
            *n += by;
            if *n == 0 {
                map.remove(key);
            } else if *n < 0 {
                return Err("a count went below zero".into());
            }
        }
        None if by > 0 => {
            map.insert(key.clone(), by);
        }
        None => return Err("rows were taken away that were never added".into()),
    }
    Ok(())
}

/// Distinct devices and agents of a group, each with the rows holding it.
#[derive(Debug, Default)]
struct Distinct {
    devices: HashMap<Id, i64>,
    agents: HashMap<Id, i64>,
}

impl Distinct {
    fn count(
        &mut self,
        names: &mut Names,
        device: Member<'_>,
        agent: Member<'_>,
        by: i64,
        bytes: &mut isize,
    ) -> Result<(), String> {
        count_member(&mut self.devices, names, device, by, bytes)?;
        count_member(&mut self.agents, names, agent, by, bytes)
    }

    fn is_empty(&self) -> bool {
        self.devices.is_empty() && self.agents.is_empty()
    }

    /// Whether the group may be published (the queries' `HAVING`).
    fn allowed(&self, t: Thresholds) -> bool {
        t.allows(self.devices.len() as u64, self.agents.len() as u64)
    }
}

/// Groups by `K`, each with its [`Distinct`].
#[derive(Debug)]
struct Groups<K> {
    groups: HashMap<K, Distinct>,
}

impl<K> Default for Groups<K> {
    fn default() -> Self {
        Self { groups: HashMap::new() }
    }
}

impl<K: Hash + Eq> Groups<K> {
    /// Counts the device and agent of a row of the group `key`.
    fn count(&mut self, key: K, row: &mut RowNames<'_, '_>, by: i64) -> Result<(), String> {
        let (device, agent) = (Member::Name(row.device), Member::Name(row.agent));
        match self.groups.get_mut(&key) {
            Some(group) => {
                group.count(row.names, device, agent, by, row.bytes)?;
                if group.is_empty() {
                    self.groups.remove(&key);
                    *row.bytes -= GROUP_BYTES as isize;
                }
            }
            None => {
                let mut group = Distinct::default();
                group.count(row.names, device, agent, by, row.bytes)?;
                self.groups.insert(key, group);
                *row.bytes += GROUP_BYTES as isize;
            }
        }
        Ok(())
    }

    /// The groups that may be published.
    fn allowed(&self, t: Thresholds) -> impl Iterator<Item = (&K, &Distinct)> {
        self.groups.iter().filter(move |(_, g)| g.allowed(t))
    }
}

/// A row's device and agent, and what counting them changes.
struct RowNames<'n, 'r> {
    names: &'n mut Names,
    device: &'r str,
    agent: &'r str,
    bytes: &'n mut isize,
}

/// A sum of decimals that is NULL while no row holding a value counts.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Sum {
    total: i128,
    values: i64,
}

impl Sum {
    fn count(&mut self, value: Option<i128>, by: i64) {
        if let Some(v) = value {
            self.total += v * i128::from(by);
            self.values += by;
        }
    }

    fn get(&self) -> Option<i128> {
        (self.values > 0).then_some(self.total)
    }
}

/// A small counted set kept sorted: a boot's devices, agents and first
/// seconds, mostly one of each, in far less than an ordered map takes.
#[derive(Debug)]
struct Counted<K>(Vec<(K, i64)>);

impl<K> Default for Counted<K> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<K: Ord> Counted<K> {
    fn count<Q>(&mut self, key: &Q, by: i64, owned: impl FnOnce() -> K) -> Result<(), String>
    where
        K: std::borrow::Borrow<Q>,
        Q: Ord + ?Sized,
    {
        match self.0.binary_search_by(|(k, _)| k.borrow().cmp(key)) {
            Ok(at) => {
                self.0[at].1 += by;
                match self.0[at].1 {
                    0 => {
                        self.0.remove(at);
                    }
                    n if n < 0 => return Err("a count went below zero".into()),
                    _ => {}
                }
            }
            Err(at) if by > 0 => self.0.insert(at, (owned(), by)),
            Err(_) => return Err("rows were taken away that were never added".into()),
        }
        Ok(())
    }

    fn first(&self) -> Option<&K> {
        self.0.first().map(|(k, _)| k)
    }
}

/// One boot's contacts with one destination: the digest rows' devices,
/// agents and first seconds, each counted, and the byte sums.
#[derive(Debug, Default)]
struct Boot {
    devices: Counted<Id>,
    agents: Counted<Id>,
    firsts: Counted<Ordered>,
    bytes_out: Sum,
    bytes_in: Sum,
    rows: i64,
}

/// What `model_destinations` takes of a boot: its smallest device, agent
/// and first second, and its sums.
#[derive(Debug, Clone, PartialEq)]
struct BootFigures {
    device: Id,
    agent: Id,
    first: Option<Ordered>,
    bytes_out: Option<i128>,
    bytes_in: Option<i128>,
}

impl Boot {
    fn figures(&self, names: &Names) -> Option<BootFigures> {
        if self.rows == 0 {
            return None;
        }
        // The smallest name (the ids are in the order they were given).
        let least =
            |set: &Counted<Id>| set.0.iter().map(|(id, _)| *id).min_by(|a, b| names.name(*a).cmp(names.name(*b)));
        Some(BootFigures {
            device: least(&self.devices)?,
            agent: least(&self.agents)?,
            first: self.firsts.first().copied(),
            bytes_out: self.bytes_out.get(),
            bytes_in: self.bytes_in.get(),
        })
    }
}

/// A model's destination over its boots' figures.
#[derive(Debug, Default)]
struct Destination {
    distinct: Distinct,
    firsts: BTreeMap<Ordered, i64>,
    bytes_out: Sum,
    bytes_in: Sum,
    boots: i64,
}

impl Destination {
    fn count(&mut self, names: &mut Names, boot: &BootFigures, by: i64, bytes: &mut isize) -> Result<(), String> {
        self.distinct.count(names, Member::Id(boot.device), Member::Id(boot.agent), by, bytes)?;
        if let Some(first) = boot.first {
            count_ordered(&mut self.firsts, &first, by)?;
        }
        self.bytes_out.count(boot.bytes_out, by);
        self.bytes_in.count(boot.bytes_in, by);
        self.boots += by;
        Ok(())
    }
}

/// (vendor, model) and more.
type Model = (String, String);
type Text = Option<String>;

/// The state of the dashboard's queries (see the module doc).
#[derive(Debug, Default)]
pub struct Merged {
    models: Groups<Model>,
    firmware: Groups<(String, String, String)>,
    firmware_first: HashMap<(String, String, String), BTreeMap<i64, i64>>,
    model_hosts: Groups<(String, String, Text, Text)>,
    model_ports: Groups<(String, String, Text, String, i32)>,
    firmware_destinations: Groups<(String, String, String, Text)>,
    destinations: Groups<Text>,
    destination_trend: Groups<(Text, i64)>,
    /// Each boot's figures by vendor, model, destination and boot.
    boots: HashMap<(Id, Id, Option<Id>, Id), Boot>,
    model_destinations: HashMap<(String, String, Text), Destination>,
    names: Names,
    /// Bytes held, about.
    bytes: isize,
}

/// A string column of a digest row batch, read as Utf8.
fn text(batch: &RecordBatch, name: &str) -> Result<StringArray, String> {
    let column = batch.column_by_name(name).ok_or_else(|| format!("a digest without {name}"))?;
    let cast = arrow::compute::cast(column, &DataType::Utf8).map_err(|e| format!("{name}: {e}"))?;
    Ok(cast.as_string::<i32>().clone())
}

/// A column of a digest row batch cast to `to`.
fn cast(batch: &RecordBatch, name: &str, to: &DataType) -> Result<ArrayRef, String> {
    let column = batch.column_by_name(name).ok_or_else(|| format!("a digest without {name}"))?;
    arrow::compute::cast(column, to).map_err(|e| format!("{name}: {e}"))
}

/// The value of a column that digests never leave NULL.
fn required<'a>(column: &'a StringArray, name: &str, i: usize) -> Result<&'a str, String> {
    if column.is_null(i) { Err(format!("a digest row without {name}")) } else { Ok(column.value(i)) }
}

impl Merged {
    /// Empty.
    pub fn new() -> Self {
        Self::default()
    }

    fn rows(&mut self, batch: &RecordBatch, by: i64) -> Result<(), String> {
        let [vendor, model, os_version, device, agent, boot, domain, transport, dst_ip] = [
            "vendor",
            "model",
            "os_version",
            "device_pseudonym",
            "agent_id",
            "boot_pseudonym",
            "domain",
            "transport",
            "dst_ip",
        ]
        .map(|name| text(batch, name));
        let (vendor, model, os_version, device, agent) = (vendor?, model?, os_version?, device?, agent?);
        let (boot, domain, transport, dst_ip) = (boot?, domain?, transport?, dst_ip?);
        let port = cast(batch, "dst_port", &DataType::Int32)?;
        let port = port.as_primitive::<Int32Type>();
        let window = cast(batch, "window_start", &DataType::Timestamp(TimeUnit::Second, None))
            .and_then(|w| arrow::compute::cast(&w, &DataType::Int64).map_err(|e| format!("window_start: {e}")))?;
        let window = window.as_primitive::<Int64Type>();
        let first = cast(batch, "seconds_since_boot", &DataType::Float64)?;
        let first = first.as_primitive::<Float64Type>();
        let sums = |name| cast(batch, name, &DataType::Decimal128(38, 0));
        let (bytes_out, bytes_in) = (sums("bytes_out")?, sums("bytes_in")?);
        let (bytes_out, bytes_in) =
            (bytes_out.as_primitive::<Decimal128Type>(), bytes_in.as_primitive::<Decimal128Type>());
        let opt_i128 = |a: &arrow::array::Decimal128Array, i: usize| (!a.is_null(i)).then(|| a.value(i));
        let mut registrable: HashMap<String, String> = HashMap::new();
        let mut bytes = 0isize;
        for i in 0..batch.num_rows() {
            let (v, m) = (required(&vendor, "vendor", i)?, required(&model, "model", i)?);
            let os = required(&os_version, "os_version", i)?;
            let (dev, agt) = (required(&device, "device_pseudonym", i)?, required(&agent, "agent_id", i)?);
            let ws = if window.is_null(i) {
                return Err("a digest row without window_start".into());
            } else {
                window.value(i)
            };
            let mut row = RowNames { names: &mut self.names, device: dev, agent: agt, bytes: &mut bytes };
            self.models.count((v.to_string(), m.to_string()), &mut row, by)?;
            let fw = (v.to_string(), m.to_string(), os.to_string());
            self.firmware.count(fw.clone(), &mut row, by)?;
            let firsts = self.firmware_first.entry(fw.clone()).or_default();
            if firsts.is_empty() {
                *row.bytes += GROUP_BYTES as isize;
            }
            count_ordered(firsts, &ws, by)?;
            if firsts.is_empty() {
                self.firmware_first.remove(&fw);
                *row.bytes -= GROUP_BYTES as isize;
            }

            // `dest_flows`: records with a destination name, or an address.
            let dom = (!domain.is_null(i)).then(|| domain.value(i)).filter(|d| !d.is_empty());
            let ip = required(&dst_ip, "dst_ip", i)?;
            if dom.is_none() && ip.is_empty() {
                continue;
            }
            let tr = required(&transport, "transport", i)?;
            let p = (!port.is_null(i)).then(|| port.value(i));
            let unnamed = || {
                let ip = ip.trim().parse().ok()?;
                let port = u16::try_from(p?).ok()?;
                Some(unnamed_destination(tr, ip, port))
            };
            let (host, destination): (Text, Text) = match dom {
                Some(d) => {
                    let reg = registrable
                        .entry(d.to_string())
                        .or_insert_with(|| registrable_domain(d).unwrap_or_else(|| d.to_string()))
                        .clone();
                    (Some(d.to_string()), Some(reg))
                }
                None => {
                    let u = unnamed();
                    (u.clone(), u)
                }
            };
            self.model_hosts.count((v.into(), m.into(), destination.clone(), host.clone()), &mut row, by)?;
            if let Some(p) = p {
                self.model_ports.count((v.into(), m.into(), host, tr.into(), p), &mut row, by)?;
            }
            self.firmware_destinations.count((v.into(), m.into(), os.into(), destination.clone()), &mut row, by)?;
            self.destinations.count(destination.clone(), &mut row, by)?;
            self.destination_trend.count((destination.clone(), ws - ws.rem_euclid(DAY)), &mut row, by)?;

            // `model_destinations`: the boot's figures, then its model's.
            let b = required(&boot, "boot_pseudonym", i)?;
            let names = &mut self.names;
            let key_names = [Some(v), Some(m), destination.as_deref(), Some(b)];
            let ids = key_names.map(|n| n.map(|n| names.id(n)));
            let found = match ids {
                [Some(Some(v)), Some(Some(m)), d, Some(Some(b))] if d.is_none_or(|d| d.is_some()) => {
                    let key = (v, m, d.flatten(), b);
                    self.boots.contains_key(&key).then_some(key)
                }
                _ => None,
            };
            let key = match found {
                Some(key) => key,
                None if by > 0 => {
                    // A new boot holds the names of its key.
                    let mut hold = |n: &str| names.hold(n, &mut bytes);
                    let key = (hold(v)?, hold(m)?, destination.as_deref().map(&mut hold).transpose()?, hold(b)?);
                    self.boots.insert(key, Boot::default());
                    bytes += BOOT_BYTES as isize;
                    key
                }
                None => return Err("rows were taken away that were never added".into()),
            };
            let entry = self.boots.get_mut(&key).ok_or("a boot went missing")?;
            let before = entry.figures(names);
            count_member(&mut entry.devices, names, Member::Name(dev), by, &mut bytes)?;
            count_member(&mut entry.agents, names, Member::Name(agt), by, &mut bytes)?;
            if !first.is_null(i) {
                let first = Ordered(first.value(i));
                entry.firsts.count(&first, by, || first)?;
            }
            entry.bytes_out.count(opt_i128(bytes_out, i), by);
            entry.bytes_in.count(opt_i128(bytes_in, i), by);
            entry.rows += by;
            if entry.rows < 0 {
                return Err("a count went below zero".into());
            }
            let after = entry.figures(names);
            if before != after {
                let group = (v.to_string(), m.to_string(), destination);
                let dest = self.model_destinations.entry(group.clone()).or_default();
                if let Some(before) = &before {
                    dest.count(names, before, -1, &mut bytes)?;
                }
                if let Some(after) = &after {
                    dest.count(names, after, 1, &mut bytes)?;
                }
                if dest.boots == 0 {
                    self.model_destinations.remove(&group);
                }
            }
            if after.is_none() {
                // Its sets are empty: the names it held are its key's.
                self.boots.remove(&key);
                bytes -= BOOT_BYTES as isize;
                let (v, m, d, b) = key;
                for id in [Some(v), Some(m), d, Some(b)].into_iter().flatten() {
                    names.release(id, &mut bytes)?;
                }
            }
        }
        self.bytes += bytes;
        Ok(())
    }

    /// The result of each query of [`ANSWERED`] as its SQL gives it over
    /// the rows merged, by name (row order aside).
    pub fn results(
        &self,
        queries: &BTreeMap<&'static str, Query>,
        t: Thresholds,
    ) -> Result<BTreeMap<&'static str, Vec<RecordBatch>>, String> {
        let mut out = BTreeMap::new();
        for name in ANSWERED {
            let query = queries.get(name).ok_or_else(|| format!("no query {name}"))?;
            let mut table = Table::new(query);
            match name {
                "models" => {
                    for ((v, m), g) in self.models.allowed(t) {
                        table.row(&[Value::Text(Some(v)), Value::Text(Some(m)), g.devices(), g.agents()]);
                    }
                }
                "firmware" => {
                    for ((v, m, os), g) in self.firmware.allowed(t) {
                        let first = self
                            .firmware_first
                            .get(&(v.clone(), m.clone(), os.clone()))
                            .and_then(|f| f.keys().next().copied());
                        table.row(&[
                            Value::Text(Some(v)),
                            Value::Text(Some(m)),
                            Value::Text(Some(os)),
                            g.devices(),
                            Value::Int(first),
                        ]);
                    }
                }
                "model_hosts" => {
                    for ((v, m, dest, host), _) in self.model_hosts.allowed(t) {
                        table.row(&[Value::Text(Some(v)), Value::Text(Some(m)), Value::text(dest), Value::text(host)]);
                    }
                }
                "model_ports" => {
                    for ((v, m, host, tr, port), g) in self.model_ports.allowed(t) {
                        table.row(&[
                            Value::Text(Some(v)),
                            Value::Text(Some(m)),
                            Value::text(host),
                            Value::Text(Some(tr)),
                            Value::Int(Some(i64::from(*port))),
                            g.devices(),
                            g.agents(),
                        ]);
                    }
                }
                "firmware_destinations" => {
                    for ((v, m, os, dest), _) in self.firmware_destinations.allowed(t) {
                        table.row(&[
                            Value::Text(Some(v)),
                            Value::Text(Some(m)),
                            Value::Text(Some(os)),
                            Value::text(dest),
                        ]);
                    }
                }
                "destinations" => {
                    for (dest, g) in self.destinations.allowed(t) {
                        table.row(&[Value::text(dest), g.devices(), g.agents()]);
                    }
                }
                "destination_trend" => {
                    for ((dest, day), g) in self.destination_trend.allowed(t) {
                        table.row(&[Value::text(dest), Value::Int(Some(*day)), g.devices(), g.agents()]);
                    }
                }
                "model_destinations" => {
                    for ((v, m, dest), d) in &self.model_destinations {
                        if !d.distinct.allowed(t) {
                            continue;
                        }
                        let firsts = Quantiles::new(&d.firsts);
                        let saturated =
                            |s: Option<i128>| s.map(|s| s.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64);
                        table.row(&[
                            Value::Text(Some(v)),
                            Value::Text(Some(m)),
                            Value::text(dest),
                            d.distinct.devices(),
                            d.distinct.agents(),
                            Value::Float(firsts.percentile(0.25)),
                            Value::Float(firsts.median()),
                            Value::Float(firsts.percentile(0.75)),
                            Value::Int(saturated(d.bytes_out.get())),
                            Value::Int(saturated(d.bytes_in.get())),
                        ]);
                    }
                }
                other => return Err(format!("no merged state for {other}")),
            }
            out.insert(name, vec![table.finish()?]);
        }
        Ok(out)
    }
}

impl Distinct {
    fn devices(&self) -> Value<'_> {
        Value::Int(Some(self.devices.len() as i64))
    }

    fn agents(&self) -> Value<'_> {
        Value::Int(Some(self.agents.len() as i64))
    }
}

/// A value of a result row.
enum Value<'a> {
    Text(Option<&'a String>),
    Int(Option<i64>),
    Float(Option<f64>),
}

impl<'a> Value<'a> {
    fn text(t: &'a Text) -> Self {
        Self::Text(t.as_ref())
    }
}

/// A query's result, built row by row in its declared columns.
struct Table<'q> {
    query: &'q Query,
    columns: Vec<Column>,
}

enum Column {
    Text(StringBuilder),
    Int(Int64Builder),
    Float(Float64Builder),
}

impl<'q> Table<'q> {
    fn new(query: &'q Query) -> Self {
        let columns = query
            .columns
            .iter()
            .map(|(_, ty)| match ty {
                DataType::Int64 => Column::Int(Int64Builder::new()),
                DataType::Float64 => Column::Float(Float64Builder::new()),
                _ => Column::Text(StringBuilder::new()),
            })
            .collect();
        Self { query, columns }
    }

    fn row(&mut self, values: &[Value<'_>]) {
        for (column, value) in self.columns.iter_mut().zip(values) {
            match (column, value) {
                (Column::Text(b), Value::Text(v)) => b.append_option(v.map(String::as_str)),
                (Column::Int(b), Value::Int(v)) => b.append_option(*v),
                (Column::Float(b), Value::Float(v)) => b.append_option(*v),
                (Column::Text(b), _) => b.append_null(),
                (Column::Int(b), _) => b.append_null(),
                (Column::Float(b), _) => b.append_null(),
            }
        }
    }

    fn finish(self) -> Result<RecordBatch, String> {
        let fields: Vec<Field> =
            self.query.columns.iter().map(|(name, ty)| Field::new(*name, ty.clone(), true)).collect();
        let arrays: Vec<ArrayRef> = self
            .columns
            .into_iter()
            .map(|c| -> ArrayRef {
                match c {
                    Column::Text(mut b) => Arc::new(b.finish()) as ArrayRef,
                    Column::Int(mut b) => Arc::new(b.finish()) as ArrayRef,
                    Column::Float(mut b) => Arc::new(b.finish()) as ArrayRef,
                }
            })
            .collect();
        RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).map_err(|e| format!("{}: {e}", self.query.name))
    }
}

/// Order statistics of a counted set of floats, computed as DataFusion's
/// `percentile_cont` and `median` compute them.
struct Quantiles<'a> {
    values: &'a BTreeMap<Ordered, i64>,
    len: usize,
}

impl<'a> Quantiles<'a> {
    fn new(values: &'a BTreeMap<Ordered, i64>) -> Self {
        let len = values.values().map(|n| usize::try_from(*n).unwrap_or(0)).sum();
        Self { values, len }
    }

    /// The `k`th smallest (from 0).
    fn nth(&self, k: usize) -> Option<f64> {
        let mut seen = 0usize;
        for (value, n) in self.values {
            seen += usize::try_from(*n).unwrap_or(0);
            if k < seen {
                return Some(value.0);
            }
        }
        None
    }

    /// `percentile_cont(p)` (for 0 < p < 1): linear between the values
    /// around `p * (n - 1)`, the weight quantised to millionths.
    fn percentile(&self, p: f64) -> Option<f64> {
        const PRECISION: f64 = 1_000_000.0;
        match self.len {
            0 => None,
            1 => self.nth(0),
            n => {
                let index = p * ((n - 1) as f64);
                let (lower, upper) = (index.floor() as usize, index.ceil() as usize);
                let low = self.nth(lower)?;
                if lower == upper {
                    return Some(low);
                }
                let high = self.nth(upper)?;
                let weight = ((index - lower as f64) * PRECISION) as usize as f64 / PRECISION;
                Some(low + (high - low) * weight)
            }
        }
    }

    /// `median`: the middle value, or the mean of the two middle ones.
    fn median(&self) -> Option<f64> {
        match self.len {
            0 => None,
            n if n % 2 == 0 => Some((self.nth(n / 2 - 1)? + self.nth(n / 2)?) / 2.0),
            n => self.nth(n / 2),
        }
    }
}

impl Merge for Merged {
    fn merge(&mut self, rows: &RecordBatch, sign: i64) -> Result<(), String> {
        self.rows(rows, sign)
    }

    fn clear(&mut self) {
        *self = Self::default();
    }

    fn size(&self) -> usize {
        usize::try_from(self.bytes).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use leakwatch_query::digest::Digests;
    use leakwatch_query::{FilesOnly, FlowBatchBuilder, FlowRow, FlowStore, QueryConfig, SessionFactory};

    use super::*;
    use crate::queries::queries;

    /// Records at the edges of the queries' SQL, each its own digest row:
    /// a destination none of whose records holds bytes or a time since
    /// boot, unnamed ones whose port or address does not parse (a NULL
    /// destination), and an even number of boots (the median between
    /// two). The aggregates answer as the SQL does, and after the rows are
    /// taken away again, hold nothing.
    #[tokio::test]
    async fn the_aggregates_answer_as_the_sql_at_its_edges() {
        // (host, address, port, seconds since boot, bytes) per record.
        type Contact = (&'static str, &'static str, Option<i32>, Option<f64>, Option<i64>);
        let contacts: [Contact; 5] = [
            ("api.acme.example", "198.51.100.1", Some(443), None, None),
            ("", "203.0.113.7", None, Some(3.5), Some(10)),
            ("", "not an address", Some(8886), Some(1.25), Some(20)),
            ("time.shared.example", "198.51.100.2", Some(123), Some(0.5), Some(i64::MAX)),
            ("", "203.0.113.9", Some(70_000), Some(2.0), Some(i64::MAX)),
        ];
        let mut rows = FlowBatchBuilder::new();
        let (mut ports, mut firsts, mut bytes) = (Vec::new(), Vec::new(), Vec::new());
        for device in 0..6u8 {
            for (i, (host, ip, port, first, sent)) in contacts.iter().enumerate() {
                rows.push(FlowRow {
                    agent_id: format!("agent-{}", device % 3),
                    device_pseudonym: format!("device-{device}"),
                    boot_pseudonym: format!("boot-{device}-{}", i % 2),
                    vendor: "Acme".into(),
                    model: if device < 4 { "Cam".into() } else { "Plug".into() },
                    os_version: format!("1.{}", device % 2),
                    window_start_s: 1_795_996_800 + i64::from(device) * 3_600,
                    transport: "tcp".into(),
                    dst_ip: (*ip).into(),
                    domain: (*host).into(),
                    ..FlowRow::default()
                });
                ports.push(*port);
                firsts.push(first.map(|f| f * f64::from(device + 1)));
                bytes.push(*sent);
            }
        }
        let records = rows.finish();
        let schema = records.schema();
        let mut columns = records.columns().to_vec();
        for (name, column) in [
            ("dst_port", Arc::new(arrow::array::Int32Array::from(ports)) as ArrayRef),
            ("seconds_since_boot", Arc::new(arrow::array::Float64Array::from(firsts))),
            ("bytes_out", Arc::new(arrow::array::Int64Array::from(bytes.clone()))),
            ("bytes_in", Arc::new(arrow::array::Int64Array::from(bytes))),
        ] {
            columns[schema.index_of(name).expect("column")] = column;
        }
        let records = RecordBatch::try_new(schema, columns).expect("records");

        let dir = tempfile::tempdir().expect("tempdir");
        let store = FlowStore::local(dir.path()).expect("store");
        let factory = SessionFactory::new(QueryConfig::default(), store, Arc::new(FilesOnly));
        let (session, _) = factory.digest_session(&Digests::default()).await.expect("session");
        let ctx = session.context();
        let _ = ctx.deregister_table("flows").expect("deregister");
        ctx.register_batch("flows", records.clone()).expect("register");

        let mut merged = Merged::new();
        merged.merge(&records, 1).expect("merge");
        let t = Thresholds::new(2, 2).expect("thresholds");
        let queries = queries();
        let results = merged.results(&queries, t).expect("results");
        let mut answered = 0;
        for name in ANSWERED {
            let query = &queries[name];
            let from_sql = query.run(&session, t, &[]).await.expect("sql").lines();
            assert_eq!(query.read(&results[name]).expect("read").lines(), from_sql, "{name}");
            answered += from_sql.len();
        }
        let null_destination = query_lines(&queries, &results, "destinations");
        assert!(null_destination.iter().any(|l| l.starts_with("\"NULL\"")), "{null_destination:?}");
        let no_bytes = query_lines(&queries, &results, "model_destinations");
        assert!(
            no_bytes.iter().any(|l| l.contains("acme.example") && l.ends_with("\"NULL\",\"NULL\"")),
            "{no_bytes:?}"
        );
        assert!(answered > 20, "{answered}");

        merged.merge(&records, -1).expect("taken away");
        assert_eq!(merged.size(), 0);
        assert!(merged.results(&queries, t).expect("results").values().all(|b| b.iter().all(|b| b.num_rows() == 0)));
        assert!(merged.merge(&records, -1).is_err(), "rows taken away that were never added");
    }

    fn query_lines(
        queries: &BTreeMap<&'static str, Query>,
        results: &BTreeMap<&'static str, Vec<RecordBatch>>,
        name: &str,
    ) -> Vec<String> {
        queries[name].read(&results[name]).expect("read").lines()
    }

    #[test]
    fn quantiles_are_datafusions() {
        let mut values = BTreeMap::new();
        for (v, n) in [(1.5, 2), (4.0, 1), (10.25, 3)] {
            values.insert(Ordered(v), n);
        }
        let q = Quantiles::new(&values);
        // 1.5 1.5 4 10.25 10.25 10.25: index 1.25 and 3.75.
        assert_eq!(q.percentile(0.25), Some(1.5 + (4.0 - 1.5) * 0.25));
        assert_eq!(q.median(), Some((4.0 + 10.25) / 2.0));
        assert_eq!(q.percentile(0.75), Some(10.25));
        assert_eq!(Quantiles::new(&BTreeMap::new()).median(), None);
    }
}

//! The public aggregates: everything the dashboard, its JSON API and the
//! open-data export may show, computed from the flows by SQL after a flush
//! and held in memory until the next one.
//!
//! Every row here describes a group seen from at least `k` distinct
//! devices and `m` distinct volunteers (agents); smaller groups are
//! dropped by the queries (`HAVING`) and again by [`Thresholds::allows`]
//! before a row is kept. Nothing carries a device or agent pseudonym, and
//! record times are published as days only.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, PoisonError};

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use leakwatch_query::QuerySession;
use leakwatch_query::rules::{Rule, builtin_rules};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::merged::Merged;
use crate::queries::{Query, Rows, named, queries, timed};
use crate::{Error, Result};

/// Smallest thresholds an operator may set.
pub const MIN_THRESHOLD: u64 = 2;

/// Publication thresholds: a group is public only when seen from at least
/// `min_devices` distinct devices and `min_volunteers` distinct agents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Thresholds {
    /// k: fewest distinct devices.
    pub min_devices: u64,
    /// m: fewest distinct volunteers (agents).
    pub min_volunteers: u64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self { min_devices: 5, min_volunteers: 3 }
    }
}

impl Thresholds {
    /// Checked thresholds; neither may be below [`MIN_THRESHOLD`].
    pub fn new(min_devices: u64, min_volunteers: u64) -> Result<Self> {
        for (flag, value) in [("--public-min-devices", min_devices), ("--public-min-volunteers", min_volunteers)] {
            if value < MIN_THRESHOLD {
                return Err(Error::Config(format!(
                    "{flag}: {value} is below {MIN_THRESHOLD}; a group of one would be published"
                )));
            }
        }
        Ok(Self { min_devices, min_volunteers })
    }

    /// Whether a group seen from `devices` devices and `volunteers` agents
    /// may be published.
    pub fn allows(&self, devices: u64, volunteers: u64) -> bool {
        devices >= self.min_devices && volunteers >= self.min_volunteers
    }
}

/// One published finding: a rule's row with its evidence.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// Stable id (hash of rule, vendor, model and destination).
    pub id: String,
    /// Rule name.
    pub rule: String,
    /// Rule title.
    pub rule_title: String,
    /// Vendor.
    pub vendor: String,
    /// Model; empty for a finding about all of a vendor's models.
    pub model: String,
    /// For a vendor-wide finding: its published models.
    pub models: Vec<String>,
    /// Host name or registrable domain the rule reported.
    pub domain: String,
    /// Registrable domain it belongs to (the destination page).
    pub destination: String,
    /// The claim in one sentence.
    pub claim: String,
    /// Lowest and highest published firmware version among the devices.
    pub firmware_min: Option<String>,
    /// See `firmware_min`.
    pub firmware_max: Option<String>,
    /// Distinct devices behind the finding.
    pub devices: u64,
    /// Distinct volunteers (agents) behind it.
    pub volunteers: u64,
    /// Devices of the model (or vendor) seen at all.
    pub population_devices: u64,
    /// `devices / population_devices`.
    pub share: f64,
    /// Median over boots of the seconds from boot to the first contact.
    pub median_s_after_boot: Option<f64>,
    /// Seconds after boot by which each share of boots had made contact
    /// (5 % to 95 %).
    pub first_contact: Vec<Quantile>,
    /// Declared consent values held by a publishable group of the devices.
    pub consent: Vec<Count>,
    /// What the records behind it were read from (`capture`, `live`,
    /// `pihole`, ...), each held by a publishable group of the devices.
    pub sources: Vec<Count>,
    /// Day of the first record.
    pub first_seen: String,
    /// Day of the last record.
    pub last_seen: String,
    /// The rule's own figures for this row.
    pub numbers: Vec<(String, String)>,
    /// The rule's parameters as used.
    pub params: Vec<(String, f64)>,
    /// The exact SQL that produced it.
    pub sql: String,
    /// The console command that reruns it.
    pub command: String,
    /// When it was first published (RFC 3339; see the feeds).
    pub published: String,
    /// When what a reader sees of it last changed (RFC 3339).
    pub updated: String,
}

/// A point of a distribution.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Quantile {
    /// Share of boots, 0–1.
    pub share: f64,
    /// Seconds after boot.
    pub seconds: f64,
}

/// A value and how many devices have it.
#[derive(Debug, Clone, Serialize)]
pub struct Count {
    /// The value.
    pub value: String,
    /// Distinct devices.
    pub devices: u64,
}

/// A model in the list of models.
#[derive(Debug, Clone, Serialize)]
pub struct ModelSummary {
    /// Vendor.
    pub vendor: String,
    /// Model.
    pub model: String,
    /// Distinct devices.
    pub devices: u64,
    /// Distinct volunteers.
    pub volunteers: u64,
    /// Published destinations.
    pub destinations: usize,
    /// Published findings.
    pub findings: usize,
}

/// A destination as one model contacts it.
#[derive(Debug, Clone, Serialize)]
pub struct ModelDestination {
    /// Registrable domain.
    pub destination: String,
    /// Its host names this model contacts (each a publishable group).
    pub hosts: Vec<String>,
    /// Distinct devices.
    pub devices: u64,
    /// Distinct volunteers.
    pub volunteers: u64,
    /// Share of the model's devices.
    pub share: f64,
    /// Quartiles over boots of the seconds from boot to the first contact.
    pub p25_s: f64,
    /// Median.
    pub median_s: f64,
    /// Upper quartile.
    pub p75_s: f64,
    /// Transport payload bytes sent; `None` when no record held a count
    /// (a DNS log, the iOS report).
    pub bytes_out: Option<i64>,
    /// Transport payload bytes received; `None` as for `bytes_out`.
    pub bytes_in: Option<i64>,
}

/// One firmware version of a model and what changed with it.
#[derive(Debug, Clone, Serialize)]
pub struct FirmwareStep {
    /// Version.
    pub version: String,
    /// Distinct devices.
    pub devices: u64,
    /// Day first seen.
    pub first_seen: String,
    /// Destinations contacted on this version and not the previous one.
    pub added: Vec<String>,
    /// Destinations contacted on the previous version and not this one.
    pub removed: Vec<String>,
}

/// Everything on a model page.
#[derive(Debug, Clone, Serialize)]
pub struct ModelPage {
    /// The model.
    pub summary: ModelSummary,
    /// Destinations, earliest contact after boot first.
    pub destinations: Vec<ModelDestination>,
    /// Firmware versions in order of first appearance.
    pub firmware: Vec<FirmwareStep>,
    /// Ids of its findings.
    pub findings: Vec<String>,
    /// Host names (or unnamed networks) with the protocol and port the
    /// model reaches them on, each a publishable group (its MUD file).
    pub ports: Vec<HostPort>,
}

/// A host name a model reaches on a protocol and port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct HostPort {
    /// Host name, or an unnamed destination's key.
    pub domain: String,
    /// `tcp`, `udp`, ...
    pub transport: String,
    /// Destination port.
    pub port: u16,
}

/// A destination in the list of destinations.
#[derive(Debug, Clone, Serialize)]
pub struct DestinationSummary {
    /// Registrable domain.
    pub destination: String,
    /// Distinct devices.
    pub devices: u64,
    /// Distinct volunteers.
    pub volunteers: u64,
    /// Published models that contact it.
    pub models: usize,
}

/// A model as seen from a destination.
#[derive(Debug, Clone, Serialize)]
pub struct DestinationModel {
    /// Vendor.
    pub vendor: String,
    /// Model.
    pub model: String,
    /// Distinct devices.
    pub devices: u64,
    /// Share of the model's devices.
    pub share: f64,
    /// Median seconds from boot to the first contact.
    pub median_s: f64,
    /// Bytes sent; `None` when no record held a count.
    pub bytes_out: Option<i64>,
    /// Bytes received; `None` as for `bytes_out`.
    pub bytes_in: Option<i64>,
}

/// Devices that contacted a destination on one day.
#[derive(Debug, Clone, Serialize)]
pub struct Day {
    /// `YYYY-MM-DD`.
    pub day: String,
    /// Distinct devices.
    pub devices: u64,
}

/// Everything on a destination page.
#[derive(Debug, Clone, Serialize)]
pub struct DestinationPage {
    /// The destination.
    pub summary: DestinationSummary,
    /// Its published host names.
    pub hosts: Vec<String>,
    /// Models that contact it, most devices first.
    pub models: Vec<DestinationModel>,
    /// Devices per day (days below the thresholds left out).
    pub trend: Vec<Day>,
    /// Ids of its findings.
    pub findings: Vec<String>,
}

/// All public aggregates at one moment.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Snapshot {
    /// When they were computed (UTC, to the minute).
    pub refreshed_at: String,
    /// The same, epoch seconds.
    #[serde(skip)]
    pub refreshed_unix: i64,
    /// Where the dashboard is and the data's licence.
    pub site: crate::Site,
    /// Thresholds applied.
    pub thresholds: Thresholds,
    /// Findings, newest and strongest first.
    pub findings: Vec<Finding>,
    /// Models by vendor and name.
    pub models: Vec<ModelSummary>,
    /// Destinations by devices.
    pub destinations: Vec<DestinationSummary>,
    #[serde(skip)]
    pub(crate) model_pages: HashMap<(String, String), ModelPage>,
    #[serde(skip)]
    pub(crate) destination_pages: HashMap<String, DestinationPage>,
    #[serde(skip)]
    pub(crate) finding_index: HashMap<String, usize>,
    /// Flushed files that could not be read when these were computed (left
    /// out, or set aside by the collector): their rows are in no figure.
    pub unreadable_files: u64,
    /// What the refresh read of the flushed files' digests.
    #[serde(skip)]
    pub digested: leakwatch_query::digest::DigestStats,
}

impl Snapshot {
    /// When they were computed, RFC 3339.
    pub fn refreshed_rfc3339(&self) -> String {
        chrono::DateTime::from_timestamp(self.refreshed_unix, 0)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    }

    /// The model page of `vendor` / `model`.
    pub fn model(&self, vendor: &str, model: &str) -> Option<&ModelPage> {
        self.model_pages.get(&(vendor.to_string(), model.to_string()))
    }

    /// The destination page of `name`.
    pub fn destination(&self, name: &str) -> Option<&DestinationPage> {
        self.destination_pages.get(name)
    }

    /// The finding with `id`.
    pub fn finding(&self, id: &str) -> Option<&Finding> {
        self.finding_index.get(id).and_then(|&i| self.findings.get(i))
    }
}

/// The rules from the strongest claim to the weakest, which orders
/// findings of the same day: traffic against the owner's declared choice
/// first, then against the vendor's own MUD file, then contact at boot, new destinations after an update, then
/// what a model's traffic looks like, and last a destination only one
/// vendor's devices contact. Within a rule, findings about one model come
/// before those about all of a vendor's.
const STRENGTH: &[&str] = &[
    "consent_off_traffic",
    "outside_mud",
    "boot_phone_home",
    "new_after_update",
    "heavy_upload",
    "beaconing",
    "model_exclusive",
];

fn strength(rule: &str) -> usize {
    STRENGTH.iter().position(|r| *r == rule).unwrap_or(STRENGTH.len())
}

/// Registrable domain of a host name, or the name itself; an unnamed
/// destination's key (`91.212.186.0/24 (unnamed)`) is its own destination,
/// as in `dest_flows.sql`.
pub fn destination_of(host: &str) -> String {
    if host.ends_with(" (unnamed)") {
        return host.to_string();
    }
    leakwatch_query::registrable_domain(host).unwrap_or_else(|| host.to_string())
}

fn day(epoch_s: i64) -> String {
    chrono::DateTime::from_timestamp(epoch_s, 0).map_or_else(String::new, |t| t.format("%Y-%m-%d").to_string())
}

/// `q`-quantile of sorted `values` by linear interpolation.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

fn finding_id(rule: &str, vendor: &str, model: &str, domain: &str) -> String {
    let mut h = Sha256::new();
    for part in [rule, vendor, model, domain] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    hex::encode(&h.finalize()[..6])
}

/// Computes a snapshot over `session`'s flows: the dashboard's own queries
/// from `merged` when given (it must hold the same rows as the session's
/// `flows`; see [`crate::merged`]), by their SQL when not or when it fails.
pub async fn compute(
    session: &QuerySession,
    thresholds: Thresholds,
    merged: Option<&std::sync::Mutex<Merged>>,
) -> Result<Snapshot> {
    let t = thresholds;
    let now = chrono::Utc::now();
    let mut snapshot = Snapshot {
        refreshed_at: now.format("%Y-%m-%d %H:%M UTC").to_string(),
        refreshed_unix: now.timestamp(),
        thresholds: t,
        ..Snapshot::default()
    };

    let queries = queries();
    let answered = match merged.map(|m| m.lock().unwrap_or_else(PoisonError::into_inner).results(&queries, t)) {
        Some(Ok(answered)) => answered,
        Some(Err(reason)) => {
            tracing::warn!(reason = %reason, "The merged aggregates did not answer; the refresh runs their SQL");
            BTreeMap::new()
        }
        None => BTreeMap::new(),
    };
    let run = |name: &'static str| {
        let query = named(&queries, name);
        let answer = answered.get(name);
        async move {
            match answer {
                Some(batches) => query?.read(batches),
                None => query?.run(session, t, &[]).await,
            }
        }
    };

    // Populations: models and vendors.
    let mut models: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
    run("models").await?.each(|r| {
        if t.allows(r.count("devices"), r.count("volunteers")) {
            models.insert((r.text("vendor"), r.text("model")), (r.count("devices"), r.count("volunteers")));
        }
    });
    // A vendor's devices as the public may count them: those of its
    // published models. Counting all of its devices would publish the
    // devices of models below the thresholds (as the difference to the sum
    // of its published models).
    let mut vendor_devices: HashMap<String, u64> = HashMap::new();
    for ((vendor, _), &(devices, _)) in &models {
        *vendor_devices.entry(vendor.clone()).or_default() += devices;
    }

    // What each model contacts, and when after boot.
    let mut hosts: HashMap<(String, String, String), Vec<String>> = HashMap::new();
    run("model_hosts").await?.each(|r| {
        hosts.entry((r.text("vendor"), r.text("model"), r.text("destination"))).or_default().push(r.text("domain"));
    });
    let mut model_dests: BTreeMap<(String, String), Vec<ModelDestination>> = BTreeMap::new();
    run("model_destinations").await?.each(|r| {
        let key = (r.text("vendor"), r.text("model"));
        let (devices, volunteers) = (r.count("devices"), r.count("volunteers"));
        let (Some(&(model_devices, _)), true) = (models.get(&key), t.allows(devices, volunteers)) else {
            return;
        };
        let destination = r.text("destination");
        let mut host_list = hosts.remove(&(key.0.clone(), key.1.clone(), destination.clone())).unwrap_or_default();
        host_list.sort();
        model_dests.entry(key).or_default().push(ModelDestination {
            destination,
            hosts: host_list,
            devices,
            volunteers,
            share: devices as f64 / model_devices.max(1) as f64,
            p25_s: r.float("p25_s"),
            median_s: r.float("median_s"),
            p75_s: r.float("p75_s"),
            bytes_out: r.opt_int("bytes_out"),
            bytes_in: r.opt_int("bytes_in"),
        });
    });

    // Firmware versions and what each contacts.
    // (vendor, model) -> (first seen, firmware version, devices)
    type ModelKey = (String, String);
    let mut firmware: BTreeMap<ModelKey, Vec<(i64, String, u64)>> = BTreeMap::new();
    run("firmware").await?.each(|r| {
        firmware.entry((r.text("vendor"), r.text("model"))).or_default().push((
            r.int("first_seen"),
            r.text("os_version"),
            r.count("devices"),
        ));
    });
    let mut fw_dests: HashMap<(String, String, String), BTreeSet<String>> = HashMap::new();
    run("firmware_destinations").await?.each(|r| {
        fw_dests
            .entry((r.text("vendor"), r.text("model"), r.text("os_version")))
            .or_default()
            .insert(r.text("destination"));
    });

    // The protocols and ports of each model's host names.
    let mut ports: HashMap<(String, String), Vec<HostPort>> = HashMap::new();
    run("model_ports").await?.each(|r| {
        let (Ok(port), true) = (u16::try_from(r.int("port")), t.allows(r.count("devices"), r.count("volunteers")))
        else {
            return;
        };
        ports.entry((r.text("vendor"), r.text("model"))).or_default().push(HostPort {
            domain: r.text("domain"),
            transport: r.text("transport"),
            port,
        });
    });

    // Destinations: totals and devices per day.
    let mut destinations: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    run("destinations").await?.each(|r| {
        if t.allows(r.count("devices"), r.count("volunteers")) {
            destinations.insert(r.text("destination"), (r.count("devices"), r.count("volunteers")));
        }
    });
    let mut trends: HashMap<String, Vec<(i64, u64)>> = HashMap::new();
    run("destination_trend").await?.each(|r| {
        if t.allows(r.count("devices"), r.count("volunteers")) {
            trends.entry(r.text("destination")).or_default().push((r.int("day"), r.count("devices")));
        }
    });

    // Findings: each rule's rows, then the evidence of all of them.
    // The rules one at a time: two at a time over the digests took as
    // long (each query already keeps both cores busy), and over records
    // read as they are two large aggregations would share the query
    // memory. Their evidence comes in two queries run together (over the
    // digests alone, when the dashboard's own figures came merged from
    // them): those are small, and one runs while the other is planned.
    let rules = builtin_rules();
    let mut tables = Vec::with_capacity(rules.len());
    for rule in &rules {
        tables.push(rule_table(session, rule).await?);
    }
    let pairs: Vec<(&Rule, &RuleTable)> = rules.iter().zip(&tables).map(|(rule, (_, table))| (rule, table)).collect();
    let evidence = evidence_of(session, &queries, &pairs, t, &models, !answered.is_empty()).await?;
    let finding = std::time::Instant::now();
    let mut findings = Vec::new();
    for ((rule, (sql, table)), evidence) in rules.iter().zip(&tables).zip(evidence) {
        findings.extend(rule_findings(rule, sql, table, evidence, t, &models, &vendor_devices, &model_dests));
    }
    findings.sort_by(|a, b| {
        b.last_seen
            .cmp(&a.last_seen)
            .then(strength(&a.rule).cmp(&strength(&b.rule)))
            .then(a.model.is_empty().cmp(&b.model.is_empty()))
            .then(b.share.total_cmp(&a.share))
            .then(b.devices.cmp(&a.devices))
            .then(a.id.cmp(&b.id))
    });

    // Pages.
    for ((vendor, model), &(devices, volunteers)) in &models {
        let mut dests = model_dests.remove(&(vendor.clone(), model.clone())).unwrap_or_default();
        dests.sort_by(|a, b| a.median_s.total_cmp(&b.median_s).then(b.devices.cmp(&a.devices)));
        let mut versions = firmware.remove(&(vendor.clone(), model.clone())).unwrap_or_default();
        versions.sort();
        let mut steps = Vec::new();
        let mut previous: Option<&BTreeSet<String>> = None;
        let empty = BTreeSet::new();
        for (first_seen, version, devices) in &versions {
            let now = fw_dests.get(&(vendor.clone(), model.clone(), version.clone())).unwrap_or(&empty);
            let (added, removed) = match previous {
                Some(before) => (now.difference(before).cloned().collect(), before.difference(now).cloned().collect()),
                None => (Vec::new(), Vec::new()),
            };
            steps.push(FirmwareStep {
                version: version.clone(),
                devices: *devices,
                first_seen: day(*first_seen),
                added,
                removed,
            });
            previous = Some(now);
        }
        let ids: Vec<String> = findings
            .iter()
            .filter(|f| &f.vendor == vendor && (&f.model == model || f.models.contains(model)))
            .map(|f| f.id.clone())
            .collect();
        let summary = ModelSummary {
            vendor: vendor.clone(),
            model: model.clone(),
            devices,
            volunteers,
            destinations: dests.len(),
            findings: ids.len(),
        };
        snapshot.models.push(summary.clone());
        snapshot.model_pages.insert(
            (vendor.clone(), model.clone()),
            ModelPage {
                summary,
                destinations: dests,
                firmware: steps,
                findings: ids,
                ports: {
                    let mut p = ports.remove(&(vendor.clone(), model.clone())).unwrap_or_default();
                    p.sort();
                    p
                },
            },
        );
    }
    let mut by_destination: HashMap<String, Vec<DestinationModel>> = HashMap::new();
    let mut dest_hosts: HashMap<String, BTreeSet<String>> = HashMap::new();
    for page in snapshot.model_pages.values() {
        for d in &page.destinations {
            dest_hosts.entry(d.destination.clone()).or_default().extend(d.hosts.iter().cloned());
            by_destination.entry(d.destination.clone()).or_default().push(DestinationModel {
                vendor: page.summary.vendor.clone(),
                model: page.summary.model.clone(),
                devices: d.devices,
                share: d.share,
                median_s: d.median_s,
                bytes_out: d.bytes_out,
                bytes_in: d.bytes_in,
            });
        }
    }
    for (name, (devices, volunteers)) in destinations {
        let mut dest_models = by_destination.remove(&name).unwrap_or_default();
        dest_models.sort_by(|a, b| b.devices.cmp(&a.devices).then(a.vendor.cmp(&b.vendor)).then(a.model.cmp(&b.model)));
        let mut trend = trends.remove(&name).unwrap_or_default();
        trend.sort();
        let ids: Vec<String> = findings.iter().filter(|f| f.destination == name).map(|f| f.id.clone()).collect();
        let summary = DestinationSummary { destination: name.clone(), devices, volunteers, models: dest_models.len() };
        snapshot.destinations.push(summary.clone());
        snapshot.destination_pages.insert(
            name.clone(),
            DestinationPage {
                summary,
                hosts: dest_hosts.remove(&name).unwrap_or_default().into_iter().collect(),
                models: dest_models,
                trend: trend.into_iter().map(|(d, devices)| Day { day: day(d), devices }).collect(),
                findings: ids,
            },
        );
    }
    snapshot.destinations.sort_by(|a, b| b.devices.cmp(&a.devices).then(a.destination.cmp(&b.destination)));
    snapshot.finding_index = findings.iter().enumerate().map(|(i, f)| (f.id.clone(), i)).collect();
    snapshot.findings = findings;
    tracing::debug!(elapsed_ms = finding.elapsed().as_millis() as u64, "Findings and pages built");
    Ok(snapshot)
}

/// Columns of the table `hits` that `evidence.sql` joins: one row per
/// row of a rule's result.
pub(crate) fn hits_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("row_id", DataType::Int64, false),
        Field::new("vendor", DataType::Utf8, true),
        Field::new("model", DataType::Utf8, true),
        Field::new("domain", DataType::Utf8, true),
        Field::new("consent_off", DataType::Utf8, true),
    ]))
}

/// The values of `groups` (value → its devices and agents) whose group
/// passes the thresholds, with their device counts, most devices first.
fn publishable(groups: &HashMap<String, (HashSet<String>, HashSet<String>)>, t: Thresholds) -> Vec<Count> {
    let mut out: Vec<Count> = groups
        .iter()
        .filter(|(_, (d, a))| t.allows(d.len() as u64, a.len() as u64))
        .map(|(v, (d, _))| Count { value: v.clone(), devices: d.len() as u64 })
        .collect();
    out.sort_by(|a, b| b.devices.cmp(&a.devices).then(a.value.cmp(&b.value)));
    out
}

#[derive(Debug, Default, PartialEq)]
pub(crate) struct Evidence {
    pub(crate) devices: HashSet<String>,
    agents: HashSet<String>,
    pub(crate) first_s: Vec<f64>,
    first_ts: Option<i64>,
    last_ts: Option<i64>,
    firmware: HashMap<String, (HashSet<String>, HashSet<String>)>,
    consent: HashMap<String, (HashSet<String>, HashSet<String>)>,
    sources: HashMap<String, (HashSet<String>, HashSet<String>)>,
}

/// A rule's result rows as text, by column name.
pub(crate) type RuleTable = Vec<BTreeMap<String, Option<String>>>;

/// Runs `rule`; its SQL and its rows.
pub(crate) async fn rule_table(session: &QuerySession, rule: &Rule) -> Result<(String, RuleTable)> {
    let sql = rule.render(&BTreeMap::new())?;
    let rows = timed(session, &rule.name, &sql).await?;
    // The rule's rows as text, by column name.
    let mut table: Vec<BTreeMap<String, Option<String>>> = Vec::new();
    for batch in &rows {
        let cols: Vec<(String, ArrayRef)> = batch
            .schema()
            .fields()
            .iter()
            .zip(batch.columns())
            .map(|(f, c)| {
                let text = arrow::compute::cast(c, &DataType::Utf8).map_err(|source| Error::Arrow {
                    context: format!("rule {}: column {}", rule.name, f.name()),
                    source,
                })?;
                Ok((f.name().clone(), text))
            })
            .collect::<Result<_>>()?;
        for i in 0..batch.num_rows() {
            table.push(
                cols.iter()
                    .map(|(name, c)| {
                        let a = c.as_string::<i32>();
                        (name.clone(), (!a.is_null(i)).then(|| a.value(i).to_string()))
                    })
                    .collect(),
            );
        }
    }
    Ok((sql, table))
}

/// The evidence of every row of every rule in `tables` (each rule's rows
/// as [`rule_table`] gives them), from published models only: two runs of
/// `evidence.sql`, one for the rules that name registrable domains
/// (boot_phone_home) and one for those that name host names, each over
/// all of those rules' rows at once, rather than a run per rule. The two
/// run at the same time when `together` (each over its own table of rows,
/// `hits_registrable` and `hits_named`).
pub(crate) async fn evidence_of(
    session: &QuerySession,
    queries: &BTreeMap<&'static str, Query>,
    tables: &[(&Rule, &RuleTable)],
    t: Thresholds,
    models: &BTreeMap<(String, String), (u64, u64)>,
    together: bool,
) -> Result<Vec<Vec<Evidence>>> {
    let mut evidence: Vec<Vec<Evidence>> =
        tables.iter().map(|(_, table)| (0..table.len()).map(|_| Evidence::default()).collect()).collect();
    let run = |registrable: bool| evidence_rows(session, queries, tables, t, registrable);
    let answers = if together {
        let (registrable, named) = tokio::join!(run(true), run(false));
        [registrable, named]
    } else {
        [run(true).await, run(false).await]
    };
    let published: HashSet<(&str, &str)> = models.keys().map(|(v, m)| (v.as_str(), m.as_str())).collect();
    let folding = std::time::Instant::now();
    let mut folded = 0usize;
    for answer in answers {
        let Some((at, rows)) = answer? else { continue };
        folded += rows.len();
        rows.each(|r| {
            let Some(e) = usize::try_from(r.int("row_id"))
                .ok()
                .and_then(|i| at.get(i))
                .and_then(|&(rule, row)| evidence.get_mut(rule)?.get_mut(row))
            else {
                return;
            };
            // Evidence from published models only: a vendor-wide finding
            // counts no device of a model below the thresholds.
            if !published.contains(&(r.str("vendor"), r.str("model"))) {
                return;
            }
            // (Read as borrowed text, copied only where a set or map does
            // not hold it yet: a row is a boot, and a device has many.)
            let (device, agent) = (r.str("device"), r.str("agent"));
            held(group(&mut e.firmware, r.str("os_version")), device, agent);
            for kv in r.str("consent").split(';').filter(|kv| !kv.is_empty()) {
                held(group(&mut e.consent, kv), device, agent);
            }
            held(group(&mut e.sources, r.str("source")), device, agent);
            held((&mut e.devices, &mut e.agents), device, agent);
            let (first, last) = (r.int("first_ts"), r.int("last_ts"));
            e.first_ts = Some(e.first_ts.map_or(first, |x| x.min(first)));
            e.last_ts = Some(e.last_ts.map_or(last, |x| x.max(last)));
            let s = r.float("first_s");
            if s.is_finite() {
                e.first_s.push(s.max(0.0));
            }
        });
    }
    tracing::debug!(rows = folded, elapsed_ms = folding.elapsed().as_millis() as u64, "The rules' evidence read");
    Ok(evidence)
}

/// The devices and agents of the group `key` of `groups`, added when new.
fn group<'m>(groups: &'m mut HashMap<String, (HashSet<String>, HashSet<String>)>, key: &str) -> Devices<'m> {
    if !groups.contains_key(key) {
        groups.insert(key.to_string(), Default::default());
    }
    let (devices, agents) = groups.get_mut(key).expect("inserted above");
    (devices, agents)
}

/// A group's devices and agents.
type Devices<'m> = (&'m mut HashSet<String>, &'m mut HashSet<String>);

/// Adds `device` and `agent` to a group's sets, copying each only when new.
fn held((devices, agents): Devices<'_>, device: &str, agent: &str) {
    if !devices.contains(device) {
        devices.insert(device.to_string());
    }
    if !agents.contains(agent) {
        agents.insert(agent.to_string());
    }
}

/// One run of `evidence.sql` over the rows of the rules of `tables` that
/// name registrable domains (`registrable`) or host names: where each of
/// its row ids points (rule, row) and its rows; none when no such rule
/// has a row.
async fn evidence_rows(
    session: &QuerySession,
    queries: &BTreeMap<&'static str, Query>,
    tables: &[(&Rule, &RuleTable)],
    t: Thresholds,
    registrable: bool,
) -> Result<Option<(Vec<(usize, usize)>, Rows)>> {
    let get = |row: &BTreeMap<String, Option<String>>, c: &str| row.get(c).cloned().flatten();
    // These rules' rows, numbered across them: row_id → (rule, row).
    let mut at: Vec<(usize, usize)> = Vec::new();
    // The columns of `hits` after row_id: vendor, model, domain, consent_off.
    let mut columns: [Vec<Option<String>>; 4] = Default::default();
    for (r, (rule, table)) in tables.iter().enumerate() {
        if (rule.name == "boot_phone_home") != registrable {
            continue;
        }
        let has_model = rule.columns.iter().any(|c| c == "model");
        for (i, row) in table.iter().enumerate() {
            at.push((r, i));
            let model = if has_model { get(row, "model") } else { None };
            for (column, value) in
                columns.iter_mut().zip([get(row, "vendor"), model, get(row, "domain"), get(row, "consent_key")])
            {
                column.push(value);
            }
        }
    }
    if at.is_empty() {
        return Ok(None);
    }
    let hits_failed = |source| Error::Arrow { context: "the rules' rows as a table of hits".into(), source };
    let hits = RecordBatch::try_new(
        hits_schema(),
        [Arc::new(arrow::array::Int64Array::from_iter_values(0..at.len() as i64)) as ArrayRef]
            .into_iter()
            .chain(columns.iter().map(|c| Arc::new(c.iter().cloned().collect::<StringArray>()) as ArrayRef))
            .collect(),
    )
    .map_err(hits_failed)?;
    let name = if registrable { "hits_registrable" } else { "hits_named" };
    let ctx = session.context();
    let _ = ctx.deregister_table(name);
    ctx.register_batch(name, hits).map_err(leakwatch_query::Error::from)?;
    // boot_phone_home names registrable domains, the other rules host
    // names; each names a destination no name was seen for by its key.
    let unnamed = "unnamed_destination(f.transport, f.dst_ip, CAST(f.dst_port AS VARCHAR))";
    let destination = if registrable {
        format!("CASE WHEN f.domain IS NULL THEN {unnamed} ELSE registrable_domain(f.domain) END")
    } else {
        format!("CASE WHEN f.domain IS NULL THEN {unnamed} ELSE f.domain END")
    };
    // The table is deregistered below before an error here is returned.
    let rows =
        async { named(queries, "evidence")?.run(session, t, &[("destination", &destination), ("hits", name)]).await }
            .await;
    let _ = ctx.deregister_table(name);
    Ok(Some((at, rows?)))
}

/// The findings of `rule`'s rows (`table`, from its `sql`) with their
/// `evidence`: those whose devices and volunteers pass the thresholds.
#[allow(clippy::too_many_arguments)]
fn rule_findings(
    rule: &Rule,
    sql: &str,
    table: &RuleTable,
    evidence: Vec<Evidence>,
    t: Thresholds,
    models: &BTreeMap<(String, String), (u64, u64)>,
    vendor_devices: &HashMap<String, u64>,
    model_dests: &BTreeMap<(String, String), Vec<ModelDestination>>,
) -> Vec<Finding> {
    let has = |c: &str| rule.columns.iter().any(|x| x == c);
    let get = |row: &BTreeMap<String, Option<String>>, c: &str| row.get(c).cloned().flatten();
    let params: Vec<(String, f64)> = rule.params.iter().map(|p| (p.name.clone(), p.default)).collect();
    let command = std::iter::once(format!("leakwatch sql --rule {}", rule.name))
        .chain(params.iter().map(|(n, v)| format!("--param {n}={v}")))
        .collect::<Vec<_>>()
        .join(" ");
    let mut out = Vec::new();
    for (row, mut e) in table.iter().zip(evidence) {
        let vendor = get(row, "vendor").unwrap_or_default();
        let model = if has("model") { get(row, "model").unwrap_or_default() } else { String::new() };
        let domain = get(row, "domain").unwrap_or_default();
        let (devices, volunteers) = (e.devices.len() as u64, e.agents.len() as u64);
        if !t.allows(devices, volunteers) {
            continue;
        }
        let population = if model.is_empty() {
            vendor_devices.get(&vendor).copied().unwrap_or(0)
        } else {
            match models.get(&(vendor.clone(), model.clone())) {
                Some(&(n, _)) => n,
                None => continue,
            }
        };
        let destination = destination_of(&domain);
        let published_models: Vec<String> = if model.is_empty() {
            models
                .keys()
                .filter(|(v, m)| {
                    v == &vendor
                        && model_dests
                            .get(&(v.clone(), m.clone()))
                            .is_some_and(|ds| ds.iter().any(|d| d.destination == destination))
                })
                .map(|(_, m)| m.clone())
                .collect()
        } else {
            Vec::new()
        };
        let mut versions: Vec<String> = e
            .firmware
            .iter()
            .filter(|(_, (d, a))| t.allows(d.len() as u64, a.len() as u64))
            .map(|(v, _)| v.clone())
            .collect();
        versions.sort();
        let (consent, sources) = (publishable(&e.consent, t), publishable(&e.sources, t));
        e.first_s.sort_by(f64::total_cmp);
        let median = (!e.first_s.is_empty()).then(|| quantile(&e.first_s, 0.5));
        let first_contact: Vec<Quantile> = if e.first_s.is_empty() {
            Vec::new()
        } else {
            (1..=19).map(|i| i as f64 / 20.0).map(|q| Quantile { share: q, seconds: quantile(&e.first_s, q) }).collect()
        };
        let mut numbers: Vec<(String, String)> = rule
            .columns
            .iter()
            // Only numbers over the row's own devices, whose group passed
            // the thresholds above; no other of the rule's columns.
            .filter(|c| rule.public.contains(c))
            .filter_map(|c| get(row, c).map(|v| (c.clone(), v)))
            .collect();
        for c in ["before", "after"] {
            if let Some(v) = get(row, c)
                && versions.contains(&v)
            {
                numbers.push((c.to_string(), v));
            }
        }
        let share = devices as f64 / population.max(1) as f64;
        let claim = claim(rule, row, &vendor, &model, &domain, share, devices, median, &versions);
        out.push(Finding {
            id: finding_id(&rule.name, &vendor, &model, &domain),
            rule: rule.name.clone(),
            rule_title: rule.title.clone(),
            vendor,
            model,
            models: published_models,
            domain,
            destination,
            claim,
            firmware_min: versions.first().cloned(),
            firmware_max: versions.last().cloned(),
            devices,
            volunteers,
            population_devices: population,
            share,
            median_s_after_boot: median,
            first_contact,
            consent,
            sources,
            first_seen: e.first_ts.map(day).unwrap_or_default(),
            last_seen: e.last_ts.map(day).unwrap_or_default(),
            numbers,
            params: params.clone(),
            sql: sql.to_string(),
            command: command.clone(),
            published: String::new(),
            updated: String::new(),
        });
    }
    out
}

fn percent(share: f64) -> String {
    format!("{:.0} %", share * 100.0)
}

/// The finding in one sentence a non-expert can read.
#[allow(clippy::too_many_arguments)]
fn claim(
    rule: &Rule,
    row: &BTreeMap<String, Option<String>>,
    vendor: &str,
    model: &str,
    domain: &str,
    share: f64,
    devices: u64,
    median: Option<f64>,
    versions: &[String],
) -> String {
    let get = |c: &str| row.get(c).cloned().flatten().unwrap_or_default();
    let param = |n: &str| rule.params.iter().find(|p| p.name == n).map_or(0.0, |p| p.default);
    let who = format!("{vendor} {model}");
    match rule.name.as_str() {
        "boot_phone_home" => format!(
            "{} of {who} devices contact {domain} within {} seconds of booting{}.",
            percent(share),
            param("window_s"),
            median.map_or(String::new(), |m| format!(" (median {m:.1} s after boot)"))
        ),
        "consent_off_traffic" => format!(
            "{who} devices whose owners turned {} off still contact {domain} ({devices} such devices).",
            get("consent_key"),
        ),
        "new_after_update" => {
            let after = get("after");
            if versions.contains(&after) {
                format!("{who} devices contact {domain} only since firmware {after}.")
            } else {
                format!("{who} devices contact {domain} only since a firmware update.")
            }
        }
        "model_exclusive" => format!("Only {vendor} devices contact {domain}; no other vendor's devices do."),
        "heavy_upload" => format!("{who} devices send {}× more bytes to {domain} than they receive.", get("ratio")),
        // Not the ports: a port may be one device's.
        "outside_mud" => format!("{who} devices contact {domain}, which their vendor's MUD file does not allow."),
        "beaconing" => {
            format!("{who} devices contact {domain} at a steady rhythm, about every {} seconds.", get("interval_s"))
        }
        _ => format!("{}: {who} and {domain}.", rule.title),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A published finding of `boot_phone_home`, for tests of what is made
    /// of findings.
    pub(crate) fn finding(vendor: &str, model: &str, domain: &str) -> Finding {
        Finding {
            id: finding_id("boot_phone_home", vendor, model, domain),
            rule: "boot_phone_home".into(),
            rule_title: "Contacts at boot".into(),
            vendor: vendor.into(),
            model: model.into(),
            models: Vec::new(),
            domain: domain.into(),
            destination: destination_of(domain),
            claim: format!("100 % of {vendor} {model} devices contact {domain} within 60 seconds of booting."),
            firmware_min: None,
            firmware_max: None,
            devices: 6,
            volunteers: 3,
            population_devices: 6,
            share: 1.0,
            median_s_after_boot: Some(4.0),
            first_contact: Vec::new(),
            consent: Vec::new(),
            sources: Vec::new(),
            first_seen: "2026-01-01".into(),
            last_seen: "2026-01-01".into(),
            numbers: Vec::new(),
            params: Vec::new(),
            sql: String::new(),
            command: String::new(),
            published: String::new(),
            updated: String::new(),
        }
    }

    #[test]
    fn an_unnamed_destination_is_its_own_destination() {
        assert_eq!(destination_of("91.212.186.0/24 (unnamed)"), "91.212.186.0/24 (unnamed)");
        assert_eq!(destination_of("tcp/8886 (unnamed)"), "tcp/8886 (unnamed)");
        assert_eq!(destination_of("api.account.xiaomi.com"), "xiaomi.com");
    }

    #[test]
    fn every_rule_has_a_strength() {
        for rule in builtin_rules() {
            assert!(strength(&rule.name) < STRENGTH.len(), "{} is missing from STRENGTH", rule.name);
        }
    }

    /// A source (or consent value) is named only with a group of devices
    /// and volunteers that passes the thresholds: one Pi-hole household
    /// among many capturing volunteers is not told apart.
    #[test]
    fn only_values_held_by_a_publishable_group_are_named() {
        let group = |devices: usize, agents: usize| {
            let d = (0..devices).map(|i| format!("d{i}")).collect::<HashSet<_>>();
            let a = (0..agents).map(|i| format!("a{i}")).collect::<HashSet<_>>();
            (d, a)
        };
        let groups = HashMap::from([
            ("capture".to_string(), group(8, 4)),
            ("pihole".to_string(), group(1, 1)),
            ("zeek".to_string(), group(5, 1)),
            ("ios_privacy".to_string(), group(5, 2)),
        ]);
        let t = Thresholds::new(5, 2).expect("thresholds");
        let named: Vec<(String, u64)> = publishable(&groups, t).into_iter().map(|c| (c.value, c.devices)).collect();
        assert_eq!(named, [("capture".to_string(), 8), ("ios_privacy".to_string(), 5)]);
    }

    #[test]
    fn thresholds_below_two_are_refused() {
        let e = Thresholds::new(1, 3).expect_err("k = 1");
        assert!(e.to_string().contains("--public-min-devices: 1 is below 2"), "{e}");
        assert!(Thresholds::new(5, 0).is_err());
        let t = Thresholds::new(2, 2).expect("k = m = 2");
        assert!(t.allows(2, 2) && !t.allows(1, 2) && !t.allows(2, 1));
    }

    #[test]
    fn quantiles_interpolate() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(quantile(&v, 0.5), 2.5);
        assert_eq!(quantile(&v, 0.0), 1.0);
        assert_eq!(quantile(&v, 1.0), 4.0);
        assert!(quantile(&[], 0.5).is_nan());
    }

    #[test]
    fn finding_ids_are_stable_and_distinct() {
        assert_eq!(finding_id("r", "v", "m", "d"), finding_id("r", "v", "m", "d"));
        assert_ne!(finding_id("r", "v", "m", "d"), finding_id("r", "vm", "", "d"));
        assert_eq!(finding_id("r", "v", "m", "d").len(), 12);
    }
}

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
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema};
use leakwatch_query::QuerySession;
use leakwatch_query::rules::{Rule, builtin_rules};
use serde::Serialize;
use sha2::{Digest, Sha256};

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

    fn having(&self, devices: &str, volunteers: &str) -> String {
        format!(
            "HAVING count(DISTINCT {devices}) >= {} AND count(DISTINCT {volunteers}) >= {}",
            self.min_devices, self.min_volunteers
        )
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
    /// Transport payload bytes sent.
    pub bytes_out: i64,
    /// Transport payload bytes received.
    pub bytes_in: i64,
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
    /// Bytes sent.
    pub bytes_out: i64,
    /// Bytes received.
    pub bytes_in: i64,
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
}

impl Snapshot {
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

/// Registrable domain of a host name, or the name itself.
pub fn destination_of(host: &str) -> String {
    leakwatch_query::registrable_domain(host).unwrap_or_else(|| host.to_string())
}

/// Flows with a destination name, and the registrable domain it belongs to.
const DEST_FLOWS: &str = "(SELECT vendor, model, os_version, device_pseudonym, agent_id, boot_pseudonym, domain, \
     coalesce(registrable_domain(domain), domain) AS destination, seconds_since_boot, window_start, bytes_out, bytes_in \
     FROM flows WHERE domain IS NOT NULL AND domain <> '')";

/// Totals of the per-boot decimal sums (which no number of records can
/// wrap), as integers saturating at the largest one.
const SATURATED_OUT: &str = "CAST(least(sum(bytes_out), 9223372036854775807) AS BIGINT) AS bytes_out";
const SATURATED_IN: &str = "CAST(least(sum(bytes_in), 9223372036854775807) AS BIGINT) AS bytes_in";

/// Typed access to one row of a query result.
struct Row<'a> {
    cols: &'a [ArrayRef],
    i: usize,
}

impl Row<'_> {
    fn text(&self, c: usize) -> String {
        self.opt_text(c).unwrap_or_default()
    }

    fn opt_text(&self, c: usize) -> Option<String> {
        let a = self.cols[c].as_string::<i32>();
        (!a.is_null(self.i)).then(|| a.value(self.i).to_string())
    }

    fn float(&self, c: usize) -> f64 {
        let a = self.cols[c].as_primitive::<Float64Type>();
        if a.is_null(self.i) { f64::NAN } else { a.value(self.i) }
    }

    fn int(&self, c: usize) -> i64 {
        let a = self.cols[c].as_primitive::<Int64Type>();
        if a.is_null(self.i) { 0 } else { a.value(self.i) }
    }

    fn count(&self, c: usize) -> u64 {
        u64::try_from(self.int(c)).unwrap_or(0)
    }
}

/// Calls `f` for each row of `batches`, the columns `spec` cast to the
/// given types (Utf8, Float64 or Int64; timestamps become seconds).
fn each_row(batches: &[RecordBatch], spec: &[(&str, DataType)], mut f: impl FnMut(Row<'_>)) -> Result<()> {
    for batch in batches {
        let mut cols = Vec::with_capacity(spec.len());
        for (name, ty) in spec {
            let col = batch
                .column_by_name(name)
                .ok_or_else(|| Error::Storage(format!("dashboard query has no column {name}")))?;
            let col = match (col.data_type(), ty) {
                (DataType::Timestamp(..), DataType::Int64) => {
                    let secs =
                        arrow::compute::cast(col, &DataType::Timestamp(arrow::datatypes::TimeUnit::Second, None))
                            .map_err(|e| Error::Storage(format!("dashboard column {name}: {e}")))?;
                    arrow::compute::cast(&secs, ty)
                }
                _ => arrow::compute::cast(col, ty),
            }
            .map_err(|e| Error::Storage(format!("dashboard column {name}: {e}")))?;
            cols.push(col);
        }
        for i in 0..batch.num_rows() {
            f(Row { cols: &cols, i });
        }
    }
    Ok(())
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

/// Runs one dashboard query, logging its time (`LEAKWATCH_LOG=leakwatch_collector::dashboard=debug`).
async fn query(session: &QuerySession, what: &str, sql: &str) -> Result<Vec<RecordBatch>> {
    let started = std::time::Instant::now();
    let rows = session.sql(sql).await;
    tracing::debug!(query = what, elapsed_ms = started.elapsed().as_millis() as u64, "Dashboard query");
    Ok(rows?)
}

const TEXT: DataType = DataType::Utf8;
const FLOAT: DataType = DataType::Float64;
const INT: DataType = DataType::Int64;

/// Computes a snapshot over `session`'s flows.
pub async fn compute(session: &QuerySession, thresholds: Thresholds) -> Result<Snapshot> {
    let t = thresholds;
    let mut snapshot = Snapshot {
        refreshed_at: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        thresholds: t,
        ..Snapshot::default()
    };

    // Populations: models and vendors.
    let models_sql = format!(
        "SELECT vendor, model, count(DISTINCT device_pseudonym) AS devices, count(DISTINCT agent_id) AS volunteers \
         FROM flows GROUP BY vendor, model {}",
        t.having("device_pseudonym", "agent_id")
    );
    let mut models: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
    each_row(
        &query(session, "models", &models_sql).await?,
        &[("vendor", TEXT), ("model", TEXT), ("devices", INT), ("volunteers", INT)],
        |r| {
            if t.allows(r.count(2), r.count(3)) {
                models.insert((r.text(0), r.text(1)), (r.count(2), r.count(3)));
            }
        },
    )?;
    // A vendor's devices as the public may count them: those of its
    // published models. Counting all of its devices would publish the
    // devices of models below the thresholds (as the difference to the sum
    // of its published models).
    let mut vendor_devices: HashMap<String, u64> = HashMap::new();
    for ((vendor, _), &(devices, _)) in &models {
        *vendor_devices.entry(vendor.clone()).or_default() += devices;
    }

    // What each model contacts, and when after boot.
    let model_dest_sql = format!(
        "SELECT vendor, model, destination, count(DISTINCT device) AS devices, count(DISTINCT agent) AS volunteers, \
                percentile_cont(0.25) WITHIN GROUP (ORDER BY first_s) AS p25_s, median(first_s) AS median_s, \
                percentile_cont(0.75) WITHIN GROUP (ORDER BY first_s) AS p75_s, \
                {SATURATED_OUT}, {SATURATED_IN} \
         FROM (SELECT vendor, model, destination, boot_pseudonym, min(device_pseudonym) AS device, min(agent_id) AS agent, \
                      min(seconds_since_boot) AS first_s, sum(CAST(bytes_out AS DECIMAL(38, 0))) AS bytes_out, \
                      sum(CAST(bytes_in AS DECIMAL(38, 0))) AS bytes_in \
               FROM {DEST_FLOWS} GROUP BY vendor, model, destination, boot_pseudonym) \
         GROUP BY vendor, model, destination {}",
        t.having("device", "agent")
    );
    let hosts_sql = format!(
        "SELECT vendor, model, destination, domain FROM {DEST_FLOWS} GROUP BY vendor, model, destination, domain {}",
        t.having("device_pseudonym", "agent_id")
    );
    let mut hosts: HashMap<(String, String, String), Vec<String>> = HashMap::new();
    each_row(
        &query(session, "model hosts", &hosts_sql).await?,
        &[("vendor", TEXT), ("model", TEXT), ("destination", TEXT), ("domain", TEXT)],
        |r| {
            hosts.entry((r.text(0), r.text(1), r.text(2))).or_default().push(r.text(3));
        },
    )?;
    let mut model_dests: BTreeMap<(String, String), Vec<ModelDestination>> = BTreeMap::new();
    each_row(
        &query(session, "model destinations", &model_dest_sql).await?,
        &[
            ("vendor", TEXT),
            ("model", TEXT),
            ("destination", TEXT),
            ("devices", INT),
            ("volunteers", INT),
            ("p25_s", FLOAT),
            ("median_s", FLOAT),
            ("p75_s", FLOAT),
            ("bytes_out", INT),
            ("bytes_in", INT),
        ],
        |r| {
            let key = (r.text(0), r.text(1));
            let (Some(&(model_devices, _)), true) = (models.get(&key), t.allows(r.count(3), r.count(4))) else {
                return;
            };
            let mut host_list = hosts.remove(&(key.0.clone(), key.1.clone(), r.text(2))).unwrap_or_default();
            host_list.sort();
            model_dests.entry(key).or_default().push(ModelDestination {
                destination: r.text(2),
                hosts: host_list,
                devices: r.count(3),
                volunteers: r.count(4),
                share: r.count(3) as f64 / model_devices.max(1) as f64,
                p25_s: r.float(5),
                median_s: r.float(6),
                p75_s: r.float(7),
                bytes_out: r.int(8),
                bytes_in: r.int(9),
            });
        },
    )?;

    // Firmware versions and what each contacts.
    let fw_sql = format!(
        "SELECT vendor, model, os_version, count(DISTINCT device_pseudonym) AS devices, min(window_start) AS first_seen \
         FROM flows GROUP BY vendor, model, os_version {}",
        t.having("device_pseudonym", "agent_id")
    );
    // (vendor, model) -> (first seen, firmware version, devices)
    type ModelKey = (String, String);
    let mut firmware: BTreeMap<ModelKey, Vec<(i64, String, u64)>> = BTreeMap::new();
    each_row(
        &query(session, "firmware", &fw_sql).await?,
        &[("vendor", TEXT), ("model", TEXT), ("os_version", TEXT), ("devices", INT), ("first_seen", INT)],
        |r| {
            firmware.entry((r.text(0), r.text(1))).or_default().push((r.int(4), r.text(2), r.count(3)));
        },
    )?;
    let fw_dest_sql = format!(
        "SELECT vendor, model, os_version, destination FROM {DEST_FLOWS} GROUP BY vendor, model, os_version, destination {}",
        t.having("device_pseudonym", "agent_id")
    );
    let mut fw_dests: HashMap<(String, String, String), BTreeSet<String>> = HashMap::new();
    each_row(
        &query(session, "firmware destinations", &fw_dest_sql).await?,
        &[("vendor", TEXT), ("model", TEXT), ("os_version", TEXT), ("destination", TEXT)],
        |r| {
            fw_dests.entry((r.text(0), r.text(1), r.text(2))).or_default().insert(r.text(3));
        },
    )?;

    // Destinations: totals and devices per day.
    let dest_sql = format!(
        "SELECT destination, count(DISTINCT device_pseudonym) AS devices, count(DISTINCT agent_id) AS volunteers \
         FROM {DEST_FLOWS} GROUP BY destination {}",
        t.having("device_pseudonym", "agent_id")
    );
    let mut destinations: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    each_row(
        &query(session, "destinations", &dest_sql).await?,
        &[("destination", TEXT), ("devices", INT), ("volunteers", INT)],
        |r| {
            if t.allows(r.count(1), r.count(2)) {
                destinations.insert(r.text(0), (r.count(1), r.count(2)));
            }
        },
    )?;
    let trend_sql = format!(
        "SELECT destination, date_trunc('day', window_start) AS day, count(DISTINCT device_pseudonym) AS devices, \
                count(DISTINCT agent_id) AS volunteers \
         FROM {DEST_FLOWS} GROUP BY destination, date_trunc('day', window_start) {}",
        t.having("device_pseudonym", "agent_id")
    );
    let mut trends: HashMap<String, Vec<(i64, u64)>> = HashMap::new();
    each_row(
        &query(session, "destination trend", &trend_sql).await?,
        &[("destination", TEXT), ("day", INT), ("devices", INT), ("volunteers", INT)],
        |r| {
            if t.allows(r.count(2), r.count(3)) {
                trends.entry(r.text(0)).or_default().push((r.int(1), r.count(2)));
            }
        },
    )?;

    // Findings.
    let mut findings = Vec::new();
    for rule in builtin_rules() {
        let found = rule_findings(session, &rule, t, &models, &vendor_devices, &model_dests).await?;
        findings.extend(found);
    }
    findings.sort_by(|a, b| {
        b.last_seen
            .cmp(&a.last_seen)
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
            ModelPage { summary, destinations: dests, firmware: steps, findings: ids },
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
    Ok(snapshot)
}

/// Evidence of one rule's rows: per (row, boot) the device, agent,
/// firmware, consent, first and last day and seconds to first contact.
fn evidence_sql(rule: &Rule) -> String {
    let dest = if rule.name == "boot_phone_home" { "registrable_domain(f.domain)" } else { "f.domain" };
    format!(
        "SELECT h.row_id, f.device_pseudonym AS device, f.agent_id AS agent, f.boot_pseudonym AS boot, \
                min(f.os_version) AS os_version, min(f.consent) AS consent, \
                min(f.window_start) AS first_ts, max(f.window_start) AS last_ts, min(f.seconds_since_boot) AS first_s, \
                f.vendor, min(f.model) AS model \
         FROM flows f JOIN hits h ON f.vendor = h.vendor AND {dest} = h.domain \
         WHERE (h.model IS NULL OR f.model = h.model) \
           AND (h.consent_off IS NULL OR strpos(concat(';', f.consent, ';'), concat(';', h.consent_off, '=off;')) > 0) \
         GROUP BY h.row_id, f.device_pseudonym, f.agent_id, f.boot_pseudonym, f.vendor"
    )
}

#[derive(Default)]
struct Evidence {
    devices: HashSet<String>,
    agents: HashSet<String>,
    first_s: Vec<f64>,
    first_ts: Option<i64>,
    last_ts: Option<i64>,
    firmware: HashMap<String, (HashSet<String>, HashSet<String>)>,
    consent: HashMap<String, (HashSet<String>, HashSet<String>)>,
}

async fn rule_findings(
    session: &QuerySession,
    rule: &Rule,
    t: Thresholds,
    models: &BTreeMap<(String, String), (u64, u64)>,
    vendor_devices: &HashMap<String, u64>,
    model_dests: &BTreeMap<(String, String), Vec<ModelDestination>>,
) -> Result<Vec<Finding>> {
    let sql = rule.render(&BTreeMap::new())?;
    let rows = query(session, &rule.name, &sql).await?;
    let has = |c: &str| rule.columns.iter().any(|x| x == c);
    // The rule's rows as text, by column name.
    let mut table: Vec<BTreeMap<String, Option<String>>> = Vec::new();
    for batch in &rows {
        let cols: Vec<(String, ArrayRef)> = batch
            .schema()
            .fields()
            .iter()
            .zip(batch.columns())
            .map(|(f, c)| {
                let text = arrow::compute::cast(c, &DataType::Utf8).map_err(|e| Error::Storage(e.to_string()))?;
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
    if table.is_empty() {
        return Ok(Vec::new());
    }
    let get = |row: &BTreeMap<String, Option<String>>, c: &str| row.get(c).cloned().flatten();
    let hits = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("row_id", DataType::Int64, false),
            Field::new("vendor", DataType::Utf8, true),
            Field::new("model", DataType::Utf8, true),
            Field::new("domain", DataType::Utf8, true),
            Field::new("consent_off", DataType::Utf8, true),
        ])),
        vec![
            Arc::new(arrow::array::Int64Array::from_iter_values(0..table.len() as i64)),
            Arc::new(table.iter().map(|r| get(r, "vendor")).collect::<StringArray>()),
            Arc::new(table.iter().map(|r| if has("model") { get(r, "model") } else { None }).collect::<StringArray>()),
            Arc::new(table.iter().map(|r| get(r, "domain")).collect::<StringArray>()),
            Arc::new(table.iter().map(|r| get(r, "consent_key")).collect::<StringArray>()),
        ],
    )
    .map_err(|e| Error::Storage(e.to_string()))?;
    let ctx = session.context();
    let _ = ctx.deregister_table("hits");
    ctx.register_batch("hits", hits).map_err(|e| Error::Storage(e.to_string()))?;
    let evidence_rows = query(session, "evidence", &evidence_sql(rule)).await;
    let _ = ctx.deregister_table("hits");
    let mut evidence: Vec<Evidence> = (0..table.len()).map(|_| Evidence::default()).collect();
    each_row(
        &evidence_rows?,
        &[
            ("row_id", INT),
            ("device", TEXT),
            ("agent", TEXT),
            ("os_version", TEXT),
            ("consent", TEXT),
            ("first_ts", INT),
            ("last_ts", INT),
            ("first_s", FLOAT),
            ("vendor", TEXT),
            ("model", TEXT),
        ],
        |r| {
            let Some(e) = usize::try_from(r.int(0)).ok().and_then(|i| evidence.get_mut(i)) else { return };
            // Evidence from published models only: a vendor-wide finding
            // counts no device of a model below the thresholds.
            if !models.contains_key(&(r.text(8), r.text(9))) {
                return;
            }
            let (device, agent) = (r.text(1), r.text(2));
            let fw = e.firmware.entry(r.text(3)).or_default();
            fw.0.insert(device.clone());
            fw.1.insert(agent.clone());
            let consent = r.text(4);
            for kv in consent.split(';').filter(|kv| !kv.is_empty()) {
                let c = e.consent.entry(kv.to_string()).or_default();
                c.0.insert(device.clone());
                c.1.insert(agent.clone());
            }
            e.devices.insert(device);
            e.agents.insert(agent);
            e.first_ts = Some(e.first_ts.map_or(r.int(5), |x| x.min(r.int(5))));
            e.last_ts = Some(e.last_ts.map_or(r.int(6), |x| x.max(r.int(6))));
            let s = r.float(7);
            if s.is_finite() {
                e.first_s.push(s.max(0.0));
            }
        },
    )?;

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
        let mut consent: Vec<Count> = e
            .consent
            .iter()
            .filter(|(_, (d, a))| t.allows(d.len() as u64, a.len() as u64))
            .map(|(v, (d, _))| Count { value: v.clone(), devices: d.len() as u64 })
            .collect();
        consent.sort_by(|a, b| b.devices.cmp(&a.devices).then(a.value.cmp(&b.value)));
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
            first_seen: e.first_ts.map(day).unwrap_or_default(),
            last_seen: e.last_ts.map(day).unwrap_or_default(),
            numbers,
            params: params.clone(),
            sql: sql.clone(),
            command: command.clone(),
        });
    }
    Ok(out)
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
        "beaconing" => {
            format!("{who} devices contact {domain} at a steady rhythm, about every {} seconds.", get("interval_s"))
        }
        _ => format!("{}: {who} and {domain}.", rule.title),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

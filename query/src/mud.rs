//! Vendors' MUD files (RFC 8520) read as the allow-lists the rule
//! `outside_mud` holds a model's traffic against.
//!
//! A MUD file comes in two shapes: the RFC's (`ietf-access-control-list:acls`)
//! and the older one MUDgee and others wrote (`ietf-access-control-list:access-lists`).
//! Both are read; what the rule needs is each from-device access control
//! entry that accepts traffic: a destination name (`ietf-acldns:dst-dnsname`),
//! a network, or neither (any destination), with its protocol and
//! destination ports. Entries about the local network, controllers or
//! Ethernet frames allow no destination on the internet and are kept out of
//! the list. A match this reader cannot evaluate (an IP header field, a TCP
//! flag, a port operator other than `eq`, `lte`, `gte` or a range) refuses
//! the whole file, naming the node: an allow-list read in part would call
//! allowed traffic a breach.
//!
//! [`MudLibrary`] keeps the loaded files in a directory of the collector's
//! data; every query session holds them as the table `mud_allowed`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Largest MUD file `leakwatch mud load` reads, bytes (RFC 8520's are
/// kilobytes; the Echo's sample, 29 ACEs, is 14 kB).
pub const MAX_MUD_BYTES: u64 = 16 << 20;

/// A MUD file refused: the node (`/ietf-access-control-list:acls/acl[name='x']/...`)
/// and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct MudError {
    /// The offending node, as a data path.
    pub path: String,
    /// What is wrong with it.
    pub reason: String,
}

fn refuse(path: &str, reason: impl Into<String>) -> MudError {
    MudError { path: if path.is_empty() { "/".into() } else { path.into() }, reason: reason.into() }
}

/// The two shapes a MUD file comes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Shape {
    /// RFC 8520: `ietf-access-control-list:acls`.
    Rfc8520,
    /// The older draft's `ietf-access-control-list:access-lists` (MUDgee).
    AccessLists,
}

/// One accepted from-device entry: what it lets the device reach.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allowed {
    /// `acl/ace` names.
    pub ace: String,
    /// The destination name, lower case, no final dot.
    pub dnsname: Option<String>,
    /// The destination network (`203.0.113.0/24`).
    pub network: Option<String>,
    /// IP protocol number (6 TCP, 17 UDP).
    pub protocol: Option<u8>,
    /// Destination ports, lowest and highest.
    pub ports: Option<(u16, u16)>,
}

/// What a MUD file allows a device to reach.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MudPolicy {
    /// `mud-url`.
    pub mud_url: String,
    /// `mfg-name`, when given.
    pub mfg_name: Option<String>,
    /// `model-name`, when given.
    pub model_name: Option<String>,
    /// Which shape it came in.
    pub shape: Shape,
    /// Its accepted from-device entries.
    pub allowed: Vec<Allowed>,
}

fn object<'a>(v: &'a Value, path: &str) -> Result<&'a Map<String, Value>, MudError> {
    v.as_object().ok_or_else(|| refuse(path, format!("expected an object, found {}", kind(v))))
}

fn array<'a>(v: &'a Value, path: &str) -> Result<&'a Vec<Value>, MudError> {
    v.as_array().ok_or_else(|| refuse(path, format!("expected a list, found {}", kind(v))))
}

fn text<'a>(v: &'a Value, path: &str) -> Result<&'a str, MudError> {
    v.as_str().ok_or_else(|| refuse(path, format!("expected text, found {}", kind(v))))
}

fn number(v: &Value, path: &str, max: u64) -> Result<u64, MudError> {
    let n = v.as_u64().or_else(|| v.as_str().and_then(|s| s.parse().ok()));
    n.filter(|n| *n <= max).ok_or_else(|| refuse(path, format!("expected a number up to {max}, found {v}")))
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "text",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Keys of `map` not in `known` are refused at `path/key`.
fn only(map: &Map<String, Value>, path: &str, known: &[&str], what: &str) -> Result<(), MudError> {
    match map.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => {
            Err(refuse(&format!("{path}/{k}"), format!("{what} not supported here (supported: {})", known.join(", "))))
        }
        None => Ok(()),
    }
}

/// A list entry's name, for the path of its children.
fn named(list: &str, entry: &Value, i: usize) -> String {
    match entry.get("name").and_then(Value::as_str) {
        Some(name) => format!("{list}[name='{name}']"),
        None => format!("{list}[{}]", i + 1),
    }
}

/// Destination ports of a `destination-port` node.
fn ports(v: &Value, path: &str) -> Result<(u16, u16), MudError> {
    let m = object(v, path)?;
    only(m, path, &["operator", "port", "lower-port", "upper-port"], "a port match")?;
    let port = |key: &str| -> Result<u16, MudError> {
        let node = m.get(key).ok_or_else(|| refuse(&format!("{path}/{key}"), "missing"))?;
        Ok(number(node, &format!("{path}/{key}"), u16::MAX.into())? as u16)
    };
    if m.contains_key("lower-port") || m.contains_key("upper-port") {
        let (lo, hi) = (port("lower-port")?, port("upper-port")?);
        return if lo <= hi {
            Ok((lo, hi))
        } else {
            Err(refuse(path, format!("lower-port {lo} above upper-port {hi}")))
        };
    }
    let p = port("port")?;
    let operator = match m.get("operator") {
        Some(op) => text(op, &format!("{path}/operator"))?,
        None => "eq",
    };
    match operator {
        "eq" => Ok((p, p)),
        "lte" => Ok((0, p)),
        "gte" => Ok((p, u16::MAX)),
        other => Err(refuse(&format!("{path}/operator"), format!("operator {other:?} not supported (eq, lte, gte)"))),
    }
}

/// One entry's `matches`: the entry it allows, or None when it allows no
/// destination on the internet (local network, controllers, Ethernet).
fn matches(m: &Map<String, Value>, path: &str, ace: String) -> Result<Option<Allowed>, MudError> {
    only(m, path, &["ipv4", "ipv6", "tcp", "udp", "icmp", "eth", "ietf-mud:mud"], "a match")?;
    let mut allowed = Allowed { ace, dnsname: None, network: None, protocol: None, ports: None };
    let mut local = false;
    for (family, net_dst, net_src) in [
        ("ipv4", "destination-ipv4-network", "source-ipv4-network"),
        ("ipv6", "destination-ipv6-network", "source-ipv6-network"),
    ] {
        let Some(ip) = m.get(family) else { continue };
        let p = format!("{path}/{family}");
        let ip = object(ip, &p)?;
        only(
            ip,
            &p,
            &["protocol", "ietf-acldns:dst-dnsname", "ietf-acldns:src-dnsname", net_dst, net_src],
            "an IP match",
        )?;
        if let Some(v) = ip.get("protocol") {
            allowed.protocol = Some(number(v, &format!("{p}/protocol"), 255)? as u8);
        }
        if let Some(v) = ip.get("ietf-acldns:dst-dnsname") {
            let name = text(v, &format!("{p}/ietf-acldns:dst-dnsname"))?;
            allowed.dnsname = Some(name.trim_end_matches('.').to_ascii_lowercase());
        }
        if let Some(v) = ip.get(net_dst) {
            let net = text(v, &format!("{p}/{net_dst}"))?;
            let valid = net.split_once('/').is_some_and(|(a, len)| {
                a.parse::<std::net::IpAddr>().is_ok_and(|a| a.is_ipv4() == (family == "ipv4"))
                    && len.parse::<u8>().is_ok_and(|l| l <= if family == "ipv4" { 32 } else { 128 })
            });
            if !valid {
                return Err(refuse(&format!("{p}/{net_dst}"), format!("{net:?} is not an {family} network")));
            }
            allowed.network = Some(net.to_string());
        }
    }
    for transport in ["tcp", "udp"] {
        let Some(t) = m.get(transport) else { continue };
        let p = format!("{path}/{transport}");
        let t = object(t, &p)?;
        let known: &[&str] = if transport == "tcp" {
            &["source-port", "destination-port", "ietf-mud:direction-initiated"]
        } else {
            &["source-port", "destination-port"]
        };
        only(t, &p, known, "a port match")?;
        if let Some(source) = t.get("source-port") {
            // A device's own ports are its choice; only checked to be well formed.
            ports(source, &format!("{p}/source-port"))?;
        }
        if let Some(dst) = t.get("destination-port") {
            allowed.ports = Some(ports(dst, &format!("{p}/destination-port"))?);
        }
        allowed.protocol.get_or_insert(if transport == "tcp" { 6 } else { 17 });
    }
    if let Some(icmp) = m.get("icmp") {
        let p = format!("{path}/icmp");
        only(object(icmp, &p)?, &p, &["type", "code", "rest-of-header"], "an ICMP match")?;
        allowed.protocol.get_or_insert(1);
    }
    if let Some(eth) = m.get("eth") {
        object(eth, &format!("{path}/eth"))?;
        local = true;
    }
    if let Some(classes) = m.get("ietf-mud:mud") {
        let p = format!("{path}/ietf-mud:mud");
        only(
            object(classes, &p)?,
            &p,
            &["local-networks", "controller", "my-controller", "same-manufacturer", "manufacturer", "model"],
            "a MUD class",
        )?;
        local = true;
    }
    Ok((!local).then_some(allowed))
}

/// Reads a MUD file; nothing of a refused one is kept.
pub fn parse(bytes: &[u8]) -> Result<MudPolicy, MudError> {
    let root: Value = serde_json::from_slice(bytes).map_err(|e| refuse("/", format!("not JSON: {e}")))?;
    let root = object(&root, "/")?;
    let mud = root.get("ietf-mud:mud").ok_or_else(|| refuse("/ietf-mud:mud", "missing: not a MUD file (RFC 8520)"))?;
    let mud = object(mud, "/ietf-mud:mud")?;
    let (shape, container) = match (
        root.get("ietf-access-control-list:acls"),
        root.get("ietf-access-control-list:access-lists"),
    ) {
        (Some(c), None) => (Shape::Rfc8520, ("/ietf-access-control-list:acls", c)),
        (None, Some(c)) => (Shape::AccessLists, ("/ietf-access-control-list:access-lists", c)),
        (Some(_), Some(_)) => {
            return Err(refuse("/", "both ietf-access-control-list:acls and :access-lists: which one holds the ACLs?"));
        }
        (None, None) if mud.get("from-device-policy").is_none() => {
            (Shape::Rfc8520, ("/ietf-access-control-list:acls", &Value::Null))
        }
        (None, None) => {
            return Err(refuse(
                "/",
                "neither ietf-access-control-list:acls (RFC 8520) nor ietf-access-control-list:access-lists (the older shape) holds the ACLs its policies name",
            ));
        }
    };
    let text_of = |key: &str| mud.get(key).and_then(Value::as_str).map(str::to_string);
    let mud_url = text_of("mud-url").ok_or_else(|| refuse("/ietf-mud:mud/mud-url", "missing"))?;
    // The ACLs the from-device policy names.
    let mut from_device = Vec::new();
    if let Some(policy) = mud.get("from-device-policy") {
        let p = "/ietf-mud:mud/from-device-policy/access-lists/access-list";
        let list = policy.pointer("/access-lists/access-list").ok_or_else(|| refuse(p, "missing"))?;
        for (i, entry) in array(list, p)?.iter().enumerate() {
            from_device
                .push(text(entry.get("name").unwrap_or(&Value::Null), &format!("{p}[{}]/name", i + 1))?.to_string());
        }
    }
    let mut defined = Vec::new();
    let mut allowed = Vec::new();
    if !container.1.is_null() {
        let (base, c) = container;
        let acls = object(c, base)?.get("acl").ok_or_else(|| refuse(&format!("{base}/acl"), "missing"))?;
        for (i, acl) in array(acls, &format!("{base}/acl"))?.iter().enumerate() {
            let p = named(&format!("{base}/acl"), acl, i);
            let acl = object(acl, &p)?;
            only(acl, &p, &["name", "type", "aces"], "an ACL node")?;
            let name = text(acl.get("name").unwrap_or(&Value::Null), &format!("{p}/name"))?.to_string();
            let aces = match acl.get("aces") {
                Some(aces) => {
                    let ap = format!("{p}/aces");
                    let aces = object(aces, &ap)?;
                    only(aces, &ap, &["ace"], "an ACE list node")?;
                    match aces.get("ace") {
                        Some(list) => array(list, &format!("{ap}/ace"))?.clone(),
                        None => Vec::new(),
                    }
                }
                None => Vec::new(),
            };
            for (j, ace) in aces.iter().enumerate() {
                let ap = named(&format!("{p}/aces/ace"), ace, j);
                let ace_map = object(ace, &ap)?;
                only(ace_map, &ap, &["name", "matches", "actions"], "an ACE node")?;
                let ace_name = ace_map.get("name").and_then(Value::as_str).unwrap_or("").to_string();
                let m = match ace_map.get("matches") {
                    Some(m) => object(m, &format!("{ap}/matches"))?.clone(),
                    None => Map::new(),
                };
                let found = matches(&m, &format!("{ap}/matches"), format!("{name}/{ace_name}"))?;
                let forwarding =
                    ace_map.get("actions").and_then(|a| a.get("forwarding")).and_then(Value::as_str).unwrap_or("");
                let forwarding = forwarding.rsplit(':').next().unwrap_or(forwarding);
                if !matches!(forwarding, "accept" | "drop" | "reject") {
                    return Err(refuse(
                        &format!("{ap}/actions/forwarding"),
                        format!("{forwarding:?} is not accept, drop or reject"),
                    ));
                }
                if forwarding == "accept"
                    && from_device.contains(&name)
                    && let Some(a) = found
                {
                    allowed.push(a);
                }
            }
            defined.push(name);
        }
    }
    if let Some(missing) = from_device.iter().find(|n| !defined.contains(n)) {
        return Err(refuse(
            &format!("/ietf-mud:mud/from-device-policy/access-lists/access-list[name='{missing}']"),
            "names an ACL the file does not define",
        ));
    }
    Ok(MudPolicy { mud_url, mfg_name: text_of("mfg-name"), model_name: text_of("model-name"), shape, allowed })
}

/// A MUD file loaded for a model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadedMud {
    /// Vendor, as the flows name it.
    pub vendor: String,
    /// Model, as the flows name it.
    pub model: String,
    /// What it allows.
    pub policy: MudPolicy,
}

/// The MUD files loaded into a collector's data directory (`mud/`), one
/// per model.
#[derive(Debug, Clone)]
pub struct MudLibrary {
    dir: PathBuf,
}

impl MudLibrary {
    /// The library in `dir`.
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    fn file(&self, vendor: &str, model: &str) -> PathBuf {
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        h.update(vendor.as_bytes());
        h.update([0]);
        h.update(model.as_bytes());
        self.dir.join(format!("{}.json", hex::encode(&h.finalize()[..10])))
    }

    /// Keeps `policy` as `vendor` `model`'s, replacing any before;
    /// written whole or not at all.
    pub fn put(&self, loaded: &LoadedMud) -> std::io::Result<PathBuf> {
        std::fs::create_dir_all(&self.dir)?;
        let path = self.file(&loaded.vendor, &loaded.model);
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(loaded).map_err(std::io::Error::other)?)?;
        std::fs::rename(&tmp, &path)?;
        Ok(path)
    }

    /// Forgets `vendor` `model`'s; whether there was one.
    pub fn remove(&self, vendor: &str, model: &str) -> std::io::Result<bool> {
        match std::fs::remove_file(self.file(vendor, model)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Every loaded file, by vendor and model; one that cannot be read is
    /// logged and left out.
    pub fn all(&self) -> Vec<LoadedMud> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return Vec::new() };
        let mut out: Vec<LoadedMud> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .filter_map(|p| match std::fs::read(&p).map_err(|e| e.to_string()).and_then(|b| {
                serde_json::from_slice::<LoadedMud>(&b).map_err(|e| e.to_string())
            }) {
                Ok(m) => Some(m),
                Err(e) => {
                    tracing::warn!(path = %p.display(), error = %e, "Loaded MUD file unreadable; left out of mud_allowed");
                    None
                }
            })
            .collect();
        out.sort_by(|a, b| (&a.vendor, &a.model).cmp(&(&b.vendor, &b.model)));
        out
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// A SQL text literal.
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The query behind the view `mud_allowed`: one row per accepted
/// from-device entry of `loaded` (vendor, model, dnsname, network,
/// protocol, port_min, port_max, ace, mud_url; NULL where the entry allows
/// any value). A model whose file accepts nothing has one row no traffic
/// matches (the name `.`), so all its traffic is outside. The rows are a
/// `VALUES` list, which a Ballista cluster runs as well as this process.
pub fn allowed_sql(loaded: &[LoadedMud]) -> String {
    let opt_text = |v: Option<&str>| v.map_or_else(|| "NULL".to_string(), literal);
    let opt_int = |v: Option<i64>| v.map_or_else(|| "NULL".to_string(), |n| n.to_string());
    let mut rows = Vec::new();
    for m in loaded {
        let row = |a: Option<&Allowed>| {
            format!(
                "({}, {}, {}, {}, {}, {}, {}, {}, {})",
                literal(&m.vendor),
                literal(&m.model),
                opt_text(a.map_or(Some("."), |a| a.dnsname.as_deref())),
                opt_text(a.and_then(|a| a.network.as_deref())),
                opt_int(a.and_then(|a| a.protocol.map(i64::from))),
                opt_int(a.and_then(|a| a.ports.map(|p| i64::from(p.0)))),
                opt_int(a.and_then(|a| a.ports.map(|p| i64::from(p.1)))),
                literal(a.map_or("(none)", |a| a.ace.as_str())),
                literal(&m.policy.mud_url),
            )
        };
        if m.policy.allowed.is_empty() {
            rows.push(row(None));
        }
        rows.extend(m.policy.allowed.iter().map(|a| row(Some(a))));
    }
    let columns = "CAST(vendor AS VARCHAR) AS vendor, CAST(model AS VARCHAR) AS model, \
                   CAST(dnsname AS VARCHAR) AS dnsname, CAST(network AS VARCHAR) AS network, \
                   CAST(protocol AS INT) AS protocol, CAST(port_min AS INT) AS port_min, \
                   CAST(port_max AS INT) AS port_max, CAST(ace AS VARCHAR) AS ace, CAST(mud_url AS VARCHAR) AS mud_url";
    match rows.is_empty() {
        true => format!(
            "SELECT {columns} FROM (VALUES (NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)) \
             AS t(vendor, model, dnsname, network, protocol, port_min, port_max, ace, mud_url) WHERE false"
        ),
        false => format!(
            "SELECT {columns} FROM (VALUES {}) AS t(vendor, model, dnsname, network, protocol, port_min, port_max, ace, mud_url)",
            rows.join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RFC: &str = r#"{
      "ietf-mud:mud": {"mud-version": 1, "mud-url": "https://example.com/lightbulb", "last-update": "2019-01-28T11:20:51+01:00",
        "cache-validity": 48, "is-supported": true, "mfg-name": "Example", "model-name": "Bulb 1",
        "from-device-policy": {"access-lists": {"access-list": [{"name": "mud-v4fr"}]}},
        "to-device-policy": {"access-lists": {"access-list": [{"name": "mud-v4to"}]}}},
      "ietf-access-control-list:acls": {"acl": [
        {"name": "mud-v4to", "type": "ipv4-acl-type", "aces": {"ace": [
          {"name": "cl0-todev", "matches": {"ipv4": {"ietf-acldns:src-dnsname": "cloud.example.com", "protocol": 6},
            "tcp": {"ietf-mud:direction-initiated": "from-device", "source-port": {"operator": "eq", "port": 443}}},
           "actions": {"forwarding": "accept"}}]}},
        {"name": "mud-v4fr", "type": "ipv4-acl-type", "aces": {"ace": [
          {"name": "cl0-frdev", "matches": {"ipv4": {"ietf-acldns:dst-dnsname": "Cloud.Example.com.", "protocol": 6},
            "tcp": {"ietf-mud:direction-initiated": "from-device", "destination-port": {"operator": "eq", "port": 443}}},
           "actions": {"forwarding": "accept"}},
          {"name": "ntp", "matches": {"udp": {"destination-port": {"lower-port": 123, "upper-port": 124}}}, "actions": {"forwarding": "accept"}},
          {"name": "lan", "matches": {"ietf-mud:mud": {"local-networks": [null]}}, "actions": {"forwarding": "accept"}},
          {"name": "net", "matches": {"ipv4": {"destination-ipv4-network": "203.0.113.0/24"}}, "actions": {"forwarding": "ietf-access-control-list:accept"}},
          {"name": "no", "matches": {"ipv4": {"ietf-acldns:dst-dnsname": "ads.example.com"}}, "actions": {"forwarding": "drop"}}]}}]}
    }"#;

    #[test]
    fn the_rfc_shape_gives_the_accepted_from_device_entries() {
        let p = parse(RFC.as_bytes()).expect("parse");
        assert_eq!(p.shape, Shape::Rfc8520);
        assert_eq!((p.mfg_name.as_deref(), p.model_name.as_deref()), (Some("Example"), Some("Bulb 1")));
        type Row<'a> = (&'a str, Option<&'a str>, Option<&'a str>, Option<u8>, Option<(u16, u16)>);
        let got: Vec<Row<'_>> = p
            .allowed
            .iter()
            .map(|a| (a.ace.as_str(), a.dnsname.as_deref(), a.network.as_deref(), a.protocol, a.ports))
            .collect();
        assert_eq!(
            got,
            [
                ("mud-v4fr/cl0-frdev", Some("cloud.example.com"), None, Some(6), Some((443, 443))),
                ("mud-v4fr/ntp", None, None, Some(17), Some((123, 124))),
                ("mud-v4fr/net", None, Some("203.0.113.0/24"), None, None),
            ]
        );
    }

    #[tokio::test]
    async fn the_allowed_entries_read_back_as_typed_rows_and_quotes_stay_text() {
        let ctx = datafusion::prelude::SessionContext::new();
        let count = async |loaded: &[LoadedMud]| {
            let batches = ctx.sql(&allowed_sql(loaded)).await.expect("plan").collect().await.expect("run");
            let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
            (rows, batches.first().map(|b| b.schema()))
        };
        assert_eq!(count(&[]).await.0, 0);
        let policy = parse(RFC.as_bytes()).expect("parse");
        let loaded = LoadedMud { vendor: "O'Brien'); DROP TABLE flows; --".into(), model: "Bulb 1".into(), policy };
        let (rows, schema) = count(std::slice::from_ref(&loaded)).await;
        assert_eq!(rows, 3);
        let schema = schema.expect("schema");
        assert_eq!(
            schema.field_with_name("protocol").expect("protocol").data_type(),
            &arrow::datatypes::DataType::Int32
        );
        let sql = format!("SELECT vendor FROM ({}) WHERE port_min = 443", allowed_sql(std::slice::from_ref(&loaded)));
        let batches = ctx.sql(&sql).await.expect("plan").collect().await.expect("run");
        let text = crate::format::render(&batches, crate::format::OutputFormat::Csv).expect("csv");
        assert_eq!(text, "vendor\nO'Brien'); DROP TABLE flows; --\n");
    }

    #[test]
    fn what_cannot_be_read_whole_is_refused_with_its_node() {
        let cases = [
            ("{not json", "/", "not JSON"),
            ("[1]", "/", "expected an object"),
            ("{\"ietf-access-control-list:acls\": {}}", "/ietf-mud:mud", "not a MUD file"),
            (
                "{\"ietf-mud:mud\": {\"mud-url\": \"u\", \"from-device-policy\": {\"access-lists\": {\"access-list\": [{\"name\": \"a\"}]}}}}",
                "/",
                "neither ietf-access-control-list:acls",
            ),
        ];
        for (file, path, reason) in cases {
            let e = parse(file.as_bytes()).expect_err(file);
            assert_eq!(e.path, path, "{e}");
            assert!(e.reason.contains(reason), "{e}");
        }
        let unsupported = RFC.replace("\"protocol\": 6},\n            \"tcp\": {\"ietf-mud:direction-initiated\": \"from-device\", \"destination-port\"", "\"protocol\": 6, \"dscp\": 10},\n            \"tcp\": {\"ietf-mud:direction-initiated\": \"from-device\", \"destination-port\"");
        let e = parse(unsupported.as_bytes()).expect_err("dscp");
        assert_eq!(
            e.path, "/ietf-access-control-list:acls/acl[name='mud-v4fr']/aces/ace[name='cl0-frdev']/matches/ipv4/dscp",
            "{e}"
        );
        let neq = RFC.replace("\"lower-port\": 123, \"upper-port\": 124", "\"operator\": \"neq\", \"port\": 123");
        let e = parse(neq.as_bytes()).expect_err("neq");
        assert!(e.path.ends_with("ace[name='ntp']/matches/udp/destination-port/operator"), "{e}");
        let missing = RFC.replace("{\"name\": \"mud-v4fr\"}", "{\"name\": \"mud-v6fr\"}");
        let e = parse(missing.as_bytes()).expect_err("undefined ACL");
        assert!(e.path.contains("access-list[name='mud-v6fr']") && e.reason.contains("does not define"), "{e}");
    }
}

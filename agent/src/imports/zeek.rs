//! Zeek logs (`conn.log`, `dns.log`, `ssl.log`, `dhcp.log`, ...), in
//! either of Zeek's writers: TSV with its `#fields` header (and its
//! `#separator`, `#unset_field` and `#empty_field` lines), or JSON, one
//! object per line. A `.gz` file is read through gzip. Rows are handed on
//! as they are read, so a log of any size takes the memory of one line.

use rustc_hash::FxHashMap;
use std::io::Read;
use std::path::Path;

use super::{Line, read_line};
use crate::{Error, Result};

/// Longest line read.
const MAX_LINE_BYTES: usize = 64 * 1024;

/// What reading a log found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogStats {
    /// The log's `#path` (`dns`, `conn`, ...), when it says.
    pub path: Option<String>,
    /// Rows read.
    pub rows: u64,
    /// Lines that are not a row of the log.
    pub bad: super::BadLines,
}

/// One row: its fields by name.
#[derive(Debug)]
pub struct Row<'a> {
    fields: &'a FxHashMap<String, usize>,
    values: Values<'a>,
}

/// A row's values.
#[derive(Debug)]
enum Values<'a> {
    /// A TSV line and where each of its fields ends; a field is cut from
    /// the line when it is asked for.
    Tsv { line: &'a str, ends: &'a [usize], unset: &'a str, empty: &'a str },
    /// A JSON object's values as text.
    Json(Vec<Option<String>>),
}

impl Row<'_> {
    /// The value of field `name`; `None` when the log has no such field or
    /// the row leaves it unset (`-`, or JSON null or absent).
    pub fn get(&self, name: &str) -> Option<&str> {
        let i = *self.fields.get(name)?;
        match &self.values {
            Values::Tsv { line, ends, unset, empty } => {
                let start = if i == 0 { 0 } else { ends.get(i - 1)? + 1 };
                let v = line.get(start..*ends.get(i)?)?;
                if v == *unset {
                    None
                } else if v == *empty {
                    Some("")
                } else {
                    Some(v)
                }
            }
            Values::Json(values) => values.get(i)?.as_deref(),
        }
    }

    /// A time field as microseconds since the Unix epoch: epoch seconds
    /// (TSV, and JSON by default) or ISO-8601 (JSON with ISO times).
    pub fn time_us(&self, name: &str) -> Option<i64> {
        let v = self.get(name)?;
        if let Ok(secs) = v.parse::<f64>() {
            return (secs.is_finite() && secs.abs() < 1e11).then(|| (secs * 1e6).round() as i64);
        }
        chrono::DateTime::parse_from_rfc3339(v).ok().map(|t| t.timestamp_micros())
    }

    /// A count field.
    pub fn count(&self, name: &str) -> Option<u64> {
        self.get(name)?.parse().ok()
    }
}

/// Reads the log at `path`, handing each row to `on_row`. A file that is
/// neither a Zeek TSV log nor JSON lines is an error naming it.
pub fn read_log(path: &Path, mut on_row: impl FnMut(&Row<'_>)) -> Result<LogStats> {
    let io = |source| Error::Io { path: path.to_path_buf(), source };
    let file = std::fs::File::open(path).map_err(io)?;
    let raw: Box<dyn Read> = if path.extension().is_some_and(|e| e == "gz") {
        // Inflated on a second thread while this one reads the rows.
        Box::new(Inflating::new(flate2::read::MultiGzDecoder::new(file)))
    } else {
        Box::new(file)
    };
    let mut reader = std::io::BufReader::new(raw);
    let mut stats = LogStats::default();
    let mut line = Vec::new();
    let mut line_no = 0u64;
    // TSV: the header's fields and markers.
    let mut fields: FxHashMap<String, usize> = FxHashMap::default();
    let mut order: Vec<String> = Vec::new();
    // Where the fields of the current TSV row end (reused row to row).
    let mut ends: Vec<usize> = Vec::new();
    let (mut separator, mut unset, mut empty) = (b'\t', "-".to_string(), "(empty)".to_string());
    let mut json: Option<bool> = None;
    loop {
        let read = match read_line(&mut reader, &mut line, MAX_LINE_BYTES) {
            Ok(read) => read,
            // A log cut short (a truncated .gz): the rows before count.
            Err(e) if stats.rows > 0 => {
                stats.bad.note(line_no + 1, format!("unreadable from here on ({e})"));
                break;
            }
            Err(e) => return Err(io(e)),
        };
        if read == Line::End {
            break;
        }
        line_no += 1;
        if read == Line::TooLong {
            stats.bad.note(line_no, format!("longer than {MAX_LINE_BYTES} bytes"));
            continue;
        }
        // Valid UTF-8 (as Zeek writes) is borrowed; anything else replaced.
        let text = match std::str::from_utf8(&line) {
            Ok(t) => std::borrow::Cow::Borrowed(t),
            Err(_) => String::from_utf8_lossy(&line),
        };
        let text = text.trim_end_matches(['\r', '\n']);
        if text.is_empty() {
            continue;
        }
        if let Some(directive) = text.strip_prefix('#') {
            json = Some(false);
            // `#separator \x09` uses a space; the others the separator.
            if let Some(sep) = directive.strip_prefix("separator ") {
                separator = parse_separator(sep.trim()).unwrap_or(b'\t');
                continue;
            }
            let mut parts = directive.split(char::from(separator));
            match parts.next() {
                Some("fields") => {
                    order = parts.map(str::to_string).collect();
                    fields = order.iter().enumerate().map(|(i, f)| (f.clone(), i)).collect();
                }
                Some("unset_field") => unset = parts.next().unwrap_or("-").to_string(),
                Some("empty_field") => empty = parts.next().unwrap_or("(empty)").to_string(),
                Some("path") => stats.path = parts.next().map(str::to_string),
                _ => {}
            }
            continue;
        }
        let is_json = *json.get_or_insert_with(|| text.starts_with('{'));
        if is_json {
            match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(text) {
                Ok(object) => {
                    // Fields by name as they come, each row its own.
                    let names: FxHashMap<String, usize> =
                        object.keys().enumerate().map(|(i, k)| (k.clone(), i)).collect();
                    let values = object.values().map(json_text).collect();
                    stats.rows += 1;
                    on_row(&Row { fields: &names, values: Values::Json(values) });
                }
                Err(e) => stats.bad.note(line_no, format!("not JSON: {e}")),
            }
            continue;
        }
        if order.is_empty() {
            stats.bad.note(line_no, "a row before the log's #fields line".into());
            if stats.rows == 0 && stats.bad.count >= 3 {
                break;
            }
            continue;
        }
        // Where each field ends: at the separator's bytes (ASCII: always a
        // character boundary).
        ends.clear();
        ends.extend(memchr::memchr_iter(separator, text.as_bytes()));
        ends.push(text.len());
        if ends.len() != order.len() {
            stats.bad.note(line_no, format!("{} fields, #fields names {}", ends.len(), order.len()));
            continue;
        }
        stats.rows += 1;
        on_row(&Row { fields: &fields, values: Values::Tsv { line: text, ends: &ends, unset: &unset, empty: &empty } });
    }
    if stats.rows == 0 && stats.bad.count > 0 {
        return Err(stats.bad.refusal(path, "a Zeek log"));
    }
    Ok(stats)
}

/// The logs an import reads, by Zeek's name for them.
const KINDS: [&str; 4] = ["dhcp", "dns", "ssl", "conn"];

/// The logs of `path` by kind: a directory's `conn.log`, `dns.log`,
/// `ssl.log` and `dhcp.log` (also gzipped, and rotated ones such as
/// `conn.00:00:00-01:00:00.log.gz`), or the one log `path` is, by the
/// start of its name. An error names a path that holds none of them.
pub fn logs_of(path: &Path) -> Result<Vec<(&'static str, std::path::PathBuf)>> {
    let kind_of = |p: &Path| {
        let name = p.file_name()?.to_str()?;
        let (kind, rest) = name.split_once('.')?;
        let is_log =
            rest.ends_with("log") || rest.ends_with("log.gz") || rest.ends_with("json") || rest.ends_with("json.gz");
        KINDS.iter().copied().find(|k| *k == kind).filter(|_| is_log)
    };
    let mut logs = Vec::new();
    if path.is_dir() {
        let entries = std::fs::read_dir(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
        for entry in entries.flatten() {
            let p = entry.path();
            if let Some(kind) = kind_of(&p).filter(|_| p.is_file()) {
                logs.push((kind, p));
            }
        }
    } else if let Some(kind) = kind_of(path) {
        logs.push((kind, path.to_path_buf()));
    } else if path.exists() {
        // A log renamed: what its `#path` says (read at import).
        logs.push(("", path.to_path_buf()));
    } else {
        return Err(Error::Io { path: path.to_path_buf(), source: std::io::ErrorKind::NotFound.into() });
    }
    if logs.is_empty() {
        return Err(Error::InvalidArgument {
            field: path.display().to_string(),
            reason: format!("no Zeek log in it ({}.log, also .gz or JSON)", KINDS.join(".log, ")),
        });
    }
    // DHCP first (MACs and boots), then names (dns, ssl), then connections.
    logs.sort_by_key(|(kind, p)| (KINDS.iter().position(|k| k == kind).unwrap_or(KINDS.len()), p.clone()));
    Ok(logs)
}

/// What an import of a Zeek log directory read.
#[derive(Debug, Clone, Default)]
pub struct ZeekStats {
    /// Per log: its file, rows read and bad lines.
    pub logs: Vec<(std::path::PathBuf, LogStats)>,
    /// Connections of protocols other than TCP and UDP, left out.
    pub other_protocols: u64,
    /// Rows without a time Zeek writes (`ts`, epoch seconds or ISO-8601;
    /// a test baseline's canonified `XXXXXXXXXX.XXXXXX`), left out.
    pub untimed: u64,
}

/// Imports the Zeek logs of `path` (a log directory or one log): each LAN
/// originator is a device (by its MAC, from `orig_l2_addr` or the DHCP
/// lease of its address, else by address), labelled through `labels`;
/// its DHCP exchanges after an absence mark its boots. Connections are
/// named by the TLS server name of the same `uid` in `ssl.log`, else by
/// a DNS answer for their address; `dns.log` queries are lookups. One
/// [`LanBoot`](crate::lan::LanBoot) per device and boot goes to `each`.
pub fn import(
    path: &Path,
    labels: &crate::lan::LanLabels,
    explicit_boot_us: Option<i64>,
    state: &crate::state::AgentState,
    batch_records: usize,
    each: impl FnMut(crate::lan::LanBoot) -> Result<()>,
) -> Result<ZeekStats> {
    use std::net::IpAddr;

    use crate::capture::Transport;
    use crate::flow::{FlowTable, LoggedConnection, LoggedTls, Origin};

    let logs = logs_of(path)?;
    let mut table = FlowTable::new();
    let mut stats = ZeekStats::default();
    // Each LAN address's MAC, from DHCP leases.
    let mut macs: FxHashMap<IpAddr, [u8; 6]> = FxHashMap::default();
    let mut tls: FxHashMap<String, LoggedTls> = FxHashMap::default();
    let mut salt = Vec::new();
    // An address field, parsed; rows in a row often name the same hosts,
    // so the last text and address of each field are kept.
    let mut last: FxHashMap<&'static str, (String, IpAddr)> = FxHashMap::default();
    let mut addr = |r: &Row<'_>, f: &'static str| {
        let text = r.get(f)?;
        match last.get(f) {
            Some((t, ip)) if t == text => Some(*ip),
            _ => {
                let ip = text.parse::<IpAddr>().ok()?;
                last.insert(f, (text.to_string(), ip));
                Some(ip)
            }
        }
    };
    for (kind, log) in &logs {
        salt.extend_from_slice(&crate::import::hash_file(log)?);
        let mut kind = *kind;
        let read = read_log(log, |r| {
            let Some(ts) = r.time_us("ts") else {
                stats.untimed += 1;
                return;
            };
            // A renamed log: its rows say what it is by their fields.
            if kind.is_empty() {
                kind = if r.get("query").is_some() {
                    "dns"
                } else if r.get("server_name").is_some() || r.get("ja4").is_some() {
                    "ssl"
                } else if r.get("msg_types").is_some() {
                    "dhcp"
                } else {
                    "conn"
                };
            }
            match kind {
                "dhcp" => {
                    let Some(mac) = r.get("mac").and_then(crate::lan::parse_mac) else { return };
                    for f in ["assigned_addr", "requested_addr", "client_addr"] {
                        if let Some(ip) = addr(r, f) {
                            macs.insert(ip, mac);
                        }
                    }
                    let joins =
                        r.get("msg_types").is_some_and(|t| t.split(',').any(|m| m == "DISCOVER" || m == "REQUEST"));
                    if joins {
                        table.add_logged_dhcp(mac, ts);
                    }
                }
                "dns" => {
                    let (Some(origin), Some(resolver), Some(query)) =
                        (addr(r, "id.orig_h"), addr(r, "id.resp_h"), r.get("query"))
                    else {
                        return;
                    };
                    if query.is_empty() {
                        return;
                    }
                    let origin = Origin { mac: macs.get(&origin).copied(), ip: origin };
                    table.add_logged_query(origin, query, resolver, ts, false);
                    for answer in r.get("answers").unwrap_or_default().split(',') {
                        if let Ok(ip) = answer.parse::<IpAddr>() {
                            table.add_logged_answer(ip, query);
                        }
                    }
                }
                "ssl" => {
                    let Some(uid) = r.get("uid") else { return };
                    let alpn = r.get("orig_alpn").or(r.get("next_protocol")).unwrap_or_default();
                    tls.insert(
                        uid.to_string(),
                        LoggedTls {
                            sni: r.get("server_name").filter(|s| !s.is_empty()).map(str::to_string),
                            alpn: alpn.split(',').filter(|a| !a.is_empty()).map(str::to_string).collect(),
                            fingerprint: r.get("ja4").filter(|s| !s.is_empty()).map(str::to_string),
                        },
                    );
                }
                _ => {
                    let transport = match r.get("proto") {
                        Some("tcp") => Transport::Tcp,
                        Some("udp") => Transport::Udp,
                        _ => {
                            stats.other_protocols += 1;
                            return;
                        }
                    };
                    let first_us = ts;
                    let (Some(orig), Some(resp)) = (addr(r, "id.orig_h"), addr(r, "id.resp_h")) else {
                        return;
                    };
                    let port = |f: &str| r.get(f).and_then(|v| v.parse::<u16>().ok()).unwrap_or(0);
                    let duration_us =
                        r.get("duration").and_then(|d| d.parse::<f64>().ok()).map_or(0, |d| (d * 1e6) as i64);
                    let mac =
                        r.get("orig_l2_addr").and_then(crate::lan::parse_mac).or_else(|| macs.get(&orig).copied());
                    table.add_logged(LoggedConnection {
                        transport,
                        origin: Origin { mac, ip: orig },
                        origin_port: port("id.orig_p"),
                        responder: resp,
                        responder_port: port("id.resp_p"),
                        first_us,
                        last_us: first_us.saturating_add(duration_us.max(0)),
                        bytes_out: r.count("orig_bytes").unwrap_or(0),
                        bytes_in: r.count("resp_bytes").unwrap_or(0),
                        packets_out: r.count("orig_pkts").unwrap_or(0),
                        packets_in: r.count("resp_pkts").unwrap_or(0),
                        tls: r.get("uid").and_then(|u| tls.get(u)).cloned(),
                    });
                }
            }
        })?;
        if read.rows > 0 && stats.untimed >= read.rows && stats.logs.iter().all(|(_, l)| l.rows == 0) {
            return Err(Error::InvalidArgument {
                field: log.display().to_string(),
                reason: format!(
                    "none of its {} rows has a time in ts (epoch seconds or ISO-8601) to place it by",
                    read.rows
                ),
            });
        }
        stats.logs.push((log.clone(), read));
    }
    let mut tracker = crate::lan::LanBootTracker::new(explicit_boot_us);
    let mut sums = crate::lan::LanSums::default();
    let untracked = table.untracked_connections;
    sums.add(&mut tracker, &FlowTable::new(), &mut table);
    let template = crate::import::ImportedCapture::of_file(path, Default::default(), untracked);
    sums.boots(leakwatch_proto::v1::RecordSource::Zeek, labels, state, &salt, batch_records, None, &template, each)?;
    Ok(stats)
}

/// A reader whose bytes another thread reads from `inner` ahead of it, a
/// few chunks at a time (bounded memory); the thread ends when the reader
/// is dropped or `inner` ends.
struct Inflating {
    chunks: std::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    at: usize,
}

impl Inflating {
    /// Bytes read ahead per chunk, and chunks held at most.
    const CHUNK: usize = 256 * 1024;
    const AHEAD: usize = 4;

    fn new(mut inner: impl Read + Send + 'static) -> Self {
        let (tx, chunks) = std::sync::mpsc::sync_channel(Self::AHEAD);
        std::thread::spawn(move || {
            loop {
                let mut chunk = vec![0; Self::CHUNK];
                let read = inner.read(&mut chunk).map(|n| {
                    chunk.truncate(n);
                    chunk
                });
                let last = !matches!(&read, Ok(c) if !c.is_empty());
                if tx.send(read).is_err() || last {
                    break;
                }
            }
        });
        Self { chunks, chunk: Vec::new(), at: 0 }
    }
}

impl Read for Inflating {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.at == self.chunk.len() {
            match self.chunks.recv() {
                Ok(Ok(chunk)) => (self.chunk, self.at) = (chunk, 0),
                Ok(Err(e)) => return Err(e),
                // The thread ended after the last chunk.
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// `\x09` (or a literal character) as a byte; only an ASCII one (a row is
/// split at its bytes).
fn parse_separator(text: &str) -> Option<u8> {
    let byte = match text.strip_prefix("\\x") {
        Some(hex) => u8::from_str_radix(hex, 16).ok(),
        None => text.bytes().next(),
    };
    byte.filter(u8::is_ascii)
}

/// A JSON value as the text a TSV log would hold (a list joined by
/// commas); `None` for null.
fn json_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Array(items) => Some(items.iter().filter_map(json_text).collect::<Vec<_>>().join(",")),
        other => Some(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        (dir, path)
    }

    const TSV: &str = "#separator \\x09\n#set_separator\t,\n#empty_field\t(empty)\n#unset_field\t-\n#path\tdns\n\
                       #fields\tts\tuid\tid.orig_h\tquery\tanswers\n#types\ttime\tstring\taddr\tstring\tvector[string]\n\
                       1521911720.865716\tC1\t10.47.1.100\tise.wrccdc.org\tise.wrccdc.cpp.edu,134.71.3.16\n\
                       1521911721.000001\tC2\t10.47.1.101\t-\t(empty)\n";

    #[test]
    fn tsv_rows_by_field_name_with_unset_and_empty() {
        let (_dir, path) = file("dns.log", TSV);
        let mut rows = Vec::new();
        let stats = read_log(&path, |r| {
            rows.push((r.time_us("ts"), r.get("query").map(str::to_string), r.get("answers").map(str::to_string)))
        })
        .expect("read");
        assert_eq!((stats.path.as_deref(), stats.rows, stats.bad.count), (Some("dns"), 2, 0));
        assert_eq!(
            rows[0],
            (Some(1_521_911_720_865_716), Some("ise.wrccdc.org".into()), Some("ise.wrccdc.cpp.edu,134.71.3.16".into()))
        );
        assert_eq!(rows[1], (Some(1_521_911_721_000_001), None, Some(String::new())));
    }

    #[test]
    fn json_rows_with_epoch_or_iso_times_and_gzip() {
        let json = "{\"ts\":1521911720.865716,\"query\":\"a.example\",\"answers\":[\"1.2.3.4\",\"5.6.7.8\"],\"rtt\":null}\n\
                    {\"ts\":\"2018-03-24T17:15:20.865716Z\",\"query\":\"b.example\"}\n";
        let (_dir, path) = file("dns.json", json);
        let mut rows = Vec::new();
        read_log(&path, |r| rows.push((r.time_us("ts"), r.get("answers").map(str::to_string), r.get("rtt").is_none())))
            .expect("read");
        assert_eq!(rows[0], (Some(1_521_911_720_865_716), Some("1.2.3.4,5.6.7.8".into()), true));
        assert_eq!(rows[1].0, Some(1_521_911_720_865_716), "ISO-8601 and epoch agree");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, TSV.as_bytes()).expect("gzip");
        let (_dir, path) = file("dns.log.gz", "");
        std::fs::write(&path, gz.finish().expect("gzip")).expect("write");
        assert_eq!(read_log(&path, |_| {}).expect("read").rows, 2);
    }

    #[test]
    fn a_truncated_gzip_log_keeps_the_rows_before_the_cut() {
        let rows: String =
            (0..5000).map(|i| format!("1521911720.{i:06}\tC{i}\t10.47.1.100\tn{i}.example\t-\n")).collect();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, format!("{TSV}{rows}").as_bytes()).expect("gzip");
        let bytes = gz.finish().expect("gzip");
        let (_dir, path) = file("dns.log.gz", "");
        std::fs::write(&path, &bytes[..bytes.len() / 2]).expect("write");
        let stats = read_log(&path, |_| {}).expect("the rows before the cut");
        assert!(stats.rows > 100 && stats.rows < 5002, "{stats:?}");
        assert_eq!(stats.bad.count, 1);
        assert!(stats.bad.first[0].1.contains("unreadable from here on"), "{:?}", stats.bad);
        std::fs::write(&path, &bytes[..10]).expect("write");
        assert!(read_log(&path, |_| {}).is_err(), "nothing readable: an error");
    }

    #[test]
    fn a_separator_that_is_no_ascii_character_is_not_split_at() {
        let odd = TSV.replace("#separator \\x09", "#separator \\xc3");
        let (_dir, path) = file("dns.log", &odd);
        assert_eq!(read_log(&path, |_| {}).expect("read").rows, 2, "read as tab-separated");
        assert_eq!(parse_separator("\\xff"), None);
    }

    #[test]
    fn bad_lines_are_counted_and_other_files_refused() {
        let broken = TSV.replace("C2\t10.47.1.101\t-\t(empty)", "C2\t10.47.1.101");
        let (_dir, path) = file("dns.log", &broken);
        let stats = read_log(&path, |_| {}).expect("read");
        assert_eq!((stats.rows, stats.bad.count), (1, 1));
        assert_eq!(stats.bad.first[0], (9, "3 fields, #fields names 5".to_string()));
        let (_dir, csv) = file("export.csv", "a,b,c\n1,2,3\n4,5,6\n");
        let err = read_log(&csv, |_| {}).expect_err("not Zeek").to_string();
        assert!(err.contains("export.csv line 1") && err.contains("not a Zeek log"), "{err}");
    }
}

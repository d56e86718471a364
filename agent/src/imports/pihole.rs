//! Pi-hole's long-term query database (`pihole-FTL.db`, FTL database
//! versions 12 to 21 and on): every DNS query of a household with its
//! client, time and status, through FTL's own `queries` view. Its
//! `network` tables give a client address's MAC.
//!
//! The database is opened read-only (SQLite's `SQLITE_OPEN_READ_ONLY`,
//! `PRAGMA query_only`), and nothing is created beside it (a file owned by
//! another user there could stop FTL from opening its own database):
//!
//! - with its `-wal` and `-shm` (FTL running): as any reader joins, through
//!   the write-ahead log, which lets it see the last committed state
//!   without blocking FTL;
//! - without a `-wal` (FTL stopped, everything checkpointed): as an
//!   immutable file, which SQLite reads without any file beside it;
//! - a database with a rollback journal (not WAL mode): under SQLite's
//!   shared lock, which makes no file;
//! - with a `-wal` but no `-shm` (a copy, or FTL stopped uncleanly): the
//!   database and its log are copied to a private directory and read
//!   there, the log applied.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;

use rusqlite::{Connection, OpenFlags};

use crate::{Error, Result};

/// One query as FTL's `queries` view gives it.
#[derive(Debug, Clone, PartialEq)]
pub struct Query<'a> {
    /// FTL's id, increasing in the order queries were stored.
    pub id: i64,
    /// When, microseconds since the Unix epoch.
    pub ts_us: i64,
    /// The client's address (LAN only: never sent).
    pub client: IpAddr,
    /// The name asked for.
    pub domain: &'a str,
    /// FTL's status (see [`blocked`]).
    pub status: i64,
}

/// Whether FTL's query status is a block (gravity, regex, exact and
/// their CNAME forms, an upstream's blocking answer, the database busy, a
/// special domain).
pub fn blocked(status: i64) -> bool {
    matches!(status, 1 | 4..=11 | 15 | 16 | 18)
}

/// What reading a database found besides its good queries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PiholeStats {
    /// Queries read (after the cursor).
    pub queries: u64,
    /// Of them, blocked.
    pub blocked: u64,
    /// Rows that do not read as a query (no domain, a client that is no
    /// address, no time), by query id.
    pub bad: super::BadLines,
    /// The id of the last query read, for the next incremental import.
    pub last_id: Option<i64>,
}

/// How long a read waits for FTL's lock before it gives up.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Opens the database at `path` read-only. A WAL file given for its
/// database, a file that is no SQLite database, and a database without
/// FTL's `queries` are refused, naming the file.
pub fn open(path: &Path) -> Result<Database> {
    let refuse = |reason: String| Error::InvalidArgument { field: path.display().to_string(), reason };
    if path.to_string_lossy().ends_with("-wal") || path.to_string_lossy().ends_with("-shm") {
        return Err(refuse(
            "a SQLite write-ahead log or shared-memory file, not a database: give the database file beside it".into(),
        ));
    }
    let mut header = [0u8; 100];
    let read =
        std::fs::File::open(path).and_then(|mut f| std::io::Read::read_exact(&mut f, &mut header)).map_err(|source| {
            match source.kind() {
                std::io::ErrorKind::UnexpectedEof => refuse("not a SQLite database (shorter than its header)".into()),
                _ => Error::Io { path: path.to_path_buf(), source },
            }
        });
    read?;
    if &header[..16] != b"SQLite format 3\0" {
        return Err(refuse("not a SQLite database (no SQLite header)".into()));
    }
    let sqlite = |e: rusqlite::Error| refuse(describe(&e));
    let beside = |suffix: &str| {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        std::path::PathBuf::from(p)
    };
    let (wal, shm) = (beside("-wal"), beside("-shm"));
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI;
    // The file format's write version: 2 in WAL mode (FTL's), 1 with a
    // rollback journal, whose readers take a lock and make no file.
    let wal_mode = header[18] == 2;
    let (conn, copy) = match (wal_mode, wal.exists(), shm.exists()) {
        (false, ..) | (true, true, true) => {
            (Connection::open_with_flags(file_uri(path, false), flags).map_err(sqlite)?, None)
        }
        (true, false, _) => (Connection::open_with_flags(file_uri(path, true), flags).map_err(sqlite)?, None),
        (true, true, false) => {
            let dir = tempfile::tempdir().map_err(|source| Error::Io { path: std::env::temp_dir(), source })?;
            let db = dir.path().join("pihole-FTL.db");
            let mut db_wal = db.as_os_str().to_owned();
            db_wal.push("-wal");
            for (from, to) in [(path.to_path_buf(), db.clone()), (wal.clone(), std::path::PathBuf::from(db_wal))] {
                std::fs::copy(&from, &to).map_err(|source| Error::Io { path: from.clone(), source })?;
            }
            (Connection::open_with_flags(file_uri(&db, false), flags).map_err(sqlite)?, Some(dir))
        }
    };
    conn.busy_timeout(BUSY_TIMEOUT).map_err(sqlite)?;
    conn.pragma_update(None, "query_only", true).map_err(sqlite)?;
    let has_queries: bool = conn
        .query_row("SELECT count(*) > 0 FROM sqlite_master WHERE name = 'queries'", [], |r| r.get(0))
        .map_err(sqlite)?;
    if !has_queries {
        return Err(refuse("a SQLite database without Pi-hole's queries (not pihole-FTL.db)".into()));
    }
    Ok(Database { conn, _copy: copy })
}

/// An open database, and the private copy it was read from, if any
/// (removed with it).
pub struct Database {
    /// The connection, read-only.
    pub conn: Connection,
    _copy: Option<tempfile::TempDir>,
}

/// `path` as a SQLite URI (`file:` with the characters URIs reserve
/// escaped), `immutable` when nothing beside it is to be read or made.
fn file_uri(path: &Path, immutable: bool) -> String {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut uri = String::from("file:");
    for b in abs.to_string_lossy().bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'/' | b'-' | b'_' | b'.' | b'~' => uri.push(char::from(b)),
            _ => uri.push_str(&format!("%{b:02X}")),
        }
    }
    uri.push_str(if immutable { "?mode=ro&immutable=1" } else { "?mode=ro" });
    uri
}

/// An error of SQLite's, said for a volunteer.
fn describe(e: &rusqlite::Error) -> String {
    use rusqlite::ErrorCode;
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => format!(
            "locked by another process for over {} s (FTL writing in a rollback journal?): try again ({e})",
            BUSY_TIMEOUT.as_secs()
        ),
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => {
            format!("damaged or truncated database ({e})")
        }
        Some(ErrorCode::CannotOpen) => format!(
            "cannot be opened ({e}): a database in WAL mode needs its -shm file or a directory this user may write"
        ),
        _ => e.to_string(),
    }
}

/// The database's identity for incremental imports: FTL's creation time
/// (`ftl` id 2), so that a database made anew starts over.
pub fn identity(conn: &Connection) -> String {
    conn.query_row("SELECT CAST(value AS TEXT) FROM ftl WHERE id = 2", [], |r| r.get::<_, String>(0))
        .unwrap_or_default()
}

/// Each client address's MAC, from FTL's `network` tables (left out: a
/// pseudo-address `ip-...` and the all-zero MAC of the loopback).
pub fn macs(conn: &Connection) -> HashMap<IpAddr, [u8; 6]> {
    let mut out = HashMap::new();
    let Ok(mut stmt) =
        conn.prepare("SELECT a.ip, n.hwaddr FROM network_addresses a JOIN network n ON n.id = a.network_id")
    else {
        return out;
    };
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)));
    for (ip, hwaddr) in rows.into_iter().flatten().flatten() {
        if let (Ok(ip), Some(mac)) = (ip.parse::<IpAddr>(), crate::lan::parse_mac(&hwaddr))
            && mac != [0; 6]
        {
            out.insert(ip, mac);
        }
    }
    out
}

/// Reads the queries with an id above `after`, in id order, handing each
/// to `each` (its error stops the reading): the rows of FTL's `queries` view. Since FTL's database
/// version 10 the view joins `query_storage` with the names in
/// `domain_by_id` and `client_by_id`; those are read once here and the
/// stored queries joined to them as the view does, which is several times
/// faster than stepping through the view.
pub fn read_queries(
    path: &Path,
    conn: &Connection,
    after: i64,
    mut each: impl FnMut(&Query<'_>) -> Result<()>,
) -> Result<PiholeStats> {
    use rusqlite::types::ValueRef;
    let sqlite =
        |e: rusqlite::Error| Error::InvalidArgument { field: path.display().to_string(), reason: describe(&e) };
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .map_err(sqlite)?;
    let joined = ["query_storage", "domain_by_id", "client_by_id"].iter().all(|t| tables.iter().any(|n| n == t));
    // Each id's name and address (the view's subqueries, read once).
    let mut domains: rustc_hash::FxHashMap<i64, Box<str>> = rustc_hash::FxHashMap::default();
    let mut clients: rustc_hash::FxHashMap<i64, Box<str>> = rustc_hash::FxHashMap::default();
    let sql = if joined {
        for (table, column, map) in [("domain_by_id", "domain", &mut domains), ("client_by_id", "ip", &mut clients)] {
            let mut stmt = conn.prepare(&format!("SELECT id, {column} FROM {table}")).map_err(sqlite)?;
            let mut rows = stmt.query([]).map_err(sqlite)?;
            while let Some(row) = rows.next().map_err(sqlite)? {
                if let (Ok(id), Ok(ValueRef::Text(text))) = (row.get::<_, i64>(0), row.get_ref(1)) {
                    map.insert(id, String::from_utf8_lossy(text).into());
                }
            }
        }
        "SELECT id, timestamp, status, domain, client FROM query_storage WHERE id > ?1 ORDER BY id"
    } else {
        "SELECT id, timestamp, status, domain, client FROM queries WHERE id > ?1 ORDER BY id"
    };
    let mut stmt = conn.prepare(sql).map_err(sqlite)?;
    let mut rows = stmt.query([after]).map_err(sqlite)?;
    let mut stats = PiholeStats::default();
    // A column's text: a name by its id, or the text stored in its place
    // (as the view's `CASE typeof(...)` reads it).
    let text = |v: ValueRef<'_>, by_id: &rustc_hash::FxHashMap<i64, Box<str>>| -> Option<String> {
        match v {
            ValueRef::Integer(id) if joined => by_id.get(&id).map(|s| s.to_string()),
            ValueRef::Text(t) => Some(String::from_utf8_lossy(t).into_owned()),
            _ => None,
        }
    };
    let mut last_client: Option<(Box<str>, IpAddr)> = None;
    while let Some(row) = rows.next().map_err(sqlite)? {
        let id: i64 = row.get(0).map_err(sqlite)?;
        stats.last_id = Some(id);
        let ts: Option<f64> = match row.get_ref(1).map_err(sqlite)? {
            ValueRef::Integer(i) => Some(i as f64),
            ValueRef::Real(f) => Some(f),
            _ => None,
        };
        let status = row.get_ref(2).map_err(sqlite)?.as_i64().unwrap_or(0);
        let (domain_ref, client_ref) = (row.get_ref(3).map_err(sqlite)?, row.get_ref(4).map_err(sqlite)?);
        // Names by id are borrowed; only text stored in place is copied.
        let domain_owned;
        let domain: Option<&str> = match domain_ref {
            ValueRef::Integer(i) if joined => domains.get(&i).map(|d| &**d),
            other => {
                domain_owned = text(other, &domains);
                domain_owned.as_deref()
            }
        };
        let client_text: Option<std::borrow::Cow<'_, str>> = match client_ref {
            ValueRef::Integer(i) if joined => clients.get(&i).map(|c| std::borrow::Cow::Borrowed(&**c)),
            other => text(other, &clients).map(std::borrow::Cow::Owned),
        };
        let parsed = (|| -> std::result::Result<Query<'_>, String> {
            let domain = domain.filter(|d| !d.is_empty()).ok_or("no domain")?;
            let client_text = client_text.as_deref().unwrap_or_default();
            // Most queries come from the client of the one before.
            let client = match &last_client {
                Some((text, ip)) if &**text == client_text => *ip,
                _ => {
                    let ip =
                        client_text.parse::<IpAddr>().map_err(|_| format!("client {client_text:?} is no address"))?;
                    last_client = Some((client_text.into(), ip));
                    ip
                }
            };
            let ts = ts.ok_or("no timestamp")?;
            if !ts.is_finite() || !(0.0..1e11).contains(&ts) {
                return Err(format!("timestamp {ts} is no time"));
            }
            Ok(Query { id, ts_us: (ts * 1e6).round() as i64, client, domain, status })
        })();
        match parsed {
            Ok(q) => {
                stats.queries += 1;
                stats.blocked += u64::from(blocked(q.status));
                each(&q)?;
            }
            Err(reason) => stats.bad.note(id.max(0) as u64, reason),
        }
    }
    Ok(stats)
}

/// Where incremental imports keep, per database, the last query sent.
const CURSOR_FILE: &str = "pihole-cursor.json";

/// The last query id sent from each database (by its path and identity).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Cursors {
    /// `"path|identity"` → the last id queued.
    pub sent: std::collections::BTreeMap<String, i64>,
}

impl Cursors {
    /// Reads the state directory's cursors (none yet: empty).
    pub fn load(state_dir: &Path) -> Result<Self> {
        crate::state::read_json(state_dir.join(CURSOR_FILE), "Pi-hole import cursors")
    }

    /// The key of the database at `path` with `identity`.
    pub fn key(path: &Path, identity: &str) -> String {
        let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        format!("{}|{identity}", path.display())
    }

    /// Notes that the queries up to `last_id` of `key` are queued, and
    /// writes the cursors.
    pub fn advance(state_dir: &Path, key: &str, last_id: i64) -> Result<()> {
        let mut cursors = Self::load(state_dir)?;
        let entry = cursors.sent.entry(key.to_string()).or_insert(last_id);
        *entry = (*entry).max(last_id);
        let json = serde_json::to_vec_pretty(&cursors)
            .map_err(|e| Error::InvalidArgument { field: CURSOR_FILE.into(), reason: e.to_string() })?;
        crate::state::write_atomically(&state_dir.join(CURSOR_FILE), &json, None)
    }
}

/// What an import of a database read and where it stopped.
#[derive(Debug, Clone, Default)]
pub struct PiholeImport {
    /// What was read.
    pub stats: PiholeStats,
    /// The cursor key, and the id it moves to once the batches are queued.
    pub cursor: Option<(String, i64)>,
    /// The id queries were read after (0: from the start).
    pub after: i64,
}

/// Imports the Pi-hole database at `path`: each client is a device (by
/// the MAC FTL's network tables give its address, else by address),
/// labelled through `labels`; its queries of each day (UTC) become lookup
/// records of a boot of that day (a blocked one kept apart and marked
/// blocked); one [`LanBoot`](crate::lan::LanBoot) per device and day goes
/// to `each`. Only
/// queries after the last one an earlier import queued from this database
/// are read, unless `from_start`.
pub fn import(
    path: &Path,
    labels: &crate::lan::LanLabels,
    state: &crate::state::AgentState,
    batch_records: usize,
    from_start: bool,
    each: impl FnMut(crate::lan::LanBoot) -> Result<()>,
) -> Result<PiholeImport> {
    let db = open(path)?;
    let conn = &db.conn;
    let key = Cursors::key(path, &identity(conn));
    let after = if from_start { 0 } else { Cursors::load(state.dir())?.sent.get(&key).copied().unwrap_or(0) };
    let macs = macs(conn);
    let template = crate::import::ImportedCapture::of_file(path, Default::default(), 0);
    // A DNS server sees no boot: each client's queries of a day (UTC) are
    // summed as one boot and handed on before the next day's are read, so
    // that memory holds a day's names, not a year's.
    let mut each = each;
    let mut emit = |table: &mut crate::flow::FlowTable, day: i64| -> Result<()> {
        let mut tracker = crate::lan::LanBootTracker::new(None);
        let mut sums = crate::lan::LanSums::default();
        sums.add(&mut tracker, &crate::flow::FlowTable::new(), table);
        // Boot pseudonyms (and so batch ids) unique to the database, the
        // queries read and the day.
        let salt = format!("{key}|{after}|{day}");
        sums.boots(
            leakwatch_proto::v1::RecordSource::Pihole,
            labels,
            state,
            salt.as_bytes(),
            batch_records,
            None,
            &template,
            &mut each,
        )
    };
    let mut table = crate::flow::FlowTable::new();
    let mut day: Option<i64> = None;
    let resolver = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);
    let stats = read_queries(path, conn, after, |q| {
        let today = q.ts_us.div_euclid(86_400_000_000);
        if let Some(d) = day.filter(|&d| d != today) {
            emit(&mut table, d)?;
            table = crate::flow::FlowTable::new();
        }
        day = Some(today);
        let origin = crate::flow::Origin { mac: macs.get(&q.client).copied(), ip: q.client };
        table.add_logged_query(origin, q.domain, resolver, q.ts_us, blocked(q.status));
        Ok(())
    })?;
    if let Some(d) = day {
        emit(&mut table, d)?;
    }
    let cursor = stats.last_id.map(|id| (key, id));
    Ok(PiholeImport { stats, cursor, after })
}

//! Credentials the log keeps: agents' token hashes, enrollment codes and
//! analysts' SQL tokens, each in its column family, written synced.

use rocksdb::{IteratorMode, WriteBatch};

use super::{CF_AGENTS, CF_CODES, CF_SQL_TOKENS, DurableLog, REVOKED, cf, db_err, synced};
use crate::{Error, Result};

/// What the log knows of an agent's token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentToken {
    /// Never enrolled.
    Unknown,
    /// Revoked by the operator.
    Revoked,
    /// SHA-256 of the valid token.
    Hash(Vec<u8>),
}

/// The outcome of presenting an enrollment code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeUse {
    /// Accepted; one use counted.
    Accepted,
    /// No such code.
    Unknown,
    /// Past its expiry.
    Expired,
    /// All its uses are taken.
    UsedUp,
}

/// An enrolled agent, as the log keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentEntry {
    /// Its id.
    pub agent_id: String,
    /// Whether its token was revoked.
    pub revoked: bool,
    /// When it enrolled, Unix seconds (`None` for agents enrolled before
    /// the log kept it).
    pub enrolled_at_s: Option<i64>,
    /// The agent version it enrolled with.
    pub version: String,
}

/// An agent's stored value: its token hash, or [`REVOKED`] and a NUL, then
/// `[enrolled at: i64 BE][version]` (absent in values of older logs: the
/// bare hash, or the bare marker).
fn agent_record(v: &[u8]) -> (AgentToken, Option<i64>, String) {
    let (token, meta) = if v == REVOKED {
        (AgentToken::Revoked, &v[v.len()..])
    } else if v.len() > REVOKED.len() && v.starts_with(REVOKED) && v[REVOKED.len()] == 0 {
        (AgentToken::Revoked, &v[REVOKED.len() + 1..])
    } else {
        let split = v.len().min(32);
        (AgentToken::Hash(v[..split].to_vec()), &v[split..])
    };
    let enrolled = meta.get(..8).and_then(|b| b.try_into().ok()).map(i64::from_be_bytes);
    let version = meta.get(8..).map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
    (token, enrolled, version)
}

/// `[enrolled at: i64 BE][version]`.
fn agent_meta(enrolled_at_s: i64, version: &str) -> Vec<u8> {
    let mut meta = enrolled_at_s.to_be_bytes().to_vec();
    meta.extend_from_slice(version.as_bytes());
    meta
}

/// A stored SQL token's holder and expiry (`[expiry: i64 BE][holder]`).
fn sql_token_record(v: &[u8]) -> Result<(String, i64)> {
    let expires = v
        .get(0..8)
        .and_then(|b| b.try_into().ok())
        .map(i64::from_be_bytes)
        .ok_or_else(|| Error::Corrupt("SQL token record".into()))?;
    Ok((String::from_utf8_lossy(&v[8..]).into_owned(), expires))
}

impl DurableLog {
    /// Registers an agent's token hash, with when it enrolled and its
    /// version (at most 64 bytes, checked by the caller).
    pub fn put_agent(&self, agent_id: &str, token_hash: &[u8; 32], enrolled_at_s: i64, version: &str) -> Result<()> {
        let db = self.db()?;
        let mut v = token_hash.to_vec();
        v.extend(agent_meta(enrolled_at_s, version));
        db.put_cf_opt(cf(&db, CF_AGENTS)?, agent_id, v, &synced()).map_err(db_err)
    }

    /// The token hash of an agent.
    pub fn agent_token_hash(&self, agent_id: &str) -> Result<AgentToken> {
        let db = self.db()?;
        Ok(match db.get_cf(cf(&db, CF_AGENTS)?, agent_id).map_err(db_err)? {
            None => AgentToken::Unknown,
            Some(v) => agent_record(&v).0,
        })
    }

    /// Revokes an agent, keeping when it enrolled and its version; false
    /// when it was never enrolled.
    pub fn revoke_agent(&self, agent_id: &str) -> Result<bool> {
        let db = self.db()?;
        let _guard = self.lock();
        let Some(v) = db.get_cf(cf(&db, CF_AGENTS)?, agent_id).map_err(db_err)? else { return Ok(false) };
        let (_, enrolled, version) = agent_record(&v);
        let mut revoked = REVOKED.to_vec();
        if let Some(at) = enrolled {
            revoked.push(0);
            revoked.extend(agent_meta(at, &version));
        }
        db.put_cf_opt(cf(&db, CF_AGENTS)?, agent_id, revoked, &synced()).map_err(db_err)?;
        Ok(true)
    }

    /// Every agent enrolled here, revoked ones too, by id.
    pub fn agents(&self) -> Result<Vec<AgentEntry>> {
        let db = self.db()?;
        let mut out = Vec::new();
        for item in db.iterator_cf(cf(&db, CF_AGENTS)?, IteratorMode::Start) {
            let (k, v) = item.map_err(db_err)?;
            let (token, enrolled_at_s, version) = agent_record(&v);
            out.push(AgentEntry {
                agent_id: String::from_utf8_lossy(&k).into_owned(),
                revoked: token == AgentToken::Revoked,
                enrolled_at_s,
                version,
            });
        }
        Ok(out)
    }

    /// Stores a new enrollment code (by hash).
    pub fn put_code(&self, code_hash: &[u8; 32], max_uses: u32, expires_at_s: i64) -> Result<()> {
        let db = self.db()?;
        let mut v = max_uses.to_be_bytes().to_vec();
        v.extend_from_slice(&0u32.to_be_bytes());
        v.extend_from_slice(&expires_at_s.to_be_bytes());
        db.put_cf_opt(cf(&db, CF_CODES)?, code_hash, v, &synced()).map_err(db_err)
    }

    /// Uses one enrollment of a code, if it is known, unexpired and not
    /// used up.
    pub fn use_code(&self, code_hash: &[u8; 32], now_s: i64) -> Result<CodeUse> {
        let db = self.db()?;
        let _guard = self.lock();
        let Some(v) = db.get_cf(cf(&db, CF_CODES)?, code_hash).map_err(db_err)? else {
            return Ok(CodeUse::Unknown);
        };
        let (Some(max), Some(uses), Some(expires)) = (
            v.get(0..4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]])),
            v.get(4..8).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]])),
            v.get(8..16).and_then(|b| b.try_into().ok()).map(i64::from_be_bytes),
        ) else {
            return Err(Error::Corrupt("enrollment code record".into()));
        };
        if now_s > expires {
            return Ok(CodeUse::Expired);
        }
        if uses >= max {
            return Ok(CodeUse::UsedUp);
        }
        let mut updated = v.clone();
        updated[4..8].copy_from_slice(&(uses + 1).to_be_bytes());
        db.put_cf_opt(cf(&db, CF_CODES)?, code_hash, updated, &synced()).map_err(db_err)?;
        Ok(CodeUse::Accepted)
    }
}

impl DurableLog {
    /// Stores an analyst's SQL token (by hash) with its holder's name.
    pub fn put_sql_token(&self, token_hash: &[u8; 32], name: &str, expires_at_s: i64) -> Result<()> {
        let db = self.db()?;
        let mut v = expires_at_s.to_be_bytes().to_vec();
        v.extend_from_slice(name.as_bytes());
        db.put_cf_opt(cf(&db, CF_SQL_TOKENS)?, token_hash, v, &synced()).map_err(db_err)
    }

    /// The holder's name of a valid SQL token; `None` when the token is
    /// unknown or expired.
    pub fn sql_token(&self, token_hash: &[u8; 32], now_s: i64) -> Result<Option<String>> {
        let db = self.db()?;
        let Some(v) = db.get_cf(cf(&db, CF_SQL_TOKENS)?, token_hash).map_err(db_err)? else {
            return Ok(None);
        };
        let (name, expires) = sql_token_record(&v)?;
        Ok((now_s <= expires).then_some(name))
    }

    /// Every stored SQL token, expired ones too: (hash, holder, expiry),
    /// in hash order.
    pub fn sql_tokens(&self) -> Result<Vec<([u8; 32], String, i64)>> {
        let db = self.db()?;
        let mut out = Vec::new();
        for item in db.iterator_cf(cf(&db, CF_SQL_TOKENS)?, IteratorMode::Start) {
            let (k, v) = item.map_err(db_err)?;
            let hash = <[u8; 32]>::try_from(&k[..]).map_err(|_| Error::Corrupt("SQL token key".into()))?;
            let (name, expires) = sql_token_record(&v)?;
            out.push((hash, name, expires));
        }
        Ok(out)
    }

    /// Deletes the SQL tokens with these hashes, in one synced write.
    pub fn delete_sql_tokens(&self, hashes: &[[u8; 32]]) -> Result<()> {
        let db = self.db()?;
        let cf = cf(&db, CF_SQL_TOKENS)?;
        let mut wb = WriteBatch::default();
        for hash in hashes {
            wb.delete_cf(cf, hash);
        }
        db.write_opt(wb, &synced()).map_err(db_err)
    }
}

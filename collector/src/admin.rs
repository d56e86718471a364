//! Operator actions: enrollment codes, agent revocation and analysts' SQL
//! tokens.
//!
//! A running collector serves `leakwatch.v1.Admin` on its gRPC address and
//! writes `DATA_DIR/admin.json` (mode 0600: its address and a random admin
//! token) so that `leakwatch admin ... --data-dir DIR` on the same machine
//! reaches it; the file is removed at shutdown. When no collector runs on
//! the directory, the command opens the log itself.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use leakwatch_proto::v1::admin_client::AdminClient;
use leakwatch_proto::v1::admin_server::Admin;
use leakwatch_proto::v1::{
    AgentInfo, CreateEnrollmentCodeRequest, CreateEnrollmentCodeResponse, CreateSqlTokenRequest,
    CreateSqlTokenResponse, ListAgentsRequest, ListAgentsResponse, ListSqlTokensRequest, ListSqlTokensResponse,
    RevokeAgentRequest, RevokeAgentResponse, RevokeSqlTokensRequest, RevokeSqlTokensResponse, SqlTokenInfo,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tonic::{Request, Response, Status};

use crate::log::DurableLog;
use crate::server::DataDir;
use crate::{Error, Result};

/// Most uses of one enrollment code.
pub const MAX_CODE_USES: u32 = 1_000_000;

/// `DATA_DIR/admin.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminEndpoint {
    /// The collector's gRPC address.
    pub grpc: SocketAddr,
    /// Bearer token for the Admin service.
    pub token: String,
}

impl AdminEndpoint {
    /// The file's path in `data_dir`.
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join("admin.json")
    }

    /// Writes the file (mode 0600).
    pub fn write(&self, data_dir: &Path) -> Result<()> {
        let path = Self::path(data_dir);
        let json = serde_json::to_vec_pretty(self).map_err(|e| Error::Config(e.to_string()))?;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        use std::io::Write as _;
        options
            .open(&path)
            .and_then(|mut f| f.write_all(&json))
            .map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }
}

/// The `leakwatch.v1.Admin` service.
#[derive(Debug, Clone)]
pub struct AdminService {
    log: Arc<DurableLog>,
    token: String,
}

impl AdminService {
    /// A service over `log`, accepting `token`.
    pub fn new(log: Arc<DurableLog>, token: String) -> Self {
        Self { log, token }
    }

    /// Runs `work` on the log on a blocking thread.
    async fn on_log<T: Send + 'static>(
        &self,
        work: impl FnOnce(&DurableLog) -> Result<T> + Send + 'static,
    ) -> std::result::Result<T, Status> {
        let log = self.log.clone();
        Ok(tokio::task::spawn_blocking(move || work(&log)).await.map_err(|e| Status::internal(e.to_string()))??)
    }

    fn check<T>(&self, req: &Request<T>) -> std::result::Result<(), Status> {
        let given = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        let a = token_hash(given);
        let b = token_hash(&self.token);
        if !crate::same_secret(&a, &b) {
            return Err(Status::unauthenticated(
                "authorization: admin token missing or wrong (see DATA_DIR/admin.json)",
            ));
        }
        Ok(())
    }
}

/// Creates a code in `log`; returns it.
pub fn create_code(log: &DurableLog, code: &str, max_uses: u32, expires_at_s: i64, now_s: i64) -> Result<String> {
    let chosen = code.len();
    if chosen > 0
        && (!(16..=128).contains(&chosen) || !code.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'))
    {
        return Err(Error::Config(format!(
            "code: must be 16 to 128 bytes of [A-Za-z0-9_-] (got {chosen} bytes); leave it out for a random one"
        )));
    }
    if !(1..=MAX_CODE_USES).contains(&max_uses) {
        return Err(Error::Config(format!("max_uses: {max_uses} is outside 1..={MAX_CODE_USES}")));
    }
    if expires_at_s <= now_s {
        return Err(Error::Config(format!("expires_at_unix_s: {expires_at_s} is not in the future (now {now_s})")));
    }
    let code = if code.is_empty() { hex::encode(rand::random::<[u8; 16]>()) } else { code.to_string() };
    let hash = token_hash(&code);
    log.put_code(&hash, max_uses, expires_at_s)?;
    Ok(code)
}

/// Longest name of an SQL token's holder, bytes.
pub const MAX_SQL_TOKEN_NAME: usize = 64;

/// Creates an analyst's SQL token in `log`; returns it.
pub fn create_sql_token(log: &DurableLog, name: &str, expires_at_s: i64, now_s: i64) -> Result<String> {
    if name.is_empty() || name.len() > MAX_SQL_TOKEN_NAME {
        return Err(Error::Config(format!("name: {} bytes, must be 1 to {MAX_SQL_TOKEN_NAME}", name.len())));
    }
    if expires_at_s <= now_s {
        return Err(Error::Config(format!("expires_at_unix_s: {expires_at_s} is not in the future (now {now_s})")));
    }
    let token = format!("lwsql_{}", hex::encode(rand::random::<[u8; 24]>()));
    log.put_sql_token(&token_hash(&token), name, expires_at_s)?;
    Ok(token)
}

/// Hex digits of a token's hash that `leakwatch admin sql-tokens` shows
/// as its id.
pub const SQL_TOKEN_ID_DIGITS: usize = 12;

/// Fewest hex digits of an id that `revoke-sql-token --token` accepts.
pub const MIN_SQL_TOKEN_ID_DIGITS: usize = 8;

/// The analysts' tokens stored in `log`, expired ones too, by holder then
/// expiry.
pub fn list_sql_tokens(log: &DurableLog) -> Result<Vec<SqlTokenInfo>> {
    let mut out: Vec<SqlTokenInfo> = log
        .sql_tokens()?
        .into_iter()
        .map(|(hash, name, expires_at_unix_s)| SqlTokenInfo {
            id: hex::encode(&hash[..SQL_TOKEN_ID_DIGITS / 2]),
            name,
            expires_at_unix_s,
        })
        .collect();
    out.sort_by(|a, b| (&a.name, a.expires_at_unix_s, &a.id).cmp(&(&b.name, b.expires_at_unix_s, &b.id)));
    Ok(out)
}

/// Revokes the analysts' tokens held by `name`, or the one `token` names
/// (the token itself, or at least [`MIN_SQL_TOKEN_ID_DIGITS`] leading hex
/// digits of its id); exactly one of the two is given. Returns how many
/// were revoked.
pub fn revoke_sql_tokens(log: &DurableLog, name: &str, token: &str) -> Result<u32> {
    /// What picks the tokens to revoke.
    enum Pick {
        Holder(String),
        Hash([u8; 32]),
        IdPrefix(String),
    }
    let (name, token) = (name.trim(), token.trim());
    let pick = match (name.is_empty(), token.is_empty()) {
        (false, true) => Pick::Holder(name.to_string()),
        (true, false) if token.starts_with("lwsql_") => Pick::Hash(token_hash(token)),
        (true, false) => {
            let id = token.to_ascii_lowercase();
            if !(MIN_SQL_TOKEN_ID_DIGITS..=64).contains(&id.len()) || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(Error::Config(format!(
                    "token: {token:?} is neither a token (lwsql_...) nor an id of {MIN_SQL_TOKEN_ID_DIGITS} to 64 hex digits \
                     (see `leakwatch admin sql-tokens`)"
                )));
            }
            Pick::IdPrefix(id)
        }
        _ => return Err(Error::Config("give either a holder's name or one token (or its id), not both".into())),
    };
    let picked: Vec<[u8; 32]> = log
        .sql_tokens()?
        .into_iter()
        .filter(|(hash, holder, _)| match &pick {
            Pick::Holder(name) => holder == name,
            Pick::Hash(wanted) => hash == wanted,
            Pick::IdPrefix(id) => hex::encode(hash).starts_with(id.as_str()),
        })
        .map(|(hash, _, _)| hash)
        .collect();
    if let Pick::IdPrefix(id) = &pick
        && picked.len() > 1
    {
        return Err(Error::Config(format!("token: id {id} matches {} tokens; give more of its digits", picked.len())));
    }
    if !picked.is_empty() {
        log.delete_sql_tokens(&picked)?;
    }
    Ok(picked.len() as u32)
}

/// `leakwatch admin sql-tokens` output: a header and one line per token.
/// The enrolled agents, by id.
pub fn list_agents(log: &DurableLog) -> Result<Vec<AgentInfo>> {
    Ok(log
        .agents()?
        .into_iter()
        .map(|a| AgentInfo {
            agent_id: a.agent_id,
            enrolled_at_unix_s: a.enrolled_at_s.unwrap_or(0),
            agent_version: a.version,
            revoked: a.revoked,
        })
        .collect())
}

/// What the stored records say of one agent: how many, and when the last
/// arrived (Unix milliseconds).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AgentRecords {
    /// Records stored.
    pub records: u64,
    /// When the newest arrived, Unix milliseconds.
    pub last_ms: i64,
}

/// A table of `agents`, with what `stored` says of each.
fn agent_lines(agents: &[AgentInfo], stored: &std::collections::BTreeMap<String, AgentRecords>) -> String {
    let time = |secs: i64| if secs == 0 { "-".to_string() } else { utc_time(secs) };
    let mut out = format!(
        "{:<18}{:<21}{:<21}{:<12}{:>12}  STATE",
        "AGENT", "ENROLLED (UTC)", "LAST REPORT (UTC)", "VERSION", "RECORDS"
    );
    for a in agents {
        let s = stored.get(&a.agent_id).copied().unwrap_or_default();
        out.push_str(&format!(
            "\n{:<18}{:<21}{:<21}{:<12}{:>12}  {}",
            a.agent_id,
            time(a.enrolled_at_unix_s),
            time(s.last_ms.div_euclid(1000)),
            if a.agent_version.is_empty() { "-" } else { &a.agent_version },
            s.records,
            if a.revoked { "revoked" } else { "enrolled" }
        ));
    }
    let unknown = stored.keys().filter(|id| !agents.iter().any(|a| &a.agent_id == *id)).count();
    if unknown > 0 {
        out.push_str(&format!(
            "\n({unknown} more agents have records here but enrolled with another collector of the same store)"
        ));
    }
    out
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS` (UTC), as the tables show them.
fn utc_time(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .map(|d| d.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| secs.to_string())
}

fn sql_token_lines(tokens: &[SqlTokenInfo], now_s: i64) -> String {
    let mut out = format!("{:<14}{:<22}{:<9}NAME", "ID", "EXPIRES (UTC)", "STATE");
    for t in tokens {
        let expires = utc_time(t.expires_at_unix_s);
        let state = if now_s <= t.expires_at_unix_s { "valid" } else { "expired" };
        out.push_str(&format!("\n{:<14}{:<22}{:<9}{}", t.id, expires, state, t.name));
    }
    out
}

fn revoke_sql_line(name: &str, token: &str, revoked: u32) -> Result<String> {
    let token = token.trim();
    // A token itself is shown by its id, not printed back.
    let what = match (name.trim().is_empty(), token.starts_with("lwsql_")) {
        (false, _) => format!("holder {name:?}"),
        (true, true) => format!("token id {}", hex::encode(&token_hash(token)[..SQL_TOKEN_ID_DIGITS / 2])),
        (true, false) => format!("token id {token}"),
    };
    match revoked {
        0 => Err(Error::Config(format!("no SQL token of {what} is stored here (see `leakwatch admin sql-tokens`)"))),
        1 => Ok(format!("revoked 1 SQL token of {what}")),
        n => Ok(format!("revoked {n} SQL tokens of {what}")),
    }
}

/// The stored form of a secret.
pub fn token_hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn create_sql_token(
        &self,
        request: Request<CreateSqlTokenRequest>,
    ) -> std::result::Result<Response<CreateSqlTokenResponse>, Status> {
        self.check(&request)?;
        let req = request.into_inner();
        let now = chrono::Utc::now().timestamp();
        let name = req.name.clone();
        let token = self.on_log(move |log| create_sql_token(log, &name, req.expires_at_unix_s, now)).await?;
        tracing::info!(name = %req.name, expires_at = req.expires_at_unix_s, "Created SQL token");
        Ok(Response::new(CreateSqlTokenResponse { token }))
    }

    async fn list_sql_tokens(
        &self,
        request: Request<ListSqlTokensRequest>,
    ) -> std::result::Result<Response<ListSqlTokensResponse>, Status> {
        self.check(&request)?;
        let tokens = self.on_log(list_sql_tokens).await?;
        Ok(Response::new(ListSqlTokensResponse { tokens }))
    }

    async fn list_agents(
        &self,
        request: Request<ListAgentsRequest>,
    ) -> std::result::Result<Response<ListAgentsResponse>, Status> {
        self.check(&request)?;
        let agents = self.on_log(list_agents).await?;
        Ok(Response::new(ListAgentsResponse { agents }))
    }

    async fn revoke_sql_tokens(
        &self,
        request: Request<RevokeSqlTokensRequest>,
    ) -> std::result::Result<Response<RevokeSqlTokensResponse>, Status> {
        self.check(&request)?;
        let req = request.into_inner();
        let (name, token) = (req.name.clone(), req.token.clone());
        let revoked = self.on_log(move |log| revoke_sql_tokens(log, &name, &token)).await?;
        tracing::info!(name = %req.name, revoked, "Revoked SQL tokens");
        Ok(Response::new(RevokeSqlTokensResponse { revoked }))
    }

    async fn create_enrollment_code(
        &self,
        request: Request<CreateEnrollmentCodeRequest>,
    ) -> std::result::Result<Response<CreateEnrollmentCodeResponse>, Status> {
        self.check(&request)?;
        let req = request.into_inner();
        let now = chrono::Utc::now().timestamp();
        let (max_uses, expires_at) = (req.max_uses, req.expires_at_unix_s);
        let code = self.on_log(move |log| create_code(log, &req.code, max_uses, expires_at, now)).await?;
        tracing::info!(max_uses, expires_at, "Created enrollment code");
        Ok(Response::new(CreateEnrollmentCodeResponse { code }))
    }

    async fn revoke_agent(
        &self,
        request: Request<RevokeAgentRequest>,
    ) -> std::result::Result<Response<RevokeAgentResponse>, Status> {
        self.check(&request)?;
        let agent_id = request.into_inner().agent_id;
        if agent_id.is_empty() || agent_id.len() > 64 {
            return Err(Status::invalid_argument("agent_id: must be 1 to 64 bytes"));
        }
        let id = agent_id.clone();
        let revoked = self.on_log(move |log| log.revoke_agent(&id)).await?;
        tracing::info!(agent_id = %agent_id, revoked, "Revoked agent");
        Ok(Response::new(RevokeAgentResponse { revoked }))
    }
}

/// An operator action.
#[derive(Debug, Clone)]
pub enum AdminAction {
    /// Create an enrollment code.
    EnrollCode {
        /// The code, when the operator chooses it (empty: a random one).
        code: String,
        /// Uses allowed.
        max_uses: u32,
        /// Expiry, Unix seconds.
        expires_at_s: i64,
    },
    /// Revoke an agent.
    Revoke {
        /// Its id.
        agent_id: String,
    },
    /// Create an analyst's SQL token.
    SqlToken {
        /// Who holds it.
        name: String,
        /// Expiry, Unix seconds.
        expires_at_s: i64,
    },
    /// List the analysts' SQL tokens.
    SqlTokens,
    /// List the enrolled agents, with what `stored` says of each (by id).
    Agents {
        /// Records stored per agent id.
        stored: std::collections::BTreeMap<String, AgentRecords>,
    },
    /// Revoke analysts' SQL tokens: every one of a holder, or one.
    RevokeSqlToken {
        /// The holder (empty: by `token`).
        name: String,
        /// The token or its id (empty: by `name`).
        token: String,
    },
}

/// Parses an expiry: a duration from now (`30d`, `12h`, `45m`) or an
/// RFC 3339 time; returns Unix seconds.
pub fn parse_expiry(text: &str, now_s: i64) -> Result<i64> {
    let text = text.trim();
    let unit = |suffix: char, secs: i64| {
        text.strip_suffix(suffix).and_then(|n| n.parse::<i64>().ok()).map(|n| now_s + n.saturating_mul(secs))
    };
    unit('d', 86_400)
        .or_else(|| unit('h', 3_600))
        .or_else(|| unit('m', 60))
        .or_else(|| unit('s', 1))
        .or_else(|| chrono::DateTime::parse_from_rfc3339(text).ok().map(|t| t.timestamp()))
        .ok_or_else(|| Error::Config(format!("--expires {text:?}: use a duration (30d, 12h, 45m, 90s) or RFC 3339")))
}

/// Carries out `action` on the collector data in `data_dir`: through the
/// running collector when there is one, else on the log directly. Returns
/// the line to print.
pub async fn run(data_dir: &Path, action: AdminAction) -> Result<String> {
    let endpoint = std::fs::read(AdminEndpoint::path(data_dir))
        .ok()
        .and_then(|b| serde_json::from_slice::<AdminEndpoint>(&b).ok());
    if let Some(endpoint) = endpoint {
        let mut addr = endpoint.grpc;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        if let Ok(channel) = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| Error::Config(e.to_string()))?
            .connect()
            .await
        {
            let bearer: tonic::metadata::MetadataValue<_> =
                format!("Bearer {}", endpoint.token).parse().map_err(|_| Error::Config("bad admin token".into()))?;
            let mut client = AdminClient::with_interceptor(channel, move |mut req: Request<()>| {
                req.metadata_mut().insert("authorization", bearer.clone());
                Ok(req)
            });
            let refused = |s: Status| Error::Config(s.message().to_string());
            return match action {
                AdminAction::EnrollCode { code, max_uses, expires_at_s } => {
                    let req = CreateEnrollmentCodeRequest { max_uses, expires_at_unix_s: expires_at_s, code };
                    Ok(client.create_enrollment_code(req).await.map_err(refused)?.into_inner().code)
                }
                AdminAction::Revoke { agent_id } => {
                    let req = RevokeAgentRequest { agent_id: agent_id.clone() };
                    revoke_line(&agent_id, client.revoke_agent(req).await.map_err(refused)?.into_inner().revoked)
                }
                AdminAction::SqlToken { name, expires_at_s } => {
                    let req = CreateSqlTokenRequest { name, expires_at_unix_s: expires_at_s };
                    Ok(client.create_sql_token(req).await.map_err(refused)?.into_inner().token)
                }
                AdminAction::SqlTokens => {
                    let tokens = client.list_sql_tokens(ListSqlTokensRequest {}).await.map_err(refused)?.into_inner();
                    Ok(sql_token_lines(&tokens.tokens, chrono::Utc::now().timestamp()))
                }
                AdminAction::Agents { stored } => {
                    let agents = client.list_agents(ListAgentsRequest {}).await.map_err(refused)?.into_inner();
                    Ok(agent_lines(&agents.agents, &stored))
                }
                AdminAction::RevokeSqlToken { name, token } => {
                    let req = RevokeSqlTokensRequest { name: name.clone(), token: token.clone() };
                    let revoked = client.revoke_sql_tokens(req).await.map_err(refused)?.into_inner().revoked;
                    revoke_sql_line(&name, &token, revoked)
                }
            };
        }
    }
    // No collector running here: use the log directly.
    let log = DurableLog::open(&DataDir::new(data_dir.to_path_buf()).log())?;
    match action {
        AdminAction::EnrollCode { code, max_uses, expires_at_s } => {
            create_code(&log, &code, max_uses, expires_at_s, chrono::Utc::now().timestamp())
        }
        AdminAction::Revoke { agent_id } => {
            let revoked = log.revoke_agent(&agent_id)?;
            revoke_line(&agent_id, revoked)
        }
        AdminAction::SqlToken { name, expires_at_s } => {
            create_sql_token(&log, &name, expires_at_s, chrono::Utc::now().timestamp())
        }
        AdminAction::SqlTokens => Ok(sql_token_lines(&list_sql_tokens(&log)?, chrono::Utc::now().timestamp())),
        AdminAction::Agents { stored } => Ok(agent_lines(&list_agents(&log)?, &stored)),
        AdminAction::RevokeSqlToken { name, token } => {
            revoke_sql_line(&name, &token, revoke_sql_tokens(&log, &name, &token)?)
        }
    }
}

fn revoke_line(agent_id: &str, revoked: bool) -> Result<String> {
    if revoked {
        Ok(format!("revoked {agent_id}"))
    } else {
        Err(Error::Config(format!("no agent {agent_id:?} is enrolled here")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sql_tokens_are_revoked_by_holder_by_token_or_by_an_unambiguous_id() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = DurableLog::open(dir.path()).expect("open");
        let alice = create_sql_token(&log, "alice", 200, 100).expect("create");
        create_sql_token(&log, "alice", 300, 100).expect("create");
        let bob = create_sql_token(&log, "bob", 200, 100).expect("create");
        // Two stored hashes sharing their first 8 hex digits.
        let mut a = [0xabu8; 32];
        let mut b = [0xabu8; 32];
        a[4] = 1;
        b[4] = 2;
        log.put_sql_token(&a, "carol", 200).expect("put");
        log.put_sql_token(&b, "carol", 200).expect("put");

        let listed = list_sql_tokens(&log).expect("list");
        let names: Vec<&str> = listed.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["alice", "alice", "bob", "carol", "carol"]);
        assert!(listed.iter().all(|t| t.id.len() == SQL_TOKEN_ID_DIGITS));
        let lines = sql_token_lines(&listed, 250);
        assert_eq!(lines.lines().count(), 6, "{lines}");
        assert_eq!(lines.lines().filter(|l| l.contains(" expired ")).count(), 4, "{lines}");

        let err = revoke_sql_tokens(&log, "", "abababab").expect_err("ambiguous").to_string();
        assert!(err.contains("matches 2 tokens"), "{err}");
        assert_eq!(revoke_sql_tokens(&log, "", "ABABABAB01").expect("longer id"), 1);
        assert_eq!(revoke_sql_tokens(&log, "", &bob).expect("the token itself"), 1);
        assert_eq!(log.sql_token(&token_hash(&bob), 100).expect("get"), None);
        assert_eq!(revoke_sql_tokens(&log, "", "lwsql_unknown").expect("unknown token"), 0);
        for bad in ["abc", "not-hex-at-all", &"a".repeat(65)] {
            let err = revoke_sql_tokens(&log, "", bad).expect_err(bad).to_string();
            assert!(err.contains("8 to 64 hex digits"), "{bad}: {err}");
        }
        let err = revoke_sql_tokens(&log, "alice", &alice).expect_err("both").to_string();
        assert!(err.contains("not both"), "{err}");
        assert!(revoke_sql_tokens(&log, "", "").is_err());
        assert_eq!(revoke_sql_tokens(&log, "alice", "").expect("holder"), 2);
        assert_eq!(log.sql_token(&token_hash(&alice), 100).expect("get"), None);
        let left: Vec<String> = list_sql_tokens(&log).expect("list").into_iter().map(|t| t.name).collect();
        assert_eq!(left, ["carol"]);
        assert!(revoke_sql_line("alice", "", 0).is_err());
        assert_eq!(revoke_sql_line("alice", "", 2).expect("line"), "revoked 2 SQL tokens of holder \"alice\"");
        let line = revoke_sql_line("", &alice, 1).expect("line");
        assert!(!line.contains(&alice) && line.contains(&hex::encode(&token_hash(&alice)[..6])), "{line}");
    }
}

//! The agent's state directory: the install secret and collector
//! credentials.
//!
//! Layout (`--state-dir`, env `LEAKWATCH_AGENT_STATE_DIR`, default
//! `$XDG_STATE_HOME/leakwatch-agent` or `~/.local/state/leakwatch-agent`),
//! created with mode 0700 on first use:
//!
//! - `secret`: 32 random bytes, hex, mode 0600. Pseudonyms are
//!   HMAC-SHA256(secret, purpose ‖ input): the same label from the same
//!   install always gives the same pseudonym, and without the secret nobody
//!   can link a pseudonym to its label or to another install's.
//! - `credentials.json`: per collector URL, the agent id and token that
//!   `Enroll` returned, mode 0600.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::{Error, Result, io_error};

/// Agent credentials for one collector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    /// Agent id assigned by the collector.
    pub agent_id: String,
    /// Bearer token for `Report`.
    pub agent_token: String,
}

/// An opened state directory.
#[derive(Debug, Clone)]
pub struct AgentState {
    dir: PathBuf,
    secret: [u8; 32],
}

pub use leakwatch_core::paths::user_path;

/// The default state directory.
pub fn default_state_dir() -> PathBuf {
    user_path("XDG_STATE_HOME", ".local/state", "leakwatch-agent", "", ".leakwatch-agent")
}

/// Reads the JSON file of `what` at `path` in the state directory: the
/// default when there is none yet; an error naming it when it does not
/// parse.
pub(crate) fn read_json<T: serde::de::DeserializeOwned + Default>(path: PathBuf, what: &str) -> Result<T> {
    match fs::read(&path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).map_err(|e| Error::State { path, reason: format!("unreadable {what}: {e}") })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(source) => Err(Error::Io { path, source }),
    }
}

/// Writes `contents` to `path` readable by its owner only (see
/// [`write_atomically`]).
pub(crate) fn write_private(path: &Path, contents: &[u8]) -> Result<()> {
    write_atomically(path, contents, Some(0o600))
}

/// Writes `contents` to a temporary file beside `path` (mode `mode`, else
/// the old file's permissions, else the default), flushes it to disk and
/// renames it over `path`: a crash leaves the old file or the new one,
/// never part of either.
pub(crate) fn write_atomically(path: &Path, contents: &[u8], mode: Option<u32>) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
        if let Some(mode) = mode.or_else(|| fs::metadata(path).ok().map(|m| m.permissions().mode())) {
            options.mode(mode);
        }
    }
    let mut file = options.open(&tmp).map_err(io_error(&tmp))?;
    file.write_all(contents).map_err(io_error(&tmp))?;
    file.sync_all().map_err(io_error(&tmp))?;
    fs::rename(&tmp, path).map_err(io_error(path))?;
    // The rename reaches the disk with its directory.
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io_error(dir))
}

impl AgentState {
    /// Opens `dir`, creating it and the secret on first use.
    pub fn open(dir: &Path) -> Result<Self> {
        if !dir.exists() {
            let mut builder = fs::DirBuilder::new();
            builder.recursive(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::DirBuilderExt as _;
                builder.mode(0o700);
            }
            builder.create(dir).map_err(io_error(dir))?;
        }
        let path = dir.join("secret");
        let secret = match fs::read_to_string(&path) {
            Ok(text) => {
                let bytes = hex::decode(text.trim())
                    .map_err(|_| Error::State { path: path.clone(), reason: "the secret is not hex".into() })?;
                <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| Error::State {
                    path: path.clone(),
                    reason: format!("the secret has {} bytes, expected 32", bytes.len()),
                })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let secret: [u8; 32] = rand::random();
                write_private(&path, hex::encode(secret).as_bytes())?;
                secret
            }
            Err(source) => return Err(Error::Io { path, source }),
        };
        Ok(Self { dir: dir.to_path_buf(), secret })
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A 128-bit pseudonym (32 hex characters) of `input` for `purpose`
    /// ("device", "boot", "batch"), keyed with this install's secret.
    pub fn pseudonym(&self, purpose: &str, input: &[u8]) -> String {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.secret) else {
            unreachable!("HMAC accepts keys of any length")
        };
        mac.update(purpose.as_bytes());
        mac.update(&[0]);
        mac.update(input);
        hex::encode(&mac.finalize().into_bytes()[..16])
    }

    fn credentials_path(&self) -> PathBuf {
        self.dir.join("credentials.json")
    }

    fn all_credentials(&self) -> Result<BTreeMap<String, Credentials>> {
        let path = self.credentials_path();
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::State { path, reason: e.to_string() }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(source) => Err(Error::Io { path, source }),
        }
    }

    /// Stored credentials for `collector`, if this install enrolled there.
    pub fn credentials(&self, collector: &str) -> Result<Option<Credentials>> {
        Ok(self.all_credentials()?.remove(collector))
    }

    /// Drops the credentials for `collector` (before enrolling anew).
    pub fn forget_credentials(&self, collector: &str) -> Result<()> {
        let mut all = self.all_credentials()?;
        if all.remove(collector).is_some() {
            let json = serde_json::to_vec_pretty(&all)
                .map_err(|e| Error::State { path: self.credentials_path(), reason: e.to_string() })?;
            write_private(&self.credentials_path(), &json)?;
        }
        Ok(())
    }

    /// Stores credentials for `collector`.
    pub fn save_credentials(&self, collector: &str, creds: &Credentials) -> Result<()> {
        let mut all = self.all_credentials()?;
        all.insert(collector.to_string(), creds.clone());
        let json = serde_json::to_vec_pretty(&all)
            .map_err(|e| Error::State { path: self.credentials_path(), reason: e.to_string() })?;
        write_private(&self.credentials_path(), &json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudonyms_are_stable_per_install_and_differ_across_installs() {
        let a = tempfile::tempdir().expect("tempdir");
        let b = tempfile::tempdir().expect("tempdir");
        let s1 = AgentState::open(a.path()).expect("open");
        let s1_again = AgentState::open(a.path()).expect("reopen");
        let s2 = AgentState::open(b.path()).expect("open");
        let p = s1.pseudonym("device", b"kitchen-phone");
        assert_eq!(p, s1_again.pseudonym("device", b"kitchen-phone"));
        assert_ne!(p, s2.pseudonym("device", b"kitchen-phone"));
        assert_ne!(p, s1.pseudonym("boot", b"kitchen-phone"));
        assert_eq!(p.len(), 32);
    }

    #[test]
    fn credentials_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = AgentState::open(dir.path()).expect("open");
        assert_eq!(state.credentials("http://c").expect("read"), None);
        let creds = Credentials { agent_id: "a1".into(), agent_token: "t1".into() };
        state.save_credentials("http://c", &creds).expect("save");
        assert_eq!(state.credentials("http://c").expect("read"), Some(creds));
    }
}

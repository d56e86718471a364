//! Where the flushed files go: a local directory or this collector's
//! directory in a shared S3-compatible store, through `object_store`; the
//! keys are [`FlowFile`]'s.

use std::path::PathBuf;
use std::sync::Arc;

use leakwatch_query::files::{FLOWS_DIR, FlowFile};
use leakwatch_query::{FlowStore, S3Options, parse_s3_url, s3_store};
use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt as _};

use crate::{Error, Result};

/// An S3-compatible store shared by collectors: `s3://BUCKET/PREFIX`,
/// each collector writing under `PREFIX/COLLECTOR_ID/`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SharedStore {
    /// `s3://BUCKET/PREFIX`.
    pub url: String,
    /// Endpoint URL for stores other than AWS (else `AWS_ENDPOINT_URL`).
    pub endpoint: Option<String>,
    /// Region (else `AWS_REGION`, else `us-east-1`).
    pub region: Option<String>,
    /// This collector's directory under the prefix.
    pub collector_id: String,
    /// Access key id and secret in place of the AWS environment's (for
    /// embedding; never recorded in the data directory).
    #[serde(skip)]
    pub credentials: Option<(String, String)>,
}

/// Longest collector id.
pub const MAX_COLLECTOR_ID_LEN: usize = 64;

/// Checks a collector id: 1 to 64 characters of `A-Z a-z 0-9 . _ -`, not
/// starting with a dot.
pub fn check_collector_id(id: &str) -> Result<()> {
    let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if id.is_empty() || id.len() > MAX_COLLECTOR_ID_LEN || !id.chars().all(valid) || id.starts_with('.') {
        return Err(Error::Config(format!(
            "--collector-id {id:?}: must be 1 to {MAX_COLLECTOR_ID_LEN} characters of A-Z, a-z, 0-9, '.', '_' and '-', not starting with '.'"
        )));
    }
    Ok(())
}

impl SharedStore {
    fn options(&self) -> S3Options {
        S3Options {
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            credentials: self.credentials.clone(),
        }
    }

    /// Where this collector's files are read from by SQL: every
    /// collector's files under the prefix, the watermark applying to this
    /// one's.
    pub fn flow_store(&self) -> Result<FlowStore> {
        Ok(FlowStore::s3(&self.url, &self.options(), Some(&self.collector_id))?)
    }
}

/// Where Parquet files go, through `object_store`: a local directory
/// (default) or a prefix of an S3-compatible bucket.
#[derive(Debug, Clone)]
pub struct DataStore {
    pub(super) store: Arc<dyn ObjectStore>,
    /// Key prefix of `flows/` (empty for a local directory).
    prefix: StorePath,
    /// The local directory, whose writes need an explicit fsync.
    pub(super) local: Option<PathBuf>,
    /// The store as SQL reads it.
    flows: FlowStore,
    /// Rows of the files compaction has looked at or this process wrote
    /// (files never change once written; an entry goes with its file).
    rows: Arc<std::sync::Mutex<std::collections::HashMap<StorePath, u64>>>,
}

impl DataStore {
    /// A local store rooted at `root` (created if missing).
    pub fn local(root: PathBuf) -> Result<Self> {
        std::fs::create_dir_all(&root).map_err(Error::io(format!("creating {}", root.display())))?;
        let store =
            LocalFileSystem::new_with_prefix(&root).map_err(Error::store(format!("opening {}", root.display())))?;
        let flows = FlowStore::local(&root)?;
        Ok(Self {
            store: Arc::new(store),
            prefix: StorePath::default(),
            local: Some(root),
            flows,
            rows: Arc::default(),
        })
    }

    /// This collector's directory in a shared S3-compatible store.
    pub fn shared(shared: &SharedStore) -> Result<Self> {
        check_collector_id(&shared.collector_id)?;
        let (bucket, prefix) = parse_s3_url(&shared.url)?;
        let store = s3_store(&bucket, &shared.options())?;
        let flows = FlowStore::in_bucket(store.clone(), &bucket, &prefix, Some(&shared.collector_id))?;
        let prefix = StorePath::from(prefix.as_str()).join(shared.collector_id.as_str());
        Ok(Self { store, prefix, local: None, flows, rows: Arc::default() })
    }

    /// The store as SQL reads it.
    pub fn flow_store(&self) -> FlowStore {
        self.flows.clone()
    }

    /// Whether the files written here list their batches in the footer
    /// ([`BATCHES_KEY`]): only in a shared store, whose readers look for
    /// a batch two collectors stored; in a local one the list would
    /// repeat the `batch_id` and `agent_id` columns for no reader (with a
    /// batch per boot, a seventh of the file).
    pub fn lists_batches(&self) -> bool {
        self.local.is_none()
    }

    /// The key of `file` in this store.
    pub(super) fn flow_file(&self, file: &FlowFile) -> StorePath {
        file.key(&self.prefix)
    }

    /// Records that the file at `path` holds `rows` rows.
    pub(super) fn note_rows(&self, path: &StorePath, rows: u64) {
        self.rows.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(path.clone(), rows);
    }

    /// The rows of the file `meta` names, from its footer (ranged reads)
    /// the first time.
    pub(super) async fn rows_of(&self, meta: &object_store::ObjectMeta) -> Result<u64> {
        let path = &meta.location;
        if let Some(&rows) = self.rows.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(path) {
            return Ok(rows);
        }
        let footer = leakwatch_query::footer_of(self.store.as_ref(), meta).await?;
        let rows = u64::try_from(footer.file_metadata().num_rows()).unwrap_or(0);
        self.note_rows(path, rows);
        Ok(rows)
    }

    /// Every file of the `flows` table with its day (`YYYY-MM-DD`).
    pub(super) async fn flow_files(&self) -> Result<Vec<(FlowFile, object_store::ObjectMeta)>> {
        use futures::TryStreamExt as _;
        let files: Vec<_> = self
            .store
            .list(Some(&self.prefix.clone().join(FLOWS_DIR)))
            .try_collect()
            .await
            .map_err(Error::store("listing flows"))?;
        Ok(files
            .into_iter()
            .filter_map(|meta| {
                let parts: Vec<String> =
                    meta.location.prefix_match(&self.prefix)?.map(|p| p.as_ref().to_string()).collect();
                let (_, file) = FlowFile::parse(&parts)?;
                Some((file, meta))
            })
            .collect())
    }

    /// Deletes `path`, unless a running query of this process planned to
    /// read it: then it stays for a later pass (false).
    pub(super) async fn delete(&self, path: &StorePath) -> Result<bool> {
        if self.flows.is_pinned(path) {
            tracing::debug!(%path, "Left for a later pass: a running query reads it");
            return Ok(false);
        }
        self.store.delete(path).await.map_err(Error::store(format!("deleting {path}")))?;
        self.rows.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(path);
        Ok(true)
    }

    /// Moves this collector's flushed files whose footer does not read
    /// (found by queries, see `FlowStore::unreadable`) from
    /// `flows/day=D/` to `quarantine/day=D/`, where no query lists them
    /// and their bytes stay for whoever can repair them; returns how many
    /// went. Their rows are left out of every answer from then on (the
    /// log no longer holds them once flushed).
    pub async fn set_aside_unreadable(&self) -> Result<u64> {
        let mut moved = 0;
        for (file, why) in self.flows.unreadable() {
            let Some(key) = self.own_key(&file) else { continue };
            let parts: Vec<String> = key.parts().map(|p| p.as_ref().to_string()).collect();
            let Some((_, flow_file)) = FlowFile::parse(&parts) else { continue };
            let to = flow_file.quarantine_key(&self.prefix);
            self.store
                .rename(&key, &to)
                .await
                .map_err(Error::store(format!("setting aside the unreadable file {key}")))?;
            self.rows.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&key);
            self.flows.set_aside(&file);
            tracing::error!(file = %key, to = %to, reason = %why, "Set aside an unreadable flushed file; answers leave its rows out");
            moved += 1;
        }
        Ok(moved)
    }

    /// The key in this store of `file` (a key as queries list it), when it
    /// is one of this collector's flushed files.
    fn own_key(&self, file: &StorePath) -> Option<StorePath> {
        match &self.local {
            Some(root) => {
                let abs = std::path::absolute(root).ok()?;
                let root = StorePath::from_absolute_path(&abs).ok()?;
                let rest: Vec<_> = file.prefix_match(&root)?.collect();
                (rest.first().map(|p| p.as_ref()) == Some(FLOWS_DIR)).then(|| StorePath::from_iter(rest))
            }
            None => file.prefix_match(&self.prefix.clone().join(FLOWS_DIR)).map(|_| file.clone()),
        }
    }

    pub(super) async fn put_durable(&self, path: &StorePath, bytes: Vec<u8>) -> Result<()> {
        self.store.put(path, bytes.into()).await.map_err(Error::store(format!("writing {path}")))?;
        // An S3 PUT is durable once answered. The local store renames a
        // temporary file into place but does not fsync; the log entries
        // are deleted after this, so make the file and its directory
        // entries durable first.
        let Some(root) = &self.local else { return Ok(()) };
        let local = root.join(path.as_ref());
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            std::fs::File::open(&local)?.sync_all()?;
            let mut dir = local.parent();
            for _ in 0..3 {
                let Some(d) = dir else { break };
                std::fs::File::open(d)?.sync_all()?;
                dir = d.parent();
            }
            Ok(())
        })
        .await
        .map_err(Error::task("syncing a flushed file"))?
        .map_err(Error::io(format!("syncing {path}")))
    }
}

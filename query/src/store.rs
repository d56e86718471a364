//! Where the flushed `flows` files are ([`FlowStore`]: a local directory
//! or an S3-compatible bucket), and the object stores a session can reach:
//! the data store, read-only, and nothing else. SQL cannot name files
//! anyway (no DDL, no URL tables); this is the second wall, so that a
//! planner bug or a future table function still cannot read or write
//! outside the store.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex};

use datafusion::datasource::listing::ListingTableUrl;
use datafusion::error::DataFusionError;
use datafusion::execution::object_store::{DefaultObjectStoreRegistry, ObjectStoreRegistry as _, ObjectStoreUrl};
use datafusion::parquet::arrow::arrow_reader::ArrowReaderOptions;
use datafusion::parquet::arrow::async_reader::AsyncFileReader;
use datafusion::parquet::errors::ParquetError;
use datafusion::parquet::file::metadata::ParquetMetaData;
use futures::FutureExt as _;
use futures::StreamExt as _;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions,
    PutOptions, PutPayload, PutResult,
};

use crate::files::FlowFile;

/// How to reach an S3-compatible store. Credentials come from the usual
/// AWS variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
/// `AWS_SESSION_TOKEN`); these fields override `AWS_ENDPOINT_URL` and
/// `AWS_REGION`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct S3Options {
    /// Endpoint URL (`http://127.0.0.1:9000`) for stores other than AWS;
    /// plain `http://` is allowed only here, stated explicitly.
    pub endpoint: Option<String>,
    /// Region (default `us-east-1`).
    pub region: Option<String>,
    /// Access key id and secret, in place of the environment's.
    pub credentials: Option<(String, String)>,
}

/// A store of Parquet files that cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Not an `s3://` URL (the caller's fault).
    #[error("store {url:?}: expected s3://BUCKET/PREFIX")]
    NotS3 {
        /// The URL given.
        url: String,
    },
    /// The bucket's name is not one S3 allows (the caller's fault).
    #[error("store {url:?}: bucket {bucket:?} must be 3 to 63 characters of a-z, 0-9, '-' and '.'")]
    Bucket {
        /// The URL given.
        url: String,
        /// Its bucket.
        bucket: String,
    },
    /// The S3 client could not be made from the settings and environment.
    #[error("S3 store for bucket {bucket:?}: {source}")]
    S3 {
        /// The bucket.
        bucket: String,
        /// The client's error.
        #[source]
        source: object_store::Error,
    },
    /// A local directory's path does not resolve.
    #[error("{path}: {source}")]
    LocalPath {
        /// The path.
        path: String,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// A local directory's path is not one the object store takes.
    #[error("{path}: {source}")]
    StorePath {
        /// The path.
        path: String,
        /// The store's error.
        #[source]
        source: object_store::path::Error,
    },
    /// The bucket does not make a store URL.
    #[error("bucket {bucket:?}: {source}")]
    Url {
        /// The bucket.
        bucket: String,
        /// DataFusion's error.
        #[source]
        source: DataFusionError,
    },
}

impl StoreError {
    /// Whether the caller gave a bad URL (not the store failing).
    pub fn is_callers(&self) -> bool {
        matches!(self, Self::NotS3 { .. } | Self::Bucket { .. })
    }
}

/// `s3://BUCKET/PREFIX` split into the bucket and the key prefix (without
/// slashes at either end; may be empty).
pub fn parse_s3_url(url: &str) -> Result<(String, String), StoreError> {
    let rest = url.strip_prefix("s3://").ok_or_else(|| StoreError::NotS3 { url: url.to_string() })?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let valid = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.';
    if bucket.len() < 3 || bucket.len() > 63 || !bucket.chars().all(valid) {
        return Err(StoreError::Bucket { url: url.to_string(), bucket: bucket.to_string() });
    }
    Ok((bucket.to_string(), prefix.trim_matches('/').to_string()))
}

/// An S3 client for `bucket` with `options`, the AWS environment filling
/// in what they leave out.
pub fn s3_store(bucket: &str, options: &S3Options) -> Result<Arc<dyn ObjectStore>, StoreError> {
    let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
    if let Some(endpoint) = &options.endpoint {
        builder = builder.with_endpoint(endpoint).with_allow_http(endpoint.starts_with("http://"));
    }
    if let Some(region) = &options.region {
        builder = builder.with_region(region);
    }
    if let Some((key_id, secret)) = &options.credentials {
        builder = builder.with_access_key_id(key_id).with_secret_access_key(secret);
    }
    Ok(Arc::new(builder.build().map_err(|source| StoreError::S3 { bucket: bucket.to_string(), source })?))
}

/// Where the flushed `flows` files are: `ROOT/flows/day=YYYY-MM-DD/*.parquet`
/// for one collector on a local disk, or `PREFIX/COLLECTOR/flows/day=...`
/// for any number of collectors sharing a bucket.
#[derive(Clone)]
pub struct FlowStore {
    store: Arc<dyn ObjectStore>,
    url: ObjectStoreUrl,
    root: Path,
    /// Directory under `root` of the collector whose watermark applies
    /// (empty: `root` itself; None: no collector's).
    own: Option<String>,
    /// Other collectors' directories are read too.
    shared: bool,
    described: String,
    /// Batches listed in each file's footer, by key and size.
    footers: Arc<Mutex<FooterCache>>,
    /// Each file's footer check, by key and size: `Some(why)` for a file
    /// whose footer does not read (truncated, damaged), which queries
    /// leave out (see [`FlowStore::unreadable`]).
    checked: Arc<Mutex<FooterChecks>>,
    /// Unreadable files the collector set aside so far.
    set_aside: Arc<std::sync::atomic::AtomicU64>,
    /// Days the own collector keeps: its files of older days are left out
    /// (retention deletes them a little later, once queries that listed
    /// them finished).
    retention_days: Option<u32>,
    /// The files running queries of this process planned to read, each
    /// with how many hold it: retention and compaction leave them until
    /// the last of those queries ends ([`FlowStore::is_pinned`]).
    pins: Pins,
}

/// Pinned files by [`pin_key`].
type Pins = Arc<Mutex<HashMap<String, usize>>>;

/// What identifies a flushed file for pinning: its day directory and name
/// (`day=2026-10-01/…-….parquet`), the same whichever store prefix or
/// root a path is relative to. Two collectors' files of one day and range
/// share it, which can only delay a deletion.
pub fn pin_key(path: &Path) -> String {
    let parts: Vec<&str> = path.as_ref().rsplit('/').take(2).collect();
    parts.into_iter().rev().collect::<Vec<_>>().join("/")
}

/// The files one query session planned to read, held until it is dropped.
#[derive(Debug)]
pub struct FilePins {
    pins: Pins,
    keys: Vec<String>,
}

impl Drop for FilePins {
    fn drop(&mut self) {
        let mut pins = self.pins.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for key in &self.keys {
            if let Some(n) = pins.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    pins.remove(key);
                }
            }
        }
    }
}

type FooterCache = HashMap<(Path, u64), Arc<Vec<(String, String)>>>;
/// Each file's footer check by key and size: `Some(why)` when it does not
/// read.
type FooterChecks = HashMap<(Path, u64), Option<String>>;

impl fmt::Debug for FlowStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.described)
    }
}

impl fmt::Display for FlowStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.described)
    }
}

impl FlowStore {
    /// The files of one collector under the local directory `dir` (which
    /// holds `flows/`; it need not exist yet).
    pub fn local(dir: &std::path::Path) -> Result<Self, StoreError> {
        let abs = std::path::absolute(dir)
            .map_err(|source| StoreError::LocalPath { path: dir.display().to_string(), source })?;
        let root = Path::from_absolute_path(&abs)
            .map_err(|source| StoreError::StorePath { path: abs.display().to_string(), source })?;
        Ok(Self {
            store: Arc::new(ReadOnlyStore::local(&abs)),
            url: ObjectStoreUrl::local_filesystem(),
            root,
            own: Some(String::new()),
            shared: false,
            described: abs.display().to_string(),
            footers: Arc::default(),
            checked: Arc::default(),
            set_aside: Arc::default(),
            retention_days: None,
            pins: Arc::default(),
        })
    }

    /// The files of every collector under `s3://BUCKET/PREFIX`; the
    /// watermark applies to collector `own`'s (None: to none, as for a
    /// reader that is no collector).
    pub fn s3(url: &str, options: &S3Options, own: Option<&str>) -> Result<Self, StoreError> {
        let (bucket, prefix) = parse_s3_url(url)?;
        Self::in_bucket(s3_store(&bucket, options)?, &bucket, &prefix, own)
    }

    /// [`Self::s3`] through an existing `client` of `bucket` (which this
    /// store only reads with).
    pub fn in_bucket(
        client: Arc<dyn ObjectStore>,
        bucket: &str,
        prefix: &str,
        own: Option<&str>,
    ) -> Result<Self, StoreError> {
        let root = Path::from(prefix);
        let url = ObjectStoreUrl::parse(format!("s3://{bucket}"))
            .map_err(|source| StoreError::Url { bucket: bucket.to_string(), source })?;
        let store = ReadOnlyStore { inner: client, roots: vec![root.clone()] };
        Ok(Self {
            store: Arc::new(store),
            url,
            root,
            own: own.map(str::to_string),
            shared: true,
            described: format!("s3://{bucket}/{prefix}"),
            footers: Arc::default(),
            checked: Arc::default(),
            set_aside: Arc::default(),
            retention_days: None,
            pins: Arc::default(),
        })
    }

    /// Holds `keys` (files a query planned to read) until the returned
    /// guard is dropped.
    pub(crate) fn pin(&self, paths: &[&Path]) -> FilePins {
        let keys: Vec<String> = paths.iter().map(|p| pin_key(p)).collect();
        let mut pins = self.pins.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for key in &keys {
            *pins.entry(key.clone()).or_default() += 1;
        }
        FilePins { pins: self.pins.clone(), keys }
    }

    /// Whether a running query of this process planned to read `key`: a
    /// retention or compaction pass leaves it for a later pass.
    pub fn is_pinned(&self, path: &Path) -> bool {
        self.pins.lock().unwrap_or_else(std::sync::PoisonError::into_inner).contains_key(&pin_key(path))
    }

    /// This store with the own collector's files of days older than
    /// `days` days (UTC) left out of every query: the day a retention of
    /// `days` deletes, it is no longer read, so that a query that listed
    /// it never finds it gone.
    #[must_use]
    pub fn with_retention(self, days: Option<u32>) -> Self {
        Self { retention_days: days, ..self }
    }

    /// True when several collectors' files are read.
    pub(crate) fn is_shared(&self) -> bool {
        self.shared
    }

    /// A registry whose only store is this one, read-only.
    pub(crate) fn registry(&self) -> DefaultObjectStoreRegistry {
        let registry = DefaultObjectStoreRegistry::new();
        registry.register_store(self.url.as_ref(), self.store.clone());
        registry
    }

    /// The files a query reads. Per collector and day: the own
    /// collector's files at or below `watermark` only (files above it
    /// belong to a flush in progress, whose rows are still read from the
    /// tail; another collector's such files hold exactly the rows their
    /// redone flush writes again), leaving out any whose range lies inside
    /// another file's range (the inputs of a compaction not yet deleted).
    pub(crate) async fn files(&self, watermark: u64) -> crate::Result<Vec<Listed>> {
        // Per (collector, day): each file with its sequence range.
        type Ranged = Vec<(ObjectMeta, (u64, u64))>;
        let mut groups: BTreeMap<(String, String), Ranged> = BTreeMap::new();
        let expired_before = self.retention_days.and_then(|days| {
            let today = chrono::Utc::now().date_naive();
            Some(today.checked_sub_days(chrono::Days::new(u64::from(days)))?.format("%Y-%m-%d").to_string())
        });
        let mut listing = self.store.list(Some(&self.root));
        while let Some(meta) = listing.next().await {
            let meta = match meta {
                Ok(meta) => meta,
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(source) => return Err(crate::Error::ObjectStore { context: format!("listing {self}"), source }),
            };
            let Some(parts) = meta.location.prefix_match(&self.root) else { continue };
            let parts: Vec<String> = parts.map(|p| p.as_ref().to_string()).collect();
            let Some((collector, file)) = FlowFile::parse(&parts) else { continue };
            let collector = collector.join("/");
            if !self.shared && !collector.is_empty() {
                continue;
            }
            if self.own.as_deref() == Some(collector.as_str())
                && (file.to > watermark || expired_before.as_ref().is_some_and(|cutoff| file.day < *cutoff))
            {
                continue;
            }
            groups.entry((collector, file.day)).or_default().push((meta, (file.from, file.to)));
        }
        let mut out = Vec::new();
        for ((collector, _), ranged) in groups {
            for (meta, (from, to)) in &ranged {
                let covered = ranged
                    .iter()
                    .any(|(other, outer)| other.location != meta.location && crate::range_within((*from, *to), *outer));
                if !covered {
                    let url = ListingTableUrl::parse(format!("{}{}", self.url.as_str(), meta.location))?;
                    out.push(Listed { collector: collector.clone(), meta: meta.clone(), url });
                }
            }
        }
        Ok(out)
    }

    /// `files` less those whose footer does not read: a truncated or
    /// damaged file would make every query over the store fail, so it is
    /// left out, named in the log once, and listed by [`Self::unreadable`]
    /// (the collector sets it aside). Footers are read once per file.
    pub(crate) async fn readable(&self, files: Vec<Listed>) -> Vec<Listed> {
        let key = |f: &Listed| (f.meta.location.clone(), f.meta.size);
        let unchecked: Vec<ObjectMeta> = {
            let checked = self.checked.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            files.iter().filter(|f| !checked.contains_key(&key(f))).map(|f| f.meta.clone()).collect()
        };
        if !unchecked.is_empty() {
            let reads: Vec<_> = unchecked
                .into_iter()
                .map(|meta| {
                    let store = self.store.clone();
                    async move {
                        let why = footer_of(store.as_ref(), &meta).await.err().map(|e| e.to_string());
                        ((meta.location, meta.size), why)
                    }
                })
                .collect();
            let read: Vec<_> = futures::stream::iter(reads).buffer_unordered(16).collect().await;
            let mut checked = self.checked.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            for (key, why) in read {
                if let Some(why) = &why {
                    tracing::error!(file = %key.0, error = %why, "A flushed file is unreadable; queries leave it out");
                }
                checked.insert(key, why);
            }
        }
        let checked = self.checked.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        files.into_iter().filter(|f| matches!(checked.get(&key(f)), Some(None))).collect()
    }

    /// Files queries leave out because their footer does not read, with
    /// why: their keys in the store.
    pub fn unreadable(&self) -> Vec<(Path, String)> {
        let checked = self.checked.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out: Vec<(Path, String)> =
            checked.iter().filter_map(|((path, _), why)| Some((path.clone(), why.clone()?))).collect();
        out.sort();
        out
    }

    /// Notes that the collector set aside `file` (moved out of the files
    /// queries list), which [`Self::unreadable`] then no longer names.
    pub fn set_aside(&self, file: &Path) {
        let mut checked = self.checked.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        checked.retain(|(path, _), _| path != file);
        self.set_aside.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Unreadable files left out of queries now, and set aside so far by
    /// this process.
    pub fn unreadable_counts(&self) -> (usize, u64) {
        (self.unreadable().len(), self.set_aside.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// The copies of batches that `files` and the own collector's tail
    /// (`tail`: its `(agent_id, batch_id)` pairs) hold twice, to be left
    /// out (see the `copies` module). Always empty for one collector's
    /// local store. Each file's footer is read once and remembered.
    pub(crate) async fn losing_copies(
        &self,
        files: &[Listed],
        tail: &HashSet<(String, String)>,
    ) -> crate::Result<Vec<(String, String)>> {
        if !self.shared {
            return Ok(Vec::new());
        }
        let key = |f: &Listed| (f.meta.location.clone(), f.meta.size);
        let missing: Vec<ObjectMeta> = {
            let cache = self.footers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            files.iter().filter(|f| !cache.contains_key(&key(f))).map(|f| f.meta.clone()).collect()
        };
        // Owned futures (no borrow in them), read 16 at a time.
        let reads: Vec<_> = missing
            .into_iter()
            .map(|meta| {
                let this = self.clone();
                async move {
                    let pairs = this.batch_list_of(&meta).await;
                    ((meta.location, meta.size), pairs)
                }
            })
            .collect();
        let read: Vec<_> = futures::stream::iter(reads).buffer_unordered(16).collect().await;
        let mut cache = self.footers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for (k, pairs) in read {
            cache.insert(k, Arc::new(pairs?));
        }
        // Forget files that are gone (compacted, expired).
        let live: HashSet<_> = files.iter().map(key).collect();
        cache.retain(|k, _| live.contains(k));
        let own = self.own.clone().unwrap_or_default();
        let mut held: Vec<(&str, &(String, String))> = Vec::new();
        for f in files {
            if let Some(pairs) = cache.get(&key(f)) {
                held.extend(pairs.iter().map(|p| (f.collector.as_str(), p)));
            }
        }
        held.extend(tail.iter().map(|p| (own.as_str(), p)));
        Ok(crate::copies::losing_copies(held))
    }

    /// The `(agent_id, batch_id)` pairs of `file` as the last
    /// [`Self::losing_copies`] read them (`None` for a store that is not
    /// shared, or a file it did not list).
    pub(crate) fn batches_listed(&self, file: &Listed) -> Option<Arc<Vec<(String, String)>>> {
        let cache = self.footers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        cache.get(&(file.meta.location.clone(), file.meta.size)).cloned()
    }

    /// The `(agent_id, batch_id)` pairs of a file: those its footer lists,
    /// or, for a file without the list (written to a local store and
    /// moved here, or before footers listed batches), those of its
    /// `agent_id` and `batch_id` columns (read alone, with ranged reads).
    async fn batch_list_of(&self, meta: &ObjectMeta) -> crate::Result<Vec<(String, String)>> {
        let footer = footer_of(self.store.as_ref(), meta).await?;
        let listed = footer
            .file_metadata()
            .key_value_metadata()
            .and_then(|kv| kv.iter().find(|kv| kv.key == crate::files::BATCHES_KEY))
            .and_then(|kv| kv.value.as_deref())
            .map(crate::copies::parse_batch_list);
        match listed {
            Some(pairs) => Ok(pairs),
            None => batch_columns_of(self.store.clone(), meta, footer).await,
        }
    }
}

/// The distinct `(agent_id, batch_id)` pairs of the rows of the file
/// `meta` names (whose footer is `footer`), from those two columns alone.
async fn batch_columns_of(
    store: Arc<dyn ObjectStore>,
    meta: &ObjectMeta,
    footer: Arc<ParquetMetaData>,
) -> crate::Result<Vec<(String, String)>> {
    use datafusion::parquet::arrow::ProjectionMask;
    use datafusion::parquet::arrow::arrow_reader::ArrowReaderMetadata;
    use datafusion::parquet::arrow::async_reader::ParquetRecordBatchStreamBuilder;
    use futures::TryStreamExt as _;
    let failed = |e: ParquetError| crate::Error::Parquet {
        context: format!("reading the batches of {}", meta.location),
        source: DataFusionError::from(e),
    };
    let metadata = ArrowReaderMetadata::try_new(footer.clone(), Default::default()).map_err(failed)?;
    let mask = ProjectionMask::columns(metadata.parquet_schema(), ["agent_id", "batch_id"]);
    let reader = RangeReader { store, path: meta.location.clone(), footer };
    let mut rows = ParquetRecordBatchStreamBuilder::new_with_metadata(reader, metadata)
        .with_projection(mask)
        .build()
        .map_err(failed)?;
    let mut pairs = HashSet::new();
    while let Some(batch) = rows.try_next().await.map_err(failed)? {
        crate::copies::batch_pairs([&batch], &mut pairs);
    }
    Ok(pairs.into_iter().collect())
}

/// Ranged reads of one file whose footer is already read.
struct RangeReader {
    store: Arc<dyn ObjectStore>,
    path: Path,
    footer: Arc<ParquetMetaData>,
}

impl AsyncFileReader for RangeReader {
    fn get_bytes(&mut self, range: std::ops::Range<u64>) -> BoxFuture<'_, Result<bytes::Bytes, ParquetError>> {
        use object_store::ObjectStoreExt as _;
        async move { self.store.get_range(&self.path, range).await.map_err(|e| ParquetError::External(Box::new(e))) }
            .boxed()
    }

    /// In one call to the store, which may merge nearby ranges.
    fn get_byte_ranges(
        &mut self,
        ranges: Vec<std::ops::Range<u64>>,
    ) -> BoxFuture<'_, Result<Vec<bytes::Bytes>, ParquetError>> {
        async move { self.store.get_ranges(&self.path, &ranges).await.map_err(|e| ParquetError::External(Box::new(e))) }
            .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        _options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, Result<Arc<ParquetMetaData>, ParquetError>> {
        futures::future::ready(Ok(self.footer.clone())).boxed()
    }
}

/// The Parquet footer of the file `meta` names in `store`, read with
/// ranged reads (not the whole file).
pub async fn footer_of(store: &dyn ObjectStore, meta: &ObjectMeta) -> crate::Result<Arc<ParquetMetaData>> {
    use datafusion::datasource::physical_plan::parquet::metadata::DFParquetMetadata;
    DFParquetMetadata::new(store, meta)
        .fetch_metadata()
        .await
        .map_err(|source| crate::Error::Parquet { context: format!("reading the footer of {}", meta.location), source })
}

/// A flushed file a query reads.
#[derive(Debug, Clone)]
pub(crate) struct Listed {
    /// Directory of the collector that wrote it (empty for a local store).
    pub collector: String,
    /// Its key and size.
    pub meta: ObjectMeta,
    /// Its URL for the listing table.
    pub url: ListingTableUrl,
}

/// A store that serves reads under its roots and refuses everything else.
#[derive(Debug)]
pub struct ReadOnlyStore {
    inner: Arc<dyn ObjectStore>,
    roots: Vec<Path>,
}

impl fmt::Display for ReadOnlyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReadOnlyStore({})", self.inner)
    }
}

fn refused(path: &Path, why: &'static str) -> object_store::Error {
    object_store::Error::PermissionDenied { path: path.to_string(), source: why.into() }
}

const READ_ONLY: &str = "leakwatch SQL is read-only";
const OUTSIDE: &str = "outside the leakwatch data store";

impl ReadOnlyStore {
    /// The local file system, readable under `dir` only (as given made
    /// absolute, and with symbolic links resolved).
    pub fn local(dir: &std::path::Path) -> Self {
        let mut roots = Vec::new();
        for candidate in [std::path::absolute(dir).ok(), std::fs::canonicalize(dir).ok()].into_iter().flatten() {
            if let Ok(p) = Path::from_absolute_path(&candidate)
                && !roots.contains(&p)
            {
                roots.push(p);
            }
        }
        Self { inner: Arc::new(LocalFileSystem::new()), roots }
    }

    fn check(&self, location: &Path) -> object_store::Result<()> {
        if self.roots.iter().any(|root| location.prefix_matches(root)) {
            Ok(())
        } else {
            Err(refused(location, OUTSIDE))
        }
    }

    /// A registry whose only store is this one, for `file://` URLs.
    pub fn registry(self) -> DefaultObjectStoreRegistry {
        let registry = DefaultObjectStoreRegistry::new();
        registry.register_store(ObjectStoreUrl::local_filesystem().as_ref(), Arc::new(self));
        registry
    }
}

#[async_trait::async_trait]
impl ObjectStore for ReadOnlyStore {
    async fn put_opts(&self, location: &Path, _: PutPayload, _: PutOptions) -> object_store::Result<PutResult> {
        Err(refused(location, READ_ONLY))
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        _: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        Err(refused(location, READ_ONLY))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> object_store::Result<GetResult> {
        self.check(location)?;
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[std::ops::Range<u64>],
    ) -> object_store::Result<Vec<bytes::Bytes>> {
        self.check(location)?;
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        locations.map(|l| l.and_then(|p| Err(refused(&p, READ_ONLY)))).boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let root = Path::default();
        let prefix = prefix.unwrap_or(&root);
        match self.check(prefix) {
            Ok(()) => self.inner.list(Some(prefix)),
            Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
        }
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        let root = Path::default();
        let prefix = prefix.unwrap_or(&root);
        self.check(prefix)?;
        self.inner.list_with_delimiter(Some(prefix)).await
    }

    async fn copy_opts(&self, _: &Path, to: &Path, _: CopyOptions) -> object_store::Result<()> {
        Err(refused(to, READ_ONLY))
    }
}

#[cfg(test)]
mod tests {
    use object_store::ObjectStoreExt as _;

    use super::*;

    #[test]
    fn a_file_is_pinned_by_its_day_and_name_whatever_its_root() {
        let name = "day=2026-10-01/00000000000000000002-00000000000000000003.parquet";
        for path in [format!("flows/{name}"), format!("tmp/x/flows/{name}"), format!("pre/collector-a/flows/{name}")] {
            assert_eq!(pin_key(&Path::from(path.as_str())), name, "{path}");
        }
        let store = FlowStore::local(&std::env::temp_dir()).expect("store");
        let (a, b) = (Path::from(format!("abs/flows/{name}")), Path::from(format!("flows/{name}")));
        let first = store.pin(&[&a]);
        let second = store.pin(&[&b]);
        assert!(store.is_pinned(&b));
        drop(first);
        assert!(store.is_pinned(&a), "held by the second query");
        drop(second);
        assert!(!store.is_pinned(&a));
    }

    #[tokio::test]
    async fn a_shared_store_reads_every_collector_and_applies_the_watermark_to_its_own() {
        let dir = tempfile::tempdir().expect("tempdir");
        let inner = Arc::new(LocalFileSystem::new_with_prefix(dir.path()).expect("fs"));
        let range = |from: u64, to: u64| format!("{from:020}-{to:020}.parquet");
        for key in [
            // Ours: one file below the watermark (5), one of a flush in progress.
            format!("fleet/a/flows/day=2026-10-01/{}", range(1, 5)),
            format!("fleet/a/flows/day=2026-10-01/{}", range(6, 7)),
            // Another collector's: all read, whatever our watermark, except
            // the inputs of its compaction not yet deleted.
            format!("fleet/b/flows/day=2026-10-01/{}", range(1, 9)),
            format!("fleet/b/flows/day=2026-10-01/{}", range(3, 4)),
            format!("fleet/b/flows/day=2026-10-02/{}", range(10, 12)),
            // Not a flows file, or outside the prefix.
            "fleet/b/notes.txt".to_string(),
            format!("other/c/flows/day=2026-10-01/{}", range(1, 1)),
        ] {
            inner.put(&Path::from(key.as_str()), PutPayload::from_static(b"x")).await.expect("put");
        }
        let store = FlowStore::in_bucket(inner, "bucket", "fleet", Some("a")).expect("store");
        let mut files: Vec<String> = store.files(5).await.expect("files").iter().map(|f| f.url.to_string()).collect();
        files.sort();
        assert_eq!(
            files,
            [
                format!("s3://bucket/fleet/a/flows/day=2026-10-01/{}", range(1, 5)),
                format!("s3://bucket/fleet/b/flows/day=2026-10-01/{}", range(1, 9)),
                format!("s3://bucket/fleet/b/flows/day=2026-10-02/{}", range(10, 12)),
            ]
        );
        // A reader that is no collector applies no watermark.
        let reader = FlowStore { own: None, ..store };
        assert_eq!(reader.files(5).await.expect("files").len(), 4);
    }

    #[tokio::test]
    async fn the_own_days_past_retention_are_left_out_and_others_days_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let inner = Arc::new(LocalFileSystem::new_with_prefix(dir.path()).expect("fs"));
        let today = chrono::Utc::now().date_naive();
        let day = |ago: u64| today.checked_sub_days(chrono::Days::new(ago)).expect("a day").format("%Y-%m-%d");
        let keys = [
            format!("fleet/a/flows/day={}/{:020}-{:020}.parquet", day(31), 1, 1),
            format!("fleet/a/flows/day={}/{:020}-{:020}.parquet", day(30), 2, 2),
            format!("fleet/b/flows/day={}/{:020}-{:020}.parquet", day(31), 1, 1),
        ];
        for key in &keys {
            inner.put(&Path::from(key.as_str()), PutPayload::from_static(b"x")).await.expect("put");
        }
        let store = FlowStore::in_bucket(inner, "bucket", "fleet", Some("a")).expect("store");
        let listed = async |store: &FlowStore| {
            let mut files: Vec<String> =
                store.files(9).await.expect("files").iter().map(|f| f.url.to_string()).collect();
            files.sort();
            files
        };
        assert_eq!(listed(&store).await.len(), 3, "no retention: every file");
        let kept = store.with_retention(Some(30));
        assert_eq!(
            listed(&kept).await,
            [format!("s3://bucket/{}", keys[1]), format!("s3://bucket/{}", keys[2])],
            "day 31 of our own is past a 30-day retention; another collector's is its own to delete"
        );
    }

    #[tokio::test]
    async fn reads_inside_the_store_only_and_never_writes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store_dir = dir.path().join("store");
        std::fs::create_dir_all(&store_dir).expect("mkdir");
        std::fs::write(store_dir.join("a.parquet"), b"inside").expect("write");
        std::fs::write(dir.path().join("secret"), b"outside").expect("write");
        let store = ReadOnlyStore::local(&store_dir);
        let inside = Path::from_absolute_path(store_dir.join("a.parquet")).expect("path");
        let outside = Path::from_absolute_path(dir.path().join("secret")).expect("path");
        let sibling = Path::from_absolute_path(dir.path().join("store2/x")).expect("path");

        assert_eq!(store.get(&inside).await.expect("read inside").bytes().await.expect("bytes").as_ref(), b"inside");
        for p in [&outside, &sibling] {
            let err = store.get(p).await.expect_err("outside");
            assert!(err.to_string().contains(OUTSIDE), "{err}");
        }
        assert!(store.list(None).next().await.expect("one item").is_err());
        assert!(store.list_with_delimiter(Some(&outside)).await.is_err());
        let err = store.put(&inside, PutPayload::from_static(b"x")).await.expect_err("write");
        assert!(err.to_string().contains(READ_ONLY), "{err}");
        assert!(store.delete(&inside).await.is_err());
        assert!(store.copy(&inside, &outside).await.is_err());
        assert_eq!(std::fs::read(store_dir.join("a.parquet")).expect("still there"), b"inside");
        assert!(!dir.path().join("store2").exists());
    }
}

//! The object stores a session can reach: the data store, read-only, and
//! nothing else. SQL cannot name files anyway (no DDL, no URL tables);
//! this is the second wall, so that a planner bug or a future table
//! function still cannot read or write outside the store.

use std::fmt;
use std::sync::Arc;

use datafusion::execution::object_store::{DefaultObjectStoreRegistry, ObjectStoreRegistry as _, ObjectStoreUrl};
use futures::StreamExt as _;
use futures::stream::BoxStream;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions,
    PutOptions, PutPayload, PutResult,
};

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

//! The under-store: the dataset's origin (S3, GCS, a local directory, …) seen
//! through Apache OpenDAL, with OpenDAL's retry and timeout layers stacked on top.
//!
//! Paths here are dataset paths: `/a/b.jpg`, relative to the URI's prefix. Owns
//! stat, recursive listing as a stream, and ranged reads (large ranges fetched as
//! parallel sub-ranges). It caches nothing.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt, TryStreamExt};
use opendal::layers::{RetryLayer, TimeoutLayer};
use opendal::{EntryMode, Metadata, Operator};

use crate::{CoreError, StoreSpec};

/// Ranges at least this large are split into parallel sub-range requests.
const PARALLEL_READ_CHUNK: usize = 2 << 20;
const PARALLEL_READS: usize = 4;
/// Top-level directories listed at once.
const PARALLEL_LISTS: usize = 8;

/// A bare OpenDAL operator for `spec` (no retry or timeout layers). OpenDAL is
/// built without its default HTTP transport, which would link rustls's aws-lc-rs
/// provider: the first call installs reqwest over the process's provider
/// ([`shoal_proto::auth::install_crypto`]).
pub fn operator(spec: &StoreSpec) -> opendal::Result<Operator> {
    static HTTP: std::sync::Once = std::sync::Once::new();
    HTTP.call_once(|| {
        shoal_proto::auth::install_crypto();
        opendal_http_transport_reqwest::install_default();
    });
    Operator::via_iter(spec.service, spec.config.clone())
}

/// One object or directory in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreEntry {
    /// Dataset path: `/dir/file`, no trailing slash (the root is `/`).
    pub path: String,
    pub is_dir: bool,
    pub size: u64,
    pub mtime: Option<SystemTime>,
    pub etag: Option<String>,
}

/// Tuning for the retry and timeout layers.
#[derive(Debug, Clone)]
pub struct StoreTuning {
    pub retries: usize,
    pub timeout: Duration,
    pub io_timeout: Duration,
}

impl Default for StoreTuning {
    fn default() -> Self {
        Self { retries: 3, timeout: Duration::from_secs(60), io_timeout: Duration::from_secs(20) }
    }
}

impl StoreTuning {
    /// The defaults, overridden by `SHOAL_STORE_RETRIES` (retries after the first
    /// attempt), `SHOAL_STORE_TIMEOUT` (a whole request) and
    /// `SHOAL_STORE_IO_TIMEOUT` (each read of the body), e.g. `5s`.
    pub fn from_env() -> Result<Self, CoreError> {
        let mut t = Self::default();
        let var = |key: &str| std::env::var(key).ok().filter(|v| !v.is_empty());
        let invalid = |key: &str, reason: String| CoreError::InvalidOption { key: key.into(), reason };
        if let Some(v) = var("SHOAL_STORE_RETRIES") {
            t.retries = v.parse().map_err(|_| invalid("SHOAL_STORE_RETRIES", format!("{v:?} is not a number")))?;
        }
        if let Some(v) = var("SHOAL_STORE_TIMEOUT") {
            t.timeout = crate::size::parse_duration(&v).map_err(|e| invalid("SHOAL_STORE_TIMEOUT", e))?;
        }
        if let Some(v) = var("SHOAL_STORE_IO_TIMEOUT") {
            t.io_timeout = crate::size::parse_duration(&v).map_err(|e| invalid("SHOAL_STORE_IO_TIMEOUT", e))?;
        }
        Ok(t)
    }
}

/// A dataset's origin store.
#[derive(Clone)]
pub struct UnderStore {
    op: Operator,
    uri: String,
    /// For local directories: the root, which must exist (OpenDAL lists a missing
    /// directory as empty).
    local_root: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for UnderStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnderStore").field("uri", &self.uri).finish()
    }
}

fn to_store_path(path: &str) -> String {
    path.trim_start_matches('/').to_string()
}

impl UnderStore {
    /// Build the OpenDAL operator for `spec`, tuned by [`StoreTuning::from_env`].
    /// Does not contact the store.
    pub fn open(spec: &StoreSpec) -> Result<Self, CoreError> {
        Self::open_with(spec, &StoreTuning::from_env()?)
    }

    pub fn open_with(spec: &StoreSpec, tuning: &StoreTuning) -> Result<Self, CoreError> {
        let local_root: Option<std::path::PathBuf> = (spec.service == "fs").then(|| spec.config["root"].clone().into());
        if let Some(root) = &local_root {
            // OpenDAL would create a missing root directory: refuse it instead.
            if !std::fs::metadata(root).map(|m| m.is_dir()).unwrap_or(false) {
                let source = opendal::Error::new(opendal::ErrorKind::NotFound, "no such directory");
                return Err(CoreError::Store {
                    uri: spec.uri.clone(),
                    op: "stat",
                    path: "/".into(),
                    source: Box::new(source),
                });
            }
        }
        let op = operator(spec).map_err(|e| CoreError::InvalidUri {
            uri: spec.uri.clone(),
            reason: format!("cannot configure {} store: {e}", spec.service),
        })?;
        let op = op.layer(TimeoutLayer::new().with_timeout(tuning.timeout).with_io_timeout(tuning.io_timeout)).layer(
            RetryLayer::new()
                .with_max_times(tuning.retries)
                .with_min_delay(Duration::from_millis(50))
                .with_max_delay(Duration::from_secs(2))
                .with_jitter(),
        );
        Ok(Self { op, uri: spec.uri.clone(), local_root })
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }

    fn err(&self, op: &'static str, path: &str, source: opendal::Error) -> CoreError {
        CoreError::Store { uri: self.uri.clone(), op, path: path.into(), source: Box::new(source) }
    }

    /// Make sure the store answers and the prefix can be listed.
    pub async fn check(&self) -> Result<(), CoreError> {
        if let Some(root) = &self.local_root {
            let is_dir = tokio::fs::metadata(root).await.map(|m| m.is_dir());
            if !matches!(is_dir, Ok(true)) {
                let source = opendal::Error::new(opendal::ErrorKind::NotFound, "no such directory");
                return Err(self.err("stat", "/", source));
            }
        }
        let mut lister = self.op.lister_with("").limit(1).await.map_err(|e| self.err("list", "/", e))?;
        if let Some(first) = lister.next().await {
            first.map_err(|e| self.err("list", "/", e))?;
        }
        Ok(())
    }

    pub async fn stat(&self, path: &str) -> Result<StoreEntry, CoreError> {
        let t = std::time::Instant::now();
        let res = self.op.stat(&to_store_path(path)).await;
        crate::metrics::store_request("stat", res.is_ok(), t);
        let meta = res.map_err(|e| self.err("stat", path, e))?;
        Ok(entry_from(path.to_string(), &meta))
    }

    /// Every file and directory of the store, as a stream (nothing is held whole:
    /// a flat store of millions of objects streams page by page). Each top-level
    /// directory is listed recursively on its own, [`PARALLEL_LISTS`] at once,
    /// so a store with many prefixes lists at many times one lister's speed.
    /// Entries come in no particular order; a directory may follow its children.
    pub fn list(&self) -> impl Stream<Item = Result<StoreEntry, CoreError>> + Send + 'static {
        let this = self.clone();
        futures::stream::once(async move {
            let t = std::time::Instant::now();
            let top = this.op.lister_with("").await;
            crate::metrics::store_request("list", top.is_ok(), t);
            let top = top.map_err(|e| this.err("list", "/", e))?;
            Ok::<_, CoreError>(
                top.map(move |entry| -> BoxStream<'static, Result<StoreEntry, CoreError>> {
                    let entry = match entry {
                        Ok(entry) => entry,
                        Err(e) => {
                            return futures::stream::once(std::future::ready(Err(this.err("list", "/", e)))).boxed()
                        }
                    };
                    let (path, meta) = entry.into_parts();
                    let trimmed = path.trim_matches('/');
                    if trimmed.is_empty() || meta.mode() == EntryMode::Unknown {
                        return futures::stream::empty().boxed();
                    }
                    let here = futures::stream::once(std::future::ready(Ok(entry_from(format!("/{trimmed}"), &meta))));
                    if meta.is_dir() {
                        here.chain(this.list_subtree(path)).boxed()
                    } else {
                        here.boxed()
                    }
                })
                .flatten_unordered(PARALLEL_LISTS),
            )
        })
        .try_flatten()
    }

    /// Everything under directory `prefix` (`a/b/`), recursively, without it.
    fn list_subtree(&self, prefix: String) -> impl Stream<Item = Result<StoreEntry, CoreError>> + Send + 'static {
        let this = self.clone();
        futures::stream::once(async move {
            let t = std::time::Instant::now();
            let lister = this.op.lister_with(&prefix).recursive(true).await;
            crate::metrics::store_request("list", lister.is_ok(), t);
            let lister = lister.map_err(|e| this.err("list", &prefix, e))?;
            let this2 = this.clone();
            let own = prefix.trim_matches('/').to_string();
            Ok::<_, CoreError>(lister.map_err(move |e| this2.err("list", &prefix, e)).try_filter_map(move |entry| {
                let (path, meta) = entry.into_parts();
                let trimmed = path.trim_matches('/');
                let keep = !trimmed.is_empty() && trimmed != own && meta.mode() != EntryMode::Unknown;
                std::future::ready(Ok(keep.then(|| entry_from(format!("/{trimmed}"), &meta))))
            }))
        })
        .try_flatten()
    }

    /// Read `len` bytes at `offset` of `path`. Fails if the object is shorter than
    /// the range, or (given `version`) is no longer the content the namespace
    /// listed: bytes of two versions are never mixed into one file.
    pub async fn read(&self, path: &str, offset: u64, len: u64, version: Option<Version>) -> Result<Bytes, CoreError> {
        self.read_ranges(path, offset, len, true, version).await
    }

    /// [`UnderStore::read`], with `split` saying whether a range over 2 MiB is
    /// fetched as parallel sub-ranges (lower latency for one waiting reader) or as
    /// one request (less overhead when many blocks are in flight, as in prewarm).
    pub async fn read_ranges(
        &self,
        path: &str,
        offset: u64,
        len: u64,
        split: bool,
        version: Option<Version>,
    ) -> Result<Bytes, CoreError> {
        if len == 0 {
            return Ok(Bytes::new());
        }
        let store_path = to_store_path(path);
        let mut req = self.op.read_with(&store_path).range(offset..offset + len);
        if split && len as usize > PARALLEL_READ_CHUNK {
            req = req.chunk(PARALLEL_READ_CHUNK).concurrent(PARALLEL_READS);
        }
        // The listed version: object stores check it in the read itself (a
        // newer object fails `If-Unmodified-Since`); local files are compared
        // by a stat, which costs no round trip.
        let changed = |detail: String| CoreError::Changed { uri: self.uri.clone(), path: path.into(), detail };
        if let Some(v) = version {
            if self.local_root.is_some() {
                let meta = self.op.stat(&store_path).await.map_err(|e| self.err("stat", path, e))?;
                let now = (meta.content_length(), meta.last_modified().map(SystemTime::from));
                if now.0 != v.size || (v.mtime.is_some() && now.1 != v.mtime) {
                    return Err(changed(format!("{} bytes then, {} now, or a new mtime", v.size, now.0)));
                }
            } else if let Some(t) = v.mtime.filter(|_| self.op.info().capability().read_with_if_unmodified_since) {
                // HTTP dates carry whole seconds and stores keep finer times:
                // round up, so the listed object itself always passes (a rewrite
                // within that second goes unnoticed).
                let secs = t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs() + 1).unwrap_or(0);
                if let Ok(ts) =
                    opendal::raw::Timestamp::try_from(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs))
                {
                    req = req.if_unmodified_since(ts);
                }
            }
        }
        let t = std::time::Instant::now();
        let res = req.await;
        crate::metrics::store_request("read", res.is_ok(), t);
        let bytes = res
            .map_err(|e| match e.kind() {
                opendal::ErrorKind::ConditionNotMatch => changed("the store has a newer object".into()),
                _ => self.err("read", path, e),
            })?
            .to_bytes();
        crate::metrics::STORE_BYTES.with_label_values(&[self.op.info().scheme()]).inc_by(bytes.len() as u64);
        if bytes.len() as u64 != len {
            return Err(CoreError::ShortRead {
                uri: self.uri.clone(),
                path: path.into(),
                expected: len,
                got: bytes.len() as u64,
            });
        }
        Ok(bytes)
    }
}

/// What a file was when the namespace listed it: its size and, when the store
/// gives one, its modification time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version {
    pub size: u64,
    pub mtime: Option<SystemTime>,
}

impl Version {
    /// From the listed size and mtime (seconds and nanoseconds since the epoch;
    /// 0, 0 means the store gave none).
    pub fn listed(size: u64, mtime_sec: i64, mtime_nsec: u32) -> Version {
        let known = mtime_sec > 0 || mtime_nsec > 0;
        let mtime = known.then(|| SystemTime::UNIX_EPOCH + std::time::Duration::new(mtime_sec as u64, mtime_nsec));
        Version { size, mtime }
    }
}

fn entry_from(path: String, meta: &Metadata) -> StoreEntry {
    let is_dir = meta.is_dir();
    StoreEntry {
        path,
        is_dir,
        size: if is_dir { 0 } else { meta.content_length() },
        mtime: meta.last_modified().map(SystemTime::from),
        etag: meta.etag().map(|e| e.trim_matches('"').to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[tokio::test]
    async fn local_list_stat_read() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/empty")).unwrap();
        std::fs::write(dir.path().join("a/f one.bin"), b"0123456789").unwrap();
        let big: Vec<u8> = (0..5_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(dir.path().join("big"), &big).unwrap();
        let spec = StoreSpec::parse(dir.path().to_str().unwrap(), &BTreeMap::new()).unwrap();
        let store = UnderStore::open(&spec).unwrap();
        store.check().await.unwrap();
        let mut entries: Vec<_> = store.list().try_collect().await.unwrap();
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        let paths: Vec<_> = entries.iter().map(|e| (e.path.as_str(), e.is_dir, e.size)).collect();
        assert_eq!(
            paths,
            vec![("/a", true, 0), ("/a/empty", true, 0), ("/a/f one.bin", false, 10), ("/big", false, 5_000_000)]
        );
        assert_eq!(&store.read("/a/f one.bin", 2, 3, None).await.unwrap()[..], b"234");
        // A range big enough to be split into parallel sub-reads.
        let got = store.read("/big", 1, 4_999_999, None).await.unwrap();
        assert_eq!(&got[..], &big[1..]);
        assert!(store.read("/a/f one.bin", 5, 10, None).await.is_err(), "a range past the end is an error");
        assert!(store.stat("/missing").await.unwrap_err().is_not_found());
        assert_eq!(store.stat("/a/f one.bin").await.unwrap().size, 10);

        // Reads name the version the listing saw; a rewritten file is refused,
        // whether its length changed or only its bytes and mtime.
        let f = &entries[2];
        let (sec, nsec) =
            f.mtime.unwrap().duration_since(SystemTime::UNIX_EPOCH).map(|d| (d.as_secs(), d.subsec_nanos())).unwrap();
        let listed = Version::listed(f.size, sec as i64, nsec);
        assert_eq!(&store.read("/a/f one.bin", 2, 3, Some(listed)).await.unwrap()[..], b"234");
        let path = dir.path().join("a/f one.bin");
        std::fs::write(&path, b"abcdefghij").unwrap();
        let later = f.mtime.unwrap() + std::time::Duration::from_secs(2);
        std::fs::File::options().write(true).open(&path).unwrap().set_modified(later).unwrap();
        let err = store.read("/a/f one.bin", 2, 3, Some(listed)).await.unwrap_err();
        assert!(matches!(err, CoreError::Changed { .. }), "{err}");
        std::fs::write(&path, b"0123456789 and more").unwrap();
        let err = store.read("/a/f one.bin", 2, 3, Some(Version { mtime: None, ..listed })).await.unwrap_err();
        assert!(err.to_string().contains("shoal dataset sync"), "{err}");
    }
}

#[cfg(test)]
mod metrics_tests {
    use super::*;
    use std::collections::BTreeMap;

    #[tokio::test]
    async fn store_requests_are_measured() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"0123456789").unwrap();
        let spec = StoreSpec::parse(dir.path().to_str().unwrap(), &BTreeMap::new()).unwrap();
        let store = UnderStore::open(&spec).unwrap();
        store.read("/f", 0, 4, None).await.unwrap();
        let text = crate::metrics::render();
        assert!(text.contains(r#"shoal_store_requests_total{op="read",result="ok"}"#), "{text}");
        assert!(text.contains("shoal_store_request_duration_seconds_bucket"), "{text}");
    }
}

//! A dataset as shoal's logic sees it, built once from the wire record: its
//! mount table (which store serves which path of the dataset), its cache policy
//! with the defaults applied, and the store version of a listed file. The
//! master, the workers and the mounts all read datasets through this module, so
//! a default or a rule is written once.

use std::collections::BTreeMap;
use std::time::Duration;

use shoal_proto::master::{DatasetInfo, DatasetSpec, Inode, MountSpec};
use shoal_proto::worker::BlockRef;

use crate::{ids, uri, CoreError, StoreSpec, UnderStore, Version, DEFAULT_BLOCK_SIZE};

/// The mount path of a dataset's only store when it has one.
pub const ROOT: &str = "/";

/// Mounts one dataset may have.
pub const MAX_MOUNTS: usize = 64;

/// One store of a dataset, seen at `path` inside it.
#[derive(Clone, PartialEq, Eq)]
pub struct Mount {
    /// `/` or a clean path such as `/train`.
    pub path: String,
    pub uri: String,
    pub options: BTreeMap<String, String>,
    /// Its own re-sync interval, if it has one (else the dataset's applies).
    pub sync_interval: Option<Duration>,
}

impl std::fmt::Debug for Mount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mount")
            .field("path", &self.path)
            .field("uri", &self.uri)
            .field("options", &uri::redact(&self.options))
            .finish()
    }
}

impl Mount {
    /// The mount of a wire record, path defaulted and checked.
    pub fn from_spec(m: &MountSpec) -> Result<Mount, CoreError> {
        let path = if m.path.is_empty() { ROOT.to_string() } else { m.path.clone() };
        if path != ROOT {
            ids::validate_dataset_path(&path)?;
        }
        Ok(Mount {
            path,
            uri: m.uri.clone(),
            options: m.options.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            sync_interval: (m.sync_interval_seconds > 0).then(|| Duration::from_secs(m.sync_interval_seconds)),
        })
    }

    /// The wire record of this mount.
    pub fn to_spec(&self) -> MountSpec {
        MountSpec {
            uri: self.uri.clone(),
            options: self.options.clone().into_iter().collect(),
            path: self.path.clone(),
            sync_interval_seconds: self.sync_interval.map(|d| d.as_secs()).unwrap_or(0),
        }
    }

    /// The store location, with every option (the master's and workers' view).
    pub fn store_spec(&self) -> Result<StoreSpec, CoreError> {
        StoreSpec::parse(&self.uri, &self.options)
    }

    /// Open the store. A client sees redacted options: those are left out,
    /// and the store's credentials come from the client's environment.
    pub fn open(&self) -> Result<UnderStore, CoreError> {
        UnderStore::open(&StoreSpec::parse(&self.uri, &uri::without_redacted(&self.options))?)
    }

    /// The store path of dataset path `path` (`/train/a.jpg` → `/a.jpg` for
    /// the mount at `/train`), if `path` is in this mount.
    pub fn store_path(&self, path: &str) -> Option<String> {
        if self.path == ROOT {
            return Some(path.to_string());
        }
        match path.strip_prefix(self.path.as_str()) {
            Some("") => Some(ROOT.to_string()),
            Some(rest) if rest.starts_with('/') => Some(rest.to_string()),
            _ => None,
        }
    }

    /// The dataset path of store path `store_path` (the inverse of [`Mount::store_path`]).
    pub fn dataset_path(&self, store_path: &str) -> String {
        match (self.path.as_str(), store_path) {
            (ROOT, p) => p.to_string(),
            (m, ROOT) => m.to_string(),
            (m, p) => format!("{m}{p}"),
        }
    }
}

/// Check a dataset's mounts: at least one, distinct paths that never nest,
/// every URI and its options parsed.
pub fn validate_mounts(mounts: &[Mount]) -> Result<(), CoreError> {
    let invalid = |path: &str, reason: &'static str| CoreError::InvalidPath { path: path.to_string(), reason };
    if mounts.is_empty() {
        return Err(invalid("", "a dataset needs at least one mount (a store URI)"));
    }
    if mounts.len() > MAX_MOUNTS {
        return Err(invalid("", "a dataset takes at most 64 mounts"));
    }
    for (i, a) in mounts.iter().enumerate() {
        a.store_spec()?;
        for b in &mounts[..i] {
            if a.path == b.path {
                return Err(invalid(&a.path, "two mounts at the same path"));
            }
            if a.store_path(&b.path).is_some() || b.store_path(&a.path).is_some() {
                return Err(invalid(&a.path, "mount paths nest (\"/\" stands alone, and \"/a\" excludes \"/a/b\")"));
            }
        }
    }
    Ok(())
}

/// The mounts of a spec as stored: `mounts`, or the single `mount` of a record
/// written before datasets took several (at `/`).
pub fn mount_specs(spec: &DatasetSpec) -> Vec<MountSpec> {
    if !spec.mounts.is_empty() {
        return spec.mounts.clone();
    }
    spec.mount.iter().map(|m| MountSpec { path: ROOT.into(), ..m.clone() }).collect()
}

/// A dataset's cache policy, defaults applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachePolicy {
    pub block_size: u64,
    pub replicas: u32,
    pub pinned: bool,
    pub ttl: Option<Duration>,
}

impl CachePolicy {
    pub fn of(spec: Option<&DatasetSpec>) -> CachePolicy {
        let c = spec.and_then(|s| s.cache).unwrap_or_default();
        CachePolicy {
            block_size: if c.block_size == 0 { DEFAULT_BLOCK_SIZE } else { c.block_size },
            replicas: c.replicas.max(1),
            pinned: c.pinned,
            ttl: (c.ttl_seconds > 0).then(|| Duration::from_secs(c.ttl_seconds)),
        }
    }
}

/// The block size of a dataset record (the default when it names none).
pub fn block_size(info: &DatasetInfo) -> u64 {
    CachePolicy::of(info.spec.as_ref()).block_size
}

/// A dataset: identity, mounts (sorted by path) and cache policy.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub id: u32,
    pub name: String,
    pub namespace: String,
    pub mounts: Vec<Mount>,
    pub cache: CachePolicy,
    pub sync_interval: Option<Duration>,
    pub spec_revision: u64,
}

impl Dataset {
    pub fn from_info(info: &DatasetInfo) -> Result<Dataset, CoreError> {
        let spec = info.spec.clone().unwrap_or_default();
        let mut mounts = mount_specs(&spec).iter().map(Mount::from_spec).collect::<Result<Vec<_>, _>>()?;
        mounts.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(Dataset {
            id: info.id,
            namespace: if spec.namespace.is_empty() { "default".into() } else { spec.namespace.clone() },
            cache: CachePolicy::of(Some(&spec)),
            sync_interval: (spec.sync_interval_seconds > 0).then(|| Duration::from_secs(spec.sync_interval_seconds)),
            spec_revision: info.spec_revision,
            name: spec.name,
            mounts,
        })
    }

    /// The mount holding dataset path `path`, and the path in its store.
    pub fn mount_of(&self, path: &str) -> Option<(usize, String)> {
        self.mounts.iter().enumerate().find_map(|(i, m)| m.store_path(path).map(|p| (i, p)))
    }

    /// How often mount `i` is re-listed, if at all.
    pub fn sync_interval_of(&self, i: usize) -> Option<Duration> {
        self.mounts[i].sync_interval.or(self.sync_interval)
    }
}

/// A dataset's stores, opened: each dataset path resolved to its store and the
/// path in it.
#[derive(Debug, Clone)]
pub struct Stores {
    pub dataset: Dataset,
    stores: Vec<UnderStore>,
}

impl Stores {
    /// Open every mount of `dataset` (`client`: with redacted options left out).
    pub fn open(dataset: Dataset, client: bool) -> Result<Stores, CoreError> {
        let stores = dataset
            .mounts
            .iter()
            .map(|m| if client { m.open() } else { m.store_spec().and_then(|s| UnderStore::open(&s)) })
            .collect::<Result<_, _>>()?;
        Ok(Stores { dataset, stores })
    }

    /// The store of mount `i` (in `dataset.mounts` order).
    pub fn store(&self, i: usize) -> &UnderStore {
        &self.stores[i]
    }

    /// The store serving dataset path `path`, and the path inside it.
    pub fn resolve(&self, path: &str) -> Result<(&UnderStore, String), CoreError> {
        let (i, p) = self.dataset.mount_of(path).ok_or_else(|| CoreError::InvalidPath {
            path: path.to_string(),
            reason: "not under any mount of the dataset",
        })?;
        Ok((&self.stores[i], p))
    }

    /// Read `len` bytes at `offset` of dataset path `path`, as it was listed.
    pub async fn read(&self, path: &str, offset: u64, len: u64, version: Version) -> Result<bytes::Bytes, CoreError> {
        let (store, p) = self.resolve(path)?;
        store.read(&p, offset, len, Some(version)).await
    }
}

/// The signed reference of block `index` of the file `inode` at `path` of
/// dataset `dataset` (id `dataset_id`, block size `block_size`): what a worker
/// needs to find or fetch the block without asking the master.
pub fn block_ref(dataset: &str, dataset_id: u32, block_size: u64, path: &str, inode: &Inode, index: u32) -> BlockRef {
    BlockRef {
        dataset: dataset.to_string(),
        dataset_id,
        file_id: inode.file_id,
        index,
        path: path.to_string(),
        block_size,
        file_size: inode.size,
        mtime_sec: inode.mtime_sec,
        mtime_nsec: inode.mtime_nsec,
        sig: inode.sig.clone(),
    }
}

/// The version of a file as the namespace listed it: a store read refuses an
/// object that changed since.
pub fn version_of(inode: &Inode) -> Version {
    Version::listed(inode.size, inode.mtime_sec, inode.mtime_nsec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(path: &str, uri: &str) -> Mount {
        Mount::from_spec(&MountSpec { uri: uri.into(), path: path.into(), ..Default::default() }).unwrap()
    }

    #[test]
    fn paths_map_between_the_dataset_and_each_store() {
        let train = m("/train", "s3://b/t");
        assert_eq!(train.store_path("/train/a/b.jpg").as_deref(), Some("/a/b.jpg"));
        assert_eq!(train.store_path("/train").as_deref(), Some("/"));
        assert_eq!(train.store_path("/trainee/x"), None, "a prefix of a name is not a parent");
        assert_eq!(train.store_path("/val/x"), None);
        assert_eq!(train.dataset_path("/a/b.jpg"), "/train/a/b.jpg");
        assert_eq!(train.dataset_path("/"), "/train");
        let root = m("", "s3://b");
        assert_eq!(root.path, "/");
        assert_eq!(root.store_path("/x").as_deref(), Some("/x"));
        assert_eq!(root.dataset_path("/x"), "/x");
    }

    #[test]
    fn mount_tables_that_nest_or_repeat_are_refused() {
        validate_mounts(&[m("/train", "/tmp/t"), m("/val", "/tmp")]).unwrap();
        assert!(validate_mounts(&[m("/data/train", "/tmp/t"), m("/data/val", "/tmp")]).is_ok());
        for bad in [
            vec![],
            vec![m("/", "/tmp/b"), m("/val", "/tmp")],
            vec![m("/a", "/tmp/b"), m("/a/b", "/tmp")],
            vec![m("/a", "/tmp/b"), m("/a", "/tmp")],
        ] {
            assert!(validate_mounts(&bad).is_err(), "{bad:?}");
        }
        let bad_uri = Mount { uri: "nope://x".into(), ..m("/a", "/tmp/b") };
        assert!(validate_mounts(&[bad_uri]).is_err());
        for p in ["a", "/a/../b", "/a//b", "/a\0b", "/a/"] {
            let spec = MountSpec { uri: "/tmp/b".into(), path: p.into(), ..Default::default() };
            assert!(Mount::from_spec(&spec).is_err(), "{p:?}");
        }
    }

    #[test]
    fn a_record_of_one_store_reads_as_one_mount_at_the_root() {
        let spec = DatasetSpec {
            name: "d".into(),
            mount: Some(MountSpec { uri: "s3://b/p".into(), ..Default::default() }),
            ..Default::default()
        };
        let d = Dataset::from_info(&DatasetInfo { id: 3, spec: Some(spec), ..Default::default() }).unwrap();
        assert_eq!(d.mounts.len(), 1);
        assert_eq!((d.mounts[0].path.as_str(), d.mounts[0].uri.as_str()), ("/", "s3://b/p"));
        assert_eq!(d.cache, CachePolicy { block_size: DEFAULT_BLOCK_SIZE, replicas: 1, pinned: false, ttl: None });
        assert_eq!(d.namespace, "default");
        assert_eq!(d.mount_of("/x/y"), Some((0, "/x/y".into())));
    }

    #[test]
    fn each_path_resolves_to_its_own_mount() {
        let spec = DatasetSpec {
            name: "d".into(),
            mounts: vec![m("/val", "/tmp/v").to_spec(), m("/train", "/tmp/t").to_spec()],
            sync_interval_seconds: 60,
            ..Default::default()
        };
        let mut d = Dataset::from_info(&DatasetInfo { spec: Some(spec), ..Default::default() }).unwrap();
        assert_eq!(d.mounts[0].path, "/train", "sorted by path");
        assert_eq!(d.mount_of("/val/a"), Some((1, "/a".into())));
        assert_eq!(d.mount_of("/other/a"), None);
        d.mounts[1].sync_interval = Some(Duration::from_secs(5));
        assert_eq!(d.sync_interval_of(0), Some(Duration::from_secs(60)));
        assert_eq!(d.sync_interval_of(1), Some(Duration::from_secs(5)));
    }
}

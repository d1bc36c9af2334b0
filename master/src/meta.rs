//! Durable master state in RocksDB: datasets and their namespaces.
//!
//! Column families and keys (all integers big-endian, so keys sort numerically):
//! - `datasets`: dataset name → `DatasetInfo`
//! - `inodes`:   dataset id (4) + ino (8) → `Inode`
//! - `dentries`: dataset id (4) + parent ino (8) + name bytes → child ino (8);
//!   one directory lists with one prefix scan, a path resolves with one point
//!   lookup per component.
//! - `jobs`:     load job id → `LoadJob` (spec and persisted progress)
//! - `default`:  counters (`next_dataset_id`, `next_file_id`), and the cluster's
//!   identity made at the first start (`cluster_id`, `block_key`: see
//!   `shoal_core::identity`).
//!
//! Soft state (workers, block locations) never lands here.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prost::Message;
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, Direction, IteratorMode, Options, ReadOptions, WriteBatch, DB,
};
use shoal_proto::master::{DatasetInfo, FileKind, Inode, LoadJob};

use crate::error::{MasterError, Result};

pub const ROOT_INO: u64 = 1;
const CF_DATASETS: &str = "datasets";
const CF_INODES: &str = "inodes";
const CF_DENTRIES: &str = "dentries";
const CF_JOBS: &str = "jobs";
const KEY_NEXT_DATASET: &[u8] = b"next_dataset_id";
const KEY_NEXT_FILE: &[u8] = b"next_file_id";
const KEY_CLUSTER_ID: &[u8] = b"cluster_id";
const KEY_BLOCK_KEY: &[u8] = b"block_key";
/// Every file id below it may have been handed out (written synced before any
/// is): a restart continues from here, so no id is ever issued twice, even if
/// the unsynced counter was lost with a crash of the machine.
const KEY_FILE_RESERVED: &[u8] = b"file_id_reserved";
/// File ids reserved per synced write.
const FILE_RESERVE: u64 = 1 << 16;
/// Set once every namespace synced before files were signed has been signed.
const KEY_ALL_SIGNED: &[u8] = b"files_signed_v1";

/// The master's RocksDB handle, id counters and cluster identity.
pub struct MetaStore {
    db: DB,
    next_dataset_id: AtomicU64,
    next_file_id: AtomicU64,
    /// See [`KEY_FILE_RESERVED`].
    file_reserved: std::sync::Mutex<u64>,
    /// Made once, at the first start on this state; never changes after.
    pub cluster_id: String,
    block_key: [u8; shoal_core::identity::KEY_LEN],
    pub signer: shoal_core::identity::Signer,
}

/// Reserve the file ids below `from + FILE_RESERVE` with a synced write; the new bound.
fn reserve_ids(db: &DB, from: u64) -> Result<u64> {
    let bound = from + FILE_RESERVE;
    let mut wo = rocksdb::WriteOptions::default();
    wo.set_sync(true);
    db.put_opt(KEY_FILE_RESERVED, bound.to_be_bytes(), &wo)?;
    Ok(bound)
}

/// The cluster id and block key in `db`, made (and synced to disk) on the first start.
fn cluster_identity(db: &DB) -> Result<(String, [u8; shoal_core::identity::KEY_LEN])> {
    let id = db.get(KEY_CLUSTER_ID)?.and_then(|v| String::from_utf8(v).ok());
    let key = db.get(KEY_BLOCK_KEY)?.and_then(|v| v.try_into().ok());
    if let (Some(id), Some(key)) = (id, key) {
        if shoal_core::identity::valid_cluster_id(&id) {
            return Ok((id, key));
        }
    }
    let id = hex::encode(rand::random::<[u8; 16]>());
    let key: [u8; shoal_core::identity::KEY_LEN] = rand::random();
    let mut batch = WriteBatch::default();
    batch.put(KEY_CLUSTER_ID, id.as_bytes());
    batch.put(KEY_BLOCK_KEY, key);
    let mut wo = rocksdb::WriteOptions::default();
    wo.set_sync(true);
    db.write_opt(batch, &wo)?;
    Ok((id, key))
}

pub fn inode_key(ds: u32, ino: u64) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..4].copy_from_slice(&ds.to_be_bytes());
    k[4..].copy_from_slice(&ino.to_be_bytes());
    k
}

pub fn dentry_prefix(ds: u32, parent: u64) -> Vec<u8> {
    inode_key(ds, parent).to_vec()
}

pub fn dentry_key(ds: u32, parent: u64, name: &str) -> Vec<u8> {
    let mut k = dentry_prefix(ds, parent);
    k.extend_from_slice(name.as_bytes());
    k
}

fn decode<M: Message + Default>(key: &[u8], bytes: &[u8]) -> Result<M> {
    M::decode(bytes).map_err(|source| MasterError::Corrupt { key: format!("{key:02x?}"), source })
}

fn read_counter(db: &DB, key: &[u8], default: u64) -> Result<u64> {
    Ok(match db.get(key)? {
        Some(v) if v.len() == 8 => u64::from_be_bytes(v[..8].try_into().expect("8 bytes")),
        _ => default,
    })
}

impl MetaStore {
    pub fn open(dir: &Path) -> Result<Arc<Self>> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.increase_parallelism(2);
        // Point lookups (a dentry, an inode) dominate: bloom filters skip SST files
        // that cannot hold the key, and one shared block cache keeps hot blocks.
        let cache = Cache::new_lru_cache(256 << 20);
        let cf_opts = || {
            let mut table = BlockBasedOptions::default();
            table.set_block_cache(&cache);
            table.set_bloom_filter(10.0, false);
            table.set_cache_index_and_filter_blocks(true);
            table.set_pin_l0_filter_and_index_blocks_in_cache(true);
            let mut o = Options::default();
            o.set_block_based_table_factory(&table);
            o
        };
        let cfs = [CF_DATASETS, CF_INODES, CF_DENTRIES, CF_JOBS].map(|n| ColumnFamilyDescriptor::new(n, cf_opts()));
        let db = DB::open_cf_descriptors(&opts, dir, cfs)?;
        let next_dataset_id = AtomicU64::new(read_counter(&db, KEY_NEXT_DATASET, 1)?);
        // Inode numbers share this counter; 1 is every dataset's root.
        let next = read_counter(&db, KEY_NEXT_FILE, ROOT_INO + 1)?.max(read_counter(&db, KEY_FILE_RESERVED, 0)?);
        let next_file_id = AtomicU64::new(next);
        let file_reserved = std::sync::Mutex::new(reserve_ids(&db, next)?);
        let (cluster_id, block_key) = cluster_identity(&db)?;
        let signer = shoal_core::identity::Signer::new(&block_key).expect("key of KEY_LEN bytes");
        Ok(Arc::new(Self { db, next_dataset_id, next_file_id, file_reserved, cluster_id, block_key, signer }))
    }

    /// The key workers verify block references with (sent at registration).
    pub fn block_key(&self) -> &[u8] {
        &self.block_key
    }

    /// Whether every namespace's files carry signatures (see
    /// [`crate::namespace::sign_unsigned`]).
    pub fn all_signed(&self) -> Result<bool> {
        Ok(self.db.get(KEY_ALL_SIGNED)?.is_some())
    }

    pub fn mark_all_signed(&self) -> Result<()> {
        Ok(self.db.put(KEY_ALL_SIGNED, [1])?)
    }

    /// Whether `file_id` is one this master has issued.
    pub fn issued(&self, file_id: u64) -> bool {
        file_id > ROOT_INO && file_id < self.next_file_id.load(Ordering::Relaxed)
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db.cf_handle(name).expect("column family created at open")
    }

    /// Allocate a dataset id; the counter is persisted in `batch`.
    pub fn alloc_dataset_id(&self, batch: &mut WriteBatch) -> u32 {
        let id = self.next_dataset_id.fetch_add(1, Ordering::SeqCst);
        batch.put(KEY_NEXT_DATASET, (id + 1).to_be_bytes());
        id as u32
    }

    /// Allocate a content id; persisted in `batch` (ids are never reused).
    /// The next id to be handed out (every ino and file id is below it).
    pub fn next_id_hint(&self) -> u64 {
        self.next_file_id.load(Ordering::Relaxed)
    }

    pub fn alloc_file_id(&self, batch: &mut WriteBatch) -> u64 {
        let id = self.next_file_id.fetch_add(1, Ordering::SeqCst);
        let mut reserved = self.file_reserved.lock().expect("reserve lock");
        if id >= *reserved {
            // Rare (once per FILE_RESERVE ids); a failure here means the disk
            // is gone, and the batch that would use the id fails to write too.
            match reserve_ids(&self.db, id + 1) {
                Ok(r) => *reserved = r,
                Err(e) => tracing::error!(error = %e, "cannot reserve file ids"),
            }
        }
        drop(reserved);
        batch.put(KEY_NEXT_FILE, (id + 1).to_be_bytes());
        id
    }

    pub fn write(&self, batch: WriteBatch) -> Result<()> {
        Ok(self.db.write(batch)?)
    }

    // ---- datasets ----

    pub fn get_dataset(&self, name: &str) -> Result<Option<DatasetInfo>> {
        match self.db.get_cf(self.cf(CF_DATASETS), name.as_bytes())? {
            Some(v) => Ok(Some(decode(name.as_bytes(), &v)?)),
            None => Ok(None),
        }
    }

    pub fn list_datasets(&self) -> Result<Vec<DatasetInfo>> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_DATASETS), IteratorMode::Start) {
            let (k, v) = item?;
            out.push(decode(&k, &v)?);
        }
        Ok(out)
    }

    pub fn put_dataset(&self, batch: &mut WriteBatch, info: &DatasetInfo) {
        let name = info.spec.as_ref().map(|s| s.name.as_str()).unwrap_or_default();
        batch.put_cf(self.cf(CF_DATASETS), name.as_bytes(), info.encode_to_vec());
    }

    /// Remove a dataset and its whole namespace in one batch.
    pub fn delete_dataset(&self, info: &DatasetInfo) -> Result<()> {
        let mut batch = WriteBatch::default();
        let name = info.spec.as_ref().map(|s| s.name.as_str()).unwrap_or_default();
        batch.delete_cf(self.cf(CF_DATASETS), name.as_bytes());
        let start = inode_key(info.id, 0);
        let end = inode_key(info.id + 1, 0);
        batch.delete_range_cf(self.cf(CF_INODES), start, end);
        batch.delete_range_cf(self.cf(CF_DENTRIES), start, end);
        self.write(batch)
    }

    // ---- load jobs ----

    pub fn put_job(&self, job: &LoadJob) -> Result<()> {
        Ok(self.db.put_cf(self.cf(CF_JOBS), job.id.as_bytes(), job.encode_to_vec())?)
    }

    pub fn list_jobs(&self) -> Result<Vec<LoadJob>> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_JOBS), IteratorMode::Start) {
            let (k, v) = item?;
            out.push(decode(&k, &v)?);
        }
        Ok(out)
    }

    /// Every file under `dir` (recursively), with its dataset path, through `f`.
    pub fn walk_files(&self, ds: u32, dir: &Inode, dir_path: &str, f: &mut impl FnMut(String, Inode)) -> Result<()> {
        let mut stack = vec![(dir.ino, dir_path.trim_end_matches('/').to_string())];
        while let Some((ino, path)) = stack.pop() {
            let mut after = String::new();
            loop {
                let (page, more) = self.read_dir(ds, ino, &after, 4096)?;
                for child in page {
                    let p = format!("{path}/{}", child.name);
                    after = child.name.clone();
                    if child.kind == FileKind::Directory as i32 {
                        stack.push((child.ino, p));
                    } else {
                        f(p, child);
                    }
                }
                if !more {
                    break;
                }
            }
        }
        Ok(())
    }

    // ---- namespace ----

    pub fn put_inode(&self, batch: &mut WriteBatch, ds: u32, inode: &Inode) {
        batch.put_cf(self.cf(CF_INODES), inode_key(ds, inode.ino), inode.encode_to_vec());
    }

    pub fn put_dentry(&self, batch: &mut WriteBatch, ds: u32, parent: u64, name: &str, ino: u64) {
        batch.put_cf(self.cf(CF_DENTRIES), dentry_key(ds, parent, name), ino.to_be_bytes());
    }

    pub fn delete_entry(&self, batch: &mut WriteBatch, ds: u32, inode: &Inode) {
        batch.delete_cf(self.cf(CF_INODES), inode_key(ds, inode.ino));
        batch.delete_cf(self.cf(CF_DENTRIES), dentry_key(ds, inode.parent, &inode.name));
    }

    pub fn get_inode(&self, ds: u32, ino: u64) -> Result<Option<Inode>> {
        let key = inode_key(ds, ino);
        match self.db.get_cf(self.cf(CF_INODES), key)? {
            Some(v) => Ok(Some(decode(&key, &v)?)),
            None => Ok(None),
        }
    }

    pub fn lookup_ino(&self, ds: u32, parent: u64, name: &str) -> Result<Option<u64>> {
        let v = self.db.get_cf(self.cf(CF_DENTRIES), dentry_key(ds, parent, name))?;
        Ok(v.filter(|v| v.len() == 8).map(|v| u64::from_be_bytes(v[..8].try_into().expect("8 bytes"))))
    }

    pub fn lookup(&self, ds: u32, parent: u64, name: &str) -> Result<Option<Inode>> {
        match self.lookup_ino(ds, parent, name)? {
            Some(ino) => self.get_inode(ds, ino),
            None => Ok(None),
        }
    }

    /// Children of a directory in name order, after `start_after`, at most `limit`.
    /// Returns the entries and whether more follow. One prefix scan plus a multi-get.
    pub fn read_dir(&self, ds: u32, dir: u64, start_after: &str, limit: usize) -> Result<(Vec<Inode>, bool)> {
        let prefix = dentry_prefix(ds, dir);
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(inode_key(ds, dir + 1).to_vec());
        let start = if start_after.is_empty() {
            prefix.clone()
        } else {
            let mut k = dentry_key(ds, dir, start_after);
            k.push(0); // strictly after
            k
        };
        let iter = self.db.iterator_cf_opt(self.cf(CF_DENTRIES), ro, IteratorMode::From(&start, Direction::Forward));
        let mut inos = Vec::new();
        let mut more = false;
        for item in iter {
            let (_, v) = item?;
            if inos.len() == limit {
                more = true;
                break;
            }
            if v.len() == 8 {
                inos.push(u64::from_be_bytes(v[..8].try_into().expect("8 bytes")));
            }
        }
        let cf = self.cf(CF_INODES);
        let keys: Vec<_> = inos.iter().map(|&i| (cf, inode_key(ds, i))).collect();
        let mut out = Vec::with_capacity(inos.len());
        for (res, (_, key)) in self.db.multi_get_cf(keys.iter().map(|(c, k)| (*c, k.as_slice()))).into_iter().zip(&keys)
        {
            if let Some(v) = res? {
                out.push(decode(key, &v)?);
            }
        }
        Ok((out, more))
    }

    /// Every inode of a dataset in ino order, in chunks, through `f`.
    pub fn scan_inodes(&self, ds: u32, mut f: impl FnMut(Inode) -> Result<()>) -> Result<()> {
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(inode_key(ds + 1, 0).to_vec());
        let start = inode_key(ds, 0);
        for item in self.db.iterator_cf_opt(self.cf(CF_INODES), ro, IteratorMode::From(&start, Direction::Forward)) {
            let (k, v) = item?;
            f(decode(&k, &v)?)?;
        }
        Ok(())
    }

    /// Resolve a dataset path (`/a/b`) to its inode.
    pub fn resolve(&self, ds: u32, path: &str) -> Result<Option<Inode>> {
        let mut cur = match self.get_inode(ds, ROOT_INO)? {
            Some(root) => root,
            None => return Ok(None),
        };
        for comp in path.split('/').filter(|c| !c.is_empty()) {
            if cur.kind != FileKind::Directory as i32 {
                return Ok(None);
            }
            match self.lookup(ds, cur.ino, comp)? {
                Some(next) => cur = next,
                None => return Ok(None),
            }
        }
        Ok(Some(cur))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_listing_is_one_prefix_and_paginates() {
        let dir = tempfile::tempdir().unwrap();
        let store = MetaStore::open(dir.path()).unwrap();
        let mut b = WriteBatch::default();
        let root = Inode { ino: ROOT_INO, kind: FileKind::Directory as i32, ..Default::default() };
        store.put_inode(&mut b, 7, &root);
        for (i, name) in ["b", "a", "c d", "é"].iter().enumerate() {
            let ino = 10 + i as u64;
            let node = Inode {
                ino,
                parent: ROOT_INO,
                name: name.to_string(),
                kind: FileKind::File as i32,
                ..Default::default()
            };
            store.put_inode(&mut b, 7, &node);
            store.put_dentry(&mut b, 7, ROOT_INO, name, ino);
        }
        // A neighbour dataset and a neighbour directory must not leak into the listing.
        store.put_dentry(&mut b, 8, ROOT_INO, "zz", 99);
        store.put_dentry(&mut b, 7, ROOT_INO + 1, "zz", 99);
        store.write(b).unwrap();
        let (all, more) = store.read_dir(7, ROOT_INO, "", 100).unwrap();
        let names: Vec<_> = all.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c d", "é"]);
        assert!(!more);
        let (page, more) = store.read_dir(7, ROOT_INO, "a", 2).unwrap();
        assert_eq!(page.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(), ["b", "c d"]);
        assert!(more);
        assert_eq!(store.resolve(7, "/c d").unwrap().unwrap().ino, 12);
        assert!(store.resolve(7, "/c d/x").unwrap().is_none());
    }

    #[test]
    fn file_ids_are_never_issued_twice_even_if_the_counter_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        let first = {
            let meta = MetaStore::open(dir.path()).unwrap();
            let mut b = WriteBatch::default();
            let ids: Vec<u64> = (0..10).map(|_| meta.alloc_file_id(&mut b)).collect();
            // The batch (and so the counter) is never written: a crash.
            drop(b);
            ids
        };
        let meta = MetaStore::open(dir.path()).unwrap();
        let mut b = WriteBatch::default();
        let next = meta.alloc_file_id(&mut b);
        assert!(first.iter().all(|id| *id < next), "{next} reuses one of {first:?}");
        assert!(meta.issued(next) && !meta.issued(next + 1) && !meta.issued(ROOT_INO));
    }
}

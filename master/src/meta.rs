//! Durable master state in RocksDB: datasets and their namespaces.
//!
//! Column families and keys (all integers big-endian, so keys sort numerically):
//! - `datasets`: dataset name → `DatasetInfo`
//! - `inodes`:   dataset id (4) + ino (8) → `Inode`
//! - `dentries`: dataset id (4) + parent ino (8) + name bytes → child ino (8);
//!   one directory lists with one prefix scan, a path resolves with one point
//!   lookup per component.
//! - `jobs`:     load job id → `LoadJob` (spec and persisted progress)
//! - `default`:  counters (`next_dataset_id`, `next_file_id`), the cluster's
//!   identity made at the first start (`cluster_id`, `block_key`: see
//!   `shoal_core::identity`), and the last replicated command applied
//!   (`raft_applied`, written with each command's own batch).
//!
//! Every change is a [`Command`]: a RocksDB write batch and the id counters
//! when it was made. [`MetaStore::write`] hands it to the replicator (the
//! masters' Raft log, `crate::raft`), which applies it here on every master
//! once a majority holds it; without a replicator (tests) it is applied at
//! once. Counters only grow when applied, so commands committed out of the
//! order they were made in never hand out an id twice.
//!
//! Soft state (workers, block locations) never lands here.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

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
/// The highest file id reserved by a master before state was replicated; read
/// once, so that an upgraded master never issues an id below it.
const KEY_FILE_RESERVED: &[u8] = b"file_id_reserved";
/// Set once every namespace synced before files were signed has been signed.
const KEY_ALL_SIGNED: &[u8] = b"files_signed_v1";
/// The replicator's record of the last command applied (see `crate::raft`).
pub const KEY_APPLIED: &[u8] = b"raft_applied";
/// Every column family, in the order they are created (a write batch names
/// them by that position, the same on every master).
const CFS: [&str; 5] = ["default", CF_DATASETS, CF_INODES, CF_DENTRIES, CF_JOBS];
const SNAPSHOT_MAGIC: &[u8] = b"SHOALSNAP1\n";

/// One replicated change: a RocksDB write batch (its serialized form, which
/// names column families by position) and the id counters when it was made.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Command {
    #[serde(with = "b64")]
    pub batch: Vec<u8>,
    pub next_file: u64,
    pub next_dataset: u64,
}

mod b64 {
    use base64::Engine;
    pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s: std::borrow::Cow<'de, str> = serde::Deserialize::deserialize(d)?;
        base64::engine::general_purpose::STANDARD.decode(s.as_bytes()).map_err(serde::de::Error::custom)
    }
}

/// Where [`MetaStore::write`] sends commands: the masters' log, which calls
/// [`MetaStore::apply`] on each master once the command is committed.
pub type Replicator = Box<dyn Fn(Command) -> futures::future::BoxFuture<'static, Result<()>> + Send + Sync>;

/// The cluster's identity: made once, by the first leader, and replicated.
pub struct Identity {
    pub cluster_id: String,
    block_key: [u8; shoal_core::identity::KEY_LEN],
    pub signer: shoal_core::identity::Signer,
}

impl Identity {
    /// The key workers verify block references with (sent at registration).
    pub fn block_key(&self) -> &[u8] {
        &self.block_key
    }
}

/// The master's RocksDB handle, id counters and cluster identity.
pub struct MetaStore {
    db: DB,
    next_dataset_id: AtomicU64,
    next_file_id: AtomicU64,
    identity: OnceLock<Identity>,
    replicator: OnceLock<Replicator>,
    /// Serialises applying commands (each reads the counters it raises).
    apply_lock: std::sync::Mutex<()>,
    /// Held across each read-modify-write of a dataset record (its policy, its
    /// mounts, a sync's totals), so that none writes over another's change.
    pub record_lock: tokio::sync::Mutex<()>,
}

/// The cluster id and block key in `db`, if it has them.
fn read_identity(db: &DB) -> Result<Option<Identity>> {
    let id = db.get(KEY_CLUSTER_ID)?.and_then(|v| String::from_utf8(v).ok());
    let key: Option<[u8; shoal_core::identity::KEY_LEN]> = db.get(KEY_BLOCK_KEY)?.and_then(|v| v.try_into().ok());
    Ok(match (id, key) {
        (Some(cluster_id), Some(block_key)) if shoal_core::identity::valid_cluster_id(&cluster_id) => {
            let signer = shoal_core::identity::Signer::new(&block_key).expect("key of KEY_LEN bytes");
            Some(Identity { cluster_id, block_key, signer })
        }
        _ => None,
    })
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

/// A new cluster id and block key, into `batch`.
fn new_identity(batch: &mut WriteBatch) {
    let id = hex::encode(rand::random::<[u8; 16]>());
    let key: [u8; shoal_core::identity::KEY_LEN] = rand::random();
    batch.put(KEY_CLUSTER_ID, id.as_bytes());
    batch.put(KEY_BLOCK_KEY, key);
}

/// The records of an exported state: (column family position, key, value).
/// One exported record: column family position, key, value.
type Record<'a> = (u8, &'a [u8], &'a [u8]);

fn parse_snapshot(data: &[u8]) -> std::result::Result<Vec<Record<'_>>, String> {
    let body = data
        .strip_prefix(SNAPSHOT_MAGIC)
        .and_then(|rest| rest.len().checked_sub(4).map(|n| &data[..SNAPSHOT_MAGIC.len() + n]))
        .ok_or("not a shoal master snapshot")?;
    let crc = u32::from_be_bytes(data[data.len() - 4..].try_into().expect("4 bytes"));
    if crc32c::crc32c(body) != crc {
        return Err("checksum mismatch".into());
    }
    let mut rest = &body[SNAPSHOT_MAGIC.len()..];
    let mut out = Vec::new();
    fn take<'a>(rest: &mut &'a [u8]) -> std::result::Result<&'a [u8], String> {
        let n = rest.get(..4).ok_or("truncated record")?;
        let n = u32::from_be_bytes(n.try_into().expect("4 bytes")) as usize;
        let v = rest.get(4..4 + n).ok_or("truncated record")?;
        *rest = &rest[4 + n..];
        Ok(v)
    }
    loop {
        let (&cf, tail) = rest.split_first().ok_or("no end marker")?;
        rest = tail;
        if cf == u8::MAX {
            break;
        }
        if cf as usize >= CFS.len() {
            return Err(format!("unknown column family {cf}"));
        }
        let k = take(&mut rest)?;
        let v = take(&mut rest)?;
        out.push((cf, k, v));
    }
    if !rest.is_empty() {
        return Err("bytes after the end marker".into());
    }
    Ok(out)
}

fn read_counter(db: &DB, key: &[u8], default: u64) -> Result<u64> {
    Ok(match db.get(key)? {
        Some(v) if v.len() == 8 => u64::from_be_bytes(v[..8].try_into().expect("8 bytes")),
        _ => default,
    })
}

impl MetaStore {
    /// Open (or create) the state in `dir`, with no replicator: writes apply at
    /// once, and a new state gets its identity at once.
    pub fn open(dir: &Path) -> Result<Arc<Self>> {
        let meta = Self::open_replicated(dir)?;
        if meta.identity.get().is_none() {
            let mut batch = WriteBatch::default();
            new_identity(&mut batch);
            meta.apply(&meta.command(batch), None)?;
        }
        Ok(meta)
    }

    /// Open (or create) the state in `dir` for a replicated master: the
    /// identity comes from the first leader ([`MetaStore::ensure_identity`]).
    pub fn open_replicated(dir: &Path) -> Result<Arc<Self>> {
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
        let cfs = CFS[1..].iter().map(|n| ColumnFamilyDescriptor::new(*n, cf_opts()));
        let db = DB::open_cf_descriptors(&opts, dir, cfs)?;
        let meta = Self {
            db,
            next_dataset_id: AtomicU64::new(1),
            next_file_id: AtomicU64::new(ROOT_INO + 1),
            identity: OnceLock::new(),
            replicator: OnceLock::new(),
            apply_lock: std::sync::Mutex::new(()),
            record_lock: tokio::sync::Mutex::new(()),
        };
        meta.reload()?;
        Ok(Arc::new(meta))
    }

    /// Take the counters and identity from the database (after a snapshot
    /// replaced it).
    fn reload(&self) -> Result<()> {
        self.next_dataset_id.fetch_max(read_counter(&self.db, KEY_NEXT_DATASET, 1)?, Ordering::SeqCst);
        // Inode numbers share this counter; 1 is every dataset's root.
        let next =
            read_counter(&self.db, KEY_NEXT_FILE, ROOT_INO + 1)?.max(read_counter(&self.db, KEY_FILE_RESERVED, 0)?);
        self.next_file_id.fetch_max(next, Ordering::SeqCst);
        if self.identity.get().is_none() {
            if let Some(id) = read_identity(&self.db)? {
                let _ = self.identity.set(id);
            }
        }
        Ok(())
    }

    /// Send every later write through `replicator`.
    pub fn set_replicator(&self, replicator: Replicator) {
        let _ = self.replicator.set(replicator);
    }

    /// The cluster's identity, once the first leader made it.
    pub fn identity(&self) -> Result<&Identity> {
        if let Some(id) = self.identity.get() {
            return Ok(id);
        }
        self.reload()?;
        self.identity.get().ok_or(MasterError::NotReady("the cluster has no identity yet"))
    }

    /// Make the cluster's identity if no leader has yet (a leader's first act).
    pub async fn ensure_identity(&self) -> Result<()> {
        if self.identity().is_ok() {
            return Ok(());
        }
        let mut batch = WriteBatch::default();
        new_identity(&mut batch);
        self.write(batch).await?;
        self.identity().map(|_| ())
    }

    /// Whether every namespace's files carry signatures (see
    /// [`crate::namespace::sign_unsigned`]).
    pub fn all_signed(&self) -> Result<bool> {
        Ok(self.db.get(KEY_ALL_SIGNED)?.is_some())
    }

    pub async fn mark_all_signed(&self) -> Result<()> {
        let mut batch = WriteBatch::default();
        batch.put(KEY_ALL_SIGNED, [1]);
        self.write(batch).await
    }

    /// Whether `file_id` is one this master has issued.
    pub fn issued(&self, file_id: u64) -> bool {
        file_id > ROOT_INO && file_id < self.next_file_id.load(Ordering::Relaxed)
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db.cf_handle(name).expect("column family created at open")
    }

    /// Allocate a dataset id (the counter is persisted with the next write).
    pub fn alloc_dataset_id(&self) -> u32 {
        self.next_dataset_id.fetch_add(1, Ordering::SeqCst) as u32
    }

    /// Allocate a content id; persisted in `batch` (ids are never reused).
    /// The next id to be handed out (every ino and file id is below it).
    pub fn next_id_hint(&self) -> u64 {
        self.next_file_id.load(Ordering::Relaxed)
    }

    /// Allocate an inode number or content id (the counter is persisted with
    /// the next write; ids are never reused).
    pub fn alloc_file_id(&self) -> u64 {
        self.next_file_id.fetch_add(1, Ordering::SeqCst)
    }

    fn command(&self, batch: WriteBatch) -> Command {
        Command {
            batch: batch.data().to_vec(),
            next_file: self.next_file_id.load(Ordering::SeqCst),
            next_dataset: self.next_dataset_id.load(Ordering::SeqCst),
        }
    }

    /// Write `batch` on every master: it returns once a majority holds it and
    /// it is applied here (an error: this master does not lead, or lost its
    /// lead before the write was committed).
    pub async fn write(&self, batch: WriteBatch) -> Result<()> {
        let cmd = self.command(batch);
        match self.replicator.get() {
            Some(replicate) => replicate(cmd).await,
            None => self.apply(&cmd, None),
        }
    }

    /// Apply a committed command, with the replicator's own record of it
    /// (`KEY_APPLIED`) in the same atomic write. Counters only grow.
    pub fn apply(&self, cmd: &Command, applied: Option<&[u8]>) -> Result<()> {
        let _serial = self.apply_lock.lock().expect("apply lock");
        let mut batch = WriteBatch::from_data(&cmd.batch);
        let next_file = read_counter(&self.db, KEY_NEXT_FILE, ROOT_INO + 1)?.max(cmd.next_file);
        let next_dataset = read_counter(&self.db, KEY_NEXT_DATASET, 1)?.max(cmd.next_dataset);
        batch.put(KEY_NEXT_FILE, next_file.to_be_bytes());
        batch.put(KEY_NEXT_DATASET, next_dataset.to_be_bytes());
        if let Some(a) = applied {
            batch.put(KEY_APPLIED, a);
        }
        self.db.write(batch)?;
        self.next_file_id.fetch_max(next_file, Ordering::SeqCst);
        self.next_dataset_id.fetch_max(next_dataset, Ordering::SeqCst);
        Ok(())
    }

    /// Record `applied` (a command with nothing to write: a membership change).
    pub fn set_applied(&self, applied: &[u8]) -> Result<()> {
        let _serial = self.apply_lock.lock().expect("apply lock");
        Ok(self.db.put(KEY_APPLIED, applied)?)
    }

    /// The replicator's record of the last command applied.
    pub fn applied(&self) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get(KEY_APPLIED)?)
    }

    /// The whole state as one file (see [`MetaStore::import`]), read from one
    /// consistent view, with the `KEY_APPLIED` record of that view.
    pub fn export(&self) -> Result<(Vec<u8>, Option<Vec<u8>>)> {
        // Everything applied so far is made durable: once this snapshot is
        // taken, the log behind it may be purged.
        self.db.flush_wal(true)?;
        let snap = self.db.snapshot();
        let mut out = SNAPSHOT_MAGIC.to_vec();
        let mut applied = None;
        for (i, name) in CFS.iter().enumerate() {
            let mut ro = ReadOptions::default();
            ro.set_snapshot(&snap);
            let iter = match i {
                0 => self.db.iterator_opt(IteratorMode::Start, ro),
                _ => self.db.iterator_cf_opt(self.cf(name), ro, IteratorMode::Start),
            };
            for item in iter {
                let (k, v) = item?;
                if i == 0 && &*k == KEY_APPLIED {
                    applied = Some(v.to_vec());
                }
                out.push(i as u8);
                out.extend_from_slice(&(k.len() as u32).to_be_bytes());
                out.extend_from_slice(&k);
                out.extend_from_slice(&(v.len() as u32).to_be_bytes());
                out.extend_from_slice(&v);
            }
        }
        out.push(u8::MAX);
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        Ok((out, applied))
    }

    /// Replace the whole state with an [`MetaStore::export`]ed one, in one
    /// atomic write; a damaged file changes nothing.
    pub fn import(&self, data: &[u8]) -> Result<()> {
        let records = parse_snapshot(data).map_err(MasterError::BadSnapshot)?;
        let _serial = self.apply_lock.lock().expect("apply lock");
        let mut batch = WriteBatch::default();
        for (i, name) in CFS.iter().enumerate() {
            let iter = if i == 0 {
                self.db.iterator(IteratorMode::Start)
            } else {
                self.db.iterator_cf(self.cf(name), IteratorMode::Start)
            };
            for item in iter {
                let (k, _) = item?;
                match i {
                    0 => batch.delete(k),
                    _ => batch.delete_cf(self.cf(name), k),
                }
            }
        }
        for (i, k, v) in records {
            match i {
                0 => batch.put(k, v),
                _ => batch.put_cf(self.cf(CFS[i as usize]), k, v),
            }
        }
        self.db.write(batch)?;
        self.db.flush_wal(true)?;
        drop(_serial);
        self.reload()
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
    pub async fn delete_dataset(&self, info: &DatasetInfo) -> Result<()> {
        let mut batch = WriteBatch::default();
        let name = info.spec.as_ref().map(|s| s.name.as_str()).unwrap_or_default();
        batch.delete_cf(self.cf(CF_DATASETS), name.as_bytes());
        let start = inode_key(info.id, 0);
        let end = inode_key(info.id + 1, 0);
        batch.delete_range_cf(self.cf(CF_INODES), start, end);
        batch.delete_range_cf(self.cf(CF_DENTRIES), start, end);
        self.write(batch).await
    }

    // ---- load jobs ----

    pub async fn put_job(&self, job: &LoadJob) -> Result<()> {
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_JOBS), job.id.as_bytes(), job.encode_to_vec());
        self.write(batch).await
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
        self.walk(ds, dir, dir_path, &mut |path, inode| {
            if inode.kind != FileKind::Directory as i32 {
                f(path, inode);
            }
            Ok(())
        })
    }

    /// Every entry under `dir` (recursively; a directory before what it
    /// holds), with its dataset path, through `f`; stops at `f`'s first error.
    pub fn walk(
        &self,
        ds: u32,
        dir: &Inode,
        dir_path: &str,
        f: &mut impl FnMut(String, Inode) -> Result<()>,
    ) -> Result<()> {
        let mut stack = vec![(dir.ino, dir_path.trim_end_matches('/').to_string())];
        while let Some((ino, path)) = stack.pop() {
            let mut after = String::new();
            loop {
                let (page, more) = self.read_dir(ds, ino, &after, 4096)?;
                for child in page {
                    let p = format!("{path}/{}", child.name);
                    after = child.name.clone();
                    if child.kind == FileKind::Directory as i32 {
                        stack.push((child.ino, p.clone()));
                    }
                    f(p, child)?;
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

    #[tokio::test]
    async fn dir_listing_is_one_prefix_and_paginates() {
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
        store.write(b).await.unwrap();
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

    #[tokio::test]
    async fn counters_only_grow_whatever_order_commands_apply_in() {
        let dir = tempfile::tempdir().unwrap();
        let meta = MetaStore::open(dir.path()).unwrap();
        let early = meta.command(WriteBatch::default());
        let ids: Vec<u64> = (0..10).map(|_| meta.alloc_file_id()).collect();
        let late = meta.command(WriteBatch::default());
        // The later command commits first, the earlier after it.
        meta.apply(&late, None).unwrap();
        meta.apply(&early, None).unwrap();
        drop(meta);
        let meta = MetaStore::open(dir.path()).unwrap();
        let next = meta.alloc_file_id();
        assert!(ids.iter().all(|id| *id < next), "{next} reuses one of {ids:?}");
        assert!(meta.issued(next) && !meta.issued(next + 1) && !meta.issued(ROOT_INO));
    }

    #[tokio::test]
    async fn a_snapshot_carries_the_whole_state_and_a_damaged_one_changes_nothing() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let src = MetaStore::open(a.path()).unwrap();
        let mut batch = WriteBatch::default();
        for i in 0..100u64 {
            let ino = src.alloc_file_id();
            src.put_inode(&mut batch, 3, &Inode { ino, name: format!("f{i}"), ..Default::default() });
            src.put_dentry(&mut batch, 3, ROOT_INO, &format!("f{i}"), ino);
        }
        src.write(batch).await.unwrap();
        src.put_job(&LoadJob { id: "j1".into(), ..Default::default() }).await.unwrap();
        src.set_applied(b"marker").unwrap();
        let (data, applied) = src.export().unwrap();
        assert_eq!(applied.as_deref(), Some(&b"marker"[..]));

        let dst = MetaStore::open_replicated(b.path()).unwrap();
        let mut stale = WriteBatch::default();
        dst.put_dentry(&mut stale, 9, ROOT_INO, "gone", 77);
        dst.write(stale).await.unwrap();
        let before = dst.export().unwrap().0;
        for bad in [&data[..data.len() - 1], &data[1..], &b"SHOALSNAP1\n\0\0\0\0"[..]] {
            assert!(matches!(dst.import(bad), Err(MasterError::BadSnapshot(_))));
        }
        let mut flipped = data.clone();
        flipped[40] ^= 1;
        assert!(matches!(dst.import(&flipped), Err(MasterError::BadSnapshot(_))));
        assert_eq!(dst.export().unwrap().0, before, "a refused snapshot changed the state");

        dst.import(&data).unwrap();
        assert_eq!(dst.export().unwrap().0, data);
        assert_eq!(dst.identity().unwrap().cluster_id, src.identity().unwrap().cluster_id);
        assert!(dst.lookup_ino(9, ROOT_INO, "gone").unwrap().is_none());
        assert_eq!(dst.read_dir(3, ROOT_INO, "", 1000).unwrap().0.len(), 100);
        assert_eq!(dst.list_jobs().unwrap().len(), 1);
        assert_eq!(dst.next_id_hint(), src.next_id_hint());
    }
}

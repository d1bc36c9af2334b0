//! Metadata sync: lists a dataset's under-stores (each at its mount path) as
//! streams and applies only the differences to the namespace in RocksDB (new,
//! changed by etag/mtime/size, deleted), in batched writes, with progress
//! reports. A sync of some mounts keeps what the others hold.
//!
//! Inode numbers are stable per path across syncs; a changed object gets a new
//! `file_id`, so blocks cached for its old content can never be served for it.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use fixedbitset::FixedBitSet;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use rocksdb::WriteBatch;
use shoal_core::dataset::{Mount, Stores};
use shoal_core::{CoreError, StoreEntry};
use shoal_proto::master::{DatasetInfo, FileKind, Inode, SyncProgress};
use tracing::warn;

use crate::error::Result;
use crate::meta::{MetaStore, ROOT_INO};

const BATCH_ENTRIES: usize = 4096;
const PROGRESS_EVERY: u64 = 1000;

pub fn now_unix() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

fn split_time(t: Option<SystemTime>) -> (i64, u32) {
    match t.map(|t| t.duration_since(UNIX_EPOCH)) {
        Some(Ok(d)) => (d.as_secs() as i64, d.subsec_nanos()),
        _ => (0, 0),
    }
}

fn is_dir(i: &Inode) -> bool {
    i.kind == FileKind::Directory as i32
}

/// The root directory inode of a new dataset.
pub fn root_inode(mtime: i64) -> Inode {
    Inode { ino: ROOT_INO, parent: ROOT_INO, kind: FileKind::Directory as i32, mtime_sec: mtime, ..Default::default() }
}

/// The master's signature of file `inode` at `path` of dataset `ds` (see
/// `shoal_core::identity`).
fn sign_file(signer: &shoal_core::identity::Signer, ds: u32, block_size: u64, path: &str, inode: &Inode) -> Vec<u8> {
    signer.sign(&shoal_core::identity::Signed {
        dataset_id: ds,
        file_id: inode.file_id,
        block_size,
        file_size: inode.size,
        mtime_sec: inode.mtime_sec,
        mtime_nsec: inode.mtime_nsec,
        path,
    })
}

/// Sign every file of `info` that has no signature (a namespace synced before
/// files were signed); how many. The caller holds the dataset's sync slot, so
/// no sync rewrites these inodes meanwhile.
pub async fn sign_unsigned(meta: &MetaStore, info: &DatasetInfo) -> Result<u64> {
    let Some(root) = meta.get_inode(info.id, ROOT_INO)? else { return Ok(0) };
    let block_size = shoal_core::dataset::block_size(info);
    let signer = &meta.identity()?.signer;
    let mut unsigned = Vec::new();
    meta.walk_files(info.id, &root, "/", &mut |path, inode| {
        if inode.sig.is_empty() {
            unsigned.push((path, inode));
        }
    })?;
    let signed = unsigned.len() as u64;
    let mut batch = WriteBatch::default();
    for chunk in unsigned.chunks(BATCH_ENTRIES) {
        for (path, inode) in chunk {
            let sig = sign_file(signer, info.id, block_size, path, inode);
            meta.put_inode(&mut batch, info.id, &Inode { sig, ..inode.clone() });
        }
        meta.write(std::mem::take(&mut batch)).await?;
    }
    // A new generation, so that running mounts reload their listings (and
    // with them the signatures) as after a sync.
    if signed > 0 {
        let name = info.spec.as_ref().map(|s| s.name.as_str()).unwrap_or_default();
        let _record = meta.record_lock.lock().await;
        if let Some(mut now) = meta.get_dataset(name)?.filter(|d| d.id == info.id) {
            now.generation += 1;
            meta.put_dataset(&mut batch, &now);
        }
        meta.write(batch).await?;
        return Ok(signed);
    }
    meta.write(batch).await?;
    Ok(signed)
}

/// A directory's aggregates: direct entries, files and bytes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Sums {
    entries: u64,
    files: u64,
    bytes: u64,
}

struct Syncer<'a> {
    meta: &'a MetaStore,
    signer: &'a shoal_core::identity::Signer,
    ds: u32,
    batch: WriteBatch,
    pending: usize,
    dirs: HashMap<String, Inode>,
    /// Per directory ino: direct entries, and files and bytes directly in it
    /// (rolled up into every ancestor at the end).
    sums: HashMap<u64, Sums>,
    /// Inos met in this listing: one bit per id ever allocated (ids are dense),
    /// so 10M entries cost a few MiB, not a hash set's hundreds.
    seen: FixedBitSet,
    progress: SyncProgress,
    files: u64,
    dir_count: u64,
    bytes: u64,
    blocks: u64,
    block_size: u64,
    /// File ids whose content left the namespace (changed or deleted files).
    retired: Vec<u64>,
    skipped: u64,
    now: i64,
}

/// What a sync produced: the updated dataset record, and the file ids (content
/// ids) no path points to any more, whose cached blocks are now garbage.
#[derive(Debug)]
pub struct Synced {
    pub info: DatasetInfo,
    pub retired: Vec<u64>,
}

impl Syncer<'_> {
    fn see(&mut self, ino: u64) {
        let i = ino as usize;
        if i >= self.seen.len() {
            self.seen.grow((i + 1).max(self.seen.len() * 2));
        }
        self.seen.insert(i);
    }

    /// Write the batch (on every master), if it holds anything.
    async fn flush(&mut self) -> Result<()> {
        if self.pending > 0 {
            self.meta.write(std::mem::take(&mut self.batch)).await?;
            self.pending = 0;
        }
        Ok(())
    }

    /// Write the batch once it is full. Nothing reads back what the batch
    /// holds: directories made in this listing are found in `dirs`.
    async fn flush_full(&mut self) -> Result<()> {
        if self.pending >= BATCH_ENTRIES {
            self.flush().await?;
        }
        Ok(())
    }

    fn put(&mut self, inode: &Inode, new_dentry: bool) -> Result<()> {
        self.meta.put_inode(&mut self.batch, self.ds, inode);
        if new_dentry {
            self.meta.put_dentry(&mut self.batch, self.ds, inode.parent, &inode.name, inode.ino);
        }
        self.pending += 1;
        Ok(())
    }

    /// The ino of directory `path`, creating it (and its parents) if needed. A
    /// listed directory brings its mtime; an implied one (an object-store prefix)
    /// gets the sync time when it is new.
    fn ensure_dir(&mut self, path: &str, listed: Option<&StoreEntry>) -> Result<u64> {
        if path == "/" || path.is_empty() {
            return Ok(ROOT_INO);
        }
        let want_mtime = listed.and_then(|e| e.mtime).map(|t| split_time(Some(t)));
        if let Some(inode) = self.dirs.get_mut(path) {
            let ino = inode.ino;
            if let Some((sec, nsec)) = want_mtime.filter(|m| *m != (inode.mtime_sec, inode.mtime_nsec)) {
                inode.mtime_sec = sec;
                inode.mtime_nsec = nsec;
                let updated = inode.clone();
                self.put(&updated, false)?;
            }
            return Ok(ino);
        }
        let (parent_path, name) = path.rsplit_once('/').expect("dataset paths start with '/'");
        let parent = self.ensure_dir(parent_path, None)?;
        let inode = match self.meta.lookup(self.ds, parent, name)? {
            Some(existing) if is_dir(&existing) => match want_mtime {
                Some((sec, nsec)) if (sec, nsec) != (existing.mtime_sec, existing.mtime_nsec) => {
                    let updated = Inode { mtime_sec: sec, mtime_nsec: nsec, ..existing };
                    self.put(&updated, false)?;
                    self.progress.changed += 1;
                    updated
                }
                _ => {
                    self.progress.unchanged += 1;
                    existing
                }
            },
            Some(existing) => {
                // A file of that name (`a` beside `a/x` in an object store):
                // the directory wins, and the file leaves the counts.
                if existing.file_id != 0 {
                    self.retired.push(existing.file_id);
                }
                if self.seen.contains(existing.ino as usize) {
                    self.tally_file(parent, existing.size, false);
                }
                let (sec, nsec) = want_mtime.unwrap_or((self.now, 0));
                let updated = Inode {
                    kind: FileKind::Directory as i32,
                    size: 0,
                    file_id: 0,
                    etag: String::new(),
                    mtime_sec: sec,
                    mtime_nsec: nsec,
                    ..existing
                };
                self.put(&updated, false)?;
                self.progress.changed += 1;
                updated
            }
            None => {
                let (sec, nsec) = want_mtime.unwrap_or((self.now, 0));
                let ino = self.meta.alloc_file_id();
                let inode = Inode {
                    ino,
                    parent,
                    name: name.to_string(),
                    kind: FileKind::Directory as i32,
                    mtime_sec: sec,
                    mtime_nsec: nsec,
                    ..Default::default()
                };
                self.put(&inode, true)?;
                self.progress.added += 1;
                inode
            }
        };
        let ino = inode.ino;
        self.dir_count += 1;
        self.sums.entry(parent).or_default().entries += 1;
        self.see(ino);
        self.dirs.insert(path.to_string(), inode);
        Ok(ino)
    }

    fn upsert_file(&mut self, path: &str, entry: &StoreEntry) -> Result<()> {
        if self.dirs.contains_key(path) {
            warn!(path = %path.escape_debug(), "skipping an object named like a directory of the same listing");
            self.skipped += 1;
            return Ok(());
        }
        let (parent_path, name) = path.rsplit_once('/').expect("dataset paths start with '/'");
        let parent = self.ensure_dir(parent_path, None)?;
        let (mtime_sec, mtime_nsec) = split_time(entry.mtime);
        let etag = entry.etag.clone().unwrap_or_default();
        let existing = self.meta.lookup(self.ds, parent, name)?;
        let ino = match existing {
            Some(old)
                if !is_dir(&old)
                    && old.size == entry.size
                    && old.etag == etag
                    && old.mtime_sec == mtime_sec
                    && old.mtime_nsec == mtime_nsec =>
            {
                self.progress.unchanged += 1;
                // Entries written before files were signed get their signature now.
                if old.sig.is_empty() {
                    let sig = self.sign(path, &old);
                    self.put(&Inode { sig, ..old.clone() }, false)?;
                }
                old.ino
            }
            other => {
                let is_new = other.is_none();
                let ino = match &other {
                    Some(old) => old.ino,
                    None => self.meta.alloc_file_id(),
                };
                let file_id = self.meta.alloc_file_id();
                self.retired.extend(other.as_ref().map(|old| old.file_id).filter(|f| *f != 0));
                let inode = Inode {
                    ino,
                    parent,
                    name: name.to_string(),
                    kind: FileKind::File as i32,
                    size: entry.size,
                    mtime_sec,
                    mtime_nsec,
                    etag,
                    file_id,
                    ..Default::default()
                };
                let inode = Inode { sig: self.sign(path, &inode), ..inode };
                self.put(&inode, is_new)?;
                if is_new {
                    self.progress.added += 1;
                } else {
                    self.progress.changed += 1;
                }
                ino
            }
        };
        self.tally_file(parent, entry.size, true);
        self.see(ino);
        Ok(())
    }

    fn sign(&self, path: &str, inode: &Inode) -> Vec<u8> {
        sign_file(self.signer, self.ds, self.block_size, path, inode)
    }

    /// Count a file of `size` bytes in directory `parent` into the dataset's
    /// and the directory's totals, or (`add` false) take it back out.
    fn tally_file(&mut self, parent: u64, size: u64, add: bool) {
        let blocks = shoal_core::ids::block_count(size, self.block_size);
        let sums = self.sums.entry(parent).or_default();
        for (n, by) in [
            (&mut self.files, 1),
            (&mut self.bytes, size),
            (&mut self.blocks, blocks),
            (&mut sums.entries, 1),
            (&mut sums.files, 1),
            (&mut sums.bytes, size),
        ] {
            *n = if add { *n + by } else { *n - by };
        }
    }
}

impl Syncer<'_> {
    /// Roll each directory's sums up into its ancestors, deepest first, and
    /// write the directories whose aggregates changed (the root included).
    async fn write_sums(&mut self) -> Result<()> {
        let mut dirs: Vec<(usize, Inode)> =
            self.dirs.iter().map(|(path, inode)| (path.matches('/').count(), inode.clone())).collect();
        dirs.sort_unstable_by_key(|d| std::cmp::Reverse(d.0));
        for (_, d) in &dirs {
            let own = self.sums.get(&d.ino).copied().unwrap_or_default();
            let up = self.sums.entry(d.parent).or_default();
            up.files += own.files;
            up.bytes += own.bytes;
        }
        let root = self.meta.get_inode(self.ds, ROOT_INO)?.unwrap_or_else(|| root_inode(self.now));
        for (_, mut d) in dirs.into_iter().chain([(0, root)]) {
            let sums = self.sums.get(&d.ino).copied().unwrap_or_default();
            if (d.entries, d.tree_files, d.tree_bytes) != (sums.entries, sums.files, sums.bytes) {
                (d.entries, d.tree_files, d.tree_bytes) = (sums.entries, sums.files, sums.bytes);
                self.put(&d, false)?;
                self.flush_full().await?;
            }
        }
        self.flush().await
    }
}

fn usable_path(path: &str) -> bool {
    path != "/" && shoal_core::ids::validate_dataset_path(path).is_ok()
}

/// The store entry an inode was made from (what a listing of it would say).
fn listed_as(path: &str, inode: &Inode) -> StoreEntry {
    StoreEntry {
        path: path.to_string(),
        is_dir: is_dir(inode),
        size: inode.size,
        mtime: Some(UNIX_EPOCH + std::time::Duration::new(inode.mtime_sec.max(0) as u64, inode.mtime_nsec)),
        etag: (!inode.etag.is_empty()).then(|| inode.etag.clone()),
    }
}

impl Syncer<'_> {
    /// Keep what the namespace holds under mount `path` (a mount this sync
    /// does not list): its entries are seen and counted, unchanged.
    fn keep(&mut self, path: &str) -> Result<()> {
        let meta = self.meta;
        let Some(dir) = meta.resolve(self.ds, path)?.filter(is_dir) else { return Ok(()) };
        let unchanged = self.progress.unchanged;
        self.ensure_dir(path, Some(&listed_as(path, &dir)))?;
        meta.walk(self.ds, &dir, path, &mut |p, inode| {
            let entry = listed_as(&p, &inode);
            if entry.is_dir {
                self.ensure_dir(&p, Some(&entry)).map(drop)
            } else {
                self.upsert_file(&p, &entry)
            }
        })?;
        self.progress.unchanged = unchanged;
        Ok(())
    }
}

/// One mount's part of a sync: its store's listing (of store paths), or
/// `None` to keep what the namespace holds under the mount.
pub struct MountListing {
    pub mount: Mount,
    pub listing: Option<BoxStream<'static, std::result::Result<StoreEntry, CoreError>>>,
}

impl MountListing {
    /// The listing of a dataset whose one store is at `/`.
    pub fn root(listing: impl Stream<Item = std::result::Result<StoreEntry, CoreError>> + Send + 'static) -> Vec<Self> {
        let mount = Mount { path: "/".into(), uri: String::new(), options: Default::default(), sync_interval: None };
        vec![MountListing { mount, listing: Some(listing.boxed()) }]
    }
}

/// List the stores of `stores` at the mount paths in `only` (the other mounts
/// keep what they hold) and bring the namespace of `info` in line with them.
/// Calls `report` with progress now and then; returns the updated record.
pub async fn sync(
    meta: &MetaStore,
    info: DatasetInfo,
    stores: &Stores,
    only: &[String],
    report: impl FnMut(&SyncProgress),
) -> Result<Synced> {
    let listings = stores
        .dataset
        .mounts
        .iter()
        .enumerate()
        .map(|(i, m)| MountListing {
            mount: m.clone(),
            listing: only.contains(&m.path).then(|| stores.store(i).list().boxed()),
        })
        .collect();
    sync_listing(meta, info, listings, report).await
}

/// [`sync`] from any listings (entries in any order; a directory may come
/// after its children): the ingest path, also fed by generated listings in
/// benchmarks. Whatever no mount holds any more leaves the namespace.
pub async fn sync_listing(
    meta: &MetaStore,
    mut info: DatasetInfo,
    mounts: Vec<MountListing>,
    mut report: impl FnMut(&SyncProgress),
) -> Result<Synced> {
    let mut s = Syncer {
        meta,
        signer: &meta.identity()?.signer,
        ds: info.id,
        batch: WriteBatch::default(),
        pending: 0,
        dirs: HashMap::new(),
        sums: HashMap::new(),
        seen: FixedBitSet::with_capacity(meta.next_id_hint() as usize + 1),
        progress: SyncProgress::default(),
        files: 0,
        dir_count: 0,
        bytes: 0,
        blocks: 0,
        block_size: shoal_core::dataset::block_size(&info),
        retired: Vec::new(),
        skipped: 0,
        now: now_unix(),
    };
    s.see(ROOT_INO);
    let mut paths: Vec<String> = mounts.iter().map(|m| m.mount.path.clone()).collect();
    let mut listed = Vec::new();
    for MountListing { mount, listing } in mounts {
        let Some(listing) = listing else {
            s.keep(&mount.path)?;
            s.flush().await?;
            continue;
        };
        // The mount point is there even while its store is empty (it was not
        // listed, so it is not counted as unchanged).
        let unchanged = s.progress.unchanged;
        s.ensure_dir(&mount.path, None)?;
        s.progress.unchanged = unchanged;
        let mut listing = std::pin::pin!(listing);
        while let Some(entry) = listing.next().await {
            let mut entry = entry?;
            s.progress.entries_listed += 1;
            s.progress.bytes_listed += entry.size;
            if !usable_path(&entry.path) {
                if entry.path != "/" {
                    warn!(path = %entry.path.escape_debug(), "skipping an object whose path cannot be a POSIX path");
                    s.skipped += 1;
                }
                continue;
            }
            entry.path = mount.dataset_path(&entry.path);
            if entry.is_dir {
                s.ensure_dir(&entry.path, Some(&entry))?;
            } else {
                s.upsert_file(&entry.path, &entry)?;
            }
            s.flush_full().await?;
            if s.progress.entries_listed.is_multiple_of(PROGRESS_EVERY) {
                report(&s.progress);
            }
        }
        listed.push(mount.path);
    }
    s.flush().await?;

    // Whatever was not seen in this listing is gone from the store.
    let mut gone = Vec::new();
    meta.scan_inodes(info.id, |inode| {
        if !s.seen.contains(inode.ino as usize) {
            gone.push(inode);
        }
        Ok(())
    })?;
    for inode in &gone {
        meta.delete_entry(&mut s.batch, info.id, inode);
        if inode.file_id != 0 {
            s.retired.push(inode.file_id);
        }
        s.pending += 1;
        s.progress.deleted += 1;
        s.flush_full().await?;
    }
    s.write_sums().await?;
    // The record as it is now: a policy or mount change made during the
    // listing is kept, and only what the sync measures is written over.
    let name = info.spec.as_ref().map(|s| s.name.clone()).unwrap_or_default();
    let record = meta.record_lock.lock().await;
    if let Some(now) = meta.get_dataset(&name)?.filter(|d| d.id == info.id) {
        paths = now
            .spec
            .as_ref()
            .map(shoal_core::dataset::mount_specs)
            .unwrap_or_default()
            .into_iter()
            .map(|m| m.path)
            .collect();
        info = now;
    }
    info.mount_synced_unix.retain(|path, _| paths.contains(path));
    for path in listed.into_iter().filter(|p| paths.contains(p)) {
        info.mount_synced_unix.insert(path, s.now);
    }
    info.file_count = s.files;
    info.dir_count = s.dir_count;
    info.total_bytes = s.bytes;
    info.total_blocks = s.blocks;
    info.last_sync_unix = s.now;
    if s.progress.added + s.progress.changed + s.progress.deleted > 0 {
        info.generation += 1;
    }
    meta.put_dataset(&mut s.batch, &info);
    s.pending += 1;
    s.flush().await?;
    drop(record);
    if s.skipped > 0 {
        warn!(dataset = info.id, skipped = s.skipped, "objects skipped during sync");
    }
    s.progress.done = true;
    s.progress.dataset = Some(info.clone());
    report(&s.progress);
    Ok(Synced { info, retired: s.retired })
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::master::DatasetSpec;

    fn entry(path: &str, is_dir: bool, size: u64) -> std::result::Result<StoreEntry, CoreError> {
        Ok(StoreEntry { path: path.into(), is_dir, size, mtime: None, etag: None })
    }

    /// (entries, tree_files, tree_bytes) of the directory at `path`.
    fn sums(meta: &MetaStore, path: &str) -> (u64, u64, u64) {
        let d = meta.resolve(1, path).unwrap().unwrap();
        (d.entries, d.tree_files, d.tree_bytes)
    }

    /// A master state with dataset 1's root, and the dataset's record.
    fn fresh() -> (tempfile::TempDir, std::sync::Arc<MetaStore>, DatasetInfo) {
        let dir = tempfile::tempdir().unwrap();
        let meta = MetaStore::open(dir.path()).unwrap();
        let mut b = WriteBatch::default();
        meta.put_inode(&mut b, 1, &root_inode(0));
        futures::executor::block_on(meta.write(b)).unwrap();
        (dir, meta, DatasetInfo { id: 1, root_inode: ROOT_INO, ..Default::default() })
    }

    #[test]
    fn every_file_is_signed_by_the_sync_or_after_an_upgrade() {
        let (_dir, meta, info) = fresh();
        let listing = || vec![entry("/a/x", false, 10), entry("/a/b/y", false, 20), entry("/c", false, 5)];
        let synced = futures::executor::block_on(sync_listing(
            &meta,
            info,
            MountListing::root(futures::stream::iter(listing())),
            |_| {},
        ))
        .unwrap()
        .info;
        let bs = shoal_core::dataset::block_size(&synced);
        let verify = |path: &str| {
            let i = meta.resolve(1, path).unwrap().unwrap();
            !i.sig.is_empty() && i.sig == sign_file(&meta.identity().unwrap().signer, 1, bs, path, &i)
        };
        let files = ["/a/x", "/a/b/y", "/c"];
        assert!(files.iter().all(|p| verify(p)), "the sync signs each file at its path");
        // A namespace written before signatures: signed once, at start.
        let mut b = WriteBatch::default();
        for p in files {
            let i = meta.resolve(1, p).unwrap().unwrap();
            meta.put_inode(&mut b, 1, &Inode { sig: Vec::new(), ..i });
        }
        futures::executor::block_on(meta.write(b)).unwrap();
        assert!(!verify("/c"));
        assert_eq!(futures::executor::block_on(sign_unsigned(&meta, &synced)).unwrap(), 3);
        assert!(files.iter().all(|p| verify(p)));
        assert_eq!(futures::executor::block_on(sign_unsigned(&meta, &synced)).unwrap(), 0, "nothing left to sign");
        // A re-sync of the same listing keeps every signature (and counts no change).
        let before: Vec<_> = files.iter().map(|p| meta.resolve(1, p).unwrap().unwrap().sig).collect();
        let again = futures::executor::block_on(sync_listing(
            &meta,
            synced,
            MountListing::root(futures::stream::iter(listing())),
            |p| {
                assert_eq!(p.changed, 0);
            },
        ))
        .unwrap();
        let after: Vec<_> = files.iter().map(|p| meta.resolve(1, p).unwrap().unwrap().sig).collect();
        assert_eq!(before, after);
        assert_eq!(again.info.file_count, 3);
    }

    #[test]
    fn directory_sums_follow_every_sync() {
        let (_dir, meta, info) = fresh();
        // Children come before their directories, as object stores list them.
        let first = vec![
            entry("/a/b/y", false, 20),
            entry("/a/x", false, 10),
            entry("/a/b/z", false, 30),
            entry("/a", true, 0),
            entry("/c", false, 5),
        ];
        let sync = |info, listing| {
            futures::executor::block_on(sync_listing(
                &meta,
                info,
                MountListing::root(futures::stream::iter(listing)),
                |_| {},
            ))
            .unwrap()
        };
        let done = sync(info, first).info;
        assert_eq!(sums(&meta, "/"), (2, 4, 65));
        assert_eq!(sums(&meta, "/a"), (2, 3, 60));
        assert_eq!(sums(&meta, "/a/b"), (2, 2, 50));
        assert_eq!((done.file_count, done.total_bytes), (4, 65), "the root's sums are the dataset's totals");

        // One file deleted, one changed, one added: every ancestor follows.
        let second = vec![
            entry("/a", true, 0),
            entry("/a/x", false, 10),
            entry("/a/b/y", false, 20),
            entry("/a/b/w", false, 1),
            entry("/c", false, 7),
        ];
        let mut done = sync(done, second).info;
        assert_eq!(sums(&meta, "/"), (2, 4, 38));
        assert_eq!(sums(&meta, "/a"), (2, 3, 31));
        assert_eq!(sums(&meta, "/a/b"), (2, 2, 21));
        assert_eq!((done.file_count, done.total_bytes), (4, 38));

        // An object store holding `c` beside `c/d`, in either order: the
        // directory wins and the file leaves every count.
        for listing in [
            vec![entry("/a/x", false, 10), entry("/c", false, 7), entry("/c/d", false, 3)],
            vec![entry("/a/x", false, 10), entry("/c/d", false, 3), entry("/c", false, 7)],
        ] {
            done = sync(done, listing).info;
            assert_eq!(sums(&meta, "/"), (2, 2, 13), "{done:?}");
            assert_eq!((done.file_count, done.total_bytes, done.total_blocks), (2, 13, 2));
            assert_eq!(sums(&meta, "/c"), (1, 1, 3));
        }

        // A whole directory gone.
        let third = vec![entry("/a/x", false, 10), entry("/c", false, 7)];
        sync(done, third);
        assert_eq!(sums(&meta, "/"), (2, 2, 17));
        assert_eq!(sums(&meta, "/a"), (1, 1, 10));
        assert!(meta.resolve(1, "/a/b").unwrap().is_none());
    }

    fn mount(path: &str) -> Mount {
        Mount { path: path.into(), uri: format!("file:///x{path}"), options: Default::default(), sync_interval: None }
    }

    fn listed(path: &str, listing: Option<Vec<std::result::Result<StoreEntry, CoreError>>>) -> MountListing {
        MountListing { mount: mount(path), listing: listing.map(|l| futures::stream::iter(l).boxed()) }
    }

    #[test]
    fn each_mount_syncs_into_its_path_and_keeps_the_others() {
        let (_dir, meta, mut info) = fresh();
        // The record names its mounts, as the service writes it before a sync.
        let table = |info: &mut DatasetInfo, paths: &[&str]| {
            let mounts = paths.iter().map(|p| mount(p).to_spec()).collect();
            info.spec = Some(DatasetSpec { name: "ds".into(), mounts, ..Default::default() });
            let mut b = WriteBatch::default();
            meta.put_dataset(&mut b, info);
            futures::executor::block_on(meta.write(b)).unwrap();
        };
        table(&mut info, &["/data/train", "/val", "/empty"]);
        let sync = |info, mounts| futures::executor::block_on(sync_listing(&meta, info, mounts, |_| {})).unwrap();
        let train = || Some(vec![entry("/", true, 0), entry("/a/x", false, 10), entry("/y", false, 20)]);
        let val = vec![entry("/v1", false, 5)];
        let done =
            sync(info, vec![listed("/data/train", train()), listed("/val", Some(val)), listed("/empty", Some(vec![]))]);
        assert_eq!((done.info.file_count, done.info.total_bytes), (3, 35));
        assert_eq!(sums(&meta, "/"), (3, 3, 35), "/data, /val and the empty mount's directory");
        assert_eq!(sums(&meta, "/data/train"), (2, 2, 30));
        assert_eq!(done.info.mount_synced_unix.len(), 3);
        let x = meta.resolve(1, "/data/train/a/x").unwrap().unwrap();

        // Only /val re-listed: /train is kept as it is (same inodes, same
        // content ids), /val follows its store.
        let mut before = done.info.clone();
        before.mount_synced_unix.insert("/data/train".into(), 7);
        table(&mut before, &["/data/train", "/val", "/empty"]);
        let val2 = vec![entry("/v1", false, 6), entry("/v2", false, 1)];
        let mut progress = SyncProgress::default();
        let again = futures::executor::block_on(sync_listing(
            &meta,
            before,
            vec![listed("/data/train", None), listed("/val", Some(val2)), listed("/empty", None)],
            |p| progress = p.clone(),
        ))
        .unwrap();
        assert_eq!(meta.resolve(1, "/data/train/a/x").unwrap().unwrap(), x);
        assert_eq!((again.info.file_count, again.info.total_bytes), (4, 37));
        assert_eq!(sums(&meta, "/data/train"), (2, 2, 30));
        assert_eq!(sums(&meta, "/val"), (2, 2, 7));
        assert_eq!((progress.entries_listed, progress.added, progress.changed, progress.deleted), (2, 1, 1, 0));
        assert_eq!(progress.unchanged, 0, "kept entries are not counted as listed");
        assert_eq!(again.info.mount_synced_unix["/data/train"], 7, "a kept mount was not synced");
        assert_eq!(again.retired.len(), 1, "the changed /val/v1");

        // A mount removed: everything under it leaves the namespace.
        let mut info = again.info;
        table(&mut info, &["/val"]);
        let gone = sync(info, vec![listed("/val", None)]);
        assert!(meta.resolve(1, "/data").unwrap().is_none());
        assert!(meta.resolve(1, "/empty").unwrap().is_none());
        assert_eq!((gone.info.file_count, gone.info.total_bytes), (2, 7));
        assert!(gone.retired.contains(&x.file_id));
        assert_eq!(gone.info.mount_synced_unix.keys().collect::<Vec<_>>(), ["/val"]);
    }
}

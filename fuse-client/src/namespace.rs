//! The client's metadata: directory listings loaded from the master in bulk (one
//! `ReadDir` stream of pages per directory) and kept compactly, within a memory
//! budget. `lookup`, `getattr` and `readdir` are answered from memory; dataset
//! files are immutable between syncs, so the kernel may cache them long.
//!
//! - A [`Listing`] holds a directory's entries sorted by name as fixed-size
//!   records over one shared name buffer (no allocation per entry), with an ino
//!   index beside it: about 76 bytes per entry (16 of them the file's signature).
//! - Listings live in a cache weighed in bytes ([`Metadata::new`]'s budget).
//!   Loading one prefetches its subdirectories in the background (eight at a
//!   time, while the cache is under half its budget), so a cold `find` or
//!   `os.walk` finds most directories loaded. Beyond the budget the least
//!   recently used listings are dropped and loaded again when asked for:
//!   memory stays bounded, never an OOM. (A re-sync then cannot name what
//!   changed in a dropped directory; [`Metadata::take_dropped`] says so, and
//!   the mount has the kernel revalidate every entry instead.)
//! - Every directory seen is remembered (parent, name, attributes: directories
//!   are few) to build paths; which directory a file is in is remembered up to
//!   a bound, and asked of the master (`GetAttr`) past it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use shoal_proto::master::{FileKind, GetAttrRequest, Inode, ReadDirRequest};
use tokio::runtime::Handle;
use tokio::sync::Semaphore;
use tracing::{debug, warn};

pub const ROOT: u64 = 1;
/// Entries asked of the master per `ReadDir` page.
const PAGE: u32 = 65536;
/// Directory loads running in the background at once.
const PREFETCH_PARALLEL: usize = 8;
/// Bytes of budget per remembered file → directory pair.
const PARENT_BYTES: u64 = 48;

/// One entry of a listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub ino: u64,
    pub size: u64,
    pub file_id: u64,
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
    name_off: u32,
    name_len: u16,
    pub is_dir: bool,
    /// The master's signature of this file version, sent with block references.
    pub sig: [u8; shoal_core::identity::SIG_LEN],
}

impl Entry {
    pub fn mtime(&self) -> SystemTime {
        if self.mtime_sec >= 0 {
            UNIX_EPOCH + Duration::new(self.mtime_sec as u64, self.mtime_nsec.min(999_999_999))
        } else {
            UNIX_EPOCH
        }
    }

    /// Whether a re-sync changed what the kernel may have cached for it.
    fn same_content(&self, o: &Entry) -> bool {
        (self.ino, self.size, self.file_id, self.mtime_sec, self.mtime_nsec, self.is_dir)
            == (o.ino, o.size, o.file_id, o.mtime_sec, o.mtime_nsec, o.is_dir)
    }

    /// The master's record of it, as the block reader takes it.
    pub fn inode(&self, parent: u64, name: &str) -> Inode {
        Inode {
            ino: self.ino,
            parent,
            name: name.to_string(),
            kind: if self.is_dir { FileKind::Directory } else { FileKind::File } as i32,
            size: self.size,
            mtime_sec: self.mtime_sec,
            mtime_nsec: self.mtime_nsec,
            file_id: self.file_id,
            sig: if self.is_dir { Vec::new() } else { self.sig.to_vec() },
            ..Default::default()
        }
    }

    fn of(i: &Inode, name_off: u32) -> Entry {
        Entry {
            ino: i.ino,
            size: i.size,
            file_id: i.file_id,
            mtime_sec: i.mtime_sec,
            mtime_nsec: i.mtime_nsec,
            name_off,
            name_len: i.name.len() as u16,
            is_dir: i.kind == FileKind::Directory as i32,
            sig: i.sig.as_slice().try_into().unwrap_or_default(),
        }
    }
}

fn root_entry() -> Entry {
    Entry {
        ino: ROOT,
        size: 0,
        file_id: 0,
        mtime_sec: 0,
        mtime_nsec: 0,
        name_off: 0,
        name_len: 0,
        is_dir: true,
        sig: Default::default(),
    }
}

/// A directory's children, sorted by name.
#[derive(Debug)]
pub struct Listing {
    /// The re-sync generation it was loaded in ([`Metadata`]'s epoch).
    epoch: u64,
    names: Box<str>,
    entries: Box<[Entry]>,
    /// Positions in `entries`, sorted by ino.
    by_ino: Box<[u32]>,
}

impl Listing {
    /// Build from the master's entries (any order; names of at most 255 bytes).
    pub fn build(mut inodes: Vec<Inode>) -> Listing {
        inodes.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        inodes.dedup_by(|a, b| a.name == b.name);
        let mut names = String::with_capacity(inodes.iter().map(|i| i.name.len()).sum());
        let mut entries = Vec::with_capacity(inodes.len());
        for i in &inodes {
            entries.push(Entry::of(i, names.len() as u32));
            names.push_str(&i.name);
        }
        let mut by_ino: Vec<u32> = (0..entries.len() as u32).collect();
        by_ino.sort_unstable_by_key(|&k| entries[k as usize].ino);
        Listing { epoch: 0, names: names.into(), entries: entries.into(), by_ino: by_ino.into() }
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn name(&self, e: &Entry) -> &str {
        &self.names[e.name_off as usize..e.name_off as usize + usize::from(e.name_len)]
    }

    pub fn lookup(&self, name: &str) -> Option<&Entry> {
        self.entries.binary_search_by(|e| self.name(e).cmp(name)).ok().map(|k| &self.entries[k])
    }

    pub fn by_ino(&self, ino: u64) -> Option<&Entry> {
        let k = self.by_ino.binary_search_by_key(&ino, |&k| self.entries[k as usize].ino).ok()?;
        Some(&self.entries[self.by_ino[k] as usize])
    }

    /// Bytes it holds (what the budget counts).
    pub fn weight(&self) -> u32 {
        let bytes = std::mem::size_of::<Listing>()
            + self.names.len()
            + self.entries.len() * (std::mem::size_of::<Entry>() + std::mem::size_of::<u32>());
        u32::try_from(bytes).unwrap_or(u32::MAX)
    }
}

/// A directory seen in a listing: where it is and its attributes.
#[derive(Debug, Clone)]
struct Dir {
    parent: u64,
    name: Box<str>,
    entry: Entry,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum MetaError {
    #[error("no such entry")]
    NotFound,
    #[error("not a directory")]
    NotDir,
    #[error("master: {0}")]
    Master(String),
}

impl From<tonic::Status> for MetaError {
    fn from(s: tonic::Status) -> Self {
        match s.code() {
            tonic::Code::NotFound => MetaError::NotFound,
            tonic::Code::FailedPrecondition => MetaError::NotDir,
            _ => MetaError::Master(s.message().to_string()),
        }
    }
}

/// A dataset's metadata as the mount sees it.
pub struct Metadata {
    dataset: String,
    master: shoal_proto::auth::Master,
    rt: Handle,
    budget: u64,
    listings: moka::sync::Cache<u64, Arc<Listing>>,
    dirs: RwLock<HashMap<u64, Dir>>,
    parents: Mutex<HashMap<u64, u64>>,
    max_parents: usize,
    prefetch: Arc<Semaphore>,
    /// A listing was dropped for the budget since the last re-sync.
    dropped: Arc<AtomicBool>,
    /// Re-syncs seen; a listing loaded before the last one is never served.
    epoch: AtomicU64,
    /// The one listing too large for the cache (over half the budget), kept
    /// beside it rather than loaded again at every access.
    oversize: Mutex<Option<(u64, Arc<Listing>)>>,
}

impl std::fmt::Debug for Metadata {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metadata").field("dataset", &self.dataset).field("bytes", &self.cached_bytes()).finish()
    }
}

/// Where an inode is: its directory, its entry, its name.
#[derive(Debug, Clone)]
pub struct Located {
    pub parent: u64,
    pub entry: Entry,
    pub name: String,
}

impl Metadata {
    /// `budget` bytes of listings (plus a quarter of it for the file → directory
    /// index) at most.
    pub fn new(dataset: &str, master: shoal_proto::auth::Master, rt: Handle, budget: u64) -> Arc<Metadata> {
        let dropped = Arc::new(AtomicBool::new(false));
        let on_evict = dropped.clone();
        let listings = moka::sync::Cache::builder()
            .max_capacity(budget)
            .weigher(|_, l: &Arc<Listing>| l.weight())
            // A walk uses the listing it just loaded next: keep the newest (TinyLFU
            // would turn a just-loaded listing away and load it again per lookup).
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .eviction_listener(move |_dir: Arc<u64>, _l: Arc<Listing>, cause| {
                if cause == moka::notification::RemovalCause::Size {
                    metrics::EVICTED_DIRS.inc();
                    on_evict.store(true, Ordering::Relaxed);
                }
            })
            .build();
        let mut dirs = HashMap::new();
        dirs.insert(ROOT, Dir { parent: ROOT, name: "".into(), entry: root_entry() });
        Arc::new(Metadata {
            dataset: dataset.to_string(),
            master,
            rt,
            budget,
            listings,
            dirs: RwLock::new(dirs),
            parents: Mutex::new(HashMap::new()),
            max_parents: (budget / 4 / PARENT_BYTES).max(1024) as usize,
            prefetch: Arc::new(Semaphore::new(PREFETCH_PARALLEL)),
            dropped,
            epoch: AtomicU64::new(0),
            oversize: Mutex::new(None),
        })
    }

    /// Whether a listing was dropped for the budget since the last call: the
    /// kernel may then hold entries of directories a re-sync cannot diff.
    pub fn take_dropped(&self) -> bool {
        self.dropped.swap(false, Ordering::Relaxed)
    }

    pub fn cached_bytes(&self) -> u64 {
        self.listings.run_pending_tasks();
        self.listings.weighted_size()
    }

    /// The listing of directory `dir`, from memory or the master.
    pub fn listing(self: &Arc<Self>, dir: u64) -> Result<Arc<Listing>, MetaError> {
        if let Some(l) = self.cached(dir) {
            return Ok(l);
        }
        let this = self.clone();
        let rt = self.rt.clone();
        let l = self
            .listings
            .try_get_with(dir, move || rt.block_on(this.load(dir)))
            .map_err(|e: Arc<MetaError>| (*e).clone())?;
        self.keep_oversize(dir, &l);
        Ok(l)
    }

    /// Keep `l` beside the cache when it is too large for it (over half the
    /// budget); returns whether it was.
    fn keep_oversize(&self, dir: u64, l: &Arc<Listing>) -> bool {
        let over = u64::from(l.weight()) > self.budget / 2;
        if over {
            *self.oversize.lock().expect("oversize lock") = Some((dir, l.clone()));
        }
        over
    }

    /// The listing of `dir` if it is in memory and current.
    fn cached(&self, dir: u64) -> Option<Arc<Listing>> {
        let epoch = self.epoch.load(Ordering::Acquire);
        if let Some(l) = self.listings.get(&dir) {
            if l.epoch == epoch {
                return Some(l);
            }
            // Loaded across a re-sync: its entries may be the old ones.
            self.listings.invalidate(&dir);
            self.dropped.store(true, Ordering::Relaxed);
        }
        let big = self.oversize.lock().expect("oversize lock");
        big.as_ref().filter(|(d, l)| *d == dir && l.epoch == epoch).map(|(_, l)| l.clone())
    }

    /// Read a directory from the master, remember where its entries are, and
    /// start loading its subdirectories.
    async fn load(self: Arc<Self>, dir: u64) -> Result<Arc<Listing>, MetaError> {
        let epoch = self.epoch.load(Ordering::Acquire);
        let mut master = self.master.clone();
        let mut inodes = Vec::new();
        let mut start_after = String::new();
        loop {
            let page = master
                .read_dir(ReadDirRequest {
                    dataset: self.dataset.clone(),
                    ino: dir,
                    start_after: std::mem::take(&mut start_after),
                    limit: PAGE,
                })
                .await?
                .into_inner();
            if let Some(last) = page.entries.last() {
                start_after = last.name.clone();
            }
            inodes.extend(page.entries);
            if !page.more || start_after.is_empty() {
                break;
            }
        }
        metrics::LOADED_DIRS.inc();
        let listing = Arc::new(Listing { epoch, ..Listing::build(inodes) });
        let mut subdirs = Vec::new();
        {
            let mut dirs = self.dirs.write().expect("dirs lock");
            for e in listing.entries().iter().filter(|e| e.is_dir) {
                dirs.insert(e.ino, Dir { parent: dir, name: listing.name(e).into(), entry: *e });
                subdirs.push(e.ino);
            }
        }
        {
            let mut parents = self.parents.lock().expect("parents lock");
            if parents.len() + listing.entries().len() > self.max_parents {
                parents.clear();
            }
            for e in listing.entries().iter().filter(|e| !e.is_dir).take(self.max_parents) {
                parents.insert(e.ino, dir);
            }
        }
        debug!(dir, entries = listing.entries().len(), "directory loaded");
        self.prefetch_dirs(subdirs);
        Ok(listing)
    }

    /// Load `dirs` in the background (bounded), while under half the budget.
    fn prefetch_dirs(self: &Arc<Self>, dirs: Vec<u64>) {
        for d in dirs {
            if self.listings.weighted_size() > self.budget / 2 || self.listings.contains_key(&d) {
                continue;
            }
            let this = self.clone();
            self.rt.spawn(async move {
                let Ok(_permit) = this.prefetch.clone().acquire_owned().await else { return };
                if this.listings.contains_key(&d) || this.listings.weighted_size() > this.budget / 2 {
                    return;
                }
                match this.clone().load(d).await {
                    Ok(l) => {
                        this.listings.entry(d).or_insert(l);
                    }
                    Err(e) => debug!(dir = d, error = %e, "directory prefetch failed"),
                }
            });
        }
    }

    pub fn lookup(self: &Arc<Self>, parent: u64, name: &str) -> Result<Option<Entry>, MetaError> {
        Ok(self.listing(parent)?.lookup(name).copied())
    }

    /// Find inode `ino`: the root, a directory seen, a file of a listing, or (past
    /// the index's bound) the master's record.
    pub fn locate(self: &Arc<Self>, ino: u64) -> Result<Located, MetaError> {
        if let Some(d) = self.dirs.read().expect("dirs lock").get(&ino) {
            return Ok(Located { parent: d.parent, entry: d.entry, name: d.name.to_string() });
        }
        let parent = self.parents.lock().expect("parents lock").get(&ino).copied();
        // A listing in memory answers; one that was dropped is not loaded again
        // for one inode (the master's record is one small RPC).
        if let Some(l) = parent.and_then(|p| self.cached(p)) {
            if let Some(e) = l.by_ino(ino) {
                let parent = parent.expect("found above");
                return Ok(Located { parent, entry: *e, name: l.name(e).to_string() });
            }
        }
        let mut master = self.master.clone();
        let req = GetAttrRequest { dataset: self.dataset.clone(), ino };
        let inode = self.rt.block_on(master.get_attr(req))?.into_inner();
        metrics::ATTR_LOOKUPS.inc();
        let entry = Entry::of(&inode, 0);
        if entry.is_dir {
            let d = Dir { parent: inode.parent, name: inode.name.as_str().into(), entry };
            self.dirs.write().expect("dirs lock").insert(ino, d);
        } else {
            let mut parents = self.parents.lock().expect("parents lock");
            if parents.len() >= self.max_parents {
                parents.clear();
            }
            parents.insert(ino, inode.parent);
        }
        Ok(Located { parent: inode.parent, entry, name: inode.name })
    }

    /// The dataset path of directory `dir` (`""` for the root).
    pub fn dir_path(self: &Arc<Self>, dir: u64) -> Result<String, MetaError> {
        let mut parts = Vec::new();
        let mut cur = dir;
        while cur != ROOT {
            let d = self.dirs.read().expect("dirs lock").get(&cur).cloned();
            let (parent, name) = match d {
                Some(d) => (d.parent, d.name.to_string()),
                None => {
                    let l = self.locate(cur)?;
                    (l.parent, l.name)
                }
            };
            parts.push(name);
            if parts.len() > 4096 {
                return Err(MetaError::Master(format!("directory {dir} has no path to the root")));
            }
            cur = parent;
        }
        parts.reverse();
        Ok(parts.iter().fold(String::new(), |p, n| p + "/" + n))
    }

    pub fn path(self: &Arc<Self>, parent: u64, name: &str) -> Result<String, MetaError> {
        Ok(format!("{}/{name}", self.dir_path(parent)?))
    }

    /// After a re-sync: drop every listing and index, load the ones that were in
    /// memory again, and return what the kernel must forget: entries (directory,
    /// name) that appeared, vanished or changed, and inodes whose attributes or
    /// content changed.
    ///
    /// `dropped` (see [`Metadata::take_dropped`]): listings were dropped, so every
    /// directory seen is also returned, for the kernel to drop its cached
    /// listing (`FOPEN_CACHE_DIR`) of it.
    pub async fn resync(self: &Arc<Self>, dropped: bool) -> (Vec<(u64, String)>, Vec<u64>) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        let mut old: Vec<(u64, Arc<Listing>)> = self.listings.iter().map(|(d, l)| (*d, l)).collect();
        old.extend(self.oversize.lock().expect("oversize lock").take());
        self.listings.invalidate_all();
        self.parents.lock().expect("parents lock").clear();
        let (mut entries, mut inodes) = (Vec::new(), Vec::new());
        {
            let mut dirs = self.dirs.write().expect("dirs lock");
            if dropped {
                inodes.extend(dirs.keys().copied());
            }
            dirs.retain(|&ino, _| ino == ROOT);
        }
        for (dir, before) in old {
            let after = match self.clone().load(dir).await {
                Ok(l) => {
                    if !self.keep_oversize(dir, &l) {
                        self.listings.insert(dir, l.clone());
                    }
                    l
                }
                Err(MetaError::NotFound | MetaError::NotDir) => Arc::new(Listing::build(Vec::new())),
                Err(e) => {
                    warn!(dir, error = %e, "cannot reload a directory after a re-sync; forgetting it whole");
                    Arc::new(Listing::build(Vec::new()))
                }
            };
            let mut changed = false;
            for e in before.entries() {
                let name = before.name(e);
                match after.lookup(name) {
                    Some(n) if n.same_content(e) => {}
                    Some(n) if n.ino == e.ino => {
                        inodes.push(e.ino);
                        changed = true;
                    }
                    _ => {
                        entries.push((dir, name.to_string()));
                        inodes.push(e.ino);
                        changed = true;
                    }
                }
            }
            for e in after.entries() {
                if before.lookup(after.name(e)).is_none() {
                    entries.push((dir, after.name(e).to_string()));
                    changed = true;
                }
            }
            if changed {
                inodes.push(dir);
            }
        }
        (entries, inodes)
    }
}

/// The metadata cache's own counters.
pub mod metrics {
    use std::sync::LazyLock;

    use prometheus::{register_int_counter, IntCounter};

    pub static LOADED_DIRS: LazyLock<IntCounter> = LazyLock::new(|| {
        register_int_counter!("shoal_mount_dirs_loaded_total", "Directory listings loaded from the master")
            .expect("metric")
    });
    pub static EVICTED_DIRS: LazyLock<IntCounter> = LazyLock::new(|| {
        register_int_counter!(
            "shoal_mount_dirs_evicted_total",
            "Directory listings dropped to stay within the metadata budget"
        )
        .expect("metric")
    });
    pub static ATTR_LOOKUPS: LazyLock<IntCounter> = LazyLock::new(|| {
        register_int_counter!(
            "shoal_mount_attr_lookups_total",
            "Inodes asked of the master because their directory was not in memory"
        )
        .expect("metric")
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(ino: u64, name: &str, dir: bool, size: u64) -> Inode {
        Inode {
            ino,
            parent: 2,
            name: name.into(),
            kind: if dir { FileKind::Directory as i32 } else { FileKind::File as i32 },
            size,
            ..Default::default()
        }
    }

    #[test]
    fn a_listing_finds_entries_by_name_and_by_ino() {
        let l = Listing::build(vec![node(9, "zeta", false, 7), node(3, "alpha", true, 0), node(5, "mid", false, 1)]);
        let names: Vec<_> = l.entries().iter().map(|e| l.name(e)).collect();
        assert_eq!(names, ["alpha", "mid", "zeta"]);
        assert_eq!(l.lookup("zeta").unwrap().size, 7);
        assert!(l.lookup("alpha").unwrap().is_dir);
        assert!(l.lookup("beta").is_none());
        assert_eq!(l.name(l.by_ino(5).unwrap()), "mid");
        assert!(l.by_ino(4).is_none());
        assert_eq!(l.entries()[0].inode(2, "alpha").kind, FileKind::Directory as i32);
    }

    #[test]
    fn entries_are_compact() {
        assert!(std::mem::size_of::<Entry>() <= 64, "{}", std::mem::size_of::<Entry>());
        let many: Vec<Inode> = (0..10_000).map(|i| node(i + 10, &format!("file-{i:06}.jpg"), false, 100)).collect();
        let l = Listing::build(many);
        let per_entry = l.weight() as usize / 10_000;
        assert!(per_entry <= 86, "{per_entry} bytes per entry");
        assert_eq!(l.lookup("file-004242.jpg").unwrap().ino, 4252);
    }
}

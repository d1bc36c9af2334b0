//! Block reads for the mount, in order of sources ([`crate::sources`]): the
//! co-located worker by short-circuit, a worker the master lists as holding
//! the block ([`crate::locator`]), the block's owner by rendezvous hashing
//! (which reads it through from the store and caches it), the next-ranked
//! workers, and finally the under-store itself. A cache outage slows reads; it
//! never fails them. Fetched blocks are kept in a bounded in-process cache, and
//! concurrent reads of one block share one fetch. A random read that wants a
//! small part of a block no cache holds reads only that range from the store,
//! while the block's owner caches the whole block for the reads that follow.
//! Directory prefetch asks the owning workers to cache a directory's small
//! files ahead of the reads that a data loader's shuffled epoch will make.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use shoal_core::{ids, BlockId};
use shoal_proto::master::{DatasetInfo, Inode};
use shoal_proto::worker::{BlockRef, CacheBlockRequest};
use tracing::{debug, warn};

use crate::locator::{Locator, Workers};
use crate::sources::{BlockSource, Clients, DirectStores, Down, Miss, Remote, ShortCircuit, SourceKind, Want};

/// Why a read failed, mapped to an errno by the filesystem.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReadError {
    #[error("{0} is gone from the store")]
    NotFound(String),
    #[error("every source failed for {path} block {index}: {last}")]
    AllSourcesFailed { path: String, index: u32, last: String },
    /// The store holds another version than the one listed: a re-sync shows it.
    #[error("{path} changed in the store since the dataset was synced: {detail}")]
    Changed { path: String, detail: String },
}

impl ReadError {
    /// The errno a reader gets: `ENOENT` for an object gone from the store,
    /// `ESTALE` for one that changed since the listing (its handle is stale
    /// until a sync), `EIO` when no source could serve it.
    pub fn errno(&self) -> i32 {
        match self {
            ReadError::NotFound(_) => libc::ENOENT,
            ReadError::Changed { .. } => libc::ESTALE,
            ReadError::AllSourcesFailed { .. } => libc::EIO,
        }
    }
}

/// Where blocks came from, for stats and the Python client (ranges included).
#[derive(Debug, Default)]
pub struct SourceCounters {
    pub short_circuit: AtomicU64,
    pub worker: AtomicU64,
    pub store: AtomicU64,
    pub failures: AtomicU64,
}

impl SourceCounters {
    /// Count a block served by `kind`, or (`None`) a read no source served.
    fn count(&self, kind: Option<SourceKind>) {
        let c = match kind {
            Some(SourceKind::ShortCircuit) => &self.short_circuit,
            Some(SourceKind::Worker) => &self.worker,
            Some(SourceKind::Store) => &self.store,
            None => &self.failures,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// How a read follows the previous read of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// From the start, or where the last read ended: whole blocks are fetched
    /// (and the next ones ahead).
    Sequential,
    /// Elsewhere: a small part of a block nobody caches is read alone.
    Random,
}

/// A random read of at most this share of a block reads only its range
/// (1/4: a 256 KiB read of a 1 MiB block, or smaller).
const RANGE_SHARE: u64 = 4;

#[derive(Debug, Clone)]
pub struct ReaderConfig {
    /// This machine's node name: a worker on the same node is read by short-circuit.
    pub node: String,
    /// Bytes of blocks kept in this process.
    pub cache_bytes: u64,
    /// Small files the directory prefetch has in flight at once (at least 1).
    pub dir_prefetch_parallel: usize,
}

/// The default of [`ReaderConfig::dir_prefetch_parallel`]. The prefetch shares
/// the link and the store with the readers' own misses, and which count wins
/// depends on the headroom (peers bench, store and mount on the same 2 cores,
/// capped cold epoch, files/s): with spare CPU 32 did 902 against 609 with 8;
/// with the machine saturated, 8 did 348–425 against 228 with 32.
pub const DIR_PREFETCH_PARALLEL: usize = 32;

pub struct Reader {
    dataset_id: u32,
    block_size: u64,
    locator: Locator,
    clients: Clients,
    down: Down,
    /// The dataset's stores (options redacted) for reads no worker serves.
    stores: DirectStores,
    cache: moka::future::Cache<BlockId, Bytes>,
    node: String,
    /// The directory prefetch's requests in flight, per mount.
    prefetch_slots: tokio::sync::Semaphore,
    /// Blocks a random read's range came from the store for, which their
    /// owner is caching now (one fill per block, not one per read).
    filling: Mutex<HashSet<BlockId>>,
    /// Blocks of large (multi-block) files fetched for a read or by readahead,
    /// newest last, held whatever the cache decides to admit: moka's TinyLFU
    /// rejects new blocks once the cache is full of small files read twice, and a
    /// stream would then map and checksum its block again for every kernel read.
    streaming: Mutex<Streaming>,
    pub counters: SourceCounters,
}

#[derive(Default)]
struct Streaming {
    blocks: std::collections::VecDeque<(BlockId, Bytes)>,
    bytes: u64,
    budget: u64,
}

impl Streaming {
    fn get(&self, id: BlockId) -> Option<Bytes> {
        self.blocks.iter().rev().find(|(b, _)| *b == id).map(|(_, d)| d.clone())
    }

    fn put(&mut self, id: BlockId, data: Bytes) {
        if self.blocks.iter().any(|(b, _)| *b == id) {
            return;
        }
        self.bytes += data.len() as u64;
        self.blocks.push_back((id, data));
        while self.bytes > self.budget && self.blocks.len() > 1 {
            if let Some((_, old)) = self.blocks.pop_front() {
                self.bytes -= old.len() as u64;
            }
        }
    }
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader").field("dataset", &self.locator.dataset()).finish()
    }
}

/// How one source's try went.
enum Tried {
    Got(Bytes),
    Absent,
    Failed,
}

impl Reader {
    pub fn new(dataset: DatasetInfo, master: shoal_proto::auth::Master, config: &ReaderConfig) -> Arc<Self> {
        let block_size = shoal_core::dataset::block_size(&dataset);
        let cache = moka::future::Cache::builder()
            .max_capacity(config.cache_bytes.max(block_size))
            .weigher(|_, b: &Bytes| b.len().min(u32::MAX as usize) as u32)
            .build();
        let locator = Locator::new(dataset.spec.as_ref().map(|s| s.name.clone()).unwrap_or_default(), master);
        Arc::new(Self {
            dataset_id: dataset.id,
            block_size,
            locator,
            clients: Clients::default(),
            down: Down::default(),
            stores: DirectStores::new(dataset),
            cache,
            node: config.node.clone(),
            prefetch_slots: tokio::sync::Semaphore::new(config.dir_prefetch_parallel.max(1)),
            filling: Mutex::new(HashSet::new()),
            streaming: Mutex::new(Streaming { budget: config.cache_bytes.max(block_size), ..Default::default() }),
            counters: SourceCounters::default(),
        })
    }

    pub fn block_size(&self) -> u64 {
        self.block_size
    }

    /// Take the dataset's record as the master sends it now: changed mounts
    /// (another store, rotated options) are opened anew for direct reads.
    pub fn set_dataset(&self, info: &DatasetInfo) {
        self.stores.set_dataset(info)
    }

    /// Refresh the live worker list from the master now; keeps the old list if the
    /// master cannot be reached (reads go on without it).
    pub async fn refresh_workers(&self) {
        self.locator.refresh().await
    }

    /// Refresh the worker list every `every` until the reader is dropped.
    pub fn spawn_refresh(self: &Arc<Self>, every: Duration) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                match weak.upgrade() {
                    Some(r) => r.refresh_workers().await,
                    None => return,
                }
            }
        });
    }

    /// Bytes of tier quota of the live workers.
    pub fn worker_capacity(&self) -> u64 {
        self.locator.workers().capacity()
    }

    fn block_ref(&self, inode: &Inode, path: &str, index: u32) -> BlockRef {
        shoal_core::dataset::block_ref(self.locator.dataset(), self.dataset_id, self.block_size, path, inode, index)
    }

    /// Bytes `[offset, offset + size)` of a file, clipped to its end.
    pub async fn read(
        self: &Arc<Self>,
        inode: &Inode,
        path: &str,
        offset: u64,
        size: u64,
        access: Access,
    ) -> Result<Bytes, ReadError> {
        let pieces: Vec<_> = ids::blocks_for_range(inode.size, self.block_size, offset, size).collect();
        if pieces.len() == 1 {
            let (index, at, len) = pieces[0];
            // A file of one block is read whole: its reads arrive out of order
            // from the kernel's threads (a read at 128 KiB before the one at 0
            // looks random), and the whole block is one GET either way.
            if access == Access::Random && len * RANGE_SHARE <= self.block_size && inode.size > self.block_size {
                return self.range(inode, path, index, at, len).await;
            }
            let block = self.block(inode, path, index).await?;
            return Ok(block.slice(at as usize..(at + len) as usize));
        }
        let blocks =
            futures::future::join_all(pieces.iter().map(|(index, _, _)| self.block(inode, path, *index))).await;
        let mut out = BytesMut::with_capacity(pieces.iter().map(|p| p.2 as usize).sum());
        for (block, (_, at, len)) in blocks.into_iter().zip(&pieces) {
            out.extend_from_slice(&block?[*at as usize..(*at + *len) as usize]);
        }
        Ok(out.freeze())
    }

    /// Start fetching a block into the cache without waiting for it.
    pub fn prefetch(self: &Arc<Self>, inode: &Inode, path: &str, index: u32) {
        let id = BlockId::new(inode.file_id, index);
        if ids::block_range(inode.size, self.block_size, index).is_none()
            || self.cache.contains_key(&id)
            || self.streaming.lock().expect("streaming lock").get(id).is_some()
        {
            return;
        }
        let this = self.clone();
        let inode = inode.clone();
        let path = path.to_string();
        tokio::spawn(async move {
            let _ = this.block(&inode, &path, index).await;
        });
    }

    /// Whether a block is in this process's cache.
    pub fn is_cached(&self, inode: &Inode, index: u32) -> bool {
        self.cache.contains_key(&BlockId::new(inode.file_id, index))
    }

    /// A block this process holds, in its cache or for a stream.
    async fn held(&self, id: BlockId) -> Option<Bytes> {
        if let Some(b) = self.streaming.lock().expect("streaming lock").get(id) {
            return Some(b);
        }
        self.cache.get(&id).await
    }

    /// Ask each single-block file's owning worker to cache it, without moving
    /// the bytes here: reads that follow find them in the worker's tiers.
    /// [`ReaderConfig::dir_prefetch_parallel`] requests are in flight per mount;
    /// `shoal_fuse_dir_prefetch_queued` counts the files not finished yet.
    pub fn prefetch_files(self: &Arc<Self>, files: Vec<(Inode, String)>) {
        crate::metrics::DIR_PREFETCH_QUEUED.add(files.len() as i64);
        let this = self.clone();
        tokio::spawn(async move {
            futures::stream::iter(files)
                // The slots bound what is in flight, across every directory.
                .for_each_concurrent(None, |(inode, path)| {
                    let this = this.clone();
                    async move {
                        if let Some(result) = this.prefetch_file(&inode, &path).await {
                            crate::metrics::DIR_PREFETCH.with_label_values(&[result]).inc();
                        }
                        crate::metrics::DIR_PREFETCH_QUEUED.dec();
                    }
                })
                .await;
        });
    }

    /// One file of a directory prefetch, once a slot is free; how it went, or
    /// `None` if there was nothing to do.
    async fn prefetch_file(&self, inode: &Inode, path: &str) -> Option<&'static str> {
        let _slot = self.prefetch_slots.acquire().await.ok()?;
        if self.is_cached(inode, 0) {
            return None;
        }
        Some(match self.cache_on_owner(inode, path, 0).await {
            Ok(true) => "cached",
            Ok(false) => "loaded",
            Err(e) => {
                debug!(path, error = %e, "directory prefetch failed");
                "failed"
            }
        })
    }

    /// `CacheBlock` of a file's block on its owner; true if it was cached already.
    pub(crate) async fn cache_on_owner(&self, inode: &Inode, path: &str, index: u32) -> Result<bool, String> {
        let id = BlockId::new(inode.file_id, index);
        let workers = self.locator.workers();
        let w = workers.owner(id).ok_or("no worker is known")?;
        let mut c = self.clients.get(&w.address).map_err(|_| "bad worker address")?;
        let r = self.block_ref(inode, path, index);
        // A worker that holds it already (the owner before a join, or one being
        // drained) is the source of the copy, not the store.
        let holders = self.locator.holders(inode, index).await;
        let peers = workers.addresses(&holders, &w.id);
        let req = CacheBlockRequest { block: Some(r), peers };
        let resp = c.cache_block(req).await.map_err(|s| s.message().to_string())?;
        Ok(resp.into_inner().already_cached)
    }

    /// One whole block, from the cache or fetched once for all concurrent readers.
    pub async fn block(&self, inode: &Inode, path: &str, index: u32) -> Result<Bytes, ReadError> {
        let id = BlockId::new(inode.file_id, index);
        let large = inode.size > self.block_size;
        if large {
            if let Some(b) = self.streaming.lock().expect("streaming lock").get(id) {
                return Ok(b);
            }
        }
        let b = self.cache.try_get_with(id, self.fetch(inode, path, index)).await.map_err(|e| (*e).clone())?;
        if large {
            self.streaming.lock().expect("streaming lock").put(id, b.clone());
        }
        Ok(b)
    }

    /// What a read wants of block `index`: `len` bytes at `at` in it.
    fn want<'a>(&self, r: &'a BlockRef, inode: &Inode, index: u32, range: Option<(u64, u64)>) -> Want<'a> {
        let (start, block_len) = ids::block_range(inode.size, self.block_size, index).unwrap_or((0, 0));
        let (at, len) = range.unwrap_or((0, block_len));
        Want { block: r, start, block_len, at, len, version: shoal_core::dataset::version_of(inode) }
    }

    /// Try one source; a failure's message becomes `last`.
    async fn attempt(&self, source: &dyn BlockSource, want: &Want<'_>, last: &mut String) -> Result<Tried, ReadError> {
        match source.read(want).await {
            Ok(b) => {
                let kind = source.kind();
                self.counters.count(Some(kind));
                let label = if want.whole() { kind.label().to_string() } else { format!("{}_range", kind.label()) };
                crate::metrics::BLOCK_SOURCE.with_label_values(&[label.as_str()]).inc();
                Ok(Tried::Got(b))
            }
            Err(Miss::Absent) => Ok(Tried::Absent),
            Err(Miss::Failed(e)) => {
                warn!(kind = source.kind().label(), path = %want.block.path, index = want.block.index, error = %e, "read failed; trying the next source");
                *last = e;
                Ok(Tried::Failed)
            }
            Err(Miss::Final(e)) => Err(e),
        }
    }

    /// Ask the workers `ids` in turn (unknown and down ones skipped) until one
    /// serves `want`; `cached_only` ones only from what they hold.
    async fn ask_workers<'w>(
        &self,
        ids: impl Iterator<Item = &'w str>,
        workers: &Workers,
        want: &Want<'_>,
        cached_only: bool,
        last: &mut String,
    ) -> Result<Option<Bytes>, ReadError> {
        for wid in ids {
            let Some(w) = workers.get(wid).filter(|_| !self.down.is_down(wid)) else { continue };
            let source = Remote { worker: w, clients: &self.clients, down: &self.down, cached_only };
            if let Tried::Got(b) = self.attempt(&source, want, last).await? {
                return Ok(Some(b));
            }
        }
        Ok(None)
    }

    fn all_failed(&self, want: &Want<'_>, last: String) -> ReadError {
        crate::metrics::BLOCK_SOURCE.with_label_values(&["failed"]).inc();
        self.counters.count(None);
        ReadError::AllSourcesFailed { path: want.block.path.clone(), index: want.block.index, last }
    }

    async fn fetch(&self, inode: &Inode, path: &str, index: u32) -> Result<Bytes, ReadError> {
        let id = BlockId::new(inode.file_id, index);
        let r = self.block_ref(inode, path, index);
        let want = self.want(&r, inode, index, None);
        let workers = self.locator.workers();
        let ranked = workers.rank(id);
        let owner = ranked.first().copied();
        let mut last = String::from("no worker is known");
        let mut holders: Option<Vec<String>> = None;

        // 1. A worker on this node: map its block file. If it is also the owner,
        //    let it fill the block first: copied from a worker the master lists
        //    as holding it, else read through from the store. A worker that
        //    failed that fill (it is down, or the store failed it after its own
        //    retries) is not asked to read it through again below.
        let mut failed_fill: Option<&str> = None;
        if let Some(local) = workers.on_node(&self.node) {
            let fill = owner == Some(local.id.as_str());
            let mut peers = Vec::new();
            if fill {
                let listed = self.locator.holders(inode, index).await;
                peers = workers.addresses(&listed, &local.id);
                holders = Some(listed);
            }
            let source = ShortCircuit { worker: local, clients: &self.clients, fill, peers };
            match self.attempt(&source, &want, &mut last).await? {
                Tried::Got(b) => return Ok(b),
                Tried::Failed if fill => failed_fill = Some(local.id.as_str()),
                _ => {}
            }
        }
        // 2. Workers the master says hold it, then 3. workers by rendezvous rank.
        let mut order: Vec<String> = match holders {
            Some(h) => h,
            None => self.locator.holders(inode, index).await,
        };
        for w in ranked.iter().take(3) {
            if !order.iter().any(|o| o == w) {
                order.push(w.to_string());
            }
        }
        let ask = order.iter().map(String::as_str).filter(|w| Some(*w) != failed_fill);
        if let Some(b) = self.ask_workers(ask, &workers, &want, false, &mut last).await? {
            return Ok(b);
        }
        // 4. The store itself.
        match self.attempt(&self.stores, &want, &mut last).await? {
            Tried::Got(b) => Ok(b),
            _ => Err(self.all_failed(&want, last)),
        }
    }

    /// `len` bytes at `at` in block `index`, for a random read: from a block
    /// held here or by a worker, else that range alone from the store while
    /// the block's owner caches the block. A store this host cannot read (no
    /// credentials here) leaves the whole-block path.
    async fn range(
        self: &Arc<Self>,
        inode: &Inode,
        path: &str,
        index: u32,
        at: u64,
        len: u64,
    ) -> Result<Bytes, ReadError> {
        let id = BlockId::new(inode.file_id, index);
        if let Some(b) = self.held(id).await {
            return Ok(b.slice(at as usize..(at + len) as usize));
        }
        let r = self.block_ref(inode, path, index);
        let want = self.want(&r, inode, index, Some((at, len)));
        let workers = self.locator.workers();
        let mut last = String::new();
        let local = workers.on_node(&self.node);
        if let Some(local) = local {
            let source = ShortCircuit { worker: local, clients: &self.clients, fill: false, peers: Vec::new() };
            if let Tried::Got(b) = self.attempt(&source, &want, &mut last).await? {
                return Ok(b);
            }
        }
        let mut ask = self.locator.holders(inode, index).await;
        if let Some(owner) = workers.owner(id).filter(|o| !ask.contains(&o.id)) {
            ask.push(owner.id.clone());
        }
        let local_id = local.map(|l| l.id.as_str());
        let ask = ask.iter().map(String::as_str).filter(|w| Some(*w) != local_id).take(2);
        if let Some(b) = self.ask_workers(ask, &workers, &want, true, &mut last).await? {
            return Ok(b);
        }
        if let Tried::Got(b) = self.attempt(&self.stores, &want, &mut last).await? {
            if !workers.list.is_empty() && self.filling.lock().expect("filling lock").insert(id) {
                let (this, inode, path) = (self.clone(), inode.clone(), path.to_string());
                tokio::spawn(async move {
                    if let Err(e) = this.cache_on_owner(&inode, &path, index).await {
                        debug!(path, index, error = %e, "caching a randomly read block failed");
                    }
                    this.filling.lock().expect("filling lock").remove(&id);
                });
            }
            return Ok(b);
        }
        let block = self.block(inode, path, index).await?;
        Ok(block.slice(at as usize..(at + len) as usize))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streaming_blocks_stay_within_their_budget_newest_kept() {
        let mut s = Streaming { budget: 3 << 20, ..Default::default() };
        for i in 0..5u32 {
            s.put(BlockId::new(7, i), Bytes::from(vec![i as u8; 1 << 20]));
        }
        assert_eq!((s.blocks.len(), s.bytes), (3, 3 << 20));
        assert!(s.get(BlockId::new(7, 1)).is_none(), "the oldest blocks go first");
        assert_eq!(s.get(BlockId::new(7, 4)).unwrap()[0], 4);
        // A block already held is not held twice.
        s.put(BlockId::new(7, 4), Bytes::from(vec![9u8; 1 << 20]));
        assert_eq!((s.blocks.len(), s.get(BlockId::new(7, 4)).unwrap()[0]), (3, 4));
        // One block larger than the budget is still held (a stream needs it).
        s.put(BlockId::new(8, 0), Bytes::from(vec![1u8; 5 << 20]));
        assert_eq!(s.blocks.len(), 1);
    }
}

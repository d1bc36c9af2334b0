//! Block reads for the mount. For each block, in order: the co-located worker by
//! short-circuit (the worker names its block file; we map it and check its CRC),
//! a worker the master lists as holding it ([`crate::locator`]), the block's owner by rendezvous
//! hashing (which reads it through from the store and caches it), the next-ranked
//! workers, and finally the under-store itself. A cache outage slows reads; it
//! never fails them. Fetched blocks are kept in a bounded in-process cache, and
//! concurrent reads of one block share one fetch. Directory prefetch asks the
//! owning workers to cache a directory's small files ahead of the reads that a
//! data loader's shuffled epoch will make of them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use shoal_core::dataset::{Dataset, Stores};
use shoal_core::{ids, BlockId};
use shoal_proto::master::{DatasetInfo, Inode, WorkerInfo};
use shoal_proto::worker::{BlockRef, CacheBlockRequest, OpenLocalRequest, ReadBlockRequest};
use tonic::transport::Endpoint;

use crate::locator::Locator;
use tracing::{debug, warn};

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

/// Where blocks came from, for stats and tests.
#[derive(Debug, Default)]
pub struct SourceCounters {
    pub short_circuit: AtomicU64,
    pub worker: AtomicU64,
    pub store: AtomicU64,
    pub failures: AtomicU64,
}

#[derive(Debug, Clone)]
pub struct ReaderConfig {
    /// This machine's node name: a worker on the same node is read by short-circuit.
    pub node: String,
    /// Bytes of blocks kept in this process.
    pub cache_bytes: u64,
}

/// Small files a mount's directory prefetches have in flight at once.
pub const DIR_PREFETCH_PARALLEL: usize = 32;

pub struct Reader {
    dataset_id: u32,
    name: String,
    block_size: u64,
    locator: Locator,
    clients: Mutex<HashMap<String, shoal_proto::auth::Worker>>,
    /// The dataset's record (store options redacted) and its stores, opened
    /// on the first direct read and again when the mounts change.
    stores: Mutex<(DatasetInfo, Option<Arc<Stores>>)>,
    cache: moka::future::Cache<BlockId, Bytes>,
    node: String,
    /// Workers that could not be reached, and until when they are skipped (a
    /// lost host costs one connect timeout, not one per block).
    worker_down: Mutex<HashMap<String, Instant>>,
    prefetch_slots: tokio::sync::Semaphore,
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
        f.debug_struct("Reader").field("dataset", &self.name).finish()
    }
}

/// How long a worker that could not be reached is skipped.
const WORKER_DOWN_FOR: Duration = Duration::from_secs(3);

fn endpoint(addr: &str, timeout: Duration) -> Option<Endpoint> {
    shoal_proto::profile::Profile::DATA.with_timeout(timeout).endpoint(addr).ok()
}

impl Reader {
    pub fn new(dataset: DatasetInfo, master: shoal_proto::auth::Master, config: &ReaderConfig) -> Arc<Self> {
        let block_size = shoal_core::dataset::block_size(&dataset);
        let cache = moka::future::Cache::builder()
            .max_capacity(config.cache_bytes.max(block_size))
            .weigher(|_, b: &Bytes| b.len().min(u32::MAX as usize) as u32)
            .build();
        Arc::new(Self {
            dataset_id: dataset.id,
            name: dataset.spec.as_ref().map(|s| s.name.clone()).unwrap_or_default(),
            block_size,
            locator: Locator::new(dataset.spec.as_ref().map(|s| s.name.clone()).unwrap_or_default(), master),
            clients: Mutex::new(HashMap::new()),
            stores: Mutex::new((dataset, None)),
            cache,
            node: config.node.clone(),
            worker_down: Mutex::new(HashMap::new()),
            prefetch_slots: tokio::sync::Semaphore::new(DIR_PREFETCH_PARALLEL),
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
        let mut held = self.stores.lock().expect("stores lock");
        if info.id == self.dataset_id && info.spec_revision != held.0.spec_revision {
            *held = (info.clone(), None);
        }
    }

    /// The dataset's stores for direct reads, opened on first use.
    fn stores(&self) -> Result<Arc<Stores>, shoal_core::CoreError> {
        let mut held = self.stores.lock().expect("stores lock");
        if let Some(s) = &held.1 {
            return Ok(s.clone());
        }
        // Secrets are redacted for clients: the stores' credentials then come
        // from this host's environment (or they are public).
        let stores = Arc::new(Stores::open(Dataset::from_info(&held.0)?, true)?);
        held.1 = Some(stores.clone());
        Ok(stores)
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

    fn client(&self, addr: &str) -> Option<shoal_proto::auth::Worker> {
        let mut clients = self.clients.lock().expect("clients lock");
        if let Some(c) = clients.get(addr) {
            return Some(c.clone());
        }
        let ch = endpoint(addr, Duration::from_secs(60))?.connect_lazy();
        let c = shoal_proto::auth::worker(ch).max_decoding_message_size(shoal_proto::MAX_MESSAGE_BYTES);
        clients.insert(addr.to_string(), c.clone());
        Some(c)
    }

    fn block_ref(&self, inode: &Inode, path: &str, index: u32) -> BlockRef {
        shoal_core::dataset::block_ref(&self.name, self.dataset_id, self.block_size, path, inode, index)
    }

    /// Bytes `[offset, offset + size)` of a file, clipped to its end.
    pub async fn read(&self, inode: &Inode, path: &str, offset: u64, size: u64) -> Result<Bytes, ReadError> {
        let pieces: Vec<_> = ids::blocks_for_range(inode.size, self.block_size, offset, size).collect();
        if pieces.len() == 1 {
            let (index, at, len) = pieces[0];
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

    /// Ask each single-block file's owning worker to cache it, without moving
    /// the bytes here: reads that follow find them in the worker's tiers.
    /// [`DIR_PREFETCH_PARALLEL`] requests are in flight per mount.
    pub fn prefetch_files(self: &Arc<Self>, files: Vec<(Inode, String)>) {
        let this = self.clone();
        tokio::spawn(async move {
            futures::stream::iter(files)
                .for_each_concurrent(DIR_PREFETCH_PARALLEL, |(inode, path)| {
                    let this = this.clone();
                    async move {
                        let Ok(_slot) = this.prefetch_slots.acquire().await else { return };
                        if this.is_cached(&inode, 0) {
                            return;
                        }
                        let result = match this.cache_on_owner(&inode, &path, 0).await {
                            Ok(true) => "cached",
                            Ok(false) => "loaded",
                            Err(e) => {
                                debug!(path, error = %e, "directory prefetch failed");
                                "failed"
                            }
                        };
                        crate::metrics::DIR_PREFETCH.with_label_values(&[result]).inc();
                    }
                })
                .await;
        });
    }

    /// `CacheBlock` of a file's block on its owner; true if it was cached already.
    pub(crate) async fn cache_on_owner(&self, inode: &Inode, path: &str, index: u32) -> Result<bool, String> {
        let id = BlockId::new(inode.file_id, index);
        let workers = self.locator.workers();
        let w = workers.owner(id).ok_or("no worker is known")?;
        let mut c = self.client(&w.address).ok_or("bad worker address")?;
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

    async fn fetch(&self, inode: &Inode, path: &str, index: u32) -> Result<Bytes, ReadError> {
        let id = BlockId::new(inode.file_id, index);
        let (_, want) = ids::block_range(inode.size, self.block_size, index).unwrap_or((0, 0));
        let r = self.block_ref(inode, path, index);
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
            match self.short_circuit(local, &r, fill, want, peers).await {
                Ok(Some(b)) => {
                    self.counters.short_circuit.fetch_add(1, Ordering::Relaxed);
                    crate::metrics::BLOCK_SOURCE.with_label_values(&["short_circuit"]).inc();
                    return Ok(b);
                }
                Ok(None) => {}
                Err(e) => {
                    last = e;
                    if fill {
                        failed_fill = Some(local.id.as_str());
                    }
                }
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
        for wid in order.iter().filter(|w| Some(w.as_str()) != failed_fill) {
            let Some(w) = workers.get(wid) else { continue };
            if self.worker_down.lock().expect("down lock").get(wid.as_str()).is_some_and(|t| Instant::now() < *t) {
                continue;
            }
            match self.remote(w, &r, want).await {
                Ok(b) => {
                    self.counters.worker.fetch_add(1, Ordering::Relaxed);
                    crate::metrics::BLOCK_SOURCE.with_label_values(&["worker"]).inc();
                    return Ok(b);
                }
                Err(e) => {
                    warn!(worker = %w.id, path, index, error = %e, "worker read failed; trying the next source");
                    last = e;
                }
            }
        }
        // 4. The store itself.
        match self.direct(path, inode, index).await {
            Ok(b) => {
                self.counters.store.fetch_add(1, Ordering::Relaxed);
                crate::metrics::BLOCK_SOURCE.with_label_values(&["store"]).inc();
                Ok(b)
            }
            Err(e) => {
                self.counters.failures.fetch_add(1, Ordering::Relaxed);
                crate::metrics::BLOCK_SOURCE.with_label_values(&["failed"]).inc();
                Err(e.unwrap_or(ReadError::AllSourcesFailed { path: path.to_string(), index, last }))
            }
        }
    }

    async fn short_circuit(
        &self,
        w: &WorkerInfo,
        r: &BlockRef,
        fill: bool,
        want: u64,
        peers: Vec<String>,
    ) -> Result<Option<Bytes>, String> {
        let mut c = self.client(&w.address).ok_or("bad worker address")?;
        let resp = c
            .open_local(OpenLocalRequest { block: Some(r.clone()), fill, peers })
            .await
            .map_err(|s| format!("open_local on {}: {}", w.id, s.message()))?
            .into_inner();
        if !resp.found {
            return Ok(None);
        }
        if resp.length != want {
            return Err(format!("worker {} holds {} bytes for a {want}-byte block", w.id, resp.length));
        }
        let path = std::path::PathBuf::from(resp.path);
        let mapped =
            // Checked where the worker checks: SSD blocks. MEM blocks live in RAM
            // (tmpfs), and checking them would fault in every page of the block
            // for a read that wants 128 KiB of it.
            tokio::task::spawn_blocking(move || {
                let crc = (resp.tier != "mem").then_some(resp.crc32c);
                shoal_core::mapped::map_block(&path, resp.length, crc)
            })
                .await
                .map_err(|e| e.to_string())?;
        match mapped {
            Ok(b) => Ok(Some(b)),
            // Evicted in between, or corrupt: fall back to a copy over gRPC.
            Err(e) => Err(format!("short-circuit read: {e}")),
        }
    }

    async fn remote(&self, w: &WorkerInfo, r: &BlockRef, want: u64) -> Result<Bytes, String> {
        let mut c = self.client(&w.address).ok_or("bad worker address")?;
        let failed = |s: tonic::Status| {
            if matches!(s.code(), tonic::Code::Unavailable | tonic::Code::DeadlineExceeded) {
                self.worker_down.lock().expect("down lock").insert(w.id.clone(), Instant::now() + WORKER_DOWN_FOR);
            }
            format!("read_block on {}: {}", w.id, s.message())
        };
        let mut stream = c
            .read_block(ReadBlockRequest { block: Some(r.clone()), offset: 0, length: 0, cached_only: false })
            .await
            .map_err(failed)?
            .into_inner();
        let mut chunks = Vec::new();
        while let Some(chunk) = stream.message().await.map_err(failed)? {
            chunks.push(chunk.data);
        }
        let data = if chunks.len() == 1 {
            chunks.pop().expect("one chunk")
        } else {
            let mut b = BytesMut::with_capacity(want as usize);
            for c in chunks {
                b.extend_from_slice(&c);
            }
            b.freeze()
        };
        if data.len() as u64 != want {
            return Err(format!("worker {} sent {} bytes for a {want}-byte block", w.id, data.len()));
        }
        Ok(data)
    }

    async fn direct(&self, path: &str, inode: &Inode, index: u32) -> Result<Bytes, Option<ReadError>> {
        let stores = self.stores().map_err(|e| {
            warn!(error = %e, "cannot open the under-store for direct reads");
            None
        })?;
        let (offset, len) = ids::block_range(inode.size, self.block_size, index).unwrap_or((0, 0));
        stores.read(path, offset, len, shoal_core::dataset::version_of(inode)).await.map_err(|e| {
            if e.is_not_found() {
                Some(ReadError::NotFound(path.to_string()))
            } else if matches!(e, shoal_core::CoreError::Changed { .. } | shoal_core::CoreError::ShortRead { .. }) {
                Some(ReadError::Changed { path: path.to_string(), detail: e.to_string() })
            } else {
                Some(ReadError::AllSourcesFailed { path: path.to_string(), index, last: e.to_string() })
            }
        })
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

//! The worker's gRPC service: serves blocks from the tiered store, reads them
//! through on a miss (concurrent misses for one block share a single read), and
//! hands out block file paths for short-circuit reads. A miss is filled by a
//! copy from a peer worker that holds the block when the caller names one (and
//! the master lists it as a live worker), else from the under-store.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::Stream;
use shoal_core::BlockId;
use shoal_proto::worker::worker_server::Worker;
use shoal_proto::worker::*;
use tokio::sync::OnceCell;
use tonic::{Request, Response, Status};
use tracing::{instrument, warn};

use crate::block_store::{BlockStore, Cached};
use crate::datasets::{check_ref, CheckedRef, Datasets};
use crate::error::WorkerError;
use crate::metrics;
use crate::tier::TierKind;

/// Largest message of a block stream.
const CHUNK: usize = 1 << 20;

/// A block's bytes, and where it is cached if it could be.
#[derive(Clone)]
struct Fetched {
    cached: Option<Cached>,
    data: Bytes,
    /// Where this request's bytes came from: "mem", "ssd", "peer" or "store".
    source: &'static str,
}

type Flight = Arc<OnceCell<Result<Fetched, Status>>>;

#[derive(Debug, Default)]
pub struct Counters {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub store_reads: AtomicU64,
    pub store_bytes: AtomicU64,
    pub corrupt_dropped: AtomicU64,
    pub peer_reads: AtomicU64,
    pub peer_bytes: AtomicU64,
}

/// How long a copy of one block from a peer may take before the store is read.
const PEER_TIMEOUT: Duration = Duration::from_secs(60);
/// Peers tried for one block before the store.
const PEERS_TRIED: usize = 3;

pub struct State {
    pub id: String,
    pub store: Arc<BlockStore>,
    pub(crate) datasets: Arc<Datasets>,
    /// Store reads in flight, by block and the identity epoch their reference
    /// was verified under (a read of the old cluster is never shared with one
    /// of the new).
    inflight: Mutex<HashMap<(BlockId, u64), Flight>>,
    /// Bytes of store reads in flight, in [`FILL_UNIT`]s (bounds the memory fills use).
    fill_budget: tokio::sync::Semaphore,
    fill_units: u32,
    pub counters: Counters,
    /// Woken when a block is newly cached, so the master hears of it within
    /// [`crate::EARLY_REPORT_DELAY`] rather than a whole heartbeat interval.
    pub report_soon: Arc<tokio::sync::Notify>,
    /// The cluster and key block references are verified with.
    pub identity: Arc<crate::identity::Identity>,
    /// Addresses of the other live workers, as the master last said: a fill
    /// copies only from these (a caller cannot point it at any address).
    pub peers: Arc<RwLock<HashSet<String>>>,
    peer_clients: Mutex<HashMap<String, shoal_proto::auth::Worker>>,
    /// When the peer list was last asked of the master out of turn.
    /// Held while asking, so that fills arriving meanwhile wait for the answer.
    peers_asked: tokio::sync::Mutex<Option<std::time::Instant>>,
}

/// A block reference as it came on the wire (signed) and the peers named with it.
#[derive(Clone, Default)]
struct PeerHint {
    wire: Option<BlockRef>,
    peers: Vec<String>,
    /// Named by the master or another server (worker or all-namespace admin
    /// credential of a roles table): used as they are. Any other caller's are
    /// checked against the master's list of live workers.
    trusted: bool,
}

impl PeerHint {
    fn new<T>(req: &Request<T>, wire: Option<&BlockRef>, peers: &[String]) -> Self {
        if peers.is_empty() {
            return Self::default();
        }
        let who = shoal_proto::auth::principal(req);
        let trusted = !who.is_everything()
            && (who.has(shoal_proto::auth::Role::Worker)
                || (who.has(shoal_proto::auth::Role::Admin) && who.sees_all()));
        Self { wire: wire.cloned(), peers: peers.to_vec(), trusted }
    }
}

/// The worker's gRPC service; cheap to clone.
#[derive(Clone)]
pub struct WorkerService(pub Arc<State>);

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Status> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Status::internal(format!("blocking task failed: {e}")))
}

impl WorkerService {
    pub fn new(
        id: String,
        store: Arc<BlockStore>,
        datasets: Arc<Datasets>,
        fill_budget: u64,
        identity: Arc<crate::identity::Identity>,
    ) -> Self {
        let fill_units = (fill_budget / FILL_UNIT).clamp(1, u64::from(u32::MAX >> 4)) as u32;
        Self(Arc::new(State {
            id,
            store,
            datasets,
            inflight: Mutex::new(HashMap::new()),
            fill_budget: tokio::sync::Semaphore::new(fill_units as usize),
            fill_units,
            counters: Counters::default(),
            report_soon: Arc::new(tokio::sync::Notify::new()),
            identity,
            peers: Arc::default(),
            peer_clients: Mutex::default(),
            peers_asked: tokio::sync::Mutex::default(),
        }))
    }

    /// Ask the master for the live workers now (at most twice a second): a
    /// peer named before this worker's next heartbeat would tell of it.
    async fn refresh_peers(&self) {
        let mut asked = self.0.peers_asked.lock().await;
        if asked.is_some_and(|t| t.elapsed() < Duration::from_millis(500)) {
            return;
        }
        *asked = Some(std::time::Instant::now());
        let mut master = self.0.datasets.master();
        let req = shoal_proto::master::ListWorkersRequest {};
        if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(1), master.list_workers(req)).await {
            let live = r.into_inner().workers.into_iter().filter(|w| w.alive && w.id != self.0.id);
            *self.0.peers.write().expect("peers lock") = live.map(|w| w.address).collect();
        }
    }

    fn peer_client(&self, addr: &str) -> Option<shoal_proto::auth::Worker> {
        let mut clients = self.0.peer_clients.lock().expect("peer clients lock");
        if let Some(c) = clients.get(addr) {
            return Some(c.clone());
        }
        let ep = shoal_proto::profile::Profile::DATA.endpoint(addr).ok()?;
        let c = shoal_proto::auth::worker(ep.connect_lazy()).max_decoding_message_size(shoal_proto::MAX_MESSAGE_BYTES);
        clients.insert(addr.to_string(), c.clone());
        Some(c)
    }

    /// The block's bytes copied from a peer that holds it in a tier, or `None`
    /// (no known peer named, or none had it whole in time).
    async fn copy_from_peers(&self, r: &CheckedRef, hint: &PeerHint) -> Option<Bytes> {
        let wire = hint.wire.as_ref()?;
        let unknown = |hint: &PeerHint| {
            let peers = self.0.peers.read().expect("peers lock");
            !hint.trusted && hint.peers.iter().any(|p| !peers.contains(p))
        };
        if unknown(hint) {
            self.refresh_peers().await;
        }
        let known: Vec<String> = {
            let peers = self.0.peers.read().expect("peers lock");
            hint.peers.iter().filter(|p| hint.trusted || peers.contains(*p)).take(PEERS_TRIED).cloned().collect()
        };
        for addr in known {
            let Some(mut c) = self.peer_client(&addr) else { continue };
            let req = ReadBlockRequest { block: Some(wire.clone()), offset: 0, length: 0, cached_only: true };
            let copy = async {
                let mut s = c.read_block(req).await?.into_inner();
                let mut buf = BytesMut::with_capacity(r.len as usize);
                while let Some(chunk) = s.message().await? {
                    buf.extend_from_slice(&chunk.data);
                }
                Ok::<_, Status>(buf.freeze())
            };
            let outcome = match tokio::time::timeout(PEER_TIMEOUT, copy).await {
                Ok(Ok(b)) if b.len() as u64 == r.len => {
                    self.0.counters.peer_reads.fetch_add(1, Ordering::Relaxed);
                    self.0.counters.peer_bytes.fetch_add(b.len() as u64, Ordering::Relaxed);
                    metrics::PEER_READS.with_label_values(&["copied"]).inc();
                    metrics::PEER_READ_BYTES.inc_by(b.len() as u64);
                    return Some(b);
                }
                Ok(Ok(b)) => format!("the peer sent {} of the block's {} bytes", b.len(), r.len),
                Ok(Err(s)) if s.code() == tonic::Code::NotFound => {
                    metrics::PEER_READS.with_label_values(&["not_cached"]).inc();
                    continue;
                }
                Ok(Err(s)) => s.message().to_string(),
                Err(_) => format!("no copy within {PEER_TIMEOUT:?}"),
            };
            metrics::PEER_READS.with_label_values(&["failed"]).inc();
            warn!(block = %r.id, peer = %addr, error = %outcome, "copy from a peer failed; trying the next source");
        }
        None
    }

    /// A block reference from the wire, verified against the master's signature.
    fn check(&self, r: Option<&BlockRef>) -> Result<CheckedRef, WorkerError> {
        let (signer, epoch) = self.0.identity.signer().unzip();
        Ok(CheckedRef { epoch: epoch.unwrap_or(0), ..check_ref(r, signer.as_ref())? })
    }

    /// Bytes of a cached block, verified where it is trusted again (SSD tier).
    /// `None` if it is gone or corrupt (a corrupt file is dropped).
    async fn read_cached(&self, c: &Cached) -> Option<Bytes> {
        let file = c.file.clone();
        let verify = c.tier == TierKind::Ssd;
        let res =
            blocking(move || shoal_core::mapped::map_block(&file.path, file.len, verify.then_some(file.crc))).await;
        match res {
            Ok(Ok(b)) => Some(b),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => None,
            Ok(Err(e)) => {
                warn!(block = %c.file.id, error = %e, "dropping unreadable block file");
                self.0.counters.corrupt_dropped.fetch_add(1, Ordering::Relaxed);
                metrics::CORRUPT.inc();
                let store = self.0.store.clone();
                let id = c.file.id;
                let _ = blocking(move || store.remove(id)).await;
                None
            }
            Err(_) => None,
        }
    }

    /// The block's bytes: from the cache, or read through from the store once
    /// however many requests ask for it at the same time.
    /// A block from the tiers, or read through from the store once for all
    /// concurrent callers. `split`: see [`shoal_core::UnderStore::read_ranges`].
    async fn fetch(&self, r: &CheckedRef, split: bool, hint: PeerHint) -> Result<Fetched, Status> {
        let id = r.id;
        if let Some(c) = self.0.store.get(id) {
            if let Some(data) = self.read_cached(&c).await {
                self.0.counters.hits.fetch_add(1, Ordering::Relaxed);
                metrics::HITS.with_label_values(&[c.tier.as_str()]).inc();
                return Ok(Fetched { source: c.tier.as_str(), cached: Some(c), data });
            }
        }
        let key = (id, r.epoch);
        let cell = self.0.inflight.lock().expect("inflight lock").entry(key).or_default().clone();
        let result = cell.get_or_init(|| self.fill(r.clone(), split, hint)).await.clone();
        let mut inflight = self.0.inflight.lock().expect("inflight lock");
        if inflight.get(&key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            inflight.remove(&key);
        }
        result
    }

    async fn fill(&self, r: CheckedRef, split: bool, hint: PeerHint) -> Result<Fetched, Status> {
        // Another request may have filled it between our miss and our flight.
        let id = r.id;
        if let Some(c) = self.0.store.get(id) {
            if let Some(data) = self.read_cached(&c).await {
                return Ok(Fetched { source: c.tier.as_str(), cached: Some(c), data });
            }
        }
        // Wait for room in the fill budget; the block's bytes are held until cached.
        let units = r.len.div_ceil(FILL_UNIT).clamp(1, u64::from(self.0.fill_units)) as u32;
        let waited = std::time::Instant::now();
        let _room = self.0.fill_budget.acquire_many(units).await.map_err(|_| Status::unavailable("shutting down"))?;
        metrics::FILL_WAIT.observe(waited.elapsed().as_secs_f64());
        let (data, source) = match self.copy_from_peers(&r, &hint).await {
            Some(data) => (data, "peer"),
            None => (self.read_store(&r, split).await?, "store"),
        };
        let store = self.0.store.clone();
        let d = data.clone();
        let dataset = r.dataset_id;
        let (identity, epoch) = (self.0.identity.clone(), r.epoch);
        // Cached only under the cluster the reference was verified for.
        let cached = blocking(move || identity.during(epoch, || store.insert(id, dataset, &d)))
            .await?
            .transpose()
            .map_err(Status::from)?
            .flatten();
        if cached.is_none() {
            warn!(block = %id, "no tier has room; serving the block uncached");
        } else {
            self.0.report_soon.notify_one();
        }
        Ok(Fetched { cached, data, source })
    }

    async fn read_store(&self, r: &CheckedRef, split: bool) -> Result<Bytes, Status> {
        self.0.counters.misses.fetch_add(1, Ordering::Relaxed);
        metrics::MISSES.inc();
        #[cfg(feature = "failpoints")]
        blocking(|| fail::fail_point!("worker::before_store_read")).await?;
        let stores = self.0.datasets.stores(&r.dataset, r.dataset_id, r.epoch).await?;
        let (under, path) = stores.resolve(&r.path).map_err(WorkerError::from)?;
        let data =
            under.read_ranges(&path, r.offset, r.len, split, Some(r.version)).await.map_err(WorkerError::from)?;
        self.0.counters.store_reads.fetch_add(1, Ordering::Relaxed);
        self.0.counters.store_bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        metrics::STORE_READ_BYTES.inc_by(data.len() as u64);
        Ok(data)
    }
}

/// The fill budget's unit.
const FILL_UNIT: u64 = 64 << 10;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Worker for WorkerService {
    type ReadBlockStream = BoxStream<ReadBlockChunk>;

    #[instrument(skip_all, fields(dataset = %req.get_ref().block.as_ref().map(|b| b.dataset.as_str()).unwrap_or(""), block))]
    async fn read_block(&self, req: Request<ReadBlockRequest>) -> Result<Response<Self::ReadBlockStream>, Status> {
        let r = req.get_ref();
        let checked = self.check(r.block.as_ref())?;
        tracing::Span::current().record("block", tracing::field::display(checked.id));
        if r.offset > checked.len {
            return Err(Status::out_of_range(format!("offset {} is past the block's {} bytes", r.offset, checked.len)));
        }
        let end = match r.length {
            0 => checked.len,
            n => (r.offset + n).min(checked.len),
        };
        let _timer = metrics::REQUEST_SECONDS.with_label_values(&["read_block"]).start_timer();
        let fetched = if r.cached_only {
            let cached = self.0.store.get(checked.id);
            let data = match &cached {
                Some(c) => self.read_cached(c).await,
                None => None,
            };
            let (Some(c), Some(data)) = (cached, data) else {
                return Err(Status::not_found(format!("block {} is not cached here", checked.id)));
            };
            self.0.counters.hits.fetch_add(1, Ordering::Relaxed);
            metrics::HITS.with_label_values(&[c.tier.as_str()]).inc();
            Fetched { source: c.tier.as_str(), cached: Some(c), data }
        } else {
            self.fetch(&checked, true, PeerHint::default()).await?
        };
        let data = fetched.data.slice(r.offset as usize..end as usize);
        metrics::SERVED_BYTES.with_label_values(&[fetched.source]).inc_by(data.len() as u64);
        let chunks: Vec<Result<ReadBlockChunk, Status>> = (0..data.len())
            .step_by(CHUNK)
            .map(|at| Ok(ReadBlockChunk { data: data.slice(at..(at + CHUNK).min(data.len())) }))
            .collect();
        Ok(Response::new(Box::pin(futures::stream::iter(chunks))))
    }

    #[instrument(skip_all, fields(dataset = %req.get_ref().block.as_ref().map(|b| b.dataset.as_str()).unwrap_or("")))]
    async fn open_local(&self, req: Request<OpenLocalRequest>) -> Result<Response<OpenLocalResponse>, Status> {
        let r = req.get_ref();
        let checked = self.check(r.block.as_ref())?;
        let _timer = metrics::REQUEST_SECONDS.with_label_values(&["open_local"]).start_timer();
        let mut cached = self.0.store.get(checked.id);
        if cached.is_none() && r.fill {
            cached = self.fetch(&checked, true, PeerHint::new(&req, r.block.as_ref(), &r.peers)).await?.cached;
        }
        Ok(Response::new(match cached {
            Some(c) => {
                self.0.counters.hits.fetch_add(1, Ordering::Relaxed);
                OpenLocalResponse {
                    found: true,
                    path: c.file.path.to_string_lossy().into_owned(),
                    length: c.file.len,
                    crc32c: c.file.crc,
                    tier: c.tier.as_str().into(),
                }
            }
            None => OpenLocalResponse::default(),
        }))
    }

    #[instrument(skip_all, fields(dataset = %req.get_ref().block.as_ref().map(|b| b.dataset.as_str()).unwrap_or("")))]
    async fn cache_block(&self, req: Request<CacheBlockRequest>) -> Result<Response<CacheBlockResponse>, Status> {
        let r = req.get_ref();
        let checked = self.check(r.block.as_ref())?;
        let _timer = metrics::REQUEST_SECONDS.with_label_values(&["cache_block"]).start_timer();
        if let Some(c) = self.0.store.get(checked.id) {
            return Ok(Response::new(CacheBlockResponse {
                already_cached: true,
                length: c.file.len,
                tier: c.tier.as_str().into(),
            }));
        }
        // Prewarm and directory prefetch keep many blocks in flight: one request
        // per block is enough to fill the link, and cheaper than four.
        let f = self.fetch(&checked, false, PeerHint::new(&req, r.block.as_ref(), &r.peers)).await?;
        let c = f.cached.ok_or_else(|| Status::resource_exhausted("no cache tier has room for the block"))?;
        Ok(Response::new(CacheBlockResponse {
            already_cached: false,
            length: c.file.len,
            tier: c.tier.as_str().into(),
        }))
    }

    #[instrument(skip_all, fields(blocks = req.get_ref().blocks.len()))]
    async fn free_blocks(&self, req: Request<FreeBlocksRequest>) -> Result<Response<FreeBlocksResponse>, Status> {
        // The master (worker or admin credential); a namespace's admin could
        // evict every tenant's blocks, so only an admin of every namespace.
        let who = shoal_proto::auth::principal(&req);
        if !who.has(shoal_proto::auth::Role::Worker) {
            who.require(shoal_proto::auth::Role::Admin, "FreeBlocks")?;
            if !who.sees_all() {
                return Err(Status::permission_denied("FreeBlocks needs an admin credential of every namespace"));
            }
        }
        let ids: Vec<BlockId> = req.into_inner().blocks.iter().map(|b| BlockId::new(b.file_id, b.index)).collect();
        let store = self.0.store.clone();
        let (n, bytes) = blocking(move || {
            ids.iter().filter_map(|id| store.remove(*id)).fold((0u64, 0u64), |(n, b), len| (n + 1, b + len))
        })
        .await?;
        Ok(Response::new(FreeBlocksResponse { blocks_freed: n, bytes_freed: bytes }))
    }

    #[instrument(skip_all)]
    async fn stats(&self, _req: Request<StatsRequest>) -> Result<Response<StatsResponse>, Status> {
        let s = &self.0;
        let c = &s.counters;
        let store = s.store.clone();
        let tiers = blocking(move || {
            store.settle();
            store
                .tier_stats()
                .into_iter()
                .map(|(kind, dir, quota, used, blocks, hits)| TierStats {
                    kind: kind.as_str().into(),
                    dir: dir.to_string_lossy().into_owned(),
                    quota_bytes: quota,
                    used_bytes: used,
                    blocks,
                    hits,
                })
                .collect()
        })
        .await?;
        let sc = s.store.counters();
        Ok(Response::new(StatsResponse {
            worker_id: s.id.clone(),
            tiers,
            hits: c.hits.load(Ordering::Relaxed),
            misses: c.misses.load(Ordering::Relaxed),
            store_reads: c.store_reads.load(Ordering::Relaxed),
            store_bytes: c.store_bytes.load(Ordering::Relaxed),
            evictions: sc.evictions.load(Ordering::Relaxed),
            demotions: sc.demotions.load(Ordering::Relaxed),
            corrupt_dropped: c.corrupt_dropped.load(Ordering::Relaxed),
            pinned_blocks: s.store.pinned_count() as u64,
            peer_reads: c.peer_reads.load(Ordering::Relaxed),
            peer_bytes: c.peer_bytes.load(Ordering::Relaxed),
        }))
    }
}

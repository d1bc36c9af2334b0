//! The master's gRPC service: checks each request's credential and input, and
//! hands it to the part that owns it: dataset records ([`datasets`]), namespace
//! syncs ([`sync`]), the metadata store, membership and load jobs. Errors map
//! to status codes once (in `error.rs`). Every handler runs in a `tracing`
//! span naming its dataset.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use rocksdb::WriteBatch;
use shoal_core::dataset::Stores;
use shoal_proto::auth::{principal, Principal, Role};
use shoal_proto::master::master_server::Master;
use shoal_proto::master::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::{info, instrument, warn};

use crate::error::{MasterError, Result};
use crate::load::{self, Loads};
use crate::membership::Membership;
use crate::meta::MetaStore;
use crate::namespace;

mod datasets;
mod sync;

use sync::free_on_workers;

const READDIR_DEFAULT_LIMIT: usize = 4096;
const READDIR_MAX_LIMIT: usize = 65536;
const NAMESPACE_CHUNK: usize = 8192;
/// Most copies of a block a dataset may ask for.
const MAX_REPLICAS: u32 = 16;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Shared state behind the gRPC handlers.
pub struct State {
    pub(crate) meta: Arc<MetaStore>,
    pub(crate) members: Arc<Membership>,
    heartbeat_interval_ms: u64,
    /// See [`crate::MasterConfig::stale_block_grace`].
    stale_block_grace: Duration,
    /// Serialises dataset creation and deletion.
    create_lock: tokio::sync::Mutex<()>,
    syncing: Mutex<std::collections::HashSet<String>>,
    /// Opened stores by dataset id, with the spec revision they were opened at.
    stores: Mutex<HashMap<u32, (u64, Arc<Stores>)>>,
    pub(crate) loads: Arc<Loads>,
    /// Clients of the workers, shared with load jobs and the rebalancer.
    pool: Arc<crate::pool::WorkerPool>,
    pub(crate) rebalancer: Arc<crate::rebalance::Rebalancer>,
    /// Woken when a worker joins: the blocks it now owns are copied to it.
    pub(crate) joined: Arc<tokio::sync::Notify>,
    /// When each mount's (dataset, mount path) periodic sync was last tried
    /// (failures wait a period).
    sync_attempts: Mutex<HashMap<(String, String), i64>>,
    /// See [`crate::MasterConfig::local_roots`].
    local_roots: Vec<std::path::PathBuf>,
    /// The master's own state (never served as a dataset: it holds the block key).
    data_dir: std::path::PathBuf,
}

/// A dataset record as clients see it: store options with secrets redacted.
pub fn redacted(mut info: DatasetInfo) -> DatasetInfo {
    let redact = |m: &mut MountSpec| {
        let options: BTreeMap<_, _> = std::mem::take(&mut m.options).into_iter().collect();
        m.options = shoal_core::uri::redact(&options).into_iter().collect();
    };
    if let Some(spec) = info.spec.as_mut() {
        spec.mount.iter_mut().chain(spec.mounts.iter_mut()).for_each(redact);
    }
    info
}

impl State {
    fn new(meta: Arc<MetaStore>, members: Arc<Membership>, config: &crate::MasterConfig) -> Self {
        let heartbeat_interval_ms = config.heartbeat_interval.as_millis() as u64;
        let pool = Arc::new(crate::pool::WorkerPool::default());
        Self {
            rebalancer: crate::rebalance::Rebalancer::new(
                meta.clone(),
                members.clone(),
                pool.clone(),
                config.heartbeat_interval,
            ),
            joined: Arc::default(),
            heartbeat_interval_ms,
            stale_block_grace: config.stale_block_grace,
            create_lock: tokio::sync::Mutex::new(()),
            syncing: Mutex::new(Default::default()),
            stores: Mutex::new(HashMap::new()),
            loads: Loads::new(meta.clone(), members.clone(), pool.clone(), config.heartbeat_interval),
            pool,
            sync_attempts: Mutex::new(HashMap::new()),
            local_roots: config.local_roots.clone(),
            data_dir: std::fs::canonicalize(&config.data_dir).unwrap_or_else(|_| config.data_dir.clone()),
            meta,
            members,
        }
    }

    fn dataset(&self, name: &str) -> Result<DatasetInfo> {
        self.meta.get_dataset(name)?.ok_or_else(|| MasterError::DatasetNotFound(name.to_string()))
    }

    /// Dataset `name`, if `who` may see its namespace.
    fn dataset_for(&self, who: &Principal, name: &str) -> std::result::Result<DatasetInfo, Status> {
        let info = self.dataset(name)?;
        who.require_namespace(info.namespace(), &format!("dataset {name:?}"))?;
        Ok(info)
    }

    fn inode(&self, info: &DatasetInfo, ino: u64) -> Result<Inode> {
        self.meta.get_inode(info.id, ino)?.ok_or_else(|| MasterError::EntryNotFound {
            dataset: info.spec.as_ref().map(|s| s.name.clone()).unwrap_or_default(),
            what: format!("inode {ino}"),
        })
    }
}

/// The master's gRPC service; cheap to clone (one shared [`State`]).
#[derive(Clone)]
pub struct MasterService(Arc<State>);

impl std::ops::Deref for MasterService {
    type Target = State;
    fn deref(&self) -> &State {
        &self.0
    }
}

impl MasterService {
    /// The service over `meta`; it serves once [`MasterService::lead`] ran.
    pub fn new(meta: Arc<MetaStore>, members: Arc<Membership>, config: &crate::MasterConfig) -> Self {
        Self(Arc::new(State::new(meta, members, config)))
    }

    /// This master now leads, with the whole committed state applied: make
    /// the cluster's identity if it has none, resume the load jobs that were
    /// running, and sign what was synced before files were signed.
    pub async fn lead(&self) -> Result<()> {
        self.meta.ensure_identity().await?;
        let meta = self.meta.clone();
        self.loads.resume(move |name| meta.get_dataset(name).ok().flatten());
        if !self.meta.all_signed().unwrap_or(false) {
            tokio::spawn(self.clone().sign_unsigned());
        }
        Ok(())
    }

    /// This master no longer leads: its running jobs stop (the new leader
    /// resumes them) and the workers' reports it held go stale.
    pub fn step_down(&self) {
        self.loads.step_down();
        self.members.forget_all();
    }

    /// Sign the files of namespaces synced before files were signed (once, in
    /// the background: until then workers refuse their references and mounts
    /// read those files from the store). A dataset being synced is left to its
    /// sync, which signs what it finds unsigned.
    async fn sign_unsigned(self) {
        let Ok(datasets) = self.meta.list_datasets() else { return };
        let mut all = true;
        for info in datasets {
            let name = info.spec.as_ref().map(|s| s.name.clone()).unwrap_or_default();
            if self.claim_sync(&name).is_err() {
                all = false;
                continue;
            }
            // The walk reads the whole namespace: off the runtime's threads.
            let (meta, rt) = (self.meta.clone(), tokio::runtime::Handle::current());
            let signed = tokio::task::spawn_blocking(move || rt.block_on(namespace::sign_unsigned(&meta, &info)))
                .await
                .unwrap_or_else(|e| Err(MasterError::Replication(format!("signing task failed: {e}"))));
            self.syncing.lock().expect("sync lock").remove(&name);
            match signed {
                Ok(0) => {}
                Ok(n) => {
                    info!(dataset = %name, files = n, "signed the files of a namespace synced before signatures")
                }
                Err(e) => {
                    all = false;
                    warn!(dataset = %name, error = %e, "cannot sign the files of a namespace");
                }
            }
        }
        if all {
            if let Err(e) = self.meta.mark_all_signed().await {
                warn!(error = %e, "cannot record that every namespace is signed");
            }
        }
    }

    /// The reported blocks this master issued: a live dataset's, under a file id
    /// it handed out. Others are dropped from the report (and logged).
    /// The reported blocks this master issued (a live dataset's, under a file
    /// id it handed out), and the others, which the worker is told to delete.
    fn issued(&self, worker: &str, blocks: Vec<BlockKey>) -> (Vec<BlockKey>, Vec<BlockKey>) {
        if blocks.is_empty() {
            return (blocks, Vec::new());
        }
        let datasets: std::collections::HashSet<u32> =
            self.meta.list_datasets().unwrap_or_default().iter().map(|d| d.id).collect();
        let (kept, refused): (Vec<BlockKey>, Vec<BlockKey>) =
            blocks.into_iter().partition(|b| datasets.contains(&b.dataset_id) && self.meta.issued(b.file_id));
        if !refused.is_empty() {
            warn!(worker = %worker, refused = refused.len(), "a worker reported blocks this master never issued; it deletes them");
        }
        (kept, refused)
    }

    /// Load job `id`, if `who` may see its dataset's namespace.
    fn load_for(&self, who: &Principal, id: &str) -> std::result::Result<LoadJob, Status> {
        let job = self.loads.get(id)?;
        if !self.load_visible(who, &job) {
            return Err(Status::permission_denied(format!("load job {id} is of a dataset this credential cannot see")));
        }
        Ok(job)
    }

    fn load_visible(&self, who: &Principal, job: &LoadJob) -> bool {
        let ds = job.spec.as_ref().map(|s| s.dataset.as_str()).unwrap_or_default();
        match self.meta.get_dataset(ds) {
            Ok(Some(info)) => who.sees(info.namespace()),
            // A job of a deleted dataset: only for credentials of every namespace.
            _ => who.sees_all(),
        }
    }

    /// Every dataset's cache policy, and the specs (with store credentials)
    /// of those a worker holding the spec revisions `held` (`None`: nothing)
    /// lacks or holds at another revision.
    fn for_worker(&self, held: Option<&HashMap<u32, u64>>) -> (Vec<DatasetPolicy>, Vec<DatasetInfo>) {
        let datasets = self.meta.list_datasets().unwrap_or_default();
        let policies = datasets
            .iter()
            .map(|d| {
                let c = shoal_core::dataset::CachePolicy::of(d.spec.as_ref());
                DatasetPolicy {
                    dataset_id: d.id,
                    pinned: c.pinned,
                    ttl_seconds: c.ttl.map(|t| t.as_secs()).unwrap_or(0),
                }
            })
            .collect();
        let specs =
            datasets.into_iter().filter(|d| held.and_then(|h| h.get(&d.id)) != Some(&d.spec_revision)).collect();
        (policies, specs)
    }

    /// Bytes freed from the workers holding blocks of the selected files.
    async fn free_cache(&self, req: FreeCacheRequest) -> Result<FreeCacheResponse> {
        let info = self.dataset(&req.dataset)?;
        let paths = if req.path.is_empty() { vec![] } else { vec![req.path.clone()] };
        let blocks = self.blocks_under(&info, &paths)?;
        Ok(free_on_workers(&self.members, &self.pool, blocks).await)
    }

    /// Every block of the files under `paths` (the whole dataset if none).
    fn blocks_under(&self, info: &DatasetInfo, paths: &[String]) -> Result<Vec<shoal_core::BlockId>> {
        let bs = shoal_core::dataset::block_size(info);
        let files = load::select_files(&self.meta, info, paths, "")?;
        Ok(files
            .iter()
            .flat_map(|f| {
                (0..shoal_core::ids::block_count(f.inode.size, bs) as u32)
                    .map(|index| shoal_core::BlockId::new(f.inode.file_id, index))
            })
            .collect())
    }

    fn cache_usage(&self, dataset: &str) -> Result<CacheUsage> {
        let info = self.dataset(dataset)?;
        let held = self.members.usage(info.id);
        let nodes: HashMap<String, String> = self.members.workers().into_iter().map(|w| (w.id, w.node)).collect();
        Ok(CacheUsage {
            dataset: dataset.to_string(),
            total_bytes: info.total_bytes,
            total_blocks: info.total_blocks,
            cached_bytes: held.distinct.bytes,
            cached_blocks: held.distinct.blocks,
            workers: held
                .by_worker
                .into_iter()
                .map(|(w, h)| NodeCache {
                    node: nodes.get(&w).cloned().unwrap_or_default(),
                    worker_id: w,
                    cached_bytes: h.bytes,
                    cached_blocks: h.blocks,
                })
                .collect(),
        })
    }
}

#[tonic::async_trait]
impl Master for MasterService {
    #[instrument(skip_all, fields(dataset = %req.get_ref().spec.as_ref().map(|s| s.name.as_str()).unwrap_or("")))]
    async fn create_dataset(&self, req: Request<CreateDatasetRequest>) -> Result<Response<DatasetInfo>, Status> {
        let who = principal(&req);
        who.require(Role::Admin, "CreateDataset")?;
        let r = req.into_inner();
        let ns = r.spec.as_ref().map(|s| s.namespace.as_str()).filter(|n| !n.is_empty()).unwrap_or("default");
        who.require_namespace(ns, "the new dataset")?;
        Ok(Response::new(redacted(self.create(r).await?)))
    }

    #[instrument(skip_all, fields(dataset = %req.get_ref().name))]
    async fn get_dataset(&self, req: Request<GetDatasetRequest>) -> Result<Response<DatasetInfo>, Status> {
        let who = principal(&req);
        who.require(Role::Client, "GetDataset")?;
        Ok(Response::new(redacted(self.dataset_for(&who, &req.get_ref().name)?)))
    }

    #[instrument(skip_all, fields(dataset = %req.get_ref().name))]
    async fn get_store_spec(&self, req: Request<GetDatasetRequest>) -> Result<Response<DatasetInfo>, Status> {
        principal(&req).require(Role::Worker, "GetStoreSpec (store credentials)")?;
        Ok(Response::new(self.dataset(&req.get_ref().name)?))
    }

    #[instrument(skip_all)]
    async fn list_datasets(&self, req: Request<ListDatasetsRequest>) -> Result<Response<ListDatasetsResponse>, Status> {
        let who = principal(&req);
        who.require(Role::Client, "ListDatasets")?;
        let datasets =
            self.meta.list_datasets()?.into_iter().filter(|d| who.sees(d.namespace())).map(redacted).collect();
        Ok(Response::new(ListDatasetsResponse { datasets }))
    }

    #[instrument(skip_all, fields(dataset = %req.get_ref().name))]
    async fn delete_dataset(
        &self,
        req: Request<DeleteDatasetRequest>,
    ) -> Result<Response<DeleteDatasetResponse>, Status> {
        let who = principal(&req);
        who.require(Role::Admin, "DeleteDataset")?;
        let name = &req.get_ref().name;
        let _guard = self.create_lock.lock().await;
        let info = self.dataset_for(&who, name)?;
        if self.syncing.lock().expect("sync lock").contains(name) {
            return Err(MasterError::SyncRunning(name.clone()).into());
        }
        // Its blocks, listed before the namespace goes, are dropped from the
        // workers after: a failed delete frees nothing.
        let blocks = self.blocks_under(&info, &[])?;
        self.meta.delete_dataset(&info).await.map_err(Status::from)?;
        self.stores.lock().expect("stores lock").remove(&info.id);
        let freed = free_on_workers(&self.members, &self.pool, blocks).await;
        info!(dataset = %name, blocks_freed = freed.blocks_freed, "dataset deleted");
        Ok(Response::new(DeleteDatasetResponse { blocks_freed: freed.blocks_freed, bytes_freed: freed.bytes_freed }))
    }

    #[instrument(skip_all, fields(dataset = %req.get_ref().name))]
    async fn set_cache_policy(&self, req: Request<SetCachePolicyRequest>) -> Result<Response<DatasetInfo>, Status> {
        let who = principal(&req);
        who.require(Role::Admin, "SetCachePolicy")?;
        let r = req.into_inner();
        if let Some(n) = r.replicas.filter(|n| !(1..=MAX_REPLICAS).contains(n)) {
            return Err(Status::invalid_argument(format!("replicas must be 1 to {MAX_REPLICAS}, not {n}")));
        }
        let _guard = self.create_lock.lock().await;
        let _record = self.meta.record_lock.lock().await;
        let mut info = self.dataset_for(&who, &r.name)?;
        let spec = info.spec.get_or_insert_with(Default::default);
        let cache = spec.cache.get_or_insert_with(Default::default);
        if let Some(p) = r.pinned {
            cache.pinned = p;
        }
        if let Some(t) = r.ttl_seconds {
            cache.ttl_seconds = t;
        }
        if let Some(n) = r.replicas {
            cache.replicas = n;
        }
        let mut batch = WriteBatch::default();
        self.meta.put_dataset(&mut batch, &info);
        self.meta.write(batch).await.map_err(Status::from)?;
        info!(dataset = %r.name, pinned = ?r.pinned, ttl = ?r.ttl_seconds, replicas = ?r.replicas, "cache policy changed");
        Ok(Response::new(redacted(info)))
    }

    #[instrument(skip_all, fields(dataset = %req.get_ref().name))]
    async fn update_dataset(&self, req: Request<UpdateDatasetRequest>) -> Result<Response<DatasetInfo>, Status> {
        let who = principal(&req);
        who.require(Role::Admin, "UpdateDataset")?;
        self.dataset_for(&who, &req.get_ref().name)?;
        let info = self.0.update(req.into_inner()).await?;
        Ok(Response::new(redacted(info)))
    }

    type SyncDatasetStream = BoxStream<SyncProgress>;

    #[instrument(skip_all, fields(dataset = %req.get_ref().name))]
    async fn sync_dataset(
        &self,
        req: Request<SyncDatasetRequest>,
    ) -> Result<Response<Self::SyncDatasetStream>, Status> {
        let who = principal(&req);
        who.require(Role::Admin, "SyncDataset")?;
        let info = self.dataset_for(&who, &req.get_ref().name)?;
        let only = Some(req.get_ref().mounts.clone()).filter(|m| !m.is_empty());
        let (tx, rx) = mpsc::channel(16);
        let this = self.clone();
        tokio::spawn(async move {
            let progress_tx = tx.clone();
            let result = this
                .run_sync(info, only, move |p| {
                    // A slow or gone client never stalls the sync.
                    let p = SyncProgress { dataset: p.dataset.clone().map(redacted), ..p.clone() };
                    let _ = progress_tx.try_send(Ok(p));
                })
                .await;
            if let Err(e) = result {
                warn!(error = %e, "sync failed");
                let _ = tx.send(Err(Status::from(e))).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    #[instrument(skip_all, fields(dataset = %req.get_ref().dataset, parent = req.get_ref().parent))]
    async fn lookup(&self, req: Request<LookupRequest>) -> Result<Response<Inode>, Status> {
        let who = principal(&req);
        who.require(Role::Client, "Lookup")?;
        let r = req.get_ref();
        let info = self.dataset_for(&who, &r.dataset)?;
        let found = self.meta.lookup(info.id, r.parent, &r.name).map_err(Status::from)?;
        let inode = found.ok_or_else(|| MasterError::EntryNotFound {
            dataset: r.dataset.clone(),
            what: format!("{:?} in directory {}", r.name, r.parent),
        })?;
        Ok(Response::new(inode))
    }

    #[instrument(skip_all, fields(dataset = %req.get_ref().dataset, ino = req.get_ref().ino))]
    async fn get_attr(&self, req: Request<GetAttrRequest>) -> Result<Response<Inode>, Status> {
        let who = principal(&req);
        who.require(Role::Client, "GetAttr")?;
        let info = self.dataset_for(&who, &req.get_ref().dataset)?;
        Ok(Response::new(self.inode(&info, req.get_ref().ino)?))
    }

    #[instrument(skip_all, fields(dataset = %req.get_ref().dataset, path = %req.get_ref().path))]
    async fn resolve_path(&self, req: Request<ResolvePathRequest>) -> Result<Response<Inode>, Status> {
        let who = principal(&req);
        who.require(Role::Client, "ResolvePath")?;
        let r = req.get_ref();
        let info = self.dataset_for(&who, &r.dataset)?;
        let found = self.meta.resolve(info.id, &r.path).map_err(Status::from)?;
        let inode = found.ok_or_else(|| MasterError::EntryNotFound {
            dataset: r.dataset.clone(),
            what: format!("path {:?}", r.path),
        })?;
        Ok(Response::new(inode))
    }

    #[instrument(skip_all, fields(dataset = %req.get_ref().dataset, ino = req.get_ref().ino))]
    async fn read_dir(&self, req: Request<ReadDirRequest>) -> Result<Response<ReadDirResponse>, Status> {
        let who = principal(&req);
        who.require(Role::Client, "ReadDir")?;
        let r = req.get_ref();
        let info = self.dataset_for(&who, &r.dataset)?;
        let limit = match r.limit as usize {
            0 => READDIR_DEFAULT_LIMIT,
            n => n.min(READDIR_MAX_LIMIT),
        };
        let (entries, more) = self.meta.read_dir(info.id, r.ino, &r.start_after, limit).map_err(Status::from)?;
        if entries.is_empty() && r.start_after.is_empty() {
            // Distinguish an empty directory from a missing or non-directory inode.
            let dir = self.inode(&info, r.ino)?;
            if dir.kind != FileKind::Directory as i32 {
                return Err(Status::failed_precondition(format!("inode {} is not a directory", r.ino)));
            }
        }
        Ok(Response::new(ReadDirResponse { entries, more }))
    }

    type ListNamespaceStream = BoxStream<NamespaceChunk>;

    #[instrument(skip_all, fields(dataset = %req.get_ref().dataset))]
    async fn list_namespace(
        &self,
        req: Request<ListNamespaceRequest>,
    ) -> Result<Response<Self::ListNamespaceStream>, Status> {
        let who = principal(&req);
        who.require(Role::Client, "ListNamespace")?;
        let info = self.dataset_for(&who, &req.get_ref().dataset)?;
        let (tx, rx) = mpsc::channel(4);
        let meta = self.meta.clone();
        tokio::task::spawn_blocking(move || {
            let mut chunk = Vec::with_capacity(NAMESPACE_CHUNK);
            let mut first = Some(redacted(info.clone()));
            let res = meta.scan_inodes(info.id, |inode| {
                chunk.push(inode);
                if chunk.len() == NAMESPACE_CHUNK {
                    let msg = NamespaceChunk { entries: std::mem::take(&mut chunk), dataset: first.take() };
                    // The client went away: stop scanning.
                    tx.blocking_send(Ok(msg)).map_err(|_| MasterError::InvalidArgument("client gone".into()))?;
                }
                Ok(())
            });
            match res {
                Ok(()) => {
                    let _ = tx.blocking_send(Ok(NamespaceChunk { entries: chunk, dataset: first.take() }));
                }
                Err(MasterError::InvalidArgument(_)) => {}
                Err(e) => {
                    let _ = tx.blocking_send(Err(Status::from(e)));
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    #[instrument(skip_all, fields(dataset = %req.get_ref().dataset, ino = req.get_ref().ino))]
    async fn get_block_locations(
        &self,
        req: Request<BlockLocationsRequest>,
    ) -> Result<Response<BlockLocationsResponse>, Status> {
        let who = principal(&req);
        who.require(Role::Client, "GetBlockLocations")?;
        let r = req.get_ref();
        let info = self.dataset_for(&who, &r.dataset)?;
        let inode = self.inode(&info, r.ino)?;
        if inode.kind != FileKind::File as i32 {
            return Err(Status::failed_precondition(format!("inode {} is not a file", r.ino)));
        }
        let block_size = shoal_core::dataset::block_size(&info);
        let blocks = self.members.file_locations(inode.file_id);
        Ok(Response::new(BlockLocationsResponse {
            inode: Some(inode),
            block_size,
            blocks,
            workers: self.members.live_workers(),
        }))
    }

    #[instrument(skip_all, fields(worker = %req.get_ref().worker.as_ref().map(|w| w.id.as_str()).unwrap_or("")))]
    async fn register_worker(
        &self,
        req: Request<RegisterWorkerRequest>,
    ) -> Result<Response<RegisterWorkerResponse>, Status> {
        principal(&req).require(Role::Worker, "RegisterWorker")?;
        let r = req.into_inner();
        let worker = r.worker.ok_or_else(|| Status::invalid_argument("missing worker info"))?;
        if worker.id.is_empty() || worker.address.is_empty() {
            return Err(Status::invalid_argument("worker id and address are required"));
        }
        if worker.address.parse::<std::net::SocketAddr>().is_err() && !worker.address.contains(':') {
            return Err(Status::invalid_argument(format!("worker address {:?} is not host:port", worker.address)));
        }
        let ours = self.meta.identity().map_err(Status::from)?;
        let (blocks, drop) = if r.cluster_id == ours.cluster_id {
            self.issued(&worker.id, r.blocks)
        } else {
            if !r.blocks.is_empty() {
                warn!(worker = %worker.id, blocks = r.blocks.len(), theirs = %r.cluster_id, ours = %ours.cluster_id,
                    "a worker reported blocks of another cluster; they are ignored and the worker drops them");
            }
            (Vec::new(), Vec::new())
        };
        let id = worker.id.clone();
        if self.members.register(worker, &blocks) {
            self.joined.notify_one();
        }
        let (policies, specs) = self.for_worker(None);
        Ok(Response::new(RegisterWorkerResponse {
            heartbeat_interval_ms: self.heartbeat_interval_ms,
            policies,
            specs,
            cluster_id: ours.cluster_id.clone(),
            block_key: ours.block_key().to_vec(),
            drop,
            peers: self.members.peer_addresses(&id),
        }))
    }

    #[instrument(skip_all, fields(worker = %req.get_ref().worker_id))]
    async fn heartbeat(&self, req: Request<HeartbeatRequest>) -> Result<Response<HeartbeatResponse>, Status> {
        principal(&req).require(Role::Worker, "Heartbeat")?;
        let r = req.into_inner();
        let (added, drop) = self.issued(&r.worker_id, r.added);
        let known = self.members.heartbeat(&r.worker_id, &added, &r.removed, r.tiers);
        let (policies, specs) = self.for_worker(Some(&r.spec_revisions));
        Ok(Response::new(HeartbeatResponse {
            reregister: !known,
            policies,
            specs,
            drop,
            peers: if known { self.members.peer_addresses(&r.worker_id) } else { Vec::new() },
        }))
    }

    #[instrument(skip_all, fields(dataset = %req.get_ref().dataset))]
    async fn start_load(&self, req: Request<LoadSpec>) -> Result<Response<LoadJob>, Status> {
        let who = principal(&req);
        who.require(Role::Admin, "StartLoad")?;
        let spec = req.into_inner();
        let info = self.dataset_for(&who, &spec.dataset)?;
        Ok(Response::new(self.loads.start(info, spec).await?))
    }

    #[instrument(skip_all, fields(job = %req.get_ref().id))]
    async fn get_load(&self, req: Request<GetLoadRequest>) -> Result<Response<LoadJob>, Status> {
        let who = principal(&req);
        who.require(Role::Client, "GetLoad")?;
        Ok(Response::new(self.load_for(&who, &req.get_ref().id)?))
    }

    #[instrument(skip_all)]
    async fn list_loads(&self, req: Request<ListLoadsRequest>) -> Result<Response<ListLoadsResponse>, Status> {
        let who = principal(&req);
        who.require(Role::Client, "ListLoads")?;
        let jobs = self.loads.list()?.into_iter().filter(|j| self.load_visible(&who, j)).collect();
        Ok(Response::new(ListLoadsResponse { jobs }))
    }

    #[instrument(skip_all, fields(job = %req.get_ref().id))]
    async fn cancel_load(&self, req: Request<CancelLoadRequest>) -> Result<Response<LoadJob>, Status> {
        let who = principal(&req);
        who.require(Role::Admin, "CancelLoad")?;
        self.load_for(&who, &req.get_ref().id)?;
        Ok(Response::new(self.loads.cancel(&req.get_ref().id)?))
    }

    type WatchLoadStream = BoxStream<LoadJob>;

    #[instrument(skip_all, fields(job = %req.get_ref().id))]
    async fn watch_load(&self, req: Request<GetLoadRequest>) -> Result<Response<Self::WatchLoadStream>, Status> {
        let who = principal(&req);
        who.require(Role::Client, "WatchLoad")?;
        let id = req.into_inner().id;
        self.load_for(&who, &id)?;
        let loads = self.loads.clone();
        let (tx, rx) = mpsc::channel(4);
        let finished = self.loads.finished(&id);
        tokio::spawn(async move {
            loop {
                let job = loads.get(&id).map_err(Status::from);
                let done = job.as_ref().map(|j| j.state != LoadState::Running as i32).unwrap_or(true);
                if tx.send(job).await.is_err() || done {
                    return;
                }
                // Progress four times a second, and the final state at once.
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_millis(250)) => {}
                    _ = finished.cancelled() => {}
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    #[instrument(skip_all, fields(dataset = %req.get_ref().dataset, path = %req.get_ref().path))]
    async fn free_cache(&self, req: Request<FreeCacheRequest>) -> Result<Response<FreeCacheResponse>, Status> {
        let who = principal(&req);
        who.require(Role::Admin, "FreeCache")?;
        self.dataset_for(&who, &req.get_ref().dataset)?;
        Ok(Response::new(MasterService::free_cache(self, req.into_inner()).await?))
    }

    #[instrument(skip_all, fields(dataset = %req.get_ref().dataset))]
    async fn get_cache_usage(&self, req: Request<CacheUsageRequest>) -> Result<Response<CacheUsage>, Status> {
        let who = principal(&req);
        who.require(Role::Client, "GetCacheUsage")?;
        self.dataset_for(&who, &req.get_ref().dataset)?;
        Ok(Response::new(self.cache_usage(&req.get_ref().dataset)?))
    }

    #[instrument(skip_all)]
    async fn list_workers(&self, req: Request<ListWorkersRequest>) -> Result<Response<ListWorkersResponse>, Status> {
        principal(&req).require(Role::Client, "ListWorkers")?;
        Ok(Response::new(ListWorkersResponse { workers: self.members.workers() }))
    }

    type DrainWorkerStream = BoxStream<DrainProgress>;

    #[instrument(skip_all, fields(worker = %req.get_ref().id))]
    async fn drain_worker(
        &self,
        req: Request<DrainWorkerRequest>,
    ) -> Result<Response<Self::DrainWorkerStream>, Status> {
        // It moves every namespace's blocks: an admin of all of them, or a
        // worker (a worker pod drains itself before it stops; worker
        // credentials are trusted with every dataset's blocks already).
        let who = principal(&req);
        if !who.has(Role::Worker) {
            who.require(Role::Admin, "DrainWorker")?;
            if !who.sees_all() {
                return Err(Status::permission_denied(
                    "DrainWorker needs a worker credential or an admin credential of every namespace",
                ));
            }
        }
        let r = req.into_inner();
        if r.undo {
            self.rebalancer.undrain(&r.id)?;
            let done = DrainProgress {
                worker_id: r.id.clone(),
                done: true,
                message: format!("worker {} is back in placement", r.id),
                ..Default::default()
            };
            return Ok(Response::new(Box::pin(futures::stream::iter([Ok(done)]))));
        }
        if !self.members.workers().iter().any(|w| w.id == r.id) {
            return Err(MasterError::UnknownWorker(r.id).into());
        }
        // The drain goes on if the caller goes away; progress is sent when the
        // channel has room (the last report always).
        let (tx, rx) = mpsc::channel(16);
        let rebalancer = self.rebalancer.clone();
        let parallel = if r.parallel == 0 { 16 } else { r.parallel as usize };
        tokio::spawn(async move {
            let mut last = std::time::Instant::now();
            let result = rebalancer
                .drain(&r.id, parallel, |p| {
                    if p.done || last.elapsed() >= Duration::from_millis(200) {
                        last = std::time::Instant::now();
                        if p.done {
                            let tx = tx.clone();
                            tokio::spawn(async move { tx.send(Ok(p)).await });
                        } else {
                            let _ = tx.try_send(Ok(p));
                        }
                    }
                })
                .await;
            if let Err(e) = result {
                let _ = tx.send(Err(Status::from(e))).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

//! shoal-worker: a cache node. Owns the tiered block store (MEM, SSD), reads blocks
//! through from the under-store on a miss, serves them over gRPC, and keeps the
//! master informed (register with a full block report, heartbeats with deltas).
//! It holds no durable state but its block files.

pub mod block_store;
pub mod datasets;
pub mod error;
pub mod identity;
pub mod metrics;
mod mover;
pub mod service;
pub mod tier;

use std::sync::Arc;
use std::time::Duration;

use shoal_proto::master::{BlockKey, HeartbeatRequest, RegisterWorkerRequest, TierInfo, WorkerInfo};
use shoal_proto::worker::worker_server::WorkerServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use block_store::BlockStore;
pub use error::WorkerError;
pub use service::WorkerService;
pub use tier::{TierKind, TierSpec};

/// Settings of one worker process.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Stable id of this worker (survives restarts).
    pub id: String,
    /// Kubernetes node / host name, for locality.
    pub node: String,
    /// Master address, `host:port`.
    pub master: String,
    /// Address other processes reach this worker at; defaults to the listen address.
    pub advertise: Option<String>,
    /// Tiers, fastest first.
    pub tiers: Vec<TierSpec>,
    /// When tiers evict.
    pub watermarks: block_store::Watermarks,
    /// Bytes of blocks being read from stores at once (a block larger than this
    /// is read alone); further misses wait their turn.
    pub fill_budget: u64,
}

/// Arm the fail points named in `FAILPOINTS` (`name=action;…`, e.g.
/// `worker::before_store_read=sleep(700)`; points: `worker::before_store_read`,
/// `tier::before_rename`), for the rest of the process. Only builds with the
/// `failpoints` feature (the tests' build) have fail points; elsewhere this does nothing.
pub fn arm_fail_points() {
    #[cfg(feature = "failpoints")]
    std::mem::forget(fail::FailScenario::setup());
}

/// A lazily connected client of the master (the worker starts without it).
pub fn master_client(addr: &str) -> Result<shoal_proto::auth::Master, WorkerError> {
    let master = shoal_proto::auth::master(addr, |ep| shoal_proto::profile::Profile::CONTROL.apply(ep))
        .map_err(|e| WorkerError::Config(format!("invalid master address {addr:?}: {e}")))?;
    Ok(master
        .max_decoding_message_size(shoal_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(shoal_proto::MAX_MESSAGE_BYTES))
}

fn apply_policies(store: &BlockStore, policies: &[shoal_proto::master::DatasetPolicy]) {
    let map = policies
        .iter()
        .map(|p| {
            let ttl = (p.ttl_seconds > 0).then(|| Duration::from_secs(p.ttl_seconds));
            (p.dataset_id, block_store::Policy { pinned: p.pinned, ttl })
        })
        .collect();
    store.set_policies(map);
}

/// Delete the blocks the master says it never issued (a report of another
/// incarnation's ids, a dataset deleted meanwhile).
fn drop_refused(store: &BlockStore, refused: &[BlockKey]) {
    for b in refused {
        store.remove(shoal_core::BlockId::new(b.file_id, b.index));
    }
    if !refused.is_empty() {
        warn!(blocks = refused.len(), "deleted blocks the master never issued");
    }
}

/// Report keys of removed blocks.
fn keys(ids: impl IntoIterator<Item = shoal_core::BlockId>) -> Vec<BlockKey> {
    ids.into_iter().map(|b| BlockKey { file_id: b.file_id, index: b.index, ..Default::default() }).collect()
}

/// Report keys of held blocks, with the dataset and length the master counts
/// cache usage by. A block not found (moving between tiers this instant) goes
/// back into the deltas for the next report; if it was removed instead, that
/// removal, queued after it, wins.
fn held_keys(store: &BlockStore, ids: impl IntoIterator<Item = shoal_core::BlockId>) -> Vec<BlockKey> {
    let (found, missing) = store.describe(ids);
    if !missing.is_empty() {
        store.restore_deltas(block_store::Deltas { added: missing, removed: Vec::new() });
    }
    found
        .into_iter()
        .map(|(b, dataset_id, length)| BlockKey { file_id: b.file_id, index: b.index, dataset_id, length })
        .collect()
}

fn tier_infos(store: &BlockStore) -> Vec<TierInfo> {
    store
        .tier_stats()
        .into_iter()
        .map(|(kind, dir, quota, used, blocks, _)| TierInfo {
            kind: kind.as_str().into(),
            dir: dir.to_string_lossy().into_owned(),
            quota_bytes: quota,
            used_bytes: used,
            blocks,
        })
        .collect()
}

/// How long a heartbeat waits after a block is newly cached, so that a burst of
/// new blocks (a prewarm) goes out in one report.
pub const EARLY_REPORT_DELAY: Duration = Duration::from_millis(100);

/// Register and heartbeat until `shutdown`; re-register with a full report
/// whenever the master asks (e.g. after it restarted). Newly cached blocks
/// (`report_soon`) bring the next heartbeat forward to [`EARLY_REPORT_DELAY`], so
/// mounts and prewarm jobs see them without waiting out the interval.
async fn report_loop(
    mut master: shoal_proto::auth::Master,
    me: WorkerInfo,
    store: Arc<BlockStore>,
    report_soon: Arc<tokio::sync::Notify>,
    who: (Arc<identity::Identity>, Vec<std::path::PathBuf>),
    (peers, datasets): (Arc<std::sync::RwLock<std::collections::HashSet<String>>>, Arc<datasets::Datasets>),
    shutdown: CancellationToken,
) {
    let set_peers = |list: &[String]| *peers.write().expect("peers lock") = list.iter().cloned().collect();
    let (identity, tier_dirs) = who;
    let mut interval = Duration::from_secs(3);
    let mut registered = false;
    loop {
        if !registered {
            let s = store.clone();
            let (blocks, tiers) = tokio::task::spawn_blocking(move || {
                s.settle();
                let _ = s.take_deltas();
                (held_keys(&s, s.all_blocks()), tier_infos(&s))
            })
            .await
            .unwrap_or_default();
            let n = blocks.len();
            let cluster_id = identity.cluster().unwrap_or_default();
            let req = RegisterWorkerRequest { worker: Some(WorkerInfo { tiers, ..me.clone() }), blocks, cluster_id };
            match master.register_worker(req).await {
                Ok(resp) => {
                    let mut resp = resp.into_inner();
                    if let Err(e) = adopt_cluster(&store, &identity, &tier_dirs, &resp).await {
                        warn!(error = %e, "cannot take on the master's cluster identity; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                    registered = true;
                    set_peers(&resp.peers);
                    let epoch = identity.signer().map(|(_, e)| e).unwrap_or(0);
                    datasets.replace_all(std::mem::take(&mut resp.specs), epoch);
                    interval = Duration::from_millis(resp.heartbeat_interval_ms.clamp(100, 60_000));
                    let s = store.clone();
                    let _ = tokio::task::spawn_blocking(move || {
                        drop_refused(&s, &resp.drop);
                        apply_policies(&s, &resp.policies)
                    })
                    .await;
                    info!(blocks = n, "registered with the master");
                }
                Err(e) => warn!(error = %e.message(), "cannot register with the master; retrying"),
            }
        } else {
            // Settled first, so that the tier gauges and the report count
            // every block the deltas name.
            let s = store.clone();
            let id = me.id.clone();
            let spec_revisions = datasets.revisions();
            let prepared = tokio::task::spawn_blocking(move || {
                s.settle();
                let deltas = s.take_deltas();
                metrics::update_tiers(&s);
                let req = HeartbeatRequest {
                    worker_id: id,
                    added: held_keys(&s, deltas.added.iter().copied()),
                    removed: keys(deltas.removed.iter().copied()),
                    tiers: tier_infos(&s),
                    spec_revisions,
                };
                (deltas, req)
            })
            .await;
            let (deltas, req) = match prepared {
                Ok(p) => p,
                Err(e) => {
                    warn!(error = %e, "preparing the heartbeat failed; registering again with a full report");
                    registered = false;
                    continue;
                }
            };
            match master.heartbeat(req).await {
                Ok(resp) if resp.get_ref().reregister => registered = false,
                Ok(mut resp) => {
                    set_peers(&resp.get_ref().peers);
                    let live = resp.get_ref().policies.iter().map(|p| p.dataset_id).collect();
                    datasets.update(std::mem::take(&mut resp.get_mut().specs), &live);
                    let s = store.clone();
                    let _ = tokio::task::spawn_blocking(move || {
                        let resp = resp.into_inner();
                        drop_refused(&s, &resp.drop);
                        apply_policies(&s, &resp.policies);
                        let n = s.expire(std::time::SystemTime::now());
                        if n > 0 {
                            info!(blocks = n, "freed blocks past their dataset's TTL");
                        }
                    })
                    .await;
                }
                Err(e) => {
                    warn!(error = %e.message(), "heartbeat failed");
                    store.restore_deltas(deltas);
                }
            }
        }
        let wait = if registered { interval } else { Duration::from_millis(500) };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
            _ = report_soon.notified(), if registered => tokio::time::sleep(EARLY_REPORT_DELAY.min(wait)).await,
        }
        if !registered {
            continue;
        }
    }
}

/// Serve under the cluster a registration answered with. Blocks cached for
/// another cluster (or for none known) are dropped before its key is taken on,
/// so no reference of the new cluster can read them.
async fn adopt_cluster(
    store: &Arc<BlockStore>,
    identity: &Arc<identity::Identity>,
    dirs: &[std::path::PathBuf],
    resp: &shoal_proto::master::RegisterWorkerResponse,
) -> Result<(), WorkerError> {
    let signer = shoal_core::identity::Signer::new(&resp.block_key)
        .filter(|_| shoal_core::identity::valid_cluster_id(&resp.cluster_id))
        .ok_or_else(|| WorkerError::Master("the master sent no valid cluster id and block key".into()))?;
    let changed = identity.cluster().as_deref() != Some(resp.cluster_id.as_str());
    let (s, id, dirs) = (store.clone(), identity.clone(), dirs.to_vec());
    let cluster = resp.cluster_id.clone();
    let (dropped, marked) = tokio::task::spawn_blocking(move || {
        let (mut dropped, mut marked) = (0, Ok(()));
        // The old blocks go before the tiers are marked as the new cluster's: a
        // crash in between leaves the old mark, and the next start clears again.
        id.set(cluster.clone(), signer, || {
            dropped = s.clear();
            marked = crate::identity::store(&dirs, &cluster);
        });
        (dropped, marked)
    })
    .await
    .map_err(|e| WorkerError::Config(e.to_string()))?;
    if dropped > 0 {
        warn!(blocks = dropped, cluster = %resp.cluster_id, "dropped every cached block: they were cached for another cluster");
    }
    if let Err(e) = marked {
        warn!(error = %e, "cannot mark the tiers with the cluster id; a restart will drop their blocks");
    }
    if !changed {
        return Ok(());
    }
    info!(cluster = %resp.cluster_id, "serving for cluster");
    Ok(())
}

/// Open the tiers and serve the worker API on `listener` until `shutdown`.
pub async fn serve(
    config: WorkerConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    let auth = shoal_proto::auth::ServerAuth::from_env().map_err(|e| WorkerError::Config(e.to_string()))?;
    let tiers = config.tiers.clone();
    let marks = config.watermarks;
    // Tiers of another (or no known) cluster than the rest lose their blocks
    // before the store scans them.
    let dirs: Vec<std::path::PathBuf> = config.tiers.iter().map(|t| t.dir.clone()).collect();
    let (store, cluster) = {
        let dirs = dirs.clone();
        tokio::task::spawn_blocking(move || {
            let cluster = identity::prepare(&dirs)?;
            Ok::<_, WorkerError>((BlockStore::open_with(&tiers, marks)?, cluster))
        })
        .await
        .map_err(|e| WorkerError::Config(e.to_string()))??
    };
    let store = Arc::new(store);
    let local = listener.local_addr().map_err(|e| WorkerError::Io("listener".into(), e))?;
    let advertise = config.advertise.clone().unwrap_or_else(|| {
        if local.ip().is_unspecified() {
            format!("{}:{}", config.node, local.port())
        } else {
            local.to_string()
        }
    });
    let master = master_client(&config.master)?;
    let service = WorkerService::new(
        config.id.clone(),
        store.clone(),
        Arc::new(datasets::Datasets::new(master.clone())),
        config.fill_budget,
        Arc::new(identity::Identity::with_cluster(cluster)),
    );
    let me = WorkerInfo { id: config.id.clone(), node: config.node.clone(), address: advertise, ..Default::default() };
    let reporter = tokio::spawn(report_loop(
        master,
        me,
        store,
        service.0.report_soon.clone(),
        (service.0.identity.clone(), dirs),
        (service.0.peers.clone(), service.0.datasets.clone()),
        shutdown.clone(),
    ));
    info!(addr = %local, id = %config.id, "worker serving");
    let mut builder = shoal_proto::profile::server().map_err(|e| WorkerError::Config(e.to_string()))?;
    let result = builder
        .add_service(tonic::service::interceptor::InterceptedService::new(
            WorkerServer::new(service)
                .max_decoding_message_size(shoal_proto::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(shoal_proto::MAX_MESSAGE_BYTES),
            auth,
        ))
        .serve_with_incoming_shutdown(shoal_proto::profile::incoming(listener), shutdown.cancelled_owned())
        .await;
    reporter.abort();
    Ok(result?)
}

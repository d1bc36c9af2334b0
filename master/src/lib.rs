//! shoal-master: the metadata master. Owns datasets and their namespaces (durable,
//! in RocksDB, replicated across a group of masters by Raft: `raft`), worker
//! membership and the block location map (soft state, rebuilt from worker
//! reports), and serves them over gRPC. It never touches block data.

pub mod error;
pub mod load;
pub mod membership;
pub mod meta;
pub mod metrics;
pub mod namespace;
pub mod pool;
pub mod raft;
pub mod rebalance;
pub mod service;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use shoal_proto::master::master_raft_server::MasterRaftServer;
use shoal_proto::master::master_server::MasterServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use error::{MasterError, ServeError};
pub use service::MasterService;

/// Settings of one master process.
#[derive(Debug, Clone)]
pub struct MasterConfig {
    /// RocksDB lives in `<data_dir>/meta`.
    pub data_dir: PathBuf,
    /// A worker silent this long is declared lost.
    pub lost_worker_timeout: Duration,
    /// How often workers are asked to heartbeat.
    pub heartbeat_interval: Duration,
    /// How long after a sync the blocks of changed and deleted files are freed:
    /// longer than mounts take to see the sync (their refresh interval), since
    /// until then they may still read the old content.
    pub stale_block_grace: Duration,
    /// Local directories (`file://` stores) datasets may be created under;
    /// empty: none. Canonical paths.
    pub local_roots: Vec<PathBuf>,
    /// Copy to a worker that joins the blocks it now owns (from their holders).
    pub rebalance_on_join: bool,
    /// The group of masters this one belongs to; `None`: a group of one at
    /// the address it listens on.
    pub raft: Option<raft::RaftSettings>,
}

impl Default for MasterConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("/var/lib/shoal/master"),
            lost_worker_timeout: Duration::from_secs(15),
            heartbeat_interval: Duration::from_secs(3),
            stale_block_grace: Duration::from_secs(60),
            local_roots: Vec::new(),
            rebalance_on_join: true,
            raft: None,
        }
    }
}

/// Open the state and serve the master API on `listener` until `shutdown`.
pub async fn serve(config: MasterConfig, listener: TcpListener, shutdown: CancellationToken) -> Result<(), ServeError> {
    let auth = shoal_proto::auth::ServerAuth::from_env()?;
    std::fs::create_dir_all(&config.data_dir).map_err(|e| ServeError::Io(config.data_dir.clone(), e))?;
    let meta = meta::MetaStore::open_replicated(&config.data_dir.join("meta"))?;
    let members = Arc::new(membership::Membership::new(config.lost_worker_timeout));
    let service = MasterService::new(meta.clone(), members.clone(), &config);
    let local = listener.local_addr().map_err(|e| ServeError::Io(config.data_dir.clone(), e))?;
    let settings = config.raft.clone().unwrap_or_else(|| raft::RaftSettings::single(&local.to_string()));
    let node = raft::Node::start(&settings, &config.data_dir, meta).await?;
    let watcher = tokio::spawn(node.clone().watch(service.clone(), shutdown.clone()));

    // Datasets with a sync interval are re-listed when it has passed.
    let sync_stop = shutdown.clone();
    let syncer = service.clone();
    let sync_node = node.clone();
    let periodic = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = sync_stop.cancelled() => break,
                _ = tick.tick() => if sync_node.serving() { syncer.sync_due().await },
            }
        }
    });
    // After a worker joins (and the joins of a master restart have settled, and
    // the other workers have heard of it), the blocks it now owns are copied to it.
    let rebalancer = (service.rebalancer.clone(), service.joined.clone());
    let settle = (config.heartbeat_interval * 3).clamp(Duration::from_millis(500), Duration::from_secs(10));
    let rebalance_stop = shutdown.clone();
    let on_join = config.rebalance_on_join;
    let rebalance_node = node.clone();
    let rebalance = tokio::spawn(async move {
        let (rebalancer, joined) = rebalancer;
        loop {
            tokio::select! {
                _ = rebalance_stop.cancelled() => break,
                _ = joined.notified() => {}
            }
            // Joins within the settling time are one rebalance.
            while tokio::time::timeout(settle, joined.notified()).await.is_ok() {}
            if !on_join || !rebalance_node.serving() {
                continue;
            }
            if let Err(e) = rebalancer.rebalance(16).await {
                tracing::warn!(error = %e, "rebalance after a worker joined failed");
            }
        }
    });
    let reaper_stop = shutdown.clone();
    let reaper = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = reaper_stop.cancelled() => break,
                _ = tick.tick() => {
                    members.reap();
                    let workers = members.workers();
                    let alive = workers.iter().filter(|w| w.alive).count() as i64;
                    metrics::WORKERS.with_label_values(&["alive"]).set(alive);
                    metrics::WORKERS.with_label_values(&["lost"]).set(workers.len() as i64 - alive);
                    metrics::CACHED_BLOCKS.set(members.block_count() as i64);
                }
            }
        }
    });
    info!(addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "master serving");
    let mut builder = shoal_proto::profile::server()?;
    // The master API answers only while this master leads (others are told
    // where the leader is); the Raft service always.
    let gate = {
        let (mut auth, node) = (auth.clone(), node.clone());
        move |req: tonic::Request<()>| {
            use tonic::service::Interceptor;
            let req = auth.call(req)?;
            if node.serving() {
                Ok(req)
            } else {
                Err(node.refusal())
            }
        }
    };
    let stop_all = shutdown.clone();
    let result = builder
        .add_service(tonic::service::interceptor::InterceptedService::new(
            MasterServer::new(service)
                .max_decoding_message_size(shoal_proto::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(shoal_proto::MAX_MESSAGE_BYTES),
            gate,
        ))
        .add_service(tonic::service::interceptor::InterceptedService::new(
            MasterRaftServer::new(raft::net::RaftService { node })
                .max_decoding_message_size(256 << 20)
                .max_encoding_message_size(256 << 20),
            auth,
        ))
        .serve_with_incoming_shutdown(shoal_proto::profile::incoming(listener), shutdown.cancelled_owned())
        .await;
    stop_all.cancel();
    let _ = watcher.await;
    reaper.abort();
    periodic.abort();
    rebalance.abort();
    result.map_err(ServeError::Transport)
}

//! shoal-csi: the CSI plugin (driver `csi.shoal.io`) that gives Kubernetes pods a
//! dataset as a volume.
//!
//! - [`validate`]: checks on volume ids, target paths and capabilities;
//! - [`volumes`]: one FUSE mount per dataset per node, bind-mounted into pods,
//!   supervised and recovered, recorded on disk;
//! - [`fusefd`]: held copies of the mounts' FUSE connections, so a new process
//!   can take one over;
//! - [`service`]: the Identity, Node and (static) Controller gRPC services.
//!
//! [`Plugin`] runs them on a unix socket, as kubelet and the CSI sidecars expect.

pub mod fusefd;
pub mod service;
pub mod validate;
pub mod volumes;

use std::path::PathBuf;
use std::sync::Arc;

use shoal_proto::csi::controller_server::ControllerServer;
use shoal_proto::csi::identity_server::IdentityServer;
use shoal_proto::csi::node_server::NodeServer;
use tokio_stream::wrappers::UnixListenerStream;

/// The driver's name, as in the `CSIDriver` object and each PV's `csi.driver`.
pub const DRIVER_NAME: &str = "csi.shoal.io";

/// How the node plugin runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Unix socket to serve on.
    pub socket: PathBuf,
    /// This node's name (kubelet's node name).
    pub node_id: String,
    /// Master address, host:port.
    pub master: String,
    /// Where FUSE mounts, their logs and `state.json` live.
    pub state_dir: PathBuf,
    /// Target paths must be under this directory (kubelet's root).
    pub target_root: PathBuf,
    /// The `shoal` binary that runs each FUSE mount.
    pub shoal_bin: PathBuf,
    /// Extra arguments for every `shoal mount` (e.g. `--cache-size 2GiB`).
    pub mount_args: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum CsiError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Denied(String),
    #[error("master: {0}")]
    Master(String),
    #[error("{0}")]
    Aborted(String),
    #[error("mount: {0}")]
    Mount(String),
    #[error("{0}")]
    Io(String),
}

impl From<CsiError> for tonic::Status {
    fn from(e: CsiError) -> tonic::Status {
        let msg = e.to_string();
        match e {
            CsiError::Invalid(_) => tonic::Status::invalid_argument(msg),
            CsiError::NotFound(_) => tonic::Status::not_found(msg),
            CsiError::Denied(_) => tonic::Status::permission_denied(msg),
            CsiError::Master(_) => tonic::Status::unavailable(msg),
            CsiError::Aborted(_) => tonic::Status::aborted(msg),
            CsiError::Mount(_) | CsiError::Io(_) => tonic::Status::internal(msg),
        }
    }
}

/// The plugin, listening on its socket (so kubelet can connect as soon as this
/// returns) but not yet serving.
pub struct Plugin {
    cfg: Arc<Config>,
    listener: tokio::net::UnixListener,
}

impl Plugin {
    /// Listen on `cfg.socket`, replacing a stale socket file.
    pub fn bind(cfg: Config) -> Result<Plugin, CsiError> {
        if cfg.socket.exists() {
            std::fs::remove_file(&cfg.socket)
                .map_err(|e| CsiError::Io(format!("remove stale socket {}: {e}", cfg.socket.display())))?;
        }
        if let Some(dir) = cfg.socket.parent() {
            std::fs::create_dir_all(dir).map_err(|e| CsiError::Io(format!("create {}: {e}", dir.display())))?;
        }
        let listener = tokio::net::UnixListener::bind(&cfg.socket)
            .map_err(|e| CsiError::Io(format!("listen on {}: {e}", cfg.socket.display())))?;
        Ok(Plugin { cfg: Arc::new(cfg), listener })
    }

    /// Take back the volumes an earlier run recorded: from its return this
    /// process holds their FUSE connections, so their old FUSE processes may die
    /// without the kernel aborting a mount. Calls on the socket wait meanwhile.
    pub async fn adopt(self) -> Result<Adopted, CsiError> {
        let cfg = self.cfg;
        let master = shoal_proto::auth::master(&cfg.master, |ep| shoal_proto::profile::Profile::CONTROL.apply(ep))
            .map_err(|e| CsiError::Invalid(format!("master address {:?}: {e}", cfg.master)))?;
        let volumes = volumes::Volumes::open(cfg.clone()).await?;
        Ok(Adopted { cfg, listener: self.listener, master, volumes })
    }
}

/// The plugin with its earlier volumes taken back, ready to serve.
pub struct Adopted {
    cfg: Arc<Config>,
    listener: tokio::net::UnixListener,
    master: shoal_proto::auth::Master,
    volumes: Arc<volumes::Volumes>,
}

impl Adopted {
    /// Serve the CSI services until `stop` resolves. Published mounts outlive
    /// the server.
    pub async fn serve(self, stop: impl std::future::Future<Output = ()>) -> Result<(), CsiError> {
        let Adopted { cfg, listener, master, volumes } = self;
        let supervisor = tokio::spawn(volumes.clone().supervise());
        let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(|e| CsiError::Io(format!("handle SIGHUP: {e}")))?;
        let upgrades = tokio::spawn(replace_on_sighup(volumes.clone(), hup));
        let svc = service::CsiService::new(cfg.clone(), volumes, master);
        tracing::info!(socket = %cfg.socket.display(), node = %cfg.node_id, "CSI plugin serving");
        let result = tonic::transport::Server::builder()
            .add_service(IdentityServer::new(svc.clone()))
            .add_service(NodeServer::new(svc.clone()))
            .add_service(ControllerServer::new(svc))
            .serve_with_incoming_shutdown(UnixListenerStream::new(listener), stop)
            .await
            .map_err(|e| CsiError::Io(format!("CSI server: {e}")));
        supervisor.abort();
        upgrades.abort();
        let _ = std::fs::remove_file(&cfg.socket);
        result
    }
}

/// On SIGHUP, replace every FUSE process by a new one (of the `shoal` binary now
/// on disk) that takes its connection over: how a node upgrades its mounts
/// without failing a pod's read.
async fn replace_on_sighup(volumes: Arc<volumes::Volumes>, mut hup: tokio::signal::unix::Signal) {
    while hup.recv().await.is_some() {
        let n = volumes.replace_all().await;
        tracing::info!(replaced = n, "SIGHUP: FUSE processes replaced");
    }
}

/// The plugin's Prometheus metrics (`shoal_csi_*`).
pub mod metrics {
    use std::sync::LazyLock;

    use prometheus::{register_int_counter, register_int_counter_vec, register_int_gauge};
    use prometheus::{IntCounter, IntCounterVec, IntGauge};

    pub static REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
        register_int_counter_vec!("shoal_csi_requests_total", "CSI requests by operation and result", &["op", "result"])
            .expect("metric")
    });
    pub static PUBLISHED: LazyLock<IntCounter> = LazyLock::new(|| {
        register_int_counter!("shoal_csi_publishes_total", "Target paths bound to a dataset's FUSE mount")
            .expect("metric")
    });
    pub static RESTARTS: LazyLock<IntCounter> = LazyLock::new(|| {
        register_int_counter!("shoal_csi_fuse_restarts_total", "FUSE processes restarted after they died")
            .expect("metric")
    });
    pub static TAKEOVERS: LazyLock<IntCounter> = LazyLock::new(|| {
        register_int_counter!(
            "shoal_csi_fuse_takeovers_total",
            "New FUSE processes that took a live connection over (restart or upgrade without an error)"
        )
        .expect("metric")
    });
    pub static VOLUMES: LazyLock<IntGauge> = LazyLock::new(|| {
        register_int_gauge!("shoal_csi_fuse_mounts", "Datasets with a FUSE mount on this node").expect("metric")
    });
    pub static TARGETS: LazyLock<IntGauge> = LazyLock::new(|| {
        register_int_gauge!("shoal_csi_targets", "Pod target paths bound on this node").expect("metric")
    });
}

//! shoal-operator: Kubernetes controllers for shoal's custom resources.
//!
//! - [`crd`]: the `Dataset` and `DataLoad` types and their generated CRDs;
//! - [`dataset`]: registers datasets with the master, serves them as PV + PVC,
//!   labels cache nodes, mirrors status, cleans up through a finalizer;
//! - [`dataload`]: runs prewarm jobs on the master, once or on a cron schedule,
//!   and mirrors their progress.
//!
//! [`run`] runs both controllers while this replica holds the `shoal-operator`
//! Lease (leader election); the others wait. Errors become `status.conditions`
//! and events, never a crash loop.

pub mod crd;
pub mod dataload;
pub mod dataset;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ObjectReference, PersistentVolumeClaim};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::{watcher, Controller};
use kube::{Api, Client};
use tracing::{info, warn};

/// Field manager for server-side apply, and the events' reporting controller.
pub const FIELD_MANAGER: &str = "shoal-operator";

/// What every reconcile needs.
pub struct Ctx {
    pub client: Client,
    pub master: shoal_proto::auth::Master,
    pub recorder: Recorder,
    /// Look at a ready Dataset again this often (status, node labels).
    pub refresh: Duration,
    /// Retry a failed reconcile after this long.
    pub retry: Duration,
    /// Poll a running prewarm job this often.
    pub poll: Duration,
}

impl Ctx {
    pub fn new(client: Client, master: shoal_proto::auth::Master, instance: &str) -> Ctx {
        let reporter = Reporter { controller: FIELD_MANAGER.into(), instance: Some(instance.into()) };
        Ctx {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            master,
            refresh: dataset::DEFAULT_REFRESH,
            retry: Duration::from_secs(15),
            poll: Duration::from_secs(2),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The resource's spec is wrong; retried only when it changes.
    #[error("{0}")]
    Invalid(String),
    /// A referenced Secret or key is missing.
    #[error("{0}")]
    Secret(String),
    /// The referenced Dataset does not exist (yet).
    #[error("{0}")]
    MissingDataset(String),
    /// The master refused or could not be reached.
    #[error("master: {0}")]
    Master(String),
    #[error("master refused the request: {0}")]
    MasterRefused(String),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(String),
    #[error("leader election: {0}")]
    Lease(String),
}

impl Error {
    pub fn from_master(s: tonic::Status) -> Error {
        match s.code() {
            tonic::Code::InvalidArgument
            | tonic::Code::AlreadyExists
            | tonic::Code::FailedPrecondition
            | tonic::Code::PermissionDenied => Error::MasterRefused(s.message().to_string()),
            _ => Error::Master(format!("{}: {}", s.code(), s.message())),
        }
    }

    /// Retrying without a change to the resource cannot help.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Error::Invalid(_) | Error::MasterRefused(_))
    }

    /// The `reason` of the condition and event.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Invalid(_) => "InvalidSpec",
            Error::Secret(_) => "SecretMissing",
            Error::MissingDataset(_) => "DatasetNotFound",
            Error::Master(_) => "MasterUnavailable",
            Error::MasterRefused(_) => "MasterRefused",
            Error::Kube(_) => "KubernetesError",
            Error::Finalizer(_) => "FinalizerError",
            Error::Lease(_) => "LeaseError",
        }
    }
}

/// The reconcile error inside a finalizer error.
pub(crate) fn unwrap_finalizer(e: kube::runtime::finalizer::Error<Error>) -> Error {
    use kube::runtime::finalizer::Error as F;
    match e {
        F::ApplyFailed(e) | F::CleanupFailed(e) => e,
        F::AddFinalizer(e) | F::RemoveFinalizer(e) => Error::Kube(e),
        other => Error::Finalizer(other.to_string()),
    }
}

/// A condition of `type_`, keeping its last transition time when the status does
/// not change.
pub(crate) fn condition(
    prior: &[Condition],
    type_: &str,
    ok: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let since = prior
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| Time(k8s_openapi::jiff::Timestamp::now()));
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.chars().take(32 * 1024).collect(),
        last_transition_time: since,
        observed_generation: generation,
    }
}

pub(crate) async fn publish_warning(ctx: &Ctx, object: &ObjectReference, err: &Error) {
    let ev = Event {
        type_: EventType::Warning,
        reason: err.reason().into(),
        note: Some(err.to_string().chars().take(1024).collect()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, object).await {
        warn!(error = %e, "cannot publish an event");
    }
}

/// The operator's Prometheus metrics (`shoal_operator_*`).
pub mod metrics {
    use std::sync::LazyLock;

    use prometheus::{register_int_counter_vec, register_int_gauge, IntCounterVec, IntGauge};

    pub static RECONCILES: LazyLock<IntCounterVec> = LazyLock::new(|| {
        register_int_counter_vec!(
            "shoal_operator_reconciles_total",
            "Reconciles by kind and result",
            &["kind", "result"]
        )
        .expect("metric")
    });
    pub static LEADER: LazyLock<IntGauge> = LazyLock::new(|| {
        register_int_gauge!("shoal_operator_leader", "1 while this replica holds the lease").expect("metric")
    });

    pub fn count(kind: &str, ok: bool) {
        RECONCILES.with_label_values(&[kind, if ok { "ok" } else { "error" }]).inc();
    }
}

/// How the operator runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Master address, host:port.
    pub master: String,
    /// Namespace of the leader-election Lease.
    pub lease_namespace: String,
    /// This replica's identity in the Lease (the pod name).
    pub identity: String,
}

/// Run the controllers while holding the Lease, until `stop` resolves.
pub async fn run(cfg: Config, stop: impl std::future::Future<Output = ()>) -> Result<(), Error> {
    let client = Client::try_default().await?;
    // A create or update lists the store before it answers; ten minutes bound a hung master.
    let master = shoal_proto::auth::master(&cfg.master, |ep| {
        shoal_proto::profile::Profile::ADMIN.with_timeout(Duration::from_secs(600)).apply(ep)
    })
    .map_err(|e| Error::Invalid(format!("master address {:?}: {e}", cfg.master)))?;
    let ctx = Arc::new(Ctx::new(client.clone(), master, &cfg.identity));
    let manager = kube_lease_manager::LeaseManagerBuilder::new(client.clone(), FIELD_MANAGER)
        .with_namespace(&cfg.lease_namespace)
        .with_identity(&cfg.identity)
        .with_duration(15)
        .with_grace(5)
        .build()
        .await
        .map_err(|e| Error::Lease(e.to_string()))?;
    let (mut leader, lease_task) = manager.watch().await;
    tokio::pin!(stop);
    loop {
        info!(identity = %cfg.identity, "waiting for the lease");
        tokio::select! {
            r = leader.wait_for(|l| *l) => if r.is_err() { break },
            _ = &mut stop => break,
        }
        info!(identity = %cfg.identity, "leading: running the controllers");
        metrics::LEADER.set(1);
        tokio::select! {
            _ = controllers(client.clone(), ctx.clone()) => warn!("the controllers ended"),
            _ = leader.wait_for(|l| !*l) => warn!("lost the lease; stopping the controllers"),
            _ = &mut stop => { metrics::LEADER.set(0); break }
        }
        metrics::LEADER.set(0);
    }
    drop(leader);
    if let Ok(Ok(manager)) = lease_task.await {
        let _ = manager.release().await;
    }
    Ok(())
}

async fn controllers(client: Client, ctx: Arc<Ctx>) {
    let datasets = Controller::new(Api::<crd::Dataset>::all(client.clone()), watcher::Config::default())
        .owns(Api::<PersistentVolumeClaim>::all(client.clone()), watcher::Config::default())
        .run(dataset::reconcile, error_policy, ctx.clone())
        .for_each(|r| async move {
            if let Err(e) = r {
                warn!(error = %e, "Dataset controller");
            }
        });
    let loads = Controller::new(Api::<crd::DataLoad>::all(client), watcher::Config::default())
        .run(dataload::reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                warn!(error = %e, "DataLoad controller");
            }
        });
    futures::future::join(datasets, loads).await;
}

/// Reconcilers report their own errors; what reaches here (a resource without a
/// namespace) is retried later.
fn error_policy<K>(_obj: Arc<K>, err: &Error, ctx: Arc<Ctx>) -> kube::runtime::controller::Action {
    warn!(error = %err, "reconcile failed");
    kube::runtime::controller::Action::requeue(ctx.retry)
}

//! shoal-scheduler: puts pods next to their cached data and free GPUs.
//!
//! - [`score`]: node scores from cache shares and GPU fit (pure; also used by the
//!   cluster simulator in `benches/`);
//! - [`state`]: the cache view (polled from the master) and the cluster's PVCs and
//!   pods (watched), kept off the request path;
//! - [`extender`]: kube-scheduler's extender API (`/filter`, `/prioritize`);
//! - [`webhook`]: a mutating admission webhook (`/mutate`) injecting node affinity
//!   and mount propagation.
//!
//! [`router`] serves all three over HTTP; malformed bodies get 400 with a message.

pub mod extender;
pub mod score;
pub mod state;
pub mod webhook;

use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State as AxState;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use k8s_openapi::api::core::v1::Pod;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use kube::core::DynamicObject;

use crate::score::Weights;
use crate::state::State;

#[derive(Clone)]
struct App {
    state: State,
    weights: Weights,
}

/// The HTTP routes: `POST /filter`, `POST /prioritize`, `POST /mutate`, `GET /healthz`.
pub fn router(state: State, weights: Weights) -> Router {
    Router::new()
        .route("/filter", post(filter))
        .route("/prioritize", post(prioritize))
        .route("/mutate", post(mutate))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(App { state, weights })
}

fn json(value: &impl serde::Serialize) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => ([(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

fn bad_request(what: &str, e: impl std::fmt::Display) -> Response {
    metrics::REQUESTS.with_label_values(&[what, "bad_request"]).inc();
    (StatusCode::BAD_REQUEST, format!("malformed {what} request: {e}")).into_response()
}

fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, serde_json::Error> {
    serde_json::from_slice(body)
}

#[tracing::instrument(skip_all)]
async fn filter(AxState(app): AxState<App>, body: Bytes) -> Response {
    let started = Instant::now();
    let args: extender::ExtenderArgs = match parse(&body) {
        Ok(a) => a,
        Err(e) => return bad_request("filter", e),
    };
    let out = extender::filter(&app.state, &args);
    metrics::observe("filter", started);
    json(&out)
}

#[tracing::instrument(skip_all)]
async fn prioritize(AxState(app): AxState<App>, body: Bytes) -> Response {
    let started = Instant::now();
    let args: extender::ExtenderArgs = match parse(&body) {
        Ok(a) => a,
        Err(e) => return bad_request("prioritize", e),
    };
    let out = extender::prioritize(&app.state, &args, app.weights);
    metrics::observe("prioritize", started);
    json(&out)
}

#[tracing::instrument(skip_all)]
async fn mutate(AxState(app): AxState<App>, body: Bytes) -> Response {
    let started = Instant::now();
    let review: AdmissionReview<Pod> = match parse(&body) {
        Ok(r) => r,
        Err(e) => return bad_request("mutate", e),
    };
    let req: AdmissionRequest<Pod> = match review.try_into() {
        Ok(r) => r,
        Err(e) => return bad_request("mutate", e),
    };
    let resp = AdmissionResponse::from(&req);
    let resp = match req.object.as_ref().and_then(|pod| webhook::mutate(&app.state, pod).map(|m| (pod, m))) {
        None => resp,
        Some((pod, mutated)) => {
            let (before, after) = (serde_json::to_value(pod), serde_json::to_value(&mutated));
            match (before, after) {
                (Ok(before), Ok(after)) => match resp.clone().with_patch(json_patch::diff(&before, &after)) {
                    Ok(r) => r,
                    Err(e) => resp.deny(format!("cannot encode the patch: {e}")),
                },
                _ => resp.deny("cannot encode the pod"),
            }
        }
    };
    metrics::observe("mutate", started);
    let review: AdmissionReview<DynamicObject> = resp.into_review();
    // The API documents `patch` as base64 (Go's []byte); kube-core writes an array
    // of numbers, which Go also reads, but clients and humans expect the string.
    let mut value = serde_json::to_value(&review).unwrap_or_default();
    if let Some(patch) = value.pointer_mut("/response/patch") {
        if let Ok(bytes) = serde_json::from_value::<Vec<u8>>(patch.clone()) {
            use base64::Engine;
            *patch = base64::engine::general_purpose::STANDARD.encode(bytes).into();
        }
    }
    json(&value)
}

/// How the scheduler runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Master address, host:port.
    pub master: String,
    /// How often the cache view is read from the master.
    pub refresh: std::time::Duration,
    pub weights: Weights,
    /// PEM certificate and key: serve HTTPS (the API server calls webhooks only
    /// over HTTPS); plain HTTP without them.
    pub tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

/// Poll the master, watch the cluster's PVCs and pods, and serve the routes on
/// `listener` until `stop` resolves.
pub async fn run(
    cfg: Config,
    listener: tokio::net::TcpListener,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), SchedulerError> {
    let state = State::default();
    let master = shoal_proto::auth::master(&cfg.master, |ep| shoal_proto::profile::Profile::CONTROL.apply(ep))
        .map_err(|e| SchedulerError::Config(format!("master address {:?}: {e}", cfg.master)))?;
    let poller = tokio::spawn(state::poll_master(state.clone(), master, cfg.refresh));
    let client = kube::Client::try_default().await?;
    let watcher = tokio::spawn(state::watch_cluster(state.clone(), client));
    let result = serve_http(listener, router(state, cfg.weights), cfg.tls, stop).await;
    poller.abort();
    watcher.abort();
    result
}

/// A server TLS configuration from PEM files (checked now, not at the first
/// connection).
pub async fn load_tls(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<axum_server::tls_rustls::RustlsConfig, SchedulerError> {
    axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
        .await
        .map_err(|e| SchedulerError::Config(format!("TLS certificate {} / key {}: {e}", cert.display(), key.display())))
}

/// Serve `app` on `listener`, over TLS when a certificate and key are given,
/// until `stop` resolves.
pub async fn serve_http(
    listener: tokio::net::TcpListener,
    app: Router,
    tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), SchedulerError> {
    let config = match tls {
        Some((cert, key)) => Some(load_tls(&cert, &key).await?),
        None => None,
    };
    serve_http_with(listener, app, config, stop).await
}

/// [`serve_http`] with a loaded TLS configuration.
pub async fn serve_http_with(
    listener: tokio::net::TcpListener,
    app: Router,
    tls: Option<axum_server::tls_rustls::RustlsConfig>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), SchedulerError> {
    let Some(config) = tls else {
        return axum::serve(listener, app).with_graceful_shutdown(stop).await.map_err(SchedulerError::Serve);
    };
    let handle = axum_server::Handle::new();
    let shutdown = handle.clone();
    tokio::spawn(async move {
        stop.await;
        shutdown.graceful_shutdown(Some(std::time::Duration::from_secs(5)));
    });
    let std_listener = listener.into_std().map_err(SchedulerError::Serve)?;
    axum_server::from_tcp_rustls(std_listener, config)
        .map_err(SchedulerError::Serve)?
        .handle(handle)
        .serve(app.into_make_service())
        .await
        .map_err(SchedulerError::Serve)
}

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("{0}")]
    Config(String),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("HTTP server: {0}")]
    Serve(std::io::Error),
}

/// The scheduler's Prometheus metrics (`shoal_scheduler_*`).
pub mod metrics {
    use std::sync::LazyLock;
    use std::time::Instant;

    use prometheus::{register_histogram_vec, register_int_counter_vec, register_int_gauge};
    use prometheus::{HistogramVec, IntCounterVec, IntGauge};

    pub static REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
        register_int_counter_vec!(
            "shoal_scheduler_requests_total",
            "Requests by endpoint and result",
            &["endpoint", "result"]
        )
        .expect("metric")
    });
    pub static SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
        register_histogram_vec!(
            "shoal_scheduler_request_duration_seconds",
            "Time to answer an extender or webhook request",
            &["endpoint"],
            vec![0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1]
        )
        .expect("metric")
    });
    pub static CACHE_DATASETS: LazyLock<IntGauge> = LazyLock::new(|| {
        register_int_gauge!("shoal_scheduler_cache_datasets", "Datasets in the cache view read from the master")
            .expect("metric")
    });

    pub fn observe(endpoint: &str, started: Instant) {
        REQUESTS.with_label_values(&[endpoint, "ok"]).inc();
        SECONDS.with_label_values(&[endpoint]).observe(started.elapsed().as_secs_f64());
    }
}

//! The `/metrics` endpoint every shoal process serves (Prometheus text format,
//! everything in the process's default registry), on its own port: HTTPS with the
//! process's server certificate when `SHOAL_TLS_CERT` and `SHOAL_TLS_KEY` are set.

use anyhow::{Context, Result};
use axum::routing::get;
use tokio_util::sync::CancellationToken;

/// Serve `/metrics` on `addr` until `stop`. With no address, nothing is served.
/// Prints `shoal <role> metrics on ADDR` once it listens.
pub async fn serve(addr: Option<&str>, role: &str, stop: CancellationToken) -> Result<()> {
    let Some(addr) = addr.filter(|a| !a.is_empty()) else { return Ok(()) };
    let tls = match shoal_proto::auth::server_tls_files()? {
        Some((cert, key)) => Some(shoal_scheduler::load_tls(&cert, &key).await?),
        None => None,
    };
    let listener =
        tokio::net::TcpListener::bind(addr).await.with_context(|| format!("{role}: cannot serve metrics on {addr}"))?;
    println!("shoal {role} metrics on {}{}", listener.local_addr()?, if tls.is_some() { " (https)" } else { "" });
    let app = axum::Router::new().route(
        "/metrics",
        get(|| async {
            ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], shoal_core::metrics::render())
        }),
    );
    tokio::spawn(async move {
        let res = shoal_scheduler::serve_http_with(listener, app, tls, stop.cancelled_owned()).await;
        if let Err(e) = res {
            tracing::warn!(error = %e, "metrics server stopped");
        }
    });
    Ok(())
}

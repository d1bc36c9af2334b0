//! The `/metrics` endpoint every shoal process serves (Prometheus text format,
//! everything in the process's default registry), on its own port.

use anyhow::{Context, Result};
use axum::routing::get;
use tokio_util::sync::CancellationToken;

/// Serve `/metrics` on `addr` until `stop`. With no address, nothing is served.
/// Prints `shoal <role> metrics on ADDR` once it listens.
pub async fn serve(addr: Option<&str>, role: &str, stop: CancellationToken) -> Result<()> {
    let Some(addr) = addr.filter(|a| !a.is_empty()) else { return Ok(()) };
    let listener =
        tokio::net::TcpListener::bind(addr).await.with_context(|| format!("{role}: cannot serve metrics on {addr}"))?;
    println!("shoal {role} metrics on {}", listener.local_addr()?);
    let app = axum::Router::new().route(
        "/metrics",
        get(|| async {
            ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], shoal_core::metrics::render())
        }),
    );
    tokio::spawn(async move {
        let res = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await;
        if let Err(e) = res {
            tracing::warn!(error = %e, "metrics server stopped");
        }
    });
    Ok(())
}

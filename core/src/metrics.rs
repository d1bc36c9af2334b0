//! Process-wide Prometheus metrics plumbing: everything registers in the default
//! registry (one `/metrics` per process, served by the binary). Owns the
//! under-store's request metrics (`shoal_store_*`).

use std::sync::LazyLock;

use prometheus::{register_histogram_vec, register_int_counter_vec, HistogramVec, IntCounterVec};

pub static STORE_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "shoal_store_request_duration_seconds",
        "Under-store request latency by operation (stat, list, read)",
        &["op"],
        vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
    )
    .expect("metric")
});
pub static STORE_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "shoal_store_requests_total",
        "Under-store requests by operation and result",
        &["op", "result"]
    )
    .expect("metric")
});
pub static STORE_BYTES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!("shoal_store_read_bytes_total", "Bytes read from under-stores", &["scheme"])
        .expect("metric")
});

/// Count one store request and its latency.
pub fn store_request(op: &str, ok: bool, started: std::time::Instant) {
    STORE_REQUESTS.with_label_values(&[op, if ok { "ok" } else { "error" }]).inc();
    STORE_SECONDS.with_label_values(&[op]).observe(started.elapsed().as_secs_f64());
}

/// Everything registered in this process, in the Prometheus text format.
pub fn render() -> String {
    use prometheus::Encoder;
    let mut buf = Vec::new();
    let enc = prometheus::TextEncoder::new();
    if let Err(e) = enc.encode(&prometheus::gather(), &mut buf) {
        return format!("# encoding metrics failed: {e}\n");
    }
    String::from_utf8(buf).unwrap_or_default()
}

//! The FUSE client's Prometheus metrics (`shoal_fuse_*`), registered in the
//! default registry on first use.

use std::sync::LazyLock;

use prometheus::{register_histogram_vec, register_int_counter, register_int_counter_vec, register_int_gauge};
use prometheus::{HistogramVec, IntCounter, IntCounterVec, IntGauge};

pub static OPS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!("shoal_fuse_ops_total", "FUSE operations by kind and result", &["op", "result"])
        .expect("metric")
});
pub static OP_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "shoal_fuse_op_duration_seconds",
        "FUSE operation latency",
        &["op"],
        vec![0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]
    )
    .expect("metric")
});
pub static READ_BYTES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("shoal_fuse_read_bytes_total", "Bytes returned to readers").expect("metric")
});
pub static BLOCK_SOURCE: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "shoal_fuse_block_fetches_total",
        "Blocks fetched by source (short_circuit, worker, store, failed; *_range: only the range a random read wanted)",
        &["source"]
    )
    .expect("metric")
});

pub static DIR_PREFETCH: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "shoal_fuse_dir_prefetch_blocks_total",
        "Small files a directory prefetch asked the owning worker to cache, by result (loaded, cached, failed)",
        &["result"]
    )
    .expect("metric")
});

pub static DIR_PREFETCH_QUEUED: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "shoal_fuse_dir_prefetch_queued",
        "Small files directory prefetches have queued or in flight and not finished (0: the prefetch is idle)"
    )
    .expect("metric")
});

pub static ORDER_PREFETCH: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "shoal_fuse_order_prefetch_blocks_total",
        "Blocks an order-aware prefetch asked the owning worker to cache, by result (loaded, cached, failed)",
        &["result"]
    )
    .expect("metric")
});

/// Count one operation and its latency.
pub fn op(name: &str, ok: bool, started: std::time::Instant) {
    OPS.with_label_values(&[name, if ok { "ok" } else { "error" }]).inc();
    OP_SECONDS.with_label_values(&[name]).observe(started.elapsed().as_secs_f64());
}

pub static LOCATION_LOOKUPS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "shoal_fuse_location_lookups_total",
        "Block-location lookups asked of the master (one per file, reused for a few seconds)"
    )
    .expect("metric")
});

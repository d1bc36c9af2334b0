//! The worker's Prometheus metrics (`shoal_worker_*`), registered in the default
//! registry on first use.

use std::sync::LazyLock;

use prometheus::{
    register_histogram, register_histogram_vec, register_int_counter, register_int_counter_vec, register_int_gauge_vec,
};
use prometheus::{Histogram, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec};

pub static HITS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!("shoal_worker_cache_hits_total", "Block reads served from a tier", &["tier"])
        .expect("metric")
});
pub static MISSES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("shoal_worker_cache_misses_total", "Block reads that went to the store").expect("metric")
});
pub static SERVED_BYTES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "shoal_worker_served_bytes_total",
        "Bytes served, by where they came from (mem, ssd, store)",
        &["source"]
    )
    .expect("metric")
});
pub static PEER_READS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "shoal_worker_peer_reads_total",
        "Fills that asked a peer worker for its copy, by result (copied, not_cached, failed)",
        &["result"]
    )
    .expect("metric")
});
pub static PEER_READ_BYTES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("shoal_worker_peer_read_bytes_total", "Bytes of blocks copied from peer workers")
        .expect("metric")
});
pub static STORE_READ_BYTES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("shoal_worker_store_read_bytes_total", "Bytes read from under-stores").expect("metric")
});
pub static EVICTIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "shoal_worker_evictions_total",
        "Blocks evicted from a tier (demoted or dropped)",
        &["tier"]
    )
    .expect("metric")
});
pub static DEMOTIONS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("shoal_worker_demotions_total", "Blocks moved from MEM to SSD on eviction").expect("metric")
});
pub static CORRUPT: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("shoal_worker_corrupt_blocks_total", "Block files dropped because they failed their checksum")
        .expect("metric")
});
pub static TIER_BLOCKS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!("shoal_worker_tier_blocks", "Blocks held per tier", &["tier"]).expect("metric")
});
pub static TIER_USED: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!("shoal_worker_tier_used_bytes", "Bytes used per tier", &["tier"]).expect("metric")
});
pub static TIER_QUOTA: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!("shoal_worker_tier_quota_bytes", "Byte quota per tier", &["tier"]).expect("metric")
});
pub static FILL_WAIT: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "shoal_worker_fill_wait_seconds",
        "Time a block read from the store waited for room in --fill-memory"
    )
    .expect("metric")
});
pub static REQUEST_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!("shoal_worker_request_duration_seconds", "gRPC request latency by method", &["method"])
        .expect("metric")
});

/// Refresh the tier gauges from the store.
pub fn update_tiers(store: &crate::BlockStore) {
    let (mut all_used, mut all_quota) = (0u64, 0u64);
    for (kind, _, quota, used, blocks, _) in store.tier_stats() {
        let k = kind.as_str();
        TIER_BLOCKS.with_label_values(&[k]).set(blocks as i64);
        TIER_USED.with_label_values(&[k]).set(used as i64);
        TIER_QUOTA.with_label_values(&[k]).set(quota as i64);
        all_used += used;
        all_quota += quota;
    }
    CACHE_USED_RATIO.set(if all_quota == 0 { 0.0 } else { all_used as f64 / all_quota as f64 });
}

/// Used bytes over quota of all tiers: what an autoscaler scales the cache on.
pub static CACHE_USED_RATIO: LazyLock<prometheus::Gauge> = LazyLock::new(|| {
    prometheus::register_gauge!("shoal_worker_cache_used_ratio", "Bytes used over the byte quota, all tiers together")
        .expect("metric")
});

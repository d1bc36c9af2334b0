//! The master's Prometheus metrics (`shoal_master_*`), registered in the default
//! registry on first use.

use std::sync::LazyLock;

use prometheus::{register_int_counter, register_int_counter_vec, register_int_gauge, register_int_gauge_vec};
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec};

pub static WORKERS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!("shoal_master_workers", "Known workers by state (alive, lost)", &["state"]).expect("metric")
});
pub static CACHED_BLOCKS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!("shoal_master_cached_blocks", "Distinct blocks cached on some worker").expect("metric")
});
pub static SYNC_ENTRIES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!("shoal_master_sync_entries_total", "Store entries listed by metadata syncs", &["dataset"])
        .expect("metric")
});
pub static SYNC_CHANGES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "shoal_master_sync_changes_total",
        "Namespace changes applied by syncs (added, changed, deleted)",
        &["dataset", "change"]
    )
    .expect("metric")
});
pub static SYNCS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "shoal_master_syncs_total",
        "Metadata syncs by result (ok, error)",
        &["dataset", "result"]
    )
    .expect("metric")
});
pub static PREWARM_BLOCKS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "shoal_master_prewarm_blocks_total",
        "Prewarm block outcomes (loaded, already_cached, failed)",
        &["dataset", "result"]
    )
    .expect("metric")
});
pub static PREWARM_BYTES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "shoal_master_prewarm_bytes_total",
        "Bytes confirmed cached by prewarm jobs",
        &["dataset"]
    )
    .expect("metric")
});
pub static MOVED_BLOCKS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "shoal_master_moved_blocks_total",
        "Block copies to new owners by drains and rebalancing, by result (moved, failed)",
        &["result"]
    )
    .expect("metric")
});
pub static PREWARM_RUNNING: LazyLock<IntGauge> =
    LazyLock::new(|| register_int_gauge!("shoal_master_prewarm_jobs_running", "Prewarm jobs running").expect("metric"));
pub static RAFT_APPLIED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("shoal_master_raft_applied_total", "Replicated log entries applied to this master's state")
        .expect("metric")
});
pub static RAFT_SNAPSHOTS_INSTALLED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "shoal_master_raft_snapshots_installed_total",
        "Snapshots of the state installed from a leader"
    )
    .expect("metric")
});
pub static RAFT_SNAPSHOT_BYTES: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!("shoal_master_raft_snapshot_bytes", "Size of the last snapshot this master built")
        .expect("metric")
});
pub static RAFT_LEADER: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!("shoal_master_raft_serving", "1 while this master leads and serves the master API")
        .expect("metric")
});
pub static RAFT_TERM: LazyLock<IntGauge> =
    LazyLock::new(|| register_int_gauge!("shoal_master_raft_term", "This master's current Raft term").expect("metric"));
pub static RAFT_ELECTIONS_WON: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("shoal_master_raft_leaderships_total", "Times this master became the serving leader")
        .expect("metric")
});

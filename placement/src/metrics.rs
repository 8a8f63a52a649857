//! Metrics of the placement driver (`docs/metrics.md` lists every metric).

use std::sync::LazyLock;

use prometheus::{
    register_int_counter, register_int_counter_vec, register_int_gauge, register_int_gauge_vec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec,
};

/// Registered nodes by liveness (`up`, `down`), as this member sees them.
pub static NODES: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "redraft_placement_nodes",
        "Registered shard nodes by liveness",
        &["state"]
    )
    .expect("metric registers once")
});
/// Shards in the routing table.
pub static SHARDS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!("redraft_placement_shards", "Shards in the routing table").expect("metric registers once")
});
/// Shards whose leader no heartbeat has reported recently.
pub static SHARDS_WITHOUT_LEADER: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "redraft_placement_shards_without_leader",
        "Shards with no leader reported by a live node"
    )
    .expect("metric registers once")
});
/// Routing-table version.
pub static ROUTING_VERSION: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!("redraft_placement_routing_version", "Current routing-table version")
        .expect("metric registers once")
});
/// Scheduling operators (replica moves, splits) in flight; none exist yet.
pub static OPERATORS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "redraft_placement_operators_in_flight",
        "Scheduling operators in flight"
    )
    .expect("metric registers once")
});
/// 1 on the PD leader, 0 elsewhere.
pub static IS_LEADER: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "redraft_placement_is_leader",
        "1 when this member leads the placement group"
    )
    .expect("metric registers once")
});
/// Heartbeats received.
pub static HEARTBEATS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("redraft_placement_heartbeats_total", "Node heartbeats received")
        .expect("metric registers once")
});

/// Shards whose last consistency check found replicas that differ.
pub static DIGEST_MISMATCH: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "redraft_shard_digest_mismatch",
        "Shards whose last consistency check found replicas whose data differs"
    )
    .expect("metric registers once")
});
/// When the last consistency check of any shard finished.
pub static VERIFY_LAST_CHECK: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "redraft_verify_last_check_timestamp_seconds",
        "Unix time at which the last consistency check of a shard finished"
    )
    .expect("metric registers once")
});
/// Consistency checks by outcome (`agree`, `differ`, `failed`).
pub static VERIFY_CHECKS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "redraft_verify_checks_total",
        "Consistency checks of one shard, by outcome",
        &["result"]
    )
    .expect("metric registers once")
});

/// Unix time of the last backup that finished whole.
pub static BACKUP_LAST_SUCCESS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "redraft_backup_last_success_timestamp_seconds",
        "Unix time at which the last whole backup finished"
    )
    .expect("metric registers once")
});
/// How long the last whole backup took, milliseconds.
pub static BACKUP_DURATION_MS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "redraft_backup_last_duration_milliseconds",
        "How long the last whole backup took, from the cut to its manifest"
    )
    .expect("metric registers once")
});
/// Bytes of the last whole backup's files.
pub static BACKUP_BYTES: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!("redraft_backup_last_bytes", "Bytes of the last whole backup's files")
        .expect("metric registers once")
});
/// Backups by outcome.
pub static BACKUPS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!("redraft_backups_total", "Backups by outcome", &["result"])
        .expect("metric registers once")
});
/// The longest client-answer hold of the last backup's cut, milliseconds.
pub static BACKUP_HOLD_MS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "redraft_backup_last_hold_milliseconds",
        "How long the last backup's cut held client answers at most"
    )
    .expect("metric registers once")
});

/// Registers every metric.
pub fn init() {
    redraft_raft_storage::metrics::init();
    for state in ["up", "down"] {
        NODES.with_label_values(&[state]);
    }
    LazyLock::force(&SHARDS);
    LazyLock::force(&SHARDS_WITHOUT_LEADER);
    LazyLock::force(&ROUTING_VERSION);
    LazyLock::force(&OPERATORS);
    LazyLock::force(&IS_LEADER);
    LazyLock::force(&HEARTBEATS);
    LazyLock::force(&DIGEST_MISMATCH);
    LazyLock::force(&VERIFY_LAST_CHECK);
    for result in ["agree", "differ", "failed"] {
        VERIFY_CHECKS.with_label_values(&[result]);
    }
    LazyLock::force(&BACKUP_LAST_SUCCESS);
    LazyLock::force(&BACKUP_DURATION_MS);
    LazyLock::force(&BACKUP_BYTES);
    LazyLock::force(&BACKUP_HOLD_MS);
    for result in ["ok", "failed"] {
        BACKUPS.with_label_values(&[result]);
    }
}

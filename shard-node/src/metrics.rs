//! Metrics of a shard node. Labels have bounded values only: no keys, no shard
//! ids (`docs/metrics.md` lists every metric).

use std::sync::LazyLock;

use prometheus::{
    register_histogram, register_int_counter, register_int_counter_vec, register_int_gauge, register_int_gauge_vec,
    Histogram, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
};
use redraft_common::http::LATENCY_BUCKETS;

macro_rules! metric {
    ($name:ident: $ty:ty = $make:expr) => {
        #[doc = concat!("The `", stringify!($name), "` metric.")]
        pub static $name: LazyLock<$ty> = LazyLock::new(|| $make.expect("metric registers once"));
    };
}

metric!(PROPOSALS: IntCounterVec = register_int_counter_vec!(
    "redraft_node_raft_proposals_total", "Writes proposed to shard Raft groups, by outcome", &["result"]));
metric!(PROPOSAL_SECONDS: Histogram = register_histogram!(
    "redraft_node_proposal_duration_seconds", "Time from proposing a write to its apply (commit + apply)",
    LATENCY_BUCKETS.to_vec()));
metric!(ENTRY_WRITES: Histogram = register_histogram!(
    "redraft_node_entry_writes", "Client writes carried by one proposed Raft entry",
    prometheus::exponential_buckets(1.0, 2.0, 11).expect("buckets")));
metric!(READS: IntCounterVec = register_int_counter_vec!(
    "redraft_node_reads_total", "Linearizable reads, by outcome (lease: served from the leader lease; ok: after a ReadIndex round)", &["result"]));
metric!(READ_INDEX_SECONDS: Histogram = register_histogram!(
    "redraft_node_read_index_duration_seconds", "Time of one ReadIndex round (leadership confirmation and apply wait)",
    LATENCY_BUCKETS.to_vec()));
metric!(ROUND_READS: Histogram = register_histogram!(
    "redraft_node_read_index_round_reads", "Linearizable reads served by one ReadIndex round",
    prometheus::exponential_buckets(1.0, 2.0, 11).expect("buckets")));
metric!(APPLY_SECONDS: Histogram = register_histogram!(
    "redraft_node_apply_duration_seconds", "Time to apply one run of committed entries to RocksDB",
    LATENCY_BUCKETS.to_vec()));
metric!(APPLIED_ENTRIES: IntCounter = register_int_counter!(
    "redraft_node_applied_entries_total", "Committed entries applied to state machines"));
metric!(LEADERS: IntGauge = register_int_gauge!("redraft_node_leaders", "Shards this node leads"));
metric!(REPLICAS: IntGauge = register_int_gauge!("redraft_node_replicas", "Shard replicas hosted on this node"));
metric!(QUIESCED: IntGauge = register_int_gauge!(
    "redraft_node_quiesced_replicas", "Replicas of idle shards whose Raft timers are stopped"));
metric!(LEADER_CHANGES: IntCounter = register_int_counter!(
    "redraft_node_leader_changes_total", "Times this node gained or lost the leadership of a shard"));
metric!(REPLICATION_LAG: IntGauge = register_int_gauge!(
    "redraft_node_replication_lag_entries",
    "Largest number of log entries a follower is behind, over the shards this node leads"));
metric!(SNAPSHOTS: IntCounterVec = register_int_counter_vec!(
    "redraft_node_snapshots_total", "Snapshots built (to send or compact) and installed (received)", &["kind"]));
metric!(ROCKSDB_BYTES: IntGaugeVec = register_int_gauge_vec!(
    "redraft_node_rocksdb_size_bytes", "RocksDB size (SST files + memtables) by column family", &["cf"]));

/// Registers every metric of this node, so all appear in `/metrics` from the start.
pub fn init() {
    redraft_raft_storage::metrics::init();
    for result in ["ok", "not_leader", "unknown"] {
        PROPOSALS.with_label_values(&[result]);
    }
    for result in ["lease", "ok", "not_leader"] {
        READS.with_label_values(&[result]);
    }
    for kind in ["built", "installed"] {
        SNAPSHOTS.with_label_values(&[kind]);
    }
    LazyLock::force(&PROPOSAL_SECONDS);
    LazyLock::force(&ENTRY_WRITES);
    LazyLock::force(&READ_INDEX_SECONDS);
    LazyLock::force(&ROUND_READS);
    LazyLock::force(&APPLY_SECONDS);
    LazyLock::force(&APPLIED_ENTRIES);
    LazyLock::force(&LEADERS);
    LazyLock::force(&REPLICAS);
    LazyLock::force(&QUIESCED);
    LazyLock::force(&LEADER_CHANGES);
    LazyLock::force(&REPLICATION_LAG);
    LazyLock::force(&ROCKSDB_BYTES);
}

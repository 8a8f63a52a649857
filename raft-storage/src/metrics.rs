//! Metrics of the Raft log committer (shared by shard nodes and the placement
//! driver; `docs/metrics.md` lists every metric).

use std::sync::LazyLock;

use prometheus::{register_histogram, register_int_counter, Histogram, IntCounter};

/// Time to write one batch of log mutations, fsync included.
pub static LOG_WRITE_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "redraft_raft_log_write_duration_seconds",
        "Time to write one batch of Raft log mutations, fsync included",
        redraft_common::http::LATENCY_BUCKETS.to_vec()
    )
    .expect("metric registers once")
});

/// Appends (and other log mutations) per batch: one fsync covers them all.
pub static LOG_BATCH_REQUESTS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "redraft_raft_log_batch_requests",
        "Log mutations (appends of any group, votes, truncations) sharing one write and fsync",
        vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0]
    )
    .expect("metric registers once")
});

/// Snapshot bytes this process sent to other members (replica moves, catch-up).
pub static SNAPSHOT_BYTES_SENT: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "redraft_raft_snapshot_sent_bytes_total",
        "Snapshot bytes sent to other members (replica moves and catch-up)"
    )
    .expect("metric registers once")
});

/// Registers every metric of this crate.
pub fn init() {
    LazyLock::force(&LOG_WRITE_SECONDS);
    LazyLock::force(&LOG_BATCH_REQUESTS);
    LazyLock::force(&SNAPSHOT_BYTES_SENT);
}

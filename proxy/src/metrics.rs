//! Metrics of the proxy. The `command` label takes only names from the command
//! table (or `unknown`), so its cardinality is bounded (`docs/metrics.md`).

use std::sync::LazyLock;

use prometheus::{
    register_histogram_vec, register_int_counter, register_int_counter_vec, register_int_gauge, HistogramVec,
    IntCounter, IntCounterVec, IntGauge,
};

/// Commands by name and result (`ok`, `error`).
pub static COMMANDS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "redraft_proxy_commands_total",
        "Commands by name and result",
        &["command", "result"]
    )
    .expect("metric registers once")
});
/// Command latency by name.
pub static COMMAND_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "redraft_proxy_command_duration_seconds",
        "Time from parsing a command to having its reply",
        &["command"],
        redraft_common::http::LATENCY_BUCKETS.to_vec()
    )
    .expect("metric registers once")
});
/// Open client connections.
pub static CONNECTIONS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!("redraft_proxy_connections", "Open client connections").expect("metric registers once")
});
/// Clients waiting in a blocking command (BLPOP, BLMOVE, BZPOPMIN, ...).
pub static BLOCKED_CLIENTS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!("redraft_proxy_blocked_clients", "Clients waiting in a blocking command")
        .expect("metric registers once")
});
/// Client connections accepted.
pub static CONNECTIONS_ACCEPTED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "redraft_proxy_connections_accepted_total",
        "Client connections accepted"
    )
    .expect("metric registers once")
});
/// Retries by cause (`not_leader`, `no_shard`, `wrong_shard`, `unreachable`).
pub static RETRIES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "redraft_proxy_retries_total",
        "Requests retried at another node, by cause",
        &["cause"]
    )
    .expect("metric registers once")
});
/// Routing-table version in use.
pub static ROUTING_VERSION: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!("redraft_proxy_routing_version", "Routing-table version in use").expect("metric registers once")
});

/// Registers every metric.
pub fn init() {
    for cause in ["not_leader", "no_shard", "wrong_shard", "unreachable"] {
        RETRIES.with_label_values(&[cause]);
    }
    LazyLock::force(&COMMANDS);
    LazyLock::force(&COMMAND_SECONDS);
    LazyLock::force(&CONNECTIONS);
    LazyLock::force(&CONNECTIONS_ACCEPTED);
    LazyLock::force(&BLOCKED_CLIENTS);
    LazyLock::force(&ROUTING_VERSION);
}

/// Counters INFO shows, read back from the metrics.
pub struct Snapshot {
    /// Open connections.
    pub connected: i64,
    /// Clients waiting in a blocking command.
    pub blocked: i64,
    /// Connections accepted.
    pub accepted: u64,
    /// Commands processed.
    pub commands: u64,
    /// Requests retried at another node.
    pub retries: u64,
}

/// Reads the counters INFO shows.
pub fn snapshot() -> Snapshot {
    let total = |vec: &IntCounterVec| -> u64 {
        use prometheus::core::Collector;
        vec.collect()
            .iter()
            .flat_map(|family| family.get_metric())
            .map(|m| m.get_counter().get_value() as u64)
            .sum()
    };
    Snapshot {
        connected: CONNECTIONS.get(),
        blocked: BLOCKED_CLIENTS.get(),
        accepted: CONNECTIONS_ACCEPTED.get(),
        commands: total(&COMMANDS),
        retries: total(&RETRIES),
    }
}

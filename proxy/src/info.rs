//! INFO: Redis-style sections describing the proxy and the cluster, so redis-cli
//! and monitoring tools that read INFO work through the proxy.

use std::fmt::Write;
use std::sync::OnceLock;
use std::time::Instant;

use crate::route::Router;

/// The Redis version the proxy reports (INFO, HELLO): the command set and
/// replies follow Redis 7.
pub use redraft_common::REDIS_VERSION;

/// When the process started (first INFO call at the latest).
static STARTED: OnceLock<Instant> = OnceLock::new();

/// Records the start time.
pub fn mark_start() {
    STARTED.get_or_init(Instant::now);
}

/// Renders INFO's text: every section, or the one named (`server`, `clients`,
/// `stats`, `cluster`, `keyspace`; `all`/`everything`/`default` for all).
/// `keys` is the cluster's key count, when it could be counted.
pub fn render(router: &Router, section: Option<&str>, keys: Option<i64>) -> String {
    let table = router.table();
    let stats = crate::metrics::snapshot();
    let uptime = STARTED.get_or_init(Instant::now).elapsed().as_secs();
    let wanted = |name: &str| matches!(section, None | Some("all" | "everything" | "default")) || section == Some(name);
    let mut s = String::new();
    if wanted("server") {
        let _ = write!(
            s,
            "# Server\r\nredis_version:{REDIS_VERSION}\r\nredraft_version:{}\r\nredis_mode:standalone\r\nos:{}\r\narch_bits:64\r\nprocess_id:{}\r\nuptime_in_seconds:{uptime}\r\nuptime_in_days:{}\r\n\r\n",
            env!("CARGO_PKG_VERSION"),
            std::env::consts::OS,
            std::process::id(),
            uptime / 86_400,
        );
    }
    if wanted("clients") {
        let _ = write!(
            s,
            "# Clients\r\nconnected_clients:{}\r\nmaxclients:{}\r\nblocked_clients:{}\r\n\r\n",
            stats.connected,
            crate::MAX_CLIENTS,
            stats.blocked
        );
    }
    if wanted("stats") {
        let _ = write!(
            s,
            "# Stats\r\ntotal_connections_received:{}\r\ntotal_commands_processed:{}\r\nredraft_retries:{}\r\n\r\n",
            stats.accepted, stats.commands, stats.retries,
        );
    }
    if wanted("cluster") {
        let leaders = table.shards.values().filter(|s| s.leader.is_some()).count();
        let _ = write!(
            s,
            "# Cluster\r\ncluster_enabled:0\r\nredraft_routing_version:{}\r\nredraft_nodes:{}\r\nredraft_shards:{}\r\nredraft_shards_with_leader:{leaders}\r\nredraft_vnodes:{}\r\n\r\n",
            table.version,
            table.nodes.len(),
            table.shards.len(),
            table.vnode_count,
        );
    }
    if wanted("keyspace") {
        s.push_str("# Keyspace\r\n");
        if let Some(n) = keys.filter(|&n| n > 0) {
            let _ = write!(s, "db0:keys={n},expires=0,avg_ttl=0\r\n");
        }
    }
    s
}

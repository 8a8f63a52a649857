//! INFO: Redis-style sections describing the proxy and the cluster.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use crate::Shared;

/// Renders INFO's text.
pub fn render(shared: &Shared) -> String {
    let table = shared.router.table();
    let mut s = String::new();
    let uptime = shared.started.elapsed().as_secs();
    let _ = write!(
        s,
        "# Server\r\nredis_version:7.2.0\r\nredraft_version:{}\r\nredis_mode:standalone\r\nos:{}\r\narch_bits:64\r\nprocess_id:{}\r\ntcp_port:{}\r\nuptime_in_seconds:{uptime}\r\n\r\n",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::OS,
        std::process::id(),
        shared.port,
    );
    let _ = write!(
        s,
        "# Clients\r\nconnected_clients:{}\r\n\r\n# Stats\r\ntotal_connections_received:{}\r\ntotal_commands_processed:{}\r\n\r\n",
        shared.stats.connected.load(Ordering::Relaxed),
        shared.stats.accepted.load(Ordering::Relaxed),
        shared.stats.commands.load(Ordering::Relaxed),
    );
    let _ = write!(
        s,
        "# Cluster\r\ncluster_enabled:0\r\nredraft_routing_version:{}\r\nredraft_nodes:{}\r\nredraft_shards:{}\r\n\r\n# Keyspace\r\n",
        table.version,
        table.nodes.len(),
        table.shards.len(),
    );
    s
}

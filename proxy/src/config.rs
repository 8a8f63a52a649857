//! CONFIG as Redis 7.0 knows it: every parameter Redis 7.0 lists, with its
//! default, under its name and its older aliases (`hash-max-ziplist-entries`
//! for `hash-max-listpack-entries`, `slave-*` for `replica-*`, ...).
//!
//! Most of Redis's parameters tune machinery Redraft does not have (RDB saves,
//! the AOF, encodings, replication of a single server). CONFIG SET accepts
//! them with Redis's own checks and messages, and the placement driver
//! remembers the values for the whole cluster, so every proxy answers CONFIG
//! GET alike and tools that set them (test suites, client libraries, admin
//! consoles) keep working; they change no behaviour. Redis's immutable
//! parameters stay immutable, and so do the ones Redraft fixes per process
//! (`port`, `bind`, `tls-port`, `maxclients`); `requirepass` sets the default
//! user's password (see [`crate::acl`]). docs/decisions.md, CONFIG.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use redraft_common::resp::Frame;
use redraft_common::wire::{PdRequest, PdResponse};

use crate::acl::ask_placement;
use crate::admin::{error, unknown_subcommand, wrong_arity};
use crate::route::Router;

/// How a value is checked before CONFIG SET accepts it.
enum Kind {
    /// Not settable at run time.
    Immutable,
    /// `yes` or `no`.
    Bool,
    /// A signed integer.
    Integer,
    /// An integer with an optional unit (`b`, `k`, `kb`, `m`, `mb`, `g`, `gb`).
    Memory,
    /// One of these words.
    OneOf(&'static [&'static str]),
    /// Keyspace notification classes (`notify-keyspace-events`).
    KeyspaceEvents,
    /// Anything (lists, limits and names that Redis parses further).
    Text,
}

/// Redis 7.0's parameters (by their current names) and defaults, except where
/// Redraft's behaviour differs: `appendonly yes` and `appendfsync always` (every
/// write is made durable), `databases 1`, `save ""` (no snapshots to schedule),
/// `daemonize no`, `protected-mode no`.
const PARAMETERS: &[(&str, &str, Kind)] = &[
    (
        "acl-pubsub-default",
        "resetchannels",
        Kind::OneOf(&["allchannels", "resetchannels"]),
    ),
    ("aclfile", "", Kind::Immutable),
    ("acllog-max-len", "128", Kind::Integer),
    ("active-defrag-cycle-max", "25", Kind::Integer),
    ("active-defrag-cycle-min", "1", Kind::Integer),
    ("active-defrag-ignore-bytes", "104857600", Kind::Memory),
    ("active-defrag-max-scan-fields", "1000", Kind::Integer),
    ("active-defrag-threshold-lower", "10", Kind::Integer),
    ("active-defrag-threshold-upper", "100", Kind::Integer),
    ("active-expire-effort", "1", Kind::Integer),
    ("activedefrag", "no", Kind::Bool),
    ("activerehashing", "yes", Kind::Bool),
    ("always-show-logo", "no", Kind::Immutable),
    ("aof-disable-auto-gc", "no", Kind::Bool),
    ("aof-load-truncated", "yes", Kind::Bool),
    ("aof-rewrite-incremental-fsync", "yes", Kind::Bool),
    ("aof-timestamp-enabled", "no", Kind::Bool),
    ("aof-use-rdb-preamble", "yes", Kind::Bool),
    ("aof_rewrite_cpulist", "", Kind::Immutable),
    ("appenddirname", "appendonlydir", Kind::Immutable),
    ("appendfilename", "appendonly.aof", Kind::Immutable),
    ("appendfsync", "always", Kind::OneOf(&["everysec", "always", "no"])),
    ("appendonly", "yes", Kind::Bool),
    ("auto-aof-rewrite-min-size", "67108864", Kind::Memory),
    ("auto-aof-rewrite-percentage", "100", Kind::Integer),
    ("bgsave_cpulist", "", Kind::Immutable),
    ("bind", "* -::*", Kind::Immutable),
    ("bind-source-addr", "", Kind::Text),
    ("bio_cpulist", "", Kind::Immutable),
    ("busy-reply-threshold", "5000", Kind::Integer),
    (
        "client-output-buffer-limit",
        "normal 0 0 0 slave 268435456 67108864 60 pubsub 33554432 8388608 60",
        Kind::Text,
    ),
    ("client-query-buffer-limit", "1073741824", Kind::Memory),
    ("cluster-allow-pubsubshard-when-down", "yes", Kind::Bool),
    ("cluster-allow-reads-when-down", "no", Kind::Bool),
    ("cluster-allow-replica-migration", "yes", Kind::Bool),
    ("cluster-announce-bus-port", "0", Kind::Integer),
    ("cluster-announce-hostname", "", Kind::Text),
    ("cluster-announce-ip", "", Kind::Text),
    ("cluster-announce-port", "0", Kind::Integer),
    ("cluster-announce-tls-port", "0", Kind::Integer),
    ("cluster-config-file", "nodes.conf", Kind::Immutable),
    ("cluster-enabled", "no", Kind::Immutable),
    ("cluster-link-sendbuf-limit", "0", Kind::Memory),
    ("cluster-migration-barrier", "1", Kind::Integer),
    ("cluster-node-timeout", "15000", Kind::Integer),
    ("cluster-port", "0", Kind::Immutable),
    (
        "cluster-preferred-endpoint-type",
        "ip",
        Kind::OneOf(&["ip", "hostname", "unknown-endpoint"]),
    ),
    ("cluster-replica-no-failover", "no", Kind::Bool),
    ("cluster-replica-validity-factor", "10", Kind::Integer),
    ("cluster-require-full-coverage", "yes", Kind::Bool),
    ("crash-log-enabled", "yes", Kind::Bool),
    ("crash-memcheck-enabled", "yes", Kind::Bool),
    ("daemonize", "no", Kind::Immutable),
    ("databases", "1", Kind::Immutable),
    ("dbfilename", "dump.rdb", Kind::Immutable),
    ("dir", "", Kind::Immutable),
    ("disable-thp", "yes", Kind::Immutable),
    ("dynamic-hz", "yes", Kind::Bool),
    ("enable-debug-command", "no", Kind::Immutable),
    ("enable-module-command", "no", Kind::Immutable),
    ("enable-protected-configs", "no", Kind::Immutable),
    ("hash-max-listpack-entries", "512", Kind::Integer),
    ("hash-max-listpack-value", "64", Kind::Memory),
    ("hll-sparse-max-bytes", "3000", Kind::Memory),
    ("hz", "10", Kind::Integer),
    ("ignore-warnings", "", Kind::Text),
    ("io-threads", "1", Kind::Immutable),
    ("io-threads-do-reads", "no", Kind::Immutable),
    ("jemalloc-bg-thread", "yes", Kind::Bool),
    ("latency-monitor-threshold", "0", Kind::Integer),
    ("latency-tracking", "yes", Kind::Bool),
    ("latency-tracking-info-percentiles", "50 99 99.9", Kind::Text),
    ("lazyfree-lazy-eviction", "no", Kind::Bool),
    ("lazyfree-lazy-expire", "no", Kind::Bool),
    ("lazyfree-lazy-server-del", "no", Kind::Bool),
    ("lazyfree-lazy-user-del", "no", Kind::Bool),
    ("lazyfree-lazy-user-flush", "no", Kind::Bool),
    ("lfu-decay-time", "1", Kind::Integer),
    ("lfu-log-factor", "10", Kind::Integer),
    ("list-compress-depth", "0", Kind::Integer),
    ("list-max-listpack-size", "-2", Kind::Integer),
    ("logfile", "", Kind::Immutable),
    (
        "loglevel",
        "notice",
        Kind::OneOf(&["debug", "verbose", "notice", "warning"]),
    ),
    ("masterauth", "", Kind::Text),
    ("masteruser", "", Kind::Text),
    ("maxclients", "10000", Kind::Immutable),
    ("maxmemory", "0", Kind::Memory),
    ("maxmemory-clients", "0", Kind::Text),
    ("maxmemory-eviction-tenacity", "10", Kind::Integer),
    (
        "maxmemory-policy",
        "noeviction",
        Kind::OneOf(&[
            "volatile-lru",
            "volatile-lfu",
            "volatile-random",
            "volatile-ttl",
            "allkeys-lru",
            "allkeys-lfu",
            "allkeys-random",
            "noeviction",
        ]),
    ),
    ("maxmemory-samples", "5", Kind::Integer),
    ("min-replicas-max-lag", "10", Kind::Integer),
    ("min-replicas-to-write", "0", Kind::Integer),
    ("no-appendfsync-on-rewrite", "no", Kind::Bool),
    ("notify-keyspace-events", "", Kind::KeyspaceEvents),
    (
        "oom-score-adj",
        "no",
        Kind::OneOf(&["no", "yes", "relative", "absolute"]),
    ),
    ("oom-score-adj-values", "0 200 800", Kind::Text),
    ("pidfile", "", Kind::Immutable),
    ("port", "26401", Kind::Immutable),
    ("proc-title-template", "{title} {listen-addr} {server-mode}", Kind::Text),
    (
        "propagation-error-behavior",
        "ignore",
        Kind::OneOf(&["ignore", "panic", "panic-on-replicas"]),
    ),
    ("protected-mode", "no", Kind::Bool),
    ("proto-max-bulk-len", "536870912", Kind::Memory),
    ("rdb-del-sync-files", "no", Kind::Bool),
    ("rdb-save-incremental-fsync", "yes", Kind::Bool),
    ("rdbchecksum", "yes", Kind::Immutable),
    ("rdbcompression", "yes", Kind::Bool),
    ("repl-backlog-size", "1048576", Kind::Memory),
    ("repl-backlog-ttl", "3600", Kind::Integer),
    ("repl-disable-tcp-nodelay", "no", Kind::Bool),
    (
        "repl-diskless-load",
        "disabled",
        Kind::OneOf(&["disabled", "on-empty-db", "swapdb"]),
    ),
    ("repl-diskless-sync", "yes", Kind::Bool),
    ("repl-diskless-sync-delay", "5", Kind::Integer),
    ("repl-diskless-sync-max-replicas", "0", Kind::Integer),
    ("repl-ping-replica-period", "10", Kind::Integer),
    ("repl-timeout", "60", Kind::Integer),
    ("replica-announce-ip", "", Kind::Text),
    ("replica-announce-port", "0", Kind::Integer),
    ("replica-announced", "yes", Kind::Bool),
    ("replica-ignore-disk-write-errors", "no", Kind::Bool),
    ("replica-ignore-maxmemory", "yes", Kind::Bool),
    ("replica-lazy-flush", "no", Kind::Bool),
    ("replica-priority", "100", Kind::Integer),
    ("replica-read-only", "yes", Kind::Bool),
    ("replica-serve-stale-data", "yes", Kind::Bool),
    ("replicaof", "", Kind::Immutable),
    ("requirepass", "", Kind::Text),
    ("sanitize-dump-payload", "no", Kind::OneOf(&["no", "yes", "clients"])),
    ("save", "", Kind::Text),
    ("server_cpulist", "", Kind::Immutable),
    ("set-max-intset-entries", "512", Kind::Integer),
    ("set-proc-title", "yes", Kind::Immutable),
    (
        "shutdown-on-sigint",
        "default",
        Kind::OneOf(&["default", "save", "nosave", "now", "force"]),
    ),
    (
        "shutdown-on-sigterm",
        "default",
        Kind::OneOf(&["default", "save", "nosave", "now", "force"]),
    ),
    ("shutdown-timeout", "10", Kind::Integer),
    ("slowlog-log-slower-than", "10000", Kind::Integer),
    ("slowlog-max-len", "128", Kind::Integer),
    ("socket-mark-id", "0", Kind::Immutable),
    ("stop-writes-on-bgsave-error", "yes", Kind::Bool),
    ("stream-node-max-bytes", "4096", Kind::Memory),
    ("stream-node-max-entries", "100", Kind::Integer),
    ("supervised", "no", Kind::Immutable),
    ("syslog-enabled", "no", Kind::Immutable),
    ("syslog-facility", "local0", Kind::Immutable),
    ("syslog-ident", "redis", Kind::Immutable),
    ("tcp-backlog", "511", Kind::Immutable),
    ("tcp-keepalive", "300", Kind::Integer),
    ("timeout", "0", Kind::Integer),
    ("tls-auth-clients", "yes", Kind::OneOf(&["no", "yes", "optional"])),
    ("tls-ca-cert-dir", "", Kind::Text),
    ("tls-ca-cert-file", "", Kind::Text),
    ("tls-cert-file", "", Kind::Text),
    ("tls-ciphers", "", Kind::Text),
    ("tls-ciphersuites", "", Kind::Text),
    ("tls-client-cert-file", "", Kind::Text),
    ("tls-client-key-file", "", Kind::Text),
    ("tls-client-key-file-pass", "", Kind::Text),
    ("tls-cluster", "no", Kind::Bool),
    ("tls-dh-params-file", "", Kind::Text),
    ("tls-key-file", "", Kind::Text),
    ("tls-key-file-pass", "", Kind::Text),
    ("tls-port", "0", Kind::Immutable),
    ("tls-prefer-server-ciphers", "no", Kind::Bool),
    ("tls-protocols", "", Kind::Text),
    ("tls-replication", "no", Kind::Bool),
    ("tls-session-cache-size", "20480", Kind::Integer),
    ("tls-session-cache-timeout", "300", Kind::Integer),
    ("tls-session-caching", "yes", Kind::Bool),
    ("tracking-table-max-keys", "1000000", Kind::Integer),
    ("unixsocket", "", Kind::Immutable),
    ("unixsocketperm", "0", Kind::Immutable),
    ("zset-max-listpack-entries", "128", Kind::Integer),
    ("zset-max-listpack-value", "64", Kind::Memory),
];

/// Older names Redis 7.0 still accepts, and the parameter each one means.
const ALIASES: &[(&str, &str)] = &[
    ("cluster-slave-no-failover", "cluster-replica-no-failover"),
    ("cluster-slave-validity-factor", "cluster-replica-validity-factor"),
    ("hash-max-ziplist-entries", "hash-max-listpack-entries"),
    ("hash-max-ziplist-value", "hash-max-listpack-value"),
    ("list-max-ziplist-size", "list-max-listpack-size"),
    ("lua-time-limit", "busy-reply-threshold"),
    ("min-slaves-max-lag", "min-replicas-max-lag"),
    ("min-slaves-to-write", "min-replicas-to-write"),
    ("repl-ping-slave-period", "repl-ping-replica-period"),
    ("slave-announce-ip", "replica-announce-ip"),
    ("slave-announce-port", "replica-announce-port"),
    ("slave-ignore-maxmemory", "replica-ignore-maxmemory"),
    ("slave-lazy-flush", "replica-lazy-flush"),
    ("slave-priority", "replica-priority"),
    ("slave-read-only", "replica-read-only"),
    ("slave-serve-stale-data", "replica-serve-stale-data"),
    ("slaveof", "replicaof"),
    ("zset-max-ziplist-entries", "zset-max-listpack-entries"),
    ("zset-max-ziplist-value", "zset-max-listpack-value"),
];

/// A parameter by any of its names: (name, default, kind).
fn lookup(name: &str) -> Option<&'static (&'static str, &'static str, Kind)> {
    let name = ALIASES
        .iter()
        .find(|(alias, _)| *alias == name)
        .map_or(name, |(_, to)| to);
    PARAMETERS.iter().find(|(n, _, _)| *n == name)
}

/// A parameter's value on this proxy: what the cluster set, else the values
/// fixed per process, else the default.
fn value_of(name: &str, default: &str, set: &BTreeMap<String, String>, laddr: SocketAddr) -> String {
    match name {
        "port" => laddr.port().to_string(),
        "bind" => laddr.ip().to_string(),
        "maxclients" => crate::MAX_CLIENTS.to_string(),
        "dir" => std::env::current_dir()
            .map(|d| d.display().to_string())
            .unwrap_or_default(),
        "requirepass" => String::new(),
        _ => set.get(name).cloned().unwrap_or_else(|| default.to_string()),
    }
}

/// CONFIG <subcommand>.
pub async fn execute(router: &Router, args: &[Vec<u8>], laddr: SocketAddr) -> Frame {
    let Some(sub) = args.get(1) else {
        return wrong_arity("config");
    };
    match sub.to_ascii_lowercase().as_slice() {
        b"get" if args.len() >= 3 => match cluster_values(router).await {
            Ok(set) => get(&args[2..], &set, laddr),
            Err(e) => e,
        },
        b"set" if args.len() >= 4 && args.len().is_multiple_of(2) => match checked(&args[2..]) {
            Ok(pairs) => match ask_placement(router, &PdRequest::SetConfig { pairs }).await {
                Ok(PdResponse::Ack) => Frame::ok(),
                Ok(other) => error(format!("ERR unexpected placement answer {other:?}")),
                Err(e) => e,
            },
            Err(e) => e,
        },
        b"resetstat" if args.len() == 2 => Frame::ok(),
        b"rewrite" if args.len() == 2 => error("ERR The server is running without a config file"),
        b"help" if args.len() == 2 => Frame::Array(
            [
                "CONFIG <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
                "GET <pattern>",
                "    Return parameters matching the glob-like <pattern> and their values.",
                "SET <directive> <value>",
                "    Set the configuration <directive> to <value>.",
                "RESETSTAT",
                "    Reset statistics reported by the INFO command.",
                "REWRITE",
                "    Rewrite the configuration file.",
                "HELP",
                "    Print this help.",
            ]
            .iter()
            .map(|l| Frame::Simple(l.to_string()))
            .collect(),
        ),
        b"get" | b"set" | b"resetstat" | b"rewrite" | b"help" => {
            wrong_arity(&format!("config|{}", String::from_utf8_lossy(sub).to_ascii_lowercase()))
        }
        _ => unknown_subcommand("config", sub),
    }
}

/// The encoding parameters OBJECT ENCODING follows: the cluster's values,
/// Redis's defaults for those never set.
pub async fn encoding_limits(router: &Router) -> Result<redraft_common::ops::EncodingLimits, Frame> {
    let set = cluster_values(router).await?;
    let number = |name: &str, default: u64| {
        set.get(name)
            .and_then(|v| v.parse::<i64>().ok())
            .map_or(default, |n| n.max(0) as u64)
    };
    let defaults = redraft_common::ops::EncodingLimits::default();
    Ok(redraft_common::ops::EncodingLimits {
        hash_entries: number("hash-max-listpack-entries", defaults.hash_entries),
        hash_value: number("hash-max-listpack-value", defaults.hash_value),
        zset_entries: number("zset-max-listpack-entries", defaults.zset_entries),
        zset_value: number("zset-max-listpack-value", defaults.zset_value),
        set_intset_entries: number("set-max-intset-entries", defaults.set_intset_entries),
    })
}

/// The cluster's `notify-keyspace-events` (Redis's default, none, when never set).
pub async fn keyspace_events(router: &Router) -> Result<String, Frame> {
    Ok(cluster_values(router)
        .await?
        .remove("notify-keyspace-events")
        .unwrap_or_default())
}

/// The values the cluster's operators set (the placement driver keeps them).
async fn cluster_values(router: &Router) -> Result<BTreeMap<String, String>, Frame> {
    match ask_placement(router, &PdRequest::Config).await? {
        PdResponse::Config(pairs) => Ok(pairs.into_iter().collect()),
        other => Err(error(format!("ERR unexpected placement answer {other:?}"))),
    }
}

/// CONFIG GET: every name (aliases included) matching one of `patterns`.
fn get(patterns: &[Vec<u8>], set: &BTreeMap<String, String>, laddr: SocketAddr) -> Frame {
    let names = PARAMETERS
        .iter()
        .map(|(name, default, _)| (*name, *name, *default))
        .chain(
            ALIASES
                .iter()
                .filter_map(|(alias, name)| lookup(name).map(|(name, default, _)| (*alias, *name, *default))),
        );
    let lowered: Vec<Vec<u8>> = patterns.iter().map(|p| p.to_ascii_lowercase()).collect();
    let mut found = Vec::new();
    for (shown, name, default) in names {
        if lowered
            .iter()
            .any(|p| redraft_common::glob::matches(p, shown.as_bytes()))
        {
            found.push((Frame::bulk(shown), Frame::bulk(value_of(name, default, set, laddr))));
        }
    }
    Frame::Map(found)
}

/// CONFIG SET's `name value` pairs checked as Redis checks them, under their
/// current names; the first problem as Redis words it.
fn checked(args: &[Vec<u8>]) -> Result<Vec<(String, String)>, Frame> {
    let failed = |name: &str, why: &str| {
        error(format!(
            "ERR CONFIG SET failed (possibly related to argument '{name}') - {why}"
        ))
    };
    let mut pairs: Vec<(String, String)> = Vec::new();
    for pair in args.chunks(2) {
        let given = String::from_utf8_lossy(&pair[0]).to_ascii_lowercase();
        let value = String::from_utf8_lossy(&pair[1]).into_owned();
        let Some((name, _, kind)) = lookup(&given) else {
            return Err(error(format!(
                "ERR Unknown option or number of arguments for CONFIG SET - '{given}'"
            )));
        };
        if pairs.iter().any(|(n, _)| n == name) {
            return Err(failed(&given, "duplicate parameter"));
        }
        let value = match kind {
            Kind::Immutable => return Err(failed(&given, "can't set immutable config")),
            Kind::Bool => match value.to_ascii_lowercase().as_str() {
                v @ ("yes" | "no") => v.to_string(),
                _ => return Err(failed(&given, "argument must be 'yes' or 'no'")),
            },
            Kind::Integer => match value.parse::<i64>() {
                Ok(n) => n.to_string(),
                Err(_) => return Err(failed(&given, "argument couldn't be parsed into an integer")),
            },
            Kind::Memory => match memory(&value) {
                Some(n) => n.to_string(),
                None => return Err(failed(&given, "argument must be a memory value")),
            },
            Kind::OneOf(words) => match words.iter().find(|w| w.eq_ignore_ascii_case(&value)) {
                Some(word) => word.to_string(),
                None => {
                    return Err(failed(
                        &given,
                        &format!("argument(s) must be one of the following: {}", words.join(", ")),
                    ))
                }
            },
            Kind::KeyspaceEvents => {
                if value.chars().any(|c| !"Ag$lshzxeKEtmdn".contains(c)) {
                    return Err(failed(&given, "Invalid event class character. Use 'Ag$lshzxeKEtmdn'."));
                }
                value
            }
            Kind::Text => value,
        };
        pairs.push((name.to_string(), value));
    }
    Ok(pairs)
}

/// Redis's memory values: a count of bytes with an optional unit.
fn memory(value: &str) -> Option<u64> {
    let lower = value.to_ascii_lowercase();
    let digits = lower.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit: u64 = match &lower[digits.len()..] {
        "" | "b" => 1,
        "k" => 1000,
        "kb" => 1024,
        "m" => 1000 * 1000,
        "mb" => 1024 * 1024,
        "g" => 1000 * 1000 * 1000,
        "gb" => 1024 * 1024 * 1024,
        _ => return None,
    };
    digits.parse::<u64>().ok()?.checked_mul(unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_matches_globs_aliases_and_values_set_for_the_cluster() {
        let addr: SocketAddr = "127.0.0.1:6379".parse().unwrap();
        let get_one = |pattern: &str, set: &BTreeMap<String, String>| get(&[pattern.as_bytes().to_vec()], set, addr);
        let none = BTreeMap::new();
        let Frame::Map(found) = get_one("maxmemory*", &none) else {
            panic!()
        };
        let names: Vec<Frame> = found.iter().map(|(k, _)| k.clone()).collect();
        assert_eq!(names.len(), 5, "{names:?}");
        assert!(found.contains(&(Frame::bulk("maxmemory-policy"), Frame::bulk("noeviction"))));
        assert_eq!(
            get_one("PORT", &none),
            Frame::Map(vec![(Frame::bulk("port"), Frame::bulk("6379"))])
        );
        let set: BTreeMap<String, String> = [("hash-max-listpack-entries".to_string(), "10".to_string())].into();
        let Frame::Map(found) = get_one("hash-max-*-entries", &set) else {
            panic!()
        };
        assert_eq!(found.len(), 2, "the name and its ziplist alias: {found:?}");
        assert!(found.iter().all(|(_, v)| *v == Frame::bulk("10")));
        assert_eq!(get_one("nosuch*", &none), Frame::Map(Vec::new()));
    }

    #[test]
    fn aliases_name_parameters_and_values_are_checked_as_redis_does() {
        for (alias, name) in ALIASES {
            assert!(lookup(alias).is_some_and(|(n, _, _)| n == name), "{alias}");
        }
        let set = |pairs: &[&str]| checked(&pairs.iter().map(|p| p.as_bytes().to_vec()).collect::<Vec<_>>());
        assert_eq!(
            set(&["hash-max-ziplist-entries", "10", "save", ""]),
            Ok(vec![
                ("hash-max-listpack-entries".to_string(), "10".to_string()),
                ("save".to_string(), String::new())
            ])
        );
        assert_eq!(
            set(&["maxmemory", "1gb"]),
            Ok(vec![("maxmemory".into(), (1u64 << 30).to_string())])
        );
        assert_eq!(
            set(&["appendfsync", "EVERYSEC"]),
            Ok(vec![("appendfsync".into(), "everysec".into())])
        );
        let refused = |pairs: &[&str]| match set(pairs) {
            Err(Frame::Error(text)) => text,
            other => panic!("{pairs:?} accepted: {other:?}"),
        };
        assert!(refused(&["databases", "4"]).ends_with("can't set immutable config"));
        assert!(refused(&["port", "7000"]).ends_with("can't set immutable config"));
        assert!(refused(&["hz", "x"]).ends_with("couldn't be parsed into an integer"));
        assert!(refused(&["appendonly", "maybe"]).ends_with("argument must be 'yes' or 'no'"));
        assert!(refused(&["maxmemory", "1xb"]).ends_with("argument must be a memory value"));
        assert!(refused(&["hz", "10", "hz", "11"]).ends_with("duplicate parameter"));
        assert!(refused(&["notify-keyspace-events", "Kq"]).contains("Invalid event class character"));
        assert!(refused(&["nosuch", "1"]).contains("Unknown option"));
    }
}

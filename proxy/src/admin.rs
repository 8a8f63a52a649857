//! Introspection commands clients and tools send before real work: COMMAND
//! (COUNT, INFO, DOCS, LIST, GETKEYS), CONFIG (GET, SET, RESETSTAT, REWRITE) and
//! CLUSTER (INFO, MYID, SLOTS, SHARDS, NODES, KEYSLOT).
//!
//! CLUSTER answers as one node that owns all 16384 slots, at the address the
//! client connected to: cluster-mode clients then send everything to this proxy,
//! which routes by its own ring. CONFIG shows the parameters Redraft has and
//! the usual values of common ones clients probe; none is changed at run time.

use std::net::SocketAddr;

use redraft_common::commands::{self, KeySpec, SHARD_COMMANDS};
use redraft_common::resp::Frame;

use crate::cmd::COMMANDS;

/// Number of Redis Cluster hash slots.
pub const SLOTS: u16 = 16384;

fn bulk(text: impl Into<String>) -> Frame {
    Frame::Bulk(text.into().into_bytes())
}

pub(crate) fn error(text: impl Into<String>) -> Frame {
    Frame::Error(text.into())
}

pub(crate) fn unknown_subcommand(command: &str, sub: &[u8]) -> Frame {
    error(format!(
        "ERR unknown subcommand '{}'. Try {} HELP.",
        String::from_utf8_lossy(sub),
        command.to_uppercase()
    ))
}

pub(crate) fn wrong_arity(command: &str) -> Frame {
    error(format!("ERR wrong number of arguments for '{command}' command"))
}

/// Redis Cluster's slot of a key: CRC16 (XMODEM) of its hash tag, mod 16384.
pub fn key_slot(key: &[u8]) -> u16 {
    const CRC16: crc::Crc<u16> = crc::Crc::<u16>::new(&crc::CRC_16_XMODEM);
    CRC16.checksum(redraft_common::keys::hash_tag(key)) % SLOTS
}

/// The proxy's node id for CLUSTER: 40 hex digits derived from its address.
fn node_id(laddr: SocketAddr) -> String {
    let hash = xxhash_rust::xxh3::xxh3_128(laddr.to_string().as_bytes());
    format!("{hash:032x}{:08x}", (hash >> 64) as u32)
}

/// CLUSTER <subcommand>, as a single node at `laddr` owning every slot.
pub fn cluster(args: &[Vec<u8>], laddr: SocketAddr) -> Frame {
    let Some(sub) = args.get(1) else {
        return wrong_arity("cluster");
    };
    let id = node_id(laddr);
    let (ip, port) = (laddr.ip().to_string(), i64::from(laddr.port()));
    match (sub.to_ascii_lowercase().as_slice(), args.len()) {
        (b"info", 2) => bulk(format!(
            "cluster_enabled:1\r\ncluster_state:ok\r\ncluster_slots_assigned:{SLOTS}\r\ncluster_slots_ok:{SLOTS}\r\n\
             cluster_slots_pfail:0\r\ncluster_slots_fail:0\r\ncluster_known_nodes:1\r\ncluster_size:1\r\n\
             cluster_current_epoch:1\r\ncluster_my_epoch:1\r\ncluster_stats_messages_sent:0\r\n\
             cluster_stats_messages_received:0\r\ntotal_cluster_links_buffer_limit_exceeded:0\r\n"
        )),
        (b"myid", 2) => bulk(id),
        (b"slots", 2) => Frame::Array(vec![Frame::Array(vec![
            Frame::Integer(0),
            Frame::Integer(i64::from(SLOTS) - 1),
            Frame::Array(vec![bulk(ip), Frame::Integer(port), bulk(id), Frame::Map(vec![])]),
        ])]),
        (b"shards", 2) => Frame::Array(vec![Frame::Map(vec![
            (
                bulk("slots"),
                Frame::Array(vec![Frame::Integer(0), Frame::Integer(i64::from(SLOTS) - 1)]),
            ),
            (
                bulk("nodes"),
                Frame::Array(vec![Frame::Map(vec![
                    (bulk("id"), bulk(id)),
                    (bulk("port"), Frame::Integer(port)),
                    (bulk("ip"), bulk(ip.clone())),
                    (bulk("endpoint"), bulk(ip)),
                    (bulk("role"), bulk("master")),
                    (bulk("replication-offset"), Frame::Integer(0)),
                    (bulk("health"), bulk("online")),
                ])]),
            ),
        ])]),
        (b"nodes", 2) => bulk(format!(
            "{id} {laddr}@{} myself,master - 0 0 1 connected 0-{}\n",
            u32::from(laddr.port()) + 10000,
            SLOTS - 1
        )),
        (b"keyslot", 3) => Frame::Integer(i64::from(key_slot(&args[2]))),
        (b"help", 2) => Frame::Array(
            [
                "CLUSTER <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
                "INFO",
                "MYID",
                "SLOTS",
                "SHARDS",
                "NODES",
                "KEYSLOT <key>",
                "HELP",
            ]
            .iter()
            .map(|l| Frame::Simple(l.to_string()))
            .collect(),
        ),
        (b"info" | b"myid" | b"slots" | b"shards" | b"nodes" | b"keyslot" | b"help", _) => wrong_arity(&format!(
            "cluster|{}",
            String::from_utf8_lossy(sub).to_ascii_lowercase()
        )),
        _ => unknown_subcommand("cluster", sub),
    }
}

/// `(first key, last key, step)` of a command, Redis's legacy key positions.
fn key_positions(name: &str) -> (i64, i64, i64) {
    if let Some(spec) = commands::lookup(name.as_bytes()) {
        return match spec.keys {
            KeySpec::First => (1, 1, 1),
            KeySpec::FirstTwo => (1, 2, 1),
            KeySpec::All => (1, -1, 1),
            KeySpec::Second => (2, 2, 1),
            KeySpec::AllButFirst => (2, -1, 1),
            // Movable keys: Redis's legacy positions say none.
            KeySpec::Counted | KeySpec::DestinationThenCounted => (0, 0, 0),
            KeySpec::Sort => (1, 1, 1),
        };
    }
    match name {
        "mget" | "del" | "unlink" | "exists" | "touch" => (1, -1, 1),
        "mset" | "msetnx" => (1, -1, 2),
        _ if is_keyless(name) || is_script(name) => (0, 0, 0),
        _ => (1, 1, 1),
    }
}

/// The keys among a request's arguments (`args[0]` is the command `name`).
pub fn keys_of<'a>(name: &str, args: &'a [Vec<u8>]) -> Vec<&'a [u8]> {
    if let Some(spec) = commands::lookup(name.as_bytes()) {
        return spec.keys(args);
    }
    if let Some(count_at) = match name {
        "lmpop" | "zmpop" => Some(1),
        "blmpop" | "bzmpop" => Some(2),
        _ => None,
    } {
        let count = args
            .get(count_at)
            .and_then(|n| redraft_common::ops::parse_strict_i64(n))
            .unwrap_or(0)
            .max(0) as usize;
        return args.iter().skip(count_at + 1).take(count).map(|k| &k[..]).collect();
    }
    if is_script(name) {
        // `script numkeys key...`: Redis's movable keys.
        let count = args
            .get(2)
            .and_then(|n| redraft_common::ops::parse_strict_i64(n))
            .unwrap_or(0)
            .max(0) as usize;
        return args.iter().skip(3).take(count).map(|k| &k[..]).collect();
    }
    let (first, last, step) = key_positions(name);
    if first == 0 {
        return Vec::new();
    }
    let last = if last < 0 { args.len() as i64 + last } else { last };
    (first..=last)
        .step_by(step.max(1) as usize)
        .filter_map(|i| args.get(i as usize).map(|k| &k[..]))
        .collect()
}

/// Redis's ACL categories of a command (approximately Redis 7's assignment).
pub fn categories(name: &str) -> Vec<&'static str> {
    let mut all = vec![if is_write(name) { "write" } else { "read" }];
    let kind = category(name).trim_start_matches('@');
    match name {
        "subscribe" | "unsubscribe" | "psubscribe" | "punsubscribe" | "ssubscribe" | "sunsubscribe" | "publish"
        | "spublish" | "pubsub" => all = vec!["pubsub", "slow"],
        "multi" | "exec" | "discard" | "watch" | "unwatch" => all = vec!["transaction", "fast"],
        "eval" | "evalsha" | "eval_ro" | "evalsha_ro" | "fcall" | "fcall_ro" | "script" | "function" => {
            all = vec!["slow", "scripting"]
        }
        "flushall" | "flushdb" | "keys" => all.extend(["keyspace", "dangerous", "slow"]),
        "config" | "acl" | "cluster" | "client" | "info" | "leader" | "debug" => {
            all = vec!["admin", "dangerous", "slow"]
        }
        "dbsize" | "scan" | "randomkey" | "del" | "unlink" | "exists" | "touch" | "type" | "expire" | "pexpire"
        | "expireat" | "pexpireat" | "ttl" | "pttl" | "expiretime" | "pexpiretime" | "persist" | "rename"
        | "renamenx" | "copy" | "object" => all.extend(["keyspace", "fast"]),
        _ if kind == "connection" => all = vec!["connection", "fast"],
        _ => all.extend([kind, "fast"]),
    }
    all
}

fn is_keyless(name: &str) -> bool {
    matches!(
        name,
        "ping"
            | "echo"
            | "quit"
            | "select"
            | "command"
            | "info"
            | "client"
            | "dbsize"
            | "flushall"
            | "flushdb"
            | "hello"
            | "auth"
            | "cluster"
            | "config"
            | "scan"
            | "keys"
            | "randomkey"
            | "multi"
            | "exec"
            | "discard"
            | "unwatch"
            | "reset"
            | "acl"
            | "subscribe"
            | "unsubscribe"
            | "psubscribe"
            | "punsubscribe"
            | "ssubscribe"
            | "sunsubscribe"
            | "publish"
            | "spublish"
            | "pubsub"
            | "script"
            | "function"
            | "debug"
    )
}

/// EVAL and friends, whose keys follow a count.
fn is_script(name: &str) -> bool {
    matches!(
        name,
        "eval" | "evalsha" | "eval_ro" | "evalsha_ro" | "fcall" | "fcall_ro"
    )
}

fn is_write(name: &str) -> bool {
    if let Some(spec) = commands::lookup(name.as_bytes()) {
        return spec.write;
    }
    matches!(
        name,
        "set"
            | "setnx"
            | "setex"
            | "psetex"
            | "getset"
            | "getdel"
            | "getex"
            | "mset"
            | "msetnx"
            | "del"
            | "unlink"
            | "incr"
            | "decr"
            | "incrby"
            | "decrby"
            | "incrbyfloat"
            | "append"
            | "setrange"
            | "expire"
            | "pexpire"
            | "expireat"
            | "pexpireat"
            | "persist"
            | "flushall"
            | "flushdb"
            | "lmpop"
            | "zmpop"
    )
}

/// Redis's ACL category of a command's data type.
fn category(name: &str) -> &'static str {
    match name.as_bytes().first() {
        _ if is_keyless(name) => "@connection",
        _ if name.starts_with("bit") || name.ends_with("bit") => "@bitmap",
        _ if name.starts_with("pf") => "@hyperloglog",
        _ if name.starts_with("geo") => "@geo",
        _ if name == "lcs" => "@string",
        _ if name.starts_with("sort") => "@list",
        Some(b'h') => "@hash",
        Some(b'l') | Some(b'r') if name != "rename" && name != "renamenx" => "@list",
        Some(b's') if commands::lookup(name.as_bytes()).is_some() => "@set",
        Some(b'z') => "@sortedset",
        _ => "@string",
    }
}

/// Every command name and arity the proxy knows.
pub fn all_commands() -> Vec<(&'static str, i32)> {
    let mut all: Vec<(&'static str, i32)> = COMMANDS.to_vec();
    all.extend(SHARD_COMMANDS.iter().map(|c| (c.name, c.arity)));
    all
}

/// COMMAND INFO's entry for one command (Redis 7's ten fields).
fn info_entry(name: &'static str, arity: i32) -> Frame {
    let (first, last, step) = key_positions(name);
    let simple = |s: &str| Frame::Simple(s.to_string());
    let flags = if is_keyless(name) {
        vec![simple("fast")]
    } else if is_write(name) {
        vec![simple("write")]
    } else {
        vec![simple("readonly")]
    };
    Frame::Array(vec![
        bulk(name),
        Frame::Integer(i64::from(arity)),
        Frame::Set(flags),
        Frame::Integer(first),
        Frame::Integer(last),
        Frame::Integer(step),
        Frame::Set(categories(name).into_iter().map(|c| simple(&format!("@{c}"))).collect()),
        Frame::Set(vec![]),
        Frame::Array(vec![]),
        Frame::Array(vec![]),
    ])
}

/// COMMAND [COUNT | INFO name... | DOCS name... | LIST | GETKEYS command...].
pub fn command(args: &[Vec<u8>]) -> Frame {
    let all = all_commands();
    let find = |name: &[u8]| {
        all.iter()
            .find(|(n, _)| n.as_bytes().eq_ignore_ascii_case(name))
            .copied()
    };
    let Some(sub) = args.get(1).map(|s| s.to_ascii_lowercase()) else {
        return Frame::Array(all.iter().map(|&(n, a)| info_entry(n, a)).collect());
    };
    match sub.as_slice() {
        b"count" if args.len() == 2 => Frame::Integer(all.len() as i64),
        b"list" if args.len() == 2 => Frame::Array(all.iter().map(|(n, _)| bulk(*n)).collect()),
        b"info" => {
            let names: Vec<&[u8]> = if args.len() == 2 {
                all.iter().map(|(n, _)| n.as_bytes()).collect()
            } else {
                args[2..].iter().map(|a| &a[..]).collect()
            };
            Frame::Array(
                names
                    .into_iter()
                    .map(|n| find(n).map_or(Frame::Null, |(n, a)| info_entry(n, a)))
                    .collect(),
            )
        }
        b"docs" => {
            let wanted: Vec<(&'static str, i32)> = if args.len() == 2 {
                all.clone()
            } else {
                args[2..].iter().filter_map(|n| find(n)).collect()
            };
            Frame::Map(
                wanted
                    .into_iter()
                    .map(|(name, _)| {
                        let group = category(name).trim_start_matches('@');
                        let group = if group == "connection" { "generic" } else { group };
                        (
                            bulk(name),
                            Frame::Map(vec![
                                (
                                    bulk("summary"),
                                    bulk(format!("Redis's {} command", name.to_uppercase())),
                                ),
                                (bulk("since"), bulk("1.0.0")),
                                (bulk("group"), bulk(group)),
                            ]),
                        )
                    })
                    .collect(),
            )
        }
        b"getkeys" if args.len() >= 4 => {
            let target = &args[2..];
            let Some((name, arity)) = find(&target[0]) else {
                return error("ERR Invalid command specified");
            };
            if !commands::arity_ok(arity, target.len()) {
                return error("ERR Invalid number of arguments specified for command");
            }
            if key_positions(name).0 == 0 {
                return error("ERR The command has no key arguments");
            }
            Frame::Array(
                keys_of(name, target)
                    .into_iter()
                    .map(|k| Frame::Bulk(k.to_vec()))
                    .collect(),
            )
        }
        b"help" if args.len() == 2 => Frame::Array(
            [
                "COMMAND <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
                "(no subcommand)",
                "COUNT",
                "DOCS [<command-name> ...]",
                "GETKEYS <full-command>",
                "INFO [<command-name> ...]",
                "LIST",
                "HELP",
            ]
            .iter()
            .map(|l| Frame::Simple(l.to_string()))
            .collect(),
        ),
        b"count" | b"list" | b"getkeys" | b"help" => wrong_arity(&format!("command|{}", String::from_utf8_lossy(&sub))),
        _ => unknown_subcommand("command", &args[1]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_slots_match_redis_cluster() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(key_slot(b"123456789"), 0x31C3 % SLOTS);
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"{user1000}.followers"));
        assert_eq!(key_slot(b"somekey"), 11058);
    }

    #[test]
    fn command_getkeys_uses_the_key_positions() {
        let args = |s: &str| s.split(' ').map(|a| a.as_bytes().to_vec()).collect::<Vec<_>>();
        assert_eq!(
            command(&args("COMMAND GETKEYS MSET a 1 b 2")),
            Frame::Array(vec![bulk("a"), bulk("b")])
        );
        assert_eq!(
            command(&args("COMMAND GETKEYS LMOVE x y LEFT RIGHT")),
            Frame::Array(vec![bulk("x"), bulk("y")])
        );
        assert_eq!(command(&args("COMMAND INFO nosuch")), Frame::Array(vec![Frame::Null]));
        assert_eq!(
            command(&args("COMMAND COUNT")),
            Frame::Integer((COMMANDS.len() + redraft_common::commands::SHARD_COMMANDS.len()) as i64)
        );
        let Frame::Array(entry) = command(&args("COMMAND INFO hset")) else {
            panic!()
        };
        let Frame::Array(fields) = &entry[0] else { panic!() };
        assert_eq!(fields[1], Frame::Integer(-4));
        assert_eq!(fields[2], Frame::Set(vec![Frame::Simple("write".into())]));
    }
}

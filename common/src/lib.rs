//! Shared vocabulary of every Redraft process.
//!
//! Everything two processes must agree on lives here and nowhere else: the RESP
//! codec, key hashing and the ring of virtual nodes, the routing table, the wire
//! envelopes, the shard operations the proxy sends and the nodes apply, and the
//! QUIC/mTLS transport. This crate depends on neither RocksDB nor openraft, so the
//! stateless proxy never pulls in a storage engine.

pub mod acl;
pub mod backup;
pub mod commands;
pub mod consistency;
pub mod digest;
pub mod glob;
pub mod http;
pub mod ids;
pub mod keys;
pub mod link;
pub mod lua;
pub mod node_links;
pub mod ops;
pub mod parse;
pub mod pd_client;
pub mod pubsub;
pub mod rdb;
pub mod resp;
pub mod routing;
pub mod tls;
pub mod transport;
pub mod wire;

/// The Redis version Redraft answers as (INFO, HELLO, `redis.REDIS_VERSION`).
pub const REDIS_VERSION: &str = "7.2.0";

/// [`REDIS_VERSION`] as one number, `0x00MMmmpp` (`redis.REDIS_VERSION_NUM`).
pub const fn redis_version_num() -> i64 {
    0x07_02_00
}

/// Milliseconds since the Unix epoch on this host's wall clock.
///
/// Leaders stamp every write with this value; replicas decide TTL expiry from the
/// stamp in the entry, never from their own clock, so applying is deterministic.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

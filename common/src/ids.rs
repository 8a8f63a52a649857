//! Identifiers shared by every process.

/// A shard node's identity, stable across restarts (kept in the node's RocksDB).
pub type NodeId = u64;

/// A shard, i.e. one Raft group. Also the Raft group id on the wire.
pub type ShardId = u64;

/// A virtual node: one fixed slice of the ring.
pub type VnodeId = u16;

/// Version of the routing table; grows with every structural change.
pub type RoutingVersion = u64;

//! One shard replica = one openraft `Raft` over the node's shared RocksDB.
//!
//! | module | owns |
//! | --- | --- |
//! | [`state_machine`] | applying entries to the `data` column family, snapshots |
//!
//! The log store ([`redraft_raft_storage::LogStore`]) and the network
//! ([`redraft_raft_storage::network`]) are shared with the placement driver. Snapshot data is a file, streamed to followers in chunks by openraft.

pub mod state_machine;

use redraft_common::ops::WriteOp;
use redraft_common::resp::Frame;
use serde::{Deserialize, Serialize};

/// A write proposed to a shard's log.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ShardRequest {
    /// The leader's wall clock when it proposed the write; expiry decisions at
    /// apply time use this, so every replica decides the same.
    pub now_ms: u64,
    /// The operation.
    pub op: WriteOp,
}

/// The outcome of applying a [`ShardRequest`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ShardResponse {
    /// Applied (or refused with a Redis error such as WRONGTYPE): the reply.
    Reply(Frame),
    /// A key was not owned by the shard at this log index; nothing changed.
    WrongShard,
    /// The outcomes of a `WriteOp::Many`, in order.
    Many(Vec<ShardResponse>),
}

openraft::declare_raft_types!(
    /// openraft type configuration of shard groups.
    pub ShardTypes:
        D = ShardRequest,
        R = ShardResponse,
        NodeId = u64,
        Node = openraft::BasicNode,
        SnapshotData = tokio::fs::File,
);

/// Short names for openraft's long generic types.
pub mod typ {
    use super::ShardTypes;

    /// A shard replica's Raft handle.
    pub type Raft = openraft::Raft<ShardTypes>;
    /// Raft error with an API-specific part.
    pub type RaftError<E = openraft::error::Infallible> = openraft::error::RaftError<u64, E>;
    /// Error of a Raft RPC.
    pub type RpcError<E = openraft::error::Infallible> =
        openraft::error::RPCError<u64, openraft::BasicNode, RaftError<E>>;
    /// Snapshot metadata.
    pub type SnapshotMeta = openraft::SnapshotMeta<u64, openraft::BasicNode>;
    /// Membership as stored.
    pub type StoredMembership = openraft::StoredMembership<u64, openraft::BasicNode>;
    /// A log id.
    pub type LogId = openraft::LogId<u64>;
}

//! Wire messages between processes, and their encoding.
//!
//! Every message is one bincode-encoded envelope, on its own QUIC stream or as
//! one frame of a peer's link (see [`crate::transport`], [`crate::link`]). Raft RPCs travel as opaque payloads tagged with their
//! group and kind, so this crate (and the proxy) need not know openraft's types.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::ids::{NodeId, RoutingVersion, ShardId};
use crate::ops::ShardOp;
use crate::resp::Frame;
use crate::routing::RoutingTable;

/// Which Raft RPC a payload carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RaftKind {
    /// AppendEntries (also heartbeats).
    AppendEntries,
    /// RequestVote.
    Vote,
    /// One chunk of a snapshot.
    InstallSnapshot,
}

/// A request to a shard node.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum NodeRequest {
    /// A Raft RPC for group `group`, encoded by the shard node.
    Raft {
        group: ShardId,
        kind: RaftKind,
        payload: Vec<u8>,
    },
    /// Execute `op` on `shard`; `version` is the routing version the caller used.
    Exec {
        shard: ShardId,
        version: RoutingVersion,
        op: ShardOp,
    },
    /// Several requests sent together; answered by a `Batch` of the same length.
    Batch(Vec<NodeRequest>),
    /// Make this node's replica of `shard` campaign for leadership: sent by the
    /// leader handing over (`TransferLeader`, `handed_over`), or by the
    /// scheduler to a shard without a leader. Answered `Reply(+OK)` once it
    /// leads, or `NotLeader` (also, when not handed over, while the replica
    /// still hears from a leader: that leader may be serving reads from its
    /// lease).
    Campaign { shard: ShardId, handed_over: bool },
    /// Scheduler, to a shard's leader: add `node` (reachable at `addr`) as a
    /// learner and wait until it has caught up. `Reply(+OK)`, or `NotLeader`.
    AddLearner { shard: ShardId, node: NodeId, addr: String },
    /// Scheduler, to a shard's leader: make `voters` the voting members (joint
    /// consensus); members left out are removed. `Reply(+OK)`, or `NotLeader`.
    ChangeVoters { shard: ShardId, voters: Vec<NodeId> },
    /// Scheduler, to any replica: the index of the last entry this replica of
    /// `shard` has applied, as `Reply(:index)`, or `NoShard`.
    Applied { shard: ShardId },
    /// Node-level liveness between shard nodes: `Reply(+PONG)`. Replicas of idle
    /// shards stop their Raft timers and rely on this to notice a dead leader.
    Ping,
    /// Pub/Sub between proxies and this node (see `pubsub`): `PubSub(..)`.
    PubSub(crate::pubsub::PubSubRequest),
    /// Scheduler or operator, to a shard's leader: hand the leadership to `to`
    /// (Raft's leadership transfer: new writes wait while `to` catches up, then
    /// `to` campaigns). `Reply(+OK)` once `to` leads, `NotLeader` when this node
    /// does not lead, `Unknown` when the transfer did not happen.
    TransferLeader { shard: ShardId, to: NodeId },
    /// A blocked client's pop (BLPOP, BLMOVE, BZPOPMIN, ...), to `shard`'s
    /// leader: served in blocking order from the first of its keys that has
    /// something, within `timeout_ms` (0: no limit). `Reply` of the popped
    /// answer, `Reply(Null)` when the time passed; `NotLeader`, `WrongShard`
    /// and `Unknown` as for `Exec`. `retry` when an earlier attempt of the
    /// same `waiter` may have popped: the leader first looks up what it popped.
    Block {
        shard: ShardId,
        pop: crate::ops::BlockedPop,
        waiter: u64,
        timeout_ms: u64,
        retry: bool,
    },
    /// Drops a blocked client's registration (it disconnected, or CLIENT
    /// UNBLOCK): its `Block` call is answered `Reply(Null)` unless it was
    /// being served. `Reply(:1)` when it was registered, else `:0`.
    Unblock { shard: ShardId, waiter: u64 },
    /// SCRIPT KILL, FUNCTION KILL: stops the read-only scripts running on this
    /// node. `Reply(+OK)` when one was stopped, `-UNKILLABLE ...` when only
    /// scripts that write run (they run on every replica and cannot stop on
    /// one), `-NOTBUSY ...` when none runs.
    KillScripts,
    /// Placement driver, to any replica: how far this replica's digest of
    /// `shard` at the `ComputeDigest` entry `index` has got. `Digest(..)`.
    DigestProgress { shard: ShardId, index: u64 },
    /// A backup's reader, to any replica: the next chunk of `shard`'s data as
    /// of the backup's barrier, from `after` (a previous chunk's `next`; none
    /// for the first), about `max_bytes` long. `BackupChunk`, or `Unknown`
    /// when this replica holds no snapshot for the backup.
    BackupRead {
        shard: ShardId,
        backup: u64,
        after: Option<Vec<u8>>,
        max_bytes: u32,
    },
    /// Placement driver, to every node: the backup's cut is complete (or
    /// abandoned): answers held for it go out. With `done`, the replicas'
    /// snapshots for it are dropped too. `Reply(+OK)`.
    BackupRelease { backup: u64, done: bool },
}

/// A shard node's answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum NodeResponse {
    /// Answer to a Raft RPC: the encoded result, or the reason it failed.
    Raft(Result<Vec<u8>, String>),
    /// The command ran; this is its reply (possibly a Redis error such as WRONGTYPE).
    Reply(Frame),
    /// This node is not the shard's leader; nothing was proposed. Retry at `leader`.
    NotLeader { leader: Option<NodeId> },
    /// The shard no longer owns a key of the request; nothing changed. Refresh routing.
    WrongShard { version: RoutingVersion },
    /// This node hosts no replica of the shard; nothing was proposed. Refresh routing.
    NoShard,
    /// The write was proposed but its outcome is unknown (timeout, leader lost).
    /// Never retried: the client is told.
    Unknown(String),
    /// Answers to a `NodeRequest::Batch`, in order.
    Batch(Vec<NodeResponse>),
    /// Answer to a `NodeRequest::PubSub`.
    PubSub(crate::pubsub::PubSubResponse),
    /// Answer to a `NodeRequest::DigestProgress`.
    Digest(crate::consistency::DigestProgress),
    /// Answer to a `NodeRequest::BackupRead`.
    BackupChunk(crate::backup::Chunk),
}

/// A request to the placement driver.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum PdRequest {
    /// A node starts: registers its address; gets an id when it has none yet.
    Register {
        node_id: Option<NodeId>,
        addr: String,
        /// The node's failure domain (`--zone`); empty for none.
        #[serde(default)]
        zone: String,
    },
    /// A node is alive; `leaders` are the shards it currently leads, `load` their
    /// progress and size (the placement driver splits busy or big shards).
    Heartbeat {
        node_id: NodeId,
        leaders: Vec<ShardId>,
        load: Vec<ShardLoad>,
    },
    /// The routing table once it is newer than what the caller knows, or after
    /// `wait_ms` at the latest (long poll: a push on change, a pull otherwise).
    Routing {
        known_version: RoutingVersion,
        known_leaders: u64,
        wait_ms: u64,
    },
    /// A Raft RPC between placement members, encoded by the placement driver.
    Raft { kind: RaftKind, payload: Vec<u8> },
    /// Operators: the routing table and which nodes are alive.
    Status,
    /// Operators (`redraft ctl top`): an [`Overview`] of the cluster.
    Overview,
    /// Operators: move every replica off `node`, then mark it removed.
    Decommission { node: NodeId },
    /// Operators: split `shard`, handing half of its virtual nodes to a new shard.
    /// Answered once the split is recorded; the scheduler carries it out.
    Split { shard: ShardId },
    /// Operators: merge shard `from` into shard `into` (their replicas must be on
    /// the same nodes). Answered once recorded; the scheduler carries it out.
    Merge { from: ShardId, into: ShardId },
    /// Operators: move `shard`'s replica from node `from` to node `to` now.
    /// Answered when the move has finished or failed.
    MoveReplica { shard: ShardId, from: NodeId, to: NodeId },
    /// Operators: run the scheduler until the cluster is balanced (or
    /// `max_steps` steps); answered with the steps taken.
    Rebalance { max_steps: u32 },
    /// `ctl verify`: compare the replicas of `shard` (all shards when `None`),
    /// one shard at a time, digesting at most `mib_per_sec` (0: no limit).
    /// `Verified`.
    Verify { shard: Option<ShardId>, mib_per_sec: u32 },
    /// `ctl repair`: replace `node`'s replica of `shard` by a fresh copy, when
    /// a check finds it the odd one out. `Done` with the steps.
    Repair { shard: ShardId, node: NodeId },
    /// ACL SETUSER (rules already validated by the proxy): `Ack`, or `Error`.
    SetUser { name: String, rules: Vec<String> },
    /// ACL DELUSER: `Count` of users removed, or `Error`.
    DeleteUsers { names: Vec<String> },
    /// A node is stopping (SIGTERM): it takes no new replica or leadership and
    /// counts as down until it registers again (or its heartbeats decide, some
    /// seconds later). Soft state of the leader, like heartbeats; a node that
    /// never returns is replaced as a dead one is.
    Leaving { node_id: NodeId },
    /// CONFIG SET: remember these `(parameter, value)` pairs for the cluster.
    SetConfig { pairs: Vec<(String, String)> },
    /// CONFIG GET: the parameters set for the cluster.
    Config,
    /// FUNCTION LOAD, DELETE, FLUSH, RESTORE (libraries already checked by
    /// the proxy): `Ack`, or `Error` with Redis's message.
    ChangeLibraries(crate::lua::LibraryChange),
    /// `ctl backup`: take a backup's cut (every shard's barrier, answers held
    /// at most `hold_ms`). `BackupCut`, or `Error` when no cut could be taken.
    BackupCut { hold_ms: u32 },
    /// `ctl backup`: the backup `backup` is written (or abandoned): replicas
    /// drop its snapshots. With `result`, the outcome for the metrics
    /// (`Some((seconds, bytes))` on success). `Ack`.
    BackupDone { backup: u64, result: Option<(f64, u64)> },
}

/// What a shard's leader reports about it with each heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardLoad {
    /// The shard.
    pub shard: ShardId,
    /// Index of the last applied log entry (its growth rate is the write rate).
    pub applied: u64,
    /// Approximate bytes of the shard's data on disk (flushed data only).
    pub bytes: u64,
}

/// What `redraft ctl top` shows, as the placement leader knows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Overview {
    /// The routing table.
    pub table: RoutingTable,
    /// Nodes that heartbeated recently.
    pub live: Vec<NodeId>,
    /// The placement member that leads (and answered).
    pub placement_leader: Option<NodeId>,
    /// Each shard's size and write rate, from its leader's heartbeats.
    pub shards: Vec<ShardStats>,
    /// Replica moves under way: shard, from node, to node.
    pub moves: Vec<(ShardId, NodeId, NodeId)>,
    /// The split or merge under way, in words.
    pub reshape: Option<String>,
}

/// One shard's load in an [`Overview`].
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct ShardStats {
    /// The shard.
    pub shard: ShardId,
    /// Approximate bytes of its data on disk (flushed data only).
    pub bytes: u64,
    /// Raft entries applied per second over the last seconds (each entry
    /// carries one write or a batch of them).
    pub entries_per_sec: f64,
}

/// The placement driver's answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum PdResponse {
    /// The node's id.
    Registered { node_id: NodeId },
    /// Heartbeat accepted.
    Ack,
    /// The current routing table.
    Routing(RoutingTable),
    /// This member is not the PD leader; try `leader` (a QUIC address) if known.
    NotLeader { leader: Option<String> },
    /// The request failed; the text says why.
    Error(String),
    /// Answer to a Raft RPC: the encoded result, or the reason it failed.
    Raft(Result<Vec<u8>, String>),
    /// The routing table and the nodes that heartbeated recently.
    Status { table: RoutingTable, live: Vec<NodeId> },
    /// Answer to `Overview`.
    Overview(Box<Overview>),
    /// What an operator request did, one line per step.
    Done(Vec<String>),
    /// A count (ACL DELUSER).
    Count(u64),
    /// The CONFIG parameters set for the cluster.
    Config(Vec<(String, String)>),
    /// Answer to `Verify`: one verdict per shard checked.
    Verified(Vec<crate::consistency::ShardVerdict>),
    /// Answer to `BackupCut`.
    BackupCut(Box<crate::backup::Cut>),
}

/// Error decoding a message.
#[derive(Debug, thiserror::Error)]
#[error("malformed message: {0}")]
pub struct DecodeError(String);

/// Encodes a message (bincode, standard configuration).
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(msg, bincode::config::standard()).expect("wire types always encode")
}

/// Decodes a message; trailing bytes are an error. Length prefixes are checked
/// against the message size limit before anything is allocated, so a corrupt or
/// hostile message cannot make the process allocate without bound.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let config = bincode::config::standard().with_limit::<{ crate::transport::MAX_MESSAGE }>();
    let (msg, used) = bincode::serde::decode_from_slice(bytes, config).map_err(|e| DecodeError(e.to_string()))?;
    if used != bytes.len() {
        return Err(DecodeError(format!("{} trailing bytes", bytes.len() - used)));
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{ReadOp, ShardOp};

    #[test]
    fn envelopes_round_trip_and_reject_garbage() {
        let req = NodeRequest::Exec {
            shard: 7,
            version: 3,
            op: ShardOp::Read(ReadOp::Get { key: b"k".to_vec() }),
        };
        let bytes = encode(&req);
        match decode::<NodeRequest>(&bytes).unwrap() {
            NodeRequest::Exec { shard, version, .. } => assert_eq!((shard, version), (7, 3)),
            other => panic!("unexpected {other:?}"),
        }
        assert!(decode::<NodeRequest>(&bytes[..bytes.len() - 1]).is_err());
        assert!(decode::<NodeRequest>(&[0xff, 0xff, 0xff]).is_err());
        // A batch claiming 2^60 requests is refused, not allocated.
        let mut huge = vec![2u8]; // NodeRequest::Batch
        huge.push(253); // varint marker: a u64 length follows
        huge.extend_from_slice(&(1u64 << 60).to_le_bytes());
        assert!(decode::<NodeRequest>(&huge).is_err());
        // A key claiming 2^60 bytes is refused without being allocated.
        let mut bulk = encode(&req); // ends with the key: length 1, then b'k'
        bulk.truncate(bulk.len() - 2);
        bulk.push(253);
        bulk.extend_from_slice(&(1u64 << 60).to_le_bytes());
        assert!(decode::<NodeRequest>(&bulk).is_err());
    }
}

//! The routing table: which shard owns each virtual node, where its replicas are.
//!
//! The placement driver owns the authoritative copy and publishes it; proxies and
//! nodes hold immutable snapshots that are swapped whole. `version` grows with every
//! structural change (shards, replicas, vnode assignment, nodes). Leader hints come
//! from node heartbeats and change without a version bump; `leaders_generation`
//! tells watchers that they moved.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::{NodeId, RoutingVersion, ShardId, VnodeId};

/// One shard as the routing table describes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardInfo {
    /// The shard's id, also its Raft group id.
    pub id: ShardId,
    /// Grows when the shard's vnodes or replicas change.
    pub epoch: u64,
    /// Nodes holding a voting replica; the first one initialises the Raft group.
    pub replicas: Vec<NodeId>,
    /// Nodes receiving a copy before they become voters (a replica move).
    #[serde(default)]
    pub learners: Vec<NodeId>,
    /// The last leader a heartbeat reported, if any.
    pub leader: Option<NodeId>,
    /// The shard this one was split from. A node still holding that shard's
    /// pre-split copy creates this replica itself when it applies the split.
    #[serde(default)]
    pub split_from: Option<ShardId>,
}

impl ShardInfo {
    /// Whether `node` holds a replica or learner of this shard.
    pub fn hosted_on(&self, node: NodeId) -> bool {
        self.replicas.contains(&node) || self.learners.contains(&node)
    }
}

/// Lifecycle of a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeState {
    /// Registered and heartbeating.
    Up,
    /// Missed heartbeats for longer than the liveness timeout.
    Down,
    /// Being decommissioned: its replicas move to other nodes.
    Draining,
    /// Decommissioned: holds no replica and receives none.
    Removed,
}

/// One shard node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The node's id.
    pub id: NodeId,
    /// QUIC address other members reach it at.
    pub addr: String,
    /// Liveness as the placement driver sees it.
    pub state: NodeState,
    /// The failure domain (rack, zone) the node declared with `--zone`; empty
    /// for none. Replicas of a shard go to distinct zones when there are enough.
    #[serde(default)]
    pub zone: String,
}

/// The routing table.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutingTable {
    /// 0 until the cluster is bootstrapped; grows with every structural change.
    pub version: RoutingVersion,
    /// Grows whenever a leader hint changes.
    pub leaders_generation: u64,
    /// Number of virtual nodes on the ring (fixed at creation).
    pub vnode_count: u32,
    /// `vnodes[v]` is the shard owning virtual node `v`.
    pub vnodes: Vec<ShardId>,
    /// Shards by id.
    pub shards: BTreeMap<ShardId, ShardInfo>,
    /// Nodes by id.
    pub nodes: BTreeMap<NodeId, NodeInfo>,
    /// ACL users, applied by every proxy (published with the table so proxies
    /// learn changes through the same watch).
    #[serde(default)]
    pub users: crate::acl::Users,
    /// Function libraries (FUNCTION LOAD), run by every shard that FCALL
    /// reaches: published with the table like the users.
    #[serde(default)]
    pub functions: crate::lua::Libraries,
}

impl RoutingTable {
    /// The shard owning virtual node `vnode`, if the table is bootstrapped.
    pub fn shard_of(&self, vnode: VnodeId) -> Option<ShardId> {
        self.vnodes.get(usize::from(vnode)).copied()
    }

    /// The virtual nodes of `shard`, ascending.
    pub fn vnodes_of(&self, shard: ShardId) -> Vec<VnodeId> {
        (0..self.vnodes.len())
            .filter(|&v| self.vnodes[v] == shard)
            .map(|v| v as VnodeId)
            .collect()
    }

    /// The address of `node`.
    pub fn addr_of(&self, node: NodeId) -> Option<&str> {
        self.nodes.get(&node).map(|n| n.addr.as_str())
    }

    /// Whether the cluster has been bootstrapped (shards exist).
    pub fn is_bootstrapped(&self) -> bool {
        self.version > 0 && !self.shards.is_empty()
    }
}

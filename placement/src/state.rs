//! The placement driver's replicated state and its deterministic transitions.
//!
//! [`PdState`] is what every PD member agrees on through the PD's Raft log: the
//! registered nodes, the shards and their replicas, the `vnode -> shard` table and
//! the routing version. [`PdState::apply`] is a pure function of the state and a
//! [`PdCommand`], so every member computes the same layout.

use std::collections::BTreeMap;

use redraft_common::ids::{NodeId, ShardId, VnodeId};
use redraft_common::routing::{NodeInfo, NodeState, RoutingTable, ShardInfo};
use serde::{Deserialize, Serialize};

/// A change to the placement state, proposed through the PD's Raft log.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum PdCommand {
    /// A node announces itself at `addr`; `requested` is the id it already has.
    Register {
        requested: Option<NodeId>,
        addr: String,
        /// The node's zone (empty: none).
        #[serde(default)]
        zone: String,
    },
    /// Create the initial shards over the registered nodes.
    /// `shards` in all when non-zero, else `shards_per_node` per node.
    Bootstrap {
        shards: u32,
        shards_per_node: u32,
        replicas: u32,
        vnode_count: u32,
    },
    /// Start moving a replica: `node` receives a learner copy of `shard`, which
    /// will replace the replica on node `from`.
    AddLearner { shard: ShardId, node: NodeId, from: NodeId },
    /// Finish (or abandon) a move: `shard`'s voters are now `replicas`, and it has
    /// no learners.
    SetReplicas { shard: ShardId, replicas: Vec<NodeId> },
    /// Set a node's lifecycle state (draining for decommission, removed once empty).
    SetNodeState { node: NodeId, state: NodeState },
    /// Record the decision to split `shard` (the scheduler carries it out).
    BeginSplit { shard: ShardId },
    /// Record the decision to merge shard `from` into shard `into`.
    BeginMerge { from: ShardId, into: ShardId },
    /// The pending split or merge was applied by the shards: publish the new
    /// routing (vnodes reassigned, shard added or removed).
    FinishReshape,
    /// ACL SETUSER: apply `rules` to user `name` (created when new).
    SetUser { name: String, rules: Vec<String> },
    /// ACL DELUSER.
    DeleteUsers { names: Vec<String> },
    /// CONFIG SET: `(parameter, value)` pairs, checked by the proxy.
    SetConfig { pairs: Vec<(String, String)> },
    /// FUNCTION LOAD, DELETE, FLUSH, RESTORE.
    ChangeLibraries(redraft_common::lua::LibraryChange),
}

/// A split or merge decided but not yet published. Kept in the replicated state so
/// a new PD leader finishes what the old one started: once a shard has applied
/// its part, the routing table must follow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reshape {
    /// `shard` hands `vnodes` to the new shard `child`.
    Split {
        shard: ShardId,
        child: ShardId,
        vnodes: Vec<VnodeId>,
    },
    /// Shard `from` (owning `vnodes`) merges into shard `into`.
    Merge {
        from: ShardId,
        into: ShardId,
        vnodes: Vec<VnodeId>,
    },
}

/// The outcome of applying a [`PdCommand`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum PdReply {
    /// The registered node's id.
    NodeId(NodeId),
    /// Done.
    Done,
    /// Refused; the text says why.
    Refused(String),
    /// A count (users removed).
    Count(u64),
}

/// Replicated placement state.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PdState {
    /// The routing table (without leader hints, which are not replicated).
    pub table: RoutingTable,
    /// Next id for a node that registers without one.
    pub next_node_id: NodeId,
    /// Next shard id.
    pub next_shard_id: ShardId,
    /// The split or merge in progress, if any (one at a time).
    #[serde(default)]
    pub reshape: Option<Reshape>,
    /// Replica moves in progress: shard -> (node giving it up, node receiving
    /// it). A new PD leader resumes them (every step is idempotent).
    #[serde(default)]
    pub moves: BTreeMap<ShardId, (NodeId, NodeId)>,
    /// CONFIG parameters operators set (`redraft_proxy::config`): remembered
    /// for the cluster, so every proxy answers CONFIG GET alike.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
}

impl PdState {
    /// Applies one command.
    pub fn apply(&mut self, command: &PdCommand) -> PdReply {
        match command {
            PdCommand::Register { requested, addr, zone } => self.register(*requested, addr, zone),
            PdCommand::Bootstrap {
                shards,
                shards_per_node,
                replicas,
                vnode_count,
            } => {
                let count = if *shards > 0 {
                    *shards as usize
                } else {
                    *shards_per_node as usize * self.table.nodes.len()
                };
                self.bootstrap(count, *replicas, *vnode_count)
            }
            PdCommand::AddLearner { shard, node, from } => {
                let known = self.table.nodes.contains_key(node);
                match self.table.shards.get_mut(shard) {
                    Some(info) if known && !info.hosted_on(*node) => {
                        info.learners.push(*node);
                        self.moves.insert(*shard, (*from, *node));
                        info.epoch += 1;
                        self.table.version += 1;
                        PdReply::Done
                    }
                    _ => PdReply::Refused(format!("cannot add node {node} to shard {shard}")),
                }
            }
            PdCommand::SetNodeState { node, state } => match self.table.nodes.get_mut(node) {
                Some(info) => {
                    info.state = *state;
                    self.table.version += 1;
                    PdReply::Done
                }
                None => PdReply::Refused(format!("no node {node}")),
            },
            PdCommand::BeginSplit { shard } => self.begin_split(*shard),
            PdCommand::BeginMerge { from, into } => self.begin_merge(*from, *into),
            PdCommand::FinishReshape => self.finish_reshape(),
            // Command names were validated by the proxy that took the request, so
            // every PD replica applies the same rules the same way.
            PdCommand::SetUser { name, rules } => match self.table.users.set_user(name, rules, |_| true) {
                Ok(()) => {
                    self.table.version += 1;
                    PdReply::Done
                }
                Err(e) => PdReply::Refused(e),
            },
            // Whole or not at all, the same on every PD replica.
            PdCommand::ChangeLibraries(change) => match self.table.functions.apply(change) {
                Ok(()) => {
                    self.table.version += 1;
                    PdReply::Done
                }
                Err(e) => PdReply::Refused(e),
            },
            PdCommand::SetConfig { pairs } => {
                self.config.extend(pairs.iter().cloned());
                PdReply::Done
            }
            PdCommand::DeleteUsers { names } => match self.table.users.delete(names) {
                Ok(removed) => {
                    self.table.version += 1;
                    PdReply::Count(removed)
                }
                Err(e) => PdReply::Refused(e),
            },
            PdCommand::SetReplicas { shard, replicas } => match self.table.shards.get_mut(shard) {
                Some(info) if !replicas.is_empty() => {
                    self.moves.remove(shard);
                    info.replicas = replicas.clone();
                    info.learners.clear();
                    info.epoch += 1;
                    self.table.version += 1;
                    PdReply::Done
                }
                _ => PdReply::Refused(format!("no shard {shard}")),
            },
        }
    }

    fn begin_split(&mut self, shard: ShardId) -> PdReply {
        if let Some(pending) = &self.reshape {
            return PdReply::Refused(format!("another split or merge is in progress: {pending:?}"));
        }
        let Some(info) = self.table.shards.get(&shard) else {
            return PdReply::Refused(format!("no shard {shard}"));
        };
        if !info.learners.is_empty() {
            return PdReply::Refused(format!("shard {shard} is moving a replica; try again"));
        }
        let vnodes = self.table.vnodes_of(shard);
        if vnodes.len() < 2 {
            return PdReply::Refused(format!("shard {shard} has fewer than 2 virtual nodes"));
        }
        self.next_shard_id = self
            .next_shard_id
            .max(self.table.shards.keys().max().map_or(1, |m| m + 1));
        let child = self.next_shard_id;
        self.next_shard_id += 1;
        self.reshape = Some(Reshape::Split {
            shard,
            child,
            vnodes: vnodes[vnodes.len() / 2..].to_vec(),
        });
        PdReply::Done
    }

    fn begin_merge(&mut self, from: ShardId, into: ShardId) -> PdReply {
        if let Some(pending) = &self.reshape {
            return PdReply::Refused(format!("another split or merge is in progress: {pending:?}"));
        }
        let (Some(a), Some(b)) = (self.table.shards.get(&from), self.table.shards.get(&into)) else {
            return PdReply::Refused(format!("shards {from} and {into} must both exist"));
        };
        if from == into {
            return PdReply::Refused("a shard cannot merge into itself".into());
        }
        if !a.learners.is_empty() || !b.learners.is_empty() {
            return PdReply::Refused("one of the shards is moving a replica; try again".into());
        }
        let mut ra = a.replicas.clone();
        let mut rb = b.replicas.clone();
        ra.sort();
        rb.sort();
        if ra != rb {
            return PdReply::Refused(format!(
                "shards {from} and {into} must have replicas on the same nodes ({ra:?} vs {rb:?}); move replicas first"
            ));
        }
        self.reshape = Some(Reshape::Merge {
            from,
            into,
            vnodes: self.table.vnodes_of(from),
        });
        PdReply::Done
    }

    fn finish_reshape(&mut self) -> PdReply {
        let Some(reshape) = self.reshape.take() else {
            return PdReply::Refused("no split or merge in progress".into());
        };
        match reshape {
            Reshape::Split { shard, child, vnodes } => {
                let Some(parent) = self.table.shards.get_mut(&shard) else {
                    return PdReply::Refused(format!("no shard {shard}"));
                };
                parent.epoch += 1;
                let info = ShardInfo {
                    id: child,
                    epoch: parent.epoch,
                    replicas: parent.replicas.clone(),
                    learners: Vec::new(),
                    leader: parent.leader,
                    split_from: Some(shard),
                };
                self.table.shards.insert(child, info);
                for v in vnodes {
                    self.table.vnodes[usize::from(v)] = child;
                }
            }
            Reshape::Merge { from, into, vnodes } => {
                self.table.shards.remove(&from);
                if let Some(info) = self.table.shards.get_mut(&into) {
                    info.epoch += 1;
                }
                for v in vnodes {
                    self.table.vnodes[usize::from(v)] = into;
                }
            }
        }
        self.table.version += 1;
        PdReply::Done
    }

    fn register(&mut self, requested: Option<NodeId>, addr: &str, zone: &str) -> PdReply {
        self.next_node_id = self.next_node_id.max(1);
        let id = match requested {
            Some(0) => return PdReply::Refused("node id 0 is reserved".into()),
            Some(id) => id,
            None => self.next_node_id,
        };
        if let Some(other) = self.table.nodes.values().find(|n| n.addr == addr && n.id != id) {
            if requested.is_none() {
                // A node that lost its id file comes back at the same address.
                return PdReply::NodeId(other.id);
            }
            return PdReply::Refused(format!("address {addr} is registered to node {}", other.id));
        }
        self.next_node_id = self.next_node_id.max(id + 1);
        let info = NodeInfo {
            id,
            addr: addr.to_string(),
            state: NodeState::Up,
            zone: zone.to_string(),
        };
        if self.table.nodes.insert(id, info.clone()).as_ref() != Some(&info) && self.table.is_bootstrapped() {
            // Nodes are part of the published table: watchers must see the change.
            self.table.version += 1;
        }
        PdReply::NodeId(id)
    }

    /// `replicas` distinct nodes for the `i`-th shard at bootstrap, round-robin
    /// from `nodes[i]`; with as many zones as replicas, in distinct zones.
    fn spread(&self, nodes: &[NodeId], i: usize, replicas: usize) -> Vec<NodeId> {
        let zone = |n: &NodeId| self.table.nodes.get(n).map_or("", |info| info.zone.as_str());
        let zones: std::collections::BTreeSet<&str> = nodes.iter().map(zone).filter(|z| !z.is_empty()).collect();
        // Zones interleaved (a1, b1, c1, a2, ...): consecutive nodes are in
        // distinct zones, so round-robin spreads replicas and counts alike.
        let mut interleaved: Vec<NodeId> = Vec::with_capacity(nodes.len());
        if zones.len() >= replicas {
            let by_zone: Vec<Vec<NodeId>> = zones
                .iter()
                .chain(std::iter::once(&""))
                .map(|z| nodes.iter().copied().filter(|n| zone(n) == *z).collect())
                .collect();
            for k in 0..nodes.len() {
                interleaved.extend(by_zone.iter().filter_map(|members| members.get(k)));
            }
        } else {
            interleaved.extend_from_slice(nodes);
        }
        let nodes = interleaved.as_slice();
        let mut picked: Vec<NodeId> = Vec::with_capacity(replicas);
        for r in 0..replicas {
            let fresh_zone = |n: &NodeId| zones.len() < replicas || picked.iter().all(|p| zone(p) != zone(n));
            let next = (0..nodes.len())
                .map(|k| nodes[(i + r + k) % nodes.len()])
                .find(|n| !picked.contains(n) && fresh_zone(n))
                .or_else(|| {
                    (0..nodes.len())
                        .map(|k| nodes[(i + r + k) % nodes.len()])
                        .find(|n| !picked.contains(n))
                });
            picked.extend(next);
        }
        picked
    }

    /// Creates `shard_count` shards of `replicas` replicas on distinct nodes,
    /// spreading first replicas (initial leaders) round-robin, and deals the
    /// virtual nodes out round-robin so every shard gets an equal share.
    fn bootstrap(&mut self, shard_count: usize, replicas: u32, vnode_count: u32) -> PdReply {
        if self.table.is_bootstrapped() {
            return PdReply::Refused("cluster is already bootstrapped".into());
        }
        let nodes: Vec<NodeId> = self.table.nodes.keys().copied().collect();
        if nodes.len() < replicas as usize || replicas == 0 {
            return PdReply::Refused(format!("{} nodes cannot hold {replicas} replicas", nodes.len()));
        }
        let shard_count = shard_count.clamp(1, vnode_count as usize);
        self.next_shard_id = self.next_shard_id.max(1);
        let mut shards = BTreeMap::new();
        for i in 0..shard_count {
            let id = self.next_shard_id;
            self.next_shard_id += 1;
            let replica_nodes = self.spread(&nodes, i, replicas as usize);
            shards.insert(
                id,
                ShardInfo {
                    id,
                    epoch: 1,
                    replicas: replica_nodes,
                    learners: Vec::new(),
                    leader: None,
                    split_from: None,
                },
            );
        }
        let ids: Vec<ShardId> = shards.keys().copied().collect();
        self.table.vnodes = (0..vnode_count as usize).map(|v| ids[v % ids.len()]).collect();
        self.table.vnode_count = vnode_count;
        self.table.shards = shards;
        self.table.version += 1;
        PdReply::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registered(n: u64) -> PdState {
        let mut s = PdState::default();
        for i in 0..n {
            s.apply(&PdCommand::Register {
                requested: None,
                addr: format!("127.0.0.1:{}", 7000 + i),
                zone: String::new(),
            });
        }
        s
    }

    #[test]
    fn bootstrap_spreads_each_shards_replicas_over_zones() {
        // Zones a, a, b, b, c, c in id order: round-robin alone would put
        // shard 1 on nodes 1, 2, 3 (two in zone a).
        let mut s = PdState::default();
        for (i, zone) in ["a", "a", "b", "b", "c", "c"].iter().enumerate() {
            s.apply(&PdCommand::Register {
                requested: None,
                addr: format!("127.0.0.1:{}", 7000 + i),
                zone: zone.to_string(),
            });
        }
        s.apply(&PdCommand::Bootstrap {
            shards: 12,
            shards_per_node: 0,
            replicas: 3,
            vnode_count: 64,
        });
        let zone = |n: &NodeId| s.table.nodes[n].zone.clone();
        let mut per_node = BTreeMap::new();
        for shard in s.table.shards.values() {
            let zones: std::collections::BTreeSet<String> = shard.replicas.iter().map(zone).collect();
            assert_eq!(zones.len(), 3, "shard {} on {:?}", shard.id, shard.replicas);
            for n in &shard.replicas {
                *per_node.entry(*n).or_insert(0) += 1;
            }
        }
        assert!(per_node.values().all(|c| *c == 6), "{per_node:?}");
    }

    #[test]
    fn registration_assigns_and_keeps_ids() {
        let mut s = registered(2);
        assert_eq!(s.table.nodes.keys().copied().collect::<Vec<_>>(), vec![1, 2]);
        assert!(matches!(
            s.apply(&PdCommand::Register {
                requested: Some(2),
                addr: "127.0.0.1:7001".into(),
                zone: String::new(),
            }),
            PdReply::NodeId(2)
        ));
        assert!(matches!(
            s.apply(&PdCommand::Register {
                requested: None,
                addr: "127.0.0.1:7000".into(),
                zone: String::new(),
            }),
            PdReply::NodeId(1)
        ));
        assert!(matches!(
            s.apply(&PdCommand::Register {
                requested: Some(9),
                addr: "127.0.0.1:7000".into(),
                zone: String::new(),
            }),
            PdReply::Refused(_)
        ));
        assert!(matches!(
            s.apply(&PdCommand::Register {
                requested: None,
                addr: "127.0.0.1:9".into(),
                zone: String::new(),
            }),
            PdReply::NodeId(3)
        ));
    }

    #[test]
    fn bootstrap_spreads_replicas_and_vnodes_evenly() {
        let mut s = registered(3);
        assert!(matches!(
            s.apply(&PdCommand::Bootstrap {
                shards: 0,
                shards_per_node: 4,
                replicas: 3,
                vnode_count: 1024
            }),
            PdReply::Done
        ));
        let t = &s.table;
        assert_eq!(t.shards.len(), 12);
        for shard in t.shards.values() {
            let mut r = shard.replicas.clone();
            r.dedup();
            r.sort();
            r.dedup();
            assert_eq!(r.len(), 3, "replicas on distinct nodes");
        }
        let mut first = BTreeMap::new();
        for shard in t.shards.values() {
            *first.entry(shard.replicas[0]).or_insert(0) += 1;
        }
        assert!(first.values().all(|&c| c == 4), "initial leaders spread: {first:?}");
        let per_shard: Vec<usize> = t.shards.keys().map(|&id| t.vnodes_of(id).len()).collect();
        assert!(per_shard.iter().all(|&n| n == 85 || n == 86), "{per_shard:?}");
        assert!(matches!(
            s.apply(&PdCommand::Bootstrap {
                shards: 0,
                shards_per_node: 4,
                replicas: 3,
                vnode_count: 1024
            }),
            PdReply::Refused(_)
        ));
    }

    fn bootstrapped(shards: u32) -> PdState {
        let mut s = registered(3);
        s.apply(&PdCommand::Bootstrap {
            shards,
            shards_per_node: 0,
            replicas: 3,
            vnode_count: 64,
        });
        s
    }

    #[test]
    fn split_is_recorded_then_published() {
        let mut s = bootstrapped(2);
        let version = s.table.version;
        assert!(matches!(s.apply(&PdCommand::BeginSplit { shard: 1 }), PdReply::Done));
        assert_eq!(
            s.table.version, version,
            "nothing published before the shard applied it"
        );
        assert!(matches!(
            s.apply(&PdCommand::BeginSplit { shard: 2 }),
            PdReply::Refused(_)
        ));
        let Some(Reshape::Split { child, vnodes, .. }) = s.reshape.clone() else {
            panic!("no split recorded")
        };
        assert_eq!((child, vnodes.len()), (3, 16));
        assert!(matches!(s.apply(&PdCommand::FinishReshape), PdReply::Done));
        assert_eq!(s.table.version, version + 1);
        assert_eq!(s.table.vnodes_of(1).len(), 16);
        assert_eq!(s.table.vnodes_of(3), vnodes);
        let (parent, new) = (&s.table.shards[&1], &s.table.shards[&3]);
        assert_eq!(
            (new.replicas.clone(), new.split_from),
            (parent.replicas.clone(), Some(1))
        );
        assert!(new.epoch > 1 && parent.epoch == new.epoch);
        assert!(s.reshape.is_none());
    }

    #[test]
    fn merge_needs_the_same_replicas_and_removes_the_shard() {
        let mut s = bootstrapped(2);
        s.apply(&PdCommand::SetReplicas {
            shard: 2,
            replicas: vec![3, 1, 2],
        });
        assert!(matches!(
            s.apply(&PdCommand::BeginMerge { from: 2, into: 2 }),
            PdReply::Refused(_)
        ));
        assert!(matches!(
            s.apply(&PdCommand::BeginMerge { from: 2, into: 1 }),
            PdReply::Done
        ));
        assert!(matches!(s.apply(&PdCommand::FinishReshape), PdReply::Done));
        assert_eq!(s.table.shards.len(), 1);
        assert_eq!(s.table.vnodes_of(1).len(), 64);
        // Different replica sets cannot merge.
        let mut s = registered(4);
        s.apply(&PdCommand::Bootstrap {
            shards: 2,
            shards_per_node: 0,
            replicas: 3,
            vnode_count: 64,
        });
        assert!(matches!(
            s.apply(&PdCommand::BeginMerge { from: 2, into: 1 }),
            PdReply::Refused(_)
        ));
    }

    #[test]
    fn bootstrap_needs_enough_nodes() {
        let mut s = registered(2);
        assert!(matches!(
            s.apply(&PdCommand::Bootstrap {
                shards: 0,
                shards_per_node: 4,
                replicas: 3,
                vnode_count: 64
            }),
            PdReply::Refused(_)
        ));
    }
}

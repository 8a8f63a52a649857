//! The scheduler: keeps replica and leader counts even across live nodes.
//!
//! Runs on the PD leader, one operator at a time (a simple, global concurrency
//! limit of one move). Each tick:
//!
//! 1. **Replicas.** When the live node with the most replicas has two or more
//!    than the one with the fewest, one replica moves between them, TiKV's way:
//!    the PD records the target as a learner (the target node creates an empty
//!    replica), the shard's leader adds it as a Raft learner and waits until it
//!    has caught up by snapshot and log, then changes the voters to drop the
//!    source and promote the target (joint consensus), and the PD records the
//!    new replica set (the source node then deletes its copy).
//! 2. **Leaders.** Otherwise, the node leading the most shards hands one
//!    leadership to a replica on a node leading at least two fewer, until leader
//!    counts are within one of each other (that replica campaigns; it wins only
//!    with an up-to-date log).
//!
//! A move that fails is abandoned: the PD restores the old replica set, which
//! removes the learner. Clients never notice a move: the shard keeps its quorum
//! throughout and the proxy follows leader changes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use redraft_common::ids::{NodeId, ShardId};
use redraft_common::routing::{NodeState, RoutingTable};
use redraft_common::transport::Endpoint;
use redraft_common::wire::{NodeRequest, NodeResponse};

use crate::state::{PdCommand, PdReply};

/// What the scheduler needs from the placement driver.
pub trait Cluster: Send + Sync {
    /// The routing table with leader hints.
    fn table(&self) -> RoutingTable;
    /// Nodes that heartbeated recently.
    fn live(&self) -> Vec<NodeId>;
    /// Nodes silent for longer than the re-replication timeout.
    fn dead(&self) -> Vec<NodeId>;
    /// Proposes a placement command through the PD's log.
    fn propose(&self, command: PdCommand) -> impl std::future::Future<Output = Result<PdReply>> + Send;
}

/// The step the scheduler wants to take next, if any.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Move `shard`'s replica from node `from` to node `to`.
    Move { shard: ShardId, from: NodeId, to: NodeId },
    /// Move `shard`'s leadership to node `to`.
    Lead { shard: ShardId, to: NodeId },
    /// A draining node holds nothing any more: mark it removed.
    Remove { node: NodeId },
}

/// Decides the next step from the table, the live nodes and the nodes dead for
/// longer than the re-replication timeout.
pub fn next_step(table: &RoutingTable, live: &[NodeId], dead: &[NodeId]) -> Option<Step> {
    if table.shards.values().any(|s| !s.learners.is_empty()) {
        return None;
    }
    let state = |n: &NodeId| table.nodes.get(n).map(|i| i.state);
    // Nodes that take replicas: live and neither draining nor removed.
    let usable: Vec<NodeId> = live
        .iter()
        .copied()
        .filter(|n| state(n) == Some(NodeState::Up))
        .collect();
    let count = |n: NodeId| table.shards.values().filter(|s| s.hosted_on(n)).count();
    // First empty the nodes being decommissioned and the dead ones.
    let draining = table
        .nodes
        .values()
        .filter(|n| n.state == NodeState::Draining)
        .map(|n| n.id);
    for source in draining.chain(dead.iter().copied()) {
        let moving = table.shards.values().find(|s| s.replicas.contains(&source));
        match moving {
            Some(shard) => {
                let to = usable
                    .iter()
                    .copied()
                    .filter(|n| !shard.hosted_on(*n))
                    .min_by_key(|n| (count(*n), *n));
                if let Some(to) = to {
                    return Some(Step::Move {
                        shard: shard.id,
                        from: source,
                        to,
                    });
                }
            }
            None if state(&source) == Some(NodeState::Draining) => return Some(Step::Remove { node: source }),
            None => {}
        }
    }
    let live = usable;
    if live.len() < 2 {
        return None;
    }
    let mut replicas: BTreeMap<NodeId, usize> = live.iter().map(|n| (*n, 0)).collect();
    let mut leaders: BTreeMap<NodeId, usize> = replicas.clone();
    for shard in table.shards.values() {
        for node in &shard.replicas {
            if let Some(c) = replicas.get_mut(node) {
                *c += 1;
            }
        }
        if let Some(c) = shard.leader.and_then(|l| leaders.get_mut(&l)) {
            *c += 1;
        }
    }
    let (&most, &max) = replicas.iter().max_by_key(|(n, c)| (**c, std::cmp::Reverse(**n)))?;
    let (&fewest, &min) = replicas.iter().min_by_key(|(n, c)| (**c, **n))?;
    if max >= min + 2 {
        // Prefer a shard the source does not lead: no leader change needed.
        let candidates = table
            .shards
            .values()
            .filter(|s| s.replicas.contains(&most) && !s.hosted_on(fewest));
        let pick = candidates
            .clone()
            .find(|s| s.leader != Some(most))
            .or(candidates.clone().next())?;
        return Some(Step::Move {
            shard: pick.id,
            from: most,
            to: fewest,
        });
    }
    // Leaders: move one from the busiest node to a replica on a node leading at
    // least two fewer, fewest first, until counts are within one of each other.
    let (&busiest, &led) = leaders.iter().max_by_key(|(_, c)| **c)?;
    let mut targets: Vec<(usize, NodeId)> = leaders
        .iter()
        .filter(|(_, c)| **c + 2 <= led)
        .map(|(n, c)| (*c, *n))
        .collect();
    targets.sort();
    for (_, to) in targets {
        if let Some(shard) = table
            .shards
            .values()
            .find(|s| s.leader == Some(busiest) && s.replicas.contains(&to))
        {
            return Some(Step::Lead { shard: shard.id, to });
        }
    }
    None
}

/// Sends an operator request to a shard's leader, following leader hints and
/// trying the other replicas when a node does not answer (it may be the dead one).
async fn to_leader(endpoint: &Endpoint, table: &RoutingTable, shard: ShardId, request: NodeRequest) -> Result<()> {
    let info = table.shards.get(&shard).ok_or_else(|| anyhow!("no shard {shard}"))?;
    let mut target = info.leader.or(info.replicas.first().copied());
    for attempt in 0..8 {
        let node = target.ok_or_else(|| anyhow!("shard {shard} has no known leader"))?;
        let addr: SocketAddr = table
            .addr_of(node)
            .ok_or_else(|| anyhow!("no address for node {node}"))?
            .parse()?;
        match endpoint
            .call::<_, NodeResponse>(addr, &request, Duration::from_secs(70))
            .await
        {
            Ok(NodeResponse::Reply(_)) => return Ok(()),
            Ok(NodeResponse::NotLeader { leader: Some(l) }) if l != node => target = Some(l),
            Ok(NodeResponse::NotLeader { .. }) | Ok(NodeResponse::NoShard) | Err(_) => {
                target = info.replicas.get((attempt + 1) % info.replicas.len()).copied();
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Ok(other) => bail!("shard {shard}: {other:?}"),
        }
    }
    bail!("shard {shard}: no leader answered")
}

/// Asks node `to` to take over the leadership of `shard`.
async fn campaign(endpoint: &Endpoint, table: &RoutingTable, shard: ShardId, to: NodeId) -> Result<()> {
    let addr: SocketAddr = table
        .addr_of(to)
        .ok_or_else(|| anyhow!("no address for node {to}"))?
        .parse()?;
    match endpoint
        .call::<_, NodeResponse>(addr, &NodeRequest::Campaign { shard }, Duration::from_secs(10))
        .await?
    {
        NodeResponse::Reply(_) => Ok(()),
        other => bail!("node {to} did not take over shard {shard}: {other:?}"),
    }
}

/// Takes one step; returns it, or `None` when the cluster is balanced.
pub async fn tick(cluster: &impl Cluster, endpoint: &Endpoint) -> Result<Option<Step>> {
    let table = cluster.table();
    let Some(step) = next_step(&table, &cluster.live(), &cluster.dead()) else {
        return Ok(None);
    };
    match &step {
        Step::Move { shard, from, to } => {
            let info = &table.shards[shard];
            if info.leader == Some(*from) {
                // Hand leadership to a staying replica first, so no write is in
                // flight on the replica that is about to be deleted.
                if let Some(stay) = info.replicas.iter().copied().find(|n| n != from) {
                    campaign(endpoint, &table, *shard, stay).await?;
                }
            }
            tracing::info!(shard_id = shard, from, to, "moving replica: adding learner");
            cluster
                .propose(PdCommand::AddLearner {
                    shard: *shard,
                    node: *to,
                })
                .await?;
            let addr = table
                .addr_of(*to)
                .ok_or_else(|| anyhow!("no address for node {to}"))?
                .to_string();
            let voters: Vec<NodeId> = info
                .replicas
                .iter()
                .copied()
                .filter(|n| n != from)
                .chain([*to])
                .collect();
            let moved = async {
                to_leader(
                    endpoint,
                    &table,
                    *shard,
                    NodeRequest::AddLearner {
                        shard: *shard,
                        node: *to,
                        addr,
                    },
                )
                .await?;
                tracing::info!(shard_id = shard, from, to, "learner caught up: changing voters");
                to_leader(
                    endpoint,
                    &table,
                    *shard,
                    NodeRequest::ChangeVoters {
                        shard: *shard,
                        voters: voters.clone(),
                    },
                )
                .await
            };
            match moved.await {
                Ok(()) => {
                    cluster
                        .propose(PdCommand::SetReplicas {
                            shard: *shard,
                            replicas: voters,
                        })
                        .await?;
                    tracing::info!(shard_id = shard, from, to, "replica moved");
                }
                Err(e) => {
                    tracing::warn!(shard_id = shard, from, to, error = %e, "replica move abandoned");
                    cluster
                        .propose(PdCommand::SetReplicas {
                            shard: *shard,
                            replicas: info.replicas.clone(),
                        })
                        .await?;
                }
            }
        }
        Step::Remove { node } => {
            cluster
                .propose(PdCommand::SetNodeState {
                    node: *node,
                    state: NodeState::Removed,
                })
                .await?;
            tracing::info!(node_id = node, "node drained and removed");
        }
        Step::Lead { shard, to } => {
            tracing::info!(shard_id = shard, to, "moving leadership");
            if let Err(e) = campaign(endpoint, &table, *shard, *to).await {
                tracing::warn!(shard_id = shard, to, error = %e, "leadership move failed");
            }
        }
    }
    Ok(Some(step))
}

#[cfg(test)]
mod tests {
    use redraft_common::routing::{NodeInfo, NodeState, ShardInfo};

    use super::*;

    fn table(layout: &[(&[NodeId], Option<NodeId>)], nodes: u64) -> RoutingTable {
        let mut t = RoutingTable {
            version: 1,
            vnode_count: 4,
            ..Default::default()
        };
        for (i, (replicas, leader)) in layout.iter().enumerate() {
            let id = i as u64 + 1;
            t.shards.insert(
                id,
                ShardInfo {
                    id,
                    epoch: 1,
                    replicas: replicas.to_vec(),
                    learners: vec![],
                    leader: *leader,
                },
            );
        }
        for n in 1..=nodes {
            t.nodes.insert(
                n,
                NodeInfo {
                    id: n,
                    addr: format!("127.0.0.1:{}", 7000 + n),
                    state: NodeState::Up,
                },
            );
        }
        t
    }

    #[test]
    fn a_new_node_receives_replicas_not_led_by_the_source() {
        let t = table(
            &[(&[1, 2, 3], Some(1)), (&[2, 3, 1], Some(2)), (&[3, 1, 2], Some(3))],
            4,
        );
        match next_step(&t, &[1, 2, 3, 4], &[]) {
            Some(Step::Move { from, to: 4, shard }) => assert_ne!(t.shards[&shard].leader, Some(from)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn balanced_replicas_then_leaders() {
        let even = table(
            &[(&[1, 2, 3], Some(1)), (&[2, 3, 1], Some(1)), (&[3, 1, 2], Some(1))],
            3,
        );
        assert!(matches!(next_step(&even, &[1, 2, 3], &[]), Some(Step::Lead { to, .. }) if to != 1));
        let done = table(
            &[(&[1, 2, 3], Some(1)), (&[2, 3, 1], Some(2)), (&[3, 1, 2], Some(3))],
            3,
        );
        assert_eq!(next_step(&done, &[1, 2, 3], &[]), None);
    }

    #[test]
    fn nothing_moves_while_a_move_is_in_flight_or_to_a_dead_node() {
        let mut t = table(&[(&[1, 2, 3], Some(1)), (&[2, 3, 1], Some(2))], 4);
        assert_eq!(next_step(&t, &[1, 2, 3], &[]), None, "node 4 is not live");
        t.shards.get_mut(&1).unwrap().learners.push(4);
        assert_eq!(next_step(&t, &[1, 2, 3, 4], &[]), None);
    }

    #[test]
    fn draining_and_dead_nodes_are_emptied_then_removed() {
        let mut t = table(&[(&[1, 2, 3], Some(1)), (&[2, 3, 4], Some(2))], 4);
        t.nodes.get_mut(&3).unwrap().state = NodeState::Draining;
        assert!(matches!(
            next_step(&t, &[1, 2, 3, 4], &[]),
            Some(Step::Move {
                from: 3,
                to: 4,
                shard: 1
            })
        ));
        for s in t.shards.values_mut() {
            s.replicas.retain(|n| *n != 3);
        }
        assert_eq!(next_step(&t, &[1, 2, 3, 4], &[]), Some(Step::Remove { node: 3 }));
        let t = table(&[(&[1, 2, 3], Some(1))], 4);
        assert!(matches!(
            next_step(&t, &[1, 2, 4], &[3]),
            Some(Step::Move { from: 3, to: 4, .. })
        ));
    }
}

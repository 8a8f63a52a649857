//! The scheduler: keeps replica and leader counts even across live nodes.
//!
//! Runs on the PD leader. Replica moves run concurrently, at most
//! [`InFlight::per_node`] per node (as source or target); snapshot bandwidth is
//! limited on the sending node. Each planning round:
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
//!
//! A recorded split or merge ([`Reshape`]) goes first and blocks moves until it is
//! published. **Split**: the shard's leader proposes the split entry; once it is
//! applied the PD publishes the new routing. **Merge**: the retiring shard
//! proposes `Retire` (it stops serving), every one of its replicas is waited for
//! until it has applied that entry, then the surviving shard proposes `Absorb` and
//! the PD publishes. Each step is idempotent, so a new PD leader simply starts
//! the recorded reshape again.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use redraft_common::ids::{NodeId, ShardId};
use redraft_common::ops::{ShardOp, WriteOp};
use redraft_common::resp::Frame;
use redraft_common::routing::{NodeState, RoutingTable};
use redraft_common::transport::Endpoint;
use redraft_common::wire::{NodeRequest, NodeResponse};

use crate::state::{PdCommand, PdReply, Reshape};

/// What the scheduler needs from the placement driver.
pub trait Cluster: Send + Sync {
    /// The routing table with leader hints.
    fn table(&self) -> RoutingTable;
    /// Nodes that heartbeated recently.
    fn live(&self) -> Vec<NodeId>;
    /// Nodes silent for longer than the re-replication timeout.
    fn dead(&self) -> Vec<NodeId>;
    /// The recorded split or merge, if any (it goes before anything else).
    fn reshape(&self) -> Option<Reshape>;
    /// The replica moves under way and the per-node move limit.
    fn in_flight(&self) -> InFlight;
    /// Proposes a placement command through the PD's log.
    fn propose(&self, command: PdCommand) -> impl std::future::Future<Output = Result<PdReply>> + Send;
    /// `node` now leads `shard` (a leadership move succeeded): the leader hint
    /// changes at once, before the heartbeats report it, so the next plan
    /// starts from it.
    fn leader_moved(&self, shard: ShardId, node: NodeId);
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
    /// Carry out the recorded split or merge.
    Reshape(Reshape),
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::Move { shard, from, to } => write!(f, "moved shard {shard} replica from node {from} to node {to}"),
            Step::Lead { shard, to } => write!(f, "moved shard {shard} leadership to node {to}"),
            Step::Remove { node } => write!(f, "marked node {node} removed"),
            Step::Reshape(Reshape::Split { shard, child, vnodes }) => {
                write!(f, "split shard {shard}: {} vnodes to new shard {child}", vnodes.len())
            }
            Step::Reshape(Reshape::Merge { from, into, vnodes }) => {
                write!(f, "merged shard {from} ({} vnodes) into shard {into}", vnodes.len())
            }
        }
    }
}

/// Replica moves under way and how many moves one node may take part in at once
/// (as source or target): the per-node concurrency limit.
#[derive(Clone, Debug, Default)]
pub struct InFlight {
    /// shard -> (node giving up its replica, node receiving it).
    pub moves: BTreeMap<ShardId, (NodeId, NodeId)>,
    /// Moves one node may take part in at once (at least 1).
    pub per_node: usize,
    /// Whether to even out replicas and leaders; when false only draining and
    /// dead nodes are emptied (operators balance with `redraft ctl rebalance`).
    pub balance: bool,
}

impl InFlight {
    fn busy(&self, table: &RoutingTable, node: NodeId) -> usize {
        let recorded = self.moves.values().filter(|(f, t)| *f == node || *t == node).count();
        // A learner without a recorded move (never expected) still counts.
        let unrecorded = table
            .shards
            .values()
            .filter(|s| s.learners.contains(&node) && !self.moves.contains_key(&s.id))
            .count();
        recorded + unrecorded
    }

    fn allows(&self, table: &RoutingTable, from: NodeId, to: NodeId) -> bool {
        let limit = self.per_node.max(1);
        self.busy(table, from) < limit && self.busy(table, to) < limit
    }

    fn is_empty(&self, table: &RoutingTable) -> bool {
        self.moves.is_empty() && table.shards.values().all(|s| s.learners.is_empty())
    }
}

/// Decides the next step from the table, the live nodes, the nodes dead for
/// longer than the re-replication timeout and the moves under way. Replica counts
/// are counted as they will be once the moves under way finish; a shard moves one
/// replica at a time; leaders are balanced only when no replica is moving.
pub fn next_step(table: &RoutingTable, live: &[NodeId], dead: &[NodeId], in_flight: &InFlight) -> Option<Step> {
    let state = |n: &NodeId| table.nodes.get(n).map(|i| i.state);
    // Nodes that take replicas: live and neither draining nor removed.
    let usable: Vec<NodeId> = live
        .iter()
        .copied()
        .filter(|n| state(n) == Some(NodeState::Up))
        .collect();
    let leaving = |n: NodeId| in_flight.moves.values().filter(|(f, _)| *f == n).count();
    let count = |n: NodeId| {
        table
            .shards
            .values()
            .filter(|s| s.hosted_on(n))
            .count()
            .saturating_sub(leaving(n))
    };
    let idle = |s: &&redraft_common::routing::ShardInfo| s.learners.is_empty() && !in_flight.moves.contains_key(&s.id);
    // First empty the nodes being decommissioned and the dead ones.
    let draining = table
        .nodes
        .values()
        .filter(|n| n.state == NodeState::Draining)
        .map(|n| n.id);
    for source in draining.chain(dead.iter().copied()) {
        let mut holds_any = false;
        for shard in table.shards.values().filter(|s| s.replicas.contains(&source)) {
            holds_any = true;
            if !idle(&shard) {
                continue;
            }
            let to = usable
                .iter()
                .copied()
                .filter(|n| !shard.hosted_on(*n) && in_flight.allows(table, source, *n))
                .min_by_key(|n| (count(*n), *n));
            if let Some(to) = to {
                return Some(Step::Move {
                    shard: shard.id,
                    from: source,
                    to,
                });
            }
        }
        if !holds_any && state(&source) == Some(NodeState::Draining) && in_flight.busy(table, source) == 0 {
            return Some(Step::Remove { node: source });
        }
    }
    let live = usable;
    if live.len() < 2 || !in_flight.balance {
        return None;
    }
    let replicas: BTreeMap<NodeId, usize> = live.iter().map(|n| (*n, count(*n))).collect();
    // Sources from the fullest, targets from the emptiest: the first pair two or
    // more apart whose nodes are not at their move limit, with a shard to move.
    let mut sources: Vec<(NodeId, usize)> = replicas.iter().map(|(n, c)| (*n, *c)).collect();
    sources.sort_by_key(|(n, c)| (std::cmp::Reverse(*c), *n));
    let mut targets = sources.clone();
    targets.sort_by_key(|(n, c)| (*c, *n));
    for &(most, max) in &sources {
        for &(fewest, min) in &targets {
            if max < min + 2 {
                break;
            }
            if !in_flight.allows(table, most, fewest) {
                continue;
            }
            // Prefer a shard the source does not lead: no leader change needed.
            let candidates: Vec<_> = table
                .shards
                .values()
                .filter(|s| s.replicas.contains(&most) && !s.hosted_on(fewest))
                .filter(idle)
                .collect();
            let pick = candidates
                .iter()
                .find(|s| s.leader != Some(most))
                .or(candidates.first());
            if let Some(pick) = pick {
                return Some(Step::Move {
                    shard: pick.id,
                    from: most,
                    to: fewest,
                });
            }
        }
    }
    if !in_flight.is_empty(table) {
        return None;
    }
    let mut leaders: BTreeMap<NodeId, usize> = live.iter().map(|n| (*n, 0)).collect();
    for shard in table.shards.values() {
        if let Some(c) = shard.leader.and_then(|l| leaders.get_mut(&l)) {
            *c += 1;
        }
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

/// Where node `node` listens, from the routing table.
fn node_addr(table: &RoutingTable, node: NodeId) -> Result<SocketAddr> {
    Ok(table
        .addr_of(node)
        .ok_or_else(|| anyhow!("no address for node {node}"))?
        .parse()?)
}

/// Sends an operator request to a shard's leader, following leader hints and
/// trying the other replicas when a node does not answer (it may be the dead one).
pub(crate) async fn to_leader(
    endpoint: &Endpoint,
    table: &RoutingTable,
    shard: ShardId,
    request: NodeRequest,
) -> Result<Frame> {
    let info = table.shards.get(&shard).ok_or_else(|| anyhow!("no shard {shard}"))?;
    let mut target = info.leader.or(info.replicas.first().copied());
    for attempt in 0..8 {
        let node = target.ok_or_else(|| anyhow!("shard {shard} has no known leader"))?;
        let addr = node_addr(table, node)?;
        match endpoint
            .call::<_, NodeResponse>(addr, &request, Duration::from_secs(70))
            .await
        {
            Ok(NodeResponse::Reply(Frame::Error(e))) => bail!("shard {shard}: {e}"),
            Ok(NodeResponse::Reply(frame)) => return Ok(frame),
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

/// Moves the leadership of `shard` to node `to`: asks the current leader to hand
/// it over (a leadership transfer, which holds writes only while `to` catches
/// up), or, when no replica leads, asks `to` to campaign. Follows `NotLeader`
/// answers to the leader they name.
pub async fn transfer_leadership(endpoint: &Endpoint, table: &RoutingTable, shard: ShardId, to: NodeId) -> Result<()> {
    let info = table.shards.get(&shard).ok_or_else(|| anyhow!("no shard {shard}"))?;
    if !info.replicas.contains(&to) {
        bail!(
            "node {to} holds no replica of shard {shard} (replicas {:?})",
            info.replicas
        );
    }
    let mut leader = info.leader;
    for _ in 0..3 {
        let (node, request) = match leader {
            Some(leader) => (leader, NodeRequest::TransferLeader { shard, to }),
            None => (
                to,
                NodeRequest::Campaign {
                    shard,
                    handed_over: false,
                },
            ),
        };
        let addr = node_addr(table, node)?;
        match endpoint
            .call::<_, NodeResponse>(addr, &request, Duration::from_secs(10))
            .await?
        {
            NodeResponse::Reply(_) => return Ok(()),
            NodeResponse::NotLeader { leader: named } if named != leader => leader = named,
            other => bail!("node {to} did not take over shard {shard}: {other:?}"),
        }
    }
    bail!("node {to} did not take over shard {shard}: the leader kept changing")
}

/// Takes one step; returns it, or `None` when the cluster is balanced.
pub async fn tick(cluster: &impl Cluster, endpoint: &Endpoint) -> Result<Option<Step>> {
    let table = cluster.table();
    let step = match cluster.reshape() {
        Some(reshape) => Step::Reshape(reshape),
        None => match next_step(&table, &cluster.live(), &cluster.dead(), &cluster.in_flight()) {
            Some(step) => step,
            None => return Ok(None),
        },
    };
    execute(cluster, endpoint, &table, &step).await?;
    Ok(Some(step))
}

/// Whether an operator may move `shard`'s replica from `from` to `to` now.
pub fn check_move(table: &RoutingTable, live: &[NodeId], shard: ShardId, from: NodeId, to: NodeId) -> Result<()> {
    let info = table.shards.get(&shard).ok_or_else(|| anyhow!("no shard {shard}"))?;
    if !info.learners.is_empty() {
        bail!("shard {shard} is already moving a replica");
    }
    if !info.replicas.contains(&from) {
        bail!("node {from} holds no replica of shard {shard}");
    }
    if info.hosted_on(to) {
        bail!("node {to} already holds a replica of shard {shard}");
    }
    let up = table.nodes.get(&to).is_some_and(|n| n.state == NodeState::Up);
    if !up || !live.contains(&to) {
        bail!("node {to} is not up");
    }
    Ok(())
}

/// Carries out one step.
pub async fn execute(cluster: &impl Cluster, endpoint: &Endpoint, table: &RoutingTable, step: &Step) -> Result<()> {
    match step {
        Step::Reshape(reshape) => {
            match reshape {
                Reshape::Split { shard, child, vnodes } => {
                    tracing::info!(shard_id = shard, child, vnodes = vnodes.len(), "splitting shard");
                    let split = WriteOp::Split {
                        child: *child,
                        vnodes: vnodes.clone(),
                    };
                    to_leader(endpoint, table, *shard, exec(table, *shard, split)).await?;
                }
                Reshape::Merge { from, into, vnodes } => {
                    tracing::info!(shard_id = from, into, "merging shard: retiring it");
                    let upto = match to_leader(endpoint, table, *from, exec(table, *from, WriteOp::Retire)).await? {
                        Frame::Integer(index) => index as u64,
                        other => bail!("shard {from}: unexpected answer to Retire: {other:?}"),
                    };
                    for &node in &table.shards[from].replicas {
                        wait_applied(endpoint, table, *from, node, upto).await?;
                    }
                    tracing::info!(shard_id = from, into, upto, "retired on every replica: absorbing");
                    let absorb = WriteOp::Absorb {
                        from: *from,
                        vnodes: vnodes.clone(),
                        upto,
                    };
                    to_leader(endpoint, table, *into, exec(table, *into, absorb)).await?;
                }
            }
            cluster.propose(PdCommand::FinishReshape).await?;
            tracing::info!("{step}");
        }
        _ => execute_move(cluster, endpoint, table, step).await?,
    }
    Ok(())
}

pub(crate) fn exec(table: &RoutingTable, shard: ShardId, op: WriteOp) -> NodeRequest {
    NodeRequest::Exec {
        shard,
        version: table.version,
        op: ShardOp::Write(op),
    }
}

/// Waits until `node`'s replica of `shard` has applied its log up to `index`
/// (with `index` 0: until the replica exists).
async fn wait_applied(
    endpoint: &Endpoint,
    table: &RoutingTable,
    shard: ShardId,
    node: NodeId,
    index: u64,
) -> Result<()> {
    let addr = node_addr(table, node)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let answer = endpoint
            .call::<_, NodeResponse>(addr, &NodeRequest::Applied { shard }, Duration::from_secs(3))
            .await;
        if let Ok(NodeResponse::Reply(Frame::Integer(applied))) = answer {
            if applied as u64 >= index {
                return Ok(());
            }
        }
        if std::time::Instant::now() >= deadline {
            bail!("node {node} has not applied shard {shard} up to {index}: {answer:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts moving `shard`'s replica from `from` to `to`: hands leadership off the
/// source, then records the target as a learner (the target node creates an
/// empty replica). A move recorded before (by an earlier PD leader) is resumed.
pub async fn begin_move(
    cluster: &impl Cluster,
    endpoint: &Endpoint,
    table: &RoutingTable,
    (shard, from, to): (&ShardId, &NodeId, &NodeId),
) -> Result<()> {
    let info = table.shards.get(shard).ok_or_else(|| anyhow!("no shard {shard}"))?;
    if info.leader == Some(*from) {
        // Hand leadership to a staying replica first, so no write is in
        // flight on the replica that is about to be deleted.
        if let Some(stay) = info.replicas.iter().copied().find(|n| n != from) {
            transfer_leadership(endpoint, table, *shard, stay).await?;
        }
    }
    if info.learners.contains(to) {
        tracing::info!(shard_id = shard, from, to, "resuming a replica move");
    } else {
        tracing::info!(shard_id = shard, from, to, "moving replica: adding learner");
        cluster
            .propose(PdCommand::AddLearner {
                shard: *shard,
                node: *to,
                from: *from,
            })
            .await?;
    }
    Ok(())
}

/// Finishes a move [`begin_move`] started: the shard's leader adds the learner and
/// waits for it to catch up, changes the voters, and the PD records the new
/// replica set; on failure the old replica set is restored.
pub async fn complete_move(
    cluster: &impl Cluster,
    endpoint: &Endpoint,
    table: &RoutingTable,
    (shard, from, to): (&ShardId, &NodeId, &NodeId),
) -> Result<()> {
    let info = table.shards.get(shard).ok_or_else(|| anyhow!("no shard {shard}"))?;
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
        // The target creates its empty replica when it sees the recorded learner;
        // a snapshot sent before that would be refused and sent again.
        wait_applied(endpoint, table, *shard, *to, 0).await?;
        to_leader(
            endpoint,
            table,
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
            table,
            *shard,
            NodeRequest::ChangeVoters {
                shard: *shard,
                voters: voters.clone(),
            },
        )
        .await
    };
    match moved.await {
        Ok(_) => {
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
            // Take the learner out of the group first, so its leader stops
            // replicating to a copy the target node is about to delete (best
            // effort: with no leader now, the leader keeps replicating to it, and
            // tolerates the copy being re-created by the next attempt).
            let restore = NodeRequest::ChangeVoters {
                shard: *shard,
                voters: info.replicas.clone(),
            };
            if let Err(cleanup) = to_leader(endpoint, table, *shard, restore).await {
                tracing::warn!(shard_id = shard, to, error = %cleanup, "could not remove the abandoned learner");
            }
            cluster
                .propose(PdCommand::SetReplicas {
                    shard: *shard,
                    replicas: info.replicas.clone(),
                })
                .await?;
            bail!("moving shard {shard} from node {from} to node {to} failed: {e}");
        }
    }
    Ok(())
}

async fn execute_move(cluster: &impl Cluster, endpoint: &Endpoint, table: &RoutingTable, step: &Step) -> Result<()> {
    match step {
        Step::Move { shard, from, to } => {
            begin_move(cluster, endpoint, table, (shard, from, to)).await?;
            complete_move(cluster, endpoint, table, (shard, from, to)).await?;
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
            match transfer_leadership(endpoint, table, *shard, *to).await {
                Ok(()) => cluster.leader_moved(*shard, *to),
                Err(e) => tracing::warn!(shard_id = shard, to, error = %e, "leadership move failed"),
            }
        }
        Step::Reshape(_) => bail!("a reshape is not a move"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use redraft_common::routing::{NodeInfo, NodeState, ShardInfo};

    use super::*;

    fn idle() -> InFlight {
        InFlight {
            moves: BTreeMap::new(),
            per_node: 1,
            balance: true,
        }
    }

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
                    split_from: None,
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
        match next_step(&t, &[1, 2, 3, 4], &[], &idle()) {
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
        assert!(matches!(next_step(&even, &[1, 2, 3], &[], &idle()), Some(Step::Lead { to, .. }) if to != 1));
        let done = table(
            &[(&[1, 2, 3], Some(1)), (&[2, 3, 1], Some(2)), (&[3, 1, 2], Some(3))],
            3,
        );
        assert_eq!(next_step(&done, &[1, 2, 3], &[], &idle()), None);
    }

    #[test]
    fn nothing_moves_while_a_move_is_in_flight_or_to_a_dead_node() {
        let mut t = table(&[(&[1, 2, 3], Some(1)), (&[2, 3, 1], Some(2))], 4);
        assert_eq!(next_step(&t, &[1, 2, 3], &[], &idle()), None, "node 4 is not live");
        t.shards.get_mut(&1).unwrap().learners.push(4);
        assert_eq!(next_step(&t, &[1, 2, 3, 4], &[], &idle()), None);
    }

    #[test]
    fn moves_run_concurrently_within_the_per_node_limit() {
        // Six shards on nodes 1-3; nodes 4 and 5 join empty.
        let layout: Vec<(&[NodeId], Option<NodeId>)> = vec![(&[1, 2, 3], Some(1)); 6];
        let mut t = table(&layout, 5);
        let live = [1, 2, 3, 4, 5];
        let mut in_flight = InFlight {
            moves: BTreeMap::new(),
            per_node: 1,
            balance: true,
        };
        let mut started = Vec::new();
        while let Some(Step::Move { shard, from, to }) = next_step(&t, &live, &[], &in_flight) {
            t.shards.get_mut(&shard).unwrap().learners.push(to);
            in_flight.moves.insert(shard, (from, to));
            started.push((shard, from, to));
        }
        // One move per node: two sources, each to one of the two new nodes.
        assert_eq!(started.len(), 2, "{started:?}");
        let mut nodes: Vec<NodeId> = started.iter().flat_map(|(_, f, t)| [*f, *t]).collect();
        nodes.sort();
        nodes.dedup();
        assert_eq!(nodes.len(), 4, "no node takes part in two moves: {started:?}");
        // With a limit of 2 per node, more moves start at once.
        in_flight.per_node = 2;
        assert!(matches!(next_step(&t, &live, &[], &in_flight), Some(Step::Move { .. })));
    }

    #[test]
    fn draining_and_dead_nodes_are_emptied_then_removed() {
        let mut t = table(&[(&[1, 2, 3], Some(1)), (&[2, 3, 4], Some(2))], 4);
        t.nodes.get_mut(&3).unwrap().state = NodeState::Draining;
        assert!(matches!(
            next_step(&t, &[1, 2, 3, 4], &[], &idle()),
            Some(Step::Move {
                from: 3,
                to: 4,
                shard: 1
            })
        ));
        for s in t.shards.values_mut() {
            s.replicas.retain(|n| *n != 3);
        }
        assert_eq!(
            next_step(&t, &[1, 2, 3, 4], &[], &idle()),
            Some(Step::Remove { node: 3 })
        );
        let t = table(&[(&[1, 2, 3], Some(1))], 4);
        assert!(matches!(
            next_step(&t, &[1, 2, 4], &[3], &idle()),
            Some(Step::Move { from: 3, to: 4, .. })
        ));
    }
}

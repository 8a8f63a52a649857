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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use redraft_common::ids::{NodeId, ShardId};
use redraft_common::ops::{ShardOp, WriteOp};
use redraft_common::resp::Frame;
use redraft_common::routing::{NodeState, RoutingTable, ShardInfo};
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

/// A shard's recent load, from its leader's heartbeats.
#[derive(Clone, Copy, Debug)]
pub struct ShardLoad {
    /// Bytes of its data on disk.
    pub bytes: u64,
    /// Raft entries applied per second.
    pub entries_per_sec: f64,
    /// How long the samples cover.
    pub span: Duration,
}

/// When the placement driver splits a shard on its own.
#[derive(Clone, Debug)]
pub struct SplitPolicy {
    /// Split a shard bigger than this (0: never).
    pub split_bytes: u64,
    /// Split a shard applying more entries per second than this (0: never).
    pub split_writes_per_sec: u64,
    /// The shortest history a write rate is judged on.
    pub min_span: Duration,
    /// While shards are fewer than nodes that can lead, the busiest shard
    /// taking at least this many entries per second is split to spread.
    pub spread_min_entries_per_sec: f64,
}

/// The shard to split automatically, with the reason: one whose data outgrew
/// `split_bytes`, or whose write rate stayed above `split_writes_per_sec`, or,
/// while there are fewer shards than nodes that could lead one
/// (`leading_capable`), the busiest shard that takes writes: its new half gets
/// a leader on a node that led nothing, so nodes joining a cluster of one
/// shard per node share its load. `cooling` shards were split lately.
pub fn split_candidate(
    table: &RoutingTable,
    load: impl Fn(ShardId) -> Option<ShardLoad>,
    cooling: impl Fn(ShardId) -> bool,
    leading_capable: usize,
    policy: &SplitPolicy,
) -> Option<(ShardId, String)> {
    // Virtual nodes per shard in one pass (a shard needs two to split).
    let mut vnodes: HashMap<ShardId, usize> = HashMap::new();
    for shard in &table.vnodes {
        *vnodes.entry(*shard).or_default() += 1;
    }
    let splittable = || {
        table
            .shards
            .keys()
            .filter(|s| !cooling(**s) && vnodes.get(*s).copied().unwrap_or(0) >= 2)
            .filter_map(|shard| Some((*shard, load(*shard)?)))
    };
    let busy_or_big = splittable().find_map(|(shard, load)| {
        if policy.split_bytes > 0 && load.bytes > policy.split_bytes {
            return Some((shard, format!("{} bytes on disk", load.bytes)));
        }
        let rate = load.entries_per_sec;
        (policy.split_writes_per_sec > 0 && load.span >= policy.min_span && rate > policy.split_writes_per_sec as f64)
            .then(|| (shard, format!("{rate:.0} writes/s")))
    });
    if busy_or_big.is_some() || table.shards.len() >= leading_capable {
        return busy_or_big;
    }
    splittable()
        .filter(|(_, load)| load.span >= policy.min_span && load.entries_per_sec >= policy.spread_min_entries_per_sec)
        .max_by(|a, b| a.1.entries_per_sec.total_cmp(&b.1.entries_per_sec))
        .map(|(shard, load)| {
            let why = format!(
                "{} shards for {leading_capable} nodes; {:.0} entries/s to spread",
                table.shards.len(),
                load.entries_per_sec
            );
            (shard, why)
        })
}

/// Decides the next step from the table, the live nodes, the nodes dead for
/// longer than the re-replication timeout and the moves under way (one
/// [`Plan`] step).
pub fn next_step(table: &RoutingTable, live: &[NodeId], dead: &[NodeId], in_flight: &InFlight) -> Option<Step> {
    Plan::new(table, live, dead, in_flight).next_step()
}

/// One planning round's view of the cluster: replica counts, per-node
/// indexes and move slots computed once from the routing table, then kept
/// current as the round plans steps, so a round that starts hundreds of moves
/// does not rescan tens of thousands of shards for each.
///
/// RULES. Replica counts are counted as they will be once the moves under way
/// finish; a shard moves one replica at a time; a node takes part in at most
/// `per_node` moves at once; leaders are balanced alongside the moves, among
/// the shards that are not moving. Dead and draining nodes are emptied first,
/// each replica to the emptiest node that may take it; then a replica moves
/// from the fullest node to the emptiest while they are two or more apart;
/// then a leadership moves from the node leading the most to a replica on a
/// node leading two fewer, directly or through a chain of transfers when they
/// share no shard.
///
/// ZONES. When the usable nodes span at least as many zones as a shard has
/// replicas, a replica never moves to a node whose zone already holds another
/// replica of its shard (the source's excepted, since it leaves). With fewer
/// zones, three copies come first.
pub struct Plan<'a> {
    table: &'a RoutingTable,
    dead: Vec<NodeId>,
    usable: Vec<NodeId>,
    balance: bool,
    limit: usize,
    hosted: HashMap<NodeId, usize>,
    leaving: HashMap<NodeId, usize>,
    busy: HashMap<NodeId, usize>,
    voter_of: HashMap<NodeId, Vec<&'a ShardInfo>>,
    /// Shards with a learner, a recorded move or a move planned this round.
    moving: std::collections::HashSet<ShardId>,
    /// Leaderships moved this round.
    led: HashMap<ShardId, NodeId>,
    /// Shards led per usable node, counted when first needed.
    leaders: Option<BTreeMap<NodeId, usize>>,
    /// The rest of a chain of leadership transfers planned at once.
    chain: std::collections::VecDeque<Step>,
    zones: usize,
}

impl<'a> Plan<'a> {
    /// Indexes the table: one pass over the shards.
    pub fn new(table: &'a RoutingTable, live: &[NodeId], dead: &[NodeId], in_flight: &InFlight) -> Plan<'a> {
        let usable: Vec<NodeId> = live
            .iter()
            .copied()
            .filter(|n| table.nodes.get(n).map(|i| i.state) == Some(NodeState::Up))
            .collect();
        let mut plan = Plan {
            table,
            dead: dead.to_vec(),
            balance: in_flight.balance,
            limit: in_flight.per_node.max(1),
            hosted: HashMap::new(),
            leaving: HashMap::new(),
            busy: HashMap::new(),
            voter_of: HashMap::new(),
            moving: in_flight.moves.keys().copied().collect(),
            led: HashMap::new(),
            leaders: None,
            chain: std::collections::VecDeque::new(),
            zones: usable
                .iter()
                .map(|n| table.nodes.get(n).map_or("", |i| i.zone.as_str()))
                .filter(|z| !z.is_empty())
                .collect::<BTreeSet<&str>>()
                .len(),
            usable,
        };
        for shard in table.shards.values() {
            for n in &shard.replicas {
                *plan.hosted.entry(*n).or_default() += 1;
                plan.voter_of.entry(*n).or_default().push(shard);
            }
            for n in &shard.learners {
                *plan.hosted.entry(*n).or_default() += 1;
                plan.moving.insert(shard.id);
                if !in_flight.moves.contains_key(&shard.id) {
                    // A learner without a recorded move (never expected) still counts.
                    *plan.busy.entry(*n).or_default() += 1;
                }
            }
        }
        for (shard, (from, to)) in &in_flight.moves {
            let sender = table
                .shards
                .get(shard)
                .and_then(|s| plan.sender(s, *from))
                .unwrap_or(*from);
            *plan.leaving.entry(*from).or_default() += 1;
            *plan.busy.entry(sender).or_default() += 1;
            *plan.busy.entry(*to).or_default() += 1;
        }
        plan
    }

    fn count(&self, n: NodeId) -> usize {
        self.hosted
            .get(&n)
            .copied()
            .unwrap_or(0)
            .saturating_sub(self.leaving.get(&n).copied().unwrap_or(0))
    }

    fn free(&self, n: NodeId) -> bool {
        self.busy.get(&n).copied().unwrap_or(0) < self.limit
    }

    fn zone(&self, n: NodeId) -> &str {
        self.table.nodes.get(&n).map_or("", |i| i.zone.as_str())
    }

    /// Whether `to` may receive `shard`'s replica from `from` under the zone rule.
    fn fits(&self, shard: &ShardInfo, from: NodeId, to: NodeId) -> bool {
        self.zones < shard.replicas.len()
            || shard
                .replicas
                .iter()
                .chain(&shard.learners)
                .all(|n| *n == from || self.zone(*n) != self.zone(to))
    }

    fn shards_of(&self, n: NodeId) -> &[&'a ShardInfo] {
        self.voter_of.get(&n).map_or(&[], Vec::as_slice)
    }

    fn leader_of(&self, shard: &ShardInfo) -> Option<NodeId> {
        self.led.get(&shard.id).copied().or(shard.leader)
    }

    /// Records a planned move, so the rest of the round plans around it.
    /// `sender` is the node whose move slot the move takes on the giving side:
    /// the source, or for a dead source the shard's leader, which sends the
    /// snapshot (a dead node sends nothing).
    fn moved(&mut self, shard: ShardId, from: NodeId, to: NodeId, sender: NodeId) -> Option<Step> {
        self.moving.insert(shard);
        *self.hosted.entry(to).or_default() += 1;
        *self.leaving.entry(from).or_default() += 1;
        *self.busy.entry(sender).or_default() += 1;
        *self.busy.entry(to).or_default() += 1;
        Some(Step::Move { shard, from, to })
    }

    /// Whose move slot a move of `shard` off `from` takes (see [`Plan::moved`]);
    /// `None` while a dead source's shard has no other leader yet.
    fn sender(&self, shard: &ShardInfo, from: NodeId) -> Option<NodeId> {
        if self.dead.contains(&from) {
            self.leader_of(shard).filter(|l| *l != from)
        } else {
            Some(from)
        }
    }

    /// The next step, if any; the plan counts it as taken.
    pub fn next_step(&mut self) -> Option<Step> {
        if let Some(step) = self.chain.pop_front() {
            return Some(step);
        }
        let state = |n: &NodeId| self.table.nodes.get(n).map(|i| i.state);
        let mut by_count = self.usable.clone();
        by_count.sort_by_key(|n| (self.count(*n), *n));
        // First empty the nodes being decommissioned and the dead ones.
        let draining: Vec<NodeId> = self
            .table
            .nodes
            .values()
            .filter(|n| n.state == NodeState::Draining)
            .map(|n| n.id)
            .chain(self.dead.iter().copied())
            .collect();
        for source in draining {
            let held = self.shards_of(source);
            if self.dead.contains(&source) || self.free(source) {
                for shard in held.iter().filter(|s| !self.moving.contains(&s.id)) {
                    let Some(sender) = self.sender(shard, source).filter(|n| self.free(*n)) else {
                        continue;
                    };
                    let to = by_count
                        .iter()
                        .copied()
                        .find(|n| !shard.hosted_on(*n) && self.free(*n) && self.fits(shard, source, *n));
                    if let Some(to) = to {
                        return self.moved(shard.id, source, to, sender);
                    }
                }
            }
            if held.is_empty() && state(&source) == Some(NodeState::Draining) && !self.busy.contains_key(&source) {
                self.busy.insert(source, self.limit);
                return Some(Step::Remove { node: source });
            }
        }
        if self.usable.len() < 2 || !self.balance {
            return None;
        }
        // Sources from the fullest, targets from the emptiest: the first pair two
        // or more apart whose nodes are not at their move limit, with a shard to move.
        let mut sources: Vec<(NodeId, usize)> = self.usable.iter().map(|n| (*n, self.count(*n))).collect();
        sources.sort_by_key(|(n, c)| (std::cmp::Reverse(*c), *n));
        for &(most, max) in &sources {
            if !self.free(most) {
                continue;
            }
            for &fewest in &by_count {
                if max < self.count(fewest) + 2 {
                    break;
                }
                if !self.free(fewest) {
                    continue;
                }
                // Prefer a shard the source does not lead: no leader change needed.
                let mut candidates = self
                    .shards_of(most)
                    .iter()
                    .filter(|s| !self.moving.contains(&s.id) && !s.hosted_on(fewest) && self.fits(s, most, fewest));
                let first = candidates.next();
                let pick = first
                    .filter(|s| self.leader_of(s) != Some(most))
                    .or_else(|| candidates.find(|s| self.leader_of(s) != Some(most)))
                    .or(first)
                    .map(|s| s.id);
                if let Some(shard) = pick {
                    return self.moved(shard, most, fewest, most);
                }
            }
        }
        let leaders = self.leaders.get_or_insert_with(|| {
            let mut leaders: BTreeMap<NodeId, usize> = self.usable.iter().map(|n| (*n, 0)).collect();
            for shard in self.table.shards.values() {
                if let Some(c) = shard.leader.and_then(|l| leaders.get_mut(&l)) {
                    *c += 1;
                }
            }
            leaders
        });
        // Leaders: the node leading fewest takes a shard it holds a replica of
        // from the busiest of that shard's leaders that leads at least two
        // more, until counts are within one of each other.
        let mut by_leaders: Vec<(usize, NodeId)> = leaders.iter().map(|(n, c)| (*c, *n)).collect();
        let leaders = leaders.clone();
        by_leaders.sort();
        let most = by_leaders.last().map_or(0, |(c, _)| *c);
        for &(fewer, to) in &by_leaders {
            if fewer + 2 > most {
                break;
            }
            let pick = self
                .shards_of(to)
                .iter()
                .filter(|s| !self.moving.contains(&s.id))
                .filter_map(|s| {
                    let leader = self.leader_of(s)?;
                    let led = leaders.get(&leader).copied().unwrap_or(0);
                    (leader != to && led >= fewer + 2).then_some((led, leader, s.id))
                })
                .max();
            if let Some((_, busiest, shard)) = pick {
                self.led.insert(shard, to);
                let mut counts = leaders;
                *counts.entry(busiest).or_default() -= 1;
                *counts.entry(to).or_default() += 1;
                self.leaders = Some(counts);
                return Some(Step::Lead { shard, to });
            }
        }
        // No direct transfer: the busiest node may share no shard with the
        // nodes leading fewest (replicas placed on neighbouring nodes). A chain
        // of transfers through nodes in between moves one leadership from the
        // busiest to one leading two fewer, the others' counts unchanged.
        let &(led, busiest) = by_leaders.last()?;
        if by_leaders.first().is_none_or(|(fewest, _)| fewest + 2 > led) {
            return None; // within one of each other already
        }
        let path = self.leader_path(busiest, |n| leaders.get(&n).is_some_and(|c| c + 2 <= led))?;
        let target = path.last().map(|(_, to)| *to)?;
        for (shard, to) in &path {
            self.led.insert(*shard, *to);
            self.chain.push_back(Step::Lead { shard: *shard, to: *to });
        }
        let mut counts = leaders;
        *counts.entry(busiest).or_default() -= 1;
        *counts.entry(target).or_default() += 1;
        self.leaders = Some(counts);
        self.chain.pop_front()
    }

    /// The shortest chain of leadership transfers from `source` to a node for
    /// which `is_target` holds: each hop hands a shard the current node leads
    /// (and that is not moving) to a node holding a replica of it.
    fn leader_path(&self, source: NodeId, is_target: impl Fn(NodeId) -> bool) -> Option<Vec<(ShardId, NodeId)>> {
        let usable: std::collections::HashSet<NodeId> = self.usable.iter().copied().collect();
        let mut came_from: HashMap<NodeId, (NodeId, ShardId)> = HashMap::new();
        let mut queue = std::collections::VecDeque::from([source]);
        while let Some(node) = queue.pop_front() {
            for shard in self.shards_of(node) {
                if self.leader_of(shard) != Some(node) || self.moving.contains(&shard.id) {
                    continue;
                }
                for &next in &shard.replicas {
                    if next == source || !usable.contains(&next) || came_from.contains_key(&next) {
                        continue;
                    }
                    came_from.insert(next, (node, shard.id));
                    if is_target(next) {
                        let mut path = Vec::new();
                        let mut at = next;
                        while at != source {
                            let (from, shard) = came_from[&at];
                            path.push((shard, at));
                            at = from;
                        }
                        path.reverse();
                        return Some(path);
                    }
                    queue.push_back(next);
                }
            }
        }
        None
    }
}

/// Where node `node` listens, from the routing table.
pub(crate) fn node_addr(table: &RoutingTable, node: NodeId) -> Result<SocketAddr> {
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
                    zone: String::new(),
                },
            );
        }
        t
    }

    #[test]
    fn replicas_never_share_a_zone_when_three_zones_exist() {
        // Nodes 1-3 in zones a, b, c; node 4 joins zone a. Shards on 1, 2, 3
        // may only move node 1's replica to node 4 (node 2's or 3's would put
        // two replicas in zone a).
        let mut t = table(
            &[(&[1, 2, 3], Some(2)), (&[1, 2, 3], Some(2)), (&[1, 2, 3], Some(3))],
            4,
        );
        for (node, zone) in [(1, "a"), (2, "b"), (3, "c"), (4, "a")] {
            t.nodes.get_mut(&node).expect("node").zone = zone.into();
        }
        match next_step(&t, &[1, 2, 3, 4], &[], &idle()) {
            Some(Step::Move { from: 1, to: 4, .. }) => {}
            other => panic!("{other:?}"),
        }
        // Zone b's only node is dead: two zones remain usable, fewer than the
        // replicas, so three copies come first and one zone holds two.
        let dead_b = next_step(&t, &[1, 3, 4], &[2], &idle());
        assert!(matches!(dead_b, Some(Step::Move { from: 2, to: 4, .. })), "{dead_b:?}");
        // With a zone-b node to take them, they go there.
        t.nodes.insert(
            5,
            NodeInfo {
                id: 5,
                addr: "127.0.0.1:7005".into(),
                state: NodeState::Up,
                zone: "b".into(),
            },
        );
        let dead_2 = next_step(&t, &[1, 3, 4, 5], &[2], &idle());
        assert!(matches!(dead_2, Some(Step::Move { from: 2, to: 5, .. })), "{dead_2:?}");
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

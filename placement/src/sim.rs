//! A deterministic simulator that runs the placement driver's real planning
//! code against simulated shard nodes: no sockets, no RocksDB, no clock.
//!
//! What is real: the replicated state and its transitions ([`PdState::apply`]:
//! registration, bootstrap, learners, replica sets, node states) and the
//! scheduler's decisions ([`scheduler::next_step`]), called the way the PD
//! leader's planning round calls them (`schedule_round`: start every replica
//! move the per-node limits allow, else one other step). What is simulated: the
//! nodes (heartbeats, failures, restarts, joins), the time a move takes (the
//! shard's size over the sending rate, plus catch-up), leader elections, and
//! the clock, which advances one planning round (one second) at a time. A run
//! is a function of its [`SimConfig`]: the same seed replays the same run.
//!
//! The report ([`SimReport`]) gives what an operator asks of a scale event:
//! time to balance, bytes moved against the ideal, the final spread of replicas,
//! the most concurrent moves on one node, how long shards had fewer live
//! replicas than wanted, and the placement driver's own CPU time per round.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redraft_common::ids::{NodeId, ShardId};
use redraft_common::routing::{NodeState, RoutingTable};
use serde::{Deserialize, Serialize};

use crate::scheduler::{self, InFlight, Step};
use crate::state::{PdCommand, PdState};

/// What happens to the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// `add` nodes join the `nodes` of a balanced cluster at once.
    Join,
    /// `fail_percent` of the nodes fail at once and never come back.
    Fail,
    /// 10% of the nodes are decommissioned at once.
    Decommission,
    /// Every node restarts in turn (down 20 s each, below the dead-node timeout).
    RollingRestart,
    /// Every node of one zone fails at once (`zones` must be 3 or more).
    ZoneFailure,
    /// The virtual nodes of 1% of the shards take half of all writes: the
    /// placement driver splits the busy shards (`SplitPolicy`, at twice the
    /// mean write rate of a shard) and spreads the pieces.
    Hotspot,
}

impl std::str::FromStr for Scenario {
    type Err = String;

    /// The scenario's name as in the reports (`join`, `rolling-restart`, ...).
    fn from_str(name: &str) -> Result<Scenario, String> {
        use serde::de::IntoDeserializer;
        Scenario::deserialize(name.into_deserializer()).map_err(|e: serde::de::value::Error| e.to_string())
    }
}

/// A simulation run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SimConfig {
    pub scenario: Scenario,
    /// Nodes at the start.
    pub nodes: usize,
    /// Nodes that join (`Join`).
    pub add: usize,
    /// Shards at the start.
    pub shards: usize,
    pub replicas: usize,
    /// Percent of nodes that fail (`Fail`).
    pub fail_percent: f64,
    /// Zones the nodes are spread over, round-robin (0: none).
    pub zones: usize,
    pub seed: u64,
    /// Replica moves one node takes part in at once (the PD's `--moves-per-node`).
    pub moves_per_node: usize,
    /// Snapshot rate of a sending node, MiB/s (the node's `--snapshot-mib-per-sec`).
    pub mib_per_sec: f64,
    /// Mean shard size, MiB (sizes are uniform in [0.5, 1.5] times this).
    pub shard_mib: f64,
    /// The PD's `--dead-after-secs`.
    pub dead_after_secs: u64,
    /// Simulated time limit, seconds.
    pub max_seconds: u64,
    /// Virtual nodes on the ring.
    pub vnodes: u32,
    /// Raft entries per second per shard, on average (`Hotspot`).
    pub entries_per_shard: f64,
}

impl Default for SimConfig {
    fn default() -> SimConfig {
        SimConfig {
            scenario: Scenario::Join,
            nodes: 10,
            add: 10,
            shards: 1000,
            replicas: 3,
            fail_percent: 5.0,
            zones: 0,
            seed: 1,
            moves_per_node: 1,
            mib_per_sec: 64.0,
            shard_mib: 64.0,
            dead_after_secs: 30,
            max_seconds: 7 * 86_400,
            vnodes: 16_384,
            entries_per_shard: 20.0,
        }
    }
}

/// One point of a run's timeline.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Sample {
    pub t: u64,
    pub replicas_min: usize,
    pub replicas_max: usize,
    pub leaders_min: usize,
    pub leaders_max: usize,
    pub moves_in_flight: usize,
    pub bytes_moved: u64,
    pub under_replicated: usize,
}

/// What a run measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SimReport {
    pub config: SimConfig,
    /// Replicas within one of even on every usable node, nothing moving, and
    /// every shard with its replicas on live nodes, before the time limit.
    pub balanced: bool,
    /// From the scenario's event to the last step taken.
    pub sim_seconds_to_balance: u64,
    pub moves: u64,
    pub moves_abandoned: u64,
    pub bytes_moved: u64,
    /// What a perfect plan moves: the replicas the event displaced, or the new
    /// nodes' even share.
    pub bytes_ideal: u64,
    /// Largest distance of a usable node's replica count from the mean, at the end.
    pub max_replica_deviation: f64,
    /// Largest difference of leader counts between usable nodes, at the end.
    pub leader_spread: usize,
    pub max_concurrent_moves_per_node: usize,
    /// Shard-seconds with fewer live voters than `replicas`.
    pub under_replicated_shard_seconds: u64,
    /// Shard-seconds with fewer live voters than a majority.
    pub unavailable_shard_seconds: u64,
    /// Shards holding two replicas in one zone at the end (with 3+ zones).
    pub zone_violations: usize,
    /// Automatic splits (`Hotspot`), and the largest share of all writes one
    /// node leads before and after.
    pub splits: u64,
    pub hottest_node_write_share_start: f64,
    pub hottest_node_write_share_end: f64,
    /// The PD's planning and state transitions per one-second round (heartbeat
    /// handling included): mean and largest.
    pub pd_cpu_ms_per_heartbeat_round: f64,
    pub pd_cpu_ms_max_round: f64,
    /// Size of the replicated state (the PD's snapshot) and of the routing
    /// table every node and proxy receives at each change, at the end.
    pub pd_state_bytes: usize,
    pub routing_table_bytes: usize,
    pub wall_seconds: f64,
    pub timeline: Vec<Sample>,
}

/// A simulated shard node.
struct SimNode {
    up: bool,
    /// Simulated time it stopped heartbeating.
    down_since: u64,
}

/// A replica move under way: it completes at `done_at`.
struct Transfer {
    shard: ShardId,
    from: NodeId,
    to: NodeId,
    /// The node that sends the snapshot: the source, or the leader when the
    /// source is down.
    sender: NodeId,
    done_at: u64,
}

/// Heartbeats per node per planning round (nodes beat every 500 ms).
const BEATS_PER_ROUND: usize = 2;
/// Silence after which the PD stops counting a node live (`NODE_DOWN_AFTER`).
const NODE_DOWN_AFTER: u64 = 5;
/// An election after a leader's node fails.
const ELECTION_SECS: u64 = 2;
/// A learner's catch-up after its snapshot and the voter change.
const CATCH_UP_SECS: u64 = 2;
/// A leadership transfer: the target catches up and campaigns.
const LEADER_TRANSFER: std::time::Duration = std::time::Duration::from_millis(50);
/// Rounds with nothing to do that end a run.
const QUIET_ROUNDS: u64 = 5;
/// Timeline points per run, at most.
const SAMPLES: u64 = 200;

struct Sim {
    config: SimConfig,
    state: PdState,
    nodes: BTreeMap<NodeId, SimNode>,
    zone_of: HashMap<NodeId, usize>,
    sizes: HashMap<ShardId, u64>,
    leaders: BTreeMap<ShardId, NodeId>,
    transfers: Vec<Transfer>,
    now: u64,
    report: SimReport,
    pd_rounds: u64,
    pd_seconds: f64,
    applied_this_round: u64,
    /// Entries per second of each virtual node.
    vnode_rates: Vec<f64>,
    /// When each shard last took part in a split.
    split_at: HashMap<ShardId, u64>,
}

/// Runs one simulation.
pub fn run(config: SimConfig) -> SimReport {
    let wall = Instant::now();
    let mut sim = Sim::new(config);
    sim.run();
    sim.report.wall_seconds = wall.elapsed().as_secs_f64();
    sim.report
}

impl Sim {
    fn new(config: SimConfig) -> Sim {
        let mut rng = StdRng::seed_from_u64(config.seed);
        let mut state = PdState::default();
        let mut sim = Sim {
            report: SimReport {
                config: config.clone(),
                balanced: false,
                sim_seconds_to_balance: 0,
                moves: 0,
                moves_abandoned: 0,
                bytes_moved: 0,
                bytes_ideal: 0,
                max_replica_deviation: 0.0,
                leader_spread: 0,
                max_concurrent_moves_per_node: 0,
                under_replicated_shard_seconds: 0,
                unavailable_shard_seconds: 0,
                zone_violations: 0,
                splits: 0,
                hottest_node_write_share_start: 0.0,
                hottest_node_write_share_end: 0.0,
                pd_cpu_ms_per_heartbeat_round: 0.0,
                pd_cpu_ms_max_round: 0.0,
                pd_state_bytes: 0,
                routing_table_bytes: 0,
                wall_seconds: 0.0,
                timeline: Vec::new(),
            },
            config: config.clone(),
            state: PdState::default(),
            nodes: BTreeMap::new(),
            zone_of: HashMap::new(),
            sizes: HashMap::new(),
            leaders: BTreeMap::new(),
            transfers: Vec::new(),
            now: 0,
            pd_rounds: 0,
            pd_seconds: 0.0,
            applied_this_round: 0,
            vnode_rates: Vec::new(),
            split_at: HashMap::new(),
        };
        for _ in 0..config.nodes {
            sim.register(&mut state);
        }
        state.apply(&PdCommand::Bootstrap {
            shards: config.shards as u32,
            shards_per_node: 0,
            replicas: config.replicas as u32,
            vnode_count: config.vnodes.clamp(config.shards as u32, u32::from(u16::MAX)),
        });
        let mean = config.shard_mib * f64::from(1 << 20);
        for shard in state.table.shards.values() {
            sim.sizes.insert(shard.id, (mean * rng.gen_range(0.5..1.5)) as u64);
            sim.leaders.insert(shard.id, shard.replicas[0]);
        }
        let vnodes = state.table.vnodes.len();
        let total = config.entries_per_shard * config.shards as f64;
        sim.vnode_rates = vec![total / vnodes.max(1) as f64; vnodes];
        if config.scenario == Scenario::Hotspot {
            // The virtual nodes of 1% of the shards (1% of the ring, as
            // vnodes are dealt out evenly) take half of all writes.
            let ids: Vec<ShardId> = state.table.shards.keys().copied().collect();
            let mut hot_shards = BTreeSet::new();
            while hot_shards.len() < (ids.len() / 100).max(1) {
                hot_shards.insert(ids[rng.gen_range(0..ids.len())]);
            }
            let picked: BTreeSet<usize> = (0..vnodes)
                .filter(|v| hot_shards.contains(&state.table.vnodes[*v]))
                .collect();
            let hot = picked.len().max(1);
            for (v, rate) in sim.vnode_rates.iter_mut().enumerate() {
                *rate = if picked.contains(&v) {
                    total * 0.5 / hot as f64
                } else {
                    total * 0.5 / (vnodes - hot) as f64
                };
            }
        }
        sim.state = state;
        sim
    }

    /// Entries per second of every shard.
    fn shard_rates(&self) -> HashMap<ShardId, f64> {
        let mut rates: HashMap<ShardId, f64> = HashMap::new();
        for (v, shard) in self.state.table.vnodes.iter().enumerate() {
            *rates.entry(*shard).or_default() += self.vnode_rates.get(v).copied().unwrap_or(0.0);
        }
        rates
    }

    /// The largest share of all writes whose shards one node leads.
    fn hottest_node_share(&self) -> f64 {
        let rates = self.shard_rates();
        let total: f64 = rates.values().sum();
        let mut per_node: HashMap<NodeId, f64> = HashMap::new();
        for (shard, rate) in &rates {
            if let Some(leader) = self.leaders.get(shard) {
                *per_node.entry(*leader).or_default() += rate;
            }
        }
        per_node.values().copied().fold(0.0, f64::max) / total.max(1e-9)
    }

    /// The automatic split of a busy shard, as the PD leader runs it when no
    /// move is under way: the recorded split is carried out (the shards apply
    /// it in well under a round) and the next busy shard is chosen.
    fn split(&mut self) -> bool {
        if !self.transfers.is_empty() {
            return false;
        }
        if let Some(crate::state::Reshape::Split { shard, child, vnodes }) = self.state.reshape.clone() {
            let owned = self.state.table.vnodes_of(shard).len() + vnodes.len();
            let size = self.shard_bytes(shard);
            let moved = size * vnodes.len() as u64 / owned.max(1) as u64;
            self.sizes.insert(shard, size - moved);
            self.sizes.insert(child, moved);
            self.apply(PdCommand::FinishReshape);
            if let Some(leader) = self.leaders.get(&shard).copied() {
                self.leaders.insert(child, leader);
            }
            self.split_at.insert(child, self.now);
            self.report.splits += 1;
            return true;
        }
        let rates = self.shard_rates();
        let live = self.live().len();
        let now = self.now;
        let policy = scheduler::SplitPolicy {
            split_bytes: 0,
            split_writes_per_sec: (2.0 * self.config.entries_per_shard) as u64,
            min_span: crate::LOAD_MIN_SPAN,
            spread_min_entries_per_sec: crate::SPREAD_MIN_ENTRIES_PER_SEC,
        };
        let table = &self.state.table;
        let split_at = &self.split_at;
        let started = Instant::now();
        let candidate = scheduler::split_candidate(
            table,
            |shard| {
                Some(scheduler::ShardLoad {
                    bytes: 0,
                    entries_per_sec: rates.get(&shard).copied().unwrap_or(0.0),
                    span: std::time::Duration::from_secs(10),
                })
            },
            |shard| {
                split_at
                    .get(&shard)
                    .is_some_and(|t| now < t + crate::SPLIT_COOLDOWN.as_secs())
            },
            live,
            &policy,
        );
        self.pd_seconds += started.elapsed().as_secs_f64();
        match candidate {
            Some((shard, _)) => {
                self.apply(PdCommand::BeginSplit { shard });
                self.split_at.insert(shard, self.now);
                true
            }
            None => false,
        }
    }

    fn register(&mut self, state: &mut PdState) -> NodeId {
        let addr = format!("sim-{}", state.next_node_id.max(1));
        let next = state.next_node_id.max(1) as usize;
        let zone = if self.config.zones > 0 {
            format!("zone-{}", (next - 1) % self.config.zones)
        } else {
            String::new()
        };
        let id = match state.apply(&PdCommand::Register {
            requested: None,
            addr,
            zone,
        }) {
            crate::state::PdReply::NodeId(id) => id,
            other => panic!("registration refused: {other:?}"),
        };
        if self.config.zones > 0 {
            self.zone_of.insert(id, (id as usize - 1) % self.config.zones);
        }
        self.nodes.insert(
            id,
            SimNode {
                up: true,
                down_since: 0,
            },
        );
        id
    }

    fn shard_bytes(&self, shard: ShardId) -> u64 {
        self.sizes.get(&shard).copied().unwrap_or(0)
    }

    /// Replica bytes a node holds.
    fn bytes_on(&self, node: NodeId) -> u64 {
        self.state
            .table
            .shards
            .values()
            .filter(|s| s.replicas.contains(&node))
            .map(|s| self.shard_bytes(s.id))
            .sum()
    }

    /// The scenario's event, at time 0 of the measured part.
    fn event(&mut self) {
        let total: u64 = self.sizes.values().sum::<u64>() * self.config.replicas as u64;
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        match self.config.scenario {
            Scenario::Join => {
                let mut state = std::mem::take(&mut self.state);
                for _ in 0..self.config.add {
                    self.register(&mut state);
                }
                self.state = state;
                let after = self.nodes.len() as u64;
                self.report.bytes_ideal = total * self.config.add as u64 / after;
            }
            Scenario::Fail | Scenario::ZoneFailure => {
                let failing: Vec<NodeId> = if self.config.scenario == Scenario::Fail {
                    let count = ((ids.len() as f64 * self.config.fail_percent / 100.0).round() as usize).max(1);
                    let mut rng = StdRng::seed_from_u64(self.config.seed ^ 0x5eed);
                    let mut picked = BTreeSet::new();
                    while picked.len() < count.min(ids.len()) {
                        picked.insert(ids[rng.gen_range(0..ids.len())]);
                    }
                    picked.into_iter().collect()
                } else {
                    ids.iter()
                        .copied()
                        .filter(|n| self.zone_of.get(n) == Some(&0))
                        .collect()
                };
                self.report.bytes_ideal = failing.iter().map(|n| self.bytes_on(*n)).sum();
                for node in failing {
                    self.stop(node);
                }
            }
            Scenario::Decommission => {
                let count = (ids.len() / 10).max(1);
                let leaving: Vec<NodeId> = ids.iter().rev().take(count).copied().collect();
                self.report.bytes_ideal = leaving.iter().map(|n| self.bytes_on(*n)).sum();
                for node in leaving {
                    self.apply(PdCommand::SetNodeState {
                        node,
                        state: NodeState::Draining,
                    });
                }
            }
            Scenario::RollingRestart | Scenario::Hotspot => {}
        }
    }

    fn stop(&mut self, node: NodeId) {
        if let Some(n) = self.nodes.get_mut(&node) {
            n.up = false;
            n.down_since = self.now;
        }
    }

    /// Applies a command as a PD member does (the store's writes are counted
    /// by [`Sim::persist_cost`]).
    fn apply(&mut self, command: PdCommand) {
        self.pd(|sim| sim.state.apply(&command));
        self.applied_this_round += 1;
    }

    /// The store's cost of the round's applies: it writes the whole state at
    /// most every [`crate::store::PERSIST_EVERY`], so a round with applies
    /// encodes it `1 s / PERSIST_EVERY` times at most.
    fn persist_cost(&mut self) {
        if self.applied_this_round == 0 {
            return;
        }
        let writes = self
            .applied_this_round
            .min((1000 / crate::store::PERSIST_EVERY.as_millis().max(1)) as u64);
        let started = Instant::now();
        std::hint::black_box(redraft_common::wire::encode(&self.state));
        self.pd_seconds += started.elapsed().as_secs_f64() * writes as f64;
        self.applied_this_round = 0;
    }

    /// Runs `work` as PD time (measured).
    fn pd<T>(&mut self, work: impl FnOnce(&mut Sim) -> T) -> T {
        let started = Instant::now();
        let out = work(self);
        self.pd_seconds += started.elapsed().as_secs_f64();
        out
    }

    fn live(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.up || self.now < n.down_since + NODE_DOWN_AFTER)
            .map(|(id, _)| *id)
            .collect()
    }

    fn dead(&self) -> Vec<NodeId> {
        let after = self.config.dead_after_secs;
        self.nodes
            .iter()
            .filter(|(_, n)| !n.up && self.now >= n.down_since + after)
            .map(|(id, _)| *id)
            .collect()
    }

    fn is_up(&self, node: NodeId) -> bool {
        self.nodes.get(&node).is_some_and(|n| n.up)
    }

    /// The table as the PD leader plans with it: replicated state plus leader hints.
    fn table(&self) -> RoutingTable {
        let mut table = self.state.table.clone();
        for (shard, leader) in &self.leaders {
            if let Some(info) = table.shards.get_mut(shard) {
                info.leader = Some(*leader);
            }
        }
        table
    }

    fn in_flight(&self) -> InFlight {
        InFlight {
            moves: self.state.moves.clone(),
            per_node: self.config.moves_per_node,
            balance: true,
        }
    }

    /// Heartbeats of every live node (what the PD does per heartbeat: note the
    /// node seen and its leader hints).
    fn heartbeats(&mut self) {
        let up: Vec<NodeId> = self.nodes.iter().filter(|(_, n)| n.up).map(|(id, _)| *id).collect();
        let mut led: HashMap<NodeId, Vec<ShardId>> = HashMap::new();
        for (shard, leader) in &self.leaders {
            led.entry(*leader).or_default().push(*shard);
        }
        self.pd(|_| {
            let mut seen: HashMap<NodeId, u64> = HashMap::new();
            let mut hints: BTreeMap<ShardId, NodeId> = BTreeMap::new();
            for _ in 0..BEATS_PER_ROUND {
                for node in &up {
                    seen.insert(*node, 0);
                    for shard in led.get(node).into_iter().flatten() {
                        hints.insert(*shard, *node);
                    }
                }
            }
            std::hint::black_box((seen, hints));
        });
    }

    /// Leaders on failed nodes are replaced after an election.
    fn elections(&mut self) {
        let mut changes = Vec::new();
        for (shard, leader) in &self.leaders {
            let Some(node) = self.nodes.get(leader) else { continue };
            if node.up || self.now < node.down_since + ELECTION_SECS {
                continue;
            }
            let Some(info) = self.state.table.shards.get(shard) else {
                continue;
            };
            let live: Vec<NodeId> = info.replicas.iter().copied().filter(|n| self.is_up(*n)).collect();
            if live.len() * 2 > info.replicas.len() {
                changes.push((*shard, live[0]));
            }
        }
        for (shard, leader) in changes {
            self.leaders.insert(shard, leader);
        }
    }

    /// Moves whose time has come complete, or are abandoned when a node of
    /// theirs failed meanwhile (the PD restores the old replica set).
    fn finish_transfers(&mut self) {
        let due: Vec<Transfer> = {
            let (due, later) = std::mem::take(&mut self.transfers)
                .into_iter()
                .partition(|t| t.done_at <= self.now);
            self.transfers = later;
            due
        };
        for t in due {
            let Some(info) = self.state.table.shards.get(&t.shard).cloned() else {
                continue;
            };
            let failed = !self.is_up(t.to) || !info.replicas.iter().any(|n| *n != t.from && self.is_up(*n));
            let replicas: Vec<NodeId> = if failed {
                self.report.moves_abandoned += 1;
                info.replicas.clone()
            } else {
                self.report.moves += 1;
                self.report.bytes_moved += self.shard_bytes(t.shard);
                info.replicas
                    .iter()
                    .copied()
                    .filter(|n| *n != t.from)
                    .chain([t.to])
                    .collect()
            };
            self.apply(PdCommand::SetReplicas {
                shard: t.shard,
                replicas,
            });
        }
    }

    /// One planning round, as `schedule_round` runs it: start every move the
    /// limits allow; otherwise take one other step. Returns whether anything
    /// was planned.
    fn plan(&mut self) -> bool {
        let live = self.live();
        let dead = self.dead();
        let mut planned = false;
        let mut leading = std::time::Duration::ZERO;
        let started = Instant::now();
        let table = self.table();
        let mut plan = scheduler::Plan::new(&table, &live, &dead, &self.in_flight());
        self.pd_seconds += started.elapsed().as_secs_f64();
        loop {
            let started = Instant::now();
            let step = plan.next_step();
            self.pd_seconds += started.elapsed().as_secs_f64();
            match step {
                Some(Step::Move { shard, from, to }) => {
                    planned = true;
                    if self.leaders.get(&shard) == Some(&from) {
                        let stay = self.state.table.shards[&shard]
                            .replicas
                            .iter()
                            .copied()
                            .find(|n| *n != from && self.is_up(*n));
                        if let Some(stay) = stay {
                            self.leaders.insert(shard, stay);
                        }
                    }
                    self.apply(PdCommand::AddLearner { shard, node: to, from });
                    let secs = self.shard_bytes(shard) as f64 / (self.config.mib_per_sec * f64::from(1 << 20));
                    let sender = if self.is_up(from) {
                        from
                    } else {
                        self.leaders.get(&shard).copied().unwrap_or(from)
                    };
                    self.transfers.push(Transfer {
                        shard,
                        from,
                        to,
                        sender,
                        done_at: self.now + secs.ceil() as u64 + CATCH_UP_SECS,
                    });
                }
                Some(Step::Lead { shard, to }) => {
                    planned = true;
                    self.leaders.insert(shard, to);
                    leading += LEADER_TRANSFER;
                    if leading < crate::LEADERSHIP_ROUND {
                        continue;
                    }
                    return planned;
                }
                Some(Step::Remove { node }) => {
                    if self.transfers.is_empty() {
                        planned = true;
                        self.apply(PdCommand::SetNodeState {
                            node,
                            state: NodeState::Removed,
                        });
                        self.nodes.remove(&node);
                    }
                    return planned;
                }
                Some(Step::Reshape(_)) | None => return planned,
            }
        }
    }

    fn account(&mut self) {
        let mut per_node: HashMap<NodeId, usize> = HashMap::new();
        for t in &self.transfers {
            *per_node.entry(t.sender).or_default() += 1;
            *per_node.entry(t.to).or_default() += 1;
        }
        let most = per_node.values().copied().max().unwrap_or(0);
        self.report.max_concurrent_moves_per_node = self.report.max_concurrent_moves_per_node.max(most);
        let wanted = self.config.replicas;
        for info in self.state.table.shards.values() {
            let live = info.replicas.iter().filter(|n| self.is_up(**n)).count();
            if live < wanted {
                self.report.under_replicated_shard_seconds += 1;
            }
            if live * 2 <= info.replicas.len() {
                self.report.unavailable_shard_seconds += 1;
            }
        }
    }

    /// Replica and leader counts of the usable nodes (up, not draining).
    fn counts(&self) -> (BTreeMap<NodeId, usize>, BTreeMap<NodeId, usize>) {
        let usable: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(id, n)| n.up && self.state.table.nodes.get(id).is_some_and(|i| i.state == NodeState::Up))
            .map(|(id, _)| *id)
            .collect();
        let mut replicas: BTreeMap<NodeId, usize> = usable.iter().map(|n| (*n, 0)).collect();
        let mut leaders = replicas.clone();
        for info in self.state.table.shards.values() {
            for n in &info.replicas {
                if let Some(c) = replicas.get_mut(n) {
                    *c += 1;
                }
            }
        }
        for leader in self.leaders.values() {
            if let Some(c) = leaders.get_mut(leader) {
                *c += 1;
            }
        }
        (replicas, leaders)
    }

    fn sample(&mut self) {
        let (replicas, leaders) = self.counts();
        let under = self
            .state
            .table
            .shards
            .values()
            .filter(|s| s.replicas.iter().filter(|n| self.is_up(**n)).count() < self.config.replicas)
            .count();
        self.report.timeline.push(Sample {
            t: self.now,
            replicas_min: replicas.values().copied().min().unwrap_or(0),
            replicas_max: replicas.values().copied().max().unwrap_or(0),
            leaders_min: leaders.values().copied().min().unwrap_or(0),
            leaders_max: leaders.values().copied().max().unwrap_or(0),
            moves_in_flight: self.transfers.len(),
            bytes_moved: self.report.bytes_moved,
            under_replicated: under,
        });
    }

    fn run(&mut self) {
        self.event();
        self.report.hottest_node_write_share_start = self.hottest_node_share();
        let restart_every = 30;
        let mut restarting: Vec<NodeId> = if self.config.scenario == Scenario::RollingRestart {
            self.nodes.keys().copied().rev().collect()
        } else {
            Vec::new()
        };
        let mut quiet = 0;
        let mut last_step = 0;
        let mut round_max: f64 = 0.0;
        let expected_end = if restarting.is_empty() {
            0
        } else {
            restarting.len() as u64 * restart_every
        };
        let sample_every = (expected_end / SAMPLES).max(10);
        while self.now < self.config.max_seconds {
            if self.config.scenario == Scenario::RollingRestart && self.now.is_multiple_of(restart_every) {
                let back: Vec<NodeId> = self.nodes.iter().filter(|(_, n)| !n.up).map(|(id, _)| *id).collect();
                for node in back {
                    if let Some(n) = self.nodes.get_mut(&node) {
                        n.up = true;
                    }
                }
                if let Some(node) = restarting.pop() {
                    self.stop(node);
                }
            }
            let before = self.pd_seconds;
            self.heartbeats();
            self.elections();
            self.finish_transfers();
            let splitting = self.config.scenario == Scenario::Hotspot && self.split();
            let planned = splitting || (self.state.reshape.is_none() && self.plan());
            self.persist_cost();
            self.account();
            round_max = round_max.max(self.pd_seconds - before);
            self.pd_rounds += 1;
            if self.now.is_multiple_of(sample_every) {
                self.sample();
            }
            if planned || !self.transfers.is_empty() {
                quiet = 0;
                last_step = self.now;
            } else {
                quiet += 1;
            }
            self.now += 1;
            let events_over = restarting.is_empty() && self.nodes.values().all(|n| n.up)
                || self.config.scenario != Scenario::RollingRestart;
            let waiting_for_dead = self
                .nodes
                .values()
                .any(|n| !n.up && self.now < n.down_since + self.config.dead_after_secs + 2);
            // A shard just split may be split again once its cool-down ends.
            let quiet_enough = if self.config.scenario == Scenario::Hotspot {
                QUIET_ROUNDS + crate::SPLIT_COOLDOWN.as_secs()
            } else {
                QUIET_ROUNDS
            };
            if events_over && !waiting_for_dead && quiet >= quiet_enough {
                break;
            }
        }
        self.sample();
        let (replicas, leaders) = self.counts();
        let mean = replicas.values().sum::<usize>() as f64 / replicas.len().max(1) as f64;
        self.report.max_replica_deviation = replicas.values().map(|c| (*c as f64 - mean).abs()).fold(0.0, f64::max);
        self.report.leader_spread =
            leaders.values().copied().max().unwrap_or(0) - leaders.values().copied().min().unwrap_or(0);
        let all_placed = self
            .state
            .table
            .shards
            .values()
            .all(|s| s.replicas.iter().all(|n| self.is_up(*n)) && s.replicas.len() == self.config.replicas);
        self.report.balanced = quiet >= QUIET_ROUNDS && all_placed && self.report.max_replica_deviation <= 1.0;
        self.report.sim_seconds_to_balance = last_step;
        self.report.zone_violations = self.zone_violations();
        self.report.hottest_node_write_share_end = self.hottest_node_share();
        self.report.pd_cpu_ms_per_heartbeat_round = self.pd_seconds * 1000.0 / self.pd_rounds.max(1) as f64;
        self.report.pd_cpu_ms_max_round = round_max * 1000.0;
        self.report.pd_state_bytes = redraft_common::wire::encode(&self.state).len();
        self.report.routing_table_bytes = redraft_common::wire::encode(&self.table()).len();
    }

    fn zone_violations(&self) -> usize {
        let zones: BTreeSet<usize> = self.nodes.keys().filter_map(|n| self.zone_of.get(n).copied()).collect();
        if zones.len() < self.config.replicas {
            return 0;
        }
        self.state
            .table
            .shards
            .values()
            .filter(|s| {
                let used: BTreeSet<usize> = s.replicas.iter().filter_map(|n| self.zone_of.get(n).copied()).collect();
                used.len() < s.replicas.len()
            })
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(scenario: Scenario) -> SimConfig {
        SimConfig {
            scenario,
            nodes: 10,
            add: 5,
            shards: 300,
            shard_mib: 16.0,
            ..SimConfig::default()
        }
    }

    // Short versions of the scale scenarios (scripts/bench.sh runs the long
    // ones): each must end balanced, move close to the ideal, respect the
    // per-node move limit and keep every shard available.
    fn check(report: &SimReport, max_moved_over_ideal: f64) {
        let summary = format!(
            "balanced {} in {} s, moved {} of ideal {}, deviation {}, moves per node {}, under-replicated {} shard-s, unavailable {} shard-s, zone violations {}",
            report.balanced,
            report.sim_seconds_to_balance,
            report.bytes_moved,
            report.bytes_ideal,
            report.max_replica_deviation,
            report.max_concurrent_moves_per_node,
            report.under_replicated_shard_seconds,
            report.unavailable_shard_seconds,
            report.zone_violations
        );
        assert!(report.balanced, "{summary}");
        assert!(
            report.bytes_moved as f64 <= report.bytes_ideal as f64 * max_moved_over_ideal,
            "{summary}"
        );
        assert!(
            report.max_concurrent_moves_per_node <= report.config.moves_per_node,
            "{summary}"
        );
        assert_eq!(report.unavailable_shard_seconds, 0, "{summary}");
        assert_eq!(report.zone_violations, 0, "{summary}");
    }

    #[test]
    fn joining_nodes_get_their_share_and_little_more_moves() {
        let report = run(SimConfig {
            nodes: 20,
            add: 30,
            shards: 2000,
            ..small(Scenario::Join)
        });
        check(&report, 1.1);
        assert!(report.leader_spread <= 1, "leaders {}", report.leader_spread);
    }

    #[test]
    fn failed_nodes_are_replaced_and_nothing_else_moves() {
        let report = run(SimConfig {
            nodes: 40,
            shards: 2000,
            fail_percent: 5.0,
            ..small(Scenario::Fail)
        });
        check(&report, 1.1);
        assert!(report.under_replicated_shard_seconds > 0);
    }

    #[test]
    fn a_rolling_restart_moves_nothing() {
        let report = run(SimConfig {
            nodes: 12,
            ..small(Scenario::RollingRestart)
        });
        check(&report, 1.0);
        assert_eq!(report.moves, 0);
        // Leaders come back to the restarted nodes, through chains of
        // transfers where replicas sit on neighbouring nodes.
        assert!(report.leader_spread <= 1, "leaders {}", report.leader_spread);
    }

    #[test]
    fn decommissioned_nodes_are_drained_and_removed() {
        let report = run(SimConfig {
            nodes: 30,
            shards: 1500,
            ..small(Scenario::Decommission)
        });
        check(&report, 1.1);
    }

    #[test]
    fn a_zone_failure_keeps_every_shard_available_and_zones_distinct() {
        let report = run(SimConfig {
            nodes: 12,
            zones: 4,
            shards: 600,
            ..small(Scenario::ZoneFailure)
        });
        check(&report, 1.1);
    }

    #[test]
    fn a_hot_spot_is_split_and_its_pieces_spread() {
        let report = run(SimConfig {
            nodes: 20,
            shards: 100,
            vnodes: 4096,
            ..small(Scenario::Hotspot)
        });
        assert!(report.balanced && report.zone_violations == 0 && report.unavailable_shard_seconds == 0);
        assert!(report.max_concurrent_moves_per_node <= report.config.moves_per_node);
        assert!(report.splits > 0);
        assert!(
            report.hottest_node_write_share_end < report.hottest_node_write_share_start,
            "hottest node's share of writes {} -> {}",
            report.hottest_node_write_share_start,
            report.hottest_node_write_share_end
        );
    }

    #[test]
    fn a_run_replays_exactly_from_its_seed() {
        let a = run(small(Scenario::Join));
        let b = run(small(Scenario::Join));
        assert_eq!(a.bytes_moved, b.bytes_moved);
        assert_eq!(a.sim_seconds_to_balance, b.sim_seconds_to_balance);
        assert_eq!(a.timeline.len(), b.timeline.len());
    }
}

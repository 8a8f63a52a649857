//! Redraft placement driver (PD): the cluster's metadata service.
//!
//! | module | owns |
//! | --- | --- |
//! | [`state`] | replicated state (nodes, shards, vnode table) and its transitions |
//! | [`store`] | the PD group's state machine on RocksDB |
//! | [`scheduler`] | replica and leader balancing |
//!
//! The PD is its own Raft group (group id 0 in its own RocksDB). Only the leader
//! answers; other members reply `NotLeader` with the leader's address.
//!
//! REPLICATED vs SOFT STATE. Nodes, shards and the vnode table change through the
//! PD log. Liveness and leader hints arrive every heartbeat and are kept only in
//! the leader's memory (as TiKV's PD does with region leaders): losing them on
//! failover costs a few heartbeats, and replicating them would cost a log entry
//! per leader change.
//!
//! PUBLICATION. `Routing` requests are long polls: answered at once when the caller
//! is behind, otherwise when the version (or, if asked, a leader hint) changes or
//! the wait expires. Watchers thus get pushes, with the poll as the pull fallback.

pub mod backup;
pub mod metrics;
pub mod scheduler;
pub mod sim;
pub mod state;
pub mod store;
pub mod verify;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use openraft::error::{ClientWriteError, RaftError};
use openraft::BasicNode;
use redraft_common::ids::{NodeId, ShardId};
use redraft_common::routing::RoutingTable;
use redraft_common::tls::TlsIdentity;
use redraft_common::transport::Endpoint;
use redraft_common::wire::{self, PdRequest, PdResponse};
use redraft_raft_storage::network::{serve_rpc, GroupNetwork, PdWire};
use redraft_raft_storage::{Engine, FsyncPolicy};
use tokio::sync::watch;

use crate::state::{PdCommand, PdReply};
use crate::store::{PdRaft, PdStore};

/// Configuration of a placement driver member.
#[derive(Clone, Debug)]
pub struct Config {
    /// This member's id (1, 2, 3, ...).
    pub id: u64,
    /// QUIC listen address.
    pub listen: SocketAddr,
    /// All PD members `id -> address`, this one included. The lowest id
    /// initialises the group on first start.
    pub members: BTreeMap<u64, SocketAddr>,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Directory with `ca.pem` and this member's certificate.
    pub certs_dir: PathBuf,
    /// Name of this member's certificate in `certs_dir`.
    pub cert_name: String,
    /// Bootstrap the cluster once this many nodes have registered.
    pub initial_nodes: usize,
    /// Shards created at bootstrap in all; 0 means `shards_per_node` per node.
    pub shards: u32,
    /// Shards created per node at bootstrap (when `shards` is 0).
    pub shards_per_node: u32,
    /// Replicas per shard.
    pub replicas: u32,
    /// Virtual nodes on the ring (fixed at bootstrap).
    pub vnodes: u32,
    /// Operator HTTP endpoint (`/metrics`, `/health`, `/ready`), if any.
    pub http: Option<SocketAddr>,
    /// A node silent this long has its replicas re-created on other nodes.
    pub dead_after: Duration,
    /// Whether the scheduler balances replicas and leaders and splits busy or big
    /// shards on its own; when off, draining, dead-node re-replication and
    /// operators' requests still proceed.
    pub auto_balance: bool,
    /// Replica moves one node may take part in at once (as source or target).
    pub moves_per_node: usize,
    /// Split a shard whose data on disk exceeds this many bytes (0: never).
    pub split_bytes: u64,
    /// Split a shard that applies more than this many writes per second,
    /// sustained over several seconds (0: never).
    pub split_writes_per_sec: u64,
    /// Check every shard's replicas against each other this often (one shard
    /// at a time, spread over the period); `None`: only on request.
    pub verify_every: Option<Duration>,
    /// Read rate of the periodic checks' digests on each replica, MiB/s.
    pub verify_mib_per_sec: u32,
}

/// A node that has not heartbeated for this long counts as down (heartbeats come
/// every 500 ms).
const NODE_DOWN_AFTER: Duration = Duration::from_secs(5);

/// How long a node that said it is stopping counts as down whatever its
/// heartbeats: longer than it keeps heartbeating while it hands its leaders
/// over (about 5 s) plus [`NODE_DOWN_AFTER`], so that by then its silence
/// says it; bounded, so that a notice that arrives late (after the node has
/// already registered again) cannot keep a running node down.
const LEAVING_FOR: Duration = Duration::from_secs(15);

/// Leader-local soft state fed by heartbeats.
#[derive(Default)]
struct Soft {
    last_seen: HashMap<NodeId, Instant>,
    /// When nodes said they are stopping (cleared when they register again):
    /// not live for [`LEAVING_FOR`] from then, whatever their heartbeats.
    leaving: HashMap<NodeId, Instant>,
    leaders: BTreeMap<ShardId, NodeId>,
    generation: u64,
    /// Recent `(when, applied index, bytes)` reports of each shard's leader.
    load: HashMap<ShardId, std::collections::VecDeque<(Instant, u64, u64)>>,
    /// When each shard last took part in an automatic split.
    split_at: HashMap<ShardId, Instant>,
}

impl Soft {
    /// Heartbeated recently and not stopping.
    fn is_live(&self, node: &NodeId) -> bool {
        self.last_seen.get(node).is_some_and(|t| t.elapsed() < NODE_DOWN_AFTER)
            && self.leaving.get(node).is_none_or(|t| t.elapsed() >= LEAVING_FOR)
    }
}

/// A shard's load from its recent heartbeat samples.
fn load_of(samples: &std::collections::VecDeque<(Instant, u64, u64)>) -> Option<scheduler::ShardLoad> {
    let (first, last) = (samples.front()?, samples.back()?);
    let span = last.0.duration_since(first.0);
    Some(scheduler::ShardLoad {
        bytes: last.2,
        entries_per_sec: last.1.saturating_sub(first.1) as f64 / span.as_secs_f64().max(1e-3),
        span,
    })
}

/// How far back write rates are measured.
const LOAD_WINDOW: Duration = Duration::from_secs(10);
/// The shortest history a write rate is judged on.
pub const LOAD_MIN_SPAN: Duration = Duration::from_secs(5);
/// A shard (or a shard just split off) is not split again sooner than this.
pub const SPLIT_COOLDOWN: Duration = Duration::from_secs(60);
/// While shards are fewer than nodes, a shard taking at least this many Raft
/// entries per second is split to spread; an idle one is left whole, as a
/// node without load gains nothing from leading.
pub const SPREAD_MIN_ENTRIES_PER_SEC: f64 = 5.0;

struct Pd {
    raft: PdRaft,
    store: PdStore,
    members: BTreeMap<u64, SocketAddr>,
    soft: Mutex<Soft>,
    version_rx: watch::Receiver<u64>,
    leaders_tx: watch::Sender<u64>,
    endpoint: Endpoint,
    dead_after: Duration,
    auto_balance: bool,
    moves_per_node: usize,
    split_bytes: u64,
    split_writes_per_sec: u64,
    /// Shards whose replica move runs in a task of this process.
    moving: Mutex<std::collections::BTreeSet<ShardId>>,
    /// Held while a scheduling step runs: steps never overlap, whether the
    /// scheduler or an operator started them.
    operating: tokio::sync::Mutex<()>,
    /// Shards whose last consistency check found differing replicas.
    differing: Mutex<std::collections::BTreeSet<ShardId>>,
}

impl scheduler::Cluster for Pd {
    fn table(&self) -> RoutingTable {
        Pd::table(self)
    }

    fn live(&self) -> Vec<NodeId> {
        let soft = self.soft.lock().expect("soft state lock");
        soft.last_seen.keys().copied().filter(|n| soft.is_live(n)).collect()
    }

    fn dead(&self) -> Vec<NodeId> {
        // Only nodes this leader has heard from: after a PD failover, silence
        // since the failover says nothing about a node.
        let soft = self.soft.lock().expect("soft state lock");
        soft.last_seen
            .iter()
            .filter(|(_, t)| t.elapsed() >= self.dead_after)
            .map(|(n, _)| *n)
            .collect()
    }

    fn reshape(&self) -> Option<state::Reshape> {
        self.store.state().reshape
    }

    fn in_flight(&self) -> scheduler::InFlight {
        scheduler::InFlight {
            moves: self.store.state().moves,
            per_node: self.moves_per_node,
            balance: self.auto_balance,
        }
    }

    async fn propose(&self, command: PdCommand) -> Result<PdReply> {
        match Pd::propose(self, command).await {
            Ok(PdReply::Refused(why)) => Err(anyhow::anyhow!(why)),
            Ok(reply) => Ok(reply),
            Err(answer) => Err(anyhow::anyhow!("placement write failed: {answer:?}")),
        }
    }

    fn leader_moved(&self, shard: ShardId, node: NodeId) {
        let mut soft = self.soft.lock().expect("soft state lock");
        self.set_leader_hints(&mut soft, node, [shard]);
    }
}

/// Scheduler period: one planning round per tick.
const SCHEDULE_EVERY: Duration = Duration::from_secs(1);

/// How long one planning round keeps moving leaderships (one after another).
pub const LEADERSHIP_ROUND: Duration = Duration::from_secs(1);

async fn schedule_loop(pd: Arc<Pd>) {
    loop {
        tokio::time::sleep(SCHEDULE_EVERY).await;
        let state = pd.store.state();
        if !pd.is_leader() || !state.table.is_bootstrapped() {
            continue;
        }
        // Moves recorded by an earlier leader (or whose task ended) are resumed.
        for (&shard, &(from, to)) in &state.moves {
            spawn_move(&pd, shard, from, to);
        }
        let _one_round = pd.operating.lock().await;
        if let Err(e) = schedule_round(&pd).await {
            tracing::warn!(error = %e, "scheduling step failed");
        }
        metrics::OPERATORS.set(pd.moving.lock().expect("moving lock").len() as i64);
    }
}

/// One planning round: starts every replica move the per-node limits allow (each
/// finishes in a task of its own), or runs one other step (a split or merge, a
/// leadership move, a removal) when no move is under way.
async fn schedule_round(pd: &Arc<Pd>) -> Result<()> {
    use scheduler::Cluster;
    if pd.reshape().is_some() {
        if pd.moving.lock().expect("moving lock").is_empty() {
            scheduler::tick(pd.as_ref(), &pd.endpoint).await?;
        }
        return Ok(());
    }
    if pd.auto_balance && pd.moving.lock().expect("moving lock").is_empty() {
        if let Some((shard, why)) = pd.split_candidate(&pd.table()) {
            if let PdReply::Done = Cluster::propose(pd.as_ref(), PdCommand::BeginSplit { shard }).await? {
                if let Some(state::Reshape::Split { child, .. }) = pd.store.state().reshape {
                    pd.split_started(shard, child);
                }
                tracing::info!(shard_id = shard, reason = why, "splitting a busy or big shard");
            }
            return Ok(());
        }
    }
    let started = Instant::now();
    let table = pd.table();
    let mut plan = scheduler::Plan::new(&table, &pd.live(), &pd.dead(), &pd.in_flight());
    loop {
        match plan.next_step() {
            Some(scheduler::Step::Move { shard, from, to }) => {
                scheduler::begin_move(pd.as_ref(), &pd.endpoint, &table, (&shard, &from, &to)).await?;
                spawn_move(pd, shard, from, to);
            }
            Some(step) => {
                // Leadership transfers go alongside replica moves (the plan
                // leaves moving shards alone) and take milliseconds: a round
                // keeps taking them for up to its period, so nodes that join
                // lead shards within minutes, not once every move is done.
                let lead = matches!(step, scheduler::Step::Lead { .. });
                if lead || pd.moving.lock().expect("moving lock").is_empty() {
                    metrics::OPERATORS.set(1);
                    scheduler::execute(pd.as_ref(), &pd.endpoint, &table, &step).await?;
                    if lead && started.elapsed() < LEADERSHIP_ROUND {
                        continue;
                    }
                }
                return Ok(());
            }
            None => return Ok(()),
        }
    }
}

/// The periodic consistency check: on the PD leader, every shard once per
/// `every`, one at a time, the checks spread evenly over the period.
async fn verify_loop(pd: Arc<Pd>, every: Duration, mib_per_sec: u32) {
    loop {
        let shards: Vec<ShardId> = pd.table().shards.keys().copied().collect();
        let pause = every / (shards.len().max(1) as u32);
        for shard in shards {
            tokio::time::sleep(pause).await;
            if !pd.is_leader() || !pd.table().shards.contains_key(&shard) {
                continue;
            }
            match pd.verify(shard, mib_per_sec).await {
                Ok(verdict) if !verdict.agrees() => tracing::error!(
                    shard_id = shard,
                    index = verdict.index,
                    replicas = %verify::describe_groups(&verdict),
                    vnodes = ?verdict.vnodes,
                    "replicas differ: `redraft ctl verify --shard` names the keys, `redraft ctl repair` fixes one"
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(shard_id = shard, error = %e, "consistency check failed"),
            }
        }
        if pd.table().shards.is_empty() {
            tokio::time::sleep(every).await;
        }
    }
}

/// The periodic backup job (`redraft ctl backup --every`): its settings live
/// with the cluster's CONFIG parameters, so a new PD leader carries on.
async fn backup_loop(pd: Arc<Pd>) {
    let mut last_attempt: Option<Instant> = None;
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        if !pd.is_leader() {
            last_attempt = None;
            continue;
        }
        let config = pd.store.state().config;
        let (Some(every), Some(dir)) = (
            config.get(backup::EVERY_KEY).and_then(|e| backup::parse_period(e).ok()),
            config.get(backup::DIR_KEY),
        ) else {
            continue;
        };
        let keep = config.get(backup::KEEP_KEY).and_then(|k| k.parse().ok()).unwrap_or(7);
        // The last whole backup's time survives a change of PD leader.
        let last_ok_ms: u64 = config
            .get(backup::LAST_KEY)
            .and_then(|l| l.split(' ').nth(1)?.parse().ok())
            .unwrap_or(0);
        let since_ok = Duration::from_millis(redraft_common::now_ms().saturating_sub(last_ok_ms));
        let retry_after = every.min(Duration::from_secs(300));
        if since_ok < every || last_attempt.is_some_and(|t| t.elapsed() < retry_after) {
            continue;
        }
        last_attempt = Some(Instant::now());
        match pd.periodic_backup(std::path::Path::new(dir), keep).await {
            Ok(done) => tracing::info!(done, "periodic backup written"),
            Err(e) => tracing::error!(error = %format!("{e:#}"), "periodic backup failed"),
        }
    }
}

/// Finishes the move of `shard`'s replica in a task, unless one already runs.
fn spawn_move(pd: &Arc<Pd>, shard: ShardId, from: NodeId, to: NodeId) {
    if !pd.moving.lock().expect("moving lock").insert(shard) {
        return;
    }
    metrics::OPERATORS.set(pd.moving.lock().expect("moving lock").len() as i64);
    let pd = pd.clone();
    tokio::spawn(async move {
        let table = pd.table();
        let still_recorded = pd.store.state().moves.get(&shard) == Some(&(from, to));
        if !still_recorded {
            pd.moving.lock().expect("moving lock").remove(&shard);
            return;
        }
        if let Err(e) = scheduler::complete_move(pd.as_ref(), &pd.endpoint, &table, (&shard, &from, &to)).await {
            tracing::warn!(shard_id = shard, from, to, error = %e, "replica move failed");
        }
        pd.moving.lock().expect("moving lock").remove(&shard);
    });
}

/// Runs a PD member until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
    std::fs::create_dir_all(&config.data_dir)?;
    let engine = Engine::open(&config.data_dir.join("db"), FsyncPolicy::Always)?;
    let tls = TlsIdentity::load(&config.certs_dir, &config.cert_name)?;
    let endpoint = Endpoint::server(config.listen, &tls)?;
    let (version_tx, version_rx) = watch::channel(0);
    let store = PdStore::open(engine.clone(), Arc::new(version_tx))?;
    let raft_config = openraft::Config {
        cluster_name: "redraft-placement".into(),
        heartbeat_interval: 200,
        election_timeout_min: 1000,
        election_timeout_max: 2000,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(1000),
        ..Default::default()
    }
    .validate()?;
    let raft = PdRaft::new(
        config.id,
        Arc::new(raft_config),
        GroupNetwork::<_, PdWire>::new(0, endpoint.clone()),
        engine.log_store(0),
        store.clone(),
    )
    .await
    .context("starting the placement Raft group")?;
    if config.members.keys().next() == Some(&config.id) && !raft.is_initialized().await? {
        let members = config
            .members
            .iter()
            .map(|(id, a)| (*id, BasicNode::new(a.to_string())))
            .collect::<BTreeMap<_, _>>();
        raft.initialize(members)
            .await
            .context("initialising the placement group")?;
        tracing::info!(member = config.id, "initialised placement group");
    }
    let (leaders_tx, _) = watch::channel(0);
    let pd = Arc::new(Pd {
        raft,
        store,
        members: config.members.clone(),
        soft: Mutex::default(),
        version_rx,
        leaders_tx,
        endpoint: endpoint.clone(),
        dead_after: config.dead_after,
        auto_balance: config.auto_balance,
        moves_per_node: config.moves_per_node.max(1),
        split_bytes: config.split_bytes,
        split_writes_per_sec: config.split_writes_per_sec,
        moving: Mutex::default(),
        operating: tokio::sync::Mutex::new(()),
        differing: Mutex::default(),
    });
    metrics::init();
    if let Some(addr) = config.http {
        let raft = pd.raft.clone();
        let ready: redraft_common::http::Readiness = Arc::new(move || match raft.metrics().borrow().current_leader {
            Some(_) => Ok(()),
            None => Err("the placement group has no leader".into()),
        });
        redraft_common::http::serve(addr, ready).await?;
    }

    let serve = {
        let pd = pd.clone();
        let endpoint = endpoint.clone();
        tokio::spawn(async move { endpoint.serve(move |bytes| handle(pd.clone(), bytes)).await })
    };
    let bootstrap = tokio::spawn(bootstrap_loop(pd.clone(), config.clone()));
    let schedule = tokio::spawn(schedule_loop(pd.clone()));
    let backups = tokio::spawn(backup_loop(pd.clone()));
    let verify = config
        .verify_every
        .map(|every| tokio::spawn(verify_loop(pd.clone(), every, config.verify_mib_per_sec)));
    tracing::info!(member = config.id, addr = %endpoint.local_addr()?, "placement driver serving");
    shutdown.await;
    serve.abort();
    bootstrap.abort();
    schedule.abort();
    backups.abort();
    if let Some(verify) = verify {
        verify.abort();
    }
    let _ = pd.raft.shutdown().await;
    endpoint.close();
    Ok(())
}

impl Pd {
    /// Takes a backup's cut, the scheduler held still meanwhile.
    async fn backup_cut(&self, hold_ms: u32) -> Result<redraft_common::backup::Cut> {
        let _one_step = self.operating.lock().await;
        let config = self.store.state().config.into_iter().collect();
        let cut = backup::cut(&self.endpoint, || self.table(), config, hold_ms).await?;
        metrics::BACKUP_HOLD_MS.set((cut.hold_seconds * 1000.0) as i64);
        Ok(cut)
    }

    /// A backup is written (`Some((seconds, bytes))`) or abandoned: its
    /// snapshots are dropped and the outcome counted.
    async fn backup_done(&self, id: u64, result: Option<(f64, u64)>) {
        backup::release(&self.endpoint, &self.table(), id, true).await;
        match result {
            Some((seconds, bytes)) => {
                metrics::BACKUPS.with_label_values(&["ok"]).inc();
                metrics::BACKUP_LAST_SUCCESS.set(redraft_common::now_ms() as i64 / 1000);
                metrics::BACKUP_DURATION_MS.set((seconds * 1000.0) as i64);
                metrics::BACKUP_BYTES.set(bytes as i64);
            }
            None => metrics::BACKUPS.with_label_values(&["failed"]).inc(),
        }
    }

    /// One backup into `dir` by the periodic job; keeps the newest `keep`.
    async fn periodic_backup(&self, dir: &std::path::Path, keep: usize) -> Result<String> {
        let started = Instant::now();
        let started_ms = redraft_common::now_ms();
        let cut = self.backup_cut(backup::DEFAULT_HOLD_MS).await?;
        let tag = redraft_common::backup::tag_of(cut.at_ms);
        let options = backup::WriteOptions {
            dir,
            tag: &tag,
            mib_per_sec: 0,
            started_ms,
        };
        let written = backup::write(&self.endpoint, &cut, &options).await;
        let seconds = started.elapsed().as_secs_f64();
        self.backup_done(cut.id, written.as_ref().ok().map(|m| (seconds, m.totals().1)))
            .await;
        let manifest = written?;
        let removed = backup::prune(dir, keep)?;
        let (keys, bytes) = manifest.totals();
        let last = format!("{tag} {} {seconds:.1} {keys} {bytes}", redraft_common::now_ms());
        let _ = self
            .propose(PdCommand::SetConfig {
                pairs: vec![(backup::LAST_KEY.to_string(), last)],
            })
            .await;
        Ok(format!(
            "{tag}: {keys} keys, {bytes} bytes in {seconds:.1} s; removed {removed:?}"
        ))
    }

    /// Checks `shard`'s replicas and records the outcome in the metrics.
    async fn verify(&self, shard: ShardId, mib_per_sec: u32) -> Result<redraft_common::consistency::ShardVerdict> {
        let outcome = verify::verify_shard(&self.endpoint, &self.table(), shard, mib_per_sec).await;
        let result = match &outcome {
            Ok(verdict) => {
                let differ = !verdict.agrees();
                self.record_mismatch(shard, differ);
                if differ {
                    "differ"
                } else {
                    "agree"
                }
            }
            Err(_) => "failed",
        };
        metrics::VERIFY_CHECKS.with_label_values(&[result]).inc();
        metrics::VERIFY_LAST_CHECK.set(redraft_common::now_ms() as i64 / 1000);
        outcome
    }

    /// Notes whether `shard`'s replicas differ, for the mismatch gauge.
    fn record_mismatch(&self, shard: ShardId, differ: bool) {
        let mut differing = self.differing.lock().expect("differing lock");
        if differ {
            differing.insert(shard);
        } else {
            differing.remove(&shard);
        }
        metrics::DIGEST_MISMATCH.set(differing.len() as i64);
    }

    fn leader_addr(&self) -> Option<String> {
        let leader = self.raft.metrics().borrow().current_leader?;
        self.members.get(&leader).map(|a| a.to_string())
    }

    fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.raft.metrics().borrow().id)
    }

    async fn propose(&self, command: PdCommand) -> Result<PdReply, PdResponse> {
        match self.raft.client_write(command).await {
            Ok(response) => Ok(response.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => Err(PdResponse::NotLeader {
                leader: self.leader_addr(),
            }),
            Err(e) => Err(PdResponse::Error(e.to_string())),
        }
    }

    fn table(&self) -> RoutingTable {
        let mut table = self.store.state().table;
        let soft = self.soft.lock().expect("soft state lock");
        for (shard, leader) in &soft.leaders {
            if let Some(info) = table.shards.get_mut(shard) {
                if info.replicas.contains(leader) {
                    info.leader = Some(*leader);
                }
            }
        }
        table.leaders_generation = soft.generation;
        table
    }

    fn heartbeat(&self, node: NodeId, leaders: Vec<ShardId>, load: Vec<wire::ShardLoad>) {
        metrics::HEARTBEATS.inc();
        let mut soft = self.soft.lock().expect("soft state lock");
        let now = Instant::now();
        soft.last_seen.insert(node, now);
        for report in load {
            let samples = soft.load.entry(report.shard).or_default();
            samples.push_back((now, report.applied, report.bytes));
            while samples
                .front()
                .is_some_and(|(at, _, _)| now.duration_since(*at) > LOAD_WINDOW)
            {
                samples.pop_front();
            }
        }
        self.set_leader_hints(&mut soft, node, leaders);
    }

    /// Records that `node` leads `shards`; publishes the hints when one changed.
    fn set_leader_hints(&self, soft: &mut Soft, node: NodeId, shards: impl IntoIterator<Item = ShardId>) {
        let mut changed = false;
        for shard in shards {
            if soft.leaders.insert(shard, node) != Some(node) {
                changed = true;
            }
        }
        if changed {
            soft.generation += 1;
            self.leaders_tx.send_replace(soft.generation);
        }
    }

    /// A shard to split automatically, with the reason: one whose data outgrew
    /// `split_bytes`, or whose write rate stayed above `split_writes_per_sec`,
    /// or, while there are fewer shards than nodes that could lead one, the
    /// busiest shard that takes writes: its new half gets a leader on a node
    /// that led nothing (the leader balancing moves it there), so the nodes
    /// that join a cluster of one shard per node share its load.
    fn split_candidate(&self, table: &RoutingTable) -> Option<(ShardId, String)> {
        let soft = self.soft.lock().expect("soft state lock");
        let leading_capable = table
            .nodes
            .iter()
            .filter(|(id, info)| info.state == redraft_common::routing::NodeState::Up && soft.is_live(id))
            .count();
        let policy = scheduler::SplitPolicy {
            split_bytes: self.split_bytes,
            split_writes_per_sec: self.split_writes_per_sec,
            min_span: LOAD_MIN_SPAN,
            spread_min_entries_per_sec: SPREAD_MIN_ENTRIES_PER_SEC,
        };
        scheduler::split_candidate(
            table,
            |shard| soft.load.get(&shard).and_then(load_of),
            |shard| soft.split_at.get(&shard).is_some_and(|t| t.elapsed() < SPLIT_COOLDOWN),
            leading_capable,
            &policy,
        )
    }

    /// What `redraft ctl top` shows.
    fn overview(&self) -> wire::Overview {
        let table = self.table();
        let shards = {
            let soft = self.soft.lock().expect("soft state lock");
            table
                .shards
                .keys()
                .filter_map(|shard| {
                    let load = load_of(soft.load.get(shard)?)?;
                    Some(wire::ShardStats {
                        shard: *shard,
                        bytes: load.bytes,
                        entries_per_sec: load.entries_per_sec,
                    })
                })
                .collect()
        };
        let state = self.store.state();
        let reshape = state.reshape.as_ref().map(|reshape| match reshape {
            state::Reshape::Split { shard, child, vnodes } => {
                format!("splitting shard {shard}: {} vnodes to new shard {child}", vnodes.len())
            }
            state::Reshape::Merge { from, into, vnodes } => {
                format!("merging shard {from} ({} vnodes) into shard {into}", vnodes.len())
            }
        });
        wire::Overview {
            live: scheduler::Cluster::live(self),
            placement_leader: self.raft.metrics().borrow().current_leader,
            shards,
            moves: state.moves.iter().map(|(s, (from, to))| (*s, *from, *to)).collect(),
            reshape,
            table,
        }
    }

    /// Notes that `shard` was just split into `child`: neither splits again soon.
    fn split_started(&self, shard: ShardId, child: ShardId) {
        let mut soft = self.soft.lock().expect("soft state lock");
        for s in [shard, child] {
            soft.split_at.insert(s, Instant::now());
            soft.load.remove(&s);
        }
    }

    /// Refreshes the gauges from the replicated state and the heartbeats.
    fn observe(&self) {
        let table = self.store.state().table;
        let soft = self.soft.lock().expect("soft state lock");
        let live = |node: &NodeId| soft.is_live(node);
        let up = table.nodes.keys().filter(|n| live(n)).count();
        metrics::NODES.with_label_values(&["up"]).set(up as i64);
        metrics::NODES
            .with_label_values(&["down"])
            .set((table.nodes.len() - up) as i64);
        metrics::SHARDS.set(table.shards.len() as i64);
        let leaderless = table
            .shards
            .keys()
            .filter(|s| !soft.leaders.get(s).is_some_and(live))
            .count();
        metrics::SHARDS_WITHOUT_LEADER.set(if self.is_leader() { leaderless as i64 } else { 0 });
        metrics::ROUTING_VERSION.set(table.version as i64);
        metrics::IS_LEADER.set(i64::from(self.is_leader()));
    }

    async fn routing(&self, known_version: u64, known_leaders: u64, wait: Duration) -> PdResponse {
        let watch_leaders = known_leaders != u64::MAX;
        let mut version_rx = self.version_rx.clone();
        let mut leaders_rx = self.leaders_tx.subscribe();
        let current = || (*version_rx.borrow(), *leaders_rx.borrow());
        let (v, l) = current();
        if v == known_version && (!watch_leaders || l == known_leaders) {
            let changed = async {
                loop {
                    tokio::select! {
                        r = version_rx.changed() => if r.is_err() || *version_rx.borrow() != known_version { break },
                        _ = leaders_rx.changed(), if watch_leaders => break,
                    }
                }
            };
            let _ = tokio::time::timeout(wait, changed).await;
        }
        PdResponse::Routing(self.table())
    }
}

async fn handle(pd: Arc<Pd>, bytes: Vec<u8>) -> Vec<u8> {
    let request = match wire::decode::<PdRequest>(&bytes) {
        Ok(r) => r,
        Err(e) => return wire::encode(&PdResponse::Error(e.to_string())),
    };
    if let PdRequest::Raft { kind, payload } = &request {
        return wire::encode(&PdResponse::Raft(serve_rpc(&pd.raft, *kind, payload).await));
    }
    if !pd.is_leader() {
        return wire::encode(&PdResponse::NotLeader {
            leader: pd.leader_addr(),
        });
    }
    let response = match request {
        PdRequest::Register { node_id, addr, zone } => {
            if let Some(id) = node_id {
                pd.soft.lock().expect("soft state lock").leaving.remove(&id);
            }
            let known = node_id.and_then(|id| pd.store.state().table.nodes.get(&id).cloned());
            match known {
                Some(info)
                    if info.addr == addr
                        && info.zone == zone
                        && info.state == redraft_common::routing::NodeState::Up =>
                {
                    PdResponse::Registered { node_id: info.id }
                }
                _ => match pd
                    .propose(PdCommand::Register {
                        requested: node_id,
                        addr,
                        zone,
                    })
                    .await
                {
                    Ok(PdReply::NodeId(id)) => PdResponse::Registered { node_id: id },
                    Ok(PdReply::Refused(why)) => PdResponse::Error(why),
                    Ok(other) => PdResponse::Error(format!("unexpected reply {other:?}")),
                    Err(response) => response,
                },
            }
        }
        PdRequest::Heartbeat { node_id, leaders, load } => {
            pd.heartbeat(node_id, leaders, load);
            PdResponse::Ack
        }
        PdRequest::Routing {
            known_version,
            known_leaders,
            wait_ms,
        } => {
            pd.routing(known_version, known_leaders, Duration::from_millis(wait_ms.min(30_000)))
                .await
        }
        PdRequest::Leaving { node_id } => {
            pd.soft
                .lock()
                .expect("soft state lock")
                .leaving
                .insert(node_id, Instant::now());
            tracing::info!(node_id, "node is stopping: no new replicas or leaderships for it");
            PdResponse::Ack
        }
        PdRequest::Overview => PdResponse::Overview(Box::new(pd.overview())),
        PdRequest::Status => PdResponse::Status {
            table: pd.table(),
            live: scheduler::Cluster::live(pd.as_ref()),
        },
        PdRequest::Decommission { node } => {
            match pd
                .propose(PdCommand::SetNodeState {
                    node,
                    state: redraft_common::routing::NodeState::Draining,
                })
                .await
            {
                Ok(PdReply::Done) => {
                    tracing::info!(node_id = node, "decommissioning node");
                    PdResponse::Ack
                }
                Ok(other) => PdResponse::Error(format!("{other:?}")),
                Err(answer) => answer,
            }
        }
        PdRequest::Split { shard } => recorded(&pd, PdCommand::BeginSplit { shard }).await,
        PdRequest::SetUser { name, rules } => match pd.propose(PdCommand::SetUser { name, rules }).await {
            Ok(PdReply::Done) => PdResponse::Ack,
            Ok(PdReply::Refused(why)) => PdResponse::Error(why),
            Ok(other) => PdResponse::Error(format!("unexpected reply {other:?}")),
            Err(answer) => answer,
        },
        PdRequest::DeleteUsers { names } => match pd.propose(PdCommand::DeleteUsers { names }).await {
            Ok(PdReply::Count(n)) => PdResponse::Count(n),
            Ok(PdReply::Refused(why)) => PdResponse::Error(why),
            Ok(other) => PdResponse::Error(format!("unexpected reply {other:?}")),
            Err(answer) => answer,
        },
        PdRequest::SetConfig { pairs } => match pd.propose(PdCommand::SetConfig { pairs }).await {
            Ok(PdReply::Done) => PdResponse::Ack,
            Ok(other) => PdResponse::Error(format!("unexpected reply {other:?}")),
            Err(answer) => answer,
        },
        PdRequest::ChangeLibraries(change) => match pd.propose(PdCommand::ChangeLibraries(change)).await {
            Ok(PdReply::Done) => PdResponse::Ack,
            Ok(PdReply::Refused(why)) => PdResponse::Error(why),
            Ok(other) => PdResponse::Error(format!("unexpected reply {other:?}")),
            Err(answer) => answer,
        },
        PdRequest::Config => PdResponse::Config(pd.store.state().config.into_iter().collect()),
        PdRequest::Merge { from, into } => recorded(&pd, PdCommand::BeginMerge { from, into }).await,
        PdRequest::MoveReplica { shard, from, to } => {
            let _one_step = pd.operating.lock().await;
            let table = pd.table();
            let live = scheduler::Cluster::live(pd.as_ref());
            let step = scheduler::Step::Move { shard, from, to };
            let done = async {
                scheduler::check_move(&table, &live, shard, from, to)?;
                scheduler::execute(pd.as_ref(), &pd.endpoint, &table, &step).await
            };
            match done.await {
                Ok(()) => PdResponse::Done(vec![step.to_string()]),
                Err(e) => PdResponse::Error(format!("{e:#}")),
            }
        }
        PdRequest::Verify { shard, mib_per_sec } => {
            let table = pd.table();
            let shards: Vec<ShardId> = match shard {
                Some(shard) if !table.shards.contains_key(&shard) => {
                    return wire::encode(&PdResponse::Error(format!("no shard {shard}")));
                }
                Some(shard) => vec![shard],
                None => table.shards.keys().copied().collect(),
            };
            let mut verdicts = Vec::new();
            for shard in shards {
                match pd.verify(shard, mib_per_sec).await {
                    Ok(verdict) => verdicts.push(verdict),
                    Err(e) => return wire::encode(&PdResponse::Error(format!("shard {shard}: {e:#}"))),
                }
            }
            PdResponse::Verified(verdicts)
        }
        PdRequest::Repair { shard, node } => {
            let _one_step = pd.operating.lock().await;
            match verify::repair(pd.as_ref(), &pd.endpoint, shard, node).await {
                Ok(steps) => {
                    pd.record_mismatch(shard, false);
                    PdResponse::Done(steps)
                }
                Err(e) => PdResponse::Error(format!("{e:#}")),
            }
        }
        PdRequest::Rebalance { max_steps } => {
            let mut steps = Vec::new();
            let balancing = Balancing(pd.as_ref());
            while steps.len() < max_steps as usize {
                let _one_step = pd.operating.lock().await;
                match scheduler::tick(&balancing, &pd.endpoint).await {
                    Ok(Some(step)) => steps.push(step.to_string()),
                    Ok(None) => break,
                    Err(e) => {
                        steps.push(format!("failed: {e:#}"));
                        break;
                    }
                }
            }
            PdResponse::Done(steps)
        }
        PdRequest::BackupCut { hold_ms } => match pd.backup_cut(hold_ms).await {
            Ok(cut) => PdResponse::BackupCut(Box::new(cut)),
            Err(e) => PdResponse::Error(format!("{e:#}")),
        },
        PdRequest::BackupDone { backup, result } => {
            pd.backup_done(backup, result).await;
            PdResponse::Ack
        }
        PdRequest::Raft { .. } => PdResponse::Error("Raft RPCs are handled above".into()),
    };
    wire::encode(&response)
}

/// The placement driver as the scheduler sees it for `redraft ctl rebalance`:
/// balancing on, whatever the automatic setting.
struct Balancing<'a>(&'a Pd);

impl scheduler::Cluster for Balancing<'_> {
    fn table(&self) -> RoutingTable {
        self.0.table()
    }

    fn live(&self) -> Vec<NodeId> {
        scheduler::Cluster::live(self.0)
    }

    fn dead(&self) -> Vec<NodeId> {
        scheduler::Cluster::dead(self.0)
    }

    fn reshape(&self) -> Option<state::Reshape> {
        scheduler::Cluster::reshape(self.0)
    }

    fn in_flight(&self) -> scheduler::InFlight {
        scheduler::InFlight {
            balance: true,
            ..scheduler::Cluster::in_flight(self.0)
        }
    }

    async fn propose(&self, command: PdCommand) -> Result<PdReply> {
        scheduler::Cluster::propose(self.0, command).await
    }

    fn leader_moved(&self, shard: ShardId, node: NodeId) {
        scheduler::Cluster::leader_moved(self.0, shard, node)
    }
}

/// Proposes an operator's split or merge; the scheduler carries it out.
async fn recorded(pd: &Pd, command: PdCommand) -> PdResponse {
    let what = format!("{command:?}");
    match pd.propose(command).await {
        Ok(PdReply::Done) => {
            tracing::info!(command = what, "recorded by an operator");
            PdResponse::Done(vec![format!("recorded {what}")])
        }
        Ok(PdReply::Refused(why)) => PdResponse::Error(why),
        Ok(other) => PdResponse::Error(format!("unexpected reply {other:?}")),
        Err(answer) => answer,
    }
}

/// Proposes the initial layout once enough nodes have registered.
async fn bootstrap_loop(pd: Arc<Pd>, config: Config) {
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        pd.observe();
        if !pd.is_leader() {
            continue;
        }
        let state = pd.store.state();
        if state.table.is_bootstrapped() {
            continue;
        }
        if state.table.nodes.len() >= config.initial_nodes.max(config.replicas as usize) {
            let command = PdCommand::Bootstrap {
                shards: config.shards,
                shards_per_node: config.shards_per_node,
                replicas: config.replicas,
                vnode_count: config.vnodes,
            };
            match pd.propose(command).await {
                Ok(PdReply::Done) => {
                    let t = pd.store.state().table;
                    tracing::info!(
                        shards = t.shards.len(),
                        nodes = t.nodes.len(),
                        version = t.version,
                        "cluster bootstrapped"
                    );
                }
                Ok(other) => tracing::warn!(reply = ?other, "bootstrap refused"),
                Err(e) => tracing::warn!(answer = ?e, "bootstrap failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ago(secs: u64) -> Instant {
        Instant::now() - Duration::from_secs(secs)
    }

    #[test]
    fn a_leaving_node_is_down_until_its_notice_expires() {
        let mut soft = Soft::default();
        soft.last_seen.insert(1, ago(0));
        soft.last_seen.insert(2, ago(0));
        soft.last_seen.insert(3, ago(6));
        assert!(soft.is_live(&1) && soft.is_live(&2));
        assert!(!soft.is_live(&3), "silent longer than NODE_DOWN_AFTER");
        // Still heartbeating while it hands its leaders over: down anyway.
        soft.leaving.insert(2, ago(1));
        assert!(!soft.is_live(&2));
        // A notice older than LEAVING_FOR no longer counts: heartbeats decide.
        soft.leaving.insert(2, ago(LEAVING_FOR.as_secs() + 1));
        assert!(soft.is_live(&2));
    }
}

//! Redraft shard node: one process hosting many shard replicas (Raft groups).
//!
//! | module | owns |
//! | --- | --- |
//! | [`host`] | shard id -> Raft group; creating groups; running commands |
//! | [`raft`] | openraft type config, state machine, snapshots, network |
//! | [`proposals`] | concurrent writes to one shard batched into shared Raft entries |
//! | [`apply`] | deterministic command execution (Redis semantics) |
//! | [`storage`] | key and value layout in RocksDB |
//! | [`pubsub`] | proxies' Pub/Sub subscriptions and delivery queues (not replicated) |
//!
//! START-UP. Open the RocksDB, load (or obtain from the placement driver) the
//! node's id, reopen the groups recorded in the database, register with the PD,
//! then serve QUIC and keep three loops running: heartbeats (with the shards this
//! node leads), the routing-table watch (which creates newly assigned groups), and
//! background expiry of keys whose TTL passed.

pub mod apply;
pub mod backup;
pub mod blocking;
pub mod digest;
pub mod host;
pub mod metrics;
pub mod proposals;
pub mod pubsub;
pub mod raft;
pub mod reads;
pub mod storage;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use redraft_common::ids::{NodeId, ShardId};
use redraft_common::ops::ShardOp;
use redraft_common::pd_client::PdClient;
use redraft_common::tls::TlsIdentity;
use redraft_common::transport::Endpoint;
use redraft_common::wire::{self, NodeRequest, NodeResponse, PdRequest, PdResponse};
use redraft_raft_storage::engine::CF_META;
use redraft_raft_storage::Engine;
pub use redraft_raft_storage::FsyncPolicy;

use crate::host::Host;
pub use crate::reads::ReadPolicy;

/// Configuration of a shard node.
#[derive(Clone, Debug)]
pub struct Config {
    /// Requested node id; when `None`, the stored id or one assigned by the PD.
    pub node_id: Option<NodeId>,
    /// QUIC listen address.
    pub listen: SocketAddr,
    /// Address other members use to reach this node (defaults to `listen`).
    pub advertise: Option<SocketAddr>,
    /// Placement driver members.
    pub placement: Vec<SocketAddr>,
    /// Data directory (RocksDB under `db/`, snapshots under `snapshots/`).
    pub data_dir: PathBuf,
    /// Directory with `ca.pem` and this member's certificate.
    pub certs_dir: PathBuf,
    /// Name of this member's certificate in `certs_dir`.
    pub cert_name: String,
    /// When log writes are made durable.
    pub fsync: FsyncPolicy,
    /// Raft timing.
    pub raft: RaftTiming,
    /// Operator HTTP endpoint (`/metrics`, `/health`, `/ready`), if any.
    pub http: Option<SocketAddr>,
    /// Snapshot bytes per second this node may send (replica moves); 0: no limit.
    pub snapshot_bandwidth: u64,
    /// Idle time after which a shard's Raft timers stop; `None`: never.
    pub quiesce_after: Option<Duration>,
    /// How a shard's leader confirms reads: from its lease (the default) or by
    /// a ReadIndex round.
    pub read_policy: ReadPolicy,
    /// The node's failure domain (rack, zone); empty for none.
    pub zone: String,
}

/// Raft timing knobs, kept together.
#[derive(Clone, Copy, Debug)]
pub struct RaftTiming {
    /// Leader heartbeat interval (ms). 200 ms keeps a few hundred idle groups cheap.
    pub heartbeat_ms: u64,
    /// Election timeout lower bound (ms); a randomised value up to the upper bound.
    pub election_min_ms: u64,
    /// Election timeout upper bound (ms).
    pub election_max_ms: u64,
    /// Build a snapshot (and purge the log before it) after this many entries.
    pub snapshot_every: u64,
}

impl Default for RaftTiming {
    fn default() -> Self {
        RaftTiming {
            heartbeat_ms: 200,
            election_min_ms: 1000,
            election_max_ms: 2000,
            snapshot_every: 10_000,
        }
    }
}

impl RaftTiming {
    /// The openraft configuration for shard groups.
    pub fn to_config(self) -> openraft::Config {
        openraft::Config {
            cluster_name: "redraft-shard".into(),
            heartbeat_interval: self.heartbeat_ms,
            election_timeout_min: self.election_min_ms,
            election_timeout_max: self.election_max_ms,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_every),
            // Keep a tenth of the interval so briefly lagging followers catch up by log.
            max_in_snapshot_log_to_keep: self.snapshot_every / 10,
            purge_batch_size: 1,
            // Small chunks: a snapshot streams in many InstallSnapshot messages.
            snapshot_max_chunk_size: 1 << 20,
            // A chunk may wait for the node's snapshot bandwidth limit.
            install_snapshot_timeout: 10_000,
            ..Default::default()
        }
    }
}

const NODE_ID_KEY: &[u8] = b"node/id";

/// Runs a shard node until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
    metrics::init();
    redraft_raft_storage::network::limit_snapshot_bandwidth(config.snapshot_bandwidth);
    let serving = Arc::new(std::sync::atomic::AtomicBool::new(false));
    if let Some(addr) = config.http {
        let serving = serving.clone();
        let ready: redraft_common::http::Readiness = Arc::new(move || {
            if serving.load(std::sync::atomic::Ordering::Relaxed) {
                Ok(())
            } else {
                Err("registering and loading shard replicas".into())
            }
        });
        redraft_common::http::serve(addr, ready).await?;
    }
    std::fs::create_dir_all(&config.data_dir)?;
    let engine = Engine::open(&config.data_dir.join("db"), config.fsync)?;
    let tls = TlsIdentity::load(&config.certs_dir, &config.cert_name)?;
    let endpoint = Endpoint::server(config.listen, &tls)?;
    let advertise = config.advertise.unwrap_or(endpoint.local_addr()?);
    let pd = PdClient::new(endpoint.clone(), config.placement.clone());

    let stored: Option<NodeId> = engine
        .db()
        .get_cf(engine.cf(CF_META), NODE_ID_KEY)?
        .map(|b| wire::decode(&b))
        .transpose()?;
    if let (Some(stored), Some(asked)) = (stored, config.node_id) {
        if stored != asked {
            bail!("data directory belongs to node {stored}, not {asked}");
        }
    }
    let node_id = register(&pd, stored.or(config.node_id), &advertise.to_string(), &config.zone).await?;
    if stored.is_none() {
        let mut opts = rocksdb::WriteOptions::default();
        opts.set_sync(true);
        engine
            .db()
            .put_cf_opt(engine.cf(CF_META), NODE_ID_KEY, wire::encode(&node_id), &opts)?;
    }
    tracing::info!(node_id, addr = %advertise, "shard node registered");

    let host = Arc::new(Host::new(
        node_id,
        engine,
        endpoint.clone(),
        config.raft.to_config(),
        config.data_dir.join("snapshots"),
        config.quiesce_after,
        config.read_policy,
    )?);
    let reshapes = tokio::spawn(host.clone().follow_reshapes());
    let reopened = host.reopen_groups().await?;
    tracing::info!(node_id, groups = reopened, "reopened shard replicas");
    serving.store(true, std::sync::atomic::Ordering::Relaxed);

    let serve = {
        let host = host.clone();
        let endpoint = endpoint.clone();
        tokio::spawn(async move { endpoint.serve(move |bytes| handle(host.clone(), bytes)).await })
    };
    let heartbeat = tokio::spawn(heartbeat_loop(host.clone(), pd.clone()));
    let liveness = tokio::spawn(host.clone().watch_peers());
    let quiesce = {
        let host = host.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(host::QUIESCE_CHECK).await;
                host.quiesce_idle();
            }
        })
    };
    let watch = tokio::spawn(watch_loop(host.clone(), pd.clone()));
    let expiry = {
        let host = host.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                host.purge_expired(EXPIRY_SCAN_BUDGET).await;
            }
        })
    };
    shutdown.await;
    tracing::info!(node_id, "shard node stopping");
    // The placement driver hears at once that the node is leaving, so it plans
    // no replica or leadership onto it (it would otherwise count it live for
    // seconds). Meanwhile the node, still serving, hands its leaderships over:
    // writes that reach it are answered, or redirected once their shard has a
    // new leader.
    tokio::join!(tell_leaving(&pd, node_id), host.hand_off_leaders(HAND_OFF_WITHIN));
    // Client commands from now on get a redirect, also while the groups stop;
    // writes already proposed get their outcome, and requests already on their
    // way their answer.
    host.refuse_clients();
    host.settle_proposals(Duration::from_secs(2)).await;
    host.settle_requests(Duration::from_millis(300), Duration::from_secs(2))
        .await;
    for task in [heartbeat, watch, expiry, serve, reshapes, liveness, quiesce] {
        task.abort();
    }
    host.shutdown().await;
    endpoint.close();
    Ok(())
}

/// Tells the placement driver this node is stopping; gives up after a few
/// tries (the driver then notices by the missing heartbeats).
async fn tell_leaving(pd: &PdClient, node_id: NodeId) {
    for _ in 0..4 {
        match pd
            .call(&PdRequest::Leaving { node_id }, Duration::from_millis(500))
            .await
        {
            Ok(PdResponse::Ack) => return,
            Ok(other) => tracing::warn!(answer = ?other, "unexpected answer to leaving"),
            Err(e) => tracing::debug!(error = %e, "placement unreachable; retrying leaving"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tracing::warn!(node_id, "could not tell the placement driver this node is stopping");
}

async fn register(pd: &PdClient, node_id: Option<NodeId>, addr: &str, zone: &str) -> Result<NodeId> {
    let request = PdRequest::Register {
        node_id,
        addr: addr.to_string(),
        zone: zone.to_string(),
    };
    loop {
        match pd.call(&request, Duration::from_secs(3)).await {
            Ok(PdResponse::Registered { node_id }) => return Ok(node_id),
            Ok(PdResponse::Error(e)) => bail!("placement refused registration: {e}"),
            Ok(other) => tracing::warn!(answer = ?other, "unexpected registration answer"),
            Err(e) => tracing::warn!(error = %e, "placement unreachable; retrying registration"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn handle(host: Arc<Host>, bytes: Vec<u8>) -> Vec<u8> {
    let response = match wire::decode::<NodeRequest>(&bytes) {
        Err(e) => NodeResponse::Raft(Err(e.to_string())),
        Ok(request) => {
            // Client commands (not Raft messages, not Pub/Sub's long polls).
            let _counted =
                matches!(request, NodeRequest::Exec { .. } | NodeRequest::Block { .. }).then(|| host.client_request());
            serve(&host, request).await
        }
    };
    wire::encode(&response)
}

async fn serve(host: &Host, request: NodeRequest) -> NodeResponse {
    match request {
        NodeRequest::Raft { group, kind, payload } => NodeResponse::Raft(host.raft_rpc(group, kind, &payload).await),
        NodeRequest::Exec { shard, op, .. } => {
            // The placement driver's own entries (a backup's barrier above
            // all) are answered at once; clients' answers wait out a cut.
            let from_client = !matches!(&op, ShardOp::Write(write) if write.runs_alone());
            let answer = host.exec(shard, op).await;
            if from_client {
                host.backups.hold_answers(shard).await;
            }
            answer
        }
        NodeRequest::Block {
            shard,
            pop,
            waiter,
            timeout_ms,
            retry,
        } => {
            let answer = host.block(shard, pop, waiter, timeout_ms, retry).await;
            host.backups.hold_answers(shard).await;
            answer
        }
        NodeRequest::Unblock { shard, waiter } => host.unblock(shard, waiter),
        NodeRequest::KillScripts => NodeResponse::Reply(apply::kill_scripts()),
        NodeRequest::DigestProgress { shard, index } => NodeResponse::Digest(host.digests.progress(shard, index)),
        NodeRequest::Campaign { shard, handed_over } => host.campaign(shard, handed_over).await,
        NodeRequest::TransferLeader { shard, to } => host.transfer_leader(shard, to).await,
        NodeRequest::AddLearner { shard, node, addr } => host.add_learner(shard, node, addr).await,
        NodeRequest::ChangeVoters { shard, voters } => host.change_voters(shard, voters).await,
        NodeRequest::Applied { shard } => host.applied(shard),
        NodeRequest::Ping => NodeResponse::Reply(redraft_common::resp::Frame::Simple("PONG".into())),
        NodeRequest::Batch(requests) => NodeResponse::Batch(Box::pin(serve_batch(host, requests)).await),
        NodeRequest::PubSub(request) => NodeResponse::PubSub(host.pubsub.serve(request).await),
        NodeRequest::BackupRead {
            shard,
            backup,
            after,
            max_bytes,
        } => host.backups.read(shard, backup, after, max_bytes).await,
        NodeRequest::BackupRelease { backup, done } => {
            host.backups.release(backup, done);
            NodeResponse::Reply(redraft_common::resp::Frame::ok())
        }
    }
}

/// Serves a batch: its requests run concurrently, and the client writes it
/// carries for one shard join the shard's proposal queue together (so they
/// share a Raft entry). Single writes come from different connections (the
/// proxy keeps one connection's commands to a shard in order, one request at a
/// time), so applying them in any order is linearizable; a connection's
/// pipelined writes (`WriteOp::Many`) stay together and in order.
async fn serve_batch(host: &Host, requests: Vec<NodeRequest>) -> Vec<NodeResponse> {
    use redraft_common::ops::{ShardOp, WriteOp};
    /// Where a request's answers go: one answer, or a `Batch` of `n` answers.
    enum Answer {
        One(usize),
        Many(usize, usize),
    }
    let n = requests.len();
    let mut writes: std::collections::BTreeMap<ShardId, (Vec<Answer>, Vec<WriteOp>)> = Default::default();
    let mut others = Vec::new();
    for (i, request) in requests.into_iter().enumerate() {
        match request {
            NodeRequest::Exec {
                shard,
                op: ShardOp::Write(op),
                ..
            } if !op.runs_alone() => {
                let (answers, ops) = writes.entry(shard).or_default();
                match op {
                    WriteOp::Many(many) => {
                        answers.push(Answer::Many(i, many.len()));
                        ops.extend(many);
                    }
                    op => {
                        answers.push(Answer::One(i));
                        ops.push(op);
                    }
                }
            }
            other => others.push((i, other)),
        }
    }
    let singles = others
        .into_iter()
        .map(|(i, request)| async move { vec![(i, serve(host, request).await)] });
    let grouped = writes.into_iter().map(|(shard, (positions, ops))| async move {
        let mut answers = host.exec_writes(shard, ops).await.into_iter();
        host.backups.hold_answers(shard).await;
        let mut out = Vec::with_capacity(positions.len());
        for position in positions {
            match position {
                Answer::One(i) => out.push((i, answers.next().expect("an answer per write"))),
                Answer::Many(i, len) => out.push((i, host::many_answer(answers.by_ref().take(len).collect()))),
            }
        }
        out
    });
    let (singles, grouped) =
        futures::future::join(futures::future::join_all(singles), futures::future::join_all(grouped)).await;
    let mut out = vec![NodeResponse::Unknown("no answer".into()); n];
    for (i, answer) in singles.into_iter().chain(grouped).flatten() {
        out[i] = answer;
    }
    out
}

/// How long a stopping node spends handing its leaderships over: well inside
/// the 10 s `redraft down` and the 30 s Kubernetes give a member to exit.
const HAND_OFF_WITHIN: Duration = Duration::from_secs(5);

/// Stored keys the background expiry looks at per led shard per second: bounded
/// work (like Redis's active expiry cycle) that still sweeps a million-key shard
/// in under ten minutes.
const EXPIRY_SCAN_BUDGET: usize = 2000;

/// Heartbeat period: liveness and leader hints for the PD.
const HEARTBEAT: Duration = Duration::from_millis(500);

/// Shard load (applied index, size) goes with every this many heartbeats: the
/// placement driver judges write rates over seconds, and sizes cost a RocksDB
/// lookup per vnode range.
const LOAD_EVERY: u64 = 4;

async fn heartbeat_loop(host: Arc<Host>, pd: PdClient) {
    let mut led = std::collections::BTreeSet::new();
    for beat in 0u64.. {
        led = host.observe(&led);
        let request = PdRequest::Heartbeat {
            node_id: host.node_id(),
            leaders: host.leaders(),
            load: if beat % LOAD_EVERY == 0 {
                host.load()
            } else {
                Vec::new()
            },
        };
        if let Err(e) = pd.call(&request, Duration::from_secs(2)).await {
            tracing::debug!(error = %e, "heartbeat failed");
        }
        tokio::time::sleep(HEARTBEAT).await;
    }
}

async fn watch_loop(host: Arc<Host>, pd: PdClient) {
    let mut version = 0;
    loop {
        match pd.routing(version, u64::MAX, Duration::from_secs(10)).await {
            // A placement leader that has just taken over may still be
            // applying its log and answer with an older table: never go back.
            Ok(table) if table.version < version => {
                tracing::debug!(
                    version = table.version,
                    known = version,
                    "ignoring an older routing table"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok(table) => {
                if table.version != version {
                    if let Err(e) = host.sync_with(&table).await {
                        tracing::error!(error = %e, "applying routing table failed");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                    version = table.version;
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "routing watch failed");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

//! Routing: key -> virtual node -> shard -> leader, with refresh and retries.
//!
//! The proxy holds an immutable snapshot of the routing table that a watcher task
//! swaps whole when the placement driver publishes a new version (long poll: a
//! push on change, a pull every few seconds otherwise). Request handlers never
//! lock it for longer than an `Arc` clone.
//!
//! RETRIES. A command is retried (with the leader named by the node, or the next
//! replica, after a short jittered backoff) only when the node says it was never
//! proposed: `NotLeader`, `NoShard`, `WrongShard`, or a connection that was never
//! made. A write that may have reached a leader and timed out is reported as
//! unknown, never retried: retrying `INCR` would apply it twice. Reads are always
//! safe to retry. Retries stop at [`RETRY_DEADLINE`].

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use redraft_common::ids::{NodeId, ShardId};
use redraft_common::keys::Ring;
use redraft_common::ops::ShardOp;
use redraft_common::pd_client::PdClient;
use redraft_common::resp::Frame;
use redraft_common::routing::RoutingTable;
use redraft_common::transport::{CallError, Endpoint};
use redraft_common::wire::{NodeRequest, NodeResponse};

use crate::reply::Error;
use redraft_common::node_links::NodeLinks;

/// How long the proxy keeps retrying a command before answering an error.
/// Covers an election (1-2 s) with room to spare, well below client timeouts.
pub const RETRY_DEADLINE: Duration = Duration::from_secs(8);
/// How long one call to a node may take. Writes wait up to 5 s on the node.
const CALL_TIMEOUT: Duration = Duration::from_secs(7);
/// First pause before routing a moved key again: the placement driver publishes
/// a split or merge moments after the shard applies it.
pub const MOVED_PAUSE: Duration = Duration::from_millis(2);
/// Longest pause between attempts to route a moved key.
pub const MOVED_PAUSE_MAX: Duration = Duration::from_millis(100);
/// How long a node that failed a call is avoided when another replica can be
/// asked instead. Every call to a dead node costs a connection timeout (3 s),
/// and followers keep naming it as leader until they notice, so it is avoided
/// until a new leader has been elected and published (election, then a
/// heartbeat to the placement driver), not just for one election timeout.
const SUSPECT_FOR: Duration = Duration::from_secs(5);

fn retried(cause: &str) {
    crate::metrics::RETRIES.with_label_values(&[cause]).inc();
}

/// The proxy's view of the cluster.
pub struct Router {
    links: NodeLinks,
    pd: PdClient,
    table: RwLock<Arc<RoutingTable>>,
    ring: RwLock<Option<Arc<Ring>>>,
    leaders: DashMap<ShardId, NodeId>,
    suspects: DashMap<NodeId, Instant>,
    /// Bumped on every table installed, for [`Router::wait_bootstrapped`].
    installed: tokio::sync::watch::Sender<u64>,
    /// When the first bootstrapped table arrived.
    first_table: std::sync::OnceLock<Instant>,
    /// Latched by [`Router::routable`].
    routable: std::sync::atomic::AtomicBool,
    /// Scripts by SHA1, for EVALSHA.
    pub scripts: crate::scripts::ScriptCache,
}

impl Router {
    /// A router with no table yet.
    pub fn new(endpoint: Endpoint, pd: PdClient) -> Router {
        Router {
            links: NodeLinks::new(endpoint),
            pd,
            table: RwLock::new(Arc::new(RoutingTable::default())),
            ring: RwLock::new(None),
            leaders: DashMap::new(),
            suspects: DashMap::new(),
            installed: tokio::sync::watch::Sender::new(0),
            first_table: std::sync::OnceLock::new(),
            routable: std::sync::atomic::AtomicBool::new(false),
            scripts: Default::default(),
        }
    }

    /// Whether this proxy can route commands: it has a bootstrapped table and a
    /// leader for every shard (or has had the table for [`RETRY_DEADLINE`], so a
    /// shard that lost its quorum does not keep a whole proxy unready). Once
    /// true, stays true: later leader changes are hidden by retries. PING and
    /// `/ready` answer by it.
    pub fn routable(&self) -> bool {
        use std::sync::atomic::Ordering;
        if self.routable.load(Ordering::Relaxed) {
            return true;
        }
        let table = self.table();
        let Some(since) = self.first_table.get() else {
            return false;
        };
        let leaders_known = table
            .shards
            .values()
            .all(|shard| shard.leader.is_some() || self.leaders.contains_key(&shard.id));
        let ready = leaders_known || since.elapsed() >= RETRY_DEADLINE;
        if ready {
            self.routable.store(true, Ordering::Relaxed);
        }
        ready
    }

    /// Waits (at most `wait`) until a bootstrapped table is installed; whether
    /// one is.
    pub async fn wait_bootstrapped(&self, wait: Duration) -> bool {
        let mut installed = self.installed.subscribe();
        let bootstrapped = |_: &u64| self.table().is_bootstrapped();
        tokio::time::timeout(wait, installed.wait_for(bootstrapped))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The placement driver client.
    pub fn placement(&self) -> &PdClient {
        &self.pd
    }

    /// The QUIC endpoint shard nodes are reached through.
    pub fn endpoint(&self) -> &Endpoint {
        self.links.endpoint()
    }

    /// The current routing table.
    pub fn table(&self) -> Arc<RoutingTable> {
        self.table.read().expect("routing lock").clone()
    }

    fn install(&self, table: RoutingTable) {
        if table.vnode_count > 0 && self.ring.read().expect("ring lock").is_none() {
            *self.ring.write().expect("ring lock") = Some(Arc::new(Ring::new(table.vnode_count)));
        }
        let current = self.table();
        if table.version < current.version {
            return;
        }
        for shard in table.shards.values() {
            if let Some(leader) = shard.leader {
                if table.leaders_generation > current.leaders_generation {
                    self.leaders.insert(shard.id, leader);
                }
            }
        }
        crate::metrics::ROUTING_VERSION.set(table.version as i64);
        if table.is_bootstrapped() {
            self.first_table.get_or_init(Instant::now);
        }
        *self.table.write().expect("routing lock") = Arc::new(table);
        self.installed.send_modify(|n| *n += 1);
    }

    /// Fetches the latest table now.
    pub async fn refresh(&self) {
        if let Ok(table) = self.pd.routing(u64::MAX, u64::MAX, Duration::ZERO).await {
            self.install(table);
        }
    }

    /// Follows routing-table publications forever.
    pub async fn watch(self: Arc<Self>) {
        loop {
            let current = self.table();
            match self
                .pd
                .routing(current.version, current.leaders_generation, Duration::from_secs(5))
                .await
            {
                Ok(table) => self.install(table),
                Err(e) => {
                    tracing::debug!(error = %e, "routing watch failed");
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }
        }
    }

    /// The shard owning `key`, per the current table.
    pub fn shard_of(&self, key: &[u8]) -> Result<ShardId, Error> {
        let ring = self.ring.read().expect("ring lock").clone();
        let table = self.table();
        match ring {
            Some(ring) if table.is_bootstrapped() => table
                .shard_of(ring.vnode_of(key))
                .ok_or_else(|| Error::ClusterDown("routing table is incomplete".into())),
            _ => Err(Error::ClusterDown("the cluster is not bootstrapped yet".into())),
        }
    }

    /// The virtual node of `key`, once the ring is known.
    pub fn vnode_of(&self, key: &[u8]) -> Option<redraft_common::ids::VnodeId> {
        self.ring
            .read()
            .expect("ring lock")
            .as_ref()
            .map(|ring| ring.vnode_of(key))
    }

    /// LEADER's answer for `key`: its virtual node, shard, the shard's leader (as
    /// last seen) and replicas, with node addresses.
    pub fn describe_key(&self, key: &[u8]) -> Result<Frame, Error> {
        let shard = self.shard_of(key)?;
        let ring = self.ring.read().expect("ring lock").clone();
        let vnode = ring.map_or(0, |r| r.vnode_of(key));
        let table = self.table();
        let info = table
            .shards
            .get(&shard)
            .ok_or_else(|| Error::ClusterDown(format!("shard {shard} is not in the routing table")))?;
        let leader = self.leaders.get(&shard).map(|l| *l).or(info.leader);
        let node = |id: u64| {
            Frame::Array(vec![
                Frame::Integer(id as i64),
                Frame::Bulk(table.addr_of(id).unwrap_or("").as_bytes().to_vec()),
            ])
        };
        let text = |s: &str| Frame::Bulk(s.as_bytes().to_vec());
        Ok(Frame::Map(vec![
            (text("vnode"), Frame::Integer(i64::from(vnode))),
            (text("shard"), Frame::Integer(shard as i64)),
            (text("epoch"), Frame::Integer(info.epoch as i64)),
            (text("leader"), leader.map_or(Frame::Null, node)),
            (
                text("replicas"),
                Frame::Array(info.replicas.iter().map(|&r| node(r)).collect()),
            ),
        ]))
    }

    /// Every shard in the table.
    pub fn shards(&self) -> Result<Vec<ShardId>, Error> {
        let table = self.table();
        if !table.is_bootstrapped() {
            return Err(Error::ClusterDown("the cluster is not bootstrapped yet".into()));
        }
        Ok(table.shards.keys().copied().collect())
    }

    fn is_suspect(&self, node: NodeId) -> bool {
        self.suspects.get(&node).is_some_and(|until| Instant::now() < *until)
    }

    fn suspect(&self, node: NodeId) {
        self.suspects.insert(node, Instant::now() + SUSPECT_FOR);
    }

    /// The node to ask: the known leader, else the published leader hint, else the
    /// replicas in turn, skipping nodes that just failed while others remain.
    fn pick_target(&self, table: &RoutingTable, shard: ShardId, attempt: usize) -> Option<NodeId> {
        let info = table.shards.get(&shard)?;
        let usable = |n: &NodeId| info.replicas.contains(n) && !self.is_suspect(*n);
        if let Some(leader) = self.leaders.get(&shard).map(|l| *l).filter(usable) {
            return Some(leader);
        }
        if let Some(leader) = info.leader.filter(|l| attempt == 0 && usable(l)) {
            return Some(leader);
        }
        let n = info.replicas.len().max(1);
        (0..n)
            .map(|i| info.replicas[(attempt + i) % n])
            .find(|r| !self.is_suspect(*r))
            .or_else(|| info.replicas.get(attempt % n).copied())
    }

    /// [`Router::pick_target`] with the node's address.
    fn target_addr(&self, table: &RoutingTable, shard: ShardId, attempt: usize) -> Option<(NodeId, SocketAddr)> {
        let node = self.pick_target(table, shard, attempt)?;
        Some((node, table.addr_of(node)?.parse().ok()?))
    }

    /// Runs `op`, whose keys all route with `key`, on the shard owning `key`:
    /// when a split or merge moved the key, routes it again under the newer
    /// table (the shard answered before applying anything) until the deadline.
    pub async fn exec_key(&self, key: &[u8], op: ShardOp) -> Result<Frame, Error> {
        let deadline = Instant::now() + RETRY_DEADLINE;
        let mut pause = MOVED_PAUSE;
        loop {
            match self.exec(self.shard_of(key)?, op.clone()).await {
                Err(Error::Moved(shard)) if Instant::now() >= deadline => return Err(Error::TryAgain(shard)),
                Err(Error::Moved(_)) => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(MOVED_PAUSE_MAX);
                }
                other => return other,
            }
        }
    }

    /// Runs `op` on `shard`'s leader, following redirects until the deadline.
    /// `Err(Moved)` when the shard no longer owns a key of `op`.
    pub async fn exec(&self, shard: ShardId, op: ShardOp) -> Result<Frame, Error> {
        match self.call_leader(shard, op).await? {
            NodeResponse::Reply(frame) => Ok(frame),
            _ => Err(Error::Moved(shard)),
        }
    }

    /// Runs one connection's consecutive reads, or writes, of `shard` as one
    /// request (`batch` is the `Many` of `n` operations, see [`ShardOp::many`]):
    /// the node answers the reads after one read barrier, or applies the writes
    /// in one Raft entry, in order. Each operation's own outcome, in order;
    /// `Err(Moved)` for one whose key a split or merge moved (it did not run),
    /// for the caller to route again.
    pub async fn exec_many(&self, shard: ShardId, batch: ShardOp, n: usize) -> Vec<Result<Frame, Error>> {
        match self.call_leader(shard, batch).await {
            Ok(NodeResponse::Batch(answers)) if answers.len() == n => answers
                .into_iter()
                .map(|answer| match answer {
                    NodeResponse::Reply(frame) => Ok(frame),
                    NodeResponse::WrongShard { .. } => {
                        retried("wrong_shard");
                        Err(Error::Moved(shard))
                    }
                    other => {
                        unknown_outcome(shard, &format!("{other:?}"));
                        Err(Error::Unknown)
                    }
                })
                .collect(),
            Ok(NodeResponse::WrongShard { .. }) => (0..n).map(|_| Err(Error::Moved(shard))).collect(),
            Ok(other) => {
                unknown_outcome(shard, &format!("{other:?}"));
                (0..n).map(|_| Err(Error::Unknown)).collect()
            }
            Err(e) => (0..n).map(|_| Err(e.clone())).collect(),
        }
    }

    /// Sends `op` to `shard`'s leader, following redirects until the deadline;
    /// the node's final answer: `Reply`, `Batch` (for a `Many`) or
    /// `WrongShard` (after fetching a newer table).
    async fn call_leader(&self, shard: ShardId, op: ShardOp) -> Result<NodeResponse, Error> {
        let deadline = Instant::now() + RETRY_DEADLINE;
        let is_read = matches!(op, ShardOp::Read(_));
        let mut attempt = 0usize;
        loop {
            let table = self.table();
            if table.is_bootstrapped() && !table.shards.contains_key(&shard) {
                // Merged away since the caller chose it: nothing ran; route again.
                return Err(Error::Moved(shard));
            }
            let mut backoff = true;
            if let Some((node, addr)) = self.target_addr(&table, shard, attempt) {
                let request = NodeRequest::Exec {
                    shard,
                    version: table.version,
                    op: op.clone(),
                };
                match self.links.call(addr, request, CALL_TIMEOUT).await {
                    Ok(answer @ (NodeResponse::Reply(_) | NodeResponse::Batch(_))) => {
                        self.leaders.insert(shard, node);
                        if let NodeResponse::Batch(answers) = &answer {
                            if answers.iter().any(|a| matches!(a, NodeResponse::WrongShard { .. })) {
                                self.refresh().await;
                            }
                        }
                        return Ok(answer);
                    }
                    Ok(NodeResponse::NotLeader { leader: Some(leader) }) if leader != node => {
                        retried("not_leader");
                        self.leaders.insert(shard, leader);
                        backoff = false;
                    }
                    Ok(NodeResponse::NotLeader { .. }) => {
                        retried("not_leader");
                        self.leaders.remove(&shard);
                    }
                    Ok(NodeResponse::NoShard) => {
                        retried("no_shard");
                        self.leaders.remove(&shard);
                        // The replica may be gone because the shard was merged
                        // away: a newer table then routes the keys elsewhere.
                        self.refresh().await;
                    }
                    Ok(answer @ NodeResponse::WrongShard { .. }) => {
                        retried("wrong_shard");
                        self.refresh().await;
                        return Ok(answer);
                    }
                    Ok(NodeResponse::Unknown(reason)) => {
                        unknown_outcome(shard, &reason);
                        return Err(Error::Unknown);
                    }
                    Ok(
                        NodeResponse::Raft(_)
                        | NodeResponse::PubSub(_)
                        | NodeResponse::Digest(_)
                        | NodeResponse::BackupChunk(_),
                    ) => {}
                    Err(e @ CallError::Unknown { .. }) if !is_read => {
                        unknown_outcome(shard, &e.to_string());
                        self.leaders.remove(&shard);
                        self.suspect(node);
                        return Err(Error::Unknown);
                    }
                    Err(e) => {
                        retried("unreachable");
                        tracing::debug!(shard_id = shard, error = %e, "call failed");
                        self.leaders.remove(&shard);
                        self.suspect(node);
                    }
                }
            } else {
                self.refresh().await;
            }
            attempt += 1;
            if Instant::now() >= deadline {
                return Err(if table.is_bootstrapped() {
                    Error::TryAgain(shard)
                } else {
                    Error::ClusterDown("the cluster is not bootstrapped yet".into())
                });
            }
            if backoff {
                let ms = 20u64.saturating_mul(1 << attempt.min(4)) + rand::random::<u64>() % 20;
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
        }
    }
}

/// What one registration of a blocked client with its shard's leader came to.
#[derive(Debug)]
pub enum BlockAttempt {
    /// Popped: the client's answer.
    Popped(Frame),
    /// The registration's time passed with nothing popped.
    TimedOut,
    /// Not registered or no longer (no leader, leader changed, node
    /// unreachable): register again, with `retry` when the attempt may have
    /// popped something for the client.
    Again { may_have_popped: bool },
    /// A split or merge moved a key: route again.
    Moved,
}

impl Router {
    /// Registers blocked client `waiter` with `shard`'s leader for at most
    /// `timeout_ms` (see shard-node `blocking`). `attempt` counts the
    /// attempts so far, to go round the replicas when no leader is known.
    pub async fn block_once(
        &self,
        shard: ShardId,
        pop: &redraft_common::ops::BlockedPop,
        waiter: u64,
        timeout_ms: u64,
        retry: bool,
        attempt: usize,
    ) -> BlockAttempt {
        let table = self.table();
        if table.is_bootstrapped() && !table.shards.contains_key(&shard) {
            return BlockAttempt::Moved;
        }
        let Some((node, addr)) = self.target_addr(&table, shard, attempt) else {
            self.refresh().await;
            return BlockAttempt::Again { may_have_popped: false };
        };
        let request = NodeRequest::Block {
            shard,
            pop: pop.clone(),
            waiter,
            timeout_ms,
            retry,
        };
        let limit = Duration::from_millis(timeout_ms) + CALL_TIMEOUT;
        match self
            .endpoint()
            .call_linked::<_, NodeResponse>(addr, &request, limit)
            .await
        {
            Ok(NodeResponse::Reply(Frame::Null)) => {
                self.leaders.insert(shard, node);
                BlockAttempt::TimedOut
            }
            Ok(NodeResponse::Reply(frame)) => {
                self.leaders.insert(shard, node);
                BlockAttempt::Popped(frame)
            }
            Ok(NodeResponse::NotLeader { leader: Some(leader) }) if leader != node => {
                retried("not_leader");
                self.leaders.insert(shard, leader);
                BlockAttempt::Again { may_have_popped: false }
            }
            Ok(NodeResponse::WrongShard { .. }) => {
                retried("wrong_shard");
                self.refresh().await;
                BlockAttempt::Moved
            }
            Ok(NodeResponse::Unknown(reason)) => {
                tracing::debug!(
                    shard_id = shard,
                    reason,
                    "blocked client's outcome unknown; registering again"
                );
                BlockAttempt::Again { may_have_popped: true }
            }
            Ok(other) => {
                retried(if matches!(other, NodeResponse::NoShard) {
                    "no_shard"
                } else {
                    "not_leader"
                });
                self.leaders.remove(&shard);
                if matches!(other, NodeResponse::NoShard) {
                    self.refresh().await;
                }
                BlockAttempt::Again { may_have_popped: false }
            }
            Err(e) => {
                retried("unreachable");
                self.leaders.remove(&shard);
                self.suspect(node);
                BlockAttempt::Again {
                    may_have_popped: matches!(e, CallError::Unknown { .. }),
                }
            }
        }
    }

    /// Drops blocked client `waiter`'s registration with `shard`'s leader (it
    /// disconnected, or CLIENT UNBLOCK); best effort.
    pub async fn unblock(&self, shard: ShardId, waiter: u64) {
        let table = self.table();
        let Some((_, addr)) = self.target_addr(&table, shard, 0) else {
            return;
        };
        let request = NodeRequest::Unblock { shard, waiter };
        let _ = self
            .endpoint()
            .call_linked::<_, NodeResponse>(addr, &request, CALL_TIMEOUT)
            .await;
    }
}

impl Router {
    /// SCRIPT KILL and FUNCTION KILL: asks every node to stop its read-only
    /// scripts; `+OK` when one did, else UNKILLABLE when a writing script runs
    /// somewhere, else NOTBUSY (the answers of shard-node `kill_scripts`).
    pub async fn kill_scripts(&self) -> Frame {
        let table = self.table();
        let asks = table.nodes.values().map(|node| async move {
            let addr = node.addr.parse().ok()?;
            match self
                .endpoint()
                .call_linked::<_, NodeResponse>(addr, &NodeRequest::KillScripts, CALL_TIMEOUT)
                .await
            {
                Ok(NodeResponse::Reply(frame)) => Some(frame),
                _ => None,
            }
        });
        let answers: Vec<Frame> = futures::future::join_all(asks).await.into_iter().flatten().collect();
        if answers.contains(&Frame::ok()) {
            return Frame::ok();
        }
        answers
            .into_iter()
            .find(|a| matches!(a, Frame::Error(e) if e.starts_with("UNKILLABLE")))
            .unwrap_or_else(|| Frame::error("NOTBUSY No scripts in execution right now."))
    }
}

/// Logs why a write is answered "may have been applied": the one answer a
/// client cannot act on safely, so operators should see each one and its cause.
fn unknown_outcome(shard: ShardId, reason: &str) {
    tracing::warn!(shard_id = shard, reason, "write outcome unknown");
}

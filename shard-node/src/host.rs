//! The shard replicas this node hosts: creating them, finding them, running
//! commands on them.
//!
//! [`Host`] maps a shard id to its Raft handle. Groups are created when the routing
//! table names this node as a replica or learner (and recorded in the `meta`
//! column family so a restart reopens exactly the same groups), and deleted when
//! it no longer does; at bootstrap the first replica listed initialises the
//! group's membership. Commands arrive from the proxy already routed: writes go
//! through the group's proposal queue ([`crate::proposals`]) to `client_write`,
//! reads through openraft's linearizable read (ReadIndex)
//! followed by a read of RocksDB. The scheduler's membership operations (add a
//! learner, change voters, transfer the leadership) run here on the shard's
//! leader.
//!
//! LEADERSHIP TRANSFER. openraft 0.9 has none, so [`Host::transfer_leader`]
//! builds Raft's (thesis, section 3.10) from what it has: the leader stops
//! starting entries (writes queue), waits until the target's log matches its
//! own, then has the target campaign. The target then wins at once: the old
//! leader grants its vote (logs equal) as soon as its own leader lease has run
//! out, which the transfer waits for first; followers would refuse within
//! theirs. A target that merely campaigned while writes kept flowing would
//! usually lag the leader, lose, and leave the shard without a leader until the
//! next election. A stopping node hands over every shard it leads this way
//! ([`Host::hand_off_leaders`]).
//!
//! QUIESCENCE. A group whose log has not grown for a while (`--quiesce-after-secs`,
//! 5 s by default) stops its
//! Raft timer on every replica (openraft's tick): no heartbeats from its leader,
//! no election timers on its followers, so thousands of idle groups cost nothing.
//! Safety does not depend on it: a quiesced leader still confirms its leadership
//! with a quorum round before every read, and commits writes with a quorum. What
//! replaces the per-group heartbeat is one node-level ping per peer
//! ([`Host::watch_peers`]): a follower restarts its timer as soon as its leader's
//! node stops answering (and then elects a new leader at once, its lease having
//! long expired), or when the group is active again. A leader restarts its timer
//! at the first request.
//!
//! SPLITS. A shard created by a split is started by the node's own replica of the
//! parent when it applies the split ([`Host::follow_reshapes`]); the routing table
//! creates it here only once the local parent no longer owns its vnodes (or there
//! is no local parent), so a lagging parent can never write into vnodes the child
//! already serves. A removed group deletes only the vnodes no other group here owns.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result};
use dashmap::DashMap;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, Config};
use redraft_common::ids::{NodeId, ShardId, VnodeId};
use redraft_common::keys::Ring;
use redraft_common::now_ms;
use redraft_common::ops::{BlockedPop, ReadOp, ShardOp, WriteOp};
use redraft_common::resp::Frame;
use redraft_common::routing::RoutingTable;
use redraft_common::transport::Endpoint;
use redraft_common::wire::{self, NodeResponse, ShardLoad};
use redraft_raft_storage::engine::{CF_DATA, CF_META};
use redraft_raft_storage::Engine;

use crate::apply::{Keyspace, NotOwned};
use crate::blocking::Blocked;
use crate::metrics;
use crate::proposals::{self, Proposals};
use crate::raft::state_machine::{self, group_meta_key, GroupRecord, Ownership, Reshaped, ShardStateMachine};
use crate::raft::{typ, ShardResponse};
use crate::reads::{self, ReadBarrier, ReadPolicy};
use crate::storage::ElementHints;
use redraft_raft_storage::lease::Lease;
use redraft_raft_storage::network::{GroupNetwork, NodeWire};

/// How long a leadership transfer waits for the target's log to catch up.
pub const TRANSFER_CATCH_UP: Duration = Duration::from_millis(500);
/// Entries a transfer target may lag behind when the transfer starts: one
/// further behind (or on a node that stopped answering pings) is refused at
/// once rather than holding writes while it cannot catch up.
pub const TRANSFER_MAX_LAG: u64 = 100;
/// How long a leadership transfer waits for the target to win its election.
/// Together with [`TRANSFER_CATCH_UP`] well under the proxy's 7 s per call,
/// so the writes held meanwhile are still answered.
pub const TRANSFER_CAMPAIGN: Duration = Duration::from_millis(1500);
/// How long a learner may take to catch up, or a membership change to commit.
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(60);
/// How often idle groups are looked for.
pub const QUIESCE_CHECK: Duration = Duration::from_millis(500);
/// How often every peer node is pinged.
const PING_EVERY: Duration = Duration::from_millis(250);
/// A peer that has not answered a ping for this long counts as down: about the
/// election timeout, so a dead leader is replaced about as fast as without
/// quiescence.
const PEER_DOWN_AFTER: Duration = Duration::from_millis(1200);

/// What the quiescence check remembers about a group.
#[derive(Clone, Copy, Debug)]
struct Activity {
    /// Last log index seen.
    last_index: u64,
    /// When it last changed (or the group was last woken).
    changed_at: std::time::Instant,
    /// Whether the group's Raft timer runs.
    ticking: bool,
}

/// One hosted replica.
pub struct Group {
    /// The Raft handle.
    pub raft: typ::Raft,
    /// Virtual nodes the shard owns.
    pub owned: Ownership,
    /// The node's ring (shared).
    pub ring: Arc<Ring>,
    /// Writes waiting to share the group's next Raft entry.
    pub proposals: Proposals,
    /// Reads waiting to share the group's next ReadIndex round.
    pub reads: ReadBarrier,
    /// This replica's read lease as leader, and when it last heard from one as
    /// a follower.
    pub lease: Arc<Lease>,
    /// Clients blocked on the shard's keys, while this replica leads.
    pub blocked: Arc<Blocked>,
    /// The term this node was last seen leading in, and when it was first seen
    /// doing so: no earlier than the start of its leader lease in that term.
    leading: std::sync::Mutex<Option<(u64, std::time::Instant)>>,
    /// Held while a leadership transfer is under way: a second one (to another
    /// target) would have two replicas campaign, and the loser disrupt the winner.
    transfer: tokio::sync::Mutex<()>,
}

impl Group {
    /// When this node was first seen leading in `term` (now, if not before).
    fn leading_since(&self, term: u64) -> std::time::Instant {
        let mut leading = self.leading.lock().expect("leading lock");
        match *leading {
            Some((seen, at)) if seen == term => at,
            _ => {
                let now = std::time::Instant::now();
                *leading = Some((term, now));
                now
            }
        }
    }
}

/// What a leadership transfer does when another of the same shard is under way.
enum WhenBusy {
    /// Refuses at once (an operator's or the scheduler's move: they retry or
    /// plan again).
    Refuse,
    /// Waits for it to end (a stopping node handing its leaderships over).
    Wait,
}

/// Whether `node` votes in `membership` (a learner does not).
fn is_voter(membership: &openraft::Membership<NodeId, BasicNode>, node: NodeId) -> bool {
    membership.voter_ids().any(|voter| voter == node)
}

/// Campaigns for a group created by a split until some replica leads it: the
/// first vote requests may reach peers that have not applied the split yet (and
/// so have no such group), and waiting for the election timeout instead would
/// hold writes to the moved vnodes for a second or two.
/// A replica that hears from a leader stops: that leader may count it in its
/// read lease.
async fn campaign_until_led(group: Arc<Group>, me: NodeId, leader_lease: Duration) {
    for _ in 0..60 {
        if group.raft.metrics().borrow().current_leader.is_some() || group.lease.heard_from_leader_within(leader_lease)
        {
            return;
        }
        let _ = group.raft.trigger().elect().await;
        let led = group
            .raft
            .wait(Some(Duration::from_millis(50)))
            .metrics(|m| m.current_leader.is_some(), "split shard leader")
            .await;
        if led.is_ok() {
            tracing::debug!(node_id = me, "split shard has a leader");
            return;
        }
    }
}

/// The answer to a client's pipelined writes. They share one Raft entry, so
/// either each has its own outcome or none was proposed: a refusal that says
/// so (`NotLeader`, `NoShard`) is answered once, as for a single write, and the
/// proxy retries the whole batch where it belongs. Answered per write, it would
/// reach the client as an unknown outcome.
pub fn many_answer(answers: Vec<NodeResponse>) -> NodeResponse {
    let not_proposed = |a: &NodeResponse| matches!(a, NodeResponse::NotLeader { .. } | NodeResponse::NoShard);
    match answers.first() {
        Some(first) if not_proposed(first) && answers.iter().all(not_proposed) => first.clone(),
        _ => NodeResponse::Batch(answers),
    }
}

/// All replicas on this node.
pub struct Host {
    node_id: NodeId,
    engine: Engine,
    endpoint: Endpoint,
    raft_config: Arc<Config>,
    snapshot_dir: PathBuf,
    groups: DashMap<ShardId, Arc<Group>>,
    ring: OnceLock<Arc<Ring>>,
    creating: tokio::sync::Mutex<()>,
    /// Where the background expiry scan of each led shard continues.
    expiry_cursor: DashMap<ShardId, Vec<u8>>,
    reshapes: tokio::sync::mpsc::UnboundedSender<Reshaped>,
    reshaped: std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<Reshaped>>>,
    /// Batched links to peer nodes, shared by every group's Raft messages.
    links: Arc<redraft_common::node_links::NodeLinks>,
    /// Quiescence state of each group.
    activity: DashMap<ShardId, Activity>,
    /// Idle time after which a group's Raft timer stops (`None`: never).
    quiesce_after: Option<Duration>,
    /// Peer nodes and their addresses, from the routing table.
    peers: std::sync::RwLock<Vec<(NodeId, std::net::SocketAddr)>>,
    /// When each peer node last answered a ping.
    peer_seen: DashMap<NodeId, std::time::Instant>,
    /// Pub/Sub between the proxies' clients (not replicated).
    pub pubsub: Arc<crate::pubsub::Hub>,
    /// Which virtual nodes may hold collection elements (shared by all replicas).
    element_hints: Arc<ElementHints>,
    /// The node is stopping: it hands its leaderships over and takes none.
    stopping: std::sync::atomic::AtomicBool,
    /// The node is about to stop its groups: client commands are redirected
    /// (nothing proposed), never left to fail against a stopped group.
    refusing_clients: std::sync::atomic::AtomicBool,
    /// Client commands being served now, and when the last one arrived (ms
    /// since the epoch): a stopping node waits for both to settle before it
    /// closes its connections.
    client_requests: std::sync::atomic::AtomicUsize,
    last_client_request_ms: std::sync::atomic::AtomicU64,
    /// How led groups confirm their reads.
    read_policy: ReadPolicy,
    /// Digests of consistency checks, computed by every replica here.
    pub digests: Arc<crate::digest::Digests>,
    /// Backups this node's replicas take part in: snapshots and answer holds.
    pub backups: Arc<crate::backup::Backups>,
}

impl Host {
    /// A host with no groups yet.
    pub fn new(
        node_id: NodeId,
        engine: Engine,
        endpoint: Endpoint,
        raft_config: Config,
        snapshot_dir: PathBuf,
        quiesce_after: Option<Duration>,
        read_policy: ReadPolicy,
    ) -> Result<Host> {
        let (reshapes, reshaped) = tokio::sync::mpsc::unbounded_channel();
        let element_hints = Arc::new(ElementHints::load(engine.db(), engine.cf(CF_DATA)));
        Ok(Host {
            node_id,
            engine,
            endpoint: endpoint.clone(),
            raft_config: Arc::new(raft_config.validate().context("invalid Raft configuration")?),
            snapshot_dir,
            groups: DashMap::new(),
            ring: OnceLock::new(),
            creating: tokio::sync::Mutex::new(()),
            expiry_cursor: DashMap::new(),
            reshapes,
            reshaped: std::sync::Mutex::new(Some(reshaped)),
            links: Arc::new(redraft_common::node_links::NodeLinks::new(endpoint.clone())),
            activity: DashMap::new(),
            quiesce_after,
            peers: std::sync::RwLock::new(Vec::new()),
            peer_seen: DashMap::new(),
            pubsub: Arc::new(crate::pubsub::Hub::default()),
            element_hints,
            stopping: std::sync::atomic::AtomicBool::new(false),
            refusing_clients: std::sync::atomic::AtomicBool::new(false),
            client_requests: std::sync::atomic::AtomicUsize::new(0),
            last_client_request_ms: std::sync::atomic::AtomicU64::new(0),
            read_policy,
            digests: Arc::default(),
            backups: Arc::default(),
        })
    }

    /// How long a follower refuses votes after hearing from its leader
    /// (openraft's leader lease: the election timeout's upper bound).
    fn leader_lease(&self) -> Duration {
        Duration::from_millis(self.raft_config.election_timeout_max)
    }

    /// Returns once `group` may serve a linearizable read: at once when its
    /// lease holds, after a ReadIndex round otherwise.
    async fn confirm_read(&self, group: &Group) -> Result<(), NodeResponse> {
        if self.read_policy == ReadPolicy::Lease
            && reads::lease_holds(&group.lease, self.node_id, &group.raft.metrics().borrow())
        {
            metrics::READS.with_label_values(&["lease"]).inc();
            return Ok(());
        }
        group.reads.pass(&group.raft).await
    }

    /// Hands an inbound Raft RPC of `shard` to its group. Before a vote
    /// request, the replica's read lease ends: the vote it may grant could
    /// elect another leader before the lease would have run out.
    pub async fn raft_rpc(&self, shard: ShardId, kind: wire::RaftKind, payload: &[u8]) -> Result<Vec<u8>, String> {
        let Some(group) = self.group(shard) else {
            return Err(format!("shard {shard} is not hosted on node {}", self.node_id));
        };
        match kind {
            wire::RaftKind::Vote => group.lease.void(),
            wire::RaftKind::AppendEntries => group.lease.heard_from_leader(),
            wire::RaftKind::InstallSnapshot => {}
        }
        redraft_raft_storage::network::serve_rpc(&group.raft, kind, payload).await
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    fn ring(&self, vnode_count: u32) -> Arc<Ring> {
        self.ring.get_or_init(|| Arc::new(Ring::new(vnode_count))).clone()
    }

    /// The group of `shard`, if hosted here.
    pub fn group(&self, shard: ShardId) -> Option<Arc<Group>> {
        self.groups.get(&shard).map(|g| g.clone())
    }

    /// Reopens every group recorded in the database (after a restart).
    pub async fn reopen_groups(&self) -> Result<usize> {
        let db = self.engine.db();
        let prefix = b"group/";
        let mut records = Vec::new();
        for item in db.prefix_iterator_cf(self.engine.cf(CF_META), prefix) {
            let (key, value) = item?;
            if !key.starts_with(prefix) {
                break;
            }
            if key.ends_with(b"/record") {
                let shard = u64::from_be_bytes(key[6..14].try_into()?);
                records.push((shard, wire::decode::<GroupRecord>(&value)?));
            }
        }
        let count = records.len();
        for (shard, record) in records {
            self.open_group(shard, &record).await?;
        }
        Ok(count)
    }

    async fn open_group(&self, shard: ShardId, record: &GroupRecord) -> Result<Arc<Group>> {
        let ring = self.ring(record.vnode_count);
        let owned = Ownership::new(record.vnodes.iter().copied());
        let blocked = Arc::new(Blocked::default());
        let sm = ShardStateMachine::open(
            shard,
            self.node_id,
            self.engine.clone(),
            ring.clone(),
            owned.clone(),
            self.snapshot_dir.join(shard.to_string()),
            Some(self.reshapes.clone()),
            Some(self.element_hints.clone()),
            Some(blocked.clone()),
            Some(self.digests.clone()),
            Some(self.backups.clone()),
            Some(self.pubsub.clone()),
        )?;
        let lease = Arc::new(Lease::for_election_timeout(self.leader_lease()));
        let network = GroupNetwork::<_, NodeWire>::new(shard, self.links.clone()).with_lease(lease.clone());
        let raft = typ::Raft::new(
            self.node_id,
            self.raft_config.clone(),
            network,
            self.engine.log_store(shard),
            sm,
        )
        .await
        .with_context(|| format!("starting Raft of shard {shard}"))?;
        let group = Arc::new(Group {
            raft,
            owned,
            ring,
            proposals: Proposals::default(),
            reads: ReadBarrier::default(),
            lease,
            blocked,
            leading: std::sync::Mutex::new(None),
            transfer: tokio::sync::Mutex::new(()),
        });
        self.groups.insert(shard, group.clone());
        Ok(group)
    }

    /// Creates the groups the routing table assigns to this node and does not exist yet.
    pub async fn sync_with(&self, table: &RoutingTable) -> Result<()> {
        let _one_at_a_time = self.creating.lock().await;
        *self.peers.write().expect("peers lock") = table
            .nodes
            .values()
            .filter(|n| n.id != self.node_id)
            .filter_map(|n| Some((n.id, n.addr.parse().ok()?)))
            .collect();
        // Replicas moved away: stop and delete them.
        let gone: Vec<ShardId> = self
            .groups
            .iter()
            .map(|g| *g.key())
            .filter(|id| table.shards.get(id).is_none_or(|s| !s.hosted_on(self.node_id)))
            .collect();
        for shard in gone {
            self.remove_group(shard).await?;
        }
        for shard in table.shards.values() {
            if !shard.hosted_on(self.node_id) || self.groups.contains_key(&shard.id) {
                continue;
            }
            let vnodes = table.vnodes_of(shard.id);
            if let Some(parent) = shard.split_from.and_then(|p| self.group(p)) {
                let parent_owned = parent.owned.get();
                if vnodes.iter().any(|v| parent_owned.contains(v)) {
                    continue; // the local parent creates it when it applies the split
                }
            }
            let record = GroupRecord {
                vnodes,
                vnode_count: table.vnode_count,
            };
            let mut batch = rocksdb::WriteBatch::default();
            batch.put_cf(
                self.engine.cf(CF_META),
                group_meta_key(shard.id, "record"),
                wire::encode(&record),
            );
            let mut sync = rocksdb::WriteOptions::default();
            sync.set_sync(true);
            self.engine.db().write_opt(batch, &sync)?;
            let group = self.open_group(shard.id, &record).await?;
            tracing::info!(
                shard_id = shard.id,
                vnodes = record.vnodes.len(),
                "created shard replica"
            );
            if shard.epoch == 1 && shard.replicas.first() == Some(&self.node_id) && !group.raft.is_initialized().await?
            {
                let members: BTreeMap<u64, BasicNode> = shard
                    .replicas
                    .iter()
                    .filter_map(|n| table.addr_of(*n).map(|a| (*n, BasicNode::new(a))))
                    .collect();
                match group.raft.initialize(members).await {
                    Ok(()) => tracing::info!(shard_id = shard.id, "initialised shard membership"),
                    Err(e) => tracing::warn!(shard_id = shard.id, error = %e, "initialise failed"),
                }
            }
        }
        Ok(())
    }

    /// Starts the groups that splits applied on this node created; the replica that
    /// led the parent campaigns at once, so the moved vnodes are served again
    /// after one election round trip rather than an election timeout.
    pub async fn follow_reshapes(self: Arc<Self>) {
        let Some(mut events) = self.reshaped.lock().expect("reshape lock").take() else {
            return;
        };
        while let Some(event) = events.recv().await {
            let Reshaped::SplitChild { parent, child } = event;
            let _one_at_a_time = self.creating.lock().await;
            if self.groups.contains_key(&child) {
                continue;
            }
            let Some(record) = state_machine::group_record(&self.engine, child) else {
                continue;
            };
            match self.open_group(child, &record).await {
                Ok(group) => {
                    tracing::info!(
                        shard_id = child,
                        parent,
                        vnodes = record.vnodes.len(),
                        "started shard created by a split"
                    );
                    let led_parent = self
                        .group(parent)
                        .is_some_and(|p| p.raft.metrics().borrow().current_leader == Some(self.node_id));
                    if led_parent {
                        tokio::spawn(campaign_until_led(group, self.node_id, self.leader_lease()));
                    }
                }
                Err(e) => tracing::error!(shard_id = child, error = %e, "could not start split shard"),
            }
        }
    }

    /// Pings every peer node forever, recording who answers. Each peer has at
    /// most one ping out at a time and waits for it up to [`PEER_DOWN_AFTER`]:
    /// a slow answer from a busy peer still proves it alive, and a dead peer's
    /// pings never hold up the others'.
    pub async fn watch_peers(self: Arc<Self>) {
        let mut out = std::collections::HashSet::new();
        let mut pings = tokio::task::JoinSet::new();
        let mut tick = tokio::time::interval(PING_EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let peers = self.peers.read().expect("peers lock").clone();
                    for (node, addr) in peers {
                        if out.insert(node) {
                            let endpoint = self.endpoint.clone();
                            pings.spawn(async move {
                                let answer = endpoint
                                    .call::<_, NodeResponse>(addr, &wire::NodeRequest::Ping, PEER_DOWN_AFTER)
                                    .await;
                                (node, answer.is_ok())
                            });
                        }
                    }
                }
                Some(Ok((node, answered))) = pings.join_next() => {
                    out.remove(&node);
                    if answered {
                        self.peer_seen.insert(node, std::time::Instant::now());
                    }
                }
            }
        }
    }

    fn peer_is_up(&self, node: NodeId) -> bool {
        node == self.node_id || self.peer_seen.get(&node).is_some_and(|t| t.elapsed() < PEER_DOWN_AFTER)
    }

    /// Stops the Raft timers of idle groups and restarts them where needed (see
    /// QUIESCENCE above). Cheap: reads each group's metrics, no I/O.
    pub fn quiesce_idle(&self) {
        let now = std::time::Instant::now();
        let mut quiet = 0;
        for entry in self.groups.iter() {
            let (shard, group) = (*entry.key(), entry.value());
            let m = group.raft.metrics().borrow().clone();
            let last_index = m.last_log_index.unwrap_or(0);
            let mut activity = self.activity.entry(shard).or_insert(Activity {
                last_index,
                changed_at: now,
                ticking: true,
            });
            if activity.last_index != last_index {
                activity.last_index = last_index;
                activity.changed_at = now;
            }
            let idle = self
                .quiesce_after
                .is_some_and(|after| now.duration_since(activity.changed_at) >= after);
            let settled = match (&m.replication, m.current_leader) {
                // A leader waits until every member has its whole log.
                (Some(replication), Some(leader)) if leader == self.node_id => replication
                    .values()
                    .all(|matched| matched.map_or(0, |l| l.index) == last_index),
                // A follower or learner, while its leader's node answers pings.
                (_, Some(leader)) => leader != self.node_id && self.peer_is_up(leader),
                _ => false,
            };
            let ticking = !(idle && settled);
            if ticking != activity.ticking {
                group.raft.runtime_config().tick(ticking);
                activity.ticking = ticking;
                tracing::debug!(shard_id = shard, ticking, "raft timer switched");
                // Woken because the leader's node is down: every follower's timer
                // has long expired, so all would campaign at once and split the
                // vote. The lowest live voter campaigns now; the others' vote for
                // it resets their timers.
                let leader_down = m
                    .current_leader
                    .is_some_and(|l| l != self.node_id && !self.peer_is_up(l));
                let first = m
                    .membership_config
                    .membership()
                    .voter_ids()
                    .filter(|v| Some(*v) != m.current_leader && self.peer_is_up(*v))
                    .min();
                // Not while a leader may count this replica in its lease: a
                // campaign started on request skips the replica's own refusal.
                let in_a_lease = group.lease.heard_from_leader_within(self.leader_lease());
                if leader_down && first == Some(self.node_id) && !in_a_lease {
                    let raft = group.raft.clone();
                    tokio::spawn(async move { raft.trigger().elect().await });
                }
            }
            quiet += usize::from(!ticking);
        }
        self.activity.retain(|shard, _| self.groups.contains_key(shard));
        metrics::QUIESCED.set(quiet as i64);
    }

    /// Restarts a group's Raft timer before serving a request on it.
    fn wake(&self, shard: ShardId, group: &Group) {
        if let Some(mut activity) = self.activity.get_mut(&shard) {
            activity.changed_at = std::time::Instant::now();
            if !activity.ticking {
                group.raft.runtime_config().tick(true);
                activity.ticking = true;
            }
        }
    }

    /// The index of the last entry this node's replica of `shard` applied.
    pub fn applied(&self, shard: ShardId) -> NodeResponse {
        match self.group(shard) {
            Some(group) => {
                let applied = group.raft.metrics().borrow().last_applied.map_or(0, |l| l.index);
                NodeResponse::Reply(redraft_common::resp::Frame::Integer(applied as i64))
            }
            None => NodeResponse::NoShard,
        }
    }

    /// Progress and approximate size of every shard this node leads.
    pub fn load(&self) -> Vec<ShardLoad> {
        let db = self.engine.db();
        let cf = self.engine.cf(CF_DATA);
        self.leaders()
            .into_iter()
            .filter_map(|shard| {
                let group = self.group(shard)?;
                let applied = group.raft.metrics().borrow().last_applied.map_or(0, |l| l.index);
                let bounds: Vec<(Vec<u8>, Vec<u8>)> = group
                    .owned
                    .get()
                    .iter()
                    .map(|&v| (crate::storage::vnode_start(v), crate::storage::vnode_end(v)))
                    .collect();
                let ranges: Vec<rocksdb::Range> = bounds.iter().map(|(a, b)| rocksdb::Range::new(a, b)).collect();
                let bytes = db.get_approximate_sizes_cf(&cf, &ranges).iter().sum();
                Some(ShardLoad { shard, applied, bytes })
            })
            .collect()
    }

    /// Shards this node currently leads.
    pub fn leaders(&self) -> Vec<ShardId> {
        self.groups
            .iter()
            .filter(|g| g.raft.metrics().borrow().current_leader == Some(self.node_id))
            .map(|g| *g.key())
            .collect()
    }

    /// Refreshes the node's gauges and logs leadership changes; `previous` is the
    /// set of shards led at the last call. Returns the shards led now.
    pub fn observe(&self, previous: &BTreeSet<ShardId>) -> BTreeSet<ShardId> {
        let mut led = BTreeSet::new();
        let mut lag = 0;
        for group in self.groups.iter() {
            let m = group.raft.metrics().borrow().clone();
            if m.current_leader == Some(self.node_id) {
                group.leading_since(m.current_term);
                led.insert(*group.key());
                let last = m.last_log_index.unwrap_or(0);
                if let Some(replication) = &m.replication {
                    for matched in replication.values() {
                        lag = lag.max(last.saturating_sub(matched.map_or(0, |l| l.index)));
                    }
                }
            }
        }
        for shard in led.difference(previous) {
            tracing::info!(shard_id = shard, node_id = self.node_id, "became leader");
            metrics::LEADER_CHANGES.inc();
        }
        for shard in previous.difference(&led) {
            tracing::info!(shard_id = shard, node_id = self.node_id, "lost leadership");
            metrics::LEADER_CHANGES.inc();
        }
        metrics::LEADERS.set(led.len() as i64);
        metrics::REPLICAS.set(self.groups.len() as i64);
        metrics::REPLICATION_LAG.set(lag as i64);
        let db = self.engine.db();
        for cf in [
            CF_DATA,
            CF_META,
            redraft_raft_storage::engine::CF_RAFT_LOG,
            redraft_raft_storage::engine::CF_RAFT_STATE,
        ] {
            let size = |property: &str| {
                db.property_int_value_cf(self.engine.cf(cf), property)
                    .ok()
                    .flatten()
                    .unwrap_or(0)
            };
            let bytes = size("rocksdb.total-sst-files-size") + size("rocksdb.cur-size-all-mem-tables");
            metrics::ROCKSDB_BYTES.with_label_values(&[cf]).set(bytes as i64);
        }
        led
    }

    /// The replica of `shard` for a client's request, woken if it was idle;
    /// `NoShard`, or the refusal of a stopping node, instead.
    fn client_group(&self, shard: ShardId) -> Result<Arc<Group>, NodeResponse> {
        let group = self.group(shard).ok_or(NodeResponse::NoShard)?;
        if let Some(refused) = self.refused_client(&group) {
            return Err(refused);
        }
        self.wake(shard, &group);
        Ok(group)
    }

    /// Runs one routed operation.
    pub async fn exec(&self, shard: ShardId, op: ShardOp) -> NodeResponse {
        let group = match self.client_group(shard) {
            Ok(group) => group,
            Err(refused) => return refused,
        };
        match op {
            ShardOp::Read(read) => match self.confirm_read(&group).await {
                Err(refused) => refused,
                Ok(()) => {
                    let db = self.engine.db();
                    let owned = group.owned.get();
                    let mut ks = Keyspace::new(db, self.engine.cf(CF_DATA), &group.ring, &owned, now_ms());
                    let mut answer = |read: &ReadOp| contained_read(shard, &mut ks, read);
                    // Reads that walk the whole shard, and scripts, give this
                    // worker's other tasks (Raft groups, links) to another
                    // thread meanwhile, so a big KEYS or a long EVAL_RO never
                    // delays a heartbeat.
                    let long = |read: &ReadOp| {
                        matches!(
                            read,
                            ReadOp::Keys { .. }
                                | ReadOp::DbSize
                                | ReadOp::Scan { .. }
                                | ReadOp::RandomKey { .. }
                                | ReadOp::Script(_)
                                | ReadOp::Digest { keys: None }
                        )
                    };
                    match &read {
                        // A client's pipelined reads: one barrier, one answer each, in order.
                        ReadOp::Many(reads) if reads.iter().any(long) => {
                            tokio::task::block_in_place(|| NodeResponse::Batch(reads.iter().map(answer).collect()))
                        }
                        ReadOp::Many(reads) => NodeResponse::Batch(reads.iter().map(answer).collect()),
                        read if long(read) => tokio::task::block_in_place(|| answer(read)),
                        read => answer(read),
                    }
                }
            },
            // A client's pipelined writes: one outcome each, applied in order.
            ShardOp::Write(WriteOp::Many(ops)) => many_answer(self.exec_writes(shard, ops).await),
            ShardOp::Write(write) => self.propose(&group, write).await,
        }
    }

    /// A blocked client's pop (see [`crate::blocking`]): answered when a
    /// `ServeBlocked` entry pops something for it, with `$-1` once
    /// `timeout_ms` (0: none) has passed, or `NotLeader` when this node stops
    /// leading. With `retry`, what an earlier attempt of the same client
    /// popped, if the log says one did.
    pub async fn block(
        &self,
        shard: ShardId,
        pop: BlockedPop,
        waiter: u64,
        timeout_ms: u64,
        retry: bool,
    ) -> NodeResponse {
        let group = match self.client_group(shard) {
            Ok(group) => group,
            Err(refused) => return refused,
        };
        if retry {
            // Every entry committed before this node's term is applied here
            // once a read may be served.
            if let Err(refused) = self.confirm_read(&group).await {
                return refused;
            }
            if let Some(reply) = crate::raft::state_machine::served_reply(&self.engine, shard, waiter) {
                tracing::info!(
                    shard_id = shard,
                    waiter,
                    "blocked client asked again for what it was served"
                );
                return NodeResponse::Reply(reply);
            }
            tracing::info!(
                shard_id = shard,
                waiter,
                "blocked client asked again; nothing was served to it"
            );
        }
        let (mut answer, start) = group.blocked.register(waiter, pop);
        if start {
            tokio::spawn(crate::blocking::serve(
                group.blocked.clone(),
                group.raft.clone(),
                group.proposals.clone(),
                self.node_id,
            ));
        }
        let answer = if timeout_ms == 0 {
            answer.await
        } else {
            match tokio::time::timeout(Duration::from_millis(timeout_ms), &mut answer).await {
                Ok(answer) => answer,
                Err(_) => {
                    group.blocked.unblock(waiter);
                    answer.await
                }
            }
        };
        answer.unwrap_or_else(|_| NodeResponse::Unknown(format!("shard {shard} stopped serving blocked clients")))
    }

    /// Drops blocked client `waiter` of `shard` (see [`Blocked::unblock`]).
    pub fn unblock(&self, shard: ShardId, waiter: u64) -> NodeResponse {
        let Some(group) = self.group(shard) else {
            return NodeResponse::NoShard;
        };
        NodeResponse::Reply(Frame::Integer(group.blocked.unblock(waiter) as i64))
    }

    /// Stops the replica of `shard` and deletes its log, data and metadata.
    async fn remove_group(&self, shard: ShardId) -> Result<()> {
        let Some((_, group)) = self.groups.remove(&shard) else {
            return Ok(());
        };
        let _ = group.raft.shutdown().await;
        self.engine
            .log_store::<crate::raft::ShardTypes>(shard)
            .destroy()
            .await
            .map_err(anyhow::Error::msg)?;
        let sm = ShardStateMachine::open(
            shard,
            self.node_id,
            self.engine.clone(),
            group.ring.clone(),
            group.owned.clone(),
            self.snapshot_dir.join(shard.to_string()),
            None,
            None,
            None,
            None,
            None,
            None,
        )?;
        let others: BTreeSet<VnodeId> = self
            .groups
            .iter()
            .flat_map(|g| g.owned.get().iter().copied().collect::<Vec<_>>())
            .collect();
        sm.destroy(&others)?;
        tracing::info!(shard_id = shard, node_id = self.node_id, "removed shard replica");
        Ok(())
    }

    /// On the leader of `shard`: adds `node` as a learner and waits until it has
    /// caught up (by snapshot and log).
    pub async fn add_learner(&self, shard: ShardId, node: NodeId, addr: String) -> NodeResponse {
        let Some(group) = self.group(shard) else {
            return NodeResponse::NoShard;
        };
        self.wake(shard, &group);
        if let Err(e) = self.snapshot_for_new_replica(shard, &group).await {
            return NodeResponse::Unknown(e.to_string());
        }
        let added = tokio::time::timeout(
            MEMBERSHIP_TIMEOUT,
            group.raft.add_learner(node, BasicNode::new(addr), true),
        );
        self.membership_answer(&group, added.await)
    }

    /// Makes a new replica of `shard` start from a fresh snapshot rather than by
    /// replaying the whole log: a snapshot carries each key once where the log
    /// carries every overwrite, and replaying a merge entry would need the retired
    /// shard's data, which a new node never had. Snapshots, then purges the log
    /// up to the snapshot, but never past what a current follower still needs.
    async fn snapshot_for_new_replica(&self, shard: ShardId, group: &Group) -> Result<()> {
        let applied = group.raft.metrics().borrow().last_applied.map_or(0, |l| l.index);
        let reshaped = state_machine::reshaped_at(&self.engine, shard).unwrap_or(0);
        let wanted = applied.max(reshaped);
        let covered = |m: &openraft::RaftMetrics<u64, BasicNode>| m.snapshot.is_some_and(|s| s.index >= wanted);
        if !covered(&group.raft.metrics().borrow()) {
            group.raft.trigger().snapshot().await?;
            group
                .raft
                .wait(Some(MEMBERSHIP_TIMEOUT))
                .metrics(covered, "snapshot for a new replica")
                .await?;
        }
        let metrics = group.raft.metrics().borrow().clone();
        let snapshot = metrics.snapshot.map_or(0, |s| s.index);
        let followers_need = metrics
            .replication
            .as_ref()
            .and_then(|r| r.values().map(|m| m.map_or(0, |l| l.index)).min())
            .unwrap_or(snapshot);
        let upto = snapshot.min(followers_need);
        if upto > metrics.purged.map_or(0, |l| l.index) {
            group.raft.trigger().purge_log(upto).await?;
        }
        Ok(())
    }

    /// On the leader of `shard`: makes `voters` the voting members.
    pub async fn change_voters(&self, shard: ShardId, voters: Vec<NodeId>) -> NodeResponse {
        let Some(group) = self.group(shard) else {
            return NodeResponse::NoShard;
        };
        self.wake(shard, &group);
        let voters: BTreeSet<NodeId> = voters.into_iter().collect();
        // The majority a read lease rests on changes: reads confirm by ReadIndex
        // until the new voters have acknowledged messages of their own.
        let _change = group.lease.suspend();
        let changed = tokio::time::timeout(MEMBERSHIP_TIMEOUT, group.raft.change_membership(voters, false));
        self.membership_answer(&group, changed.await)
    }

    fn membership_answer<T>(
        &self,
        group: &Group,
        result: Result<Result<T, typ::RaftError<ClientWriteError<u64, BasicNode>>>, tokio::time::error::Elapsed>,
    ) -> NodeResponse {
        match result {
            Ok(Ok(_)) => NodeResponse::Reply(redraft_common::resp::Frame::ok()),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                NodeResponse::NotLeader { leader: f.leader_id }
            }
            Ok(Err(e)) => NodeResponse::Unknown(e.to_string()),
            Err(_) => NodeResponse::Unknown(format!(
                "membership change timed out; leader {:?}",
                group.raft.metrics().borrow().current_leader
            )),
        }
    }

    /// On the leader of `shard`: hands the leadership to `to` (see LEADERSHIP
    /// TRANSFER above). Writes wait for at most [`TRANSFER_CATCH_UP`] plus
    /// [`TRANSFER_CAMPAIGN`]; a target that does not catch up in time leaves
    /// the leadership where it was.
    pub async fn transfer_leader(&self, shard: ShardId, to: NodeId) -> NodeResponse {
        self.transfer_leader_when_busy(shard, to, WhenBusy::Refuse).await
    }

    async fn transfer_leader_when_busy(&self, shard: ShardId, to: NodeId, when_busy: WhenBusy) -> NodeResponse {
        let Some(group) = self.group(shard) else {
            return NodeResponse::NoShard;
        };
        let _transfer = match when_busy {
            WhenBusy::Refuse => match group.transfer.try_lock() {
                Ok(guard) => guard,
                Err(_) => return NodeResponse::Unknown(format!("a leadership transfer of shard {shard} is under way")),
            },
            WhenBusy::Wait => group.transfer.lock().await,
        };
        self.wake(shard, &group);
        let me = self.node_id;
        let m = group.raft.metrics().borrow().clone();
        if m.current_leader != Some(me) {
            return NodeResponse::NotLeader {
                leader: m.current_leader,
            };
        }
        if to == me {
            return NodeResponse::Reply(redraft_common::resp::Frame::ok());
        }
        let membership = m.membership_config.membership();
        let target = membership
            .get_node(&to)
            .filter(|_| is_voter(membership, to))
            .and_then(|n| n.addr.parse::<std::net::SocketAddr>().ok());
        let Some(addr) = target else {
            return NodeResponse::Unknown(format!("node {to} is not a voter of shard {shard}"));
        };
        // Until this leader's lease runs out it refuses every vote, the target's too.
        let lease = Duration::from_millis(self.raft_config.election_timeout_max) + Duration::from_millis(50);
        tokio::time::sleep_until((group.leading_since(m.current_term) + lease).into()).await;
        let matched_by_target = |m: &openraft::RaftMetrics<u64, BasicNode>| {
            m.replication
                .as_ref()
                .and_then(|r| r.get(&to).copied().flatten())
                .map(|l| l.index)
        };
        let m = group.raft.metrics().borrow().clone();
        let lag = matched_by_target(&m).map(|i| m.last_log_index.unwrap_or(0).saturating_sub(i));
        if !self.peer_is_up(to) || lag.is_none_or(|lag| lag > TRANSFER_MAX_LAG) {
            return NodeResponse::Unknown(format!(
                "node {to} is not reachable or not up to date (lag {lag:?} entries); node {me} still leads shard {shard}"
            ));
        }

        // The target campaigns without waiting for its own refusal to vote to
        // end: from here on this leader serves no read from its lease, and not
        // until the target's campaign can no longer start (the call's timeout).
        group
            .lease
            .void_until(std::time::Instant::now() + TRANSFER_CATCH_UP + TRANSFER_CAMPAIGN * 2);
        // Entries already taken from the queue may still be on their way into
        // the log: the target has caught up once they are answered and its log
        // matches the leader's.
        let paused = group.proposals.pause(&group.raft);
        let deadline = tokio::time::Instant::now() + TRANSFER_CATCH_UP;
        loop {
            let m = group.raft.metrics().borrow().clone();
            if m.current_leader != Some(me) {
                return NodeResponse::NotLeader {
                    leader: m.current_leader,
                };
            }
            let matched = matched_by_target(&m);
            if group.proposals.settled() && matched.is_some() && matched >= m.last_log_index {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                return NodeResponse::Unknown(format!(
                    "node {to} did not catch up within {TRANSFER_CATCH_UP:?}; node {me} still leads shard {shard}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let answer = self
            .endpoint
            .call::<_, NodeResponse>(
                addr,
                &wire::NodeRequest::Campaign {
                    shard,
                    handed_over: true,
                },
                TRANSFER_CAMPAIGN,
            )
            .await;
        drop(paused);
        match answer {
            Ok(NodeResponse::Reply(_)) => {
                tracing::info!(shard_id = shard, from = me, to, "leadership transferred");
                NodeResponse::Reply(redraft_common::resp::Frame::ok())
            }
            Ok(other) => NodeResponse::Unknown(format!("node {to} did not win its election: {other:?}")),
            Err(e) => NodeResponse::Unknown(format!("node {to} did not answer its campaign: {e}")),
        }
    }

    /// Makes this replica of `shard` campaign; waits up to 5 s for it to lead.
    /// Sent by a leader handing over (`handed_over`: its log is then up to
    /// date and its lease void, see [`Host::transfer_leader`]) or to a shard
    /// that has no leader; the election restriction keeps it safe either way.
    /// A replica that is not handed the leadership refuses while it still
    /// hears from a leader: its campaign would skip its own refusal to vote,
    /// on which that leader's read lease may rest.
    pub async fn campaign(&self, shard: ShardId, handed_over: bool) -> NodeResponse {
        let Some(group) = self.group(shard) else {
            return NodeResponse::NoShard;
        };
        if self.stopping.load(std::sync::atomic::Ordering::Acquire) {
            return NodeResponse::Unknown(format!("node {} is stopping", self.node_id));
        }
        if !handed_over && group.lease.heard_from_leader_within(self.leader_lease()) {
            return NodeResponse::NotLeader {
                leader: group.raft.metrics().borrow().current_leader,
            };
        }
        self.wake(shard, &group);
        if let Err(e) = group.raft.trigger().elect().await {
            return NodeResponse::Unknown(e.to_string());
        }
        let me = self.node_id;
        let won = group
            .raft
            .wait(Some(Duration::from_secs(5)))
            .metrics(|m| m.current_leader == Some(me), "campaign")
            .await;
        match won {
            Ok(_) => {
                tracing::info!(shard_id = shard, node_id = me, "leadership moved here");
                NodeResponse::Reply(redraft_common::resp::Frame::ok())
            }
            Err(_) => NodeResponse::NotLeader {
                leader: group.raft.metrics().borrow().current_leader,
            },
        }
    }

    /// Proposes a write and waits for it to be applied. Ordinary writes share
    /// entries with concurrent ones (see [`crate::proposals`]); a split or merge
    /// goes alone.
    pub async fn propose(&self, group: &Group, op: WriteOp) -> NodeResponse {
        let outcome = if op.runs_alone() {
            proposals::propose(&group.raft, op).await
        } else {
            let mut outcomes = group.proposals.submit(&group.raft, vec![op]).await;
            outcomes
                .pop()
                .unwrap_or_else(|| Err(NodeResponse::Unknown("no outcome".into())))
        };
        Self::answer(outcome)
    }

    /// Runs writes to `shard` in one Raft entry, in order, together with other
    /// concurrent writes; their answers in order.
    pub async fn exec_writes(&self, shard: ShardId, ops: Vec<WriteOp>) -> Vec<NodeResponse> {
        let group = match self.client_group(shard) {
            Ok(group) => group,
            Err(refused) => return vec![refused; ops.len()],
        };
        group
            .proposals
            .submit(&group.raft, ops)
            .await
            .into_iter()
            .map(Self::answer)
            .collect()
    }

    /// A proposal's outcome as the node's answer to its caller.
    pub(crate) fn answer(outcome: proposals::Outcome) -> NodeResponse {
        match outcome {
            Ok(ShardResponse::Reply(frame)) => NodeResponse::Reply(frame),
            Ok(ShardResponse::WrongShard) => NodeResponse::WrongShard { version: 0 },
            Ok(ShardResponse::Many(_)) => NodeResponse::Unknown("unexpected batch outcome".into()),
            Err(failed) => failed,
        }
    }

    /// Removes expired keys on the shards this node leads by proposing deletions
    /// (so followers delete them too). Like Redis's active expiry, each call looks
    /// at no more than `scan_budget` stored keys per shard, continuing where the
    /// previous call stopped, so its cost is bounded whatever the data size.
    pub async fn purge_expired(&self, scan_budget: usize) {
        let now = now_ms();
        for shard in self.leaders() {
            let Some(group) = self.group(shard) else { continue };
            let start = self.expiry_cursor.get(&shard).map(|c| c.clone());
            let (expired, next) = self.scan_expired(&group, start, now, scan_budget);
            match next {
                Some(cursor) => self.expiry_cursor.insert(shard, cursor),
                None => self.expiry_cursor.remove(&shard).map(|(_, c)| c),
            };
            if !expired.is_empty() {
                let n = expired.len();
                let _ = self.propose(&group, WriteOp::PurgeExpired { keys: expired }).await;
                tracing::debug!(shard_id = shard, keys = n, "purged expired keys");
            }
        }
    }

    /// Scans at most `budget` stored keys of `group` from `start` (a storage key),
    /// returning the expired user keys and where to continue (`None`: wrapped).
    fn scan_expired(
        &self,
        group: &Group,
        start: Option<Vec<u8>>,
        now: u64,
        budget: usize,
    ) -> (Vec<Vec<u8>>, Option<Vec<u8>>) {
        let db = self.engine.db();
        let cf = self.engine.cf(CF_DATA);
        let mut expired = Vec::new();
        let mut seen = 0;
        let first_vnode = start.as_ref().map_or(0, |k| u16::from_be_bytes([k[0], k[1]]));
        let owned = group.owned.get();
        for &vnode in owned.range(first_vnode..) {
            let (first, end) = crate::storage::key_records(vnode);
            let mut opts = rocksdb::ReadOptions::default();
            opts.set_iterate_upper_bound(end);
            let from = match &start {
                Some(k) if k[..2] == vnode.to_be_bytes() => k.clone(),
                _ => first,
            };
            let mode = rocksdb::IteratorMode::From(&from, rocksdb::Direction::Forward);
            for item in db.iterator_cf_opt(cf, opts, mode) {
                let Ok((key, value)) = item else { return (expired, None) };
                if seen == budget {
                    return (expired, Some(key.to_vec()));
                }
                seen += 1;
                if crate::storage::Value::decode(&value).is_expired(now) {
                    expired.push(crate::storage::user_key(&key).to_vec());
                }
            }
        }
        (expired, None)
    }

    /// Before the node stops (SIGTERM): hands every shard it leads to the voter
    /// whose log is furthest along among the nodes that answer pings, all
    /// shards at once, for at most `within`. From then on the node refuses to
    /// campaign, so leader balancing cannot hand them back. A shard not handed
    /// over elects a leader once this node is gone, as after a crash; one that
    /// was loses no write and waits for no election timeout.
    pub async fn hand_off_leaders(&self, within: Duration) {
        self.stopping.store(true, std::sync::atomic::Ordering::Release);
        let led: Vec<(ShardId, NodeId)> = self
            .groups
            .iter()
            .filter_map(|group| {
                let m = group.raft.metrics().borrow().clone();
                if m.current_leader != Some(self.node_id) {
                    return None;
                }
                let membership = m.membership_config.membership();
                let to = m
                    .replication
                    .as_ref()?
                    .iter()
                    .filter(|(node, _)| **node != self.node_id && self.peer_is_up(**node))
                    .filter(|(node, _)| is_voter(membership, **node))
                    .max_by_key(|(_, matched)| matched.map(|l| l.index))
                    .map(|(node, _)| *node)?;
                Some((*group.key(), to))
            })
            .collect();
        if led.is_empty() {
            return;
        }
        // A transfer the scheduler started first is waited for (it may move the
        // shard already; this one then finds the node no longer leading).
        let transfers = led
            .iter()
            .map(|&(shard, to)| self.transfer_leader_when_busy(shard, to, WhenBusy::Wait));
        let _ = tokio::time::timeout(within, futures::future::join_all(transfers)).await;
        let still_led = led
            .iter()
            .filter(|(shard, _)| {
                self.group(*shard)
                    .is_some_and(|g| g.raft.metrics().borrow().current_leader == Some(self.node_id))
            })
            .count();
        tracing::info!(
            node_id = self.node_id,
            moved = led.len() - still_led,
            led = led.len(),
            "handed leaderships over before stopping"
        );
    }

    /// From now on client commands are answered with a redirect to the
    /// shard's leader as this replica knows it, before anything is proposed
    /// or read: the proxy retries them there. A stopping node calls this once
    /// its leaderships are handed over and before it stops its groups, so no
    /// command reaches a stopped group (whose failure would leave a write's
    /// outcome unknown).
    pub fn refuse_clients(&self) {
        self.refusing_clients.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Counts a client command while the guard lives.
    pub fn client_request(self: &Arc<Self>) -> ClientRequest {
        use std::sync::atomic::Ordering::SeqCst;
        self.client_requests.fetch_add(1, SeqCst);
        self.last_client_request_ms.store(now_ms(), SeqCst);
        ClientRequest(self.clone())
    }

    /// Waits, for at most `within`, until no client command is being served
    /// and none arrived for `quiet`: a stopping node answers every command
    /// already sent to it (with a redirect once it refuses clients) before it
    /// closes its connections, so no caller is left not knowing what
    /// happened to a write.
    pub async fn settle_requests(&self, quiet: Duration, within: Duration) {
        use std::sync::atomic::Ordering::SeqCst;
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            let idle_ms = now_ms().saturating_sub(self.last_client_request_ms.load(SeqCst));
            if self.client_requests.load(SeqCst) == 0 && idle_ms >= quiet.as_millis() as u64 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits, for at most `within`, until every write this node proposed has
    /// its outcome (applied, or redirected when the entry was overwritten by a
    /// new leader): stopping a group earlier would leave those outcomes unknown.
    pub async fn settle_proposals(&self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while !self.groups.iter().all(|group| group.proposals.settled()) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn refused_client(&self, group: &Group) -> Option<NodeResponse> {
        if !self.refusing_clients.load(std::sync::atomic::Ordering::Acquire) {
            return None;
        }
        let leader = group.raft.metrics().borrow().current_leader;
        Some(NodeResponse::NotLeader {
            leader: leader.filter(|l| *l != self.node_id),
        })
    }

    /// Stops every group.
    pub async fn shutdown(&self) {
        for group in self.groups.iter() {
            let _ = group.raft.shutdown().await;
        }
    }
}

/// Runs a read; a panic inside it (a bug, or a record this replica cannot
/// decode) answers the client with an error instead of taking the request's
/// task down, which left the caller without an answer until it gave the
/// shard up as unreachable. Reads change nothing, so nothing is left half
/// done.
fn contained_read(shard: ShardId, ks: &mut Keyspace<'_>, read: &ReadOp) -> NodeResponse {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ks.read(read))) {
        Ok(Ok(frame)) => NodeResponse::Reply(frame),
        Ok(Err(NotOwned)) => NodeResponse::WrongShard { version: 0 },
        Err(_) => {
            tracing::error!(
                shard_id = shard,
                ?read,
                "a read failed inside the node; see the panic above"
            );
            NodeResponse::Reply(Frame::error("ERR the node failed to read this shard (see its log)"))
        }
    }
}

/// A client command being served ([`Host::client_request`]): counted until dropped,
/// also when its task is cancelled.
pub struct ClientRequest(Arc<Host>);

impl Drop for ClientRequest {
    fn drop(&mut self) {
        self.0.client_requests.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use redraft_common::resp::Frame;

    use super::*;

    #[test]
    fn a_read_that_panics_answers_an_error() {
        use redraft_raft_storage::{Engine, FsyncPolicy};
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(&dir.path().join("db"), FsyncPolicy::Always).unwrap();
        let ring = Ring::new(64);
        let owned: BTreeSet<VnodeId> = (0..64).collect();
        // A key record this replica cannot decode (an unknown kind byte).
        let skey = crate::storage::data_key(ring.vnode_of(b"bad"), b"bad");
        engine.db().put_cf(engine.cf(CF_DATA), &skey, [99u8; 17]).unwrap();
        let mut ks = Keyspace::new(engine.db(), engine.cf(CF_DATA), &ring, &owned, 0);
        let get = |key: &str| ReadOp::Get {
            key: key.as_bytes().to_vec(),
        };
        match contained_read(1, &mut ks, &get("bad")) {
            NodeResponse::Reply(Frame::Error(text)) => assert!(text.contains("failed to read"), "{text}"),
            other => panic!("{other:?}"),
        }
        // The same view keeps answering other reads.
        assert!(matches!(
            contained_read(1, &mut ks, &get("good")),
            NodeResponse::Reply(Frame::Null)
        ));
    }

    #[test]
    fn pipelined_writes_refused_together_are_answered_once() {
        let refused = NodeResponse::NotLeader { leader: Some(2) };
        match many_answer(vec![refused.clone(), refused.clone()]) {
            NodeResponse::NotLeader { leader } => assert_eq!(leader, Some(2)),
            other => panic!("expected NotLeader, got {other:?}"),
        }
        assert!(matches!(
            many_answer(vec![NodeResponse::NoShard, NodeResponse::NoShard]),
            NodeResponse::NoShard
        ));
        // Outcomes of writes that ran stay per write.
        let ran = many_answer(vec![
            NodeResponse::Reply(Frame::ok()),
            NodeResponse::WrongShard { version: 0 },
        ]);
        assert!(matches!(ran, NodeResponse::Batch(answers) if answers.len() == 2));
        assert!(matches!(many_answer(Vec::new()), NodeResponse::Batch(answers) if answers.is_empty()));
    }
}

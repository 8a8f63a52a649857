//! A shard replica's state machine: applies entries to the node's `data` column
//! family, builds and installs snapshots.
//!
//! APPLY. Each call applies a run of entries through one [`Keyspace`] and commits
//! the data changes, the applied log id and any membership change in one
//! `WriteBatch`, so after a crash the data and the applied index always agree and
//! openraft replays exactly the entries after it. The batch is written without
//! fsync: the Raft log is the durable record, and log purges sync the WAL first
//! (see `redraft_raft_storage::log`).
//!
//! SNAPSHOTS. Built from a RocksDB snapshot, which also supplies the applied log id
//! and membership, so data and metadata are consistent without pausing applies.
//! Records stream to a file ([`redraft_raft_storage::snapshot`]); openraft sends the
//! file in chunks. Installing first records an `installing` marker, then replaces
//! the shard's vnode ranges batch by batch, then writes the new applied id and
//! removes the marker in one batch; a node that crashes half way finishes the
//! install when it reopens the group (resumable, never half-applied). A snapshot's
//! first record is the set of virtual nodes the shard owned at that index.
//!
//! SPLIT AND MERGE. Which virtual nodes a replica owns is state machine state
//! ([`Ownership`]), changed only by log entries (and snapshots), so every replica
//! changes it at the same index. A split entry gives half of the shard's vnodes to
//! a new shard: every voter writes, in the same batch, the new shard's initial
//! state (applied at a synthetic log id 0 with the parent's voters as members),
//! whose data is the parent's data already in this RocksDB; the host then starts
//! that group. Because the new group's log starts after a purged index 0, a
//! replica that joins it later always starts from a snapshot. A merge is two
//! entries: `Retire` in the shard that disappears (it stops serving) and `Absorb`
//! in the one that grows, applied only once this node's copy of the retired shard
//! has applied the retirement, so the absorbed data is complete.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, CommittedLeaderId, EntryPayload, Membership, RaftSnapshotBuilder, StorageError, StorageIOError,
};
use redraft_common::consistency::DigestRequest;
use redraft_common::ids::{NodeId, ShardId, VnodeId};
use redraft_common::keys::Ring;
use redraft_common::ops::WriteOp;
use redraft_common::resp::Frame;
use redraft_common::wire;
use redraft_raft_storage::engine::{CF_DATA, CF_META};
use redraft_raft_storage::snapshot::{self, SnapshotWriter};
use redraft_raft_storage::Engine;
use rocksdb::{IteratorMode, ReadOptions, WriteBatch};
use serde::{Deserialize, Serialize};

use super::typ::{LogId, SnapshotMeta, StoredMembership};
use super::{ShardRequest, ShardResponse, ShardTypes};
use crate::apply::{Keyspace, NotOwned};
use crate::storage::{vnode_end, vnode_start, ElementHints};

/// Bytes of records per write batch while installing a snapshot: bounded memory.
const INSTALL_BATCH_BYTES: usize = 4 << 20;

/// Key of a per-group metadata item in the `meta` column family.
pub fn group_meta_key(group: ShardId, item: &str) -> Vec<u8> {
    let mut key = b"group/".to_vec();
    key.extend_from_slice(&group.to_be_bytes());
    key.push(b'/');
    key.extend_from_slice(item.as_bytes());
    key
}

const APPLIED: &str = "applied";
/// Prefix of the records of served blocked clients: `served/<time><id>`.
const SERVED: &str = "served/";
/// How long what a blocked client was served is kept for its proxy to ask again.
pub const SERVED_KEPT_MS: u64 = 60_000;

fn served_key(group: ShardId, at_ms: u64, id: u64) -> Vec<u8> {
    let mut key = group_meta_key(group, SERVED);
    key.extend_from_slice(&at_ms.to_be_bytes());
    key.extend_from_slice(&id.to_be_bytes());
    key
}

/// Where the served-client records of `group` start, and the read options
/// that end an iteration with the last of them.
fn served_records(group: ShardId) -> (Vec<u8>, ReadOptions) {
    let prefix = group_meta_key(group, SERVED);
    let mut end = prefix.clone();
    end.push(0xFF);
    let mut options = ReadOptions::default();
    options.set_iterate_upper_bound(end);
    (prefix, options)
}

/// What this replica's state machine recorded as served to blocked client
/// `id` of `group` in the last [`SERVED_KEPT_MS`], if anything.
pub fn served_reply(engine: &Engine, group: ShardId, id: u64) -> Option<Frame> {
    let (prefix, options) = served_records(group);
    let iter = engine.db().iterator_cf_opt(
        engine.cf(CF_META),
        options,
        IteratorMode::From(&prefix, rocksdb::Direction::Forward),
    );
    for item in iter {
        let (key, value) = item.ok()?;
        if key.len() == prefix.len() + 16 && key[prefix.len() + 8..] == id.to_be_bytes() {
            return wire::decode(&value).ok();
        }
    }
    None
}
const MEMBERSHIP: &str = "membership";
const SNAPSHOT: &str = "snapshot";
const INSTALLING: &str = "installing";
/// The group's [`GroupRecord`].
pub const RECORD: &str = "record";
/// Log index of the shard's retirement (merge), once retired.
const RETIRED: &str = "retired";
/// Log index of the last split or merge entry applied.
const RESHAPED: &str = "reshaped";

/// Key of the snapshot record carrying the owned vnodes. Data keys start with a
/// vnode id below `u16::MAX`, so this key never collides with one.
const OWNERSHIP_RECORD: &[u8] = b"\xff\xffowned";
/// Key of the snapshot record carrying what blocked clients were served lately
/// (`served/<time><id>` suffixes and answers), so a replica installed from a
/// snapshot can still answer a proxy that asks again. Outside every vnode too.
const SERVED_RECORD: &[u8] = b"\xff\xffserved";

/// How long an `Absorb` waits between looks at the retired shard's progress.
const ABSORB_POLL: Duration = Duration::from_millis(10);

/// What a node remembers about each group it hosts (in the `meta` column family),
/// written when the group is created and whenever a split or merge changes it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GroupRecord {
    /// Virtual nodes the shard owns.
    pub vnodes: Vec<VnodeId>,
    /// Virtual nodes on the ring.
    pub vnode_count: u32,
}

/// The virtual nodes a replica owns right now. Shared by the state machine, which
/// changes it when a split, merge or snapshot is applied, and the request path,
/// which checks every key against it.
#[derive(Clone, Debug, Default)]
pub struct Ownership(Arc<RwLock<Arc<BTreeSet<VnodeId>>>>);

impl Ownership {
    /// Ownership of `vnodes`.
    pub fn new(vnodes: impl IntoIterator<Item = VnodeId>) -> Ownership {
        Ownership(Arc::new(RwLock::new(Arc::new(vnodes.into_iter().collect()))))
    }

    /// The owned set as of now.
    pub fn get(&self) -> Arc<BTreeSet<VnodeId>> {
        self.0.read().expect("ownership lock").clone()
    }

    fn set(&self, vnodes: BTreeSet<VnodeId>) {
        *self.0.write().expect("ownership lock") = Arc::new(vnodes);
    }
}

/// The log id a shard created by a split starts at: what `initialize` would
/// write, so the first election works exactly as for a bootstrapped shard.
fn split_origin() -> LogId {
    LogId::new(CommittedLeaderId::new(0, 0), 0)
}

/// What the state machine tells the host after a structural change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reshaped {
    /// `child` was created on this node by a split of `parent`: start it.
    SplitChild { parent: ShardId, child: ShardId },
}

/// What to do once a structural entry's batch is written.
struct AfterWrite {
    owned: Option<BTreeSet<VnodeId>>,
    event: Option<Reshaped>,
    /// A consistency check's digest to start, as of this log index.
    digest: Option<(u64, DigestRequest)>,
    /// A backup's barrier at this log index.
    backup: Option<(u64, redraft_common::backup::Barrier)>,
}

type StorageResult<T> = Result<T, StorageError<u64>>;

/// Reads a metadata item of any group.
fn read_group_meta<T: serde::de::DeserializeOwned>(engine: &Engine, group: ShardId, item: &str) -> Option<T> {
    let bytes = engine
        .db()
        .get_cf(engine.cf(CF_META), group_meta_key(group, item))
        .unwrap_or_else(|e| panic!("RocksDB read failed: {e}"))?;
    Some(wire::decode(&bytes).unwrap_or_else(|e| panic!("corrupt group metadata {item}: {e}")))
}

/// Log index of the last split or merge entry `group`'s replica here applied.
pub fn reshaped_at(engine: &Engine, group: ShardId) -> Option<u64> {
    read_group_meta(engine, group, RESHAPED)
}

/// The stored record of `group`, if this node hosts it.
pub fn group_record(engine: &Engine, group: ShardId) -> Option<GroupRecord> {
    read_group_meta(engine, group, RECORD)
}

fn put_group_meta<T: serde::Serialize>(engine: &Engine, batch: &mut WriteBatch, group: ShardId, item: &str, value: &T) {
    batch.put_cf(engine.cf(CF_META), group_meta_key(group, item), wire::encode(value));
}

fn io_err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// The state machine of one shard replica.
#[derive(Clone)]
pub struct ShardStateMachine {
    group: ShardId,
    node_id: NodeId,
    engine: Engine,
    ring: Arc<Ring>,
    owned: Ownership,
    snapshot_dir: PathBuf,
    incoming: Option<PathBuf>,
    events: Option<tokio::sync::mpsc::UnboundedSender<Reshaped>>,
    /// The node's element hints (`None`: every overwrite reads the old record).
    hints: Option<Arc<ElementHints>>,
    /// The group's blocked clients, woken by the keys applied writes change.
    blocked: Option<Arc<crate::blocking::Blocked>>,
    /// The node's consistency-check digests (`None`: digest entries are
    /// acknowledged and nothing is computed).
    digests: Option<Arc<crate::digest::Digests>>,
    /// The node's backups (`None`: barriers are acknowledged, nothing kept).
    backups: Option<Arc<crate::backup::Backups>>,
    /// The node's Pub/Sub hub, where the replica that proposed an entry
    /// publishes its keyspace notifications (`None`: none are published).
    notifications: Option<Arc<crate::pubsub::Hub>>,
    /// Entry time of the last sweep of old served-client records.
    served_swept_at: u64,
}

impl ShardStateMachine {
    /// Opens the state machine of `group`, finishing an interrupted snapshot install.
    /// `owned` is the ownership the group was created with; the stored record wins
    /// when there is one. `events` receives structural changes for the host;
    /// `hints` are the node's [`ElementHints`], kept current by this replica.
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        group: ShardId,
        node_id: NodeId,
        engine: Engine,
        ring: Arc<Ring>,
        owned: Ownership,
        snapshot_dir: PathBuf,
        events: Option<tokio::sync::mpsc::UnboundedSender<Reshaped>>,
        hints: Option<Arc<ElementHints>>,
        blocked: Option<Arc<crate::blocking::Blocked>>,
        digests: Option<Arc<crate::digest::Digests>>,
        backups: Option<Arc<crate::backup::Backups>>,
        notifications: Option<Arc<crate::pubsub::Hub>>,
    ) -> anyhow::Result<ShardStateMachine> {
        std::fs::create_dir_all(&snapshot_dir)?;
        let sm = ShardStateMachine {
            group,
            node_id,
            engine,
            ring,
            owned,
            snapshot_dir,
            incoming: None,
            events,
            hints,
            blocked,
            digests,
            backups,
            notifications,
            served_swept_at: 0,
        };
        if let Some(record) = sm.read_meta::<GroupRecord>(RECORD) {
            sm.owned.set(record.vnodes.into_iter().collect());
        }
        if let Some((meta, file)) = sm.read_meta::<(SnapshotMeta, String)>(INSTALLING) {
            tracing::warn!(shard_id = group, "resuming interrupted snapshot install");
            sm.install_file(&meta, &sm.snapshot_dir.join(file))?;
        }
        Ok(sm)
    }

    fn read_meta<T: serde::de::DeserializeOwned>(&self, item: &str) -> Option<T> {
        read_group_meta(&self.engine, self.group, item)
    }

    fn put_meta<T: serde::Serialize>(&self, batch: &mut WriteBatch, item: &str, value: &T) {
        put_group_meta(&self.engine, batch, self.group, item, value);
    }

    /// Stores what blocked clients were served, by registration id, and every
    /// so often forgets records older than [`SERVED_KEPT_MS`]: a proxy that lost
    /// a served client's answer in a leader change asks for it within seconds.
    fn remember_served(
        engine: &Engine,
        group: ShardId,
        swept_at: &mut u64,
        batch: &mut WriteBatch,
        served: Vec<(u64, u64, Frame)>,
    ) {
        let Some(newest) = served.iter().map(|(at, _, _)| *at).max() else {
            return;
        };
        let meta = engine.cf(CF_META);
        for (at, id, reply) in served {
            batch.put_cf(meta, served_key(group, at, id), wire::encode(&reply));
        }
        if newest >= *swept_at + SERVED_KEPT_MS / 6 {
            let from = group_meta_key(group, SERVED);
            let to = served_key(group, newest.saturating_sub(SERVED_KEPT_MS), 0);
            batch.delete_range_cf(meta, &from, &to);
            *swept_at = newest;
        }
    }

    /// The vnodes this replica owns.
    pub fn owned(&self) -> &Ownership {
        &self.owned
    }

    fn record(&self, vnodes: &BTreeSet<VnodeId>) -> GroupRecord {
        GroupRecord {
            vnodes: vnodes.iter().copied().collect(),
            vnode_count: self.ring.len(),
        }
    }

    /// Applies a split, retirement or absorption at `log_id`, adding its writes to
    /// `batch`. `membership` is the shard's membership as of this entry.
    async fn apply_reshape(
        &self,
        batch: &mut WriteBatch,
        log_id: LogId,
        op: &WriteOp,
        membership: &StoredMembership,
    ) -> (Frame, AfterWrite) {
        let owned = self.owned.get();
        let mut after = AfterWrite {
            owned: None,
            event: None,
            digest: None,
            backup: None,
        };
        let reply = match op {
            WriteOp::ComputeDigest(request) => {
                after.digest = Some((log_id.index, request.clone()));
                Frame::Integer(log_id.index as i64)
            }
            WriteOp::BackupBarrier(barrier) => {
                after.backup = Some((log_id.index, barrier.clone()));
                Frame::Integer(log_id.index as i64)
            }
            WriteOp::Split { child, vnodes } => {
                let moving: BTreeSet<VnodeId> = vnodes.iter().copied().collect();
                if moving.is_empty() || moving.is_disjoint(&owned) {
                    Frame::ok() // applied before (or nothing to do)
                } else if !moving.is_subset(&owned) || moving.len() == owned.len() {
                    Frame::error("ERR a split must move some, not all, of the shard's own vnodes")
                } else {
                    let keep: BTreeSet<VnodeId> = owned.difference(&moving).copied().collect();
                    self.put_meta(batch, RECORD, &self.record(&keep));
                    self.put_meta(batch, RESHAPED, &log_id.index);
                    let config = membership.membership();
                    let voters: BTreeSet<NodeId> = config.voter_ids().collect();
                    let child_exists = read_group_meta::<GroupRecord>(&self.engine, *child, RECORD).is_some();
                    if voters.contains(&self.node_id) && !child_exists {
                        let nodes: BTreeMap<NodeId, BasicNode> = voters
                            .iter()
                            .filter_map(|v| config.get_node(v).map(|n| (*v, n.clone())))
                            .collect();
                        let origin = Some(split_origin());
                        let child_membership = StoredMembership::new(origin, Membership::new(vec![voters], nodes));
                        put_group_meta(&self.engine, batch, *child, RECORD, &self.record(&moving));
                        put_group_meta(&self.engine, batch, *child, APPLIED, &origin);
                        put_group_meta(&self.engine, batch, *child, MEMBERSHIP, &child_membership);
                        after.event = Some(Reshaped::SplitChild {
                            parent: self.group,
                            child: *child,
                        });
                    }
                    tracing::info!(
                        shard_id = self.group,
                        child,
                        moved = moving.len(),
                        kept = keep.len(),
                        index = log_id.index,
                        "split applied"
                    );
                    after.owned = Some(keep);
                    Frame::ok()
                }
            }
            WriteOp::Retire => match self.read_meta::<u64>(RETIRED) {
                Some(at) => Frame::Integer(at as i64),
                None => {
                    let none = BTreeSet::new();
                    self.put_meta(batch, RECORD, &self.record(&none));
                    self.put_meta(batch, RETIRED, &log_id.index);
                    self.put_meta(batch, RESHAPED, &log_id.index);
                    tracing::info!(shard_id = self.group, index = log_id.index, "retired for a merge");
                    after.owned = Some(none);
                    Frame::Integer(log_id.index as i64)
                }
            },
            WriteOp::Absorb { from, vnodes, upto } => {
                let incoming: BTreeSet<VnodeId> = vnodes.iter().copied().collect();
                if incoming.is_subset(&owned) {
                    Frame::ok()
                } else {
                    self.wait_for_retired(*from, *upto).await;
                    let grown: BTreeSet<VnodeId> = owned.union(&incoming).copied().collect();
                    self.put_meta(batch, RECORD, &self.record(&grown));
                    self.put_meta(batch, RESHAPED, &log_id.index);
                    tracing::info!(
                        shard_id = self.group,
                        from,
                        absorbed = incoming.len(),
                        index = log_id.index,
                        "merge applied"
                    );
                    after.owned = Some(grown);
                    Frame::ok()
                }
            }
            _ => Frame::error("ERR not a structural operation"),
        };
        (reply, after)
    }

    /// Waits until this node's replica of the retired shard `from` has applied its
    /// log up to `upto`, so its data (which this shard takes over in place) is
    /// complete. A replica that no longer exists here cannot progress: the data
    /// it left is all there is, and the wait ends with an error logged.
    async fn wait_for_retired(&self, from: ShardId, upto: u64) {
        let mut waited = Duration::ZERO;
        loop {
            if read_group_meta::<GroupRecord>(&self.engine, from, RECORD).is_none() {
                tracing::error!(
                    shard_id = self.group,
                    from,
                    "absorbing a shard that has no replica here"
                );
                return;
            }
            let applied = read_group_meta::<Option<LogId>>(&self.engine, from, APPLIED).flatten();
            if applied.is_some_and(|l| l.index >= upto) {
                return;
            }
            tokio::time::sleep(ABSORB_POLL).await;
            waited += ABSORB_POLL;
            if waited.as_millis().is_multiple_of(10_000) {
                tracing::warn!(
                    shard_id = self.group,
                    from,
                    upto,
                    "merge waits for the retired shard to catch up"
                );
            }
        }
    }

    /// Deletes the shard's data, metadata and snapshot files (replica removed).
    /// Only the vnodes the replica owns are deleted: a retired shard's data now
    /// belongs to the shard that absorbed it.
    /// `others` are vnodes other groups on this node own; they are never deleted.
    pub fn destroy(&self, others: &BTreeSet<VnodeId>) -> anyhow::Result<()> {
        let db = self.engine.db();
        let mut batch = WriteBatch::default();
        for &vnode in self.owned.get().difference(others) {
            batch.delete_range_cf(self.engine.cf(CF_DATA), vnode_start(vnode), vnode_end(vnode));
        }
        batch.delete_range_cf(
            self.engine.cf(CF_META),
            group_meta_key(self.group, ""),
            group_meta_key(self.group + 1, ""),
        );
        db.write(batch)?;
        if let Some((_, file)) = self.read_meta::<(SnapshotMeta, String)>(SNAPSHOT) {
            let _ = std::fs::remove_file(self.snapshot_dir.join(file));
        }
        Ok(())
    }

    /// Replaces the shard's data with the snapshot file's, then records its meta.
    fn install_file(&self, meta: &SnapshotMeta, path: &std::path::Path) -> anyhow::Result<()> {
        let db = self.engine.db();
        let (data, meta_cf) = (self.engine.cf(CF_DATA), self.engine.cf(CF_META));
        let file_name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let mut batch = WriteBatch::default();
        self.put_meta(&mut batch, INSTALLING, &(meta.clone(), file_name.clone()));
        let mut sync = rocksdb::WriteOptions::default();
        sync.set_sync(true);
        db.write_opt(batch, &sync)?;

        let mut batch = WriteBatch::default();
        let before = self.owned.get();
        let mut owned: Option<BTreeSet<VnodeId>> = None;
        let mut pending = 0;
        snapshot::for_each_record(path, |key, value| {
            if key == OWNERSHIP_RECORD {
                let vnodes: BTreeSet<VnodeId> = wire::decode::<Vec<VnodeId>>(value)?.into_iter().collect();
                for &vnode in before.union(&vnodes) {
                    batch.delete_range_cf(data, vnode_start(vnode), vnode_end(vnode));
                }
                owned = Some(vnodes);
                return Ok(());
            }
            anyhow::ensure!(owned.is_some(), "snapshot without an ownership record");
            if key == SERVED_RECORD {
                let prefix = group_meta_key(self.group, SERVED);
                for (suffix, answer) in wire::decode::<Vec<(Vec<u8>, Vec<u8>)>>(value)? {
                    let mut key = prefix.clone();
                    key.extend_from_slice(&suffix);
                    batch.put_cf(meta_cf, key, answer);
                }
                return Ok(());
            }
            if let Some(hints) = &self.hints {
                hints.mark(key);
            }
            batch.put_cf(data, key, value);
            pending += key.len() + value.len();
            if pending >= INSTALL_BATCH_BYTES {
                db.write(std::mem::take(&mut batch))?;
                pending = 0;
            }
            Ok(())
        })?;
        let owned = owned.ok_or_else(|| anyhow::anyhow!("snapshot without an ownership record"))?;
        let previous = self.read_meta::<(SnapshotMeta, String)>(SNAPSHOT);
        self.put_meta(&mut batch, RECORD, &self.record(&owned));
        self.put_meta(&mut batch, APPLIED, &meta.last_log_id);
        self.put_meta(&mut batch, MEMBERSHIP, &meta.last_membership);
        self.put_meta(&mut batch, SNAPSHOT, &(meta.clone(), file_name.clone()));
        batch.delete_cf(meta_cf, group_meta_key(self.group, INSTALLING));
        db.write_opt(batch, &sync)?;
        self.owned.set(owned);
        if let Some((_, old)) = previous.filter(|(_, old)| *old != file_name) {
            let _ = std::fs::remove_file(self.snapshot_dir.join(old));
        }
        tracing::info!(shard_id = self.group, index = ?meta.last_log_id.map(|l| l.index), "installed snapshot");
        crate::metrics::SNAPSHOTS.with_label_values(&["installed"]).inc();
        Ok(())
    }

    /// The path of a received snapshot: the file `begin_receiving_snapshot` created
    /// when `file` is that file, else a copy of `file` (openraft may hand over
    /// another handle, e.g. a local snapshot), so the install can always resume
    /// from a file of our own.
    fn received_file(&self, mut file: std::fs::File, incoming: Option<PathBuf>) -> anyhow::Result<PathBuf> {
        use std::io::Seek;
        use std::os::unix::fs::MetadataExt;
        if let Some(path) = incoming {
            let (ours, theirs) = (std::fs::metadata(&path)?, file.metadata()?);
            if ours.dev() == theirs.dev() && ours.ino() == theirs.ino() {
                return Ok(path);
            }
            let _ = std::fs::remove_file(&path);
        }
        let path = self.snapshot_dir.join(self.snapshot_name("received"));
        let mut copy = std::fs::File::create(&path)?;
        file.seek(std::io::SeekFrom::Start(0))?;
        std::io::copy(&mut file, &mut copy)?;
        copy.sync_all()?;
        Ok(path)
    }

    fn snapshot_name(&self, tag: &str) -> String {
        format!("{}-{}-{:016x}.snap", self.group, tag, rand::random::<u64>())
    }

    /// Writes a snapshot of the shard from a consistent RocksDB snapshot.
    fn build_file(&self) -> anyhow::Result<(SnapshotMeta, PathBuf)> {
        let db = self.engine.db();
        let snap = db.snapshot();
        let read_meta = |item: &str| -> anyhow::Result<Option<Vec<u8>>> {
            Ok(snap.get_cf(self.engine.cf(CF_META), group_meta_key(self.group, item))?)
        };
        let applied: Option<LogId> = read_meta(APPLIED)?.map(|b| wire::decode(&b)).transpose()?.flatten();
        let membership: StoredMembership = read_meta(MEMBERSHIP)?
            .map(|b| wire::decode(&b))
            .transpose()?
            .unwrap_or_default();
        let owned: Vec<VnodeId> = match read_meta(RECORD)? {
            Some(b) => wire::decode::<GroupRecord>(&b)?.vnodes,
            None => self.owned.get().iter().copied().collect(),
        };
        let name = self.snapshot_name(&applied.map_or(0, |l| l.index).to_string());
        let path = self.snapshot_dir.join(&name);
        let mut writer = SnapshotWriter::create(&path)?;
        writer.record(OWNERSHIP_RECORD, &wire::encode(&owned))?;
        let (served_prefix, opts) = served_records(self.group);
        let mut served: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        for item in snap.iterator_cf_opt(
            self.engine.cf(CF_META),
            opts,
            IteratorMode::From(&served_prefix, rocksdb::Direction::Forward),
        ) {
            let (key, value) = item?;
            served.push((key[served_prefix.len()..].to_vec(), value.to_vec()));
        }
        if !served.is_empty() {
            writer.record(SERVED_RECORD, &wire::encode(&served))?;
        }
        for &vnode in &owned {
            let mut opts = ReadOptions::default();
            opts.set_iterate_upper_bound(vnode_end(vnode));
            let start = vnode_start(vnode);
            for item in snap.iterator_cf_opt(
                self.engine.cf(CF_DATA),
                opts,
                IteratorMode::From(&start, rocksdb::Direction::Forward),
            ) {
                let (key, value) = item?;
                writer.record(&key, &value)?;
            }
        }
        let records = writer.records;
        writer.finish()?;
        let meta = SnapshotMeta {
            last_log_id: applied,
            last_membership: membership,
            snapshot_id: name.clone(),
        };
        let previous = self.read_meta::<(SnapshotMeta, String)>(SNAPSHOT);
        let mut batch = WriteBatch::default();
        self.put_meta(&mut batch, SNAPSHOT, &(meta.clone(), name));
        db.write(batch)?;
        if let Some((_, old)) = previous {
            let _ = std::fs::remove_file(self.snapshot_dir.join(old));
        }
        tracing::info!(shard_id = self.group, index = ?applied.map(|l| l.index), records, "built snapshot");
        crate::metrics::SNAPSHOTS.with_label_values(&["built"]).inc();
        Ok((meta, path))
    }
}

impl RaftSnapshotBuilder<ShardTypes> for ShardStateMachine {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<ShardTypes>> {
        let this = self.clone();
        let (meta, path) = tokio::task::spawn_blocking(move || this.build_file())
            .await
            .map_err(io_err)
            .and_then(|r| r.map_err(io_err))
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(file),
        })
    }
}

impl RaftStateMachine<ShardTypes> for ShardStateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> StorageResult<(Option<LogId>, StoredMembership)> {
        Ok((
            self.read_meta::<Option<LogId>>(APPLIED).flatten(),
            self.read_meta(MEMBERSHIP).unwrap_or_default(),
        ))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<ShardResponse>>
    where
        I: IntoIterator<Item = openraft::Entry<ShardTypes>> + Send,
        I::IntoIter: Send,
    {
        let started = std::time::Instant::now();
        let db = self.engine.db().clone();
        let data = self.engine.cf(CF_DATA);
        let mut replies = Vec::new();
        let mut entries = entries.into_iter().peekable();
        // Keyspace notifications, only when some proxy may want them.
        let hub = self.notifications.clone().filter(|hub| hub.wants_events());
        // Runs of ordinary entries share one batch; a split or merge entry ends its
        // run, because it changes the ownership later entries are checked against.
        while entries.peek().is_some() {
            let owned = self.owned.get();
            let mut keyspace = Keyspace::new(&db, data, &self.ring, &owned, 0);
            if let Some(hints) = &self.hints {
                keyspace = keyspace.with_hints(hints);
            }
            let mut last = None;
            let mut membership = None;
            let mut reshape: Option<(LogId, ShardRequest)> = None;
            for entry in entries.by_ref() {
                last = Some(entry.log_id);
                match entry.payload {
                    EntryPayload::Blank => replies.push(ShardResponse::Reply(Frame::Null)),
                    EntryPayload::Normal(request) if request.op.runs_alone() => {
                        reshape = Some((entry.log_id, request));
                        break;
                    }
                    EntryPayload::Normal(request) => {
                        keyspace.set_now(request.now_ms);
                        keyspace.set_revision(entry.log_id.index);
                        // Only the replica that proposed the entry publishes its
                        // notifications: once, even if it lost leadership since.
                        keyspace.set_notify(hub.is_some() && entry.log_id.leader_id.node_id == self.node_id);
                        let mut write = |op: &WriteOp| match keyspace.write(op) {
                            Ok(frame) => ShardResponse::Reply(frame),
                            Err(NotOwned) => ShardResponse::WrongShard,
                        };
                        replies.push(match &request.op {
                            WriteOp::Many(ops) => ShardResponse::Many(ops.iter().map(&mut write).collect()),
                            op => write(op),
                        });
                        if let Some(blocked) = self.blocked.as_ref().filter(|b| b.any()) {
                            blocked.changed(crate::blocking::woken_keys(&request.op));
                        }
                    }
                    EntryPayload::Membership(m) => {
                        tracing::info!(shard_id = self.group, index = entry.log_id.index, membership = %m, "membership changed");
                        membership = Some(StoredMembership::new(Some(entry.log_id), m));
                        replies.push(ShardResponse::Reply(Frame::Null));
                    }
                }
            }
            let served = keyspace.take_served();
            let notified = keyspace.take_events();
            let mut batch = keyspace.into_batch();
            Self::remember_served(&self.engine, self.group, &mut self.served_swept_at, &mut batch, served);
            if last.is_some() {
                self.put_meta(&mut batch, APPLIED, &last);
            }
            if let Some(m) = &membership {
                self.put_meta(&mut batch, MEMBERSHIP, m);
            }
            let mut after = AfterWrite {
                owned: None,
                event: None,
                digest: None,
                backup: None,
            };
            let entry_now_ms = reshape.as_ref().map_or(0, |(_, request)| request.now_ms);
            if let Some((log_id, request)) = reshape {
                let current = membership.unwrap_or_else(|| self.read_meta(MEMBERSHIP).unwrap_or_default());
                let (reply, then) = self.apply_reshape(&mut batch, log_id, &request.op, &current).await;
                replies.push(ShardResponse::Reply(reply));
                after = then;
            }
            // A failed write would leave this replica behind its log: stop the node.
            db.write(batch)
                .unwrap_or_else(|e| panic!("RocksDB apply write failed: {e}"));
            if let Some(hub) = &hub {
                for event in notified {
                    hub.notify(event.class, event.event.as_bytes(), &event.key);
                }
            }
            if let Some(owned) = after.owned {
                self.owned.set(owned);
            }
            if let (Some(event), Some(events)) = (after.event, &self.events) {
                let _ = events.send(event);
            }
            if let (Some((index, request)), Some(digests)) = (after.digest, &self.digests) {
                let vnodes = self.owned.get().iter().copied().collect();
                digests.start(&self.engine, self.group, index, vnodes, request).await;
            }
            if let (Some((index, barrier)), Some(backups)) = (after.backup, &self.backups) {
                let (ring, vnodes) = (self.ring.clone(), self.owned.get().as_ref().clone());
                backups
                    .start(&self.engine, ring, self.group, index, &barrier, vnodes, entry_now_ms)
                    .await;
            }
        }
        crate::metrics::APPLY_SECONDS.observe(started.elapsed().as_secs_f64());
        crate::metrics::APPLIED_ENTRIES.inc_by(replies.len() as u64);
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<tokio::fs::File>> {
        let path = self.snapshot_dir.join(self.snapshot_name("incoming"));
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .await
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        self.incoming = Some(path);
        Ok(Box::new(file))
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: Box<tokio::fs::File>) -> StorageResult<()> {
        let signature = Some(meta.signature());
        let fail = |e: std::io::Error| StorageError::from(StorageIOError::write_snapshot(signature.clone(), &e));
        snapshot.sync_all().await.map_err(fail)?;
        let file = snapshot.into_std().await;
        let incoming = self.incoming.take();
        let this = self.clone();
        let meta = meta.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let path = this.received_file(file, incoming)?;
            snapshot::verify(&path)?;
            this.install_file(&meta, &path)
        })
        .await
        .map_err(|e| fail(io_err(e)))?
        .map_err(|e| fail(io_err(e)))
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<ShardTypes>>> {
        let Some((meta, name)) = self.read_meta::<(SnapshotMeta, String)>(SNAPSHOT) else {
            return Ok(None);
        };
        match tokio::fs::File::open(self.snapshot_dir.join(&name)).await {
            Ok(file) => Ok(Some(Snapshot {
                meta,
                snapshot: Box::new(file),
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StorageIOError::read_snapshot(Some(meta.signature()), &e).into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use openraft::testing::{StoreBuilder, Suite};
    use redraft_common::consistency::{DigestProgress, ReplicaDigest};
    use redraft_raft_storage::{FsyncPolicy, LogStore};

    use super::*;

    struct Builder;

    impl StoreBuilder<ShardTypes, LogStore<ShardTypes>, ShardStateMachine, tempfile::TempDir> for Builder {
        async fn build(
            &self,
        ) -> Result<(tempfile::TempDir, LogStore<ShardTypes>, ShardStateMachine), StorageError<u64>> {
            let dir = tempfile::tempdir().expect("temp dir");
            let engine = Engine::open(&dir.path().join("db"), FsyncPolicy::Always).expect("open engine");
            let ring = Arc::new(Ring::new(16));
            let sm = ShardStateMachine::open(
                7,
                1,
                engine.clone(),
                ring,
                Ownership::new(0..16),
                dir.path().join("snap"),
                None,
                Some(Arc::new(ElementHints::load(engine.db(), engine.cf(CF_DATA)))),
                None,
                None,
                None,
                None,
            )
            .expect("open state machine");
            Ok((dir, engine.log_store(7), sm))
        }
    }

    /// openraft's own conformance suite against our RocksDB log store and state machine.
    #[test]
    fn openraft_storage_suite() -> Result<(), StorageError<u64>> {
        Suite::test_all(Builder)
    }

    fn entry(index: u64, payload: EntryPayload<ShardTypes>) -> openraft::Entry<ShardTypes> {
        openraft::Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload,
        }
    }

    fn write(index: u64, op: WriteOp) -> openraft::Entry<ShardTypes> {
        entry(index, EntryPayload::Normal(ShardRequest { now_ms: 1, op }))
    }

    fn set(key: &[u8]) -> WriteOp {
        WriteOp::Set {
            key: key.to_vec(),
            value: b"v".to_vec(),
            expiry: None,
            condition: redraft_common::ops::SetCondition::Always,
            keep_ttl: false,
            reply: redraft_common::ops::SetReply::Ok,
        }
    }

    /// A key of `ring` whose vnode satisfies `wanted`.
    fn key_where(ring: &Ring, wanted: impl Fn(VnodeId) -> bool) -> Vec<u8> {
        (0..10_000)
            .map(|i| format!("k{i}").into_bytes())
            .find(|k| wanted(ring.vnode_of(k)))
            .expect("some key")
    }

    async fn state_machine(
        dir: &tempfile::TempDir,
    ) -> (
        Engine,
        ShardStateMachine,
        tokio::sync::mpsc::UnboundedReceiver<Reshaped>,
    ) {
        let engine = Engine::open(&dir.path().join("db"), FsyncPolicy::Always).expect("open engine");
        let (events, reshaped) = tokio::sync::mpsc::unbounded_channel();
        let sm = ShardStateMachine::open(
            7,
            1,
            engine.clone(),
            Arc::new(Ring::new(16)),
            Ownership::new(0..16),
            dir.path().join("snap"),
            Some(events),
            Some(Arc::new(ElementHints::load(engine.db(), engine.cf(CF_DATA)))),
            None,
            Some(Arc::new(crate::digest::Digests::default())),
            Some(Arc::new(crate::backup::Backups::default())),
            None,
        )
        .expect("open state machine");
        (engine, sm, reshaped)
    }

    /// Applies a `ComputeDigest` entry at `index` and waits for its result.
    async fn digest_at(sm: &mut ShardStateMachine, index: u64, detail: Vec<VnodeId>) -> ReplicaDigest {
        let request = DigestRequest { detail, mib_per_sec: 0 };
        let replies = sm
            .apply([write(index, WriteOp::ComputeDigest(request))])
            .await
            .expect("apply");
        assert!(matches!(&replies[..], [ShardResponse::Reply(Frame::Integer(i))] if *i == index as i64));
        let digests = sm.digests.clone().expect("digests");
        for _ in 0..500 {
            match digests.progress(7, index) {
                DigestProgress::Done(digest) => return digest,
                DigestProgress::Running { .. } => tokio::time::sleep(Duration::from_millis(10)).await,
                DigestProgress::Unknown => panic!("digest at {index} unknown"),
            }
        }
        panic!("digest at {index} did not finish")
    }

    #[tokio::test]
    async fn digests_are_taken_at_their_entry_and_name_the_vnode_and_key_that_differ() {
        let (a_dir, b_dir) = (
            tempfile::tempdir().expect("temp dir"),
            tempfile::tempdir().expect("temp dir"),
        );
        let (_, mut a, _) = state_machine(&a_dir).await;
        let (b_engine, mut b, _) = state_machine(&b_dir).await;
        let ring = Ring::new(16);
        let keys: Vec<Vec<u8>> = (0..40).map(|i| format!("key{i}").into_bytes()).collect();
        let writes: Vec<_> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| write(i as u64 + 1, set(k)))
            .collect();
        a.apply(writes.clone()).await.expect("apply");
        b.apply(writes).await.expect("apply");
        let (da, db) = (digest_at(&mut a, 41, vec![]).await, digest_at(&mut b, 41, vec![]).await);
        assert_eq!(da.root, db.root);
        assert_eq!(da.leaves.len(), 16);
        assert_eq!(da.records, 40);
        // A write after the entry does not change the digest taken at it.
        a.apply([write(42, set(b"later"))]).await.expect("apply");
        let digests = a.digests.clone().expect("digests");
        assert!(matches!(digests.progress(7, 41), DigestProgress::Done(d) if d.root == da.root));
        // One value changed behind Raft's back on b: the root, one leaf and
        // one key differ.
        b.apply([write(42, set(b"later"))]).await.expect("apply");
        let bad = &keys[5];
        let vnode = ring.vnode_of(bad);
        let stored = crate::storage::data_key(vnode, bad);
        let mut value = b_engine
            .db()
            .get_cf(b_engine.cf(CF_DATA), &stored)
            .expect("read")
            .expect("stored");
        *value.last_mut().expect("payload") ^= 1;
        b_engine
            .db()
            .put_cf(b_engine.cf(CF_DATA), &stored, value)
            .expect("write");
        let (da, db) = (
            digest_at(&mut a, 43, vec![vnode]).await,
            digest_at(&mut b, 43, vec![vnode]).await,
        );
        assert_ne!(da.root, db.root);
        let differing: Vec<VnodeId> = da
            .leaves
            .iter()
            .zip(&db.leaves)
            .filter(|(x, y)| x != y)
            .map(|(x, _)| x.0)
            .collect();
        assert_eq!(differing, vec![vnode]);
        let reports: BTreeMap<NodeId, ReplicaDigest> =
            [(1, da.clone()), (2, db.clone()), (3, da)].into_iter().collect();
        let verdict = redraft_common::consistency::compare(7, &reports, vec![], Some(&reports));
        assert_eq!(verdict.odd_one_out, Some(2));
        assert_eq!(verdict.vnodes, vec![vnode]);
        assert_eq!(verdict.keys, vec![(vnode, bad.clone(), vec![2])]);
    }

    #[tokio::test]
    async fn a_batch_entry_applies_each_write_with_its_own_answer() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (_engine, mut sm, _) = state_machine(&dir).await;
        let ring = Ring::new(16);
        let moved: BTreeSet<VnodeId> = (8..16).collect();
        let split = WriteOp::Split {
            child: 9,
            vnodes: moved.iter().copied().collect(),
        };
        sm.apply([write(1, split)]).await.expect("apply");
        let (mine, gone) = (key_where(&ring, |v| v < 8), key_where(&ring, |v| v >= 8));
        let batch = WriteOp::Many(vec![
            set(&mine),
            set(&gone),
            WriteOp::IncrBy {
                key: mine.clone(),
                delta: 1,
            },
        ]);
        let replies = sm.apply([write(2, batch)]).await.expect("apply");
        match &replies[..] {
            [ShardResponse::Many(each)] => match &each[..] {
                [ShardResponse::Reply(ok), ShardResponse::WrongShard, ShardResponse::Reply(Frame::Error(e))] => {
                    assert_eq!(*ok, Frame::ok());
                    assert!(e.contains("not an integer"), "{e}");
                }
                other => panic!("unexpected answers {other:?}"),
            },
            other => panic!("unexpected replies {other:?}"),
        }
    }

    #[tokio::test]
    async fn what_a_blocked_client_was_served_is_kept_and_travels_in_snapshots() {
        use redraft_common::ops::{BlockedClient, BlockedPop, PopKind};
        let dir = tempfile::tempdir().expect("temp dir");
        let (engine, mut sm, _) = state_machine(&dir).await;
        let push = WriteOp::Command {
            args: vec![b"RPUSH".to_vec(), b"q".to_vec(), b"job".to_vec()],
            seed: 0,
        };
        let client = |id| BlockedClient {
            id,
            pop: BlockedPop {
                keys: vec![b"q".to_vec()],
                kind: PopKind::List { left: true },
            },
            first: false,
        };
        sm.apply([write(1, push)]).await.expect("apply");
        let replies = sm
            .apply([write(2, WriteOp::ServeBlocked(vec![client(41), client(42)]))])
            .await
            .expect("apply");
        let got = Frame::Array(vec![Frame::bulk("q"), Frame::bulk("job")]);
        assert!(
            matches!(&replies[..], [ShardResponse::Reply(Frame::Array(a))] if a[..] == [got.clone(), Frame::Null]),
            "{replies:?}"
        );
        assert_eq!(served_reply(&engine, 7, 41), Some(got.clone()));
        assert_eq!(served_reply(&engine, 7, 42), None, "not served");
        // A replica installed from a snapshot knows it too.
        let snapshot = sm.build_snapshot().await.expect("build");
        let other = tempfile::tempdir().expect("temp dir");
        let (other_engine, mut installed, _) = state_machine(&other).await;
        let mut file = installed.begin_receiving_snapshot().await.expect("receive");
        let mut from = tokio::fs::File::from_std(snapshot.snapshot.into_std().await);
        tokio::io::copy(&mut from, &mut *file).await.expect("copy");
        installed.install_snapshot(&snapshot.meta, file).await.expect("install");
        assert_eq!(served_reply(&other_engine, 7, 41), Some(got));
    }

    #[tokio::test]
    async fn split_moves_ownership_creates_the_child_and_is_idempotent() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (engine, mut sm, mut reshaped) = state_machine(&dir).await;
        let voters: BTreeSet<NodeId> = [1, 2, 3].into_iter().collect();
        let nodes: BTreeMap<NodeId, BasicNode> = voters.iter().map(|v| (*v, BasicNode::new(format!("n{v}")))).collect();
        let members = entry(1, EntryPayload::Membership(Membership::new(vec![voters], nodes)));
        let split = || WriteOp::Split {
            child: 9,
            vnodes: (8..16).collect(),
        };
        let replies = sm.apply([members, write(2, split())]).await.expect("apply");
        assert!(matches!(&replies[1], ShardResponse::Reply(f) if *f == Frame::ok()));
        assert_eq!(*sm.owned().get(), (0..8).collect::<BTreeSet<VnodeId>>());
        assert_eq!(
            reshaped.try_recv().ok(),
            Some(Reshaped::SplitChild { parent: 7, child: 9 })
        );
        let child = group_record(&engine, 9).expect("child record");
        assert_eq!(child.vnodes, (8..16).collect::<Vec<_>>());
        assert_eq!(reshaped_at(&engine, 7), Some(2));
        // Applied again (a PD leader retrying): same answer, nothing changes.
        let replies = sm.apply([write(3, split())]).await.expect("apply");
        assert!(matches!(&replies[0], ShardResponse::Reply(f) if *f == Frame::ok()));
        assert!(reshaped.try_recv().is_err());
        // Ownership survives a restart of the state machine.
        drop(sm);
        let reopened = ShardStateMachine::open(
            7,
            1,
            engine.clone(),
            Arc::new(Ring::new(16)),
            Ownership::new(0..16),
            dir.path().join("snap"),
            None,
            Some(Arc::new(ElementHints::load(engine.db(), engine.cf(CF_DATA)))),
            None,
            None,
            None,
            None,
        )
        .expect("reopen");
        assert_eq!(reopened.owned().get().len(), 8);
    }
}

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
//! install when it reopens the group (resumable, never half-applied).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, RaftSnapshotBuilder, StorageError, StorageIOError};
use redraft_common::ids::{ShardId, VnodeId};
use redraft_common::keys::Ring;
use redraft_common::wire;
use redraft_raft_storage::engine::{CF_DATA, CF_META};
use redraft_raft_storage::snapshot::{self, SnapshotWriter};
use redraft_raft_storage::Engine;
use rocksdb::{IteratorMode, ReadOptions, WriteBatch};

use super::typ::{LogId, SnapshotMeta, StoredMembership};
use super::{ShardResponse, ShardTypes};
use crate::apply::{Keyspace, NotOwned};
use crate::storage::{vnode_end, vnode_start};

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
const MEMBERSHIP: &str = "membership";
const SNAPSHOT: &str = "snapshot";
const INSTALLING: &str = "installing";

type StorageResult<T> = Result<T, StorageError<u64>>;

fn io_err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// The state machine of one shard replica.
#[derive(Clone)]
pub struct ShardStateMachine {
    group: ShardId,
    engine: Engine,
    ring: Arc<Ring>,
    owned: Arc<BTreeSet<VnodeId>>,
    snapshot_dir: PathBuf,
    incoming: Option<PathBuf>,
}

impl ShardStateMachine {
    /// Opens the state machine of `group`, finishing an interrupted snapshot install.
    pub fn open(
        group: ShardId,
        engine: Engine,
        ring: Arc<Ring>,
        owned: Arc<BTreeSet<VnodeId>>,
        snapshot_dir: PathBuf,
    ) -> anyhow::Result<ShardStateMachine> {
        std::fs::create_dir_all(&snapshot_dir)?;
        let sm = ShardStateMachine {
            group,
            engine,
            ring,
            owned,
            snapshot_dir,
            incoming: None,
        };
        if let Some((meta, file)) = sm.read_meta::<(SnapshotMeta, String)>(INSTALLING) {
            tracing::warn!(shard_id = group, "resuming interrupted snapshot install");
            sm.install_file(&meta, &sm.snapshot_dir.join(file))?;
        }
        Ok(sm)
    }

    fn read_meta<T: serde::de::DeserializeOwned>(&self, item: &str) -> Option<T> {
        let db = self.engine.db();
        let bytes = db
            .get_cf(self.engine.cf(CF_META), group_meta_key(self.group, item))
            .unwrap_or_else(|e| panic!("RocksDB read failed: {e}"))?;
        Some(wire::decode(&bytes).unwrap_or_else(|e| panic!("corrupt group metadata {item}: {e}")))
    }

    fn put_meta<T: serde::Serialize>(&self, batch: &mut WriteBatch, item: &str, value: &T) {
        batch.put_cf(
            self.engine.cf(CF_META),
            group_meta_key(self.group, item),
            wire::encode(value),
        );
    }

    /// The vnodes this replica owns.
    pub fn owned(&self) -> &Arc<BTreeSet<VnodeId>> {
        &self.owned
    }

    /// Deletes the shard's data, metadata and snapshot files (replica removed).
    pub fn destroy(&self) -> anyhow::Result<()> {
        let db = self.engine.db();
        let mut batch = WriteBatch::default();
        for &vnode in self.owned.iter() {
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
        for &vnode in self.owned.iter() {
            batch.delete_range_cf(data, vnode_start(vnode), vnode_end(vnode));
        }
        let mut pending = 0;
        snapshot::for_each_record(path, |key, value| {
            batch.put_cf(data, key, value);
            pending += key.len() + value.len();
            if pending >= INSTALL_BATCH_BYTES {
                db.write(std::mem::take(&mut batch))?;
                pending = 0;
            }
            Ok(())
        })?;
        let previous = self.read_meta::<(SnapshotMeta, String)>(SNAPSHOT);
        self.put_meta(&mut batch, APPLIED, &meta.last_log_id);
        self.put_meta(&mut batch, MEMBERSHIP, &meta.last_membership);
        self.put_meta(&mut batch, SNAPSHOT, &(meta.clone(), file_name.clone()));
        batch.delete_cf(meta_cf, group_meta_key(self.group, INSTALLING));
        db.write_opt(batch, &sync)?;
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
        let name = self.snapshot_name(&applied.map_or(0, |l| l.index).to_string());
        let path = self.snapshot_dir.join(&name);
        let mut writer = SnapshotWriter::create(&path)?;
        for &vnode in self.owned.iter() {
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
        let mut keyspace = Keyspace::new(&db, data, &self.ring, &self.owned, 0);
        let mut replies = Vec::new();
        let mut last = None;
        let mut membership = None;
        for entry in entries {
            last = Some(entry.log_id);
            replies.push(match entry.payload {
                EntryPayload::Blank => ShardResponse::Reply(redraft_common::resp::Frame::Null),
                EntryPayload::Normal(request) => {
                    keyspace.set_now(request.now_ms);
                    match keyspace.write(&request.op) {
                        Ok(frame) => ShardResponse::Reply(frame),
                        Err(NotOwned) => ShardResponse::WrongShard,
                    }
                }
                EntryPayload::Membership(m) => {
                    tracing::info!(shard_id = self.group, index = entry.log_id.index, membership = %m, "membership changed");
                    membership = Some(StoredMembership::new(Some(entry.log_id), m));
                    ShardResponse::Reply(redraft_common::resp::Frame::Null)
                }
            });
        }
        let mut batch = keyspace.into_batch();
        if last.is_some() {
            self.put_meta(&mut batch, APPLIED, &last);
        }
        if let Some(m) = &membership {
            self.put_meta(&mut batch, MEMBERSHIP, m);
        }
        // A failed write would leave this replica behind its log: stop the node.
        db.write(batch)
            .unwrap_or_else(|e| panic!("RocksDB apply write failed: {e}"));
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
                engine.clone(),
                ring,
                Arc::new((0..16).collect()),
                dir.path().join("snap"),
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
}

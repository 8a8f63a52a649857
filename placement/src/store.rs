//! Durable storage of the placement group: the state machine over [`PdState`].
//!
//! The whole state, the applied log id and the membership are written as one
//! value in the `meta` column family: one atomic write, never out of step.
//! Snapshots are that same value. The Raft log is group 0 of the process's
//! [`redraft_raft_storage::LogStore`].
//!
//! PERSISTENCE. The value is written at most every [`PERSIST_EVERY`] of
//! applies, and always with a snapshot. A member that restarts reopens at the
//! last written applied index and applies the later entries again from its log
//! (applying is deterministic); the log is purged only up to a snapshot, and a
//! snapshot is written together with the state, so those entries are always
//! there. At 50,000 shards the value is about 1 MB: writing it on every apply
//! was most of the placement driver's CPU when hundreds of moves a minute each
//! applied two commands (the simulator measured it, docs/benchmarks.md).

use std::io::Cursor;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{BasicNode, EntryPayload, RaftSnapshotBuilder, StorageError, StorageIOError};
use redraft_common::wire;
use redraft_raft_storage::engine::CF_META;
use redraft_raft_storage::Engine;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::state::{PdCommand, PdReply, PdState};

openraft::declare_raft_types!(
    /// openraft type configuration of the placement group.
    pub PdTypes:
        D = PdCommand,
        R = PdReply,
        NodeId = u64,
        Node = BasicNode,
);

/// The placement group's Raft handle.
pub type PdRaft = openraft::Raft<PdTypes>;
type LogId = openraft::LogId<u64>;
type StoredMembership = openraft::StoredMembership<u64, BasicNode>;
type SnapshotMeta = openraft::SnapshotMeta<u64, BasicNode>;

const STATE_KEY: &[u8] = b"pd/state";
const SNAPSHOT_KEY: &[u8] = b"pd/snapshot";

/// The state is written after an apply when the last write is this old.
pub const PERSIST_EVERY: Duration = Duration::from_millis(500);

/// Everything the state machine persists, in one value.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Persisted {
    /// Last applied log id.
    pub applied: Option<LogId>,
    /// Last applied membership.
    pub membership: StoredMembership,
    /// The placement state.
    pub state: PdState,
}

/// The placement state machine; clones share the state.
#[derive(Clone)]
pub struct PdStore {
    engine: Engine,
    shared: Arc<RwLock<Persisted>>,
    version_tx: Arc<watch::Sender<u64>>,
    /// When the state was last written (`None`: not since opening).
    persisted_at: Arc<Mutex<Option<Instant>>>,
}

impl PdStore {
    /// Loads the persisted state; `version_tx` learns each new routing version.
    pub fn open(engine: Engine, version_tx: Arc<watch::Sender<u64>>) -> anyhow::Result<PdStore> {
        let persisted = match engine.db().get_cf(engine.cf(CF_META), STATE_KEY)? {
            Some(bytes) => wire::decode(&bytes)?,
            None => Persisted::default(),
        };
        version_tx.send_replace(persisted.state.table.version);
        Ok(PdStore {
            engine,
            shared: Arc::new(RwLock::new(persisted)),
            version_tx,
            persisted_at: Arc::default(),
        })
    }

    /// A copy of the current placement state.
    pub fn state(&self) -> PdState {
        self.shared.read().expect("pd state lock").state.clone()
    }

    fn persist(&self, persisted: &Persisted) -> Result<(), StorageError<u64>> {
        self.engine
            .db()
            .put_cf(self.engine.cf(CF_META), STATE_KEY, wire::encode(persisted))
            .map_err(|e| StorageIOError::write_state_machine(&e))?;
        *self.persisted_at.lock().expect("persisted_at lock") = Some(Instant::now());
        Ok(())
    }

    /// Whether the state is due to be written after an apply.
    fn persist_due(&self) -> bool {
        self.persisted_at
            .lock()
            .expect("persisted_at lock")
            .is_none_or(|at| at.elapsed() >= PERSIST_EVERY)
    }
}

impl RaftSnapshotBuilder<PdTypes> for PdStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<PdTypes>, StorageError<u64>> {
        let persisted = self.shared.read().expect("pd state lock").clone();
        // The state is written with every snapshot, so the log entries after
        // the written state are never purged (see PERSISTENCE above).
        self.persist(&persisted)?;
        let data = wire::encode(&persisted);
        let meta = SnapshotMeta {
            last_log_id: persisted.applied,
            last_membership: persisted.membership.clone(),
            snapshot_id: format!("pd-{}", persisted.applied.map_or(0, |l| l.index)),
        };
        self.engine
            .db()
            .put_cf(
                self.engine.cf(CF_META),
                SNAPSHOT_KEY,
                wire::encode(&(meta.clone(), data.clone())),
            )
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<PdTypes> for PdStore {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError<u64>> {
        let p = self.shared.read().expect("pd state lock");
        Ok((p.applied, p.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<PdReply>, StorageError<u64>>
    where
        I: IntoIterator<Item = openraft::Entry<PdTypes>> + Send,
        I::IntoIter: Send,
    {
        let mut replies = Vec::new();
        let due = self.persist_due();
        let (snapshot, version) = {
            let mut p = self.shared.write().expect("pd state lock");
            for entry in entries {
                p.applied = Some(entry.log_id);
                replies.push(match entry.payload {
                    EntryPayload::Blank => PdReply::Done,
                    EntryPayload::Normal(command) => p.state.apply(&command),
                    EntryPayload::Membership(m) => {
                        p.membership = StoredMembership::new(Some(entry.log_id), m);
                        PdReply::Done
                    }
                });
            }
            (due.then(|| p.clone()), p.state.table.version)
        };
        if let Some(snapshot) = snapshot {
            self.persist(&snapshot)?;
        }
        self.version_tx.send_if_modified(|v| {
            let changed = *v != version;
            *v = version;
            changed
        });
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError<u64>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<u64>> {
        let data = snapshot.into_inner();
        let persisted: Persisted =
            wire::decode(&data).map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        self.persist(&persisted)?;
        self.engine
            .db()
            .put_cf(
                self.engine.cf(CF_META),
                SNAPSHOT_KEY,
                wire::encode(&(meta.clone(), data)),
            )
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        let version = persisted.state.table.version;
        *self.shared.write().expect("pd state lock") = persisted;
        self.version_tx.send_replace(version);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<PdTypes>>, StorageError<u64>> {
        let bytes = self
            .engine
            .db()
            .get_cf(self.engine.cf(CF_META), SNAPSHOT_KEY)
            .map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        let Some(bytes) = bytes else { return Ok(None) };
        let (meta, data): (SnapshotMeta, Vec<u8>) =
            wire::decode(&bytes).map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

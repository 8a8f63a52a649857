//! This node's side of online backups ([`redraft_common::backup`]).
//!
//! When a replica applies a backup's barrier entry, the state machine writes
//! the entries before it and calls [`Backups::start`], which
//! - holds the shard's answers to clients (see [`Backups::hold_answers`])
//!   until the placement driver releases the backup or the barrier's
//!   `hold_ms` has passed, so nothing written after the barrier is seen
//!   before every shard's barrier is in its log;
//! - takes a RocksDB snapshot (the shard's data exactly as of the barrier)
//!   and keeps it in a reader thread of its own, which serves the backup's
//!   chunks from it ([`Backups::read`]) until the backup is done, or idle for
//!   [`READER_IDLE`]. Every replica does the same, so a backup reads a shard
//!   from whichever replica answers, and a replica that dies mid-backup is
//!   replaced by another one at the same index.
//!
//! Holds and readers live in memory: a node that restarts forgets them (its
//! replicas then answer `Unknown` for the backup, and the reader moves on).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use redraft_common::backup::{Barrier, Chunk, Record};
use redraft_common::ids::{ShardId, VnodeId};
use redraft_common::keys::Ring;
use redraft_common::wire::NodeResponse;
use redraft_raft_storage::engine::CF_DATA;
use redraft_raft_storage::Engine;
use rocksdb::{IteratorMode, ReadOptions};
use tokio::sync::{oneshot, watch};

use crate::apply::Keyspace;
use crate::storage::{key_records, user_key, Kind, Value};

/// A reader nobody asked anything for this long drops its snapshot.
pub const READER_IDLE: Duration = Duration::from_secs(600);

/// Released backups remembered, so a replica applying a barrier late holds nothing.
const RELEASED_KEPT: usize = 64;

/// A chunk request: where to start, about how many bytes, where the answer goes.
type ChunkRequest = (Option<Vec<u8>>, u32, oneshot::Sender<Chunk>);

struct Hold {
    backup: u64,
    until: Instant,
    /// Dropped at release: waiters see their receivers close.
    _released: watch::Sender<()>,
    released: watch::Receiver<()>,
}

#[derive(Default)]
struct State {
    holds: HashMap<ShardId, Hold>,
    released: VecDeque<u64>,
    readers: HashMap<(ShardId, u64), mpsc::Sender<ChunkRequest>>,
}

/// The backups this node's replicas take part in.
#[derive(Default)]
pub struct Backups {
    /// Holds in place: answers skip the lock while there are none.
    holding: AtomicUsize,
    state: Mutex<State>,
}

impl Backups {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("backups lock")
    }

    /// Starts `group`'s part of a backup at its barrier (log index `index`):
    /// holds the shard's answers and keeps a snapshot of `vnodes` for the
    /// backup's reader; returns once the snapshot is taken.
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        self: &Arc<Self>,
        engine: &Engine,
        ring: Arc<Ring>,
        group: ShardId,
        index: u64,
        barrier: &Barrier,
        vnodes: BTreeSet<VnodeId>,
        now_ms: u64,
    ) {
        {
            let mut state = self.state();
            if !state.released.contains(&barrier.id) {
                let (sender, receiver) = watch::channel(());
                let hold = Hold {
                    backup: barrier.id,
                    until: Instant::now() + Duration::from_millis(u64::from(barrier.hold_ms)),
                    _released: sender,
                    released: receiver,
                };
                if state.holds.insert(group, hold).is_none() {
                    self.holding.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
        let (requests, incoming) = mpsc::channel::<ChunkRequest>();
        let (taken, snapshot_taken) = oneshot::channel();
        let engine = engine.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("backup-{group}"))
            .spawn(move || {
                let snapshot = engine.db().snapshot();
                let _ = taken.send(());
                while let Ok((after, max_bytes, answer)) = incoming.recv_timeout(READER_IDLE) {
                    let chunk = read_chunk(&engine, &snapshot, &ring, &vnodes, now_ms, after, max_bytes);
                    let _ = answer.send(chunk);
                }
            });
        match spawned {
            Ok(_) => {
                let _ = snapshot_taken.await;
                tracing::info!(shard_id = group, index, backup = barrier.id, "backup snapshot taken");
                self.state().readers.insert((group, barrier.id), requests);
            }
            Err(e) => tracing::error!(shard_id = group, error = %e, "could not start a backup reader"),
        }
    }

    /// Waits while `shard`'s answers are held for a backup's cut. Every
    /// answer to a client (a write's outcome, a read's value, a blocked pop)
    /// passes through here before it leaves the node.
    pub async fn hold_answers(&self, shard: ShardId) {
        if self.holding.load(Ordering::SeqCst) == 0 {
            return;
        }
        let (mut released, until) = match self.state().holds.get(&shard) {
            Some(hold) => (hold.released.clone(), hold.until),
            None => return,
        };
        if tokio::time::timeout_at(until.into(), released.changed()).await.is_ok() {
            return;
        }
        let mut state = self.state();
        if state.holds.get(&shard).is_some_and(|h| h.until <= Instant::now()) {
            let hold = state.holds.remove(&shard).expect("checked");
            self.holding.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!(
                shard_id = shard,
                backup = hold.backup,
                "backup hold timed out before its release"
            );
        }
    }

    /// Ends the holds of `backup`; with `done`, drops its snapshots too.
    pub fn release(&self, backup: u64, done: bool) {
        let mut state = self.state();
        if !state.released.contains(&backup) {
            state.released.push_back(backup);
            if state.released.len() > RELEASED_KEPT {
                state.released.pop_front();
            }
        }
        let before = state.holds.len();
        state.holds.retain(|_, hold| hold.backup != backup);
        self.holding.fetch_sub(before - state.holds.len(), Ordering::SeqCst);
        if done {
            state.readers.retain(|(_, b), _| *b != backup);
        }
    }

    /// The next chunk of `shard`'s part of `backup`.
    pub async fn read(&self, shard: ShardId, backup: u64, after: Option<Vec<u8>>, max_bytes: u32) -> NodeResponse {
        let reader = self.state().readers.get(&(shard, backup)).cloned();
        let no_snapshot = || NodeResponse::Unknown(format!("no snapshot of shard {shard} for backup {backup} here"));
        let Some(reader) = reader else {
            return no_snapshot();
        };
        let (answer, chunk) = oneshot::channel();
        if reader.send((after, max_bytes, answer)).is_err() {
            self.state().readers.remove(&(shard, backup));
            return no_snapshot();
        }
        match chunk.await {
            Ok(chunk) => NodeResponse::BackupChunk(chunk),
            Err(_) => no_snapshot(),
        }
    }
}

/// The keys of `vnodes` after `after` as `snapshot` holds them, whole, until
/// about `max_bytes` of payload (at least one key).
fn read_chunk(
    engine: &Engine,
    snapshot: &rocksdb::Snapshot<'_>,
    ring: &Ring,
    vnodes: &BTreeSet<VnodeId>,
    now_ms: u64,
    after: Option<Vec<u8>>,
    max_bytes: u32,
) -> Chunk {
    let cf = engine.cf(CF_DATA);
    let mut keyspace = Keyspace::new(engine.db(), cf, ring, vnodes, now_ms).at_snapshot(snapshot);
    let first_vnode = after
        .as_ref()
        .map_or(0, |a| u16::from_be_bytes([a[0], a.get(1).copied().unwrap_or(0)]));
    let mut chunk = Chunk::default();
    let mut bytes = 0usize;
    for &vnode in vnodes.range(first_vnode..) {
        let (mut start, end) = key_records(vnode);
        if let Some(after) = after.as_ref().filter(|a| a.starts_with(&vnode.to_be_bytes())) {
            start = after.clone();
            start.push(0);
        }
        let mut options = ReadOptions::default();
        options.set_iterate_upper_bound(end);
        options.fill_cache(false);
        let iter = snapshot.iterator_cf_opt(cf, options, IteratorMode::From(&start, rocksdb::Direction::Forward));
        for item in iter {
            let (skey, value) = item.unwrap_or_else(|e| panic!("RocksDB read failed: {e}"));
            let stored = Value::decode(&value);
            if stored.is_expired(now_ms) {
                continue;
            }
            // A short string is whole in its key record; a long one's chunks
            // and a collection's elements are read through the keyspace.
            let record = match stored.kind {
                Kind::String if !stored.chunked => Some(Record {
                    key: user_key(&skey).to_vec(),
                    expires_at_ms: (stored.expires_at != 0).then_some(stored.expires_at as i64),
                    payload: redraft_common::rdb::dump(&redraft_common::rdb::Value::String(stored.payload)),
                }),
                _ => keyspace.backup_record(user_key(&skey)),
            };
            if let Some(record) = record {
                bytes += record.key.len() + record.payload.len();
                chunk.records.push(record);
            }
            if bytes >= max_bytes as usize {
                chunk.next = Some(skey.to_vec());
                return chunk;
            }
        }
    }
    chunk
}

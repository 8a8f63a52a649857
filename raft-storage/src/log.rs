//! Raft log storage for many groups in one RocksDB, with group commit.
//!
//! [`LogStore`] implements openraft's v2 `RaftLogStorage` for one group. Every
//! mutation (append, vote, truncate, purge) is handed to the process-wide
//! [`Committer`], a thread that drains whatever mutations are queued (from any
//! group), writes them as one `WriteBatch`, fsyncs once and then releases all
//! their waiters. A node with many busy groups therefore pays one fsync per batch
//! window, not one per group.
//!
//! ORDERING. `append` returns as soon as its entries are queued and tells openraft
//! of durability through the `LogFlushed` callback, which the committer thread
//! calls in queue order. Until then the entries sit in the group's `pending` map,
//! which readers consult, so the leader can replicate an entry while its own
//! fsync is under way and a group can have several appends in flight (larger
//! batches). Truncations drop pending entries at once and queue their deletion
//! behind the appends they undo; the single committer queue keeps that order.
//!
//! PURGE. A sync batch also syncs the RocksDB WAL written before it, including
//! state-machine writes made without fsync. Purge goes through the committer, so
//! logs are never deleted before the applied state they produced is durable.

use std::fmt::Debug;
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{LogId, OptionalSend, RaftLogId, RaftLogReader, RaftTypeConfig, StorageError, StorageIOError, Vote};
use rocksdb::{Direction, IteratorMode, WriteBatch, WriteOptions, DB};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::engine::{CF_RAFT_LOG, CF_RAFT_STATE};

/// Mutations waiting for the committer. Bounded so that a stalled disk pushes back
/// on Raft instead of queueing without limit; 4096 covers thousands of groups each
/// with one batch in flight.
const COMMIT_QUEUE: usize = 4096;

/// One mutation of the log column families.
#[derive(Debug)]
pub enum LogWrite {
    /// Put `key = value` into column family `cf`.
    Put {
        cf: &'static str,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    /// Delete `[from, to)` in column family `cf`.
    DeleteRange {
        cf: &'static str,
        from: Vec<u8>,
        to: Vec<u8>,
    },
}

/// What the committer does once a request's batch is written.
pub type Completion = Box<dyn FnOnce(Result<(), String>) + Send>;

struct CommitRequest {
    writes: Vec<LogWrite>,
    done: Completion,
}

/// Handle to the process's committer thread.
#[derive(Clone)]
pub struct Committer {
    queue: mpsc::Sender<CommitRequest>,
}

impl Committer {
    /// Starts the committer thread; `sync` makes every batch durable before release.
    ///
    /// The thread holds the database only while it writes a batch (a `Weak`
    /// otherwise), so the database closes in whichever thread drops the engine
    /// last, never in this background thread while the process exits.
    pub fn start(db: Arc<DB>, sync: bool) -> std::io::Result<Committer> {
        let (queue, mut rx) = mpsc::channel::<CommitRequest>(COMMIT_QUEUE);
        let weak = Arc::downgrade(&db);
        drop(db);
        std::thread::Builder::new()
            .name("raft-log-commit".into())
            .spawn(move || {
                let mut opts = WriteOptions::default();
                opts.set_sync(sync);
                while let Some(first) = rx.blocking_recv() {
                    let Some(db) = weak.upgrade() else {
                        (first.done)(Err("the database is closed".into()));
                        continue;
                    };
                    let mut waiters = Vec::new();
                    let mut batch = WriteBatch::default();
                    let mut next = Some(first);
                    while let Some(request) = next {
                        for write in &request.writes {
                            match write {
                                LogWrite::Put { cf, key, value } => {
                                    batch.put_cf(db.cf_handle(cf).expect("log column family"), key, value)
                                }
                                LogWrite::DeleteRange { cf, from, to } => {
                                    batch.delete_range_cf(db.cf_handle(cf).expect("log column family"), from, to)
                                }
                            }
                        }
                        waiters.push(request.done);
                        next = if waiters.len() < COMMIT_QUEUE {
                            rx.try_recv().ok()
                        } else {
                            None
                        };
                    }
                    let started = std::time::Instant::now();
                    let result = db.write_opt(batch, &opts).map_err(|e| e.to_string());
                    crate::metrics::LOG_WRITE_SECONDS.observe(started.elapsed().as_secs_f64());
                    crate::metrics::LOG_BATCH_REQUESTS.observe(waiters.len() as f64);
                    for waiter in waiters {
                        waiter(result.clone());
                    }
                }
            })?;
        Ok(Committer { queue })
    }

    /// Writes `writes` atomically and durably (per the fsync policy), together with
    /// whatever else is queued.
    pub async fn commit(&self, writes: Vec<LogWrite>) -> Result<(), String> {
        let (done, wait) = oneshot::channel();
        let done: Completion = Box::new(move |result| {
            let _ = done.send(result);
        });
        self.submit(writes, done).await?;
        wait.await.map_err(|_| "log committer stopped".to_string())?
    }

    /// Queues `writes`; the committer thread calls `done` once they are written,
    /// in submission order. Returns as soon as the writes are queued.
    pub async fn submit(&self, writes: Vec<LogWrite>, done: Completion) -> Result<(), String> {
        self.queue
            .send(CommitRequest { writes, done })
            .await
            .map_err(|_| "log committer stopped".to_string())
    }
}

/// `group | index`, big-endian.
pub fn log_key(group: u64, index: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(16);
    key.extend_from_slice(&group.to_be_bytes());
    key.extend_from_slice(&index.to_be_bytes());
    key
}

fn state_key(group: u64, tag: u8) -> Vec<u8> {
    let mut key = group.to_be_bytes().to_vec();
    key.push(tag);
    key
}

const TAG_VOTE: u8 = b'v';
const TAG_PURGED: u8 = b'p';

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(value, bincode::config::standard()).expect("raft types always encode")
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .map(|(v, _)| v)
        .map_err(|e| e.to_string())
}

/// Entries handed to the committer but not yet written, by index: readers see
/// them at once (the leader replicates an entry while its own fsync is under way).
type Pending = Arc<std::sync::Mutex<std::collections::BTreeMap<u64, Vec<u8>>>>;

/// The Raft log of one group.
pub struct LogStore<C> {
    group: u64,
    db: Arc<DB>,
    committer: Committer,
    pending: Pending,
    _types: PhantomData<C>,
}

impl<C> Clone for LogStore<C> {
    fn clone(&self) -> Self {
        LogStore {
            group: self.group,
            db: self.db.clone(),
            committer: self.committer.clone(),
            pending: self.pending.clone(),
            _types: PhantomData,
        }
    }
}

impl<C: RaftTypeConfig> LogStore<C> {
    pub(crate) fn new(group: u64, db: Arc<DB>, committer: Committer) -> LogStore<C> {
        LogStore {
            group,
            db,
            committer,
            pending: Pending::default(),
            _types: PhantomData,
        }
    }

    /// Deletes the group's whole log and Raft state (when a replica is removed).
    pub async fn destroy(&self) -> Result<(), String> {
        let g = self.group;
        self.committer
            .commit(vec![
                LogWrite::DeleteRange {
                    cf: CF_RAFT_LOG,
                    from: log_key(g, 0),
                    to: log_key(g + 1, 0),
                },
                LogWrite::DeleteRange {
                    cf: CF_RAFT_STATE,
                    from: state_key(g, 0),
                    to: state_key(g + 1, 0),
                },
            ])
            .await
    }

    fn read_state<T: DeserializeOwned>(&self, tag: u8) -> Result<Option<T>, StorageError<C::NodeId>> {
        let cf = self.db.cf_handle(CF_RAFT_STATE).expect("cf");
        let bytes = self
            .db
            .get_cf(cf, state_key(self.group, tag))
            .map_err(|e| StorageIOError::read(&e))?;
        bytes
            .map(|b| decode(&b).map_err(|e| StorageIOError::read(&std::io::Error::other(e)).into()))
            .transpose()
    }

    async fn commit(&self, writes: Vec<LogWrite>) -> Result<(), std::io::Error> {
        self.committer.commit(writes).await.map_err(std::io::Error::other)
    }
}

impl<C> RaftLogReader<C> for LogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Serialize + DeserializeOwned,
{
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<C::Entry>, StorageError<C::NodeId>> {
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i + 1,
            Bound::Unbounded => 0,
        };
        let cf = self.db.cf_handle(CF_RAFT_LOG).expect("cf");
        let from = log_key(self.group, start);
        let mut entries = Vec::new();
        for item in self.db.iterator_cf(cf, IteratorMode::From(&from, Direction::Forward)) {
            let (key, value) = item.map_err(|e| StorageIOError::read_logs(&e))?;
            if key.len() != 16 || key[..8] != self.group.to_be_bytes() {
                break;
            }
            let index = u64::from_be_bytes(key[8..16].try_into().expect("8 bytes"));
            if !range.contains(&index) {
                break;
            }
            entries.push((index, value.to_vec()));
        }
        // Entries still on their way to disk are newer than anything stored.
        let mut merged: std::collections::BTreeMap<u64, Vec<u8>> = entries.into_iter().collect();
        for (index, value) in self.pending.lock().expect("pending lock").range(start..) {
            if range.contains(index) {
                merged.insert(*index, value.clone());
            }
        }
        merged
            .into_values()
            .map(|v| decode(&v).map_err(|e| StorageIOError::read_logs(&std::io::Error::other(e)).into()))
            .collect()
    }
}

impl<C> RaftLogStorage<C> for LogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Serialize + DeserializeOwned,
{
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<C>, StorageError<C::NodeId>> {
        let cf = self.db.cf_handle(CF_RAFT_LOG).expect("cf");
        let upper = log_key(self.group, u64::MAX);
        let mut iter = self.db.iterator_cf(cf, IteratorMode::From(&upper, Direction::Reverse));
        let mut last_log_id = None;
        if let Some(item) = iter.next() {
            let (key, value) = item.map_err(|e| StorageIOError::read_logs(&e))?;
            if key.len() == 16 && key[..8] == self.group.to_be_bytes() {
                let entry: C::Entry =
                    decode(&value).map_err(|e| StorageIOError::read_logs(&std::io::Error::other(e)))?;
                last_log_id = Some(entry.get_log_id().clone());
            }
        }
        let last_purged_log_id: Option<LogId<C::NodeId>> = self.read_state(TAG_PURGED)?;
        let last_log_id = last_log_id.or_else(|| last_purged_log_id.clone());
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<C::NodeId>) -> Result<(), StorageError<C::NodeId>> {
        self.commit(vec![LogWrite::Put {
            cf: CF_RAFT_STATE,
            key: state_key(self.group, TAG_VOTE),
            value: encode(vote),
        }])
        .await
        .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<C::NodeId>>, StorageError<C::NodeId>> {
        self.read_state(TAG_VOTE)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<C>) -> Result<(), StorageError<C::NodeId>>
    where
        I: IntoIterator<Item = C::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut writes = Vec::new();
        let mut written = Vec::new();
        {
            let mut pending = self.pending.lock().expect("pending lock");
            for entry in entries {
                let index = entry.get_log_id().index;
                let value = encode(&entry);
                pending.insert(index, value.clone());
                written.push((index, value.clone()));
                writes.push(LogWrite::Put {
                    cf: CF_RAFT_LOG,
                    key: log_key(self.group, index),
                    value,
                });
            }
        }
        // Return once queued: openraft replicates meanwhile and learns of
        // durability through the callback, which the committer calls in order.
        let pending = self.pending.clone();
        let done: Completion = Box::new(move |result: Result<(), String>| {
            let mut pending = pending.lock().expect("pending lock");
            for (index, value) in written {
                if pending.get(&index) == Some(&value) {
                    pending.remove(&index);
                }
            }
            drop(pending);
            callback.log_io_completed(result.map_err(std::io::Error::other));
        });
        self.committer
            .submit(writes, done)
            .await
            .map_err(|e| StorageIOError::write_logs(&std::io::Error::other(e)).into())
    }

    async fn truncate(&mut self, log_id: LogId<C::NodeId>) -> Result<(), StorageError<C::NodeId>> {
        let g = self.group;
        self.pending.lock().expect("pending lock").split_off(&log_id.index);
        self.commit(vec![LogWrite::DeleteRange {
            cf: CF_RAFT_LOG,
            from: log_key(g, log_id.index),
            to: log_key(g + 1, 0),
        }])
        .await
        .map_err(|e| StorageIOError::write_logs(&e).into())
    }

    async fn purge(&mut self, log_id: LogId<C::NodeId>) -> Result<(), StorageError<C::NodeId>> {
        let g = self.group;
        self.commit(vec![
            LogWrite::Put {
                cf: CF_RAFT_STATE,
                key: state_key(g, TAG_PURGED),
                value: encode(&log_id),
            },
            LogWrite::DeleteRange {
                cf: CF_RAFT_LOG,
                from: log_key(g, 0),
                to: log_key(g, log_id.index + 1),
            },
        ])
        .await
        .map_err(|e| StorageIOError::write_logs(&e).into())
    }
}

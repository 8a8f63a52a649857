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
//! calls in queue order. Until then the entries sit in the group's entry cache,
//! which readers consult, and other groups' appends join the same batch. The
//! leader's fsync does not overlap replication: openraft 0.9.25's RaftCore
//! awaits the callback (`append_to_log`) before it runs its next command, the
//! `Replicate` of the same entry included. Truncations drop cached entries at once and queue their deletion
//! behind the appends they undo; the single committer queue keeps that order.
//!
//! ENTRY CACHE. The newest entries of each group stay in memory, decoded
//! ([`EntryCache`], like TiKV's entry cache): replication and apply read what was
//! just appended, so they are served without a RocksDB iterator or a decode. A
//! group keeps at most [`CACHE_BYTES`] of entries already durable; entries not
//! yet durable always stay. Reads the cache cannot answer whole (a lagging
//! follower, a restart) go to RocksDB.
//!
//! FSYNC. Each batch is written, then the WAL is synced (`SyncWAL`, outside
//! RocksDB's write queue, so state-machine writes proceed meanwhile). The sync
//! covers everything in the WAL before it, including state-machine writes made
//! without fsync.
//!
//! PURGE. Purge goes through the committer, so
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
                // The batch is written without sync and the WAL synced after
                // (below): RocksDB syncs the WAL outside its write queue, so
                // state-machine writes (never synced) are not held behind the
                // fsync as they would be in a synced write group.
                let opts = WriteOptions::default();
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
                    let result = db
                        .write_opt(batch, &opts)
                        .and_then(|()| if sync { db.flush_wal(true) } else { Ok(()) })
                        .map_err(|e| e.to_string());
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

/// Durable entries a group keeps in memory, at most (entries not yet durable
/// are kept whatever their size). A few entries in flight per group fit; a
/// thousand idle groups keep at most 64 MB.
pub const CACHE_BYTES: usize = 64 * 1024;

struct Cached<E> {
    entry: E,
    bytes: usize,
    durable: bool,
}

/// A group's newest entries, decoded, by index: a contiguous run ending at the
/// group's last entry (appends add at the end, truncations cut the end,
/// purges and eviction cut the front).
pub struct EntryCache<C: RaftTypeConfig> {
    entries: std::collections::BTreeMap<u64, Cached<C::Entry>>,
    durable_bytes: usize,
}

impl<C: RaftTypeConfig> Default for EntryCache<C> {
    fn default() -> Self {
        EntryCache {
            entries: Default::default(),
            durable_bytes: 0,
        }
    }
}

impl<C: RaftTypeConfig> EntryCache<C>
where
    C::Entry: Clone,
{
    fn insert(&mut self, index: u64, entry: C::Entry, bytes: usize) {
        if self
            .entries
            .last_key_value()
            .is_some_and(|(&last, _)| last + 1 != index)
        {
            // Not the next index (after a snapshot install): start again,
            // keeping what readers still need from memory.
            self.cut_from(index);
            self.evict(0);
        }
        self.entries.insert(
            index,
            Cached {
                entry,
                bytes,
                durable: false,
            },
        );
    }

    /// Marks `log_id` durable if it is still the cached entry at its index.
    fn made_durable(&mut self, log_id: &LogId<C::NodeId>) {
        if let Some(cached) = self.entries.get_mut(&log_id.index) {
            if !cached.durable && cached.entry.get_log_id() == log_id {
                cached.durable = true;
                self.durable_bytes += cached.bytes;
            }
        }
    }

    /// Drops entries from `index` on (a truncation).
    fn cut_from(&mut self, index: u64) {
        for (_, cached) in self.entries.split_off(&index) {
            if cached.durable {
                self.durable_bytes -= cached.bytes;
            }
        }
    }

    /// Drops entries up to `index` (a purge).
    fn cut_through(&mut self, index: u64) {
        let kept = self.entries.split_off(&(index + 1));
        for (_, cached) in std::mem::replace(&mut self.entries, kept) {
            if cached.durable {
                self.durable_bytes -= cached.bytes;
            }
        }
    }

    /// Drops the oldest durable entries while more than `budget` bytes of
    /// durable entries are kept; stops at the first entry not yet durable.
    fn evict(&mut self, budget: usize) {
        while self.durable_bytes > budget {
            match self.entries.first_entry() {
                Some(first) if first.get().durable => {
                    self.durable_bytes -= first.remove().bytes;
                }
                _ => break,
            }
        }
    }

    /// The entries of `range` (from `start`) if the cache holds all of them.
    fn read(&self, start: u64, range: &impl RangeBounds<u64>) -> Option<Vec<C::Entry>> {
        let (&first, _) = self.entries.first_key_value()?;
        if first > start {
            return None;
        }
        let mut out = Vec::new();
        for (expected, (&index, cached)) in (start..).zip(self.entries.range(start..)) {
            if !range.contains(&index) {
                break;
            }
            if index != expected {
                return None;
            }
            out.push(cached.entry.clone());
        }
        Some(out)
    }
}

type Cache<C> = Arc<std::sync::Mutex<EntryCache<C>>>;

/// The Raft log of one group.
pub struct LogStore<C: RaftTypeConfig> {
    group: u64,
    db: Arc<DB>,
    committer: Committer,
    cache: Cache<C>,
    _types: PhantomData<C>,
}

impl<C: RaftTypeConfig> Clone for LogStore<C> {
    fn clone(&self) -> Self {
        LogStore {
            group: self.group,
            db: self.db.clone(),
            committer: self.committer.clone(),
            cache: self.cache.clone(),
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
            cache: Cache::<C>::default(),
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
    C::Entry: Serialize + DeserializeOwned + Clone,
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
        if let Some(entries) = self.cache.lock().expect("entry cache lock").read(start, &range) {
            return Ok(entries);
        }
        let cf = self.db.cf_handle(CF_RAFT_LOG).expect("cf");
        let from = log_key(self.group, start);
        let mut merged = std::collections::BTreeMap::new();
        for item in self.db.iterator_cf(cf, IteratorMode::From(&from, Direction::Forward)) {
            let (key, value) = item.map_err(|e| StorageIOError::read_logs(&e))?;
            if key.len() != 16 || key[..8] != self.group.to_be_bytes() {
                break;
            }
            let index = u64::from_be_bytes(key[8..16].try_into().expect("8 bytes"));
            if !range.contains(&index) {
                break;
            }
            let entry: C::Entry = decode(&value).map_err(|e| StorageIOError::read_logs(&std::io::Error::other(e)))?;
            merged.insert(index, entry);
        }
        // Entries still on their way to disk are newer than anything stored.
        let cache = self.cache.lock().expect("entry cache lock");
        for (index, cached) in cache.entries.range(start..) {
            if range.contains(index) {
                merged.insert(*index, cached.entry.clone());
            }
        }
        Ok(merged.into_values().collect())
    }
}

impl<C> RaftLogStorage<C> for LogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Serialize + DeserializeOwned + Clone,
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
            let mut cache = self.cache.lock().expect("entry cache lock");
            for entry in entries {
                let log_id = entry.get_log_id().clone();
                let value = encode(&entry);
                cache.insert(log_id.index, entry, value.len());
                writes.push(LogWrite::Put {
                    cf: CF_RAFT_LOG,
                    key: log_key(self.group, log_id.index),
                    value,
                });
                written.push(log_id);
            }
        }
        // Return once queued: openraft replicates meanwhile and learns of
        // durability through the callback, which the committer calls in order.
        let cache = self.cache.clone();
        let done: Completion = Box::new(move |result: Result<(), String>| {
            if result.is_ok() {
                let mut cache = cache.lock().expect("entry cache lock");
                for log_id in &written {
                    cache.made_durable(log_id);
                }
                cache.evict(CACHE_BYTES);
            }
            callback.log_io_completed(result.map_err(std::io::Error::other));
        });
        self.committer
            .submit(writes, done)
            .await
            .map_err(|e| StorageIOError::write_logs(&std::io::Error::other(e)).into())
    }

    async fn truncate(&mut self, log_id: LogId<C::NodeId>) -> Result<(), StorageError<C::NodeId>> {
        let g = self.group;
        self.cache.lock().expect("entry cache lock").cut_from(log_id.index);
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
        self.cache.lock().expect("entry cache lock").cut_through(log_id.index);
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

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, Entry, EntryPayload};

    use super::*;

    openraft::declare_raft_types!(
        Types:
            D = u64,
            R = (),
            SnapshotData = std::io::Cursor<Vec<u8>>,
    );

    fn entry(term: u64, index: u64) -> Entry<Types> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Normal(index),
        }
    }

    fn indexes(entries: Option<Vec<Entry<Types>>>) -> Option<Vec<u64>> {
        entries.map(|e| e.iter().map(|e| e.log_id.index).collect())
    }

    #[test]
    fn entry_cache_keeps_undurable_entries_and_answers_only_whole_ranges() {
        let mut cache = EntryCache::<Types>::default();
        for i in 1..=10 {
            cache.insert(i, entry(1, i), 100);
        }
        // Nothing is durable yet: nothing may be evicted.
        cache.evict(0);
        assert_eq!(indexes(cache.read(1, &(1..))), Some((1..=10).collect()));
        for i in 1..=6 {
            cache.made_durable(&entry(1, i).log_id);
        }
        // A stale completion (other term) does not count.
        cache.made_durable(&entry(2, 7).log_id);
        cache.evict(250);
        // 6 x 100 durable bytes, budget 250: entries 1..=4 go, 5 and 6 stay.
        assert_eq!(indexes(cache.read(5, &(5..8))), Some(vec![5, 6, 7]));
        assert_eq!(indexes(cache.read(4, &(4..8))), None, "4 is gone: read from disk");
        // A truncation drops the end; the next append follows it.
        cache.cut_from(8);
        cache.insert(8, entry(2, 8), 100);
        assert_eq!(indexes(cache.read(6, &(6..))), Some(vec![6, 7, 8]));
        assert_eq!(cache.read(8, &(8..)).unwrap()[0].log_id.leader_id.term, 2);
        // A purge drops the front.
        cache.cut_through(6);
        assert_eq!(indexes(cache.read(6, &(6..))), None);
        assert_eq!(indexes(cache.read(7, &(7..=7))), Some(vec![7]));
        // An append after a gap (a snapshot installed) starts a new run.
        cache.made_durable(&entry(1, 7).log_id);
        cache.made_durable(&entry(2, 8).log_id);
        cache.insert(100, entry(3, 100), 100);
        assert_eq!(indexes(cache.read(7, &(7..))), None);
        assert_eq!(indexes(cache.read(100, &(100..))), Some(vec![100]));
        assert_eq!(cache.durable_bytes, 0);
    }
}

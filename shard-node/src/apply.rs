//! Deterministic execution of shard operations against the node's RocksDB.
//!
//! [`Keyspace`] is one shard's view of the `data` column family for one batch of
//! work. Writes go to a `WriteBatch` and to an overlay that later operations of the
//! same batch read first, so several entries applied together behave exactly as if
//! applied one by one. The caller commits the batch together with the applied log
//! id, atomically.
//!
//! DETERMINISM. Every decision depends only on the stored data, the operation and
//! `now_ms`, which for writes is the leader's timestamp carried in the Raft entry.
//! Redis's error strings are produced here, byte for byte.
//!
//! OWNERSHIP. A key whose virtual node the shard does not own (as of this apply)
//! makes the operation fail with [`NotOwned`] before anything changes.

use std::collections::{BTreeMap, BTreeSet};

use redraft_common::ids::VnodeId;
use redraft_common::keys::Ring;
use redraft_common::ops::{
    parse_strict_i64, ExpireCondition, Expiry, GetExChange, ReadOp, SetCondition, SetReply, ShardOp, WriteOp,
};
use redraft_common::resp::Frame;
use rocksdb::{ColumnFamily, IteratorMode, ReadOptions, WriteBatch, DB};

use crate::storage::{
    data_key, element_prefix, key_records, prefix_end, vnode_end, vnode_start, ElementHints, Kind, Value,
};

mod bits;
mod blocking;
mod chunks;
mod collections;
mod geo;
mod hash;
mod hll;
mod keys;
mod lcs;
mod list;
mod notify;
mod script;
mod set;
mod sort;
mod zset;
mod zset_ops;

pub use script::kill_scripts;

/// Redis's WRONGTYPE error.
pub const WRONGTYPE: &str = "WRONGTYPE Operation against a key holding the wrong kind of value";
/// Redis's error for a non-integer value.
pub const NOT_INTEGER: &str = "ERR value is not an integer or out of range";
/// Longest string Redis allows (`proto-max-bulk-len`).
pub const MAX_STRING: u64 = 512 * 1024 * 1024;

/// A key of the operation is not owned by this shard: nothing was changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotOwned;

/// One shard's view of the data for one batch.
pub struct Keyspace<'a> {
    db: &'a DB,
    cf: &'a ColumnFamily,
    ring: &'a Ring,
    owned: &'a BTreeSet<VnodeId>,
    /// This batch's writes, read before the DB (`None`: deleted).
    overlay: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Ranges deleted in this batch: DB records in them are gone, and the overlay
    /// holds only what was written after.
    cleared: Vec<(Vec<u8>, Vec<u8>)>,
    batch: WriteBatch,
    now_ms: u64,
    /// Log index of the entry being applied: the revision of what it stores.
    revision: u64,
    /// Which virtual nodes may hold collection elements (`None`: assume all).
    hints: Option<&'a ElementHints>,
    /// Blocked clients served by this view: entry time, id, what they got.
    served: Vec<(u64, u64, Frame)>,
    /// Reads see this snapshot instead of the DB's latest state (a backup's
    /// reader).
    snapshot: Option<&'a rocksdb::Snapshot<'a>>,
    /// Whether writes record keyspace notifications (see [`KeyEvent`]).
    notify: bool,
    /// Notifications recorded, in order.
    events: Vec<KeyEvent>,
    /// Keys whose collection became empty and was deleted by the command
    /// running: their `del` follows the command's own event.
    emptied: Vec<Vec<u8>>,
}

/// A keyspace notification a write produced: Redis's class letter (`g`,
/// `$`, `l`, `s`, `h`, `z`, `x`), event name and user key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyEvent {
    pub class: u8,
    pub event: &'static str,
    pub key: Vec<u8>,
}

impl<'a> Keyspace<'a> {
    /// A view of the shard owning `owned`, at time `now_ms`.
    pub fn new(db: &'a DB, cf: &'a ColumnFamily, ring: &'a Ring, owned: &'a BTreeSet<VnodeId>, now_ms: u64) -> Self {
        Keyspace {
            db,
            cf,
            ring,
            owned,
            overlay: BTreeMap::new(),
            cleared: Vec::new(),
            batch: WriteBatch::default(),
            now_ms,
            revision: 0,
            hints: None,
            served: Vec::new(),
            snapshot: None,
            notify: false,
            events: Vec::new(),
            emptied: Vec::new(),
        }
    }

    /// Whether the writes that follow record keyspace notifications.
    pub fn set_notify(&mut self, notify: bool) {
        self.notify = notify;
    }

    /// The notifications recorded so far, in order.
    pub fn take_events(&mut self) -> Vec<KeyEvent> {
        std::mem::take(&mut self.events)
    }

    /// Records Redis's notification `event` of `class` for the user key.
    fn notify(&mut self, class: u8, event: &'static str, key: &[u8]) {
        if self.notify {
            self.events.push(KeyEvent {
                class,
                event,
                key: key.to_vec(),
            });
        }
    }

    /// [`Self::notify`] for the key stored at `skey`.
    fn notify_stored(&mut self, class: u8, event: &'static str, skey: &[u8]) {
        if self.notify {
            let key = crate::storage::user_key(skey).to_vec();
            self.notify(class, event, &key);
        }
    }

    /// The `del` of every collection the running command emptied, after its
    /// own event, as Redis orders them.
    fn notify_emptied(&mut self) {
        for key in std::mem::take(&mut self.emptied) {
            // Refilled before the command ended (LMOVE of a list onto itself).
            if self.load_record(&self.owned_key(&key)).is_none() {
                self.notify(b'g', "del", &key);
            }
        }
    }

    /// A read-only view of the data as `snapshot` holds it.
    pub fn at_snapshot(mut self, snapshot: &'a rocksdb::Snapshot<'a>) -> Self {
        self.snapshot = Some(snapshot);
        self
    }

    /// Lets writes skip reading a key that cannot hold a collection, and keeps
    /// `hints` up to date with the elements this view writes.
    pub fn with_hints(mut self, hints: &'a ElementHints) -> Self {
        self.hints = Some(hints);
        self
    }

    /// Whether the key at `skey` may be a collection with stored elements.
    fn may_hold_elements(&self, skey: &[u8]) -> bool {
        self.hints.is_none_or(|h| h.may_hold(skey))
    }

    fn mark(&self, skey: &[u8]) {
        if let Some(hints) = self.hints {
            hints.mark(skey);
        }
    }

    /// Sets the clock for the next operation (the next entry's leader timestamp).
    pub fn set_now(&mut self, now_ms: u64) {
        self.now_ms = now_ms;
    }

    /// Sets the log index of the next entry, stamped on every key it changes.
    pub fn set_revision(&mut self, revision: u64) {
        self.revision = revision;
    }

    /// The writes made so far, to be committed by the caller.
    pub fn into_batch(self) -> WriteBatch {
        self.batch
    }

    /// Gives the caller the batch so far (to add its own writes) and starts a new one.
    pub fn take_batch(&mut self) -> WriteBatch {
        self.overlay.clear();
        self.cleared.clear();
        std::mem::take(&mut self.batch)
    }

    fn storage_key(&self, key: &[u8]) -> Result<Vec<u8>, NotOwned> {
        let vnode = self.ring.vnode_of(key);
        if self.owned.contains(&vnode) {
            Ok(data_key(vnode, key))
        } else {
            Err(NotOwned)
        }
    }

    /// The stored bytes of any storage key as of this batch.
    fn load_bytes(&self, skey: &[u8]) -> Option<Vec<u8>> {
        match self.overlay.get(skey) {
            Some(pending) => pending.clone(),
            None if self.is_cleared(skey) => None,
            None => match self.snapshot {
                Some(snapshot) => snapshot.get_cf(self.cf, skey),
                None => self.db.get_cf(self.cf, skey),
            }
            .unwrap_or_else(|e| panic!("RocksDB read failed: {e}")),
        }
    }

    fn is_cleared(&self, skey: &[u8]) -> bool {
        self.cleared
            .iter()
            .any(|(start, end)| start.as_slice() <= skey && skey < end.as_slice())
    }

    /// The stored value of a key record, expired or not, as of this batch
    /// (a chunked string whole).
    fn load_raw(&self, skey: &[u8]) -> Option<Value> {
        let mut value = self.load_record(skey)?;
        if value.chunked {
            value.payload = self.whole_string(skey, &value);
            value.chunked = false;
        }
        Some(value)
    }

    /// A key record as stored (a chunked string's holds only its length).
    fn load_record(&self, skey: &[u8]) -> Option<Value> {
        self.load_bytes(skey).map(|b| Value::decode(&b))
    }

    /// Records in `start..end` as of this batch, in key order (`reverse`: from the end).
    fn scan(&self, start: &[u8], end: &[u8], reverse: bool) -> Merged<'_> {
        let mut opts = ReadOptions::default();
        opts.set_iterate_lower_bound(start.to_vec());
        opts.set_iterate_upper_bound(end.to_vec());
        if let Some(snapshot) = self.snapshot {
            opts.set_snapshot(snapshot);
        }
        let mode = if reverse {
            IteratorMode::End
        } else {
            IteratorMode::Start
        };
        let range = self
            .overlay
            .range::<[u8], _>((std::ops::Bound::Included(start), std::ops::Bound::Excluded(end)));
        let overlay: OverlayIter<'_> = if reverse {
            Box::new(range.rev())
        } else {
            Box::new(range)
        };
        Merged {
            keyspace: self,
            db: self.db.iterator_cf_opt(self.cf, opts, mode).peekable(),
            overlay: overlay.peekable(),
            reverse,
        }
    }

    /// Deletes every record in `start..end`.
    fn clear_range(&mut self, start: Vec<u8>, end: Vec<u8>) {
        self.batch.delete_range_cf(self.cf, &start, &end);
        let inside: Vec<Vec<u8>> = self
            .overlay
            .range::<[u8], _>((
                std::ops::Bound::Included(&start[..]),
                std::ops::Bound::Excluded(&end[..]),
            ))
            .map(|(k, _)| k.clone())
            .collect();
        for key in inside {
            self.overlay.remove(&key);
        }
        self.cleared.push((start, end));
    }

    /// Deletes a key and, for a collection or a chunked string, all its elements.
    fn delete_key(&mut self, skey: Vec<u8>) {
        if self
            .load_record(&skey)
            .is_some_and(|v| v.kind != Kind::String || v.chunked)
        {
            self.clear_elements(&skey);
        }
        self.remove(skey);
    }

    /// Deletes every element of the collection stored at `skey`.
    fn clear_elements(&mut self, skey: &[u8]) {
        let prefix = element_prefix(skey);
        let end = prefix_end(&prefix);
        self.clear_range(prefix, end);
    }

    /// The live value of a storage key (expired values read as absent).
    fn load(&self, skey: &[u8]) -> Option<Value> {
        self.load_raw(skey).filter(|v| !v.is_expired(self.now_ms))
    }

    /// Stores a value; a string in the layout its length calls for
    /// ([`chunks`]), replacing any chunks an earlier version of it left.
    fn store(&mut self, skey: Vec<u8>, value: &Value) {
        if value.kind != Kind::String {
            return self.put_record(skey, value);
        }
        let previous = if self.may_hold_elements(&skey) {
            self.load_record(&skey).filter(|p| p.kind == Kind::String)
        } else {
            None
        };
        self.store_string(skey, value, previous.as_ref());
    }

    /// Writes a key record as it is.
    fn put_record(&mut self, skey: Vec<u8>, value: &Value) {
        let bytes = value.encode_at(self.revision);
        self.put_bytes(skey, bytes);
    }

    /// Every write of a record goes through here.
    fn put_bytes(&mut self, skey: Vec<u8>, bytes: Vec<u8>) {
        self.mark(&skey);
        self.batch.put_cf(self.cf, &skey, &bytes);
        self.overlay.insert(skey, Some(bytes));
    }

    /// Stores a string at a key that may hold a collection (whose elements go).
    fn replace(&mut self, skey: Vec<u8>, value: &Value) {
        if self.may_hold_elements(&skey) && self.load_record(&skey).is_some_and(|v| v.kind != Kind::String) {
            self.delete_key(skey.clone());
        }
        self.store(skey, value);
    }

    fn remove(&mut self, skey: Vec<u8>) {
        self.batch.delete_cf(self.cf, &skey);
        self.overlay.insert(skey, None);
    }

    /// The revision of a live key, 0 when absent or expired.
    fn revision_of(&self, skey: &[u8]) -> u64 {
        self.load(skey).map_or(0, |v| v.revision)
    }

    fn string(&self, skey: &[u8]) -> Result<Option<Value>, Frame> {
        match self.load(skey) {
            Some(v) if v.kind != Kind::String => Err(Frame::error(WRONGTYPE)),
            other => Ok(other),
        }
    }

    /// Like [`Self::string`], without reading a chunked string's bytes: its
    /// key record, for [`chunks`]' partial reads and writes.
    fn string_record(&self, skey: &[u8]) -> Result<Option<Value>, Frame> {
        match self.load_record(skey).filter(|v| !v.is_expired(self.now_ms)) {
            Some(v) if v.kind != Kind::String => Err(Frame::error(WRONGTYPE)),
            other => Ok(other),
        }
    }

    fn deadline(&self, expiry: Expiry) -> i64 {
        match expiry {
            Expiry::InMs(ms) => (self.now_ms as i64).saturating_add(ms),
            Expiry::AtMs(at) => at,
        }
    }

    /// Stores a deadline; one at or before the epoch start is stored as 1 ms (expired).
    fn stored_deadline(deadline: i64) -> u64 {
        deadline.max(1) as u64
    }

    /// Executes a read.
    pub fn read(&mut self, op: &ReadOp) -> Result<Frame, NotOwned> {
        Ok(match op {
            ReadOp::Scan {
                vnodes,
                from,
                count,
                pattern,
                kind,
            } => self.scan_keys(vnodes, *from, *count, pattern.as_deref(), kind.as_deref())?,
            ReadOp::Keys { pattern } => self.keys_matching(pattern),
            ReadOp::Revisions { keys } => {
                let mut revisions = Vec::with_capacity(keys.len());
                for key in keys {
                    revisions.push(Frame::Integer(self.revision_of(&self.storage_key(key)?) as i64));
                }
                Frame::Array(revisions)
            }
            ReadOp::RandomKey { seed } => self.random_key(*seed),
            ReadOp::Command { args, seed } => {
                for key in redraft_common::ops::command_keys(args) {
                    self.storage_key(key)?;
                }
                self.command(args, *seed, false)
            }
            ReadOp::Get { key } => match self.string(&self.storage_key(key)?) {
                Ok(Some(v)) => Frame::Bulk(v.payload),
                Ok(None) => Frame::Null,
                Err(e) => e,
            },
            ReadOp::MGet { keys } => {
                let mut out = Vec::with_capacity(keys.len());
                for key in keys {
                    out.push(match self.load(&self.storage_key(key)?) {
                        Some(v) if v.kind == Kind::String => Frame::Bulk(v.payload),
                        _ => Frame::Null,
                    });
                }
                Frame::Array(out)
            }
            ReadOp::Exists { keys } => {
                let mut n = 0;
                for key in keys {
                    n += i64::from(self.load(&self.storage_key(key)?).is_some());
                }
                Frame::Integer(n)
            }
            ReadOp::StrLen { key } => match self.string_record(&self.storage_key(key)?) {
                Ok(v) => Frame::Integer(v.map_or(0, |v| chunks::stored_len(&v) as i64)),
                Err(e) => e,
            },
            ReadOp::GetRange { key, start, end } => {
                let skey = self.storage_key(key)?;
                match self.string_record(&skey) {
                    Ok(Some(record)) => {
                        let range = substring_range(chunks::stored_len(&record), *start, *end);
                        Frame::Bulk(self.string_bytes(&skey, &record, range))
                    }
                    Ok(None) => Frame::Bulk(Vec::new()),
                    Err(e) => e,
                }
            }
            ReadOp::Ttl { key, millis } => match self.load(&self.storage_key(key)?) {
                None => Frame::Integer(-2),
                Some(v) if v.expires_at == 0 => Frame::Integer(-1),
                Some(v) => {
                    let left = v.expires_at.saturating_sub(self.now_ms) as i64;
                    Frame::Integer(if *millis { left } else { (left + 500) / 1000 })
                }
            },
            ReadOp::ExpireTime { key, millis } => match self.load(&self.storage_key(key)?) {
                None => Frame::Integer(-2),
                Some(v) if v.expires_at == 0 => Frame::Integer(-1),
                Some(v) => Frame::Integer(if *millis {
                    v.expires_at as i64
                } else {
                    (v.expires_at / 1000) as i64
                }),
            },
            ReadOp::Type { key } => Frame::Simple(
                self.load(&self.storage_key(key)?)
                    .map_or("none", |v| v.kind.name())
                    .to_string(),
            ),
            ReadOp::DbSize => Frame::Integer(self.count_live() as i64),
            ReadOp::Script(script) => self.script(script, true),
            ReadOp::ObjectEncoding { key, limits } => self.object_encoding(key, limits)?,
            ReadOp::Dump { key } => self.dump(key)?,
            ReadOp::Digest { keys } => self.digest(keys.as_deref())?,
            // The host answers each read of a batch on its own.
            ReadOp::Many(_) => Frame::error("ERR a read batch cannot be nested"),
        })
    }

    fn count_live(&self) -> u64 {
        let mut count = 0;
        for &vnode in self.owned {
            let (start, end) = key_records(vnode);
            for (_, value) in self.scan(&start, &end, false) {
                count += u64::from(!Value::decode(&value).is_expired(self.now_ms));
            }
        }
        count
    }

    /// Executes a write. Redis-level failures (WRONGTYPE, ...) are replies; only
    /// [`NotOwned`] is an `Err`, and then nothing was written.
    pub fn write(&mut self, op: &WriteOp) -> Result<Frame, NotOwned> {
        // Check every key before touching anything, so a partly-owned request is a no-op.
        let skeys = op
            .keys()
            .into_iter()
            .map(|k| self.storage_key(k))
            .collect::<Result<Vec<_>, _>>()?;
        let reply = self.apply_write(op, skeys)?;
        if self.notify {
            self.notify_write(op, &reply);
        }
        Ok(reply)
    }

    /// The keyspace notifications of a string or keyspace write that
    /// [`Self::apply_write`] did not record itself, from its reply (the
    /// collection commands, DEL, expiry changes and RESTORE record their own).
    fn notify_write(&mut self, op: &WriteOp, reply: &Frame) {
        if matches!(reply, Frame::Error(_)) {
            return;
        }
        match op {
            WriteOp::Set {
                key,
                expiry,
                condition,
                reply: shape,
                ..
            } => {
                let done = match (condition, shape) {
                    (SetCondition::Always, _) => true,
                    (_, SetReply::Ok) => *reply == Frame::ok(),
                    (_, SetReply::Integer) => *reply == Frame::Integer(1),
                    (SetCondition::IfAbsent, SetReply::OldValue) => *reply == Frame::Null,
                    (SetCondition::IfPresent, SetReply::OldValue) => *reply != Frame::Null,
                };
                if done {
                    self.notify(b'$', "set", key);
                    if expiry.is_some() {
                        self.notify(b'g', "expire", key);
                    }
                }
            }
            WriteOp::GetDel { key } if *reply != Frame::Null => self.notify(b'g', "del", key),
            WriteOp::MSet { pairs } => {
                for (key, _) in pairs {
                    self.notify(b'$', "set", key);
                }
            }
            WriteOp::MSetNx { pairs } if *reply == Frame::Integer(1) => {
                for (key, _) in pairs {
                    self.notify(b'$', "set", key);
                }
            }
            WriteOp::IncrBy { key, .. } => self.notify(b'$', "incrby", key),
            WriteOp::IncrByFloat { key, .. } => self.notify(b'$', "incrbyfloat", key),
            WriteOp::Append { key, .. } => self.notify(b'$', "append", key),
            WriteOp::SetRange { key, value, .. } if !value.is_empty() => self.notify(b'$', "setrange", key),
            _ => {}
        }
    }

    /// [`Self::write`] once its keys are known to be owned.
    fn apply_write(&mut self, op: &WriteOp, skeys: Vec<Vec<u8>>) -> Result<Frame, NotOwned> {
        Ok(match op {
            WriteOp::Set {
                value,
                expiry,
                condition,
                keep_ttl,
                reply,
                ..
            } => self.set(skeys[0].clone(), value, *expiry, *condition, *keep_ttl, *reply),
            WriteOp::GetDel { .. } => match self.string(&skeys[0]) {
                Ok(Some(v)) => {
                    self.delete_key(skeys[0].clone());
                    Frame::Bulk(v.payload)
                }
                Ok(None) => Frame::Null,
                Err(e) => e,
            },
            WriteOp::GetEx { change, .. } => match self.string(&skeys[0]) {
                Ok(Some(mut v)) => {
                    let reply = Frame::Bulk(v.payload.clone());
                    match change {
                        GetExChange::Keep => {}
                        GetExChange::Persist => {
                            if v.expires_at != 0 {
                                v.expires_at = 0;
                                self.store(skeys[0].clone(), &v);
                                self.notify_stored(b'g', "persist", &skeys[0]);
                            }
                        }
                        GetExChange::Set(expiry) => {
                            let deadline = self.deadline(*expiry);
                            if deadline <= self.now_ms as i64 {
                                self.delete_key(skeys[0].clone());
                                self.notify_stored(b'g', "del", &skeys[0]);
                            } else {
                                v.expires_at = Self::stored_deadline(deadline);
                                self.store(skeys[0].clone(), &v);
                                self.notify_stored(b'g', "expire", &skeys[0]);
                            }
                        }
                    }
                    reply
                }
                Ok(None) => Frame::Null,
                Err(e) => e,
            },
            WriteOp::MSet { pairs } => {
                for (skey, (_, value)) in skeys.into_iter().zip(pairs) {
                    self.replace(skey, &Value::string(value.clone(), 0));
                }
                Frame::ok()
            }
            WriteOp::MSetNx { pairs } => {
                if skeys.iter().any(|k| self.load(k).is_some()) {
                    Frame::Integer(0)
                } else {
                    for (skey, (_, value)) in skeys.into_iter().zip(pairs) {
                        self.replace(skey, &Value::string(value.clone(), 0));
                    }
                    Frame::Integer(1)
                }
            }
            WriteOp::Del { .. } => {
                let mut n = 0;
                for skey in skeys {
                    if self.load_record(&skey).is_some_and(|v| !v.is_expired(self.now_ms)) {
                        self.notify_stored(b'g', "del", &skey);
                        self.delete_key(skey);
                        n += 1;
                    }
                }
                Frame::Integer(n)
            }
            WriteOp::IncrBy { delta, .. } => self.incr_by(skeys[0].clone(), *delta),
            WriteOp::IncrByFloat { delta, .. } => self.incr_by_float(skeys[0].clone(), *delta),
            WriteOp::Append { value, .. } => match self.string_record(&skeys[0]) {
                Ok(Some(record)) => {
                    // Redis edits an existing string in place (`raw`).
                    let len = chunks::stored_len(&record);
                    if len as u64 + value.len() as u64 > MAX_STRING {
                        return Ok(Frame::error(
                            "ERR string exceeds maximum allowed size (proto-max-bulk-len)",
                        ));
                    }
                    self.write_string_bytes(skeys[0].clone(), &record, len, value);
                    Frame::Integer((len + value.len()) as i64)
                }
                // A new string is encoded like SET's.
                Ok(None) => {
                    self.store(skeys[0].clone(), &Value::string(value.clone(), 0));
                    Frame::Integer(value.len() as i64)
                }
                Err(e) => e,
            },
            WriteOp::SetRange { offset, value, .. } => match self.string_record(&skeys[0]) {
                Ok(existing) => {
                    let len = existing.as_ref().map_or(0, chunks::stored_len);
                    if value.is_empty() {
                        return Ok(Frame::Integer(len as i64));
                    }
                    let record = existing.unwrap_or_else(|| Value::string(Vec::new(), 0));
                    let offset = *offset as usize;
                    self.write_string_bytes(skeys[0].clone(), &record, offset, value);
                    Frame::Integer(len.max(offset + value.len()) as i64)
                }
                Err(e) => e,
            },
            WriteOp::Expire { expiry, condition, .. } => self.expire(skeys[0].clone(), *expiry, *condition),
            WriteOp::Persist { .. } => match self.load(&skeys[0]) {
                Some(mut v) if v.expires_at != 0 => {
                    v.expires_at = 0;
                    self.store(skeys[0].clone(), &v);
                    self.notify_stored(b'g', "persist", &skeys[0]);
                    Frame::Integer(1)
                }
                _ => Frame::Integer(0),
            },
            WriteOp::FlushAll => {
                for &vnode in self.owned {
                    self.clear_range(vnode_start(vnode), vnode_end(vnode));
                }
                Frame::ok()
            }
            WriteOp::Command { args, seed } => self.command(args, *seed, true),
            WriteOp::PopFirst(pop) => self.pop_first(pop, true).unwrap_or_else(|| pop.kind.nothing_now()),
            WriteOp::ServeBlocked(clients) => self.serve_blocked(clients),
            WriteOp::Script(script) => self.script(script, false),
            WriteOp::Restore { key, replace, ops } => {
                // Its writes recreate the value; Redis notifies only `restore`.
                let notify = std::mem::replace(&mut self.notify, false);
                let reply = self.restore(skeys[0].clone(), *replace, ops);
                self.notify = notify;
                let reply = reply?;
                if reply == Frame::ok() {
                    self.notify(b'g', "restore", key);
                }
                reply
            }
            WriteOp::Transaction { watched, ops } => {
                for (key, revision) in watched {
                    if self.revision_of(&self.storage_key(key)?) != *revision {
                        return Ok(Frame::NullArray);
                    }
                }
                let mut replies = Vec::with_capacity(ops.len());
                for op in ops {
                    replies.push(match op {
                        ShardOp::Read(read) => self.read(read)?,
                        ShardOp::Write(write) => self.write(write)?,
                    });
                }
                Frame::Array(replies)
            }
            WriteOp::Split { .. }
            | WriteOp::Retire
            | WriteOp::Absorb { .. }
            | WriteOp::ComputeDigest(_)
            | WriteOp::BackupBarrier(_)
            | WriteOp::Many(_) => {
                Frame::error("ERR split, merge, digest, backup and batch entries are applied by the state machine")
            }
            WriteOp::PurgeExpired { keys } => {
                let mut purged = Vec::new();
                for (skey, key) in skeys.into_iter().zip(keys) {
                    if self.load_record(&skey).is_some_and(|v| v.is_expired(self.now_ms)) {
                        self.delete_key(skey);
                        self.notify(b'x', "expired", key);
                        purged.push(Frame::Bulk(key.clone()));
                    }
                }
                Frame::Array(purged)
            }
        })
    }

    fn set(
        &mut self,
        skey: Vec<u8>,
        value: &[u8],
        expiry: Option<Expiry>,
        condition: SetCondition,
        keep_ttl: bool,
        reply: SetReply,
    ) -> Frame {
        if condition == SetCondition::Always && !keep_ttl && reply == SetReply::Ok && !self.may_hold_elements(&skey) {
            // Nothing to read: no collection to clear, no old value to return.
            let expires_at = expiry.map_or(0, |e| Self::stored_deadline(self.deadline(e)));
            self.store(skey, &Value::string(value.to_vec(), expires_at));
            return Frame::ok();
        }
        // One read of the key record: whether elements (a collection's, a
        // long string's chunks) must go, and the live value.
        let record = self.load_record(&skey);
        let holds_elements = record.as_ref().is_some_and(|v| v.kind != Kind::String || v.chunked);
        let existing = record.filter(|v| !v.is_expired(self.now_ms));
        if reply == SetReply::OldValue && existing.as_ref().is_some_and(|v| v.kind != Kind::String) {
            return Frame::error(WRONGTYPE);
        }
        let old = || {
            existing.as_ref().map_or(Frame::Null, |v| {
                Frame::Bulk(if v.chunked {
                    self.whole_string(&skey, v)
                } else {
                    v.payload.clone()
                })
            })
        };
        let allowed = match condition {
            SetCondition::Always => true,
            SetCondition::IfAbsent => existing.is_none(),
            SetCondition::IfPresent => existing.is_some(),
        };
        if !allowed {
            return match reply {
                SetReply::Ok => Frame::Null,
                SetReply::OldValue => old(),
                SetReply::Integer => Frame::Integer(0),
            };
        }
        let expires_at = match expiry {
            Some(e) => Self::stored_deadline(self.deadline(e)),
            None if keep_ttl => existing.as_ref().map_or(0, |v| v.expires_at),
            None => 0,
        };
        let answer = match reply {
            SetReply::Ok => Frame::ok(),
            SetReply::OldValue => old(),
            SetReply::Integer => Frame::Integer(1),
        };
        if holds_elements {
            self.clear_elements(&skey);
        }
        // Nothing of the old value is left to clean up.
        self.store_string(skey, &Value::string(value.to_vec(), expires_at), None);
        answer
    }

    fn incr_by(&mut self, skey: Vec<u8>, delta: i64) -> Frame {
        let existing = match self.string(&skey) {
            Ok(v) => v,
            Err(e) => return e,
        };
        let (current, expires_at) = match &existing {
            None => (0, 0),
            Some(v) => match parse_strict_i64(&v.payload) {
                Some(n) => (n, v.expires_at),
                None => return Frame::error(NOT_INTEGER),
            },
        };
        match current.checked_add(delta) {
            Some(next) => {
                self.store(skey, &Value::string(next.to_string().into_bytes(), expires_at));
                Frame::Integer(next)
            }
            None => Frame::error("ERR increment or decrement would overflow"),
        }
    }

    fn incr_by_float(&mut self, skey: Vec<u8>, delta: f64) -> Frame {
        let existing = match self.string(&skey) {
            Ok(v) => v,
            Err(e) => return e,
        };
        let (current, expires_at) = match &existing {
            None => (0.0, 0),
            Some(v) => match parse_float(&v.payload) {
                Some(n) => (n, v.expires_at),
                None => return Frame::error("ERR value is not a valid float"),
            },
        };
        let next = current + delta;
        if !next.is_finite() {
            return Frame::error("ERR increment would produce NaN or Infinity");
        }
        let text = format_float(next);
        self.store(skey, &Value::string(text.clone().into_bytes(), expires_at));
        Frame::Bulk(text.into_bytes())
    }

    fn expire(&mut self, skey: Vec<u8>, expiry: Expiry, condition: ExpireCondition) -> Frame {
        let Some(mut v) = self.load(&skey) else {
            return Frame::Integer(0);
        };
        let deadline = self.deadline(expiry);
        let current = (v.expires_at != 0).then_some(v.expires_at as i64);
        let allowed = match condition {
            ExpireCondition::Always => true,
            ExpireCondition::IfNoExpiry => current.is_none(),
            ExpireCondition::IfExpiry => current.is_some(),
            ExpireCondition::IfGreater => current.is_some_and(|c| deadline > c),
            ExpireCondition::IfLess => current.is_none_or(|c| deadline < c),
            ExpireCondition::IfExpiryAndLess => current.is_some_and(|c| deadline < c),
        };
        if !allowed {
            return Frame::Integer(0);
        }
        if deadline <= self.now_ms as i64 {
            self.notify_stored(b'g', "del", &skey);
            self.delete_key(skey);
        } else {
            v.expires_at = Self::stored_deadline(deadline);
            self.notify_stored(b'g', "expire", &skey);
            self.store(skey, &v);
        }
        Frame::Integer(1)
    }
}

/// The batch's own records over a range, in scan order.
type OverlayIter<'k> = Box<dyn Iterator<Item = (&'k Vec<u8>, &'k Option<Vec<u8>>)> + 'k>;

/// A merged view of the DB and a batch's overlay over one range: overlay records
/// win, deleted ones are skipped, DB records in ranges cleared by the batch too.
pub(crate) struct Merged<'k> {
    keyspace: &'k Keyspace<'k>,
    db: std::iter::Peekable<rocksdb::DBIteratorWithThreadMode<'k, DB>>,
    overlay: std::iter::Peekable<OverlayIter<'k>>,
    reverse: bool,
}

impl Iterator for Merged<'_> {
    type Item = (Vec<u8>, Vec<u8>);

    fn next(&mut self) -> Option<(Vec<u8>, Vec<u8>)> {
        loop {
            let db_key = match self.db.peek() {
                Some(Ok((key, _))) if self.keyspace.is_cleared(key) => {
                    self.db.next();
                    continue;
                }
                Some(Ok((key, _))) => Some(key.to_vec()),
                Some(Err(e)) => panic!("RocksDB scan failed: {e}"),
                None => None,
            };
            let take_overlay = match (&db_key, self.overlay.peek()) {
                (None, None) => return None,
                (None, Some(_)) => true,
                (Some(_), None) => false,
                (Some(d), Some((o, _))) => {
                    if d == *o {
                        self.db.next();
                        true
                    } else {
                        (o.as_slice() < d.as_slice()) != self.reverse
                    }
                }
            };
            if take_overlay {
                let (key, value) = self.overlay.next().expect("peeked");
                if let Some(value) = value {
                    return Some((key.clone(), value.clone()));
                }
            } else {
                let (key, value) = self.db.next().expect("peeked").expect("checked");
                return Some((key.to_vec(), value.to_vec()));
            }
        }
    }
}

/// The bytes `GETRANGE` returns from a string of `len` bytes: inclusive
/// indexes, negative ones from the end.
pub fn substring_range(len: usize, start: i64, end: i64) -> std::ops::Range<usize> {
    let len = len as i64;
    if len == 0 {
        return 0..0;
    }
    let start = if start < 0 { (len + start).max(0) } else { start };
    let end = if end < 0 { (len + end).max(0) } else { end.min(len - 1) };
    if start > end || start >= len {
        return 0..0;
    }
    start as usize..end as usize + 1
}

/// Parses a float as Redis's INCRBYFLOAT accepts it (no spaces, finite).
pub fn parse_float(bytes: &[u8]) -> Option<f64> {
    let text = std::str::from_utf8(bytes).ok()?;
    if text.is_empty() || text.trim() != text {
        return None;
    }
    let lower = text.to_ascii_lowercase();
    if lower.contains("nan") || lower.contains("inf") {
        return None;
    }
    text.parse::<f64>().ok().filter(|f| f.is_finite())
}

/// Formats a float as Redis does for INCRBYFLOAT: shortest exact decimal, no
/// exponent, no trailing zeros.
pub fn format_float(value: f64) -> String {
    let text = format!("{value}");
    if text == "-0" {
        "0".into()
    } else {
        text
    }
}

#[cfg(test)]
mod tests;

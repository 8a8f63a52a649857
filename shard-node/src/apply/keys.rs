//! Commands on keys of any type: the keyspace walks of SCAN, KEYS and
//! RANDOMKEY, and RENAME, RENAMENX, COPY and OBJECT.
//!
//! SCAN CURSOR. A cursor is `vnode << 48 | top 48 bits of the key's hash`, the
//! position of the next key record to examine in the ring's global order
//! (virtual node, then key hash; see `storage`). Keys never change virtual node,
//! and whichever shard owns a virtual node when the scan reaches it serves all
//! of it, so every key present for the whole scan is returned even while
//! virtual nodes move between shards.

use redraft_common::ids::VnodeId;
use redraft_common::ops::{Bytes, EncodingLimits, WriteOp};
use redraft_common::resp::Frame;
use redraft_common::{digest, rdb};

use super::collections::{error, Rng, SYNTAX};
use super::{Keyspace, NotOwned};
use crate::storage::{key_records, user_key, Kind, Value};

/// The SCAN cursor of a key record's storage key (never 0, which ends a scan).
pub fn cursor_of(storage_key: &[u8]) -> u64 {
    let vnode = u16::from_be_bytes([storage_key[0], storage_key[1]]);
    let hash = u64::from_be_bytes(storage_key[3..11].try_into().expect("hashed key"));
    redraft_common::keys::scan_position_of_hash(vnode, hash)
}

/// Where a cursor resumes within its virtual node: the key record position.
fn resume_key(vnode: VnodeId, cursor: u64) -> Vec<u8> {
    let (mut start, _) = key_records(vnode);
    start.extend_from_slice(&((cursor & ((1 << 48) - 1)) << 16).to_be_bytes());
    start
}

/// Redis's digest of a value (`xorObjectDigest`): its type, then its
/// elements, mixed where order counts and xored where it does not.
fn object_digest(out: &mut digest::Digest, value: &rdb::Value, expires: bool) {
    let kind: u32 = match value {
        rdb::Value::String(_) => 0,
        rdb::Value::List(_) => 1,
        rdb::Value::Set(_) => 2,
        rdb::Value::ZSet(_) => 3,
        rdb::Value::Hash(_) => 4,
    };
    digest::mix(out, &kind.to_be_bytes());
    match value {
        rdb::Value::String(bytes) => digest::mix(out, bytes),
        rdb::Value::List(items) => items.iter().for_each(|item| digest::mix(out, item)),
        rdb::Value::Set(members) => members.iter().for_each(|member| digest::xor(out, member)),
        rdb::Value::ZSet(members) => {
            for (member, score) in members {
                let mut element = [0u8; 20];
                digest::mix(&mut element, member);
                digest::mix(&mut element, super::collections::format_double(*score).as_bytes());
                digest::xor(out, &element);
            }
        }
        rdb::Value::Hash(fields) => {
            for (field, value) in fields {
                let mut element = [0u8; 20];
                digest::mix(&mut element, field);
                digest::mix(&mut element, value);
                digest::xor(out, &element);
            }
        }
    }
    if expires {
        digest::xor(out, b"!!expire!!");
    }
}

/// What OBJECT ENCODING needs to know of a collection beyond its length.
struct Shape {
    /// Its longest element (hash fields and values, sorted-set members), or
    /// more than any limit when it has more elements than the limit checks.
    longest: u64,
    /// A set whose members are all integers.
    all_integers: bool,
}

/// OBJECT ENCODING's answer, as Redis 7.0 gives it under `limits`.
fn encoding(value: &Value, shape: &Shape, limits: &EncodingLimits) -> &'static str {
    let len = if value.kind == Kind::String {
        0
    } else {
        crate::storage::CollectionMeta::decode(&value.payload).len
    };
    match value.kind {
        Kind::String if value.edited => "raw",
        Kind::String
            if value.payload.len() <= 20 && redraft_common::ops::parse_strict_i64(&value.payload).is_some() =>
        {
            "int"
        }
        Kind::String if value.payload.len() <= 44 => "embstr",
        Kind::String => "raw",
        Kind::List => "quicklist",
        Kind::Hash if len <= limits.hash_entries && shape.longest <= limits.hash_value => "listpack",
        Kind::ZSet if len <= limits.zset_entries && shape.longest <= limits.zset_value => "listpack",
        Kind::Hash => "hashtable",
        Kind::ZSet => "skiplist",
        Kind::Set if len <= limits.set_intset_entries && shape.all_integers => "intset",
        Kind::Set => "hashtable",
    }
}

impl Keyspace<'_> {
    /// One SCAN step (see [`redraft_common::ops::ReadOp::Scan`]).
    pub(super) fn scan_keys(
        &self,
        vnodes: &[VnodeId],
        from: u64,
        count: u64,
        pattern: Option<&[u8]>,
        kind: Option<&str>,
    ) -> Result<Frame, NotOwned> {
        if vnodes.iter().any(|v| !self.owned.contains(v)) {
            return Err(NotOwned);
        }
        let mut examined = 0;
        let mut keys = Vec::new();
        for (i, &vnode) in vnodes.iter().enumerate() {
            let (start, end) = key_records(vnode);
            let start = if i == 0 { resume_key(vnode, from) } else { start };
            for (skey, value) in self.scan(&start, &end, false) {
                if examined >= count {
                    return Ok(scan_step(cursor_of(&skey) as i64, examined, keys));
                }
                examined += 1;
                let value = Value::decode(&value);
                let key = user_key(&skey);
                if value.is_expired(self.now_ms)
                    || kind.is_some_and(|k| !k.eq_ignore_ascii_case(value.kind.name()))
                    || pattern.is_some_and(|p| !redraft_common::glob::matches(p, key))
                {
                    continue;
                }
                keys.push(Frame::Bulk(key.to_vec()));
            }
        }
        Ok(scan_step(-1, examined, keys))
    }

    /// Every live key matching `pattern`.
    pub(super) fn keys_matching(&self, pattern: &[u8]) -> Frame {
        let mut keys = Vec::new();
        for &vnode in self.owned {
            let (start, end) = key_records(vnode);
            for (skey, value) in self.scan(&start, &end, false) {
                let key = user_key(&skey);
                if !Value::decode(&value).is_expired(self.now_ms) && redraft_common::glob::matches(pattern, key) {
                    keys.push(Frame::Bulk(key.to_vec()));
                }
            }
        }
        Frame::Array(keys)
    }

    /// A live key from a random position, or nil.
    pub(super) fn random_key(&self, seed: u64) -> Frame {
        let owned: Vec<VnodeId> = self.owned.iter().copied().collect();
        if owned.is_empty() {
            return Frame::Null;
        }
        let mut rng = Rng::new(seed);
        let first = rng.below(owned.len() as u64) as usize;
        let position = rng.next();
        // From the random position to the end of its virtual node, then every other
        // virtual node in turn, then the start of the first one.
        for step in 0..=owned.len() {
            let vnode = owned[(first + step) % owned.len()];
            let (start, end) = key_records(vnode);
            let (start, end) = match step {
                0 => (resume_key(vnode, position), end),
                s if s == owned.len() => (start, resume_key(vnode, position)),
                _ => (start, end),
            };
            for (skey, value) in self.scan(&start, &end, false) {
                if !Value::decode(&value).is_expired(self.now_ms) {
                    return Frame::Bulk(user_key(&skey).to_vec());
                }
            }
        }
        Frame::Null
    }

    /// RENAME, RENAMENX, COPY and OBJECT; `None` for another name.
    pub(super) fn key_command(&mut self, name: &str, a: &[Bytes]) -> Option<Frame> {
        Some(match name {
            "rename" | "renamenx" => self.rename(&a[1], &a[2], name == "renamenx"),
            "copy" => self.copy(&a[1], &a[2], &a[3..]),
            "object" => self.object(&a[1], &a[2]),
            _ => return None,
        })
    }

    /// Writes the live value at `from` (and its elements) to `to`, replacing
    /// whatever `to` held. The caller checked `from` exists.
    fn duplicate(&mut self, from: &[u8], to: &[u8], value: &Value) {
        self.delete_key(to.to_vec());
        self.store(to.to_vec(), value);
        if value.kind != Kind::String {
            let elements: Vec<(Vec<u8>, Vec<u8>)> = self.elements(from, &[], None, false).collect();
            for (sub, element) in elements {
                self.put_element(to, &sub, element);
            }
        }
    }

    fn rename(&mut self, source: &[u8], destination: &[u8], only_new: bool) -> Frame {
        let (from, to) = (self.owned_key(source), self.owned_key(destination));
        let Some(value) = self.load(&from) else {
            return error("ERR no such key");
        };
        if only_new && self.load(&to).is_some() {
            return Frame::Integer(0);
        }
        if from != to {
            self.duplicate(&from, &to, &value);
            self.delete_key(from);
        }
        self.notify(b'g', "rename_from", source);
        self.notify(b'g', "rename_to", destination);
        if only_new {
            Frame::Integer(1)
        } else {
            Frame::ok()
        }
    }

    fn copy(&mut self, source: &[u8], destination: &[u8], options: &[Bytes]) -> Frame {
        let mut replace = false;
        let mut i = 0;
        while i < options.len() {
            match options[i].to_ascii_lowercase().as_slice() {
                b"replace" => replace = true,
                b"db" if i + 1 < options.len() => {
                    match redraft_common::ops::parse_strict_i64(&options[i + 1]) {
                        Some(0) => {}
                        Some(_) => return error("ERR DB index is out of range"),
                        None => return error(super::NOT_INTEGER),
                    }
                    i += 1;
                }
                _ => return error(SYNTAX),
            }
            i += 1;
        }
        let (from, to) = (self.owned_key(source), self.owned_key(destination));
        if from == to {
            return error("ERR source and destination objects are the same");
        }
        let Some(value) = self.load(&from) else {
            return Frame::Integer(0);
        };
        if !replace && self.load(&to).is_some() {
            return Frame::Integer(0);
        }
        self.duplicate(&from, &to, &value);
        self.notify(b'g', "copy_to", destination);
        Frame::Integer(1)
    }

    /// A key's whole value as a DUMP payload carries it, and whether it has
    /// an expiry; `None` without the key. Elements are read by the type's own
    /// range command.
    fn whole_value(&mut self, key: &[u8]) -> Result<Option<(rdb::Value, bool)>, NotOwned> {
        let skey = self.storage_key(key)?;
        let Some(value) = self.load(&skey) else {
            return Ok(None);
        };
        let range = |name: &str, extra: &[&str]| {
            let mut args = vec![name.as_bytes().to_vec(), key.to_vec()];
            args.extend(extra.iter().map(|a| a.as_bytes().to_vec()));
            args
        };
        let strings = |frame: Frame| -> Vec<Vec<u8>> {
            let items = match frame {
                Frame::Array(items) | Frame::Set(items) => items,
                Frame::Map(pairs) | Frame::Pairs(pairs) => pairs.into_iter().flat_map(|(a, b)| [a, b]).collect(),
                _ => Vec::new(),
            };
            items
                .into_iter()
                .map(|item| match item {
                    Frame::Bulk(bytes) => bytes,
                    Frame::Double(text) => text.into_bytes(),
                    other => format!("{other:?}").into_bytes(),
                })
                .collect()
        };
        let pairs = |flat: Vec<Vec<u8>>| {
            let mut items = flat.into_iter();
            std::iter::from_fn(move || Some((items.next()?, items.next()?))).collect::<Vec<_>>()
        };
        let expires = value.expires_at != 0;
        let whole = match value.kind {
            Kind::String => rdb::Value::String(value.payload),
            Kind::List => rdb::Value::List(strings(self.command(&range("lrange", &["0", "-1"]), 0, false))),
            Kind::Set => rdb::Value::Set(strings(self.command(&range("smembers", &[]), 0, false))),
            Kind::Hash => rdb::Value::Hash(pairs(strings(self.command(&range("hgetall", &[]), 0, false)))),
            Kind::ZSet => rdb::Value::ZSet(
                pairs(strings(self.command(
                    &range("zrange", &["0", "-1", "withscores"]),
                    0,
                    false,
                )))
                .into_iter()
                .map(|(member, score)| {
                    let score = std::str::from_utf8(&score)
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0.0);
                    (member, score)
                })
                .collect(),
            ),
        };
        Ok(Some((whole, expires)))
    }

    /// `key` as a backup keeps it: its DUMP payload and absolute expiry;
    /// `None` when it is gone, expired or not the shard's.
    pub fn backup_record(&mut self, key: &[u8]) -> Option<redraft_common::backup::Record> {
        let expires_at = self.load(&self.storage_key(key).ok()?)?.expires_at;
        let (value, _) = self.whole_value(key).ok()??;
        Some(redraft_common::backup::Record {
            key: key.to_vec(),
            payload: rdb::dump(&value),
            expires_at_ms: (expires_at != 0).then_some(expires_at as i64),
        })
    }

    /// DUMP: the value as a Redis DUMP payload (nil without the key).
    pub(super) fn dump(&mut self, key: &[u8]) -> Result<Frame, NotOwned> {
        Ok(match self.whole_value(key)? {
            Some((value, _)) => Frame::Bulk(rdb::dump(&value)),
            None => Frame::Null,
        })
    }

    /// DEBUG DIGEST-VALUE of `keys`, or DEBUG DIGEST's part of the whole
    /// shard (see [`redraft_common::ops::ReadOp::Digest`]).
    pub(super) fn digest(&mut self, keys: Option<&[Bytes]>) -> Result<Frame, NotOwned> {
        if let Some(keys) = keys {
            let mut out = Vec::with_capacity(keys.len());
            for key in keys {
                let mut value_digest = [0u8; 20];
                if let Some((value, expires)) = self.whole_value(key)? {
                    object_digest(&mut value_digest, &value, expires);
                }
                out.push(Frame::Simple(digest::hex(&value_digest)));
            }
            return Ok(Frame::Array(out));
        }
        let Frame::Array(all) = self.keys_matching(b"*") else {
            return Ok(error("ERR cannot list the shard's keys"));
        };
        let (mut part, mut count) = ([0u8; 20], 0i64);
        for key in all {
            let Frame::Bulk(key) = key else { continue };
            let Some((value, expires)) = self.whole_value(&key)? else {
                continue;
            };
            let mut key_digest = [0u8; 20];
            digest::mix(&mut key_digest, &key);
            object_digest(&mut key_digest, &value, expires);
            digest::xor(&mut part, &key_digest);
            count += 1;
        }
        Ok(Frame::Array(vec![Frame::Bulk(part.to_vec()), Frame::Integer(count)]))
    }

    /// RESTORE (see [`redraft_common::ops::WriteOp::Restore`]); `skey` is the
    /// key's storage key, owned.
    pub(super) fn restore(
        &mut self,
        skey: Vec<u8>,
        replace: bool,
        ops: &Result<Vec<WriteOp>, String>,
    ) -> Result<Frame, NotOwned> {
        if !replace && self.load(&skey).is_some() {
            return Ok(error("BUSYKEY Target key name already exists."));
        }
        let ops = match ops {
            Ok(ops) => ops,
            Err(text) => return Ok(error(text)),
        };
        self.delete_key(skey);
        for op in ops {
            if let Frame::Error(text) = self.write(op)? {
                return Ok(Frame::Error(text));
            }
        }
        Ok(Frame::ok())
    }

    /// OBJECT ENCODING under the cluster's `limits` (nil without the key).
    pub(super) fn object_encoding(&self, key: &[u8], limits: &EncodingLimits) -> Result<Frame, NotOwned> {
        let skey = self.storage_key(key)?;
        let Some(value) = self.load(&skey) else {
            return Ok(Frame::Null);
        };
        // Only as many elements as the limit that decides are read.
        let (checked, family): (u64, &[u8]) = match value.kind {
            Kind::Hash => (limits.hash_entries, &[]),
            Kind::ZSet => (limits.zset_entries, &[super::zset::BY_MEMBER]),
            Kind::Set => (limits.set_intset_entries, &[]),
            _ => (0, &[]),
        };
        let mut shape = Shape {
            longest: 0,
            all_integers: true,
        };
        // A string's elements are its chunks (apply::chunks): nothing to shape.
        let wanted = match value.kind {
            Kind::String => 0,
            _ => usize::try_from(checked.saturating_add(1)).unwrap_or(usize::MAX),
        };
        let elements = self.elements(&skey, family, None, false).take(wanted);
        for (sub, stored) in elements {
            let item = crate::storage::unhashed(&sub[family.len()..]);
            let longest = match value.kind {
                Kind::Hash => item.len().max(stored.len()),
                _ => item.len(),
            };
            shape.longest = shape.longest.max(longest as u64);
            shape.all_integers &= redraft_common::ops::parse_strict_i64(item).is_some();
        }
        Ok(Frame::Bulk(encoding(&value, &shape, limits).as_bytes().to_vec()))
    }

    fn object(&self, subcommand: &[u8], key: &[u8]) -> Frame {
        let value = self.load(&self.owned_key(key));
        match (subcommand.to_ascii_lowercase().as_slice(), value) {
            (b"encoding" | b"refcount" | b"idletime" | b"freq", None) => Frame::Null,
            // Parsed as OBJECT ENCODING (`object_encoding`) before it gets here.
            (b"encoding", Some(_)) => error("ERR OBJECT ENCODING takes the cluster's parameters"),
            (b"refcount", Some(_)) => Frame::Integer(1),
            (b"idletime", Some(_)) => Frame::Integer(0),
            (b"freq", Some(_)) => error(
                "ERR An LFU maxmemory policy is not selected, access frequency not tracked. Please note that when switching between policies at runtime LRU and LFU data will take some time to adjust.",
            ),
            _ => error(&format!(
                "ERR unknown subcommand '{}'. Try OBJECT HELP.",
                String::from_utf8_lossy(subcommand)
            )),
        }
    }
}

fn scan_step(next: i64, examined: u64, keys: Vec<Frame>) -> Frame {
    Frame::Array(vec![
        Frame::Integer(next),
        Frame::Integer(examined as i64),
        Frame::Array(keys),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::data_key;

    #[test]
    fn cursors_follow_the_global_key_order() {
        let keys: Vec<Vec<u8>> = (0u16..4)
            .flat_map(|v| (0..50).map(move |i| data_key(v, format!("k{i}").as_bytes())))
            .collect();
        let mut sorted = keys.clone();
        sorted.sort();
        let cursors: Vec<u64> = sorted.iter().map(|k| cursor_of(k)).collect();
        assert!(
            cursors.windows(2).all(|w| w[0] <= w[1]),
            "cursor order is storage order"
        );
        for key in &keys {
            let vnode = u16::from_be_bytes([key[0], key[1]]);
            assert!(
                resume_key(vnode, cursor_of(key)) <= *key,
                "resuming never skips the key"
            );
        }
    }
}

//! What hashes, lists, sets and sorted sets share: the dispatcher of shard
//! commands, collection metadata and elements in the keyspace, argument parsing
//! with Redis's error strings, the element cursor of HSCAN/SSCAN/ZSCAN and the
//! seeded random choices of SPOP, SRANDMEMBER and HRANDFIELD.
//!
//! DETERMINISM. A write's random choices come from the seed in its log entry, so
//! every replica picks the same elements; nothing here reads a clock or an RNG.

use redraft_common::ops::{parse_strict_i64, Bytes};
use redraft_common::resp::Frame;

use super::{Keyspace, NOT_INTEGER, WRONGTYPE};
use crate::storage::{element_prefix, prefix_end, CollectionMeta, Kind, Value};

/// Redis's syntax error.
pub(super) const SYNTAX: &str = "ERR syntax error";
/// Redis's error for a count that must not be negative.
pub(super) const MUST_BE_POSITIVE: &str = "ERR value is out of range, must be positive";

/// A live collection: its metadata and expiry.
#[derive(Clone, Copy, Debug)]
pub(super) struct Collection {
    pub meta: CollectionMeta,
    pub expires_at: u64,
}

impl Collection {
    /// A collection about to be created: no elements, no expiry.
    pub fn new() -> Collection {
        Collection {
            meta: CollectionMeta::empty(),
            expires_at: 0,
        }
    }
}

/// A reply computed before anything was written: an error or an early answer.
pub(super) type Reply<T> = Result<T, Frame>;

pub(super) fn error(text: &str) -> Frame {
    Frame::error(text)
}

/// An integer argument (Redis's `string2ll`).
pub(super) fn int(arg: &[u8]) -> Reply<i64> {
    parse_strict_i64(arg).ok_or_else(|| error(NOT_INTEGER))
}

/// A count that must not be negative.
pub(super) fn positive_count(arg: &[u8]) -> Reply<u64> {
    let n = int(arg).map_err(|_| error(MUST_BE_POSITIVE))?;
    u64::try_from(n).map_err(|_| error(MUST_BE_POSITIVE))
}

/// A double argument as Redis's `getDoubleFromObject` reads it: `inf` and
/// `-inf` allowed, no spaces, no NaN.
pub(super) fn double(arg: &[u8]) -> Option<f64> {
    let text = std::str::from_utf8(arg).ok()?;
    if text.is_empty() || text.trim() != text {
        return None;
    }
    let value = match text.to_ascii_lowercase().as_str() {
        "inf" | "+inf" | "infinity" | "+infinity" => f64::INFINITY,
        "-inf" | "-infinity" => f64::NEG_INFINITY,
        lower if lower.contains("inf") || lower.contains("nan") => return None,
        _ => text.parse().ok()?,
    };
    (!value.is_nan()).then_some(value)
}

/// A double as Redis 7.0 replies with it (`%.17g`; `inf`, `-inf`).
pub fn format_double(value: f64) -> String {
    if value.is_infinite() {
        return if value > 0.0 { "inf" } else { "-inf" }.into();
    }
    if value == 0.0 {
        return if value.is_sign_negative() { "-0" } else { "0" }.into();
    }
    let scientific = format!("{value:.16e}");
    let (mantissa, exponent) = scientific.split_once('e').expect("formatted with an exponent");
    let exponent: i32 = exponent.parse().expect("integer exponent");
    if !(-4..17).contains(&exponent) {
        let sign = if exponent < 0 { '-' } else { '+' };
        format!("{}e{sign}{:02}", trim_zeros(mantissa), exponent.abs())
    } else {
        trim_zeros(&format!("{value:.*}", (16 - exponent) as usize)).to_string()
    }
}

fn trim_zeros(text: &str) -> &str {
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.')
    } else {
        text
    }
}

/// Redis's inclusive, negative-from-the-end range over a list of `len`, as
/// `start..end` offsets (empty when out of range).
pub(super) fn offsets(start: i64, stop: i64, len: u64) -> std::ops::Range<u64> {
    let len = len as i64;
    let start = if start < 0 { (len + start).max(0) } else { start };
    let stop = if stop < 0 { len + stop } else { stop.min(len - 1) };
    if start > stop || start >= len {
        0..0
    } else {
        start as u64..stop as u64 + 1
    }
}

/// A small deterministic generator (splitmix64) seeded from the log entry.
pub(super) struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Positions of `0..len` for a random-members command's `count` (not 0,
    /// `len` > 0): distinct and ascending when positive, `-count` draws that
    /// may repeat when negative (Redis's SRANDMEMBER family).
    pub fn picks(&mut self, len: u64, count: i64) -> Vec<usize> {
        if count > 0 {
            self.distinct(len, count as u64)
                .into_iter()
                .map(|p| p as usize)
                .collect()
        } else {
            (0..count.unsigned_abs()).map(|_| self.below(len) as usize).collect()
        }
    }

    /// `count` distinct positions of `0..len`, ascending.
    pub fn distinct(&mut self, len: u64, count: u64) -> Vec<u64> {
        if count >= len {
            return (0..len).collect();
        }
        // Floyd's algorithm: exactly `count` draws, no rejection loop.
        let mut chosen = std::collections::BTreeSet::new();
        for j in len - count..len {
            let t = self.below(j + 1);
            if !chosen.insert(t) {
                chosen.insert(j);
            }
        }
        chosen.into_iter().collect()
    }
}

/// MATCH and COUNT of the element scans; the cursor is parsed by the caller.
pub(super) struct ScanOptions {
    pub pattern: Option<Bytes>,
    pub count: usize,
}

/// Parses `cursor [MATCH pattern] [COUNT n]` starting at `args[0]`.
pub(super) fn scan_options(args: &[Bytes]) -> Reply<(u64, ScanOptions)> {
    let cursor = std::str::from_utf8(&args[0])
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| error("ERR invalid cursor"))?;
    let mut options = ScanOptions {
        pattern: None,
        count: 10,
    };
    let mut rest = &args[1..];
    while !rest.is_empty() {
        let option = rest[0].to_ascii_lowercase();
        let Some(value) = rest.get(1) else {
            return Err(error(SYNTAX));
        };
        match option.as_slice() {
            b"match" => options.pattern = Some(value.clone()),
            b"count" => {
                let n = int(value)?;
                if n < 1 {
                    return Err(error(SYNTAX));
                }
                options.count = n as usize;
            }
            _ => return Err(error(SYNTAX)),
        }
        rest = &rest[2..];
    }
    Ok((cursor, options))
}

/// The scan reply: next cursor, then the items.
pub(super) fn scan_reply(next: u64, items: Vec<Frame>) -> Frame {
    Frame::Array(vec![Frame::Bulk(next.to_string().into_bytes()), Frame::Array(items)])
}

/// The 8-byte hash prefix of a [`crate::storage::hashed`] sub-key as a cursor.
pub(super) fn cursor_of(stored: &[u8]) -> u64 {
    u64::from_be_bytes(stored[..8].try_into().expect("hashed sub-key"))
}

/// Elements of the biggest collection a first HSCAN, SSCAN or ZSCAN call
/// returns whole (Redis's listpack limit for hashes and sorted sets).
const SMALL_COLLECTION: u64 = 128;

impl Keyspace<'_> {
    /// Executes a shard command (keys already checked for ownership).
    /// `write` says whether the caller will commit what it writes: a writing
    /// command sent as a read is refused, never half-run.
    pub(super) fn command(&mut self, args: &[Bytes], seed: u64, write: bool) -> Frame {
        let spec = args.first().and_then(|name| redraft_common::commands::lookup(name));
        let name = match spec {
            Some(spec) if spec.writes(args) && !write => {
                return error(&format!("ERR '{}' writes and must go through the log", spec.name))
            }
            Some(spec) if !redraft_common::commands::arity_ok(spec.arity, args.len()) => {
                return error(&format!("ERR wrong number of arguments for '{}' command", spec.name))
            }
            Some(spec) => spec.name,
            None => return error("ERR unknown shard command"),
        };
        let before = if self.notify && spec.is_some_and(|spec| spec.writes(args)) {
            Some(self.before_command(name, args))
        } else {
            None
        };
        let reply = self.run_command(name, args, seed);
        if let Some(before) = before {
            if !matches!(reply, Frame::Error(_)) {
                self.notify_command(name, args, &reply, before);
            }
            self.notify_emptied();
        }
        reply
    }

    fn run_command(&mut self, name: &'static str, args: &[Bytes], seed: u64) -> Frame {
        let reply = match name.as_bytes()[0] {
            _ if matches!(name, "rename" | "renamenx" | "copy" | "object") => self.key_command(name, args),
            _ if name.starts_with("bit") || name.ends_with("bit") => self.bits_command(name, args),
            _ if name.starts_with("pf") => self.hll_command(name, args),
            _ if name.starts_with("geo") => self.geo_command(name, args),
            _ if matches!(
                name,
                "zunion"
                    | "zinter"
                    | "zdiff"
                    | "zunionstore"
                    | "zinterstore"
                    | "zdiffstore"
                    | "zintercard"
                    | "zrangestore"
                    | "zrandmember"
            ) =>
            {
                self.zset_ops_command(name, args, seed)
            }
            _ if name == "lcs" => Some(self.lcs(args)),
            _ if name == "sort" || name == "sort_ro" => Some(self.sort(args, name == "sort_ro").unwrap_or_else(|e| e)),
            b'h' => self.hash_command(name, args, seed),
            b'l' | b'r' => self.list_command(name, args),
            b's' => self.set_command(name, args, seed),
            b'z' => self.zset_command(name, args),
            _ => None,
        };
        reply.unwrap_or_else(|| error(&format!("ERR unknown shard command '{name}'")))
    }

    /// The storage key of a key the caller has checked is owned.
    pub(super) fn owned_key(&self, key: &[u8]) -> Vec<u8> {
        crate::storage::data_key(self.ring.vnode_of(key), key)
    }

    /// The live collection at `skey`: `None` when absent, WRONGTYPE when the key
    /// holds another type.
    pub(super) fn collection(&self, skey: &[u8], kind: Kind) -> Reply<Option<Collection>> {
        match self.load(skey) {
            None => Ok(None),
            Some(v) if v.kind != kind => Err(error(WRONGTYPE)),
            Some(v) => Ok(Some(Collection {
                meta: CollectionMeta::decode(&v.payload),
                expires_at: v.expires_at,
            })),
        }
    }

    /// Like [`Self::collection`], for a write: an expired value's leftovers are
    /// deleted first, so a new collection never sees old elements.
    pub(super) fn collection_for_write(&mut self, skey: &[u8], kind: Kind) -> Reply<Option<Collection>> {
        if self.load_raw(skey).is_some_and(|v| v.is_expired(self.now_ms)) {
            self.delete_key(skey.to_vec());
        }
        self.collection(skey, kind)
    }

    /// Stores a collection's metadata; an empty collection is deleted (its
    /// elements are gone already).
    pub(super) fn save_collection(&mut self, skey: &[u8], kind: Kind, collection: Collection) {
        if collection.meta.len == 0 {
            if self.notify && self.load_record(skey).is_some() {
                self.emptied.push(crate::storage::user_key(skey).to_vec());
            }
            self.remove(skey.to_vec());
        } else {
            let value = Value {
                kind,
                expires_at: collection.expires_at,
                revision: 0,
                payload: collection.meta.encode(),
                edited: false,
                chunked: false,
            };
            self.store(skey.to_vec(), &value);
        }
    }

    fn element_key(skey: &[u8], sub: &[u8]) -> Vec<u8> {
        let mut key = element_prefix(skey);
        key.extend_from_slice(sub);
        key
    }

    pub(super) fn element(&self, skey: &[u8], sub: &[u8]) -> Option<Vec<u8>> {
        self.load_bytes(&Self::element_key(skey, sub))
    }

    pub(super) fn put_element(&mut self, skey: &[u8], sub: &[u8], value: Vec<u8>) {
        self.put_bytes(Self::element_key(skey, sub), value);
    }

    pub(super) fn delete_element(&mut self, skey: &[u8], sub: &[u8]) {
        self.remove(Self::element_key(skey, sub));
    }

    /// Elements of `skey` whose sub-key starts with `sub_prefix` and is at or
    /// after `from` (in scan order), as `(sub-key, value)`.
    pub(super) fn elements(
        &self,
        skey: &[u8],
        sub_prefix: &[u8],
        from: Option<&[u8]>,
        reverse: bool,
    ) -> impl Iterator<Item = (Vec<u8>, Vec<u8>)> + '_ {
        let base = element_prefix(skey);
        let strip = base.len();
        let prefix = Self::element_key(skey, sub_prefix);
        let end = prefix_end(&prefix);
        let (start, end) = match (from, reverse) {
            (Some(f), false) => (Self::element_key(skey, f), end),
            (Some(f), true) => (prefix, prefix_end(&Self::element_key(skey, f))),
            (None, _) => (prefix, end),
        };
        self.scan(&start, &end, reverse)
            .map(move |(key, value)| (key[strip..].to_vec(), value))
    }

    /// One step of HSCAN/SSCAN/ZSCAN over sub-keys stored after their hash
    /// (`family` prefix first): the cursor is the hash to resume at, so elements
    /// present for the whole scan are returned even as others come and go.
    /// `render` turns a `(sub-key without family, value)` into reply items.
    pub(super) fn scan_elements(
        &self,
        skey: &[u8],
        family: &[u8],
        cursor: u64,
        options: &ScanOptions,
        mut render: impl FnMut(&[u8], &[u8], &mut Vec<Frame>),
    ) -> Frame {
        let mut from = family.to_vec();
        from.extend_from_slice(&cursor.to_be_bytes());
        // Redis returns a collection in a small encoding (listpack, intset) whole
        // whatever COUNT says; so does a first call here for one that small.
        let whole = cursor == 0
            && self
                .load(skey)
                .is_some_and(|v| crate::storage::CollectionMeta::decode(&v.payload).len <= SMALL_COLLECTION);
        let count = if whole { usize::MAX } else { options.count };
        let mut items = Vec::new();
        for (seen, (sub, value)) in self.elements(skey, family, Some(&from), false).enumerate() {
            let stored = &sub[family.len()..];
            if seen >= count {
                // Resume at this element's hash; 0 would mean "done", so an element
                // whose hash is 0 can only be returned by a first call.
                return scan_reply(cursor_of(stored).max(1), items);
            }
            let member = crate::storage::unhashed(stored);
            if options
                .pattern
                .as_ref()
                .is_none_or(|p| redraft_common::glob::matches(p, member))
            {
                render(stored, &value, &mut items);
            }
        }
        scan_reply(0, items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_redis_index_rules() {
        assert_eq!(offsets(0, -1, 5), 0..5);
        assert_eq!(offsets(-2, -1, 5), 3..5);
        assert_eq!(offsets(1, 100, 5), 1..5);
        assert_eq!(offsets(-100, 0, 5), 0..1);
        assert_eq!(offsets(3, 1, 5), 0..0);
        assert_eq!(offsets(5, 9, 5), 0..0);
        assert_eq!(offsets(0, -1, 0), 0..0);
    }

    #[test]
    fn doubles_are_formatted_like_redis_7_0() {
        for (value, text) in [
            (1.0, "1"),
            (1.5, "1.5"),
            (-2.25, "-2.25"),
            (0.1, "0.10000000000000001"),
            (1e20, "1e+20"),
            (1.5e-7, "1.4999999999999999e-07"),
            (123456789.0, "123456789"),
            (f64::INFINITY, "inf"),
            (f64::NEG_INFINITY, "-inf"),
            (0.0, "0"),
        ] {
            assert_eq!(format_double(value), text);
        }
    }

    #[test]
    fn doubles_parse_like_redis() {
        assert_eq!(double(b"1.5"), Some(1.5));
        assert_eq!(double(b"-inf"), Some(f64::NEG_INFINITY));
        assert_eq!(double(b"+inf"), Some(f64::INFINITY));
        assert_eq!(double(b"1e3"), Some(1000.0));
        assert_eq!(double(b"nan"), None);
        assert_eq!(double(b" 1"), None);
        assert_eq!(double(b"abc"), None);
    }

    #[test]
    fn random_choices_depend_only_on_the_seed() {
        let picks = |seed| {
            let mut rng = Rng::new(seed);
            (rng.distinct(100, 5), rng.below(7))
        };
        assert_eq!(picks(42), picks(42));
        assert_ne!(picks(42), picks(43));
        let mut rng = Rng::new(7);
        let chosen = rng.distinct(10, 4);
        assert_eq!(chosen.len(), 4);
        assert!(chosen.windows(2).all(|w| w[0] < w[1]) && chosen.iter().all(|&p| p < 10));
        assert_eq!(rng.distinct(3, 5), vec![0, 1, 2]);
    }
}

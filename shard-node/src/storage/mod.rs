//! How user data is laid out in the node's RocksDB.
//!
//! Everything of one virtual node lives under its `vnode u16 BE` prefix in the
//! `data` column family, so a shard's snapshot is a scan of its virtual nodes and
//! moving, splitting or flushing a virtual node is one prefix.
//!
//! KEYS. Under the prefix, a tag byte separates two kinds of records:
//! - `vnode | 0x00 | xxh3(user key) u64 BE | user key`: the key's record (a
//!   string's value, or a collection's metadata). Counting, expiring and scanning
//!   keys read only these. Ordering by the key's hash gives SCAN a numeric cursor
//!   that names a position (virtual node, hash) rather than a key, as Redis's
//!   cursor names a hash bucket.
//! - `vnode | 0x01 | key length u32 BE | user key | sub-key`: one element of a
//!   collection (a hash field, a set member, a list slot, a sorted-set entry), so
//!   changing one element never rewrites the collection. The length makes a key's
//!   element prefix unique (no key's prefix is another key's), and deleting a
//!   collection is one range deletion of that prefix.
//!
//! Hash fields, set members and sorted-set members are likewise stored after
//! their own hash ([`hashed`]), for the same cursor in HSCAN, SSCAN and ZSCAN.
//!
//! VALUES. `kind u8 | expires_at u64 BE (ms since epoch, 0 = none) | revision u64
//! BE | payload`; for a string the payload is its bytes, for a collection its
//! [`CollectionMeta`]. The revision is the log index of the entry that last
//! changed the key (any element of a collection included): WATCH compares it.
//! Element values are the element's own bytes (see the collection modules).

use std::sync::atomic::{AtomicBool, Ordering};

use redraft_common::ids::VnodeId;
use rocksdb::{ColumnFamily, Direction, IteratorMode, DB};

const TAG_KEY: u8 = 0;
const TAG_ELEMENT: u8 = 1;

/// The storage key of `key` in virtual node `vnode`.
pub fn data_key(vnode: VnodeId, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(11 + key.len());
    out.extend_from_slice(&vnode.to_be_bytes());
    out.push(TAG_KEY);
    out.extend_from_slice(&hashed(key));
    out
}

/// `xxh3(bytes) u64 BE | bytes`: the stored form of keys, hash fields and members.
pub fn hashed(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + bytes.len());
    out.extend_from_slice(&xxhash_rust::xxh3::xxh3_64(bytes).to_be_bytes());
    out.extend_from_slice(bytes);
    out
}

/// The bytes of a [`hashed`] form, without the hash.
pub fn unhashed(stored: &[u8]) -> &[u8] {
    &stored[8..]
}

/// The prefix of every element of the collection stored at `data_key`.
pub fn element_prefix(data_key: &[u8]) -> Vec<u8> {
    let key = user_key(data_key);
    let mut out = Vec::with_capacity(7 + key.len());
    out.extend_from_slice(&data_key[..2]);
    out.push(TAG_ELEMENT);
    out.extend_from_slice(&(key.len() as u32).to_be_bytes());
    out.extend_from_slice(key);
    out
}

/// The first storage key of virtual node `vnode`.
pub fn vnode_start(vnode: VnodeId) -> Vec<u8> {
    vnode.to_be_bytes().to_vec()
}

/// The first storage key after virtual node `vnode` (exclusive end of its range).
/// Rings have at most `u16::MAX` virtual nodes, so `vnode + 1` always fits.
pub fn vnode_end(vnode: VnodeId) -> Vec<u8> {
    (vnode + 1).to_be_bytes().to_vec()
}

/// The range of key records (no elements) of virtual node `vnode`.
pub fn key_records(vnode: VnodeId) -> (Vec<u8>, Vec<u8>) {
    let mut start = vnode_start(vnode);
    let mut end = start.clone();
    start.push(TAG_KEY);
    end.push(TAG_ELEMENT);
    (start, end)
}

/// The exclusive end of the range of keys starting with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Only an all-0xff prefix gets here; vnode prefixes never are (see vnode_end).
    vec![0xff; prefix.len() + 1]
}

/// The user key of a key record's storage key.
pub fn user_key(storage_key: &[u8]) -> &[u8] {
    &storage_key[11..]
}

/// The user key a data record belongs to: its own for a key record, its
/// collection's for an element (`vnode | 1 | key length u32 BE | key | sub-key`,
/// as [`element_prefix`] lays it out).
pub fn owner_key(storage_key: &[u8]) -> &[u8] {
    if is_key_record(storage_key) {
        return user_key(storage_key);
    }
    let len = storage_key
        .get(3..7)
        .map_or(0, |b| u32::from_be_bytes(b.try_into().expect("four bytes")) as usize);
    storage_key.get(7..7 + len).unwrap_or_default()
}

/// Whether a storage key is a key record (not a collection element).
pub fn is_key_record(storage_key: &[u8]) -> bool {
    storage_key.get(2) == Some(&TAG_KEY)
}

/// Which virtual nodes may hold collection elements on this node.
///
/// Overwriting a key with a string must delete the elements of a collection
/// stored there, which takes a read of the key's record first. Most keys of
/// most workloads are strings: a virtual node that has never held an element
/// cannot hold one, so a plain SET there writes without reading. A virtual node
/// is marked before its first element is written (in the apply batch, so later
/// writes of the same batch see it) and stays marked until the node restarts,
/// when the marks are computed again from what is stored. The hint is only ever
/// conservative: "may hold" is never wrong, only slower.
pub struct ElementHints {
    may_hold: Vec<AtomicBool>,
}

impl ElementHints {
    /// Marks every virtual node that holds an element in `cf` now: two seeks
    /// per virtual node present, whatever the data size.
    pub fn load(db: &DB, cf: &ColumnFamily) -> ElementHints {
        let hints = ElementHints {
            may_hold: (0..=u16::MAX as usize).map(|_| AtomicBool::new(false)).collect(),
        };
        let mut vnode: u32 = 0;
        while vnode <= u32::from(u16::MAX) {
            let mut from = (vnode as VnodeId).to_be_bytes().to_vec();
            from.push(TAG_ELEMENT);
            let next = db
                .iterator_cf(cf, IteratorMode::From(&from, Direction::Forward))
                .next()
                .map(|item| item.unwrap_or_else(|e| panic!("RocksDB read failed: {e}")));
            let Some((key, _)) = next else { break };
            let Some(found) = key.get(..2).map(|b| u32::from(u16::from_be_bytes([b[0], b[1]]))) else {
                break;
            };
            if found == vnode && !is_key_record(&key) {
                hints.mark(&key);
                vnode += 1;
            } else {
                vnode = found.max(vnode + 1);
            }
        }
        hints
    }

    /// Records that `storage_key` is about to be written (a no-op for key records).
    pub fn mark(&self, storage_key: &[u8]) {
        if let (false, Some(b)) = (is_key_record(storage_key), storage_key.get(..2)) {
            self.may_hold[usize::from(u16::from_be_bytes([b[0], b[1]]))].store(true, Ordering::Relaxed);
        }
    }

    /// Whether the virtual node of `storage_key` may hold collection elements.
    pub fn may_hold(&self, storage_key: &[u8]) -> bool {
        storage_key
            .get(..2)
            .is_none_or(|b| self.may_hold[usize::from(u16::from_be_bytes([b[0], b[1]]))].load(Ordering::Relaxed))
    }
}

/// The kind of a stored value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A Redis string.
    String = 0,
    /// A hash: field -> value elements.
    Hash = 1,
    /// A list: elements at consecutive positions.
    List = 2,
    /// A set: member elements.
    Set = 3,
    /// A sorted set: member -> score and (score, member) elements.
    ZSet = 4,
}

impl Kind {
    /// Redis's name for the type (TYPE command).
    pub fn name(self) -> &'static str {
        match self {
            Kind::String => "string",
            Kind::Hash => "hash",
            Kind::List => "list",
            Kind::Set => "set",
            Kind::ZSet => "zset",
        }
    }

    fn from_byte(byte: u8) -> Option<Kind> {
        Some(match byte {
            0 => Kind::String,
            1 => Kind::Hash,
            2 => Kind::List,
            3 => Kind::Set,
            4 => Kind::ZSet,
            _ => return None,
        })
    }
}

/// The metadata of a collection, the payload of its key record.
///
/// `head..tail` are a list's positions (its elements are stored at `head`,
/// `head + 1`, ...; a push on the left takes `head - 1`); other collections keep
/// only `len`. Positions start in the middle of `u64`, so either end can grow for
/// as long as any list can.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CollectionMeta {
    /// Number of elements (hash fields, members, list items).
    pub len: u64,
    /// A list's first position.
    pub head: u64,
}

/// Where an empty list's positions start.
pub const LIST_MIDDLE: u64 = 1 << 63;

impl CollectionMeta {
    /// An empty collection.
    pub fn empty() -> CollectionMeta {
        CollectionMeta {
            len: 0,
            head: LIST_MIDDLE,
        }
    }

    /// A list's position after its last element.
    pub fn tail(&self) -> u64 {
        self.head + self.len
    }

    /// Payload encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16);
        out.extend_from_slice(&self.len.to_be_bytes());
        out.extend_from_slice(&self.head.to_be_bytes());
        out
    }

    /// Decodes a payload.
    ///
    /// # Panics
    /// On a malformed payload (storage corruption; see [`Value::decode`]).
    pub fn decode(payload: &[u8]) -> CollectionMeta {
        assert!(payload.len() == 16, "corrupt collection metadata");
        CollectionMeta {
            len: u64::from_be_bytes(payload[..8].try_into().expect("8 bytes")),
            head: u64::from_be_bytes(payload[8..].try_into().expect("8 bytes")),
        }
    }
}

/// A decoded value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Value {
    /// Its kind.
    pub kind: Kind,
    /// Expiry in ms since the epoch, 0 for none.
    pub expires_at: u64,
    /// Log index of the last change (set when stored).
    pub revision: u64,
    /// The payload (the string's bytes).
    pub payload: Vec<u8>,
    /// A string that APPEND or SETRANGE edited in place, which Redis keeps in
    /// its `raw` encoding (OBJECT ENCODING) until it is replaced.
    pub edited: bool,
    /// A long string stored in chunks: the record's payload is then only the
    /// string's length (u64 BE), and its bytes are elements of the key, 1 KiB
    /// each, numbered by a u32 BE (see `apply`'s string chunks). Only the
    /// key record says so: values read through the keyspace are whole.
    pub chunked: bool,
}

/// Bytes before a value's payload.
const HEADER: usize = 17;

/// Bit of the kind byte that marks a chunked string ([`Value::chunked`]).
const CHUNKED: u8 = 0x40;

/// Bit of the kind byte that marks an edited string ([`Value::edited`]).
const EDITED: u8 = 0x80;

impl Value {
    /// A string value.
    pub fn string(payload: Vec<u8>, expires_at: u64) -> Value {
        Value {
            kind: Kind::String,
            expires_at,
            revision: 0,
            payload,
            edited: false,
            chunked: false,
        }
    }

    /// Whether the value is expired at `now_ms`.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_at != 0 && self.expires_at <= now_ms
    }

    /// Storage encoding.
    pub fn encode(&self) -> Vec<u8> {
        self.encode_at(self.revision)
    }

    /// Storage encoding with another revision (the entry storing it).
    pub fn encode_at(&self, revision: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + self.payload.len());
        out.push(self.kind as u8 | if self.edited { EDITED } else { 0 } | if self.chunked { CHUNKED } else { 0 });
        out.extend_from_slice(&self.expires_at.to_be_bytes());
        out.extend_from_slice(&revision.to_be_bytes());
        out.extend_from_slice(&self.payload);
        out
    }

    /// Decodes a stored value.
    ///
    /// # Panics
    /// On a malformed value: storage corruption must stop the node rather than let
    /// it diverge from its peers.
    pub fn decode(bytes: &[u8]) -> Value {
        let kind = bytes.first().and_then(|&b| Kind::from_byte(b & !(EDITED | CHUNKED)));
        let kind = match kind {
            Some(kind) if bytes.len() >= HEADER => kind,
            _ => panic!("corrupt value in data column family"),
        };
        Value {
            kind,
            expires_at: u64::from_be_bytes(bytes[1..9].try_into().expect("8 bytes")),
            revision: u64::from_be_bytes(bytes[9..17].try_into().expect("8 bytes")),
            payload: bytes[HEADER..].to_vec(),
            edited: bytes[0] & EDITED != 0,
            chunked: bytes[0] & CHUNKED != 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_edited_string_keeps_its_mark_and_its_kind() {
        let mut v = Value::string(b"1234".to_vec(), 99);
        assert!(!Value::decode(&v.encode()).edited);
        v.edited = true;
        let back = Value::decode(&v.encode());
        assert!(back.edited);
        assert_eq!(
            (back.kind, back.expires_at, back.payload),
            (Kind::String, 99, b"1234".to_vec())
        );
    }

    #[test]
    fn vnode_ranges_are_contiguous_and_ordered() {
        assert!(data_key(1, b"zzz") < data_key(2, b""));
        assert!(data_key(1, b"zzz") < vnode_end(1));
        assert!(vnode_start(1) <= data_key(1, b""));
        assert_eq!(vnode_end(1), vnode_start(2));
        assert!(data_key(u16::MAX - 1, b"\xff\xff") < vnode_end(u16::MAX - 1));
        assert!(data_key(255, b"k") < data_key(256, b"a"));
    }

    #[test]
    fn elements_sort_after_every_key_record_of_their_vnode() {
        let (start, end) = key_records(7);
        let key = data_key(7, b"\xff\xffzz");
        assert!(start <= key && key < end);
        let elements = element_prefix(&data_key(7, b"h"));
        assert!(end <= elements && elements < vnode_end(7));
        assert!(!is_key_record(&elements) && is_key_record(&key));
        // One key's element prefix is never a prefix of another key's.
        let longer = element_prefix(&data_key(7, b"hh"));
        assert!(!longer.starts_with(&elements));
        assert!(prefix_end(&elements) <= longer || longer < elements);
        assert_eq!(prefix_end(b"a\xff\xff"), b"b".to_vec());
    }

    #[test]
    fn element_hints_find_stored_elements_and_follow_writes() {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let db = DB::open_cf(&opts, dir.path(), ["data"]).unwrap();
        let cf = db.cf_handle("data").unwrap();
        // vnode 3: strings only; vnode 5 and 65535: a collection each.
        for (vnode, key) in [(3, b"s".as_slice()), (5, b"h"), (u16::MAX, b"z")] {
            db.put_cf(cf, data_key(vnode, key), b"v").unwrap();
        }
        for vnode in [5, u16::MAX] {
            let mut element = element_prefix(&data_key(vnode, b"h"));
            element.extend_from_slice(b"field");
            db.put_cf(cf, element, b"v").unwrap();
        }
        let hints = ElementHints::load(&db, cf);
        let holding: Vec<u16> = (0..=u16::MAX).filter(|&v| hints.may_hold(&data_key(v, b"k"))).collect();
        assert_eq!(holding, vec![5, u16::MAX]);
        // A key record does not mark its vnode; an element does.
        hints.mark(&data_key(3, b"other"));
        assert!(!hints.may_hold(&data_key(3, b"s")));
        hints.mark(&element_prefix(&data_key(3, b"s")));
        assert!(hints.may_hold(&data_key(3, b"s")));
    }

    #[test]
    fn collection_metadata_round_trips() {
        let meta = CollectionMeta {
            len: 3,
            head: LIST_MIDDLE - 2,
        };
        assert_eq!(CollectionMeta::decode(&meta.encode()), meta);
        assert_eq!(meta.tail(), LIST_MIDDLE + 1);
    }

    #[test]
    fn values_round_trip() {
        let mut v = Value::string(b"hello".to_vec(), 1234);
        v.revision = 77;
        assert_eq!(Value::decode(&v.encode()), v);
        assert!(v.is_expired(1234));
        assert!(!v.is_expired(1233));
        assert!(!Value::string(vec![], 0).is_expired(u64::MAX));
    }
}

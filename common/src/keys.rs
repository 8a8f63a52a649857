//! Key hashing and the ring of virtual nodes.
//!
//! A key's position is `xxh3_64` of the key, or of its hash tag (the non-empty part
//! between the first `{` and the next `}`, Redis's rule), so `{user1}:a` and
//! `{user1}:b` always land on the same virtual node. Virtual node `v` sits at
//! `xxh3_64("vnode-{v}")` and owns the arc that ends at it: a key belongs to the
//! first virtual node clockwise from its position.
//!
//! WHY A FIXED RING. The ring is built once from the virtual-node count, which is
//! chosen when the cluster is created and never changes, so every process and every
//! version computes the same answer. What moves is the `vnode -> shard` table in the
//! routing table, one whole virtual node at a time (Dynamo's "fixed equal
//! partitions").
//!
//! STABILITY. Hashing goes through [`StableHasher`], a streaming xxh3 that sees only
//! the bytes written, never `std`'s `DefaultHasher` (randomly seeded) and never
//! `Hash for [u8]` (which prefixes a platform-sized length).

use std::hash::{BuildHasher, Hash, Hasher};

use hashring::HashRing;
use xxhash_rust::xxh3::Xxh3;

use crate::ids::VnodeId;

/// Number of virtual nodes of a new cluster. 1024 keeps the table small (2 KiB) and
/// lets a 100-shard cluster move load in steps of about 10% of a shard.
pub const DEFAULT_VNODES: u32 = 1024;

/// The part of `key` that is hashed: its hash tag when it has a non-empty one.
pub fn hash_tag(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|&b| b == b'{') {
        if let Some(len) = key[open + 1..].iter().position(|&b| b == b'}') {
            if len > 0 {
                return &key[open + 1..open + 1 + len];
            }
        }
    }
    key
}

/// `xxh3_64` of the key's hash tag: the key's position on the ring.
pub fn key_position(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(hash_tag(key))
}

/// Streaming xxh3 over exactly the bytes written to it.
#[derive(Default, Clone, Copy)]
pub struct StableHasher;

impl BuildHasher for StableHasher {
    type Hasher = Xxh3Writer;
    fn build_hasher(&self) -> Xxh3Writer {
        Xxh3Writer(Xxh3::new())
    }
}

/// The [`Hasher`] of [`StableHasher`].
pub struct Xxh3Writer(Xxh3);

impl Hasher for Xxh3Writer {
    fn finish(&self) -> u64 {
        self.0.digest()
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

/// A virtual node as a point on the ring: hashes as the bytes `vnode-{id}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct VnodePoint(VnodeId);

impl Hash for VnodePoint {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(format!("vnode-{}", self.0).as_bytes());
    }
}

/// A key as a point on the ring: hashes as its hash tag's bytes only.
struct KeyPoint<'a>(&'a [u8]);

impl Hash for KeyPoint<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(hash_tag(self.0));
    }
}

/// The immutable ring of `count` virtual nodes.
pub struct Ring {
    ring: HashRing<VnodePoint, StableHasher>,
    count: u32,
}

impl Ring {
    /// Builds the ring of `count` virtual nodes (1..=65535, so that every vnode
    /// has a two-byte successor that ends its storage range).
    ///
    /// # Panics
    /// When `count` is 0 or does not fit a [`VnodeId`].
    pub fn new(count: u32) -> Ring {
        assert!(
            count > 0 && count <= u32::from(VnodeId::MAX),
            "vnode count out of range"
        );
        let mut ring = HashRing::with_hasher(StableHasher);
        ring.batch_add((0..count).map(|v| VnodePoint(v as VnodeId)).collect());
        Ring { ring, count }
    }

    /// Number of virtual nodes.
    pub fn len(&self) -> u32 {
        self.count
    }

    /// Always false: a ring has at least one virtual node.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The virtual node that owns `key`.
    pub fn vnode_of(&self, key: &[u8]) -> VnodeId {
        self.ring.get(&KeyPoint(key)).expect("ring is never empty").0
    }
}

/// A key's position in a SCAN: its virtual node, then the top 48 bits of its
/// xxh3 hash (the order keys are stored in within a virtual node), never 0 (the
/// cursor that means "start" and "done"). Nodes stop and resume SCAN steps at
/// these positions, and the proxy cuts pages merged from several shards at them.
pub fn scan_position(vnode: VnodeId, key: &[u8]) -> u64 {
    scan_position_of_hash(vnode, xxhash_rust::xxh3::xxh3_64(key))
}

/// [`scan_position`] for a key whose xxh3 hash is already known.
pub fn scan_position_of_hash(vnode: VnodeId, hash: u64) -> u64 {
    (u64::from(vnode) << 48 | hash >> 16).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_tags_follow_redis_rules() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"{user1}:a", b"user1"),
            (b"foo{bar}baz", b"bar"),
            (b"foo{}{bar}", b"foo{}{bar}"),
            (b"foo{{bar}}zap", b"{bar"),
            (b"foo{bar}{zap}", b"bar"),
            (b"nobraces", b"nobraces"),
            (b"open{only", b"open{only"),
        ];
        for (key, tag) in cases {
            assert_eq!(hash_tag(key), *tag, "key {:?}", String::from_utf8_lossy(key));
        }
    }

    #[test]
    fn stable_hasher_is_plain_xxh3() {
        assert_eq!(
            StableHasher.hash_one(KeyPoint(b"hello")),
            xxhash_rust::xxh3::xxh3_64(b"hello")
        );
        assert_eq!(key_position(b"{a}x"), xxhash_rust::xxh3::xxh3_64(b"a"));
    }

    #[test]
    fn key_goes_to_first_vnode_clockwise() {
        let ring = Ring::new(64);
        let mut points: Vec<(u64, VnodeId)> = (0..64u16)
            .map(|v| (xxhash_rust::xxh3::xxh3_64(format!("vnode-{v}").as_bytes()), v))
            .collect();
        points.sort();
        for i in 0..500 {
            let key = format!("key:{i}");
            let pos = key_position(key.as_bytes());
            let expected = points.iter().find(|(p, _)| *p >= pos).unwrap_or(&points[0]).1;
            assert_eq!(ring.vnode_of(key.as_bytes()), expected);
        }
    }

    #[test]
    fn hash_tagged_keys_share_a_vnode_and_keys_spread() {
        let ring = Ring::new(DEFAULT_VNODES);
        assert_eq!(ring.vnode_of(b"{user1}:a"), ring.vnode_of(b"{user1}:b"));
        let mut seen = std::collections::HashSet::new();
        for i in 0..5000 {
            seen.insert(ring.vnode_of(format!("k{i}").as_bytes()));
        }
        // Arcs of randomly placed vnodes are exponentially distributed, so about
        // 1024 / (1 + 5000/1024) ~ 175 vnodes are expected to stay empty.
        assert!(seen.len() > 780, "5000 keys hit only {} of 1024 vnodes", seen.len());
    }
}

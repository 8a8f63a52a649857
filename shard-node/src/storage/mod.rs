//! How user data is laid out in the node's RocksDB.
//!
//! KEYS. `vnode u16 BE | user key` in the `data` column family: one virtual node's
//! data is one contiguous prefix, so a shard's snapshot is a scan of its virtual
//! nodes and moving a virtual node is a scan of one prefix.
//!
//! VALUES. `kind u8 | expires_at u64 BE (ms since epoch, 0 = none) | payload`.
//! Only strings (`kind` 0) exist today; the kind byte lets other types share the
//! keyspace and answer WRONGTYPE.

use redraft_common::ids::VnodeId;

/// The storage key of `key` in virtual node `vnode`.
pub fn data_key(vnode: VnodeId, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + key.len());
    out.extend_from_slice(&vnode.to_be_bytes());
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

/// The user key of a storage key.
pub fn user_key(storage_key: &[u8]) -> &[u8] {
    &storage_key[2..]
}

/// The kind of a stored value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A Redis string.
    String = 0,
}

impl Kind {
    /// Redis's name for the type (TYPE command).
    pub fn name(self) -> &'static str {
        match self {
            Kind::String => "string",
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
    /// The payload (the string's bytes).
    pub payload: Vec<u8>,
}

impl Value {
    /// A string value.
    pub fn string(payload: Vec<u8>, expires_at: u64) -> Value {
        Value {
            kind: Kind::String,
            expires_at,
            payload,
        }
    }

    /// Whether the value is expired at `now_ms`.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_at != 0 && self.expires_at <= now_ms
    }

    /// Storage encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(9 + self.payload.len());
        out.push(self.kind as u8);
        out.extend_from_slice(&self.expires_at.to_be_bytes());
        out.extend_from_slice(&self.payload);
        out
    }

    /// Decodes a stored value.
    ///
    /// # Panics
    /// On a malformed value: storage corruption must stop the node rather than let
    /// it diverge from its peers.
    pub fn decode(bytes: &[u8]) -> Value {
        assert!(
            bytes.len() >= 9 && bytes[0] == Kind::String as u8,
            "corrupt value in data column family"
        );
        Value {
            kind: Kind::String,
            expires_at: u64::from_be_bytes(bytes[1..9].try_into().expect("8 bytes")),
            payload: bytes[9..].to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn values_round_trip() {
        let v = Value::string(b"hello".to_vec(), 1234);
        assert_eq!(Value::decode(&v.encode()), v);
        assert!(v.is_expired(1234));
        assert!(!v.is_expired(1233));
        assert!(!Value::string(vec![], 0).is_expired(u64::MAX));
    }
}

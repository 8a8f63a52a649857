//! Redis's DEBUG DIGEST arithmetic: SHA1 digests that are xored for unordered
//! parts (keys, set members, hash fields) and chained ("mixed") for ordered
//! ones, so two keyspaces with the same contents have the same digest
//! whatever their layout. Shards digest their keys (shard-node
//! `apply::keys`); the proxy combines the shards' parts as Redis combines a
//! database's keys, so the answers equal redis-server's for the same data.

/// A 20-byte digest.
pub type Digest = [u8; 20];

/// `digest ^= SHA1(data)`: order-free accumulation.
pub fn xor(digest: &mut Digest, data: &[u8]) {
    let hash = sha1_smol::Sha1::from(data).digest().bytes();
    for (d, h) in digest.iter_mut().zip(hash) {
        *d ^= h;
    }
}

/// `digest = SHA1(digest ^ SHA1(data))`: ordered accumulation.
pub fn mix(digest: &mut Digest, data: &[u8]) {
    xor(digest, data);
    *digest = sha1_smol::Sha1::from(&digest[..]).digest().bytes();
}

/// DEBUG DIGEST of database 0 from the xor of its keys' digests (each one
/// [`mix`] of the key, then the value's digest): 40 zeros when it is empty.
pub fn dataset(keys_xor: &Digest, keys: u64) -> String {
    let mut digest = [0u8; 20];
    if keys > 0 {
        mix(&mut digest, &0u32.to_be_bytes());
        for (d, k) in digest.iter_mut().zip(keys_xor) {
            *d ^= k;
        }
    }
    hex(&digest)
}

/// Lowercase hex, as DEBUG prints digests.
pub fn hex(digest: &Digest) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

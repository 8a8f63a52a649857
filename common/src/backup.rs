//! Online backups: the cut, what a shard's replica streams, and the manifest.
//!
//! THE CUT. A backup is one consistent point of the whole keyspace. The
//! placement driver asks every shard's leader to propose a [`Barrier`] entry.
//! Each replica that applies it keeps a RocksDB snapshot of its data as of
//! that entry (the shard's part of the backup) and, from then on, holds its
//! answers to clients (writes and reads alike) until the placement driver
//! says every shard's barrier is committed, or until `hold_ms` has passed.
//! So a write acknowledged after some shard's barrier was acknowledged after
//! every barrier was in its log, and anything a client sends after seeing it
//! lands after the barriers too: if a write W2 is in the backup, every write
//! acknowledged before W2 was sent is in it as well. The placement driver
//! declares the cut only when every barrier was committed within half of
//! `hold_ms` of its start (a hold that timed out may have let an answer out
//! early), and otherwise releases the holds and tries again.
//!
//! THE DATA. A shard's part is read from any replica's snapshot, in chunks
//! of whole keys ([`Chunk`]), each key as its DUMP payload with its absolute
//! expiry, and written as an RDB file (one per shard: redis-server loads it
//! too). The [`Manifest`] is written last, so a directory without one is an
//! unfinished backup and never taken for a whole one.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::{NodeId, ShardId, VnodeId};

/// The manifest's format version; a reader refuses newer ones.
pub const FORMAT: u32 = 1;
/// The manifest's file name within a backup's directory.
pub const MANIFEST: &str = "manifest.json";
/// Suffix of a backup directory being written.
pub const PARTIAL: &str = ".partial";

/// A backup's barrier entry ([`crate::ops::WriteOp::BackupBarrier`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Barrier {
    /// The backup.
    pub id: u64,
    /// How long a replica holds its answers at most, waiting for the release.
    pub hold_ms: u32,
}

/// A backup's cut as the placement driver declared it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Cut {
    /// The backup.
    pub id: u64,
    /// Each shard's barrier index.
    pub indexes: BTreeMap<ShardId, u64>,
    /// The routing table when the cut was taken (vnodes, replicas, users,
    /// function libraries).
    pub table: crate::routing::RoutingTable,
    /// The cluster's CONFIG SET parameters.
    pub config: Vec<(String, String)>,
    /// From the first barrier sent to the release: the longest any client
    /// answer was held.
    pub hold_seconds: f64,
    /// Unix milliseconds when the cut was declared.
    pub at_ms: u64,
}

/// One key of a shard's backup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub key: Vec<u8>,
    /// The value as a DUMP payload.
    pub payload: Vec<u8>,
    /// Absolute expiry, Unix milliseconds.
    pub expires_at_ms: Option<i64>,
}

/// A chunk of a shard's backup, in storage order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    pub records: Vec<Record>,
    /// Where the next chunk starts; `None` after the last one.
    pub next: Option<Vec<u8>>,
}

/// One shard's part of a backup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardPart {
    pub shard: ShardId,
    /// The barrier's log index: the shard's data is exactly its log up to it.
    pub index: u64,
    /// The virtual nodes it owned.
    pub vnodes: Vec<VnodeId>,
    /// The replica it was read from.
    pub node: NodeId,
    /// The RDB file, relative to the backup's directory.
    pub file: String,
    pub keys: u64,
    pub bytes: u64,
    /// xxh3-64 of the whole file, hexadecimal.
    pub xxh3: String,
}

/// What a backup holds: written last, as `manifest.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub tag: String,
    pub backup_id: u64,
    /// Unix milliseconds: the start, the cut, the end.
    pub started_ms: u64,
    pub cut_ms: u64,
    pub finished_ms: u64,
    /// The longest client answer hold the cut cost, seconds.
    pub hold_seconds: f64,
    pub vnode_count: u32,
    pub routing_version: u64,
    pub shards: Vec<ShardPart>,
    pub users: crate::acl::Users,
    pub functions: crate::lua::Libraries,
    pub config: Vec<(String, String)>,
}

impl Manifest {
    /// Keys and file bytes of the whole backup.
    pub fn totals(&self) -> (u64, u64) {
        self.shards.iter().fold((0, 0), |(k, b), p| (k + p.keys, b + p.bytes))
    }
}

/// xxh3-64 of `bytes` as the manifest writes it.
pub fn checksum_hex(hash: u64) -> String {
    format!("{hash:016x}")
}

/// A UTC time as a tag: `2026-12-07T19-45-12Z` (no colons, so it is a
/// portable directory name).
pub fn tag_of(unix_ms: u64) -> String {
    let secs = (unix_ms / 1000) as i64;
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}-{:02}-{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Year, month, day of a count of days since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_name_the_utc_time() {
        assert_eq!(tag_of(0), "1970-01-01T00-00-00Z");
        assert_eq!(tag_of(1_796_672_712_000), "2026-12-07T19-45-12Z");
        assert_eq!(tag_of(951_782_400_000), "2000-02-29T00-00-00Z");
    }
}

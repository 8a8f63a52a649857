//! Replica consistency checks: what a shard replica reports about its data at
//! one log index, and how the reports of a shard's replicas are compared.
//!
//! Raft makes the replicas apply the same log; it does not prove their stored
//! data is the same (an apply bug, a torn write or a flipped bit on one disk
//! goes unseen until that replica leads). A check proposes a `ComputeDigest`
//! entry ([`crate::ops::WriteOp::ComputeDigest`]); every replica that applies it
//! digests its data as of that entry, in the background, and reports a
//! [`ReplicaDigest`]: a Merkle tree of one level, whose leaves are the shard's
//! virtual nodes (a hash over each one's records in storage order: keys,
//! values, types, TTLs, revisions and collection elements) and whose root is a
//! hash over the leaves. Equal roots mean equal data. Unequal roots name the
//! virtual nodes that differ; a second entry asks for per-key hashes of just
//! those ([`DigestRequest::detail`]), which name the keys.
//!
//! The comparison ([`compare`]) lives here so the placement driver's periodic
//! check and `redraft ctl verify` judge alike.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::ids::{NodeId, ShardId, VnodeId};

/// What a `ComputeDigest` entry asks every replica to compute.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DigestRequest {
    /// Virtual nodes whose per-key hashes are reported too (the second round
    /// of a check that found them different).
    pub detail: Vec<VnodeId>,
    /// Read rate limit of the digest in MiB per second (0: no limit).
    pub mib_per_sec: u32,
}

/// Per-key hashes of one virtual node: `(user key, hash of every record of
/// the key)`, in user-key order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VnodeKeys {
    pub vnode: VnodeId,
    pub keys: Vec<(Vec<u8>, u64)>,
    /// More keys than [`MAX_DETAIL_KEYS`]: the list stops there.
    pub truncated: bool,
}

/// Keys listed per virtual node in a detailed digest.
pub const MAX_DETAIL_KEYS: usize = 200_000;

/// One replica's digest of its shard at one log index.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReplicaDigest {
    /// The log index of the `ComputeDigest` entry.
    pub index: u64,
    /// Hash over the leaves, in virtual node order.
    pub root: u128,
    /// `(virtual node, hash of its records)` for every virtual node the shard owns.
    pub leaves: Vec<(VnodeId, u128)>,
    /// Records and bytes (keys and values) read.
    pub records: u64,
    pub bytes: u64,
    /// How long the digest took.
    pub seconds: f64,
    /// Per-key hashes of the virtual nodes the request named.
    pub detail: Vec<VnodeKeys>,
}

/// A replica's answer about the digest at one index.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum DigestProgress {
    /// Still reading; this many bytes so far.
    Running {
        bytes: u64,
    },
    Done(ReplicaDigest),
    /// This replica did not apply that entry (it is behind, installed a
    /// snapshot past it, or restarted since and forgot the result).
    Unknown,
}

/// The verdict on one shard.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShardVerdict {
    pub shard: ShardId,
    /// The index every reporting replica digested.
    pub index: u64,
    /// Replicas that reported, and those that could not (with why).
    pub reported: Vec<NodeId>,
    pub missing: Vec<(NodeId, String)>,
    /// Groups of replicas with equal data, the largest first.
    pub groups: Vec<Vec<NodeId>>,
    /// The replica that differs from a majority that agrees, if exactly that.
    pub odd_one_out: Option<NodeId>,
    /// Virtual nodes whose leaves differ.
    pub vnodes: Vec<VnodeId>,
    /// Keys found different (at most [`MAX_REPORTED_KEYS`] per virtual node):
    /// `(virtual node, user key, nodes whose copy differs from the majority's or
    /// that lack or alone hold the key)`.
    pub keys: Vec<(VnodeId, Vec<u8>, Vec<NodeId>)>,
    /// Records and bytes of the shard (first reporting replica) and the
    /// slowest replica's digest time.
    pub records: u64,
    pub bytes: u64,
    pub seconds: f64,
}

/// Keys named per differing virtual node.
pub const MAX_REPORTED_KEYS: usize = 10;

impl ShardVerdict {
    /// Whether every replica that reported holds the same data.
    pub fn agrees(&self) -> bool {
        self.groups.len() <= 1
    }
}

/// Judges the replicas' digests of one shard at one index. `detail`, when
/// given, are the digests of a second round that listed the keys of the
/// differing virtual nodes (taken at a later index, all replicas alike).
pub fn compare(
    shard: ShardId,
    reports: &BTreeMap<NodeId, ReplicaDigest>,
    missing: Vec<(NodeId, String)>,
    detail: Option<&BTreeMap<NodeId, ReplicaDigest>>,
) -> ShardVerdict {
    let mut by_root: BTreeMap<u128, Vec<NodeId>> = BTreeMap::new();
    for (node, report) in reports {
        by_root.entry(report.root).or_default().push(*node);
    }
    let mut groups: Vec<Vec<NodeId>> = by_root.into_values().collect();
    groups.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
    let voters = reports.len() + missing.len();
    let odd_one_out = match groups.as_slice() {
        [majority, odd] if odd.len() == 1 && majority.len() * 2 > voters => Some(odd[0]),
        _ => None,
    };
    let mut vnodes = BTreeSet::new();
    for report in reports.values() {
        for (vnode, leaf) in &report.leaves {
            let differs = reports
                .values()
                .any(|other| other.leaves.iter().find(|(v, _)| v == vnode).map(|(_, l)| l) != Some(leaf));
            if differs {
                vnodes.insert(*vnode);
            }
        }
    }
    let keys = detail.map(differing_keys).unwrap_or_default();
    let first = reports.values().next();
    ShardVerdict {
        shard,
        index: first.map_or(0, |r| r.index),
        reported: reports.keys().copied().collect(),
        missing,
        groups,
        odd_one_out,
        vnodes: vnodes.into_iter().collect(),
        keys,
        records: first.map_or(0, |r| r.records),
        bytes: first.map_or(0, |r| r.bytes),
        seconds: reports.values().map(|r| r.seconds).fold(0.0, f64::max),
    }
}

/// The keys whose hashes are not the same on every replica, with the
/// replicas whose copy is in a minority (or, with no majority, all of them).
fn differing_keys(reports: &BTreeMap<NodeId, ReplicaDigest>) -> Vec<(VnodeId, Vec<u8>, Vec<NodeId>)> {
    let mut listed: BTreeMap<VnodeId, BTreeMap<&[u8], BTreeMap<NodeId, u64>>> = BTreeMap::new();
    for (node, report) in reports {
        for vnode in &report.detail {
            let keys = listed.entry(vnode.vnode).or_default();
            for (key, hash) in &vnode.keys {
                keys.entry(key.as_slice()).or_default().insert(*node, *hash);
            }
        }
    }
    let mut out = Vec::new();
    for (vnode, keys) in listed {
        let mut named = 0;
        for (key, hashes) in keys {
            let mut counts: BTreeMap<Option<u64>, Vec<NodeId>> = BTreeMap::new();
            for node in reports.keys() {
                counts.entry(hashes.get(node).copied()).or_default().push(*node);
            }
            if counts.len() == 1 {
                continue;
            }
            let majority = counts.values().map(Vec::len).max().unwrap_or(0);
            let clear_majority = majority * 2 > reports.len();
            let differing: Vec<NodeId> = counts
                .values()
                .filter(|nodes| !clear_majority || nodes.len() < majority)
                .flatten()
                .copied()
                .collect();
            out.push((vnode, key.to_vec(), differing));
            named += 1;
            if named == MAX_REPORTED_KEYS {
                break;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(root: u128, leaves: &[(VnodeId, u128)], detail: Vec<VnodeKeys>) -> ReplicaDigest {
        ReplicaDigest {
            index: 7,
            root,
            leaves: leaves.to_vec(),
            records: 3,
            bytes: 30,
            seconds: 0.1,
            detail,
        }
    }

    #[test]
    fn equal_roots_agree() {
        let reports: BTreeMap<_, _> = (1..=3).map(|n| (n, digest(5, &[(0, 1), (1, 4)], vec![]))).collect();
        let verdict = compare(9, &reports, vec![], None);
        assert!(verdict.agrees());
        assert_eq!(verdict.groups, vec![vec![1, 2, 3]]);
        assert_eq!(verdict.odd_one_out, None);
        assert!(verdict.vnodes.is_empty());
    }

    #[test]
    fn one_differing_replica_is_named_with_its_vnode_and_key() {
        let good = |n| (n, digest(5, &[(0, 1), (1, 4)], vec![]));
        let mut reports: BTreeMap<_, _> = [good(1), good(3)].into_iter().collect();
        reports.insert(2, digest(6, &[(0, 1), (1, 8)], vec![]));
        let keys = |bad: u64| VnodeKeys {
            vnode: 1,
            keys: vec![(b"a".to_vec(), 1), (b"b".to_vec(), bad), (b"c".to_vec(), 3)],
            truncated: false,
        };
        let detail: BTreeMap<_, _> = [(1, 2), (2, 99), (3, 2)]
            .into_iter()
            .map(|(n, b)| (n, digest(0, &[], vec![keys(b)])))
            .collect();
        let verdict = compare(9, &reports, vec![], Some(&detail));
        assert!(!verdict.agrees());
        assert_eq!(verdict.odd_one_out, Some(2));
        assert_eq!(verdict.groups, vec![vec![1, 3], vec![2]]);
        assert_eq!(verdict.vnodes, vec![1]);
        assert_eq!(verdict.keys, vec![(1, b"b".to_vec(), vec![2])]);
    }

    #[test]
    fn a_key_only_one_replica_holds_is_named() {
        let detail: BTreeMap<_, _> = (1..=3)
            .map(|n| {
                let mut keys = vec![(b"a".to_vec(), 1)];
                if n == 3 {
                    keys.push((b"extra".to_vec(), 5));
                }
                (
                    n,
                    digest(
                        0,
                        &[],
                        vec![VnodeKeys {
                            vnode: 4,
                            keys,
                            truncated: false,
                        }],
                    ),
                )
            })
            .collect();
        assert_eq!(differing_keys(&detail), vec![(4, b"extra".to_vec(), vec![3])]);
    }

    #[test]
    fn no_majority_names_no_odd_one_out() {
        let reports: BTreeMap<_, _> = (1..=3)
            .map(|n| (n, digest(n as u128, &[(0, n as u128)], vec![])))
            .collect();
        let verdict = compare(9, &reports, vec![], None);
        assert_eq!(verdict.groups.len(), 3);
        assert_eq!(verdict.odd_one_out, None);
        // Two that agree out of three voters when the third did not report:
        // no difference seen, and nothing to name.
        let two: BTreeMap<_, _> = (1..=2).map(|n| (n, digest(5, &[(0, 1)], vec![]))).collect();
        let verdict = compare(9, &two, vec![(3, "behind".into())], None);
        assert!(verdict.agrees());
        assert_eq!(verdict.odd_one_out, None);
    }
}

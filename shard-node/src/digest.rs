//! Replica digests for consistency checks ([`redraft_common::consistency`]).
//!
//! When a replica applies a `ComputeDigest` entry, the state machine writes the
//! data of the entries before it, then [`Digests::start`] takes a RocksDB
//! snapshot (the data exactly as of that index) and hands it to a thread of its
//! own, so the digest never holds up apply: the state machine waits only for
//! the snapshot to exist. The thread hashes every record of each virtual node
//! the shard owns, in storage order (xxh3-128: a leaf per virtual node, a root
//! over the leaves), optionally listing per-key hashes of some virtual nodes,
//! at a bounded read rate, and leaves the result here for the placement driver
//! to collect. Results live in memory: a node that restarts forgets them, and
//! the check that asked reports the replica as missing rather than wrong.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use redraft_common::consistency::{DigestProgress, DigestRequest, ReplicaDigest, VnodeKeys, MAX_DETAIL_KEYS};
use redraft_common::ids::{ShardId, VnodeId};
use redraft_raft_storage::engine::CF_DATA;
use redraft_raft_storage::Engine;
use rocksdb::{IteratorMode, ReadOptions};
use xxhash_rust::xxh3::Xxh3;

use crate::storage::{owner_key, vnode_end, vnode_start};

/// Results kept per shard: checks run one at a time, so a few suffice.
const KEPT_PER_SHARD: usize = 4;

/// Bytes read between two looks at the rate limit.
const RATE_CHECK_BYTES: u64 = 1 << 20;

/// The digests this node's replicas computed or are computing, by shard and index.
#[derive(Default)]
pub struct Digests {
    results: Mutex<HashMap<ShardId, VecDeque<(u64, DigestProgress)>>>,
}

impl Digests {
    /// Starts the digest of `group`'s `vnodes` as of now (log index `index`):
    /// returns once the snapshot it reads is taken; the reading goes on in a
    /// thread of its own.
    pub async fn start(
        self: &std::sync::Arc<Self>,
        engine: &Engine,
        group: ShardId,
        index: u64,
        vnodes: Vec<VnodeId>,
        request: DigestRequest,
    ) {
        self.set(group, index, DigestProgress::Running { bytes: 0 });
        let (taken, snapshot_taken) = tokio::sync::oneshot::channel();
        let this = self.clone();
        let engine = engine.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("digest-{group}"))
            .spawn(move || {
                let snapshot = engine.db().snapshot();
                let _ = taken.send(());
                let progress = |bytes| this.set(group, index, DigestProgress::Running { bytes });
                let digest = compute(&engine, &snapshot, index, &vnodes, &request, progress);
                tracing::info!(
                    shard_id = group,
                    index,
                    records = digest.records,
                    bytes = digest.bytes,
                    seconds = digest.seconds,
                    "digest computed"
                );
                this.set(group, index, DigestProgress::Done(digest));
            });
        match spawned {
            Ok(_) => {
                let _ = snapshot_taken.await;
            }
            Err(e) => {
                tracing::error!(shard_id = group, error = %e, "could not start a digest thread");
                self.set(group, index, DigestProgress::Unknown);
            }
        }
    }

    /// How far the digest of `group` at `index` has got.
    pub fn progress(&self, group: ShardId, index: u64) -> DigestProgress {
        let results = self.results.lock().expect("digests lock");
        results
            .get(&group)
            .and_then(|kept| kept.iter().find(|(i, _)| *i == index))
            .map_or(DigestProgress::Unknown, |(_, progress)| progress.clone())
    }

    fn set(&self, group: ShardId, index: u64, progress: DigestProgress) {
        let mut results = self.results.lock().expect("digests lock");
        let kept = results.entry(group).or_default();
        match kept.iter_mut().find(|(i, _)| *i == index) {
            Some(slot) => slot.1 = progress,
            None => {
                kept.push_back((index, progress));
                while kept.len() > KEPT_PER_SHARD {
                    kept.pop_front();
                }
            }
        }
    }
}

/// Hashes one record into `hasher`: lengths first, so no two different
/// records feed the same bytes.
fn feed(hasher: &mut Xxh3, key: &[u8], value: &[u8]) {
    hasher.update(&(key.len() as u64).to_le_bytes());
    hasher.update(key);
    hasher.update(&(value.len() as u64).to_le_bytes());
    hasher.update(value);
}

/// Digests `vnodes` as `snapshot` sees them.
pub fn compute(
    engine: &Engine,
    snapshot: &rocksdb::Snapshot<'_>,
    index: u64,
    vnodes: &[VnodeId],
    request: &DigestRequest,
    mut progress: impl FnMut(u64),
) -> ReplicaDigest {
    let started = Instant::now();
    let limit = u64::from(request.mib_per_sec) << 20;
    let (mut records, mut bytes, mut checked_at) = (0u64, 0u64, 0u64);
    let mut leaves = Vec::with_capacity(vnodes.len());
    let mut detail = Vec::new();
    let mut sorted = vnodes.to_vec();
    sorted.sort_unstable();
    for vnode in sorted {
        let mut leaf = Xxh3::new();
        let listed = request.detail.contains(&vnode);
        let mut keys: BTreeMap<Vec<u8>, Xxh3> = BTreeMap::new();
        let mut truncated = false;
        let mut options = ReadOptions::default();
        options.set_iterate_upper_bound(vnode_end(vnode));
        options.fill_cache(false);
        let start = vnode_start(vnode);
        let iter = snapshot.iterator_cf_opt(
            engine.cf(CF_DATA),
            options,
            IteratorMode::From(&start, rocksdb::Direction::Forward),
        );
        for item in iter {
            let (key, value) = item.unwrap_or_else(|e| panic!("RocksDB read failed: {e}"));
            feed(&mut leaf, &key, &value);
            records += 1;
            bytes += (key.len() + value.len()) as u64;
            if listed {
                let owner = owner_key(&key);
                let full = keys.len() >= MAX_DETAIL_KEYS;
                match keys.get_mut(owner) {
                    Some(hasher) => feed(hasher, &key, &value),
                    None if full => truncated = true,
                    None => {
                        let mut hasher = Xxh3::new();
                        feed(&mut hasher, &key, &value);
                        keys.insert(owner.to_vec(), hasher);
                    }
                }
            }
            if bytes - checked_at >= RATE_CHECK_BYTES {
                checked_at = bytes;
                progress(bytes);
                if limit > 0 {
                    let due = Duration::from_secs_f64(bytes as f64 / limit as f64);
                    if let Some(ahead) = due.checked_sub(started.elapsed()) {
                        std::thread::sleep(ahead);
                    }
                }
            }
        }
        leaves.push((vnode, leaf.digest128()));
        if listed {
            detail.push(VnodeKeys {
                vnode,
                keys: keys.into_iter().map(|(k, h)| (k, h.digest())).collect(),
                truncated,
            });
        }
    }
    let mut root = Xxh3::new();
    for (vnode, leaf) in &leaves {
        root.update(&vnode.to_be_bytes());
        root.update(&leaf.to_le_bytes());
    }
    ReplicaDigest {
        index,
        root: root.digest128(),
        leaves,
        records,
        bytes,
        seconds: started.elapsed().as_secs_f64(),
        detail,
    }
}

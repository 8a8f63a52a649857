//! Online backups: the cut the placement driver takes, and the backup files
//! that `redraft ctl backup` and the driver's periodic job write from it.
//!
//! A backup ([`redraft_common::backup`] says what the cut guarantees):
//! 1. [`take_cut`]: with the scheduler stopped (no split, merge, move or
//!    leadership transfer meanwhile), every shard's leader proposes a barrier
//!    entry, all at once; when every barrier is committed within half of the
//!    hold time, the holds are released and the barrier indexes are the cut;
//!    otherwise they are released, the replicas drop their snapshots, and the
//!    cut is tried again.
//! 2. [`write`]: each shard's data as of its barrier is read from a replica's
//!    snapshot (another replica takes over where one stops answering) and
//!    written as an RDB file, checksummed, at a bounded rate, into
//!    `DIR/TAG.partial/`; the manifest is written last and the directory
//!    renamed to `DIR/TAG/`, so a backup that stops half-way leaves no
//!    manifest and is never taken for a whole one.
//! 3. [`verify`] re-reads every file against the manifest; [`list`] shows the
//!    restore points of a directory; [`prune`] keeps the newest N.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use redraft_common::backup::{checksum_hex, Barrier, Cut, Manifest, ShardPart, FORMAT, MANIFEST, PARTIAL};
use redraft_common::ids::{NodeId, ShardId};
use redraft_common::ops::WriteOp;
use redraft_common::resp::Frame;
use redraft_common::routing::RoutingTable;
use redraft_common::transport::Endpoint;
use redraft_common::wire::{NodeRequest, NodeResponse};
use xxhash_rust::xxh3::Xxh3;

use crate::scheduler;

/// How long a replica holds its answers at most while a cut is taken; the
/// cut must complete within half of it. Below the election timeout, so a
/// replica that restarts (and forgets its hold) cannot lead before it ends.
pub const DEFAULT_HOLD_MS: u32 = 800;

/// Tries at a cut before a backup gives up: spaced out over about 10 s, so
/// a shard electing a new leader does not fail the backup.
const CUT_ATTEMPTS: u32 = 6;

/// Payload bytes asked of a replica per chunk.
const CHUNK_BYTES: u32 = 1 << 20;

/// Bytes written between two syncs of a backup file: dirty pages never pile
/// up, so the file's writeback does not stall the cluster's own log fsyncs
/// on a shared disk (RocksDB's `bytes_per_sync` does the same for its files).
const SYNC_EVERY: u64 = 4 << 20;

/// A node that does not answer a chunk request within this long is passed over.
const CHUNK_TIMEOUT: Duration = Duration::from_secs(30);

/// File the verification of a backup leaves beside its manifest.
const VERIFIED: &str = "verified";

/// Config keys (kept with the cluster's CONFIG parameters, never shown by
/// CONFIG GET) of the periodic backup job.
pub const EVERY_KEY: &str = "redraft.backup-every";
pub const KEEP_KEY: &str = "redraft.backup-keep";
pub const DIR_KEY: &str = "redraft.backup-dir";
pub const LAST_KEY: &str = "redraft.backup-last";

/// A fresh backup id.
pub fn new_id() -> u64 {
    rand::random::<u64>() >> 1
}

/// Takes a backup's cut, trying again (with a fresh id and routing table)
/// when one attempt fails; the caller keeps the scheduler still meanwhile.
pub async fn cut(
    endpoint: &Endpoint,
    table: impl Fn() -> RoutingTable,
    config: Vec<(String, String)>,
    hold_ms: u32,
) -> Result<Cut> {
    let mut failures = Vec::new();
    for attempt in 1..=CUT_ATTEMPTS {
        let (table, id) = (table(), new_id());
        if table.shards.is_empty() {
            bail!("the cluster has no shards yet");
        }
        match take_cut(endpoint, &table, id, hold_ms).await {
            Ok((indexes, hold_seconds)) => {
                tracing::info!(
                    backup = id,
                    shards = indexes.len(),
                    hold_ms = hold_seconds * 1000.0,
                    "backup cut taken"
                );
                return Ok(Cut {
                    id,
                    indexes,
                    table,
                    config,
                    hold_seconds,
                    at_ms: redraft_common::now_ms(),
                });
            }
            Err(e) => {
                tracing::warn!(backup = id, attempt, error = %e, "backup cut failed");
                failures.push(format!("{e:#}"));
                tokio::time::sleep(Duration::from_millis(500) * attempt).await;
            }
        }
    }
    bail!("no cut after {CUT_ATTEMPTS} tries: {}", failures.join(" / "))
}

/// Takes a cut of every shard of `table` (the caller keeps the scheduler
/// still meanwhile); the barrier indexes and the longest hold, in seconds.
pub async fn take_cut(
    endpoint: &Endpoint,
    table: &RoutingTable,
    id: u64,
    hold_ms: u32,
) -> Result<(BTreeMap<ShardId, u64>, f64)> {
    let barrier = Barrier { id, hold_ms };
    let within = Duration::from_millis(u64::from(hold_ms) / 2);
    let started = Instant::now();
    let proposals = table.shards.keys().map(|&shard| {
        let request = scheduler::exec(table, shard, WriteOp::BackupBarrier(barrier.clone()));
        async move { (shard, barrier_at_leader(endpoint, table, shard, request, within).await) }
    });
    let answers = futures::future::join_all(proposals).await;
    let took = started.elapsed();
    let whole = took < within && answers.iter().all(|(_, a)| a.is_ok());
    release(endpoint, table, id, !whole).await;
    let held = started.elapsed().as_secs_f64();
    if !whole {
        let failed: Vec<String> = answers
            .iter()
            .filter_map(|(shard, a)| a.as_ref().err().map(|e| format!("shard {shard}: {e:#}")))
            .collect();
        if failed.is_empty() {
            bail!(
                "the barriers took {} ms, more than half the {hold_ms} ms hold",
                took.as_millis()
            );
        }
        bail!("{}", failed.join("; "));
    }
    let indexes = answers
        .into_iter()
        .map(|(shard, a)| (shard, a.expect("checked")))
        .collect();
    Ok((indexes, held))
}

/// Proposes a barrier at `shard`'s leader (following one `NotLeader` hint).
async fn barrier_at_leader(
    endpoint: &Endpoint,
    table: &RoutingTable,
    shard: ShardId,
    request: NodeRequest,
    within: Duration,
) -> Result<u64> {
    let info = &table.shards[&shard];
    let mut target = info.leader.or(info.replicas.first().copied());
    for _ in 0..3 {
        let node = target.ok_or_else(|| anyhow!("no known leader"))?;
        let addr = scheduler::node_addr(table, node)?;
        match endpoint.call::<_, NodeResponse>(addr, &request, within).await {
            Ok(NodeResponse::Reply(Frame::Integer(index))) => return Ok(index as u64),
            Ok(NodeResponse::NotLeader { leader: Some(l) }) if l != node => target = Some(l),
            Ok(other) => bail!("node {node}: {other:?}"),
            Err(e) => bail!("node {node}: {e}"),
        }
    }
    bail!("no leader answered")
}

/// Tells every node of `table` that backup `id`'s holds end (with `done`:
/// its snapshots go too).
pub async fn release(endpoint: &Endpoint, table: &RoutingTable, id: u64, done: bool) {
    let request = NodeRequest::BackupRelease { backup: id, done };
    let calls = table.nodes.keys().filter_map(|&node| {
        let addr = scheduler::node_addr(table, node).ok()?;
        let request = &request;
        Some(async move {
            if let Err(e) = endpoint
                .call::<_, NodeResponse>(addr, request, Duration::from_secs(2))
                .await
            {
                tracing::debug!(node, error = %e, "backup release not delivered");
            }
        })
    });
    futures::future::join_all(calls).await;
}

/// What [`write`] is asked for.
pub struct WriteOptions<'a> {
    pub dir: &'a Path,
    pub tag: &'a str,
    /// Read rate over all shards, MiB/s of payload (0: no limit).
    pub mib_per_sec: u32,
    /// When the backup started (Unix ms), for the manifest.
    pub started_ms: u64,
}

/// Writes the backup of `cut` into `options.dir/options.tag/`.
pub async fn write(endpoint: &Endpoint, cut: &Cut, options: &WriteOptions<'_>) -> Result<Manifest> {
    check_tag(options.tag)?;
    let target = options.dir.join(options.tag);
    if target.join(MANIFEST).exists() {
        bail!("{} holds a backup already: choose another --tag", target.display());
    }
    let partial = options.dir.join(format!("{}{PARTIAL}", options.tag));
    if partial.exists() {
        std::fs::remove_dir_all(&partial).with_context(|| format!("removing {}", partial.display()))?;
    }
    std::fs::create_dir_all(&partial).with_context(|| format!("creating {}", partial.display()))?;
    let mut pace = Pace::new(options.mib_per_sec);
    let mut shards = Vec::with_capacity(cut.indexes.len());
    for (&shard, &index) in &cut.indexes {
        let part = write_shard(endpoint, cut, shard, index, &partial, &mut pace)
            .await
            .with_context(|| format!("shard {shard}"))?;
        tracing::info!(
            shard_id = shard,
            keys = part.keys,
            bytes = part.bytes,
            node = part.node,
            "shard backed up"
        );
        shards.push(part);
    }
    let manifest = Manifest {
        format: FORMAT,
        tag: options.tag.to_string(),
        backup_id: cut.id,
        started_ms: options.started_ms,
        cut_ms: cut.at_ms,
        finished_ms: redraft_common::now_ms(),
        hold_seconds: cut.hold_seconds,
        vnode_count: cut.table.vnode_count,
        routing_version: cut.table.version,
        shards,
        users: cut.table.users.clone(),
        functions: cut.table.functions.clone(),
        config: cut
            .config
            .iter()
            .filter(|(name, _)| !name.starts_with("redraft."))
            .cloned()
            .collect(),
    };
    let mut file = std::fs::File::create(partial.join(MANIFEST))?;
    file.write_all(&serde_json::to_vec_pretty(&manifest)?)?;
    file.sync_all()?;
    std::fs::rename(&partial, &target).with_context(|| format!("renaming to {}", target.display()))?;
    std::fs::File::open(options.dir)?.sync_all()?;
    Ok(manifest)
}

/// A tag names a directory: letters, digits, `-`, `_` and `.`, not starting
/// with `.`.
pub fn check_tag(tag: &str) -> Result<()> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if tag.is_empty() || tag.starts_with('.') || !tag.chars().all(allowed) || tag.ends_with(PARTIAL) {
        bail!("bad tag {tag:?}: use letters, digits, '-', '_' and '.' (not first)");
    }
    Ok(())
}

/// Streams one shard's part into its RDB file.
async fn write_shard(
    endpoint: &Endpoint,
    cut: &Cut,
    shard: ShardId,
    index: u64,
    dir: &Path,
    pace: &mut Pace,
) -> Result<ShardPart> {
    let info = cut
        .table
        .shards
        .get(&shard)
        .ok_or_else(|| anyhow!("not in the routing table"))?;
    // Followers first: the leader serves the clients.
    let mut replicas: Vec<NodeId> = info
        .replicas
        .iter()
        .copied()
        .filter(|&n| Some(n) != info.leader)
        .collect();
    replicas.extend(info.leader);
    let name = format!("shard-{shard}.rdb");
    let file = std::fs::File::create(dir.join(&name))?;
    let mut writer = redraft_common::rdb::FileWriter::new(Hashing::new(std::io::BufWriter::new(file)))?;
    let (mut after, mut source, mut failures, mut synced) = (None, 0usize, Vec::new(), 0u64);
    loop {
        let node = *replicas.get(source).ok_or_else(|| {
            anyhow!(
                "no replica could give its snapshot at index {index}: {}",
                failures.join("; ")
            )
        })?;
        let request = NodeRequest::BackupRead {
            shard,
            backup: cut.id,
            after: after.clone(),
            max_bytes: CHUNK_BYTES,
        };
        let answer = match scheduler::node_addr(&cut.table, node) {
            Ok(addr) => endpoint
                .call::<_, NodeResponse>(addr, &request, CHUNK_TIMEOUT)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let chunk = match answer {
            Ok(NodeResponse::BackupChunk(chunk)) => chunk,
            Ok(other) => {
                failures.push(format!("node {node}: {other:?}"));
                source += 1;
                continue;
            }
            Err(e) => {
                failures.push(format!("node {node}: {e}"));
                source += 1;
                continue;
            }
        };
        let mut bytes = 0;
        for record in &chunk.records {
            writer.entry(&record.key, &record.payload, record.expires_at_ms)?;
            bytes += record.key.len() + record.payload.len();
        }
        let hashing = writer.output();
        if hashing.bytes - synced >= SYNC_EVERY {
            hashing.inner.flush()?;
            hashing.inner.get_ref().sync_data()?;
            synced = hashing.bytes;
        }
        pace.wait(bytes).await;
        match chunk.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let keys = writer.keys;
    let hashing = writer.finish()?;
    let (file, hash, bytes) = hashing.into_parts();
    file.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok(ShardPart {
        shard,
        index,
        vnodes: cut.table.vnodes_of(shard),
        node: replicas[source],
        file: name,
        keys,
        bytes,
        xxh3: checksum_hex(hash),
    })
}

/// A writer that hashes (xxh3-64) and counts what passes through.
struct Hashing<W> {
    inner: W,
    hasher: Xxh3,
    bytes: u64,
}

impl<W> Hashing<W> {
    fn new(inner: W) -> Self {
        Hashing {
            inner,
            hasher: Xxh3::new(),
            bytes: 0,
        }
    }

    fn into_parts(self) -> (W, u64, u64) {
        (self.inner, self.hasher.digest(), self.bytes)
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Keeps reading under a byte rate.
struct Pace {
    per_second: f64,
    started: Instant,
    done: u64,
}

impl Pace {
    fn new(mib_per_sec: u32) -> Pace {
        Pace {
            per_second: f64::from(mib_per_sec) * 1024.0 * 1024.0,
            started: Instant::now(),
            done: 0,
        }
    }

    async fn wait(&mut self, bytes: usize) {
        self.done += bytes as u64;
        if self.per_second > 0.0 {
            let due = Duration::from_secs_f64(self.done as f64 / self.per_second);
            if let Some(early) = due.checked_sub(self.started.elapsed()) {
                tokio::time::sleep(early).await;
            }
        }
    }
}

/// Reads a backup's manifest (refusing formats newer than this build's).
pub fn manifest(path: &Path) -> Result<Manifest> {
    let file = path.join(MANIFEST);
    let bytes = std::fs::read(&file).with_context(|| {
        format!(
            "{} has no manifest: not a backup, or one that did not finish",
            path.display()
        )
    })?;
    let manifest: Manifest =
        serde_json::from_slice(&bytes).with_context(|| format!("{}: not a valid manifest", file.display()))?;
    if manifest.format > FORMAT {
        bail!(
            "{}: format {} is newer than this build reads ({FORMAT})",
            file.display(),
            manifest.format
        );
    }
    Ok(manifest)
}

/// Reads one shard's file of a backup, checked against the manifest: its
/// checksum, then its RDB structure and CRC64, then its key count.
pub fn read_part(path: &Path, part: &ShardPart) -> Result<redraft_common::rdb::File> {
    let file = path.join(&part.file);
    let bytes = std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
    let hash = checksum_hex(xxhash_rust::xxh3::xxh3_64(&bytes));
    if hash != part.xxh3 || bytes.len() as u64 != part.bytes {
        bail!(
            "{}: damaged (checksum {hash}, {} bytes; the manifest says {}, {} bytes)",
            file.display(),
            bytes.len(),
            part.xxh3,
            part.bytes
        );
    }
    let rdb = redraft_common::rdb::read_file(&bytes).map_err(|e| anyhow!("{}: {e}", file.display()))?;
    if rdb.entries.len() as u64 != part.keys {
        bail!(
            "{}: holds {} keys, the manifest says {}",
            file.display(),
            rdb.entries.len(),
            part.keys
        );
    }
    Ok(rdb)
}

/// Re-checks every file of the backup at `path`; marks it verified.
pub fn verify(path: &Path) -> Result<Manifest> {
    let manifest = manifest(path)?;
    for part in &manifest.shards {
        read_part(path, part)?;
    }
    std::fs::write(path.join(VERIFIED), redraft_common::now_ms().to_string())?;
    Ok(manifest)
}

/// A restore point of a backup directory.
pub struct RestorePoint {
    pub name: String,
    pub path: PathBuf,
    /// The manifest, or why there is none.
    pub manifest: Result<Manifest, String>,
    /// When `verify` last passed (Unix ms).
    pub verified_ms: Option<u64>,
}

/// The backups under `dir`, oldest cut first; unfinished ones last.
pub fn list(dir: &Path) -> Result<Vec<RestorePoint>> {
    let mut points = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry?.path();
        if !path.is_dir() {
            continue;
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let manifest = manifest(&path).map_err(|e| format!("{e:#}"));
        let verified_ms = std::fs::read_to_string(path.join(VERIFIED))
            .ok()
            .and_then(|t| t.trim().parse().ok());
        points.push(RestorePoint {
            name,
            path,
            manifest,
            verified_ms,
        });
    }
    points.sort_by_key(|p| match &p.manifest {
        Ok(m) => (0, m.cut_ms, p.name.clone()),
        Err(_) => (1, 0, p.name.clone()),
    });
    Ok(points)
}

/// Keeps the newest `keep` whole backups under `dir` and removes the older
/// ones and unfinished ones; the names removed.
pub fn prune(dir: &Path, keep: usize) -> Result<Vec<String>> {
    let points = list(dir)?;
    let whole = points.iter().filter(|p| p.manifest.is_ok()).count();
    let mut removed = Vec::new();
    for (i, point) in points.iter().enumerate() {
        if point.manifest.is_err() || i + keep < whole {
            std::fs::remove_dir_all(&point.path).with_context(|| format!("removing {}", point.path.display()))?;
            removed.push(point.name.clone());
        }
    }
    Ok(removed)
}

/// Parses a period such as `30m`, `12h`, `1d`, `45s`: a positive number
/// and one unit (the placement driver's `--verify-every` reads it too).
pub fn parse_period(text: &str) -> Result<Duration, String> {
    let (number, unit) = text.split_at(text.len().saturating_sub(1));
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("`{text}`: expected a number with s, m, h or d, or `off`")),
    };
    match number.parse::<u64>() {
        Ok(n) if n > 0 => Ok(Duration::from_secs(n * seconds)),
        _ => Err(format!("`{text}`: expected a positive number before the unit")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_plain_directory_names() {
        assert!(check_tag("2026-12-07T19-45-12Z").is_ok());
        assert!(check_tag("before_upgrade.v2").is_ok());
        for bad in ["", "..", ".hidden", "a/b", "x.partial", "a b"] {
            assert!(check_tag(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn periods_parse_with_their_units() {
        assert_eq!(parse_period("45s").unwrap(), Duration::from_secs(45));
        assert_eq!(parse_period("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_period("1d").unwrap(), Duration::from_secs(86_400));
        assert!(parse_period("0h").is_err());
        assert!(parse_period("12").is_err());
        assert!(parse_period("h").is_err());
    }

    #[test]
    fn prune_keeps_the_newest_whole_backups() {
        let dir = tempfile::tempdir().unwrap();
        for (tag, cut_ms) in [("a", 3), ("b", 1), ("c", 2)] {
            let path = dir.path().join(tag);
            std::fs::create_dir(&path).unwrap();
            let manifest = Manifest {
                format: FORMAT,
                tag: tag.into(),
                backup_id: 1,
                started_ms: cut_ms,
                cut_ms,
                finished_ms: cut_ms,
                hold_seconds: 0.0,
                vnode_count: 16,
                routing_version: 1,
                shards: vec![],
                users: Default::default(),
                functions: Default::default(),
                config: vec![],
            };
            std::fs::write(path.join(MANIFEST), serde_json::to_vec(&manifest).unwrap()).unwrap();
        }
        std::fs::create_dir(dir.path().join("d.partial")).unwrap();
        let mut removed = prune(dir.path(), 2).unwrap();
        removed.sort();
        assert_eq!(removed, vec!["b".to_string(), "d.partial".to_string()]);
        let left: Vec<String> = list(dir.path()).unwrap().into_iter().map(|p| p.name).collect();
        assert_eq!(left, vec!["c".to_string(), "a".to_string()]);
    }
}

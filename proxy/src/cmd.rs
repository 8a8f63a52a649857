//! Commands executed: each parsed command (`redraft_common::parse`) routed to its
//! shard, multi-key commands split by shard and the replies merged in the
//! client's order. Commands answered by the proxy alone (PING, ECHO, SELECT 0,
//! COMMAND, INFO) never leave it.

use std::collections::BTreeMap;

use redraft_common::ids::ShardId;
use redraft_common::ops::{Bytes, ReadOp, ShardOp, WriteOp};
pub use redraft_common::parse::{command_name, parse, random_seed, Command, TransactionControl, COMMANDS, SYNTAX};
use redraft_common::resp::Frame;

use crate::reply::{self, Error};
use crate::route::Router;

fn sum(frames: Vec<Frame>) -> Frame {
    let mut total = 0;
    for frame in frames {
        match frame {
            Frame::Integer(n) => total += n,
            error @ Frame::Error(_) => return error,
            other => return Frame::error(format!("ERR unexpected shard reply {other:?}")),
        }
    }
    Frame::Integer(total)
}

/// Runs one operation per shard over `items`, grouped by the shard of their key,
/// concurrently. Items whose shard answers that a split or merge moved them are
/// grouped again under the newer routing table and retried (nothing of theirs
/// was applied), until the retry deadline. Returns each group's item positions
/// (indexes into `items`) with its shard's reply, in no particular order.
pub(crate) async fn fan_out<T: Clone>(
    router: &Router,
    items: Vec<T>,
    key: impl Fn(&T) -> &[u8],
    build: impl Fn(Vec<T>) -> ShardOp,
) -> Result<Vec<(Vec<usize>, Frame)>, Error> {
    let deadline = std::time::Instant::now() + crate::route::RETRY_DEADLINE;
    let mut pause = crate::route::MOVED_PAUSE;
    let mut pending: Vec<(usize, T)> = items.into_iter().enumerate().collect();
    let mut done = Vec::new();
    while !pending.is_empty() {
        let mut groups: BTreeMap<ShardId, Vec<(usize, T)>> = BTreeMap::new();
        for (i, item) in pending.drain(..) {
            groups.entry(router.shard_of(key(&item))?).or_default().push((i, item));
        }
        let tasks = groups.into_iter().map(|(shard, group)| {
            let op = build(group.iter().map(|(_, item)| item.clone()).collect());
            async move { (group, router.exec(shard, op).await) }
        });
        for (group, result) in futures::future::join_all(tasks).await {
            match result {
                Ok(frame) => done.push((group.iter().map(|(i, _)| *i).collect(), frame)),
                Err(Error::Moved(shard)) if std::time::Instant::now() >= deadline => {
                    return Err(Error::TryAgain(shard))
                }
                Err(Error::Moved(_)) => pending.extend(group),
                Err(e) => return Err(e),
            }
        }
        if !pending.is_empty() {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(crate::route::MOVED_PAUSE_MAX);
        }
    }
    Ok(done)
}

/// Runs `op` on every shard (DBSIZE, FLUSHALL, KEYS); its replies in shard
/// order. When a shard was merged away meanwhile, runs it again on every shard
/// of the newer table (the operations it is used for may run twice).
/// A read of several keys split by shard (`build` makes one shard's read of
/// its keys, answered as an array in their order): the answers in the
/// keys' order.
async fn gather(router: &Router, keys: Vec<Bytes>, build: impl Fn(Vec<Bytes>) -> ReadOp) -> Result<Frame, Error> {
    let mut out = vec![Frame::Null; keys.len()];
    for (positions, frame) in fan_out(router, keys, |k| k, |keys| ShardOp::Read(build(keys))).await? {
        match frame {
            Frame::Array(values) => {
                for (p, v) in positions.into_iter().zip(values) {
                    out[p] = v;
                }
            }
            other => return Ok(other),
        }
    }
    Ok(Frame::Array(out))
}

async fn on_every_shard(router: &Router, op: ShardOp) -> Result<Vec<Frame>, Error> {
    let deadline = std::time::Instant::now() + crate::route::RETRY_DEADLINE;
    loop {
        let tasks = router.shards()?.into_iter().map(|s| router.exec(s, op.clone()));
        match futures::future::join_all(tasks).await.into_iter().collect() {
            Err(Error::Moved(shard)) if std::time::Instant::now() >= deadline => return Err(Error::TryAgain(shard)),
            Err(Error::Moved(_)) => tokio::time::sleep(crate::route::MOVED_PAUSE).await,
            other => return other,
        }
    }
}

/// Runs one connection's consecutive reads, or writes, of `shard` as one
/// request: writes share one Raft entry and are applied in order, reads share
/// one read barrier and are answered in order. An operation whose key a split
/// or merge moved meanwhile (it did not run) runs again on its new shard.
/// Replies in order.
pub async fn execute_run(router: &Router, shard: ShardId, run: Vec<(Bytes, ShardOp)>) -> Vec<Frame> {
    let Some(batch) = ShardOp::many(run.iter().map(|(_, op)| op.clone()).collect()) else {
        return vec![Frame::error("ERR a batch mixes reads and writes"); run.len()];
    };
    let results = router.exec_many(shard, batch, run.len()).await;
    let mut replies = Vec::with_capacity(run.len());
    for ((key, op), result) in run.into_iter().zip(results) {
        let result = match result {
            Err(Error::Moved(_)) => router.exec_key(&key, op).await,
            other => other,
        };
        replies.push(result.unwrap_or_else(|e| reply::to_frame(&e)));
    }
    replies
}

/// Executes a parsed command against the cluster.
pub async fn execute(router: &Router, command: Command) -> Frame {
    match run(router, command).await {
        Ok(frame) => frame,
        Err(e) => reply::to_frame(&e),
    }
}

async fn run(router: &Router, command: Command) -> Result<Frame, Error> {
    Ok(match command {
        Command::Local(frame) | Command::Rejected(frame) => frame,
        Command::Quit => Frame::ok(),
        Command::Transaction(_) | Command::PubSub(_) | Command::Blocking { .. } => {
            Frame::error("ERR this command runs on its connection")
        }
        Command::Info(section) => {
            let keys = match sum_over_shards(router, ShardOp::Read(ReadOp::DbSize)).await {
                Ok(Frame::Integer(n)) => Some(n),
                _ => None,
            };
            Frame::Bulk(crate::info::render(router, section.as_deref(), keys).into_bytes())
        }
        Command::Keyed { key, op } => router.exec_key(&key, op).await?,
        Command::MGet(keys) => gather(router, keys, |keys| ReadOp::MGet { keys }).await?,
        Command::DigestValues(keys) => gather(router, keys, |keys| ReadOp::Digest { keys: Some(keys) }).await?,
        Command::Digest => {
            let (mut keys_xor, mut keys) = ([0u8; 20], 0u64);
            for part in on_every_shard(router, ShardOp::Read(ReadOp::Digest { keys: None })).await? {
                match part {
                    Frame::Array(part) => match &part[..] {
                        [Frame::Bulk(xor), Frame::Integer(n)] if xor.len() == 20 => {
                            keys_xor.iter_mut().zip(xor).for_each(|(d, x)| *d ^= x);
                            keys += *n as u64;
                        }
                        _ => return Ok(Frame::error("ERR unexpected shard reply to DEBUG DIGEST")),
                    },
                    other => return Ok(other),
                }
            }
            Frame::Simple(redraft_common::digest::dataset(&keys_xor, keys))
        }
        Command::MSet(pairs) => {
            let build = |pairs| ShardOp::Write(WriteOp::MSet { pairs });
            all_ok(
                fan_out(router, pairs, |p| &p.0, build)
                    .await?
                    .into_iter()
                    .map(|(_, f)| f)
                    .collect(),
            )
        }
        Command::MSetNx(pairs) => {
            let keys: Vec<Bytes> = pairs.iter().map(|p| p.0.clone()).collect();
            if keys.is_empty() {
                return Ok(Frame::error("ERR wrong number of arguments for 'msetnx' command"));
            }
            in_one_shard(router, &keys, ShardOp::Write(WriteOp::MSetNx { pairs })).await?
        }
        Command::Count { keys, write } => {
            let build = |keys| {
                if write {
                    ShardOp::Write(WriteOp::Del { keys })
                } else {
                    ShardOp::Read(ReadOp::Exists { keys })
                }
            };
            sum(fan_out(router, keys, |k| k, build)
                .await?
                .into_iter()
                .map(|(_, f)| f)
                .collect())
        }
        Command::SameShard { keys, op } => in_one_shard(router, &keys, op).await?,
        Command::ObjectEncoding(key) => {
            let limits = match crate::config::encoding_limits(router).await {
                Ok(limits) => limits,
                Err(frame) => return Ok(frame),
            };
            router
                .exec_key(&key.clone(), ShardOp::Read(ReadOp::ObjectEncoding { key, limits }))
                .await?
        }
        command @ Command::Eval { .. } => match command.into_shard_op() {
            // A script without keys runs where the empty key lives.
            Ok((keys, op)) if keys.is_empty() => in_one_shard(router, &[Vec::new()], op).await?,
            Ok((keys, op)) => in_one_shard(router, &keys, op).await?,
            Err(_) => Frame::error("ERR the script was not resolved"),
        },
        Command::Leader(key) => router.describe_key(&key)?,
        Command::Session(_) => Frame::error("ERR connection commands run on their connection"),
        Command::Scan {
            cursor,
            count,
            pattern,
            kind,
        } => scan(router, cursor, count, pattern, kind).await?,
        Command::Keys(pattern) => {
            let replies = on_every_shard(router, ShardOp::Read(ReadOp::Keys { pattern })).await?;
            let mut keys = Vec::new();
            for reply in replies {
                match reply {
                    Frame::Array(found) => keys.extend(found),
                    other => return Ok(other),
                }
            }
            Frame::Array(keys)
        }
        Command::RandomKey => random_key(router).await?,
        Command::SumAll(op) => sum_over_shards(router, op).await?,
        Command::AllOk(op) => all_ok(on_every_shard(router, op).await?),
    })
}

/// How long one SCAN call keeps collecting before it answers with what it has
/// (maybe nothing, with a non-zero cursor, as Redis may): bounds a call over a
/// sparse keyspace or a MATCH that few keys pass.
const SCAN_BUDGET: std::time::Duration = std::time::Duration::from_millis(50);

/// Virtual nodes a SCAN call's first round covers; a round in which no shard
/// filled its quota doubles the next one, so a small keyspace takes a few rounds
/// and a big one asks few shards per round.
const SCAN_FIRST_WINDOW: u32 = 32;

/// SCAN: collects keys in ring order from the cursor's position until it has
/// COUNT keys, the ring ends (cursor 0) or [`SCAN_BUDGET`] runs out. Each round
/// asks every shard owning a virtual node of the next window for its keys there,
/// concurrently, and keeps the keys before the first position where a shard
/// stopped: the page is then exactly a prefix of the ring from the cursor, so
/// the next call resumes there and no key present throughout is missed (see
/// the shard's cursor rule). A window that a split or merge changed is asked
/// again under the newer table.
async fn scan(
    router: &Router,
    cursor: u64,
    count: u64,
    pattern: Option<Bytes>,
    kind: Option<String>,
) -> Result<Frame, Error> {
    let started = std::time::Instant::now();
    let deadline = started + crate::route::RETRY_DEADLINE;
    let mut position = cursor;
    let mut keys = Vec::new();
    let mut window = SCAN_FIRST_WINDOW;
    loop {
        let table = router.table();
        if !table.is_bootstrapped() {
            return Err(Error::ClusterDown("the cluster is not bootstrapped yet".into()));
        }
        let first = (position >> 48) as u32;
        let wanted = count.saturating_sub(keys.len() as u64);
        if first >= table.vnode_count || wanted == 0 || started.elapsed() >= SCAN_BUDGET {
            let next = if first >= table.vnode_count { 0 } else { position.max(1) };
            return Ok(Frame::Array(vec![
                Frame::Bulk(next.to_string().into_bytes()),
                Frame::Array(keys),
            ]));
        }
        let end = first.saturating_add(window).min(table.vnode_count);
        let mut by_shard: std::collections::BTreeMap<ShardId, Vec<u16>> = Default::default();
        for vnode in first..end {
            let shard = table
                .shard_of(vnode as u16)
                .ok_or_else(|| Error::ClusterDown("routing table is incomplete".into()))?;
            by_shard.entry(shard).or_default().push(vnode as u16);
        }
        let steps = by_shard.into_iter().map(|(shard, vnodes)| {
            // Only the cursor's own virtual node resumes mid-way.
            let from = if u32::from(vnodes[0]) == first {
                position
            } else {
                u64::from(vnodes[0]) << 48
            };
            let op = ShardOp::Read(ReadOp::Scan {
                vnodes,
                from,
                count: wanted,
                pattern: pattern.clone(),
                kind: kind.clone(),
            });
            async move { router.exec(shard, op).await }
        });
        let mut stop = u64::from(end) << 48;
        let mut found = Vec::new();
        let mut moved = None;
        for answer in futures::future::join_all(steps).await {
            match answer {
                Ok(Frame::Array(step)) => match &step[..] {
                    [Frame::Integer(next), Frame::Integer(_), Frame::Array(step_keys)] => {
                        if *next >= 0 {
                            stop = stop.min(*next as u64);
                        }
                        found.extend(step_keys.iter().cloned());
                    }
                    _ => return Ok(Frame::error("ERR unexpected shard reply to SCAN")),
                },
                Ok(other) => return Ok(other),
                Err(Error::Moved(shard)) => moved = Some(shard),
                Err(e) => return Err(e),
            }
        }
        if let Some(shard) = moved {
            if std::time::Instant::now() >= deadline {
                return Err(Error::TryAgain(shard));
            }
            // A virtual node moved: the same window again, under the newer table.
            tokio::time::sleep(crate::route::MOVED_PAUSE).await;
            continue;
        }
        for key in found {
            let Frame::Bulk(bytes) = &key else { continue };
            let vnode = router
                .vnode_of(bytes)
                .ok_or_else(|| Error::ClusterDown("the cluster is not bootstrapped yet".into()))?;
            if redraft_common::keys::scan_position(vnode, bytes) < stop {
                keys.push(key);
            }
        }
        if stop == u64::from(end) << 48 {
            window = window.saturating_mul(2);
        }
        position = stop;
    }
}

/// RANDOMKEY: asks the shards in a random order until one has a key.
async fn random_key(router: &Router) -> Result<Frame, Error> {
    use rand::seq::SliceRandom;
    let mut shards = router.shards()?;
    shards.shuffle(&mut rand::thread_rng());
    for shard in shards {
        let op = ShardOp::Read(ReadOp::RandomKey { seed: random_seed() });
        match router.exec(shard, op).await {
            Ok(Frame::Null) | Err(Error::Moved(_)) => continue,
            Ok(found) => return Ok(found),
            Err(e) => return Err(e),
        }
    }
    Ok(Frame::Null)
}

/// The one shard that owns all of `keys`, or CROSSSLOT.
pub(crate) fn one_shard<'k>(router: &Router, keys: impl IntoIterator<Item = &'k [u8]>) -> Result<ShardId, Error> {
    let shards: std::collections::BTreeSet<ShardId> =
        keys.into_iter().map(|k| router.shard_of(k)).collect::<Result<_, _>>()?;
    match (shards.first(), shards.len()) {
        (Some(&shard), 1) => Ok(shard),
        _ => Err(Error::CrossSlot),
    }
}

/// Runs `op`, whose `keys` must all be in one shard, on that shard: CROSSSLOT
/// when they are not, checked again whenever a split or merge moved a key
/// (the shard re-checks ownership when it applies, and nothing ran).
pub(crate) async fn in_one_shard(router: &Router, keys: &[Bytes], op: ShardOp) -> Result<Frame, Error> {
    let deadline = std::time::Instant::now() + crate::route::RETRY_DEADLINE;
    let mut pause = crate::route::MOVED_PAUSE;
    loop {
        let shard = one_shard(router, keys.iter().map(|k| &k[..]))?;
        match router.exec(shard, op.clone()).await {
            Err(Error::Moved(shard)) if std::time::Instant::now() >= deadline => return Err(Error::TryAgain(shard)),
            Err(Error::Moved(_)) => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(crate::route::MOVED_PAUSE_MAX);
            }
            other => return other,
        }
    }
}

/// Runs `op` on every shard and sums the integer replies (DBSIZE).
async fn sum_over_shards(router: &Router, op: ShardOp) -> Result<Frame, Error> {
    Ok(sum(on_every_shard(router, op).await?))
}

fn all_ok(frames: Vec<Frame>) -> Frame {
    frames
        .into_iter()
        .find(|f| matches!(f, Frame::Error(_)))
        .unwrap_or_else(Frame::ok)
}

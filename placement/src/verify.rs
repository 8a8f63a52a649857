//! Consistency checks of shard replicas and the repair of one that differs.
//!
//! A check ([`verify_shard`]) asks the shard's leader to propose a
//! `ComputeDigest` entry, then collects every voter's digest at that entry's
//! index and compares them ([`redraft_common::consistency::compare`]). When they
//! differ, a second entry asks for per-key hashes of the virtual nodes that
//! differ, which names the keys. `redraft ctl verify` runs checks on demand;
//! with `--verify-every` the PD leader runs them itself, one shard at a time
//! at a bounded read rate, and exports the outcome as metrics.
//!
//! A repair ([`repair`]) replaces the replica a check found to be the odd one
//! out by a fresh copy: the node leaves the group (its copy is deleted), then
//! joins again as a learner that the leader brings up to date from a snapshot
//! and is promoted, with the same steps as a replica move.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use redraft_common::consistency::{compare, DigestProgress, DigestRequest, ReplicaDigest, ShardVerdict};
use redraft_common::ids::{NodeId, ShardId, VnodeId};
use redraft_common::ops::WriteOp;
use redraft_common::resp::Frame;
use redraft_common::routing::RoutingTable;
use redraft_common::transport::Endpoint;
use redraft_common::wire::{NodeRequest, NodeResponse};

use crate::scheduler::{self, Cluster};
use crate::state::PdCommand;

/// A replica whose digest makes no progress for this long is reported missing.
const STALLED_AFTER: Duration = Duration::from_secs(60);

/// Differing virtual nodes listed key by key in a check's second round.
const MAX_DETAILED_VNODES: usize = 16;

/// Checks `shard`'s voters against each other at one index.
pub async fn verify_shard(
    endpoint: &Endpoint,
    table: &RoutingTable,
    shard: ShardId,
    mib_per_sec: u32,
) -> Result<ShardVerdict> {
    let request = DigestRequest {
        detail: Vec::new(),
        mib_per_sec,
    };
    let (reports, missing) = digest_round(endpoint, table, shard, request).await?;
    let verdict = compare(shard, &reports, missing.clone(), None);
    if verdict.agrees() || verdict.vnodes.is_empty() {
        return Ok(verdict);
    }
    let detail: Vec<VnodeId> = verdict.vnodes.iter().copied().take(MAX_DETAILED_VNODES).collect();
    let request = DigestRequest { detail, mib_per_sec };
    let (listed, _) = digest_round(endpoint, table, shard, request).await?;
    Ok(compare(shard, &reports, missing, Some(&listed)))
}

type Reports = (BTreeMap<NodeId, ReplicaDigest>, Vec<(NodeId, String)>);

/// Proposes one digest entry and collects the voters' results.
async fn digest_round(
    endpoint: &Endpoint,
    table: &RoutingTable,
    shard: ShardId,
    request: DigestRequest,
) -> Result<Reports> {
    let info = table.shards.get(&shard).ok_or_else(|| anyhow!("no shard {shard}"))?;
    let propose = scheduler::exec(table, shard, WriteOp::ComputeDigest(request));
    let index = match scheduler::to_leader(endpoint, table, shard, propose).await? {
        Frame::Integer(index) => index as u64,
        other => bail!("shard {shard}: unexpected answer to a digest entry: {other:?}"),
    };
    let mut reports = BTreeMap::new();
    let mut missing = Vec::new();
    let mut waiting: BTreeMap<NodeId, (u64, Instant)> =
        info.replicas.iter().map(|n| (*n, (0, Instant::now()))).collect();
    while !waiting.is_empty() {
        for (node, (seen, since)) in std::mem::take(&mut waiting) {
            // Applied first: a replica registers its digest before its applied
            // index passes the entry, so "unknown" after "applied" means it
            // never will (asked the other way round, the two answers race).
            let applied = applied(endpoint, table, shard, node).await;
            match progress(endpoint, table, shard, node, index).await {
                Ok(DigestProgress::Done(digest)) => {
                    reports.insert(node, digest);
                }
                Ok(DigestProgress::Running { bytes }) if bytes > seen => {
                    waiting.insert(node, (bytes, Instant::now()));
                }
                Ok(DigestProgress::Unknown) if applied >= index => {
                    missing.push((
                        node,
                        "did not digest the entry (a snapshot was installed past it, or it restarted)".into(),
                    ));
                }
                answer if since.elapsed() >= STALLED_AFTER => {
                    let why = match answer {
                        Ok(DigestProgress::Running { .. }) => "its digest made no progress".to_string(),
                        Ok(_) => format!("has not applied the digest entry (index {index})"),
                        Err(e) => format!("did not answer: {e:#}"),
                    };
                    missing.push((node, why));
                }
                _ => {
                    waiting.insert(node, (seen, since));
                }
            }
        }
        if !waiting.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok((reports, missing))
}

async fn progress(
    endpoint: &Endpoint,
    table: &RoutingTable,
    shard: ShardId,
    node: NodeId,
    index: u64,
) -> Result<DigestProgress> {
    let addr = scheduler::node_addr(table, node)?;
    match endpoint
        .call::<_, NodeResponse>(
            addr,
            &NodeRequest::DigestProgress { shard, index },
            Duration::from_secs(3),
        )
        .await?
    {
        NodeResponse::Digest(progress) => Ok(progress),
        other => bail!("unexpected answer {other:?}"),
    }
}

/// The index `node`'s replica of `shard` has applied (0 when unknown).
async fn applied(endpoint: &Endpoint, table: &RoutingTable, shard: ShardId, node: NodeId) -> u64 {
    let Ok(addr) = scheduler::node_addr(table, node) else {
        return 0;
    };
    match endpoint
        .call::<_, NodeResponse>(addr, &NodeRequest::Applied { shard }, Duration::from_secs(3))
        .await
    {
        Ok(NodeResponse::Reply(Frame::Integer(i))) => i as u64,
        _ => 0,
    }
}

/// Replaces `node`'s replica of `shard` by a fresh copy from the leader, when
/// a check finds it differing from a majority that agrees. Returns what was done.
pub async fn repair(cluster: &impl Cluster, endpoint: &Endpoint, shard: ShardId, node: NodeId) -> Result<Vec<String>> {
    let table = cluster.table();
    let info = table
        .shards
        .get(&shard)
        .ok_or_else(|| anyhow!("no shard {shard}"))?
        .clone();
    let mut steps = Vec::new();
    if info.replicas.contains(&node) {
        let verdict = verify_shard(endpoint, &table, shard, 0).await?;
        if verdict.agrees() && verdict.missing.is_empty() {
            bail!(
                "shard {shard}: every replica agrees at index {}; node {node} needs no repair",
                verdict.index
            );
        }
        match verdict.odd_one_out {
            Some(odd) if odd == node => {}
            Some(odd) => bail!("shard {shard}: node {odd} is the one that differs, not node {node}"),
            None => bail!(
                "shard {shard}: no majority of replicas agrees ({}); refusing to pick a copy to keep",
                describe_groups(&verdict)
            ),
        }
        steps.push(format!(
            "shard {shard}: node {node} differs from nodes {} at index {}",
            join(&verdict.groups[0]),
            verdict.index
        ));
        if info.leader == Some(node) {
            let stay = verdict.groups[0][0];
            scheduler::transfer_leadership(endpoint, &table, shard, stay).await?;
            cluster.leader_moved(shard, stay);
            steps.push(format!("shard {shard}: leadership moved to node {stay}"));
        }
        let staying: Vec<NodeId> = info.replicas.iter().copied().filter(|n| *n != node).collect();
        let shrink = NodeRequest::ChangeVoters {
            shard,
            voters: staying.clone(),
        };
        scheduler::to_leader(endpoint, &cluster.table(), shard, shrink).await?;
        cluster
            .propose(PdCommand::SetReplicas {
                shard,
                replicas: staying,
            })
            .await?;
        wait_removed(endpoint, &table, shard, node).await?;
        steps.push(format!("shard {shard}: node {node}'s copy removed"));
    } else if info.learners.contains(&node) || info.replicas.len() >= 3 {
        bail!("node {node} holds no replica of shard {shard} to repair");
    } else {
        steps.push(format!("shard {shard}: resuming: node {node} left the group before"));
    }
    let table = cluster.table();
    scheduler::begin_move(cluster, endpoint, &table, (&shard, &node, &node)).await?;
    let table = cluster.table();
    scheduler::complete_move(cluster, endpoint, &table, (&shard, &node, &node)).await?;
    steps.push(format!(
        "shard {shard}: node {node} holds a fresh copy from the leader again"
    ));
    Ok(steps)
}

/// Waits until `node` no longer hosts a replica of `shard` (it deletes its copy
/// when the routing table leaves it out).
async fn wait_removed(endpoint: &Endpoint, table: &RoutingTable, shard: ShardId, node: NodeId) -> Result<()> {
    let addr = scheduler::node_addr(table, node)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let answer = endpoint
            .call::<_, NodeResponse>(addr, &NodeRequest::Applied { shard }, Duration::from_secs(3))
            .await;
        if matches!(answer, Ok(NodeResponse::NoShard)) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("node {node} still hosts shard {shard} after 60 s: {answer:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn join(nodes: &[NodeId]) -> String {
    nodes.iter().map(NodeId::to_string).collect::<Vec<_>>().join(", ")
}

/// "nodes 1, 2 | node 3": the groups of replicas with equal data.
pub fn describe_groups(verdict: &ShardVerdict) -> String {
    verdict
        .groups
        .iter()
        .map(|g| format!("{} {}", if g.len() == 1 { "node" } else { "nodes" }, join(g)))
        .collect::<Vec<_>>()
        .join(" | ")
}

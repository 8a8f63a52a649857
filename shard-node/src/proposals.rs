//! Proposal batching: concurrent writes to one shard share a Raft entry.
//!
//! Every Raft entry costs the same fixed work whatever it carries: a log append
//! and fsync on each replica, an AppendEntries round, an apply `WriteBatch` and
//! several task wake-ups per replica. [`Proposals`] keeps at most
//! [`IN_FLIGHT`] entries of a group in flight; writes that arrive meanwhile
//! wait in the group's queue and leave together, in arrival order, as one
//! `WriteOp::Many` entry as soon as a slot frees. Under load, entries therefore
//! grow with the offered load instead of their number (Raft's own version of
//! group commit, as TiKV batches a region's proposals per tick). A lone write
//! goes at once, as its own entry, so an idle shard adds no latency.
//!
//! ORDER. One caller's writes (a client's pipelined writes to the shard) go in
//! one entry, in order, so they share one outcome and are applied in order.
//! Writes of different callers that are queued together are concurrent, so any
//! order between them is linearizable.
//!
//! FAILURE. An entry's outcome is every write's outcome: `NotLeader` (nothing
//! was proposed) or "unknown" (timeout after proposing) reaches every waiter.
//! Within an applied entry each write has its own reply, including "not owned"
//! when a split moved its key away.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use redraft_common::now_ms;
use redraft_common::ops::WriteOp;
use redraft_common::wire::NodeResponse;
use tokio::sync::oneshot;

use crate::metrics;
use crate::raft::{typ, ShardRequest, ShardResponse};

/// Entries of one group proposed and not yet applied, at most. Two lets one
/// entry replicate while the previous one is applied.
pub const IN_FLIGHT: usize = 2;

/// Most writes in one entry (unless one caller alone brings more): bounds entry
/// size, and so a follower's catch-up messages, when a burst queues up.
pub const MAX_ENTRY_WRITES: usize = 1024;

/// How long a write may wait for commit and apply before its outcome is reported
/// as unknown. Longer than an election (so a leader change usually completes),
/// shorter than client timeouts.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// A write's applied outcome, or the answer for one that was not (or may not
/// have been) applied.
pub type Outcome = Result<ShardResponse, NodeResponse>;

type Waiter = (WriteOp, oneshot::Sender<Outcome>);

#[derive(Default)]
struct Queue {
    /// Callers' writes, each caller's kept together.
    waiting: std::collections::VecDeque<Vec<Waiter>>,
    in_flight: usize,
    /// Leadership transfers under way: while non-zero no new entry starts and
    /// writes wait in the queue.
    paused: usize,
}

/// One group's proposal queue (cheap to clone: a shared handle).
#[derive(Clone, Default)]
pub struct Proposals {
    queue: Arc<Mutex<Queue>>,
}

impl Proposals {
    /// Proposes `ops` (in order) through `raft`, batched with other callers'
    /// writes; their outcomes in the same order.
    pub async fn submit(&self, raft: &typ::Raft, ops: Vec<WriteOp>) -> Vec<Outcome> {
        if ops.is_empty() {
            return Vec::new();
        }
        let mut answers = Vec::with_capacity(ops.len());
        let start_flush = {
            let mut caller = Vec::with_capacity(ops.len());
            for op in ops {
                let (tx, rx) = oneshot::channel();
                caller.push((op, tx));
                answers.push(rx);
            }
            let mut queue = self.queue.lock().expect("proposal queue lock");
            queue.waiting.push_back(caller);
            let start = queue.paused == 0 && queue.in_flight < IN_FLIGHT;
            if start {
                queue.in_flight += 1;
            }
            start
        };
        if start_flush {
            // A task of its own, so a caller that goes away (its client
            // disconnected) never strands the queue.
            tokio::spawn(self.clone().flush(raft.clone()));
        }
        let mut outcomes = Vec::with_capacity(answers.len());
        for answer in answers {
            outcomes.push(
                answer
                    .await
                    .unwrap_or_else(|_| Err(NodeResponse::Unknown("the shard stopped".into()))),
            );
        }
        outcomes
    }

    /// Proposes queued writes, one entry at a time, until the queue is empty;
    /// holds one of the group's in-flight slots meanwhile.
    async fn flush(self, raft: typ::Raft) {
        loop {
            let batch: Vec<Waiter> = {
                let mut queue = self.queue.lock().expect("proposal queue lock");
                if queue.waiting.is_empty() || queue.paused > 0 {
                    queue.in_flight -= 1;
                    return;
                }
                let mut batch = queue.waiting.pop_front().expect("a caller waits");
                while queue
                    .waiting
                    .front()
                    .is_some_and(|next| batch.len() + next.len() <= MAX_ENTRY_WRITES)
                {
                    batch.extend(queue.waiting.pop_front().expect("a caller waits"));
                }
                batch
            };
            let (ops, waiters): (Vec<WriteOp>, Vec<oneshot::Sender<Outcome>>) = batch.into_iter().unzip();
            metrics::ENTRY_WRITES.observe(ops.len() as f64);
            let n = ops.len();
            if n == 1 {
                let op = ops.into_iter().next().expect("one write");
                let outcome = propose(&raft, op).await;
                for waiter in waiters {
                    let _ = waiter.send(outcome.clone());
                }
                continue;
            }
            match propose(&raft, WriteOp::Many(ops)).await {
                Ok(ShardResponse::Many(outcomes)) if outcomes.len() == n => {
                    for (waiter, outcome) in waiters.into_iter().zip(outcomes) {
                        let _ = waiter.send(Ok(outcome));
                    }
                }
                Ok(other) => {
                    let failed = NodeResponse::Unknown(format!("unexpected batch outcome {other:?}"));
                    for waiter in waiters {
                        let _ = waiter.send(Err(failed.clone()));
                    }
                }
                Err(failed) => {
                    for waiter in waiters {
                        let _ = waiter.send(Err(failed.clone()));
                    }
                }
            }
        }
    }

    /// Holds new entries back (writes keep queueing) until the returned guard is
    /// dropped; entries already proposed go on. A leader handing its leadership
    /// over pauses so the new leader's log can catch up with its own.
    pub fn pause(&self, raft: &typ::Raft) -> Paused {
        self.queue.lock().expect("proposal queue lock").paused += 1;
        Paused {
            proposals: self.clone(),
            raft: raft.clone(),
        }
    }

    /// Whether every entry this queue proposed has been answered (applied, or
    /// failed): while paused, nothing more will reach the log through it.
    pub fn settled(&self) -> bool {
        self.queue.lock().expect("proposal queue lock").in_flight == 0
    }
}

/// A pause of a group's proposals; dropping it proposes what queued meanwhile
/// (through whichever replica leads then: a former leader's entries fail with
/// `NotLeader`, which the proxy retries at the new one).
pub struct Paused {
    proposals: Proposals,
    raft: typ::Raft,
}

impl Drop for Paused {
    fn drop(&mut self) {
        let starts = {
            let mut queue = self.proposals.queue.lock().expect("proposal queue lock");
            queue.paused -= 1;
            if queue.paused > 0 {
                0
            } else {
                let starts = IN_FLIGHT.saturating_sub(queue.in_flight).min(queue.waiting.len());
                queue.in_flight += starts;
                starts
            }
        };
        for _ in 0..starts {
            tokio::spawn(self.proposals.clone().flush(self.raft.clone()));
        }
    }
}

/// Proposes one entry and waits for it to be applied.
pub async fn propose(raft: &typ::Raft, op: WriteOp) -> Outcome {
    let request = ShardRequest { now_ms: now_ms(), op };
    let started = std::time::Instant::now();
    let outcome = tokio::time::timeout(WRITE_TIMEOUT, raft.client_write(request)).await;
    let result = match &outcome {
        Ok(Ok(_)) => "ok",
        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => "not_leader",
        _ => "unknown",
    };
    metrics::PROPOSALS.with_label_values(&[result]).inc();
    if result == "ok" {
        metrics::PROPOSAL_SECONDS.observe(started.elapsed().as_secs_f64());
    }
    match outcome {
        Err(_) => Err(NodeResponse::Unknown("timeout; write may have been applied".into())),
        Ok(Ok(response)) => Ok(response.data),
        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
            Err(NodeResponse::NotLeader { leader: f.leader_id })
        }
        Ok(Err(e)) => Err(NodeResponse::Unknown(format!("write may have been applied: {e}"))),
    }
}

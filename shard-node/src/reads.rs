//! Linearizable reads batched per group: one ReadIndex round serves every read
//! that was waiting when the round started.
//!
//! openraft's `ensure_linearizable` confirms the leadership with a heartbeat
//! round to the followers, then waits until the state machine has applied the
//! commit index it saw. Run once per read, every GET costs a round of messages
//! and wake-ups on all three replicas. [`ReadBarrier`] runs at most one round
//! per group at a time: reads that arrive meanwhile wait for the next round,
//! which starts as soon as the current one ends, so under load one round serves
//! as many reads as arrived during the previous one (etcd's linearizable read
//! loop does the same), while a lone read starts its round at once.
//!
//! ORDER. A read may only pass on a round that started after it arrived: a
//! round that started earlier may have captured a commit index older than a
//! write acknowledged before the read arrived.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{CheckIsLeaderError, RaftError};
use redraft_common::wire::NodeResponse;
use tokio::sync::oneshot;

use crate::metrics;
use crate::raft::typ;

/// How long a round may take before its readers are answered "not leader" (the
/// proxy then asks again, possibly elsewhere).
pub const READ_TIMEOUT: Duration = Duration::from_secs(3);

/// Whether a round let its readers read: `Err` carries the answer they get instead.
type RoundOutcome = Result<(), NodeResponse>;

#[derive(Default)]
struct Waiting {
    readers: Vec<oneshot::Sender<RoundOutcome>>,
    round_running: bool,
}

/// One group's read barrier (cheap to clone: a shared handle).
#[derive(Clone, Default)]
pub struct ReadBarrier {
    waiting: Arc<Mutex<Waiting>>,
}

impl ReadBarrier {
    /// Returns once this replica may serve a linearizable read from its state
    /// machine (it led the group after the call began and has applied
    /// everything committed before), or the answer to give instead.
    pub async fn pass(&self, raft: &typ::Raft) -> RoundOutcome {
        let (reader, outcome) = oneshot::channel();
        let start_rounds = {
            let mut waiting = self.waiting.lock().expect("read barrier lock");
            waiting.readers.push(reader);
            !std::mem::replace(&mut waiting.round_running, true)
        };
        if start_rounds {
            tokio::spawn(rounds(self.waiting.clone(), raft.clone()));
        }
        let outcome = outcome.await.unwrap_or(Err(NodeResponse::NotLeader { leader: None }));
        let result = if outcome.is_ok() { "ok" } else { "not_leader" };
        metrics::READS.with_label_values(&[result]).inc();
        outcome
    }
}

/// Runs rounds until no reader waits.
async fn rounds(waiting: Arc<Mutex<Waiting>>, raft: typ::Raft) {
    loop {
        let readers = {
            let mut waiting = waiting.lock().expect("read barrier lock");
            if waiting.readers.is_empty() {
                waiting.round_running = false;
                return;
            }
            std::mem::take(&mut waiting.readers)
        };
        metrics::ROUND_READS.observe(readers.len() as f64);
        let started = Instant::now();
        let outcome = match tokio::time::timeout(READ_TIMEOUT, raft.ensure_linearizable()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                Err(NodeResponse::NotLeader { leader: f.leader_id })
            }
            Ok(Err(_)) | Err(_) => Err(NodeResponse::NotLeader { leader: None }),
        };
        metrics::READ_INDEX_SECONDS.observe(started.elapsed().as_secs_f64());
        for reader in readers {
            let _ = reader.send(outcome.clone());
        }
    }
}

//! Linearizable reads: from a leader lease when it holds, otherwise batched
//! per group, one ReadIndex round serving every read that was waiting when the
//! round started.
//!
//! LEASE. A leader whose lease holds ([`redraft_raft_storage::lease`]) serves a
//! read from its applied state at once, touching no other node: no other replica
//! can have been elected, so no write can have been acknowledged that this
//! leader has not applied, once it has applied an entry of its own term (the
//! entry every new leader appends first, which follows everything committed
//! before its election). The lease is renewed by every AppendEntries a majority
//! accepts, the ReadIndex round's heartbeats included, so a quiet leader pays
//! one round and then serves from its lease again. `--read-policy read-index`
//! turns it off.
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

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{CheckIsLeaderError, RaftError};
use redraft_common::wire::NodeResponse;
use redraft_raft_storage::lease::Lease;
use tokio::sync::oneshot;

use crate::metrics;
use crate::raft::typ;

/// How a leader confirms that a read may be served from its own state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ReadPolicy {
    /// From its lease while it holds, a ReadIndex round otherwise.
    #[default]
    Lease,
    /// A ReadIndex round (a heartbeat to a quorum) for every batch of reads.
    ReadIndex,
}

impl std::str::FromStr for ReadPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "lease" => Ok(ReadPolicy::Lease),
            "read-index" => Ok(ReadPolicy::ReadIndex),
            other => Err(format!("unknown read policy '{other}': expected lease or read-index")),
        }
    }
}

/// Whether `me`, by `m`, leads with a lease that holds now and has applied an
/// entry of its own term (see LEASE above).
pub fn lease_holds(lease: &Lease, me: u64, m: &openraft::RaftMetrics<u64, openraft::BasicNode>) -> bool {
    if m.current_leader != Some(me) || !m.state.is_leader() {
        return false;
    }
    if m.last_applied.as_ref().map(|applied| applied.leader_id) != Some(m.vote.leader_id) {
        return false;
    }
    // A joint configuration has two majorities: such reads go through ReadIndex.
    let [voters] = m.membership_config.membership().get_joint_config().as_slice() else {
        return false;
    };
    lease.holds(me, &m.vote, voters, Instant::now())
}

/// How long a round may take before its readers are answered "not leader" (the
/// proxy then asks again, possibly elsewhere).
const READ_TIMEOUT: Duration = Duration::from_secs(3);

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
        let raft = raft.clone();
        self.pass_with(move || read_index(raft.clone())).await
    }

    /// [`Self::pass`] with the round given: `round` confirms that reads starting
    /// now are linearizable.
    async fn pass_with<R, F>(&self, round: R) -> RoundOutcome
    where
        R: Fn() -> F + Send + 'static,
        F: Future<Output = RoundOutcome> + Send + 'static,
    {
        let (reader, outcome) = oneshot::channel();
        let start_rounds = {
            let mut waiting = self.waiting.lock().expect("read barrier lock");
            waiting.readers.push(reader);
            !std::mem::replace(&mut waiting.round_running, true)
        };
        if start_rounds {
            tokio::spawn(rounds(self.waiting.clone(), round));
        }
        let outcome = outcome.await.unwrap_or(Err(NodeResponse::NotLeader { leader: None }));
        let result = if outcome.is_ok() { "ok" } else { "not_leader" };
        metrics::READS.with_label_values(&[result]).inc();
        outcome
    }
}

/// One ReadIndex round through openraft.
async fn read_index(raft: typ::Raft) -> RoundOutcome {
    let started = Instant::now();
    let outcome = match tokio::time::timeout(READ_TIMEOUT, raft.ensure_linearizable()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
            Err(NodeResponse::NotLeader { leader: f.leader_id })
        }
        Ok(Err(_)) | Err(_) => Err(NodeResponse::NotLeader { leader: None }),
    };
    metrics::READ_INDEX_SECONDS.observe(started.elapsed().as_secs_f64());
    outcome
}

/// Runs rounds until no reader waits; each round serves the readers that were
/// waiting when it started.
async fn rounds<R, F>(waiting: Arc<Mutex<Waiting>>, round: R)
where
    R: Fn() -> F,
    F: Future<Output = RoundOutcome>,
{
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
        let outcome = round().await;
        for reader in readers {
            let _ = reader.send(outcome.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{BasicNode, CommittedLeaderId, LogId, Membership, RaftMetrics, ServerState, StoredMembership, Vote};
    use std::collections::BTreeSet;

    /// Metrics of node 1 leading term 3 of voters `configs`, having applied
    /// an entry of `applied_term`.
    fn leader_metrics(applied_term: u64, configs: Vec<BTreeSet<u64>>) -> RaftMetrics<u64, BasicNode> {
        let mut m = RaftMetrics::new_initial(1);
        m.current_term = 3;
        m.vote = Vote::new_committed(3, 1);
        m.state = ServerState::Leader;
        m.current_leader = Some(1);
        m.last_applied = Some(LogId::new(CommittedLeaderId::new(applied_term, 1), 7));
        m.membership_config = Arc::new(StoredMembership::new(None, Membership::new(configs, None)));
        m
    }

    #[test]
    fn a_lease_serves_reads_only_to_a_leader_that_applied_its_own_term_in_a_plain_configuration() {
        let voters = BTreeSet::from([1, 2, 3]);
        let lease = Lease::new(Duration::from_secs(60));
        let m = leader_metrics(3, vec![voters.clone()]);
        assert!(!lease_holds(&lease, 1, &m), "no follower has accepted anything yet");
        lease.accepted(2, Vote::new_committed(3, 1), Instant::now());
        assert!(lease_holds(&lease, 1, &m));
        assert!(
            !lease_holds(&lease, 1, &leader_metrics(2, vec![voters.clone()])),
            "a new leader that has not applied an entry of its term may lack committed writes"
        );
        let joint = leader_metrics(3, vec![voters.clone(), BTreeSet::from([1, 2, 4])]);
        assert!(
            !lease_holds(&lease, 1, &joint),
            "a joint configuration goes through ReadIndex"
        );
        let mut follower = leader_metrics(3, vec![voters]);
        follower.state = ServerState::Follower;
        follower.current_leader = Some(2);
        assert!(!lease_holds(&lease, 1, &follower));
    }

    #[test]
    fn read_policies_parse_from_their_flag_values() {
        assert_eq!("lease".parse::<ReadPolicy>(), Ok(ReadPolicy::Lease));
        assert_eq!("read-index".parse::<ReadPolicy>(), Ok(ReadPolicy::ReadIndex));
        assert!("quorum".parse::<ReadPolicy>().is_err());
    }
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::sync::Semaphore;

    /// A round that counts itself and finishes only when the test releases it.
    fn gated_round(
        started: Arc<AtomicUsize>,
        gate: Arc<Semaphore>,
    ) -> impl Fn() -> std::pin::Pin<Box<dyn Future<Output = RoundOutcome> + Send>> + Send + 'static {
        move || {
            let (started, gate) = (started.clone(), gate.clone());
            Box::pin(async move {
                started.fetch_add(1, Ordering::SeqCst);
                gate.acquire().await.expect("gate open").forget();
                Ok(())
            })
        }
    }

    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn reads_arriving_during_a_round_wait_for_the_next_one() {
        let barrier = ReadBarrier::default();
        let started = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(Semaphore::new(0));
        let first = tokio::spawn({
            let (barrier, round) = (barrier.clone(), gated_round(started.clone(), gate.clone()));
            async move { barrier.pass_with(round).await }
        });
        settle().await;
        assert_eq!(started.load(Ordering::SeqCst), 1, "a lone read starts a round at once");

        // Three reads arrive while the first round runs: none may pass on it.
        let later: Vec<_> = (0..3)
            .map(|_| {
                let (barrier, round) = (barrier.clone(), gated_round(started.clone(), gate.clone()));
                tokio::spawn(async move { barrier.pass_with(round).await })
            })
            .collect();
        settle().await;
        assert_eq!(started.load(Ordering::SeqCst), 1, "no second round while one runs");

        gate.add_permits(1);
        assert!(first.await.unwrap().is_ok());
        settle().await;
        assert!(
            later.iter().all(|read| !read.is_finished()),
            "later reads wait for their own round"
        );
        assert_eq!(started.load(Ordering::SeqCst), 2, "one round for all reads that waited");

        gate.add_permits(1);
        for read in later {
            assert!(read.await.unwrap().is_ok());
        }
        settle().await;
        assert_eq!(started.load(Ordering::SeqCst), 2, "no round without readers");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_refused_round_refuses_its_readers_and_the_next_round_starts_afresh() {
        let barrier = ReadBarrier::default();
        let refused = barrier
            .pass_with(|| async { Err(NodeResponse::NotLeader { leader: Some(2) }) })
            .await;
        assert!(matches!(refused, Err(NodeResponse::NotLeader { leader: Some(2) })));
        assert!(barrier.pass_with(|| async { Ok(()) }).await.is_ok());
    }
}

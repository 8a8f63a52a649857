//! A leader's read lease: how long it may serve reads from its own state
//! without asking its followers.
//!
//! RULE. A follower that accepts an AppendEntries (or heartbeat) from a leader
//! refuses every vote request for openraft's `leader_lease` (the election
//! timeout's upper bound) after it received it, and it received it after the
//! leader sent it. So once a majority of the voters (the leader counted) has
//! accepted an AppendEntries that the leader sent at `t` under its current vote,
//! no other replica can win an election before `t + election_timeout_max` by the
//! followers' clocks. [`Lease`] records, per follower, the send time (the
//! leader's monotonic clock) of the last AppendEntries it accepted, and holds
//! until `t + duration`, where `t` is the latest send time a majority has
//! accepted and `duration` a fraction of the election timeout that covers the
//! clocks' rate drift (docs/decisions.md, "Leader lease reads"). TiKV's
//! raftstore and CockroachDB's epoch leases rest on the same assumption.
//!
//! WHAT VOIDS IT. Three ways to a new leader bypass the followers' refusal, and
//! each voids the lease first:
//! - the leader itself grants a vote (its own refusal lasts only
//!   `leader_lease` after it was elected): the node calls [`Lease::void`] before
//!   it hands a vote request to openraft;
//! - the leader hands its leadership over (the target campaigns without waiting
//!   for its own refusal to end): the transfer voids the lease for as long as it
//!   runs, and a while after;
//! - a follower campaigns on request: it does so only when it has not heard
//!   from a leader for `leader_lease` ([`Lease::heard_from_leader_within`]).
//!
//! Acknowledgements of messages sent before the lease was voided never count
//! again, so an answer already on its way cannot revive it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use openraft::Vote;

/// The part of openraft's vote refusal a leader relies on: the rest covers
/// clock-rate drift between nodes (about 10% either way) and scheduling.
pub const LEASE_FRACTION: f64 = 0.8;

#[derive(Debug)]
struct State {
    /// Per follower: the vote of the last AppendEntries it accepted, and when it
    /// was sent.
    accepted: BTreeMap<u64, (Vote<u64>, Instant)>,
    /// Acknowledgements of messages sent before this instant do not count.
    not_before: Option<Instant>,
    /// When this replica last received an AppendEntries (as a follower).
    heard_from_leader: Option<Instant>,
    /// Operations under way that suspend the lease (membership changes).
    suspended: usize,
}

/// One group's lease (shared by its network, its read path and its vote
/// handling).
#[derive(Debug)]
pub struct Lease {
    duration: Duration,
    state: Mutex<State>,
}

impl Lease {
    /// A lease that lasts `duration` from the send time of the last
    /// AppendEntries a majority accepted.
    pub fn new(duration: Duration) -> Lease {
        Lease {
            duration,
            state: Mutex::new(State {
                accepted: BTreeMap::new(),
                not_before: None,
                heard_from_leader: None,
                suspended: 0,
            }),
        }
    }

    /// The lease of a group whose followers refuse votes for `leader_lease`
    /// (openraft's: the election timeout's upper bound).
    pub fn for_election_timeout(leader_lease: Duration) -> Lease {
        Lease::new(leader_lease.mul_f64(LEASE_FRACTION))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("lease lock")
    }

    /// Records that `follower` accepted an AppendEntries carrying `vote`, sent
    /// at `sent`.
    pub fn accepted(&self, follower: u64, vote: Vote<u64>, sent: Instant) {
        let mut state = self.state();
        if state.not_before.is_some_and(|t| sent < t) {
            return;
        }
        let entry = state.accepted.entry(follower).or_insert((vote, sent));
        if entry.0 != vote || entry.1 < sent {
            *entry = (vote, sent);
        }
    }

    /// Voids the lease until `until`: acknowledgements of messages sent before
    /// then are ignored, those already recorded forgotten.
    pub fn void_until(&self, until: Instant) {
        let mut state = self.state();
        state.accepted.clear();
        state.not_before = Some(state.not_before.map_or(until, |t| t.max(until)));
    }

    /// Voids the lease from now on (see [`Self::void_until`]).
    pub fn void(&self) {
        self.void_until(Instant::now());
    }

    /// Suspends the lease until the guard is dropped (a membership change: the
    /// majority it rests on is changing); it then starts afresh, from messages
    /// sent after the suspension ended.
    pub fn suspend(&self) -> Suspended<'_> {
        self.state().suspended += 1;
        Suspended { lease: self }
    }

    /// Whether, at `now`, the leader `me` holding `vote` may serve reads
    /// without a quorum round: a majority of `voters` (itself included) has
    /// accepted an AppendEntries sent under `vote` within the lease.
    pub fn holds(&self, me: u64, vote: &Vote<u64>, voters: &BTreeSet<u64>, now: Instant) -> bool {
        if !vote.is_committed() || !voters.contains(&me) {
            return false;
        }
        let state = self.state();
        if state.suspended > 0 || state.not_before.is_some_and(|t| now < t) {
            return false;
        }
        let mut sent: Vec<Instant> = voters
            .iter()
            .filter(|v| **v != me)
            .filter_map(|v| state.accepted.get(v))
            .filter(|(accepted_vote, _)| accepted_vote == vote)
            .map(|(_, at)| *at)
            .collect();
        // The leader's own acceptance is now; a majority needs this many more.
        let others_needed = voters.len() / 2;
        if others_needed == 0 {
            return true;
        }
        if sent.len() < others_needed {
            return false;
        }
        sent.sort_unstable_by(|a, b| b.cmp(a));
        let quorum_sent = sent[others_needed - 1];
        now < quorum_sent + self.duration
    }

    /// Records that this replica received an AppendEntries from a leader.
    pub fn heard_from_leader(&self) {
        self.state().heard_from_leader = Some(Instant::now());
    }

    /// Whether this replica received an AppendEntries within `within`: it then
    /// refuses votes, and must not campaign on request either, since a leader
    /// may count it in its lease.
    pub fn heard_from_leader_within(&self, within: Duration) -> bool {
        self.state().heard_from_leader.is_some_and(|t| t.elapsed() < within)
    }
}

/// A suspension of a lease (see [`Lease::suspend`]).
pub struct Suspended<'a> {
    lease: &'a Lease,
}

impl Drop for Suspended<'_> {
    fn drop(&mut self) {
        self.lease.void();
        self.lease.state().suspended -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_millis(800);

    fn voters<const N: usize>(ids: [u64; N]) -> BTreeSet<u64> {
        BTreeSet::from(ids)
    }

    fn vote(term: u64, leader: u64) -> Vote<u64> {
        Vote::new_committed(term, leader)
    }

    #[test]
    fn a_majority_of_recent_acceptances_holds_the_lease_until_the_oldest_of_them_expires() {
        let lease = Lease::new(LEASE);
        let t0 = Instant::now();
        let v = vote(3, 1);
        assert!(
            !lease.holds(1, &v, &voters([1, 2, 3]), t0),
            "no follower has accepted yet"
        );
        lease.accepted(2, v, t0);
        assert!(lease.holds(1, &v, &voters([1, 2, 3]), t0 + Duration::from_millis(10)));
        assert!(
            !lease.holds(1, &v, &voters([1, 2, 3]), t0 + LEASE),
            "the lease ends `duration` after the send time"
        );
        // A later acceptance by the other follower renews it.
        lease.accepted(3, v, t0 + Duration::from_millis(500));
        assert!(lease.holds(1, &v, &voters([1, 2, 3]), t0 + LEASE));
        // Five voters need two followers: the second most recent one counts.
        assert!(lease.holds(1, &v, &voters([1, 2, 3, 4, 5]), t0 + Duration::from_millis(700)));
        assert!(!lease.holds(1, &v, &voters([1, 2, 3, 4, 5]), t0 + LEASE));
    }

    #[test]
    fn acceptances_under_another_vote_or_by_non_voters_do_not_count() {
        let lease = Lease::new(LEASE);
        let now = Instant::now();
        lease.accepted(2, vote(2, 1), now);
        assert!(
            !lease.holds(1, &vote(3, 1), &voters([1, 2, 3]), now),
            "an older term's acceptance"
        );
        lease.accepted(4, vote(3, 1), now);
        assert!(
            !lease.holds(1, &vote(3, 1), &voters([1, 2, 3]), now),
            "node 4 does not vote"
        );
        assert!(
            !lease.holds(5, &vote(3, 1), &voters([1, 2, 3]), now),
            "the caller does not vote"
        );
        assert!(
            !lease.holds(1, &Vote::new(3, 1), &voters([1, 2, 3]), now),
            "a vote not yet committed is no leadership"
        );
        assert!(
            lease.holds(1, &vote(3, 1), &voters([1]), now),
            "a lone voter is its own majority"
        );
    }

    #[test]
    fn a_voided_lease_ignores_acknowledgements_of_earlier_messages() {
        let lease = Lease::new(LEASE);
        let v = vote(3, 1);
        let sent = Instant::now();
        lease.accepted(2, v, sent);
        std::thread::sleep(Duration::from_millis(2));
        lease.void();
        let now = Instant::now();
        assert!(!lease.holds(1, &v, &voters([1, 2, 3]), now));
        // An answer that was on its way when the lease was voided.
        lease.accepted(3, v, sent);
        assert!(!lease.holds(1, &v, &voters([1, 2, 3]), now));
        // A message sent afterwards renews it.
        lease.accepted(3, v, now);
        assert!(lease.holds(1, &v, &voters([1, 2, 3]), now));
    }

    #[test]
    fn a_lease_voided_until_a_later_instant_holds_nothing_before_it() {
        let lease = Lease::new(LEASE);
        let v = vote(3, 1);
        let now = Instant::now();
        lease.void_until(now + Duration::from_secs(1));
        lease.accepted(2, v, now);
        assert!(!lease.holds(1, &v, &voters([1, 2, 3]), now));
        let later = now + Duration::from_millis(1200);
        lease.accepted(2, v, later);
        assert!(lease.holds(1, &v, &voters([1, 2, 3]), later));
        // A shorter void does not shorten a longer one.
        lease.void_until(now);
        lease.accepted(2, v, now + Duration::from_millis(10));
        assert!(!lease.holds(1, &v, &voters([1, 2, 3]), now + Duration::from_millis(10)));
    }

    #[test]
    fn a_suspended_lease_holds_nothing_and_restarts_from_later_messages() {
        let lease = Lease::new(LEASE);
        let v = vote(3, 1);
        let before = Instant::now();
        lease.accepted(2, v, before);
        {
            let _change = lease.suspend();
            assert!(!lease.holds(1, &v, &voters([1, 2, 3]), before));
            lease.accepted(3, v, Instant::now());
            assert!(!lease.holds(1, &v, &voters([1, 2, 3]), Instant::now()));
        }
        assert!(
            !lease.holds(1, &v, &voters([1, 2, 3]), Instant::now()),
            "acks from before the end do not count"
        );
        std::thread::sleep(Duration::from_millis(2));
        let after = Instant::now();
        lease.accepted(3, v, after);
        assert!(lease.holds(1, &v, &voters([1, 2, 3]), after));
    }

    #[test]
    fn a_follower_remembers_when_it_last_heard_from_a_leader() {
        let lease = Lease::new(LEASE);
        assert!(!lease.heard_from_leader_within(Duration::from_secs(2)));
        lease.heard_from_leader();
        assert!(lease.heard_from_leader_within(Duration::from_secs(2)));
        assert!(!lease.heard_from_leader_within(Duration::ZERO));
    }
}

//! Clients blocked on the keys of a shard this node leads (BLPOP, BLMOVE,
//! BZPOPMIN, ...): who waits for what, in blocking order, and the task that
//! serves them.
//!
//! WHERE THEY WAIT. A blocked client is registered, in memory, on the leader of
//! the shard that owns its keys; followers keep nothing. When an applied write
//! changes a key someone blocks on (a push, LMOVE, RENAME, a transaction, ...),
//! the key becomes ready and the group's serving task proposes one
//! `ServeBlocked` entry naming, in blocking order, the clients blocked on ready
//! keys (and the newly registered ones, for their first attempt). The pops
//! happen when that entry is applied, the same way on every replica, so an
//! element goes to exactly one client, and clients blocked first are served
//! first (Redis's FIFO rule) because the entry lists them first.
//!
//! LEADER CHANGES. When this node stops leading, every client not being served
//! is answered `NotLeader` and its proxy registers it again with the new
//! leader (its place in the order is then behind the clients already there).
//! A client whose entry's outcome is unknown is answered `Unknown`; its proxy
//! registers it again with `retry`, and the new leader first looks up what the
//! entry popped for it (the state machine keeps each served client's answer for
//! a minute), so the element is delivered once and never lost while the client
//! stays connected.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use redraft_common::ids::NodeId;
use redraft_common::ops::{BlockedClient, BlockedPop, WriteOp};
use redraft_common::resp::Frame;
use redraft_common::wire::NodeResponse;
use tokio::sync::{oneshot, Notify};

use crate::proposals::Proposals;
use crate::raft::typ;

/// Most clients one `ServeBlocked` entry names; the rest wait for the next.
pub const MAX_SERVED_PER_ENTRY: usize = 512;

struct Waiter {
    id: u64,
    pop: BlockedPop,
    /// Not tried yet: its first attempt reports errors (WRONGTYPE).
    first: bool,
    reply: Option<oneshot::Sender<NodeResponse>>,
    /// Named by an entry whose outcome is not known yet.
    in_flight: bool,
    /// Its time passed, or it was unblocked, while in flight: answered `$-1`
    /// unless that entry served it.
    dropped: bool,
}

impl Waiter {
    fn answer(&mut self, response: NodeResponse) {
        if let Some(reply) = self.reply.take() {
            let _ = reply.send(response);
        }
    }
}

#[derive(Default)]
struct State {
    next_seq: u64,
    /// By registration sequence: the blocking order.
    waiters: BTreeMap<u64, Waiter>,
    seq_of: HashMap<u64, u64>,
    /// Keys someone blocks on, with how many do.
    watched: HashMap<Vec<u8>, usize>,
    /// Watched keys changed since the last entry was proposed.
    ready: HashSet<Vec<u8>>,
    /// Whether the serving task runs.
    serving: bool,
}

impl State {
    fn remove(&mut self, seq: u64) -> Option<Waiter> {
        let waiter = self.waiters.remove(&seq)?;
        self.seq_of.remove(&waiter.id);
        for key in waiter.pop.keys.iter() {
            if let Some(n) = self.watched.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    self.watched.remove(key);
                    self.ready.remove(key);
                }
            }
        }
        Some(waiter)
    }
}

/// One group's blocked clients (on its leader).
#[derive(Default)]
pub struct Blocked {
    any: AtomicBool,
    state: Mutex<State>,
    kick: Notify,
}

/// What the serving task does next.
enum Next {
    /// Nobody waits: the task ends.
    Done,
    /// Clients wait, none on a ready key.
    Idle,
    /// Propose an entry for these clients.
    Serve(Vec<BlockedClient>),
}

impl Blocked {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("blocked clients lock")
    }

    /// Whether any client blocks here: one atomic load, checked by every apply.
    pub fn any(&self) -> bool {
        self.any.load(Ordering::Relaxed)
    }

    /// An applied write changed `keys`: those someone blocks on become ready.
    pub fn changed<'k>(&self, keys: impl IntoIterator<Item = &'k [u8]>) {
        let mut state = self.state();
        let mut woken = false;
        for key in keys {
            if state.watched.contains_key(key) {
                state.ready.insert(key.to_vec());
                woken = true;
            }
        }
        drop(state);
        if woken {
            self.kick.notify_one();
        }
    }

    /// Registers client `id` behind those already blocked; its answer comes on
    /// the receiver. Whether the caller must start the serving task (it is not
    /// running). An id registered already (its proxy lost the call and asks
    /// again) keeps its place, and its answer, even one being served, comes
    /// on the new receiver.
    pub fn register(&self, id: u64, pop: BlockedPop) -> (oneshot::Receiver<NodeResponse>, bool) {
        let (tx, rx) = oneshot::channel();
        let mut state = self.state();
        if let Some(&seq) = state.seq_of.get(&id) {
            let waiter = state.waiters.get_mut(&seq).expect("registered waiter");
            waiter.reply = Some(tx);
            waiter.dropped = false;
        } else {
            let seq = state.next_seq;
            state.next_seq += 1;
            for key in pop.keys.iter() {
                *state.watched.entry(key.clone()).or_default() += 1;
            }
            state.seq_of.insert(id, seq);
            state.waiters.insert(
                seq,
                Waiter {
                    id,
                    pop,
                    first: true,
                    reply: Some(tx),
                    in_flight: false,
                    dropped: false,
                },
            );
        }
        self.any.store(true, Ordering::Relaxed);
        let start = !state.serving;
        state.serving = true;
        drop(state);
        self.kick.notify_one();
        (rx, start)
    }

    /// Drops client `id` (its time passed, it disconnected, CLIENT UNBLOCK):
    /// answered `$-1` now, or, when an entry naming it is under way, once that
    /// entry's outcome is known (it may have served it). Whether it was here.
    pub fn unblock(&self, id: u64) -> bool {
        let mut state = self.state();
        let Some(&seq) = state.seq_of.get(&id) else {
            return false;
        };
        let waiter = state.waiters.get_mut(&seq).expect("registered waiter");
        if waiter.in_flight {
            waiter.dropped = true;
        } else if let Some(mut waiter) = state.remove(seq) {
            waiter.answer(NodeResponse::Reply(Frame::Null));
        }
        true
    }

    fn next(&self) -> Next {
        let mut state = self.state();
        if state.waiters.is_empty() {
            state.serving = false;
            self.any.store(false, Ordering::Relaxed);
            return Next::Done;
        }
        let ready = std::mem::take(&mut state.ready);
        let mut clients = Vec::new();
        for waiter in state.waiters.values_mut() {
            if clients.len() == MAX_SERVED_PER_ENTRY {
                // The rest go in the next entry.
                state.ready = ready;
                break;
            }
            if !waiter.in_flight && (waiter.first || waiter.pop.keys.iter().any(|k| ready.contains(k))) {
                waiter.in_flight = true;
                clients.push(BlockedClient {
                    id: waiter.id,
                    pop: waiter.pop.clone(),
                    first: waiter.first,
                });
            }
        }
        if clients.is_empty() {
            Next::Idle
        } else {
            Next::Serve(clients)
        }
    }

    /// The outcome of the entry that named `clients`.
    fn settle(&self, clients: &[BlockedClient], outcome: NodeResponse) {
        let mut state = self.state();
        let replies = match outcome {
            NodeResponse::Reply(Frame::Array(replies)) if replies.len() == clients.len() => replies,
            failed => {
                tracing::debug!(?failed, clients = clients.len(), "serving entry failed");
                // Nothing known per client: each one's proxy asks again.
                for client in clients {
                    if let Some(seq) = state.seq_of.get(&client.id).copied() {
                        if let Some(mut waiter) = state.remove(seq) {
                            waiter.answer(failed.clone());
                        }
                    }
                }
                return;
            }
        };
        for (client, reply) in clients.iter().zip(replies) {
            let Some(seq) = state.seq_of.get(&client.id).copied() else {
                tracing::warn!(waiter = client.id, reply = ?String::from_utf8_lossy(&reply.to_bytes()), "served a blocked client no longer registered");
                continue;
            };
            tracing::debug!(waiter = client.id, reply = ?String::from_utf8_lossy(&reply.to_bytes()), "blocked client's entry applied");
            let waiter = state.waiters.get_mut(&seq).expect("registered waiter");
            waiter.in_flight = false;
            waiter.first = false;
            if reply != Frame::Null {
                state
                    .remove(seq)
                    .expect("registered waiter")
                    .answer(NodeResponse::Reply(reply));
            } else if waiter.dropped {
                state
                    .remove(seq)
                    .expect("registered waiter")
                    .answer(NodeResponse::Reply(Frame::Null));
            }
        }
    }

    /// Answers every client not being served with `response` (this node no
    /// longer leads, or the shard is gone here).
    fn fail_idle(&self, response: &NodeResponse) {
        let mut state = self.state();
        let idle: Vec<u64> = state
            .waiters
            .iter()
            .filter(|(_, w)| !w.in_flight)
            .map(|(&seq, _)| seq)
            .collect();
        for seq in idle {
            if let Some(mut waiter) = state.remove(seq) {
                waiter.answer(response.clone());
            }
        }
    }
}

/// Serves the group's blocked clients while any wait: one entry at a time,
/// each naming the clients blocked on keys that became ready, in blocking
/// order. Ends when nobody waits; answers everyone `NotLeader` when this node
/// stops leading.
pub async fn serve(blocked: std::sync::Arc<Blocked>, raft: typ::Raft, proposals: Proposals, me: NodeId) {
    let mut metrics = raft.metrics();
    loop {
        let (leading, leader) = {
            let m = metrics.borrow();
            (m.state.is_leader() && m.current_leader == Some(me), m.current_leader)
        };
        if !leading {
            blocked.fail_idle(&NodeResponse::NotLeader {
                leader: leader.filter(|&l| l != me),
            });
        }
        match blocked.next() {
            Next::Done => return,
            Next::Idle => {
                tokio::select! {
                    _ = blocked.kick.notified() => {}
                    changed = metrics.changed() => if changed.is_err() {
                        // Raft stopped (the replica was removed or the node
                        // stops): every client asks again elsewhere.
                        blocked.state().waiters.values_mut().for_each(|w| w.in_flight = false);
                        blocked.fail_idle(&NodeResponse::NoShard);
                    },
                }
            }
            Next::Serve(clients) => {
                let outcome = proposals
                    .submit(&raft, vec![WriteOp::ServeBlocked(clients.clone())])
                    .await
                    .pop()
                    .unwrap_or_else(|| Err(NodeResponse::Unknown("no outcome".into())));
                let answer = crate::host::Host::answer(outcome);
                blocked.settle(&clients, answer);
            }
        }
    }
}

/// The keys an applied write changed that may wake blocked clients. A
/// `ServeBlocked` entry wakes only its moves' destinations: the keys it popped
/// from are empty for whoever it did not serve.
pub fn woken_keys(op: &WriteOp) -> Vec<&[u8]> {
    match op {
        WriteOp::ServeBlocked(clients) => clients
            .iter()
            .filter_map(|c| match &c.pop.kind {
                redraft_common::ops::PopKind::Move { dest, .. } => Some(&dest[..]),
                _ => None,
            })
            .collect(),
        WriteOp::Many(ops) => ops.iter().flat_map(woken_keys).collect(),
        op => op.keys(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redraft_common::ops::PopKind;

    fn blpop(keys: &[&str]) -> BlockedPop {
        BlockedPop {
            keys: keys.iter().map(|k| k.as_bytes().to_vec()).collect(),
            kind: PopKind::List { left: true },
        }
    }

    fn served(clients: &Next) -> Vec<(u64, bool)> {
        match clients {
            Next::Serve(c) => c.iter().map(|c| (c.id, c.first)).collect(),
            Next::Idle => vec![],
            Next::Done => panic!("done"),
        }
    }

    #[tokio::test]
    async fn clients_are_named_in_blocking_order_and_only_when_their_key_is_ready() {
        let blocked = Blocked::default();
        let (_a, start) = blocked.register(1, blpop(&["q"]));
        assert!(start);
        let (mut b, start) = blocked.register(2, blpop(&["other", "q"]));
        assert!(!start, "one serving task");
        let first = blocked.next();
        assert_eq!(served(&first), vec![(1, true), (2, true)]);
        let Next::Serve(clients) = first else { unreachable!() };
        // Nothing popped for either: both stay blocked, no longer first.
        blocked.settle(
            &clients,
            NodeResponse::Reply(Frame::Array(vec![Frame::Null, Frame::Null])),
        );
        assert!(matches!(blocked.next(), Next::Idle));
        blocked.changed([&b"unrelated"[..]]);
        assert!(matches!(blocked.next(), Next::Idle));
        blocked.changed([&b"q"[..]]);
        let second = blocked.next();
        assert_eq!(served(&second), vec![(1, false), (2, false)]);
        let Next::Serve(clients) = second else { unreachable!() };
        // One element: the first blocked gets it.
        let got = Frame::Array(vec![Frame::bulk("q"), Frame::bulk("x")]);
        blocked.settle(
            &clients,
            NodeResponse::Reply(Frame::Array(vec![got.clone(), Frame::Null])),
        );
        assert!(b.try_recv().is_err(), "the second still waits");
        // Unblocked: answered null at once, and the task's work is done.
        assert!(blocked.unblock(2));
        assert!(matches!(b.try_recv().unwrap(), NodeResponse::Reply(Frame::Null)));
        assert!(!blocked.unblock(2));
        assert!(matches!(blocked.next(), Next::Done));
        assert!(!blocked.any());
    }

    #[tokio::test]
    async fn a_client_registered_again_keeps_its_place_and_gets_the_answer() {
        let blocked = Blocked::default();
        let (_old, _) = blocked.register(1, blpop(&["q"]));
        let (_b, _) = blocked.register(2, blpop(&["q"]));
        let Next::Serve(clients) = blocked.next() else {
            panic!("first attempt")
        };
        // Its proxy lost the call while the entry was under way and asks again.
        let (mut again, start) = blocked.register(1, blpop(&["q"]));
        assert!(!start);
        let got = Frame::Array(vec![Frame::bulk("q"), Frame::bulk("x")]);
        blocked.settle(
            &clients,
            NodeResponse::Reply(Frame::Array(vec![got.clone(), Frame::Null])),
        );
        assert!(matches!(again.try_recv().unwrap(), NodeResponse::Reply(f) if f == got));
        assert!(!blocked.unblock(1), "served and gone");
        assert!(blocked.unblock(2));
        assert!(matches!(blocked.next(), Next::Done));
    }

    #[tokio::test]
    async fn a_client_dropped_while_in_flight_gets_what_the_entry_popped() {
        let blocked = Blocked::default();
        let (mut a, _) = blocked.register(7, blpop(&["q"]));
        let Next::Serve(clients) = blocked.next() else {
            panic!("first attempt")
        };
        assert!(blocked.unblock(7), "registered");
        assert!(a.try_recv().is_err(), "in flight: waits for the outcome");
        let got = Frame::Array(vec![Frame::bulk("q"), Frame::bulk("x")]);
        blocked.settle(&clients, NodeResponse::Reply(Frame::Array(vec![got.clone()])));
        assert!(matches!(a.try_recv().unwrap(), NodeResponse::Reply(f) if f == got));
        // An unknown outcome reaches the client, whose proxy asks again.
        let (mut b, _) = blocked.register(8, blpop(&["q"]));
        let Next::Serve(clients) = blocked.next() else {
            panic!("first attempt")
        };
        blocked.settle(&clients, NodeResponse::Unknown("timeout".into()));
        assert!(matches!(b.try_recv().unwrap(), NodeResponse::Unknown(r) if r == "timeout"));
    }
}

//! Pops for blocked clients (BLPOP, BRPOP, BLMOVE, BRPOPLPUSH, BLMPOP, BZPOPMIN,
//! BZPOPMAX, BZMPOP): the deterministic half of blocking commands.
//!
//! The waiting itself happens on the shard's leader (`crate::blocking`); what a
//! client gets is decided here, in the log, by the same list and sorted-set
//! commands every replica applies, so a pop happens exactly once whichever
//! replica leads next. What each served client got is remembered (see
//! `ShardStateMachine`) so that a proxy that lost the answer in a leader change
//! can ask the next leader for it instead of popping again.

use redraft_common::ops::{BlockedClient, BlockedPop, PopKind};
use redraft_common::resp::Frame;

use super::Keyspace;

fn side(first: bool, yes: &str, no: &str) -> Vec<u8> {
    if first { yes } else { no }.as_bytes().to_vec()
}

/// The list or sorted-set command that pops for `kind`, as its name and the
/// arguments after the key.
fn pop_command(kind: &PopKind) -> (Vec<u8>, Vec<Vec<u8>>) {
    match kind {
        PopKind::List { left } => (side(*left, "LPOP", "RPOP"), vec![]),
        PopKind::ListMany { left, count } => (side(*left, "LPOP", "RPOP"), vec![count.to_string().into_bytes()]),
        PopKind::Move {
            dest,
            from_left,
            to_left,
        } => (
            b"LMOVE".to_vec(),
            vec![
                dest.clone(),
                side(*from_left, "LEFT", "RIGHT"),
                side(*to_left, "LEFT", "RIGHT"),
            ],
        ),
        PopKind::ZSet { min } => (side(*min, "ZPOPMIN", "ZPOPMAX"), vec![]),
        PopKind::ZSetMany { min, count } => (side(*min, "ZPOPMIN", "ZPOPMAX"), vec![count.to_string().into_bytes()]),
    }
}

impl Keyspace<'_> {
    /// `pop` tried on each of its keys in order: the reply of the first that
    /// had something, or `None`. An error (a key of another type) is the reply
    /// when `errors`, else that key is passed over. The caller has checked
    /// that the shard owns every key.
    pub(super) fn pop_first(&mut self, pop: &BlockedPop, errors: bool) -> Option<Frame> {
        let (name, rest) = pop_command(&pop.kind);
        for key in &pop.keys {
            let mut args = Vec::with_capacity(2 + rest.len());
            args.push(name.clone());
            args.push(key.clone());
            args.extend(rest.iter().cloned());
            let reply = self.command(&args, 0, true);
            let popped = match reply {
                Frame::Error(_) if errors => return Some(reply),
                Frame::Error(_) | Frame::Null | Frame::NullArray => continue,
                Frame::Array(ref items) | Frame::Set(ref items) if items.is_empty() => continue,
                Frame::Pairs(ref pairs) if pairs.is_empty() => continue,
                popped => popped,
            };
            let key_frame = Frame::Bulk(key.clone());
            return Some(match (&pop.kind, popped) {
                (PopKind::Move { .. }, element) => element,
                (PopKind::List { .. }, element) => Frame::Array(vec![key_frame, element]),
                (PopKind::ListMany { .. }, elements) => Frame::Array(vec![key_frame, elements]),
                (PopKind::ZSet { .. }, Frame::Array(mut pair)) => {
                    pair.insert(0, key_frame);
                    Frame::Array(pair)
                }
                (PopKind::ZSetMany { .. }, Frame::Pairs(pairs)) => Frame::Array(vec![
                    key_frame,
                    Frame::Array(pairs.into_iter().map(|(m, s)| Frame::Array(vec![m, s])).collect()),
                ]),
                (_, other) => Frame::error(format!("ERR unexpected pop reply {other:?}")),
            });
        }
        None
    }

    /// Serves `clients` in order, each from the first of its keys that has
    /// something: their replies, `$-1` for a client not served. Remembers what
    /// each served client got (see [`Keyspace::take_served`]).
    pub(super) fn serve_blocked(&mut self, clients: &[BlockedClient]) -> Frame {
        let mut replies = Vec::with_capacity(clients.len());
        for client in clients {
            match self.pop_first(&client.pop, client.first) {
                Some(reply) => {
                    self.served.push((self.now_ms, client.id, reply.clone()));
                    replies.push(reply);
                }
                None => replies.push(Frame::Null),
            }
        }
        Frame::Array(replies)
    }

    /// What the clients served so far got: `(entry time, registration id,
    /// reply)`, for the caller to store beside the batch.
    pub fn take_served(&mut self) -> Vec<(u64, u64, Frame)> {
        std::mem::take(&mut self.served)
    }
}

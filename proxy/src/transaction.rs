//! MULTI/EXEC/DISCARD/WATCH/UNWATCH.
//!
//! A transaction's commands are queued by the connection and, at EXEC, sent to
//! their shard as one [`WriteOp::Transaction`]: one Raft entry, applied in order
//! as one step, so no other command interleaves and every replica applies all or
//! nothing. All keys (the watched ones included) must be in one shard; hash tags
//! put related keys there. Otherwise EXEC answers CROSSSLOT and runs nothing.
//!
//! WATCH reads each key's revision (the log index of its last change) from its
//! shard; EXEC carries them, and the shard runs nothing (null reply) if any has
//! changed, including by expiry. Commands answered by the proxy (PING, ECHO,
//! errors found while parsing) keep their place in EXEC's reply.
//!
//! As in Redis, an unknown command or a wrong number of arguments while queuing
//! aborts the transaction at EXEC (EXECABORT); other errors are replies inside
//! EXEC's array. Commands that span every shard (FLUSHALL, DBSIZE, KEYS, SCAN,
//! INFO, RANDOMKEY) cannot be queued.

use redraft_common::ops::{Bytes, ReadOp, ShardOp, WriteOp};
use redraft_common::resp::Frame;

use crate::cmd::{self, Command, TransactionControl};
use crate::reply::{self, Error};
use crate::route::Router;
use crate::session::{self, Session};

/// A connection's transaction state.
#[derive(Default)]
pub struct TransactionState {
    /// Commands queued since MULTI (`None`: not in MULTI).
    queued: Option<Vec<(&'static str, Command)>>,
    /// A command was refused while queuing: EXEC aborts.
    dirty: bool,
    /// WATCHed keys and their revisions when watched.
    watched: Vec<(Bytes, u64)>,
}

impl TransactionState {
    /// Whether MULTI is open.
    pub fn in_multi(&self) -> bool {
        self.queued.is_some()
    }

    /// Queues a command inside MULTI; the reply is `+QUEUED` or the error that
    /// will abort EXEC.
    pub fn queue(&mut self, name: &'static str, command: Command) -> Frame {
        let spans_shards = matches!(
            command,
            Command::Info(_)
                | Command::SumAll(_)
                | Command::AllOk(_)
                | Command::Scan { .. }
                | Command::Keys(_)
                | Command::RandomKey
        );
        match command {
            Command::Rejected(error) => {
                self.dirty = true;
                error
            }
            _ if spans_shards => {
                self.dirty = true;
                Frame::error(format!(
                    "ERR '{name}' spans every shard and cannot be part of a transaction"
                ))
            }
            command => {
                self.queued.get_or_insert_with(Vec::new).push((name, command));
                Frame::Simple("QUEUED".into())
            }
        }
    }
}

/// Runs MULTI, EXEC, DISCARD, WATCH or UNWATCH.
pub async fn control(router: &Router, session: &mut Session, control: TransactionControl) -> Frame {
    let state = &mut session.transaction;
    match control {
        TransactionControl::Multi if state.in_multi() => Frame::error("ERR MULTI calls can not be nested"),
        TransactionControl::Multi => {
            state.queued = Some(Vec::new());
            state.dirty = false;
            Frame::ok()
        }
        TransactionControl::Discard if !state.in_multi() => Frame::error("ERR DISCARD without MULTI"),
        TransactionControl::Discard => {
            *state = TransactionState::default();
            Frame::ok()
        }
        TransactionControl::Unwatch => {
            state.watched.clear();
            Frame::ok()
        }
        TransactionControl::Watch(_) if state.in_multi() => Frame::error("ERR WATCH inside MULTI is not allowed"),
        TransactionControl::Watch(keys) => match watch(router, &keys).await {
            Ok(revisions) => {
                state.watched.extend(keys.into_iter().zip(revisions));
                Frame::ok()
            }
            Err(e) => reply::to_frame(&e),
        },
        TransactionControl::Exec if !state.in_multi() => Frame::error("ERR EXEC without MULTI"),
        TransactionControl::Exec => {
            let state = std::mem::take(state);
            if state.dirty {
                return Frame::error("EXECABORT Transaction discarded because of previous errors.");
            }
            exec(router, session, state.queued.unwrap_or_default(), state.watched).await
        }
    }
}

/// The revisions of `keys`, in order.
async fn watch(router: &Router, keys: &[Bytes]) -> Result<Vec<u64>, Error> {
    let build = |keys| ShardOp::Read(ReadOp::Revisions { keys });
    let mut revisions = vec![0; keys.len()];
    for (positions, frame) in cmd::fan_out(router, keys.to_vec(), |k| k, build).await? {
        match frame {
            Frame::Array(found) => {
                for (p, f) in positions.into_iter().zip(found) {
                    revisions[p] = match f {
                        Frame::Integer(n) => n as u64,
                        _ => 0,
                    };
                }
            }
            error => return Err(Error::ClusterDown(format!("WATCH failed: {error:?}"))),
        }
    }
    Ok(revisions)
}

/// Where each EXEC reply comes from.
enum Slot {
    /// Answered already (PING, parse errors, LEADER).
    Ready(Frame),
    /// A connection command, run at EXEC.
    Session(Vec<Bytes>, &'static str),
    /// The n-th operation of the shard transaction.
    Shard(usize),
}

async fn exec(
    router: &Router,
    session: &mut Session,
    queued: Vec<(&'static str, Command)>,
    watched: Vec<(Bytes, u64)>,
) -> Frame {
    let mut slots = Vec::with_capacity(queued.len());
    let mut ops = Vec::new();
    let mut keys: Vec<Bytes> = watched.iter().map(|(k, _)| k.clone()).collect();
    for (name, command) in queued {
        let op = match command.into_shard_op() {
            Ok((k, op)) => {
                keys.extend(k);
                op
            }
            Err(command) => match command {
                Command::Session(args) => {
                    slots.push(Slot::Session(args, name));
                    continue;
                }
                Command::Leader(key) => {
                    slots.push(Slot::Ready(
                        router.describe_key(&key).unwrap_or_else(|e| reply::to_frame(&e)),
                    ));
                    continue;
                }
                Command::Local(frame) | Command::Rejected(frame) => {
                    slots.push(Slot::Ready(frame));
                    continue;
                }
                Command::Quit => {
                    slots.push(Slot::Ready(Frame::ok()));
                    continue;
                }
                other => {
                    slots.push(Slot::Ready(Frame::error(format!(
                        "ERR cannot run {other:?} in a transaction"
                    ))));
                    continue;
                }
            },
        };
        slots.push(Slot::Shard(ops.len()));
        ops.push(op);
    }
    let mut replies = Vec::new();
    if !ops.is_empty() || !keys.is_empty() {
        if keys.is_empty() {
            // Only scripts without keys: where a lone one would run.
            keys.push(Vec::new());
        }
        let op = ShardOp::Write(WriteOp::Transaction { watched, ops });
        match cmd::in_one_shard(router, &keys, op).await {
            Ok(Frame::Array(r)) => replies = r,
            Ok(Frame::NullArray) => return Frame::NullArray,
            Ok(other) => return other,
            Err(e) => return reply::to_frame(&e),
        }
    }
    let mut out = Vec::with_capacity(slots.len());
    for slot in slots {
        out.push(match slot {
            Slot::Ready(frame) => frame,
            Slot::Session(args, name) => session::run(router, session, name, &args).await.0,
            Slot::Shard(i) => replies.get(i).cloned().unwrap_or(Frame::Null),
        });
    }
    Frame::Array(out)
}

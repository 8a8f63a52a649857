//! One client connection: read requests, run them, write replies in order.
//!
//! PIPELINING. All complete requests in the read buffer form a batch. Within a
//! batch, single-key commands are queued per shard: each shard's queue runs in
//! order, different shards' queues run concurrently. Consecutive writes in a
//! shard's queue go to the shard as one request, which the shard applies in one
//! Raft entry, in order (a pipeline of 16 SETs costs one round per shard, not
//! 16); consecutive reads likewise go as one request that passes one read
//! barrier and is answered in order. Commands that touch several
//! shards (MGET, DEL of many keys, DBSIZE, ...) are barriers: everything before
//! them finishes first. Replies are written in request order, in one write.
//!
//! Why this is still Redis's contract: commands on one key (one shard) keep their
//! order, so `SET k 1` then `GET k` in a pipeline reads 1. Commands of a pipeline
//! on different shards are concurrent operations (none was acknowledged before
//! the others were sent), so running them in parallel stays linearizable.
//!
//! BAD INPUT. A protocol error is answered with Redis's text and the connection
//! closed, as Redis does. Nothing a client sends can panic the proxy: parsing is
//! bounded and every failure is a reply.

use std::collections::BTreeMap;
use std::sync::Arc;

use redraft_common::ids::ShardId;
use redraft_common::ops::{ReadOp, ShardOp, WriteOp};
use redraft_common::resp::{self, Frame};
use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::cmd::{self, Command};
use crate::session::{self, After, Session};
use crate::{reply, Shared};

/// Most requests taken from the buffer as one batch: bounds the memory of
/// replies held back for ordering.
const MAX_BATCH: usize = 1024;

/// Serves one client (plain TCP or TLS) until it disconnects or sends QUIT.
pub async fn serve<S>(shared: Arc<Shared>, mut socket: S, peer: SocketAddr, local: SocketAddr) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let authenticated = crate::acl::starts_authenticated(&shared.router.table().users);
    let mut session = Session::open(&shared.clients, &shared.pubsub, peer, local, authenticated);
    // Whether the session has seen a bootstrapped table (and its users).
    let mut settled = shared.router.table().is_bootstrapped();
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut out = Vec::with_capacity(16 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::select! {
            read = socket.read(&mut chunk) => read?,
            _ = session.client.killed.notified() => return Ok(()),
            Some(message) = next_message(&mut session.pubsub.inbox) => {
                // CLIENT REPLY OFF silences messages too, as in Redis.
                let silenced = session.replies == crate::session::ReplyMode::Off;
                push(&mut out, &message, session.resp3);
                // Whatever else has arrived goes in the same write.
                while let Some(more) = session.pubsub.inbox.as_mut().and_then(|i| i.try_recv().ok()) {
                    push(&mut out, &more, session.resp3);
                }
                if !silenced {
                    socket.write_all(&out).await?;
                }
                out.clear();
                continue;
            }
        };
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        loop {
            let mut consumed = 0;
            let mut batch = Vec::new();
            let mut protocol_error = None;
            while batch.len() < MAX_BATCH {
                match resp::parse_request(&buf[consumed..]) {
                    Ok(None) => break,
                    Ok(Some((args, used))) => {
                        consumed += used;
                        if !args.is_empty() {
                            // The arguments stay with the command for the ACL check.
                            let command = match cmd::parse(&args) {
                                eval @ Command::Eval { .. } => crate::scripts::resolve(&shared.router, eval).await,
                                command => command,
                            };
                            batch.push((cmd::command_name(&args[0]), args, command));
                        }
                    }
                    Err(e) => {
                        protocol_error = Some(e);
                        break;
                    }
                }
            }
            buf.drain(..consumed);
            if !settled {
                settled = settle(&shared, &mut session, &batch).await;
            }
            let more = batch.len() == MAX_BATCH;
            let blocking = batch.iter().any(|(_, _, c)| matches!(c, Command::Blocking { .. }));
            let run = run_batch(&shared, &mut session, batch);
            let (replies, quit) = if blocking {
                // A blocked client that disconnects is unblocked (its
                // registration dropped), as in Redis; what it sends meanwhile
                // waits in the buffer.
                tokio::pin!(run);
                loop {
                    tokio::select! {
                        done = &mut run => break done,
                        read = socket.read(&mut chunk) => match read {
                            Ok(0) | Err(_) => return Ok(()),
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        },
                    }
                }
            } else {
                run.await
            };
            // Requests that arrived while a client was blocked are run next.
            let more = more || (blocking && !buf.is_empty());
            for (reply, resp3) in &replies {
                push(&mut out, reply, *resp3);
            }
            if let Some(e) = &protocol_error {
                e.to_frame().encode(&mut out);
            }
            if !out.is_empty() {
                socket.write_all(&out).await?;
                out.clear();
            }
            if quit || protocol_error.is_some() {
                return Ok(());
            }
            if !more {
                break;
            }
        }
    }
}

/// A connection that came before the proxy's first routing table: a batch that
/// needs the cluster waits for the table (up to the retry deadline) instead of
/// failing, like a command during a leader change; PING alone does not wait
/// (it answers `-LOADING`). Once the table is there, the session starts
/// authenticated or not by its users, as if it had connected then. Whether the
/// table is there now.
async fn settle(shared: &Shared, session: &mut Session, batch: &[(&'static str, Vec<Vec<u8>>, Command)]) -> bool {
    let needs_cluster = batch.iter().any(|(name, _, _)| !matches!(*name, "ping" | "quit"));
    if needs_cluster && !shared.router.table().is_bootstrapped() {
        shared.router.wait_bootstrapped(crate::route::RETRY_DEADLINE).await;
    }
    let table = shared.router.table();
    if !table.is_bootstrapped() {
        return false;
    }
    if !session.authenticated {
        session.authenticated = crate::acl::starts_authenticated(&table.users);
    }
    true
}

/// Runs a batch as described in the module docs; returns the replies in order,
/// each with whether it is encoded as RESP3, and whether the connection ends
/// (QUIT, or CLIENT KILL of itself; later commands are not run). Replies that
/// CLIENT REPLY OFF or SKIP silence are left out.
async fn run_batch(
    shared: &Shared,
    session: &mut Session,
    batch: Vec<(&'static str, Vec<Vec<u8>>, Command)>,
) -> (Vec<(Frame, bool)>, bool) {
    let mut replies: Vec<Option<Frame>> = Vec::with_capacity(batch.len());
    let mut resp3 = Vec::with_capacity(batch.len());
    let mut silenced = Vec::with_capacity(batch.len());
    let mut lanes: BTreeMap<ShardId, Vec<(usize, &'static str, Command)>> = BTreeMap::new();
    let mut quit = false;
    // One look at the users per batch (ACL changes reach the table between
    // batches; this connection's own ACL commands refresh it below).
    let mut table = shared.router.table();
    for (name, args, command) in batch {
        let i = replies.len();
        replies.push(None);
        resp3.push(session.resp3);
        // Silenced: a command after CLIENT REPLY SKIP, or one that runs and
        // leaves the connection in OFF (CLIENT REPLY ON itself answers).
        use crate::session::ReplyMode;
        let skipped = session.replies == ReplyMode::SkipNext;
        if skipped {
            session.replies = ReplyMode::On;
        }
        let was_off = session.replies == ReplyMode::Off;
        silenced.push(skipped || was_off);
        session.touch(name);
        // A command the connection may not run is refused (and, inside MULTI,
        // aborts the transaction, as in Redis).
        let command = match crate::acl::check(&table.users, session, name, &args) {
            Some(denied) => Command::Rejected(denied),
            None => command,
        };
        drop(args);
        let answered = |frame: Frame| Some(observed(name, std::time::Instant::now(), frame));
        if name == "ping" && !shared.router.routable() {
            // As Redis while it loads its dataset: honest to health checks.
            replies[i] = answered(Frame::error(
                "LOADING the proxy is waiting for the cluster's routing table and shard leaders",
            ));
            continue;
        }
        match command {
            Command::Transaction(control) => {
                drain(shared, &mut lanes, &mut replies).await;
                let started = std::time::Instant::now();
                let frame = crate::transaction::control(&shared.router, session, control).await;
                replies[i] = Some(observed(name, started, frame));
            }
            Command::Quit => {
                drain(shared, &mut lanes, &mut replies).await;
                replies[i] = answered(Frame::ok());
                quit = true;
                break;
            }
            _ if !session.resp3 && session.pubsub.active() && !crate::pubsub::allowed_while_subscribed(name) => {
                replies[i] = answered(Frame::error(format!(
                    "ERR Can't execute '{name}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context"
                )));
            }
            Command::Local(Frame::Simple(pong)) if pong == "PONG" && !session.resp3 && session.pubsub.active() => {
                replies[i] = answered(Frame::Array(vec![Frame::bulk("pong"), Frame::bulk("")]));
            }
            Command::Local(Frame::Bulk(text)) if name == "ping" && !session.resp3 && session.pubsub.active() => {
                replies[i] = answered(Frame::Array(vec![Frame::bulk("pong"), Frame::Bulk(text)]));
            }
            Command::PubSub(args) if !session.transaction.in_multi() => {
                drain(shared, &mut lanes, &mut replies).await;
                let started = std::time::Instant::now();
                let frame = crate::pubsub::execute(&shared.pubsub, session, name, &args).await;
                replies[i] = Some(observed(name, started, frame));
            }
            command if session.transaction.in_multi() => {
                replies[i] = answered(session.transaction.queue(name, command.in_transaction()));
            }
            Command::Blocking { pop, timeout_ms } => {
                drain(shared, &mut lanes, &mut replies).await;
                let started = std::time::Instant::now();
                let frame = crate::blocking::wait(&shared.router, &session.client, pop, timeout_ms).await;
                replies[i] = Some(observed(name, started, frame));
            }
            Command::Local(frame) | Command::Rejected(frame) => replies[i] = answered(frame),
            Command::Session(args) => {
                drain(shared, &mut lanes, &mut replies).await;
                let (frame, after) = session::run(&shared.router, session, name, &args).await;
                replies[i] = answered(frame);
                silenced[i] = skipped || (was_off && session.replies == ReplyMode::Off);
                // HELLO answers in the protocol it selects.
                resp3[i] = session.resp3;
                table = shared.router.table();
                if after == After::Close {
                    quit = true;
                    break;
                }
            }

            Command::Keyed { ref key, .. } => match shared.router.shard_of(key) {
                Ok(shard) => lanes.entry(shard).or_default().push((i, name, command)),
                Err(e) => replies[i] = answered(reply::to_frame(&e)),
            },
            other => {
                drain(shared, &mut lanes, &mut replies).await;
                let started = std::time::Instant::now();
                replies[i] = Some(observed(name, started, cmd::execute(&shared.router, other).await));
            }
        }
    }
    drain(shared, &mut lanes, &mut replies).await;
    (
        replies
            .into_iter()
            .zip(resp3)
            .zip(silenced)
            .filter(|(_, silenced)| !silenced)
            .map(|((r, resp3), _)| (r.expect("every command answered"), resp3))
            .collect(),
        quit,
    )
}

/// Appends a frame in the connection's protocol.
fn push(out: &mut Vec<u8>, frame: &Frame, resp3: bool) {
    if resp3 {
        frame.encode_resp3(out);
    } else {
        frame.encode(out);
    }
}

/// The next Pub/Sub message, or never when the connection has no inbox.
async fn next_message(inbox: &mut Option<tokio::sync::mpsc::UnboundedReceiver<Frame>>) -> Option<Frame> {
    match inbox {
        Some(inbox) => inbox.recv().await,
        None => std::future::pending().await,
    }
}

/// Runs every queued lane (each in order, all concurrently) and stores the replies.
/// Records a command's metrics and passes its reply through.
fn observed(name: &'static str, started: std::time::Instant, reply: Frame) -> Frame {
    let result = if matches!(reply, Frame::Error(_)) {
        "error"
    } else {
        "ok"
    };
    crate::metrics::COMMANDS.with_label_values(&[name, result]).inc();
    crate::metrics::COMMAND_SECONDS
        .with_label_values(&[name])
        .observe(started.elapsed().as_secs_f64());
    reply
}

async fn drain(
    shared: &Shared,
    lanes: &mut BTreeMap<ShardId, Vec<(usize, &'static str, Command)>>,
    replies: &mut [Option<Frame>],
) {
    if lanes.is_empty() {
        return;
    }
    let runs = std::mem::take(lanes).into_iter().map(|(shard, lane)| async move {
        let mut out = Vec::with_capacity(lane.len());
        let mut lane = lane.into_iter().peekable();
        while let Some((i, name, command)) = lane.next() {
            let started = std::time::Instant::now();
            let kind = batchable(&command);
            match command {
                // Consecutive plain writes leave together (one request, one Raft
                // entry, applied in order), and so do consecutive plain reads
                // (one request, one read barrier).
                Command::Keyed { key, op }
                    if kind.is_some() && lane.peek().is_some_and(|(_, _, next)| batchable(next) == kind) =>
                {
                    let mut names = vec![(i, name)];
                    let mut run = vec![(key, op)];
                    while let Some((j, next_name, Command::Keyed { key, op })) =
                        lane.next_if(|(_, _, next)| batchable(next) == kind)
                    {
                        names.push((j, next_name));
                        run.push((key, op));
                    }
                    let frames = cmd::execute_run(&shared.router, shard, run).await;
                    for ((j, name), frame) in names.into_iter().zip(frames) {
                        out.push((j, observed(name, started, frame)));
                    }
                }
                command => out.push((i, observed(name, started, cmd::execute(&shared.router, command).await))),
            }
        }
        out
    });
    for (i, frame) in futures::future::join_all(runs).await.into_iter().flatten() {
        replies[i] = Some(frame);
    }
}

/// Whether a command can share a request with neighbours of the same kind:
/// `Some(true)` for a plain keyed write, `Some(false)` for a plain keyed read.
fn batchable(command: &Command) -> Option<bool> {
    match command {
        Command::Keyed {
            op: ShardOp::Write(op), ..
        } if !op.runs_alone() && !matches!(op, WriteOp::Many(_)) => Some(true),
        Command::Keyed {
            op: ShardOp::Read(op), ..
        } if !matches!(op, ReadOp::Many(_)) => Some(false),
        _ => None,
    }
}

//! Blocking commands: BLPOP, BRPOP, BLMOVE, BRPOPLPUSH, BLMPOP, BZPOPMIN,
//! BZPOPMAX, BZMPOP. Their arguments parsed with Redis's checks and errors, and
//! the wait of one blocked client.
//!
//! A blocked client is registered with the leader of the shard that owns its
//! keys (shard-node `blocking`), which answers when a pop was made for it or
//! when the registration's time passes. The proxy keeps the client's own
//! deadline and registers it again, under the same id, when the leader changes
//! or a registration's slice ends; `retry` asks the new leader for what an
//! attempt whose outcome was lost popped, so an element is delivered once. A
//! client that disconnects, or is unblocked with CLIENT UNBLOCK, has its
//! registration dropped at once.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redraft_common::ids::ShardId;
use redraft_common::ops::{parse_strict_i64, BlockedPop, PopKind};
use redraft_common::resp::Frame;

use crate::cmd::{Command, SYNTAX};
use crate::reply;
use crate::route::{BlockAttempt, Router};
use crate::session::Client;

/// The longest one registration lasts: a client that waits longer is
/// registered again, so the registration of a proxy that died ends by itself.
const SLICE: Duration = Duration::from_secs(30);

fn err(text: &str) -> Command {
    Command::Local(Frame::error(text))
}

/// Redis's timeout argument, in seconds with decimals: milliseconds, 0 for none.
fn timeout_ms(arg: &[u8]) -> Result<u64, Command> {
    let seconds = std::str::from_utf8(arg)
        .ok()
        .filter(|s| !s.is_empty() && !s.starts_with(char::is_whitespace) && !s.ends_with(char::is_whitespace))
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|f| !f.is_nan())
        .ok_or_else(|| err("ERR timeout is not a float or out of range"))?;
    let ms = (seconds * 1000.0).ceil();
    if ms > i64::MAX as f64 / 2.0 {
        return Err(err("ERR timeout is out of range"));
    }
    if ms < 0.0 {
        return Err(err("ERR timeout is negative"));
    }
    Ok(ms as u64)
}

fn side(arg: &[u8], first: &[u8], second: &[u8]) -> Result<bool, Command> {
    if arg.eq_ignore_ascii_case(first) {
        Ok(true)
    } else if arg.eq_ignore_ascii_case(second) {
        Ok(false)
    } else {
        Err(err(SYNTAX))
    }
}

fn positive(arg: &[u8], message: &str) -> Result<u64, Command> {
    parse_strict_i64(arg)
        .filter(|&n| n > 0)
        .map(|n| n as u64)
        .ok_or_else(|| err(message))
}

/// BLMPOP and BZMPOP: `timeout numkeys key... LEFT|RIGHT|MIN|MAX [COUNT n]`.
fn parse_mpop(a: &[Vec<u8>], list: bool) -> Result<Command, Command> {
    let timeout_ms = timeout_ms(&a[1])?;
    let numkeys = positive(&a[2], "ERR numkeys should be greater than 0")?;
    let where_at = usize::try_from(numkeys)
        .ok()
        .and_then(|n| n.checked_add(3))
        .unwrap_or(usize::MAX);
    if where_at >= a.len() {
        return Err(err(SYNTAX));
    }
    let first = if list {
        side(&a[where_at], b"LEFT", b"RIGHT")?
    } else {
        side(&a[where_at], b"MIN", b"MAX")?
    };
    let mut count = None;
    let mut i = where_at + 1;
    while i < a.len() {
        if a[i].eq_ignore_ascii_case(b"COUNT") && i + 1 < a.len() && count.is_none() {
            count = Some(positive(&a[i + 1], "ERR count should be greater than 0")?);
            i += 2;
        } else {
            return Err(err(SYNTAX));
        }
    }
    let count = count.unwrap_or(1);
    let kind = if list {
        PopKind::ListMany { left: first, count }
    } else {
        PopKind::ZSetMany { min: first, count }
    };
    Ok(Command::Blocking {
        pop: BlockedPop {
            keys: a[3..where_at].to_vec(),
            kind,
        },
        timeout_ms,
    })
}

/// Parses a blocking command (`name` lowercase, arity checked).
pub fn parse(name: &str, a: &[Vec<u8>]) -> Result<Command, Command> {
    let last = a.len() - 1;
    let (keys, kind, timeout_ms) = match name {
        "blpop" | "brpop" => (
            a[1..last].to_vec(),
            PopKind::List { left: name == "blpop" },
            timeout_ms(&a[last])?,
        ),
        "bzpopmin" | "bzpopmax" => (
            a[1..last].to_vec(),
            PopKind::ZSet {
                min: name == "bzpopmin",
            },
            timeout_ms(&a[last])?,
        ),
        "brpoplpush" => (
            vec![a[1].clone()],
            PopKind::Move {
                dest: a[2].clone(),
                from_left: false,
                to_left: true,
            },
            timeout_ms(&a[3])?,
        ),
        "blmove" => {
            let from_left = side(&a[3], b"LEFT", b"RIGHT")?;
            let to_left = side(&a[4], b"LEFT", b"RIGHT")?;
            (
                vec![a[1].clone()],
                PopKind::Move {
                    dest: a[2].clone(),
                    from_left,
                    to_left,
                },
                timeout_ms(&a[5])?,
            )
        }
        "blmpop" => return parse_mpop(a, true),
        "bzmpop" => return parse_mpop(a, false),
        _ => return Err(err("ERR unknown blocking command")),
    };
    Ok(Command::Blocking {
        pop: BlockedPop { keys, kind },
        timeout_ms,
    })
}

/// Drops the registration of a wait that was abandoned (the client
/// disconnected) while a registration was out.
struct Registration {
    router: Arc<Router>,
    shard: ShardId,
    waiter: u64,
    armed: bool,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if self.armed {
            let (router, shard, waiter) = (self.router.clone(), self.shard, self.waiter);
            tokio::spawn(async move { router.unblock(shard, waiter).await });
        }
    }
}

/// Marks the client blocked (CLIENT UNBLOCK finds it) while it waits.
struct BlockedMark<'a>(&'a Client);

impl<'a> BlockedMark<'a> {
    fn new(client: &'a Client) -> Self {
        client.blocked.store(true, Ordering::Relaxed);
        crate::metrics::BLOCKED_CLIENTS.inc();
        BlockedMark(client)
    }
}

impl Drop for BlockedMark<'_> {
    fn drop(&mut self) {
        self.0.blocked.store(false, Ordering::Relaxed);
        crate::metrics::BLOCKED_CLIENTS.dec();
    }
}

/// Blocks `client` until `pop` takes something, `timeout_ms` passes (0: no
/// limit) or CLIENT UNBLOCK; its reply.
pub async fn wait(router: &Arc<Router>, client: &Client, pop: BlockedPop, timeout_ms: u64) -> Frame {
    let deadline = (timeout_ms > 0).then(|| Instant::now() + Duration::from_millis(timeout_ms));
    let waiter: u64 = rand::random();
    let (mut retry, mut attempt) = (false, 0usize);
    // A CLIENT UNBLOCK that raced with the end of an earlier blocking command
    // left a wake-up behind: it is not for this one.
    let _ = futures::FutureExt::now_or_never(client.unblock.notified());
    client.unblock_error.store(false, Ordering::Relaxed);
    let _mark = BlockedMark::new(client);
    loop {
        let shard = match crate::cmd::one_shard(router, pop.keys()) {
            Ok(shard) => shard,
            Err(e) => return reply::to_frame(&e),
        };
        let slice = match deadline {
            Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => left.min(SLICE),
                // An attempt that may have popped is settled even after the
                // deadline: the element is the client's, not nobody's.
                _ if retry => Duration::from_millis(1),
                _ => return pop.kind.timed_out(),
            },
            None => SLICE,
        };
        let mut registration = Registration {
            router: router.clone(),
            shard,
            waiter,
            armed: true,
        };
        let ms = (slice.as_millis() as u64).max(1);
        let once = router.block_once(shard, &pop, waiter, ms, retry, attempt);
        tokio::pin!(once);
        let outcome = tokio::select! {
            outcome = &mut once => outcome,
            _ = client.unblock.notified() => {
                router.unblock(shard, waiter).await;
                // Answered at once: null, or what was popped meanwhile.
                let outcome = once.await;
                registration.armed = false;
                return match outcome {
                    BlockAttempt::Popped(frame) => frame,
                    _ if client.unblock_error.load(Ordering::Relaxed) => {
                        Frame::error("UNBLOCKED client unblocked via CLIENT UNBLOCK")
                    }
                    _ => pop.kind.timed_out(),
                };
            }
        };
        registration.armed = false;
        if tracing::enabled!(tracing::Level::DEBUG) {
            let shown = match &outcome {
                BlockAttempt::Popped(frame) => String::from_utf8_lossy(&frame.to_bytes()).into_owned(),
                other => format!("{other:?}"),
            };
            tracing::debug!(waiter, outcome = ?shown, retry, "blocked client's attempt");
        }
        match outcome {
            BlockAttempt::Popped(frame) => return frame,
            BlockAttempt::TimedOut => (retry, attempt) = (false, 0),
            BlockAttempt::Again { may_have_popped } => {
                retry |= may_have_popped;
                attempt += 1;
                let ms = 20u64.saturating_mul(1 << attempt.min(4)) + rand::random::<u64>() % 20;
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            BlockAttempt::Moved => tokio::time::sleep(crate::route::MOVED_PAUSE_MAX).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<Vec<u8>> {
        line.split(' ').map(|s| s.as_bytes().to_vec()).collect()
    }

    fn parsed(line: &str) -> Command {
        let a = args(line);
        match parse(&String::from_utf8_lossy(&a[0]).to_lowercase(), &a) {
            Ok(c) | Err(c) => c,
        }
    }

    fn error(line: &str) -> String {
        match parsed(line) {
            Command::Local(Frame::Error(e)) => e,
            other => panic!("{line}: {other:?}"),
        }
    }

    #[test]
    fn arguments_and_errors_as_redis() {
        assert_eq!(
            parsed("BLPOP a b 1.5"),
            Command::Blocking {
                pop: BlockedPop {
                    keys: args("a b"),
                    kind: PopKind::List { left: true }
                },
                timeout_ms: 1500
            }
        );
        assert!(matches!(parsed("BRPOP a 0"), Command::Blocking { timeout_ms: 0, .. }));
        assert_eq!(error("BLPOP a x"), "ERR timeout is not a float or out of range");
        assert_eq!(error("BLPOP a nan"), "ERR timeout is not a float or out of range");
        assert_eq!(error("BLPOP a -1"), "ERR timeout is negative");
        assert_eq!(error("BLPOP a inf"), "ERR timeout is out of range");
        assert_eq!(error("BLMOVE a b UP LEFT 0"), SYNTAX);
        assert_eq!(
            error("BLMOVE a b LEFT LEFT x"),
            "ERR timeout is not a float or out of range"
        );
        assert!(matches!(
            parsed("BLMOVE a b right LEFT 0.01"),
            Command::Blocking {
                pop: BlockedPop {
                    kind: PopKind::Move {
                        from_left: false,
                        to_left: true,
                        ..
                    },
                    ..
                },
                timeout_ms: 10
            }
        ));
        assert_eq!(error("BLMPOP 0 0 a LEFT"), "ERR numkeys should be greater than 0");
        assert_eq!(error("BLMPOP 0 x a LEFT"), "ERR numkeys should be greater than 0");
        assert_eq!(error("BLMPOP 0 2 a LEFT"), SYNTAX);
        assert_eq!(error("BLMPOP 0 1 a UP"), SYNTAX);
        assert_eq!(error("BLMPOP 0 1 a LEFT COUNT 0"), "ERR count should be greater than 0");
        assert_eq!(error("BLMPOP 0 1 a LEFT COUNT 1 COUNT 2"), SYNTAX);
        assert_eq!(error("BZMPOP 0 1 a LEFT"), SYNTAX);
        assert!(matches!(
            parsed("BZMPOP 1 2 a b MAX COUNT 3"),
            Command::Blocking {
                pop: BlockedPop {
                    kind: PopKind::ZSetMany { min: false, count: 3 },
                    ..
                },
                timeout_ms: 1000
            }
        ));
    }
}

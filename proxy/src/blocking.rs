//! Blocking commands: BLPOP, BRPOP, BLMOVE, BRPOPLPUSH, BLMPOP, BZPOPMIN,
//! BZPOPMAX, BZMPOP: the wait of one blocked client (their arguments are
//! parsed in `redraft_common::parse`).
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
use redraft_common::ops::BlockedPop;
use redraft_common::resp::Frame;

use crate::reply;
use crate::route::{BlockAttempt, Router};
use crate::session::Client;

/// The longest one registration lasts: a client that waits longer is
/// registered again, so the registration of a proxy that died ends by itself.
const SLICE: Duration = Duration::from_secs(30);

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

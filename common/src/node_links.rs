//! Requests to shard nodes, batched per node: the proxy's commands and the shard
//! nodes' Raft messages (every group's heartbeats and appends to one peer share
//! its batches).
//!
//! Up to [`MAX_IN_FLIGHT`] requests to a node go out at once, each written to
//! the node's link by its caller's own task (no hand-off). Requests that arrive
//! while that many are outstanding queue, and the next slot to free sends them
//! together as one `NodeRequest::Batch`, so under load the per-message cost
//! (frames, packets, wake-ups, the server's tasks) is shared by many requests,
//! while a lone request leaves at once: there is no timer and no added latency
//! when idle.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::oneshot;

use crate::transport::{CallError, Endpoint};
use crate::wire::{NodeRequest, NodeResponse};

/// Batches in flight per node before requests start to queue into bigger batches.
const MAX_IN_FLIGHT: usize = 4;
/// Most requests in one batch.
const MAX_BATCH: usize = 256;
type Reply = oneshot::Sender<Result<NodeResponse, CallError>>;

/// A queued request: what to send, how long its caller waits, where to answer.
type Queued = (NodeRequest, Duration, Reply);

/// One node's requests in flight and waiting.
#[derive(Default)]
struct NodeQueue {
    in_flight: usize,
    waiting: Vec<Queued>,
}

/// Batched links to shard nodes.
pub struct NodeLinks {
    endpoint: Endpoint,
    nodes: DashMap<SocketAddr, Arc<Mutex<NodeQueue>>>,
}

impl NodeLinks {
    /// Links over `endpoint`.
    pub fn new(endpoint: Endpoint) -> NodeLinks {
        NodeLinks {
            endpoint,
            nodes: DashMap::new(),
        }
    }

    /// The endpoint, for messages that must not wait in a batch.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Sends `request` to `addr` (possibly inside a batch) and waits for its answer.
    pub async fn call(
        &self,
        addr: SocketAddr,
        request: NodeRequest,
        timeout: Duration,
    ) -> Result<NodeResponse, CallError> {
        let queue = self.nodes.entry(addr).or_default().clone();
        let (reply, answer) = oneshot::channel();
        let direct = {
            let mut state = queue.lock().expect("node queue lock");
            if state.in_flight < MAX_IN_FLIGHT {
                state.in_flight += 1;
                Some(request)
            } else {
                state.waiting.push((request, timeout, reply));
                None
            }
        };
        if let Some(request) = direct {
            let _slot = Slot {
                endpoint: &self.endpoint,
                addr,
                queue: &queue,
            };
            return self.endpoint.call_linked(addr, &request, timeout).await;
        }
        match tokio::time::timeout(timeout, answer).await {
            Ok(answer) => answer.unwrap_or_else(|_| {
                Err(CallError::NotSent {
                    addr,
                    reason: "node link stopped".into(),
                })
            }),
            Err(_) => Err(CallError::Unknown {
                addr,
                reason: format!("timed out after {timeout:?}"),
            }),
        }
    }
}

/// A request slot of one node, held by a direct call; freeing it sends what
/// queued meanwhile as one batch (which keeps the slot until it is answered).
struct Slot<'a> {
    endpoint: &'a Endpoint,
    addr: SocketAddr,
    queue: &'a Arc<Mutex<NodeQueue>>,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        release(self.endpoint.clone(), self.addr, self.queue.clone());
    }
}

/// Frees a slot of `queue`, or hands it to a batch of the requests waiting.
fn release(endpoint: Endpoint, addr: SocketAddr, queue: Arc<Mutex<NodeQueue>>) {
    let batch = {
        let mut state = queue.lock().expect("node queue lock");
        if state.waiting.is_empty() {
            state.in_flight -= 1;
            return;
        }
        let take = state.waiting.len().min(MAX_BATCH);
        // Callers that stopped waiting (timed out, or went away) are not sent.
        let batch: Vec<Queued> = state
            .waiting
            .drain(..take)
            .filter(|(_, _, reply)| !reply.is_closed())
            .collect();
        if batch.is_empty() {
            drop(state);
            return release(endpoint, addr, queue);
        }
        batch
    };
    tokio::spawn(async move {
        send(&endpoint, addr, batch).await;
        release(endpoint, addr, queue);
    });
}

/// Sends a batch; it may take as long as its most patient request (each caller
/// stops waiting at its own timeout).
async fn send(endpoint: &Endpoint, addr: SocketAddr, mut batch: Vec<Queued>) {
    if batch.len() == 1 {
        let (request, timeout, reply) = batch.pop().expect("one request");
        let _ = reply.send(endpoint.call_linked(addr, &request, timeout).await);
        return;
    }
    let timeout = batch.iter().map(|(_, t, _)| *t).max().unwrap_or_default();
    let (requests, replies): (Vec<NodeRequest>, Vec<Reply>) = batch.into_iter().map(|(r, _, a)| (r, a)).unzip();
    let n = replies.len();
    match endpoint.call_linked(addr, &NodeRequest::Batch(requests), timeout).await {
        Ok(NodeResponse::Batch(answers)) if answers.len() == n => {
            for (reply, answer) in replies.into_iter().zip(answers) {
                let _ = reply.send(Ok(answer));
            }
        }
        Ok(other) => {
            let reason = format!("malformed batch answer {other:?}");
            for reply in replies {
                let _ = reply.send(Err(CallError::Unknown {
                    addr,
                    reason: reason.clone(),
                }));
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::resp::Frame;
    use crate::tls::TlsIdentity;
    use crate::wire;

    /// Answers `Applied { shard }` with `:shard`, and a batch element by element.
    fn answer(request: NodeRequest) -> NodeResponse {
        match request {
            NodeRequest::Applied { shard } => NodeResponse::Reply(Frame::Integer(shard as i64)),
            NodeRequest::Batch(requests) => NodeResponse::Batch(requests.into_iter().map(answer).collect()),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn requests_beyond_the_in_flight_limit_leave_in_batches_and_each_gets_its_answer() {
        let (server, addr, dir) = crate::transport::test_server("node-links");
        let messages = Arc::new(AtomicUsize::new(0));
        let counted = messages.clone();
        tokio::spawn(async move {
            server
                .serve(move |bytes: Vec<u8>| {
                    counted.fetch_add(1, Ordering::Relaxed);
                    async move {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        wire::encode(&answer(wire::decode(&bytes).unwrap()))
                    }
                })
                .await
        });
        let links = Arc::new(NodeLinks::new(
            Endpoint::client(&TlsIdentity::load(&dir, "client").unwrap()).unwrap(),
        ));
        let calls = (0..200u64).map(|shard| {
            let links = links.clone();
            async move {
                let answer = links
                    .call(addr, NodeRequest::Applied { shard }, Duration::from_secs(10))
                    .await
                    .unwrap();
                assert!(matches!(answer, NodeResponse::Reply(Frame::Integer(n)) if n == shard as i64));
            }
        });
        futures::future::join_all(calls).await;
        let sent = messages.load(Ordering::Relaxed);
        assert!(
            sent < 50,
            "200 requests went as {sent} messages: they should share batches"
        );
        let state = links.nodes.get(&addr).unwrap();
        let state = state.lock().unwrap();
        assert_eq!((state.in_flight, state.waiting.len()), (0, 0), "every slot freed");
        let _ = std::fs::remove_dir_all(dir);
    }
}

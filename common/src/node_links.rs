//! Requests to shard nodes, batched per node: the proxy's commands and the shard
//! nodes' Raft messages (every group's heartbeats and appends to one peer share
//! its batches).
//!
//! Every node gets a batcher task. Requests that arrive while the node already has
//! [`MAX_IN_FLIGHT`] batches outstanding wait and leave together as one
//! `NodeRequest::Batch` on one QUIC stream, so under load the per-message cost
//! (stream, packets, wake-ups) is shared by many requests, while a lone request
//! leaves at once: there is no timer and no added latency when idle.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::transport::{CallError, Endpoint};
use crate::wire::{NodeRequest, NodeResponse};

/// Batches in flight per node before requests start to queue into bigger batches.
const MAX_IN_FLIGHT: usize = 4;
/// Most requests in one batch.
const MAX_BATCH: usize = 256;
/// Requests waiting for a node's batcher; beyond this, callers wait (backpressure).
const QUEUE: usize = 4096;

type Reply = oneshot::Sender<Result<NodeResponse, CallError>>;

/// A queued request: what to send, how long its caller waits, where to answer.
type Queued = (NodeRequest, Duration, Reply);

/// Batched links to shard nodes.
pub struct NodeLinks {
    endpoint: Endpoint,
    links: DashMap<SocketAddr, mpsc::Sender<Queued>>,
}

impl NodeLinks {
    /// Links over `endpoint`.
    pub fn new(endpoint: Endpoint) -> NodeLinks {
        NodeLinks {
            endpoint,
            links: DashMap::new(),
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
        let link = self
            .links
            .entry(addr)
            .or_insert_with(|| {
                let (tx, rx) = mpsc::channel(QUEUE);
                tokio::spawn(batcher(self.endpoint.clone(), addr, rx));
                tx
            })
            .clone();
        let (reply, answer) = oneshot::channel();
        let stopped = || CallError::NotSent {
            addr,
            reason: "node link stopped".into(),
        };
        link.send((request, timeout, reply)).await.map_err(|_| stopped())?;
        match tokio::time::timeout(timeout, answer).await {
            Ok(answer) => answer.map_err(|_| stopped())?,
            Err(_) => Err(CallError::Unknown {
                addr,
                reason: format!("timed out after {timeout:?}"),
            }),
        }
    }
}

async fn batcher(endpoint: Endpoint, addr: SocketAddr, mut rx: mpsc::Receiver<Queued>) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        let endpoint = endpoint.clone();
        tokio::spawn(async move {
            let _permit = permit;
            send(&endpoint, addr, batch).await;
        });
    }
}

/// Sends a batch; it may take as long as its most patient request (each caller
/// stops waiting at its own timeout).
async fn send(endpoint: &Endpoint, addr: SocketAddr, mut batch: Vec<Queued>) {
    if batch.len() == 1 {
        let (request, timeout, reply) = batch.pop().expect("one request");
        let _ = reply.send(endpoint.call(addr, &request, timeout).await);
        return;
    }
    let timeout = batch.iter().map(|(_, t, _)| *t).max().unwrap_or_default();
    let (requests, replies): (Vec<NodeRequest>, Vec<Reply>) = batch.into_iter().map(|(r, _, a)| (r, a)).unzip();
    let n = replies.len();
    match endpoint.call(addr, &NodeRequest::Batch(requests), timeout).await {
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

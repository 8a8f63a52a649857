//! Raft RPCs of one group over the process's shared QUIC endpoint.
//!
//! Every group gets a cheap [`GroupNetwork`] factory; all of them share the
//! process's single [`Endpoint`], so the RPCs of every group to one peer ride one
//! QUIC connection, tagged with the group id. Shard groups go through the
//! process's [`NodeLinks`]: when many groups talk to one peer at once (heartbeats,
//! appends), their messages leave together in one batch on one stream.
//!
//! Generic over the group's type configuration and over the envelope ([`RaftWire`]),
//! so shard groups (in `NodeRequest`) and the placement group (in `PdRequest`)
//! share this code.
//!
//! BANDWIDTH. Snapshot chunks of every group leave the process through one rate
//! limiter ([`limit_snapshot_bandwidth`]), so replica moves cannot starve client
//! traffic of the disk and the network: the operator's bandwidth limit.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use openraft::error::{InstallSnapshotError, NetworkError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::BasicNode;
use openraft::RaftTypeConfig;
use redraft_common::ids::ShardId;
use redraft_common::node_links::NodeLinks;
use redraft_common::transport::{CallError, Endpoint};
use redraft_common::wire::{self, NodeRequest, NodeResponse, PdRequest, PdResponse, RaftKind};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::lease::Lease;

/// The limiter counts KiB: a `u32` of cells then covers any sane rate.
const LIMITER_CELL: u64 = 1024;

static SNAPSHOT_LIMITER: OnceLock<DefaultDirectRateLimiter> = OnceLock::new();

/// Limits the snapshot bytes this process sends to `bytes_per_sec` (all groups,
/// all peers together). Call once at startup; 0 leaves snapshots unlimited.
pub fn limit_snapshot_bandwidth(bytes_per_sec: u64) {
    if let Some(limiter) = snapshot_limiter(bytes_per_sec) {
        let _ = SNAPSHOT_LIMITER.set(limiter);
    }
}

/// A limiter of `bytes_per_sec` (in KiB cells), or `None` for no limit.
fn snapshot_limiter(bytes_per_sec: u64) -> Option<DefaultDirectRateLimiter> {
    let per_sec = NonZeroU32::new((bytes_per_sec / LIMITER_CELL).min(u64::from(u32::MAX)) as u32)?;
    // A burst of one second, and at least one whole chunk.
    let burst = per_sec.max(NonZeroU32::new(MAX_CHUNK_CELLS).expect("non-zero"));
    Some(RateLimiter::direct(Quota::per_second(per_sec).allow_burst(burst)))
}

/// Largest snapshot chunk the limiter admits in one go, in cells (16 MiB).
const MAX_CHUNK_CELLS: u32 = 16 * 1024;

/// Waits until `bytes` of snapshot may be sent.
async fn pace_snapshot(bytes: usize) {
    crate::metrics::SNAPSHOT_BYTES_SENT.inc_by(bytes as u64);
    let Some(limiter) = SNAPSHOT_LIMITER.get() else {
        return;
    };
    let cells = (bytes as u64)
        .div_ceil(LIMITER_CELL)
        .clamp(1, u64::from(MAX_CHUNK_CELLS)) as u32;
    if let Some(cells) = NonZeroU32::new(cells) {
        // Fails only when `cells` exceeds the burst, which it never does.
        let _ = limiter.until_n_ready(cells).await;
    }
}

type RaftError<E = openraft::error::Infallible> = openraft::error::RaftError<u64, E>;
type RpcError<E = openraft::error::Infallible> = openraft::error::RPCError<u64, BasicNode, RaftError<E>>;

/// How a process family wraps Raft RPCs in its request/response envelopes.
pub trait RaftWire: Send + Sync + 'static {
    /// The request envelope.
    type Request: Serialize + Send + Sync;
    /// The response envelope.
    type Response: DeserializeOwned + std::fmt::Debug + Send;
    /// Wraps an encoded Raft RPC of `group`.
    fn wrap(group: ShardId, kind: RaftKind, payload: Vec<u8>) -> Self::Request;
    /// Unwraps the answer to a Raft RPC: the encoded result, or why there is none.
    fn unwrap(response: Self::Response) -> Result<Vec<u8>, String>;
    /// What messages travel over (shared by every group of the process).
    type Link: Clone + Send + Sync + 'static;
    /// Sends one request and waits for its answer.
    fn call(
        link: &Self::Link,
        addr: SocketAddr,
        request: Self::Request,
        timeout: Duration,
    ) -> impl std::future::Future<Output = Result<Self::Response, CallError>> + Send;
}

/// Shard groups: `NodeRequest::Raft`.
pub struct NodeWire;

impl RaftWire for NodeWire {
    type Request = NodeRequest;
    type Response = NodeResponse;
    fn wrap(group: ShardId, kind: RaftKind, payload: Vec<u8>) -> NodeRequest {
        NodeRequest::Raft { group, kind, payload }
    }
    fn unwrap(response: NodeResponse) -> Result<Vec<u8>, String> {
        match response {
            NodeResponse::Raft(result) => result,
            other => Err(format!("unexpected answer {other:?}")),
        }
    }
    type Link = std::sync::Arc<NodeLinks>;
    async fn call(
        link: &Self::Link,
        addr: SocketAddr,
        request: NodeRequest,
        timeout: Duration,
    ) -> Result<NodeResponse, CallError> {
        // A snapshot chunk is big and slow to install: batched, it would hold up
        // the heartbeats that share its batch.
        if matches!(
            request,
            NodeRequest::Raft {
                kind: RaftKind::InstallSnapshot,
                ..
            }
        ) {
            return link.endpoint().call(addr, &request, timeout).await;
        }
        link.call(addr, request, timeout).await
    }
}

/// The placement group: `PdRequest::Raft`.
pub struct PdWire;

impl RaftWire for PdWire {
    type Request = PdRequest;
    type Response = PdResponse;
    fn wrap(_group: ShardId, kind: RaftKind, payload: Vec<u8>) -> PdRequest {
        PdRequest::Raft { kind, payload }
    }
    fn unwrap(response: PdResponse) -> Result<Vec<u8>, String> {
        match response {
            PdResponse::Raft(result) => result,
            other => Err(format!("unexpected answer {other:?}")),
        }
    }
    type Link = Endpoint;
    async fn call(
        link: &Endpoint,
        addr: SocketAddr,
        request: PdRequest,
        timeout: Duration,
    ) -> Result<PdResponse, CallError> {
        link.call(addr, &request, timeout).await
    }
}

/// Creates connections for one group.
pub struct GroupNetwork<C, W: RaftWire> {
    /// The group id carried on every message.
    pub group: ShardId,
    /// What the process's messages travel over.
    pub link: W::Link,
    /// Where followers' acceptances of AppendEntries are recorded, if the group
    /// serves lease reads.
    lease: Option<Arc<Lease>>,
    _types: std::marker::PhantomData<fn() -> (C, W)>,
}

impl<C, W: RaftWire> GroupNetwork<C, W> {
    /// The network of `group` over the process's `link`.
    pub fn new(group: ShardId, link: W::Link) -> Self {
        GroupNetwork {
            group,
            link,
            lease: None,
            _types: std::marker::PhantomData,
        }
    }

    /// Records in `lease` which AppendEntries the followers accept, and when
    /// they were sent.
    pub fn with_lease(mut self, lease: Arc<Lease>) -> Self {
        self.lease = Some(lease);
        self
    }
}

/// One group's link to one peer.
pub struct PeerLink<C, W: RaftWire> {
    group: ShardId,
    target: u64,
    addr: Option<SocketAddr>,
    link: W::Link,
    lease: Option<Arc<Lease>>,
    _types: std::marker::PhantomData<fn() -> (C, W)>,
}

impl<C, W> RaftNetworkFactory<C> for GroupNetwork<C, W>
where
    C: RaftTypeConfig<NodeId = u64, Node = BasicNode>,
    C::Entry: Serialize + DeserializeOwned,
    C::SnapshotData: tokio::io::AsyncRead + tokio::io::AsyncWrite + tokio::io::AsyncSeek + Unpin,
    W: RaftWire,
{
    type Network = PeerLink<C, W>;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> PeerLink<C, W> {
        PeerLink {
            group: self.group,
            target,
            addr: node.addr.parse().ok(),
            link: self.link.clone(),
            lease: self.lease.clone(),
            _types: std::marker::PhantomData,
        }
    }
}

impl<C, W: RaftWire> PeerLink<C, W> {
    async fn send<Req, Resp, E>(&self, kind: RaftKind, req: &Req, timeout: Duration) -> Result<Resp, RpcError<E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let io = |text: String| std::io::Error::other(text);
        let Some(addr) = self.addr else {
            return Err(RpcError::Unreachable(Unreachable::new(&io(format!(
                "member {} has no address",
                self.target
            )))));
        };
        let request = W::wrap(self.group, kind, wire::encode(req));
        let response: W::Response = W::call(&self.link, addr, request, timeout).await.map_err(|e| match e {
            CallError::NotSent { .. } => RpcError::Unreachable(Unreachable::new(&e)),
            CallError::Unknown { .. } => RpcError::Network(NetworkError::new(&e)),
        })?;
        let bytes = W::unwrap(response).map_err(|reason| RpcError::Network(NetworkError::new(&io(reason))))?;
        let result: Result<Resp, RaftError<E>> =
            wire::decode(&bytes).map_err(|e| RpcError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RpcError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl<C, W> RaftNetwork<C> for PeerLink<C, W>
where
    C: RaftTypeConfig<NodeId = u64, Node = BasicNode>,
    C::Entry: Serialize + DeserializeOwned,
    C::SnapshotData: tokio::io::AsyncRead + tokio::io::AsyncWrite + tokio::io::AsyncSeek + Unpin,
    W: RaftWire,
{
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<C>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RpcError> {
        // Taken before the message leaves: the follower receives it later, so its
        // refusal to vote outlasts a lease counted from here.
        let sent = Instant::now();
        let vote = rpc.vote;
        let response = self.send(RaftKind::AppendEntries, &rpc, option.hard_ttl()).await;
        if let (Some(lease), Ok(answer)) = (&self.lease, &response) {
            // Every answer but HigherVote means the follower took the vote (and
            // restarted its refusal), whether or not the logs matched.
            if !matches!(answer, AppendEntriesResponse::HigherVote(_)) {
                lease.accepted(self.target, vote, sent);
            }
        }
        response
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<C>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, RpcError<InstallSnapshotError>> {
        tracing::debug!(
            group = self.group,
            target = self.target,
            offset = rpc.offset,
            bytes = rpc.data.len(),
            done = rpc.done,
            "sending snapshot chunk"
        );
        pace_snapshot(rpc.data.len()).await;
        self.send(RaftKind::InstallSnapshot, &rpc, option.hard_ttl()).await
    }

    async fn vote(&mut self, rpc: VoteRequest<u64>, option: RPCOption) -> Result<VoteResponse<u64>, RpcError> {
        self.send(RaftKind::Vote, &rpc, option.hard_ttl()).await
    }
}

/// Serves one inbound Raft RPC for `raft`: decodes, calls, encodes the result.
pub async fn serve_rpc<C>(raft: &openraft::Raft<C>, kind: RaftKind, payload: &[u8]) -> Result<Vec<u8>, String>
where
    C: RaftTypeConfig<NodeId = u64, Node = BasicNode>,
    C::Entry: Serialize + DeserializeOwned,
    C::SnapshotData: tokio::io::AsyncRead + tokio::io::AsyncWrite + tokio::io::AsyncSeek + Unpin,
{
    let text = |e: wire::DecodeError| e.to_string();
    Ok(match kind {
        RaftKind::AppendEntries => wire::encode(&raft.append_entries(wire::decode(payload).map_err(text)?).await),
        RaftKind::Vote => wire::encode(&raft.vote(wire::decode(payload).map_err(text)?).await),
        RaftKind::InstallSnapshot => wire::encode(&raft.install_snapshot(wire::decode(payload).map_err(text)?).await),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_limiter_admits_one_burst_then_holds_back() {
        assert!(snapshot_limiter(0).is_none(), "0 means unlimited");
        assert!(
            snapshot_limiter(LIMITER_CELL - 1).is_none(),
            "under one cell per second is unlimited too"
        );
        let limiter = snapshot_limiter(64 << 20).expect("a limit");
        let cells = |n: u32| NonZeroU32::new(n).expect("non-zero");
        // The burst (one second's worth, 64 MiB) passes at once...
        assert!(matches!(limiter.check_n(cells(64 * 1024)), Ok(Ok(()))));
        // ...then even one more KiB has to wait.
        assert!(matches!(limiter.check_n(cells(1)), Ok(Err(_))));
        // A chunk larger than the burst is refused outright, which is why the
        // sender clamps chunks to `MAX_CHUNK_CELLS` and the burst is at least that.
        let small = snapshot_limiter(LIMITER_CELL).expect("a limit");
        assert!(small.check_n(cells(MAX_CHUNK_CELLS)).is_ok());
        assert!(small.check_n(cells(MAX_CHUNK_CELLS + 1)).is_err());
    }
}

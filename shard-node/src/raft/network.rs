//! Raft RPCs of one group over the node's shared QUIC endpoint.
//!
//! Every group gets a cheap [`GroupNetwork`] factory; all of them share the node's
//! single [`Endpoint`], so the RPCs of every group to one peer ride one QUIC
//! connection, each on its own stream, tagged with the group id.

use std::net::SocketAddr;
use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::BasicNode;
use redraft_common::ids::ShardId;
use redraft_common::transport::{CallError, Endpoint};
use redraft_common::wire::{self, NodeRequest, NodeResponse, RaftKind};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::typ::{RaftError, RpcError};
use super::ShardTypes;

/// Creates connections for one group.
#[derive(Clone)]
pub struct GroupNetwork {
    /// The group (shard) id carried on every message.
    pub group: ShardId,
    /// The node's endpoint.
    pub endpoint: Endpoint,
}

/// One group's link to one peer.
pub struct PeerLink {
    group: ShardId,
    target: u64,
    addr: Option<SocketAddr>,
    endpoint: Endpoint,
}

impl RaftNetworkFactory<ShardTypes> for GroupNetwork {
    type Network = PeerLink;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> PeerLink {
        PeerLink { group: self.group, target, addr: node.addr.parse().ok(), endpoint: self.endpoint.clone() }
    }
}

impl PeerLink {
    async fn send<Req, Resp, E>(&self, kind: RaftKind, req: &Req, timeout: Duration) -> Result<Resp, RpcError<E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let io = |text: String| std::io::Error::other(text);
        let Some(addr) = self.addr else {
            return Err(RpcError::Unreachable(Unreachable::new(&io(format!("node {} has no address", self.target)))));
        };
        let request = NodeRequest::Raft { group: self.group, kind, payload: wire::encode(req) };
        let response: NodeResponse = self.endpoint.call(addr, &request, timeout).await.map_err(|e| match e {
            CallError::NotSent { .. } => RpcError::Unreachable(Unreachable::new(&e)),
            CallError::Unknown { .. } => RpcError::Network(NetworkError::new(&e)),
        })?;
        match response {
            NodeResponse::Raft(Ok(bytes)) => {
                let result: Result<Resp, RaftError<E>> =
                    wire::decode(&bytes).map_err(|e| RpcError::Network(NetworkError::new(&e)))?;
                result.map_err(|e| RpcError::RemoteError(RemoteError::new(self.target, e)))
            }
            NodeResponse::Raft(Err(reason)) => Err(RpcError::Network(NetworkError::new(&io(reason)))),
            other => Err(RpcError::Network(NetworkError::new(&io(format!("unexpected answer {other:?}"))))),
        }
    }
}

impl RaftNetwork<ShardTypes> for PeerLink {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<ShardTypes>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RpcError> {
        self.send(RaftKind::AppendEntries, &rpc, option.hard_ttl()).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<ShardTypes>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, RpcError<InstallSnapshotError>> {
        self.send(RaftKind::InstallSnapshot, &rpc, option.hard_ttl()).await
    }

    async fn vote(&mut self, rpc: VoteRequest<u64>, option: RPCOption) -> Result<VoteResponse<u64>, RpcError> {
        self.send(RaftKind::Vote, &rpc, option.hard_ttl()).await
    }
}

/// Serves one inbound Raft RPC for `raft`: decodes, calls, encodes the result.
pub async fn serve_rpc(raft: &super::typ::Raft, kind: RaftKind, payload: &[u8]) -> Result<Vec<u8>, String> {
    let text = |e: wire::DecodeError| e.to_string();
    Ok(match kind {
        RaftKind::AppendEntries => wire::encode(&raft.append_entries(wire::decode(payload).map_err(text)?).await),
        RaftKind::Vote => wire::encode(&raft.vote(wire::decode(payload).map_err(text)?).await),
        RaftKind::InstallSnapshot => wire::encode(&raft.install_snapshot(wire::decode(payload).map_err(text)?).await),
    })
}

//! QUIC transport between members: one connection per peer, and on it either one
//! stream per call or one long-lived framed link.
//!
//! Every process has one [`Endpoint`]. Calls to a peer reuse a single cached QUIC
//! connection (created on first use, replaced when it dies), so all Raft groups and
//! all proxy requests between two processes share one connection and one TLS
//! session.
//!
//! ONE-CALL STREAMS ([`Endpoint::call`]). A request is a bidirectional stream's
//! whole send side (finished after writing), its response likewise, each a
//! [`crate::wire`] envelope of at most [`MAX_MESSAGE`] bytes. Used for rare and
//! for big messages (placement, snapshots, operator commands).
//!
//! LINKS ([`Endpoint::call_linked`]). The hot traffic (client commands from
//! proxies, every group's Raft messages between nodes) goes over one long-lived
//! framed stream per peer instead ([`crate::link`]). A request over
//! [`LINK_MAX_REQUEST`] bytes takes a one-call stream, so a big message never
//! holds up the small ones behind it.
//!
//! FAILURES. [`CallError::NotSent`] means the request never left this process
//! (no connection, no stream, or still in a link's backlog when the link
//! failed), so any request may be retried; every later failure is
//! [`CallError::Unknown`]: the peer may have acted on it. A link whose stream or
//! connection fails answers every call waiting on it by those rules and is
//! replaced by the next call.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use dashmap::DashMap;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::link::{self, Link};
use crate::tls::{TlsIdentity, SERVER_NAME};
use crate::wire;

/// Largest message on a stream: a snapshot chunk (a few MiB) plus headroom.
pub const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// Largest request sent on a link; bigger ones take a one-call stream.
pub const LINK_MAX_REQUEST: usize = 256 * 1024;

/// Concurrent streams a peer may open: every in-flight Raft RPC and client request
/// is a stream, and a node talks to thousands of groups' peers at once.
const MAX_STREAMS: u32 = 8192;

/// A call that failed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum CallError {
    /// The request was not sent: safe to retry anywhere.
    #[error("not sent to {addr}: {reason}")]
    NotSent { addr: SocketAddr, reason: String },
    /// The request may have reached the peer; its effect is unknown.
    #[error("no answer from {addr}: {reason}")]
    Unknown { addr: SocketAddr, reason: String },
}

/// A QUIC endpoint that can call peers and, when bound as a server, accept calls.
#[derive(Clone)]
pub struct Endpoint {
    endpoint: quinn::Endpoint,
    connections: Arc<DashMap<SocketAddr, quinn::Connection>>,
    connect_lock: Arc<tokio::sync::Mutex<()>>,
    links: Arc<DashMap<SocketAddr, Arc<Link>>>,
    link_lock: Arc<tokio::sync::Mutex<()>>,
}

fn transport_config() -> Arc<quinn::TransportConfig> {
    let mut config = quinn::TransportConfig::default();
    config
        .max_concurrent_bidi_streams(MAX_STREAMS.into())
        .max_concurrent_uni_streams(0u32.into())
        // A dead peer is noticed after 3 s of silence; keep-alives every 500 ms keep
        // healthy idle connections open.
        .keep_alive_interval(Some(Duration::from_millis(500)))
        .max_idle_timeout(Some(Duration::from_secs(3).try_into().expect("3s fits")));
    Arc::new(config)
}

impl Endpoint {
    /// Binds a server endpoint on `addr` (port 0 picks a free one) that also calls peers.
    pub fn server(addr: SocketAddr, tls: &TlsIdentity) -> Result<Endpoint> {
        let crypto = QuicServerConfig::try_from(tls.server_config()?)?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        server.transport_config(transport_config());
        let mut endpoint = quinn::Endpoint::server(server, addr).with_context(|| format!("binding QUIC on {addr}"))?;
        endpoint.set_default_client_config(Self::client_config(tls)?);
        Ok(Self::wrap(endpoint))
    }

    /// A client-only endpoint (the proxy, `redraft ctl`).
    pub fn client(tls: &TlsIdentity) -> Result<Endpoint> {
        let mut endpoint = quinn::Endpoint::client("0.0.0.0:0".parse().expect("valid addr"))?;
        endpoint.set_default_client_config(Self::client_config(tls)?);
        Ok(Self::wrap(endpoint))
    }

    fn client_config(tls: &TlsIdentity) -> Result<quinn::ClientConfig> {
        let crypto = QuicClientConfig::try_from(tls.client_config()?)?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(transport_config());
        Ok(config)
    }

    fn wrap(endpoint: quinn::Endpoint) -> Endpoint {
        Endpoint {
            endpoint,
            connections: Arc::new(DashMap::new()),
            connect_lock: Arc::new(tokio::sync::Mutex::new(())),
            links: Arc::new(DashMap::new()),
            link_lock: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// The bound local address.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.endpoint.local_addr()?)
    }

    async fn connection(&self, addr: SocketAddr) -> Result<quinn::Connection, CallError> {
        let not_sent = |reason: String| CallError::NotSent { addr, reason };
        if let Some(conn) = self.connections.get(&addr) {
            if conn.close_reason().is_none() {
                return Ok(conn.clone());
            }
        }
        // One dial at a time, so concurrent callers share the new connection.
        let _guard = self.connect_lock.lock().await;
        if let Some(conn) = self.connections.get(&addr) {
            if conn.close_reason().is_none() {
                return Ok(conn.clone());
            }
        }
        let connecting = self
            .endpoint
            .connect(addr, SERVER_NAME)
            .map_err(|e| not_sent(e.to_string()))?;
        let conn = tokio::time::timeout(Duration::from_secs(2), connecting)
            .await
            .map_err(|_| not_sent("connect timed out".into()))?
            .map_err(|e| not_sent(e.to_string()))?;
        self.connections.insert(addr, conn.clone());
        Ok(conn)
    }

    /// Sends `request` to `addr` and waits up to `timeout` for the response.
    pub async fn call<Req, Resp>(&self, addr: SocketAddr, request: &Req, timeout: Duration) -> Result<Resp, CallError>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
    {
        let answer = self.call_on_stream(addr, &wire::encode(request), timeout).await?;
        wire::decode(&answer).map_err(|e| CallError::Unknown {
            addr,
            reason: e.to_string(),
        })
    }

    /// Sends `request` to `addr` over the link to that peer (a one-call stream when
    /// it is bigger than [`LINK_MAX_REQUEST`]) and waits up to `timeout` for the
    /// response. Same outcomes as [`Endpoint::call`].
    pub async fn call_linked<Req, Resp>(
        &self,
        addr: SocketAddr,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, CallError>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
    {
        let unknown = |reason: String| CallError::Unknown { addr, reason };
        let bytes = wire::encode(request);
        let answer = if bytes.len() > LINK_MAX_REQUEST {
            self.call_on_stream(addr, &bytes, timeout).await?
        } else {
            tokio::time::timeout(timeout, async { self.link(addr).await?.call(&bytes).await })
                .await
                .map_err(|_| unknown(format!("timed out after {timeout:?}")))??
        };
        wire::decode(&answer).map_err(|e| unknown(e.to_string()))
    }

    /// One exchange of encoded messages on a one-call stream of its own.
    async fn call_on_stream(&self, addr: SocketAddr, request: &[u8], timeout: Duration) -> Result<Vec<u8>, CallError> {
        let unknown = |reason: String| CallError::Unknown { addr, reason };
        let exchange = async {
            let conn = self.connection(addr).await?;
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| {
                self.connections
                    .remove_if(&addr, |_, c| c.stable_id() == conn.stable_id());
                CallError::NotSent {
                    addr,
                    reason: e.to_string(),
                }
            })?;
            send.write_all(request).await.map_err(|e| unknown(e.to_string()))?;
            send.finish().map_err(|e| unknown(e.to_string()))?;
            recv.read_to_end(MAX_MESSAGE).await.map_err(|e| unknown(e.to_string()))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| unknown(format!("timed out after {timeout:?}")))?
    }

    /// The live link to `addr`, opened (with its reader task) when there is none.
    async fn link(&self, addr: SocketAddr) -> Result<Arc<Link>, CallError> {
        let live = |links: &DashMap<SocketAddr, Arc<Link>>| {
            links.get(&addr).filter(|link| !link.failed()).map(|link| link.clone())
        };
        if let Some(link) = live(&self.links) {
            return Ok(link);
        }
        let _guard = self.link_lock.lock().await;
        if let Some(link) = live(&self.links) {
            return Ok(link);
        }
        let conn = self.connection(addr).await?;
        let link = Link::open(&conn, addr).await.map_err(|reason| {
            self.connections
                .remove_if(&addr, |_, c| c.stable_id() == conn.stable_id());
            CallError::NotSent { addr, reason }
        })?;
        self.links.insert(addr, link.clone());
        Ok(link)
    }

    /// Accepts connections until the endpoint closes, answering every stream with
    /// `handler(request bytes)`. Each one-call stream, and each request on a link,
    /// is served on its own task.
    pub async fn serve<H, F>(&self, handler: H)
    where
        H: Fn(Vec<u8>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Vec<u8>> + Send + 'static,
    {
        while let Some(incoming) = self.endpoint.accept().await {
            let handler = handler.clone();
            tokio::spawn(async move {
                let conn = match incoming.await {
                    Ok(conn) => conn,
                    Err(e) => {
                        tracing::debug!(error = %e, "QUIC handshake failed");
                        return;
                    }
                };
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    let handler = handler.clone();
                    tokio::spawn(async move {
                        let mut first = [0u8; 1];
                        if recv.read_exact(&mut first).await.is_err() {
                            return;
                        }
                        if first[0] == link::MAGIC[0] {
                            link::serve(send, recv, handler).await;
                            return;
                        }
                        let Ok(rest) = recv.read_to_end(MAX_MESSAGE - 1).await else {
                            return;
                        };
                        let mut request = Vec::with_capacity(1 + rest.len());
                        request.push(first[0]);
                        request.extend_from_slice(&rest);
                        let response = handler(request).await;
                        let _ = send.write_all(&response).await;
                        let _ = send.finish();
                        let _ = send.stopped().await;
                    });
                }
            });
        }
    }

    /// Closes every connection and stops accepting.
    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"shutdown");
    }
}

/// For tests: certificates named `server` and `client` in a fresh temporary
/// directory (returned, for the caller to remove), and a server endpoint on a
/// free port of 127.0.0.1.
#[cfg(test)]
pub(crate) fn test_server(name: &str) -> (Endpoint, SocketAddr, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("redraft-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    crate::tls::ensure_certs(&dir, &["server".into(), "client".into()]).unwrap();
    let server = Endpoint::server(
        "127.0.0.1:0".parse().unwrap(),
        &TlsIdentity::load(&dir, "server").unwrap(),
    )
    .unwrap();
    let addr = server.local_addr().unwrap();
    (server, addr, dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn mutual_tls_call_and_foreign_ca_refused() {
        let dir = tempfile_dir("transport");
        crate::tls::ensure_certs(&dir.join("a"), &["server".into(), "client".into()]).unwrap();
        crate::tls::ensure_certs(&dir.join("b"), &["intruder".into()]).unwrap();
        let server = Endpoint::server(
            "127.0.0.1:0".parse().unwrap(),
            &TlsIdentity::load(&dir.join("a"), "server").unwrap(),
        )
        .unwrap();
        let addr = server.local_addr().unwrap();
        let s = server.clone();
        tokio::spawn(async move {
            s.serve(|req: Vec<u8>| async move {
                let n: u64 = wire::decode(&req).unwrap();
                wire::encode(&(n + 1))
            })
            .await
        });
        let client = Endpoint::client(&TlsIdentity::load(&dir.join("a"), "client").unwrap()).unwrap();
        let got: u64 = client.call(addr, &41u64, Duration::from_secs(5)).await.unwrap();
        assert_eq!(got, 42);

        let intruder = Endpoint::client(&TlsIdentity::load(&dir.join("b"), "intruder").unwrap()).unwrap();
        let refused = intruder.call::<u64, u64>(addr, &1, Duration::from_secs(5)).await;
        assert!(refused.is_err(), "a member of another CA must be refused");
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A server answering `n + 1` to `n` (after `n % 7` ms, so answers overtake
    /// each other) and echoing byte strings, with a client; both in `dir`.
    async fn pair(name: &str) -> (Endpoint, Endpoint, SocketAddr, std::path::PathBuf) {
        let (server, addr, dir) = test_server(name);
        let s = server.clone();
        tokio::spawn(async move {
            s.serve(|req: Vec<u8>| async move {
                match wire::decode::<u64>(&req) {
                    Ok(n) => {
                        tokio::time::sleep(Duration::from_millis(n % 7)).await;
                        wire::encode(&(n + 1))
                    }
                    Err(_) => {
                        let bytes: Vec<u8> = wire::decode(&req).unwrap();
                        wire::encode(&bytes)
                    }
                }
            })
            .await
        });
        let client = Endpoint::client(&TlsIdentity::load(&dir, "client").unwrap()).unwrap();
        (server, client, addr, dir)
    }

    #[tokio::test]
    async fn linked_calls_share_one_link_and_get_their_own_answers() {
        let (_server, client, addr, dir) = pair("link-answers").await;
        let calls = (0..500u64).map(|n| {
            let client = client.clone();
            async move { client.call_linked::<u64, u64>(addr, &n, Duration::from_secs(10)).await }
        });
        let answers = futures::future::join_all(calls).await;
        for (n, answer) in answers.into_iter().enumerate() {
            assert_eq!(answer.unwrap(), n as u64 + 1);
        }
        assert_eq!(client.links.len(), 1, "one link per peer");
        // More bytes at once than the stream's flow-control window: frames wait
        // in the backlog and still arrive whole, each with its own answer.
        let calls = (0..64u8).map(|n| {
            let client = client.clone();
            async move {
                let payload = vec![n; 200 * 1024];
                let echoed: Vec<u8> = client
                    .call_linked(addr, &payload, Duration::from_secs(20))
                    .await
                    .unwrap();
                assert_eq!(echoed, payload);
            }
        });
        futures::future::join_all(calls).await;
        // A request over the link limit takes a stream of its own and still works,
        // and a big answer comes back whole.
        let big = vec![7u8; LINK_MAX_REQUEST + 1];
        let echoed: Vec<u8> = client.call_linked(addr, &big, Duration::from_secs(10)).await.unwrap();
        assert_eq!(echoed, big);
        // One-call streams still work beside the link.
        let got: u64 = client.call(addr, &1u64, Duration::from_secs(5)).await.unwrap();
        assert_eq!(got, 2);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_failed_link_reports_unknown_for_sent_requests_and_is_replaced() {
        let (server, client, addr, dir) = pair("link-failure").await;
        let got: u64 = client.call_linked(addr, &0u64, Duration::from_secs(5)).await.unwrap();
        assert_eq!(got, 1);
        // A request in flight (the server sleeps 6 ms on it) when the server goes away.
        let pending = {
            let client = client.clone();
            tokio::spawn(async move { client.call_linked::<u64, u64>(addr, &6, Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(2)).await;
        server.close();
        drop(server);
        match pending.await.unwrap() {
            Err(CallError::Unknown { .. }) => {}
            other => panic!("a request that reached the peer must be unknown, got {other:?}"),
        }
        // Nothing listens now: the next call cannot be sent at all.
        match client.call_linked::<u64, u64>(addr, &1, Duration::from_secs(5)).await {
            Err(CallError::NotSent { .. }) => {}
            other => panic!("expected not sent, got {other:?}"),
        }
        // A new server on the same address (free once the old endpoint's tasks
        // have wound down): the link is replaced.
        let mut server = None;
        for _ in 0..100 {
            match Endpoint::server(addr, &TlsIdentity::load(&dir, "server").unwrap()) {
                Ok(bound) => {
                    server = Some(bound);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        let server = server.expect("the address is free again");
        let s = server.clone();
        tokio::spawn(async move { s.serve(|req: Vec<u8>| async move { req }).await });
        let mut answered = None;
        for _ in 0..50 {
            if let Ok(n) = client.call_linked::<u64, u64>(addr, &9, Duration::from_secs(2)).await {
                answered = Some(n);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(answered, Some(9), "a new link to the restarted peer");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_hostile_frame_closes_only_its_link() {
        let (_server, client, addr, dir) = pair("link-hostile").await;
        let conn = client.connection(addr).await.unwrap();
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&link::MAGIC).await.unwrap();
        // A frame claiming 4 GiB.
        send.write_all(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0])
            .await
            .unwrap();
        let closed = tokio::time::timeout(Duration::from_secs(5), recv.read_to_end(1024)).await;
        assert!(
            matches!(closed, Ok(Ok(ref b)) if b.is_empty()),
            "the server ends the link: {closed:?}"
        );
        let got: u64 = client.call_linked(addr, &3u64, Duration::from_secs(5)).await.unwrap();
        assert_eq!(got, 4, "the server still serves");
        let _ = std::fs::remove_dir_all(dir);
    }

    fn tempfile_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("redraft-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }
}

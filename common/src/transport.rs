//! QUIC transport between members: one connection per peer, one stream per message.
//!
//! Every process has one [`Endpoint`]. Calls to a peer reuse a single cached QUIC
//! connection (created on first use, replaced when it dies), so all Raft groups and
//! all proxy requests between two processes share one connection and one TLS
//! session; each request/response pair gets its own bidirectional stream, which
//! QUIC multiplexes without head-of-line blocking between groups.
//!
//! FRAMING. A request is the stream's whole send side (finished after writing), a
//! response likewise, each a [`crate::wire`] envelope, at most [`MAX_MESSAGE`] bytes.
//!
//! FAILURES. [`CallError::NotSent`] means the request never left this process
//! (no connection, no stream), so any request may be retried; every later failure
//! is [`CallError::Unknown`]: the peer may have acted on it.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use dashmap::DashMap;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::tls::{TlsIdentity, SERVER_NAME};
use crate::wire;

/// Largest message on a stream: a snapshot chunk (a few MiB) plus headroom.
pub const MAX_MESSAGE: usize = 64 * 1024 * 1024;

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
            send.write_all(&wire::encode(request))
                .await
                .map_err(|e| unknown(e.to_string()))?;
            send.finish().map_err(|e| unknown(e.to_string()))?;
            let bytes = recv
                .read_to_end(MAX_MESSAGE)
                .await
                .map_err(|e| unknown(e.to_string()))?;
            wire::decode(&bytes).map_err(|e| unknown(e.to_string()))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| unknown(format!("timed out after {timeout:?}")))?
    }

    /// Accepts connections until the endpoint closes, answering every stream with
    /// `handler(request bytes)`. Each stream is served on its own task.
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
                        let Ok(request) = recv.read_to_end(MAX_MESSAGE).await else {
                            return;
                        };
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

    fn tempfile_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("redraft-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }
}

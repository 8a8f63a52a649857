//! Redraft's stateless RESP proxy.
//!
//! | module | owns |
//! | --- | --- |
//! | [`connection`] | one client: parse, execute in order, reply (pipelining) |
//! | [`cmd`] | the command table: parsing to shard operations, split and merge |
//! | [`route`] | the routing-table cache, leader hints, retries |
//! | [`reply`] | proxy errors and their wire strings |
//! | [`info`] | INFO |
//! | [`session`] | one connection's state: HELLO, AUTH, CLIENT, the client list |
//! | [`acl`] | authentication, permission checks, the ACL command |
//! | [`admin`] | COMMAND, CONFIG, CLUSTER (as one node owning every slot) |
//! | [`transaction`] | MULTI/EXEC/WATCH: one atomic Raft entry per transaction |
//! | [`pubsub`] | Pub/Sub across proxies, through the shard nodes |
//!
//! The proxy keeps no data: any number of copies can run behind a load balancer.
//! It depends on neither RocksDB nor openraft.

pub mod acl;
pub mod admin;
pub mod blocking;
pub mod cmd;
pub mod config;
pub mod connection;
pub mod info;
pub mod metrics;
pub mod pubsub;
pub mod reply;
pub mod route;
pub mod scripts;
pub mod session;
pub mod transaction;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use redraft_common::pd_client::PdClient;
use redraft_common::resp::Frame;
use redraft_common::tls::TlsIdentity;
use redraft_common::transport::Endpoint;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::route::Router;

/// Most simultaneous client connections (Redis's default `maxclients`).
pub const MAX_CLIENTS: usize = 10_000;

/// Configuration of a proxy.
#[derive(Clone, Debug)]
pub struct Config {
    /// Client (RESP) listen address.
    pub listen: SocketAddr,
    /// Placement driver members.
    pub placement: Vec<SocketAddr>,
    /// Directory with `ca.pem` and this member's certificate.
    pub certs_dir: PathBuf,
    /// Name of this member's certificate in `certs_dir`.
    pub cert_name: String,
    /// Operator HTTP endpoint (`/metrics`, `/health`, `/ready`), if any.
    pub http: Option<SocketAddr>,
    /// RESP over TLS listen address (Redis's `tls-port`), if any; it presents
    /// this member's certificate.
    pub tls_listen: Option<SocketAddr>,
    /// TLS clients must present a certificate signed by the cluster CA
    /// (Redis's `tls-auth-clients yes`).
    pub tls_auth_clients: bool,
}

/// State shared by all connections.
pub struct Shared {
    /// Routing.
    pub router: Arc<Router>,
    /// Connected clients (CLIENT LIST, CLIENT KILL).
    pub clients: Arc<session::Clients>,
    /// Pub/Sub subscriptions and deliveries.
    pub pubsub: Arc<pubsub::PubSub>,
}

/// Runs the proxy until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
    let tls = TlsIdentity::load(&config.certs_dir, &config.cert_name)?;
    let endpoint = Endpoint::client(&tls)?;
    let router = Arc::new(Router::new(
        endpoint.clone(),
        PdClient::new(endpoint.clone(), config.placement.clone()),
    ));
    let watch = tokio::spawn(router.clone().watch());
    metrics::init();
    if let Some(addr) = config.http {
        let router = router.clone();
        let ready: redraft_common::http::Readiness = Arc::new(move || {
            if router.routable() {
                Ok(())
            } else {
                Err("waiting for the routing table and the shards' leaders".into())
            }
        });
        redraft_common::http::serve(addr, ready).await?;
    }
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let shared = Arc::new(Shared {
        pubsub: pubsub::PubSub::new(router.clone()),
        router,
        clients: Arc::default(),
    });
    info::mark_start();
    let limit = Arc::new(Semaphore::new(MAX_CLIENTS));
    tracing::info!(addr = %listener.local_addr()?, "proxy listening");
    let tls = match config.tls_listen {
        Some(addr) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls.client_port_config(config.tls_auth_clients)?));
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding {addr}"))?;
            tracing::info!(%addr, "proxy listening for TLS clients");
            Some(tokio::spawn(accept_tls(
                listener,
                acceptor,
                shared.clone(),
                limit.clone(),
            )))
        }
        None => None,
    };
    let accept = async {
        loop {
            let (mut socket, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            metrics::CONNECTIONS_ACCEPTED.inc();
            let Ok(permit) = limit.clone().try_acquire_owned() else {
                let reply = Frame::error("ERR max number of clients reached").to_bytes();
                tokio::spawn(async move {
                    let _ = socket.write_all(&reply).await;
                });
                continue;
            };
            let shared = shared.clone();
            tokio::spawn(async move {
                metrics::CONNECTIONS.inc();
                if let (Ok(peer), Ok(local)) = (socket.peer_addr(), socket.local_addr()) {
                    let _ = socket.set_nodelay(true);
                    let _ = connection::serve(shared.clone(), socket, peer, local).await;
                }
                metrics::CONNECTIONS.dec();
                drop(permit);
            });
        }
    };
    tokio::select! {
        _ = accept => {}
        _ = shutdown => {}
    }
    watch.abort();
    if let Some(tls) = tls {
        tls.abort();
    }
    endpoint.close();
    Ok(())
}

/// How long a TLS client has to finish its handshake.
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Accepts RESP-over-TLS clients; each is served like a plain one once its
/// handshake completes (a failed handshake closes only that connection).
async fn accept_tls(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    shared: Arc<Shared>,
    limit: Arc<Semaphore>,
) {
    loop {
        let Ok((socket, peer)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        metrics::CONNECTIONS_ACCEPTED.inc();
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            continue;
        };
        let (acceptor, shared) = (acceptor.clone(), shared.clone());
        tokio::spawn(async move {
            let Ok(local) = socket.local_addr() else { return };
            let _ = socket.set_nodelay(true);
            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(socket)).await {
                Ok(Ok(stream)) => {
                    metrics::CONNECTIONS.inc();
                    let _ = connection::serve(shared, stream, peer, local).await;
                    metrics::CONNECTIONS.dec();
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
            drop(permit);
        });
    }
}

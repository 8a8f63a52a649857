//! Client of the placement driver, used by shard nodes, proxies and `redraft ctl`.
//!
//! Knows every PD member's address and remembers which one answered as leader;
//! a member that is not the leader names it, and the client follows.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};

use crate::routing::RoutingTable;
use crate::transport::Endpoint;
use crate::wire::{PdRequest, PdResponse};

/// A handle to the placement driver.
#[derive(Clone)]
pub struct PdClient {
    endpoint: Endpoint,
    members: Arc<Vec<SocketAddr>>,
    preferred: Arc<AtomicUsize>,
}

impl PdClient {
    /// A client of the PD whose members listen at `members`.
    pub fn new(endpoint: Endpoint, members: Vec<SocketAddr>) -> PdClient {
        PdClient {
            endpoint,
            members: Arc::new(members),
            preferred: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Parses a comma-separated list of member addresses (`ip:port` or
    /// `host:port`, resolved now; see [`resolve`]).
    pub fn parse_members(list: &str) -> Result<Vec<SocketAddr>> {
        list.split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| resolve(s.trim()))
            .collect()
    }

    /// Sends `request` to the PD leader, trying every member once.
    pub async fn call(&self, request: &PdRequest, timeout: Duration) -> Result<PdResponse> {
        let n = self.members.len();
        if n == 0 {
            bail!("no placement driver address configured");
        }
        let start = self.preferred.load(Ordering::Relaxed);
        let mut last_error = anyhow!("no placement member answered");
        for attempt in 0..n {
            let i = (start + attempt) % n;
            match self
                .endpoint
                .call::<_, PdResponse>(self.members[i], request, timeout)
                .await
            {
                Ok(PdResponse::NotLeader { leader }) => {
                    if let Some(j) = leader
                        .and_then(|a| a.parse().ok())
                        .and_then(|a: SocketAddr| self.members.iter().position(|m| *m == a))
                    {
                        self.preferred.store(j, Ordering::Relaxed);
                    }
                    last_error = anyhow!("placement member {} is not the leader", self.members[i]);
                }
                Ok(response) => {
                    self.preferred.store(i, Ordering::Relaxed);
                    return Ok(response);
                }
                Err(e) => last_error = e.into(),
            }
        }
        Err(last_error)
    }

    /// The routing table once it is newer than `(version, leaders)`, or after
    /// `wait` at the latest.
    pub async fn routing(&self, version: u64, leaders: u64, wait: Duration) -> Result<RoutingTable> {
        let request = PdRequest::Routing {
            known_version: version,
            known_leaders: leaders,
            wait_ms: wait.as_millis() as u64,
        };
        match self.call(&request, wait + Duration::from_secs(3)).await? {
            PdResponse::Routing(table) => Ok(table),
            other => bail!("unexpected placement answer {other:?}"),
        }
    }
}

/// How long start-up waits for a member's name to resolve: in Kubernetes a
/// StatefulSet pod's DNS name appears only once the pod exists.
const RESOLVE_FOR: Duration = Duration::from_secs(120);

/// Resolves `host:port` (or parses `ip:port`), retrying while the name does not
/// resolve yet. For start-up only: it blocks the calling thread.
pub fn resolve(addr: &str) -> Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    if let Ok(parsed) = addr.parse() {
        return Ok(parsed);
    }
    let deadline = std::time::Instant::now() + RESOLVE_FOR;
    loop {
        match addr.to_socket_addrs().map(|mut a| a.next()) {
            Ok(Some(resolved)) => return Ok(resolved),
            Ok(None) | Err(_) if std::time::Instant::now() < deadline => std::thread::sleep(Duration::from_secs(1)),
            Ok(None) => bail!("{addr} resolves to no address"),
            Err(e) => bail!("cannot resolve {addr}: {e}"),
        }
    }
}

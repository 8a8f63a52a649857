//! A local cluster under one folder: `redraft up` and `redraft down`.
//!
//! `up` creates the cluster CA and member certificates, then starts one placement
//! driver, N shard nodes and a proxy, each its own child process of this binary
//! with its data and log under the folder, writes `up.json` (members, addresses,
//! pids, logs) and prints `ready ...` once the proxy answers commands. It then
//! supervises: a member that dies is reported and the others keep running;
//! Ctrl-C or SIGTERM stops every member cleanly (proxy first, placement last),
//! and once every member has exited (`redraft down` from another shell) `up`
//! exits too.
//! `--detach` returns after `ready` and leaves the members running
//! (`redraft down` stops them). Running `up` again on the same folder restarts the
//! same members on the same ports with their data.
//!
//! The integration tests drive the same [`MemberSpec`]s, so what they test is what
//! `up` runs.
//!
//! ```text
//! DIR/up.json  DIR/certs/  DIR/placement-1/  DIR/node-1/ ...  DIR/logs/<member>.log
//! ```

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::{Deserialize, Serialize};

/// Arguments of `redraft up`.
#[derive(Args, Debug)]
pub struct UpArgs {
    /// `add-node`: start one more shard node in the running cluster of `--dir`
    /// and add it to `up.json` (the scheduler then moves replicas onto it).
    #[arg(value_parser = ["add-node"])]
    pub action: Option<String>,
    /// The cluster's folder (data, certificates, logs, `up.json`).
    #[arg(long, default_value = "redraft-data")]
    pub dir: PathBuf,
    /// The proxy's RESP port on 127.0.0.1.
    #[arg(long, default_value_t = 6379)]
    pub port: u16,
    /// First QUIC port: the placement driver gets it, nodes the next ones.
    #[arg(long, default_value_t = 7100)]
    pub base_port: u16,
    /// Number of shard nodes.
    #[arg(long, default_value_t = 3)]
    pub nodes: u16,
    /// Placement-driver members (1, or 3 to survive the loss of one).
    #[arg(long, default_value_t = 1)]
    pub placement_replicas: u16,
    /// Shards created at bootstrap (default: 1 per node).
    #[arg(long)]
    pub shards: Option<u32>,
    /// `always` or `interval=<ms>`.
    #[arg(long, default_value = "always")]
    pub fsync: String,
    /// Return once the cluster is ready and leave it running in the background.
    #[arg(long)]
    pub detach: bool,
    /// An extra argument for every shard node, e.g. `--node-arg=--quiesce-after-secs=0`
    /// (repeatable; kept in `up.json` for restarts).
    #[arg(long = "node-arg", allow_hyphen_values = true)]
    pub node_args: Vec<String>,
    /// An extra argument for the proxy, e.g. `--proxy-arg=--tls-listen=127.0.0.1:6380`
    /// (repeatable; kept in `up.json` for restarts).
    #[arg(long = "proxy-arg", allow_hyphen_values = true)]
    pub proxy_args: Vec<String>,
    /// Once the cluster is ready, load this backup (`DIR/TAG` of `redraft
    /// ctl backup`) into it; the cluster must hold no keys.
    #[arg(long)]
    pub restore: Option<PathBuf>,
    /// Tokio worker threads of each member, from the global `--worker-threads`
    /// (default: one per core in every member).
    #[arg(skip)]
    pub worker_threads: Option<NonZeroUsize>,
}

/// What kind of member a process is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Placement driver.
    Placement,
    /// Shard node.
    Node,
    /// RESP proxy.
    Proxy,
}

/// One member of a local cluster: enough to start (and restart) it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MemberSpec {
    /// Its role.
    pub role: Role,
    /// Member id (node id, PD member id; 1 for the proxy).
    pub id: u64,
    /// Certificate and folder name, e.g. `node-2`.
    pub name: String,
    /// Listen address (QUIC for PD and nodes, TCP for the proxy).
    pub addr: SocketAddr,
    /// Process id while running.
    pub pid: Option<u32>,
    /// Its log file.
    pub log: PathBuf,
    /// Its operator HTTP endpoint (`/metrics`, `/health`, `/ready`).
    pub http: Option<SocketAddr>,
}

impl MemberSpec {
    /// The ports it listens on: its address's and its HTTP endpoint's.
    fn ports(&self) -> impl Iterator<Item = u16> {
        [Some(self.addr.port()), self.http.map(|h| h.port())]
            .into_iter()
            .flatten()
    }
}

/// Everything about a local cluster, written to `up.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Cluster {
    /// The cluster's folder.
    pub dir: PathBuf,
    /// Placement driver members.
    pub placement: Vec<MemberSpec>,
    /// Shard nodes.
    pub nodes: Vec<MemberSpec>,
    /// Proxies.
    pub proxy: Vec<MemberSpec>,
    /// Shards created at bootstrap (0: the placement driver's default, 1 per node).
    pub shards: u32,
    /// Fsync policy of the nodes.
    pub fsync: String,
    /// Extra arguments for every shard node (tests use it for small snapshot intervals).
    #[serde(default)]
    pub node_args: Vec<String>,
    /// Extra arguments for every placement driver member (tests set split thresholds).
    #[serde(default)]
    pub placement_args: Vec<String>,
    /// Extra arguments for the proxies (TLS, for instance).
    #[serde(default)]
    pub proxy_args: Vec<String>,
    /// Tokio worker threads of each member (`None`: one per core).
    #[serde(default)]
    pub worker_threads: Option<NonZeroUsize>,
}

impl Cluster {
    /// A new layout: `placement` PD members from `base_port`, nodes after them,
    /// one proxy on `proxy_port`; HTTP endpoints from `base_port + 50` in the same
    /// order (PD members, nodes, proxy).
    pub fn new(dir: &Path, proxy_port: u16, base_port: u16, nodes: u16, placement: u16) -> Cluster {
        let addr = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        let member = |role, id: u64, name: String, port, http: u16| MemberSpec {
            role,
            id,
            log: dir.join("logs").join(format!("{name}.log")),
            name,
            addr: addr(port),
            pid: None,
            http: Some(addr(base_port + 50 + http)),
        };
        Cluster {
            dir: dir.to_path_buf(),
            placement: (1..=placement)
                .map(|k| {
                    member(
                        Role::Placement,
                        u64::from(k),
                        format!("placement-{k}"),
                        base_port + k - 1,
                        k - 1,
                    )
                })
                .collect(),
            nodes: (1..=nodes)
                .map(|i| {
                    member(
                        Role::Node,
                        u64::from(i),
                        format!("node-{i}"),
                        base_port + placement - 1 + i,
                        placement - 1 + i,
                    )
                })
                .collect(),
            proxy: vec![member(Role::Proxy, 1, "proxy-1".into(), proxy_port, placement + nodes)],
            shards: 0,
            fsync: "always".into(),
            node_args: Vec::new(),
            placement_args: Vec::new(),
            proxy_args: Vec::new(),
            worker_threads: None,
        }
    }

    /// Path of `up.json`.
    pub fn file(dir: &Path) -> PathBuf {
        dir.join("up.json")
    }

    /// Loads `up.json`.
    pub fn load(dir: &Path) -> Result<Cluster> {
        let path = Self::file(dir);
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        Ok(serde_json::from_str(&text)?)
    }

    /// Writes `up.json`.
    pub fn save(&self) -> Result<()> {
        std::fs::write(Self::file(&self.dir), serde_json::to_string_pretty(self)?)?;
        Ok(())
    }

    /// The certificate directory.
    pub fn certs(&self) -> PathBuf {
        self.dir.join("certs")
    }

    /// Every member.
    pub fn members(&self) -> impl Iterator<Item = &MemberSpec> {
        self.placement.iter().chain(&self.nodes).chain(&self.proxy)
    }

    /// Every member, mutable.
    pub fn members_mut(&mut self) -> impl Iterator<Item = &mut MemberSpec> {
        self.placement
            .iter_mut()
            .chain(self.nodes.iter_mut())
            .chain(self.proxy.iter_mut())
    }

    /// Creates the CA and every member's certificate (idempotent).
    pub fn ensure_certs(&self) -> Result<()> {
        let names: Vec<String> = self
            .members()
            .map(|m| m.name.clone())
            .chain(["ctl".to_string()])
            .collect();
        redraft_common::tls::ensure_certs(&self.certs(), &names)
    }

    fn placement_list(&self) -> String {
        self.placement
            .iter()
            .map(|m| m.addr.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The command that starts `member` (binary `exe`), logging to its log file.
    pub fn command(&self, exe: &Path, member: &MemberSpec) -> Command {
        let mut cmd = Command::new(exe);
        let data = self.dir.join(&member.name);
        let certs = self.certs();
        match member.role {
            Role::Placement => {
                let members = self
                    .placement
                    .iter()
                    .map(|m| format!("{}={}", m.id, m.addr))
                    .collect::<Vec<_>>()
                    .join(",");
                cmd.arg("placement")
                    .args(["--id", &member.id.to_string(), "--listen", &member.addr.to_string()])
                    .args(["--members", &members])
                    .args(["--initial-nodes", &self.nodes.len().min(3).to_string()])
                    .args(["--shards", &self.shards.to_string()])
                    .args(["--replicas", &self.nodes.len().min(3).to_string()])
                    // Every shard needs a virtual node of its own.
                    .args(["--vnodes", &self.shards.max(1024).to_string()])
                    .args(&self.placement_args);
            }
            Role::Node => {
                cmd.arg("node")
                    .args(["--id", &member.id.to_string(), "--listen", &member.addr.to_string()])
                    .args(["--placement", &self.placement_list(), "--fsync", &self.fsync])
                    .args(&self.node_args);
            }
            Role::Proxy => {
                cmd.arg("proxy")
                    .args([
                        "--listen",
                        &member.addr.to_string(),
                        "--placement",
                        &self.placement_list(),
                    ])
                    .args(&self.proxy_args);
            }
        }
        if member.role != Role::Proxy {
            cmd.arg("--data").arg(&data);
        }
        cmd.arg("--certs").arg(&certs).args(["--cert-name", &member.name]);
        if let Some(threads) = self.worker_threads {
            cmd.args(["--worker-threads", &threads.to_string()]);
        }
        if let Some(http) = member.http {
            cmd.args(["--http", &http.to_string()]);
        }
        cmd
    }

    /// Starts `member` detached (own process group, output appended to its log).
    pub fn spawn(&self, exe: &Path, member: &MemberSpec) -> Result<Child> {
        std::fs::create_dir_all(self.dir.join("logs"))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&member.log)?;
        use std::os::unix::process::CommandExt;
        let child = self
            .command(exe, member)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}", member.name))?;
        Ok(child)
    }
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.split_whitespace().nth(2).is_none_or(|state| state != "Z"))
        .unwrap_or(false)
}

/// Sends one RESP command over a fresh connection and returns the raw reply.
pub fn resp_call(addr: SocketAddr, args: &[&str], timeout: Duration) -> Result<redraft_common::resp::Frame> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    let request = redraft_common::resp::Frame::Array(
        args.iter()
            .map(|a| redraft_common::resp::Frame::bulk(a.as_bytes()))
            .collect(),
    );
    stream.write_all(&request.to_bytes())?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some((frame, _)) = redraft_common::resp::Frame::parse(&buf)? {
            return Ok(frame);
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            bail!("connection closed");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Waits until the proxy at `addr` serves a cluster-wide command (every shard has
/// a leader), or `timeout` passes. Something else answering on the port (another
/// Redis) is an error, not readiness.
pub fn wait_ready(addr: SocketAddr, timeout: Duration) -> Result<()> {
    wait_ready_unless(addr, timeout, &std::sync::atomic::AtomicBool::new(false))
}

/// [`wait_ready`], giving up as soon as `stop` is set.
fn wait_ready_unless(addr: SocketAddr, timeout: Duration, stop: &std::sync::atomic::AtomicBool) -> Result<()> {
    use redraft_common::resp::Frame;
    let deadline = Instant::now() + timeout;
    let mut last = String::from("no answer");
    while Instant::now() < deadline && !stop.load(std::sync::atomic::Ordering::Relaxed) {
        match resp_call(addr, &["INFO", "server"], Duration::from_secs(10)) {
            Ok(Frame::Bulk(info)) if !String::from_utf8_lossy(&info).contains("redraft_version") => {
                bail!("{addr} is served by something other than Redraft (another Redis?)")
            }
            Ok(Frame::Bulk(_)) => match resp_call(addr, &["DBSIZE"], Duration::from_secs(10)) {
                Ok(Frame::Integer(_)) => return Ok(()),
                Ok(other) => last = format!("{other:?}"),
                Err(e) => last = e.to_string(),
            },
            Ok(other) => last = format!("{other:?}"),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!("cluster not ready after {timeout:?}: {last}")
}

/// `redraft up`.
pub async fn up(args: UpArgs) -> Result<()> {
    let exe = std::env::current_exe()?;
    if args.action.as_deref() == Some("add-node") {
        return add_node(&exe, &args.dir);
    }
    std::fs::create_dir_all(&args.dir)?;
    let dir = args.dir.canonicalize()?;
    let mut cluster = match Cluster::load(&dir) {
        Ok(existing) => {
            if let Some(m) = existing.members().find(|m| m.pid.is_some_and(alive)) {
                bail!(
                    "{} is already running (pid {}); run `redraft down --dir {}` first",
                    m.name,
                    m.pid.unwrap_or(0),
                    dir.display()
                );
            }
            existing
        }
        Err(_) => {
            let mut c = Cluster::new(
                &dir,
                args.port,
                args.base_port,
                args.nodes,
                args.placement_replicas.max(1),
            );
            c.shards = args.shards.unwrap_or(0);
            c.fsync = args.fsync.clone();
            c.node_args = args.node_args.clone();
            c.proxy_args = args.proxy_args.clone();
            c.worker_threads = args.worker_threads;
            c
        }
    };
    cluster.ensure_certs()?;
    let specs: Vec<MemberSpec> = cluster.members().cloned().collect();
    // A member that cannot bind its port exits at once; say so before starting any.
    for spec in &specs {
        for port in spec.ports() {
            if !port_is_free(port) {
                bail!(
                    "port {port} of {} is in use on 127.0.0.1; choose others with --port and --base-port",
                    spec.name
                );
            }
        }
    }
    let mut children = Vec::new();
    for spec in &specs {
        let child = cluster.spawn(&exe, spec)?;
        if let Some(m) = cluster.members_mut().find(|m| m.name == spec.name) {
            m.pid = Some(child.id());
        }
        children.push((spec.name.clone(), child));
    }
    cluster.save()?;
    let proxy = cluster.proxy[0].addr;
    match until_ready(proxy, &mut children).await {
        Ok(true) => {}
        Ok(false) => {
            eprintln!("stopped before the cluster was ready");
            return down(&dir);
        }
        Err(e) => {
            eprintln!("{e:#}; logs are in {}", dir.join("logs").display());
            down(&dir)?;
            return Err(e);
        }
    }
    if let Some(backup) = &args.restore {
        if let Err(e) = restore_into(&cluster, proxy, backup).await {
            eprintln!("restore failed: {e:#}");
            down(&dir)?;
            return Err(e);
        }
    }
    println!(
        "ready: redis-cli -p {} (endpoint {proxy}; data and logs in {})",
        proxy.port(),
        dir.display()
    );
    if args.detach {
        return Ok(());
    }
    supervise(cluster, children).await
}

/// `up --restore`: loads `backup` through the placement driver and `proxy`.
async fn restore_into(cluster: &Cluster, proxy: std::net::SocketAddr, backup: &Path) -> Result<()> {
    let tls = redraft_common::tls::TlsIdentity::load(&cluster.certs(), "ctl")?;
    let endpoint = redraft_common::transport::Endpoint::client(&tls)?;
    let members: Vec<String> = cluster.placement.iter().map(|m| m.addr.to_string()).collect();
    let pd = redraft_common::pd_client::PdClient::new(
        endpoint,
        redraft_common::pd_client::PdClient::parse_members(&members.join(","))?,
    );
    crate::backup::restore(&pd, &proxy.to_string(), backup).await
}

/// Whether a member's exit is a stop asked for (`redraft down` sends SIGTERM;
/// a member still starting may not have its handler yet and dies of it) rather
/// than a failure.
fn stopped_cleanly(status: std::process::ExitStatus) -> bool {
    use std::os::unix::process::ExitStatusExt;
    const SIGTERM: i32 = 15;
    status.success() || status.signal() == Some(SIGTERM)
}

/// Waits for the proxy at `proxy` to serve (at most 2 minutes): `true` once it
/// does, `false` when the cluster is being stopped first (Ctrl-C, SIGTERM, or a
/// member that exited cleanly: `redraft down` from another shell), an error
/// when a member failed or the wait timed out.
async fn until_ready(proxy: SocketAddr, children: &mut [(String, Child)]) -> Result<bool> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The blocking wait must end when this does: the runtime waits for it on exit.
    struct StopOnDrop(std::sync::Arc<std::sync::atomic::AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
    let _stop = StopOnDrop(stop.clone());
    let mut waiting = tokio::task::spawn_blocking(move || wait_ready_unless(proxy, Duration::from_secs(120), &stop));
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            ready = &mut waiting => return ready?.map(|()| true),
            _ = term.recv() => return Ok(false),
            _ = interrupt.recv() => return Ok(false),
            _ = tick.tick() => {
                for (name, child) in children.iter_mut() {
                    if let Ok(Some(status)) = child.try_wait() {
                        if stopped_cleanly(status) {
                            return Ok(false);
                        }
                        bail!("{name} exited ({status}) before the cluster was ready");
                    }
                }
            }
        }
    }
}

/// `redraft up --dir DIR add-node`: one more shard node, detached, on the next
/// free ports after the existing members.
fn add_node(exe: &Path, dir: &Path) -> Result<()> {
    let dir = dir.canonicalize()?;
    let mut cluster = Cluster::load(&dir)?;
    let last = cluster
        .nodes
        .last()
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no node in {}", dir.display()))?;
    let used: Vec<u16> = cluster.members().flat_map(MemberSpec::ports).collect();
    let next = |from: u16| (from..u16::MAX).find(|p| !used.contains(p) && port_is_free(*p));
    let port = next(last.addr.port() + 1).ok_or_else(|| anyhow::anyhow!("no free port"))?;
    let http = next(last.http.map_or(port + 100, |h| h.port() + 1).max(port + 1))
        .ok_or_else(|| anyhow::anyhow!("no free port"))?;
    let id = cluster.nodes.iter().map(|n| n.id).max().unwrap_or(0) + 1;
    let mut spec = last;
    spec.id = id;
    spec.name = format!("node-{id}");
    spec.addr = SocketAddr::from(([127, 0, 0, 1], port));
    spec.http = Some(SocketAddr::from(([127, 0, 0, 1], http)));
    spec.log = dir.join("logs").join(format!("{}.log", spec.name));
    cluster.nodes.push(spec.clone());
    cluster.ensure_certs()?;
    let child = cluster.spawn(exe, &spec)?;
    if let Some(m) = cluster.nodes.last_mut() {
        m.pid = Some(child.id());
    }
    cluster.save()?;
    println!(
        "added {} (pid {}, QUIC {}, HTTP {}); watch `redraft ctl nodes` as replicas move onto it",
        spec.name,
        child.id(),
        spec.addr,
        http
    );
    Ok(())
}

/// Whether `port` is free on 127.0.0.1 for both TCP (proxy, HTTP) and UDP (QUIC).
fn port_is_free(port: u16) -> bool {
    std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// Watches the members until Ctrl-C or SIGTERM (then stops them all, in order),
/// or until every member has exited (`redraft down` from another shell, or
/// failures): then returns, failing with the exit status of the first member
/// that failed.
async fn supervise(mut cluster: Cluster, mut children: Vec<(String, Child)>) -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut first_failure: Option<(String, std::process::ExitStatus)> = None;
    loop {
        tokio::select! {
            _ = interrupt.recv() => break,
            _ = term.recv() => break,
            _ = tick.tick() => {
                let mut changed = false;
                children.retain_mut(|(name, child)| match child.try_wait() {
                    Ok(Some(status)) => {
                        changed = true;
                        if !stopped_cleanly(status) && first_failure.is_none() {
                            first_failure = Some((name.clone(), status));
                        }
                        eprintln!("member {name} (pid {}) exited ({status})", child.id());
                        false
                    }
                    _ => true,
                });
                if changed {
                    for m in cluster.members_mut() {
                        if !children.iter().any(|(n, _)| *n == m.name) {
                            m.pid = None;
                        }
                    }
                    cluster.save()?;
                    if children.is_empty() {
                        eprintln!("every member has exited");
                        return match first_failure {
                            None => Ok(()),
                            Some((name, status)) => {
                                use std::os::unix::process::ExitStatusExt;
                                eprintln!("the first to fail was {name} ({status})");
                                std::process::exit(status.code().unwrap_or(128 + status.signal().unwrap_or(0)))
                            }
                        };
                    }
                    eprintln!("the others keep running; `redraft down --dir {}` stops them", cluster.dir.display());
                }
            }
        }
    }
    eprintln!("stopping the cluster");
    tokio::task::spawn_blocking(move || down(&cluster.dir)).await?
}

/// `redraft down`: SIGTERM the proxies, then the nodes (which hand their
/// leaderships over), then the placement driver; a group still running after its
/// grace period (3 s, 10 s, 3 s) is killed, so `down` ends within 16 s.
pub fn down(dir: &Path) -> Result<()> {
    let mut cluster = Cluster::load(dir)?;
    for (group, grace) in [(&cluster.proxy, 3), (&cluster.nodes, 10), (&cluster.placement, 3)] {
        let pids: Vec<u32> = group.iter().filter_map(|m| m.pid).filter(|p| alive(*p)).collect();
        for pid in &pids {
            let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
        }
        let deadline = Instant::now() + Duration::from_secs(grace);
        while pids.iter().any(|p| alive(*p)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        for pid in pids.iter().filter(|p| alive(**p)) {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
        }
    }
    for m in cluster.members_mut() {
        m.pid = None;
    }
    cluster.save()?;
    println!("redraft in {} is down", dir.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args_of(cluster: &Cluster, member: &MemberSpec) -> Vec<String> {
        cluster
            .command(Path::new("redraft"), member)
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn members_start_with_the_cluster_worker_threads() {
        let mut cluster = Cluster::new(Path::new("/tmp/x"), 6379, 7100, 3, 1);
        for member in cluster.members() {
            assert!(!args_of(&cluster, member).contains(&"--worker-threads".to_string()));
        }
        cluster.worker_threads = NonZeroUsize::new(3);
        for member in cluster.members() {
            let args = args_of(&cluster, member);
            let at = args.iter().position(|a| a == "--worker-threads").expect("flag passed");
            assert_eq!(args[at + 1], "3", "{args:?}");
        }
    }
}

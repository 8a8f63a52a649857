//! Multi-process cluster harness: the real `redraft` binary, real processes on
//! free 127.0.0.1 ports in a temporary folder, killed when the test ends.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use redraft::local::{Cluster, MemberSpec};
use redraft_common::resp::Frame;

/// Next port to try; below the kernel's ephemeral range (32768 and up), so the
/// client sockets of other tests, which get ephemeral ports, never take a port
/// handed out here before its process binds it. Never the same port twice in
/// one test run.
static NEXT_PORT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// A free port on 127.0.0.1 (TCP and UDP both free at the time of the call).
/// A command running `tests/py/<script>` with the redis-py virtualenv's
/// Python (`REDRAFT_VENV`, else the one scripts/test.sh creates). The script
/// is found from the directory cargo runs the test in, not the one the test
/// was built in: a target dir shared between clones may hold a binary built
/// elsewhere.
pub fn python(script: &str) -> std::process::Command {
    let venv = std::env::var("REDRAFT_VENV")
        .unwrap_or_else(|_| format!("{}/.cache/redraft/venv", std::env::var("HOME").unwrap_or_default()));
    let root = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
    let mut command = std::process::Command::new(format!("{venv}/bin/python"));
    command.arg(format!("{root}/tests/py/{script}"));
    command
}

pub fn free_port() -> u16 {
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    let _ = NEXT_PORT.compare_exchange(
        0,
        FIRST + (std::process::id() % 20) * 600,
        std::sync::atomic::Ordering::SeqCst,
        std::sync::atomic::Ordering::SeqCst,
    );
    loop {
        let n = NEXT_PORT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let port = (FIRST + (n - FIRST) % SPAN) as u16;
        let tcp = std::net::TcpListener::bind(("127.0.0.1", port));
        if tcp.is_ok() && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A running local cluster owned by one test.
pub struct TestCluster {
    /// Layout and member specs.
    pub cluster: Cluster,
    children: Vec<(String, Child)>,
    _dir: tempfile::TempDir,
}

fn exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_redraft"))
}

impl TestCluster {
    /// Starts a PD, `nodes` shard nodes and a proxy; waits until every shard serves.
    pub fn start(nodes: u16) -> TestCluster {
        Self::start_with(nodes, 1, &[])
    }

    /// Like [`TestCluster::start`], with `placement` PD members and extra
    /// arguments for every shard node.
    pub fn start_with(nodes: u16, placement: u16, node_args: &[&str]) -> TestCluster {
        Self::start_configured(nodes, placement, node_args, &[])
    }

    /// Three nodes and a proxy started with `proxy_args`.
    pub fn start_with_proxy_args(proxy_args: &[&str]) -> TestCluster {
        Self::start_all(3, 1, 6, &[], &[], proxy_args)
    }

    /// `nodes` nodes and `shards` shards at bootstrap (the others start 6).
    pub fn start_with_shards(nodes: u16, shards: u32) -> TestCluster {
        Self::start_all(nodes, 1, shards, &[], &[], &[])
    }

    /// Like [`TestCluster::start_with`], with extra arguments for the PD members.
    pub fn start_configured(nodes: u16, placement: u16, node_args: &[&str], placement_args: &[&str]) -> TestCluster {
        Self::start_all(nodes, placement, 6, node_args, placement_args, &[])
    }

    fn start_all(
        nodes: u16,
        placement: u16,
        shards: u32,
        node_args: &[&str],
        placement_args: &[&str],
        proxy_args: &[&str],
    ) -> TestCluster {
        let dir = tempfile::tempdir().unwrap();
        let mut cluster = Cluster::new(dir.path(), free_port(), 0, nodes, placement);
        for member in cluster.placement.iter_mut().chain(cluster.nodes.iter_mut()) {
            member.addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        }
        for member in cluster
            .placement
            .iter_mut()
            .chain(cluster.nodes.iter_mut())
            .chain(cluster.proxy.iter_mut())
        {
            member.http = Some(SocketAddr::from(([127, 0, 0, 1], free_port())));
        }
        cluster.shards = shards;
        cluster.node_args = node_args.iter().map(|s| s.to_string()).collect();
        cluster.placement_args = placement_args.iter().map(|s| s.to_string()).collect();
        cluster.proxy_args = proxy_args.iter().map(|s| s.to_string()).collect();
        cluster.ensure_certs().unwrap();
        let mut tc = TestCluster {
            cluster,
            children: Vec::new(),
            _dir: dir,
        };
        let specs: Vec<MemberSpec> = tc.cluster.members().cloned().collect();
        for spec in specs {
            tc.spawn(&spec);
        }
        tc.wait_ready();
        tc
    }

    fn spawn(&mut self, spec: &MemberSpec) {
        let child = self.cluster.spawn(&exe(), spec).unwrap();
        self.children.push((spec.name.clone(), child));
    }

    /// The proxy's address.
    pub fn proxy(&self) -> SocketAddr {
        self.cluster.proxy[0].addr
    }

    /// Waits until every shard has a leader and the proxy answers.
    pub fn wait_ready(&self) {
        if let Err(e) = redraft::local::wait_ready(self.proxy(), Duration::from_secs(60)) {
            self.dump_logs();
            panic!("{e:#}");
        }
    }

    /// A member's log so far.
    pub fn log_of(&self, name: &str) -> String {
        let member = self.cluster.members().find(|m| m.name == name).unwrap();
        std::fs::read_to_string(&member.log).unwrap_or_default()
    }

    /// Prints every member's log (on failure).
    pub fn dump_logs(&self) {
        for m in self.cluster.members() {
            let log = std::fs::read_to_string(&m.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().filter(|l| !l.contains("openraft")).take(60).collect();
            eprintln!("----- {} -----", m.name);
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }

    /// The running process of member `name`, no longer tracked (nor killed on drop).
    fn take_child(&mut self, name: &str) -> std::process::Child {
        let i = self
            .children
            .iter()
            .position(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("{name} not running"));
        self.children.remove(i).1
    }

    /// `kill -9` of a member by name (e.g. `node-2`).
    pub fn kill9(&mut self, name: &str) {
        let mut child = self.take_child(name);
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM to a member by name; waits until it has exited (at most 20 s).
    pub fn terminate(&mut self, name: &str) {
        let mut child = self.take_child(name);
        send_signal(&child, "-TERM");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while child.try_wait().unwrap().is_none() {
            if std::time::Instant::now() >= deadline {
                let _ = child.kill();
                panic!("{name} did not exit within 20 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts a stopped member again with the same data.
    pub fn restart(&mut self, name: &str) {
        let spec = self.cluster.members().find(|m| m.name == name).unwrap().clone();
        self.spawn(&spec);
    }

    /// Names of every member.
    pub fn member_names(&self) -> Vec<String> {
        self.cluster.members().map(|m| m.name.clone()).collect()
    }

    /// The cluster's certificate folder (CA and member certificates).
    pub fn certs(&self) -> std::path::PathBuf {
        self.cluster.certs()
    }

    /// The cluster's folder.
    pub fn dir(&self) -> &Path {
        &self.cluster.dir
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A raw RESP connection: sends requests, reads whole reply frames.
pub struct Resp {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Resp {
    /// Connects to `addr`.
    pub fn connect(addr: SocketAddr) -> Resp {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        Resp {
            stream,
            buf: Vec::new(),
        }
    }

    /// Sends raw bytes.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Sends one command.
    pub fn send(&mut self, args: &[&[u8]]) {
        let frame = Frame::Array(args.iter().map(|a| Frame::bulk(a.to_vec())).collect());
        self.send_raw(&frame.to_bytes());
    }

    /// Reads one reply; `None` when the server closed the connection.
    pub fn read(&mut self) -> Option<Frame> {
        let mut chunk = [0u8; 65536];
        loop {
            if let Some((frame, used)) = Frame::parse(&self.buf).unwrap() {
                self.buf.drain(..used);
                return Some(frame);
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("read failed: {e}"),
            }
        }
    }

    /// Reads one frame if one arrives within `wait`; `None` otherwise (or
    /// when the server closed the connection).
    pub fn read_within(&mut self, wait: Duration) -> Option<Frame> {
        if let Some((frame, used)) = Frame::parse(&self.buf).unwrap() {
            self.buf.drain(..used);
            return Some(frame);
        }
        self.stream.set_read_timeout(Some(wait)).unwrap();
        let mut chunk = [0u8; 65536];
        let got = match self.stream.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => 0,
            Err(e) => panic!("read failed: {e}"),
        };
        self.stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        if got == 0 {
            return None;
        }
        self.buf.extend_from_slice(&chunk[..got]);
        self.read_within(wait)
    }

    /// Sends a command given as space-separated words and reads its reply.
    pub fn cmd(&mut self, line: &str) -> Frame {
        self.send_raw(&command_bytes(line));
        self.read().expect("connection closed")
    }

    /// Sends `SCAN ...` (the whole command line) and returns the next cursor
    /// and the page's keys.
    pub fn scan_page(&mut self, line: &str) -> (String, Vec<String>) {
        let reply = self.cmd(line);
        let Frame::Array(parts) = reply else {
            panic!("{line}: {reply:?}")
        };
        let [Frame::Bulk(next), Frame::Array(keys)] = &parts[..] else {
            panic!("{line}: {parts:?}")
        };
        let keys = keys
            .iter()
            .map(|key| match key {
                Frame::Bulk(key) => String::from_utf8(key.clone()).unwrap(),
                other => panic!("{line}: key {other:?}"),
            })
            .collect();
        (String::from_utf8(next.clone()).unwrap(), keys)
    }
}

/// The RESP encoding of a command given as space-separated words (to build
/// pipelines).
pub fn command_bytes(line: &str) -> Vec<u8> {
    Frame::Array(line.split(' ').map(Frame::bulk).collect()).to_bytes()
}

/// Every live string a (stopped) shard node holds in its RocksDB, by user key.
pub fn stored_strings(node_dir: &Path) -> std::collections::HashMap<String, String> {
    use redraft_raft_storage::engine::CF_DATA;
    let engine = redraft_raft_storage::Engine::open(&node_dir.join("db"), redraft_raft_storage::FsyncPolicy::Always)
        .expect("open the node's RocksDB");
    let db = engine.db();
    let mut out = std::collections::HashMap::new();
    for item in db.iterator_cf(engine.cf(CF_DATA), rocksdb::IteratorMode::Start) {
        let (key, value) = item.unwrap();
        if !redraft_node::storage::is_key_record(&key) {
            continue;
        }
        let value = redraft_node::storage::Value::decode(&value);
        if value.kind == redraft_node::storage::Kind::String {
            let user_key = redraft_node::storage::user_key(&key);
            out.insert(
                String::from_utf8_lossy(user_key).into_owned(),
                String::from_utf8_lossy(&value.payload).into_owned(),
            );
        }
    }
    out
}

/// Runs `redraft ctl <args>` against the cluster's placement driver.
pub fn ctl(cluster: &TestCluster, args: &[&str]) -> std::process::Output {
    let pd = cluster
        .cluster
        .placement
        .iter()
        .map(|m| m.addr.to_string())
        .collect::<Vec<_>>()
        .join(",");
    std::process::Command::new(exe())
        .arg("ctl")
        .args(args)
        .args(["--placement", &pd, "--cert-name", "ctl", "--certs"])
        .arg(cluster.cluster.certs())
        .output()
        .unwrap()
}

/// Runs `redraft ctl verify` until every replica of every shard took part
/// (a replica that just caught up from a snapshot may have skipped the digest
/// entry) and asserts that all of them agree; returns the output.
pub fn verify_agrees(cluster: &TestCluster) -> String {
    for attempt in 0..5 {
        let out = ctl(cluster, &["verify"]);
        let said = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "replicas differ:\n{said}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let shards = routing_table(cluster).shards.len();
        let agreeing = said.lines().filter(|l| l.contains(": agree at index")).count();
        if !said.contains("not compared") && agreeing == shards {
            return said;
        }
        eprintln!("verify, attempt {attempt}, incomplete:\n{said}");
        std::thread::sleep(Duration::from_secs(1));
    }
    panic!("no complete verify in 5 attempts");
}

/// The routing table as `redraft ctl routing` prints it.
pub fn routing_table(cluster: &TestCluster) -> redraft_common::routing::RoutingTable {
    let out = ctl(cluster, &["routing"]);
    assert!(
        out.status.success(),
        "ctl routing failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Counter for unique iptables chain names within this test process.
static CHAIN_SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Real network cuts between members on loopback, with an iptables chain of our
/// own: packets between the members' QUIC ports are dropped by the kernel.
pub struct Partitions {
    chain: String,
}

fn iptables(args: &[&str]) -> bool {
    std::process::Command::new("iptables")
        .args(args)
        .status()
        .is_ok_and(|s| s.success())
}

impl Partitions {
    /// Creates an empty chain hooked into loopback input.
    pub fn new() -> Partitions {
        let chain = format!(
            "RDT{}-{}",
            std::process::id(),
            CHAIN_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        assert!(
            iptables(&["-N", &chain]),
            "iptables is needed for partition tests (scripts/setup.sh installs it)"
        );
        assert!(iptables(&["-I", "INPUT", "-i", "lo", "-j", &chain]));
        Partitions { chain }
    }

    /// Drops every packet between `a` and `b` (both directions).
    pub fn cut(&self, a: SocketAddr, b: SocketAddr) {
        for (from, to) in [(a, b), (b, a)] {
            let (sport, dport) = (from.port().to_string(), to.port().to_string());
            assert!(iptables(&[
                "-A",
                &self.chain,
                "-p",
                "udp",
                "--sport",
                &sport,
                "--dport",
                &dport,
                "-j",
                "DROP"
            ]));
        }
    }

    /// Removes every cut.
    pub fn heal(&self) {
        assert!(iptables(&["-F", &self.chain]));
    }
}

impl Drop for Partitions {
    fn drop(&mut self) {
        iptables(&["-D", "INPUT", "-i", "lo", "-j", &self.chain]);
        iptables(&["-F", &self.chain]);
        iptables(&["-X", &self.chain]);
    }
}

impl TestCluster {
    /// Starts one more shard node (the next id) and returns its name.
    pub fn add_node(&mut self) -> String {
        let id = self.cluster.nodes.len() as u64 + 1;
        let mut spec = self.cluster.nodes[0].clone();
        spec.id = id;
        spec.name = format!("node-{id}");
        spec.addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        spec.http = Some(SocketAddr::from(([127, 0, 0, 1], free_port())));
        spec.log = spec.log.with_file_name(format!("{}.log", spec.name));
        self.cluster.nodes.push(spec.clone());
        self.cluster.ensure_certs().unwrap();
        self.spawn(&spec);
        spec.name
    }

    /// Starts one more proxy and returns its RESP address.
    pub fn add_proxy(&mut self) -> SocketAddr {
        let id = self.cluster.proxy.len() as u64 + 1;
        let mut spec = self.cluster.proxy[0].clone();
        spec.id = id;
        spec.name = format!("proxy-{id}");
        spec.addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        spec.http = Some(SocketAddr::from(([127, 0, 0, 1], free_port())));
        spec.log = spec.log.with_file_name(format!("{}.log", spec.name));
        self.cluster.proxy.push(spec.clone());
        self.cluster.ensure_certs().unwrap();
        self.spawn(&spec);
        if let Err(e) = redraft::local::wait_ready(spec.addr, Duration::from_secs(60)) {
            self.dump_logs();
            panic!("{e:#}");
        }
        spec.addr
    }

    /// The QUIC address of a member.
    pub fn addr_of(&self, name: &str) -> SocketAddr {
        self.cluster.members().find(|m| m.name == name).unwrap().addr
    }

    /// Stops (`pause: true`, SIGSTOP) or resumes (SIGCONT) a member.
    pub fn signal_stop(&self, name: &str, pause: bool) {
        let (_, child) = self.children.iter().find(|(n, _)| n == name).unwrap();
        send_signal(child, if pause { "-STOP" } else { "-CONT" });
    }

    /// Moves the leadership of `shard` to node `to` (`redraft ctl transfer-leader`);
    /// whether it succeeded.
    pub fn transfer_leader(&self, shard: u64, to: u64) -> bool {
        ctl(
            self,
            &[
                "transfer-leader",
                "--shard",
                &shard.to_string(),
                "--to",
                &to.to_string(),
            ],
        )
        .status
        .success()
    }

    /// The shard of `key` and a replica of it that does not lead it.
    pub fn shard_and_follower(&self, key: &[u8]) -> (u64, u64) {
        let table = routing_table(self);
        let ring = redraft_common::keys::Ring::new(table.vnode_count);
        let shard = table.shard_of(ring.vnode_of(key)).expect("the key's shard");
        let info = &table.shards[&shard];
        let follower = info
            .replicas
            .iter()
            .copied()
            .find(|&r| Some(r) != info.leader)
            .expect("a follower");
        (shard, follower)
    }

    /// The shard node that leads the shards of the most of `keys`.
    pub fn leader_of_most(&self, keys: &[String]) -> String {
        let table = routing_table(self);
        let ring = redraft_common::keys::Ring::new(table.vnode_count);
        let mut counts = std::collections::BTreeMap::new();
        for key in keys {
            let leader = table
                .shard_of(ring.vnode_of(key.as_bytes()))
                .and_then(|shard| table.shards.get(&shard)?.leader);
            if let Some(leader) = leader {
                *counts.entry(leader).or_insert(0) += 1;
            }
        }
        let id = counts.into_iter().max_by_key(|&(_, c)| c).map_or(1, |(id, _)| id);
        format!("node-{id}")
    }

    /// The shard node that currently leads the most shards.
    pub fn busiest_leader(&self) -> String {
        let table = routing_table(self);
        let mut counts = std::collections::BTreeMap::new();
        for shard in table.shards.values() {
            if let Some(l) = shard.leader {
                *counts.entry(l).or_insert(0) += 1;
            }
        }
        let id = counts
            .into_iter()
            .max_by_key(|&(_, c)| c)
            .map(|(id, _)| id)
            .unwrap_or(1);
        format!("node-{id}")
    }
}

/// Sends `signal` (`-TERM`, `-STOP`, ...) to a member's process.
fn send_signal(child: &std::process::Child, signal: &str) {
    assert!(std::process::Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap()
        .success());
}

/// The value of an unlabelled gauge on a member's `/metrics`.
pub fn gauge(cluster: &TestCluster, member: &str, name: &str) -> Option<i64> {
    metric(cluster.cluster.members().find(|m| m.name == member)?.http?, name)
}

/// The value of an unlabelled metric on the `/metrics` of the HTTP endpoint
/// `http`; `None` when it is not listening (yet) or lacks the metric.
pub fn metric(http: SocketAddr, name: &str) -> Option<i64> {
    std::net::TcpStream::connect(http).ok()?; // not listening yet after a restart
    let (_, body) = http_get(http, "/metrics");
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// `GET path` on a member's HTTP endpoint: status code and body.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

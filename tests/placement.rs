//! The scheduler: a node joining under load receives replicas and leaders until
//! counts are even (with one shard per node, after a split made for it); a decommissioned node is drained; a shard splits and two
//! merge under load; the placement driver's leader dies during a rebalance; no
//! client notices any of it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redraft_common::resp::Frame;

use crate::harness::{command_bytes, ctl, Resp, TestCluster};

/// `(node, replicas, leaders)` of every node, from `redraft ctl nodes --json`.
fn node_counts(cluster: &TestCluster) -> Vec<(u64, u64, u64, String)> {
    let out = ctl(cluster, &["nodes", "--json"]);
    let nodes: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    nodes
        .iter()
        .map(|n| {
            let count = |f: &str| n[f].as_u64().unwrap_or(0);
            (
                count("id"),
                count("replicas"),
                count("leaders"),
                n["state"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// Waits until the serving nodes (state `up`) number `nodes` and their replica
/// and leader counts are within one of even, with every shard led.
fn wait_balanced(cluster: &TestCluster, nodes: usize) -> Vec<(u64, u64, u64, String)> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let counts: Vec<_> = node_counts(cluster).into_iter().filter(|c| c.3 == "up").collect();
        let replicas: Vec<u64> = counts.iter().map(|c| c.1).collect();
        let leaders: Vec<u64> = counts.iter().map(|c| c.2).collect();
        let even = |v: &[u64]| v.len() == nodes && v.iter().max().unwrap() - v.iter().min().unwrap() <= 1;
        if even(&replicas) && leaders.iter().sum::<u64>() == 6 && even(&leaders) {
            return counts;
        }
        if Instant::now() > deadline {
            cluster.dump_logs();
            panic!("not balanced after 90 s: {counts:?}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A client writing and reading back continuously, recording acknowledged values
/// and every error it sees.
struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<BTreeMap<String, String>>>,
    errors: Arc<Mutex<Vec<String>>>,
    /// When each acknowledged SET started and how long it took.
    writes: Arc<Mutex<Vec<(Instant, Duration)>>>,
    client: std::thread::JoinHandle<()>,
}

impl Load {
    fn start(cluster: &TestCluster) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(BTreeMap::new()));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let writes = Arc::new(Mutex::new(Vec::new()));
        let (proxy, s, a, e, w) = (
            cluster.proxy(),
            stop.clone(),
            acked.clone(),
            errors.clone(),
            writes.clone(),
        );
        let client = std::thread::spawn(move || {
            let mut conn = Resp::connect(proxy);
            let mut n = 0u64;
            while !s.load(Ordering::Relaxed) && n < 200_000 {
                let key = format!("j{}", n % 2000);
                let started = Instant::now();
                let mut reply = conn.cmd(&format!("SET {key} {n}"));
                // A SET of unknown outcome is recorded, then sent again until
                // acknowledged: the same SET is idempotent, so the key's value is
                // known again. (Other failures applied nothing.)
                let deadline = Instant::now() + Duration::from_secs(30);
                while matches!(&reply, Frame::Error(t) if t.contains("may have been applied")) {
                    e.lock().unwrap().push(format!("SET {key}: {reply:?}"));
                    assert!(Instant::now() < deadline, "SET {key} {n} never acknowledged");
                    reply = conn.cmd(&format!("SET {key} {n}"));
                }
                match reply {
                    Frame::Simple(_) => {
                        w.lock().unwrap().push((started, started.elapsed()));
                        a.lock().unwrap().insert(key.clone(), n.to_string());
                    }
                    other => e.lock().unwrap().push(format!("SET {key}: {other:?}")),
                }
                let expected = a.lock().unwrap().get(&key).cloned();
                match (conn.cmd(&format!("GET {key}")), expected) {
                    (Frame::Bulk(v), Some(want)) => assert_eq!(String::from_utf8(v).unwrap(), want, "stale read"),
                    (Frame::Bulk(_) | Frame::Null, None) => {} // the SET failed above: nothing to compare
                    (other, _) => e.lock().unwrap().push(format!("GET {key}: {other:?}")),
                }
                n += 1;
            }
        });
        Load {
            stop,
            acked,
            errors,
            writes,
            client,
        }
    }

    /// `(count, p99, max)` of the acknowledged SETs that started in `from..to`.
    fn write_latency(&self, from: Instant, to: Instant) -> (usize, Duration, Duration) {
        let mut window: Vec<Duration> = self
            .writes
            .lock()
            .unwrap()
            .iter()
            .filter(|(at, _)| (from..to).contains(at))
            .map(|(_, took)| *took)
            .collect();
        window.sort();
        let pick = |q: f64| window.get(((window.len() as f64 * q) as usize).min(window.len().saturating_sub(1)));
        (
            window.len(),
            pick(0.99).copied().unwrap_or_default(),
            window.last().copied().unwrap_or_default(),
        )
    }

    /// Stops the client; asserts every acknowledged value reads back and the client
    /// saw no error (or, with `allow_unknown`, none but writes of unknown outcome).
    fn finish(self, cluster: &TestCluster, allow_unknown: bool) {
        self.stop.store(true, Ordering::Relaxed);
        self.client.join().unwrap();
        let mut errors = self.errors.lock().unwrap().clone();
        let all = errors.len();
        if allow_unknown {
            errors.retain(|e| !e.contains("may have been applied"));
            eprintln!("{} writes of unknown outcome", all - errors.len());
        }
        assert!(
            errors.is_empty(),
            "the client saw errors: {:?}",
            &errors[..errors.len().min(5)]
        );
        let mut conn = Resp::connect(cluster.proxy());
        for (key, value) in self.acked.lock().unwrap().iter() {
            assert_eq!(
                conn.cmd(&format!("GET {key}")),
                Frame::bulk(value.as_str()),
                "{key} lost"
            );
        }
    }
}

#[test]
fn fourth_node_joins_under_load_and_replicas_even_out() {
    let mut cluster = TestCluster::start(3);
    // 20,000 keys of 100-byte values besides the client's own, so moves carry data.
    let mut conn = Resp::connect(cluster.proxy());
    let value = "v".repeat(100);
    let mut user_bytes = 0;
    for batch in 0..200 {
        let pairs: Vec<String> = (0..100).map(|i| format!("bulk{}-{i} {value}", batch)).collect();
        user_bytes += pairs.iter().map(|p| p.len() - 1).sum::<usize>();
        assert_eq!(conn.cmd(&format!("MSET {}", pairs.join(" "))), Frame::ok());
    }
    let sent_before = snapshot_bytes_sent(&cluster);
    let load = Load::start(&cluster);
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let join_at = Instant::now();
    let joined = cluster.add_node();
    let balanced = wait_balanced(&cluster, 4);
    let balanced_at = Instant::now();
    // Ideal: the new node ends with its share, 3 copies of the data over 4 nodes.
    let moved = snapshot_bytes_sent(&cluster) - sent_before;
    let (_, metrics) = crate::harness::http_get(cluster.cluster.nodes[3].http.unwrap(), "/metrics");
    let installed: Vec<&str> = metrics.lines().filter(|l| l.contains("snapshots_total{")).collect();
    eprintln!("{joined} snapshots: {installed:?}");
    let ideal = user_bytes as f64 * 3.0 / 4.0;
    eprintln!(
        "snapshot bytes sent {moved} for {user_bytes} bytes of keys and values: {:.2}x the ideal 3/4 share",
        moved as f64 / ideal
    );
    let before = load.write_latency(started, join_at);
    let during = load.write_latency(join_at, balanced_at);
    eprintln!(
        "{joined} joined; balanced after {:.1} s; (node, replicas, leaders, state): {balanced:?}",
        (balanced_at - join_at).as_secs_f64()
    );
    eprintln!("SET (count, p99, max) before: {before:?}; during the moves: {during:?}");
    // The moved replicas hold what the others hold, the load still running.
    eprintln!("{}", crate::harness::verify_agrees(&cluster).trim());
    load.finish(&cluster, false);
}

/// One shard per node (the default): a fourth node cannot lead anything until
/// a shard splits, so the placement driver splits the busiest shard and the
/// leader balancing hands the new shard to it.
#[test]
fn fourth_node_joining_one_shard_per_node_leads_a_shard_split_for_it() {
    let mut cluster = TestCluster::start_with_shards(3, 3);
    let load = Load::start(&cluster);
    std::thread::sleep(Duration::from_secs(2));
    let joined = cluster.add_node();
    let join_at = Instant::now();
    let deadline = join_at + Duration::from_secs(120);
    let (table, counts) = loop {
        let counts: Vec<_> = node_counts(&cluster).into_iter().filter(|c| c.3 == "up").collect();
        let table = crate::harness::routing_table(&cluster);
        let replicas: Vec<u64> = counts.iter().map(|c| c.1).collect();
        let even = replicas
            .iter()
            .max()
            .zip(replicas.iter().min())
            .is_some_and(|(a, b)| a - b <= 1);
        if counts.len() == 4 && table.shards.len() == 4 && even && counts.iter().all(|c| c.2 == 1) {
            break (table, counts);
        }
        if Instant::now() > deadline {
            cluster.dump_logs();
            panic!(
                "no shard for {joined} after 120 s: {counts:?}, shards {:?}",
                table.shards.keys()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let split: Vec<_> = table
        .shards
        .values()
        .filter_map(|s| s.split_from.map(|p| (p, s.id)))
        .collect();
    assert_eq!(split.len(), 1, "one split: {split:?}");
    eprintln!(
        "{joined} leads a shard {:.1} s after joining; split (parent, child) {split:?}; (node, replicas, leaders, state) {counts:?}",
        join_at.elapsed().as_secs_f64()
    );
    load.finish(&cluster, false);
}

#[test]
fn decommissioned_node_is_drained_under_load() {
    let mut cluster = TestCluster::start(3);
    cluster.add_node();
    wait_balanced(&cluster, 4);
    let load = Load::start(&cluster);
    let out = ctl(&cluster, &["decommission", "--node", "1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let counts = node_counts(&cluster);
        if counts
            .iter()
            .any(|c| c.0 == 1 && c.1 == 0 && c.2 == 0 && c.3 == "removed")
        {
            break;
        }
        if Instant::now() > deadline {
            cluster.dump_logs();
            panic!("node 1 not drained: {counts:?}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let remaining = wait_balanced(&cluster, 3);
    eprintln!("node 1 removed; (node, replicas, leaders, state): {remaining:?}");
    assert!(remaining.iter().all(|c| c.0 != 1 && c.1 == 6), "{remaining:?}");
    // Nothing acknowledged may be lost. Writes in flight while a shard's
    // leadership moves may time out with an unknown outcome (reported, not lost).
    load.finish(&cluster, true);
}

/// Snapshot bytes all shard nodes have sent so far.
fn snapshot_bytes_sent(cluster: &TestCluster) -> u64 {
    cluster
        .cluster
        .nodes
        .iter()
        .filter_map(|n| crate::harness::metric(n.http?, "redraft_raft_snapshot_sent_bytes_total"))
        .sum::<i64>() as u64
}

/// `redraft_proxy_routing_version` of the proxy whose HTTP endpoint is `http`.
fn proxy_routing_version(http: std::net::SocketAddr) -> u64 {
    crate::harness::metric(http, "redraft_proxy_routing_version").unwrap_or(0) as u64
}

#[test]
fn shard_splits_and_merges_under_load_without_losing_writes() {
    let mut cluster = TestCluster::start(3);
    let second_proxy = cluster.add_proxy();
    let load = Load::start(&cluster);
    let scans = Scans::start(&cluster);
    let pipelines = Pipelines::start(&cluster);
    std::thread::sleep(Duration::from_secs(1));

    let before = crate::harness::routing_table(&cluster);
    let split_at = Instant::now();
    let out = ctl(&cluster, &["split", "--shard", "1"]);
    assert!(
        out.status.success(),
        "split failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let split_done = Instant::now();
    eprintln!("{}", String::from_utf8_lossy(&out.stdout).trim());
    let after_split = crate::harness::routing_table(&cluster);
    let child = *after_split
        .shards
        .keys()
        .find(|id| !before.shards.contains_key(id))
        .expect("a new shard");
    assert_eq!(after_split.shards.len(), before.shards.len() + 1);
    let (parent_before, parent_after) = (before.vnodes_of(1).len(), after_split.vnodes_of(1).len());
    assert_eq!(parent_after + after_split.vnodes_of(child).len(), parent_before);
    assert!(parent_after > 0 && parent_after < parent_before);
    // Every replica of the parent and of the child holds the same data.
    eprintln!("{}", crate::harness::verify_agrees(&cluster).trim());

    // The new shard merges into another one (all shards live on the same 3 nodes).
    let merge_at = Instant::now();
    let out = ctl(&cluster, &["merge", "--from", &child.to_string(), "--into", "2"]);
    assert!(
        out.status.success(),
        "merge failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let merge_done = Instant::now();
    eprintln!("{}", String::from_utf8_lossy(&out.stdout).trim());
    let after_merge = crate::harness::routing_table(&cluster);
    assert!(!after_merge.shards.contains_key(&child));
    assert_eq!(
        after_merge.vnodes_of(2).len(),
        before.vnodes_of(2).len() + after_split.vnodes_of(child).len()
    );
    eprintln!("{}", crate::harness::verify_agrees(&cluster).trim());

    let completed = scans.finish();
    let pipelined = pipelines.finish();
    let overlapping = completed
        .iter()
        .filter(|(start, end)| (*start < split_done && *end > split_at) || (*start < merge_done && *end > merge_at))
        .count();
    eprintln!(
        "{} full SCANs returned every key present throughout, {overlapping} of them across the split or merge",
        completed.len()
    );
    assert!(overlapping > 0, "no SCAN ran while virtual nodes moved");
    let split = load.write_latency(split_at, split_done);
    let merge = load.write_latency(merge_at, merge_done);
    eprintln!("SET (count, p99, max) during the split: {split:?}; during the merge: {merge:?}");
    let (_, metrics) = crate::harness::http_get(cluster.cluster.proxy[0].http.unwrap(), "/metrics");
    let rerouted: Vec<&str> = metrics.lines().filter(|l| l.contains("wrong_shard")).collect();
    eprintln!("requests routed again after a split or merge: {rerouted:?}");
    let acked = load.acked.clone();
    // A write racing the retirement of the merged shard may be answered
    // "outcome unknown" (never wrong); every acknowledged one is checked.
    load.finish(&cluster, true);

    // Every proxy routes with the published table and reads every write.
    let deadline = Instant::now() + Duration::from_secs(10);
    for proxy in &cluster.cluster.proxy {
        let http = proxy.http.expect("proxies serve HTTP in tests");
        while proxy_routing_version(http) != after_merge.version {
            assert!(Instant::now() < deadline, "{} routes with an old table", proxy.name);
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let mut conn = Resp::connect(second_proxy);
    for (key, value) in acked.lock().unwrap().iter() {
        assert_eq!(
            conn.cmd(&format!("GET {key}")),
            Frame::bulk(value.as_str()),
            "{key} via proxy 2"
        );
    }

    // The reshaped layout survives kill -9 of every shard node and a restart.
    for node in ["node-1", "node-2", "node-3"] {
        cluster.kill9(node);
    }
    for node in ["node-1", "node-2", "node-3"] {
        cluster.restart(node);
    }
    cluster.wait_ready();
    let mut conn = Resp::connect(cluster.proxy());
    for (key, value) in acked.lock().unwrap().iter() {
        assert_eq!(
            conn.cmd(&format!("GET {key}")),
            Frame::bulk(value.as_str()),
            "{key} after restart"
        );
    }
    pipelined.check(&mut conn);
    // The load's keys, the SCAN test's and the pipelines' lists and counters.
    let expected = acked.lock().unwrap().len() + Scans::KEYS + 2 * Pipelines::KEYS;
    assert_eq!(conn.cmd("DBSIZE"), Frame::Integer(expected as i64));
}

/// A client pipelining writes, then reads, of many keys while virtual nodes
/// move: each pipeline's writes to one shard travel as one request, its reads
/// of one shard as another, and an operation whose key moved is sent again on
/// its own. Every reply must say what was applied, in order: RPUSH answers the
/// list's new length, INCR the counter's new value, GET the counter.
struct Pipelines {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<PipelineOutcome>,
}

/// What the pipelines acknowledged.
struct PipelineOutcome {
    rounds: i64,
    /// Keys a write of unknown outcome touched: their contents are not checked.
    uncertain: std::collections::BTreeSet<usize>,
}

impl Pipelines {
    const KEYS: usize = 48;

    fn start(cluster: &TestCluster) -> Pipelines {
        let mut conn = Resp::connect(cluster.proxy());
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut outcome = PipelineOutcome {
                rounds: 0,
                uncertain: Default::default(),
            };
            while !flag.load(Ordering::Relaxed) {
                let round = outcome.rounds;
                let mut bytes = Vec::new();
                for k in 0..Self::KEYS {
                    bytes.extend(command_bytes(&format!("RPUSH pl:{k} {round}")));
                    bytes.extend(command_bytes(&format!("INCR pc:{k}")));
                }
                for k in 0..Self::KEYS {
                    bytes.extend(command_bytes(&format!("GET pc:{k}")));
                }
                conn.send_raw(&bytes);
                for k in 0..Self::KEYS {
                    for what in ["RPUSH", "INCR"] {
                        match conn.read().expect("pipeline reply") {
                            Frame::Integer(n) if outcome.uncertain.contains(&k) => assert!(n > 0),
                            Frame::Integer(n) => assert_eq!(n, round + 1, "{what} of key {k} in round {round}"),
                            Frame::Error(e) if e.contains("may have been applied") => {
                                outcome.uncertain.insert(k);
                            }
                            other => panic!("{what} of key {k} in round {round}: {other:?}"),
                        }
                    }
                }
                for k in 0..Self::KEYS {
                    match conn.read().expect("pipeline reply") {
                        Frame::Bulk(_) if outcome.uncertain.contains(&k) => {}
                        Frame::Bulk(n) => assert_eq!(
                            n,
                            (round + 1).to_string().into_bytes(),
                            "GET of key {k} in round {round}"
                        ),
                        other => panic!("GET of key {k} in round {round}: {other:?}"),
                    }
                }
                outcome.rounds += 1;
            }
            outcome
        });
        Pipelines { stop, thread }
    }

    fn finish(self) -> PipelineOutcome {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("a pipelined write was answered wrongly")
    }
}

impl PipelineOutcome {
    /// Every certain list holds its pushes in order, every counter its count.
    fn check(&self, conn: &mut Resp) {
        eprintln!(
            "{} pipelines of {} writes and {} reads; keys with a write of unknown outcome: {:?}",
            self.rounds,
            2 * Pipelines::KEYS,
            Pipelines::KEYS,
            self.uncertain
        );
        assert!(self.rounds > 0);
        let pushed: Vec<Frame> = (0..self.rounds).map(|r| Frame::bulk(r.to_string())).collect();
        for k in (0..Pipelines::KEYS).filter(|k| !self.uncertain.contains(k)) {
            assert_eq!(
                conn.cmd(&format!("LRANGE pl:{k} 0 -1")),
                Frame::Array(pushed.clone()),
                "pl:{k}"
            );
            assert_eq!(
                conn.cmd(&format!("GET pc:{k}")),
                Frame::bulk(self.rounds.to_string()),
                "pc:{k}"
            );
        }
    }
}

/// The node whose `/metrics` says it leads the placement group.
fn placement_leader(cluster: &TestCluster) -> Option<String> {
    cluster.cluster.placement.iter().find_map(|m| {
        let (_, body) = crate::harness::http_get(m.http?, "/metrics");
        body.lines()
            .any(|l| l.trim() == "redraft_placement_is_leader 1")
            .then(|| m.name.clone())
    })
}

#[test]
fn placement_leader_killed_during_a_rebalance_and_the_rebalance_completes() {
    let mut cluster = TestCluster::start_with(3, 3, &[]);
    let load = Load::start(&cluster);
    std::thread::sleep(Duration::from_secs(1));
    cluster.add_node();
    // Wait for the first replica move to start: node 4 receives a learner copy.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !crate::harness::routing_table(&cluster)
        .shards
        .values()
        .any(|s| s.hosted_on(4))
    {
        assert!(Instant::now() < deadline, "no replica move started");
        std::thread::sleep(Duration::from_millis(50));
    }
    let leader = placement_leader(&cluster).expect("a placement leader");
    cluster.kill9(&leader);
    eprintln!("killed the placement leader {leader} during a move");
    let balanced = wait_balanced(&cluster, 4);
    eprintln!("balanced under the new placement leader: {balanced:?}");
    load.finish(&cluster, false);
    cluster.restart(&leader);
}

#[test]
fn busy_shard_is_split_automatically() {
    // Six shards share the client's writes (~100-300 per second each here).
    let cluster = TestCluster::start_configured(3, 1, &[], &["--split-writes-per-sec", "20"]);
    let load = Load::start(&cluster);
    let deadline = Instant::now() + Duration::from_secs(60);
    let table = loop {
        let table = crate::harness::routing_table(&cluster);
        if table.shards.values().any(|s| s.split_from.is_some()) {
            break table;
        }
        assert!(
            Instant::now() < deadline,
            "no shard was split: {:?}",
            table.shards.keys()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let split: Vec<_> = table
        .shards
        .values()
        .filter_map(|s| s.split_from.map(|p| (p, s.id)))
        .collect();
    eprintln!("automatic splits (parent, child): {split:?}");
    for (parent, child) in split {
        assert!(!table.vnodes_of(parent).is_empty() && !table.vnodes_of(child).is_empty());
    }
    load.finish(&cluster, false);
}

#[test]
fn node_down_past_the_timeout_rejoins_without_stale_replicas() {
    // Manual balancing: nothing moves onto node 4 unless an operator asks, so its
    // replica count shows exactly what it kept.
    let args = ["--dead-after-secs", "3", "--manual-balance"];
    let mut cluster = TestCluster::start_configured(3, 1, &[], &args);
    cluster.add_node();
    std::thread::sleep(Duration::from_secs(1)); // registered and heartbeating
    let rebalance = |cluster: &TestCluster| {
        let out = ctl(cluster, &["rebalance"]);
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{said}{}", String::from_utf8_lossy(&out.stderr));
        eprintln!("{}", said.trim());
        // Within its step limit: a leadership move counts once (the leader
        // hint changes with it, before heartbeats report the new leader).
        assert!(said.trim_end().ends_with("steps; balanced"), "{said}");
    };
    rebalance(&cluster);
    wait_balanced(&cluster, 4);
    let load = Load::start(&cluster);
    cluster.kill9("node-4");
    // Its replicas are re-created on the three others.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let counts = node_counts(&cluster);
        let others: Vec<_> = counts.iter().filter(|c| c.0 != 4).collect();
        if counts.iter().any(|c| c.0 == 4 && c.1 == 0) && others.iter().all(|c| c.1 == 6) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 4's replicas were not re-created: {counts:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    std::thread::sleep(Duration::from_secs(1)); // writes node 4 never saw
    cluster.restart("node-4");
    // Back, it learns it owns nothing and deletes its stale copies.
    let deadline = Instant::now() + Duration::from_secs(30);
    while crate::harness::gauge(&cluster, "node-4", "redraft_node_replicas") != Some(0) {
        assert!(Instant::now() < deadline, "node 4 kept stale replicas");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        crate::harness::gauge(&cluster, "node-4", "redraft_node_replicas"),
        Some(0)
    );
    load.finish(&cluster, true);
    // An operator's rebalance uses it again, with fresh copies.
    rebalance(&cluster);
    wait_balanced(&cluster, 4);
}

/// Full SCANs run back to back (small COUNT, so each takes many calls) while the
/// cluster changes shape; each must return every one of the keys written before.
struct Scans {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<(Instant, Instant)>>,
}

impl Scans {
    const KEYS: usize = 300;

    fn start(cluster: &TestCluster) -> Scans {
        let mut conn = Resp::connect(cluster.proxy());
        for i in 0..Self::KEYS {
            assert_eq!(conn.cmd(&format!("SET scan:{i} v")), Frame::ok());
        }
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut completed = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                let started = Instant::now();
                let mut cursor = "0".to_string();
                let mut seen = std::collections::HashSet::new();
                loop {
                    let (next, keys) = conn.scan_page(&format!("SCAN {cursor} MATCH scan:* COUNT 20"));
                    seen.extend(keys);
                    cursor = next;
                    if cursor == "0" {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                let missing: Vec<String> = (0..Self::KEYS)
                    .map(|i| format!("scan:{i}"))
                    .filter(|k| !seen.contains(k))
                    .collect();
                assert!(missing.is_empty(), "a SCAN missed keys present throughout: {missing:?}");
                completed.push((started, Instant::now()));
            }
            completed
        });
        Scans { stop, thread }
    }

    /// Stops after the current scan; the start and end of every full scan.
    fn finish(self) -> Vec<(Instant, Instant)> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("a SCAN missed keys")
    }
}

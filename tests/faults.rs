//! Fault scenarios under live clients, each checked for linearizability (which
//! includes a final read of every key: an acknowledged write that was lost fails
//! the check).
//!
//! Each scenario runs the checking workload of `redraft-bench check` for
//! `REDRAFT_FAULT_SECS` seconds (default 10) while the test injects the fault with
//! real processes and real network cuts. `docs/testing.md` says how to run long
//! versions.

use std::thread;
use std::time::Duration;

use redraft_loadtest::check::{run, CheckConfig};
use redraft_loadtest::linearizability::{check, describe, Verdict};

use redraft_common::resp::Frame;

use crate::harness::{Partitions, TestCluster};

/// Keys of the checking workload (`check:0` ..).
const CHECK_KEYS: usize = 6;

fn scenario_secs() -> u64 {
    std::env::var("REDRAFT_FAULT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10)
}

/// Runs the checking workload while `fault` acts on the cluster, then checks;
/// returns how many operations ended with an unknown outcome.
fn scenario(name: &str, fault: impl FnOnce(&mut TestCluster, Duration)) -> usize {
    let mut cluster = TestCluster::start(3);
    let secs = scenario_secs();
    let config = CheckConfig {
        target: cluster.proxy(),
        clients: 8,
        keys: CHECK_KEYS,
        duration: Duration::from_secs(secs),
        timeout: Duration::from_secs(10),
        seed: secs ^ name.len() as u64,
    };
    let workload = thread::spawn(move || tokio::runtime::Runtime::new().unwrap().block_on(run(config)));
    fault(&mut cluster, Duration::from_secs(secs));
    let history = workload.join().unwrap().unwrap_or_else(|e| {
        cluster.dump_logs();
        panic!("{name}: workload failed: {e:#}")
    });
    let completed = history.iter().filter(|o| o.output.is_some()).count();
    let unknown = history.len() - completed;
    let verdict = check(&history, Duration::from_secs(120));
    eprintln!(
        "{name}: {} operations ({completed} completed, {unknown} unknown): {}",
        history.len(),
        describe(&verdict)
    );
    if unknown > 0 {
        // Shown if the test fails: why each outcome was unknown (the proxy's
        // warnings), and Redraft's own warnings around it.
        for member in cluster.member_names() {
            let log = cluster.log_of(&member);
            let warnings: Vec<&str> = log
                .lines()
                .filter(|l| (l.contains(" WARN ") || l.contains(" ERROR ")) && l.contains(" redraft"))
                .collect();
            for line in &warnings[warnings.len().saturating_sub(30)..] {
                eprintln!("{member}: {line}");
            }
        }
    }
    assert_eq!(verdict, Verdict::Linearizable, "{name}: {}", describe(&verdict));
    assert!(completed > 200, "{name}: only {completed} operations completed");
    unknown
}

fn sleep_part(total: Duration, fraction: f64) {
    thread::sleep(total.mul_f64(fraction));
}

#[test]
fn leader_kill() {
    scenario("leader kill", |c, t| {
        sleep_part(t, 0.2);
        let leader = c.busiest_leader();
        c.kill9(&leader);
        sleep_part(t, 0.4);
        c.restart(&leader);
    });
}

#[test]
fn minority_partition_of_a_leader() {
    scenario("leader partitioned from the other nodes", |c, t| {
        let cuts = Partitions::new();
        sleep_part(t, 0.2);
        let leader = c.busiest_leader();
        for other in ["node-1", "node-2", "node-3"].into_iter().filter(|n| *n != leader) {
            cuts.cut(c.addr_of(&leader), c.addr_of(other));
        }
        sleep_part(t, 0.4);
        cuts.heal();
    });
}

/// A leader cut off from the other nodes (not from the proxy or the placement
/// driver) for most of the run: the others elect a new leader and take writes
/// while the old one still believes it leads and the proxy, told of both by
/// their heartbeats, keeps sending it reads. Its lease must have run out
/// before the new leader could be elected, so it answers them only after a
/// ReadIndex round, which fails.
#[test]
fn leader_partitioned_past_its_lease() {
    scenario("leader partitioned for 7 of 10 s", |c, t| {
        let cuts = Partitions::new();
        sleep_part(t, 0.15);
        let keys: Vec<String> = (0..CHECK_KEYS).map(|i| format!("check:{i}")).collect();
        let leader = c.leader_of_most(&keys);
        for other in ["node-1", "node-2", "node-3"].into_iter().filter(|n| *n != leader) {
            cuts.cut(c.addr_of(&leader), c.addr_of(other));
        }
        sleep_part(t, 0.7);
        cuts.heal();
    });
}

/// The lease trap: a leader serving reads from its lease is paused past the
/// lease (and past the election timeout, so another replica is elected and
/// takes writes), then resumed while reads it received before the pause are
/// still waiting for it. It must not answer them from its stale state: its
/// monotonic clock ran on while it was stopped, so its lease has run out and
/// it asks its followers, who follow the new leader.
#[test]
fn leader_paused_longer_than_election_timeout() {
    scenario("leader paused (SIGSTOP) for 4 s", |c, t| {
        sleep_part(t, 0.2);
        let leader = c.busiest_leader();
        let lease_reads = crate::harness::gauge(c, &leader, r#"redraft_node_reads_total{result="lease"}"#);
        assert!(
            lease_reads.is_some_and(|n| n > 0),
            "{leader} served no read from its lease before the pause: {lease_reads:?}"
        );
        c.signal_stop(&leader, true);
        thread::sleep(Duration::from_secs(4));
        c.signal_stop(&leader, false);
    });
}

#[test]
fn every_node_killed_and_restarted_in_turn() {
    scenario("rolling kill -9 and restart", |c, t| {
        for node in ["node-1", "node-2", "node-3"] {
            sleep_part(t, 0.1);
            c.kill9(node);
            sleep_part(t, 0.1);
            c.restart(node);
        }
    });
}

#[test]
fn whole_cluster_restart() {
    scenario("whole cluster kill -9 and restart", |c, t| {
        sleep_part(t, 0.3);
        for name in c.member_names() {
            c.kill9(&name);
        }
        for name in c.member_names() {
            c.restart(&name);
        }
    });
}

#[test]
fn busiest_leader_stopped_with_sigterm_hands_its_leaders_over() {
    let unknown = scenario("SIGTERM of the busiest leader, restart", |c, t| {
        sleep_part(t, 0.2);
        let leader = c.busiest_leader();
        c.terminate(&leader);
        // It reports how many of the shards it led it handed over.
        let log = c.log_of(&leader);
        let report = log
            .lines()
            .rfind(|l| l.contains("handed leaderships over before stopping"))
            .unwrap_or_else(|| panic!("{leader} did not hand its leaders over"));
        let field = |name: &str| -> usize {
            let at = report.find(&format!("{name}=")).unwrap() + name.len() + 1;
            report[at..].split(' ').next().unwrap().parse().unwrap()
        };
        assert!(field("led") > 0, "{report}");
        assert_eq!(field("moved"), field("led"), "{report}");
        // It told the placement driver it was leaving: down at once, not five
        // seconds after its last heartbeat.
        let (up, nodes) = nodes_up(c);
        assert_eq!(up, nodes - 1, "nodes up right after the SIGTERM");
        sleep_part(t, 0.3);
        c.restart(&leader);
        // Registering again makes it live again.
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while nodes_up(c).0 < nodes {
            assert!(
                std::time::Instant::now() < deadline,
                "{leader} is not up after its restart"
            );
            thread::sleep(Duration::from_millis(200));
        }
    });
    // Its shards changed leader before it stopped: no write was cut off.
    assert_eq!(unknown, 0, "writes with an unknown outcome");
}

/// `(nodes up, nodes)` as `redraft ctl status` reports them.
fn nodes_up(c: &TestCluster) -> (u64, u64) {
    let out = crate::harness::ctl(c, &["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ctl status --json");
    (status["nodes_up"].as_u64().unwrap(), status["nodes"].as_u64().unwrap())
}

#[test]
fn placement_driver_kill() {
    scenario("placement driver kill -9 and restart", |c, t| {
        sleep_part(t, 0.2);
        c.kill9("placement-1");
        sleep_part(t, 0.3);
        c.restart("placement-1");
    });
}

/// Writes 16 keys per round in one pipeline until `stop`; every reply must be
/// +OK. Returns the rounds written and the unexpected replies.
fn pipeline_sets(proxy: std::net::SocketAddr, stop: &std::sync::atomic::AtomicBool) -> (usize, Vec<Frame>) {
    let mut conn = crate::harness::Resp::connect(proxy);
    let mut unexpected = Vec::new();
    let mut round = 0;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let mut batch = Vec::new();
        for i in 0..16 {
            batch.extend(crate::harness::command_bytes(&format!("SET pipe{i} r{round}")));
        }
        conn.send_raw(&batch);
        for _ in 0..16 {
            let reply = conn.read().expect("connection closed");
            if reply != Frame::ok() {
                unexpected.push(reply);
            }
        }
        round += 1;
    }
    (round, unexpected)
}

#[test]
fn leaders_transferred_under_load() {
    let unknown = scenario("every leader moved twice", |c, t| {
        // Besides the checked clients, one connection pipelines writes: a
        // pipeline caught by a transfer is retried whole, never answered with
        // an unknown outcome.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let pipeliner = {
            let (proxy, stop) = (c.proxy(), stop.clone());
            thread::spawn(move || pipeline_sets(proxy, &stop))
        };
        let shards: Vec<u64> = crate::harness::routing_table(c).shards.keys().copied().collect();
        let mut moved = 0;
        for to in [2, 3] {
            sleep_part(t, 0.25);
            for &shard in &shards {
                moved += usize::from(c.transfer_leader(shard, to));
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (rounds, unexpected) = pipeliner.join().unwrap();
        assert!(unexpected.is_empty(), "pipelined SETs answered {unexpected:?}");
        assert!(rounds > 0, "no pipeline completed");
        let mut conn = crate::harness::Resp::connect(c.proxy());
        for i in 0..16 {
            let last = Frame::bulk(format!("r{}", rounds - 1));
            assert_eq!(conn.cmd(&format!("GET pipe{i}")), last, "pipe{i} after {rounds} rounds");
        }
        // The placement driver's own balancing may move a leader at the same
        // time (a concurrent transfer is refused), so not every one succeeds.
        assert!(
            moved >= shards.len() * 3 / 2,
            "only {moved} of {} transfers succeeded",
            2 * shards.len()
        );
    });
    assert_eq!(unknown, 0, "leadership transfers left writes with an unknown outcome");
}

#[test]
fn quiesced_shards_fail_over_when_their_leader_dies() {
    let mut c = TestCluster::start(3);
    let mut conn = crate::harness::Resp::connect(c.proxy());
    for i in 0..60 {
        assert_eq!(conn.cmd(&format!("SET q{i} v{i}")), Frame::ok());
    }
    // Idle shards stop their Raft timers: no heartbeats, no election timers.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    for node in ["node-1", "node-2", "node-3"] {
        while crate::harness::gauge(&c, node, "redraft_node_quiesced_replicas") != Some(6) {
            assert!(
                std::time::Instant::now() < deadline,
                "{node} did not quiesce its shards"
            );
            thread::sleep(Duration::from_millis(200));
        }
    }
    let leader = c.busiest_leader();
    c.kill9(&leader);
    let killed = std::time::Instant::now();
    // Every shard, including those the dead node led, serves reads and writes
    // again: followers notice the dead node by its missing pings and elect.
    let mut conn = crate::harness::Resp::connect(c.proxy());
    for i in 0..60 {
        assert_eq!(
            conn.cmd(&format!("GET q{i}")),
            Frame::bulk(format!("v{i}").as_str()),
            "q{i}"
        );
        assert_eq!(conn.cmd(&format!("SET q{i} w{i}")), Frame::ok(), "q{i}");
    }
    eprintln!("{leader} killed; every shard served again after {:?}", killed.elapsed());
}

/// The lease trap, asked of the old leader directly (the proxy avoids a node
/// that stops answering, so through it the trap is hit only by chance): the
/// leader of a key's shard is cut off from the other nodes, they elect a new
/// leader that overwrites the key, and a read sent straight to the old leader,
/// which still believes it leads, must not return the old value.
#[test]
fn partitioned_leader_stops_serving_reads_once_its_lease_has_run_out() {
    use redraft_common::ops::{ReadOp, SetCondition, SetReply, ShardOp, WriteOp};
    use redraft_common::wire::{NodeRequest, NodeResponse};

    let cluster = TestCluster::start(3);
    let mut client = crate::harness::Resp::connect(cluster.proxy());
    assert_eq!(client.cmd("SET lease:key old"), Frame::ok());
    let table = crate::harness::routing_table(&cluster);
    let ring = redraft_common::keys::Ring::new(table.vnode_count);
    let shard = table.shard_of(ring.vnode_of(b"lease:key")).expect("a shard");
    let node_addr = |id: u64| cluster.addr_of(&format!("node-{id}"));

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let tls = redraft_common::tls::TlsIdentity::load(&cluster.certs(), "ctl").unwrap();
    let endpoint = runtime
        .block_on(async { redraft_common::transport::Endpoint::client(&tls) })
        .unwrap();
    let exec = |node: u64, op: ShardOp| -> Option<NodeResponse> {
        let request = NodeRequest::Exec { shard, version: 0, op };
        runtime
            .block_on(endpoint.call::<_, NodeResponse>(node_addr(node), &request, Duration::from_secs(5)))
            .ok()
    };
    let get = || {
        ShardOp::Read(ReadOp::Get {
            key: b"lease:key".to_vec(),
        })
    };
    let replied = |answer: &Option<NodeResponse>, expected: Frame| matches!(answer, Some(NodeResponse::Reply(frame)) if *frame == expected);
    // The replica that serves the read leads (the others redirect).
    let replicas = table.shards[&shard].replicas.clone();
    let leader = replicas
        .iter()
        .copied()
        .find(|n| replied(&exec(*n, get()), Frame::bulk("old")))
        .expect("the shard's leader serves the read");

    let cuts = Partitions::new();
    let others: Vec<u64> = replicas.iter().copied().filter(|n| *n != leader).collect();
    for other in &others {
        cuts.cut(node_addr(leader), node_addr(*other));
    }
    // The other two elect a leader (once their refusal to vote has run out)
    // and overwrite the key.
    let set = || {
        ShardOp::Write(WriteOp::Set {
            key: b"lease:key".to_vec(),
            value: b"new".to_vec(),
            expiry: None,
            condition: SetCondition::Always,
            keep_ttl: false,
            reply: SetReply::Ok,
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let new_leader = loop {
        let led = others.iter().copied().find(|n| replied(&exec(*n, set()), Frame::ok()));
        if let Some(n) = led {
            break n;
        }
        assert!(std::time::Instant::now() < deadline, "no new leader took the write");
        thread::sleep(Duration::from_millis(200));
    };
    let answer = exec(new_leader, get());
    assert!(
        replied(&answer, Frame::bulk("new")),
        "the new leader reads its write: {answer:?}"
    );

    // The old leader, cut off, still believes it leads; its lease has run out.
    let stale = exec(leader, get());
    assert!(
        !replied(&stale, Frame::bulk("old")),
        "the cut-off leader served a stale read: {stale:?}"
    );
    cuts.heal();
    endpoint.close();
}

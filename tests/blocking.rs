//! Blocking commands across connections: blocking order, what wakes a blocked
//! client, timeouts, disconnects and CLIENT UNBLOCK, and a redis-py job queue
//! whose shard changes leader while workers block.

use std::io::BufRead;
use std::process::Stdio;
use std::time::{Duration, Instant};

use redraft_common::resp::Frame;

use crate::harness::{routing_table, Resp, TestCluster};

fn pair(key: &str, value: &str) -> Frame {
    Frame::Array(vec![Frame::bulk(key), Frame::bulk(value)])
}

/// Sends a blocking command and gives the proxy time to register it, so the
/// order of two such calls is the order they were sent in.
fn block(conn: &mut Resp, line: &str) {
    conn.send_raw(&crate::harness::command_bytes(line));
    std::thread::sleep(Duration::from_millis(300));
}

#[test]
fn blocked_clients_are_served_in_order_and_woken_by_any_write() {
    let cluster = TestCluster::start(3);
    let (mut a, mut b, mut c) = (
        Resp::connect(cluster.proxy()),
        Resp::connect(cluster.proxy()),
        Resp::connect(cluster.proxy()),
    );
    // First blocked, first served.
    block(&mut a, "BLPOP {j}q 0");
    block(&mut b, "BLPOP {j}other {j}q 0");
    assert_eq!(c.cmd("RPUSH {j}q 1"), Frame::Integer(1));
    assert_eq!(a.read().unwrap(), pair("{j}q", "1"));
    assert_eq!(c.cmd("RPUSH {j}q 2 3"), Frame::Integer(2));
    assert_eq!(b.read().unwrap(), pair("{j}q", "2"));
    assert_eq!(c.cmd("LRANGE {j}q 0 -1"), Frame::Array(vec![Frame::bulk("3")]));
    // Woken by LMOVE, RENAME and a transaction.
    block(&mut a, "BLPOP {j}dst 0");
    c.cmd("RPUSH {j}src x");
    c.cmd("LMOVE {j}src {j}dst LEFT LEFT");
    assert_eq!(a.read().unwrap(), pair("{j}dst", "x"));
    block(&mut a, "BRPOP {j}renamed 0");
    c.cmd("RPUSH {j}tmp y");
    c.cmd("RENAME {j}tmp {j}renamed");
    assert_eq!(a.read().unwrap(), pair("{j}renamed", "y"));
    block(&mut a, "BZPOPMIN {j}z 0");
    c.cmd("MULTI");
    c.cmd("ZADD {j}z 2 m");
    assert_eq!(c.cmd("EXEC"), Frame::Array(vec![Frame::Integer(1)]));
    assert_eq!(
        a.read().unwrap(),
        Frame::Array(vec![Frame::bulk("{j}z"), Frame::bulk("m"), Frame::bulk("2")])
    );
    // A BLMOVE's push wakes the client blocked on its destination.
    block(&mut a, "BLMOVE {j}in {j}out LEFT RIGHT 0");
    block(&mut b, "BLPOP {j}out 0");
    c.cmd("RPUSH {j}in v");
    assert_eq!(a.read().unwrap(), Frame::bulk("v"));
    assert_eq!(b.read().unwrap(), pair("{j}out", "v"));
    // A key of another type does not serve a blocked client; it waits on.
    block(&mut a, "BLPOP {j}typed 1");
    c.cmd("SET {j}typed now-a-string");
    c.cmd("DEL {j}typed");
    c.cmd("RPUSH {j}typed z");
    assert_eq!(a.read().unwrap(), pair("{j}typed", "z"));
    // Sub-second timeouts.
    let started = Instant::now();
    assert_eq!(a.cmd("BLPOP {j}none 0.25"), Frame::NullArray);
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert_eq!(a.cmd("BLMOVE {j}none {j}out LEFT LEFT 0.1"), Frame::NullArray);
}

#[test]
fn a_disconnected_or_unblocked_client_takes_nothing() {
    let cluster = TestCluster::start(3);
    let mut c = Resp::connect(cluster.proxy());
    // A client that goes away while blocked pops nothing afterwards.
    let mut gone = Resp::connect(cluster.proxy());
    block(&mut gone, "BLPOP {k}d 0");
    drop(gone);
    std::thread::sleep(Duration::from_millis(300));
    c.cmd("RPUSH {k}d 1");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(c.cmd("LLEN {k}d"), Frame::Integer(1), "the element stays in the list");
    // CLIENT UNBLOCK ends the wait as a timeout, or with an error.
    let mut e = Resp::connect(cluster.proxy());
    let Frame::Integer(id) = e.cmd("CLIENT ID") else {
        panic!("CLIENT ID")
    };
    assert_eq!(
        c.cmd(&format!("CLIENT UNBLOCK {id}")),
        Frame::Integer(0),
        "not blocked yet"
    );
    block(&mut e, "BLPOP {k}u 0");
    let Frame::Bulk(list) = c.cmd("CLIENT LIST") else {
        panic!("CLIENT LIST")
    };
    let line = String::from_utf8_lossy(&list)
        .lines()
        .find(|l| l.starts_with(&format!("id={id} ")))
        .map(str::to_string)
        .expect("blocked client listed");
    assert!(line.contains(" flags=b ") && line.contains(" cmd=blpop "), "{line}");
    let Frame::Bulk(info) = c.cmd("INFO clients") else {
        panic!("INFO")
    };
    assert!(String::from_utf8_lossy(&info).contains("blocked_clients:1\r\n"));
    assert_eq!(c.cmd(&format!("CLIENT UNBLOCK {id}")), Frame::Integer(1));
    assert_eq!(e.read().unwrap(), Frame::NullArray);
    block(&mut e, "BZPOPMAX {k}u 0");
    assert_eq!(c.cmd(&format!("CLIENT UNBLOCK {id} ERROR")), Frame::Integer(1));
    assert_eq!(
        e.read().unwrap(),
        Frame::error("UNBLOCKED client unblocked via CLIENT UNBLOCK")
    );
    assert_eq!(
        c.cmd(&format!("CLIENT UNBLOCK {id} LATER")),
        Frame::error("ERR CLIENT UNBLOCK reason should be TIMEOUT or ERROR")
    );
    c.cmd("RPUSH {k}u 1");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(c.cmd("LLEN {k}u"), Frame::Integer(1));
    // Commands pipelined behind a blocking one run once it is answered.
    e.send_raw(&crate::harness::command_bytes("BLPOP {k}p 0"));
    e.send_raw(&crate::harness::command_bytes("ECHO after"));
    std::thread::sleep(Duration::from_millis(300));
    c.cmd("RPUSH {k}p 1");
    assert_eq!(e.read().unwrap(), pair("{k}p", "1"));
    assert_eq!(e.read().unwrap(), Frame::bulk("after"));
}

/// redis-py workers BRPOP jobs while the queue's shard changes leader twice:
/// every job is taken exactly once.
#[test]
fn redis_py_job_queue_takes_every_job_once_through_leader_changes() {
    let cluster = TestCluster::start(3);
    let mut child = queue_script(&cluster, "1500", "strict");
    let out = queue_started(&mut child);
    let mut moves = 0;
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(1200));
        let (shard, to) = cluster.shard_and_follower(b"{jobs}:queue");
        moves += cluster.transfer_leader(shard, to) as usize;
    }
    assert!(moves >= 1, "no leadership move happened");
    let rest = queue_finished(child, out, &cluster);
    assert!(
        rest.contains("taken 1500 of 1500 pushed (0 uncertain), repeated 0, missing 0"),
        "{rest}"
    );
}

/// The same queue while the leader of its shard is killed (`kill -9`) and
/// restarted: no job is taken twice, and every job whose push succeeded is
/// taken (a push that failed with the leader may or may not have been queued).
#[test]
fn job_queue_survives_kill_9_of_its_shard_leader() {
    let mut cluster = TestCluster::start(3);
    let mut child = queue_script(&cluster, "1500", "tolerant");
    let out = queue_started(&mut child);
    std::thread::sleep(Duration::from_millis(1500));
    let table = routing_table(&cluster);
    let ring = redraft_common::keys::Ring::new(table.vnode_count);
    let shard = table.shard_of(ring.vnode_of(b"{jobs}:queue")).expect("queue's shard");
    let leader = table.shards[&shard].leader.expect("a leader");
    let name = format!("node-{leader}");
    cluster.kill9(&name);
    std::thread::sleep(Duration::from_secs(3));
    cluster.restart(&name);
    let rest = queue_finished(child, out, &cluster);
    assert!(rest.contains("repeated 0, missing 0, left in queue 0"), "{rest}");
}

/// Starts tests/py/job_queue.py against the cluster's proxy with 4 workers.
fn queue_script(cluster: &TestCluster, jobs: &str, mode: &str) -> std::process::Child {
    crate::harness::python("job_queue.py")
        .args([&cluster.proxy().port().to_string(), jobs, "4", mode])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("redis-py virtualenv (scripts/test.sh creates it)")
}

/// The script's output once its workers block.
fn queue_started(child: &mut std::process::Child) -> std::io::BufReader<std::process::ChildStdout> {
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "started");
    out
}

/// Waits for the script, which must succeed; the rest of its output.
fn queue_finished(
    mut child: std::process::Child,
    mut out: std::io::BufReader<std::process::ChildStdout>,
    cluster: &TestCluster,
) -> String {
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    let status = child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    if !status.success() {
        cluster.dump_logs();
        // Every log line that names a job the queue lost.
        let lost: Vec<&str> = rest.split(['\'', '"']).filter(|w| w.starts_with("job-")).collect();
        for name in cluster.member_names() {
            if let Ok(dir) = std::env::var("REDRAFT_KEEP_LOGS") {
                let _ = std::fs::create_dir_all(&dir);
                let _ = std::fs::write(format!("{dir}/{name}.log"), cluster.log_of(&name));
            }
            for line in cluster.log_of(&name).lines() {
                if lost.iter().any(|job| line.contains(job)) {
                    eprintln!("{name}: {line}");
                }
            }
        }
        panic!("job queue failed:\n{rest}\n{err}");
    }
    rest
}

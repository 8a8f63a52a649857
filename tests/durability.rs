//! Every acknowledged write survives `kill -9` of a minority and a restart of all.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redraft_common::resp::Frame;

use crate::harness::{Resp, TestCluster};

/// What one writer thread had acknowledged.
#[derive(Default)]
struct Acked {
    values: BTreeMap<String, String>,
    incrs: i64,
    errors: u64,
}

/// Writes `SET w{id}:{n} v{n}` and `INCR counter` until `stop`, recording what
/// was acknowledged. Connection failures are retried on a new connection.
fn writer(cluster_proxy: std::net::SocketAddr, id: usize, stop: Arc<AtomicBool>, acked: Arc<Mutex<Acked>>) {
    let mut conn = Resp::connect(cluster_proxy);
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) && n < 5_000 {
        let (key, value) = (format!("w{id}:{n}"), format!("v{n}"));
        match conn.cmd(&format!("SET {key} {value}")) {
            Frame::Simple(ok) if ok == "OK" => {
                acked.lock().unwrap().values.insert(key, value);
            }
            _ => acked.lock().unwrap().errors += 1,
        }
        if n.is_multiple_of(5) {
            match conn.cmd("INCR counter") {
                Frame::Integer(_) => acked.lock().unwrap().incrs += 1,
                _ => acked.lock().unwrap().errors += 1,
            }
        }
        n += 1;
    }
}

fn verify(cluster: &TestCluster, acked: &Acked) {
    let mut conn = Resp::connect(cluster.proxy());
    for (key, value) in &acked.values {
        assert_eq!(
            conn.cmd(&format!("GET {key}")),
            Frame::bulk(value.as_str()),
            "acknowledged write of {key} lost"
        );
    }
    match conn.cmd("GET counter") {
        Frame::Bulk(v) => {
            let counter: i64 = String::from_utf8(v).unwrap().parse().unwrap();
            assert!(
                counter >= acked.incrs,
                "counter {counter} < {} acknowledged INCRs",
                acked.incrs
            );
        }
        other => panic!("counter: {other:?}"),
    }
}

#[test]
fn acknowledged_writes_survive_minority_kill_and_full_restart() {
    let mut cluster = TestCluster::start(3);
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Acked::default()));
    let writers: Vec<_> = (0..4)
        .map(|id| {
            let (proxy, stop, acked) = (cluster.proxy(), stop.clone(), acked.clone());
            std::thread::spawn(move || writer(proxy, id, stop, acked))
        })
        .collect();

    // Let writes flow, then kill -9 node-1 (the initial leader of a third of the
    // shards) while they continue; the other two nodes keep a quorum.
    std::thread::sleep(Duration::from_secs(2));
    let before_kill = acked.lock().unwrap().values.len();
    cluster.kill9("node-1");
    let killed_at = Instant::now();
    std::thread::sleep(Duration::from_secs(5));
    let during = acked.lock().unwrap().values.len() - before_kill;
    assert!(during > 50, "only {during} writes acknowledged with a minority down");
    cluster.restart("node-1");
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    eprintln!("writes continued {:?} after the kill", killed_at.elapsed());
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    assert!(acked.values.len() > 200, "too few writes: {}", acked.values.len());
    verify(&cluster, &acked);

    // kill -9 every member, restart them all: nothing acknowledged is lost.
    for name in cluster.member_names() {
        cluster.kill9(&name);
    }
    for name in cluster.member_names() {
        cluster.restart(&name);
    }
    cluster.wait_ready();
    verify(&cluster, &acked);
    eprintln!(
        "{} keys and {} INCRs verified; {} errors during the kill",
        acked.values.len(),
        acked.incrs,
        acked.errors
    );
    let _ = cluster.dir();
}

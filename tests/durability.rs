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
    /// Keys written with `EX 1000`.
    with_ttl: Vec<String>,
    incrs: i64,
    /// Per list key, the items whose RPUSH was acknowledged, in push order.
    pushed: BTreeMap<String, Vec<u64>>,
    /// Acknowledged HSET field -> value of each writer's hash.
    fields: BTreeMap<(String, String), String>,
    errors: u64,
    /// Reads that returned the value last acknowledged for their key.
    reads: u64,
}

/// Writes `SET w{id}:{n} v{n}` and `INCR counter` until `stop`, recording what
/// was acknowledged. Connection failures are retried on a new connection.
fn writer(cluster_proxy: std::net::SocketAddr, id: usize, stop: Arc<AtomicBool>, acked: Arc<Mutex<Acked>>) {
    let mut conn = Resp::connect(cluster_proxy);
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) && n < 5_000 {
        let (key, value) = (format!("w{id}:{n}"), format!("v{n}"));
        let ttl = n.is_multiple_of(10);
        let command = if ttl {
            format!("SET {key} {value} EX 1000")
        } else {
            format!("SET {key} {value}")
        };
        match conn.cmd(&command) {
            Frame::Simple(ok) if ok == "OK" => {
                let mut acked = acked.lock().unwrap();
                acked.values.insert(key.clone(), value);
                if ttl {
                    acked.with_ttl.push(key);
                }
            }
            _ => acked.lock().unwrap().errors += 1,
        }
        if n > 0 && n.is_multiple_of(3) {
            // Read back an earlier write of this writer: once acknowledged, a value
            // must be visible to every later read (reads are linearizable).
            let earlier = format!("w{id}:{}", n / 2);
            let expected = acked.lock().unwrap().values.get(&earlier).cloned();
            match (conn.cmd(&format!("GET {earlier}")), expected) {
                (Frame::Bulk(got), Some(want)) => {
                    assert_eq!(String::from_utf8(got).unwrap(), want, "stale read of {earlier}");
                    acked.lock().unwrap().reads += 1;
                }
                (Frame::Error(_), _) => acked.lock().unwrap().errors += 1,
                (_, None) => {}
                (other, Some(want)) => panic!("GET {earlier}: {other:?}, expected {want}"),
            }
        }
        if n.is_multiple_of(5) {
            match conn.cmd("INCR counter") {
                Frame::Integer(_) => acked.lock().unwrap().incrs += 1,
                _ => acked.lock().unwrap().errors += 1,
            }
        }
        if n.is_multiple_of(10) {
            let (list, hash) = (format!("list{id}"), format!("hash{id}"));
            match conn.cmd(&format!("RPUSH {list} {n}")) {
                Frame::Integer(_) => acked.lock().unwrap().pushed.entry(list).or_default().push(n),
                _ => acked.lock().unwrap().errors += 1,
            }
            match conn.cmd(&format!("HSET {hash} f{} v{n}", n % 64)) {
                Frame::Integer(_) => {
                    acked
                        .lock()
                        .unwrap()
                        .fields
                        .insert((hash, format!("f{}", n % 64)), format!("v{n}"));
                }
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
    for key in &acked.with_ttl {
        match conn.cmd(&format!("TTL {key}")) {
            Frame::Integer(ttl) => assert!((1..=1000).contains(&ttl), "{key} lost its TTL: {ttl}"),
            other => panic!("TTL {key}: {other:?}"),
        }
    }
    for (list, pushed) in &acked.pushed {
        // Pushes whose answer was lost may have been applied too, so the list holds
        // every acknowledged item, in order, and nothing out of order.
        let Frame::Array(items) = conn.cmd(&format!("LRANGE {list} 0 -1")) else {
            panic!("LRANGE {list}")
        };
        let items: Vec<u64> = items
            .into_iter()
            .map(|f| match f {
                Frame::Bulk(b) => String::from_utf8(b).unwrap().parse().unwrap(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert!(items.windows(2).all(|w| w[0] < w[1]), "{list} out of order: {items:?}");
        for n in pushed {
            assert!(items.contains(n), "acknowledged RPUSH {list} {n} lost");
        }
    }
    for ((hash, field), value) in &acked.fields {
        let got = conn.cmd(&format!("HGET {hash} {field}"));
        // A later unacknowledged HSET of the field may have won; it has a larger n.
        let Frame::Bulk(got) = got else {
            panic!("acknowledged HSET {hash} {field} lost: {got:?}")
        };
        let got: u64 = String::from_utf8(got).unwrap()[1..].parse().unwrap();
        assert!(
            got >= value[1..].parse::<u64>().unwrap(),
            "HSET {hash} {field} went back to v{got}"
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
    let (before_kill, reads_before) = {
        let a = acked.lock().unwrap();
        (a.values.len(), a.reads)
    };
    cluster.kill9("node-1");
    let killed_at = Instant::now();
    // Failover (detection, election, publication) takes 1-3 s, longer when the
    // machine is busy with other tests; the window leaves room for it.
    std::thread::sleep(Duration::from_secs(8));
    let (during, reads_during) = {
        let a = acked.lock().unwrap();
        (a.values.len() - before_kill, a.reads - reads_before)
    };
    eprintln!("{during} writes and {reads_during} reads acknowledged in the 8 s after the kill");
    if during <= 50 || reads_during <= 10 {
        cluster.dump_logs();
    }
    assert!(during > 50, "only {during} writes acknowledged with a minority down");
    assert!(
        reads_during > 10,
        "only {reads_during} reads served with a minority down"
    );
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
    // node-1 was down for part of the run: its own RocksDB must now hold every
    // acknowledged key (with 3 nodes and 3 replicas it hosts every shard), which
    // shows it caught up after its restart.
    let on_disk = crate::harness::stored_strings(&cluster.dir().join("node-1"));
    for (key, value) in &acked.values {
        assert_eq!(
            on_disk.get(key.as_str()),
            Some(value),
            "node-1 did not catch up on {key}"
        );
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
}

/// A node that was down while its shards moved past their log purge point catches
/// up by snapshot: streamed in chunks, checksummed, installed. Its own RocksDB then
/// holds every key.
#[test]
fn lagging_node_catches_up_by_snapshot() {
    let mut cluster = TestCluster::start_with(3, 1, &["--snapshot-every", "50"]);
    let mut conn = Resp::connect(cluster.proxy());
    for i in 0..200 {
        assert_eq!(conn.cmd(&format!("SET before:{i} {i}")), Frame::ok());
    }
    cluster.kill9("node-3");
    // 2,000 writes over 6 shards: every shard passes several snapshot points, so
    // the entries node-3 misses are purged from the leaders' logs.
    for chunk in 0..20 {
        let mut batch = Vec::new();
        for i in chunk * 100..(chunk + 1) * 100 {
            batch.extend(
                Frame::Array(vec![
                    Frame::bulk("SET"),
                    Frame::bulk(format!("during:{i}")),
                    Frame::bulk(format!("v{i}")),
                ])
                .to_bytes(),
            );
        }
        conn.send_raw(&batch);
        let mut failed = Vec::new();
        for i in chunk * 100..(chunk + 1) * 100 {
            if conn.read().unwrap() != Frame::ok() {
                failed.push(i); // sent to node-3 before the proxy noticed it died
            }
        }
        for i in failed {
            // SET is idempotent: retry until acknowledged.
            while conn.cmd(&format!("SET during:{i} v{i}")) != Frame::ok() {}
        }
    }
    cluster.restart("node-3");
    // Wait until node-3 leads nothing yet holds everything: poll its installs.
    let deadline = std::time::Instant::now() + Duration::from_secs(45);
    loop {
        let log = cluster.log_of("node-3");
        if log.matches("installed snapshot").count() >= 6 || std::time::Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // Then until node-3 has stopped applying (caught up on every shard, by
    // snapshot or by log): its applied-entries counter is still for 3 s.
    let mut last = (None, std::time::Instant::now());
    while last.1.elapsed() < Duration::from_secs(3) && std::time::Instant::now() < deadline {
        let applied = crate::harness::gauge(&cluster, "node-3", "redraft_node_applied_entries_total");
        if applied != last.0 {
            last = (applied, std::time::Instant::now());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = cluster.log_of("node-3");
    assert!(
        log.contains("installed snapshot"),
        "node-3 installed no snapshot:\n{log}"
    );
    for name in cluster.member_names() {
        cluster.kill9(&name);
    }
    let on_disk = crate::harness::stored_strings(&cluster.dir().join("node-3"));
    for i in 0..200 {
        assert_eq!(
            on_disk.get(&format!("before:{i}")).map(String::as_str),
            Some(i.to_string().as_str())
        );
    }
    for i in 0..2000 {
        assert_eq!(
            on_disk.get(&format!("during:{i}")),
            Some(&format!("v{i}")),
            "node-3 lacks during:{i}"
        );
    }
}

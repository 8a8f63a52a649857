//! The scheduler: a node joining under load receives replicas and leaders until
//! counts are even, and no client notices.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redraft_common::resp::Frame;

use crate::harness::{ctl, Resp, TestCluster};

fn node_counts(cluster: &TestCluster) -> Vec<(u64, u64, u64)> {
    let out = ctl(cluster, &["nodes", "--json"]);
    let nodes: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    nodes
        .iter()
        .map(|n| {
            (
                n["id"].as_u64().unwrap(),
                n["replicas"].as_u64().unwrap(),
                n["leaders"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn fourth_node_joins_under_load_and_replicas_even_out() {
    let mut cluster = TestCluster::start(3);
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(BTreeMap::new()));
    let errors = Arc::new(Mutex::new(Vec::new()));
    let client = {
        let (proxy, stop, acked, errors) = (cluster.proxy(), stop.clone(), acked.clone(), errors.clone());
        std::thread::spawn(move || {
            let mut conn = Resp::connect(proxy);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) && n < 200_000 {
                let key = format!("j{}", n % 2000);
                match conn.cmd(&format!("SET {key} {n}")) {
                    Frame::Simple(_) => {
                        acked.lock().unwrap().insert(key.clone(), n.to_string());
                    }
                    other => errors.lock().unwrap().push(format!("SET {key}: {other:?}")),
                }
                match (
                    conn.cmd(&format!("GET {key}")),
                    acked.lock().unwrap().get(&key).cloned(),
                ) {
                    (Frame::Bulk(v), Some(want)) => assert_eq!(String::from_utf8(v).unwrap(), want, "stale read"),
                    (other, _) => errors.lock().unwrap().push(format!("GET {key}: {other:?}")),
                }
                n += 1;
            }
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    let joined = cluster.add_node();
    let deadline = Instant::now() + Duration::from_secs(90);
    let balanced = loop {
        let counts = node_counts(&cluster);
        let replicas: Vec<u64> = counts.iter().map(|c| c.1).collect();
        let leaders: Vec<u64> = counts.iter().map(|c| c.2).collect();
        let even = |v: &[u64]| v.len() == 4 && v.iter().max().unwrap() - v.iter().min().unwrap() <= 1;
        if even(&replicas) && leaders.iter().sum::<u64>() == 6 && even(&leaders) {
            break counts;
        }
        if Instant::now() > deadline {
            cluster.dump_logs();
            panic!("not balanced after 90 s: {counts:?}");
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    stop.store(true, Ordering::Relaxed);
    client.join().unwrap();
    eprintln!("{joined} joined; (node, replicas, leaders): {balanced:?}");
    let errors = errors.lock().unwrap();
    assert!(
        errors.is_empty(),
        "the client saw errors: {:?}",
        &errors[..errors.len().min(5)]
    );
    let mut conn = Resp::connect(cluster.proxy());
    for (key, value) in acked.lock().unwrap().iter() {
        assert_eq!(
            conn.cmd(&format!("GET {key}")),
            Frame::bulk(value.as_str()),
            "{key} lost"
        );
    }
}

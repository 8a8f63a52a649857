//! Operator endpoints: `/health`, `/ready` and `/metrics` on every process, and
//! the main series moving under a small load.

use std::collections::HashMap;
use std::time::Duration;

use redraft_common::resp::Frame;

use crate::harness::{http_get, Resp, TestCluster};

/// Parses Prometheus text into `series -> value` (series = name plus labels).
fn scrape(cluster: &TestCluster, member: &str) -> HashMap<String, f64> {
    let addr = cluster
        .cluster
        .members()
        .find(|m| m.name == member)
        .unwrap()
        .http
        .unwrap();
    let (status, body) = http_get(addr, "/metrics");
    assert_eq!(status, 200, "{member} /metrics");
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            l.rsplit_once(' ')
                .map(|(series, v)| (series.to_string(), v.parse().unwrap_or(f64::NAN)))
        })
        .collect()
}

fn value(metrics: &HashMap<String, f64>, series: &str) -> f64 {
    *metrics.get(series).unwrap_or_else(|| panic!("series {series} missing"))
}

fn sum(cluster: &TestCluster, series: &str) -> f64 {
    ["node-1", "node-2", "node-3"]
        .iter()
        .map(|n| value(&scrape(cluster, n), series))
        .sum()
}

#[test]
fn every_process_serves_health_readiness_and_moving_metrics() {
    let cluster = TestCluster::start(3);
    for member in cluster.cluster.members() {
        let http = member.http.unwrap();
        assert_eq!(http_get(http, "/health").0, 200, "{} /health", member.name);
        let mut ready = http_get(http, "/ready");
        for _ in 0..50 {
            if ready.0 == 200 {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
            ready = http_get(http, "/ready");
        }
        assert_eq!(ready.0, 200, "{} /ready: {}", member.name, ready.1);
    }

    let proxy_before = scrape(&cluster, "proxy-1");
    let proposals_before = sum(&cluster, "redraft_node_raft_proposals_total{result=\"ok\"}");
    let batches_before = sum(&cluster, "redraft_raft_log_batch_requests_count");
    let mut conn = Resp::connect(cluster.proxy());
    let mut batch = Vec::new();
    for i in 0..200 {
        batch.extend(Frame::Array(vec![Frame::bulk("SET"), Frame::bulk(format!("m{i}")), Frame::bulk("v")]).to_bytes());
        batch.extend(Frame::Array(vec![Frame::bulk("GET"), Frame::bulk(format!("m{i}"))]).to_bytes());
    }
    conn.send_raw(&batch);
    for _ in 0..400 {
        conn.read().unwrap();
    }
    assert!(matches!(conn.cmd("NOSUCHCOMMAND"), Frame::Error(_)));
    std::thread::sleep(Duration::from_millis(1200)); // gauges refresh every 500 ms

    let proxy = scrape(&cluster, "proxy-1");
    let moved = |series: &str| value(&proxy, series) - proxy_before.get(series).copied().unwrap_or(0.0);
    assert_eq!(
        moved("redraft_proxy_commands_total{command=\"set\",result=\"ok\"}"),
        200.0
    );
    assert_eq!(
        moved("redraft_proxy_commands_total{command=\"get\",result=\"ok\"}"),
        200.0
    );
    assert_eq!(
        moved("redraft_proxy_commands_total{command=\"unknown\",result=\"error\"}"),
        1.0
    );
    assert!(moved("redraft_proxy_command_duration_seconds_count{command=\"set\"}") >= 200.0);
    assert_eq!(value(&proxy, "redraft_proxy_connections"), 1.0);
    assert!(value(&proxy, "redraft_proxy_routing_version") >= 1.0);

    assert!(sum(&cluster, "redraft_node_raft_proposals_total{result=\"ok\"}") - proposals_before >= 200.0);
    assert!(sum(&cluster, "redraft_raft_log_batch_requests_count") > batches_before);
    assert!(
        sum(&cluster, "redraft_node_applied_entries_total") >= 600.0,
        "each SET applied on 3 replicas"
    );
    assert!(sum(&cluster, "redraft_node_rocksdb_size_bytes{cf=\"raft_log\"}") > 0.0);
    let pd = scrape(&cluster, "placement-1");
    let shards = value(&pd, "redraft_placement_shards");
    assert_eq!(shards, 6.0);
    assert_eq!(
        sum(&cluster, "redraft_node_leaders"),
        shards,
        "every shard has exactly one leader"
    );
    assert_eq!(sum(&cluster, "redraft_node_replicas"), shards * 3.0);
    assert_eq!(value(&pd, "redraft_placement_nodes{state=\"up\"}"), 3.0);
    assert_eq!(value(&pd, "redraft_placement_is_leader"), 1.0);
    assert_eq!(value(&pd, "redraft_placement_shards_without_leader"), 0.0);
}

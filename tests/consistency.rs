//! Replica consistency checks: `redraft ctl verify` finds a replica whose data
//! was changed behind Raft's back, names its shard, node, vnode and key, and
//! `redraft ctl repair` replaces it by a fresh copy.

use std::time::{Duration, Instant};

use redraft_common::resp::Frame;

use crate::harness::{ctl, Resp, TestCluster};

/// Changes the stored string of `key` on a stopped node's RocksDB to `bad`,
/// keeping its revision and TTL: what a bug or a flipped bit would leave.
fn corrupt_string(node_dir: &std::path::Path, vnode: u16, key: &[u8], bad: &[u8]) {
    use redraft_raft_storage::engine::CF_DATA;
    let engine = redraft_raft_storage::Engine::open(&node_dir.join("db"), redraft_raft_storage::FsyncPolicy::Always)
        .expect("open the node's RocksDB");
    let db = engine.db();
    let stored = redraft_node::storage::data_key(vnode, key);
    let bytes = db
        .get_cf(engine.cf(CF_DATA), &stored)
        .expect("read")
        .expect("the key is stored on this replica");
    let mut value = redraft_node::storage::Value::decode(&bytes);
    value.payload = bad.to_vec();
    db.put_cf(engine.cf(CF_DATA), &stored, value.encode_at(value.revision))
        .expect("write");
    db.flush_cf(engine.cf(CF_DATA)).expect("flush");
}

/// The PD leader's `redraft_shard_digest_mismatch`: shards found differing.
fn shards_differing(cluster: &TestCluster) -> Option<i64> {
    cluster
        .cluster
        .placement
        .iter()
        .filter(|m| crate::harness::metric(m.http.expect("PD HTTP"), "redraft_placement_is_leader") == Some(1))
        .find_map(|m| crate::harness::metric(m.http?, "redraft_shard_digest_mismatch"))
}

#[test]
fn a_corrupted_follower_is_found_named_and_repaired() {
    // Manual balancing: nothing moves a leadership onto the corrupted replica.
    let mut cluster = TestCluster::start_configured(3, 1, &[], &["--manual-balance"]);
    let mut conn = Resp::connect(cluster.proxy());
    for i in 0..300 {
        assert_eq!(conn.cmd(&format!("SET c:{i} v{i}")), Frame::ok());
    }
    assert_eq!(conn.cmd("HSET h f1 a f2 b"), Frame::Integer(2));
    crate::harness::verify_agrees(&cluster);

    let key = b"c:7";
    let (shard, follower) = cluster.shard_and_follower(key);
    let table = crate::harness::routing_table(&cluster);
    let vnode = redraft_common::keys::Ring::new(table.vnode_count).vnode_of(key);
    let name = format!("node-{follower}");
    cluster.terminate(&name);
    corrupt_string(&cluster.dir().join(&name), vnode, key, b"bad");
    cluster.restart(&name);

    // Once the restarted replica takes part, the check names it.
    let deadline = Instant::now() + Duration::from_secs(60);
    let said = loop {
        let out = ctl(&cluster, &["verify", "--shard", &shard.to_string()]);
        let said = String::from_utf8_lossy(&out.stdout).into_owned();
        if !said.contains("not compared") && !said.is_empty() {
            assert!(
                !out.status.success(),
                "verify must exit 1 when replicas differ:\n{said}"
            );
            break said;
        }
        assert!(
            Instant::now() < deadline,
            "the restarted replica never took part: {said}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    eprintln!("{}", said.trim());
    assert!(said.contains(&format!("shard {shard}: DIFFER")), "{said}");
    assert!(
        said.contains(&format!("node {follower} differs from the majority")),
        "{said}"
    );
    assert!(
        said.contains(&format!("vnode {vnode}: key \"c:7\" differs on node(s) [{follower}]")),
        "{said}"
    );
    assert!(said.contains(&format!("redraft ctl repair --shard {shard} --node {follower}")));
    assert_eq!(shards_differing(&cluster), Some(1));
    // The leader serves the right value all along.
    assert_eq!(conn.cmd("GET c:7"), Frame::bulk("v7"));

    // A repair of a replica that agrees, or of the wrong one, is refused.
    let leader = table.shards[&shard].leader.expect("a leader");
    let out = ctl(
        &cluster,
        &["repair", "--shard", &shard.to_string(), "--node", &leader.to_string()],
    );
    assert!(!out.status.success());
    let refused = String::from_utf8_lossy(&out.stderr);
    assert!(
        refused.contains(&format!("node {follower} is the one that differs")),
        "{refused}"
    );

    let out = ctl(
        &cluster,
        &["repair", "--shard", &shard.to_string(), "--node", &follower.to_string()],
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "repair failed: {said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{}", said.trim());
    assert!(said.contains("fresh copy"), "{said}");
    assert_eq!(shards_differing(&cluster), Some(0));
    eprintln!("{}", crate::harness::verify_agrees(&cluster).trim());
    assert_eq!(shards_differing(&cluster), Some(0));

    // The repaired replica, made leader, serves the right values.
    assert!(
        cluster.transfer_leader(shard, follower),
        "leadership to the repaired replica"
    );
    assert_eq!(conn.cmd("GET c:7"), Frame::bulk("v7"));
    assert_eq!(conn.cmd("HGET h f2"), Frame::bulk("b"));
    for i in 0..300 {
        assert_eq!(conn.cmd(&format!("GET c:{i}")), Frame::bulk(format!("v{i}").as_str()));
    }
}

//! Lua scripts on a real cluster: every replica runs a script alike (random
//! choices included), a runaway script is stopped without hurting its node,
//! and a redis-py lock built on a release script keeps its counter exact.

use redraft_common::resp::Frame;

use crate::harness::{Resp, TestCluster};

fn text(frame: &Frame) -> String {
    match frame {
        Frame::Bulk(b) => String::from_utf8_lossy(b).into_owned(),
        Frame::Integer(n) => n.to_string(),
        other => format!("{other:?}"),
    }
}

/// Random choices (math.random, SPOP inside a script) are the leader's on
/// every replica: after the leadership moves twice, each new leader serves
/// exactly what the first one replied.
#[test]
fn scripts_choose_alike_on_every_replica() {
    let cluster = TestCluster::start(3);
    let mut conn = Resp::connect(cluster.proxy());
    let members: Vec<String> = (0..50).map(|i| format!("m{i}")).collect();
    let mut sadd = vec!["SADD", "{r}set"];
    sadd.extend(members.iter().map(String::as_str));
    conn.send(&sadd.iter().map(|s| s.as_bytes()).collect::<Vec<_>>());
    assert_eq!(conn.read(), Some(Frame::Integer(50)));
    let script = "local n = math.random(1000000000) \
                  local popped = redis.call('spop', KEYS[2], 5) \
                  redis.call('set', KEYS[1], n) \
                  return {n, popped}";
    let mut replies = Vec::new();
    for _ in 0..3 {
        conn.send(&[b"EVAL", script.as_bytes(), b"2", b"{r}n", b"{r}set"]);
        let Some(Frame::Array(reply)) = conn.read() else {
            panic!("script failed")
        };
        replies.push(reply);
    }
    let last_number = text(&replies[2][0]);
    let popped: Vec<String> = replies
        .iter()
        .flat_map(|r| match &r[1] {
            Frame::Array(items) => items.iter().map(text).collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(popped.len(), 15);
    let mut expected_left: Vec<String> = members.iter().filter(|m| !popped.contains(m)).cloned().collect();
    expected_left.sort();
    for _ in 0..2 {
        let (shard, follower) = cluster.shard_and_follower(b"{r}n");
        assert!(cluster.transfer_leader(shard, follower), "leadership did not move");
        assert_eq!(text(&conn.cmd("GET {r}n")), last_number);
        let Frame::Array(left) = conn.cmd("SMEMBERS {r}set") else {
            panic!()
        };
        let mut left: Vec<String> = left.iter().map(text).collect();
        left.sort();
        assert_eq!(left, expected_left);
    }
}

/// A script that never ends is stopped by its instruction budget with an
/// error, and the shard goes on serving; writes made before stay, as in Redis.
/// SCRIPT KILL stops a read-only script, and refuses one that may write.
#[test]
fn a_runaway_script_is_stopped_and_the_shard_keeps_serving() {
    let cluster = TestCluster::start(3);
    let mut conn = Resp::connect(cluster.proxy());
    let mut admin = Resp::connect(cluster.proxy());
    assert_eq!(
        admin.cmd("SCRIPT KILL"),
        Frame::error("NOTBUSY No scripts in execution right now.")
    );
    conn.send(&[b"EVAL_RO", b"while true do end", b"0"]);
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(admin.cmd("FUNCTION KILL"), Frame::ok());
    match conn.read() {
        Some(Frame::Error(e)) => assert!(e.starts_with("ERR Script killed by user with SCRIPT KILL..."), "{e}"),
        other => panic!("{other:?}"),
    }
    conn.send(&[b"EVAL", b"while true do end", b"1", b"{loop}w"]);
    std::thread::sleep(std::time::Duration::from_millis(200));
    match admin.cmd("SCRIPT KILL") {
        Frame::Error(e) => assert!(e.starts_with("UNKILLABLE"), "{e}"),
        other => panic!("{other:?}"),
    }
    match conn.read() {
        Some(Frame::Error(e)) => assert!(e.contains("instruction budget"), "{e}"),
        other => panic!("{other:?}"),
    }
    conn.send(&[
        b"EVAL",
        b"redis.call('set', KEYS[1], 'before') while true do end",
        b"1",
        b"{loop}k",
    ]);
    match conn.read() {
        Some(Frame::Error(e)) => assert!(e.contains("instruction budget"), "{e}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(conn.cmd("GET {loop}k"), Frame::bulk("before"));
    assert_eq!(conn.cmd("SET {loop}other 1"), Frame::ok());
    // A script that allocates without end is stopped by the memory limit.
    conn.send(&[b"EVAL", b"local t = {} for i = 1, 1e9 do t[i] = i end", b"0"]);
    assert!(matches!(conn.read(), Some(Frame::Error(_))));
    assert_eq!(conn.cmd("PING"), Frame::Simple("PONG".into()));
}

/// redis-py workers share a counter under a Redlock-style lock released by
/// a script: no update is lost, and a foreign token releases nothing.
#[test]
fn redis_py_lock_with_a_release_script_loses_no_update() {
    let cluster = TestCluster::start(3);
    let out = crate::harness::python("lock.py")
        .args([&cluster.proxy().port().to_string(), "4", "50"])
        .output()
        .expect("redis-py virtualenv (scripts/test.sh creates it)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("counter 200 releases 200 foreign-release 0 lock owner"),
        "{stdout}"
    );
}

/// Functions loaded through one proxy are found through another, and FUNCTION
/// DUMP payloads move between redis-server 7.0 and Redraft both ways.
#[test]
fn functions_reach_every_proxy_and_dumps_move_to_and_from_redis() {
    let mut cluster = TestCluster::start(3);
    let mut first = Resp::connect(cluster.proxy());
    let library = "#!lua name=counters\n\
                   redis.register_function('bump', function(keys, args) return redis.call('incrby', keys[1], args[1]) end)";
    first.send(&[b"FUNCTION", b"LOAD", library.as_bytes()]);
    assert_eq!(first.read(), Some(Frame::bulk("counters")));
    let mut second = Resp::connect(cluster.add_proxy());
    second.send(&[b"FCALL", b"bump", b"1", b"{c}n", b"5"]);
    assert_eq!(second.read(), Some(Frame::Integer(5)));

    let port = crate::harness::free_port();
    let _redis = crate::compat::start_redis(port);
    let mut redis = Resp::connect(([127, 0, 0, 1], port).into());
    let Frame::Bulk(ours) = first.cmd("FUNCTION DUMP") else {
        panic!("no dump")
    };
    redis.send(&[b"FUNCTION", b"RESTORE", &ours]);
    assert_eq!(redis.read(), Some(Frame::ok()));
    assert_eq!(redis.cmd("FCALL bump 1 n 2"), Frame::Integer(2));
    redis.send(&[
        b"FUNCTION",
        b"LOAD",
        b"#!lua name=fromredis\nredis.register_function('hello', function() return 'hi' end)",
    ]);
    assert_eq!(redis.read(), Some(Frame::bulk("fromredis")));
    let Frame::Bulk(theirs) = redis.cmd("FUNCTION DUMP") else {
        panic!("no dump")
    };
    first.send(&[b"FUNCTION", b"RESTORE", &theirs, b"REPLACE"]);
    assert_eq!(first.read(), Some(Frame::ok()));
    assert_eq!(second.cmd("FCALL hello 0"), Frame::bulk("hi"));
    let mut corrupt = theirs.clone();
    corrupt[3] ^= 0xff;
    first.send(&[b"FUNCTION", b"RESTORE", &corrupt]);
    assert_eq!(
        first.read(),
        Some(Frame::error("ERR DUMP payload version or checksum are wrong"))
    );
}

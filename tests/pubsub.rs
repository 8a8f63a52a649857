//! Pub/Sub through any proxy: a message published at one proxy reaches
//! subscribers on every proxy, with Redis's confirmations, pattern and sharded
//! channels, RESP3 push frames and the RESP2 subscribed-mode rules.

use std::time::{Duration, Instant};

use redraft_common::resp::Frame;

use crate::harness::{Resp, TestCluster};

fn bulk(s: &str) -> Frame {
    Frame::bulk(s)
}

/// Reads the next frame (the harness's read timeout fails the test).
fn next(conn: &mut Resp) -> Frame {
    conn.read().expect("connection open")
}

#[test]
fn messages_cross_proxies_with_redis_semantics() {
    let mut cluster = TestCluster::start(3);
    let second = cluster.add_proxy();
    let mut subscriber = Resp::connect(cluster.proxy());
    let mut publisher = Resp::connect(second);

    // SUBSCRIBE confirms each channel with the running count.
    subscriber.send(&[b"SUBSCRIBE", b"news", b"sport"]);
    assert_eq!(
        next(&mut subscriber),
        Frame::Array(vec![bulk("subscribe"), bulk("news"), Frame::Integer(1)])
    );
    assert_eq!(
        next(&mut subscriber),
        Frame::Array(vec![bulk("subscribe"), bulk("sport"), Frame::Integer(2)])
    );
    subscriber.send(&[b"PSUBSCRIBE", b"n*"]);
    assert_eq!(
        next(&mut subscriber),
        Frame::Array(vec![bulk("psubscribe"), bulk("n*"), Frame::Integer(3)])
    );

    // Published at the other proxy: one channel and one pattern subscriber.
    assert_eq!(publisher.cmd("PUBLISH news hello"), Frame::Integer(2));
    let mut got = vec![next(&mut subscriber), next(&mut subscriber)];
    got.sort_by_key(|f| format!("{f:?}"));
    assert_eq!(
        got,
        vec![
            Frame::Array(vec![bulk("message"), bulk("news"), bulk("hello")]),
            Frame::Array(vec![bulk("pmessage"), bulk("n*"), bulk("news"), bulk("hello")]),
        ]
    );
    assert_eq!(publisher.cmd("PUBLISH other x"), Frame::Integer(0));
    // One publisher's messages to one channel arrive in order.
    for i in 0..50 {
        assert_eq!(publisher.cmd(&format!("PUBLISH sport m{i}")), Frame::Integer(1));
    }
    for i in 0..50 {
        assert_eq!(
            next(&mut subscriber),
            Frame::Array(vec![bulk("message"), bulk("sport"), bulk(&format!("m{i}"))])
        );
    }

    // Introspection sees subscriptions made at any proxy.
    assert_eq!(
        publisher.cmd("PUBSUB NUMSUB news missing"),
        Frame::Array(vec![
            bulk("news"),
            Frame::Integer(1),
            bulk("missing"),
            Frame::Integer(0)
        ])
    );
    let Frame::Array(mut channels) = publisher.cmd("PUBSUB CHANNELS") else {
        panic!()
    };
    channels.sort_by_key(|f| format!("{f:?}"));
    assert_eq!(channels, vec![bulk("news"), bulk("sport")]);
    assert_eq!(publisher.cmd("PUBSUB NUMPAT"), Frame::Integer(1));

    // RESP2 subscribed mode: only the subscription commands and PING.
    assert_eq!(
        subscriber.cmd("GET k"),
        Frame::error(
            "ERR Can't execute 'get': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context"
        )
    );
    assert_eq!(subscriber.cmd("PING"), Frame::Array(vec![bulk("pong"), bulk("")]));

    // Sharded channels are their own namespace.
    subscriber.send(&[b"SSUBSCRIBE", b"orders"]);
    assert_eq!(
        next(&mut subscriber),
        Frame::Array(vec![bulk("ssubscribe"), bulk("orders"), Frame::Integer(1)])
    );
    assert_eq!(publisher.cmd("PUBLISH orders x"), Frame::Integer(0));
    assert_eq!(publisher.cmd("SPUBLISH orders y"), Frame::Integer(1));
    assert_eq!(
        next(&mut subscriber),
        Frame::Array(vec![bulk("smessage"), bulk("orders"), bulk("y")])
    );

    // UNSUBSCRIBE with no argument leaves every channel; patterns remain.
    subscriber.send(&[b"UNSUBSCRIBE"]);
    let mut left = vec![next(&mut subscriber), next(&mut subscriber)];
    left.sort_by_key(|f| format!("{f:?}"));
    assert_eq!(
        left,
        vec![
            Frame::Array(vec![bulk("unsubscribe"), bulk("news"), Frame::Integer(2)]),
            Frame::Array(vec![bulk("unsubscribe"), bulk("sport"), Frame::Integer(1)]),
        ]
    );
    assert_eq!(publisher.cmd("PUBLISH sport x"), Frame::Integer(0));

    // RESP3: messages are push frames and other commands still work.
    let mut resp3 = Resp::connect(second);
    assert!(matches!(resp3.cmd("HELLO 3"), Frame::Map(_)));
    resp3.send(&[b"SUBSCRIBE", b"live"]);
    assert_eq!(
        next(&mut resp3),
        Frame::Array(vec![bulk("subscribe"), bulk("live"), Frame::Integer(1)])
    );
    assert_eq!(resp3.cmd("SET k v"), Frame::ok());
    assert_eq!(publisher.cmd("PUBLISH live now"), Frame::Integer(1));
    assert_eq!(
        next(&mut resp3),
        Frame::Array(vec![bulk("message"), bulk("live"), bulk("now")])
    );

    // A subscriber that disconnects stops counting.
    drop(resp3);
    let deadline = Instant::now() + Duration::from_secs(10);
    while publisher.cmd("PUBLISH live again") != Frame::Integer(0) {
        assert!(Instant::now() < deadline, "closed subscriber still counted");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Keyspace notifications (`notify-keyspace-events`), expired keys first:
/// the shard that deletes an expired key publishes `expired` on Redis's two
/// channels, subscribers on any proxy get them when the class and channel
/// kind are enabled, and nothing when they are not.
#[test]
fn expired_keys_are_notified_as_configured() {
    let mut cluster = TestCluster::start(3);
    let second = cluster.add_proxy();
    let mut subscriber = Resp::connect(cluster.proxy());
    let mut writer = Resp::connect(second);
    assert_eq!(writer.cmd("CONFIG SET notify-keyspace-events Ex"), Frame::ok());
    subscriber.send(&[b"SUBSCRIBE", b"__keyevent@0__:expired"]);
    next(&mut subscriber);
    subscriber.send(&[b"PSUBSCRIBE", b"__keyspace@0__:*"]);
    next(&mut subscriber);
    // Let the proxy read the setting (it rereads it every 500 ms).
    std::thread::sleep(Duration::from_millis(1200));
    for i in 0..3 {
        assert_eq!(writer.cmd(&format!("SET gone{i} v PX 50")), Frame::ok());
    }
    assert_eq!(writer.cmd("SET stays v"), Frame::ok());
    let mut expired = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while expired.len() < 3 {
        assert!(Instant::now() < deadline, "expired events seen: {expired:?}");
        match next(&mut subscriber) {
            Frame::Array(items) | Frame::Push(items) => {
                // Only the keyevent channel is enabled (E, not K).
                assert_eq!(items[0], bulk("message"), "{items:?}");
                assert_eq!(items[1], bulk("__keyevent@0__:expired"));
                expired.push(items[2].clone());
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    expired.sort_by_key(|f| format!("{f:?}"));
    assert_eq!(expired, vec![bulk("gone0"), bulk("gone1"), bulk("gone2")]);
    // With K and every class: the keyspace channel carries each event's
    // name, the write's own (`set`, `expire`) and then `expired`.
    assert_eq!(writer.cmd("CONFIG SET notify-keyspace-events KA"), Frame::ok());
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(writer.cmd("SET {t}later v PX 50"), Frame::ok());
    let mut events = Vec::new();
    while events.len() < 3 {
        let (Frame::Array(items) | Frame::Push(items)) = next(&mut subscriber) else {
            continue;
        };
        assert_eq!(items[0], bulk("pmessage"), "E is off now: {items:?}");
        assert_eq!(items[2], bulk("__keyspace@0__:{t}later"));
        events.push(items[3].clone());
    }
    assert_eq!(events, vec![bulk("set"), bulk("expire"), bulk("expired")]);
    // Disabled: an expiring key publishes nothing, an ordinary PUBLISH on
    // the channel still arrives.
    writer.send(&[b"CONFIG", b"SET", b"notify-keyspace-events", b""]);
    assert_eq!(writer.read().unwrap(), Frame::ok());
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(writer.cmd("SET quiet v PX 50"), Frame::ok());
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(writer.cmd("EXISTS quiet"), Frame::Integer(0));
    assert_eq!(writer.cmd("PUBLISH __keyevent@0__:expired by-hand"), Frame::Integer(1));
    assert_eq!(
        next(&mut subscriber),
        Frame::Array(vec![bulk("message"), bulk("__keyevent@0__:expired"), bulk("by-hand")])
    );
}

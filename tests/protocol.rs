//! Pipelining, bad input and connection behaviour at the proxy.

use redraft_common::resp::Frame;

use crate::harness::{Resp, TestCluster};

#[test]
fn pipelines_keep_order_and_bad_input_gets_redis_errors() {
    let cluster = TestCluster::start(3);

    // 1000 pipelined commands in one write: replies come back in order.
    let mut conn = Resp::connect(cluster.proxy());
    let mut batch = Vec::new();
    for i in 0..500 {
        batch.extend(
            Frame::Array(vec![
                Frame::bulk("SET"),
                Frame::bulk(format!("p{i}")),
                Frame::bulk(format!("v{i}")),
            ])
            .to_bytes(),
        );
        batch.extend(Frame::Array(vec![Frame::bulk("GET"), Frame::bulk(format!("p{i}"))]).to_bytes());
    }
    conn.send_raw(&batch);
    for i in 0..500 {
        assert_eq!(conn.read().unwrap(), Frame::ok());
        assert_eq!(conn.read().unwrap(), Frame::bulk(format!("v{i}")));
    }

    // Consecutive reads of one shard leave as one request (one read barrier):
    // every read still gets its own answer, in order, and sees the writes
    // pipelined before it.
    let request = |args: &[&str]| Frame::Array(args.iter().map(|a| Frame::bulk(*a)).collect()).to_bytes();
    let mut batch = Vec::new();
    for i in 0..500 {
        batch.extend(request(&["GET", &format!("p{i}")]));
    }
    batch.extend(request(&["RPUSH", "plist", "a"]));
    batch.extend(request(&["GET", "plist"]));
    batch.extend(request(&["GET", "p-missing"]));
    batch.extend(request(&["STRLEN", "p12"]));
    batch.extend(request(&["SET", "p12", "changed"]));
    batch.extend(request(&["GET", "p12"]));
    batch.extend(request(&["GET", "p13"]));
    conn.send_raw(&batch);
    for i in 0..500 {
        assert_eq!(conn.read().unwrap(), Frame::bulk(format!("v{i}")), "GET p{i}");
    }
    assert_eq!(conn.read().unwrap(), Frame::Integer(1));
    assert_eq!(
        conn.read().unwrap(),
        Frame::error("WRONGTYPE Operation against a key holding the wrong kind of value")
    );
    assert_eq!(conn.read().unwrap(), Frame::Null);
    assert_eq!(conn.read().unwrap(), Frame::Integer(3));
    assert_eq!(conn.read().unwrap(), Frame::ok());
    assert_eq!(conn.read().unwrap(), Frame::bulk("changed"));
    assert_eq!(conn.read().unwrap(), Frame::bulk("v13"));

    // A request split across many writes is reassembled.
    for byte in b"*2\r\n$3\r\nGET\r\n$2\r\np7\r\n" {
        conn.send_raw(&[*byte]);
    }
    assert_eq!(conn.read().unwrap(), Frame::bulk("v7"));

    // Inline commands work (telnet style).
    conn.send_raw(b"PING\r\nECHO \"a b\"\r\n");
    assert_eq!(conn.read().unwrap(), Frame::Simple("PONG".into()));
    assert_eq!(conn.read().unwrap(), Frame::bulk("a b"));

    // Protocol errors: Redis's text, then the connection is closed.
    let cases: &[(&[u8], &str)] = &[
        (b"*1\r\n:5\r\n", "ERR Protocol error: expected '$', got ':'"),
        (b"*abc\r\n", "ERR Protocol error: invalid multibulk length"),
        (b"*1\r\n$99999999999\r\n", "ERR Protocol error: invalid bulk length"),
        (
            b"SET \"unbalanced\r\n",
            "ERR Protocol error: unbalanced quotes in request",
        ),
    ];
    for (input, expected) in cases {
        let mut bad = Resp::connect(cluster.proxy());
        bad.send_raw(input);
        assert_eq!(bad.read(), Some(Frame::error(*expected)));
        assert_eq!(bad.read(), None, "connection closed after a protocol error");
    }

    // Random garbage never takes the proxy down.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..50 {
        use std::io::Write;
        let mut bad = std::net::TcpStream::connect(cluster.proxy()).unwrap();
        let bytes: Vec<u8> = (0..256)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                (seed & 0xff) as u8
            })
            .collect();
        // The proxy may close the connection at the first error: ignore write failures.
        let _ = bad.write_all(&bytes);
        let _ = bad.write_all(b"\r\n");
    }
    let mut conn = Resp::connect(cluster.proxy());
    assert_eq!(
        conn.cmd("GET p1"),
        Frame::bulk("v1"),
        "proxy still serves after garbage"
    );
    assert_eq!(conn.cmd("QUIT"), Frame::ok());
    assert_eq!(conn.read(), None);
}

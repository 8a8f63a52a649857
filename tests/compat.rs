//! Replies compared byte for byte with a stock `redis-server` started by the test.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redraft_common::resp::Frame;

use crate::harness::{free_port, Resp, TestCluster};

pub(crate) struct RedisServer(Child);

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn start_redis(port: u16) -> RedisServer {
    start_redis_in(port, std::path::Path::new("."))
}

/// A redis-server whose files (SAVE's dump.rdb, the one it loads at start-up)
/// are in `dir`.
fn start_redis_in(port: u16, dir: &std::path::Path) -> RedisServer {
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--enable-debug-command",
            "yes",
        ])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server must be installed (the test command installs it)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    RedisServer(child)
}

/// Each line is sent to both servers; replies must be identical bytes. The
/// scripts cover every command Redraft has, with the error cases clients hit.
const SCRIPTS: &[(&str, &str)] = &[
    ("strings", include_str!("scripts/strings.txt")),
    ("collections", include_str!("scripts/collections.txt")),
    ("connection", include_str!("scripts/connection.txt")),
    ("keys", include_str!("scripts/keys.txt")),
    ("transactions", include_str!("scripts/transactions.txt")),
    ("acl", include_str!("scripts/acl.txt")),
    ("blocking", include_str!("scripts/blocking.txt")),
    ("scripting", include_str!("scripts/scripting.txt")),
    ("bitmaps", include_str!("scripts/bitmaps.txt")),
    ("geo", include_str!("scripts/geo.txt")),
    ("more-commands", include_str!("scripts/more-commands.txt")),
];

/// A script line's arguments: words split at spaces, except inside double
/// quotes, where `\n` is a newline and `\"` a quote (Lua scripts as
/// arguments).
fn words(line: &str) -> Vec<Vec<u8>> {
    let (mut words, mut word, mut quoted) = (Vec::new(), Vec::new(), false);
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => quoted = !quoted,
            '\\' if quoted && matches!(chars.peek(), Some('n' | '"')) => {
                let escaped = chars.next();
                word.push(if escaped == Some('n') { b'\n' } else { b'"' });
            }
            ' ' if !quoted => words.push(std::mem::take(&mut word)),
            c => word.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
        }
    }
    words.push(word);
    words
}

/// A reply's bytes, with an unordered array's items sorted (`pairs`: in pairs).
fn comparable(reply: Frame, order: Order) -> String {
    let sorted = |items: Vec<Frame>, chunk: usize| {
        let mut groups: Vec<Vec<Frame>> = items.chunks(chunk).map(<[Frame]>::to_vec).collect();
        groups.sort_by_key(|g| g.iter().flat_map(Frame::to_bytes).collect::<Vec<u8>>());
        Frame::Array(groups.into_iter().flatten().collect())
    };
    let reply = match (reply, order) {
        (Frame::Array(items), Order::Unordered) => sorted(items, 1),
        (Frame::Array(items), Order::UnorderedPairs) => sorted(items, 2),
        (reply, _) => reply,
    };
    String::from_utf8_lossy(&reply.to_bytes()).into_owned()
}

#[derive(Clone, Copy)]
enum Order {
    AsIs,
    Unordered,
    UnorderedPairs,
}

#[test]
fn replies_match_redis_server_byte_for_byte() {
    let cluster = TestCluster::start(3);
    let port = free_port();
    let _redis = start_redis(port);
    let mut ours = Resp::connect(cluster.proxy());
    let mut theirs = Resp::connect(([127, 0, 0, 1], port).into());
    let mut differences = Vec::new();
    for (name, script) in SCRIPTS {
        let mut checked = 0;
        for line in script
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let (order, command) = if let Some(rest) = line.strip_prefix("~~ ") {
                (Order::UnorderedPairs, rest)
            } else if let Some(rest) = line.strip_prefix("~ ") {
                (Order::Unordered, rest)
            } else {
                (Order::AsIs, line)
            };
            let words = words(command);
            let args: Vec<&[u8]> = words.iter().map(Vec::as_slice).collect();
            ours.send(&args);
            theirs.send(&args);
            let (a, b) = (ours.read().unwrap(), theirs.read().unwrap());
            let (a, b) = (comparable(a, order), comparable(b, order));
            if a != b {
                differences.push(format!("{name}: `{command}`\n  ours:   {a:?}\n  theirs: {b:?}"));
            }
            checked += 1;
        }
        assert!(checked > 30, "{name} script too short: {checked}");
    }
    assert!(
        differences.is_empty(),
        "replies differ from redis-server:\n{}",
        differences.join("\n")
    );
    // Exchanges where a command has no reply (CLIENT REPLY OFF and SKIP) or
    // several (unsubscribing), compared as the bytes of a whole pipeline.
    let exchanges: &[&[&str]] = &[
        &[
            "CLIENT REPLY OFF",
            "SET cr 1",
            "GET cr",
            "CLIENT REPLY SKIP",
            "CLIENT REPLY ON",
            "GET cr",
            "CLIENT REPLY SKIP",
            "GET cr",
            "CLIENT REPLY SKIP",
            "CLIENT REPLY SKIP",
            "PING",
            "CLIENT REPLY BAD",
            "CLIENT REPLY",
        ],
        &[
            "PSUBSCRIBE x* y*",
            "PUNSUBSCRIBE x*",
            "PUNSUBSCRIBE",
            "PUNSUBSCRIBE",
            "SUBSCRIBE c1 c2",
            "UNSUBSCRIBE c1",
            "UNSUBSCRIBE",
        ],
    ];
    for commands in exchanges {
        let (a, b) = (
            raw_exchange(cluster.proxy(), commands),
            raw_exchange(([127, 0, 0, 1], port).into(), commands),
        );
        assert_eq!(
            String::from_utf8_lossy(&a),
            String::from_utf8_lossy(&b),
            "{commands:?}: ours, then redis-server's"
        );
    }
}

/// Sends `commands` as one pipeline on a new connection, then `ECHO` of a
/// marker, and returns every byte received up to the marker's reply.
fn raw_exchange(addr: std::net::SocketAddr, commands: &[&str]) -> Vec<u8> {
    use std::io::{Read, Write};
    let marker = "end-of-exchange";
    let mut request = Vec::new();
    for command in commands.iter().copied().chain([format!("ECHO {marker}").as_str()]) {
        let args: Vec<&str> = command.split(' ').collect();
        request.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for arg in args {
            request.extend_from_slice(format!("${}\r\n{arg}\r\n", arg.len()).as_bytes());
        }
    }
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    conn.write_all(&request).unwrap();
    let end = format!("${}\r\n{marker}\r\n", marker.len());
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    while !received.ends_with(end.as_bytes()) {
        let n = conn.read(&mut chunk).expect("the marker's reply arrives");
        assert!(
            n > 0,
            "connection closed after {:?}",
            String::from_utf8_lossy(&received)
        );
        received.extend_from_slice(&chunk[..n]);
    }
    received
}

#[test]
fn redis_cli_works_through_the_proxy() {
    let cluster = TestCluster::start(3);
    let port = cluster.proxy().port().to_string();
    let run = |args: &[&str]| {
        let out = Command::new("redis-cli")
            .args(["-p", &port])
            .args(args)
            .output()
            .expect("redis-cli installed");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(run(&["set", "a", "b"]), "OK");
    assert_eq!(run(&["get", "a"]), "b");
    assert_eq!(run(&["dbsize"]), "1");
    let info = run(&["info"]);
    for section in ["# Server", "# Clients", "# Stats", "# Cluster", "# Keyspace"] {
        assert!(info.contains(section), "INFO lacks {section}: {info}");
    }
    assert!(
        info.contains("redraft_shards:6") && info.contains("redraft_nodes:3"),
        "{info}"
    );
    assert!(
        run(&["info", "keyspace"]).contains("db0:keys=1"),
        "INFO keyspace counts keys"
    );
    assert!(
        !run(&["info", "server"]).contains("# Keyspace"),
        "INFO server shows one section"
    );
}

/// RESP3 as `redis-cli -3` negotiates it (HELLO 3): maps, sets, doubles and
/// nulls print the same for Redraft and redis-server.
#[test]
fn resp3_replies_match_redis_server_through_redis_cli() {
    let cluster = TestCluster::start(3);
    let port = free_port();
    let _redis = start_redis(port);
    let run = |port: u16, line: &str| {
        let out = Command::new("redis-cli")
            .args(["-3", "--no-raw", "-p", &port.to_string()])
            .args(line.split(' '))
            .output()
            .expect("redis-cli installed");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let lines = [
        "SET s v",
        "GET s",
        "GET missing",
        "HSET h f v",
        "HGETALL h",
        "HGETALL missing",
        "HRANDFIELD h 1 WITHVALUES",
        "SADD st m",
        "SMEMBERS st",
        "SRANDMEMBER st -2",
        "ZADD z 1.5 a 2 b 3 c",
        "ZSCORE z a",
        "ZSCORE z missing",
        "ZMSCORE z b nope",
        "ZRANGE z 0 -1 WITHSCORES",
        "ZRANGEBYSCORE z 2 +inf WITHSCORES",
        "ZINCRBY z 1 a",
        "ZPOPMIN z",
        "ZPOPMAX z 2",
        "RPUSH l a b",
        "LPOP l 5",
        "LPOP missing 2",
        "INCRBYFLOAT f 1.5",
        "CONFIG GET maxmemory",
        "SPOP st 1",
        "HELLO 4",
    ];
    let mut differences = Vec::new();
    for line in lines {
        let (ours, theirs) = (run(cluster.proxy().port(), line), run(port, line));
        if ours != theirs {
            differences.push(format!("`{line}`\n  ours:   {ours:?}\n  theirs: {theirs:?}"));
        }
    }
    assert!(
        differences.is_empty(),
        "RESP3 output differs:\n{}",
        differences.join("\n")
    );
}

/// HELLO switches the connection's protocol and names it; CLIENT LIST shows the
/// proxy's connections and CLIENT KILL closes one; CLUSTER answers as one node
/// owning every slot at the address the client used; LEADER names a key's shard.
#[test]
fn hello_client_cluster_and_leader() {
    let cluster = TestCluster::start(3);
    let mut a = Resp::connect(cluster.proxy());
    let mut b = Resp::connect(cluster.proxy());
    let hello = a.cmd("HELLO 3 SETNAME first");
    let Frame::Map(fields) = hello else {
        panic!("HELLO 3 answers a map: {hello:?}")
    };
    let field = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| *k == Frame::bulk(name))
            .map(|(_, v)| v.clone())
    };
    assert_eq!(field("proto"), Some(Frame::Integer(3)));
    assert_eq!(field("server"), Some(Frame::bulk("redis")));
    let Some(Frame::Integer(a_id)) = field("id") else {
        panic!("{fields:?}")
    };
    // RESP3 from now on: a null is `_`, a map is `%`.
    a.send(&[b"GET", b"missing"]);
    assert_eq!(a.read(), Some(Frame::Null));
    assert_eq!(b.cmd("CLIENT SETINFO LIB-NAME redraft-test"), Frame::ok());
    // The readiness probe's connection (a DBSIZE) may still be listed until
    // the proxy has seen it close.
    let deadline = Instant::now() + Duration::from_secs(5);
    let list = loop {
        let Frame::Bulk(list) = b.cmd("CLIENT LIST") else {
            panic!()
        };
        let list = String::from_utf8(list).unwrap();
        if !list.contains("cmd=dbsize") || Instant::now() > deadline {
            break list;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(list.lines().count(), 2, "{list}");
    assert!(list.contains(&format!("id={a_id} ")) && list.contains("name=first") && list.contains("resp=3"));
    assert!(list.contains("lib-name=redraft-test"), "{list}");
    let Frame::Integer(b_id) = b.cmd("CLIENT ID") else {
        panic!()
    };
    assert_ne!(a_id, b_id);
    // b kills a: a's connection closes, b stays.
    assert_eq!(b.cmd(&format!("CLIENT KILL ID {a_id}")), Frame::Integer(1));
    a.send(&[b"PING"]);
    assert_eq!(a.read(), None, "killed connection must be closed");
    assert_eq!(b.cmd("PING"), Frame::Simple("PONG".into()));

    let Frame::Array(slots) = b.cmd("CLUSTER SLOTS") else {
        panic!()
    };
    let Frame::Array(range) = &slots[0] else { panic!() };
    assert_eq!(range[..2], [Frame::Integer(0), Frame::Integer(16383)]);
    let Frame::Array(node) = &range[2] else { panic!() };
    assert_eq!(node[1], Frame::Integer(i64::from(cluster.proxy().port())));
    let Frame::Bulk(info) = b.cmd("CLUSTER INFO") else {
        panic!()
    };
    assert!(String::from_utf8(info).unwrap().contains("cluster_state:ok"));

    b.cmd("SET somekey v");
    let Frame::Array(leader) = b.cmd("LEADER somekey") else {
        panic!()
    };
    let text: Vec<String> = leader.iter().map(|f| format!("{f:?}")).collect();
    assert_eq!(leader.len(), 10, "{text:?}");
    assert_eq!(leader[2], Frame::bulk("shard"));
    let Frame::Array(replicas) = &leader[9] else {
        panic!("{text:?}")
    };
    assert_eq!(replicas.len(), 3, "three replicas: {text:?}");
}

/// SCAN's guarantee across shards: a full iteration returns every key present
/// for the whole scan, with MATCH and TYPE applied; keys of one command in
/// different shards are refused with CROSSSLOT.
#[test]
fn scan_walks_every_shard_and_multi_key_commands_stay_in_one() {
    let cluster = TestCluster::start(3);
    let mut conn = Resp::connect(cluster.proxy());
    for i in 0..300 {
        assert_eq!(conn.cmd(&format!("SET key:{i} v")), Frame::ok());
    }
    for i in 0..20 {
        assert_eq!(conn.cmd(&format!("HSET hash:{i} f v")), Frame::Integer(1));
    }
    let scan_all = |conn: &mut Resp, options: &str| {
        let mut cursor = "0".to_string();
        let mut seen = std::collections::BTreeSet::new();
        let mut calls = 0;
        loop {
            let (next, keys) = conn.scan_page(&format!("SCAN {cursor}{options}"));
            seen.extend(keys);
            cursor = next;
            calls += 1;
            // Churn while scanning: keys come and go, the 320 above stay.
            conn.cmd(&format!("SET churn:{calls} v"));
            conn.cmd(&format!("DEL churn:{}", calls - 1));
            if cursor == "0" {
                return (seen, calls);
            }
            assert!(calls < 2000, "SCAN must finish");
        }
    };
    let (all, calls) = scan_all(&mut conn, " COUNT 50");
    for i in 0..300 {
        assert!(all.contains(&format!("key:{i}")), "key:{i} missing from SCAN");
    }
    assert!(calls > 1, "COUNT bounds each call");
    // A COUNT above the keyspace: everything in one call.
    let (cursor, keys) = conn.scan_page("SCAN 0 COUNT 1000");
    assert_eq!(cursor, "0", "one call covers a small keyspace");
    assert!(keys.len() >= 320, "{} keys", keys.len());
    // A split while a scan is under way: every key present throughout is returned.
    let (split_scan, split) = std::thread::scope(|scope| {
        let split = scope.spawn(|| crate::harness::ctl(&cluster, &["split", "--shard", "2"]));
        let mut scanner = Resp::connect(cluster.proxy());
        let mut seen = std::collections::BTreeSet::new();
        let mut cursor = "0".to_string();
        loop {
            let (next, keys) = scanner.scan_page(&format!("SCAN {cursor} COUNT 10"));
            seen.extend(keys);
            cursor = next;
            if cursor == "0" {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        (seen, split.join().unwrap())
    });
    assert!(split.status.success(), "{}", String::from_utf8_lossy(&split.stderr));
    for i in 0..300 {
        assert!(
            split_scan.contains(&format!("key:{i}")),
            "key:{i} missing from a SCAN across a split"
        );
    }
    let (hashes, _) = scan_all(&mut conn, " TYPE hash COUNT 100");
    assert_eq!(hashes.len(), 20, "{hashes:?}");
    let (matched, _) = scan_all(&mut conn, " MATCH key:1?");
    assert_eq!(matched.len(), 10, "{matched:?}");
    let Frame::Array(keys) = conn.cmd("KEYS hash:*") else {
        panic!()
    };
    assert_eq!(keys.len(), 20);
    // A pattern that makes a recursive glob matcher exponential is answered
    // like any other (it used to stall a node into `TRYAGAIN`).
    conn.cmd(&format!("SET {} x", "a".repeat(60)));
    let hostile = format!("KEYS {}b", "a*".repeat(20));
    assert_eq!(conn.cmd(&hostile), Frame::Array(Vec::new()));
    let (hostile_scan, _) = scan_all(&mut conn, &format!(" MATCH {}a COUNT 1000", "a*".repeat(20)));
    assert_eq!(hostile_scan.into_iter().collect::<Vec<_>>(), vec!["a".repeat(60)]);
    assert!(matches!(conn.cmd("RANDOMKEY"), Frame::Bulk(_)));

    // Two keys in different shards: CROSSSLOT, and nothing changes.
    let other = (0..300)
        .map(|i| format!("key:{i}"))
        .find(|k| conn.cmd(&format!("LEADER {k}")) != conn.cmd("LEADER key:0"))
        .expect("300 keys cover more than one shard");
    let crossslot = Frame::error("CROSSSLOT Keys in request don't hash to the same slot");
    assert_eq!(conn.cmd(&format!("RENAME key:0 {other}")), crossslot);
    assert_eq!(conn.cmd(&format!("SINTERSTORE {other} key:0")), crossslot);
    assert_eq!(conn.cmd("EXISTS key:0"), Frame::Integer(1));
}

/// The Python client most applications use, from PyPI (the test command
/// installs it in a virtualenv): pipelines, transactions with WATCH under
/// contention, Pub/Sub across two proxies, RESP3 and every collection type,
/// through its own reply parsing.
#[test]
fn redis_py_pipelines_transactions_pubsub_and_resp3() {
    let mut cluster = TestCluster::start(3);
    let second = cluster.add_proxy();
    let out = crate::harness::python("redis_py_client.py")
        .args([&cluster.proxy().port().to_string(), &second.port().to_string()])
        .output()
        .expect("redis-py virtualenv (scripts/test.sh creates it)");
    assert!(
        out.status.success(),
        "redis-py checks failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `redis-cli --tls` through the proxy's TLS port: with a client certificate
/// signed by the cluster CA it works; without one the handshake is refused
/// (Redis's `tls-auth-clients yes`). The plain port keeps working.
#[test]
fn redis_cli_over_tls() {
    let tls_port = free_port();
    let listen = format!("127.0.0.1:{tls_port}");
    let cluster = TestCluster::start_with_proxy_args(&["--tls-listen", &listen]);
    let certs = cluster.certs();
    redraft_common::tls::ensure_certs(&certs, &["app-client".to_string()]).unwrap();
    let path = |name: &str| certs.join(name).to_string_lossy().into_owned();
    let cli = |with_cert: bool, args: &[&str]| {
        let mut command = Command::new("redis-cli");
        command.args([
            "--tls",
            "--cacert",
            &path("ca.pem"),
            "-h",
            "127.0.0.1",
            "-p",
            &tls_port.to_string(),
        ]);
        if with_cert {
            command.args(["--cert", &path("app-client.pem"), "--key", &path("app-client.key")]);
        }
        let out = command.args(args).output().expect("redis-cli installed");
        (
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        )
    };
    assert_eq!(cli(true, &["SET", "secure", "yes"]).0, "OK");
    assert_eq!(cli(true, &["GET", "secure"]).0, "yes");
    let (out, err) = cli(false, &["GET", "secure"]);
    assert!(
        out != "yes",
        "a client without a certificate must be refused: {out} {err}"
    );
    let mut plain = Resp::connect(cluster.proxy());
    assert_eq!(plain.cmd("GET secure"), Frame::bulk("yes"));
}

/// Users and `requirepass` live in the placement driver and every proxy applies
/// them: set at one proxy, enforced at another, and by redis-cli `-a`.
#[test]
fn acl_users_and_requirepass_apply_on_every_proxy() {
    let mut cluster = TestCluster::start(3);
    let second = cluster.add_proxy();
    let mut admin = Resp::connect(cluster.proxy());
    assert_eq!(admin.cmd("SET k v"), Frame::ok());
    assert_eq!(admin.cmd("ACL SETUSER reader on >r3ad ~* +@read"), Frame::ok());
    assert_eq!(admin.cmd("CONFIG SET requirepass s3cret"), Frame::ok());
    // This connection authenticated (as default, without a password) before.
    assert_eq!(admin.cmd("GET k"), Frame::bulk("v"));

    let noauth = Frame::error("NOAUTH Authentication required.");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut other = loop {
        let mut conn = Resp::connect(second);
        if conn.cmd("GET k") == noauth {
            break conn;
        }
        assert!(Instant::now() < deadline, "the other proxy never required a password");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        other.cmd("AUTH wrong"),
        Frame::error("WRONGPASS invalid username-password pair or user is disabled.")
    );
    assert_eq!(other.cmd("AUTH s3cret"), Frame::ok());
    assert_eq!(other.cmd("GET k"), Frame::bulk("v"));
    assert_eq!(other.cmd("ACL WHOAMI"), Frame::bulk("default"));

    let mut reader = Resp::connect(second);
    assert!(matches!(reader.cmd("HELLO 3 AUTH reader r3ad"), Frame::Map(_)));
    assert_eq!(reader.cmd("GET k"), Frame::bulk("v"));
    assert_eq!(
        reader.cmd("SET k x"),
        Frame::error("NOPERM this user has no permissions to run the 'set' command")
    );
    let cli = Command::new("redis-cli")
        .args([
            "-p",
            &second.port().to_string(),
            "-a",
            "s3cret",
            "--no-auth-warning",
            "GET",
            "k",
        ])
        .output()
        .expect("redis-cli installed");
    assert_eq!(String::from_utf8_lossy(&cli.stdout).trim(), "v");

    // Deleting a user stops its connections at their next command.
    assert_eq!(admin.cmd("ACL DELUSER reader"), Frame::Integer(1));
    let deadline = Instant::now() + Duration::from_secs(10);
    while reader.cmd("GET k") != noauth {
        assert!(Instant::now() < deadline, "a deleted user kept running commands");
        std::thread::sleep(Duration::from_millis(50));
    }
    admin.send(&[b"CONFIG", b"SET", b"requirepass", b""]);
    assert_eq!(admin.read(), Some(Frame::ok()));

    // CONFIG SET is remembered for the cluster: the other proxy answers alike.
    admin.send(&[b"CONFIG", b"SET", b"save", b"", b"appendonly", b"no"]);
    assert_eq!(admin.read(), Some(Frame::ok()));
    assert_eq!(admin.cmd("CONFIG SET hash-max-ziplist-value 10"), Frame::ok());
    let mut third = Resp::connect(second);
    let got = third.cmd("CONFIG GET *a*e*");
    let Frame::Array(items) = got else { panic!("{got:?}") };
    let pairs: std::collections::BTreeMap<String, String> = items
        .chunks(2)
        .map(|p| match p {
            [Frame::Bulk(k), Frame::Bulk(v)] => (String::from_utf8_lossy(k).into(), String::from_utf8_lossy(v).into()),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(pairs["save"], "");
    assert_eq!(pairs["appendonly"], "no");
    assert_eq!(pairs["hash-max-listpack-value"], "10");
    assert_eq!(pairs["hash-max-ziplist-value"], "10");
}

/// Commands that fill a server with every type, in every encoding
/// redis-server 7.0 picks for small and large values, under the `{d}` tag.
fn every_type() -> Vec<String> {
    let many = |prefix: &str, n: usize| (0..n).map(|i| format!("{prefix}{i}")).collect::<Vec<_>>().join(" ");
    vec![
        "SET {d}str hello".to_string(),
        "SET {d}int 12345".to_string(),
        format!("SET {{d}}raw {}", "x".repeat(100)),
        format!("RPUSH {{d}}list a 1 -300 {} 100000 1099511627776", "y".repeat(70)),
        format!("RPUSH {{d}}biglist {}", many("element", 2000)),
        "SADD {d}intset 1 2 -7 70000 1099511627776".to_string(),
        "SADD {d}set a b c".to_string(),
        "HSET {d}hash f1 v1 f2 2".to_string(),
        format!("HSET {{d}}bighash {}", many("field", 1400)),
        "ZADD {d}zset 1.5 a -2 b inf c".to_string(),
        format!(
            "ZADD {{d}}bigzset {}",
            (0..300).map(|i| format!("{i}.25 m{i}")).collect::<Vec<_>>().join(" ")
        ),
    ]
}

/// Runs `lines` on `conn`, none of which may fail.
fn run_all(conn: &mut Resp, lines: &[String]) {
    for line in lines {
        conn.send(&line.split(' ').map(str::as_bytes).collect::<Vec<_>>());
        assert!(!matches!(conn.read(), Some(Frame::Error(_))), "{line}");
    }
}

/// A key's type and contents, comparable between servers.
fn contents(conn: &mut Resp, key: &str) -> String {
    let read = match conn.cmd(&format!("TYPE {key}")) {
        Frame::Simple(t) if t == "string" => format!("GET {key}"),
        Frame::Simple(t) if t == "list" => format!("LRANGE {key} 0 -1"),
        Frame::Simple(t) if t == "set" => format!("SMEMBERS {key}"),
        Frame::Simple(t) if t == "hash" => format!("HGETALL {key}"),
        Frame::Simple(t) if t == "zset" => format!("ZRANGE {key} 0 -1 WITHSCORES"),
        other => return format!("{other:?}"),
    };
    let order = if read.starts_with("SMEMBERS") {
        Order::Unordered
    } else if read.starts_with("HGETALL") {
        Order::UnorderedPairs
    } else {
        Order::AsIs
    };
    comparable(conn.cmd(&read), order)
}

/// DUMP payloads of every type, in every encoding redis-server 7.0 picks for
/// small and large values, RESTORE into Redraft with the same contents, and
/// Redraft's payloads RESTORE into redis-server; TTLs and errors as Redis.
#[test]
fn dump_and_restore_move_values_between_redis_and_redraft() {
    let cluster = TestCluster::start(3);
    let port = free_port();
    let _redis = start_redis(port);
    let mut ours = Resp::connect(cluster.proxy());
    let mut theirs = Resp::connect(([127, 0, 0, 1], port).into());
    let fill = every_type();
    run_all(&mut theirs, &fill);
    for line in &fill {
        let key = line.split(' ').nth(1).unwrap();
        let Frame::Bulk(payload) = theirs.cmd(&format!("DUMP {key}")) else {
            panic!("no dump of {key}")
        };
        ours.send(&[b"RESTORE", key.as_bytes(), b"0", &payload]);
        assert_eq!(ours.read(), Some(Frame::ok()), "{key}");
        assert_eq!(
            contents(&mut ours, key),
            contents(&mut theirs, key),
            "{key} restored here"
        );
        let Frame::Bulk(back) = ours.cmd(&format!("DUMP {key}")) else {
            panic!("no dump of {key} here")
        };
        let copy = format!("{key}:copy");
        theirs.send(&[b"RESTORE", copy.as_bytes(), b"0", &back]);
        assert_eq!(theirs.read(), Some(Frame::ok()), "{key} into redis-server");
        assert_eq!(
            contents(&mut theirs, &copy),
            contents(&mut theirs, key),
            "{key} back in redis"
        );
    }
    // TTLs, REPLACE, and the errors, against redis-server byte for byte.
    let Frame::Bulk(payload) = theirs.cmd("DUMP {d}str") else {
        panic!()
    };
    let far = (redraft_common::now_ms() + 100_000).to_string();
    let cases: Vec<Vec<&[u8]>> = vec![
        vec![b"RESTORE", b"{d}str", b"0", &payload],
        vec![b"RESTORE", b"{d}str", b"0", b"garbage"],
        vec![b"RESTORE", b"{d}ttl", b"-1", &payload],
        vec![b"RESTORE", b"{d}ttl", b"x", &payload],
        vec![b"RESTORE", b"{d}ttl", b"0", &payload, b"IDLETIME", b"-1"],
        vec![b"RESTORE", b"{d}ttl", b"0", &payload, b"FREQ", b"256"],
        vec![b"RESTORE", b"{d}ttl", b"0", &payload, b"IDLETIME", b"1", b"FREQ", b"1"],
        vec![b"RESTORE", b"{d}ttl", b"0", &payload, b"BOGUS"],
        vec![b"RESTORE", b"{d}ttl", b"0", b"garbage"],
        vec![b"RESTORE", b"{d}str", b"5000", &payload, b"REPLACE", b"IDLETIME", b"5"],
        vec![
            b"RESTORE",
            b"{d}abs",
            far.as_bytes(),
            &payload,
            b"ABSTTL",
            b"FREQ",
            b"3",
        ],
        vec![b"RESTORE", b"{d}gone", b"1", &payload, b"ABSTTL"],
        vec![b"EXISTS", b"{d}gone"],
        vec![b"DUMP", b"{d}none"],
        vec![b"DUMP"],
        vec![b"RESTORE", b"{d}x", b"0"],
    ];
    for case in cases {
        ours.send(&case);
        theirs.send(&case);
        let (a, b) = (ours.read().unwrap(), theirs.read().unwrap());
        assert_eq!(
            comparable(a, Order::AsIs),
            comparable(b, Order::AsIs),
            "{:?}",
            String::from_utf8_lossy(case[0])
        );
    }
    for key in ["{d}str", "{d}abs"] {
        let Frame::Integer(ttl) = ours.cmd(&format!("PTTL {key}")) else {
            panic!()
        };
        assert!(ttl > 4000 && ttl <= 100_000, "{key}: {ttl}");
    }
}

/// `redraft ctl import --from-redis`, `import --rdb` and `export --rdb` move a
/// dataset of every type (with TTLs) from redis-server into Redraft and back
/// into a redis-server started on the exported file.
#[test]
fn import_and_export_move_a_dataset_between_redis_and_redraft() {
    let cluster = TestCluster::start(3);
    let proxy = cluster.proxy().to_string();
    let files = tempfile::tempdir().unwrap();
    let port = free_port();
    let _redis = start_redis_in(port, files.path());
    let mut ours = Resp::connect(cluster.proxy());
    let mut theirs = Resp::connect(([127, 0, 0, 1], port).into());
    let mut fill = every_type();
    fill.push("SET {d}ttl v PX 100000".to_string());
    fill.extend((0..1200).map(|i| format!("SET plain:{i} {i}")));
    run_all(&mut theirs, &fill);
    // Binary keys and values.
    theirs.send(&[b"SET", b"bin\x00\xff\r\n", b"\x00\x01\xfe\xff"]);
    assert_eq!(theirs.read(), Some(Frame::ok()));
    theirs.send(&[b"HSET", b"{d}binhash", b"\xff\x00", b"\r\n\x00"]);
    assert_eq!(theirs.read(), Some(Frame::Integer(1)));
    let mut keys: Vec<String> = fill.iter().map(|l| l.split(' ').nth(1).unwrap().to_string()).collect();
    keys.push("{d}binhash".into());
    let same_everywhere = |ours: &mut Resp, theirs: &mut Resp, how: &str| {
        for key in &keys {
            assert_eq!(contents(ours, key), contents(theirs, key), "{key} after {how}");
        }
        let Frame::Integer(ttl) = ours.cmd("PTTL {d}ttl") else {
            panic!()
        };
        assert!(ttl > 50_000, "TTL after {how}: {ttl}");
        ours.send(&[b"GET", b"bin\x00\xff\r\n"]);
        assert_eq!(
            ours.read(),
            Some(Frame::bulk(&b"\x00\x01\xfe\xff"[..])),
            "binary key after {how}"
        );
        assert_eq!(ours.cmd("DBSIZE"), theirs.cmd("DBSIZE"), "{how}");
    };
    let ctl = |args: &[&str]| {
        let out = crate::harness::ctl(&cluster, args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let source = format!("127.0.0.1:{port}");
    let said = ctl(&["import", "--from-redis", &source, "--proxy", &proxy]);
    assert!(said.contains("the source holds 1214 keys, the cluster 1214"), "{said}");
    same_everywhere(&mut ours, &mut theirs, "import --from-redis");

    assert_eq!(ours.cmd("FLUSHALL"), Frame::ok());
    assert_eq!(theirs.cmd("SAVE"), Frame::ok());
    let saved = files.path().join("dump.rdb");
    let said = ctl(&["import", "--rdb", saved.to_str().unwrap(), "--proxy", &proxy]);
    assert!(said.contains("loaded 1214 keys of database 0"), "{said}");
    same_everywhere(&mut ours, &mut theirs, "import --rdb");

    let exported = files.path().join("exported").join("dump.rdb");
    std::fs::create_dir_all(exported.parent().unwrap()).unwrap();
    ctl(&["export", "--rdb", exported.to_str().unwrap(), "--proxy", &proxy]);
    let second = free_port();
    let _second = start_redis_in(second, exported.parent().unwrap());
    let mut loaded = Resp::connect(([127, 0, 0, 1], second).into());
    same_everywhere(&mut loaded, &mut theirs, "export --rdb into redis-server");

    // A damaged file is refused whole, with the reason.
    let mut damaged = std::fs::read(&saved).unwrap();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0xff;
    let broken = files.path().join("broken.rdb");
    std::fs::write(&broken, &damaged).unwrap();
    assert_eq!(ours.cmd("FLUSHALL"), Frame::ok());
    let out = crate::harness::ctl(
        &cluster,
        &["import", "--rdb", broken.to_str().unwrap(), "--proxy", &proxy],
    );
    assert!(!out.status.success());
    assert_eq!(
        ours.cmd("DBSIZE"),
        Frame::Integer(0),
        "nothing of a damaged file is loaded"
    );

    // Keys of another database are refused unless one is chosen.
    theirs.send(&[b"SELECT", b"1"]);
    theirs.read();
    assert_eq!(theirs.cmd("SET other:db 1"), Frame::ok());
    assert_eq!(theirs.cmd("SAVE"), Frame::ok());
    let out = crate::harness::ctl(
        &cluster,
        &["import", "--rdb", saved.to_str().unwrap(), "--proxy", &proxy],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--db"), "{stderr}");
    let said = ctl(&[
        "import",
        "--rdb",
        saved.to_str().unwrap(),
        "--db",
        "1",
        "--proxy",
        &proxy,
    ]);
    assert!(said.contains("loaded 1 keys of database 1"), "{said}");
    assert_eq!(ours.cmd("GET other:db"), Frame::bulk("1"));
}

/// Keyspace notifications (`notify-keyspace-events KEA`) of the writes in
/// `scripts/notifications.txt`: every message redis-server publishes, in
/// its order, and nothing else (replies compared too).
#[test]
fn keyspace_notifications_match_redis_server() {
    let cluster = TestCluster::start(3);
    let port = free_port();
    let _redis = start_redis(port);
    let servers = [cluster.proxy(), ([127, 0, 0, 1], port).into()];
    let mut messages: Vec<Vec<String>> = Vec::new();
    let mut replies: Vec<Vec<String>> = Vec::new();
    for server in servers {
        let mut writer = Resp::connect(server);
        let mut subscriber = Resp::connect(server);
        assert_eq!(writer.cmd("CONFIG SET notify-keyspace-events KEA"), Frame::ok());
        subscriber.send(&[b"PSUBSCRIBE", b"__key*__:*"]);
        subscriber.read().expect("subscribed");
        // A proxy rereads the setting every 500 ms.
        std::thread::sleep(Duration::from_millis(1500));
        let mut answered = Vec::new();
        for line in include_str!("scripts/notifications.txt")
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let words = words(line);
            let args: Vec<&[u8]> = words.iter().map(Vec::as_slice).collect();
            writer.send(&args);
            answered.push(format!("{line} -> {}", comparable(writer.read().unwrap(), Order::AsIs)));
        }
        let mut seen = Vec::new();
        while let Some(frame) = subscriber.read_within(Duration::from_millis(2000)) {
            seen.push(String::from_utf8_lossy(&frame.to_bytes()).into_owned());
        }
        messages.push(seen);
        replies.push(answered);
    }
    assert_eq!(replies[0], replies[1], "replies differ (ours first)");
    let (ours, theirs) = (&messages[0], &messages[1]);
    assert!(theirs.len() > 100, "redis-server published {} messages", theirs.len());
    for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
        assert_eq!(a, b, "message {i} differs; ours then theirs (earlier ones matched)");
    }
    assert_eq!(ours.len(), theirs.len(), "ours: {ours:#?}\ntheirs: {theirs:#?}");
}

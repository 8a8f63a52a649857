//! Replies compared byte for byte with a stock `redis-server` started by the test.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redraft_common::resp::Frame;

use crate::harness::{free_port, Resp, TestCluster};

struct RedisServer(Child);

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_redis(port: u16) -> RedisServer {
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
        ])
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
];

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
            let args: Vec<&[u8]> = command.split(' ').map(str::as_bytes).collect();
            ours.send(&args);
            theirs.send(&args);
            let (a, b) = (ours.read().unwrap(), theirs.read().unwrap());
            let (a, b) = (comparable(a, order), comparable(b, order));
            if a != b {
                differences.push(format!("{name}: `{command}`\n  ours:   {a:?}\n  theirs: {b:?}"));
            }
            checked += 1;
        }
        assert!(checked > 100, "{name} script too short: {checked}");
    }
    assert!(
        differences.is_empty(),
        "replies differ from redis-server:\n{}",
        differences.join("\n")
    );
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

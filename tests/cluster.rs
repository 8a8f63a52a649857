//! Data placement through the proxy: keys spread over every shard and read back.

use redraft_common::keys::Ring;
use std::time::Duration;

use redraft_common::resp::Frame;

use crate::harness::{command_bytes, routing_table, Resp, TestCluster};

#[test]
fn ten_thousand_keys_land_on_every_shard_and_read_back() {
    let cluster = TestCluster::start(3);
    let mut conn = Resp::connect(cluster.proxy());
    const KEYS: usize = 10_000;
    for chunk in (0..KEYS).collect::<Vec<_>>().chunks(500) {
        let mut batch = Vec::new();
        for i in chunk {
            batch.extend(
                Frame::Array(vec![
                    Frame::bulk("SET"),
                    Frame::bulk(format!("key:{i}")),
                    Frame::bulk(format!("value:{i}")),
                ])
                .to_bytes(),
            );
        }
        conn.send_raw(&batch);
        for _ in chunk {
            assert_eq!(conn.read().unwrap(), Frame::ok());
        }
    }
    assert_eq!(conn.cmd("DBSIZE"), Frame::Integer(KEYS as i64));

    let table = routing_table(&cluster);
    let ring = Ring::new(table.vnode_count);
    let mut per_shard = std::collections::BTreeMap::new();
    for i in 0..KEYS {
        let shard = table.shard_of(ring.vnode_of(format!("key:{i}").as_bytes())).unwrap();
        *per_shard.entry(shard).or_insert(0usize) += 1;
    }
    assert_eq!(
        per_shard.len(),
        table.shards.len(),
        "every shard holds keys: {per_shard:?}"
    );
    assert!(
        per_shard.values().all(|&n| n > KEYS / table.shards.len() / 3),
        "skewed: {per_shard:?}"
    );

    // Read back through MGET (split across shards and merged in order) and GET.
    let keys: Vec<String> = (0..KEYS).step_by(7).map(|i| format!("key:{i}")).collect();
    let mut args: Vec<&[u8]> = vec![b"MGET"];
    args.extend(keys.iter().map(|k| k.as_bytes()));
    conn.send(&args);
    match conn.read().unwrap() {
        Frame::Array(values) => {
            for (key, value) in keys.iter().zip(values) {
                assert_eq!(value, Frame::bulk(key.replace("key", "value")), "{key}");
            }
        }
        other => panic!("MGET: {other:?}"),
    }
    for i in (0..KEYS).step_by(97) {
        assert_eq!(conn.cmd(&format!("GET key:{i}")), Frame::bulk(format!("value:{i}")));
    }

    // One pipeline whose consecutive writes to a shard travel as one request
    // (one Raft entry): each keeps its own reply, errors included, in order.
    let mut pipeline = Vec::new();
    let mut expected = Vec::new();
    for i in 0..300 {
        pipeline.extend(command_bytes(&format!("RPUSH order {i}")));
        expected.push(Frame::Integer(i + 1));
        pipeline.extend(command_bytes("INCR counter"));
        expected.push(Frame::Integer(i + 1));
        pipeline.extend(command_bytes(&format!("SET other:{i} {i}")));
        expected.push(Frame::ok());
        if i % 50 == 7 {
            // A write refused by the state machine, and a read between writes.
            pipeline.extend(command_bytes("INCR order"));
            expected.push(Frame::error(
                "WRONGTYPE Operation against a key holding the wrong kind of value",
            ));
            pipeline.extend(command_bytes("GET counter"));
            expected.push(Frame::bulk((i + 1).to_string()));
        }
    }
    conn.send_raw(&pipeline);
    for (n, want) in expected.iter().enumerate() {
        assert_eq!(&conn.read().unwrap(), want, "reply {n} of the pipeline");
    }
    let items: Vec<Frame> = (0..300).map(|i| Frame::bulk(i.to_string())).collect();
    assert_eq!(conn.cmd("LRANGE order 0 -1"), Frame::Array(items));
}

/// A short smoke run of the load generator (the long runs are `scripts/bench.sh`).
#[test]
fn load_generator_smoke_run() {
    use redraft_loadtest::runner::{run, RunConfig};
    use redraft_loadtest::workload::{KeyDistribution, Mix, Workload};
    let cluster = TestCluster::start(3);
    let config = RunConfig {
        target: cluster.proxy(),
        connections: 8,
        pipeline: 4,
        requests: Some(4_000),
        duration: None,
        rate: None,
        workload: Workload {
            mix: Mix::F,
            distribution: KeyDistribution::Zipfian,
            keys: 1_000,
            value_size: 32,
        },
        seed: 3,
        progress: false,
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let result = runtime.block_on(run("redraft", config)).unwrap();
    assert_eq!(result.requests, 4_000);
    assert_eq!(result.errors, 0);
    assert!(result.by_op.contains_key("get") && result.by_op.contains_key("incr"));
    assert!(result.latency.p50_us > 0 && result.latency.p50_us <= result.latency.max_us);
    let dir = tempfile::tempdir().unwrap();
    redraft_loadtest::report::write_json(&dir.path().join("r.json"), std::slice::from_ref(&result)).unwrap();
    let back = redraft_loadtest::report::read_json(&dir.path().join("r.json")).unwrap();
    assert_eq!(back[0].requests, 4_000);
    redraft_loadtest::report::timeline_svg(&dir.path().join("t.svg"), &back).unwrap();
    assert!(std::fs::read_to_string(dir.path().join("t.svg"))
        .unwrap()
        .contains("<svg"));
}

/// Three placement members: `redraft ctl` reports the cluster, the PD leader can
/// be killed, and the cluster keeps serving and answering operators.
#[test]
fn three_placement_members_survive_the_loss_of_the_leader() {
    use crate::harness::{ctl, http_get};
    let mut cluster = TestCluster::start_with(3, 3, &[]);
    let mut conn = Resp::connect(cluster.proxy());
    assert_eq!(conn.cmd("SET before pd-kill"), Frame::ok());

    let nodes = ctl(&cluster, &["nodes", "--json"]);
    assert!(nodes.status.success(), "{}", String::from_utf8_lossy(&nodes.stderr));
    let nodes: Vec<serde_json::Value> = serde_json::from_slice(&nodes.stdout).unwrap();
    assert_eq!(nodes.len(), 3);
    let replicas: u64 = nodes.iter().map(|n| n["replicas"].as_u64().unwrap()).sum();
    assert_eq!(replicas, 18, "6 shards x 3 replicas: {nodes:?}");
    assert!(nodes.iter().all(|n| n["state"] == "up" && n["id"].as_u64().is_some()));
    let shards = ctl(&cluster, &["shards"]);
    assert_eq!(
        String::from_utf8_lossy(&shards.stdout).lines().count(),
        7,
        "header and 6 shards"
    );

    let leader = cluster
        .cluster
        .placement
        .iter()
        .find(|m| {
            http_get(m.http.unwrap(), "/metrics")
                .1
                .contains("redraft_placement_is_leader 1")
        })
        .map(|m| m.name.clone())
        .expect("a placement leader");
    cluster.kill9(&leader);
    let mut served = false;
    for _ in 0..50 {
        let status = ctl(&cluster, &["status", "--json"]);
        if status.status.success() {
            let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
            served = status["shards"] == 6;
            if served {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(served, "a new placement leader answers operators");
    assert_eq!(conn.cmd("GET before"), Frame::bulk("pd-kill"));
    assert_eq!(conn.cmd("SET after pd-kill"), Frame::ok());
}

/// Runs `redraft down` on a folder when dropped, so a test that fails half-way
/// leaves no member of its cluster running.
struct DownOnDrop<'a>(&'a std::path::Path);

impl Drop for DownOnDrop<'_> {
    fn drop(&mut self) {
        let _ = std::process::Command::new(env!("CARGO_BIN_EXE_redraft"))
            .args(["down", "--dir"])
            .arg(self.0)
            .output();
    }
}

/// `redraft up --detach`, `redraft up add-node` and `redraft down` as a user runs
/// them: the new node receives replicas, `up.json` lists it, `down` stops all.
#[test]
fn up_add_node_and_down_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let _down = DownOnDrop(dir.path());
    let exe = env!("CARGO_BIN_EXE_redraft");
    let port = crate::harness::free_port();
    // Below both Linux's ephemeral ports (32768 and up, which outgoing
    // connections take) and the harness's range (20000-31999).
    let base = 10000 + (std::process::id() % 60) as u16 * 100;
    let run = |args: &[&str]| {
        let out = std::process::Command::new(exe)
            .args(args)
            .arg("--dir")
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "redraft {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let ready = run(&[
        "up",
        "--detach",
        "--port",
        &port.to_string(),
        "--base-port",
        &base.to_string(),
        "--worker-threads",
        "3",
    ]);
    assert!(ready.starts_with("ready"), "{ready}");
    assert!(run(&["up", "add-node"]).contains("added node-4"));
    let up: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("up.json")).unwrap()).unwrap();
    assert_eq!(up["nodes"].as_array().unwrap().len(), 4);
    assert_eq!(up["worker_threads"], 3);
    for group in ["proxy", "placement", "nodes"] {
        for m in up[group].as_array().unwrap() {
            assert!(
                m["id"].is_u64() && m["pid"].is_u64() && m["addr"].is_string() && m["log"].is_string(),
                "{m}"
            );
        }
    }
    let certs = dir.path().join("certs");
    let pd = up["placement"][0]["addr"].as_str().unwrap().to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let out = std::process::Command::new(exe)
            .args([
                "ctl",
                "nodes",
                "--json",
                "--placement",
                &pd,
                "--cert-name",
                "ctl",
                "--certs",
            ])
            .arg(&certs)
            .output()
            .unwrap();
        let nodes: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
        // Its share of the default 3 shards' 9 replicas over 4 nodes (an idle
        // cluster is not split for the new node).
        if nodes
            .iter()
            .any(|n| n["id"] == 4 && n["replicas"].as_u64().unwrap_or(0) >= 2)
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "node 4 got no replicas: {nodes:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // Every member, node-4 included, runs the worker threads `up` was given.
    for group in ["proxy", "placement", "nodes"] {
        for m in up[group].as_array().unwrap() {
            let (_, metrics) = crate::harness::http_get(m["http"].as_str().unwrap().parse().unwrap(), "/metrics");
            assert!(
                metrics.lines().any(|l| l == "redraft_runtime_worker_threads 3"),
                "{}: {metrics}",
                m["name"]
            );
        }
    }
    let mut conn = Resp::connect(([127, 0, 0, 1], port).into());
    assert_eq!(conn.cmd("SET k v"), Frame::ok());
    assert!(run(&["down"]).contains("is down"));
    let zero = std::process::Command::new(exe)
        .args(["up", "--worker-threads", "0", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!zero.status.success());
    assert!(
        String::from_utf8_lossy(&zero.stderr).contains("invalid value '0' for '--worker-threads"),
        "{}",
        String::from_utf8_lossy(&zero.stderr)
    );
    let pids: Vec<u64> = ["proxy", "placement", "nodes"]
        .iter()
        .flat_map(|g| up[*g].as_array().unwrap().iter().map(|m| m["pid"].as_u64().unwrap()))
        .collect();
    for pid in pids {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(
            state.is_empty() || state.split_whitespace().nth(2) == Some("Z"),
            "pid {pid} still runs after down"
        );
    }
    // Restarting the stopped cluster while something holds its proxy port
    // fails at once, naming the port, and starts no member.
    let squatter = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let busy = std::process::Command::new(exe)
        .args(["up", "--detach", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    drop(squatter);
    let stderr = String::from_utf8_lossy(&busy.stderr);
    assert!(!busy.status.success());
    assert!(
        stderr.contains(&format!("port {port} of proxy-1 is in use")),
        "{stderr}"
    );
    let after: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("up.json")).unwrap()).unwrap();
    for group in ["proxy", "placement", "nodes"] {
        for m in after[group].as_array().unwrap() {
            assert!(m["pid"].is_null(), "{m} started although a port was taken");
        }
    }
}

/// Connects to `port` as soon as it accepts (up to `wait`), then keeps a client
/// busy: PING (PONG, or -LOADING before the proxy can route), then SETs and GETs
/// of `keys` until each has been written and read back. Every reply must be a
/// right answer: no CLUSTERDOWN, TRYAGAIN or other error.
fn hammer_from_first_accept(port: u16, wait: Duration, prefix: &str, keys: usize, up_said: &dyn Fn() -> String) {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = std::time::Instant::now() + wait;
    let mut conn = loop {
        if let Ok(stream) = std::net::TcpStream::connect(addr) {
            drop(stream);
            break Resp::connect(addr);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the proxy never accepted; up said: {}",
            up_said()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    // A PING right away: PONG, or -LOADING before the proxy can route.
    match conn.cmd("PING") {
        Frame::Simple(s) if s == "PONG" => {}
        Frame::Error(e) if e.starts_with("LOADING ") => {}
        other => panic!("PING answered {other:?}"),
    }
    // A write right away: it waits for the routing table and the leader.
    assert_eq!(conn.cmd(&format!("SET {prefix}early v")), Frame::ok(), "the first SET");
    let mut pongs = 0;
    while pongs < 3 {
        match conn.cmd("PING") {
            Frame::Simple(s) if s == "PONG" => pongs += 1,
            Frame::Error(e) if e.starts_with("LOADING ") => std::thread::sleep(Duration::from_millis(10)),
            other => panic!("PING answered {other:?}"),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "PING never said PONG; up said: {}",
            up_said()
        );
    }
    for i in 0..keys {
        assert_eq!(
            conn.cmd(&format!("SET {prefix}{i} v{i}")),
            Frame::ok(),
            "SET {prefix}{i}"
        );
        assert_eq!(conn.cmd(&format!("GET {prefix}{i}")), Frame::bulk(format!("v{i}")));
    }
}

/// Issue "first contact": a client that connects the moment the port opens
/// gets answers, not errors, at the first start and across a full restart;
/// `down` ends a foreground `up`, and SIGTERM to it stops every member.
#[test]
fn early_clients_get_answers_and_up_and_down_work_as_a_pair() {
    let dir = tempfile::tempdir().unwrap();
    let _down = DownOnDrop(dir.path());
    let exe = env!("CARGO_BIN_EXE_redraft");
    let port = crate::harness::free_port();
    // Beside `up_add_node_and_down_from_the_command_line`'s ports (base + 0..5,
    // HTTP base + 50..56): QUIC base + 20..24, HTTP base + 70..74.
    let base = 10000 + (std::process::id() % 60) as u16 * 100 + 20;
    let up = || {
        std::process::Command::new(exe)
            .args([
                "up",
                "--port",
                &port.to_string(),
                "--base-port",
                &base.to_string(),
                "--dir",
            ])
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("up.stderr")).unwrap())
            .spawn()
            .unwrap()
    };
    let up_said = || std::fs::read_to_string(dir.path().join("up.stderr")).unwrap_or_default();
    let member_pids = || -> Vec<u64> {
        let up: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("up.json")).unwrap()).unwrap();
        ["proxy", "placement", "nodes"]
            .iter()
            .flat_map(|g| up[*g].as_array().unwrap().iter().filter_map(|m| m["pid"].as_u64()))
            .collect()
    };
    let running = |pid: u64| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.split_whitespace().nth(2) != Some("Z"))
    };
    let exits_within = |child: &mut std::process::Child, limit: Duration| {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(std::time::Instant::now() < deadline, "`up` still runs after {limit:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };

    // Runs `redraft down`; the foreground `up` must then end, with status 0.
    let down_ends = |foreground: &mut std::process::Child, what: &str| {
        let down = std::process::Command::new(exe)
            .args(["down", "--dir"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(down.status.success());
        let status = exits_within(foreground, Duration::from_secs(20));
        assert!(status.success(), "{what}: {status}: {}", up_said());
    };

    // First start: hammer from the first accept.
    let mut foreground = up();
    hammer_from_first_accept(port, Duration::from_secs(120), "first:", 20, &up_said);
    let pids = member_pids();
    assert_eq!(pids.len(), 5, "placement, three nodes and a proxy");
    // `down` from another shell ends the foreground `up` too.
    down_ends(&mut foreground, "`up` after `down`");
    assert!(!pids.iter().any(|p| running(*p)), "a member outlived `down`");

    // A full restart: the same from the first accept, and the data is there.
    let mut foreground = up();
    hammer_from_first_accept(port, Duration::from_secs(120), "second:", 5, &up_said);
    let mut conn = Resp::connect(([127, 0, 0, 1], port).into());
    for i in 0..20 {
        assert_eq!(conn.cmd(&format!("GET first:{i}")), Frame::bulk(format!("v{i}")));
    }
    // SCAN with a COUNT above the keyspace answers everything in one call.
    let Frame::Array(page) = conn.cmd("SCAN 0 COUNT 100") else {
        panic!("SCAN")
    };
    assert_eq!(page[0], Frame::bulk("0"), "one call covers a small keyspace");
    assert!(matches!(&page[1], Frame::Array(keys) if keys.len() == 27), "{page:?}");
    // ctl from the data folder alone, before or after the subcommand.
    let ctl = |args: &[&str]| {
        let out = std::process::Command::new(exe).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let folder = dir.path().to_str().unwrap();
    let nodes: Vec<serde_json::Value> =
        serde_json::from_str(&ctl(&["ctl", "--dir", folder, "nodes", "--json"])).unwrap();
    assert_eq!(nodes.len(), 3);
    // After a full restart the placement driver learns the new leaders from the
    // nodes' heartbeats within a few seconds.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !ctl(&["ctl", "status", "--dir", folder]).contains("shards 3 (3 with a leader)") {
        assert!(std::time::Instant::now() < deadline, "leaders never published");
        std::thread::sleep(Duration::from_millis(200));
    }
    let shards: Vec<serde_json::Value> =
        serde_json::from_str(&ctl(&["ctl", "--dir", folder, "shards", "--json"])).unwrap();
    assert_eq!(shards.len(), 3);
    let routing: serde_json::Value = serde_json::from_str(&ctl(&["ctl", "--dir", folder, "routing"])).unwrap();
    assert_eq!(routing["vnodes"].as_array().unwrap().len(), 1024);
    // `ctl top`, one screen on a fixed-size terminal backend.
    let screen = ctl(&[
        "ctl", "--dir", folder, "top", "--once", "--width", "110", "--height", "30",
    ]);
    assert!(screen.contains("nodes 3/3 up  shards 3 (3 with a leader)"), "{screen}");
    let node_rows: Vec<&str> = screen
        .lines()
        .filter(|l| l.contains("127.0.0.1:") && l.contains(" up "))
        .collect();
    assert_eq!(node_rows.len(), 3, "{screen}");
    for row in &node_rows {
        // Replicas and leaders, then figures from the node's /metrics: operations
        // per second (0 when idle) and disk use; a write p99 only with writes.
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells[4], "3", "every node holds a replica of every shard: {row}");
        assert!(cells[6].parse::<f64>().is_ok(), "operations per second: {row}");
        assert!(row.trim_end_matches(['│', ' ']).ends_with('B'), "disk use: {row}");
    }
    let shard_rows = screen
        .lines()
        .filter(|l| l.split_whitespace().nth(1).is_some_and(|c| c.parse::<u64>().is_ok()))
        .filter(|l| l.contains(",") && !l.contains("127.0.0.1"))
        .count();
    assert_eq!(shard_rows, 3, "{screen}");
    let shard = shards[0]["id"].as_u64().unwrap().to_string();
    let leader = shards[0]["leader"].as_u64().unwrap();
    let other = shards[0]["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_u64().unwrap())
        .find(|r| *r != leader)
        .unwrap()
        .to_string();
    assert!(ctl(&[
        "ctl",
        "--dir",
        folder,
        "transfer-leader",
        "--shard",
        &shard,
        "--to",
        &other
    ])
    .contains("now leads"));
    assert!(ctl(&["ctl", "--dir", folder, "split", "--shard", &shard]).contains("split"));
    // As the README runs it: no flags, from a folder holding `redraft-data`;
    // and from the environment.
    let home = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(dir.path(), home.path().join("redraft-data")).unwrap();
    let readme = std::process::Command::new(exe)
        .args(["ctl", "nodes"])
        .current_dir(home.path())
        .env_remove("REDRAFT_PLACEMENT")
        .output()
        .unwrap();
    assert!(readme.status.success(), "{}", String::from_utf8_lossy(&readme.stderr));
    assert_eq!(
        String::from_utf8_lossy(&readme.stdout).lines().count(),
        4,
        "a header and 3 nodes"
    );
    let up_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("up.json")).unwrap()).unwrap();
    let from_env = std::process::Command::new(exe)
        .args(["ctl", "status"])
        .current_dir(dir.path())
        .env("REDRAFT_PLACEMENT", up_json["placement"][0]["addr"].as_str().unwrap())
        .env("REDRAFT_CERTS", dir.path().join("certs"))
        .output()
        .unwrap();
    assert!(
        from_env.status.success(),
        "{}",
        String::from_utf8_lossy(&from_env.stderr)
    );
    // Without --dir or --placement, and no ./redraft-data: a clear error.
    let lost = std::process::Command::new(exe)
        .args(["ctl", "nodes"])
        .current_dir(dir.path())
        .env_remove("REDRAFT_PLACEMENT")
        .output()
        .unwrap();
    assert!(!lost.status.success());
    assert!(
        String::from_utf8_lossy(&lost.stderr).contains("give --dir"),
        "{}",
        String::from_utf8_lossy(&lost.stderr)
    );

    // SIGTERM to the foreground `up` stops every member, then `up` itself.
    let pids = member_pids();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &foreground.id().to_string()])
        .status();
    exits_within(&mut foreground, Duration::from_secs(20));
    assert!(!pids.iter().any(|p| running(*p)), "a member outlived SIGTERM to `up`");

    // `down` while `up` still waits for the cluster to be ready: `up` ends too.
    let mut foreground = up();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "the proxy never accepted");
        std::thread::sleep(Duration::from_millis(20));
    }
    down_ends(&mut foreground, "`up` stopped by `down` while starting");
}

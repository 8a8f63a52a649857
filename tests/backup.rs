//! Online backups: `redraft ctl backup` while a client writes causal chains
//! across shards, restored into a new cluster with another shard count (the
//! cut is consistent, every type and TTL round-trips, users, functions and
//! CONFIG come along); a node killed during a backup, a damaged file refused
//! by `backup verify` and by `restore`, and the periodic job.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redraft_common::resp::Frame;

use crate::harness::{ctl, Resp, TestCluster};

fn succeeded(out: &std::process::Output, what: &str) -> String {
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{what} failed:\n{said}");
    said
}

fn sorted(frame: Frame) -> Vec<Frame> {
    let (Frame::Array(mut items) | Frame::Set(mut items)) = frame else {
        panic!("not a collection: {frame:?}")
    };
    items.sort_by_key(|f| format!("{f:?}"));
    items
}

/// Commands whose replies must be the same on the source and the restored cluster.
const COMPARED: [&str; 8] = [
    "GET s:plain",
    "LRANGE l:list 0 -1",
    "ZRANGE z:zset 0 -1 WITHSCORES",
    "GET s:bin",
    "STRLEN s:big",
    "GET s:counter",
    "HGET h:hash f2",
    "TYPE h:hash",
];

fn fill_every_type(conn: &mut Resp) {
    assert_eq!(conn.cmd("SET s:plain hello"), Frame::ok());
    assert_eq!(conn.cmd("SET s:counter 41"), Frame::ok());
    assert_eq!(conn.cmd("INCR s:counter"), Frame::Integer(42));
    conn.send(&[b"SET", b"s:bin", b"\x00\xff\r\n binary"]);
    assert_eq!(conn.read(), Some(Frame::ok()));
    conn.send(&[b"SET", b"s:big", &vec![b'x'; 100_000]]);
    assert_eq!(conn.read(), Some(Frame::ok()));
    assert_eq!(conn.cmd("RPUSH l:list a b c a"), Frame::Integer(4));
    assert_eq!(conn.cmd("SADD t:set x y z 1 2"), Frame::Integer(5));
    assert_eq!(conn.cmd("ZADD z:zset 1 one 2.5 two -3 three"), Frame::Integer(3));
    assert_eq!(conn.cmd("HSET h:hash f1 v1 f2 v2 f3 v3"), Frame::Integer(3));
    for i in 0..700 {
        conn.send_raw(&crate::harness::command_bytes(&format!("HSET h:wide f{i} v{i}")));
    }
    for _ in 0..700 {
        assert_eq!(conn.read(), Some(Frame::Integer(1)));
    }
    assert_eq!(conn.cmd("SET ttl:long v EX 3600"), Frame::ok());
    assert_eq!(conn.cmd("SET ttl:short v PX 2500"), Frame::ok());
    assert_eq!(conn.cmd("ACL SETUSER backupuser on >secret ~b:* +get"), Frame::ok());
    assert_eq!(conn.cmd("CONFIG SET hash-max-listpack-entries 64"), Frame::ok());
    let library =
        "#!lua name=keep\nredis.register_function('twice', function(keys, args) return args[1] .. args[1] end)";
    conn.send(&[b"FUNCTION", b"LOAD", library.as_bytes()]);
    assert_eq!(conn.read(), Some(Frame::bulk("keep")));
}

/// Causal chains written concurrently during the backup.
const CHAINS: usize = 4;

/// A writer of causal chain `c`: `chain{c}:i` is written only after
/// `chain{c}:i-1` was acknowledged (consecutive links land on different
/// shards), so any consistent cut holds a prefix of the chain.
fn chain_writer(
    proxy: std::net::SocketAddr,
    c: usize,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut conn = Resp::connect(proxy);
        let mut i = 0u64;
        while !stop.load(Ordering::SeqCst) {
            assert_eq!(
                conn.cmd(&format!("SET chain{c}:{i} {i}")),
                Frame::ok(),
                "chain write {i}"
            );
            i += 1;
            acked.store(i, Ordering::SeqCst);
        }
    })
}

/// Which `chain{c}:i` keys (below `upto`) exist, through `conn`.
fn chain_present(conn: &mut Resp, c: usize, upto: u64) -> Vec<bool> {
    for i in 0..upto {
        conn.send_raw(&crate::harness::command_bytes(&format!("EXISTS chain{c}:{i}")));
    }
    (0..upto).map(|_| conn.read() == Some(Frame::Integer(1))).collect()
}

/// The chain links each shard file of the backup at `path` holds, by chain.
fn chain_links_in(path: &Path) -> Vec<std::collections::BTreeSet<u64>> {
    let mut links = vec![std::collections::BTreeSet::new(); CHAINS];
    for entry in std::fs::read_dir(path).unwrap() {
        let file = entry.unwrap().path();
        if file.extension().is_none_or(|e| e != "rdb") {
            continue;
        }
        let rdb = redraft_common::rdb::read_file(&std::fs::read(&file).unwrap()).unwrap();
        for key in rdb.entries.iter().map(|e| String::from_utf8_lossy(&e.key).into_owned()) {
            if let Some((c, i)) = key.strip_prefix("chain").and_then(|k| k.split_once(':')) {
                links[c.parse::<usize>().unwrap()].insert(i.parse().unwrap());
            }
        }
    }
    links
}

/// Runs `ctl` with the certificate and placement of `cluster` plus `args`.
fn ctl_ok(cluster: &TestCluster, args: &[&str]) -> String {
    succeeded(&ctl(cluster, args), &format!("ctl {}", args.join(" ")))
}

#[test]
fn a_backup_taken_under_writes_restores_one_consistent_point_into_another_cluster() {
    let source = TestCluster::start(3);
    let backups = tempfile::tempdir().unwrap();
    let dir = backups.path().to_str().unwrap();
    let mut conn = Resp::connect(source.proxy());
    fill_every_type(&mut conn);
    for i in 0..200 {
        conn.send_raw(&crate::harness::command_bytes(&format!("SET pre:{i} {i}")));
    }
    for _ in 0..200 {
        assert_eq!(conn.read(), Some(Frame::ok()));
    }

    let stop = Arc::new(AtomicBool::new(false));
    let acked: Vec<Arc<AtomicU64>> = (0..CHAINS).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let writers: Vec<_> = (0..CHAINS)
        .map(|c| chain_writer(source.proxy(), c, stop.clone(), acked[c].clone()))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let acked_now = || acked.iter().map(|a| a.load(Ordering::SeqCst)).collect::<Vec<u64>>();
    // Several backups while the chains grow; each must hold a prefix of
    // every chain, including every link acknowledged before it began.
    for round in 0..4 {
        let before = acked_now();
        let said = ctl_ok(&source, &["backup", "--to", dir, "--tag", &format!("round{round}")]);
        let links = chain_links_in(&backups.path().join(format!("round{round}")));
        for (c, links) in links.iter().enumerate() {
            let n = links.len() as u64;
            let gap = (0..).find(|i| !links.contains(i)).expect("a first missing link");
            assert!(
                gap == n,
                "round {round}, chain {c}: link {gap} is missing but {} is there: not a consistent cut\n{said}",
                links.last().expect("links")
            );
            assert!(
                n >= before[c],
                "round {round}, chain {c}: {n} links, {} acknowledged before",
                before[c]
            );
        }
    }
    let acked_before = acked_now();
    let said = ctl_ok(&source, &["backup", "--to", dir, "--tag", "first"]);
    let acked_after = acked_now();
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    writers.into_iter().for_each(|w| w.join().unwrap());
    eprintln!("{}", said.trim());
    assert!(said.contains("backup first written"), "{said}");
    assert!(acked_after > acked_before, "the chains stalled during the backup");

    let path = backups.path().join("first");
    let listed = succeeded(&ctl(&source, &["backups", "--in", dir]), "backups");
    assert!(listed.contains("first") && listed.contains("not verified"), "{listed}");
    let verified = succeeded(&ctl(&source, &["backup", "verify", path.to_str().unwrap()]), "verify");
    assert!(verified.contains("every checksum holds"), "{verified}");
    let listed = succeeded(&ctl(&source, &["backups", "--in", dir]), "backups");
    assert!(listed.contains("verified 20"), "{listed}");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["shards"].as_array().unwrap().len(), 6, "{manifest}");

    // The short TTL passes before the restore: that key must not come back.
    std::thread::sleep(Duration::from_millis(2600));
    let target = TestCluster::start_with_shards(3, 2);
    let proxy = target.proxy().to_string();
    let said = ctl_ok(
        &target,
        &["restore", "--from", path.to_str().unwrap(), "--proxy", &proxy],
    );
    eprintln!("{}", said.trim());
    let mut restored = Resp::connect(target.proxy());

    // The cut: every chain write acknowledged before the backup began is
    // there, and what is there is a prefix of each chain.
    let mut links = 0;
    for (c, acked) in acked.iter().enumerate() {
        let present = chain_present(&mut restored, c, acked.load(Ordering::SeqCst));
        let prefix = present.iter().take_while(|p| **p).count() as u64;
        assert!(
            present[prefix as usize..].iter().all(|p| !p),
            "chain{c}:{prefix} is missing but a later link is present: not a consistent cut"
        );
        let (before, after) = (acked_before[c], acked_after[c]);
        assert!(
            prefix >= before,
            "chain {c}: {prefix} links restored, {before} were acknowledged before the backup"
        );
        assert!(
            prefix <= after,
            "chain {c}: {prefix} links restored, only {after} acknowledged by the end"
        );
        eprintln!("chain {c}: {before} acknowledged before, {prefix} in the backup, {after} by its end");
        links += prefix as i64;
    }

    for i in 0..200 {
        assert_eq!(restored.cmd(&format!("GET pre:{i}")), Frame::bulk(i.to_string()));
    }
    let mut original = Resp::connect(source.proxy());
    for command in COMPARED {
        assert_eq!(restored.cmd(command), original.cmd(command), "{command}");
    }
    assert_eq!(
        sorted(restored.cmd("SMEMBERS t:set")),
        sorted(original.cmd("SMEMBERS t:set"))
    );
    assert_eq!(
        sorted(restored.cmd("HGETALL h:wide")),
        sorted(original.cmd("HGETALL h:wide"))
    );
    assert_eq!(restored.cmd("HLEN h:wide"), Frame::Integer(700));
    let Frame::Integer(ttl) = restored.cmd("PTTL ttl:long") else {
        panic!("no PTTL")
    };
    assert!(ttl > 3_500_000 && ttl <= 3_600_000, "PTTL {ttl}");
    assert_eq!(restored.cmd("EXISTS ttl:short"), Frame::Integer(0));
    // s:plain s:counter s:bin s:big l:list t:set z:zset h:hash h:wide
    // ttl:long ttl:short, of which the last expired before the restore.
    let typed = 11;
    assert_eq!(restored.cmd("DBSIZE"), Frame::Integer(200 + typed - 1 + links));

    assert_eq!(restored.cmd("FCALL twice 0 ab"), Frame::bulk("abab"));
    assert_eq!(
        restored.cmd("CONFIG GET hash-max-listpack-entries"),
        original.cmd("CONFIG GET hash-max-listpack-entries")
    );
    let mut user = Resp::connect(target.proxy());
    assert_eq!(user.cmd("AUTH backupuser secret"), Frame::ok());
    assert_eq!(user.cmd("GET b:x"), Frame::Null);
    assert!(matches!(user.cmd("SET b:x 1"), Frame::Error(e) if e.starts_with("NOPERM")));

    // A cluster that holds keys is not restored into.
    let again = ctl(
        &target,
        &["restore", "--from", path.to_str().unwrap(), "--proxy", &proxy],
    );
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("restore into a cluster started empty"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}

/// Flips one byte in the middle of `file`.
fn damage(file: &Path) {
    let mut bytes = std::fs::read(file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x5a;
    std::fs::write(file, bytes).unwrap();
}

#[test]
fn a_backup_outlives_a_killed_node_or_leaves_no_manifest_and_damage_is_refused() {
    let mut cluster = TestCluster::start(3);
    let backups = tempfile::tempdir().unwrap();
    let dir = backups.path().to_str().unwrap();
    let mut conn = Resp::connect(cluster.proxy());
    let value = "v".repeat(1000);
    for i in 0..3000 {
        conn.send_raw(&crate::harness::command_bytes(&format!("SET k:{i} {value}")));
    }
    for _ in 0..3000 {
        assert_eq!(conn.read(), Some(Frame::ok()));
    }

    // About 3 MiB read at 1 MiB/s: the node goes down in the middle.
    let running = std::process::Command::new(env!("CARGO_BIN_EXE_redraft"))
        .args([
            "ctl",
            "backup",
            "--to",
            dir,
            "--tag",
            "killed",
            "--backup-mib-per-sec",
            "1",
        ])
        .args(["--placement", &cluster.cluster.placement[0].addr.to_string()])
        .args(["--cert-name", "ctl", "--certs"])
        .arg(cluster.cluster.certs())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let victim = cluster.busiest_leader();
    cluster.kill9(&victim);
    let out = running.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("backup while {victim} was killed: {}", said.trim());
    let killed = backups.path().join("killed");
    if out.status.success() {
        let verified = ctl_ok(&cluster, &["backup", "verify", killed.to_str().unwrap()]);
        assert!(verified.contains("3000 keys"), "{verified}");
    } else {
        assert!(
            !killed.join("manifest.json").exists(),
            "a failed backup left a manifest"
        );
    }
    cluster.restart(&victim);
    cluster.wait_ready();

    let said = ctl_ok(&cluster, &["backup", "--to", dir, "--tag", "whole"]);
    assert!(said.contains("3000 keys"), "{said}");
    let whole = backups.path().join("whole");
    let file = std::fs::read_dir(&whole)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "rdb") && std::fs::metadata(p).unwrap().len() > 100_000)
        .expect("a shard file with data");
    damage(&file);
    let name = file.file_name().unwrap().to_string_lossy().into_owned();
    let refused = ctl(&cluster, &["backup", "verify", whole.to_str().unwrap()]);
    assert!(!refused.status.success());
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(why.contains(&name) && why.contains("damaged"), "{why}");
    let refused = ctl(
        &cluster,
        &[
            "restore",
            "--from",
            whole.to_str().unwrap(),
            "--proxy",
            &cluster.proxy().to_string(),
        ],
    );
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains(&name));

    // The periodic job: a backup every 2 s (checked every 5 s), 2 kept.
    let pd_http = cluster.cluster.placement[0].http.unwrap();
    let ok_runs = || crate::harness::metric(pd_http, "redraft_backups_total{result=\"ok\"}").unwrap_or(0);
    let before = ok_runs();
    let periodic = tempfile::tempdir().unwrap();
    let every_dir = periodic.path().to_str().unwrap();
    ctl_ok(&cluster, &["backup", "--every", "2s", "--keep", "2", "--to", every_dir]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = ctl_ok(&cluster, &["status"]);
        let listed = ctl_ok(&cluster, &["backups", "--in", every_dir]);
        let whole = listed.lines().filter(|l| l.contains("3000 keys")).count();
        if status.contains("last:") && whole == 2 && std::fs::read_dir(periodic.path()).unwrap().count() == 2 {
            // At least three ran: the first two, then one more pruned the oldest.
            if ok_runs() >= before + 3 {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "periodic backups did not run:\n{status}\n{listed}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    ctl_ok(&cluster, &["backup", "--every", "off"]);
    assert!(ctl_ok(&cluster, &["status"]).contains("backups not scheduled"));
}

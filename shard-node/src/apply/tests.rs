//! Table-style tests of Redis semantics in [`super::Keyspace`].

use std::collections::BTreeSet;

use redraft_common::keys::Ring;
use redraft_common::ops::*;
use redraft_common::resp::Frame;
use redraft_raft_storage::engine::CF_DATA;
use redraft_raft_storage::{Engine, FsyncPolicy};

use super::*;
use redraft_common::ops::parse_strict_i64;

struct Fixture {
    _dir: tempfile::TempDir,
    engine: Engine,
    ring: Ring,
    owned: BTreeSet<u16>,
    hints: ElementHints,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(&dir.path().join("db"), FsyncPolicy::Always).unwrap();
    let hints = ElementHints::load(engine.db(), engine.cf(CF_DATA));
    Fixture {
        _dir: dir,
        hints,
        engine,
        ring: Ring::new(64),
        owned: (0..64).collect(),
    }
}

fn b(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

fn set(key: &str, value: &str) -> WriteOp {
    WriteOp::Set {
        key: b(key),
        value: b(value),
        expiry: None,
        condition: SetCondition::Always,
        keep_ttl: false,
        reply: SetReply::Ok,
    }
}

impl Fixture {
    /// Applies `ops` as one batch at `now`, commits, returns the replies.
    fn write(&self, now: u64, ops: &[WriteOp]) -> Vec<Frame> {
        let db = self.engine.db();
        let mut ks = Keyspace::new(db, self.engine.cf(CF_DATA), &self.ring, &self.owned, now).with_hints(&self.hints);
        let replies = ops.iter().map(|op| ks.write(op).unwrap()).collect();
        db.write(ks.into_batch()).unwrap();
        replies
    }

    fn read(&self, now: u64, op: ReadOp) -> Frame {
        let mut ks = Keyspace::new(self.engine.db(), self.engine.cf(CF_DATA), &self.ring, &self.owned, now);
        ks.read(&op).unwrap()
    }
}

#[test]
fn set_conditions_and_get_option() {
    let f = fixture();
    let nx = |k: &str, v: &str| WriteOp::Set {
        key: b(k),
        value: b(v),
        expiry: None,
        condition: SetCondition::IfAbsent,
        keep_ttl: false,
        reply: SetReply::Ok,
    };
    let getset = |k: &str, v: &str| WriteOp::Set {
        key: b(k),
        value: b(v),
        expiry: None,
        condition: SetCondition::Always,
        keep_ttl: false,
        reply: SetReply::OldValue,
    };
    let replies = f.write(
        1000,
        &[nx("a", "1"), nx("a", "2"), getset("a", "3"), getset("new", "x")],
    );
    assert_eq!(replies, vec![Frame::ok(), Frame::Null, Frame::bulk("1"), Frame::Null]);
    assert_eq!(f.read(1000, ReadOp::Get { key: b("a") }), Frame::bulk("3"));
}

#[test]
fn writes_in_one_batch_see_each_other() {
    let f = fixture();
    let incr = WriteOp::IncrBy { key: b("n"), delta: 5 };
    let replies = f.write(
        1,
        &[
            incr.clone(),
            incr.clone(),
            WriteOp::Del {
                keys: vec![b("n"), b("n")],
            },
            incr,
        ],
    );
    assert_eq!(
        replies,
        vec![
            Frame::Integer(5),
            Frame::Integer(10),
            Frame::Integer(1),
            Frame::Integer(5)
        ]
    );
    let replies = f.write(
        1,
        &[
            set("x", "1"),
            WriteOp::FlushAll,
            WriteOp::Del {
                keys: vec![b("x"), b("n")],
            },
        ],
    );
    assert_eq!(
        replies[2],
        Frame::Integer(0),
        "a key flushed earlier in the batch is gone"
    );
    assert_eq!(f.read(1, ReadOp::DbSize), Frame::Integer(0));
}

#[test]
fn integer_errors_match_redis() {
    let f = fixture();
    let replies = f.write(
        1,
        &[
            set("s", "abc"),
            WriteOp::IncrBy { key: b("s"), delta: 1 },
            set("big", &i64::MAX.to_string()),
            WriteOp::IncrBy {
                key: b("big"),
                delta: 1,
            },
            set("sp", " 1"),
            WriteOp::IncrBy { key: b("sp"), delta: 1 },
            WriteOp::IncrByFloat {
                key: b("f"),
                delta: 10.5,
            },
            WriteOp::IncrByFloat {
                key: b("f"),
                delta: 0.1,
            },
            WriteOp::IncrByFloat {
                key: b("s"),
                delta: 1.0,
            },
        ],
    );
    assert_eq!(replies[1], Frame::error(NOT_INTEGER));
    assert_eq!(replies[3], Frame::error("ERR increment or decrement would overflow"));
    assert_eq!(replies[5], Frame::error(NOT_INTEGER));
    assert_eq!(replies[6], Frame::bulk("10.5"));
    assert_eq!(replies[7], Frame::bulk("10.6"));
    assert_eq!(replies[8], Frame::error("ERR value is not a valid float"));
}

#[test]
fn string_editing_commands() {
    let f = fixture();
    let replies = f.write(
        1,
        &[
            WriteOp::Append {
                key: b("k"),
                value: b("Hello"),
            },
            WriteOp::Append {
                key: b("k"),
                value: b(" World"),
            },
            WriteOp::SetRange {
                key: b("p"),
                offset: 3,
                value: b("x"),
            },
            WriteOp::SetRange {
                key: b("missing"),
                offset: 3,
                value: vec![],
            },
        ],
    );
    assert_eq!(
        replies,
        vec![
            Frame::Integer(5),
            Frame::Integer(11),
            Frame::Integer(4),
            Frame::Integer(0)
        ]
    );
    assert_eq!(f.read(1, ReadOp::Get { key: b("p") }), Frame::bulk(b"\0\0\0x".to_vec()));
    assert_eq!(
        f.read(
            1,
            ReadOp::Exists {
                keys: vec![b("missing")]
            }
        ),
        Frame::Integer(0)
    );
    let range = |s, e| {
        f.read(
            1,
            ReadOp::GetRange {
                key: b("k"),
                start: s,
                end: e,
            },
        )
    };
    assert_eq!(range(0, 4), Frame::bulk("Hello"));
    assert_eq!(range(-5, -1), Frame::bulk("World"));
    assert_eq!(range(5, 2), Frame::bulk(""));
    assert_eq!(range(0, 100), Frame::bulk("Hello World"));
    assert_eq!(f.read(1, ReadOp::StrLen { key: b("k") }), Frame::Integer(11));
}

#[test]
fn expiry_is_decided_by_the_entry_clock() {
    let f = fixture();
    let expire = |k: &str, ms, c| WriteOp::Expire {
        key: b(k),
        expiry: Expiry::InMs(ms),
        condition: c,
    };
    let replies = f.write(
        10_000,
        &[
            set("a", "1"),
            expire("a", 5_000, ExpireCondition::Always),
            expire("a", 9_000, ExpireCondition::IfLess),
            expire("a", 9_000, ExpireCondition::IfGreater),
            expire("nope", 1, ExpireCondition::Always),
        ],
    );
    assert_eq!(
        replies[1..],
        [
            Frame::Integer(1),
            Frame::Integer(0),
            Frame::Integer(1),
            Frame::Integer(0)
        ]
    );
    assert_eq!(
        f.read(
            10_000,
            ReadOp::Ttl {
                key: b("a"),
                millis: true
            }
        ),
        Frame::Integer(9_000)
    );
    assert_eq!(
        f.read(
            10_000,
            ReadOp::Ttl {
                key: b("a"),
                millis: false
            }
        ),
        Frame::Integer(9)
    );
    assert_eq!(
        f.read(19_000, ReadOp::Get { key: b("a") }),
        Frame::Null,
        "expired at its deadline"
    );
    assert_eq!(
        f.read(
            19_000,
            ReadOp::Ttl {
                key: b("a"),
                millis: false
            }
        ),
        Frame::Integer(-2)
    );
    // An apply with an earlier leader clock still sees the key: replicas agree on the entry's clock.
    assert_eq!(
        f.write(18_999, &[WriteOp::Persist { key: b("a") }]),
        vec![Frame::Integer(1)]
    );
    assert_eq!(
        f.read(
            50_000,
            ReadOp::Ttl {
                key: b("a"),
                millis: false
            }
        ),
        Frame::Integer(-1)
    );
    // A non-positive relative expiry deletes the key.
    assert_eq!(
        f.write(1, &[expire("a", -1, ExpireCondition::Always)]),
        vec![Frame::Integer(1)]
    );
    assert_eq!(f.read(1, ReadOp::Type { key: b("a") }), Frame::Simple("none".into()));
}

#[test]
fn purge_expired_deletes_only_keys_still_expired() {
    let f = fixture();
    let with_ttl = WriteOp::Set {
        key: b("t"),
        value: b("v"),
        expiry: Some(Expiry::InMs(10)),
        condition: SetCondition::Always,
        keep_ttl: false,
        reply: SetReply::Ok,
    };
    f.write(100, &[with_ttl, set("keep", "v")]);
    let purge = WriteOp::PurgeExpired {
        keys: vec![b("t"), b("keep")],
    };
    assert_eq!(f.write(105, std::slice::from_ref(&purge)), vec![Frame::Array(vec![])]);
    assert_eq!(f.write(200, &[purge]), vec![Frame::Array(vec![Frame::Bulk(b("t"))])]);
    assert_eq!(
        f.read(0, ReadOp::DbSize),
        Frame::Integer(1),
        "t is physically gone, keep remains"
    );
}

#[test]
fn keys_of_other_shards_are_refused_without_changes() {
    let f = fixture();
    let owned: BTreeSet<u16> = [f.ring.vnode_of(b"mine")].into();
    let db = f.engine.db();
    let mut ks = Keyspace::new(db, f.engine.cf(CF_DATA), &f.ring, &owned, 1);
    let other = (0..1000)
        .map(|i| format!("k{i}"))
        .find(|k| !owned.contains(&f.ring.vnode_of(k.as_bytes())))
        .unwrap();
    assert_eq!(
        ks.write(&WriteOp::MSet {
            pairs: vec![(b("mine"), b("1")), (b(&other), b("2"))]
        }),
        Err(NotOwned)
    );
    assert_eq!(ks.write(&set("mine", "1")), Ok(Frame::ok()));
    db.write(ks.into_batch()).unwrap();
    assert_eq!(f.read(1, ReadOp::Get { key: b("mine") }), Frame::bulk("1"));
}

#[test]
fn strict_integer_parsing() {
    for ok in ["0", "-1", "9223372036854775807", "-9223372036854775808", "42"] {
        assert!(parse_strict_i64(ok.as_bytes()).is_some(), "{ok}");
    }
    for bad in [
        "",
        "-",
        "01",
        "-0",
        "+1",
        " 1",
        "1 ",
        "9223372036854775808",
        "1.0",
        "abc",
    ] {
        assert!(parse_strict_i64(bad.as_bytes()).is_none(), "{bad}");
    }
}

/// A shard command as a write, with seed 7.
fn cmd(line: &str) -> WriteOp {
    WriteOp::Command {
        args: line.split(' ').map(b).collect(),
        seed: 7,
    }
}

fn query(line: &str) -> ReadOp {
    ReadOp::Command {
        args: line.split(' ').map(b).collect(),
        seed: 7,
    }
}

fn bulks(items: &[&str]) -> Vec<Frame> {
    items.iter().map(|s| Frame::bulk(*s)).collect()
}

/// Every record under the data column family (keys and elements).
fn record_count(f: &Fixture) -> usize {
    f.engine
        .db()
        .iterator_cf(f.engine.cf(CF_DATA), rocksdb::IteratorMode::Start)
        .count()
}

#[test]
fn deleting_or_overwriting_a_collection_removes_its_elements() {
    let f = fixture();
    f.write(1, &[cmd("HSET h a 1 b 2"), cmd("RPUSH l x y z"), cmd("ZADD z 1 m 2 n")]);
    // h: key + 2 fields; l: key + 3 items; z: key + 2 members in 2 families.
    assert_eq!(record_count(&f), 3 + 4 + 5);
    f.write(1, &[WriteOp::Del { keys: vec![b("h")] }, set("l", "now a string")]);
    assert_eq!(record_count(&f), 1 + 5, "only l's string and z remain");
    // A new hash at the same key starts empty.
    f.write(1, &[cmd("HSET h c 3")]);
    assert_eq!(
        f.read(1, query("HGETALL h")),
        Frame::Map(vec![(Frame::bulk("c"), Frame::bulk("3"))])
    );
    f.write(1, &[WriteOp::FlushAll]);
    assert_eq!(record_count(&f), 0);
}

#[test]
fn a_plain_set_over_a_collection_clears_it_with_hints_marked_in_the_batch_or_loaded_at_start() {
    let mut f = fixture();
    // Created and overwritten in one batch: the mark is made before the SET reads.
    f.write(1, &[cmd("HSET h a 1"), set("h", "s")]);
    assert_eq!(record_count(&f), 1);
    // Created in one batch, overwritten by a later one.
    f.write(1, &[cmd("SADD s m")]);
    f.write(1, &[set("s", "x")]);
    assert_eq!(record_count(&f), 2);
    // Stored before a restart: hints computed from disk know the vnode.
    f.write(1, &[cmd("RPUSH l a b")]);
    f.hints = ElementHints::load(f.engine.db(), f.engine.cf(CF_DATA));
    f.write(1, &[set("l", "y")]);
    assert_eq!(record_count(&f), 3, "only strings h, s and l remain");
    f.write(1, &[cmd("RPUSH l2 c")]);
    assert_eq!(f.read(1, query("LRANGE l2 0 -1")), Frame::Array(bulks(&["c"])));
}

#[test]
fn an_expired_collection_is_gone_for_reads_and_replaced_on_write() {
    let f = fixture();
    f.write(100, &[cmd("SADD s a b c")]);
    f.write(
        100,
        &[WriteOp::Expire {
            key: b("s"),
            expiry: Expiry::InMs(10),
            condition: ExpireCondition::Always,
        }],
    );
    assert_eq!(f.read(105, query("SCARD s")), Frame::Integer(3));
    assert_eq!(f.read(200, query("SCARD s")), Frame::Integer(0));
    assert_eq!(f.read(200, query("SMEMBERS s")), Frame::Set(vec![]));
    // Writing after the expiry creates a fresh set: the old members are not back.
    f.write(200, &[cmd("SADD s z")]);
    assert_eq!(f.read(200, query("SMEMBERS s")), Frame::Set(bulks(&["z"])));
    assert_eq!(
        f.read(
            200,
            ReadOp::Ttl {
                key: b("s"),
                millis: true
            }
        ),
        Frame::Integer(-1)
    );
    // Purging an expired collection deletes its elements too.
    f.write(
        300,
        &[
            cmd("RPUSH l a b"),
            WriteOp::Expire {
                key: b("l"),
                expiry: Expiry::InMs(1),
                condition: ExpireCondition::Always,
            },
        ],
    );
    assert_eq!(
        f.write(400, &[WriteOp::PurgeExpired { keys: vec![b("l")] }]),
        vec![Frame::Array(vec![Frame::Bulk(b("l"))])]
    );
    assert_eq!(record_count(&f), 2, "only s and its member remain");
}

#[test]
fn writes_in_one_batch_see_each_other_in_ranges() {
    let f = fixture();
    // One batch: create, read ranges over uncommitted elements, delete and re-add.
    let replies = f.write(
        1,
        &[
            cmd("ZADD z 3 c 1 a 2 b"),
            cmd("ZPOPMIN z"),
            cmd("RPUSH l 1 2 3"),
            cmd("LPOP l 2"),
            cmd("SADD s x"),
            WriteOp::Del { keys: vec![b("s")] },
            cmd("SADD s y"),
            cmd("SPOP s 5"),
        ],
    );
    assert_eq!(
        replies[1],
        Frame::Array(vec![Frame::bulk("a"), Frame::Double("1".into())])
    );
    assert_eq!(replies[3], Frame::Array(bulks(&["1", "2"])));
    assert_eq!(replies[7], Frame::Set(bulks(&["y"])), "the deleted member is not seen");
    assert_eq!(f.read(1, query("ZRANGE z 0 -1")), Frame::Array(bulks(&["b", "c"])));
    assert_eq!(f.read(1, query("LRANGE l 0 -1")), Frame::Array(bulks(&["3"])));
    assert_eq!(f.read(1, ReadOp::Exists { keys: vec![b("s")] }), Frame::Integer(0));
}

#[test]
fn random_pops_are_the_same_on_every_replica() {
    let members: Vec<String> = (0..50).map(|i| format!("m{i}")).collect();
    let add = format!("SADD s {}", members.join(" "));
    let pop = |seed| {
        let f = fixture();
        f.write(1, &[cmd(&add)]);
        let op = WriteOp::Command {
            args: vec![b("SPOP"), b("s"), b("5")],
            seed,
        };
        (f.write(1, &[op]).remove(0), f.read(1, query("SMEMBERS s")))
    };
    let (first, left) = pop(99);
    assert_eq!((first.clone(), left.clone()), pop(99), "same seed, same choice");
    let Frame::Set(popped) = first else { panic!("{first:?}") };
    let Frame::Set(left) = left else { panic!("{left:?}") };
    assert_eq!(popped.len(), 5);
    assert_eq!(left.len(), 45);
    assert!(popped.iter().all(|m| !left.contains(m)));
    assert_ne!(pop(100).0, Frame::Set(popped), "another seed picks others");
}

#[test]
fn element_scans_return_everything_present_throughout_despite_changes() {
    let f = fixture();
    let fields: Vec<String> = (0..200).map(|i| format!("f{i} v")).collect();
    f.write(1, &[cmd(&format!("HSET h {}", fields.join(" ")))]);
    let mut cursor = "0".to_string();
    let mut seen = BTreeSet::new();
    let mut calls = 0;
    loop {
        let Frame::Array(reply) = f.read(1, query(&format!("HSCAN h {cursor} COUNT 7"))) else {
            panic!()
        };
        let [Frame::Bulk(next), Frame::Array(items)] = &reply[..] else {
            panic!("{reply:?}")
        };
        for pair in items.chunks(2) {
            let Frame::Bulk(field) = &pair[0] else { panic!() };
            seen.insert(String::from_utf8(field.clone()).unwrap());
        }
        // Churn between calls: fields 150.. come and go, others stay.
        f.write(
            1,
            &[
                cmd(&format!("HDEL h f{}", 150 + calls % 50)),
                cmd(&format!("HSET h new{calls} v")),
            ],
        );
        calls += 1;
        cursor = String::from_utf8(next.clone()).unwrap();
        if cursor == "0" {
            break;
        }
        assert!(calls < 200, "the scan must finish");
    }
    for i in 0..150 {
        assert!(
            seen.contains(&format!("f{i}")),
            "f{i} was present throughout but not returned"
        );
    }
}

#[test]
fn a_small_collection_comes_back_whole_from_the_first_scan_call() {
    let f = fixture();
    let fields: Vec<String> = (0..100).map(|i| format!("f{i} v")).collect();
    f.write(1, &[cmd(&format!("HSET h {}", fields.join(" ")))]);
    let members: Vec<String> = (0..128).map(|i| format!("m{i}")).collect();
    f.write(1, &[cmd(&format!("SADD s {}", members.join(" ")))]);
    for (query_text, items) in [("HSCAN h 0 COUNT 7", 200), ("SSCAN s 0 COUNT 3", 128)] {
        let Frame::Array(reply) = f.read(1, query(query_text)) else {
            panic!()
        };
        let [Frame::Bulk(next), Frame::Array(found)] = &reply[..] else {
            panic!("{reply:?}")
        };
        assert_eq!((next.as_slice(), found.len()), (&b"0"[..], items), "{query_text}");
    }
    // One element more: paged by COUNT again.
    f.write(1, &[cmd("SADD s one-more")]);
    let Frame::Array(reply) = f.read(1, query("SSCAN s 0 COUNT 3")) else {
        panic!()
    };
    assert!(matches!(&reply[..], [Frame::Bulk(next), Frame::Array(found)] if next != b"0" && found.len() == 3));
}

#[test]
fn shard_commands_refuse_bad_shapes_instead_of_panicking() {
    let f = fixture();
    // Arity is checked on the node too (the proxy checks it first).
    assert_eq!(
        f.write(1, &[cmd("HSET")]),
        vec![Frame::error("ERR wrong number of arguments for 'hset' command")]
    );
    assert_eq!(
        f.read(1, query("SPOP s")),
        Frame::error("ERR 'spop' writes and must go through the log")
    );
    assert_eq!(f.read(1, query("NOSUCH k")), Frame::error("ERR unknown shard command"));
}

impl Fixture {
    /// Applies `op` as the entry at log index `revision`.
    fn write_at(&self, revision: u64, op: WriteOp) -> Frame {
        let db = self.engine.db();
        let mut ks = Keyspace::new(db, self.engine.cf(CF_DATA), &self.ring, &self.owned, 1);
        ks.set_revision(revision);
        let reply = ks.write(&op).unwrap();
        db.write(ks.into_batch()).unwrap();
        reply
    }
}

#[test]
fn transactions_see_their_own_writes_and_abort_on_a_changed_watch() {
    let f = fixture();
    let tx = |watched: Vec<(&str, u64)>, ops: Vec<ShardOp>| WriteOp::Transaction {
        watched: watched.into_iter().map(|(k, r)| (b(k), r)).collect(),
        ops,
    };
    let reply = f.write_at(
        5,
        tx(
            vec![],
            vec![
                ShardOp::Write(set("k", "1")),
                ShardOp::Write(WriteOp::IncrBy { key: b("k"), delta: 1 }),
                ShardOp::Read(ReadOp::Get { key: b("k") }),
                ShardOp::Write(cmd("RPUSH l a")),
                ShardOp::Read(query("LLEN l")),
            ],
        ),
    );
    assert_eq!(
        reply,
        Frame::Array(vec![
            Frame::ok(),
            Frame::Integer(2),
            Frame::bulk("2"),
            Frame::Integer(1),
            Frame::Integer(1)
        ])
    );
    // Both keys now carry revision 5; an element change bumps the key too.
    assert_eq!(
        f.read(
            1,
            ReadOp::Revisions {
                keys: vec![b("k"), b("l"), b("none")]
            }
        ),
        Frame::Array(vec![Frame::Integer(5), Frame::Integer(5), Frame::Integer(0)])
    );
    f.write_at(6, cmd("LSET l 0 b"));
    assert_eq!(
        f.read(1, ReadOp::Revisions { keys: vec![b("l")] }),
        Frame::Array(vec![Frame::Integer(6)])
    );
    // A stale watch: nothing runs.
    let guarded = |revision| tx(vec![("l", revision)], vec![ShardOp::Write(set("k", "changed"))]);
    assert_eq!(f.write_at(7, guarded(5)), Frame::NullArray);
    assert_eq!(f.read(1, ReadOp::Get { key: b("k") }), Frame::bulk("2"));
    assert_eq!(f.write_at(8, guarded(6)), Frame::Array(vec![Frame::ok()]));
    assert_eq!(f.read(1, ReadOp::Get { key: b("k") }), Frame::bulk("changed"));
}

/// Every chunk record of `key` (the elements of a chunked string).
fn chunk_records(f: &Fixture, key: &str) -> usize {
    let ks = Keyspace::new(f.engine.db(), f.engine.cf(CF_DATA), &f.ring, &f.owned, 0);
    let skey = ks.storage_key(key.as_bytes()).unwrap();
    ks.elements(&skey, &[], None, false).count()
}

fn command(args: &[&str]) -> WriteOp {
    WriteOp::Command {
        args: args.iter().map(|a| b(a)).collect(),
        seed: 1,
    }
}

#[test]
fn long_strings_live_in_chunks_and_leave_none_behind() {
    let f = fixture();
    let get = |key: &str| f.read(1, ReadOp::Get { key: b(key) });
    let big: String = (0..10_000).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    // A long SET is chunked; GET, STRLEN and GETRANGE across chunks see it whole.
    f.write(1, &[set("s", &big)]);
    assert_eq!(chunk_records(&f, "s"), 10);
    assert_eq!(get("s"), Frame::Bulk(b(&big)));
    assert_eq!(f.read(1, ReadOp::StrLen { key: b("s") }), Frame::Integer(10_000));
    assert_eq!(
        f.read(
            1,
            ReadOp::ObjectEncoding {
                key: b("s"),
                limits: EncodingLimits::default()
            }
        ),
        Frame::Bulk(b("raw"))
    );
    assert_eq!(
        f.read(
            1,
            ReadOp::GetRange {
                key: b("s"),
                start: 1020,
                end: 1030
            }
        ),
        Frame::Bulk(b(&big[1020..=1030]))
    );
    // SETRANGE across a chunk boundary and past the end, APPEND, SETBIT.
    f.write(
        1,
        &[
            WriteOp::SetRange {
                key: b("s"),
                offset: 1022,
                value: b("XYZW"),
            },
            WriteOp::SetRange {
                key: b("s"),
                offset: 12_000,
                value: b("end"),
            },
            WriteOp::Append {
                key: b("s"),
                value: b("!"),
            },
            command(&["setbit", "s", "7", "1"]),
        ],
    );
    let mut expected = b(&big);
    expected[1022..1026].copy_from_slice(b"XYZW");
    expected.resize(12_000, 0);
    expected.extend_from_slice(b"end!");
    expected[0] |= 1;
    assert_eq!(get("s"), Frame::Bulk(expected.clone()));
    assert_eq!(chunk_records(&f, "s"), 12);
    let reply = f.write(1, &[command(&["bitcount", "s"])]);
    let ones: u32 = expected.iter().map(|b| b.count_ones()).sum();
    assert_eq!(reply, vec![Frame::Integer(i64::from(ones))]);
    // A short SET over it leaves no chunks; a long one over a longer one
    // leaves none past its end.
    f.write(1, &[set("s", "short")]);
    assert_eq!((get("s"), chunk_records(&f, "s")), (Frame::Bulk(b("short")), 0));
    f.write(1, &[set("s", &big), set("s", &big[..5000])]);
    assert_eq!((get("s"), chunk_records(&f, "s")), (Frame::Bulk(b(&big[..5000])), 5));
    // RENAME moves the chunks, DEL and GETDEL take them.
    f.write(1, &[command(&["rename", "s", "t"])]);
    assert_eq!((chunk_records(&f, "s"), chunk_records(&f, "t")), (0, 5));
    assert_eq!(get("t"), Frame::Bulk(b(&big[..5000])));
    f.write(
        1,
        &[
            set("u", &big),
            WriteOp::Del { keys: vec![b("t")] },
            WriteOp::GetDel { key: b("u") },
        ],
    );
    assert_eq!((chunk_records(&f, "t"), chunk_records(&f, "u")), (0, 0));
    // An expired chunked string's chunks go when the key is written again.
    f.write(
        1,
        &[WriteOp::Set {
            key: b("e"),
            value: b(&big),
            expiry: Some(Expiry::AtMs(5)),
            condition: SetCondition::Always,
            keep_ttl: false,
            reply: SetReply::Ok,
        }],
    );
    f.write(10, &[command(&["setbit", "e", "1", "1"])]);
    assert_eq!(chunk_records(&f, "e"), 0);
    assert_eq!(f.read(10, ReadOp::Get { key: b("e") }), Frame::Bulk(vec![0x40]));
}

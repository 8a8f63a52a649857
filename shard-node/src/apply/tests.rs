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
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(&dir.path().join("db"), FsyncPolicy::Always).unwrap();
    Fixture {
        _dir: dir,
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
        let mut ks = Keyspace::new(db, self.engine.cf(CF_DATA), &self.ring, &self.owned, now);
        let replies = ops.iter().map(|op| ks.write(op).unwrap()).collect();
        db.write(ks.into_batch()).unwrap();
        replies
    }

    fn read(&self, now: u64, op: ReadOp) -> Frame {
        let ks = Keyspace::new(self.engine.db(), self.engine.cf(CF_DATA), &self.ring, &self.owned, now);
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
    assert_eq!(f.write(105, std::slice::from_ref(&purge)), vec![Frame::Integer(0)]);
    assert_eq!(f.write(200, &[purge]), vec![Frame::Integer(1)]);
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

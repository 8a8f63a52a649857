//! Parsing tests: arity, options and Redis's exact error strings.

use super::*;

fn p(line: &str) -> Command {
    let args: Vec<Vec<u8>> = line.split(' ').map(|s| s.as_bytes().to_vec()).collect();
    parse(&args)
}

fn error_of(line: &str) -> String {
    match p(line) {
        Command::Local(Frame::Error(e)) | Command::Rejected(Frame::Error(e)) => e,
        other => panic!("{line}: expected an error, got {other:?}"),
    }
}

#[test]
fn errors_match_redis_byte_for_byte() {
    let cases = [
        ("get", "ERR wrong number of arguments for 'get' command"),
        ("GET a b", "ERR wrong number of arguments for 'get' command"),
        (
            "foo a b",
            "ERR unknown command 'foo', with args beginning with: 'a' 'b' ",
        ),
        ("incrby k x", "ERR value is not an integer or out of range"),
        ("incrby k 01", "ERR value is not an integer or out of range"),
        ("set k v EX 0", "ERR invalid expire time in 'set' command"),
        ("set k v EX x", "ERR value is not an integer or out of range"),
        ("set k v NX XX", "ERR syntax error"),
        ("set k v EX 10 PX 10", "ERR syntax error"),
        ("set k v KEEPTTL EX 10", "ERR syntax error"),
        ("set k v EX", "ERR syntax error"),
        ("setex k -1 v", "ERR invalid expire time in 'setex' command"),
        ("mset a 1 b", "ERR wrong number of arguments for 'mset' command"),
        (
            "expire k 10 NX XX",
            "ERR NX and XX, GT or LT options at the same time are not compatible",
        ),
        (
            "expire k 10 GT LT",
            "ERR GT and LT options at the same time are not compatible",
        ),
        ("expire k 10 FOO", "ERR Unsupported option FOO"),
        ("setrange k -1 v", "ERR offset is out of range"),
        ("incrbyfloat k abc", "ERR value is not a valid float"),
        ("decrby k -9223372036854775808", "ERR decrement would overflow"),
        ("getex k EX 10 PERSIST", "ERR syntax error"),
        ("select 3", "ERR DB index is out of range"),
    ];
    for (line, expected) in cases {
        assert_eq!(error_of(line), expected, "{line}");
    }
}

#[test]
fn set_options_are_parsed() {
    match p("SET k v nx px 100 get") {
        Command::Keyed {
            op:
                ShardOp::Write(WriteOp::Set {
                    expiry,
                    condition,
                    reply,
                    keep_ttl,
                    ..
                }),
            ..
        } => {
            assert_eq!(expiry, Some(Expiry::InMs(100)));
            assert_eq!(condition, SetCondition::IfAbsent);
            assert_eq!(reply, SetReply::OldValue);
            assert!(!keep_ttl);
        }
        other => panic!("{other:?}"),
    }
    match p("set k v EXAT 2000000000") {
        Command::Keyed {
            op: ShardOp::Write(WriteOp::Set { expiry, .. }),
            ..
        } => {
            assert_eq!(expiry, Some(Expiry::AtMs(2_000_000_000_000)))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn local_commands_answer_without_the_cluster() {
    assert_eq!(p("PING"), Command::Local(Frame::Simple("PONG".into())));
    assert_eq!(p("ping hi"), Command::Local(Frame::bulk("hi")));
    assert_eq!(p("echo x"), Command::Local(Frame::bulk("x")));
    assert_eq!(p("select 0"), Command::Local(Frame::ok()));
    // COMMAND's reply is built by the proxy, which knows its whole table.
    assert!(matches!(p("command count"), Command::Session(_)));
}

#[test]
fn shard_commands_route_by_their_keys() {
    match p("hset h f v") {
        Command::Keyed {
            key,
            op: ShardOp::Write(WriteOp::Command { args, .. }),
        } => {
            assert_eq!(key, b"h".to_vec());
            assert_eq!(args.len(), 4);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        p("ZRANGE z 0 -1"),
        Command::Keyed {
            op: ShardOp::Read(ReadOp::Command { .. }),
            ..
        }
    ));
    match p("sinterstore d a b") {
        Command::SameShard { keys, .. } => assert_eq!(keys.len(), 3),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        p("hget h"),
        Command::Rejected(Frame::error("ERR wrong number of arguments for 'hget' command"))
    );
    // Two SPOPs get different seeds: each is one random choice.
    let seed = |c| match c {
        Command::Keyed {
            op: ShardOp::Write(WriteOp::Command { seed, .. }),
            ..
        } => seed,
        other => panic!("{other:?}"),
    };
    assert_ne!(seed(p("spop s")), seed(p("spop s")));
}

mod fuzz {
    use proptest::prelude::*;

    use super::super::*;

    fn word() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            Just(b"SET".to_vec()),
            Just(b"GET".to_vec()),
            Just(b"EX".to_vec()),
            Just(b"PX".to_vec()),
            Just(b"EXAT".to_vec()),
            Just(b"NX".to_vec()),
            Just(b"XX".to_vec()),
            Just(b"GT".to_vec()),
            Just(b"KEEPTTL".to_vec()),
            Just(b"GET".to_vec()),
            Just(b"PERSIST".to_vec()),
            Just(b"-1".to_vec()),
            Just(b"0".to_vec()),
            Just(b"9223372036854775807".to_vec()),
            Just(b"-9223372036854775808".to_vec()),
            Just(b"1e400".to_vec()),
            Just(b"nan".to_vec()),
            proptest::collection::vec(any::<u8>(), 0..8),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        /// Any arguments to any known command parse to a command or a Redis error, never a panic.
        #[test]
        fn any_arguments_to_any_command_never_panic(
            name in proptest::sample::select(COMMANDS.iter().map(|(n, _)| *n).collect::<Vec<_>>()),
            args in proptest::collection::vec(word(), 0..7),
        ) {
            let mut request = vec![name.as_bytes().to_vec()];
            request.extend(args);
            if let Command::Local(Frame::Error(e)) = parse(&request) {
                prop_assert!(!e.is_empty() && e.chars().next().unwrap().is_ascii_uppercase(), "{}", e);
            }
        }
    }
}

mod blocking {
    use super::*;

    fn args(line: &str) -> Vec<Vec<u8>> {
        line.split(' ').map(|s| s.as_bytes().to_vec()).collect()
    }

    fn parsed(line: &str) -> Command {
        let a = args(line);
        match parse_blocking(&String::from_utf8_lossy(&a[0]).to_lowercase(), &a) {
            Ok(c) | Err(c) => c,
        }
    }

    fn error(line: &str) -> String {
        match parsed(line) {
            Command::Local(Frame::Error(e)) => e,
            other => panic!("{line}: {other:?}"),
        }
    }

    #[test]
    fn arguments_and_errors_as_redis() {
        assert_eq!(
            parsed("BLPOP a b 1.5"),
            Command::Blocking {
                pop: BlockedPop {
                    keys: args("a b"),
                    kind: PopKind::List { left: true }
                },
                timeout_ms: 1500
            }
        );
        assert!(matches!(parsed("BRPOP a 0"), Command::Blocking { timeout_ms: 0, .. }));
        assert_eq!(error("BLPOP a x"), "ERR timeout is not a float or out of range");
        assert_eq!(error("BLPOP a nan"), "ERR timeout is not a float or out of range");
        assert_eq!(error("BLPOP a -1"), "ERR timeout is negative");
        assert_eq!(error("BLPOP a inf"), "ERR timeout is out of range");
        assert_eq!(error("BLMOVE a b UP LEFT 0"), SYNTAX);
        assert_eq!(
            error("BLMOVE a b LEFT LEFT x"),
            "ERR timeout is not a float or out of range"
        );
        assert!(matches!(
            parsed("BLMOVE a b right LEFT 0.01"),
            Command::Blocking {
                pop: BlockedPop {
                    kind: PopKind::Move {
                        from_left: false,
                        to_left: true,
                        ..
                    },
                    ..
                },
                timeout_ms: 10
            }
        ));
        assert_eq!(error("BLMPOP 0 0 a LEFT"), "ERR numkeys should be greater than 0");
        assert_eq!(error("BLMPOP 0 x a LEFT"), "ERR numkeys should be greater than 0");
        assert_eq!(error("BLMPOP 0 2 a LEFT"), SYNTAX);
        assert_eq!(error("BLMPOP 0 1 a UP"), SYNTAX);
        assert_eq!(error("BLMPOP 0 1 a LEFT COUNT 0"), "ERR count should be greater than 0");
        assert_eq!(error("BLMPOP 0 1 a LEFT COUNT 1 COUNT 2"), SYNTAX);
        assert_eq!(error("BZMPOP 0 1 a LEFT"), SYNTAX);
        assert!(matches!(
            parsed("BZMPOP 1 2 a b MAX COUNT 3"),
            Command::Blocking {
                pop: BlockedPop {
                    kind: PopKind::ZSetMany { min: false, count: 3 },
                    ..
                },
                timeout_ms: 1000
            }
        ));
    }
}

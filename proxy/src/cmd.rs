//! The command table: Redis commands parsed into shard operations and executed.
//!
//! Parsing validates arity and arguments and produces Redis 7's error strings byte
//! for byte; execution routes each key to its shard, splits multi-key commands by
//! shard and merges the replies in the client's order. Commands answered by the
//! proxy alone (PING, ECHO, SELECT 0, COMMAND, INFO) never leave it.

use std::collections::BTreeMap;

use redraft_common::commands::{self, arity_ok};
use redraft_common::ids::ShardId;
use redraft_common::ops::{
    parse_strict_i64, Bytes, ExpireCondition, Expiry, GetExChange, ReadOp, SetCondition, SetReply, ShardOp, WriteOp,
};
use redraft_common::resp::Frame;

use crate::reply::{self, Error};
use crate::route::Router;

/// Redis's syntax error.
pub const SYNTAX: &str = "ERR syntax error";
/// Redis's error for an argument that must be an integer.
pub const NOT_INTEGER: &str = "ERR value is not an integer or out of range";

/// What a parsed command does.
#[derive(Debug, PartialEq)]
pub enum Command {
    /// Answered by the proxy.
    Local(Frame),
    /// Refused before it could be queued: an unknown command or a wrong number
    /// of arguments (inside MULTI, this aborts the transaction, as in Redis).
    Rejected(Frame),
    /// MULTI, EXEC, DISCARD, WATCH keys..., UNWATCH: run by the connection.
    Transaction(TransactionControl),
    /// QUIT: reply OK and close.
    Quit,
    /// INFO [section]: the section asked for, lowercased (`None`: the default set).
    Info(Option<String>),
    /// One operation on the shard owning `key`.
    Keyed { key: Bytes, op: ShardOp },
    /// MGET split by shard.
    MGet(Vec<Bytes>),
    /// MSET split by shard (atomic per shard).
    MSet(Vec<(Bytes, Bytes)>),
    /// DEL / UNLINK (write) or EXISTS (read), split by shard, counts summed.
    Count { keys: Vec<Bytes>, write: bool },
    /// One operation on every shard, integer replies summed (DBSIZE).
    SumAll(ShardOp),
    /// One operation on every shard, `+OK` when all succeed (FLUSHALL).
    AllOk(ShardOp),
    /// MSETNX: all keys must live in one shard.
    MSetNx(Vec<(Bytes, Bytes)>),
    /// A shard command whose keys must all live in one shard (SINTER, LMOVE, ...).
    SameShard { keys: Vec<Bytes>, op: ShardOp },
    /// Reads or changes the connection (HELLO, AUTH, CLIENT) or needs its address
    /// (CLUSTER, CONFIG): run by the connection, in order.
    Session(Vec<Bytes>),
    /// LEADER key: where the key lives (virtual node, shard, leader, replicas).
    Leader(Bytes),
    /// SCAN cursor [MATCH pattern] [COUNT n] [TYPE type].
    Scan {
        cursor: u64,
        count: u64,
        pattern: Option<Bytes>,
        kind: Option<String>,
    },
    /// KEYS pattern, over every shard.
    Keys(Bytes),
    /// RANDOMKEY.
    RandomKey,
    /// Pub/Sub: (P|S)SUBSCRIBE, (P|S)UNSUBSCRIBE, PUBLISH, SPUBLISH, PUBSUB; run
    /// by the connection.
    PubSub(Vec<Bytes>),
    /// A blocking pop (BLPOP, BLMOVE, BZPOPMIN, ...), run by the connection;
    /// `timeout_ms` 0 waits without limit.
    Blocking {
        pop: redraft_common::ops::BlockedPop,
        timeout_ms: u64,
    },
}

impl Command {
    /// The command as MULTI queues it: a blocking pop runs once, without
    /// blocking, as Redis runs it inside a transaction.
    pub fn in_transaction(self) -> Command {
        match self {
            Command::Blocking { pop, .. } => Command::SameShard {
                keys: pop.keys().into_iter().map(<[u8]>::to_vec).collect(),
                op: ShardOp::Write(WriteOp::PopFirst(pop)),
            },
            other => other,
        }
    }
}

fn err(text: impl Into<String>) -> Command {
    Command::Local(Frame::Error(text.into()))
}

fn int_arg(arg: &[u8]) -> Result<i64, Command> {
    parse_strict_i64(arg).ok_or_else(|| err(NOT_INTEGER))
}

fn float_arg(arg: &[u8]) -> Result<f64, Command> {
    let s = std::str::from_utf8(arg).map_err(|_| err("ERR value is not a valid float"))?;
    let lower = s.to_ascii_lowercase();
    if s.is_empty() || s.trim() != s || lower.contains("nan") {
        return Err(err("ERR value is not a valid float"));
    }
    s.parse::<f64>()
        .ok()
        .filter(|f| !f.is_nan())
        .ok_or_else(|| err("ERR value is not a valid float"))
}

/// `(name, arity)` of every command the proxy knows.
pub const COMMANDS: &[(&str, i32)] = &[
    ("ping", -1),
    ("echo", 2),
    ("quit", -1),
    ("select", 2),
    ("command", -1),
    ("info", -1),
    ("client", -2),
    ("hello", -1),
    ("auth", -2),
    ("cluster", -2),
    ("config", -2),
    ("leader", 2),
    ("acl", -2),
    ("scan", -2),
    ("subscribe", -2),
    ("unsubscribe", -1),
    ("psubscribe", -2),
    ("punsubscribe", -1),
    ("ssubscribe", -2),
    ("sunsubscribe", -1),
    ("publish", 3),
    ("spublish", 3),
    ("pubsub", -2),
    ("multi", 1),
    ("exec", 1),
    ("discard", 1),
    ("watch", -2),
    ("unwatch", 1),
    ("keys", 2),
    ("randomkey", 1),
    ("touch", -2),
    ("dbsize", 1),
    ("flushall", -1),
    ("flushdb", -1),
    ("get", 2),
    ("set", -3),
    ("setnx", 3),
    ("setex", 4),
    ("psetex", 4),
    ("getset", 3),
    ("getdel", 2),
    ("getex", -2),
    ("mget", -2),
    ("mset", -3),
    ("msetnx", -3),
    ("del", -2),
    ("unlink", -2),
    ("exists", -2),
    ("incr", 2),
    ("decr", 2),
    ("incrby", 3),
    ("decrby", 3),
    ("incrbyfloat", 3),
    ("append", 3),
    ("strlen", 2),
    ("getrange", 4),
    ("setrange", 4),
    ("expire", -3),
    ("pexpire", -3),
    ("expireat", -3),
    ("pexpireat", -3),
    ("ttl", 2),
    ("pttl", 2),
    ("expiretime", 2),
    ("pexpiretime", 2),
    ("persist", 2),
    ("type", 2),
    ("blpop", -3),
    ("brpop", -3),
    ("brpoplpush", 4),
    ("blmove", 6),
    ("blmpop", -5),
    ("bzpopmin", -3),
    ("bzpopmax", -3),
    ("bzmpop", -5),
];

fn keyed(key: &[u8], op: ShardOp) -> Command {
    Command::Keyed { key: key.to_vec(), op }
}

fn write(key: &[u8], op: WriteOp) -> Command {
    keyed(key, ShardOp::Write(op))
}

fn read(key: &[u8], op: ReadOp) -> Command {
    keyed(key, ShardOp::Read(op))
}

fn unknown_command(args: &[Vec<u8>]) -> Command {
    let name = String::from_utf8_lossy(&args[0]);
    let mut text = format!("ERR unknown command '{name}', with args beginning with: ");
    for arg in args[1..].iter().take(20) {
        text.push_str(&format!("'{}' ", String::from_utf8_lossy(arg)));
    }
    Command::Rejected(Frame::Error(text))
}

fn wrong_arity(name: &str) -> Command {
    Command::Rejected(Frame::Error(format!(
        "ERR wrong number of arguments for '{name}' command"
    )))
}

/// The transaction commands.
#[derive(Debug, PartialEq)]
pub enum TransactionControl {
    /// MULTI
    Multi,
    /// EXEC
    Exec,
    /// DISCARD
    Discard,
    /// WATCH keys...
    Watch(Vec<Bytes>),
    /// UNWATCH
    Unwatch,
}

/// The command table's name for a request's first argument, or `unknown`: a
/// metric label with a bounded set of values.
pub fn command_name(name: &[u8]) -> &'static str {
    COMMANDS
        .iter()
        .find(|(n, _)| n.as_bytes().eq_ignore_ascii_case(name))
        .map(|(n, _)| *n)
        .or_else(|| commands::lookup(name).map(|c| c.name))
        .unwrap_or("unknown")
}

/// A seed for the random choices of one command (SPOP, SRANDMEMBER, ...): the
/// shard applies it on every replica, so it is chosen here, once.
fn random_seed() -> u64 {
    rand::random()
}

/// A command executed by the shard from its arguments (see `commands`).
fn shard_command(spec: &commands::ShardCommand, args: &[Vec<u8>]) -> Command {
    let op = if spec.write {
        ShardOp::Write(WriteOp::Command {
            args: args.to_vec(),
            seed: random_seed(),
        })
    } else {
        ShardOp::Read(ReadOp::Command {
            args: args.to_vec(),
            seed: random_seed(),
        })
    };
    let keys: Vec<Bytes> = spec.keys(args).into_iter().map(<[u8]>::to_vec).collect();
    match keys.as_slice() {
        [key] => Command::Keyed { key: key.clone(), op },
        _ => Command::SameShard { keys, op },
    }
}

/// Parses a request into a [`Command`]; invalid requests become `Local` errors.
pub fn parse(args: &[Vec<u8>]) -> Command {
    let name = String::from_utf8_lossy(&args[0]).to_ascii_lowercase();
    if name == "object" && args.len() == 2 && !args[1].eq_ignore_ascii_case(b"help") {
        return wrong_arity(&format!(
            "object|{}",
            String::from_utf8_lossy(&args[1]).to_ascii_lowercase()
        ));
    }
    if name == "object" && args.len() == 2 {
        return Command::Local(Frame::Array(
            [
                "OBJECT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
                "ENCODING <key>",
                "FREQ <key>",
                "IDLETIME <key>",
                "REFCOUNT <key>",
                "HELP",
            ]
            .iter()
            .map(|l| Frame::Simple(l.to_string()))
            .collect(),
        ));
    }
    let Some(&(_, arity)) = COMMANDS.iter().find(|(n, _)| *n == name) else {
        return match commands::lookup(name.as_bytes()) {
            Some(spec) if !arity_ok(spec.arity, args.len()) => wrong_arity(&name),
            Some(spec) => shard_command(spec, args),
            None => unknown_command(args),
        };
    };
    if !arity_ok(arity, args.len()) {
        return wrong_arity(&name);
    }
    match parse_known(&name, args) {
        Ok(c) | Err(c) => c,
    }
}

fn parse_known(name: &str, args: &[Vec<u8>]) -> Result<Command, Command> {
    let a = args;
    let key = || a[1].to_vec();
    Ok(match name {
        "ping" => match a.len() {
            1 => Command::Local(Frame::Simple("PONG".into())),
            2 => Command::Local(Frame::Bulk(a[1].clone())),
            _ => return Err(err("ERR wrong number of arguments for 'ping' command")),
        },
        "echo" => Command::Local(Frame::Bulk(a[1].clone())),
        "quit" => Command::Quit,
        "select" => match int_arg(&a[1])? {
            0 => Command::Local(Frame::ok()),
            _ => err("ERR DB index is out of range"),
        },
        "command" => Command::Local(crate::admin::command(a)),
        "hello" | "auth" | "client" | "cluster" | "config" | "acl" => Command::Session(a.to_vec()),
        "leader" => Command::Leader(key()),
        "scan" => parse_scan(a)?,
        "subscribe" | "unsubscribe" | "psubscribe" | "punsubscribe" | "ssubscribe" | "sunsubscribe" | "publish"
        | "spublish" | "pubsub" => Command::PubSub(a.to_vec()),
        "multi" => Command::Transaction(TransactionControl::Multi),
        "exec" => Command::Transaction(TransactionControl::Exec),
        "discard" => Command::Transaction(TransactionControl::Discard),
        "watch" => Command::Transaction(TransactionControl::Watch(a[1..].to_vec())),
        "unwatch" => Command::Transaction(TransactionControl::Unwatch),
        "keys" => Command::Keys(a[1].clone()),
        "randomkey" => Command::RandomKey,
        "touch" => Command::Count {
            keys: a[1..].to_vec(),
            write: false,
        },
        "info" => Command::Info(a.get(1).map(|s| String::from_utf8_lossy(s).to_ascii_lowercase())),
        "dbsize" => Command::SumAll(ShardOp::Read(ReadOp::DbSize)),
        "flushall" | "flushdb" => {
            if a.len() > 2
                || a.get(1)
                    .is_some_and(|m| !m.eq_ignore_ascii_case(b"sync") && !m.eq_ignore_ascii_case(b"async"))
            {
                return Err(err(SYNTAX));
            }
            Command::AllOk(ShardOp::Write(WriteOp::FlushAll))
        }
        "get" => read(&a[1], ReadOp::Get { key: key() }),
        "set" => parse_set(a)?,
        "setnx" => write(
            &a[1],
            set_op(
                key(),
                a[2].clone(),
                None,
                SetCondition::IfAbsent,
                false,
                SetReply::Integer,
            ),
        ),
        "setex" | "psetex" => {
            let n = int_arg(&a[2])?;
            let ms = if name == "setex" { n.checked_mul(1000) } else { Some(n) };
            match ms.filter(|&ms| n > 0 && ms > 0) {
                Some(ms) => write(
                    &a[1],
                    set_op(
                        key(),
                        a[3].clone(),
                        Some(Expiry::InMs(ms)),
                        SetCondition::Always,
                        false,
                        SetReply::Ok,
                    ),
                ),
                None => err(format!("ERR invalid expire time in '{name}' command")),
            }
        }
        "getset" => write(
            &a[1],
            set_op(
                key(),
                a[2].clone(),
                None,
                SetCondition::Always,
                false,
                SetReply::OldValue,
            ),
        ),
        "getdel" => write(&a[1], WriteOp::GetDel { key: key() }),
        "getex" => parse_getex(a)?,
        "mget" => Command::MGet(a[1..].to_vec()),
        "mset" | "msetnx" => {
            if a.len().is_multiple_of(2) {
                return Err(err(format!("ERR wrong number of arguments for '{name}' command")));
            }
            let pairs = a[1..].chunks(2).map(|p| (p[0].clone(), p[1].clone())).collect();
            if name == "mset" {
                Command::MSet(pairs)
            } else {
                Command::MSetNx(pairs)
            }
        }
        "del" | "unlink" => Command::Count {
            keys: a[1..].to_vec(),
            write: true,
        },
        "exists" => Command::Count {
            keys: a[1..].to_vec(),
            write: false,
        },
        "incr" => write(&a[1], WriteOp::IncrBy { key: key(), delta: 1 }),
        "decr" => write(&a[1], WriteOp::IncrBy { key: key(), delta: -1 }),
        "incrby" => write(
            &a[1],
            WriteOp::IncrBy {
                key: key(),
                delta: int_arg(&a[2])?,
            },
        ),
        "decrby" => match int_arg(&a[2])?.checked_neg() {
            Some(delta) => write(&a[1], WriteOp::IncrBy { key: key(), delta }),
            None => err("ERR decrement would overflow"),
        },
        "incrbyfloat" => {
            let delta = float_arg(&a[2])?;
            if !delta.is_finite() {
                return Err(err("ERR increment would produce NaN or Infinity"));
            }
            write(&a[1], WriteOp::IncrByFloat { key: key(), delta })
        }
        "append" => write(
            &a[1],
            WriteOp::Append {
                key: key(),
                value: a[2].clone(),
            },
        ),
        "strlen" => read(&a[1], ReadOp::StrLen { key: key() }),
        "getrange" => read(
            &a[1],
            ReadOp::GetRange {
                key: key(),
                start: int_arg(&a[2])?,
                end: int_arg(&a[3])?,
            },
        ),
        "setrange" => {
            let offset = int_arg(&a[2])?;
            if offset < 0 {
                return Err(err("ERR offset is out of range"));
            }
            if offset as u64 + a[3].len() as u64 > 512 * 1024 * 1024 {
                return Err(err("ERR string exceeds maximum allowed size (proto-max-bulk-len)"));
            }
            write(
                &a[1],
                WriteOp::SetRange {
                    key: key(),
                    offset: offset as u64,
                    value: a[3].clone(),
                },
            )
        }
        "expire" | "pexpire" | "expireat" | "pexpireat" => parse_expire(name, a)?,
        "ttl" | "pttl" => read(
            &a[1],
            ReadOp::Ttl {
                key: key(),
                millis: name == "pttl",
            },
        ),
        "expiretime" | "pexpiretime" => read(
            &a[1],
            ReadOp::ExpireTime {
                key: key(),
                millis: name == "pexpiretime",
            },
        ),
        "persist" => write(&a[1], WriteOp::Persist { key: key() }),
        "type" => read(&a[1], ReadOp::Type { key: key() }),
        "blpop" | "brpop" | "brpoplpush" | "blmove" | "blmpop" | "bzpopmin" | "bzpopmax" | "bzmpop" => {
            crate::blocking::parse(name, a)?
        }
        _ => unknown_command(a),
    })
}

fn set_op(
    key: Bytes,
    value: Bytes,
    expiry: Option<Expiry>,
    condition: SetCondition,
    keep_ttl: bool,
    reply: SetReply,
) -> WriteOp {
    WriteOp::Set {
        key,
        value,
        expiry,
        condition,
        keep_ttl,
        reply,
    }
}

/// Parses an expiry option's value: `unit_ms` is 1000 for seconds.
fn expiry_value(arg: &[u8], unit_ms: i64, absolute: bool, command: &str) -> Result<Expiry, Command> {
    let n = int_arg(arg)?;
    let invalid = || err(format!("ERR invalid expire time in '{command}' command"));
    if n <= 0 {
        return Err(invalid());
    }
    let ms = n.checked_mul(unit_ms).ok_or_else(invalid)?;
    if !absolute && (ms as i128 + redraft_common::now_ms() as i128) > i64::MAX as i128 {
        return Err(invalid());
    }
    Ok(if absolute { Expiry::AtMs(ms) } else { Expiry::InMs(ms) })
}

fn parse_set(a: &[Vec<u8>]) -> Result<Command, Command> {
    let mut expiry = None;
    let mut condition = SetCondition::Always;
    let mut keep_ttl = false;
    let mut get = false;
    let mut i = 3;
    while i < a.len() {
        let opt = a[i].to_ascii_uppercase();
        let has_next = i + 1 < a.len();
        match opt.as_slice() {
            b"NX" if condition == SetCondition::Always => condition = SetCondition::IfAbsent,
            b"XX" if condition == SetCondition::Always => condition = SetCondition::IfPresent,
            b"GET" => get = true,
            b"KEEPTTL" if expiry.is_none() => keep_ttl = true,
            b"EX" | b"PX" | b"EXAT" | b"PXAT" if expiry.is_none() && !keep_ttl && has_next => {
                let unit = if opt[0] == b'E' { 1000 } else { 1 };
                expiry = Some(expiry_value(&a[i + 1], unit, opt.len() == 4, "set")?);
                i += 1;
            }
            _ => return Err(err(SYNTAX)),
        }
        i += 1;
    }
    let reply = if get { SetReply::OldValue } else { SetReply::Ok };
    Ok(write(
        &a[1],
        set_op(a[1].clone(), a[2].clone(), expiry, condition, keep_ttl, reply),
    ))
}

fn parse_scan(a: &[Vec<u8>]) -> Result<Command, Command> {
    let cursor = std::str::from_utf8(&a[1])
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| err("ERR invalid cursor"))?;
    let (mut count, mut pattern, mut kind) = (10, None, None);
    let mut i = 2;
    while i < a.len() {
        let Some(value) = a.get(i + 1) else {
            return Err(err(SYNTAX));
        };
        match a[i].to_ascii_lowercase().as_slice() {
            b"count" => {
                count = int_arg(value)?;
                if count < 1 {
                    return Err(err(SYNTAX));
                }
            }
            b"match" => pattern = Some(value.clone()),
            b"type" => kind = Some(String::from_utf8_lossy(value).into_owned()),
            _ => return Err(err(SYNTAX)),
        }
        i += 2;
    }
    Ok(Command::Scan {
        cursor,
        count: count as u64,
        pattern,
        kind,
    })
}

fn parse_getex(a: &[Vec<u8>]) -> Result<Command, Command> {
    let mut change = GetExChange::Keep;
    let mut i = 2;
    while i < a.len() {
        let opt = a[i].to_ascii_uppercase();
        match opt.as_slice() {
            b"PERSIST" if change == GetExChange::Keep => change = GetExChange::Persist,
            b"EX" | b"PX" | b"EXAT" | b"PXAT" if change == GetExChange::Keep && i + 1 < a.len() => {
                let unit = if opt[0] == b'E' { 1000 } else { 1 };
                change = GetExChange::Set(expiry_value(&a[i + 1], unit, opt.len() == 4, "getex")?);
                i += 1;
            }
            _ => return Err(err(SYNTAX)),
        }
        i += 1;
    }
    Ok(write(
        &a[1],
        WriteOp::GetEx {
            key: a[1].clone(),
            change,
        },
    ))
}

fn parse_expire(name: &str, a: &[Vec<u8>]) -> Result<Command, Command> {
    let n = int_arg(&a[2])?;
    let unit: i64 = if name.starts_with('p') { 1 } else { 1000 };
    let invalid = || err(format!("ERR invalid expire time in '{name}' command"));
    let ms = n.checked_mul(unit).ok_or_else(invalid)?;
    let expiry = if name.ends_with("at") {
        Expiry::AtMs(ms)
    } else {
        if (ms as i128 + redraft_common::now_ms() as i128) > i64::MAX as i128 {
            return Err(invalid());
        }
        Expiry::InMs(ms)
    };
    let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
    for opt in &a[3..] {
        match opt.to_ascii_uppercase().as_slice() {
            b"NX" => nx = true,
            b"XX" => xx = true,
            b"GT" => gt = true,
            b"LT" => lt = true,
            _ => return Err(err(format!("ERR Unsupported option {}", String::from_utf8_lossy(opt)))),
        }
    }
    if nx && (xx || gt || lt) {
        return Err(err(
            "ERR NX and XX, GT or LT options at the same time are not compatible",
        ));
    }
    if gt && lt {
        return Err(err("ERR GT and LT options at the same time are not compatible"));
    }
    let condition = match (nx, xx, gt, lt) {
        (true, ..) => ExpireCondition::IfNoExpiry,
        (_, _, true, _) => ExpireCondition::IfGreater,
        (_, true, _, true) => ExpireCondition::IfExpiryAndLess,
        (_, _, _, true) => ExpireCondition::IfLess,
        (_, true, ..) => ExpireCondition::IfExpiry,
        _ => ExpireCondition::Always,
    };
    Ok(write(
        &a[1],
        WriteOp::Expire {
            key: a[1].clone(),
            expiry,
            condition,
        },
    ))
}

fn sum(frames: Vec<Frame>) -> Frame {
    let mut total = 0;
    for frame in frames {
        match frame {
            Frame::Integer(n) => total += n,
            error @ Frame::Error(_) => return error,
            other => return Frame::error(format!("ERR unexpected shard reply {other:?}")),
        }
    }
    Frame::Integer(total)
}

/// Runs one operation per shard over `items`, grouped by the shard of their key,
/// concurrently. Items whose shard answers that a split or merge moved them are
/// grouped again under the newer routing table and retried (nothing of theirs
/// was applied), until the retry deadline. Returns each group's item positions
/// (indexes into `items`) with its shard's reply, in no particular order.
pub(crate) async fn fan_out<T: Clone>(
    router: &Router,
    items: Vec<T>,
    key: impl Fn(&T) -> &[u8],
    build: impl Fn(Vec<T>) -> ShardOp,
) -> Result<Vec<(Vec<usize>, Frame)>, Error> {
    let deadline = std::time::Instant::now() + crate::route::RETRY_DEADLINE;
    let mut pause = crate::route::MOVED_PAUSE;
    let mut pending: Vec<(usize, T)> = items.into_iter().enumerate().collect();
    let mut done = Vec::new();
    while !pending.is_empty() {
        let mut groups: BTreeMap<ShardId, Vec<(usize, T)>> = BTreeMap::new();
        for (i, item) in pending.drain(..) {
            groups.entry(router.shard_of(key(&item))?).or_default().push((i, item));
        }
        let tasks = groups.into_iter().map(|(shard, group)| {
            let op = build(group.iter().map(|(_, item)| item.clone()).collect());
            async move { (group, router.exec(shard, op).await) }
        });
        for (group, result) in futures::future::join_all(tasks).await {
            match result {
                Ok(frame) => done.push((group.iter().map(|(i, _)| *i).collect(), frame)),
                Err(Error::Moved(shard)) if std::time::Instant::now() >= deadline => {
                    return Err(Error::TryAgain(shard))
                }
                Err(Error::Moved(_)) => pending.extend(group),
                Err(e) => return Err(e),
            }
        }
        if !pending.is_empty() {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(crate::route::MOVED_PAUSE_MAX);
        }
    }
    Ok(done)
}

/// Runs `op` on every shard (DBSIZE, FLUSHALL, KEYS); its replies in shard
/// order. When a shard was merged away meanwhile, runs it again on every shard
/// of the newer table (the operations it is used for may run twice).
async fn on_every_shard(router: &Router, op: ShardOp) -> Result<Vec<Frame>, Error> {
    let deadline = std::time::Instant::now() + crate::route::RETRY_DEADLINE;
    loop {
        let tasks = router.shards()?.into_iter().map(|s| router.exec(s, op.clone()));
        match futures::future::join_all(tasks).await.into_iter().collect() {
            Err(Error::Moved(shard)) if std::time::Instant::now() >= deadline => return Err(Error::TryAgain(shard)),
            Err(Error::Moved(_)) => tokio::time::sleep(crate::route::MOVED_PAUSE).await,
            other => return other,
        }
    }
}

/// Runs one connection's consecutive reads, or writes, of `shard` as one
/// request: writes share one Raft entry and are applied in order, reads share
/// one read barrier and are answered in order. An operation whose key a split
/// or merge moved meanwhile (it did not run) runs again on its new shard.
/// Replies in order.
pub async fn execute_run(router: &Router, shard: ShardId, run: Vec<(Bytes, ShardOp)>) -> Vec<Frame> {
    let Some(batch) = ShardOp::many(run.iter().map(|(_, op)| op.clone()).collect()) else {
        return vec![Frame::error("ERR a batch mixes reads and writes"); run.len()];
    };
    let results = router.exec_many(shard, batch, run.len()).await;
    let mut replies = Vec::with_capacity(run.len());
    for ((key, op), result) in run.into_iter().zip(results) {
        let result = match result {
            Err(Error::Moved(_)) => router.exec_key(&key, op).await,
            other => other,
        };
        replies.push(result.unwrap_or_else(|e| reply::to_frame(&e)));
    }
    replies
}

/// Executes a parsed command against the cluster.
pub async fn execute(router: &Router, command: Command) -> Frame {
    match run(router, command).await {
        Ok(frame) => frame,
        Err(e) => reply::to_frame(&e),
    }
}

async fn run(router: &Router, command: Command) -> Result<Frame, Error> {
    Ok(match command {
        Command::Local(frame) | Command::Rejected(frame) => frame,
        Command::Quit => Frame::ok(),
        Command::Transaction(_) | Command::PubSub(_) | Command::Blocking { .. } => {
            Frame::error("ERR this command runs on its connection")
        }
        Command::Info(section) => {
            let keys = match sum_over_shards(router, ShardOp::Read(ReadOp::DbSize)).await {
                Ok(Frame::Integer(n)) => Some(n),
                _ => None,
            };
            Frame::Bulk(crate::info::render(router, section.as_deref(), keys).into_bytes())
        }
        Command::Keyed { key, op } => router.exec_key(&key, op).await?,
        Command::MGet(keys) => {
            let mut out = vec![Frame::Null; keys.len()];
            let build = |keys| ShardOp::Read(ReadOp::MGet { keys });
            for (positions, frame) in fan_out(router, keys, |k| k, build).await? {
                match frame {
                    Frame::Array(values) => {
                        for (p, v) in positions.into_iter().zip(values) {
                            out[p] = v;
                        }
                    }
                    other => return Ok(other),
                }
            }
            Frame::Array(out)
        }
        Command::MSet(pairs) => {
            let build = |pairs| ShardOp::Write(WriteOp::MSet { pairs });
            all_ok(
                fan_out(router, pairs, |p| &p.0, build)
                    .await?
                    .into_iter()
                    .map(|(_, f)| f)
                    .collect(),
            )
        }
        Command::MSetNx(pairs) => {
            let keys: Vec<Bytes> = pairs.iter().map(|p| p.0.clone()).collect();
            if keys.is_empty() {
                return Ok(Frame::error("ERR wrong number of arguments for 'msetnx' command"));
            }
            in_one_shard(router, &keys, ShardOp::Write(WriteOp::MSetNx { pairs })).await?
        }
        Command::Count { keys, write } => {
            let build = |keys| {
                if write {
                    ShardOp::Write(WriteOp::Del { keys })
                } else {
                    ShardOp::Read(ReadOp::Exists { keys })
                }
            };
            sum(fan_out(router, keys, |k| k, build)
                .await?
                .into_iter()
                .map(|(_, f)| f)
                .collect())
        }
        Command::SameShard { keys, op } => in_one_shard(router, &keys, op).await?,
        Command::Leader(key) => router.describe_key(&key)?,
        Command::Session(_) => Frame::error("ERR connection commands run on their connection"),
        Command::Scan {
            cursor,
            count,
            pattern,
            kind,
        } => scan(router, cursor, count, pattern, kind).await?,
        Command::Keys(pattern) => {
            let replies = on_every_shard(router, ShardOp::Read(ReadOp::Keys { pattern })).await?;
            let mut keys = Vec::new();
            for reply in replies {
                match reply {
                    Frame::Array(found) => keys.extend(found),
                    other => return Ok(other),
                }
            }
            Frame::Array(keys)
        }
        Command::RandomKey => random_key(router).await?,
        Command::SumAll(op) => sum_over_shards(router, op).await?,
        Command::AllOk(op) => all_ok(on_every_shard(router, op).await?),
    })
}

/// How long one SCAN call keeps collecting before it answers with what it has
/// (maybe nothing, with a non-zero cursor, as Redis may): bounds a call over a
/// sparse keyspace or a MATCH that few keys pass.
const SCAN_BUDGET: std::time::Duration = std::time::Duration::from_millis(50);

/// Virtual nodes a SCAN call's first round covers; a round in which no shard
/// filled its quota doubles the next one, so a small keyspace takes a few rounds
/// and a big one asks few shards per round.
const SCAN_FIRST_WINDOW: u32 = 32;

/// SCAN: collects keys in ring order from the cursor's position until it has
/// COUNT keys, the ring ends (cursor 0) or [`SCAN_BUDGET`] runs out. Each round
/// asks every shard owning a virtual node of the next window for its keys there,
/// concurrently, and keeps the keys before the first position where a shard
/// stopped: the page is then exactly a prefix of the ring from the cursor, so
/// the next call resumes there and no key present throughout is missed (see
/// the shard's cursor rule). A window that a split or merge changed is asked
/// again under the newer table.
async fn scan(
    router: &Router,
    cursor: u64,
    count: u64,
    pattern: Option<Bytes>,
    kind: Option<String>,
) -> Result<Frame, Error> {
    let started = std::time::Instant::now();
    let deadline = started + crate::route::RETRY_DEADLINE;
    let mut position = cursor;
    let mut keys = Vec::new();
    let mut window = SCAN_FIRST_WINDOW;
    loop {
        let table = router.table();
        if !table.is_bootstrapped() {
            return Err(Error::ClusterDown("the cluster is not bootstrapped yet".into()));
        }
        let first = (position >> 48) as u32;
        let wanted = count.saturating_sub(keys.len() as u64);
        if first >= table.vnode_count || wanted == 0 || started.elapsed() >= SCAN_BUDGET {
            let next = if first >= table.vnode_count { 0 } else { position.max(1) };
            return Ok(Frame::Array(vec![
                Frame::Bulk(next.to_string().into_bytes()),
                Frame::Array(keys),
            ]));
        }
        let end = first.saturating_add(window).min(table.vnode_count);
        let mut by_shard: std::collections::BTreeMap<ShardId, Vec<u16>> = Default::default();
        for vnode in first..end {
            let shard = table
                .shard_of(vnode as u16)
                .ok_or_else(|| Error::ClusterDown("routing table is incomplete".into()))?;
            by_shard.entry(shard).or_default().push(vnode as u16);
        }
        let steps = by_shard.into_iter().map(|(shard, vnodes)| {
            // Only the cursor's own virtual node resumes mid-way.
            let from = if u32::from(vnodes[0]) == first {
                position
            } else {
                u64::from(vnodes[0]) << 48
            };
            let op = ShardOp::Read(ReadOp::Scan {
                vnodes,
                from,
                count: wanted,
                pattern: pattern.clone(),
                kind: kind.clone(),
            });
            async move { router.exec(shard, op).await }
        });
        let mut stop = u64::from(end) << 48;
        let mut found = Vec::new();
        let mut moved = None;
        for answer in futures::future::join_all(steps).await {
            match answer {
                Ok(Frame::Array(step)) => match &step[..] {
                    [Frame::Integer(next), Frame::Integer(_), Frame::Array(step_keys)] => {
                        if *next >= 0 {
                            stop = stop.min(*next as u64);
                        }
                        found.extend(step_keys.iter().cloned());
                    }
                    _ => return Ok(Frame::error("ERR unexpected shard reply to SCAN")),
                },
                Ok(other) => return Ok(other),
                Err(Error::Moved(shard)) => moved = Some(shard),
                Err(e) => return Err(e),
            }
        }
        if let Some(shard) = moved {
            if std::time::Instant::now() >= deadline {
                return Err(Error::TryAgain(shard));
            }
            // A virtual node moved: the same window again, under the newer table.
            tokio::time::sleep(crate::route::MOVED_PAUSE).await;
            continue;
        }
        for key in found {
            let Frame::Bulk(bytes) = &key else { continue };
            let vnode = router
                .vnode_of(bytes)
                .ok_or_else(|| Error::ClusterDown("the cluster is not bootstrapped yet".into()))?;
            if redraft_common::keys::scan_position(vnode, bytes) < stop {
                keys.push(key);
            }
        }
        if stop == u64::from(end) << 48 {
            window = window.saturating_mul(2);
        }
        position = stop;
    }
}

/// RANDOMKEY: asks the shards in a random order until one has a key.
async fn random_key(router: &Router) -> Result<Frame, Error> {
    use rand::seq::SliceRandom;
    let mut shards = router.shards()?;
    shards.shuffle(&mut rand::thread_rng());
    for shard in shards {
        let op = ShardOp::Read(ReadOp::RandomKey { seed: random_seed() });
        match router.exec(shard, op).await {
            Ok(Frame::Null) | Err(Error::Moved(_)) => continue,
            Ok(found) => return Ok(found),
            Err(e) => return Err(e),
        }
    }
    Ok(Frame::Null)
}

/// The one shard that owns all of `keys`, or CROSSSLOT.
pub(crate) fn one_shard<'k>(router: &Router, keys: impl IntoIterator<Item = &'k [u8]>) -> Result<ShardId, Error> {
    let shards: std::collections::BTreeSet<ShardId> =
        keys.into_iter().map(|k| router.shard_of(k)).collect::<Result<_, _>>()?;
    match (shards.first(), shards.len()) {
        (Some(&shard), 1) => Ok(shard),
        _ => Err(Error::CrossSlot),
    }
}

/// Runs `op`, whose `keys` must all be in one shard, on that shard: CROSSSLOT
/// when they are not, checked again whenever a split or merge moved a key
/// (the shard re-checks ownership when it applies, and nothing ran).
pub(crate) async fn in_one_shard(router: &Router, keys: &[Bytes], op: ShardOp) -> Result<Frame, Error> {
    let deadline = std::time::Instant::now() + crate::route::RETRY_DEADLINE;
    let mut pause = crate::route::MOVED_PAUSE;
    loop {
        let shard = one_shard(router, keys.iter().map(|k| &k[..]))?;
        match router.exec(shard, op.clone()).await {
            Err(Error::Moved(shard)) if std::time::Instant::now() >= deadline => return Err(Error::TryAgain(shard)),
            Err(Error::Moved(_)) => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(crate::route::MOVED_PAUSE_MAX);
            }
            other => return other,
        }
    }
}

/// Runs `op` on every shard and sums the integer replies (DBSIZE).
async fn sum_over_shards(router: &Router, op: ShardOp) -> Result<Frame, Error> {
    Ok(sum(on_every_shard(router, op).await?))
}

fn all_ok(frames: Vec<Frame>) -> Frame {
    frames
        .into_iter()
        .find(|f| matches!(f, Frame::Error(_)))
        .unwrap_or_else(Frame::ok)
}

#[cfg(test)]
mod tests;

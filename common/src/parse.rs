//! Redis commands parsed into shard operations.
//!
//! Parsing validates arity and arguments and produces Redis 7's error strings
//! byte for byte. The proxy parses every request here and then routes the
//! result; a shard parses here the commands a script calls (`redis.call`), so
//! both see one grammar.

use crate::commands::{self, arity_ok};
use crate::ops::{
    parse_strict_i64, BlockedPop, Bytes, ExpireCondition, Expiry, GetExChange, PopKind, ReadOp, Script, SetCondition,
    SetReply, ShardOp, WriteOp,
};
use crate::resp::Frame;

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
    /// EVAL, EVALSHA, EVAL_RO, EVALSHA_RO, FCALL, FCALL_RO: a script or
    /// function run by the shard owning `keys` (with none, the shard owning
    /// the empty key); `read_only` runs it as a read that may not write.
    Eval {
        source: ScriptSource,
        keys: Vec<Bytes>,
        args: Vec<Bytes>,
        read_only: bool,
        seed: u64,
    },
    /// DEBUG DIGEST: every shard's part, combined as Redis digests a database.
    Digest,
    /// DEBUG DIGEST-VALUE keys...: split by shard, answered in the keys' order.
    DigestValues(Vec<Bytes>),
    /// OBJECT ENCODING key: the proxy adds the cluster's encoding parameters.
    ObjectEncoding(Bytes),
    /// A blocking pop (BLPOP, BLMOVE, BZPOPMIN, ...), run by the connection;
    /// `timeout_ms` 0 waits without limit.
    Blocking { pop: BlockedPop, timeout_ms: u64 },
}

/// Where an EVAL-family command finds its script.
#[derive(Debug, PartialEq)]
pub enum ScriptSource {
    /// EVAL, EVAL_RO: the body itself.
    Body(Bytes),
    /// EVALSHA, EVALSHA_RO: the SHA1 (lowercased) of a script loaded before;
    /// the proxy replaces it with the body from its script cache.
    Sha(String),
    /// FCALL, FCALL_RO: a function's name; the proxy replaces it with its
    /// library ([`ScriptSource::Library`]).
    Function(String),
    /// A function with the code of the library that registers it.
    Library { code: Bytes, function: String },
}

impl Command {
    /// The command as one operation on one shard, with the keys it names: how
    /// MULTI's queued commands become one transaction. `Err` gives back a
    /// command that is not one shard operation.
    pub fn into_shard_op(self) -> Result<(Vec<Bytes>, ShardOp), Command> {
        Ok(match self {
            Command::Keyed { key, op } => (vec![key], op),
            Command::SameShard { keys, op } => (keys, op),
            Command::MGet(keys) => (keys.clone(), ShardOp::Read(ReadOp::MGet { keys })),
            Command::MSet(pairs) => (
                pairs.iter().map(|p| p.0.clone()).collect(),
                ShardOp::Write(WriteOp::MSet { pairs }),
            ),
            Command::MSetNx(pairs) => (
                pairs.iter().map(|p| p.0.clone()).collect(),
                ShardOp::Write(WriteOp::MSetNx { pairs }),
            ),
            Command::Count { keys, write: true } => (keys.clone(), ShardOp::Write(WriteOp::Del { keys })),
            Command::Count { keys, write: false } => (keys.clone(), ShardOp::Read(ReadOp::Exists { keys })),
            // Inside MULTI and scripts: Redis's default parameters.
            Command::ObjectEncoding(key) => (
                vec![key.clone()],
                ShardOp::Read(ReadOp::ObjectEncoding {
                    key,
                    limits: Default::default(),
                }),
            ),
            Command::Eval {
                source: source @ (ScriptSource::Body(_) | ScriptSource::Library { .. }),
                keys,
                args,
                read_only,
                seed,
            } => {
                let (body, function) = match source {
                    ScriptSource::Library { code, function } => (code, Some(function)),
                    ScriptSource::Body(body) => (body, None),
                    _ => unreachable!("matched above"),
                };
                let script = Script {
                    body,
                    keys: keys.clone(),
                    args,
                    seed,
                    function,
                };
                let op = if read_only {
                    ShardOp::Read(ReadOp::Script(script))
                } else {
                    ShardOp::Write(WriteOp::Script(script))
                };
                (keys, op)
            }
            other => return Err(other),
        })
    }

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
    ("lmpop", -4),
    ("zmpop", -4),
    ("eval", -3),
    ("evalsha", -3),
    ("eval_ro", -3),
    ("evalsha_ro", -3),
    ("script", -2),
    ("fcall", -3),
    ("fcall_ro", -3),
    ("function", -2),
    ("dump", 2),
    ("debug", -2),
    ("restore", -4),
];

/// The arity of a command by its lowercase name, `None` when unknown.
pub fn arity_of(name: &str) -> Option<i32> {
    COMMANDS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|&(_, arity)| arity)
        .or_else(|| commands::lookup(name.as_bytes()).map(|c| c.arity))
}

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
pub fn random_seed() -> u64 {
    rand::random()
}

/// A command executed by the shard from its arguments (see `commands`).
fn shard_command(spec: &commands::ShardCommand, args: &[Vec<u8>]) -> Command {
    if let Err(message) = spec.key_count(args) {
        return err(message);
    }
    let op = if spec.writes(args) {
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
    if name == "object" && args.len() == 3 && args[1].eq_ignore_ascii_case(b"encoding") {
        return Command::ObjectEncoding(args[2].clone());
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
        "command" | "hello" | "auth" | "client" | "cluster" | "config" | "acl" | "script" | "function" => {
            Command::Session(a.to_vec())
        }
        "eval" | "evalsha" | "eval_ro" | "evalsha_ro" | "fcall" | "fcall_ro" => parse_eval(name, a)?,
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
        "dump" => read(&a[1], ReadOp::Dump { key: key() }),
        "debug" => match a[1].to_ascii_lowercase().as_slice() {
            b"digest" if a.len() == 2 => Command::Digest,
            b"digest-value" => Command::DigestValues(a[2..].to_vec()),
            _ => err(format!(
                "ERR DEBUG {} is not available here (DIGEST and DIGEST-VALUE are)",
                String::from_utf8_lossy(&a[1])
            )),
        },
        "restore" => parse_restore(a)?,
        "type" => read(&a[1], ReadOp::Type { key: key() }),
        "blpop" | "brpop" | "brpoplpush" | "blmove" | "blmpop" | "bzpopmin" | "bzpopmax" | "bzmpop" => {
            parse_blocking(name, a)?
        }
        "lmpop" | "zmpop" => parse_mpop(a, 1, name == "lmpop")?,
        _ => unknown_command(a),
    })
}

/// RESTORE key ttl payload [REPLACE] [ABSTTL] [IDLETIME s] [FREQ f]: the
/// payload decoded here, into the writes that recreate the value.
fn parse_restore(a: &[Vec<u8>]) -> Result<Command, Command> {
    let (mut replace, mut absolute, mut idle, mut freq) = (false, false, false, false);
    let mut i = 4;
    while i < a.len() {
        match a[i].to_ascii_uppercase().as_slice() {
            b"REPLACE" => replace = true,
            b"ABSTTL" => absolute = true,
            b"IDLETIME" if i + 1 < a.len() && !freq => {
                if int_arg(&a[i + 1])? < 0 {
                    return Err(err("ERR Invalid IDLETIME value, must be >= 0"));
                }
                idle = true;
                i += 1;
            }
            b"FREQ" if i + 1 < a.len() && !idle => {
                if !(0..=255).contains(&int_arg(&a[i + 1])?) {
                    return Err(err("ERR Invalid FREQ value, must be >= 0 and <= 255"));
                }
                freq = true;
                i += 1;
            }
            _ => return Err(err(SYNTAX)),
        }
        i += 1;
    }
    let ttl = int_arg(&a[2])?;
    if ttl < 0 {
        return Err(err("ERR Invalid TTL value, must be >= 0"));
    }
    let key = a[1].clone();
    let ops = restore_ops(&key, &a[3], ttl, absolute);
    Ok(write(&a[1], WriteOp::Restore { key, replace, ops }))
}

/// The writes that recreate a DUMP payload's value at `key`, with its TTL.
fn restore_ops(key: &[u8], payload: &[u8], ttl: i64, absolute: bool) -> Result<Vec<WriteOp>, String> {
    let value = crate::rdb::restore(payload)?;
    let key = key.to_vec();
    let expiry = (ttl > 0).then_some(if absolute { Expiry::AtMs(ttl) } else { Expiry::InMs(ttl) });
    let command = |name: &str, rest: Vec<Vec<u8>>| {
        let mut args = vec![name.as_bytes().to_vec(), key.clone()];
        args.extend(rest);
        WriteOp::Command { args, seed: 0 }
    };
    let mut ops = vec![match value {
        crate::rdb::Value::String(value) => set_op(key.clone(), value, None, SetCondition::Always, false, SetReply::Ok),
        crate::rdb::Value::List(items) if !items.is_empty() => command("rpush", items),
        crate::rdb::Value::Set(members) if !members.is_empty() => command("sadd", members),
        crate::rdb::Value::ZSet(members) if !members.is_empty() => command(
            "zadd",
            members
                .into_iter()
                .flat_map(|(member, score)| [score.to_string().into_bytes(), member])
                .collect(),
        ),
        crate::rdb::Value::Hash(fields) if !fields.is_empty() => {
            command("hset", fields.into_iter().flat_map(|(f, v)| [f, v]).collect())
        }
        _ => return Err(crate::rdb::BAD_FORMAT.into()),
    }];
    if let Some(expiry) = expiry {
        ops.push(WriteOp::Expire {
            key: key.clone(),
            expiry,
            condition: ExpireCondition::Always,
        });
    }
    Ok(ops)
}

/// EVAL script|sha|function numkeys key... arg...
fn parse_eval(name: &str, a: &[Vec<u8>]) -> Result<Command, Command> {
    let numkeys = int_arg(&a[2])?;
    if numkeys < 0 {
        return Err(err("ERR Number of keys can't be negative"));
    }
    if numkeys as u64 > (a.len() - 3) as u64 {
        return Err(err("ERR Number of keys can't be greater than number of args"));
    }
    let split = 3 + numkeys as usize;
    let source = if name.starts_with("evalsha") {
        ScriptSource::Sha(String::from_utf8_lossy(&a[1]).to_ascii_lowercase())
    } else if name.starts_with("fcall") {
        ScriptSource::Function(String::from_utf8_lossy(&a[1]).into_owned())
    } else {
        ScriptSource::Body(a[1].clone())
    };
    Ok(Command::Eval {
        source,
        keys: a[3..split].to_vec(),
        args: a[split..].to_vec(),
        read_only: name.ends_with("_ro"),
        seed: random_seed(),
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
    if !absolute && (ms as i128 + crate::now_ms() as i128) > i64::MAX as i128 {
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
        if (ms as i128 + crate::now_ms() as i128) > i64::MAX as i128 {
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

/// Redis's timeout argument, in seconds with decimals: milliseconds, 0 for none.
fn timeout_ms(arg: &[u8]) -> Result<u64, Command> {
    let seconds = std::str::from_utf8(arg)
        .ok()
        .filter(|s| !s.is_empty() && !s.starts_with(char::is_whitespace) && !s.ends_with(char::is_whitespace))
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|f| !f.is_nan())
        .ok_or_else(|| err("ERR timeout is not a float or out of range"))?;
    let ms = (seconds * 1000.0).ceil();
    if ms > i64::MAX as f64 / 2.0 {
        return Err(err("ERR timeout is out of range"));
    }
    if ms < 0.0 {
        return Err(err("ERR timeout is negative"));
    }
    Ok(ms as u64)
}

fn side(arg: &[u8], first: &[u8], second: &[u8]) -> Result<bool, Command> {
    if arg.eq_ignore_ascii_case(first) {
        Ok(true)
    } else if arg.eq_ignore_ascii_case(second) {
        Ok(false)
    } else {
        Err(err(SYNTAX))
    }
}

fn positive(arg: &[u8], message: &str) -> Result<u64, Command> {
    parse_strict_i64(arg)
        .filter(|&n| n > 0)
        .map(|n| n as u64)
        .ok_or_else(|| err(message))
}

/// BLMPOP and BZMPOP (`timeout numkeys key... LEFT|RIGHT|MIN|MAX [COUNT n]`,
/// `count_at` 2), LMPOP and ZMPOP (no timeout, `count_at` 1, never block).
fn parse_mpop(a: &[Vec<u8>], count_at: usize, list: bool) -> Result<Command, Command> {
    let timeout_ms = if count_at == 2 { Some(timeout_ms(&a[1])?) } else { None };
    let numkeys = positive(&a[count_at], "ERR numkeys should be greater than 0")?;
    let where_at = usize::try_from(numkeys)
        .ok()
        .and_then(|n| n.checked_add(count_at + 1))
        .unwrap_or(usize::MAX);
    if where_at >= a.len() {
        return Err(err(SYNTAX));
    }
    let first = if list {
        side(&a[where_at], b"LEFT", b"RIGHT")?
    } else {
        side(&a[where_at], b"MIN", b"MAX")?
    };
    let mut count = None;
    let mut i = where_at + 1;
    while i < a.len() {
        if a[i].eq_ignore_ascii_case(b"COUNT") && i + 1 < a.len() && count.is_none() {
            count = Some(positive(&a[i + 1], "ERR count should be greater than 0")?);
            i += 2;
        } else {
            return Err(err(SYNTAX));
        }
    }
    let count = count.unwrap_or(1);
    let kind = if list {
        PopKind::ListMany { left: first, count }
    } else {
        PopKind::ZSetMany { min: first, count }
    };
    let pop = BlockedPop {
        keys: a[count_at + 1..where_at].to_vec(),
        kind,
    };
    Ok(match timeout_ms {
        Some(timeout_ms) => Command::Blocking { pop, timeout_ms },
        None => Command::SameShard {
            keys: pop.keys().into_iter().map(<[u8]>::to_vec).collect(),
            op: ShardOp::Write(WriteOp::PopFirst(pop)),
        },
    })
}

/// Parses a blocking command (`name` lowercase, arity checked).
fn parse_blocking(name: &str, a: &[Vec<u8>]) -> Result<Command, Command> {
    let last = a.len() - 1;
    let (keys, kind, timeout_ms) = match name {
        "blpop" | "brpop" => (
            a[1..last].to_vec(),
            PopKind::List { left: name == "blpop" },
            timeout_ms(&a[last])?,
        ),
        "bzpopmin" | "bzpopmax" => (
            a[1..last].to_vec(),
            PopKind::ZSet {
                min: name == "bzpopmin",
            },
            timeout_ms(&a[last])?,
        ),
        "brpoplpush" => (
            vec![a[1].clone()],
            PopKind::Move {
                dest: a[2].clone(),
                from_left: false,
                to_left: true,
            },
            timeout_ms(&a[3])?,
        ),
        "blmove" => {
            let from_left = side(&a[3], b"LEFT", b"RIGHT")?;
            let to_left = side(&a[4], b"LEFT", b"RIGHT")?;
            (
                vec![a[1].clone()],
                PopKind::Move {
                    dest: a[2].clone(),
                    from_left,
                    to_left,
                },
                timeout_ms(&a[5])?,
            )
        }
        "blmpop" => return parse_mpop(a, 2, true),
        "bzmpop" => return parse_mpop(a, 2, false),
        _ => return Err(err("ERR unknown blocking command")),
    };
    Ok(Command::Blocking {
        pop: BlockedPop { keys, kind },
        timeout_ms,
    })
}

#[cfg(test)]
mod tests;

//! Lua scripts (EVAL, EVALSHA and their read-only forms) run against one
//! shard's keyspace, with Lua 5.1 as Redis embeds it.
//!
//! A script runs inside the apply of its Raft entry (EVAL, EVALSHA) or inside a
//! leader's read (EVAL_RO). Each `redis.call` is parsed by the proxy's own
//! parser (`redraft_common::parse`) and executed by this [`Keyspace`], so the
//! commands of a script behave as a client's would, read what the script wrote
//! before, and the whole script is one atomic step of the shard.
//!
//! DETERMINISM. Every replica runs the same body with the same `KEYS`, `ARGV`,
//! seed and entry time: `math.random` draws from the entry's seed, the random
//! picks of the commands it calls (SPOP, SRANDMEMBER, ...) from seeds derived
//! from it, and a runaway script is stopped by an instruction budget, never by
//! a clock, so every replica stops it at the same instruction. Each call gets a
//! fresh interpreter: no global left by one script can change the next.
//!
//! SAFETY. Binary chunks are refused (Lua 5.1's bytecode loader trusts its
//! input), as are file access and `os`; the interpreter's memory is bounded.

use std::cell::RefCell;

use mlua::{Function, HookTriggers, Lua, LuaOptions, MultiValue, StdLib, Table, Value, VmState};
use redraft_common::commands::arity_ok;
use redraft_common::ops::{ReadOp, Script, ShardOp, WriteOp};
use redraft_common::parse::{self, Command};
use redraft_common::resp::Frame;

use super::{Keyspace, NotOwned};

/// VM instructions a script may run before it is stopped (a few seconds of
/// work for the interpreter here). Counted, not timed, so replicas agree.
pub const INSTRUCTION_BUDGET: u64 = 1_000_000_000;
/// How often the budget is checked, in instructions.
const BUDGET_STEP: u32 = 100_000;
/// The interpreter's memory limit.
const MEMORY_LIMIT: usize = 256 * 1024 * 1024;
/// The chunk name Redis gives a script: errors read `user_script:LINE: ...`.
const CHUNK: &str = "@user_script";

const NOT_ALLOWED: &str = "ERR This Redis command is not allowed from script";
const WRITE_IN_READ_ONLY: &str = "ERR Write commands are not allowed from read-only scripts.";
const NOT_LOCAL: &str = "ERR Script attempted to access a non local key in a cluster node";

/// The library set up in every interpreter before the script (after
/// `redis.call` and `redis.pcall`, which are Rust): the read-only global
/// table, and the loaders limited to source text.
const PRELUDE: &str = r#"
local raw_loadstring = loadstring
redis.error_reply = function(text)
  if type(text) ~= 'string' then error('wrong number or type of arguments') end
  return {err = text}
end
redis.status_reply = function(text)
  if type(text) ~= 'string' then error('wrong number or type of arguments') end
  return {ok = text}
end
redis.LOG_DEBUG, redis.LOG_VERBOSE, redis.LOG_NOTICE, redis.LOG_WARNING = 0, 1, 2, 3
redis.log = function(level, ...) end
redis.setresp = function(version)
  if version ~= 2 and version ~= 3 then error('RESP version must be 2 or 3.') end
end
redis.REPL_NONE, redis.REPL_AOF, redis.REPL_SLAVE, redis.REPL_REPLICA, redis.REPL_ALL = 0, 1, 2, 2, 3
redis.set_repl = function(flags) end
redis.replicate_commands = function() return true end
loadstring = function(text, name)
  if type(text) == 'string' and string.byte(text, 1) == 27 then
    return nil, 'binary chunks are not allowed'
  end
  return raw_loadstring(text, name)
end
dofile, loadfile, load, print = nil, nil, nil, nil
setmetatable(_G, {
  __index = function(_, name)
    error("Script attempted to access nonexistent global variable '" .. tostring(name) .. "'", 2)
  end,
  __newindex = function() error('Attempt to modify a readonly table', 2) end,
})
"#;

impl Keyspace<'_> {
    /// Runs `script`; `read_only` refuses its writes (EVAL_RO). Errors are
    /// Redis's, byte for byte, with the script's SHA1 and line where Redis
    /// gives them.
    pub(super) fn script(&mut self, script: &Script, read_only: bool) -> Frame {
        let sha = Script::sha(&script.body);
        match run(self, script, read_only) {
            Ok(Outcome::Reply(frame)) => frame,
            Ok(Outcome::Failed { text, line: Some(line) }) => {
                Frame::Error(format!("{text} script: {sha}, on {CHUNK}:{line}."))
            }
            Ok(Outcome::Failed { text, line: None }) => Frame::Error(text),
            Err(e) => Frame::Error(format!("ERR {e}")),
        }
    }

    /// One `redis.call` of a script: `args` parsed and executed here.
    fn script_call(&mut self, args: &[Vec<u8>], read_only: bool, seed: u64) -> Frame {
        let name = String::from_utf8_lossy(&args[0]).to_ascii_lowercase();
        let Some(arity) = parse::arity_of(&name) else {
            return Frame::error("ERR Unknown Redis command called from script");
        };
        if !arity_ok(arity, args.len()) {
            return Frame::error("ERR Wrong number of args calling Redis command from script");
        }
        let op = match parse::parse(args) {
            // Scripts call no scripts.
            Command::Eval { .. } => Err(Command::Quit),
            command => command.into_shard_op(),
        };
        let op = match op {
            Ok((_, op)) => op,
            Err(Command::Local(frame) | Command::Rejected(frame)) => return frame,
            // What a Redis Cluster node answers: its own keys.
            Err(Command::Keys(pattern)) => ShardOp::Read(ReadOp::Keys { pattern }),
            Err(Command::SumAll(op @ ShardOp::Read(ReadOp::DbSize))) => op,
            // Scripts, blocking commands, MULTI, Pub/Sub, ...: as Redis.
            Err(_) => return Frame::error(NOT_ALLOWED),
        };
        let result = match with_seed(op, seed) {
            ShardOp::Read(read) => self.read(&read),
            ShardOp::Write(_) if read_only => return Frame::error(WRITE_IN_READ_ONLY),
            ShardOp::Write(write) => self.write(&write),
        };
        result.unwrap_or_else(|NotOwned| Frame::error(NOT_LOCAL))
    }
}

/// How a script ended.
enum Outcome {
    Reply(Frame),
    /// An error raised and not caught: its text and the script line it came
    /// from, when known.
    Failed {
        text: String,
        line: Option<usize>,
    },
}

/// The random seed of a command a script calls: the script's seed, then the
/// call's position, so every replica picks alike.
fn with_seed(op: ShardOp, seed: u64) -> ShardOp {
    match op {
        ShardOp::Write(WriteOp::Command { args, .. }) => ShardOp::Write(WriteOp::Command { args, seed }),
        ShardOp::Read(ReadOp::Command { args, .. }) => ShardOp::Read(ReadOp::Command { args, seed }),
        ShardOp::Read(ReadOp::RandomKey { .. }) => ShardOp::Read(ReadOp::RandomKey { seed }),
        op => op,
    }
}

fn run(ks: &mut Keyspace<'_>, script: &Script, read_only: bool) -> mlua::Result<Outcome> {
    let lua = Lua::new_with(StdLib::TABLE | StdLib::STRING | StdLib::MATH, LuaOptions::default())?;
    lua.set_memory_limit(MEMORY_LIMIT)?;
    let globals = lua.globals();
    globals.set("KEYS", strings(&lua, &script.keys)?)?;
    globals.set("ARGV", strings(&lua, &script.args)?)?;
    let redis = lua.create_table()?;
    redis.set("REDIS_VERSION", redraft_common::REDIS_VERSION)?;
    redis.set("REDIS_VERSION_NUM", redraft_common::redis_version_num())?;
    redis.set(
        "sha1hex",
        lua.create_function(|_, text: mlua::LuaString| Ok(Script::sha(&text.as_bytes())))?,
    )?;
    globals.set("redis", redis)?;
    seed_math_random(&lua, script.seed)?;

    let ks = RefCell::new(ks);
    let calls = std::cell::Cell::new(0u64);
    let execute = |lua: &Lua, values: MultiValue| match call_args(lua, values) {
        Ok(args) => {
            calls.set(calls.get() + 1);
            let seed = script.seed ^ calls.get().wrapping_mul(0x9e37_79b9_7f4a_7c15);
            ks.borrow_mut().script_call(&args, read_only, seed)
        }
        Err(error) => error,
    };
    lua.scope(|scope| {
        let redis: Table = globals.get("redis")?;
        // redis.call raises a command's error (uncaught, it ends the script
        // with that error); redis.pcall returns it as `{err = ...}`.
        redis.set(
            "call",
            scope.create_function(|lua, values: MultiValue| match execute(lua, values) {
                Frame::Error(text) => Err(mlua::Error::external(CallError(text))),
                reply => to_lua(lua, reply),
            })?,
        )?;
        redis.set(
            "pcall",
            scope.create_function(|lua, values: MultiValue| to_lua(lua, execute(lua, values)))?,
        )?;
        lua.load(PRELUDE).set_name("=redraft").exec()?;
        let chunk = match lua
            .load(&script.body[..])
            .set_name(CHUNK)
            .set_mode(mlua::chunk::ChunkMode::Text)
            .into_function()
        {
            Ok(chunk) => chunk,
            Err(mlua::Error::SyntaxError { message, .. }) => {
                return Ok(Outcome::Failed {
                    text: format!("ERR Error compiling script (new function): {message}"),
                    line: None,
                })
            }
            Err(e) => return Err(e),
        };
        let spent = std::rc::Rc::new(std::cell::Cell::new(0u64));
        let counter = spent.clone();
        lua.set_hook(HookTriggers::new().every_nth_instruction(BUDGET_STEP), move |_, _| {
            counter.set(counter.get() + u64::from(BUDGET_STEP));
            if counter.get() > INSTRUCTION_BUDGET {
                Err(mlua::Error::runtime(format!(
                    "Script exceeded the instruction budget ({INSTRUCTION_BUDGET})"
                )))
            } else {
                Ok(VmState::Continue)
            }
        })?;
        let handler = lua.create_function(|lua, error: Value| error_info(lua, error))?;
        let xpcall: Function = lua.globals().raw_get("xpcall")?;
        let (ok, value): (bool, Value) = xpcall.call((chunk, handler))?;
        lua.remove_hook();
        if ok {
            return Ok(Outcome::Reply(to_frame(&value)));
        }
        Ok(match value {
            Value::Table(info) => Outcome::Failed {
                text: info.raw_get::<Option<String>>("err")?.unwrap_or_default(),
                line: info.raw_get::<Option<usize>>("line")?,
            },
            other => Outcome::Failed {
                text: format!("ERR {}", other.to_string()?),
                line: None,
            },
        })
    })
}

/// A command called by `redis.call` failed with this Redis error.
#[derive(Debug)]
struct CallError(String);

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CallError {}

/// Redis's error handler: a string error becomes `{err = 'ERR ' .. text}`,
/// and the line of the script where it was raised is added.
fn error_info(lua: &Lua, error: Value) -> mlua::Result<Table> {
    let info = match error {
        Value::Table(table) if table.raw_get::<Value>("err")?.is_string() => table,
        Value::Error(e) => {
            let table = lua.create_table()?;
            match e.downcast_ref::<CallError>() {
                Some(CallError(text)) => table.raw_set("err", text.as_str())?,
                None => table.raw_set("err", format!("ERR {}", plain_message(&e)))?,
            }
            table
        }
        other => {
            let table = lua.create_table()?;
            table.raw_set("err", format!("ERR {}", other.to_string().unwrap_or_default()))?;
            table
        }
    };
    // The nearest frame of the user's script, above this handler.
    let mut level = 1;
    while let Some((source, line)) =
        lua.inspect_stack(level, |d| (d.source().source.map(|s| s.into_owned()), d.current_line()))
    {
        if source.as_deref() == Some(CHUNK) {
            if let Some(line) = line {
                info.raw_set("line", line)?;
            }
            break;
        }
        level += 1;
    }
    Ok(info)
}

/// The message of an error raised in Rust (the instruction budget, memory),
/// without mlua's decoration.
fn plain_message(error: &mlua::Error) -> String {
    match error {
        mlua::Error::RuntimeError(text) => text.clone(),
        mlua::Error::MemoryError(_) => "Script used too much memory".into(),
        mlua::Error::CallbackError { cause, .. } => plain_message(cause),
        other => other.to_string(),
    }
}

/// A Lua array of byte strings.
fn strings(lua: &Lua, items: &[Vec<u8>]) -> mlua::Result<Table> {
    lua.create_sequence_from(
        items
            .iter()
            .map(|i| lua.create_string(i))
            .collect::<mlua::Result<Vec<_>>>()?,
    )
}

/// `math.random` and `math.randomseed` over a generator seeded by the entry,
/// with Lua 5.1's argument rules.
fn seed_math_random(lua: &Lua, seed: u64) -> mlua::Result<()> {
    use rand::{Rng, SeedableRng};
    let rng = std::rc::Rc::new(RefCell::new(rand::rngs::SmallRng::seed_from_u64(seed)));
    let math: Table = lua.globals().get("math")?;
    let draw = rng.clone();
    math.set(
        "random",
        lua.create_function(move |_, (m, n): (Option<f64>, Option<f64>)| {
            let r: f64 = draw.borrow_mut().gen();
            match (m, n) {
                (None, _) => Ok(r),
                (Some(m), None) if m >= 1.0 => Ok((r * m.floor()).floor() + 1.0),
                (Some(m), Some(n)) if m <= n => Ok((r * (n.floor() - m.floor() + 1.0)).floor() + m.floor()),
                _ => Err(mlua::Error::runtime("bad argument to 'random' (interval is empty)")),
            }
        })?,
    )?;
    math.set(
        "randomseed",
        lua.create_function(move |_, seed: f64| {
            *rng.borrow_mut() = rand::rngs::SmallRng::seed_from_u64(seed as i64 as u64);
            Ok(())
        })?,
    )
}

/// The arguments of `redis.call`: strings, or numbers as Lua prints them.
fn call_args(lua: &Lua, values: MultiValue) -> Result<Vec<Vec<u8>>, Frame> {
    if values.is_empty() {
        return Err(Frame::error(
            "ERR Please specify at least one argument for this redis lib call",
        ));
    }
    let mut args = Vec::with_capacity(values.len());
    for value in values {
        let text = match value {
            Value::String(s) => Some(s),
            value @ (Value::Integer(_) | Value::Number(_)) => lua.coerce_string(value).ok().flatten(),
            _ => None,
        };
        match text {
            Some(text) => args.push(text.as_bytes().to_vec()),
            None => {
                return Err(Frame::error(
                    "ERR Lua redis lib command arguments must be strings or integers",
                ))
            }
        }
    }
    Ok(args)
}

/// A command's reply as Redis hands it to a script (RESP2 rules).
fn to_lua(lua: &Lua, frame: Frame) -> mlua::Result<Value> {
    let sequence = |items: Vec<Frame>| -> mlua::Result<Value> {
        let table = lua.create_table_with_capacity(items.len(), 0)?;
        for (i, item) in items.into_iter().enumerate() {
            table.raw_set(i + 1, to_lua(lua, item)?)?;
        }
        Ok(Value::Table(table))
    };
    let flat = |pairs: Vec<(Frame, Frame)>| pairs.into_iter().flat_map(|(a, b)| [a, b]).collect::<Vec<_>>();
    Ok(match frame {
        Frame::Integer(n) => Value::Number(n as f64),
        Frame::Bulk(bytes) => Value::String(lua.create_string(bytes)?),
        Frame::Double(text) => Value::String(lua.create_string(text)?),
        Frame::Null | Frame::NullArray => Value::Boolean(false),
        Frame::Simple(text) => {
            let table = lua.create_table()?;
            table.raw_set("ok", text)?;
            Value::Table(table)
        }
        Frame::Error(text) => {
            let table = lua.create_table()?;
            table.raw_set("err", text)?;
            Value::Table(table)
        }
        Frame::Array(items) | Frame::Set(items) | Frame::Push(items) | Frame::Replies(items) => sequence(items)?,
        Frame::Map(pairs) | Frame::Pairs(pairs) => sequence(flat(pairs))?,
    })
}

/// A script's return value as Redis replies it (RESP2 rules): numbers
/// truncated to integers, `false` and `nil` as null, tables with `err` or `ok`
/// as errors and statuses, other tables as arrays up to their first nil.
fn to_frame(value: &Value) -> Frame {
    match value {
        Value::String(s) => Frame::Bulk(s.as_bytes().to_vec()),
        Value::Integer(n) => Frame::Integer(*n),
        Value::Number(n) => Frame::Integer(*n as i64),
        Value::Boolean(true) => Frame::Integer(1),
        Value::Table(table) => {
            if let Ok(Value::String(text)) = table.raw_get::<Value>("err") {
                return Frame::Error(text.to_string_lossy());
            }
            if let Ok(Value::String(text)) = table.raw_get::<Value>("ok") {
                return Frame::Simple(text.to_string_lossy());
            }
            let mut items = Vec::new();
            for i in 1.. {
                match table.raw_get::<Value>(i) {
                    Ok(Value::Nil) | Err(_) => break,
                    Ok(item) => items.push(to_frame(&item)),
                }
            }
            Frame::Array(items)
        }
        _ => Frame::Null,
    }
}

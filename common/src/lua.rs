//! The Lua environment of scripts (EVAL) and functions (FUNCTION, FCALL), as
//! Redis 7 embeds Lua 5.1.
//!
//! Shards run scripts here (shard-node `apply::script` supplies what
//! `redis.call` does); the proxy uses the same code to check what clients
//! give it (SCRIPT LOAD compiles, FUNCTION LOAD runs a library's loading
//! code and records what it registers), so the two can never disagree.
//!
//! DETERMINISM. A run depends only on its inputs: the body, `KEYS`, `ARGV`
//! and a seed that drives `math.random` and the seeds of the commands a
//! script calls. Each run gets a fresh interpreter (no global survives a run),
//! and a runaway script is stopped by an instruction budget, never a clock,
//! so every replica stops it at the same instruction.
//!
//! SAFETY. Only source text is loaded (Lua 5.1's bytecode loader trusts its
//! input, and `loadstring` refuses binary chunks too); `os`, `io`, `debug`,
//! file loaders and `print` are absent; memory is bounded.
//!
//! ERRORS are Redis's, byte for byte: a string raised by the script becomes
//! `ERR <text>`, and an uncaught error ends with ` script: <sha1 or function>,
//! on @user_script:<line>.` as Redis 7.0 writes it.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;

use mlua::{Function, HookTriggers, Lua, LuaOptions, MultiValue, StdLib, Table, Value, VmState};
use serde::{Deserialize, Serialize};

use crate::ops::Script;
use crate::resp::Frame;

mod libs;

/// VM instructions a run may take before it is stopped (under a second of
/// interpreter work here, well inside a proxy's 7 s wait for a write even on a
/// loaded machine). Counted, not timed, so replicas agree.
pub const INSTRUCTION_BUDGET: u64 = 300_000_000;
/// How often the budget is checked, in instructions.
const BUDGET_STEP: u32 = 100_000;
/// The interpreter's memory limit.
const MEMORY_LIMIT: usize = 256 * 1024 * 1024;
/// Chunk names, as Redis gives them: errors read `user_script:LINE: ...`.
const SCRIPT_CHUNK: &str = "@user_script";
const FUNCTION_CHUNK: &str = "@user_function";
/// Flags a function may declare (Redis 7.0's).
const FUNCTION_FLAGS: &[&str] = &[
    "no-writes",
    "allow-oom",
    "allow-stale",
    "no-cluster",
    "allow-cross-slot-keys",
];

/// What `redis.call` does: runs a command (its arguments) with the given seed
/// for its random choices, and replies.
pub type Call<'a> = &'a mut dyn FnMut(&[Vec<u8>], u64) -> Frame;

/// The reply of a script stopped by SCRIPT KILL (Redis's text).
pub const KILLED: &str = "ERR Script killed by user with SCRIPT KILL...";

/// What a run needs besides its program: `redis.call`, its seed, and a flag
/// that SCRIPT KILL raises to stop it (read-only runs only: a run that may
/// write runs on every replica and must end alike on each).
pub struct Run<'a> {
    pub seed: u64,
    pub call: Call<'a>,
    pub kill: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

/// One function of a library.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionInfo {
    pub name: String,
    pub description: Option<String>,
    /// The flags it declared, in Redis's spelling (`no-writes`, ...).
    pub flags: Vec<String>,
}

impl FunctionInfo {
    /// Declared `no-writes`: FCALL_RO may run it, and it runs as a read.
    pub fn no_writes(&self) -> bool {
        self.flags.iter().any(|f| f == "no-writes")
    }
}

/// A library loaded with FUNCTION LOAD: its code and what it registers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Library {
    pub name: String,
    pub code: String,
    pub functions: Vec<FunctionInfo>,
}

/// Every library of the cluster, by name (kept by the placement driver and
/// published with the routing table).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Libraries(pub BTreeMap<String, Library>);

/// How FUNCTION RESTORE treats libraries that exist already.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestorePolicy {
    /// Fail if a library or function exists (the default).
    Append,
    /// Drop every library first.
    Flush,
    /// Replace libraries of the same name.
    Replace,
}

/// A change to the cluster's libraries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LibraryChange {
    Load {
        library: Library,
        replace: bool,
    },
    Delete {
        name: String,
    },
    Flush,
    Restore {
        libraries: Vec<Library>,
        policy: RestorePolicy,
    },
}

impl Libraries {
    /// Applies `change` whole or not at all; Redis's error otherwise.
    pub fn apply(&mut self, change: &LibraryChange) -> Result<(), String> {
        let mut next = self.clone();
        match change {
            LibraryChange::Load { library, replace } => next.add(library, *replace)?,
            LibraryChange::Delete { name } => {
                next.0.remove(name).ok_or("ERR Library not found")?;
            }
            LibraryChange::Flush => next.0.clear(),
            LibraryChange::Restore { libraries, policy } => {
                if *policy == RestorePolicy::Flush {
                    next.0.clear();
                }
                for library in libraries {
                    next.add(library, *policy == RestorePolicy::Replace)?;
                }
            }
        }
        *self = next;
        Ok(())
    }

    fn add(&mut self, library: &Library, replace: bool) -> Result<(), String> {
        if self.0.contains_key(&library.name) && !replace {
            return Err(format!("ERR Library '{}' already exists", library.name));
        }
        for function in &library.functions {
            if let Some((owner, _)) = self.function(&function.name) {
                if owner.name != library.name {
                    return Err(format!("ERR Function {} already exists", function.name));
                }
            }
        }
        self.0.insert(library.name.clone(), library.clone());
        Ok(())
    }

    /// The library that registers function `name`, and the function.
    pub fn function(&self, name: &str) -> Option<(&Library, &FunctionInfo)> {
        self.0
            .values()
            .find_map(|lib| lib.functions.iter().find(|f| f.name == name).map(|f| (lib, f)))
    }
}

/// Runs a script body (EVAL, EVALSHA).
pub fn eval(body: &[u8], keys: &[Vec<u8>], args: &[Vec<u8>], run_with: Run<'_>) -> Frame {
    let sha = Script::sha(body);
    outcome_frame(
        run(run_with, |lua| {
            let globals = lua.globals();
            globals.raw_set("KEYS", strings(lua, keys)?)?;
            globals.raw_set("ARGV", strings(lua, args)?)?;
            let source = match without_shebang(body) {
                Ok((_, source)) => source,
                Err(text) => return Ok(Err(Outcome::Failed { text, line: None })),
            };
            Ok(match compile(lua, &source, SCRIPT_CHUNK, None) {
                Ok(chunk) => Ok((chunk, MultiValue::new())),
                Err(message) => Err(Outcome::Failed {
                    text: format!("ERR Error compiling script (new function): {message}"),
                    line: None,
                }),
            })
        }),
        &sha,
        SCRIPT_CHUNK,
    )
}

/// Runs function `name` of a library whose code is `code` (FCALL).
pub fn fcall(code: &str, name: &str, keys: &[Vec<u8>], args: &[Vec<u8>], run_with: Run<'_>) -> Frame {
    outcome_frame(
        run(run_with, |lua| {
            let functions = match register(lua, code)? {
                Ok((_, functions)) => functions,
                Err(text) => return Ok(Err(Outcome::Failed { text, line: None })),
            };
            let Some((_, callback)) = functions.into_iter().find(|(info, _)| info.name == name) else {
                return Ok(Err(Outcome::Failed {
                    text: "ERR Function not found".into(),
                    line: None,
                }));
            };
            let arguments = MultiValue::from_vec(vec![
                Value::Table(strings(lua, keys)?),
                Value::Table(strings(lua, args)?),
            ]);
            Ok(Ok((callback, arguments)))
        }),
        name,
        FUNCTION_CHUNK,
    )
}

/// Whether a script compiles (SCRIPT LOAD); Redis's error when it does not.
pub fn check_script(body: &[u8]) -> Result<(), String> {
    let lua = Lua::new_with(StdLib::NONE, LuaOptions::default()).map_err(|e| format!("ERR {e}"))?;
    let (_, source) = without_shebang(body)?;
    compile(&lua, &source, SCRIPT_CHUNK, None)
        .map(|_| ())
        .map_err(|message| format!("ERR Error compiling script (new function): {message}"))
}

/// Runs a library's loading code (FUNCTION LOAD) and describes it: its name
/// from the `#!lua name=...` line, and the functions it registers.
pub fn load_library(code: &str) -> Result<Library, String> {
    let lua = interpreter().map_err(|e| format!("ERR {e}"))?;
    let (name, functions) = register(&lua, code).map_err(|e| format!("ERR {e}"))??;
    Ok(Library {
        name,
        code: code.to_string(),
        functions: functions.into_iter().map(|(info, _)| info).collect(),
    })
}

/// The flags of a script's `#!lua flags=...` line (none without one).
pub fn script_flags(body: &[u8]) -> Result<Vec<String>, String> {
    Ok(without_shebang(body)?.0)
}

/// How a run ended.
enum Outcome {
    Reply(Frame),
    /// An error raised and not caught: its text and the line it came from.
    Failed {
        text: String,
        line: Option<usize>,
    },
}

fn outcome_frame(outcome: mlua::Result<Outcome>, name: &str, chunk: &str) -> Frame {
    match outcome {
        Ok(Outcome::Reply(frame)) => frame,
        Ok(Outcome::Failed { text, line: Some(line) }) => {
            Frame::Error(format!("{text} script: {name}, on {chunk}:{line}."))
        }
        Ok(Outcome::Failed { text, line: None }) => Frame::Error(text),
        Err(e) => Frame::Error(format!("ERR {}", plain_message(&e))),
    }
}

/// A fresh interpreter with Redis's libraries and read-only globals.
fn interpreter() -> mlua::Result<Lua> {
    let lua = Lua::new_with(StdLib::TABLE | StdLib::STRING | StdLib::MATH, LuaOptions::default())?;
    lua.set_memory_limit(MEMORY_LIMIT)?;
    let redis = lua.create_table()?;
    redis.raw_set("REDIS_VERSION", crate::REDIS_VERSION)?;
    redis.raw_set("REDIS_VERSION_NUM", crate::redis_version_num())?;
    redis.raw_set(
        "sha1hex",
        lua.create_function(|_, text: mlua::LuaString| Ok(Script::sha(&text.as_bytes())))?,
    )?;
    lua.globals().raw_set("redis", redis)?;
    libs::install(&lua)?;
    lua.load(prelude_bytecode()).set_name("=redraft").exec()?;
    Ok(lua)
}

/// [`PRELUDE`] compiled once per process: parsing it took most of the
/// cost of a fresh interpreter. Loading Redraft's own bytecode is safe; users'
/// code is only ever loaded as text.
fn prelude_bytecode() -> &'static [u8] {
    static BYTECODE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    BYTECODE.get_or_init(|| {
        let lua = Lua::new_with(StdLib::NONE, LuaOptions::default()).expect("a Lua state");
        lua.load(PRELUDE)
            .set_name("=redraft")
            .into_function()
            .expect("the prelude compiles")
            .dump(false)
    })
}

/// Set up in every interpreter (before `redis.call`, which is Rust): Redis's
/// helpers, loaders limited to source text, and the read-only global table.
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
local function missing(name, level)
  error("Script attempted to access nonexistent global variable '" .. tostring(name) .. "'", level)
end
local function readonly() error('Attempt to modify a readonly table', 2) end
-- A library's environment: while it loads, only these names (and of redis,
-- only what registers); once loaded, its functions see what a script sees.
__library_env = function()
  local loading = true
  local load_api = {
    register_function = true, log = true, setresp = true, REDIS_VERSION = true, REDIS_VERSION_NUM = true,
    LOG_DEBUG = true, LOG_VERBOSE = true, LOG_NOTICE = true, LOG_WARNING = true,
  }
  local redis_view = setmetatable({}, {
    __index = function(_, name)
      if loading and not load_api[name] then missing(name, 3) end
      return redis[name]
    end,
    __newindex = readonly,
  })
  local allowed = {
    string = string, math = math, table = table, bit = bit, cjson = cjson, cmsgpack = cmsgpack, struct = struct,
  }
  local env = setmetatable({}, {
    __index = function(_, name)
      if name == 'redis' then return redis_view end
      if not loading then return _G[name] end
      local value = allowed[name]
      if value == nil then missing(name, 3) end
      return value
    end,
    __newindex = readonly,
  })
  return env, function() loading = false end
end
setmetatable(_G, {__index = function(_, name) missing(name, 3) end, __newindex = readonly})
"#;

/// Runs what `prepare` sets up (a function and its arguments) with
/// `redis.call` and `redis.pcall` over `call`, under the instruction budget
/// and Redis's error handler.
fn run(
    Run { seed, call, kill }: Run<'_>,
    prepare: impl FnOnce(&Lua) -> mlua::Result<Result<(Function, MultiValue), Outcome>>,
) -> mlua::Result<Outcome> {
    let lua = interpreter()?;
    seed_math_random(&lua, seed)?;
    let call = RefCell::new(call);
    let calls = Cell::new(0u64);
    let execute = |lua: &Lua, values: MultiValue| match call_args(lua, values) {
        Ok(args) => {
            calls.set(calls.get() + 1);
            let seed = seed ^ calls.get().wrapping_mul(0x9e37_79b9_7f4a_7c15);
            (call.borrow_mut())(&args, seed)
        }
        Err(error) => error,
    };
    lua.scope(|scope| {
        let redis: Table = lua.globals().raw_get("redis")?;
        // redis.call raises a command's error (uncaught, it ends the script
        // with that error); redis.pcall returns it as `{err = ...}`.
        redis.raw_set(
            "call",
            scope.create_function(|lua, values: MultiValue| match execute(lua, values) {
                Frame::Error(text) => Err(mlua::Error::external(RaisedError(text))),
                reply => to_lua(lua, reply),
            })?,
        )?;
        redis.raw_set(
            "pcall",
            scope.create_function(|lua, values: MultiValue| to_lua(lua, execute(lua, values)))?,
        )?;
        let (function, arguments) = match prepare(&lua)? {
            Ok(ready) => ready,
            Err(outcome) => return Ok(outcome),
        };
        Ok(match protected_call(&lua, function, arguments, kill)? {
            Ok(value) => Outcome::Reply(to_frame(&value)),
            Err((text, line)) => Outcome::Failed { text, line },
        })
    })
}

/// Calls `function` under the instruction budget with Redis's error handler:
/// its value, or the error's text and script line.
fn protected_call(
    lua: &Lua,
    function: Function,
    arguments: MultiValue,
    kill: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
) -> mlua::Result<Result<Value, (String, Option<usize>)>> {
    let spent = Rc::new(Cell::new(0u64));
    let counter = spent.clone();
    lua.set_hook(HookTriggers::new().every_nth_instruction(BUDGET_STEP), move |_, _| {
        counter.set(counter.get() + u64::from(BUDGET_STEP));
        if kill
            .as_ref()
            .is_some_and(|k| k.load(std::sync::atomic::Ordering::Relaxed))
        {
            return Err(mlua::Error::external(RaisedError(KILLED.into())));
        }
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
    let unpack: Function = lua.globals().raw_get("unpack")?;
    // xpcall in Lua 5.1 passes no arguments: wrap them in a closure.
    let wrapped = lua
        .load("local f, unpack, args = ... return function() return f(unpack(args, 1, args.n)) end")
        .set_name("=redraft")
        .call::<Function>((function, unpack, packed(lua, arguments)?))?;
    let (ok, value): (bool, Value) = xpcall.call((wrapped, handler))?;
    lua.remove_hook();
    if ok {
        return Ok(Ok(value));
    }
    Ok(Err(match value {
        Value::Table(info) => (
            info.raw_get::<Option<String>>("err")?.unwrap_or_default(),
            info.raw_get::<Option<usize>>("line")?,
        ),
        other => (format!("ERR {}", other.to_string()?), None),
    }))
}

/// `{...; n = count}` of `values`.
fn packed(lua: &Lua, values: MultiValue) -> mlua::Result<Table> {
    let table = lua.create_table()?;
    let count = values.len();
    for (i, value) in values.into_iter().enumerate() {
        table.raw_set(i + 1, value)?;
    }
    table.raw_set("n", count)?;
    Ok(table)
}

/// Runs a library's code in its loading environment, where only
/// `redis.register_function` (and Redis's helpers) exist; the library's name
/// and its functions with their callbacks. `Err` inside: Redis's error.
#[allow(clippy::type_complexity)]
fn register(lua: &Lua, code: &str) -> mlua::Result<Result<(String, Vec<(FunctionInfo, Function)>), String>> {
    let (name, source) = match library_header(code) {
        Ok(parts) => parts,
        Err(text) => return Ok(Err(text)),
    };
    let (env, loaded): (Table, Function) = lua.globals().raw_get::<Function>("__library_env")?.call(())?;
    let chunk = match compile(lua, source.as_bytes(), FUNCTION_CHUNK, Some(env)) {
        Ok(chunk) => chunk,
        Err(message) => return Ok(Err(format!("ERR Error compiling function: {message}"))),
    };
    let registered: Rc<RefCell<Vec<(FunctionInfo, Function)>>> = Rc::default();
    let sink = registered.clone();
    let register_function = lua.create_function(move |_, values: MultiValue| {
        let refuse = |text: &str| Err(mlua::Error::external(RaisedError(format!("ERR {text}"))));
        let (name, callback, flags, description) = match values.len() {
            1 => {
                let Some(Value::Table(spec)) = values.front() else {
                    return refuse("calling redis.register_function with a single argument is only applicable to Lua table (representing named arguments).");
                };
                let flags = match spec.raw_get::<Value>("flags")? {
                    Value::Table(list) => list.sequence_values::<String>().collect::<mlua::Result<Vec<_>>>()?,
                    _ => Vec::new(),
                };
                (
                    spec.raw_get::<Value>("function_name")?,
                    spec.raw_get::<Value>("callback")?,
                    flags,
                    spec.raw_get::<Option<String>>("description")?,
                )
            }
            2 => (values[0].clone(), values[1].clone(), Vec::new(), None),
            _ => return refuse("wrong number of arguments to redis.register_function"),
        };
        let Value::Function(callback) = callback else {
            return refuse("second argument to redis.register_function must be a function");
        };
        let name = match name {
            Value::String(s) if valid_name(&s.to_string_lossy()) => s.to_string_lossy(),
            _ => {
                return refuse(
                    "Library names can only contain letters, numbers, or underscores(_) and must be at least one character long",
                )
            }
        };
        if flags.iter().any(|f| !FUNCTION_FLAGS.contains(&f.as_str())) {
            return refuse("unknown flag given");
        }
        let mut registered = sink.borrow_mut();
        if registered.iter().any(|(info, _)| info.name == name) {
            return refuse("Function already exists in the library");
        }
        registered.push((
            FunctionInfo {
                name,
                description,
                flags,
            },
            callback,
        ));
        Ok(())
    })?;
    let redis: Table = lua.globals().raw_get("redis")?;
    redis.raw_set("register_function", register_function)?;
    let result = protected_call(lua, chunk, MultiValue::new(), None)?;
    redis.raw_set("register_function", Value::Nil)?;
    loaded.call::<()>(())?;
    if let Err((text, _)) = result {
        return Ok(Err(format!("ERR Error registering functions: {text}")));
    }
    let functions = registered.take();
    if functions.is_empty() {
        return Ok(Err("ERR No functions registered".into()));
    }
    Ok(Ok((name, functions)))
}

/// Letters, digits and underscores, at least one.
fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// A library's `#!lua name=<name>` line: its name, and the code with that
/// line left empty (so line numbers stay the user's).
fn library_header(code: &str) -> Result<(String, String), String> {
    let Some(rest) = code.strip_prefix("#!") else {
        return Err("ERR Missing library metadata".into());
    };
    let (line, body) = rest.split_once('\n').unwrap_or((rest, ""));
    let mut words = line.split(' ').filter(|w| !w.is_empty());
    let engine = words.next().unwrap_or("");
    if engine != "lua" {
        return Err(format!("ERR Engine '{engine}' not found"));
    }
    let mut name = None;
    for word in words {
        match word.strip_prefix("name=") {
            Some(_) if name.is_some() => {
                return Err("ERR Invalid metadata value, name argument was given multiple times".into())
            }
            Some(value) => name = Some(value.to_string()),
            None => return Err(format!("ERR Invalid metadata value given: {word}")),
        }
    }
    let name = name.ok_or("ERR Library name was not given")?;
    if !valid_name(&name) {
        return Err(
            "ERR Library names can only contain letters, numbers, or underscores(_) and must be at least one character long"
                .into(),
        );
    }
    Ok((name, format!("\n{body}")))
}

/// A script's optional `#!lua [flags=a,b]` line: its flags, and the body with
/// that line left empty.
fn without_shebang(body: &[u8]) -> Result<(Vec<String>, Vec<u8>), String> {
    let Some(rest) = body.strip_prefix(b"#!") else {
        return Ok((Vec::new(), body.to_vec()));
    };
    let end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
    let line = String::from_utf8_lossy(&rest[..end]);
    let mut words = line.split(' ').filter(|w| !w.is_empty());
    let engine = words.next().unwrap_or("");
    if engine != "lua" {
        return Err(format!("ERR Could not find scripting engine '{engine}'"));
    }
    let mut flags = Vec::new();
    for word in words {
        match word.strip_prefix("flags=") {
            Some(list) => flags.extend(list.split(',').filter(|f| !f.is_empty()).map(str::to_string)),
            None => return Err(format!("ERR Unknown lua shebang option: {word}")),
        }
    }
    if let Some(flag) = flags.iter().find(|f| !FUNCTION_FLAGS.contains(&f.as_str())) {
        return Err(format!("ERR Unexpected flag in script shebang: {flag}"));
    }
    let mut source = b"\n".to_vec();
    source.extend_from_slice(rest.get(end + 1..).unwrap_or_default());
    Ok((flags, source))
}

/// Compiles source text (never bytecode) as chunk `name`, with `env` as its
/// globals when given; the syntax error's message otherwise.
fn compile(lua: &Lua, source: &[u8], name: &str, env: Option<Table>) -> Result<Function, String> {
    let mut chunk = lua.load(source).set_name(name).set_mode(mlua::chunk::ChunkMode::Text);
    if let Some(env) = env {
        chunk = chunk.set_environment(env);
    }
    chunk.into_function().map_err(|e| match e {
        mlua::Error::SyntaxError { message, .. } => message,
        other => plain_message(&other),
    })
}

/// An error that `redis.call` or `register_function` raises with its text
/// as is (a Redis error, code included).
#[derive(Debug)]
struct RaisedError(String);

impl std::fmt::Display for RaisedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RaisedError {}

/// Redis's error handler: a string error becomes `{err = 'ERR ' .. text}`,
/// and the line of the user's code where it was raised is added.
fn error_info(lua: &Lua, error: Value) -> mlua::Result<Table> {
    let info = match error {
        Value::Table(table) if table.raw_get::<Value>("err")?.is_string() => table,
        Value::Error(e) => {
            let table = lua.create_table()?;
            match e.downcast_ref::<RaisedError>() {
                Some(RaisedError(text)) => table.raw_set("err", text.as_str())?,
                // A library function's error names the user's line, as
                // luaL_error does.
                None => {
                    let place = user_frame(lua).map_or_else(String::new, |(chunk, line)| {
                        format!("{}:{line}: ", chunk.trim_start_matches('@'))
                    });
                    table.raw_set("err", format!("ERR {place}{}", plain_message(&e)))?
                }
            }
            table
        }
        other => {
            let table = lua.create_table()?;
            table.raw_set("err", format!("ERR {}", other.to_string().unwrap_or_default()))?;
            table
        }
    };
    if let Some((_, line)) = user_frame(lua) {
        info.raw_set("line", line)?;
    }
    Ok(info)
}

/// The chunk and current line of the nearest frame of the user's code.
fn user_frame(lua: &Lua) -> Option<(&'static str, usize)> {
    let mut level = 1;
    while let Some((source, line)) =
        lua.inspect_stack(level, |d| (d.source().source.map(|s| s.into_owned()), d.current_line()))
    {
        match source.as_deref() {
            Some(SCRIPT_CHUNK) => return line.map(|l| (SCRIPT_CHUNK, l)),
            Some(FUNCTION_CHUNK) => return line.map(|l| (FUNCTION_CHUNK, l)),
            _ => level += 1,
        }
    }
    None
}

/// The message of an error raised in Rust (the budget, memory), without
/// mlua's decoration.
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

/// `math.random` and `math.randomseed` over a generator seeded by the run,
/// with Lua 5.1's argument rules.
fn seed_math_random(lua: &Lua, seed: u64) -> mlua::Result<()> {
    use rand::{Rng, SeedableRng};
    let rng = Rc::new(RefCell::new(rand::rngs::SmallRng::seed_from_u64(seed)));
    let math: Table = lua.globals().raw_get("math")?;
    let draw = rng.clone();
    math.raw_set(
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
    math.raw_set(
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
    let field = |name: &str, text: String| -> mlua::Result<Value> {
        let table = lua.create_table()?;
        table.raw_set(name, text)?;
        Ok(Value::Table(table))
    };
    Ok(match frame {
        Frame::Integer(n) => Value::Number(n as f64),
        Frame::Bulk(bytes) => Value::String(lua.create_string(bytes)?),
        Frame::Double(text) => Value::String(lua.create_string(text)?),
        Frame::Null | Frame::NullArray => Value::Boolean(false),
        Frame::Simple(text) => field("ok", text)?,
        Frame::Error(text) => field("err", text)?,
        Frame::Array(items) | Frame::Set(items) | Frame::Push(items) | Frame::Replies(items) => sequence(items)?,
        Frame::Map(pairs) | Frame::Pairs(pairs) => sequence(pairs.into_iter().flat_map(|(a, b)| [a, b]).collect())?,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn no_calls() -> impl FnMut(&[Vec<u8>], u64) -> Frame {
        |args: &[Vec<u8>], _| Frame::Bulk(args.concat())
    }

    fn run_with(seed: u64, call: Call<'_>) -> Run<'_> {
        Run { seed, call, kill: None }
    }

    #[test]
    fn a_raised_kill_flag_stops_a_run() {
        let kill = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let reply = eval(
            b"while true do end",
            &[],
            &[],
            Run {
                seed: 1,
                call: &mut no_calls(),
                kill: Some(kill),
            },
        );
        assert!(matches!(reply, Frame::Error(e) if e.starts_with(KILLED)));
    }

    #[test]
    fn scripts_reply_as_redis() {
        let run = |body: &str| {
            eval(
                body.as_bytes(),
                &[b"k".to_vec()],
                &[b"a".to_vec()],
                run_with(7, &mut no_calls()),
            )
        };
        assert_eq!(
            run("return {KEYS[1], ARGV[1], 1.9, true, false}").to_bytes(),
            Frame::Array(vec![
                Frame::bulk("k"),
                Frame::bulk("a"),
                Frame::Integer(1),
                Frame::Integer(1),
                Frame::Null,
            ])
            .to_bytes()
        );
        assert_eq!(run("return redis.call('get', KEYS[1])"), Frame::bulk("getk"));
        assert_eq!(
            run("local a = 1\nreturn nope"),
            Frame::error(format!(
                "ERR user_script:2: Script attempted to access nonexistent global variable 'nope' script: {}, on @user_script:2.",
                Script::sha(b"local a = 1\nreturn nope")
            ))
        );
        assert_eq!(run("#!lua flags=no-writes\nreturn 2"), Frame::Integer(2));
        assert_eq!(
            script_flags(b"#!lua flags=no-writes,allow-oom\nreturn 1"),
            Ok(vec!["no-writes".to_string(), "allow-oom".to_string()])
        );
        // Bytecode is refused, whether as the script or through loadstring.
        let dumped = {
            let lua = Lua::new();
            lua.load("return 1").into_function().unwrap().dump(false)
        };
        assert!(matches!(
            eval(&dumped, &[], &[], run_with(1, &mut no_calls())),
            Frame::Error(e) if e.starts_with("ERR Error compiling script")
        ));
        assert_eq!(
            run("return loadstring(string.dump(function() return 1 end))"),
            Frame::Null
        );
        // The same seed draws the same numbers.
        assert_eq!(run("return math.random(1000000)"), run("return math.random(1000000)"));
    }

    #[test]
    fn libraries_load_register_and_run() {
        let code = "#!lua name=lib\nredis.register_function('echo', function(keys, args) return {keys[1], args[1]} end)\n\
                    redis.register_function{function_name='ro', callback=function() return error('x') end, flags={'no-writes'}}";
        let library = load_library(code).expect("loads");
        assert_eq!(library.name, "lib");
        assert_eq!(library.functions.len(), 2);
        assert!(library.functions[1].no_writes());
        assert_eq!(
            fcall(
                code,
                "echo",
                &[b"k".to_vec()],
                &[b"a".to_vec()],
                run_with(1, &mut no_calls())
            ),
            Frame::Array(vec![Frame::bulk("k"), Frame::bulk("a")])
        );
        assert_eq!(
            fcall(code, "ro", &[], &[], run_with(1, &mut no_calls())),
            Frame::error("ERR user_function:3: x script: ro, on @user_function:3.")
        );
        assert_eq!(load_library("return 1"), Err("ERR Missing library metadata".into()));
        assert_eq!(
            load_library("#!lua name=x\nredis.call('ping')"),
            Err("ERR Error registering functions: ERR user_function:2: Script attempted to access nonexistent global variable 'call'".into())
        );
        assert_eq!(
            load_library("#!lua name=x\nreturn 1"),
            Err("ERR No functions registered".into())
        );
        let mut all = Libraries::default();
        all.apply(&LibraryChange::Load {
            library: library.clone(),
            replace: false,
        })
        .unwrap();
        assert_eq!(
            all.apply(&LibraryChange::Load {
                library: library.clone(),
                replace: false
            }),
            Err("ERR Library 'lib' already exists".into())
        );
        let mut other = library.clone();
        other.name = "other".into();
        assert_eq!(
            all.apply(&LibraryChange::Load {
                library: other,
                replace: false
            }),
            Err("ERR Function echo already exists".into())
        );
        assert!(all.function("ro").is_some());
    }
}

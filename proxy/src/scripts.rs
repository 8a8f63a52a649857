//! Scripts and functions at the proxy: the script cache (what EVALSHA finds;
//! SCRIPT LOAD, EXISTS, FLUSH, KILL, DEBUG, HELP), and FUNCTION LOAD, LIST,
//! DELETE, FLUSH, DUMP, RESTORE, STATS, KILL, HELP over the cluster's
//! libraries, which the placement driver keeps and publishes with the routing
//! table, so every proxy finds every function.
//!
//! Scripts run on shards (shard-node `apply::script`), but a shard only ever
//! receives a script's whole body, carried in the Raft entry, so every replica
//! runs what the leader ran whatever it has seen before. Naming a script by
//! its SHA1 is therefore the proxy's business: EVAL and SCRIPT LOAD remember
//! the body here, EVALSHA looks it up and sends the body. Like a Redis
//! server's cache, it lives as long as the process and belongs to one
//! endpoint: a client that meets `NOSCRIPT` (another proxy, a restart) sends
//! EVAL again, as Redis clients do (docs/decisions.md, Scripting).

use dashmap::DashMap;
use redraft_common::lua::{self, Libraries, LibraryChange, RestorePolicy};
use redraft_common::ops::{Bytes, Script};
use redraft_common::parse::{Command, ScriptSource};
use redraft_common::rdb;
use redraft_common::resp::Frame;
use redraft_common::routing::RoutingTable;
use redraft_common::wire::PdRequest;

use crate::admin::{error, unknown_subcommand, wrong_arity};
use crate::route::Router;

/// Redis's reply to EVALSHA of a script it does not have.
const NOSCRIPT: &str = "NOSCRIPT No matching script. Please use EVAL.";

/// How often FCALL of an unknown function may fetch the routing table.
pub const MISS_REFRESH_MS: u64 = 100;

/// Script bodies by SHA1 (lowercase hex).
#[derive(Default)]
pub struct ScriptCache {
    bodies: DashMap<String, Bytes>,
    /// When FCALL of an unknown function last fetched the table (Unix ms).
    miss_refreshed: std::sync::atomic::AtomicU64,
}

impl ScriptCache {
    /// Remembers `body`; its SHA1.
    pub fn load(&self, body: &[u8]) -> String {
        let sha = Script::sha(body);
        if !self.bodies.contains_key(&sha) {
            self.bodies.insert(sha.clone(), body.to_vec());
        }
        sha
    }

    /// EVALSHA's script replaced by its body (NOSCRIPT when unknown), EVAL's
    /// body remembered, FCALL's function replaced by its library; a script or
    /// function declared `no-writes` runs as a read. Other commands pass
    /// through.
    pub fn resolve(&self, command: Command, table: &RoutingTable) -> Command {
        let Command::Eval {
            source,
            keys,
            args,
            read_only,
            seed,
        } = command
        else {
            return command;
        };
        let body = match source {
            ScriptSource::Sha(sha) => match self.bodies.get(&sha) {
                Some(body) => body.clone(),
                None => return Command::Local(Frame::error(NOSCRIPT)),
            },
            ScriptSource::Body(body) => {
                self.load(&body);
                body
            }
            ScriptSource::Function(name) => {
                let Some((library, function)) = table.functions.function(&name) else {
                    return Command::Local(Frame::error("ERR Function not found"));
                };
                if read_only && !function.no_writes() {
                    return Command::Local(Frame::error(
                        "ERR Can not execute a script with write flag using *_ro command.",
                    ));
                }
                return Command::Eval {
                    source: ScriptSource::Library {
                        code: library.code.clone().into_bytes(),
                        function: name,
                    },
                    keys,
                    args,
                    read_only: read_only || function.no_writes(),
                    seed,
                };
            }
            library @ ScriptSource::Library { .. } => {
                return Command::Eval {
                    source: library,
                    keys,
                    args,
                    read_only,
                    seed,
                }
            }
        };
        let no_writes = match lua::script_flags(&body) {
            Ok(flags) => flags.iter().any(|f| f == "no-writes"),
            Err(text) => return Command::Local(Frame::Error(text)),
        };
        Command::Eval {
            source: ScriptSource::Body(body),
            keys,
            args,
            read_only: read_only || no_writes,
            seed,
        }
    }

    /// SCRIPT `args[1]` ... (KILL asks the nodes: [`Router::kill_scripts`]).
    pub async fn execute(&self, router: &Router, args: &[Vec<u8>]) -> Frame {
        let sub = String::from_utf8_lossy(&args[1]).to_ascii_lowercase();
        let arity_ok = match sub.as_str() {
            "load" => args.len() == 3,
            "exists" => args.len() >= 3,
            "flush" => args.len() <= 3,
            "kill" | "help" => args.len() == 2,
            "debug" => args.len() == 3,
            _ => return unknown_subcommand("SCRIPT", &args[1]),
        };
        if !arity_ok {
            return wrong_arity(&format!("script|{sub}"));
        }
        match sub.as_str() {
            "load" => match lua::check_script(&args[2]) {
                Ok(()) => Frame::Bulk(self.load(&args[2]).into_bytes()),
                Err(text) => Frame::Error(text),
            },
            "exists" => Frame::Array(
                args[2..]
                    .iter()
                    .map(|sha| {
                        let sha = String::from_utf8_lossy(sha).to_ascii_lowercase();
                        Frame::Integer(i64::from(self.bodies.contains_key(&sha)))
                    })
                    .collect(),
            ),
            "flush" => {
                if args
                    .get(2)
                    .is_some_and(|m| !m.eq_ignore_ascii_case(b"sync") && !m.eq_ignore_ascii_case(b"async"))
                {
                    return error("ERR SCRIPT FLUSH only support SYNC|ASYNC option");
                }
                self.bodies.clear();
                Frame::ok()
            }
            "kill" => router.kill_scripts().await,
            "debug" if args[2].eq_ignore_ascii_case(b"no") => Frame::ok(),
            "debug" => error("ERR Redraft has no Lua debugger; SCRIPT DEBUG accepts only NO"),
            _ => help(),
        }
    }
}

fn help() -> Frame {
    let lines = [
        "SCRIPT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
        "DEBUG (YES|SYNC|NO)",
        "    Set the debug mode for subsequent scripts executed.",
        "EXISTS <sha1> [<sha1> ...]",
        "    Return information about the existence of the scripts in the script cache.",
        "FLUSH [ASYNC|SYNC]",
        "    Flush the Lua scripts cache. Very dangerous on replicas.",
        "    When called without the optional mode argument, the behavior is determined by the",
        "    lazyfree-lazy-user-flush configuration directive. Valid modes are:",
        "    * ASYNC: Asynchronously flush the scripts cache.",
        "    * SYNC: Synchronously flush the scripts cache.",
        "KILL",
        "    Kill the currently executing Lua script.",
        "LOAD <script>",
        "    Load a script into the scripts cache without executing it.",
        "HELP",
        "    Prints this help.",
    ];
    Frame::Array(lines.iter().map(|l| Frame::Simple(l.to_string())).collect())
}

/// [`ScriptCache::resolve`] with this proxy's routing table; a function it
/// does not know yet (loaded through another proxy a moment ago) is looked
/// for again in a table fetched from the placement driver, at most every
/// [`MISS_REFRESH_MS`], so calls of a missing function cannot flood it.
pub async fn resolve(router: &Router, command: Command) -> Command {
    let unknown_function = match &command {
        Command::Eval {
            source: ScriptSource::Function(name),
            ..
        } => router.table().functions.function(name).is_none(),
        _ => false,
    };
    let now = redraft_common::now_ms();
    let last = router.scripts.miss_refreshed.load(std::sync::atomic::Ordering::Relaxed);
    if unknown_function
        && now.saturating_sub(last) >= MISS_REFRESH_MS
        && router
            .scripts
            .miss_refreshed
            .compare_exchange(
                last,
                now,
                std::sync::atomic::Ordering::Relaxed,
                std::sync::atomic::Ordering::Relaxed,
            )
            .is_ok()
    {
        router.refresh().await;
    }
    router.scripts.resolve(command, &router.table())
}

/// FUNCTION `args[1]` ...
pub async fn function(router: &Router, args: &[Vec<u8>]) -> Frame {
    let sub = String::from_utf8_lossy(&args[1]).to_ascii_lowercase();
    let arity_ok = match sub.as_str() {
        "load" | "restore" => args.len() >= 3,
        "delete" => args.len() == 3,
        "flush" => args.len() <= 3,
        "list" => true,
        "dump" | "kill" | "stats" | "help" => args.len() == 2,
        _ => return unknown_subcommand("FUNCTION", &args[1]),
    };
    if !arity_ok {
        return wrong_arity(&format!("function|{sub}"));
    }
    let table = router.table();
    let change = match sub.as_str() {
        "load" => {
            let mut replace = false;
            for option in &args[2..args.len() - 1] {
                if option.eq_ignore_ascii_case(b"replace") {
                    replace = true;
                } else {
                    return error(format!("ERR Unknown option given: {}", String::from_utf8_lossy(option)));
                }
            }
            match lua::load_library(&String::from_utf8_lossy(&args[args.len() - 1])) {
                Ok(library) => LibraryChange::Load { library, replace },
                Err(text) => return Frame::Error(text),
            }
        }
        "delete" => LibraryChange::Delete {
            name: String::from_utf8_lossy(&args[2]).into_owned(),
        },
        "flush" => {
            if args
                .get(2)
                .is_some_and(|m| !m.eq_ignore_ascii_case(b"sync") && !m.eq_ignore_ascii_case(b"async"))
            {
                return error("ERR FUNCTION FLUSH only supports SYNC|ASYNC option");
            }
            LibraryChange::Flush
        }
        "restore" => match restore(&args[2..]) {
            Ok(change) => change,
            Err(text) => return error(text),
        },
        "list" => return list(&table.functions, &args[2..]),
        "dump" => return Frame::Bulk(dump(&table.functions)),
        "stats" => return stats(&table.functions),
        "kill" => return router.kill_scripts().await,
        _ => return function_help(),
    };
    let reply = match &change {
        LibraryChange::Load { library, .. } => Frame::Bulk(library.name.clone().into_bytes()),
        _ => Frame::ok(),
    };
    match crate::acl::record(router, PdRequest::ChangeLibraries(change)).await {
        Ok(_) => reply,
        Err(frame) => frame,
    }
}

/// FUNCTION LIST [LIBRARYNAME pattern] [WITHCODE], as Redis 7.0 answers it.
fn list(libraries: &Libraries, options: &[Vec<u8>]) -> Frame {
    let (mut pattern, mut with_code, mut i) = (None, false, 0);
    while i < options.len() {
        let option = &options[i];
        if option.eq_ignore_ascii_case(b"withcode") && !with_code {
            with_code = true;
        } else if option.eq_ignore_ascii_case(b"libraryname") && pattern.is_none() {
            let Some(value) = options.get(i + 1) else {
                return error("ERR library name argument was not given");
            };
            pattern = Some(value.clone());
            i += 1;
        } else {
            return error(format!("ERR Unknown argument {}", String::from_utf8_lossy(option)));
        }
        i += 1;
    }
    let text = |s: &str| Frame::Bulk(s.as_bytes().to_vec());
    let entries = libraries
        .0
        .values()
        .filter(|lib| {
            pattern
                .as_deref()
                .is_none_or(|p| redraft_common::glob::matches(p, lib.name.as_bytes()))
        })
        .map(|lib| {
            let functions = lib
                .functions
                .iter()
                .map(|f| {
                    Frame::Map(vec![
                        (text("name"), text(&f.name)),
                        (text("description"), f.description.as_deref().map_or(Frame::Null, text)),
                        (
                            text("flags"),
                            Frame::Set(f.flags.iter().map(|f| Frame::Simple(f.clone())).collect()),
                        ),
                    ])
                })
                .collect();
            let mut fields = vec![
                (text("library_name"), text(&lib.name)),
                (text("engine"), text("LUA")),
                (text("functions"), Frame::Array(functions)),
            ];
            if with_code {
                fields.push((text("library_code"), text(&lib.code)));
            }
            Frame::Map(fields)
        })
        .collect();
    Frame::Array(entries)
}

/// FUNCTION DUMP: Redis 7.0's payload (one `FUNCTION2` record per library).
fn dump(libraries: &Libraries) -> Vec<u8> {
    let mut payload = Vec::new();
    for library in libraries.0.values() {
        payload.push(rdb::OPCODE_FUNCTION2);
        rdb::write_string(&mut payload, library.code.as_bytes());
    }
    rdb::seal(payload)
}

/// FUNCTION RESTORE payload [FLUSH|APPEND|REPLACE]: the libraries of the
/// payload, each loaded as FUNCTION LOAD would.
fn restore(args: &[Vec<u8>]) -> Result<LibraryChange, String> {
    let policy = match args.get(1).map(|p| p.to_ascii_uppercase()) {
        None => RestorePolicy::Append,
        Some(p) if args.len() == 2 && p == b"FLUSH" => RestorePolicy::Flush,
        Some(p) if args.len() == 2 && p == b"APPEND" => RestorePolicy::Append,
        Some(p) if args.len() == 2 && p == b"REPLACE" => RestorePolicy::Replace,
        Some(_) => {
            return Err("ERR Wrong restore policy given, value should be either FLUSH, APPEND or REPLACE.".into())
        }
    };
    let mut reader = rdb::Reader::new(rdb::unseal(&args[0])?);
    let mut libraries = Vec::new();
    while !reader.is_empty() {
        if reader.byte()? != rdb::OPCODE_FUNCTION2 {
            return Err("ERR given type is not a function".into());
        }
        let code = reader.string()?;
        libraries.push(lua::load_library(&String::from_utf8_lossy(&code))?);
    }
    Ok(LibraryChange::Restore { libraries, policy })
}

/// FUNCTION STATS: no script is ever running between commands here.
fn stats(libraries: &Libraries) -> Frame {
    let text = |s: &str| Frame::Bulk(s.as_bytes().to_vec());
    let functions: usize = libraries.0.values().map(|l| l.functions.len()).sum();
    Frame::Map(vec![
        (text("running_script"), Frame::Null),
        (
            text("engines"),
            Frame::Map(vec![(
                text("LUA"),
                Frame::Map(vec![
                    (text("libraries_count"), Frame::Integer(libraries.0.len() as i64)),
                    (text("functions_count"), Frame::Integer(functions as i64)),
                ]),
            )]),
        ),
    ])
}

fn function_help() -> Frame {
    let lines = [
        "FUNCTION <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
        "LOAD [REPLACE] <FUNCTION CODE>",
        "    Create a new library with the given library name and code.",
        "DELETE <LIBRARY NAME>",
        "    Delete the given library.",
        "LIST [LIBRARYNAME PATTERN] [WITHCODE]",
        "    Return general information on all the libraries:",
        "    * Library name",
        "    * The engine used to run the Library",
        "    * Library description",
        "    * Functions list",
        "    * Library code (if WITHCODE is given)",
        "    It also possible to get only function that matches a pattern using LIBRARYNAME argument.",
        "STATS",
        "    Return information about the current function running:",
        "    * Function name",
        "    * Command used to run the function",
        "    * Duration in MS that the function is running",
        "    If no function is running, return nil",
        "    In addition, returns a list of available engines.",
        "KILL",
        "    Kill the current running function.",
        "FLUSH [ASYNC|SYNC]",
        "    Delete all the libraries.",
        "    When called without the optional mode argument, the behavior is determined by the",
        "    lazyfree-lazy-user-flush configuration directive. Valid modes are:",
        "    * ASYNC: Asynchronously flush the libraries.",
        "    * SYNC: Synchronously flush the libraries.",
        "DUMP",
        "    Return a serialized payload representing the current libraries, can be restored using FUNCTION RESTORE command",
        "RESTORE <PAYLOAD> [FLUSH|APPEND|REPLACE]",
        "    Restore the libraries represented by the given payload, it is possible to give a restore policy to",
        "    control how to handle existing libraries (default APPEND):",
        "    * FLUSH: delete all existing libraries.",
        "    * APPEND: appends the restored libraries to the existing libraries. On collision, abort.",
        "    * REPLACE: appends the restored libraries to the existing libraries, On collision, replace the old",
        "      libraries with the new libraries (notice that even on this option there is a chance of failure",
        "      in case of functions name collision with another library).",
        "HELP",
        "    Prints this help.",
    ];
    Frame::Array(lines.iter().map(|l| Frame::Simple(l.to_string())).collect())
}

//! The proxy's script cache: what EVALSHA finds, and SCRIPT LOAD, EXISTS,
//! FLUSH, KILL, DEBUG and HELP.
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
use redraft_common::ops::{Bytes, Script};
use redraft_common::parse::{Command, ScriptSource};
use redraft_common::resp::Frame;

use crate::admin::{error, unknown_subcommand, wrong_arity};

/// Redis's reply to EVALSHA of a script it does not have.
const NOSCRIPT: &str = "NOSCRIPT No matching script. Please use EVAL.";

/// Script bodies by SHA1 (lowercase hex).
#[derive(Default)]
pub struct ScriptCache {
    bodies: DashMap<String, Bytes>,
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

    /// EVALSHA's script replaced by its body (NOSCRIPT when unknown); EVAL's
    /// body remembered. Other commands pass through.
    pub fn resolve(&self, command: Command) -> Command {
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
        };
        Command::Eval {
            source: ScriptSource::Body(body),
            keys,
            args,
            read_only,
            seed,
        }
    }

    /// SCRIPT `args[1]` ...
    pub fn execute(&self, args: &[Vec<u8>]) -> Frame {
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
            "load" => Frame::Bulk(self.load(&args[2]).into_bytes()),
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
            // A script runs inside one shard's apply, bounded by its
            // instruction budget; there is no running script to kill.
            "kill" => error("NOTBUSY No scripts in execution right now."),
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

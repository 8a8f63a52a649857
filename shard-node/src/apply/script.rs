//! What a Lua script's `redis.call` does on a shard (EVAL, EVALSHA, FCALL and
//! their read-only forms); the Lua environment itself is
//! `redraft_common::lua`, shared with the proxy.
//!
//! A script runs inside the apply of its Raft entry, or inside a leader's read
//! (the read-only forms). Each `redis.call` is parsed by the proxy's own
//! parser (`redraft_common::parse`) and executed by this [`Keyspace`], so the
//! commands of a script behave as a client's would, read what the script
//! wrote before, and the whole script is one atomic step of the shard. Every
//! replica runs the same body with the same inputs and seed (see
//! `redraft_common::lua`, DETERMINISM).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redraft_common::commands::arity_ok;
use redraft_common::lua;
use redraft_common::ops::{ReadOp, Script, ShardOp, WriteOp};
use redraft_common::parse::{self, Command};
use redraft_common::resp::Frame;

use super::{Keyspace, NotOwned};

const NOT_ALLOWED: &str = "ERR This Redis command is not allowed from script";
const WRITE_IN_READ_ONLY: &str = "ERR Write commands are not allowed from read-only scripts.";
const NOT_LOCAL: &str = "ERR Script attempted to access a non local key in a cluster node";

/// The scripts running on this node now: whether each only reads, when it
/// started, and the flag that stops it.
static RUNNING: Mutex<Vec<(bool, Instant, Arc<AtomicBool>)>> = Mutex::new(Vec::new());

/// How long a script runs before SCRIPT KILL counts it as busy, as Redis only
/// sees a script once it is busy: a replica applying a short script its
/// leader already answered must not look busy to a client.
const BUSY_AFTER: Duration = Duration::from_millis(100);

/// Keeps a script in [`RUNNING`] while it runs.
struct Running(Arc<AtomicBool>);

impl Running {
    fn start(read_only: bool) -> Running {
        let flag = Arc::new(AtomicBool::new(false));
        RUNNING
            .lock()
            .expect("scripts registry")
            .push((read_only, Instant::now(), flag.clone()));
        Running(flag)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        RUNNING
            .lock()
            .expect("scripts registry")
            .retain(|(_, _, flag)| !Arc::ptr_eq(flag, &self.0));
    }
}

/// SCRIPT KILL and FUNCTION KILL on this node: stops the read-only scripts
/// running here. A script that may write runs on every replica and must end
/// alike on each, so it is never stopped on one (it ends by its instruction
/// budget), as Redis will not stop a script that wrote.
pub fn kill_scripts() -> Frame {
    let running = RUNNING.lock().expect("scripts registry");
    let (mut killed, mut unkillable) = (false, false);
    for (read_only, started, flag) in running.iter() {
        if started.elapsed() < BUSY_AFTER {
            continue;
        }
        if *read_only {
            flag.store(true, Ordering::Relaxed);
            killed = true;
        } else {
            unkillable = true;
        }
    }
    match (killed, unkillable) {
        (true, _) => Frame::ok(),
        (false, true) => Frame::error(UNKILLABLE),
        (false, false) => Frame::error("NOTBUSY No scripts in execution right now."),
    }
}

/// Redis's answer to SCRIPT KILL when the running script wrote.
pub const UNKILLABLE: &str = "UNKILLABLE Sorry the script already executed write commands against the dataset. You can either wait the script termination or kill the server in a hard way using the SHUTDOWN NOSAVE command.";

impl Keyspace<'_> {
    /// Runs `script`; `read_only` refuses its writes (the `_RO` forms and
    /// functions or scripts declared `no-writes`), and lets SCRIPT KILL stop it.
    pub(super) fn script(&mut self, script: &Script, read_only: bool) -> Frame {
        let running = Running::start(read_only);
        let mut call = |args: &[Vec<u8>], seed: u64| self.script_call(args, read_only, seed);
        let run = lua::Run {
            seed: script.seed,
            call: &mut call,
            kill: read_only.then(|| running.0.clone()),
        };
        match &script.function {
            None => lua::eval(&script.body, &script.keys, &script.args, run),
            Some(name) => lua::fcall(
                &String::from_utf8_lossy(&script.body),
                name,
                &script.keys,
                &script.args,
                run,
            ),
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

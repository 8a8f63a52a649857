//! One connection's state and the commands that read or change it: HELLO
//! (protocol version, AUTH, SETNAME), AUTH and CLIENT, plus the registry of
//! connected clients that CLIENT LIST and CLIENT KILL work on.
//!
//! Everything here is local to one proxy, like Redis's client list is local to
//! one server: CLIENT LIST shows this proxy's connections.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use dashmap::DashMap;
use redraft_common::acl::Users;
use redraft_common::resp::Frame;
use tokio::sync::Notify;

/// Every client connected to this proxy.
#[derive(Default)]
pub struct Clients {
    next_id: AtomicU64,
    all: DashMap<u64, Arc<Client>>,
}

/// One connected client, as CLIENT LIST shows it.
pub struct Client {
    /// CLIENT ID: unique for the life of the proxy.
    pub id: u64,
    addr: SocketAddr,
    laddr: SocketAddr,
    connected: Instant,
    state: Mutex<ClientState>,
    /// Woken by CLIENT KILL: the connection closes.
    pub killed: Notify,
    /// Whether it waits in a blocking command (CLIENT UNBLOCK acts only then).
    pub blocked: std::sync::atomic::AtomicBool,
    /// Woken by CLIENT UNBLOCK: the blocking command ends.
    pub unblock: Notify,
    /// CLIENT UNBLOCK ... ERROR: the command ends with an error, not a timeout.
    pub unblock_error: std::sync::atomic::AtomicBool,
}

#[derive(Clone)]
struct ClientState {
    name: String,
    user: String,
    lib_name: String,
    lib_ver: String,
    resp: u8,
    last_command: &'static str,
    last_active: Instant,
}

impl Client {
    fn state(&self) -> std::sync::MutexGuard<'_, ClientState> {
        self.state.lock().expect("client state lock")
    }

    /// The CLIENT LIST line (without the newline).
    fn describe(&self) -> String {
        let s = self.state().clone();
        format!(
            "id={} addr={} laddr={} fd=0 name={} age={} idle={} flags={} db=0 sub=0 psub=0 ssub=0 multi=-1 \
             qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 rbp=0 obl=0 oll=0 omem=0 tot-mem=0 events=r \
             cmd={} user={} redir=-1 resp={} lib-name={} lib-ver={}",
            self.id,
            self.addr,
            self.laddr,
            s.name,
            self.connected.elapsed().as_secs(),
            s.last_active.elapsed().as_secs(),
            if self.blocked.load(std::sync::atomic::Ordering::Relaxed) {
                "b"
            } else {
                "N"
            },
            s.last_command,
            s.user,
            s.resp,
            s.lib_name,
            s.lib_ver,
        )
    }
}

/// One connection: its registry entry and protocol.
pub struct Session {
    /// This connection's registry entry.
    pub client: Arc<Client>,
    clients: Arc<Clients>,
    /// Replies are RESP3 (after HELLO 3).
    pub resp3: bool,
    /// MULTI and WATCH state.
    pub transaction: crate::transaction::TransactionState,
    /// Pub/Sub subscriptions and inbox.
    pub pubsub: crate::pubsub::ClientSubscriptions,
    /// The ACL user this connection runs as.
    pub user: String,
    /// Whether it has authenticated (or needs not: the default user has no
    /// password).
    pub authenticated: bool,
    /// CLIENT REPLY: whether replies (and Pub/Sub messages) are sent.
    pub replies: ReplyMode,
    hub: Arc<crate::pubsub::PubSub>,
}

/// CLIENT REPLY's modes, as Redis has them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ReplyMode {
    /// Every reply is sent.
    #[default]
    On,
    /// No reply is sent until CLIENT REPLY ON (which answers OK).
    Off,
    /// The next command's reply is not sent.
    SkipNext,
}

impl Session {
    /// Registers a new connection from `addr` accepted on `laddr`.
    pub fn open(
        clients: &Arc<Clients>,
        hub: &Arc<crate::pubsub::PubSub>,
        addr: SocketAddr,
        laddr: SocketAddr,
        authenticated: bool,
    ) -> Session {
        let id = clients.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let client = Arc::new(Client {
            id,
            addr,
            laddr,
            connected: Instant::now(),
            state: Mutex::new(ClientState {
                name: String::new(),
                user: "default".into(),
                lib_name: String::new(),
                lib_ver: String::new(),
                resp: 2,
                last_command: "NULL",
                last_active: Instant::now(),
            }),
            killed: Notify::new(),
            blocked: Default::default(),
            unblock: Notify::new(),
            unblock_error: Default::default(),
        });
        clients.all.insert(id, client.clone());
        Session {
            client,
            clients: clients.clone(),
            resp3: false,
            transaction: Default::default(),
            pubsub: Default::default(),
            hub: hub.clone(),
            user: "default".into(),
            authenticated,
            replies: ReplyMode::On,
        }
    }

    /// The address the client connected to (for CLUSTER SLOTS and friends).
    pub fn local_addr(&self) -> SocketAddr {
        self.client.laddr
    }

    /// Records the command being run, for CLIENT LIST's `cmd` and `idle`.
    pub fn touch(&self, command: &'static str) {
        let mut state = self.client.state();
        state.last_command = command;
        state.last_active = Instant::now();
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.clients.all.remove(&self.client.id);
        if self.pubsub.inbox.is_some() {
            self.hub.forget(self.client.id);
        }
    }
}

/// What a session command asks of the connection besides its reply.
#[derive(Debug, PartialEq)]
pub enum After {
    /// Go on.
    Continue,
    /// Reply, then close (CLIENT KILL of this very connection).
    Close,
}

fn error(text: impl Into<String>) -> Frame {
    Frame::Error(text.into())
}

fn wrong_arity(command: &str) -> Frame {
    error(format!("ERR wrong number of arguments for '{command}' command"))
}

/// Runs a connection command (`name` from the command table): HELLO, AUTH,
/// CLIENT, CLUSTER, CONFIG or ACL. Used for commands run at once and inside EXEC.
pub async fn run(router: &crate::route::Router, session: &mut Session, name: &str, args: &[Vec<u8>]) -> (Frame, After) {
    let reply = match name {
        "command" => crate::admin::command(args),
        "script" => router.scripts.execute(router, args).await,
        "function" => crate::scripts::function(router, args).await,
        "cluster" => crate::admin::cluster(args, session.local_addr()),
        "config" if is_set_requirepass(args) => crate::acl::set_requirepass(router, &args[3]).await,
        "config" => crate::config::execute(router, args, session.local_addr()).await,
        "acl" => crate::acl::execute(router, session, args).await,
        _ => return execute(session, args, &router.table().users),
    };
    (reply, After::Continue)
}

/// CONFIG SET requirepass <password>: the default user's password, kept by the
/// placement driver like every ACL change.
fn is_set_requirepass(args: &[Vec<u8>]) -> bool {
    args.len() == 4 && args[1].eq_ignore_ascii_case(b"set") && args[2].eq_ignore_ascii_case(b"requirepass")
}

/// Runs HELLO, AUTH or CLIENT (`args[0]`, any case) with the cluster's `users`.
pub fn execute(session: &mut Session, args: &[Vec<u8>], users: &Users) -> (Frame, After) {
    let name = String::from_utf8_lossy(&args[0]).to_ascii_lowercase();
    match name.as_str() {
        "hello" => (hello(session, &args[1..], users), After::Continue),
        "auth" => (auth(session, &args[1..], users), After::Continue),
        _ => client(session, args),
    }
}

/// Authenticates the connection as `user` when `password` is right.
fn log_in(session: &mut Session, users: &Users, user: &[u8], password: &[u8]) -> Result<(), Frame> {
    let name = crate::acl::authenticate(users, user, password)?;
    session.client.state().user = name.clone();
    session.user = name;
    session.authenticated = true;
    Ok(())
}

fn auth(session: &mut Session, args: &[Vec<u8>], users: &Users) -> Frame {
    let result = match args {
        [_] if users.get("default").is_some_and(|u| u.nopass) => Err(error(
            "ERR AUTH <password> called without any password configured for the default user. \
             Are you sure your configuration is correct?",
        )),
        [password] => log_in(session, users, b"default", password),
        [user, password] => log_in(session, users, user, password),
        _ => Err(error("ERR syntax error")),
    };
    result.map_or_else(|e| e, |()| Frame::ok())
}

fn hello(session: &mut Session, args: &[Vec<u8>], users: &Users) -> Frame {
    let mut version = None;
    let mut rest = args;
    if let Some(first) = args.first() {
        match redraft_common::ops::parse_strict_i64(first) {
            Some(v @ 2..=3) => version = Some(v as u8),
            Some(_) => return error("NOPROTO unsupported protocol version"),
            None => return error("ERR Protocol version is not an integer or out of range"),
        }
        rest = &args[1..];
    }
    let mut name = None;
    let mut credentials = None;
    let mut i = 0;
    while i < rest.len() {
        let more = rest.len() - i - 1;
        match rest[i].to_ascii_lowercase().as_slice() {
            b"auth" if more >= 2 => {
                credentials = Some((&rest[i + 1], &rest[i + 2]));
                i += 2;
            }
            b"setname" if more >= 1 => {
                name = Some(&rest[i + 1]);
                i += 1;
            }
            _ => {
                return error(format!(
                    "ERR Syntax error in HELLO option '{}'",
                    String::from_utf8_lossy(&rest[i])
                ))
            }
        }
        i += 1;
    }
    if let Some((user, password)) = credentials {
        if let Err(e) = log_in(session, users, user, password) {
            return e;
        }
    }
    if !session.authenticated {
        return error(
            "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> \
             AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol \
             version at the same time",
        );
    }
    if let Some(name) = name {
        if let Err(e) = set_name(session, name) {
            return e;
        }
    }
    if let Some(v) = version {
        session.resp3 = v == 3;
        session.client.state().resp = v;
    }
    let text = |s: &str| Frame::Bulk(s.as_bytes().to_vec());
    Frame::Map(vec![
        (text("server"), text("redis")),
        (text("version"), text(crate::info::REDIS_VERSION)),
        (text("proto"), Frame::Integer(if session.resp3 { 3 } else { 2 })),
        (text("id"), Frame::Integer(session.client.id as i64)),
        (text("mode"), text("standalone")),
        (text("role"), text("master")),
        (text("modules"), Frame::Array(vec![])),
    ])
}

fn set_name(session: &Session, name: &[u8]) -> Result<(), Frame> {
    if name.iter().any(|&b| !(b'!'..=b'~').contains(&b)) {
        return Err(error(
            "ERR Client names cannot contain spaces, newlines or special characters.",
        ));
    }
    session.client.state().name = String::from_utf8_lossy(name).into_owned();
    Ok(())
}

fn on_off(arg: &[u8]) -> Result<bool, Frame> {
    match arg.to_ascii_lowercase().as_slice() {
        b"on" => Ok(true),
        b"off" => Ok(false),
        _ => Err(error("ERR syntax error")),
    }
}

const CLIENT_HELP: &[&str] = &[
    "CLIENT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "GETNAME",
    "    Return the name of the current connection.",
    "ID",
    "    Return the ID of the current connection.",
    "INFO",
    "    Return information about the current client connection.",
    "KILL <ip:port>",
    "    Kill connection made from <ip:port>.",
    "KILL <option> <value> [<option> <value> [...]]",
    "    Kill connections. Options are: ID <client-id>, ADDR <ip:port>, LADDR <ip:port>,",
    "    TYPE (NORMAL|PUBSUB), USER <username>, SKIPME (YES|NO).",
    "LIST [options ...]",
    "    Return information about client connections. Options: TYPE (NORMAL|PUBSUB), ID <id> [<id> ...].",
    "NO-EVICT (ON|OFF)",
    "    Protect the current client connection from eviction.",
    "NO-TOUCH (ON|OFF)",
    "    Will not touch LRU/LFU stats when this mode is on.",
    "REPLY (ON|OFF|SKIP)",
    "    Control the replies sent to the current connection.",
    "SETINFO <option> <value>",
    "    Set client meta attr. Options are: LIB-NAME, LIB-VER.",
    "SETNAME <name>",
    "    Assign the name <name> to the current connection.",
    "UNBLOCK <clientid> [TIMEOUT|ERROR]",
    "    Unblock the specified blocked client.",
    "HELP",
    "    Print this help.",
];

fn client(session: &mut Session, args: &[Vec<u8>]) -> (Frame, After) {
    let Some(sub) = args.get(1).map(|s| s.to_ascii_lowercase()) else {
        return (wrong_arity("client"), After::Continue);
    };
    let sub = String::from_utf8_lossy(&sub).into_owned();
    let arity = |n: usize| args.len() == n;
    let reply = match sub.as_str() {
        "id" if arity(2) => Frame::Integer(session.client.id as i64),
        "getname" if arity(2) => {
            let name = session.client.state().name.clone();
            if name.is_empty() {
                Frame::Null
            } else {
                Frame::Bulk(name.into_bytes())
            }
        }
        "setname" if arity(3) => match set_name(session, &args[2]) {
            Ok(()) => Frame::ok(),
            Err(e) => e,
        },
        "info" if arity(2) => Frame::Bulk(format!("{}\n", session.client.describe()).into_bytes()),
        "list" => match list(session, &args[2..]) {
            Ok(text) => Frame::Bulk(text.into_bytes()),
            Err(e) => e,
        },
        "kill" if args.len() >= 3 => return kill(session, &args[2..]),
        "unblock" if args.len() == 3 || args.len() == 4 => unblock(session, &args[2..]),
        // OFF and SKIP are not answered; ON answers OK even after OFF.
        "reply" if arity(3) => match args[2].to_ascii_lowercase().as_slice() {
            b"on" => {
                session.replies = ReplyMode::On;
                Frame::ok()
            }
            b"off" => {
                session.replies = ReplyMode::Off;
                Frame::Replies(Vec::new())
            }
            b"skip" => {
                if session.replies != ReplyMode::Off {
                    session.replies = ReplyMode::SkipNext;
                }
                Frame::Replies(Vec::new())
            }
            _ => error("ERR syntax error"),
        },
        "no-evict" | "no-touch" if arity(3) => match on_off(&args[2]) {
            Ok(_) => Frame::ok(),
            Err(e) => e,
        },
        "setinfo" if arity(4) => {
            let value = String::from_utf8_lossy(&args[3]).into_owned();
            if value.chars().any(|c| !('!'..='~').contains(&c)) {
                error(format!(
                    "ERR {} cannot contain spaces, newlines or special characters.",
                    String::from_utf8_lossy(&args[2]).to_ascii_lowercase()
                ))
            } else {
                match args[2].to_ascii_lowercase().as_slice() {
                    b"lib-name" => {
                        session.client.state().lib_name = value;
                        Frame::ok()
                    }
                    b"lib-ver" => {
                        session.client.state().lib_ver = value;
                        Frame::ok()
                    }
                    _ => error(format!(
                        "ERR Unrecognized option '{}'",
                        String::from_utf8_lossy(&args[2])
                    )),
                }
            }
        }
        "help" if arity(2) => Frame::Array(CLIENT_HELP.iter().map(|l| Frame::Simple(l.to_string())).collect()),
        "id" | "getname" | "setname" | "info" | "kill" | "no-evict" | "no-touch" | "reply" | "setinfo" | "help"
        | "unblock" => wrong_arity(&format!("client|{sub}")),
        _ => error(format!(
            "ERR unknown subcommand '{}'. Try CLIENT HELP.",
            String::from_utf8_lossy(&args[1])
        )),
    };
    (reply, After::Continue)
}

/// CLIENT UNBLOCK id [TIMEOUT|ERROR]: ends a blocking command of a client of
/// this proxy; `:1` when that client was blocked.
fn unblock(session: &Session, args: &[Vec<u8>]) -> Frame {
    use std::sync::atomic::Ordering;
    let Some(id) = redraft_common::ops::parse_strict_i64(&args[0]) else {
        return error("ERR value is not an integer or out of range");
    };
    let as_error = match args.get(1).map(|a| a.to_ascii_lowercase()) {
        None => false,
        Some(reason) if reason == b"timeout" => false,
        Some(reason) if reason == b"error" => true,
        Some(_) => return error("ERR CLIENT UNBLOCK reason should be TIMEOUT or ERROR"),
    };
    let target = u64::try_from(id)
        .ok()
        .and_then(|id| session.clients.all.get(&id).map(|c| c.clone()));
    match target {
        Some(client) if client.blocked.load(Ordering::Relaxed) => {
            client.unblock_error.store(as_error, Ordering::Relaxed);
            client.unblock.notify_one();
            Frame::Integer(1)
        }
        _ => Frame::Integer(0),
    }
}

fn list(session: &Session, options: &[Vec<u8>]) -> Result<String, Frame> {
    let mut ids: Option<Vec<u64>> = None;
    let mut i = 0;
    while i < options.len() {
        match options[i].to_ascii_lowercase().as_slice() {
            b"type" if i + 1 < options.len() => {
                match options[i + 1].to_ascii_lowercase().as_slice() {
                    // Every proxy connection is a normal client.
                    b"normal" => {}
                    b"master" | b"replica" | b"slave" | b"pubsub" => ids = Some(Vec::new()),
                    _ => {
                        return Err(error(format!(
                            "ERR Unknown client type '{}'",
                            String::from_utf8_lossy(&options[i + 1])
                        )))
                    }
                }
                i += 2;
            }
            b"id" if i + 1 < options.len() => {
                let mut wanted = Vec::new();
                for arg in &options[i + 1..] {
                    match redraft_common::ops::parse_strict_i64(arg).filter(|&n| n > 0) {
                        Some(n) => wanted.push(n as u64),
                        None => return Err(error("ERR Invalid client ID")),
                    }
                }
                ids = Some(wanted);
                i = options.len();
            }
            _ => return Err(error("ERR syntax error")),
        }
    }
    let mut clients: Vec<Arc<Client>> = session.clients.all.iter().map(|c| c.value().clone()).collect();
    clients.sort_by_key(|c| c.id);
    Ok(clients
        .iter()
        .filter(|c| ids.as_ref().is_none_or(|ids| ids.contains(&c.id)))
        .map(|c| format!("{}\n", c.describe()))
        .collect())
}

fn kill(session: &Session, args: &[Vec<u8>]) -> (Frame, After) {
    // Old form: CLIENT KILL ip:port.
    if let [addr] = args {
        let addr = String::from_utf8_lossy(addr);
        let found = session
            .clients
            .all
            .iter()
            .find(|c| c.addr.to_string() == addr)
            .map(|c| c.value().clone());
        return match found {
            Some(client) => kill_one(session, &client, Frame::ok()),
            None => (error("ERR No such client"), After::Continue),
        };
    }
    if !args.len().is_multiple_of(2) {
        return (error("ERR syntax error"), After::Continue);
    }
    let (mut id, mut addr, mut laddr, mut skip_me) = (None, None, None, true);
    for pair in args.chunks(2) {
        let value = String::from_utf8_lossy(&pair[1]).into_owned();
        match pair[0].to_ascii_lowercase().as_slice() {
            b"id" => match redraft_common::ops::parse_strict_i64(&pair[1]).filter(|&n| n > 0) {
                Some(n) => id = Some(n as u64),
                None => return (error("ERR client-id should be greater than 0"), After::Continue),
            },
            b"addr" => addr = Some(value),
            b"laddr" => laddr = Some(value),
            b"user" if value != "default" => return (error(format!("ERR No such user '{value}'")), After::Continue),
            b"user" => {}
            b"type" if value.eq_ignore_ascii_case("normal") => {}
            b"type" => return (Frame::Integer(0), After::Continue),
            b"skipme" => match value.to_ascii_lowercase().as_str() {
                "yes" => skip_me = true,
                "no" => skip_me = false,
                _ => return (error("ERR syntax error"), After::Continue),
            },
            _ => return (error("ERR syntax error"), After::Continue),
        }
    }
    let victims: Vec<Arc<Client>> = session
        .clients
        .all
        .iter()
        .map(|c| c.value().clone())
        .filter(|c| id.is_none_or(|id| c.id == id))
        .filter(|c| addr.as_ref().is_none_or(|a| c.addr.to_string() == *a))
        .filter(|c| laddr.as_ref().is_none_or(|a| c.laddr.to_string() == *a))
        .filter(|c| !(skip_me && c.id == session.client.id))
        .collect();
    let mut after = After::Continue;
    for victim in &victims {
        if kill_one(session, victim, Frame::Null).1 == After::Close {
            after = After::Close;
        }
    }
    (Frame::Integer(victims.len() as i64), after)
}

/// Closes `victim`'s connection: its own after this reply, another at once.
fn kill_one(session: &Session, victim: &Client, reply: Frame) -> (Frame, After) {
    if victim.id == session.client.id {
        return (reply, After::Close);
    }
    victim.killed.notify_one();
    (reply, After::Continue)
}

//! Authentication and ACL checks for every command, and the ACL command.
//!
//! Users live in the placement driver (see `redraft_common::acl`) and reach
//! every proxy with the routing table; ACL SETUSER and DELUSER are validated
//! here, recorded by the placement driver, and then visible to every proxy.
//! Checks follow Redis 7.0: NOAUTH before authentication, then NOPERM for the
//! command, its keys and its channels.

use redraft_common::acl::{User, Users, CATEGORIES};
use redraft_common::resp::Frame;
use redraft_common::wire::{PdRequest, PdResponse};

use crate::route::Router;
use crate::session::Session;

fn error(text: impl Into<String>) -> Frame {
    Frame::Error(text.into())
}

fn bulk(text: impl Into<String>) -> Frame {
    Frame::Bulk(text.into().into_bytes())
}

/// Commands whose first argument is a subcommand ACL rules can name
/// (`+config|get`).
const CONTAINERS: &[&str] = &["acl", "client", "cluster", "command", "config", "object", "pubsub"];

/// The name ACLs see: `name` or `name|subcommand`.
fn full_name(name: &str, args: &[Vec<u8>]) -> String {
    match args.get(1) {
        Some(sub) if CONTAINERS.contains(&name) => {
            format!("{name}|{}", String::from_utf8_lossy(sub).to_ascii_lowercase())
        }
        _ => name.to_string(),
    }
}

/// Whether `name` (or `name|sub`) is a command ACL rules may name.
fn known(name: &str) -> bool {
    let base = name.split('|').next().unwrap_or(name);
    crate::admin::all_commands().iter().any(|(n, _)| *n == base)
}

/// Channels a Pub/Sub command names.
fn channels_of<'a>(name: &str, args: &'a [Vec<u8>]) -> &'a [Vec<u8>] {
    match name {
        "subscribe" | "psubscribe" | "ssubscribe" => &args[1..],
        "publish" | "spublish" => &args[1..2],
        _ => &[],
    }
}

/// Checks that `session` may run the request `args` (`name` from the command
/// table); `Some(error)` when it may not.
pub fn check(users: &Users, session: &mut Session, name: &str, args: &[Vec<u8>]) -> Option<Frame> {
    // The common case: nobody configured users and the connection is `default`.
    if users.users.is_empty() && session.authenticated && session.user == "default" {
        return None;
    }
    let user = users.get(&session.user).filter(|u| u.enabled);
    if user.is_none() {
        // Deleted or disabled since this connection authenticated.
        session.authenticated = false;
    }
    if !session.authenticated {
        return (!matches!(name, "auth" | "hello" | "quit" | "reset"))
            .then(|| error("NOAUTH Authentication required."));
    }
    let user = user?;
    // Authenticating is always allowed (Redis's `no-auth` commands).
    if user.is_unrestricted() || matches!(name, "unknown" | "auth" | "hello" | "quit" | "reset") {
        return None;
    }
    let full = full_name(name, args);
    if !user.may_run(&full, &crate::admin::categories(name)) {
        return Some(error(format!(
            "NOPERM this user has no permissions to run the '{full}' command"
        )));
    }
    if crate::admin::keys_of(name, args)
        .iter()
        .any(|k| !user.may_access_key(k))
    {
        return Some(error(
            "NOPERM this user has no permissions to access one of the keys used as arguments",
        ));
    }
    if matches!(name, "sort" | "sort_ro") && !user.may_access_all_keys() {
        if let Some(option) = sort_pattern_option(args) {
            return Some(error(format!(
                "ERR {option} option of SORT denied due to insufficient ACL permissions."
            )));
        }
    }
    if channels_of(name, args).iter().any(|c| !user.may_use_channel(c)) {
        return Some(error(
            "NOPERM this user has no permissions to access one of the channels used as arguments",
        ));
    }
    None
}

/// The first SORT option that reads keys named by a pattern (`BY` with a `*`,
/// any `GET`), which Redis allows only to users who may access every key.
fn sort_pattern_option(args: &[Vec<u8>]) -> Option<&'static str> {
    let mut j = 2;
    while j < args.len() {
        let left = args.len() - j - 1;
        match args[j].to_ascii_lowercase().as_slice() {
            b"by" if left >= 1 && args[j + 1].contains(&b'*') => return Some("BY"),
            b"get" if left >= 1 => return Some("GET"),
            b"by" | b"store" if left >= 1 => j += 1,
            b"limit" if left >= 2 => j += 2,
            _ => {}
        }
        j += 1;
    }
    None
}

/// Whether a new connection starts authenticated (the default user needs no
/// password).
pub fn starts_authenticated(users: &Users) -> bool {
    users.get("default").is_some_and(|u| u.enabled && u.nopass)
}

/// Checks `user`'s `password`.
pub fn authenticate(users: &Users, user: &[u8], password: &[u8]) -> Result<String, Frame> {
    let name = String::from_utf8_lossy(user).into_owned();
    match users.get(&name) {
        Some(u) if u.accepts(password) => Ok(name),
        _ => Err(error("WRONGPASS invalid username-password pair or user is disabled.")),
    }
}

/// ACL GETUSER's answer.
fn describe_user(user: &User) -> Frame {
    let mut flags = vec![bulk(if user.enabled { "on" } else { "off" })];
    if user.nopass {
        flags.push(bulk("nopass"));
    }
    let joined = |prefix: &str, items: &[String]| {
        items
            .iter()
            .map(|i| format!("{prefix}{i}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    Frame::Map(vec![
        (bulk("flags"), Frame::Array(flags)),
        (
            bulk("passwords"),
            Frame::Array(user.passwords.iter().map(|p| bulk(p.as_str())).collect()),
        ),
        (bulk("commands"), bulk(user.commands.join(" "))),
        (bulk("keys"), bulk(joined("~", &user.keys))),
        (bulk("channels"), bulk(joined("&", &user.channels))),
        (bulk("selectors"), Frame::Array(vec![])),
    ])
}

/// Asks the placement driver; its refusal or absence as a Redis error.
pub(crate) async fn ask_placement(router: &Router, request: &PdRequest) -> Result<PdResponse, Frame> {
    let answer = router
        .placement()
        .call(request, std::time::Duration::from_secs(10))
        .await
        .map_err(|e| error(format!("CLUSTERDOWN placement driver unreachable: {e:#}")))?;
    if let PdResponse::Error(text) = answer {
        return Err(error(text));
    }
    Ok(answer)
}

/// Records a change at the placement driver, then fetches the table so this
/// proxy applies it to the next command already.
pub(crate) async fn record(router: &Router, request: PdRequest) -> Result<PdResponse, Frame> {
    let answer = ask_placement(router, &request).await?;
    router.refresh().await;
    Ok(answer)
}

/// Sets the default user's password (CONFIG SET requirepass; empty: none).
pub async fn set_requirepass(router: &Router, password: &[u8]) -> Frame {
    let password = String::from_utf8_lossy(password);
    let rules = if password.is_empty() {
        vec!["nopass".to_string()]
    } else {
        vec!["resetpass".to_string(), format!(">{password}")]
    };
    match record(
        router,
        PdRequest::SetUser {
            name: "default".into(),
            rules,
        },
    )
    .await
    {
        Ok(_) => Frame::ok(),
        Err(e) => e,
    }
}

/// ACL <subcommand>.
pub async fn execute(router: &Router, session: &Session, args: &[Vec<u8>]) -> Frame {
    let sub = String::from_utf8_lossy(&args[1]).to_ascii_lowercase();
    let users = router.table().users.clone();
    let arity = |ok: bool| {
        if ok {
            None
        } else {
            Some(error(format!("ERR wrong number of arguments for 'acl|{sub}' command")))
        }
    };
    let text = |i: usize| String::from_utf8_lossy(&args[i]).into_owned();
    match sub.as_str() {
        "setuser" => {
            if let Some(e) = arity(args.len() >= 3) {
                return e;
            }
            let (name, rules) = (text(2), (3..args.len()).map(text).collect::<Vec<_>>());
            if let Err(e) = users.clone().set_user(&name, &rules, known) {
                return error(e);
            }
            match record(router, PdRequest::SetUser { name, rules }).await {
                Ok(_) => Frame::ok(),
                Err(e) => e,
            }
        }
        "deluser" => {
            if let Some(e) = arity(args.len() >= 3) {
                return e;
            }
            let names = (2..args.len()).map(text).collect();
            match record(router, PdRequest::DeleteUsers { names }).await {
                Ok(PdResponse::Count(n)) => Frame::Integer(n as i64),
                Ok(other) => error(format!("ERR unexpected answer {other:?}")),
                Err(e) => e,
            }
        }
        "getuser" => {
            arity(args.len() == 3).unwrap_or_else(|| users.get(&text(2)).map_or(Frame::Null, |u| describe_user(&u)))
        }
        "list" => arity(args.len() == 2).unwrap_or_else(|| {
            Frame::Array(
                users
                    .names()
                    .into_iter()
                    .filter_map(|n| users.get(&n).map(|u| bulk(format!("user {n} {}", u.describe()))))
                    .collect(),
            )
        }),
        "users" => {
            arity(args.len() == 2).unwrap_or_else(|| Frame::Array(users.names().into_iter().map(bulk).collect()))
        }
        "whoami" => arity(args.len() == 2).unwrap_or_else(|| bulk(session.user.as_str())),
        "cat" => match args.len() {
            2 => Frame::Array(CATEGORIES.iter().map(|c| bulk(*c)).collect()),
            3 => {
                let wanted = text(2).to_ascii_lowercase();
                if !CATEGORIES.contains(&wanted.as_str()) {
                    return error(format!("ERR Unknown category '{}'", text(2)));
                }
                Frame::Array(
                    crate::admin::all_commands()
                        .into_iter()
                        .filter(|(n, _)| crate::admin::categories(n).contains(&wanted.as_str()))
                        .map(|(n, _)| bulk(n))
                        .collect(),
                )
            }
            _ => error("ERR wrong number of arguments for 'acl|cat' command"),
        },
        "help" => Frame::Array(
            [
                "ACL <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
                "CAT [<category>]",
                "DELUSER <username> [<username> ...]",
                "GETUSER <username>",
                "LIST",
                "SETUSER <username> <attribute> [<attribute> ...]",
                "USERS",
                "WHOAMI",
                "HELP",
            ]
            .iter()
            .map(|l| Frame::Simple(l.to_string()))
            .collect(),
        ),
        _ => error(format!("ERR unknown subcommand '{}'. Try ACL HELP.", text(1))),
    }
}

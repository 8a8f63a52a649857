//! ACL users: passwords, and which commands, keys and channels each may use.
//!
//! The placement driver keeps the users in its replicated state and publishes
//! them with the routing table; every proxy authenticates and checks commands
//! against that copy. Rules and replies follow Redis 7.0 (`ACL SETUSER` rule
//! syntax, `ACL LIST` lines, error texts). Passwords are stored as SHA-256 hex
//! digests, never in clear.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::glob;

/// Redis's command categories (ACL CAT).
pub const CATEGORIES: &[&str] = &[
    "keyspace",
    "read",
    "write",
    "set",
    "sortedset",
    "list",
    "hash",
    "string",
    "bitmap",
    "hyperloglog",
    "geo",
    "stream",
    "pubsub",
    "admin",
    "fast",
    "slow",
    "blocking",
    "dangerous",
    "connection",
    "transaction",
    "scripting",
];

/// One user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// `on`: may authenticate.
    pub enabled: bool,
    /// Any password authenticates.
    pub nopass: bool,
    /// SHA-256 hex digests of the passwords.
    pub passwords: BTreeSet<String>,
    /// Command rules in order, starting with `+@all` or `-@all`.
    pub commands: Vec<String>,
    /// Key patterns (`~pattern`, without the `~`).
    pub keys: Vec<String>,
    /// Channel patterns (`&pattern`, without the `&`).
    pub channels: Vec<String>,
}

impl User {
    /// Redis's `default` user out of the box: on, no password, everything.
    pub fn default_user() -> User {
        User {
            enabled: true,
            nopass: true,
            passwords: BTreeSet::new(),
            commands: vec!["+@all".into()],
            keys: vec!["*".into()],
            channels: vec!["*".into()],
        }
    }

    /// A user created by ACL SETUSER: off, no password, nothing allowed.
    pub fn new_user() -> User {
        User {
            enabled: false,
            nopass: false,
            passwords: BTreeSet::new(),
            commands: vec!["-@all".into()],
            keys: Vec::new(),
            channels: Vec::new(),
        }
    }

    /// Applies one ACL SETUSER rule. `known` says whether a command name (or
    /// `command|subcommand`) exists. Errors are Redis's reasons.
    pub fn apply(&mut self, rule: &str, known: impl Fn(&str) -> bool) -> Result<(), String> {
        let lower = rule.to_ascii_lowercase();
        match lower.as_str() {
            "on" => self.enabled = true,
            "off" => self.enabled = false,
            "nopass" => {
                self.nopass = true;
                self.passwords.clear();
            }
            "resetpass" => {
                self.nopass = false;
                self.passwords.clear();
            }
            "allkeys" => self.keys = vec!["*".into()],
            "resetkeys" => self.keys.clear(),
            "allchannels" => self.channels = vec!["*".into()],
            "resetchannels" => self.channels.clear(),
            "allcommands" => self.commands = vec!["+@all".into()],
            "nocommands" => self.commands = vec!["-@all".into()],
            "reset" => *self = User::new_user(),
            _ => match rule.as_bytes().first() {
                Some(b'>') => {
                    self.passwords.insert(digest(&rule[1..]));
                    self.nopass = false;
                }
                Some(b'<') => {
                    if !self.passwords.remove(&digest(&rule[1..])) {
                        return Err("The password you are trying to remove from the user does not exist".into());
                    }
                }
                Some(b'#') => {
                    let hash = rule[1..].to_ascii_lowercase();
                    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                        return Err("The password hash must be exactly 64 characters and contain only lowercase hexadecimal characters".into());
                    }
                    self.passwords.insert(hash);
                    self.nopass = false;
                }
                Some(b'!') => {
                    if !self.passwords.remove(&rule[1..].to_ascii_lowercase()) {
                        return Err("The password you are trying to remove from the user does not exist".into());
                    }
                }
                Some(b'~') => self.keys.push(rule[1..].to_string()),
                Some(b'&') => self.channels.push(rule[1..].to_string()),
                Some(b'+' | b'-') => {
                    let name = &lower[1..];
                    let valid = match name.strip_prefix('@') {
                        Some("all") => {
                            self.commands = vec![format!("{}@all", &lower[..1])];
                            return Ok(());
                        }
                        Some(category) => CATEGORIES.contains(&category),
                        None => known(name),
                    };
                    if !valid {
                        return Err("Unknown command or category name in ACL".into());
                    }
                    self.commands.push(lower);
                }
                _ => return Err("Syntax error".into()),
            },
        }
        Ok(())
    }

    /// Whether `password` authenticates this user.
    pub fn accepts(&self, password: &[u8]) -> bool {
        self.enabled && (self.nopass || self.passwords.contains(&digest_bytes(password)))
    }

    /// Whether the user may run `command` (`name` or `name|subcommand`), whose
    /// categories are `categories`.
    pub fn may_run(&self, command: &str, categories: &[&str]) -> bool {
        let base = command.split('|').next().unwrap_or(command);
        let mut allowed = false;
        for rule in &self.commands {
            let (grant, target) = (rule.starts_with('+'), &rule[1..]);
            let applies = match target.strip_prefix('@') {
                Some("all") => true,
                Some(category) => categories.contains(&category),
                None => target == command || target == base,
            };
            if applies {
                allowed = grant;
            }
        }
        allowed
    }

    /// Whether the user may access `key`.
    pub fn may_access_key(&self, key: &[u8]) -> bool {
        self.keys.iter().any(|p| glob::matches(p.as_bytes(), key))
    }

    /// Whether the user may access every key (`~*`).
    pub fn may_access_all_keys(&self) -> bool {
        self.keys.iter().any(|k| k == "*")
    }

    /// Whether the user may use `channel`.
    pub fn may_use_channel(&self, channel: &[u8]) -> bool {
        self.channels.iter().any(|p| glob::matches(p.as_bytes(), channel))
    }

    /// Whether every command, key and channel is allowed (checks can be skipped).
    pub fn is_unrestricted(&self) -> bool {
        self.commands == ["+@all"] && self.keys.iter().any(|k| k == "*") && self.channels.iter().any(|c| c == "*")
    }

    /// The rules that describe the user, as ACL LIST shows them after the name.
    pub fn describe(&self) -> String {
        let mut parts = vec![if self.enabled { "on" } else { "off" }.to_string()];
        if self.nopass {
            parts.push("nopass".into());
        }
        parts.extend(self.passwords.iter().map(|p| format!("#{p}")));
        parts.extend(self.keys.iter().map(|k| format!("~{k}")));
        if self.channels.is_empty() {
            parts.push("resetchannels".into());
        } else {
            parts.extend(self.channels.iter().map(|c| format!("&{c}")));
        }
        parts.push(self.commands.join(" "));
        parts.join(" ")
    }
}

/// SHA-256 hex digest of a password.
pub fn digest(password: &str) -> String {
    digest_bytes(password.as_bytes())
}

fn digest_bytes(password: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, password)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Every user but an untouched `default`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Users {
    /// Users by name; `default` appears once changed.
    pub users: BTreeMap<String, User>,
}

impl Users {
    /// The user called `name` (`default` always exists).
    pub fn get(&self, name: &str) -> Option<User> {
        match self.users.get(name) {
            Some(user) => Some(user.clone()),
            None if name == "default" => Some(User::default_user()),
            None => None,
        }
    }

    /// Every user name, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: BTreeSet<String> = self.users.keys().cloned().collect();
        names.insert("default".into());
        names.into_iter().collect()
    }

    /// ACL SETUSER: applies `rules` in order to the user (created when new);
    /// nothing changes when a rule is invalid. The error is Redis's whole text.
    pub fn set_user(&mut self, name: &str, rules: &[String], known: impl Fn(&str) -> bool) -> Result<(), String> {
        let mut user = self.get(name).unwrap_or_else(User::new_user);
        for rule in rules {
            user.apply(rule, &known)
                .map_err(|reason| format!("ERR Error in ACL SETUSER modifier '{rule}': {reason}"))?;
        }
        self.users.insert(name.to_string(), user);
        Ok(())
    }

    /// ACL DELUSER: how many existed. `default` cannot be removed.
    pub fn delete(&mut self, names: &[String]) -> Result<u64, String> {
        if names.iter().any(|n| n == "default") {
            return Err("ERR The 'default' user cannot be removed".into());
        }
        Ok(names.iter().filter(|n| self.users.remove(n.as_str()).is_some()).count() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(users: &mut Users, name: &str, rules: &str) -> Result<(), String> {
        let rules: Vec<String> = rules.split(' ').filter(|r| !r.is_empty()).map(String::from).collect();
        users.set_user(name, &rules, |c| ["get", "set", "flushall", "config|get"].contains(&c))
    }

    #[test]
    fn rules_describe_like_redis_7_0() {
        let mut users = Users::default();
        set(&mut users, "alice", "on >pw ~app:* +get +set").unwrap();
        let alice = users.get("alice").unwrap();
        assert_eq!(
            alice.describe(),
            "on #30c952fab122c3f9759f02a6d95c3758b246b4fee239957b2d4fee46e26170c4 ~app:* resetchannels -@all +get +set"
        );
        assert!(alice.accepts(b"pw") && !alice.accepts(b"nope"));
        assert!(alice.may_run("get", &["read", "string"]) && !alice.may_run("del", &["write", "keyspace"]));
        assert!(alice.may_access_key(b"app:1") && !alice.may_access_key(b"other"));
        assert_eq!(users.get("default").unwrap().describe(), "on nopass ~* &* +@all");
        assert_eq!(users.names(), vec!["alice".to_string(), "default".to_string()]);
    }

    #[test]
    fn categories_and_later_rules_win() {
        let mut users = Users::default();
        set(&mut users, "ops", "on nopass allkeys +@all -flushall").unwrap();
        let ops = users.get("ops").unwrap();
        assert!(ops.may_run("get", &["read"]) && !ops.may_run("flushall", &["write", "dangerous"]));
        set(&mut users, "reader", "on nopass allkeys +@read").unwrap();
        let reader = users.get("reader").unwrap();
        assert!(reader.may_run("get", &["read"]) && !reader.may_run("set", &["write"]));
        assert!(!reader.accepts(b"x") || reader.nopass);
        set(&mut users, "sub", "on nopass +config|get").unwrap();
        let sub = users.get("sub").unwrap();
        assert!(sub.may_run("config|get", &[]) && !sub.may_run("config|set", &[]));
    }

    #[test]
    fn bad_rules_change_nothing_and_use_redis_errors() {
        let mut users = Users::default();
        assert_eq!(
            set(&mut users, "bob", "on badrule"),
            Err("ERR Error in ACL SETUSER modifier 'badrule': Syntax error".into())
        );
        assert_eq!(
            set(&mut users, "bob", "+nosuch"),
            Err("ERR Error in ACL SETUSER modifier '+nosuch': Unknown command or category name in ACL".into())
        );
        assert!(users.get("bob").is_none());
        assert_eq!(
            users.delete(&["default".into()]),
            Err("ERR The 'default' user cannot be removed".into())
        );
        set(&mut users, "carol", "").unwrap();
        assert_eq!(users.delete(&["carol".into(), "ghost".into()]), Ok(1));
    }
}

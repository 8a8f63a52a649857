//! Keyspace notifications of the shard commands: which of Redis 7.0's events
//! (class, name, key) a command that ran produces, read from its reply and
//! from what was there before it ran. Commands whose events depend on what
//! they did inside (ZADD, SETBIT, BITFIELD, BITOP, PFADD, PFMERGE, RENAME,
//! COPY, SORT ... STORE) record their own; `del` of a collection a command
//! emptied follows the command's event (`Keyspace::notify_emptied`).

use redraft_common::ops::Bytes;
use redraft_common::resp::Frame;

use super::Keyspace;

/// What a notification may depend on from before the command ran.
#[derive(Clone, Copy, Default)]
pub(super) struct Before {
    /// The first key (a destination, or LTRIM's list) existed.
    existed: bool,
    /// SMOVE's member was in the destination already.
    in_destination: bool,
}

fn count(reply: &Frame) -> i64 {
    match reply {
        Frame::Integer(n) => *n,
        _ => 0,
    }
}

/// Whether a pop popped something.
fn popped(reply: &Frame) -> bool {
    match reply {
        Frame::Null | Frame::NullArray => false,
        Frame::Array(items) => !items.is_empty(),
        Frame::Pairs(items) => !items.is_empty(),
        _ => true,
    }
}

fn side(arg: &[u8], left: &'static str, right: &'static str) -> &'static str {
    if arg.eq_ignore_ascii_case(b"left") {
        left
    } else {
        right
    }
}

impl Keyspace<'_> {
    /// What [`Self::notify_command`] needs to know from before `name` runs.
    pub(super) fn before_command(&self, name: &str, args: &[Bytes]) -> Before {
        let exists = |key: &[u8]| self.load(&self.owned_key(key)).is_some();
        match name {
            "ltrim" | "sinterstore" | "sunionstore" | "sdiffstore" | "zunionstore" | "zinterstore" | "zdiffstore"
            | "zrangestore" | "geosearchstore" => Before {
                existed: exists(&args[1]),
                ..Before::default()
            },
            "smove" => Before {
                in_destination: self
                    .element(&self.owned_key(&args[2]), &crate::storage::hashed(&args[3]))
                    .is_some(),
                ..Before::default()
            },
            _ => Before::default(),
        }
    }

    /// Records the notifications of shard command `name`, which ran and
    /// answered `reply` (not an error).
    pub(super) fn notify_command(&mut self, name: &'static str, args: &[Bytes], reply: &Frame, before: Before) {
        let key = &args[1][..];
        let n = count(reply);
        match name {
            "hset" | "hmset" => self.notify(b'h', "hset", key),
            "hsetnx" if n == 1 => self.notify(b'h', "hset", key),
            "hdel" if n > 0 => self.notify(b'h', "hdel", key),
            "hincrby" | "hincrbyfloat" => self.notify(b'h', name, key),
            "lpush" | "lpushx" if n > 0 => self.notify(b'l', "lpush", key),
            "rpush" | "rpushx" if n > 0 => self.notify(b'l', "rpush", key),
            "lpop" | "rpop" if popped(reply) => self.notify(b'l', name, key),
            "lset" => self.notify(b'l', "lset", key),
            "linsert" | "lrem" if n > 0 => self.notify(b'l', name, key),
            "ltrim" if before.existed => self.notify(b'l', "ltrim", key),
            "lmove" | "rpoplpush" if matches!(reply, Frame::Bulk(_)) => {
                let (pop, push) = if name == "lmove" {
                    (side(&args[3], "lpop", "rpop"), side(&args[4], "lpush", "rpush"))
                } else {
                    ("rpop", "lpush")
                };
                self.notify(b'l', push, &args[2]);
                self.notify(b'l', pop, key);
            }
            "sadd" | "srem" if n > 0 => self.notify(b's', name, key),
            "spop" if popped(reply) => self.notify(b's', "spop", key),
            "smove" if n == 1 => {
                self.notify(b's', "srem", key);
                self.notify_emptied();
                if !before.in_destination {
                    self.notify(b's', "sadd", &args[2]);
                }
            }
            "sinterstore" | "sunionstore" | "sdiffstore" => self.notify_stored_result(b's', name, key, n, before),
            "zrem" if n > 0 => self.notify(b'z', "zrem", key),
            "zpopmin" | "zpopmax" if popped(reply) => self.notify(b'z', name, key),
            "zremrangebyscore" | "zremrangebyrank" | "zremrangebylex" if n > 0 => self.notify(b'z', name, key),
            "zunionstore" | "zinterstore" | "zdiffstore" | "zrangestore" | "geosearchstore" => {
                self.notify_stored_result(b'z', name, key, n, before)
            }
            _ => {}
        }
    }

    /// A *STORE command's event on its destination: its own when it stored
    /// something, `del` when it left nothing where a key was.
    fn notify_stored_result(&mut self, class: u8, name: &'static str, destination: &[u8], stored: i64, before: Before) {
        if stored > 0 {
            self.notify(class, name, destination);
        } else if before.existed {
            self.notify(b'g', "del", destination);
        }
    }
}

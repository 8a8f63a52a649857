//! Commands that shard nodes execute from their arguments: the collection types.
//!
//! The proxy checks arity and routes by the key positions given here; the
//! command travels to the shard as its arguments (as in Redis's own replication
//! stream), and the shard's state machine parses and executes it. One table,
//! shared by both sides, says which commands write and where their keys are.

use crate::ops::Bytes;

/// Where a command's keys are among its arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeySpec {
    /// The first argument.
    First,
    /// The first two arguments (source and destination).
    FirstTwo,
    /// Every argument after the name.
    All,
    /// The second argument (after a subcommand: OBJECT ENCODING key).
    Second,
    /// Every argument after the first (BITOP op destination source...).
    AllButFirst,
    /// A count, then that many keys (ZUNION numkeys key...).
    Counted,
    /// A destination, a count, then that many keys (ZUNIONSTORE).
    DestinationThenCounted,
    /// SORT's: the first argument and the destination of its STORE option.
    Sort,
}

/// A command executed by shard nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardCommand {
    /// Lowercase name.
    pub name: &'static str,
    /// Redis's arity: `n > 0` exactly n arguments with the name, `n < 0` at least -n.
    pub arity: i32,
    /// Whether it is replicated through the log (else served as a read).
    pub write: bool,
    /// Its keys.
    pub keys: KeySpec,
}

const fn cmd(name: &'static str, arity: i32, write: bool, keys: KeySpec) -> ShardCommand {
    ShardCommand {
        name,
        arity,
        write,
        keys,
    }
}

use KeySpec::{All, AllButFirst, Counted, DestinationThenCounted, First, FirstTwo, Second, Sort};

/// Every command shard nodes execute from their arguments (Redis 7.0 arities).
pub const SHARD_COMMANDS: &[ShardCommand] = &[
    // Hashes.
    cmd("hset", -4, true, First),
    cmd("hmset", -4, true, First),
    cmd("hsetnx", 4, true, First),
    cmd("hget", 3, false, First),
    cmd("hmget", -3, false, First),
    cmd("hdel", -3, true, First),
    cmd("hgetall", 2, false, First),
    cmd("hkeys", 2, false, First),
    cmd("hvals", 2, false, First),
    cmd("hlen", 2, false, First),
    cmd("hexists", 3, false, First),
    cmd("hincrby", 4, true, First),
    cmd("hincrbyfloat", 4, true, First),
    cmd("hstrlen", 3, false, First),
    cmd("hrandfield", -2, false, First),
    cmd("hscan", -3, false, First),
    // Lists.
    cmd("lpush", -3, true, First),
    cmd("rpush", -3, true, First),
    cmd("lpushx", -3, true, First),
    cmd("rpushx", -3, true, First),
    cmd("lpop", -2, true, First),
    cmd("rpop", -2, true, First),
    cmd("llen", 2, false, First),
    cmd("lrange", 4, false, First),
    cmd("lindex", 3, false, First),
    cmd("lset", 4, true, First),
    cmd("linsert", 5, true, First),
    cmd("lrem", 4, true, First),
    cmd("ltrim", 4, true, First),
    cmd("lpos", -3, false, First),
    cmd("lmove", 5, true, FirstTwo),
    cmd("rpoplpush", 3, true, FirstTwo),
    // Sets.
    cmd("sadd", -3, true, First),
    cmd("srem", -3, true, First),
    cmd("smembers", 2, false, First),
    cmd("sismember", 3, false, First),
    cmd("smismember", -3, false, First),
    cmd("scard", 2, false, First),
    cmd("spop", -2, true, First),
    cmd("srandmember", -2, false, First),
    cmd("smove", 4, true, FirstTwo),
    cmd("sinter", -2, false, All),
    cmd("sunion", -2, false, All),
    cmd("sdiff", -2, false, All),
    cmd("sinterstore", -3, true, All),
    cmd("sunionstore", -3, true, All),
    cmd("sdiffstore", -3, true, All),
    cmd("sscan", -3, false, First),
    cmd("sintercard", -3, false, Counted),
    // Sorted sets.
    cmd("zadd", -4, true, First),
    cmd("zrem", -3, true, First),
    cmd("zscore", 3, false, First),
    cmd("zmscore", -3, false, First),
    cmd("zincrby", 4, true, First),
    cmd("zcard", 2, false, First),
    cmd("zcount", 4, false, First),
    cmd("zlexcount", 4, false, First),
    cmd("zrange", -4, false, First),
    cmd("zrangebyscore", -4, false, First),
    cmd("zrevrangebyscore", -4, false, First),
    cmd("zrangebylex", -4, false, First),
    cmd("zrevrangebylex", -4, false, First),
    cmd("zrevrange", -4, false, First),
    cmd("zrank", 3, false, First),
    cmd("zrevrank", 3, false, First),
    cmd("zpopmin", -2, true, First),
    cmd("zpopmax", -2, true, First),
    cmd("zremrangebyscore", 4, true, First),
    cmd("zremrangebyrank", 4, true, First),
    cmd("zremrangebylex", 4, true, First),
    cmd("zscan", -3, false, First),
    cmd("zunion", -3, false, Counted),
    cmd("zinter", -3, false, Counted),
    cmd("zdiff", -3, false, Counted),
    cmd("zunionstore", -4, true, DestinationThenCounted),
    cmd("zinterstore", -4, true, DestinationThenCounted),
    cmd("zdiffstore", -4, true, DestinationThenCounted),
    cmd("zintercard", -3, false, Counted),
    cmd("zrangestore", -5, true, FirstTwo),
    cmd("zrandmember", -2, false, First),
    // Bitmaps (strings).
    cmd("setbit", 4, true, First),
    cmd("getbit", 3, false, First),
    cmd("bitcount", -2, false, First),
    cmd("bitpos", -3, false, First),
    cmd("bitop", -4, true, AllButFirst),
    cmd("bitfield", -2, true, First),
    cmd("bitfield_ro", -2, false, First),
    // HyperLogLog (strings).
    cmd("pfadd", -2, true, First),
    cmd("pfcount", -2, false, All),
    cmd("pfmerge", -2, true, All),
    // GEO (sorted sets).
    cmd("geoadd", -5, true, First),
    cmd("geopos", -2, false, First),
    cmd("geohash", -2, false, First),
    cmd("geodist", -4, false, First),
    cmd("geosearch", -7, false, First),
    cmd("geosearchstore", -8, true, FirstTwo),
    // Strings.
    cmd("lcs", -3, false, FirstTwo),
    // Lists, sets and sorted sets.
    cmd("sort", -2, true, Sort),
    cmd("sort_ro", -2, false, First),
    // Keys of any type.
    cmd("rename", 3, true, FirstTwo),
    cmd("renamenx", 3, true, FirstTwo),
    cmd("copy", -3, true, FirstTwo),
    cmd("object", 3, false, Second),
];

/// Arity as Redis declares it: `n > 0` exactly n arguments with the name, `n < 0`
/// at least `-n`.
pub fn arity_ok(arity: i32, argc: usize) -> bool {
    if arity > 0 {
        argc == arity as usize
    } else {
        argc >= arity.unsigned_abs() as usize
    }
}

/// The shard command called `name` (any case).
pub fn lookup(name: &[u8]) -> Option<&'static ShardCommand> {
    SHARD_COMMANDS
        .iter()
        .find(|c| c.name.as_bytes().eq_ignore_ascii_case(name))
}

impl ShardCommand {
    /// Whether this request writes: SORT only with STORE.
    pub fn writes(&self, args: &[Bytes]) -> bool {
        match self.keys {
            KeySpec::Sort => sort_destination(args).is_some(),
            _ => self.write,
        }
    }

    /// For a command whose keys follow a count: how many keys it names, or
    /// Redis's error for the count (checked before anything runs).
    pub fn key_count(&self, args: &[Bytes]) -> Result<usize, String> {
        let at = match self.keys {
            KeySpec::Counted => 1,
            KeySpec::DestinationThenCounted => 2,
            _ => return Ok(0),
        };
        let count = args.get(at).and_then(|n| crate::ops::parse_strict_i64(n));
        let after = args.len().saturating_sub(at + 1) as i64;
        if self.name == "sintercard" {
            return match count {
                Some(n) if n >= 1 && n <= after => Ok(n as usize),
                Some(n) if n >= 1 => Err("ERR Number of keys can't be greater than number of args".into()),
                _ => Err("ERR numkeys should be greater than 0".into()),
            };
        }
        match count {
            None => Err("ERR value is not an integer or out of range".into()),
            Some(n) if n < 1 => Err(format!(
                "ERR at least 1 input key is needed for '{}' command",
                self.name
            )),
            Some(n) if n > after => Err("ERR syntax error".into()),
            Some(n) => Ok(n as usize),
        }
    }

    /// The keys among `args` (the full request, name first).
    pub fn keys<'a>(&self, args: &'a [Bytes]) -> Vec<&'a [u8]> {
        let counted = |at: usize| match self.key_count(args) {
            Ok(n) => &args[at..at + n],
            Err(_) => &args[..0],
        };
        if self.keys == KeySpec::Sort {
            return std::iter::once(&args[1][..])
                .chain(sort_destination(args).map(|k| &k[..]))
                .collect();
        }
        if self.keys == KeySpec::DestinationThenCounted {
            return std::iter::once(&args[1][..])
                .chain(counted(3).iter().map(|k| &k[..]))
                .collect();
        }
        let keys = match self.keys {
            KeySpec::First => &args[1..2.min(args.len())],
            KeySpec::FirstTwo => &args[1..3.min(args.len())],
            KeySpec::All => &args[1..],
            KeySpec::Second => &args[2.min(args.len())..3.min(args.len())],
            KeySpec::AllButFirst => &args[2.min(args.len())..],
            KeySpec::Counted => counted(2),
            KeySpec::DestinationThenCounted | KeySpec::Sort => unreachable!("handled above"),
        };
        keys.iter().map(|k| &k[..]).collect()
    }
}

/// The destination of a SORT request's STORE option, read past the other
/// options' arguments as SORT parses them.
pub fn sort_destination(args: &[Bytes]) -> Option<&Bytes> {
    let mut j = 2;
    while j < args.len() {
        let left = args.len() - j - 1;
        match args[j].to_ascii_lowercase().as_slice() {
            b"limit" if left >= 2 => j += 2,
            b"by" | b"get" if left >= 1 => j += 1,
            b"store" if left >= 1 => return Some(&args[j + 1]),
            _ => {}
        }
        j += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_lowercase_and_arities_cover_the_keys() {
        let mut names = std::collections::BTreeSet::new();
        for c in SHARD_COMMANDS {
            assert!(names.insert(c.name), "{} twice", c.name);
            assert_eq!(c.name, c.name.to_lowercase());
            let least = c.arity.unsigned_abs() as usize;
            let needed = match c.keys {
                KeySpec::First | KeySpec::All => 2,
                KeySpec::FirstTwo | KeySpec::Second => 3,
                KeySpec::AllButFirst => 4,
                KeySpec::Counted => 3,
                KeySpec::DestinationThenCounted => 4,
                KeySpec::Sort => 2,
            };
            assert!(least >= needed, "{} has too few arguments for its keys", c.name);
        }
    }

    #[test]
    fn keys_are_found_where_the_spec_says() {
        let args: Vec<Bytes> = ["LMOVE", "a", "b", "LEFT", "RIGHT"]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect();
        assert_eq!(lookup(b"lmove").unwrap().keys(&args), vec![&b"a"[..], b"b"]);
        let args: Vec<Bytes> = ["sinter", "a", "b", "c"]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect();
        assert_eq!(lookup(b"SINTER").unwrap().keys(&args).len(), 3);
        assert!(lookup(b"get").is_none());
    }
}

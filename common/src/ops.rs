//! Shard operations: what the proxy asks a shard to do, after parsing a command.
//!
//! The proxy validates arguments and turns each Redis command into one [`ShardOp`]
//! per shard it touches; shard nodes execute reads on the leader and replicate
//! writes through Raft, then apply them deterministically. Anything that depends on
//! time is expressed so that the leader's timestamp in the Raft entry decides it
//! (relative expiries are resolved at apply time), never the replica's clock.

use serde::{Deserialize, Serialize};

use crate::ids::{ShardId, VnodeId};

/// A key or value: arbitrary bytes.
pub type Bytes = Vec<u8>;

/// An expiry as a client wrote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Expiry {
    /// Milliseconds from the moment the write is applied (EX, PX, EXPIRE, ...).
    InMs(i64),
    /// Absolute Unix time in milliseconds (EXAT, PXAT, EXPIREAT, ...).
    AtMs(i64),
}

/// The condition of SET.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SetCondition {
    /// Always set.
    Always,
    /// NX: only when the key does not exist.
    IfAbsent,
    /// XX: only when the key exists.
    IfPresent,
}

/// How SET-like commands reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SetReply {
    /// SET: `+OK`, or nil when the condition failed.
    Ok,
    /// SET ... GET and GETSET: the old value (or nil).
    OldValue,
    /// SETNX: `:1` when set, `:0` when not.
    Integer,
}

/// The condition flags of EXPIRE and friends (Redis 7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExpireCondition {
    /// No flag.
    Always,
    /// NX: only when the key has no expiry.
    IfNoExpiry,
    /// XX: only when the key has an expiry.
    IfExpiry,
    /// GT: only when the new expiry is greater (no expiry counts as infinite).
    IfGreater,
    /// LT: only when the new expiry is less (no expiry counts as infinite).
    IfLess,
    /// LT XX: only when the key has an expiry and the new one is less.
    IfExpiryAndLess,
}

/// What GETEX does to the key's expiry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GetExChange {
    /// Leave it.
    Keep,
    /// Set it.
    Set(Expiry),
    /// PERSIST: remove it.
    Persist,
}

/// How a blocked client pops from the first of its keys that has something.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PopKind {
    /// BLPOP (`left`), BRPOP: one element, answered `[key, element]`.
    List { left: bool },
    /// BLMPOP: up to `count` elements, answered `[key, [elements]]`.
    ListMany { left: bool, count: u64 },
    /// BLMOVE, BRPOPLPUSH: one element moved onto `dest`, answered as the element.
    Move {
        dest: Bytes,
        from_left: bool,
        to_left: bool,
    },
    /// BZPOPMIN (`min`), BZPOPMAX: answered `[key, member, score]`.
    ZSet { min: bool },
    /// BZMPOP: up to `count` members, answered `[key, [[member, score], ...]]`.
    ZSetMany { min: bool, count: u64 },
}

impl PopKind {
    /// Redis's reply when the client's timeout passes with nothing popped:
    /// the null array, for every blocking pop (BLMOVE too).
    pub fn timed_out(&self) -> crate::resp::Frame {
        crate::resp::Frame::NullArray
    }

    /// Redis's reply when there is nothing to pop inside MULTI, where the
    /// command does not block: BLMOVE's is LMOVE's null bulk string.
    pub fn nothing_now(&self) -> crate::resp::Frame {
        match self {
            PopKind::Move { .. } => crate::resp::Frame::Null,
            _ => crate::resp::Frame::NullArray,
        }
    }
}

/// A blocking pop: `keys` (all in one shard) tried in order, the first that has
/// something popped as `kind` says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockedPop {
    pub keys: Vec<Bytes>,
    pub kind: PopKind,
}

impl BlockedPop {
    /// Every key the pop may touch: its source keys, then a move's destination.
    pub fn keys(&self) -> Vec<&[u8]> {
        let mut keys: Vec<&[u8]> = self.keys.iter().map(|k| &k[..]).collect();
        if let PopKind::Move { dest, .. } = &self.kind {
            keys.push(dest);
        }
        keys
    }
}

/// One blocked client in a [`WriteOp::ServeBlocked`] entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockedClient {
    /// The client's registration id, chosen by its proxy; the shard remembers
    /// what it popped for it under this id for a while (see shard-node `blocking`).
    pub id: u64,
    pub pop: BlockedPop,
    /// First attempt: an error (WRONGTYPE) is the client's answer, as when Redis
    /// runs the command; later attempts pass over a key of the wrong type.
    pub first: bool,
}

/// A Lua script (EVAL and friends) run atomically by the shard that owns its
/// `keys`. The body travels with every call (in the Raft entry for a write), so
/// each replica runs exactly what the leader ran, whatever scripts it has seen.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Script {
    /// The Lua source.
    pub body: Bytes,
    /// `KEYS`: every key the script may touch, all in one shard.
    pub keys: Vec<Bytes>,
    /// `ARGV`.
    pub args: Vec<Bytes>,
    /// Seeds `math.random` and the random picks of the commands it calls, so
    /// every replica makes the same choices.
    pub seed: u64,
    /// FCALL: the function to call; `body` is then its library's code.
    pub function: Option<String>,
}

impl Script {
    /// The SHA1 of a script's body as EVALSHA names it: 40 lowercase hex digits.
    pub fn sha(body: &[u8]) -> String {
        sha1_smol::Sha1::from(body).digest().to_string()
    }
}

/// The encoding parameters of CONFIG that OBJECT ENCODING follows (Redis
/// 7.0's names; the cluster's values, or Redis's defaults).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncodingLimits {
    /// `hash-max-listpack-entries`, `hash-max-listpack-value`.
    pub hash_entries: u64,
    pub hash_value: u64,
    /// `zset-max-listpack-entries`, `zset-max-listpack-value`.
    pub zset_entries: u64,
    pub zset_value: u64,
    /// `set-max-intset-entries`.
    pub set_intset_entries: u64,
}

impl Default for EncodingLimits {
    fn default() -> Self {
        EncodingLimits {
            hash_entries: 512,
            hash_value: 64,
            zset_entries: 128,
            zset_value: 64,
            set_intset_entries: 512,
        }
    }
}

/// A read, served by the leader after a linearizability check.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ReadOp {
    /// GET
    Get { key: Bytes },
    /// MGET of the keys of one shard, in the order given.
    MGet { keys: Vec<Bytes> },
    /// EXISTS of the keys of one shard (a key counts as often as it is named).
    Exists { keys: Vec<Bytes> },
    /// STRLEN
    StrLen { key: Bytes },
    /// GETRANGE with Redis's inclusive, negative-from-end indexes.
    GetRange { key: Bytes, start: i64, end: i64 },
    /// TTL (`millis: false`) or PTTL.
    Ttl { key: Bytes, millis: bool },
    /// TYPE
    Type { key: Bytes },
    /// Number of live keys in the shard (DBSIZE fans out).
    DbSize,
    /// One step of SCAN over `vnodes` (consecutive in the ring, all owned by the
    /// shard), starting in the first at the position of the SCAN cursor `from`:
    /// examines at most `count` keys. Replies `[next cursor or -1 when the run is
    /// done, keys examined, [keys...]]`.
    Scan {
        vnodes: Vec<VnodeId>,
        from: u64,
        count: u64,
        pattern: Option<Bytes>,
        kind: Option<String>,
    },
    /// WATCH: each key's revision (the log index of its last change; 0 when
    /// absent), as an array of integers.
    Revisions { keys: Vec<Bytes> },
    /// KEYS: every live key of the shard matching the glob `pattern`.
    Keys { pattern: Bytes },
    /// RANDOMKEY: a live key of the shard picked with `seed`, or nil when empty.
    RandomKey { seed: u64 },
    /// A read-only [`crate::commands::ShardCommand`], as its arguments; `seed`
    /// drives the commands that pick at random.
    Command { args: Vec<Bytes>, seed: u64 },
    /// A client's consecutive pipelined reads of one shard, sent by the proxy as
    /// one request: one linearizable read barrier for all of them, then each
    /// read, in order, from the same applied state, each with its own reply and
    /// its own ownership check (answered as a `NodeResponse::Batch`). Never nested.
    Many(Vec<ReadOp>),
    /// EXPIRETIME (`millis: false`) or PEXPIRETIME: the key's absolute expiry
    /// as a Unix time, -1 without one, -2 without the key.
    ExpireTime { key: Bytes, millis: bool },
    /// EVAL_RO, EVALSHA_RO: a script that may only read.
    Script(Script),
    /// OBJECT ENCODING: the encoding Redis would use for the key's value
    /// under these limits, or nil without the key.
    ObjectEncoding { key: Bytes, limits: EncodingLimits },
    /// DUMP: the key's value as a Redis DUMP payload, or nil without the key.
    Dump { key: Bytes },
    /// DEBUG DIGEST-VALUE of these keys (an array of hex digests, zeros for a
    /// missing key); without keys, DEBUG DIGEST's part of the whole shard:
    /// `[xor of its keys' digests (20 bytes), number of keys]`.
    Digest { keys: Option<Vec<Bytes>> },
}

/// A write, replicated through the shard's Raft log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum WriteOp {
    /// SET, SETNX, SETEX, PSETEX, GETSET.
    Set {
        key: Bytes,
        value: Bytes,
        expiry: Option<Expiry>,
        condition: SetCondition,
        keep_ttl: bool,
        reply: SetReply,
    },
    /// GETDEL
    GetDel { key: Bytes },
    /// GETEX
    GetEx { key: Bytes, change: GetExChange },
    /// MSET of the pairs of one shard.
    MSet { pairs: Vec<(Bytes, Bytes)> },
    /// MSETNX; all keys are in this shard.
    MSetNx { pairs: Vec<(Bytes, Bytes)> },
    /// DEL / UNLINK of the keys of one shard.
    Del { keys: Vec<Bytes> },
    /// INCR, DECR, INCRBY, DECRBY.
    IncrBy { key: Bytes, delta: i64 },
    /// INCRBYFLOAT
    IncrByFloat { key: Bytes, delta: f64 },
    /// APPEND
    Append { key: Bytes, value: Bytes },
    /// SETRANGE
    SetRange { key: Bytes, offset: u64, value: Bytes },
    /// EXPIRE, PEXPIRE, EXPIREAT, PEXPIREAT.
    Expire {
        key: Bytes,
        expiry: Expiry,
        condition: ExpireCondition,
    },
    /// PERSIST
    Persist { key: Bytes },
    /// FLUSHALL: every key of the shard.
    FlushAll,
    /// Background expiry: delete these keys if they are still expired at apply
    /// time. Replies with the keys it deleted (for `expired` notifications).
    PurgeExpired { keys: Vec<Bytes> },
    /// Split (placement driver only): hand `vnodes` to the new shard `child`, whose
    /// replicas are this shard's voters and whose data is already on every one of
    /// them. Replies `+OK`, also when the split was applied before.
    Split { child: ShardId, vnodes: Vec<VnodeId> },
    /// Merge, first half (placement driver only): the shard stops serving and
    /// replies with the log index of this entry (or of the earlier retirement).
    Retire,
    /// Merge, second half (placement driver only): take over `vnodes` of the
    /// retired shard `from` once this node's replica of `from` has applied its
    /// log up to `upto`. Replies `+OK`, also when already absorbed.
    Absorb {
        from: ShardId,
        vnodes: Vec<VnodeId>,
        upto: u64,
    },
    /// A writing [`crate::commands::ShardCommand`], as its arguments. `seed`
    /// drives the commands that pick at random (SPOP), so every replica picks the
    /// same elements.
    Command { args: Vec<Bytes>, seed: u64 },
    /// MULTI ... EXEC: `ops` run in order as one atomic step (reads see the
    /// writes before them), unless a `watched` key's revision is no longer the
    /// one recorded at WATCH; then nothing runs and the reply is a null array.
    /// Replies with the array of the ops' replies.
    Transaction {
        watched: Vec<(Bytes, u64)>,
        ops: Vec<ShardOp>,
    },
    /// Concurrent writes of several clients to one shard, carried by one Raft
    /// entry (one append, one replication round, one apply): applied in order,
    /// each with its own reply and its own ownership check. Built by shard nodes
    /// from a batch of requests; never nested.
    Many(Vec<WriteOp>),
    /// A blocking pop run once, without blocking (BLPOP and friends inside
    /// MULTI, as Redis runs them): the popped reply, or the command's null.
    PopFirst(BlockedPop),
    /// Blocked clients served in their blocking order (proposed by the shard's
    /// leader): for each, the reply of the first of its keys that had
    /// something, or `$-1` when none had. Replies with the array of those.
    ServeBlocked(Vec<BlockedClient>),
    /// EVAL, EVALSHA: a script run as one atomic step, on every replica.
    Script(Script),
    /// RESTORE: `BUSYKEY` when the key exists and not `replace`; otherwise
    /// the key is replaced by what `ops` (all on `key`: the value's writes,
    /// then its expiry) make, as one step. `Err`: the payload's error, which
    /// Redis gives only after the BUSYKEY check.
    Restore {
        key: Bytes,
        replace: bool,
        ops: Result<Vec<WriteOp>, String>,
    },
    /// A consistency check (placement driver only): every replica digests its
    /// data as of this entry, in the background ([`crate::consistency`]).
    /// Replies with the entry's log index.
    ComputeDigest(crate::consistency::DigestRequest),
    /// A backup's cut on this shard (placement driver only): every replica
    /// keeps a snapshot of its data as of this entry for the backup to read,
    /// and holds its answers to clients until the backup's cut is complete
    /// ([`crate::backup`]). Replies with the entry's log index.
    BackupBarrier(crate::backup::Barrier),
}

/// One operation on one shard.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ShardOp {
    /// Served by the leader without a log entry.
    Read(ReadOp),
    /// Replicated through the shard's Raft log.
    Write(WriteOp),
}

impl ShardOp {
    /// Operations of one kind as one request: `ReadOp::Many` of reads or
    /// `WriteOp::Many` of writes; `None` when `ops` mixes the two or is empty.
    pub fn many(ops: Vec<ShardOp>) -> Option<ShardOp> {
        let (mut reads, mut writes) = (Vec::new(), Vec::new());
        for op in ops {
            match op {
                ShardOp::Read(read) => reads.push(read),
                ShardOp::Write(write) => writes.push(write),
            }
        }
        match (reads.is_empty(), writes.is_empty()) {
            (false, true) => Some(ShardOp::Read(ReadOp::Many(reads))),
            (true, false) => Some(ShardOp::Write(WriteOp::Many(writes))),
            _ => None,
        }
    }

    /// The user keys this operation touches (for routing and ownership checks).
    pub fn keys(&self) -> Vec<&[u8]> {
        match self {
            ShardOp::Read(op) => op.keys(),
            ShardOp::Write(op) => op.keys(),
        }
    }
}

impl ReadOp {
    /// The user keys this read touches.
    pub fn keys(&self) -> Vec<&[u8]> {
        match self {
            ReadOp::Get { key }
            | ReadOp::StrLen { key }
            | ReadOp::GetRange { key, .. }
            | ReadOp::Ttl { key, .. }
            | ReadOp::ExpireTime { key, .. }
            | ReadOp::ObjectEncoding { key, .. }
            | ReadOp::Dump { key }
            | ReadOp::Type { key } => vec![key],
            ReadOp::MGet { keys } | ReadOp::Exists { keys } | ReadOp::Revisions { keys } => {
                keys.iter().map(|k| &k[..]).collect()
            }
            ReadOp::DbSize
            | ReadOp::Scan { .. }
            | ReadOp::Keys { .. }
            | ReadOp::RandomKey { .. }
            | ReadOp::Digest { keys: None } => vec![],
            ReadOp::Digest { keys: Some(keys) } => keys.iter().map(|k| &k[..]).collect(),
            ReadOp::Command { args, .. } => command_keys(args),
            ReadOp::Script(script) => script.keys.iter().map(|k| &k[..]).collect(),
            ReadOp::Many(reads) => reads.iter().flat_map(ReadOp::keys).collect(),
        }
    }
}

impl WriteOp {
    /// Whether the state machine applies this entry on its own, never batched
    /// with client writes: a split or merge (it changes which virtual nodes the
    /// shard owns) or a consistency check (it reads the data as of itself).
    pub fn runs_alone(&self) -> bool {
        matches!(
            self,
            WriteOp::Split { .. }
                | WriteOp::Retire
                | WriteOp::Absorb { .. }
                | WriteOp::ComputeDigest(_)
                | WriteOp::BackupBarrier(_)
        )
    }

    /// The user keys this write touches.
    pub fn keys(&self) -> Vec<&[u8]> {
        match self {
            WriteOp::Set { key, .. }
            | WriteOp::GetDel { key }
            | WriteOp::GetEx { key, .. }
            | WriteOp::IncrBy { key, .. }
            | WriteOp::IncrByFloat { key, .. }
            | WriteOp::Append { key, .. }
            | WriteOp::SetRange { key, .. }
            | WriteOp::Expire { key, .. }
            | WriteOp::Persist { key }
            | WriteOp::Restore { key, .. } => vec![key],
            WriteOp::MSet { pairs } | WriteOp::MSetNx { pairs } => pairs.iter().map(|(k, _)| &k[..]).collect(),
            WriteOp::Del { keys } | WriteOp::PurgeExpired { keys } => keys.iter().map(|k| &k[..]).collect(),
            WriteOp::Many(ops) => ops.iter().flat_map(WriteOp::keys).collect(),
            WriteOp::Command { args, .. } => command_keys(args),
            WriteOp::Script(script) => script.keys.iter().map(|k| &k[..]).collect(),
            WriteOp::Transaction { watched, ops } => watched
                .iter()
                .map(|(k, _)| &k[..])
                .chain(ops.iter().flat_map(ShardOp::keys))
                .collect(),
            WriteOp::PopFirst(pop) => pop.keys(),
            WriteOp::ServeBlocked(clients) => clients.iter().flat_map(|c| c.pop.keys()).collect(),
            WriteOp::FlushAll
            | WriteOp::Split { .. }
            | WriteOp::Retire
            | WriteOp::Absorb { .. }
            | WriteOp::ComputeDigest(_)
            | WriteOp::BackupBarrier(_) => vec![],
        }
    }
}

/// The keys of a shard command's arguments (none for an unknown command, which
/// the shard then rejects).
pub fn command_keys(args: &[Bytes]) -> Vec<&[u8]> {
    match args.first().and_then(|name| crate::commands::lookup(name)) {
        Some(command) => command.keys(args),
        None => vec![],
    }
}

/// Parses a decimal integer the way Redis's `string2ll` does: no spaces, no `+`,
/// no leading zeros, within `i64`.
pub fn parse_strict_i64(bytes: &[u8]) -> Option<i64> {
    if bytes.is_empty() || bytes.len() > 20 {
        return None;
    }
    let digits = bytes.strip_prefix(b"-").unwrap_or(bytes);
    if digits.is_empty() || (digits[0] == b'0' && (digits.len() > 1 || bytes[0] == b'-')) {
        return None;
    }
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(key: &str) -> ShardOp {
        ShardOp::Read(ReadOp::Get { key: key.into() })
    }

    fn del(key: &str) -> ShardOp {
        ShardOp::Write(WriteOp::Del { keys: vec![key.into()] })
    }

    #[test]
    fn many_groups_operations_of_one_kind_in_order() {
        let reads = ShardOp::many(vec![get("a"), get("b")]).expect("reads group");
        assert!(matches!(&reads, ShardOp::Read(ReadOp::Many(r)) if r.len() == 2));
        assert_eq!(reads.keys(), vec![&b"a"[..], &b"b"[..]]);
        let writes = ShardOp::many(vec![del("c"), del("d")]).expect("writes group");
        assert!(matches!(&writes, ShardOp::Write(WriteOp::Many(w)) if w.len() == 2));
        assert_eq!(writes.keys(), vec![&b"c"[..], &b"d"[..]]);
        assert_eq!(
            ShardOp::many(vec![get("a"), del("c")]),
            None,
            "reads and writes never share a request"
        );
        assert_eq!(ShardOp::many(Vec::new()), None);
    }
}

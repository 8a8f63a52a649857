//! `redraft ctl import` and `redraft ctl export`: moving a dataset between
//! Redis and Redraft.
//!
//! From a running Redis: SCAN, then DUMP and PTTL of each key, then RESTORE
//! into Redraft through its proxy, pipelined batch by batch (DUMP payloads
//! are the same bytes on both sides: `redraft_common::rdb`). From and to an
//! RDB file: the file read or written here, the keys restored or dumped the
//! same way. Every step talks RESP over plain TCP, so the source can be any
//! Redis 6.x-7.x and the target any Redraft proxy.

use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use redraft_common::rdb;
use redraft_common::resp::Frame;

/// Keys per SCAN step and per pipelined batch.
const BATCH: usize = 500;
/// Connections a batch of RESTOREs is spread over, so the proxy sends them
/// to the shards together.
const WRITERS: usize = 4;

/// A blocking RESP connection with pipelining.
pub struct Conn {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
    buffer: Vec<u8>,
}

impl Conn {
    /// Connects to `addr` and authenticates with `auth` (`password` or
    /// `user:password`) when given.
    pub fn open(addr: &str, auth: Option<&str>) -> Result<Conn> {
        let stream = TcpStream::connect(addr).with_context(|| format!("cannot reach {addr}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        let mut conn = Conn {
            writer: stream.try_clone()?,
            reader: BufReader::new(stream),
            buffer: Vec::new(),
        };
        if let Some(auth) = auth {
            let args: Vec<&[u8]> = match auth.split_once(':') {
                Some((user, password)) => vec![b"AUTH", user.as_bytes(), password.as_bytes()],
                None => vec![b"AUTH", auth.as_bytes()],
            };
            conn.call(&args)?;
        }
        Ok(conn)
    }

    /// Sends one command without waiting for its reply.
    pub fn send(&mut self, args: &[&[u8]]) -> Result<()> {
        let frame = Frame::Array(args.iter().map(|a| Frame::Bulk(a.to_vec())).collect());
        self.writer.write_all(&frame.to_bytes())?;
        Ok(())
    }

    /// The next reply.
    pub fn read(&mut self) -> Result<Frame> {
        loop {
            if let Some((frame, used)) = Frame::parse(&self.buffer).map_err(|e| anyhow!("bad reply: {e:?}"))? {
                self.buffer.drain(..used);
                return Ok(frame);
            }
            let mut chunk = [0u8; 64 * 1024];
            let n = self.reader.read(&mut chunk)?;
            if n == 0 {
                bail!("the server closed the connection");
            }
            self.buffer.extend_from_slice(&chunk[..n]);
        }
    }

    /// One command and its reply; an error reply is an error.
    pub fn call(&mut self, args: &[&[u8]]) -> Result<Frame> {
        self.send(args)?;
        match self.read()? {
            Frame::Error(e) => bail!("{}: {e}", String::from_utf8_lossy(args[0])),
            reply => Ok(reply),
        }
    }
}

/// One SCAN step: the next cursor and the keys.
fn scan(conn: &mut Conn, cursor: u64, pattern: Option<&str>) -> Result<(u64, Vec<Vec<u8>>)> {
    let cursor_text = cursor.to_string();
    let count = BATCH.to_string();
    let mut args: Vec<&[u8]> = vec![b"SCAN", cursor_text.as_bytes(), b"COUNT", count.as_bytes()];
    if let Some(pattern) = pattern {
        args.extend([&b"MATCH"[..], pattern.as_bytes()]);
    }
    match conn.call(&args)? {
        Frame::Array(parts) if parts.len() == 2 => {
            let next = match &parts[0] {
                Frame::Bulk(b) => String::from_utf8_lossy(b).parse()?,
                other => bail!("bad SCAN cursor {other:?}"),
            };
            let keys = match &parts[1] {
                Frame::Array(keys) => keys
                    .iter()
                    .filter_map(|k| match k {
                        Frame::Bulk(b) => Some(b.clone()),
                        _ => None,
                    })
                    .collect(),
                other => bail!("bad SCAN keys {other:?}"),
            };
            Ok((next, keys))
        }
        other => bail!("bad SCAN reply {other:?}"),
    }
}

/// A key, its DUMP payload, and its expiry in milliseconds (relative or
/// absolute, as the caller says; 0: none).
type Dumped = (Vec<u8>, Vec<u8>, i64);

/// DUMP and PTTL of `keys`, pipelined: each key's payload and remaining
/// milliseconds (0: no expiry); keys gone meanwhile are left out.
fn dump_keys(conn: &mut Conn, keys: Vec<Vec<u8>>) -> Result<Vec<Dumped>> {
    for key in &keys {
        conn.send(&[b"DUMP", key])?;
        conn.send(&[b"PTTL", key])?;
    }
    let mut out = Vec::with_capacity(keys.len());
    for key in keys {
        let (payload, ttl) = (conn.read()?, conn.read()?);
        match (payload, ttl) {
            (Frame::Bulk(payload), Frame::Integer(ttl)) if ttl != -2 => out.push((key, payload, ttl.max(0))),
            (Frame::Null, _) | (_, Frame::Integer(-2)) => {}
            (Frame::Error(e), _) | (_, Frame::Error(e)) => bail!("DUMP {}: {e}", String::from_utf8_lossy(&key)),
            other => bail!("unexpected DUMP/PTTL replies {other:?}"),
        }
    }
    Ok(out)
}

/// The target's connections.
pub(crate) struct Writers(Vec<Conn>);

impl Writers {
    pub(crate) fn open(target: &str) -> Result<Writers> {
        Ok(Writers(
            (0..WRITERS).map(|_| Conn::open(target, None)).collect::<Result<_>>()?,
        ))
    }

    /// RESTORE ... REPLACE of `items` (`ttl` relative ms, or absolute with
    /// `absolute`), pipelined and spread over the connections; fails on the
    /// first error.
    pub(crate) fn restore(&mut self, items: &[Dumped], absolute: bool) -> Result<()> {
        let share = items.len().div_ceil(self.0.len()).max(1);
        for (conn, part) in self.0.iter_mut().zip(items.chunks(share)) {
            for (key, payload, ttl) in part {
                let ttl = ttl.to_string();
                let mut args: Vec<&[u8]> = vec![b"RESTORE", key, ttl.as_bytes(), payload, b"REPLACE"];
                if absolute {
                    args.push(b"ABSTTL");
                }
                conn.send(&args)?;
            }
        }
        for (conn, part) in self.0.iter_mut().zip(items.chunks(share)) {
            for (key, ..) in part {
                if let Frame::Error(e) = conn.read()? {
                    bail!("RESTORE {}: {e}", String::from_utf8_lossy(key));
                }
            }
        }
        Ok(())
    }

    pub(crate) fn first(&mut self) -> &mut Conn {
        &mut self.0[0]
    }
}

pub(crate) fn dbsize(conn: &mut Conn) -> Result<i64> {
    match conn.call(&[b"DBSIZE"])? {
        Frame::Integer(n) => Ok(n),
        other => bail!("bad DBSIZE reply {other:?}"),
    }
}

/// Keeps a copy under `per_second` keys per second (0: no limit).
struct Pace {
    per_second: u64,
    started: Instant,
    done: u64,
}

impl Pace {
    fn wait(&mut self, more: usize) {
        self.done += more as u64;
        if self.per_second > 0 {
            let due = Duration::from_secs_f64(self.done as f64 / self.per_second as f64);
            if let Some(early) = due.checked_sub(self.started.elapsed()) {
                std::thread::sleep(early);
            }
        }
    }
}

/// What `import --from-redis` is told.
pub struct FromRedis<'a> {
    pub source: &'a str,
    pub auth: Option<&'a str>,
    pub pattern: Option<&'a str>,
    pub keys_per_second: u64,
    pub cursor: u64,
    pub passes: u32,
}

/// Copies a running Redis's keyspace into the cluster behind `target`.
pub fn import_from_redis(options: &FromRedis<'_>, target: &str) -> Result<()> {
    let mut source = Conn::open(options.source, options.auth)?;
    let mut into = Writers::open(target)?;
    let mut pace = Pace {
        per_second: options.keys_per_second,
        started: Instant::now(),
        done: 0,
    };
    let mut copied = 0u64;
    for pass in 1..=options.passes.max(1) {
        let mut cursor = if pass == 1 { options.cursor } else { 0 };
        loop {
            let (next, keys) = scan(&mut source, cursor, options.pattern)?;
            let items = dump_keys(&mut source, keys)?;
            into.restore(&items, false)?;
            copied += items.len() as u64;
            pace.wait(items.len());
            eprintln!("pass {pass}: {copied} keys copied; resume with --cursor {next}");
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    let (theirs, ours) = (dbsize(&mut source)?, dbsize(into.first())?);
    println!(
        "copied {copied} keys in {:.1}s; the source holds {theirs} keys, the cluster {ours}",
        pace.started.elapsed().as_secs_f64()
    );
    if options.passes <= 1 {
        println!(
            "keys written to the source during the copy may be missing: run again with --passes 2 to pick them up"
        );
    }
    Ok(())
}

/// Loads an RDB file's keys (database `db`) into the cluster behind `target`.
pub fn import_rdb(path: &std::path::Path, db: Option<u64>, target: &str) -> Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let file = rdb::read_file(&bytes).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let wanted = db.unwrap_or(0);
    if db.is_none() {
        if let Some(other) = file.entries.iter().map(|e| e.db).find(|&d| d != 0) {
            bail!("the file holds keys of database {other}; Redraft has one keyspace: choose a database with --db N");
        }
    }
    let mut into = Writers::open(target)?;
    for code in &file.functions {
        into.first().call(&[b"FUNCTION", b"LOAD", b"REPLACE", code])?;
    }
    let entries: Vec<&rdb::Entry> = file.entries.iter().filter(|e| e.db == wanted).collect();
    let (loaded, expired) = load_entries(&mut into, &entries)?;
    println!(
        "loaded {loaded} keys of database {wanted} from {} ({expired} already expired, skipped; {} function libraries)",
        path.display(),
        file.functions.len()
    );
    Ok(())
}

/// RESTOREs `entries` (absolute expiries) through `into`, batch by batch;
/// keys already expired are skipped. Keys loaded and skipped.
pub(crate) fn load_entries(into: &mut Writers, entries: &[&rdb::Entry]) -> Result<(u64, u64)> {
    let now = redraft_common::now_ms() as i64;
    let (mut loaded, mut expired) = (0u64, 0u64);
    for chunk in entries.chunks(BATCH) {
        let mut items = Vec::with_capacity(chunk.len());
        for entry in chunk {
            match entry.expires_at_ms {
                Some(at) if at <= now => expired += 1,
                at => items.push((entry.key.clone(), rdb::dump(&entry.value), at.unwrap_or(0))),
            }
        }
        into.restore(&items, true)?;
        loaded += items.len() as u64;
    }
    Ok((loaded, expired))
}

/// Writes the cluster's keyspace (behind `target`) as an RDB file that
/// redis-server loads at start-up.
pub fn export_rdb(path: &std::path::Path, target: &str) -> Result<()> {
    let mut from = Conn::open(target, None)?;
    let now = redraft_common::now_ms() as i64;
    let mut entries = Vec::new();
    let mut cursor = 0;
    loop {
        let (next, keys) = scan(&mut from, cursor, None)?;
        for (key, payload, ttl) in dump_keys(&mut from, keys)? {
            let value = rdb::restore(&payload).map_err(|e| anyhow!("{}: {e}", String::from_utf8_lossy(&key)))?;
            entries.push(rdb::Entry {
                db: 0,
                key,
                value,
                expires_at_ms: (ttl > 0).then_some(now + ttl),
            });
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    let partial = path.with_extension("partial");
    std::fs::write(&partial, rdb::write_file(&entries))?;
    std::fs::rename(&partial, path)?;
    println!("wrote {} keys to {}", entries.len(), path.display());
    Ok(())
}

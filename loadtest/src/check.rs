//! The checking workload: concurrent clients on a small key set, each recording
//! every operation it invokes and what came back, for the linearizability checker.
//!
//! Values are integers (so INCR always applies) and every SET writes a value never
//! written before, which makes stale and lost writes visible. A definite refusal
//! (`-TRYAGAIN`, `-CLUSTERDOWN`: never applied) drops the operation; a timeout, a
//! lost connection or `-ERR timeout; write may have been applied` records it with
//! an unknown outcome, and the client reconnects.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use redraft_common::resp::Frame;

use crate::client::Connection;
use crate::history::{Input, Operation, Output};

/// Parameters of a checking run.
#[derive(Clone, Debug)]
pub struct CheckConfig {
    /// RESP endpoint.
    pub target: SocketAddr,
    /// Concurrent clients.
    pub clients: usize,
    /// Keys (`check:0` ..).
    pub keys: usize,
    /// How long to run.
    pub duration: Duration,
    /// A request without an answer after this long has an unknown outcome.
    pub timeout: Duration,
    /// Seed.
    pub seed: u64,
}

fn key(i: usize) -> String {
    format!("check:{i}")
}

/// Runs the workload, then reads every key once more (so the final state is part
/// of the history), and returns the history.
pub async fn run(config: CheckConfig) -> Result<Vec<Operation>> {
    let start = Instant::now();
    let unique = Arc::new(AtomicI64::new(1_000));
    // Clear the keys first (their previous values are not part of the history).
    let mut conn = Connection::connect(config.target).await?;
    for k in 0..config.keys {
        request(&mut conn, &["DEL", &key(k)], config.timeout).await?;
    }
    let mut tasks = Vec::new();
    for c in 0..config.clients {
        let (cfg, unique) = (config.clone(), unique.clone());
        tasks.push(tokio::spawn(async move { client(c as u32, cfg, unique, start).await }));
    }
    let mut history = Vec::new();
    for t in tasks {
        history.extend(t.await??);
    }
    // Final reads, after every client stopped: they must see every acknowledged write.
    let mut conn = Connection::connect(config.target).await?;
    for k in 0..config.keys {
        let call_ns = start.elapsed().as_nanos() as u64;
        for _ in 0..20 {
            let reply = request(&mut conn, &["GET", &key(k)], config.timeout).await;
            if let Ok(frame @ (Frame::Bulk(_) | Frame::Null)) = reply {
                history.push(Operation {
                    client: u32::MAX,
                    key: key(k),
                    input: Input::Get,
                    output: Some(Output::Value(parse_value(&frame))),
                    call_ns,
                    return_ns: Some(start.elapsed().as_nanos() as u64),
                });
                break;
            }
            if reply.is_err() {
                conn = Connection::connect(config.target).await?;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    Ok(history)
}

fn parse_value(frame: &Frame) -> Option<i64> {
    match frame {
        Frame::Bulk(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

async fn request(conn: &mut Connection, args: &[&str], timeout: Duration) -> Result<Frame> {
    let mut buf = Vec::new();
    Frame::Array(args.iter().map(|a| Frame::bulk(a.as_bytes())).collect()).encode(&mut buf);
    tokio::time::timeout(timeout, async {
        conn.send(&buf).await?;
        conn.read().await
    })
    .await?
}

async fn client(id: u32, config: CheckConfig, unique: Arc<AtomicI64>, start: Instant) -> Result<Vec<Operation>> {
    let mut rng = SmallRng::seed_from_u64(config.seed.wrapping_add(u64::from(id)));
    let mut history = Vec::new();
    let mut conn = None;
    while start.elapsed() < config.duration {
        if conn.is_none() {
            match Connection::connect(config.target).await {
                Ok(c) => conn = Some(c),
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
        }
        let k = key(rng.gen_range(0..config.keys));
        let input = match rng.gen_range(0..11) {
            0..=3 => Input::Get,
            4..=5 => Input::Set(unique.fetch_add(1, Ordering::Relaxed)),
            6 => Input::Del,
            7 => Input::Swap(unique.fetch_add(1, Ordering::Relaxed)),
            8 => Input::SetIfAbsent(unique.fetch_add(1, Ordering::Relaxed)),
            _ => Input::Incr,
        };
        let (v, args): (String, Vec<&str>) = match &input {
            Input::Get => (String::new(), vec!["GET"]),
            Input::Set(v) => (v.to_string(), vec!["SET"]),
            Input::Del => (String::new(), vec!["DEL"]),
            Input::Swap(v) | Input::SetIfAbsent(v) => (v.to_string(), vec!["SET"]),
            Input::Incr => (String::new(), vec!["INCR"]),
        };
        let mut full = args.clone();
        full.push(&k);
        if !v.is_empty() {
            full.push(&v);
        }
        match input {
            Input::Swap(_) => full.push("GET"),
            Input::SetIfAbsent(_) => full.push("NX"),
            _ => {}
        }
        let call_ns = start.elapsed().as_nanos() as u64;
        let reply = request(conn.as_mut().expect("connected"), &full, config.timeout).await;
        let return_ns = Some(start.elapsed().as_nanos() as u64);
        let output = match reply {
            Err(_) => {
                conn = None; // its reply may still arrive: never reuse the connection
                None
            }
            Ok(Frame::Error(e)) if e.starts_with("TRYAGAIN") || e.starts_with("CLUSTERDOWN") => continue,
            Ok(Frame::Error(e)) if e.contains("may have been applied") => None,
            Ok(Frame::Error(e)) => anyhow::bail!("unexpected error reply to {full:?}: {e}"),
            Ok(frame) => Some(match (&input, frame) {
                (Input::Get | Input::Swap(_), f) => Output::Value(parse_value(&f)),
                (Input::Set(_) | Input::SetIfAbsent(_), Frame::Simple(_)) => Output::Ok,
                (Input::SetIfAbsent(_), Frame::Null) => Output::Value(None),
                (Input::Del | Input::Incr, Frame::Integer(n)) => Output::Int(n),
                (_, other) => anyhow::bail!("unexpected reply to {full:?}: {other:?}"),
            }),
        };
        let return_ns = if output.is_some() { return_ns } else { None };
        history.push(Operation {
            client: id,
            key: k,
            input,
            output,
            call_ns,
            return_ns,
        });
    }
    Ok(history)
}

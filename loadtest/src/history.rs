//! Histories of concurrent operations, as recorded by `redraft-bench check`.
//!
//! One [`Operation`] per client request: what was asked, what came back, and when
//! it was invoked and answered. An operation whose outcome is unknown (timeout,
//! connection lost, `-ERR timeout; write may have been applied`) has no return
//! time: it may take effect at any moment after its invocation, or never. Written
//! as JSON lines, one operation per line.

use std::io::{BufRead, Write};
use std::path::Path;

use anyhow::Result;
use serde::{Deserialize, Serialize};

/// What a client asked for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "f", content = "arg")]
pub enum Input {
    /// GET key
    Get,
    /// SET key n
    Set(i64),
    /// DEL key
    Del,
    /// SET key n GET: write and return the previous value
    Swap(i64),
    /// INCR key
    Incr,
    /// SET key n NX: write only if the key is absent (a compare-and-set)
    SetIfAbsent(i64),
}

/// What came back (only for operations that completed).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "type", content = "value")]
pub enum Output {
    /// A value or nil (GET, SWAP).
    Value(Option<i64>),
    /// An integer reply (DEL count, INCR result).
    Int(i64),
    /// `+OK`.
    Ok,
}

/// One operation of the history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    /// Client that issued it.
    pub client: u32,
    /// The key.
    pub key: String,
    /// The request.
    pub input: Input,
    /// The reply; `None` when the outcome is unknown.
    pub output: Option<Output>,
    /// Invocation time, nanoseconds since the start of the run.
    pub call_ns: u64,
    /// Return time; `None` when the outcome is unknown.
    pub return_ns: Option<u64>,
}

/// Writes a history as JSON lines.
pub fn write(path: &Path, history: &[Operation]) -> Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for op in history {
        serde_json::to_writer(&mut out, op)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

/// Reads a history written by [`write`].
pub fn read(path: &Path) -> Result<Vec<Operation>> {
    let file = std::io::BufReader::new(std::fs::File::open(path)?);
    let mut ops = Vec::new();
    for line in file.lines() {
        let line = line?;
        if !line.trim().is_empty() {
            ops.push(serde_json::from_str(&line)?);
        }
    }
    Ok(ops)
}

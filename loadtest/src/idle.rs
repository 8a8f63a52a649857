//! The idle cost of Raft groups: CPU and memory of shard nodes that host many
//! shards and serve nothing.
//!
//! Starts a local cluster with `redraft up --detach` (the binary named by the
//! caller), waits for it to settle, then samples each shard node's CPU time
//! (`/proc/PID/stat`, user + system) over a window and its resident memory
//! (`/proc/PID/status`), and stops the cluster. Linux only, like the rest of the
//! harness's process handling.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Serialize;

/// One shard node's idle cost.
#[derive(Clone, Debug, Serialize)]
pub struct IdleNode {
    /// Shards in the cluster (each node hosts a replica of every shard with 3 nodes).
    pub shards: u32,
    /// The node's name in `up.json`.
    pub node: String,
    /// Percent of one core used over the window.
    pub cpu_percent: f64,
    /// Resident memory at the end of the window, MiB.
    pub rss_mib: f64,
}

/// How to run one measurement.
#[derive(Clone, Debug)]
pub struct IdleConfig {
    /// The `redraft` binary.
    pub redraft: PathBuf,
    /// Shard nodes.
    pub nodes: u16,
    /// Time between "ready" and the start of the window (elections, snapshots).
    pub settle: Duration,
    /// The measured window.
    pub window: Duration,
    /// RESP port of the proxy; QUIC ports start at `base_port`.
    pub port: u16,
    /// First QUIC port.
    pub base_port: u16,
    /// Extra arguments for every shard node.
    pub node_args: Vec<String>,
}

/// Seconds of CPU (user + system) a process has used so far.
fn cpu_seconds(pid: u32, ticks_per_sec: f64) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may contain spaces) start after ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 here.
    let ticks: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    Ok(ticks / ticks_per_sec)
}

/// Resident memory of a process, MiB.
fn rss_mib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")?;
    Ok(kib / 1024.0)
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Runs the cluster with `shards` shards in a temporary folder under `work` and
/// measures every shard node.
pub fn measure(config: &IdleConfig, shards: u32, work: &Path) -> Result<Vec<IdleNode>> {
    let dir = work.join(format!("idle-{shards}"));
    let _ = std::fs::remove_dir_all(&dir);
    let status = Command::new(&config.redraft)
        .args(["up", "--detach", "--dir"])
        .arg(&dir)
        .args(["--shards", &shards.to_string(), "--nodes", &config.nodes.to_string()])
        .args([
            "--port",
            &config.port.to_string(),
            "--base-port",
            &config.base_port.to_string(),
        ])
        .args(config.node_args.iter().map(|a| format!("--node-arg={a}")))
        .status()
        .with_context(|| format!("starting {}", config.redraft.display()))?;
    if !status.success() {
        bail!("`redraft up` failed with {status}");
    }
    let result = sample(config, shards, &dir);
    let _ = Command::new(&config.redraft).args(["down", "--dir"]).arg(&dir).status();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn sample(config: &IdleConfig, shards: u32, dir: &Path) -> Result<Vec<IdleNode>> {
    let up: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("up.json"))?)?;
    let nodes: Vec<(String, u32)> = up["nodes"]
        .as_array()
        .context("up.json has no nodes")?
        .iter()
        .filter_map(|n| Some((n["name"].as_str()?.to_string(), n["pid"].as_u64()? as u32)))
        .collect();
    std::thread::sleep(config.settle);
    let ticks = clock_ticks();
    let before: Vec<f64> = nodes
        .iter()
        .map(|(_, pid)| cpu_seconds(*pid, ticks))
        .collect::<Result<_>>()?;
    let started = std::time::Instant::now();
    std::thread::sleep(config.window);
    let elapsed = started.elapsed().as_secs_f64();
    nodes
        .iter()
        .zip(before)
        .map(|((name, pid), before)| {
            Ok(IdleNode {
                shards,
                node: name.clone(),
                cpu_percent: (cpu_seconds(*pid, ticks)? - before) / elapsed * 100.0,
                rss_mib: rss_mib(*pid)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_own_cpu_and_memory() {
        let pid = std::process::id();
        let ticks = clock_ticks();
        let start = cpu_seconds(pid, ticks).unwrap();
        let mut x = 0u64;
        let deadline = std::time::Instant::now() + Duration::from_millis(300);
        while std::time::Instant::now() < deadline {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        assert!(x != 1);
        assert!(cpu_seconds(pid, ticks).unwrap() > start, "burned CPU is counted");
        assert!(rss_mib(pid).unwrap() > 1.0);
    }
}

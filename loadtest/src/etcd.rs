//! The reference with Redraft's guarantees: a closed-loop workload of puts or
//! linearizable gets against etcd's v3 API, so benchmarks can show Redraft
//! against the store a user would otherwise pick for a strongly consistent
//! key-value store.
//!
//! Shaped like etcd's own `benchmark put` and `benchmark range`: many concurrent
//! requests over a few gRPC connections (HTTP/2 multiplexes them), every request
//! sent to the leader (a follower would forward it, adding a hop Redraft's
//! proxy does not pay), the value size and uniform key space of the Redraft
//! run it is compared with. A put is acknowledged once a quorum has it in its
//! fsynced WAL; a get without `serializable` is a linearizable read
//! (ReadIndex). Both are what Redraft's SET and GET promise.

use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use etcd_client::Client;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::workload::Generator;

/// What the workload sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EtcdMix {
    /// Puts.
    Set,
    /// Linearizable gets.
    Get,
}

/// One etcd run.
#[derive(Clone, Debug)]
pub struct EtcdConfig {
    /// Client URLs of the members (`http://127.0.0.1:2379`, ...).
    pub endpoints: Vec<String>,
    /// Puts or gets.
    pub mix: EtcdMix,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// gRPC connections the requests share.
    pub connections: usize,
    /// How long to run.
    pub duration: Duration,
    /// Distinct keys.
    pub keys: u64,
    /// Value size in bytes.
    pub value_size: usize,
    /// Random seed.
    pub seed: u64,
}

/// What a run measured.
#[derive(Clone, Debug, Serialize)]
pub struct EtcdResult {
    /// Puts or gets.
    pub mix: EtcdMix,
    /// Requests completed.
    pub requests: u64,
    /// Requests that failed.
    pub errors: u64,
    /// Seconds the run lasted.
    pub elapsed_s: f64,
    /// Completed requests per second.
    pub throughput: f64,
    /// Median latency, µs.
    pub p50_us: u64,
    /// 99th percentile latency, µs.
    pub p99_us: u64,
}

/// The client URL of the member that leads, among `endpoints`.
async fn leader_endpoint(endpoints: &[String]) -> Result<String> {
    for endpoint in endpoints {
        let Ok(mut client) = Client::connect([endpoint], None).await else {
            continue;
        };
        let Ok(status) = client.status().await else {
            continue;
        };
        if status.header().is_some_and(|h| h.member_id() == status.leader()) {
            return Ok(endpoint.clone());
        }
    }
    Err(anyhow!("no member of {endpoints:?} says it leads"))
}

/// Runs the workload against the leader of `config.endpoints`.
pub async fn run(config: &EtcdConfig) -> Result<EtcdResult> {
    let leader = leader_endpoint(&config.endpoints).await?;
    let mut clients = Vec::with_capacity(config.connections.max(1));
    for _ in 0..config.connections.max(1) {
        clients.push(
            Client::connect([&leader], None)
                .await
                .with_context(|| format!("connecting to {leader}"))?,
        );
    }
    let started = Instant::now();
    let deadline = started + config.duration;
    let tasks: Vec<_> = (0..config.concurrency.max(1))
        .map(|i| {
            let mut client = clients[i % clients.len()].clone();
            let config = config.clone();
            tokio::spawn(async move {
                let mut rng = rand::rngs::SmallRng::seed_from_u64(config.seed.wrapping_add(i as u64));
                let value = vec![b'x'; config.value_size];
                let mut latency = crate::runner::histogram();
                let mut errors = 0u64;
                while Instant::now() < deadline {
                    let key = Generator::key(rng.gen_range(0..config.keys.max(1)));
                    let sent = Instant::now();
                    let outcome = match config.mix {
                        EtcdMix::Set => client.put(key, value.clone(), None).await.map(|_| ()),
                        EtcdMix::Get => client.get(key, None).await.map(|_| ()),
                    };
                    match outcome {
                        Ok(()) => latency.saturating_record(sent.elapsed().as_micros() as u64),
                        Err(_) => errors += 1,
                    }
                }
                (latency, errors)
            })
        })
        .collect();
    let mut latency = crate::runner::histogram();
    let mut errors = 0;
    for task in tasks {
        let (task_latency, task_errors) = task.await?;
        latency.add(&task_latency).expect("same precision");
        errors += task_errors;
    }
    let elapsed_s = started.elapsed().as_secs_f64();
    Ok(EtcdResult {
        mix: config.mix,
        requests: latency.len(),
        errors,
        elapsed_s,
        throughput: latency.len() as f64 / elapsed_s,
        p50_us: latency.value_at_quantile(0.5),
        p99_us: latency.value_at_quantile(0.99),
    })
}

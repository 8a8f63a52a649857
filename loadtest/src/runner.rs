//! Running a workload: closed or open loop over N connections.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::SeedableRng;
use redraft_common::resp::Frame;
use serde::{Deserialize, Serialize};

use crate::client::Connection;
use crate::workload::{Generator, Workload};

/// How a run is driven and bounded.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunConfig {
    /// RESP endpoint.
    pub target: SocketAddr,
    /// Concurrent connections.
    pub connections: usize,
    /// Requests in flight per connection (pipeline depth).
    pub pipeline: usize,
    /// Stop after this many requests in all (when set).
    pub requests: Option<u64>,
    /// Stop after this long (when set).
    pub duration: Option<Duration>,
    /// Open loop: target requests per second in all. Closed loop when unset.
    pub rate: Option<f64>,
    /// What to send.
    pub workload: Workload,
    /// Seed of the random choices.
    pub seed: u64,
    /// Show a progress bar (only on a terminal).
    pub progress: bool,
}

/// Latency percentiles in microseconds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Percentiles {
    /// Requests measured.
    pub count: u64,
    /// Mean.
    pub mean_us: f64,
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Maximum.
    pub max_us: u64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Percentiles {
        Percentiles {
            count: h.len(),
            mean_us: h.mean(),
            p50_us: h.value_at_quantile(0.5),
            p90_us: h.value_at_quantile(0.9),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}

/// One second of the run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Second {
    /// Seconds since the start.
    pub t: u64,
    /// Requests completed in this second (for a run shorter than a second, its
    /// rate per second).
    pub requests: u64,
    /// Median latency (µs).
    pub p50_us: u64,
    /// 99th percentile latency (µs).
    pub p99_us: u64,
}

/// The outcome of a run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunResult {
    /// Name of the target (e.g. `redraft`, `redis-server`).
    pub label: String,
    /// The configuration.
    pub config: RunConfig,
    /// Requests completed.
    pub requests: u64,
    /// Requests answered with an error.
    pub errors: u64,
    /// Wall time in seconds.
    pub elapsed_s: f64,
    /// Requests per second.
    pub throughput: f64,
    /// All requests.
    pub latency: Percentiles,
    /// By operation (`get`, `set`, `incr`).
    pub by_op: BTreeMap<String, Percentiles>,
    /// Per-second timeline.
    pub timeline: Vec<Second>,
}

/// A latency histogram in µs, 1 µs to 2 minutes, three significant digits.
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds")
}

/// What one connection measured.
struct Measured {
    total: Histogram<u64>,
    by_op: BTreeMap<&'static str, Histogram<u64>>,
    seconds: Vec<Histogram<u64>>,
    errors: u64,
}

impl Measured {
    fn new() -> Measured {
        Measured {
            total: histogram(),
            by_op: BTreeMap::new(),
            seconds: Vec::new(),
            errors: 0,
        }
    }

    fn record(&mut self, op: &'static str, since_start: Duration, latency: Duration) {
        let us = (latency.as_micros() as u64).clamp(1, 120_000_000);
        self.total.saturating_record(us);
        self.by_op.entry(op).or_insert_with(histogram).saturating_record(us);
        let second = since_start.as_secs() as usize;
        while self.seconds.len() <= second {
            self.seconds.push(histogram());
        }
        self.seconds[second].saturating_record(us);
    }

    fn merge(&mut self, other: Measured) {
        self.total.add(&other.total).expect("same bounds");
        for (op, h) in other.by_op {
            self.by_op
                .entry(op)
                .or_insert_with(histogram)
                .add(&h)
                .expect("same bounds");
        }
        for (i, h) in other.seconds.into_iter().enumerate() {
            while self.seconds.len() <= i {
                self.seconds.push(histogram());
            }
            self.seconds[i].add(&h).expect("same bounds");
        }
        self.errors += other.errors;
    }
}

/// Shared bookkeeping of a run.
struct Budget {
    issued: AtomicU64,
    done: AtomicU64,
    stop: AtomicBool,
    limit: Option<u64>,
    deadline: Option<Instant>,
}

impl Budget {
    /// Claims up to `n` requests; 0 when the run is over.
    fn claim(&self, n: u64) -> u64 {
        if self.stop.load(Ordering::Relaxed) || self.deadline.is_some_and(|d| Instant::now() >= d) {
            return 0;
        }
        match self.limit {
            None => n,
            Some(limit) => {
                let before = self.issued.fetch_add(n, Ordering::Relaxed);
                limit.saturating_sub(before).min(n)
            }
        }
    }
}

/// Runs `config` and returns its measurements.
pub async fn run(label: &str, config: RunConfig) -> Result<RunResult> {
    let budget = Arc::new(Budget {
        issued: AtomicU64::new(0),
        done: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        limit: config.requests,
        deadline: config.duration.map(|d| Instant::now() + d),
    });
    let generator = Arc::new(Generator::new(config.workload.clone()));
    let start = Instant::now();
    let bar = progress_bar(&config, budget.clone());
    let mut tasks = Vec::new();
    for c in 0..config.connections {
        let (budget, generator, cfg) = (budget.clone(), generator.clone(), config.clone());
        tasks.push(tokio::spawn(async move {
            connection_loop(c, cfg, budget, generator, start).await
        }));
    }
    let mut measured = Measured::new();
    let mut failure = None;
    for task in tasks {
        match task.await? {
            Ok(m) => measured.merge(m),
            Err(e) => {
                budget.stop.store(true, Ordering::Relaxed);
                failure = Some(e);
            }
        }
    }
    if let Some(bar) = bar {
        bar.abort();
    }
    if let Some(e) = failure {
        return Err(e);
    }
    let elapsed_s = start.elapsed().as_secs_f64();
    let requests = measured.total.len();
    Ok(RunResult {
        label: label.to_string(),
        config,
        requests,
        errors: measured.errors,
        elapsed_s,
        throughput: requests as f64 / elapsed_s.max(1e-9),
        latency: Percentiles::of(&measured.total),
        by_op: measured
            .by_op
            .iter()
            .map(|(k, h)| (k.to_string(), Percentiles::of(h)))
            .collect(),
        timeline: whole_seconds(&measured.seconds, elapsed_s),
    })
}

/// The timeline of a run that lasted `elapsed_s`: whole seconds only, so the
/// run's last, partial second never shows as a fall in throughput. A run
/// shorter than a second keeps its one point, as a rate per second.
fn whole_seconds(seconds: &[Histogram<u64>], elapsed_s: f64) -> Vec<Second> {
    let whole = elapsed_s.floor() as usize;
    seconds
        .iter()
        .enumerate()
        .take(whole.max(1))
        .map(|(t, h)| Second {
            t: t as u64,
            requests: if whole == 0 {
                (h.len() as f64 / elapsed_s.max(1e-3)).round() as u64
            } else {
                h.len()
            },
            p50_us: if h.is_empty() { 0 } else { h.value_at_quantile(0.5) },
            p99_us: if h.is_empty() { 0 } else { h.value_at_quantile(0.99) },
        })
        .collect()
}

fn progress_bar(config: &RunConfig, budget: Arc<Budget>) -> Option<tokio::task::JoinHandle<()>> {
    if !config.progress || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return None;
    }
    let (total, by_time) = match (config.requests, config.duration) {
        (Some(n), _) => (n, false),
        (None, Some(d)) => (d.as_secs().max(1), true),
        (None, None) => (0, false),
    };
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {msg}").expect("valid progress template"),
    );
    let start = Instant::now();
    Some(tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let done = budget.done.load(Ordering::Relaxed);
            bar.set_position(if by_time { start.elapsed().as_secs() } else { done });
            bar.set_message(format!("{:.0} req/s", done as f64 / start.elapsed().as_secs_f64()));
        }
    }))
}

async fn connection_loop(
    index: usize,
    config: RunConfig,
    budget: Arc<Budget>,
    generator: Arc<Generator>,
    start: Instant,
) -> Result<Measured> {
    let mut conn = Connection::connect(config.target).await?;
    let mut rng = SmallRng::seed_from_u64(config.seed ^ (index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut measured = Measured::new();
    let pipeline = config.pipeline.max(1) as u64;
    // Open loop: this connection's share of the rate, one batch per interval.
    let interval = config
        .rate
        .map(|rate| Duration::from_secs_f64(pipeline as f64 * config.connections as f64 / rate.max(1e-3)));
    let mut intended = start;
    let mut buf = Vec::new();
    let mut ops = Vec::new();
    loop {
        let n = budget.claim(pipeline);
        if n == 0 {
            return Ok(measured);
        }
        if let Some(interval) = interval {
            intended += interval;
            let now = Instant::now();
            if intended > now {
                tokio::time::sleep(intended - now).await;
            }
        }
        buf.clear();
        ops.clear();
        for _ in 0..n {
            let op = generator.next(&mut rng);
            op.encode(&mut buf);
            ops.push(op.name());
        }
        let sent = if interval.is_some() { intended } else { Instant::now() };
        conn.send(&buf).await?;
        for op in &ops {
            let reply = conn.read().await?;
            if matches!(reply, Frame::Error(_)) {
                measured.errors += 1;
            }
            let now = Instant::now();
            measured.record(op, now - start, now - sent);
        }
        budget.done.fetch_add(n, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_partial_second_is_left_out_of_the_timeline() {
        let second = |n: u64| {
            let mut h = histogram();
            for _ in 0..n {
                h.record(100).unwrap();
            }
            h
        };
        let seconds = vec![second(1000), second(1000), second(300)];
        let timeline = whole_seconds(&seconds, 2.3);
        assert_eq!(
            timeline.iter().map(|s| s.requests).collect::<Vec<_>>(),
            vec![1000, 1000]
        );
        let short = whole_seconds(&[second(250)], 0.5);
        assert_eq!(short.iter().map(|s| s.requests).collect::<Vec<_>>(), vec![500]);
    }
}

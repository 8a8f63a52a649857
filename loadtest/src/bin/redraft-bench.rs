//! `redraft-bench`: load generator for any RESP endpoint.
//!
//! ```text
//! redraft-bench run --target 127.0.0.1:6379 --mix a --connections 50 --pipeline 1 --requests 100000
//! redraft-bench run ... --rate 20000 --duration 30      # open loop
//! redraft-bench run ... --compare                       # also stock redis-server, ratios
//! redraft-bench plot a.json b.json --out chart.svg      # comparison chart
//! redraft-bench check --target 127.0.0.1:6379 --duration 30 --history h.jsonl
//! redraft-bench check --verify h.jsonl                  # check a recorded history
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use redraft_loadtest::compare::RedisServer;
use redraft_loadtest::report;
use redraft_loadtest::runner::{self, RunConfig, RunResult};
use redraft_loadtest::workload::{KeyDistribution, Mix, Workload};

#[derive(Parser)]
#[command(
    name = "redraft-bench",
    version,
    about = "RESP load generator with HDR latency histograms"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a workload against an endpoint.
    Run(RunArgs),
    /// Record a history of concurrent operations and check it for linearizability.
    /// Exits with 1 on a violation, 2 when the checker's time budget ran out.
    Check(CheckArgs),
    /// Measure the idle CPU and memory of shard nodes hosting many shards:
    /// starts `redraft up --detach` with each shard count in turn.
    Idle {
        /// Shard counts to measure, comma-separated (with 3 nodes, each node
        /// hosts a replica of every shard).
        #[arg(long, default_value = "1000,5000", value_delimiter = ',')]
        shards: Vec<u32>,
        /// The `redraft` binary (default: next to this one).
        #[arg(long)]
        redraft: Option<PathBuf>,
        /// Seconds between "ready" and the measurement.
        #[arg(long, default_value_t = 30)]
        settle_secs: u64,
        /// Seconds measured.
        #[arg(long, default_value_t = 30)]
        measure_secs: u64,
        /// Folder for the clusters' data (each removed afterwards).
        #[arg(long, default_value = "/tmp/redraft-idle")]
        work: PathBuf,
        /// Write the results as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// An extra argument for every shard node (repeatable), e.g.
        /// `--node-arg=--quiesce-after-secs=0` to measure without quiescence.
        #[arg(long = "node-arg", allow_hyphen_values = true)]
        node_args: Vec<String>,
    },
    /// Puts or linearizable gets against etcd's leader: the reference with
    /// Redraft's guarantees, for ratios in the same run.
    Etcd {
        /// Client URLs of the etcd members, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        endpoints: Vec<String>,
        /// `set` (puts) or `get` (linearizable gets).
        #[arg(long, value_enum, default_value_t = redraft_loadtest::etcd::EtcdMix::Set)]
        mix: redraft_loadtest::etcd::EtcdMix,
        /// Requests in flight at once.
        #[arg(long, short = 'c', default_value_t = 50)]
        concurrency: usize,
        /// gRPC connections the requests share.
        #[arg(long, default_value_t = 10)]
        grpc_connections: usize,
        /// Seconds to run.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Distinct keys.
        #[arg(long, default_value_t = 100_000)]
        keys: u64,
        /// Value size in bytes.
        #[arg(long, default_value_t = 16)]
        value_size: usize,
        /// Write the result as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Run the placement driver's scheduler against simulated nodes (no
    /// sockets, no disks; seeded): prints one JSON report.
    Simulate(SimArgs),
    /// Draw a comparison chart of result files.
    Plot {
        /// Result files written by `run --json`.
        files: Vec<PathBuf>,
        /// SVG to write.
        #[arg(long, default_value = "comparison.svg")]
        out: PathBuf,
    },
}

/// `simulate`'s options.
#[derive(Args)]
struct SimArgs {
    /// What happens: join, fail, decommission, rolling-restart, zone-failure, hotspot.
    #[arg(long, default_value = "join")]
    scenario: redraft_placement::sim::Scenario,
    /// Nodes at the start.
    #[arg(long, default_value_t = 100)]
    nodes: usize,
    /// Nodes that join (join).
    #[arg(long, default_value_t = 400)]
    add: usize,
    /// Shards at the start.
    #[arg(long, default_value_t = 50_000)]
    shards: usize,
    /// Percent of the nodes that fail (fail).
    #[arg(long, default_value_t = 5.0)]
    fail_percent: f64,
    /// Zones the nodes spread over, round-robin (0: none).
    #[arg(long, default_value_t = 0)]
    zones: usize,
    /// Replica moves per node at once (the placement driver's --moves-per-node).
    #[arg(long, default_value_t = 1)]
    moves_per_node: usize,
    /// Mean shard size, MiB.
    #[arg(long, default_value_t = 64.0)]
    shard_mib: f64,
    /// Snapshot rate of a sending node, MiB/s.
    #[arg(long, default_value_t = 64.0)]
    mib_per_sec: f64,
    /// Seed of the run (sizes, which nodes fail): the same seed replays it.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print the whole report as one JSON line (default: pretty, without the timeline).
    #[arg(long)]
    json: bool,
    /// Draw the run's timeline (replicas per node, moves in flight) here.
    #[arg(long)]
    svg: Option<PathBuf>,
}

#[derive(Args)]
struct RunArgs {
    /// RESP endpoint.
    #[arg(long, default_value = "127.0.0.1:6379")]
    target: SocketAddr,
    /// Label of the target in reports.
    #[arg(long, default_value = "redraft")]
    label: String,
    /// Operation mix: set, get, or YCSB a, b, c, f.
    #[arg(long, value_enum, default_value_t = Mix::A)]
    mix: Mix,
    /// Key distribution.
    #[arg(long, value_enum, default_value_t = KeyDistribution::Uniform)]
    distribution: KeyDistribution,
    /// Distinct keys.
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 16)]
    value_size: usize,
    /// Connections.
    #[arg(long, short = 'c', default_value_t = 50)]
    connections: usize,
    /// Pipeline depth per connection.
    #[arg(long, short = 'P', default_value_t = 1)]
    pipeline: usize,
    /// Total requests (default 100000 when no duration is given).
    #[arg(long, short = 'n')]
    requests: Option<u64>,
    /// Seconds to run.
    #[arg(long)]
    duration: Option<u64>,
    /// Open loop at this many requests per second in all.
    #[arg(long)]
    rate: Option<f64>,
    /// Random seed.
    /// Seed of the run (sizes, which nodes fail): the same seed replays it.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write a timeline chart (SVG) here.
    #[arg(long)]
    svg: Option<PathBuf>,
    /// Also run the workload against stock redis-server (in memory, and with
    /// appendfsync always) started on free ports, and print ratios.
    #[arg(long)]
    compare: bool,
}

#[derive(Args)]
struct CheckArgs {
    /// RESP endpoint.
    #[arg(long, default_value = "127.0.0.1:6379")]
    target: SocketAddr,
    /// Seconds to run.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 10)]
    clients: usize,
    /// Keys the clients share (few keys, many conflicts).
    #[arg(long, default_value_t = 5)]
    keys: usize,
    /// Seconds without an answer after which an operation's outcome is unknown.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
    /// Write the history (JSON lines) here.
    #[arg(long)]
    history: Option<PathBuf>,
    /// Check this recorded history instead of running a workload.
    #[arg(long)]
    verify: Option<PathBuf>,
    /// Seconds the checker may search before answering "unknown".
    #[arg(long, default_value_t = 60)]
    budget: u64,
    /// A shell command run once, `--fault-at` seconds into the run (e.g. one that
    /// kills a node), to check behaviour under a fault.
    #[arg(long)]
    fault: Option<String>,
    /// When to run `--fault`, in seconds from the start.
    #[arg(long, default_value_t = 3)]
    fault_at: u64,
    /// Random seed.
    /// Seed of the run (sizes, which nodes fail): the same seed replays it.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

async fn check(args: CheckArgs) -> Result<()> {
    use redraft_loadtest::{check, history, linearizability};
    let ops = match &args.verify {
        Some(path) => history::read(path)?,
        None => {
            let fault = args.fault.clone().map(|cmd| {
                let at = Duration::from_secs(args.fault_at);
                tokio::spawn(async move {
                    tokio::time::sleep(at).await;
                    let status = tokio::process::Command::new("sh").arg("-c").arg(&cmd).status().await;
                    eprintln!("fault `{cmd}`: {status:?}");
                })
            });
            let config = check::CheckConfig {
                target: args.target,
                clients: args.clients.max(1),
                keys: args.keys.max(1),
                duration: Duration::from_secs(args.duration),
                timeout: Duration::from_secs(args.timeout),
                seed: args.seed,
            };
            let ops = check::run(config).await?;
            if let Some(f) = fault {
                let _ = f.await;
            }
            ops
        }
    };
    if let Some(path) = &args.history {
        history::write(path, &ops)?;
    }
    let unknown = ops.iter().filter(|o| o.output.is_none()).count();
    println!("{} operations ({unknown} with unknown outcome)", ops.len());
    let verdict = linearizability::check(&ops, Duration::from_secs(args.budget));
    println!("{}", linearizability::describe(&verdict));
    match verdict {
        linearizability::Verdict::Linearizable => Ok(()),
        linearizability::Verdict::Violation { .. } => std::process::exit(1),
        linearizability::Verdict::Unknown => std::process::exit(2),
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Run(args) => run(args).await,
        Command::Check(args) => check(args).await,
        Command::Etcd {
            endpoints,
            mix,
            concurrency,
            grpc_connections,
            duration,
            keys,
            value_size,
            json,
        } => {
            let config = redraft_loadtest::etcd::EtcdConfig {
                endpoints,
                mix,
                concurrency,
                connections: grpc_connections,
                duration: Duration::from_secs(duration),
                keys,
                value_size,
                seed: 1,
            };
            let result = redraft_loadtest::etcd::run(&config).await?;
            println!(
                "etcd {:?}: {:.0} req/s ({} requests, {} errors), p50 {} µs, p99 {} µs",
                result.mix, result.throughput, result.requests, result.errors, result.p50_us, result.p99_us
            );
            if let Some(path) = json {
                std::fs::write(path, serde_json::to_string_pretty(&result)?)?;
            }
            Ok(())
        }
        Command::Idle {
            shards,
            redraft,
            settle_secs,
            measure_secs,
            work,
            json,
            node_args,
        } => {
            let redraft = match redraft {
                Some(path) => path,
                None => std::env::current_exe()?.with_file_name("redraft"),
            };
            let config = redraft_loadtest::idle::IdleConfig {
                redraft,
                nodes: 3,
                settle: std::time::Duration::from_secs(settle_secs),
                window: std::time::Duration::from_secs(measure_secs),
                port: 16379,
                base_port: 17100,
                node_args,
            };
            let mut all = Vec::new();
            for count in shards {
                let measured = tokio::task::block_in_place(|| redraft_loadtest::idle::measure(&config, count, &work))?;
                for node in &measured {
                    println!(
                        "{:>6} shards  {:<8} cpu {:>5.1}% of a core  rss {:>6.1} MiB",
                        node.shards, node.node, node.cpu_percent, node.rss_mib
                    );
                }
                all.extend(measured);
            }
            if let Some(path) = json {
                std::fs::write(&path, serde_json::to_string_pretty(&all)?)?;
            }
            Ok(())
        }
        Command::Simulate(args) => {
            use redraft_placement::sim::SimConfig;
            let config = SimConfig {
                scenario: args.scenario,
                nodes: args.nodes,
                add: args.add,
                shards: args.shards,
                fail_percent: args.fail_percent,
                zones: args.zones,
                moves_per_node: args.moves_per_node,
                shard_mib: args.shard_mib,
                mib_per_sec: args.mib_per_sec,
                seed: args.seed,
                ..SimConfig::default()
            };
            let report = tokio::task::block_in_place(|| redraft_placement::sim::run(config));
            if let Some(path) = args.svg {
                redraft_loadtest::report::simulation_svg(&path, &report)?;
            }
            if args.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                let mut summary = serde_json::to_value(&report)?;
                if let Some(map) = summary.as_object_mut() {
                    map.remove("timeline");
                }
                println!("{}", serde_json::to_string_pretty(&summary)?);
            }
            Ok(())
        }
        Command::Plot { files, out } => {
            let mut results = Vec::new();
            for f in files {
                results.extend(report::read_json(&f)?);
            }
            report::comparison_svg(&out, &results)?;
            println!("wrote {}", out.display());
            Ok(())
        }
    }
}

async fn run(args: RunArgs) -> Result<()> {
    let requests = match (args.requests, args.duration) {
        (None, None) => Some(100_000),
        (r, _) => r,
    };
    let config = RunConfig {
        target: args.target,
        connections: args.connections.max(1),
        pipeline: args.pipeline.max(1),
        requests,
        duration: args.duration.map(Duration::from_secs),
        rate: args.rate,
        workload: Workload {
            mix: args.mix,
            distribution: args.distribution,
            keys: args.keys,
            value_size: args.value_size,
        },
        seed: args.seed,
        progress: true,
    };
    let mut results: Vec<RunResult> = Vec::new();
    let mut servers = Vec::new();
    let scratch = std::env::temp_dir().join(format!("redraft-bench-{}", std::process::id()));
    if args.compare {
        servers.push(RedisServer::start(&scratch, false)?);
        servers.push(RedisServer::start(&scratch, true)?);
    }
    results.push(runner::run(&args.label, config.clone()).await?);
    for server in &servers {
        let mut c = config.clone();
        c.target = server.addr;
        results.push(runner::run(&server.label, c).await?);
    }
    drop(servers);
    let _ = std::fs::remove_dir_all(&scratch);
    print!("{}", report::table(&results));
    if results.len() > 1 {
        for reference in &results[1..] {
            println!(
                "{} / {}: throughput {:.2}x, p50 latency {:.2}x",
                results[0].label,
                reference.label,
                results[0].throughput / reference.throughput.max(1e-9),
                results[0].latency.p50_us as f64 / reference.latency.p50_us.max(1) as f64
            );
        }
    }
    if let Some(path) = &args.json {
        report::write_json(path, &results)?;
    }
    if let Some(path) = &args.svg {
        report::timeline_svg(path, &results)?;
    }
    Ok(())
}

//! Command-line interface.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use redraft_common::pd_client::PdClient;

use crate::local;

#[derive(Parser)]
#[command(
    name = "redraft",
    version,
    about = "A Redis-protocol key-value store that scales out"
)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "REDRAFT_LOG_FORMAT")]
    log_format: LogFormat,
    /// Tokio worker threads (default: one per core).
    #[arg(long, global = true, env = "REDRAFT_WORKER_THREADS")]
    worker_threads: Option<NonZeroUsize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run a placement driver member.
    Placement(PlacementArgs),
    /// Run a shard node.
    Node(NodeArgs),
    /// Run a RESP proxy.
    Proxy(ProxyArgs),
    /// Start a local cluster (placement driver, shard nodes, proxy) under one folder.
    Up(local::UpArgs),
    /// Stop the local cluster started by `up`.
    Down {
        /// The cluster's folder.
        #[arg(long, default_value = "redraft-data")]
        dir: PathBuf,
    },
    /// Operator tools.
    Ctl {
        #[command(flatten)]
        target: CtlTarget,
        #[command(subcommand)]
        command: CtlCommand,
    },
}

/// Where `redraft ctl` finds the placement driver and its certificate. Each
/// may be given on its own; otherwise `--dir` (or `./redraft-data` when it
/// holds a cluster) supplies both, from `up.json` and `certs/`.
#[derive(Args)]
struct CtlTarget {
    /// The data folder of `redraft up`: placement addresses from its `up.json`,
    /// the `ctl` certificate from its `certs/` [default: ./redraft-data when
    /// present]. For `ctl certs`: the directory the certificates go to.
    #[arg(long, global = true)]
    dir: Option<PathBuf>,
    /// Placement driver members, comma-separated [env: REDRAFT_PLACEMENT].
    #[arg(long, global = true)]
    placement: Option<String>,
    /// Directory holding `ca.pem` and the operator's certificate [env: REDRAFT_CERTS].
    #[arg(long, global = true)]
    certs: Option<PathBuf>,
    /// Name of the operator's certificate (`<name>.pem`, `<name>.key`).
    #[arg(long, global = true, default_value = "ctl")]
    cert_name: String,
}

impl CtlTarget {
    /// The placement members and the certificate to use: flags first, then
    /// `--dir`, then the environment, then `./redraft-data`; and the nodes'
    /// HTTP addresses when a folder named them.
    fn resolve(self) -> Result<(String, Membership, NodeHttp)> {
        let from_dir = |dir: &std::path::Path| -> Result<(String, PathBuf, NodeHttp)> {
            let cluster = local::Cluster::load(dir)
                .with_context(|| format!("{} holds no cluster of `redraft up` (no up.json)", dir.display()))?;
            let placement = cluster
                .placement
                .iter()
                .map(|m| m.addr.to_string())
                .collect::<Vec<_>>()
                .join(",");
            let http = cluster.nodes.iter().filter_map(|n| Some((n.id, n.http?))).collect();
            Ok((placement, cluster.certs(), http))
        };
        let env = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        let local = PathBuf::from("redraft-data");
        let folder = match &self.dir {
            Some(dir) => Some(from_dir(dir)?),
            None if self.placement.is_none() || self.certs.is_none() => {
                if env("REDRAFT_PLACEMENT").is_none() && local::Cluster::file(&local).exists() {
                    Some(from_dir(&local)?)
                } else {
                    None
                }
            }
            None => None,
        };
        let placement = self
            .placement
            .or_else(|| folder.as_ref().map(|f| f.0.clone()))
            .or_else(|| env("REDRAFT_PLACEMENT").map(|v| v.to_string_lossy().into_owned()))
            .ok_or_else(|| {
                anyhow!("where is the cluster? give --dir (the folder of `redraft up`), or --placement and --certs")
            })?;
        let certs = self
            .certs
            .or_else(|| folder.as_ref().map(|f| f.1.clone()))
            .or_else(|| env("REDRAFT_CERTS").map(PathBuf::from))
            .ok_or_else(|| anyhow!("no certificates: give --certs (or --dir)"))?;
        Ok((
            placement,
            Membership {
                certs,
                cert_name: self.cert_name,
            },
            folder.map(|f| f.2).unwrap_or_default(),
        ))
    }
}

/// Nodes' HTTP (`/metrics`) addresses, when `up.json` names them.
type NodeHttp = BTreeMap<u64, SocketAddr>;

#[derive(Args)]
struct Operator {
    /// Serve `/metrics`, `/health` and `/ready` over HTTP on this address.
    #[arg(long)]
    http: Option<SocketAddr>,
}

#[derive(Args)]
struct Membership {
    /// Directory holding `ca.pem` and this member's certificate and key.
    #[arg(long)]
    certs: PathBuf,
    /// Name of this member's certificate (`<name>.pem`, `<name>.key`).
    #[arg(long)]
    cert_name: String,
}

#[derive(Args)]
struct PlacementArgs {
    /// This member's id.
    #[arg(long, default_value_t = 1)]
    id: u64,
    /// QUIC listen address.
    #[arg(long)]
    listen: SocketAddr,
    /// All members as `id=addr,...` (defaults to this one alone).
    #[arg(long)]
    members: Option<String>,
    /// Data directory.
    #[arg(long)]
    data: PathBuf,
    #[command(flatten)]
    operator: Operator,
    #[command(flatten)]
    membership: Membership,
    /// Bootstrap once this many nodes registered.
    #[arg(long, default_value_t = 3)]
    initial_nodes: usize,
    /// Shards per node at bootstrap.
    #[arg(long, default_value_t = 1)]
    shards_per_node: u32,
    /// Shards at bootstrap in all (overrides --shards-per-node).
    #[arg(long, default_value_t = 0)]
    shards: u32,
    /// Replicas per shard.
    #[arg(long, default_value_t = 3)]
    replicas: u32,
    /// Virtual nodes on the ring (fixed once bootstrapped).
    #[arg(long, default_value_t = redraft_common::keys::DEFAULT_VNODES)]
    vnodes: u32,
    /// Seconds a node may stay silent before its replicas are re-created elsewhere.
    #[arg(long, default_value_t = 30)]
    dead_after_secs: u64,
    /// Do not balance replicas and leaders or split busy shards automatically
    /// (operators run `redraft ctl rebalance` and `split`); draining, dead-node
    /// re-replication, and operators' splits and merges still proceed.
    #[arg(long)]
    manual_balance: bool,
    /// Replica moves one node may take part in at once (as source or target).
    #[arg(long, default_value_t = 1)]
    moves_per_node: usize,
    /// Split a shard whose data on disk exceeds this many MiB (0: never).
    #[arg(long, default_value_t = 256)]
    split_size_mib: u64,
    /// Split a shard that applies more than this many writes per second for
    /// several seconds (0: never).
    #[arg(long, default_value_t = 0)]
    split_writes_per_sec: u64,
    /// Check every shard's replicas against each other this often, one shard
    /// at a time (`30m`, `12h`, `1d`; `off`: only `redraft ctl verify`).
    #[arg(long, default_value = "off", value_parser = parse_period)]
    verify_every: Period,
    /// Read rate of each replica's digest in periodic checks, MiB/s (0: no limit).
    #[arg(long, default_value_t = 32)]
    verify_mib_per_sec: u32,
}

/// A period given as `<n>s`, `<n>m`, `<n>h` or `<n>d`, or `off`.
#[derive(Clone, Copy, Debug)]
struct Period(Option<std::time::Duration>);

fn parse_period(text: &str) -> Result<Period, String> {
    if text == "off" {
        return Ok(Period(None));
    }
    redraft_placement::backup::parse_period(text).map(|every| Period(Some(every)))
}

#[derive(Args)]
struct NodeArgs {
    /// Node id (kept in the data directory after the first start).
    #[arg(long)]
    id: Option<u64>,
    /// QUIC listen address.
    #[arg(long)]
    listen: SocketAddr,
    /// Address to advertise to other members, `ip:port` or `host:port` (resolved
    /// at start; defaults to the bound address).
    #[arg(long)]
    advertise: Option<String>,
    /// Placement driver members, comma-separated.
    #[arg(long)]
    placement: String,
    /// Data directory.
    #[arg(long)]
    data: PathBuf,
    #[command(flatten)]
    operator: Operator,
    #[command(flatten)]
    membership: Membership,
    /// `always` (fsync every batch before acknowledging) or `interval=<ms>`.
    #[arg(long, default_value = "always")]
    fsync: redraft_raft_storage_policy::FsyncPolicyArg,
    /// Raft heartbeat interval in milliseconds.
    #[arg(long, default_value_t = 200)]
    heartbeat_ms: u64,
    /// Raft election timeout lower bound in milliseconds (upper bound is twice it).
    #[arg(long, default_value_t = 1000)]
    election_ms: u64,
    /// Snapshot a shard (and purge its log) every this many entries.
    #[arg(long, default_value_t = 10_000)]
    snapshot_every: u64,
    /// MiB per second of snapshots this node may send to others (replica moves,
    /// catch-up); 0 for no limit.
    #[arg(long, default_value_t = 64)]
    snapshot_mib_per_sec: u64,
    /// Seconds without writes after which a shard's Raft timers stop
    /// (heartbeats, elections); 0 keeps them always running.
    #[arg(long, default_value_t = 5)]
    quiesce_after_secs: u64,
    /// How a shard's leader confirms a read: `lease` serves it from the
    /// leader's state while a majority's recent acknowledgement keeps any other
    /// replica from being elected (assumes clock rates differ by under 10%);
    /// `read-index` asks a quorum for every batch of reads.
    #[arg(long, default_value = "lease", value_parser = ["lease", "read-index"])]
    read_policy: String,
    /// This node's failure domain (rack, zone, data centre). With three or
    /// more zones among the nodes, no two replicas of a shard share one.
    #[arg(long, default_value = "")]
    zone: String,
}

#[derive(Args)]
struct ProxyArgs {
    /// RESP listen address.
    #[arg(long, default_value = "127.0.0.1:6379")]
    listen: SocketAddr,
    /// Also serve RESP over TLS here (Redis's `tls-port`), with this member's
    /// certificate from `--certs`.
    #[arg(long)]
    tls_listen: Option<SocketAddr>,
    /// Whether TLS clients must present a certificate signed by the cluster CA
    /// (Redis's `tls-auth-clients`): `yes` or `no`.
    #[arg(long, default_value = "yes", value_parser = ["yes", "no"])]
    tls_auth_clients: String,
    /// Placement driver members, comma-separated.
    #[arg(long)]
    placement: String,
    #[command(flatten)]
    operator: Operator,
    #[command(flatten)]
    membership: Membership,
}

#[derive(Subcommand)]
enum BackupCheck {
    /// Re-check every file of a backup against its manifest.
    Verify {
        /// The backup: a directory holding a manifest.
        path: PathBuf,
    },
}

#[derive(Subcommand)]
enum CtlCommand {
    /// Create the cluster CA (if missing) and member certificates in `--dir`.
    Certs {
        /// Member names, comma-separated.
        #[arg(long)]
        members: String,
    },
    /// Move a shard's leadership to a node: the leader holds new writes until the node has caught up, then the node campaigns.
    TransferLeader {
        /// The shard.
        #[arg(long)]
        shard: u64,
        /// The node that should lead it.
        #[arg(long)]
        to: u64,
    },
    /// Cluster summary: routing version, nodes, shards, leaders.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Shard nodes: id, address, state, replica and leader counts.
    Nodes {
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Shards: id, epoch, replicas, leader, virtual nodes.
    Shards {
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Move every replica off a node, then mark it removed.
    Decommission {
        /// The node to drain.
        #[arg(long)]
        node: u64,
    },
    /// Split a shard: half of its virtual nodes go to a new shard on the same
    /// nodes. Waits until the new routing is published.
    Split {
        /// The shard to split.
        #[arg(long)]
        shard: u64,
    },
    /// Merge shard `from` into shard `into` (replicas on the same nodes). Waits
    /// until the new routing is published.
    Merge {
        /// The shard that disappears.
        #[arg(long)]
        from: u64,
        /// The shard that takes over its virtual nodes.
        #[arg(long)]
        into: u64,
    },
    /// Move one replica of a shard from one node to another now.
    MoveReplica {
        /// The shard.
        #[arg(long)]
        shard: u64,
        /// The node giving up its replica.
        #[arg(long)]
        from: u64,
        /// The node receiving it.
        #[arg(long)]
        to: u64,
    },
    /// Check that every replica of each shard holds the same data: each one
    /// digests its copy at the same log index. Exits 1 when any shard differs.
    Verify {
        /// Only this shard.
        #[arg(long)]
        shard: Option<u64>,
        /// Read rate of each replica's digest, MiB/s (0: no limit).
        #[arg(long, default_value_t = 0)]
        mib_per_sec: u32,
        /// Print the verdicts as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Replace a node's replica of a shard, found different by `verify`, by a
    /// fresh copy from the leader. Refused when the replicas agree, or when no
    /// majority agrees.
    Repair {
        /// The shard.
        #[arg(long)]
        shard: u64,
        /// The node whose copy differs.
        #[arg(long)]
        node: u64,
    },
    /// Balance replicas and leaders now; prints every step taken.
    Rebalance {
        /// Stop after this many steps.
        #[arg(long, default_value_t = 100)]
        max_steps: u32,
    },
    /// Print the routing table as JSON.
    Routing,
    /// Copy data into the cluster: from a running Redis (SCAN, DUMP, PTTL,
    /// then RESTORE here), or from an RDB file.
    Import {
        /// A running Redis to copy from, HOST:PORT.
        #[arg(long, conflicts_with = "rdb", required_unless_present = "rdb")]
        from_redis: Option<String>,
        /// An RDB file to load (BGSAVE's or `redis-cli --rdb`'s).
        #[arg(long)]
        rdb: Option<PathBuf>,
        /// The source's password, or USER:PASSWORD.
        #[arg(long)]
        auth: Option<String>,
        /// Only keys matching this glob (SCAN MATCH).
        #[arg(long = "match")]
        pattern: Option<String>,
        /// At most this many keys per second (0: no limit).
        #[arg(long, default_value_t = 0)]
        keys_per_second: u64,
        /// Resume a copy at this SCAN cursor (printed as it goes).
        #[arg(long, default_value_t = 0)]
        cursor: u64,
        /// Scan the source this many times, to pick up keys written meanwhile.
        #[arg(long, default_value_t = 1)]
        passes: u32,
        /// With --rdb: the database to load (Redraft has one keyspace).
        #[arg(long)]
        db: Option<u64>,
        /// The cluster's proxy, HOST:PORT [default: the proxy of --dir, else 127.0.0.1:6379].
        #[arg(long)]
        proxy: Option<String>,
    },
    /// Back the cluster up while it serves: one consistent cut of every
    /// shard, written as `DIR/TAG/` (an RDB file per shard and a manifest).
    /// `backup verify PATH` re-checks a backup; with --every, the placement
    /// leader takes one periodically.
    #[command(args_conflicts_with_subcommands = true)]
    Backup {
        #[command(subcommand)]
        check: Option<BackupCheck>,
        /// The directory backups go to.
        #[arg(long)]
        to: Option<PathBuf>,
        /// The restore point's name [default: the UTC time of the cut].
        #[arg(long)]
        tag: Option<String>,
        /// Read rate over all shards, MiB/s (0: no limit).
        #[arg(long, default_value_t = 0)]
        backup_mib_per_sec: u32,
        /// Longest a shard holds client answers while the cut is taken, ms.
        #[arg(long, default_value_t = redraft_placement::backup::DEFAULT_HOLD_MS)]
        hold_ms: u32,
        /// Have the placement leader take a backup this often (`30m`, `12h`,
        /// `1d`) into --to on its own machine; `off` stops it.
        #[arg(long)]
        every: Option<String>,
        /// With --every: keep the newest N backups of --to.
        #[arg(long, default_value_t = 7)]
        keep: usize,
    },
    /// List the restore points of a backup directory.
    Backups {
        /// The backup directory.
        #[arg(long = "in")]
        dir: PathBuf,
    },
    /// Load a backup (`DIR/TAG`) into a cluster started empty.
    Restore {
        /// The backup: a directory holding a manifest.
        #[arg(long)]
        from: PathBuf,
        /// The cluster's proxy, HOST:PORT [default: the proxy of --dir, else 127.0.0.1:6379].
        #[arg(long)]
        proxy: Option<String>,
    },
    /// Write the cluster's keyspace as an RDB file that redis-server loads.
    Export {
        /// The file to write.
        #[arg(long)]
        rdb: PathBuf,
        /// The cluster's proxy, HOST:PORT [default: the proxy of --dir, else 127.0.0.1:6379].
        #[arg(long)]
        proxy: Option<String>,
    },
    /// A live view of nodes, shards, moves, splits and merges, refreshed every
    /// second (q quits, s orders shards, n focuses a node, a shows all).
    Top {
        /// Print one screen as text and exit.
        #[arg(long)]
        once: bool,
        /// With --once: the screen's width.
        #[arg(long, default_value_t = 120)]
        width: u16,
        /// With --once: the screen's height.
        #[arg(long, default_value_t = 40)]
        height: u16,
    },
}

/// `FsyncPolicy` as a clap value.
mod redraft_raft_storage_policy {
    /// Wrapper so clap can parse the policy.
    #[derive(Clone, Debug)]
    pub struct FsyncPolicyArg(pub redraft_node::FsyncPolicy);

    impl std::str::FromStr for FsyncPolicyArg {
        type Err = String;
        fn from_str(s: &str) -> Result<Self, String> {
            s.parse().map(FsyncPolicyArg)
        }
    }
}

/// The operator's QUIC endpoint (the member certificate given) and a client of
/// the placement driver, for `redraft ctl`.
fn ctl_client(placement: &str, membership: &Membership) -> Result<(redraft_common::transport::Endpoint, PdClient)> {
    let tls = redraft_common::tls::TlsIdentity::load(&membership.certs, &membership.cert_name)?;
    let endpoint = redraft_common::transport::Endpoint::client(&tls)?;
    let pd = PdClient::new(endpoint.clone(), PdClient::parse_members(placement)?);
    Ok((endpoint, pd))
}

/// A client endpoint and the current routing table, for `redraft ctl`.
async fn ctl_routing(
    placement: &str,
    membership: &Membership,
) -> Result<(
    redraft_common::transport::Endpoint,
    redraft_common::routing::RoutingTable,
)> {
    let (endpoint, pd) = ctl_client(placement, membership)?;
    let table = pd.routing(u64::MAX, u64::MAX, std::time::Duration::ZERO).await?;
    Ok((endpoint, table))
}

/// The routing table and live nodes, for `redraft ctl`.
async fn ctl_status(
    placement: &str,
    membership: &Membership,
) -> Result<(redraft_common::routing::RoutingTable, Vec<u64>)> {
    let (_, pd) = ctl_client(placement, membership)?;
    match pd
        .call(
            &redraft_common::wire::PdRequest::Status,
            std::time::Duration::from_secs(5),
        )
        .await?
    {
        redraft_common::wire::PdResponse::Status { table, live } => Ok((table, live)),
        other => Err(anyhow!("unexpected placement answer {other:?}")),
    }
}

/// `redraft ctl top`: the live view, or with `once` one screen of that size as text.
async fn ctl_top(
    placement: &str,
    membership: &Membership,
    node_http: NodeHttp,
    once: Option<(u16, u16)>,
) -> Result<()> {
    use crate::top::{NodeReading, View};
    let (_, pd) = ctl_client(placement, membership)?;
    let overview = || async {
        match pd
            .call(
                &redraft_common::wire::PdRequest::Overview,
                std::time::Duration::from_secs(5),
            )
            .await?
        {
            redraft_common::wire::PdResponse::Overview(overview) => Ok(*overview),
            other => Err(anyhow!("unexpected placement answer {other:?}")),
        }
    };
    let read_nodes = || {
        let http = node_http.clone();
        tokio::task::spawn_blocking(move || {
            http.into_iter()
                .filter_map(|(id, addr)| Some((id, NodeReading::parse(&crate::top::fetch_metrics(addr)?))))
                .collect::<BTreeMap<u64, NodeReading>>()
        })
    };
    let rates = |now: &BTreeMap<u64, NodeReading>, before: &BTreeMap<u64, NodeReading>| {
        now.iter()
            .map(|(id, reading)| {
                (
                    *id,
                    reading.rates_since(before.get(id).unwrap_or(&NodeReading::default())),
                )
            })
            .collect()
    };
    let mut before = read_nodes().await?;
    let mut view = View {
        overview: overview().await?,
        nodes: rates(&before, &BTreeMap::new()),
        order: Default::default(),
        focus: None,
    };
    if let Some((width, height)) = once {
        // Two readings a second apart, so that rates show.
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let now = read_nodes().await?;
        view.nodes = rates(&now, &before);
        print!("{}", crate::top::render_text(&view, width, height)?);
        return Ok(());
    }
    let mut terminal = ratatui::init();
    let shown: Result<()> = async {
        loop {
            terminal.draw(|frame| crate::top::render(frame, &view))?;
            let key = tokio::task::spawn_blocking(|| -> std::io::Result<Option<char>> {
                use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind};
                if event::poll(std::time::Duration::from_secs(1))? {
                    if let Event::Key(key) = event::read()? {
                        if let (KeyEventKind::Press, KeyCode::Char(c)) = (key.kind, key.code) {
                            return Ok(Some(c));
                        }
                    }
                }
                Ok(None)
            })
            .await??;
            if let Some(key) = key {
                if !view.key(key) {
                    return Ok(());
                }
                continue;
            }
            let now = read_nodes().await?;
            view.nodes = rates(&now, &before);
            before = now;
            if let Ok(overview) = overview().await {
                view.overview = overview;
            }
        }
    }
    .await;
    ratatui::restore();
    shown
}

/// Sends an operator request to the placement driver; its lines, or its error.
async fn operator_request(
    pd: &PdClient,
    request: &redraft_common::wire::PdRequest,
    timeout: std::time::Duration,
) -> Result<Vec<String>> {
    match pd.call(request, timeout).await? {
        redraft_common::wire::PdResponse::Done(lines) => Ok(lines),
        redraft_common::wire::PdResponse::Error(why) => Err(anyhow!("{why}")),
        other => Err(anyhow!("unexpected placement answer {other:?}")),
    }
}

/// `ctl verify`'s lines for one shard.
fn describe_verdict(verdict: &redraft_common::consistency::ShardVerdict) -> String {
    use std::fmt::Write;
    let shard = verdict.shard;
    let mut out = String::new();
    let size = format!(
        "{} records, {:.1} MiB, digested in {:.2} s",
        verdict.records,
        verdict.bytes as f64 / (1 << 20) as f64,
        verdict.seconds
    );
    let groups = redraft_placement::verify::describe_groups(verdict);
    if verdict.agrees() {
        let _ = writeln!(
            out,
            "shard {shard}: agree at index {}: {groups} ({size})",
            verdict.index
        );
    } else {
        let _ = writeln!(out, "shard {shard}: DIFFER at index {}: {groups}", verdict.index);
        match verdict.odd_one_out {
            Some(odd) => {
                let _ = writeln!(
                    out,
                    "  node {odd} differs from the majority; replace its copy with: redraft ctl repair --shard {shard} --node {odd}"
                );
            }
            None => {
                let _ = writeln!(out, "  no majority agrees: no copy can be trusted over the others");
            }
        }
        let _ = writeln!(out, "  vnodes that differ: {:?}", verdict.vnodes);
        for (vnode, key, nodes) in &verdict.keys {
            let _ = writeln!(
                out,
                "  vnode {vnode}: key {:?} differs on node(s) {nodes:?}",
                String::from_utf8_lossy(key)
            );
        }
    }
    for (node, why) in &verdict.missing {
        let _ = writeln!(out, "  node {node} not compared: {why}");
    }
    out
}

/// Polls the routing table until `done` holds (at most a minute).
async fn wait_for_routing(
    pd: &PdClient,
    done: impl Fn(&redraft_common::routing::RoutingTable) -> bool,
) -> Result<redraft_common::routing::RoutingTable> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let table = pd.routing(u64::MAX, u64::MAX, std::time::Duration::ZERO).await?;
        if done(&table) {
            return Ok(table);
        }
        if std::time::Instant::now() >= deadline {
            return Err(anyhow!("not published after 60 s; `redraft ctl shards` shows progress"));
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Prints rows as a JSON array or as an aligned table of `columns`.
fn print_rows(json: bool, columns: &[&str], rows: &[serde_json::Value]) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(rows)?);
        return Ok(());
    }
    let cell = |row: &serde_json::Value, c: &str| match &row[c] {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    };
    let widths: Vec<usize> = columns
        .iter()
        .map(|c| {
            rows.iter()
                .map(|r| cell(r, c).len())
                .chain([c.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    println!("{}", line(columns.iter().map(|c| c.to_uppercase()).collect()));
    for row in rows {
        println!("{}", line(columns.iter().map(|c| cell(row, c)).collect()));
    }
    Ok(())
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("REDRAFT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn,quinn=warn"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Resolves when the process is asked to stop (Ctrl-C or SIGTERM).
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn parse_members(list: &str) -> Result<BTreeMap<u64, SocketAddr>> {
    list.split(',')
        .map(|item| {
            let (id, addr) = item
                .split_once('=')
                .ok_or_else(|| anyhow!("member '{item}' is not id=addr"))?;
            Ok((id.trim().parse()?, redraft_common::pd_client::resolve(addr.trim())?))
        })
        .collect()
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = cli.worker_threads {
        builder.worker_threads(threads.get());
    }
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut command = cli.command;
    if let Command::Up(args) = &mut command {
        args.worker_threads = cli.worker_threads;
    }
    match runtime.block_on(run(command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<()> {
    match command {
        Command::Placement(a) => {
            let members = match &a.members {
                Some(list) => parse_members(list)?,
                None => BTreeMap::from([(a.id, a.listen)]),
            };
            let config = redraft_placement::Config {
                id: a.id,
                listen: a.listen,
                members,
                data_dir: a.data,
                certs_dir: a.membership.certs,
                cert_name: a.membership.cert_name,
                initial_nodes: a.initial_nodes,
                shards: a.shards,
                shards_per_node: a.shards_per_node,
                replicas: a.replicas,
                vnodes: a.vnodes,
                http: a.operator.http,
                dead_after: std::time::Duration::from_secs(a.dead_after_secs.max(1)),
                auto_balance: !a.manual_balance,
                moves_per_node: a.moves_per_node,
                split_bytes: a.split_size_mib.saturating_mul(1 << 20),
                split_writes_per_sec: a.split_writes_per_sec,
                verify_every: a.verify_every.0,
                verify_mib_per_sec: a.verify_mib_per_sec,
            };
            redraft_placement::run(config, shutdown_signal()).await
        }
        Command::Node(a) => {
            let config = redraft_node::Config {
                node_id: a.id,
                listen: a.listen,
                advertise: a
                    .advertise
                    .as_deref()
                    .map(redraft_common::pd_client::resolve)
                    .transpose()?,
                placement: PdClient::parse_members(&a.placement)?,
                data_dir: a.data,
                certs_dir: a.membership.certs,
                cert_name: a.membership.cert_name,
                fsync: a.fsync.0,
                raft: redraft_node::RaftTiming {
                    heartbeat_ms: a.heartbeat_ms,
                    election_min_ms: a.election_ms,
                    election_max_ms: a.election_ms * 2,
                    snapshot_every: a.snapshot_every.max(1),
                },
                http: a.operator.http,
                snapshot_bandwidth: a.snapshot_mib_per_sec.saturating_mul(1 << 20),
                quiesce_after: (a.quiesce_after_secs > 0).then(|| std::time::Duration::from_secs(a.quiesce_after_secs)),
                read_policy: a.read_policy.parse().map_err(anyhow::Error::msg)?,
                zone: a.zone.clone(),
            };
            redraft_node::run(config, shutdown_signal()).await
        }
        Command::Proxy(a) => {
            let config = redraft_proxy::Config {
                listen: a.listen,
                placement: PdClient::parse_members(&a.placement)?,
                certs_dir: a.membership.certs,
                cert_name: a.membership.cert_name,
                http: a.operator.http,
                tls_listen: a.tls_listen,
                tls_auth_clients: a.tls_auth_clients == "yes",
            };
            redraft_proxy::run(config, shutdown_signal()).await
        }
        Command::Up(args) => local::up(args).await,
        Command::Down { dir } => local::down(&dir),
        Command::Ctl {
            target,
            command: CtlCommand::Certs { members },
        } => {
            let dir = target
                .dir
                .ok_or_else(|| anyhow!("ctl certs needs --dir, the certificate directory"))?;
            let members: Vec<String> = members.split(',').map(|s| s.trim().to_string()).collect();
            redraft_common::tls::ensure_certs(&dir, &members)
        }
        Command::Ctl {
            target,
            command: CtlCommand::Top { once, width, height },
        } => {
            let (placement, membership, node_http) = target.resolve()?;
            ctl_top(&placement, &membership, node_http, once.then_some((width, height))).await
        }
        Command::Ctl {
            target,
            command: command @ (CtlCommand::Import { .. } | CtlCommand::Export { .. }),
        } => {
            let local = PathBuf::from("redraft-data");
            let folder = target
                .dir
                .or_else(|| local::Cluster::file(&local).exists().then_some(local));
            tokio::task::spawn_blocking(move || migrate(command, folder)).await?
        }
        Command::Ctl {
            command: CtlCommand::Backups { dir },
            ..
        } => crate::backup::list(&dir),
        Command::Ctl {
            command:
                CtlCommand::Backup {
                    check: Some(BackupCheck::Verify { path }),
                    ..
                },
            ..
        } => crate::backup::verify(&path),
        Command::Ctl {
            target,
            command: CtlCommand::Restore { from, proxy },
        } => {
            let folder = target.dir.clone();
            let proxy = match proxy {
                Some(proxy) => proxy,
                None => proxy_of_folder(folder)?,
            };
            let (placement, membership, _) = target.resolve()?;
            let (_, pd) = ctl_client(&placement, &membership)?;
            crate::backup::restore(&pd, &proxy, &from).await
        }
        Command::Ctl { target, command } => {
            let (placement, membership, _) = target.resolve()?;
            ctl(command, &placement, &membership).await
        }
    }
}

/// The first proxy of `folder`'s cluster (else of ./redraft-data), else
/// 127.0.0.1:6379.
fn proxy_of_folder(folder: Option<PathBuf>) -> Result<String> {
    let local = PathBuf::from("redraft-data");
    match folder.or_else(|| local::Cluster::file(&local).exists().then_some(local)) {
        Some(dir) => {
            let cluster = local::Cluster::load(&dir)
                .with_context(|| format!("{} holds no cluster of `redraft up` (no up.json)", dir.display()))?;
            let proxy = cluster
                .proxy
                .first()
                .ok_or_else(|| anyhow!("the cluster has no proxy"))?;
            Ok(proxy.addr.to_string())
        }
        None => Ok("127.0.0.1:6379".into()),
    }
}

/// `ctl import` and `ctl export`, against the proxy given, else the first
/// proxy of `folder`'s cluster, else 127.0.0.1:6379.
fn migrate(command: CtlCommand, folder: Option<PathBuf>) -> Result<()> {
    let proxy_of = |given: Option<String>| -> Result<String> {
        match given {
            Some(addr) => Ok(addr),
            None => proxy_of_folder(folder),
        }
    };
    match command {
        CtlCommand::Import {
            from_redis: Some(source),
            auth,
            pattern,
            keys_per_second,
            cursor,
            passes,
            proxy,
            ..
        } => {
            let options = crate::migrate::FromRedis {
                source: &source,
                auth: auth.as_deref(),
                pattern: pattern.as_deref(),
                keys_per_second,
                cursor,
                passes,
            };
            crate::migrate::import_from_redis(&options, &proxy_of(proxy)?)
        }
        CtlCommand::Import {
            rdb: Some(path),
            db,
            proxy,
            ..
        } => crate::migrate::import_rdb(&path, db, &proxy_of(proxy)?),
        CtlCommand::Export { rdb, proxy } => crate::migrate::export_rdb(&rdb, &proxy_of(proxy)?),
        _ => Err(anyhow!("ctl import needs --from-redis or --rdb")),
    }
}

/// Runs an operator command against the placement driver at `placement`.
async fn ctl(command: CtlCommand, placement: &str, membership: &Membership) -> Result<()> {
    match command {
        CtlCommand::Certs { .. }
        | CtlCommand::Top { .. }
        | CtlCommand::Import { .. }
        | CtlCommand::Export { .. }
        | CtlCommand::Backups { .. }
        | CtlCommand::Restore { .. }
        | CtlCommand::Backup { check: Some(_), .. } => Err(anyhow!(
            "ctl certs, top, import, export, backups, backup verify and restore are dispatched by the caller"
        )),
        CtlCommand::Routing => {
            let (_, table) = ctl_routing(placement, membership).await?;
            println!("{}", serde_json::to_string_pretty(&table)?);
            Ok(())
        }
        CtlCommand::Decommission { node } => {
            let (_, pd) = ctl_client(placement, membership)?;
            let request = redraft_common::wire::PdRequest::Decommission { node };
            match pd.call(&request, std::time::Duration::from_secs(5)).await? {
                redraft_common::wire::PdResponse::Ack => {
                    println!("node {node} is draining; `redraft ctl nodes` shows it removed once empty");
                    Ok(())
                }
                other => Err(anyhow!("decommission refused: {other:?}")),
            }
        }
        CtlCommand::Split { shard } => {
            let (_, pd) = ctl_client(placement, membership)?;
            let before = pd.routing(u64::MAX, u64::MAX, std::time::Duration::ZERO).await?;
            let request = redraft_common::wire::PdRequest::Split { shard };
            operator_request(&pd, &request, std::time::Duration::from_secs(10)).await?;
            let is_new = |id: &u64| !before.shards.contains_key(id);
            let table = wait_for_routing(&pd, |t| {
                t.shards.values().any(|s| s.split_from == Some(shard) && is_new(&s.id))
            })
            .await?;
            let child = table
                .shards
                .values()
                .filter(|s| s.split_from == Some(shard) && is_new(&s.id))
                .map(|s| s.id)
                .max();
            println!(
                "shard {shard} split: it keeps {} vnodes, new shard {} has {} (routing version {})",
                table.vnodes_of(shard).len(),
                child.unwrap_or_default(),
                child.map_or(0, |c| table.vnodes_of(c).len()),
                table.version
            );
            Ok(())
        }
        CtlCommand::Merge { from, into } => {
            let (_, pd) = ctl_client(placement, membership)?;
            let request = redraft_common::wire::PdRequest::Merge { from, into };
            operator_request(&pd, &request, std::time::Duration::from_secs(10)).await?;
            let table = wait_for_routing(&pd, |t| !t.shards.contains_key(&from)).await?;
            println!(
                "shard {from} merged into shard {into}: it now has {} vnodes (routing version {})",
                table.vnodes_of(into).len(),
                table.version
            );
            Ok(())
        }
        CtlCommand::MoveReplica { shard, from, to } => {
            let (_, pd) = ctl_client(placement, membership)?;
            let request = redraft_common::wire::PdRequest::MoveReplica { shard, from, to };
            for line in operator_request(&pd, &request, std::time::Duration::from_secs(300)).await? {
                println!("{line}");
            }
            Ok(())
        }
        CtlCommand::Backup {
            check: None,
            to,
            tag,
            backup_mib_per_sec,
            hold_ms,
            every,
            keep,
        } => {
            let (endpoint, pd) = ctl_client(placement, membership)?;
            if let Some(every) = every {
                return crate::backup::schedule(&pd, &every, keep, to.as_deref()).await;
            }
            let to = to.ok_or_else(|| anyhow!("ctl backup needs --to DIR"))?;
            let options = crate::backup::BackupOptions {
                to: &to,
                tag,
                mib_per_sec: backup_mib_per_sec,
                hold_ms,
            };
            crate::backup::backup(&endpoint, &pd, options).await
        }
        CtlCommand::Verify {
            shard,
            mib_per_sec,
            json,
        } => {
            let (_, pd) = ctl_client(placement, membership)?;
            let request = redraft_common::wire::PdRequest::Verify { shard, mib_per_sec };
            let verdicts = match pd.call(&request, std::time::Duration::from_secs(3600)).await? {
                redraft_common::wire::PdResponse::Verified(verdicts) => verdicts,
                redraft_common::wire::PdResponse::Error(why) => return Err(anyhow!("{why}")),
                other => return Err(anyhow!("unexpected placement answer {other:?}")),
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&verdicts)?);
            } else {
                for verdict in &verdicts {
                    print!("{}", describe_verdict(verdict));
                }
            }
            let differ = verdicts.iter().filter(|v| !v.agrees()).count();
            if differ > 0 {
                return Err(anyhow!(
                    "{differ} of {} shards have replicas that differ",
                    verdicts.len()
                ));
            }
            Ok(())
        }
        CtlCommand::Repair { shard, node } => {
            let (_, pd) = ctl_client(placement, membership)?;
            let request = redraft_common::wire::PdRequest::Repair { shard, node };
            for line in operator_request(&pd, &request, std::time::Duration::from_secs(3600)).await? {
                println!("{line}");
            }
            Ok(())
        }
        CtlCommand::Rebalance { max_steps } => {
            // One step per request: a step takes seconds, a whole rebalance
            // minutes, longer than a connection should be trusted to stay up;
            // a lost answer is asked again (the PD plans from its state).
            let (_, pd) = ctl_client(placement, membership)?;
            let request = redraft_common::wire::PdRequest::Rebalance { max_steps: 1 };
            let mut taken = 0;
            let mut lost = 0;
            let mut failed = 0;
            while taken < max_steps {
                let step = match operator_request(&pd, &request, std::time::Duration::from_secs(600)).await {
                    Ok(step) => step,
                    Err(e) if lost < 3 => {
                        lost += 1;
                        eprintln!("retrying after: {e:#}");
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                let Some(line) = step.first() else {
                    println!("{taken} steps; balanced");
                    return Ok(());
                };
                println!("{line}");
                if line.starts_with("failed") {
                    // A failed move is rolled back by the PD, which plans the
                    // next step from the state it left: a transient failure (a
                    // leader election, a slow snapshot) is worth another try.
                    failed += 1;
                    if failed > 3 {
                        return Err(anyhow!("rebalance stopped after {taken} steps and {failed} failures"));
                    }
                    tokio::time::sleep(std::time::Duration::from_secs(failed)).await;
                    continue;
                }
                failed = 0;
                taken += 1;
            }
            println!("{taken} steps; stopped at --max-steps, not balanced yet");
            Ok(())
        }
        CtlCommand::Status { json } => {
            let (table, live) = ctl_status(placement, membership).await?;
            let led = table.shards.values().filter(|s| s.leader.is_some()).count();
            let summary = serde_json::json!({
                "routing_version": table.version,
                "nodes": table.nodes.len(),
                "nodes_up": live.len(),
                "shards": table.shards.len(),
                "shards_with_leader": led,
                "vnodes": table.vnode_count,
            });
            if json {
                println!("{summary}");
            } else {
                println!(
                    "routing version {}\nnodes {} ({} up)\nshards {} ({} with a leader)\nvnodes {}",
                    table.version,
                    table.nodes.len(),
                    live.len(),
                    table.shards.len(),
                    led,
                    table.vnode_count
                );
                let (_, pd) = ctl_client(placement, membership)?;
                println!("{}", crate::backup::status_line(&pd).await?);
            }
            Ok(())
        }
        CtlCommand::Nodes { json } => {
            let (table, live) = ctl_status(placement, membership).await?;
            let rows: Vec<serde_json::Value> = table
                    .nodes
                    .values()
                    .map(|n| {
                        let (replicas, leaders, state) = crate::top::node_summary(&table, &live, n);
                        serde_json::json!({"id": n.id, "addr": n.addr, "zone": n.zone, "state": state, "replicas": replicas, "leaders": leaders})
                    })
                    .collect();
            print_rows(json, &["id", "addr", "zone", "state", "replicas", "leaders"], &rows)
        }
        CtlCommand::Shards { json } => {
            let (table, _) = ctl_status(placement, membership).await?;
            let rows: Vec<serde_json::Value> = table
                .shards
                .values()
                .map(|s| {
                    serde_json::json!({"id": s.id, "epoch": s.epoch, "replicas": s.replicas,
                            "leader": s.leader, "vnodes": table.vnodes_of(s.id).len()})
                })
                .collect();
            print_rows(json, &["id", "epoch", "replicas", "leader", "vnodes"], &rows)
        }
        CtlCommand::TransferLeader { shard, to } => {
            let (endpoint, table) = ctl_routing(placement, membership).await?;
            redraft_placement::scheduler::transfer_leadership(&endpoint, &table, shard, to).await?;
            println!("node {to} now leads shard {shard}");
            Ok(())
        }
    }
}

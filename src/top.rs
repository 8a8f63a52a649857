//! `redraft ctl top`: a live terminal view of the cluster, refreshed every second.
//!
//! It reads what the cluster already publishes: the placement leader's
//! [`Overview`] (routing table, live nodes, each shard's size and entry rate from
//! its leader's heartbeats, moves and the split or merge under way) and, when
//! the nodes' HTTP addresses are known (`--dir` of `redraft up`), each node's
//! `/metrics` for its operations per second, write p99 and disk use. Rates are
//! differences between two refreshes, so the first screen shows none.
//!
//! Keys: `q` quits, `s` changes the shard order (id, entries/s, bytes), `n`
//! focuses the next node (only its shards are listed), `a` shows all again.
//! `--once` renders one screen at a fixed size to stdout and exits (scripts,
//! tests).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Cell, Paragraph, Row, Table};
use ratatui::Frame;
use redraft_common::ids::NodeId;
use redraft_common::routing::{NodeInfo, NodeState, RoutingTable};
use redraft_common::wire::Overview;

/// The order of the shard table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ShardOrder {
    /// By shard id.
    #[default]
    Id,
    /// Busiest first.
    EntryRate,
    /// Biggest first.
    Bytes,
}

impl ShardOrder {
    fn next(self) -> ShardOrder {
        match self {
            ShardOrder::Id => ShardOrder::EntryRate,
            ShardOrder::EntryRate => ShardOrder::Bytes,
            ShardOrder::Bytes => ShardOrder::Id,
        }
    }

    fn name(self) -> &'static str {
        match self {
            ShardOrder::Id => "id",
            ShardOrder::EntryRate => "entries/s",
            ShardOrder::Bytes => "bytes",
        }
    }
}

/// One node's figures from two readings of its `/metrics`.
#[derive(Clone, Copy, Debug, Default)]
pub struct NodeRates {
    /// Writes proposed (as leader) plus reads served per second.
    pub ops_per_sec: Option<f64>,
    /// 99th percentile of a proposal's commit-and-apply time, in milliseconds.
    pub write_p99_ms: Option<f64>,
    /// RocksDB's size on disk.
    pub disk_bytes: Option<u64>,
}

/// Everything one screen shows.
pub struct View {
    /// The placement leader's overview.
    pub overview: Overview,
    /// Figures of the nodes whose `/metrics` could be read.
    pub nodes: BTreeMap<NodeId, NodeRates>,
    /// Shard order.
    pub order: ShardOrder,
    /// Only this node's shards, when set.
    pub focus: Option<NodeId>,
}

impl View {
    /// Applies a key; `false` for the key that quits.
    pub fn key(&mut self, key: char) -> bool {
        match key {
            'q' => return false,
            's' => self.order = self.order.next(),
            'a' => self.focus = None,
            'n' => {
                let ids: Vec<NodeId> = self.overview.table.nodes.keys().copied().collect();
                self.focus = match self.focus {
                    None => ids.first().copied(),
                    Some(current) => ids.iter().copied().find(|id| *id > current),
                };
            }
            _ => {}
        }
        true
    }
}

fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn or_dash<T>(value: Option<T>, show: impl Fn(T) -> String) -> String {
    value.map_or_else(|| "-".to_string(), show)
}

/// A node's replica and leader counts and its state as operators see it (`up`
/// when it heartbeated recently).
pub fn node_summary(table: &RoutingTable, live: &[NodeId], node: &NodeInfo) -> (usize, usize, &'static str) {
    let replicas = table.shards.values().filter(|s| s.replicas.contains(&node.id)).count();
    let leaders = table.shards.values().filter(|s| s.leader == Some(node.id)).count();
    let state = match node.state {
        NodeState::Draining => "draining",
        NodeState::Removed => "removed",
        _ if live.contains(&node.id) => "up",
        _ => "down",
    };
    (replicas, leaders, state)
}

/// Draws `view` on `frame`.
pub fn render(frame: &mut Frame, view: &View) {
    let overview = &view.overview;
    let table = &overview.table;
    let led = table.shards.values().filter(|s| s.leader.is_some()).count();
    let mut header = vec![Line::from(format!(
        "routing v{}  placement leader {}  nodes {}/{} up  shards {} ({} with a leader)",
        table.version,
        or_dash(overview.placement_leader, |id| id.to_string()),
        overview.live.len(),
        table.nodes.len(),
        table.shards.len(),
        led
    ))];
    let mut activity: Vec<String> = overview.reshape.iter().cloned().collect();
    activity.extend(
        overview
            .moves
            .iter()
            .map(|(shard, from, to)| format!("moving shard {shard}: node {from} -> node {to}")),
    );
    for shard in table.shards.values().filter(|s| !s.learners.is_empty()) {
        activity.push(format!("shard {}: catching up learners {:?}", shard.id, shard.learners));
    }
    header.push(Line::from(if activity.is_empty() {
        "no move, split or merge under way".to_string()
    } else {
        activity.join("; ")
    }));
    let bold = Style::default().add_modifier(Modifier::BOLD);

    let node_rows: Vec<Row> = table
        .nodes
        .values()
        .map(|n| {
            let (replicas, leaders, state) = node_summary(table, &overview.live, n);
            let rates = view.nodes.get(&n.id).copied().unwrap_or_default();
            let focused = view.focus == Some(n.id);
            let row = Row::new(vec![
                Cell::from(format!("{}{}", if focused { ">" } else { " " }, n.id)),
                Cell::from(n.addr.clone()),
                Cell::from(state),
                Cell::from(replicas.to_string()),
                Cell::from(leaders.to_string()),
                Cell::from(or_dash(rates.ops_per_sec, |v| format!("{v:.0}"))),
                Cell::from(or_dash(rates.write_p99_ms, |v| format!("{v:.1}"))),
                Cell::from(or_dash(rates.disk_bytes, human_bytes)),
            ]);
            if focused {
                row.style(bold)
            } else {
                row
            }
        })
        .collect();
    let nodes = Table::new(
        node_rows,
        [
            Constraint::Length(6),
            Constraint::Length(22),
            Constraint::Length(9),
            Constraint::Length(9),
            Constraint::Length(8),
            Constraint::Length(9),
            Constraint::Length(12),
            Constraint::Length(11),
        ],
    )
    .header(
        Row::new([
            "NODE",
            "ADDR",
            "STATE",
            "REPLICAS",
            "LEADERS",
            "OPS/S",
            "WRITE P99 MS",
            "DISK",
        ])
        .style(bold),
    )
    .block(Block::bordered().title(" nodes "));

    let stats: BTreeMap<_, _> = overview.shards.iter().map(|s| (s.shard, *s)).collect();
    let mut shards: Vec<_> = table
        .shards
        .values()
        .filter(|s| view.focus.is_none_or(|n| s.replicas.contains(&n)))
        .collect();
    let rate = |id: &u64| stats.get(id).map_or(0.0, |s| s.entries_per_sec);
    let size = |id: &u64| stats.get(id).map_or(0, |s| s.bytes);
    match view.order {
        ShardOrder::Id => shards.sort_by_key(|s| s.id),
        ShardOrder::EntryRate => shards.sort_by(|a, b| rate(&b.id).total_cmp(&rate(&a.id))),
        ShardOrder::Bytes => shards.sort_by_key(|s| std::cmp::Reverse(size(&s.id))),
    }
    let shard_rows: Vec<Row> = shards
        .iter()
        .map(|s| {
            let stat = stats.get(&s.id);
            Row::new(vec![
                Cell::from(s.id.to_string()),
                Cell::from(or_dash(s.leader, |l| l.to_string())),
                Cell::from(s.replicas.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(",")),
                Cell::from(table.vnodes_of(s.id).len().to_string()),
                Cell::from(or_dash(stat.map(|s| s.bytes), human_bytes)),
                Cell::from(or_dash(stat.map(|s| s.entries_per_sec), |v| format!("{v:.0}"))),
            ])
        })
        .collect();
    let title = match view.focus {
        Some(node) => format!(" shards on node {node}, by {} ", view.order.name()),
        None => format!(" shards, by {} ", view.order.name()),
    };
    let shards = Table::new(
        shard_rows,
        [
            Constraint::Length(7),
            Constraint::Length(7),
            Constraint::Length(12),
            Constraint::Length(7),
            Constraint::Length(11),
            Constraint::Length(10),
        ],
    )
    .header(Row::new(["SHARD", "LEADER", "REPLICAS", "VNODES", "BYTES", "ENTRIES/S"]).style(bold))
    .block(Block::bordered().title(title));

    let node_height = table.nodes.len() as u16 + 3;
    let [top, middle, bottom, footer] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Length(node_height),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    frame.render_widget(Paragraph::new(header), top);
    frame.render_widget(nodes, middle);
    frame.render_widget(shards, bottom);
    frame.render_widget(
        Paragraph::new("q quit  s shard order  n next node  a all nodes"),
        footer,
    );
}

/// The text of one screen of `width` x `height` (for `--once`).
pub fn render_text(view: &View, width: u16, height: u16) -> anyhow::Result<String> {
    let mut terminal = ratatui::Terminal::new(ratatui::backend::TestBackend::new(width, height))?;
    terminal.draw(|frame| render(frame, view))?;
    let buffer = terminal.backend().buffer();
    let mut text = String::new();
    for y in 0..height {
        let line: String = (0..width).map(|x| buffer[(x, y)].symbol()).collect();
        text.push_str(line.trim_end());
        text.push('\n');
    }
    Ok(text)
}

/// A node's counters and gauges at one instant, from its `/metrics`.
#[derive(Clone, Debug, Default)]
pub struct NodeReading {
    at: Option<Instant>,
    ops: f64,
    /// Cumulative proposal-duration histogram: upper bound (s) -> count.
    buckets: Vec<(f64, f64)>,
    disk_bytes: Option<u64>,
}

impl NodeReading {
    /// Parses Prometheus text exposition.
    pub fn parse(text: &str) -> NodeReading {
        let mut reading = NodeReading {
            at: Some(Instant::now()),
            ..NodeReading::default()
        };
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((name, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let served_read = name.starts_with("redraft_node_reads_total{")
                && (name.contains("result=\"lease\"") || name.contains("result=\"ok\""));
            if name == "redraft_node_entry_writes_sum" || served_read {
                reading.ops += value;
            } else if name.starts_with("redraft_node_rocksdb_size_bytes") {
                // One series per column family.
                *reading.disk_bytes.get_or_insert(0) += value as u64;
            } else if let Some(labels) = name.strip_prefix("redraft_node_proposal_duration_seconds_bucket{") {
                let le = labels
                    .split("le=\"")
                    .nth(1)
                    .and_then(|rest| rest.split('"').next())
                    .map(|le| {
                        if le == "+Inf" {
                            f64::INFINITY
                        } else {
                            le.parse().unwrap_or(f64::INFINITY)
                        }
                    });
                if let Some(le) = le {
                    reading.buckets.push((le, value));
                }
            }
        }
        reading.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        reading
    }

    /// The rates between an earlier reading and this one.
    pub fn rates_since(&self, earlier: &NodeReading) -> NodeRates {
        let mut rates = NodeRates {
            disk_bytes: self.disk_bytes,
            ..NodeRates::default()
        };
        let (Some(now), Some(then)) = (self.at, earlier.at) else {
            return rates;
        };
        let secs = now.duration_since(then).as_secs_f64();
        if secs <= 0.0 {
            return rates;
        }
        rates.ops_per_sec = Some((self.ops - earlier.ops).max(0.0) / secs);
        let delta: Vec<(f64, f64)> = self
            .buckets
            .iter()
            .map(|(le, n)| {
                let before = earlier.buckets.iter().find(|(l, _)| l == le).map_or(0.0, |(_, n)| *n);
                (*le, n - before)
            })
            .collect();
        if let Some(&(_, total)) = delta.last() {
            if total > 0.0 {
                rates.write_p99_ms = delta
                    .iter()
                    .find(|(_, n)| *n >= 0.99 * total)
                    .map(|(le, _)| le * 1000.0)
                    .filter(|ms| ms.is_finite());
            }
        }
        rates
    }
}

/// GETs `/metrics` from `addr` (at most 1 s).
pub fn fetch_metrics(addr: SocketAddr) -> Option<String> {
    use std::io::{Read, Write};
    let timeout = Duration::from_secs(1);
    let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    (head.split(' ').nth(1) == Some("200")).then(|| body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = r#"# TYPE redraft_node_entry_writes_sum counter
redraft_node_entry_writes_sum 100
redraft_node_reads_total{result="lease"} 40
redraft_node_reads_total{result="not_leader"} 7
redraft_node_rocksdb_size_bytes{cf="data"} 1000
redraft_node_rocksdb_size_bytes{cf="raft_log"} 24
redraft_node_proposal_duration_seconds_bucket{le="0.001"} 10
redraft_node_proposal_duration_seconds_bucket{le="0.005"} 90
redraft_node_proposal_duration_seconds_bucket{le="0.01"} 100
redraft_node_proposal_duration_seconds_bucket{le="+Inf"} 100
"#;

    #[test]
    fn node_rates_come_from_two_readings_of_the_metrics() {
        let mut earlier = NodeReading::parse("");
        earlier.at = Some(Instant::now() - Duration::from_secs(2));
        let now = NodeReading::parse(METRICS);
        assert_eq!(now.ops, 140.0, "writes and served reads, not redirected ones");
        let rates = now.rates_since(&earlier);
        assert_eq!(rates.disk_bytes, Some(1024));
        let ops = rates.ops_per_sec.unwrap();
        assert!((69.0..=70.1).contains(&ops), "{ops}");
        assert_eq!(rates.write_p99_ms, Some(10.0));
    }

    #[test]
    fn keys_change_the_order_and_the_focused_node() {
        let mut overview = Overview {
            table: Default::default(),
            live: vec![],
            placement_leader: None,
            shards: vec![],
            moves: vec![],
            reshape: None,
        };
        for id in [1, 2] {
            overview.table.nodes.insert(
                id,
                redraft_common::routing::NodeInfo {
                    id,
                    addr: format!("127.0.0.1:{id}"),
                    state: NodeState::Up,
                    zone: String::new(),
                },
            );
        }
        let mut view = View {
            overview,
            nodes: BTreeMap::new(),
            order: ShardOrder::Id,
            focus: None,
        };
        assert!(view.key('s'));
        assert_eq!(view.order, ShardOrder::EntryRate);
        view.key('n');
        assert_eq!(view.focus, Some(1));
        view.key('n');
        assert_eq!(view.focus, Some(2));
        view.key('a');
        assert_eq!(view.focus, None);
        assert!(!view.key('q'));
        let screen = render_text(&view, 90, 20).unwrap();
        assert!(screen.contains("nodes 0/2 up"), "{screen}");
        assert!(screen.contains("127.0.0.1:2"), "{screen}");
    }
}

//! `redraft-bench`: a load generator for any RESP endpoint, and its reports.
//!
//! | module | owns |
//! | --- | --- |
//! | [`workload`] | what to send: SET/GET mixes, YCSB A/B/C/F, uniform or zipfian keys |
//! | [`client`] | a pipelining RESP connection |
//! | [`runner`] | closed and open loops, HDR histograms, per-second timeline |
//! | [`report`] | JSON results, text tables, SVG charts |
//! | [`compare`] | the same workload against Redraft and stock `redis-server` |
//! | [`etcd`] | puts and linearizable gets against etcd, the reference with Redraft's guarantees |
//! | [`history`] | recorded operations (JSON lines) |
//! | [`linearizability`] | the checker: per-key Wing & Gong search with memoisation |
//! | [`check`] | the checking workload: concurrent clients recording a history |
//!
//! OPEN LOOP. With a target rate, every request has an intended send time on a
//! fixed schedule and its latency is measured from that time, not from when it
//! was actually sent, so a stalled server shows up as latency instead of being
//! hidden by fewer requests (coordinated omission).

pub mod check;
pub mod client;
pub mod compare;
pub mod etcd;
pub mod history;
pub mod idle;
pub mod linearizability;
pub mod report;
pub mod runner;
pub mod workload;

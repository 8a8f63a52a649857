//! Durable storage shared by shard nodes and the placement driver.
//!
//! One RocksDB per process ([`Engine`]) holds the Raft logs and Raft state of every
//! group the process hosts, next to the data of their state machines, in separate
//! column families:
//!
//! | column family | key | value |
//! | --- | --- | --- |
//! | `raft_log` | `group u64 BE, index u64 BE` | bincode `Entry` |
//! | `raft_state` | `group u64 BE, tag` | vote, last purged log id |
//! | `data` | `vnode u16 BE, user key` | typed value (shard nodes) |
//! | `meta` | free-form, owned by the caller | applied index, identity, ... |
//!
//! Big-endian integers make byte order equal numeric order, so a group's log is one
//! contiguous, ordered range.
//!
//! GROUP COMMIT. All log writes go through one committer thread ([`log`]): appends of
//! every group that arrive while the previous batch is being written are merged into
//! one `WriteBatch` and made durable with one fsync, then every waiter is released.

pub mod engine;
pub mod lease;
pub mod log;
pub mod metrics;
pub mod network;
pub mod snapshot;

pub use engine::{Engine, FsyncPolicy};
pub use log::LogStore;

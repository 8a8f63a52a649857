//! The process's RocksDB and its column families.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, Options, DB};

use crate::log::Committer;

/// Raft log entries of every group.
pub const CF_RAFT_LOG: &str = "raft_log";
/// Vote and purge marks of every group.
pub const CF_RAFT_STATE: &str = "raft_state";
/// User data under `vnode | key`.
pub const CF_DATA: &str = "data";
/// Per-process and per-group metadata owned by the caller.
pub const CF_META: &str = "meta";

const COLUMN_FAMILIES: [&str; 4] = [CF_RAFT_LOG, CF_RAFT_STATE, CF_DATA, CF_META];

/// Memtable size of the data column family. Every apply inserts into it at a
/// random position, and a skip list's cost per insert and lookup is its cache
/// misses, which grow with its size: 8 MiB keeps it mostly in cache, at the
/// price of more (cheap, sequential) flushes.
const DATA_MEMTABLE_BYTES: usize = 8 << 20;

/// Obsolete WAL files kept for reuse (see `Engine::open`).
const WAL_FILES_RECYCLED: usize = 4;

/// Most WAL bytes kept before old column-family data is flushed to free them.
const MAX_WAL_BYTES: u64 = 64 << 20;

/// When log writes are made durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Every batch is fsynced before any write in it is acknowledged (default).
    Always,
    /// Batches are written without fsync and the WAL is fsynced every so many
    /// milliseconds. Faster, weaker: a machine crash (not a process crash) may lose
    /// the last interval of acknowledged writes on a quorum.
    Interval(u64),
}

impl FromStr for FsyncPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "always" => Ok(FsyncPolicy::Always),
            _ => s
                .strip_prefix("interval=")
                .and_then(|ms| ms.parse().ok())
                .filter(|&ms| ms > 0)
                .map(FsyncPolicy::Interval)
                .ok_or_else(|| format!("invalid fsync policy '{s}': use 'always' or 'interval=<ms>'")),
        }
    }
}

/// The process's RocksDB plus its log committer.
#[derive(Clone)]
pub struct Engine {
    db: Arc<DB>,
    committer: Committer,
}

impl Engine {
    /// Opens (or creates) the database under `path`.
    pub fn open(path: &Path, fsync: FsyncPolicy) -> Result<Engine> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        opts.increase_parallelism(2);
        // Overwrite old WAL files instead of appending to new ones: a write inside
        // the file's existing size leaves the inode clean, so each log fsync
        // (fdatasync) flushes the data blocks alone, not the inode as well.
        // Compatible with the default point-in-time recovery (records carry the
        // log number, so stale records from the file's earlier life are ignored).
        opts.set_recycle_log_file_num(WAL_FILES_RECYCLED);
        // Bound the WAL: past this, the column families holding its oldest
        // records are flushed and its files become reusable (and a restart has
        // little to replay).
        opts.set_max_total_wal_size(MAX_WAL_BYTES);
        let cfs = COLUMN_FAMILIES.iter().map(|name| {
            let mut cf_opts = Options::default();
            cf_opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
            if *name == CF_DATA {
                cf_opts.set_write_buffer_size(DATA_MEMTABLE_BYTES);
                let mut table = rocksdb::BlockBasedOptions::default();
                table.set_bloom_filter(10.0, false);
                cf_opts.set_block_based_table_factory(&table);
            }
            ColumnFamilyDescriptor::new(*name, cf_opts)
        });
        let db = Arc::new(
            DB::open_cf_descriptors(&opts, path, cfs)
                .with_context(|| format!("opening RocksDB at {}", path.display()))?,
        );
        if let FsyncPolicy::Interval(ms) = fsync {
            let weak = Arc::downgrade(&db);
            std::thread::Builder::new().name("wal-sync".into()).spawn(move || {
                while let Some(db) = weak.upgrade() {
                    if let Err(e) = db.flush_wal(true) {
                        panic!("fsync of the RocksDB WAL failed: {e}");
                    }
                    drop(db);
                    std::thread::sleep(Duration::from_millis(ms));
                }
            })?;
        }
        let committer = Committer::start(db.clone(), fsync == FsyncPolicy::Always)?;
        Ok(Engine { db, committer })
    }

    /// The database.
    pub fn db(&self) -> &Arc<DB> {
        &self.db
    }

    /// A column family handle.
    ///
    /// # Panics
    /// When `name` is not one of this module's column families.
    pub fn cf(&self, name: &str) -> &ColumnFamily {
        self.db.cf_handle(name).expect("column family exists")
    }

    /// The log store of `group`.
    pub fn log_store<C>(&self, group: u64) -> crate::LogStore<C>
    where
        C: openraft::RaftTypeConfig,
    {
        crate::LogStore::new(group, self.db.clone(), self.committer.clone())
    }

    /// The shared committer (for callers that need their own durable writes).
    pub fn committer(&self) -> &Committer {
        &self.committer
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::LogWrite;

    #[test]
    fn fsync_policy_parses() {
        assert_eq!("always".parse(), Ok(FsyncPolicy::Always));
        assert_eq!("interval=5".parse(), Ok(FsyncPolicy::Interval(5)));
        assert!("interval=0".parse::<FsyncPolicy>().is_err());
        assert!("sometimes".parse::<FsyncPolicy>().is_err());
    }

    /// Recycled WAL files hold the previous file's bytes past the new records;
    /// recovery must stop at the new records' end and lose none of them.
    #[tokio::test]
    async fn acknowledged_writes_survive_a_reopen_from_recycled_wal_files() {
        let dir = std::env::temp_dir().join(format!("redraft-wal-recycle-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let value = vec![0x5a_u8; 4096];
        let key = |round: u64, i: u64| format!("recycle/{round}/{i:04}").into_bytes();
        let put = |round: u64, i: u64| LogWrite::Put {
            cf: CF_RAFT_LOG,
            key: key(round, i),
            value: value.clone(),
        };
        {
            let engine = Engine::open(&dir, FsyncPolicy::Always).unwrap();
            for round in 0..4 {
                engine
                    .committer()
                    .commit((0..300).map(|i| put(round, i)).collect())
                    .await
                    .unwrap();
                // Flushing every column family makes the WAL files so far obsolete,
                // so the next WAL reuses one of them.
                for cf in COLUMN_FAMILIES {
                    engine.db().flush_cf(engine.cf(cf)).unwrap();
                }
            }
            // Acknowledged (fsynced) but never flushed: only the WAL has these.
            for i in 0..300 {
                engine.committer().commit(vec![put(99, i)]).await.unwrap();
            }
        }
        let log = std::fs::read_to_string(dir.join("LOG")).unwrap();
        assert!(log.contains("from recycle list"), "no WAL file was reused");
        // The committer thread lets go of the database once its queue closes,
        // which follows the drop above by a moment.
        let mut reopened = Engine::open(&dir, FsyncPolicy::Always);
        for _ in 0..100 {
            if reopened.is_ok() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            reopened = Engine::open(&dir, FsyncPolicy::Always);
        }
        let engine = reopened.unwrap();
        for round in [0, 1, 2, 3, 99] {
            for i in 0..300 {
                let got = engine.db().get_cf(engine.cf(CF_RAFT_LOG), key(round, i)).unwrap();
                assert_eq!(got.as_deref(), Some(&value[..]), "round {round} write {i} lost");
            }
        }
        drop(engine);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

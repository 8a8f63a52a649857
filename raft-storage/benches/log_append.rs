//! Raft log appends through the group committer: one fsync per batch.
//!
//! `groups` concurrent appenders (one per Raft group) each commit one 100-byte
//! entry; with group commit their writes share batches, so the cost per append
//! falls as concurrency rises. Each iteration is one round of all groups.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use redraft_raft_storage::engine::CF_RAFT_LOG;
use redraft_raft_storage::log::{log_key, LogWrite};
use redraft_raft_storage::{Engine, FsyncPolicy};

fn append(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(&dir.path().join("db"), FsyncPolicy::Always).unwrap();
    let mut group = c.benchmark_group("log append (fsync always)");
    for groups in [1u64, 8, 64] {
        let mut index = 0u64;
        group.throughput(Throughput::Elements(groups));
        group.bench_with_input(BenchmarkId::new("concurrent groups", groups), &groups, |b, &groups| {
            b.iter(|| {
                index += 1;
                runtime.block_on(async {
                    let commits = (0..groups).map(|g| {
                        let committer = engine.committer().clone();
                        tokio::spawn(async move {
                            let write = LogWrite::Put {
                                cf: CF_RAFT_LOG,
                                key: log_key(g, index),
                                value: vec![7; 100],
                            };
                            committer.commit(vec![write]).await.unwrap();
                        })
                    });
                    for c in commits.collect::<Vec<_>>() {
                        c.await.unwrap();
                    }
                })
            })
        });
    }
    use redraft_raft_storage::metrics::{LOG_BATCH_REQUESTS, LOG_WRITE_SECONDS};
    let batches = LOG_WRITE_SECONDS.get_sample_count().max(1) as f64;
    println!(
        "committer: {batches} batches, {:.1} appends per batch, {:.1} µs per batch write",
        LOG_BATCH_REQUESTS.get_sample_sum() / batches,
        LOG_WRITE_SECONDS.get_sample_sum() / batches * 1e6
    );
    group.finish();
}

criterion_group!(benches, append);
criterion_main!(benches);

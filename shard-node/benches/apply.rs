//! State-machine apply of a batch of writes on RocksDB, as a shard node does it
//! (with its element hints: a plain SET where no collection can be writes
//! without reading).

use std::collections::BTreeSet;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use redraft_common::keys::Ring;
use redraft_common::ops::{SetCondition, SetReply, WriteOp};
use redraft_node::apply::Keyspace;
use redraft_node::storage::ElementHints;
use redraft_raft_storage::engine::CF_DATA;
use redraft_raft_storage::{Engine, FsyncPolicy};

fn apply(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(&dir.path().join("db"), FsyncPolicy::Always).unwrap();
    let ring = Ring::new(1024);
    let owned: BTreeSet<u16> = (0..1024).collect();
    let hints = ElementHints::load(engine.db(), engine.cf(CF_DATA));
    let mut n = 0u64;
    let mut group = c.benchmark_group("apply");
    group.throughput(Throughput::Elements(100));
    group.bench_function("100 SETs in one batch", |b| {
        b.iter(|| {
            let db = engine.db();
            let mut ks = Keyspace::new(db, engine.cf(CF_DATA), &ring, &owned, 1).with_hints(&hints);
            for _ in 0..100 {
                n += 1;
                let op = WriteOp::Set {
                    key: format!("key:{}", n % 100_000).into_bytes(),
                    value: vec![b'v'; 64],
                    expiry: None,
                    condition: SetCondition::Always,
                    keep_ttl: false,
                    reply: SetReply::Ok,
                };
                ks.write(&op).unwrap();
            }
            db.write(ks.into_batch()).unwrap();
        })
    });
    group.bench_function("100 INCRs of 10 keys in one batch", |b| {
        b.iter(|| {
            let db = engine.db();
            let mut ks = Keyspace::new(db, engine.cf(CF_DATA), &ring, &owned, 1).with_hints(&hints);
            for i in 0..100 {
                ks.write(&WriteOp::IncrBy {
                    key: format!("counter:{}", i % 10).into_bytes(),
                    delta: 1,
                })
                .unwrap();
            }
            db.write(ks.into_batch()).unwrap();
        })
    });
    group.finish();
}

criterion_group!(benches, apply);
criterion_main!(benches);

//! RESP parse/encode, ring lookup and the wire encoding of a node request.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use redraft_common::keys::{Ring, DEFAULT_VNODES};
use redraft_common::resp::{parse_request, Frame};

fn resp(c: &mut Criterion) {
    let mut pipeline = Vec::new();
    for i in 0..16 {
        Frame::Array(vec![
            Frame::bulk("SET"),
            Frame::bulk(format!("key:{i:08}")),
            Frame::bulk(vec![b'x'; 64]),
        ])
        .encode(&mut pipeline);
    }
    let mut group = c.benchmark_group("resp");
    group.throughput(Throughput::Elements(16));
    group.bench_function("parse 16 pipelined SETs", |b| {
        b.iter(|| {
            let mut at = 0;
            while let Some((args, used)) = parse_request(black_box(&pipeline[at..])).unwrap() {
                black_box(args);
                at += used;
            }
        })
    });
    let reply = Frame::Array((0..16).map(|i| Frame::bulk(format!("value:{i:08}"))).collect());
    group.bench_function("encode 16-element array reply", |b| {
        let mut out = Vec::with_capacity(1024);
        b.iter(|| {
            out.clear();
            black_box(&reply).encode(&mut out);
        })
    });
    group.finish();
}

fn ring(c: &mut Criterion) {
    let ring = Ring::new(DEFAULT_VNODES);
    let keys: Vec<String> = (0..1024).map(|i| format!("user:{i}:profile")).collect();
    let mut group = c.benchmark_group("ring");
    group.throughput(Throughput::Elements(keys.len() as u64));
    group.bench_function("vnode_of 1024 keys (1024 vnodes)", |b| {
        b.iter(|| {
            for k in &keys {
                black_box(ring.vnode_of(k.as_bytes()));
            }
        })
    });
    group.finish();
}

fn wire_codec(c: &mut Criterion) {
    use redraft_common::ops::{SetCondition, SetReply, ShardOp, WriteOp};
    use redraft_common::wire::{self, NodeRequest};
    let ops: Vec<WriteOp> = (0..16)
        .map(|i| WriteOp::Set {
            key: format!("key:{i:08}").into_bytes(),
            value: vec![b'x'; 64],
            expiry: None,
            condition: SetCondition::Always,
            keep_ttl: false,
            reply: SetReply::Ok,
        })
        .collect();
    let req = NodeRequest::Exec {
        shard: 7,
        version: 3,
        op: ShardOp::Write(WriteOp::Many(ops)),
    };
    let bytes = wire::encode(&req);
    let mut group = c.benchmark_group("wire");
    group.throughput(Throughput::Elements(16));
    group.bench_function("encode 16 SETs", |b| {
        b.iter(|| black_box(wire::encode(black_box(&req))))
    });
    group.bench_function("decode 16 SETs", |b| {
        b.iter(|| black_box(wire::decode::<NodeRequest>(black_box(&bytes)).unwrap()))
    });
    group.finish();
}

criterion_group!(benches, resp, ring, wire_codec);
criterion_main!(benches);

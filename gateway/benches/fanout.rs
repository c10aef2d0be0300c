//! Hub fan-out without network: one publication to N subscribers of one channel (decode
//! already done, as the bus subscriber hands it over), encode once per format, a shared
//! `Bytes` into every queue. `cargo bench -p chorus-gateway --bench fanout`.

use bytes::Bytes;
use chorus_gateway::bench_support::Fanout;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

fn fanout(c: &mut Criterion) {
    let data = Bytes::from(vec![b'x'; 100]);
    let mut group = c.benchmark_group("hub_fanout");
    for subscribers in [1usize, 100, 1000, 10_000] {
        group.throughput(Throughput::Elements(subscribers as u64));
        for (name, share) in [("protobuf", 1.0), ("json+protobuf", 0.5)] {
            let mut f = Fanout::new(subscribers, share);
            group.bench_with_input(BenchmarkId::new(name, subscribers), &subscribers, |b, _| {
                b.iter(|| {
                    f.publish(data.clone());
                    f.drain()
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);

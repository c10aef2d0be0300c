//! Frame encoding and command decoding, per wire format: what the gateway does once per
//! publication (encode a publication push) and once per client command (decode).
//! `cargo bench -p chorus-protocol --bench encode`.

use bytes::Bytes;
use chorus_protocol::client::{self, command, push};
use chorus_protocol::wire::{self, Format};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn encode(c: &mut Criterion) {
    let json_data = Bytes::from(format!("{{\"text\":\"{}\"}}", "x".repeat(89)));
    let frame = wire::push(push::Body::Publication(client::Publication {
        channel: "chat:lobby".into(),
        offset: 123_456,
        epoch: "3f9a0c51e2b7".into(),
        data: json_data.clone(),
    }));
    let mut group = c.benchmark_group("encode_publication_100B");
    group.throughput(Throughput::Elements(1));
    for format in Format::CHORUS {
        group.bench_function(format!("{format:?}"), |b| {
            b.iter(|| wire::encode_frame(format, std::hint::black_box(&frame)))
        });
    }
    group.finish();

    let cmd = client::Command {
        id: 7,
        body: Some(command::Body::Publish(client::PublishRequest {
            channel: "chat:lobby".into(),
            data: json_data,
            echo: false,
        })),
    };
    let mut group = c.benchmark_group("decode_publish_command_100B");
    group.throughput(Throughput::Elements(1));
    for format in Format::CHORUS {
        let bytes = wire::encode_command(format, &cmd);
        group.bench_function(format!("{format:?}"), |b| {
            b.iter(|| wire::decode_command(format, std::hint::black_box(&bytes)))
        });
    }
    group.finish();
}

criterion_group!(benches, encode);
criterion_main!(benches);

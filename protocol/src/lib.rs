//! Chorus's shared contracts, with no I/O.
//!
//! Everything that two Chorus processes, or a client and a gateway, must agree on lives here:
//!
//! - [`client`]: the client protocol's protobuf types (generated from `proto/chorus/client.proto`);
//! - [`json`]: the same protocol's JSON form, used for WebSocket text frames;
//! - [`wire`]: the one entry point that decodes commands and encodes server frames in either
//!   [`wire::Format`], so a gateway encodes a publication once per format and shares the bytes;
//! - [`bus`]: the envelope that carries a publication over Redis (or the in-memory bus);
//! - [`api`]: the gRPC server API used by backend applications;
//! - [`channel`]: the channel-name rules, in one place;
//! - [`codes`]: the numeric error codes and WebSocket close codes clients see;
//! - [`pusher`]: the Pusher protocol's messages, for pusher-js clients of a gateway.
//!
//! Data flows one way through the codecs: bytes from a socket become a [`client::Command`] via
//! [`wire::decode_command`]; replies and pushes become bytes via [`wire::encode_frame`].

pub mod channel;
pub mod codes;
pub mod envelope;
pub mod json;
pub mod pusher;
pub mod wire;

/// Client protocol types (`chorus.client.v1`).
pub mod client {
    include!(concat!(env!("OUT_DIR"), "/chorus.client.v1.rs"));
}

/// Bus envelope (`chorus.bus.v1`).
pub mod bus {
    include!(concat!(env!("OUT_DIR"), "/chorus.bus.v1.rs"));
}

/// gRPC server API (`chorus.api.v1`), client and server stubs.
pub mod api {
    include!(concat!(env!("OUT_DIR"), "/chorus.api.v1.rs"));
}

/// The encoded `FileDescriptorSet` of every Chorus `.proto` file, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/chorus_descriptor.bin"));

/// The Chorus version, reported to clients on connect.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

//! Compiles the `.proto` contracts with protox (pure Rust), so building Chorus needs no
//! system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/chorus/client.proto",
        "proto/chorus/bus.proto",
        "proto/chorus/api.proto",
    ];
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(files, ["proto"])?;
    // The descriptors themselves, for gRPC server reflection (broker-api serves them so that
    // grpcurl and the like need no .proto file at hand).
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("chorus_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure().bytes(".").compile_fds(fds)?;
    Ok(())
}

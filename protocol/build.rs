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
    tonic_prost_build::configure().bytes(".").compile_fds(fds)?;
    Ok(())
}

//! Publishes one message through broker-api's gRPC API and prints where it landed.
//!
//! ```text
//! cargo run -p chorus-broker-api --example grpc_publish -- \
//!     --api http://127.0.0.1:8001 --key dev-key --channel chat:lobby --data '{"text":"hello over gRPC"}'
//! ```

use anyhow::Context;
use chorus_protocol::api::PublishRequest;
use chorus_protocol::api::chorus_api_client::ChorusApiClient;
use clap::Parser;

#[derive(Parser)]
struct Args {
    /// broker-api address (HTTP and gRPC share it).
    #[arg(long, default_value = "http://127.0.0.1:8001")]
    api: String,
    /// API key.
    #[arg(long, default_value = "dev-key")]
    key: String,
    /// Channel to publish to.
    #[arg(long)]
    channel: String,
    /// Message data (any bytes; JSON reaches JSON clients as JSON).
    #[arg(long)]
    data: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut client = ChorusApiClient::connect(args.api.clone())
        .await
        .with_context(|| format!("connecting to {}", args.api))?;
    let mut request = tonic::Request::new(PublishRequest {
        channel: args.channel,
        data: args.data.into_bytes().into(),
        ..Default::default()
    });
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", args.key)
            .parse()
            .context("API key is not a valid header value")?,
    );
    let reply = client
        .publish(request)
        .await
        .context("publish failed")?
        .into_inner();
    println!("published: offset {} epoch {}", reply.offset, reply.epoch);
    Ok(())
}

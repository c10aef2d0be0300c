//! Subscribes to channels and prints their publications as they arrive, surviving gateway
//! restarts (try stopping and starting `chorus` while it runs).
//!
//! ```sh
//! cargo run -p chorus-client --example tail -- chat:lobby news
//! cargo run -p chorus-client --example tail -- --url ws://127.0.0.1:8000/ws --protobuf news
//! ```

use chorus_client::{Client, Event, Format};
use clap::Parser;

#[derive(Parser)]
struct Args {
    /// The gateway's WebSocket URL.
    #[arg(long, default_value = "ws://127.0.0.1:8000/ws")]
    url: String,
    /// Use protobuf frames instead of JSON.
    #[arg(long)]
    protobuf: bool,
    /// Channels to follow.
    #[arg(required = true)]
    channels: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let format = if args.protobuf {
        Format::Protobuf
    } else {
        Format::Json
    };
    let (client, mut events) = Client::builder(&args.url)
        .format(format)
        .name("chorus-tail")
        .connect()?;
    // Subscribing waits for a connection; events must be read meanwhile, so subscribe from
    // another task.
    let subscriber = client.clone();
    let channels = args.channels.clone();
    tokio::spawn(async move {
        for channel in channels {
            if let Err(e) = subscriber.subscribe(&channel).await {
                eprintln!("# cannot subscribe to {channel}: {e}");
            }
        }
    });
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            _ = tokio::signal::ctrl_c() => {
                client.close().await;
                break;
            }
        };
        let Some(event) = event else { break };
        match event {
            Event::Publication(p) => {
                println!(
                    "{} {}@{} {}",
                    p.channel,
                    p.offset,
                    p.epoch,
                    String::from_utf8_lossy(&p.data)
                );
            }
            Event::Connected { node, .. } => eprintln!("# connected to {node}"),
            Event::Disconnected { code, reason, .. } => {
                eprintln!("# disconnected ({code:?}): {reason}")
            }
            Event::ConnectFailed { error, retry_in } => {
                eprintln!("# cannot connect: {error}; retrying in {retry_in:?}")
            }
            Event::Subscribed {
                channel,
                position,
                recovered,
                from,
            } => match (recovered, from) {
                (Some(false), Some(from)) => {
                    eprintln!("# {channel}: publications after {from} were LOST; now at {position}")
                }
                (Some(true), Some(from)) => eprintln!("# {channel}: recovering from {from}"),
                _ => eprintln!("# {channel}: subscribed at {position}"),
            },
            Event::SubscribeFailed {
                channel,
                code,
                message,
                retrying,
            } => {
                eprintln!("# {channel}: subscribe refused ({code} {message}); retrying: {retrying}")
            }
            Event::Gap {
                channel, position, ..
            } => eprintln!("# {channel}: gap after {position}; recovering"),
            Event::Join { channel, info } => {
                eprintln!("# {channel}: {} ({}) joined", info.user, info.client)
            }
            Event::Leave { channel, info } => {
                eprintln!("# {channel}: {} ({}) left", info.user, info.client)
            }
            Event::ServerSubscribed {
                channel, position, ..
            } => eprintln!("# {channel}: subscribed by the server at {position}"),
            Event::ServerUnsubscribed { channel, reason } => {
                eprintln!("# {channel}: unsubscribed by the server: {reason}")
            }
        }
    }
    Ok(())
}

//! The publisher: sends `messages` publications at `rate` per second (0: as fast as the
//! window of publishes in flight allows), each with its sequence number and send time in its
//! data, through broker-api (gRPC unary, gRPC streaming, HTTP/JSON) or into the ceiling server.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use chorus_protocol::api;
use chorus_protocol::api::chorus_api_client::ChorusApiClient;
use tokio::sync::{Semaphore, mpsc};
use tonic::metadata::MetadataValue;

use crate::ceiling::Ceiling;
use crate::client::Stats;
use crate::wire;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Via {
    /// gRPC `PublishStream`: one stream, publications pipelined.
    GrpcStream,
    /// gRPC unary `Publish`, `--window` calls in flight.
    Grpc,
    /// HTTP/JSON `POST /api/publish`, `--window` requests in flight.
    Http,
    /// The Pusher HTTP API, `POST /apps/{id}/events` signed with the app's secret, `--window`
    /// requests in flight (needs `--pusher-app`).
    Pusher,
}

/// A Pusher app's credentials, `ID:KEY:SECRET` on the command line.
#[derive(Debug, Clone)]
pub struct PusherApp {
    pub id: String,
    pub key: String,
    pub secret: String,
}

impl std::str::FromStr for PusherApp {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut parts = s.splitn(3, ':');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(id), Some(key), Some(secret)) if !id.is_empty() && !key.is_empty() => Ok(Self {
                id: id.into(),
                key: key.into(),
                secret: secret.into(),
            }),
            _ => Err(format!("{s:?}: expected ID:KEY:SECRET")),
        }
    }
}

impl PusherApp {
    /// The query string of a signed Pusher HTTP API call (auth_key, auth_timestamp,
    /// auth_version, body_md5, auth_signature).
    pub fn signed_query(&self, method: &str, path: &str, body: &[u8]) -> String {
        use hmac::Mac as _;
        use md5::Digest as _;
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let md5 = hex::encode(md5::Md5::digest(body));
        let query = format!(
            "auth_key={}&auth_timestamp={timestamp}&auth_version=1.0&body_md5={md5}",
            self.key
        );
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(self.secret.as_bytes())
            .expect("HMAC takes any key length");
        mac.update(format!("{method}\n{path}\n{query}").as_bytes());
        let signature = hex::encode(mac.finalize().into_bytes());
        format!("{query}&auth_signature={signature}")
    }
}

/// Where publications go.
pub enum Target {
    Api {
        via: Via,
        url: String,
        key: String,
        pusher: Option<PusherApp>,
    },
    Ceiling(Ceiling),
}

/// Which channel each publication goes to.
pub enum Pick {
    /// Always `channels[0]`.
    One,
    /// Uniformly among `channels[..n-1]`; the last (shared) one with probability `shared`.
    Random { shared: f64 },
}

#[derive(Default)]
pub struct PubStats {
    pub ok: AtomicU64,
    pub errors: AtomicU64,
    /// Refused for overload (HTTP 429, gRPC RESOURCE_EXHAUSTED): included in `errors`.
    pub rejected: AtomicU64,
    /// Publications published per channel (index into the channel list).
    pub per_channel: Vec<AtomicU64>,
}

impl PubStats {
    pub fn new(channels: usize) -> Arc<Self> {
        Arc::new(Self {
            per_channel: (0..channels).map(|_| AtomicU64::new(0)).collect(),
            ..Self::default()
        })
    }
}

pub struct Plan {
    pub messages: u64,
    pub rate: f64,
    pub size: usize,
    pub window: usize,
    pub channels: Arc<Vec<String>>,
    pub pick: Pick,
}

fn pick(plan: &Plan) -> usize {
    match plan.pick {
        Pick::One => 0,
        Pick::Random { shared } => {
            let n = plan.channels.len();
            if n == 1 || rand::random::<f64>() < shared {
                n - 1
            } else {
                rand::random_range(0..n - 1)
            }
        }
    }
}

/// Sends the plan; returns when every publication was answered.
pub async fn run(
    target: &Target,
    plan: &Plan,
    stats: &Arc<Stats>,
    out: &Arc<PubStats>,
) -> anyhow::Result<()> {
    let start = tokio::time::Instant::now();
    let due =
        |i: u64| (plan.rate > 0.0).then(|| start + Duration::from_secs_f64(i as f64 / plan.rate));
    match target {
        Target::Ceiling(ceiling) => {
            for i in 0..plan.messages {
                if let Some(at) = due(i) {
                    tokio::time::sleep_until(at).await;
                }
                let data = wire::payload(i, stats.now_us(), plan.size);
                ceiling.publish(i, Bytes::from(data)).await;
                out.ok.fetch_add(1, Ordering::Relaxed);
                out.per_channel[0].fetch_add(1, Ordering::Relaxed);
            }
        }
        Target::Api {
            via: Via::GrpcStream,
            url,
            key,
            ..
        } => {
            let mut client = grpc_client(url).await?;
            let window = Arc::new(Semaphore::new(plan.window.max(1)));
            let (tx, rx) = mpsc::channel::<api::PublishRequest>(plan.window.max(1));
            let (sent_tx, mut sent_rx) = mpsc::unbounded_channel::<usize>();
            let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
            request.metadata_mut().insert("authorization", bearer(key)?);
            let mut responses = client.publish_stream(request).await?.into_inner();
            let reader = {
                let (out, window) = (out.clone(), window.clone());
                tokio::spawn(async move {
                    loop {
                        let msg = responses.message().await;
                        let Ok(Some(result)) = msg else {
                            // The stream ended: whatever is still outstanding failed.
                            while sent_rx.try_recv().is_ok() {
                                out.errors.fetch_add(1, Ordering::Relaxed);
                            }
                            if let Err(e) = msg {
                                tracing::warn!(error = %e, "publish stream ended");
                            }
                            return;
                        };
                        let Some(ch) = sent_rx.recv().await else {
                            return;
                        };
                        window.add_permits(1);
                        match result.outcome {
                            Some(api::publish_stream_result::Outcome::Published(_)) => {
                                out.ok.fetch_add(1, Ordering::Relaxed);
                                out.per_channel[ch].fetch_add(1, Ordering::Relaxed);
                            }
                            Some(api::publish_stream_result::Outcome::Error(e)) => {
                                if e.code == "overloaded" {
                                    out.rejected.fetch_add(1, Ordering::Relaxed);
                                }
                                out.errors.fetch_add(1, Ordering::Relaxed);
                            }
                            None => {
                                out.errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                })
            };
            for i in 0..plan.messages {
                if let Some(at) = due(i) {
                    tokio::time::sleep_until(at).await;
                }
                window.acquire().await?.forget();
                let ch = pick(plan);
                let data = wire::payload(i, stats.now_us(), plan.size);
                let _ = sent_tx.send(ch);
                let req = api::PublishRequest {
                    channel: plan.channels[ch].clone(),
                    data: Bytes::from(data),
                    idempotency_key: String::new(),
                };
                if tx.send(req).await.is_err() {
                    break;
                }
            }
            drop(tx);
            drop(sent_tx);
            reader.await?;
        }
        Target::Api {
            via,
            url,
            key,
            pusher,
        } => {
            anyhow::ensure!(
                *via != Via::Pusher || pusher.is_some(),
                "--via pusher needs --pusher-app ID:KEY:SECRET"
            );
            let window = Arc::new(Semaphore::new(plan.window.max(1)));
            let grpc = match via {
                Via::Grpc => Some(grpc_client(url).await?),
                _ => None,
            };
            let http = reqwest::Client::builder()
                .pool_max_idle_per_host(plan.window)
                .build()?;
            let bearer_value = bearer(key)?;
            let mut tasks = tokio::task::JoinSet::new();
            for i in 0..plan.messages {
                if let Some(at) = due(i) {
                    tokio::time::sleep_until(at).await;
                }
                let permit = window.clone().acquire_owned().await?;
                let ch = pick(plan);
                let channel = plan.channels[ch].clone();
                let data = match via {
                    Via::Pusher => wire::payload_text(i, stats.now_us(), plan.size),
                    _ => wire::payload(i, stats.now_us(), plan.size),
                };
                let out = out.clone();
                let via = *via;
                let (grpc, http, url, key, bearer_value, pusher) = (
                    grpc.clone(),
                    http.clone(),
                    url.clone(),
                    key.clone(),
                    bearer_value.clone(),
                    pusher.clone(),
                );
                tasks.spawn(async move {
                    let _permit = permit;
                    let outcome: Result<(), bool> = match grpc {
                        Some(mut client) => {
                            let mut req = tonic::Request::new(api::PublishRequest {
                                channel,
                                data: Bytes::from(data),
                                idempotency_key: String::new(),
                            });
                            req.metadata_mut().insert("authorization", bearer_value);
                            client
                                .publish(req)
                                .await
                                .map(|_| ())
                                .map_err(|s| s.code() == tonic::Code::ResourceExhausted)
                        }
                        None if via == Via::Pusher => {
                            let app = pusher.as_ref().expect("checked above");
                            // Text data without quotes: embedded as the event's data string.
                            let mut body = Vec::with_capacity(data.len() + channel.len() + 48);
                            body.extend_from_slice(b"{\"name\":\"bench\",\"channel\":\"");
                            body.extend_from_slice(channel.as_bytes());
                            body.extend_from_slice(b"\",\"data\":\"");
                            body.extend_from_slice(&data);
                            body.extend_from_slice(b"\"}");
                            let path = format!("/apps/{}/events", app.id);
                            let query = app.signed_query("POST", &path, &body);
                            match http
                                .post(format!("{url}{path}?{query}"))
                                .header("content-type", "application/json")
                                .body(body)
                                .send()
                                .await
                            {
                                Ok(r) if r.status().is_success() => Ok(()),
                                Ok(r) => Err(r.status() == reqwest::StatusCode::TOO_MANY_REQUESTS),
                                Err(_) => Err(false),
                            }
                        }
                        None => {
                            // The data is JSON text: embed it as the `data` value.
                            let mut body = Vec::with_capacity(data.len() + channel.len() + 32);
                            body.extend_from_slice(b"{\"channel\":\"");
                            body.extend_from_slice(channel.as_bytes());
                            body.extend_from_slice(b"\",\"data\":");
                            body.extend_from_slice(&data);
                            body.push(b'}');
                            match http
                                .post(format!("{url}/api/publish"))
                                .bearer_auth(&key)
                                .header("content-type", "application/json")
                                .body(body)
                                .send()
                                .await
                            {
                                Ok(r) if r.status().is_success() => Ok(()),
                                Ok(r) => Err(r.status() == reqwest::StatusCode::TOO_MANY_REQUESTS),
                                Err(_) => Err(false),
                            }
                        }
                    };
                    match outcome {
                        Ok(()) => {
                            out.ok.fetch_add(1, Ordering::Relaxed);
                            out.per_channel[ch].fetch_add(1, Ordering::Relaxed);
                        }
                        Err(rejected) => {
                            out.errors.fetch_add(1, Ordering::Relaxed);
                            if rejected {
                                out.rejected.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                });
                while tasks.try_join_next().is_some() {}
            }
            while tasks.join_next().await.is_some() {}
        }
    }
    Ok(())
}

async fn grpc_client(url: &str) -> anyhow::Result<ChorusApiClient<tonic::transport::Channel>> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned())?
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("connecting to broker-api at {url}"))?;
    Ok(ChorusApiClient::new(channel))
}

fn bearer(key: &str) -> anyhow::Result<MetadataValue<tonic::metadata::Ascii>> {
    Ok(format!("Bearer {key}").parse()?)
}

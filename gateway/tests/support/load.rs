//! Steady load and message accounting for the fault-injection tests: a publisher at a fixed
//! rate over several channels that records every acknowledged offset, subscribers that record
//! every offset they receive, and the comparison of the two.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chorus_protocol::api;
use chorus_protocol::api::chorus_api_client::ChorusApiClient;
use chorus_protocol::client::{self, push, server_frame};
use chorus_testkit::WsClient;
use parking_lot::Mutex;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::authed;

/// What the publisher got acknowledged: per channel, the offsets with their epochs.
#[derive(Debug, Default, Clone)]
pub struct Acked {
    pub per_channel: BTreeMap<String, Vec<(String, u64)>>,
    pub errors: usize,
}

impl Acked {
    pub fn total(&self) -> usize {
        self.per_channel.values().map(Vec::len).sum()
    }

    /// The highest acknowledged offset of each channel in `epoch`-agnostic order of arrival.
    pub fn last(&self, channel: &str) -> Option<(String, u64)> {
        self.per_channel.get(channel)?.last().cloned()
    }
}

/// Publishes round-robin over `channels` at about `rate` messages per second until stopped.
pub struct Publisher {
    stop: CancellationToken,
    task: JoinHandle<Acked>,
}

impl Publisher {
    pub fn start(api: SocketAddr, channels: Vec<String>, rate: u32) -> Self {
        let stop = CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            let grpc = ChorusApiClient::connect(format!("http://{api}"))
                .await
                .expect("gRPC connect");
            let mut acked = Acked::default();
            let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // Publishes overlap (up to MAX_IN_FLIGHT), so the rate holds even when one publish
            // takes longer than the tick; what matters is what each one acknowledged.
            const MAX_IN_FLIGHT: usize = 64;
            let mut in_flight = futures::stream::FuturesUnordered::new();
            let mut n = 0usize;
            let record =
                |acked: &mut Acked, done: (String, Option<api::PublishResponse>)| match done {
                    (channel, Some(r)) => acked
                        .per_channel
                        .entry(channel)
                        .or_default()
                        .push((r.epoch, r.offset)),
                    (_, None) => acked.errors += 1,
                };
            while !token.is_cancelled() {
                tokio::select! {
                    _ = tick.tick(), if in_flight.len() < MAX_IN_FLIGHT => {
                        let channel = channels[n % channels.len()].clone();
                        n += 1;
                        let mut grpc = grpc.clone();
                        let req = authed(api::PublishRequest {
                            channel: channel.clone(),
                            data: format!("{n}").into_bytes().into(),
                            ..Default::default()
                        });
                        in_flight.push(async move {
                            let sent = tokio::time::timeout(Duration::from_secs(3), grpc.publish(req)).await;
                            (channel, sent.ok().and_then(Result::ok).map(tonic::Response::into_inner))
                        });
                    }
                    Some(done) = futures::StreamExt::next(&mut in_flight) => record(&mut acked, done),
                }
            }
            while let Some(done) = futures::StreamExt::next(&mut in_flight).await {
                record(&mut acked, done);
            }
            acked
        });
        Self { stop, task }
    }

    pub async fn stop(self) -> Acked {
        self.stop.cancel();
        self.task.await.expect("publisher task")
    }
}

/// What one subscriber received, per channel: (epoch, offset) in arrival order.
pub type Received = Arc<Mutex<HashMap<String, Vec<(String, u64)>>>>;

/// A connected client that records every publication until stopped or closed.
pub struct Tally {
    pub received: Received,
    /// Publish → receive latency (µs) of publications whose JSON data carries `"t"`, the
    /// publisher's clock in µs since the Unix epoch.
    pub latencies_us: Arc<Mutex<Vec<i64>>>,
    stop: CancellationToken,
    task: JoinHandle<Option<u16>>,
}

impl Tally {
    /// Subscribes `client` to `channels` (it must be connected) and starts recording.
    pub async fn start(mut client: WsClient, channels: &[String]) -> Self {
        for ch in channels {
            client.subscribe(ch).await.expect("subscribe");
        }
        let received: Received = Arc::default();
        let latencies_us: Arc<Mutex<Vec<i64>>> = Arc::default();
        let stop = CancellationToken::new();
        let (rec, token, lat) = (received.clone(), stop.clone(), latencies_us.clone());
        let task = tokio::spawn(async move {
            loop {
                let frame = tokio::select! {
                    _ = token.cancelled() => return None,
                    frame = client.next_frame() => frame,
                };
                match frame {
                    Ok(client::ServerFrame {
                        frame: Some(server_frame::Frame::Push(client::Push { body: Some(body) })),
                    }) => match body {
                        push::Body::Publication(p) => {
                            if let Some(t) = serde_json::from_slice::<serde_json::Value>(&p.data)
                                .ok()
                                .and_then(|v| v["t"].as_i64())
                            {
                                lat.lock().push(now_us() - t);
                            }
                            rec.lock()
                                .entry(p.channel)
                                .or_default()
                                .push((p.epoch, p.offset));
                        }
                        push::Body::Disconnect(d) => return u16::try_from(d.code).ok(),
                        _ => {}
                    },
                    Ok(_) => {}
                    // No frame within the wait while idle is fine; a closed socket ends it.
                    Err(e) if e.to_string().contains("no frame within") => {}
                    Err(_) => return None,
                }
            }
        });
        Self {
            received,
            latencies_us,
            stop,
            task,
        }
    }

    /// Takes the latencies recorded so far.
    pub fn take_latencies(&self) -> Vec<i64> {
        std::mem::take(&mut *self.latencies_us.lock())
    }

    /// The highest offset received on `channel` so far.
    pub fn last(&self, channel: &str) -> u64 {
        self.received
            .lock()
            .get(channel)
            .and_then(|v| v.iter().map(|(_, o)| *o).max())
            .unwrap_or(0)
    }

    /// Stops recording; returns the disconnect code the server sent, if any.
    pub async fn stop(self) -> (HashMap<String, Vec<(String, u64)>>, Option<u16>) {
        self.stop.cancel();
        let code = self.task.await.expect("tally task");
        let received = std::mem::take(&mut *self.received.lock());
        (received, code)
    }
}

/// The accounting of one subscriber on one channel against what was published.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub delivered: usize,
    pub lost: usize,
    pub duplicated: usize,
    pub out_of_order: usize,
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, o: Self) {
        self.delivered += o.delivered;
        self.lost += o.lost;
        self.duplicated += o.duplicated;
        self.out_of_order += o.out_of_order;
    }
}

/// Microseconds since the Unix epoch.
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// One line of a fault test's counts: what was published against what the subscribers got.
pub fn summary(acked: &Acked, counts: Counts) -> String {
    format!(
        "published {} (publish errors {}), delivered {}, lost {}, duplicated {}, out of order {}",
        acked.total(),
        acked.errors,
        counts.delivered,
        counts.lost,
        counts.duplicated,
        counts.out_of_order
    )
}

/// The `q` quantile (0..=1) of `values` (sorted in place); 0 when empty.
pub fn quantile(values: &mut [i64], q: f64) -> i64 {
    if values.is_empty() {
        return 0;
    }
    values.sort_unstable();
    let i = ((values.len() - 1) as f64 * q).round() as usize;
    values[i]
}

/// Compares the offsets received (in arrival order) with every offset from 1 to `top`.
pub fn count(received: &[u64], top: u64) -> Counts {
    let mut seen = std::collections::HashSet::new();
    let mut counts = Counts {
        delivered: received.len(),
        ..Counts::default()
    };
    let mut previous = 0;
    for &o in received {
        if !seen.insert(o) {
            counts.duplicated += 1;
        }
        if o <= previous {
            counts.out_of_order += 1;
        }
        previous = o;
    }
    counts.lost = (1..=top).filter(|o| !seen.contains(o)).count();
    counts
}

/// What a `chorus-client` subscriber saw: its publications per channel, its subscribe
/// outcomes and its disconnects, in order.
#[derive(Debug, Default)]
pub struct Seen {
    pub publications: HashMap<String, Vec<(String, u64)>>,
    /// (channel, position, recovered) of every `Subscribed` event.
    pub subscribed: Vec<(String, chorus_client::Position, Option<bool>)>,
    pub disconnects: Vec<Option<u16>>,
}

/// A `chorus-client` client (reconnecting, recovering) subscribed to channels, recording
/// everything it delivers.
pub struct Follower {
    pub client: chorus_client::Client,
    pub seen: Arc<Mutex<Seen>>,
    task: JoinHandle<()>,
}

impl Follower {
    /// Connects to `urls[0]` (the others are fallbacks) and subscribes to `channels`.
    pub async fn start(urls: &[String], channels: &[String]) -> Self {
        let mut builder = chorus_client::Client::builder(urls[0].clone())
            .format(chorus_protocol::wire::Format::Protobuf)
            .backoff(chorus_client::Backoff {
                min: Duration::from_millis(50),
                max: Duration::from_millis(500),
                ..chorus_client::Backoff::default()
            });
        for url in &urls[1..] {
            builder = builder.fallback(url.clone());
        }
        let (client, mut events) = builder.connect().expect("client starts");
        let seen: Arc<Mutex<Seen>> = Arc::default();
        let record = seen.clone();
        let task = tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                let mut seen = record.lock();
                match event {
                    chorus_client::Event::Publication(p) => seen
                        .publications
                        .entry(p.channel)
                        .or_default()
                        .push((p.epoch, p.offset)),
                    chorus_client::Event::Subscribed {
                        channel,
                        position,
                        recovered,
                        ..
                    } => seen.subscribed.push((channel, position, recovered)),
                    chorus_client::Event::Disconnected { code, .. } => seen.disconnects.push(code),
                    _ => {}
                }
            }
        });
        for ch in channels {
            client.subscribe(ch.clone()).await.expect("subscribe");
        }
        Self { client, seen, task }
    }

    /// The highest offset delivered on `channel` in `epoch`.
    pub fn last(&self, channel: &str, epoch: &str) -> u64 {
        self.seen
            .lock()
            .publications
            .get(channel)
            .and_then(|v| v.iter().filter(|(e, _)| e == epoch).map(|(_, o)| *o).max())
            .unwrap_or(0)
    }

    pub async fn stop(self) -> (Seen, chorus_client::Stats) {
        let stats = self.client.stats();
        self.client.close().await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
        let seen = std::mem::take(&mut *self.seen.lock());
        (seen, stats)
    }
}

/// Waits until every follower delivered the last acknowledged offset of every channel.
pub async fn settle(followers: &[Follower], acked: &Acked) {
    let done = || {
        followers.iter().all(|f| {
            acked.per_channel.iter().all(|(ch, offs)| {
                offs.last()
                    .is_none_or(|(epoch, top)| f.last(ch, epoch) >= *top)
            })
        })
    };
    let _ = chorus_testkit::eventually(Duration::from_secs(20), "followers caught up", || {
        let all = done();
        async move { all }
    })
    .await;
}

/// Followers spread over the gateways, each with the others as fallbacks.
pub async fn followers(urls: &[String], chans: &[String], n: usize) -> Vec<Follower> {
    let mut out = Vec::new();
    for i in 0..n {
        let mut order = urls.to_vec();
        order.rotate_left(i % urls.len());
        out.push(Follower::start(&order, chans).await);
    }
    out
}

/// Counts what the followers delivered against what was acknowledged, epoch by epoch: in each
/// epoch a follower's offsets must run without a hole from where it started to the top.
pub fn tally(seen: &[Seen], acked: &Acked) -> Counts {
    let mut total = Counts::default();
    for s in seen {
        for (ch, offs) in &acked.per_channel {
            let mut tops: BTreeMap<&str, u64> = BTreeMap::new();
            for (epoch, o) in offs {
                let top = tops.entry(epoch).or_default();
                *top = (*top).max(*o);
            }
            for (epoch, top) in tops {
                let got: Vec<u64> = s
                    .publications
                    .get(ch)
                    .into_iter()
                    .flatten()
                    .filter(|(e, _)| e == epoch)
                    .map(|(_, o)| *o)
                    .collect();
                total += count(&got, top);
            }
        }
    }
    total
}

pub fn report(name: &str, acked: &Acked, counts: Counts, stats: &[chorus_client::Stats]) {
    let dups: u64 = stats.iter().map(|s| s.duplicates).sum();
    let reconnects: u64 = stats.iter().map(|s| s.connects.saturating_sub(1)).sum();
    println!(
        "{name}: {}; duplicates dropped by the clients {dups}, reconnects {reconnects}",
        summary(acked, counts)
    );
}

pub async fn stop_all(followers: Vec<Follower>) -> (Vec<Seen>, Vec<chorus_client::Stats>) {
    let mut seen = Vec::new();
    let mut stats = Vec::new();
    for f in followers {
        let (s, st) = f.stop().await;
        seen.push(s);
        stats.push(st);
    }
    (seen, stats)
}

pub fn assert_nothing_lost(counts: Counts, stats: &[chorus_client::Stats]) {
    assert_eq!(counts.lost, 0, "{counts:?}");
    assert_eq!(counts.duplicated, 0, "{counts:?}");
    assert_eq!(counts.out_of_order, 0, "{counts:?}");
    // The gateways sent no duplicate either (the client would have dropped it silently).
    assert!(stats.iter().all(|s| s.duplicates == 0), "{stats:?}");
    assert!(stats.iter().all(|s| s.unrecovered == 0), "{stats:?}");
}

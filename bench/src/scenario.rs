//! The scenarios: fan-out (one channel, many clients), channels (a channel per client plus a
//! shared one), connect (connection rate and memory per connection) and ceiling (the fan-out
//! against the in-process server). Each ends with a [`Report`].

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{Semaphore, watch};

use crate::ceiling::Ceiling;
use crate::client::{self, Stats};
use crate::procstat::{self, Usage, Watched};
use crate::publisher::{self, Pick, Plan, PubStats, Target, Via};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    Fanout,
    Channels,
    Connect,
    Ceiling,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub scenario: Scenario,
    pub gateways: Vec<SocketAddr>,
    /// Ports of the ceiling server (it listens on this many).
    pub ceiling_ports: usize,
    pub api: String,
    pub api_key: String,
    pub via: Via,
    /// The clients' protocol.
    pub protocol: Arc<client::Protocol>,
    /// The clients offer permessage-deflate.
    pub deflate: bool,
    /// The Pusher app (`--via pusher`).
    pub pusher: Option<publisher::PusherApp>,
    pub clients: usize,
    pub messages: u64,
    pub rate: f64,
    pub size: usize,
    pub window: usize,
    pub connect_concurrency: usize,
    pub sources: u8,
    pub servers: Vec<Watched>,
    pub ceiling_dps: Option<f64>,
    pub shared_fraction: f64,
    pub drain: Duration,
    pub settle: Duration,
    pub progress: bool,
    pub label: String,
    /// The services' `/metrics` URLs (broker-api's, each gateway's): their latency histograms
    /// over the run give the per-stage latencies.
    pub metrics: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Latency {
    fn of(h: &crate::hist::Histogram) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            p50: ms(h.quantile(0.5)),
            p90: ms(h.quantile(0.9)),
            p99: ms(h.quantile(0.99)),
            p999: ms(h.quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub label: String,
    pub scenario: String,
    pub via: String,
    /// The clients' protocol: protobuf, json or pusher.
    pub protocol: String,
    pub clients: usize,
    pub gateways: usize,
    pub clients_failed: usize,
    pub messages: u64,
    pub rate: f64,
    pub size: usize,
    pub published: u64,
    pub publish_errors: u64,
    pub publish_rejected: u64,
    pub publish_seconds: f64,
    pub deliveries: u64,
    pub expected_deliveries: u64,
    pub seconds: f64,
    pub deliveries_per_sec: f64,
    /// Publish → receive, milliseconds.
    pub latency_ms: Latency,
    pub lost: u64,
    pub duplicated: u64,
    pub disconnects: u64,
    /// Connections re-established after a disconnect (close 3000/3002/3003, a dropped
    /// socket, ...), each channel resubscribed with recovery.
    pub reconnects: u64,
    /// Resubscriptions that recovered what they missed from history.
    pub recovered: u64,
    /// Resubscriptions that could not recover (their gap counts as lost).
    pub not_recovered: u64,
    /// Clients that stopped before the end (a close not to reconnect after, or every
    /// reconnection attempt failed).
    pub gave_up: u64,
    pub servers: Vec<Usage>,
    pub gateway_cpu_us_per_delivery: Option<f64>,
    pub server_cpu_us_per_delivery: Option<f64>,
    pub ceiling_deliveries_per_sec: Option<f64>,
    pub ratio_to_ceiling: Option<f64>,
    /// connect: connections per second, handshake and subscribe latency (ms).
    pub connections_per_sec: Option<f64>,
    pub handshake_ms: Option<Latency>,
    pub subscribed_ms: Option<Latency>,
    pub gateway_kib_per_connection: Option<f64>,
    /// Whether the clients offered permessage-deflate.
    pub deflate: bool,
    /// Bytes the clients read from their sockets over the run, per delivery (frames, headers
    /// and replies included).
    pub wire_bytes_per_delivery: Option<f64>,
    /// CPU time of this load generator over the same window, ms.
    pub generator_cpu_ms: f64,
    /// Per-stage latencies from the services' histograms (with `--metrics`).
    pub stages: Vec<Stage>,
}

/// One stage of a publication's way, from the services' own histograms over the run: the
/// quantiles are bucket bounds (the histograms' resolution), not exact values.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stage {
    pub stage: String,
    /// Publications the stage recorded.
    pub recorded: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// The histograms of the stages, in the order a publication passes them.
const STAGES: [(&str, &str); 3] = [
    (
        "broker-api: request to Redis's acknowledgement",
        "chorus_api_publish_duration_seconds",
    ),
    (
        "publish to the gateway receiving it (bus)",
        "chorus_gateway_receive_latency_seconds",
    ),
    (
        "publish to the socket write (bus + gateway queue)",
        "chorus_gateway_delivery_latency_seconds",
    ),
];

/// Every `--metrics` URL's scrape, added up (`None` without any).
async fn scrape_all(urls: &[String]) -> Option<chorus_testkit::Scrape> {
    if urls.is_empty() {
        return None;
    }
    let mut merged = chorus_testkit::Scrape::default();
    for url in urls {
        match chorus_testkit::Scrape::fetch(url).await {
            Ok(s) => merged.merge(&s),
            Err(e) => tracing::warn!(url, error = %e, "metrics scrape failed"),
        }
    }
    Some(merged)
}

fn stages(before: &chorus_testkit::Scrape, after: &chorus_testkit::Scrape) -> Vec<Stage> {
    STAGES
        .iter()
        .filter_map(|(stage, name)| {
            let (p50, recorded) = after.quantile_since(before, name, 0.5)?;
            let (p99, _) = after.quantile_since(before, name, 0.99)?;
            Some(Stage {
                stage: (*stage).to_owned(),
                recorded,
                p50_ms: p50 * 1000.0,
                p99_ms: p99 * 1000.0,
            })
        })
        .collect()
}

fn own_cpu() -> Duration {
    procstat::sample(std::process::id()).map_or(Duration::ZERO, |s| s.cpu)
}

fn source(opts: &Options, i: usize) -> Option<IpAddr> {
    (opts.sources > 1).then(|| {
        IpAddr::V4(Ipv4Addr::new(
            127,
            0,
            0,
            1 + (i % opts.sources as usize) as u8,
        ))
    })
}

fn progress(opts: &Options, line: String) {
    if opts.progress {
        eprintln!("{line}");
    }
}

/// Spawns the clients and waits until each is subscribed or failed.
async fn spawn_clients(
    opts: &Options,
    addrs: &[SocketAddr],
    channels_of: impl Fn(usize) -> Vec<String>,
    stats: &Arc<Stats>,
    stop: &watch::Receiver<bool>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<Option<client::Received>>>> {
    anyhow::ensure!(!addrs.is_empty(), "no gateway address (--gateway)");
    let limit = Arc::new(Semaphore::new(opts.connect_concurrency.max(1)));
    let mut handles = Vec::with_capacity(opts.clients);
    for i in 0..opts.clients {
        let spec = client::Spec {
            addr: addrs[i % addrs.len()],
            source: source(opts, i),
            channels: channels_of(i),
            protocol: opts.protocol.clone(),
            deflate: opts.deflate,
        };
        handles.push(tokio::spawn(client::run(
            spec,
            stats.clone(),
            limit.clone(),
            stop.clone(),
        )));
    }
    let started = Instant::now();
    let mut last_print = Instant::now();
    loop {
        let (ready, failed) = (
            stats.ready.load(Ordering::Relaxed),
            stats.failed.load(Ordering::Relaxed),
        );
        if ready + failed >= opts.clients {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(300),
            "clients not subscribed after 300 s ({ready} ready, {failed} failed)"
        );
        if last_print.elapsed() >= Duration::from_secs(1) {
            progress(
                opts,
                format!(
                    "  connecting: {ready}/{} subscribed, {failed} failed",
                    opts.clients
                ),
            );
            last_print = Instant::now();
        }
        let _ =
            tokio::time::timeout(Duration::from_millis(50), stats.ready_changed.notified()).await;
    }
    Ok(handles)
}

pub async fn run(opts: Options) -> anyhow::Result<Report> {
    match opts.scenario {
        Scenario::Connect => connect(opts).await,
        _ => fanout(opts).await,
    }
}

async fn fanout(opts: Options) -> anyhow::Result<Report> {
    let run_id: u32 = rand::random();
    let stats = Stats::new(Instant::now());
    let (stop_tx, stop) = watch::channel(false);
    let (target, addrs, channels, pick) = match opts.scenario {
        Scenario::Ceiling => {
            anyhow::ensure!(
                !matches!(*opts.protocol, client::Protocol::Pusher { .. }),
                "the ceiling speaks Chorus's protobuf and JSON forms, not the Pusher protocol"
            );
            let (ceiling, addrs) = Ceiling::start(opts.ceiling_ports).await?;
            (
                Target::Ceiling(ceiling),
                addrs,
                vec!["ceiling".to_owned()],
                Pick::One,
            )
        }
        Scenario::Fanout => (
            Target::Api {
                via: opts.via,
                url: opts.api.clone(),
                key: opts.api_key.clone(),
                pusher: opts.pusher.clone(),
            },
            opts.gateways.clone(),
            vec![format!("bench-{run_id:08x}-fanout")],
            Pick::One,
        ),
        Scenario::Channels => {
            let mut chans: Vec<String> = (0..opts.clients)
                .map(|i| format!("bench-{run_id:08x}-c{i}"))
                .collect();
            chans.push(format!("bench-{run_id:08x}-shared"));
            (
                Target::Api {
                    via: opts.via,
                    url: opts.api.clone(),
                    key: opts.api_key.clone(),
                    pusher: opts.pusher.clone(),
                },
                opts.gateways.clone(),
                chans,
                Pick::Random {
                    shared: opts.shared_fraction,
                },
            )
        }
        Scenario::Connect => unreachable!("connect has its own runner"),
    };
    let channels = Arc::new(channels);
    let per_client = {
        let channels = channels.clone();
        let scenario = opts.scenario;
        move |i: usize| -> Vec<usize> {
            match scenario {
                Scenario::Channels => vec![i, channels.len() - 1],
                _ => vec![0],
            }
        }
    };
    let handles = {
        let channels = channels.clone();
        let per_client = per_client.clone();
        spawn_clients(
            &opts,
            &addrs,
            move |i| {
                per_client(i)
                    .into_iter()
                    .map(|c| channels[c].clone())
                    .collect()
            },
            &stats,
            &stop,
        )
        .await?
    };
    let failed = stats.failed.load(Ordering::Relaxed);
    progress(
        &opts,
        format!(
            "  {} clients subscribed ({failed} failed); publishing {} messages at {} /s",
            opts.clients - failed,
            opts.messages,
            if opts.rate > 0.0 {
                opts.rate.to_string()
            } else {
                "max".into()
            }
        ),
    );

    let before = procstat::sample_all(&opts.servers);
    let own_before = own_cpu();
    let metrics_before = scrape_all(&opts.metrics).await;
    let pubstats = PubStats::new(channels.len());
    let plan = Plan {
        messages: opts.messages,
        rate: opts.rate,
        size: opts.size,
        window: opts.window,
        channels: channels.clone(),
        pick,
    };
    let started = Instant::now();
    let publishing = {
        let stats = stats.clone();
        let pubstats = pubstats.clone();
        async move { publisher::run(&target, &plan, &stats, &pubstats).await }
    };
    tokio::pin!(publishing);
    let mut published_at: Option<Duration> = None;
    let mut last_change = started;
    let mut last_count = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut second = (Instant::now(), 0u64);
    loop {
        tokio::select! {
            r = &mut publishing, if published_at.is_none() => {
                r?;
                published_at = Some(started.elapsed());
            }
            _ = tick.tick() => {}
        }
        let delivered = stats.delivered.load(Ordering::Relaxed);
        if delivered != last_count {
            last_count = delivered;
            last_change = Instant::now();
        }
        if second.0.elapsed() >= Duration::from_secs(1) {
            let dps = (delivered - second.1) as f64 / second.0.elapsed().as_secs_f64();
            progress(
                &opts,
                format!(
                    "  {:>5.1}s published {:>8} (errors {}), delivered {:>10} ({:>9.0}/s), reconnects {}",
                    started.elapsed().as_secs_f64(),
                    pubstats.ok.load(Ordering::Relaxed),
                    pubstats.errors.load(Ordering::Relaxed),
                    delivered,
                    dps,
                    stats.reconnects.load(Ordering::Relaxed)
                ),
            );
            second = (Instant::now(), delivered);
        }
        if published_at.is_some() {
            let expected: u64 =
                expected_total(&opts, &pubstats, &per_client, failed_set_size(&stats));
            if delivered >= expected || last_change.elapsed() >= opts.drain {
                break;
            }
        }
    }
    let seconds = last_change.duration_since(started).as_secs_f64().max(1e-3);
    let servers = procstat::usage(&opts.servers, &before);
    let stage_latencies = match (&metrics_before, scrape_all(&opts.metrics).await) {
        (Some(before), Some(after)) => stages(before, &after),
        _ => Vec::new(),
    };
    let generator_cpu_ms = own_cpu().saturating_sub(own_before).as_secs_f64() * 1000.0;
    let _ = stop_tx.send(true);
    let mut lost = 0u64;
    let mut expected_deliveries = 0u64;
    for (i, h) in handles.into_iter().enumerate() {
        let Ok(Some(received)) = h.await else {
            continue;
        };
        for (k, ch) in per_client(i).into_iter().enumerate() {
            let want = pubstats.per_channel[ch].load(Ordering::Relaxed);
            expected_deliveries += want;
            lost += want.saturating_sub(received.get(k).copied().unwrap_or(0));
        }
    }
    let deliveries = stats.delivered.load(Ordering::Relaxed);
    let duplicated = stats.duplicates.load(Ordering::Relaxed);
    let mut report = Report {
        label: opts.label.clone(),
        scenario: format!("{:?}", opts.scenario).to_lowercase(),
        via: match opts.scenario {
            Scenario::Ceiling => "in-process".into(),
            _ => serde_json::to_value(opts.via)?
                .as_str()
                .unwrap_or("")
                .to_owned(),
        },
        protocol: opts.protocol.name().to_owned(),
        clients: opts.clients,
        gateways: addrs.len(),
        clients_failed: stats.failed.load(Ordering::Relaxed),
        messages: opts.messages,
        rate: opts.rate,
        size: opts.size.max(crate::wire::DATA_MIN),
        published: pubstats.ok.load(Ordering::Relaxed),
        publish_errors: pubstats.errors.load(Ordering::Relaxed),
        publish_rejected: pubstats.rejected.load(Ordering::Relaxed),
        publish_seconds: published_at.unwrap_or_default().as_secs_f64(),
        deliveries,
        expected_deliveries,
        seconds,
        deliveries_per_sec: deliveries.saturating_sub(duplicated) as f64 / seconds,
        latency_ms: Latency::of(&stats.latency.lock()),
        lost,
        duplicated,
        disconnects: stats.disconnects.load(Ordering::Relaxed),
        reconnects: stats.reconnects.load(Ordering::Relaxed),
        recovered: stats.recovered.load(Ordering::Relaxed),
        not_recovered: stats.not_recovered.load(Ordering::Relaxed),
        gave_up: stats.gave_up.load(Ordering::Relaxed),
        generator_cpu_ms,
        stages: stage_latencies,
        deflate: opts.deflate,
        wire_bytes_per_delivery: (deliveries > 0)
            .then(|| stats.wire_bytes.load(Ordering::Relaxed) as f64 / deliveries as f64),
        ..Report::default()
    };
    cpu_per_delivery(&mut report, servers);
    if let Some(c) = opts.ceiling_dps.filter(|c| *c > 0.0) {
        report.ceiling_deliveries_per_sec = Some(c);
        report.ratio_to_ceiling = Some(report.deliveries_per_sec / c);
    }
    Ok(report)
}

fn failed_set_size(stats: &Stats) -> usize {
    stats.failed.load(Ordering::Relaxed)
}

/// Deliveries expected so far (before the end, per-client detail is not known: failed
/// clients are assumed to be subscribed to one channel each).
fn expected_total(
    opts: &Options,
    pubstats: &PubStats,
    per_client: &impl Fn(usize) -> Vec<usize>,
    failed: usize,
) -> u64 {
    let live = opts.clients.saturating_sub(failed) as u64;
    match opts.scenario {
        Scenario::Channels => {
            let shared = pubstats
                .per_channel
                .last()
                .map_or(0, |c| c.load(Ordering::Relaxed));
            let own: u64 = pubstats.per_channel[..pubstats.per_channel.len() - 1]
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .sum();
            let _ = per_client;
            own + shared * live
        }
        _ => pubstats.per_channel[0].load(Ordering::Relaxed) * live,
    }
}

fn cpu_per_delivery(report: &mut Report, servers: Vec<Usage>) {
    let d = report.deliveries.max(1) as f64;
    let gw: f64 = servers
        .iter()
        .filter(|s| s.name.starts_with("gateway"))
        .map(|s| s.cpu_ms)
        .sum();
    let all: f64 = servers.iter().map(|s| s.cpu_ms).sum();
    if !servers.is_empty() && report.deliveries > 0 {
        report.gateway_cpu_us_per_delivery = Some(gw * 1000.0 / d);
        report.server_cpu_us_per_delivery = Some(all * 1000.0 / d);
    }
    report.servers = servers;
}

async fn connect(opts: Options) -> anyhow::Result<Report> {
    let run_id: u32 = rand::random();
    let stats = Stats::new(Instant::now());
    let (stop_tx, stop) = watch::channel(false);
    let before = procstat::sample_all(&opts.servers);
    let own_before = own_cpu();
    let channel = format!("bench-{run_id:08x}-idle");
    let started = Instant::now();
    let handles = spawn_clients(
        &opts,
        &opts.gateways,
        |_| vec![channel.clone()],
        &stats,
        &stop,
    )
    .await?;
    let seconds = started.elapsed().as_secs_f64().max(1e-3);
    let ready = stats.ready.load(Ordering::Relaxed);
    let generator_cpu_ms = own_cpu().saturating_sub(own_before).as_secs_f64() * 1000.0;
    progress(
        &opts,
        format!("  {ready} connections subscribed in {seconds:.2} s; settling"),
    );
    tokio::time::sleep(opts.settle).await;
    let servers = procstat::usage(&opts.servers, &before);
    let _ = stop_tx.send(true);
    for h in handles {
        let _ = h.await;
    }
    let gw: Vec<&Usage> = servers
        .iter()
        .filter(|s| s.name.starts_with("gateway"))
        .collect();
    let grown: i64 = gw
        .iter()
        .map(|s| s.rss_kib_after as i64 - s.rss_kib_before as i64)
        .sum();
    Ok(Report {
        label: opts.label.clone(),
        scenario: "connect".into(),
        clients: opts.clients,
        gateways: opts.gateways.len(),
        clients_failed: stats.failed.load(Ordering::Relaxed),
        seconds,
        connections_per_sec: Some(ready as f64 / seconds),
        handshake_ms: Some(Latency::of(&stats.handshake.lock())),
        subscribed_ms: Some(Latency::of(&stats.subscribed.lock())),
        gateway_kib_per_connection: (!gw.is_empty() && ready > 0)
            .then(|| grown as f64 / ready as f64),
        disconnects: stats.disconnects.load(Ordering::Relaxed),
        servers,
        generator_cpu_ms,
        ..Report::default()
    })
}

impl Report {
    /// The human summary.
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "== {} {} ({} clients, {} gateways{}) ==",
            self.scenario,
            self.label,
            self.clients,
            self.gateways,
            if self.clients_failed > 0 {
                format!(", {} FAILED to subscribe", self.clients_failed)
            } else {
                String::new()
            }
        );
        if self.scenario == "connect" {
            let _ = writeln!(
                s,
                "connections/s      {:.0}",
                self.connections_per_sec.unwrap_or(0.0)
            );
            if let Some(h) = &self.handshake_ms {
                let _ = writeln!(
                    s,
                    "handshake ms       p50 {:.2}  p99 {:.2}  max {:.2}",
                    h.p50, h.p99, h.max
                );
            }
            if let Some(h) = &self.subscribed_ms {
                let _ = writeln!(
                    s,
                    "subscribed ms      p50 {:.2}  p99 {:.2}  max {:.2}",
                    h.p50, h.p99, h.max
                );
            }
            if let Some(k) = self.gateway_kib_per_connection {
                let _ = writeln!(s, "gateway KiB/conn   {k:.2}");
            }
        } else {
            let _ = writeln!(
                s,
                "published          {} in {:.2} s ({} errors, {} rejected for overload)",
                self.published, self.publish_seconds, self.publish_errors, self.publish_rejected
            );
            let _ = writeln!(
                s,
                "deliveries         {} of {} expected in {:.2} s",
                self.deliveries, self.expected_deliveries, self.seconds
            );
            let _ = writeln!(s, "deliveries/s       {:.0}", self.deliveries_per_sec);
            let l = &self.latency_ms;
            let _ = writeln!(
                s,
                "latency ms         p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
                l.p50, l.p90, l.p99, l.p999, l.max
            );
            for stage in &self.stages {
                let _ = writeln!(
                    s,
                    "  stage            {}: p50 ≤ {:.1} ms, p99 ≤ {:.1} ms ({:.0} recorded)",
                    stage.stage, stage.p50_ms, stage.p99_ms, stage.recorded
                );
            }
            let _ = writeln!(
                s,
                "lost {}  duplicated {}  disconnects {}",
                self.lost, self.duplicated, self.disconnects
            );
            let _ = writeln!(
                s,
                "reconnects {}  recovered {}  not recovered {}  gave up {}",
                self.reconnects, self.recovered, self.not_recovered, self.gave_up
            );
            if let Some(c) = self.gateway_cpu_us_per_delivery {
                let _ = writeln!(
                    s,
                    "CPU µs/delivery    gateways {c:.3}  all servers {:.3}",
                    self.server_cpu_us_per_delivery.unwrap_or(0.0)
                );
            }
            if let Some(r) = self.ratio_to_ceiling {
                let _ = writeln!(
                    s,
                    "ratio to ceiling   {r:.3} (ceiling {:.0}/s)",
                    self.ceiling_deliveries_per_sec.unwrap_or(0.0)
                );
            }
        }
        let _ = writeln!(s, "load generator cpu {:.1} ms", self.generator_cpu_ms);
        for u in &self.servers {
            let _ = writeln!(
                s,
                "  {:<12} pid {:<7} cpu {:>9.1} ms  rss {} → {} KiB",
                u.name, u.pid, u.cpu_ms, u.rss_kib_before, u.rss_kib_after
            );
        }
        s
    }
}

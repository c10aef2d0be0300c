//! `scripts/local-cluster` runs the compose topology as local processes — redis-server,
//! broker-api, two gateways, nginx from Debian's package — from `deploy/chorus.env` and the
//! compose nginx template; WebSocket clients connected through nginx land on both gateways
//! and receive a publish made through broker-api. Then the script stops everything it started.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use chorus_protocol::wire::Format;
use chorus_testkit::{WsClient, free_port};
use serde_json::json;

use chorus_e2e::{bin_dir, root};

/// The first API key of the shared env file.
fn api_key() -> String {
    let env = std::fs::read_to_string(root().join("deploy/chorus.env")).unwrap();
    env.lines()
        .find_map(|l| l.trim().strip_prefix("CHORUS_API_KEYS="))
        .and_then(|keys| keys.split(',').next())
        .expect("deploy/chorus.env sets CHORUS_API_KEYS")
        .trim()
        .to_owned()
}

/// The first of six consecutive free loopback ports whose cluster bus ports (+10000) are free
/// too, for the script's Redis Cluster.
fn cluster_ports() -> u16 {
    let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
    (0..1000)
        .map(|_| rand_base())
        .find(|&base| (base..base + 6).all(|p| free(p) && free(p + 10000)))
        .expect("six free ports with free cluster bus ports")
}

/// A port in 20000–49999, from a free port's number (the kernel hands them out spread).
fn rand_base() -> u16 {
    20000 + free_port() % 30000
}

/// The script in its own process group: dropping it stops the whole group, so nothing it
/// started outlives the test even if the test fails half-way.
struct LocalCluster {
    child: Option<Child>,
    pgid: libc::pid_t,
    lb: u16,
    api: u16,
}

impl LocalCluster {
    /// The script with `gateways` gateways, on one redis-server or (`redis_cluster`) on a
    /// six-node Redis Cluster.
    fn start(gateways: usize, redis_cluster: bool) -> Self {
        let (lb, api) = (free_port(), free_port());
        let redis = if redis_cluster {
            cluster_ports()
        } else {
            free_port()
        };
        let gw_ports: Vec<String> = (0..gateways).map(|_| free_port().to_string()).collect();
        let mut script = Command::new("bash");
        script.arg(root().join("scripts/local-cluster"));
        if redis_cluster {
            script.arg("--redis-cluster");
        }
        let mut child = script
            .args(["--gateways", &gateways.to_string()])
            .args(["--port", &lb.to_string()])
            .args(["--api-port", &api.to_string()])
            .args(["--redis-port", &redis.to_string()])
            .args(["--gateway-ports", &gw_ports.join(",")])
            .arg("--bin-dir")
            .arg(bin_dir())
            .env("RUST_LOG", "warn")
            // A short drain, so stopping the cluster takes a moment, not the 10 s default.
            .env("CHORUS_DRAIN_WINDOW", "300ms")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("bash runs scripts/local-cluster");
        let pgid = libc::pid_t::try_from(child.id()).expect("pid");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut cluster = Self {
            child: Some(child),
            pgid,
            lb,
            api,
        };
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.trim() == "ready" => break,
                Ok(_) => {}
                Err(_) => {
                    cluster.stop_group();
                    panic!("scripts/local-cluster did not report ready within 60 s");
                }
            }
        }
        cluster
    }

    /// SIGTERM to the script alone: it must stop what it started and exit 0.
    fn terminate(&mut self, within: Duration) -> bool {
        let Some(child) = self.child.as_mut() else {
            return false;
        };
        // SAFETY: kill(2) on our own child's pid with a valid signal.
        unsafe { libc::kill(self.pgid, libc::SIGTERM) };
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Stops the whole process group, politely first.
    fn stop_group(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: kill(2) on the process group this test created, with valid signals.
        unsafe { libc::kill(-self.pgid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // SAFETY: as above.
        unsafe { libc::kill(-self.pgid, libc::SIGKILL) };
        let _ = child.wait();
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.stop_group();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_through_nginx_reach_every_gateway_and_receive_a_broker_api_publish() {
    let cluster = tokio::task::spawn_blocking(|| LocalCluster::start(2, false))
        .await
        .unwrap();
    through_nginx(cluster).await;
}

/// The compose cluster profile's topology: the same, with the services on a six-node Redis
/// Cluster joined by the same `redis-cli --cluster create`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_on_a_redis_cluster() {
    let cluster = tokio::task::spawn_blocking(|| LocalCluster::start(2, true))
        .await
        .unwrap();
    through_nginx(cluster).await;
}

/// Clients through nginx land on both gateways and receive a broker-api publish; the script
/// stops everything on SIGTERM.
async fn through_nginx(mut cluster: LocalCluster) {
    let ws = format!("ws://127.0.0.1:{}/ws", cluster.lb);

    // Through nginx (least_conn): four connections spread over both gateways.
    let mut clients = Vec::new();
    let mut nodes = BTreeSet::new();
    for i in 0..4 {
        let format = if i % 2 == 0 {
            Format::Json
        } else {
            Format::Protobuf
        };
        let (mut c, connected) = WsClient::connect(&ws, format).await.unwrap();
        nodes.insert(connected.node);
        c.subscribe("news").await.unwrap();
        clients.push(c);
    }
    assert_eq!(
        nodes,
        BTreeSet::from(["gw-1".to_owned(), "gw-2".to_owned()]),
        "connections through nginx land on both gateways"
    );

    let resp = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{}/api/publish", cluster.api))
        .bearer_auth(api_key())
        .json(&json!({"channel": "news", "data": {"via": "broker-api"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "publish with the env file's API key");
    for c in &mut clients {
        let publication = c.next_publication().await.unwrap();
        assert_eq!(publication.channel, "news");
        assert_eq!(publication.offset, 1);
        let data: serde_json::Value = serde_json::from_slice(&publication.data).unwrap();
        assert_eq!(data, json!({"via": "broker-api"}));
    }

    // The load balancer keeps gateway metrics off the public port.
    let metrics = reqwest::get(format!("http://127.0.0.1:{}/metrics", cluster.lb))
        .await
        .unwrap();
    assert_eq!(metrics.status(), 404);

    drop(clients);
    let lb = cluster.lb;
    let clean = tokio::task::spawn_blocking(move || {
        let clean = cluster.terminate(Duration::from_secs(30));
        drop(cluster);
        clean
    })
    .await
    .unwrap();
    assert!(clean, "the script stops its cluster and exits 0 on SIGTERM");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", lb)).is_err(),
        "nginx is gone"
    );
}

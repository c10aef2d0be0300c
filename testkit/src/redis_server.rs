//! A throwaway `redis-server` per test.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A running `redis-server` on 127.0.0.1, killed on drop.
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
    dir: PathBuf,
    /// AOF persistence with `appendfsync always`: every acknowledged write survives a kill.
    persistent: bool,
    /// A Redis Cluster node (`--cluster-enabled yes`, a short node timeout).
    cluster_node: bool,
}

impl RedisServer {
    /// Starts a server without persistence on a free port and waits until it answers.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(false)
    }

    /// Starts a server with AOF persistence (`appendfsync always`), so that a restart keeps
    /// every write it acknowledged.
    pub fn start_persistent() -> anyhow::Result<Self> {
        Self::start_with(true)
    }

    /// Starts a Redis Cluster node (not yet part of a cluster) on a free port whose cluster
    /// bus port (port + 10000) is free too. Its node timeout is 1 s, so a failover takes
    /// seconds.
    pub fn start_cluster_node() -> anyhow::Result<Self> {
        let port = cluster_port()?;
        Self::start_on(port, false, true)
    }

    fn start_with(persistent: bool) -> anyhow::Result<Self> {
        Self::start_on(crate::free_port(), persistent, false)
    }

    fn start_on(port: u16, persistent: bool, cluster_node: bool) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("chorus-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let mut server = Self {
            port,
            child: None,
            dir,
            persistent,
            cluster_node,
        };
        server.spawn()?;
        Ok(server)
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether the server process is running (not stopped).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the server (SIGKILL) and waits for it to exit. The port stays reserved for
    /// [`RedisServer::restart`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port: empty without persistence, with every
    /// acknowledged write when persistent.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.spawn()
    }

    /// Runs one command with `redis-cli` and returns its output lines.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<Vec<String>> {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .context("running redis-cli")?;
        if !out.status.success() {
            bail!(
                "redis-cli {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect())
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", ""])
            .args(if self.persistent {
                ["--appendonly", "yes", "--appendfsync", "always"].as_slice()
            } else {
                ["--appendonly", "no"].as_slice()
            })
            .args(if self.cluster_node {
                [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "1000",
                    // A replica may take over however recently it heard from its master,
                    // and starts its first sync at once (not after the default 5 s).
                    "--cluster-replica-validity-factor",
                    "0",
                    "--repl-diskless-sync-delay",
                    "0",
                ]
                .as_slice()
            } else {
                [].as_slice()
            })
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server (is it installed? scripts/test installs it)")?;
        self.child = Some(child);
        // Wait for the server to accept connections: PING until PONG, with a deadline.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self
                .cli(&["PING"])
                .is_ok_and(|l| l.first().is_some_and(|p| p == "PONG"))
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "redis-server on port {} did not answer within 10s",
                    self.port
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A free loopback port below 55536 whose cluster bus port (+10000) is free as well.
fn cluster_port() -> anyhow::Result<u16> {
    for _ in 0..200 {
        let port = crate::free_port();
        if port < 55536 && std::net::TcpListener::bind(("127.0.0.1", port + 10000)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port pair (port, port + 10000) for a cluster node")
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

//! A throwaway Redis Cluster per test: six `redis-server` processes (three masters, three
//! replicas) joined with `redis-cli --cluster create`.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::RedisServer;

/// A master's port and the slot ranges it serves.
pub type Master = (u16, Vec<(u16, u16)>);

/// A running six-node Redis Cluster on 127.0.0.1, every node killed on drop.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts six nodes, creates the cluster (three masters with a replica each) and waits
    /// until every node reports `cluster_state:ok`.
    pub fn start() -> anyhow::Result<Self> {
        let nodes = (0..6)
            .map(|_| RedisServer::start_cluster_node())
            .collect::<anyhow::Result<Vec<_>>>()?;
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .context("running redis-cli --cluster create")?;
        if !out.status.success() {
            bail!(
                "redis-cli --cluster create failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let cluster = Self { nodes };
        cluster.wait_ok(Duration::from_secs(30))?;
        Ok(cluster)
    }

    /// `redis+cluster://` with every node as a seed.
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        format!("redis+cluster://{}", seeds.join(","))
    }

    /// Every node, masters and replicas, running or not.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// The node listening on `port`.
    pub fn node(&self, port: u16) -> &RedisServer {
        self.nodes
            .iter()
            .find(|n| n.port() == port)
            .expect("a node of this cluster")
    }

    /// Kills the node on `port` with SIGKILL.
    pub fn kill(&mut self, port: u16) {
        if let Some(node) = self.nodes.iter_mut().find(|n| n.port() == port) {
            node.stop();
        }
    }

    /// The port of the master serving `slot`, as a live node sees it.
    pub fn master_of(&self, slot: u16) -> anyhow::Result<u16> {
        for (port, ranges) in self.masters()? {
            if ranges.iter().any(|(a, b)| (*a..=*b).contains(&slot)) {
                return Ok(port);
            }
        }
        bail!("no master serves slot {slot}")
    }

    /// The masters (port, slot ranges) as the first live node answers `CLUSTER SLOTS`.
    pub fn masters(&self) -> anyhow::Result<Vec<Master>> {
        let mut last = None;
        for node in &self.nodes {
            match node.cli(&["CLUSTER", "NODES"]) {
                Ok(lines) => return Ok(parse_masters(&lines)),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no node")))
    }

    /// Moves `slot` from the master on `from` to the master on `to` with the `CLUSTER
    /// SETSLOT` steps (IMPORTING, MIGRATING, its keys with MIGRATE, then NODE on both).
    pub fn migrate_slot(&self, slot: u16, from: u16, to: u16) -> anyhow::Result<()> {
        let (source, target) = (self.node(from), self.node(to));
        let (from_id, to_id) = (self.node_id(from)?, self.node_id(to)?);
        let slot = slot.to_string();
        target.cli(&["CLUSTER", "SETSLOT", &slot, "IMPORTING", &from_id])?;
        source.cli(&["CLUSTER", "SETSLOT", &slot, "MIGRATING", &to_id])?;
        let port = to.to_string();
        loop {
            let keys = source.cli(&["CLUSTER", "GETKEYSINSLOT", &slot, "100"])?;
            if keys.is_empty() {
                break;
            }
            let mut args = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
            args.extend(keys.iter().map(String::as_str));
            source.cli(&args)?;
        }
        for server in [target, source] {
            server.cli(&["CLUSTER", "SETSLOT", &slot, "NODE", &to_id])?;
        }
        Ok(())
    }

    /// The port of a replica of the master on `port`, as a live node sees it.
    pub fn replica_of(&self, port: u16) -> anyhow::Result<u16> {
        let id = self.node_id(port)?;
        let lines = self.node(port).cli(&["CLUSTER", "NODES"])?;
        lines
            .iter()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.len() > 3 && f[2].contains("slave") && f[3] == id)
            .and_then(|f| port_of(f[1]))
            .context("the master has no replica")
    }

    /// Starts the node on `port` again, with its cluster configuration (it rejoins in the role
    /// and with the slots it had) and no data.
    pub fn restart(&mut self, port: u16) -> anyhow::Result<()> {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port() == port)
            .context("a node of this cluster")?;
        node.restart()
    }

    /// The ID of the node on `port`.
    pub fn node_id(&self, port: u16) -> anyhow::Result<String> {
        let id = self.node(port).cli(&["CLUSTER", "MYID"])?;
        id.into_iter()
            .next()
            .context("CLUSTER MYID answered nothing")
    }

    /// Waits until every running node reports `cluster_state:ok`, agrees on three masters
    /// covering every slot, and every replica has its master's data (link up).
    pub fn wait_ok(&self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let ok = self.nodes.iter().filter(|n| n.is_running()).all(|n| {
                n.cli(&["CLUSTER", "INFO"])
                    .is_ok_and(|l| l.iter().any(|l| l.trim() == "cluster_state:ok"))
                    && n.cli(&["CLUSTER", "NODES"]).is_ok_and(|l| {
                        let masters = parse_masters(&l);
                        masters.len() == 3
                            && masters
                                .iter()
                                .flat_map(|(_, r)| r)
                                .map(|(a, b)| usize::from(b - a) + 1)
                                .sum::<usize>()
                                == 16384
                    })
                    && n.cli(&["INFO", "replication"]).is_ok_and(|l| {
                        l.iter().any(|l| l.trim() == "role:master")
                            || l.iter().any(|l| l.trim() == "master_link_status:up")
                    })
            });
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the cluster did not reach cluster_state:ok within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Masters with slots from `CLUSTER NODES` lines (failed ones left out), by port.
fn parse_masters(lines: &[String]) -> Vec<Master> {
    let mut masters = Vec::new();
    for line in lines {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 8 || !fields[2].contains("master") || fields[2].contains("fail") {
            continue;
        }
        let Some(port) = port_of(fields[1]) else {
            continue;
        };
        let ranges: Vec<(u16, u16)> = fields[8..]
            .iter()
            .filter(|r| !r.starts_with('['))
            .filter_map(|r| match r.split_once('-') {
                Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                None => r.parse().ok().map(|s| (s, s)),
            })
            .collect();
        if !ranges.is_empty() {
            masters.push((port, ranges));
        }
    }
    masters.sort();
    masters
}

/// The port of a `CLUSTER NODES` address field (`ip:port@cport[,hostname]`).
fn port_of(address: &str) -> Option<u16> {
    address.split('@').next()?.rsplit(':').next()?.parse().ok()
}

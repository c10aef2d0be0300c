//! Helpers shared by the bus's integration tests.

#![allow(dead_code)]

use chorus_bus::NodeInfo;
use chorus_testkit::RedisServer;

/// A gateway node as the registry would list it.
pub fn node(id: &str) -> NodeInfo {
    NodeInfo {
        id: id.into(),
        address: format!("ws://{id}.local:8000/ws"),
        connections: 0,
        started_at_ms: 1_700_000_000_000,
    }
}

/// `n` throwaway redis-servers on free ports.
pub fn redis_servers(n: usize) -> Vec<RedisServer> {
    (0..n)
        .map(|_| RedisServer::start().expect("redis-server"))
        .collect()
}

/// The `--redis-url` value that shards over every one of `servers` (one URL for one).
pub fn redis_url(servers: &[RedisServer]) -> String {
    servers
        .iter()
        .map(RedisServer::url)
        .collect::<Vec<_>>()
        .join(",")
}

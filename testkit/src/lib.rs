//! Test harness for Chorus's tests: real parts only.
//!
//! - [`RedisServer`] starts a real `redis-server` on a free loopback port and stops it when
//!   dropped, so every test has its own Redis and no test depends on another's state.
//! - [`WsClient`] is a real WebSocket client (tokio-tungstenite, independent of the gateway's
//!   own WebSocket library) speaking Chorus's client protocol in either format.
//! - [`Process`] runs a Chorus binary as a child process that a test can SIGKILL.
//! - [`Scrape`] reads a `/metrics` page.

mod process;
mod prom;
mod redis_server;
mod ws_client;

pub use process::{Process, eventually, wait_http_ok};
pub use prom::Scrape;
pub use redis_server::RedisServer;
pub use ws_client::{Closed, WAIT, WsClient};

use std::net::{SocketAddr, TcpListener};

/// A free TCP port on 127.0.0.1 (bound and released; the OS does not hand it out again soon).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a: SocketAddr| a.port())
        .expect("a free loopback port")
}

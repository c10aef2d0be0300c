//! Test harness for Chorus's tests: real parts only.
//!
//! - [`RedisServer`] starts a real `redis-server` on a free loopback port and stops it when
//!   dropped, so every test has its own Redis and no test depends on another's state.
//! - [`RedisCluster`] starts six of them as a real Redis Cluster (three masters, three
//!   replicas) for the cluster tests.
//! - [`WsClient`] is a real WebSocket client (tokio-tungstenite, independent of the gateway's
//!   own WebSocket library) speaking Chorus's client protocol in either format.
//! - [`Process`] runs a Chorus binary as a child process that a test can SIGKILL.
//! - [`Scrape`] reads a `/metrics` page.
//! - [`raw_frame`] builds WebSocket frames byte by byte, well-formed or not, for tests that
//!   speak to the gateway below any WebSocket library.

pub mod deflate_client;
mod process;
mod prom;
mod redis_cluster;
mod redis_server;
mod ws_client;

pub use deflate_client::{DeflateWs, Received};
pub use process::{Process, eventually, wait_http_ok};
pub use prom::Scrape;
pub use redis_cluster::RedisCluster;
pub use redis_server::RedisServer;
pub use ws_client::{Closed, WAIT, WsClient};

use std::net::{SocketAddr, TcpListener};

/// Runs a Chorus binary's `completions bash` and `man` subcommands (a real process each) and
/// checks that both describe `flag`, one of its flags; panics otherwise.
pub fn check_tools(binary: &str, flag: &str) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(binary)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{binary} {args:?}: {e}"));
        assert!(out.status.success(), "{binary} {args:?}: {out:?}");
        String::from_utf8(out.stdout).expect("UTF-8 output")
    };
    let bash = run(&["completions", "bash"]);
    assert!(
        bash.contains(flag),
        "bash completions of {binary} lack {flag}"
    );
    assert!(bash.contains("complete -F"), "a bash completion script");
    let man = run(&["man"]);
    assert!(man.contains(".TH"), "a roff man page");
    assert!(
        man.contains(&flag.replace('-', "\\-")) || man.contains(flag),
        "the man page of {binary} lacks {flag}"
    );
}

/// One WebSocket frame as bytes: `first` is the first byte (FIN, RSV bits, opcode) as given,
/// the length is encoded in its shortest form, and the payload is masked with `mask` when one
/// is given (a client frame) or sent as is (which a server must refuse from a client).
pub fn raw_frame(first: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut f = vec![first];
    let m = if mask.is_some() { 0x80 } else { 0 };
    let len = payload.len();
    if len < 126 {
        f.push(m | len as u8);
    } else if let Ok(len) = u16::try_from(len) {
        f.push(m | 126);
        f.extend_from_slice(&len.to_be_bytes());
    } else {
        f.push(m | 127);
        f.extend_from_slice(&(len as u64).to_be_bytes());
    }
    match mask {
        Some(key) => {
            f.extend_from_slice(&key);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => f.extend_from_slice(payload),
    }
    f
}

/// A free TCP port on 127.0.0.1 (bound and released; the OS does not hand it out again soon).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a: SocketAddr| a.port())
        .expect("a free loopback port")
}

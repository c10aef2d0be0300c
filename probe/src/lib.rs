//! `chorus-probe`: the container health check of Chorus's images.
//!
//! The runtime images are distroless (no shell, no curl), so Docker's `HEALTHCHECK` runs this
//! instead: a plain HTTP/1.0 `GET` to the service on loopback, exit status 0 for a 2xx answer.
//! It finds the port the same way the service does, from `CHORUS_GATEWAY_LISTEN` or
//! `CHORUS_API_LISTEN` (with the same defaults), so a changed listen address needs no change
//! to the health check.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// `chorus-gateway`'s default `--gateway-listen`.
pub const GATEWAY_DEFAULT_LISTEN: &str = "0.0.0.0:8000";
/// `chorus-broker-api`'s default `--api-listen`.
pub const API_DEFAULT_LISTEN: &str = "0.0.0.0:8001";

/// Which service to probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Gateway,
    BrokerApi,
}

impl Service {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "gateway" => Some(Service::Gateway),
            "broker-api" => Some(Service::BrokerApi),
            _ => None,
        }
    }

    /// The environment variable holding the service's listen address, and its default.
    pub fn listen_variable(self) -> (&'static str, &'static str) {
        match self {
            Service::Gateway => ("CHORUS_GATEWAY_LISTEN", GATEWAY_DEFAULT_LISTEN),
            Service::BrokerApi => ("CHORUS_API_LISTEN", API_DEFAULT_LISTEN),
        }
    }
}

/// Where to connect for a service listening on `listen`: a wildcard address becomes loopback.
pub fn target(listen: &str) -> Result<SocketAddr, String> {
    let mut addr = listen
        .to_socket_addrs()
        .map_err(|e| format!("bad listen address {listen:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("listen address {listen:?} resolves to nothing"))?;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    Ok(addr)
}

/// `GET path` on `addr` within `timeout`; the HTTP status code.
pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<u16, String> {
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| e.to_string())?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("send to {addr}: {e}"))?;
    // The status line is all we need; stop reading once it is in.
    let mut head = Vec::with_capacity(64);
    let mut buf = [0u8; 64];
    while !head.contains(&b'\n') && head.len() < 1024 {
        let n = stream
            .read(&mut buf)
            .map_err(|e| format!("read from {addr}: {e}"))?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    status_code(&head).ok_or_else(|| format!("{addr} did not answer HTTP"))
}

/// The status code of an HTTP status line (`HTTP/1.1 200 OK`).
pub fn status_code(head: &[u8]) -> Option<u16> {
    let line = head.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/") {
        return None;
    }
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_listen_addresses_are_probed_on_loopback() {
        assert_eq!(
            target("0.0.0.0:8000"),
            Ok(SocketAddr::from(([127, 0, 0, 1], 8000)))
        );
        assert_eq!(
            target("10.1.2.3:9"),
            Ok(SocketAddr::from(([10, 1, 2, 3], 9)))
        );
        assert_eq!(
            target("[::]:8001").map(|a| a.ip()),
            Ok(IpAddr::V6(Ipv6Addr::LOCALHOST))
        );
        assert!(target("nonsense").is_err());
    }

    #[test]
    fn status_lines_parse() {
        assert_eq!(status_code(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(
            status_code(b"HTTP/1.0 503 Service Unavailable\r\n"),
            Some(503)
        );
        assert_eq!(status_code(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(status_code(b""), None);
    }

    #[test]
    fn probes_a_real_listener() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut req = [0u8; 256];
            let n = s.read(&mut req).unwrap();
            assert!(req[..n].starts_with(b"GET /readyz HTTP/1.0\r\n"));
            s.write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n")
                .unwrap();
        });
        assert_eq!(get(addr, "/readyz", Duration::from_secs(2)), Ok(503));
        server.join().unwrap();
    }
}

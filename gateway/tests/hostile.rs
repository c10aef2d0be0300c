//! Hostile clients: malformed WebSocket frames written byte by byte, connections that never
//! send `connect`, command floods, slowloris upgrades. Each gets its exact close code (or is
//! dropped), and other clients see no change.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chorus_gateway::GatewayConfig;
use chorus_protocol::client::{self, command};
use chorus_protocol::codes::{ErrorCode, close};
use chorus_protocol::wire::Format;
use chorus_testkit::{DeflateWs, WsClient};
use support::MemoryGateway;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A WebSocket opened by hand, for writing frames the rules forbid (testkit's hand-framed
/// client, offering no extension).
struct RawWs {
    ws: DeflateWs,
}

impl RawWs {
    async fn open(addr: SocketAddr) -> Self {
        let ws = DeflateWs::open(addr, "/ws", None).await.expect("upgrade");
        Self { ws }
    }

    /// Writes one frame; `mask` is applied when given.
    async fn frame(&mut self, first: u8, payload: &[u8], mask: Option<[u8; 4]>) {
        self.write(&chorus_testkit::raw_frame(first, payload, mask))
            .await;
    }

    async fn masked(&mut self, first: u8, payload: &[u8]) {
        self.frame(first, payload, Some([0x12, 0x34, 0x56, 0x78]))
            .await;
    }

    async fn write(&mut self, bytes: &[u8]) {
        // The server may already have closed; the close code is what the test checks.
        let _ = self.ws.send_raw(bytes).await;
    }

    /// Reads server frames until a close frame; returns its code (1005 if it has none).
    async fn close_code(&mut self) -> u16 {
        self.ws
            .close_code()
            .await
            .expect("a close frame before the connection ended, within 5 s")
    }
}

fn limited() -> GatewayConfig {
    GatewayConfig {
        max_message_size: 1024,
        ..GatewayConfig::default()
    }
}

async fn still_usable(c: &mut WsClient) {
    c.ok(command::Body::Ping(client::PingRequest {}))
        .await
        .expect("the well-behaved client still gets answers");
}

/// Runs one hostile byte sequence against a gateway with a healthy client on it; checks the
/// close code and that the healthy client is unaffected.
async fn expect_close(case: &str, code: u16, send: impl AsyncFnOnce(&mut RawWs)) {
    let gw = MemoryGateway::start(limited()).await;
    let (mut healthy, _) = WsClient::connect(&gw.ws(), Format::Json).await.unwrap();
    let mut raw = RawWs::open(gw.addr).await;
    send(&mut raw).await;
    assert_eq!(raw.close_code().await, code, "{case}");
    still_usable(&mut healthy).await;
}

#[tokio::test]
async fn an_unmasked_client_frame_closes_with_1002() {
    expect_close("unmasked text", 1002, async |ws| {
        ws.frame(0x81, br#"{"id":1,"ping":{}}"#, None).await
    })
    .await;
    expect_close("unmasked ping", 1002, async |ws| {
        ws.frame(0x89, b"hi", None).await
    })
    .await;
}

#[tokio::test]
async fn reserved_bits_and_opcodes_close_with_1002() {
    for (case, first) in [
        ("rsv1", 0xC1),
        ("rsv2", 0xA1),
        ("rsv3", 0x91),
        ("opcode 3", 0x83),
        ("opcode 0xB", 0x8B),
    ] {
        expect_close(case, 1002, async |ws| ws.masked(first, b"x").await).await;
    }
}

#[tokio::test]
async fn fragmented_and_oversized_control_frames_close_with_1002() {
    expect_close("fragmented ping", 1002, async |ws| {
        ws.masked(0x09, b"x").await
    })
    .await;
    expect_close("ping over 125", 1002, async |ws| {
        ws.masked(0x89, &[b'p'; 126]).await
    })
    .await;
    expect_close("pong over 125", 1002, async |ws| {
        ws.masked(0x8A, &[b'p'; 126]).await
    })
    .await;
    let mut close = vec![0x03, 0xE8];
    close.extend_from_slice(&[b'r'; 124]);
    expect_close("close over 125", 1002, async |ws| {
        ws.masked(0x88, &close).await
    })
    .await;
}

#[tokio::test]
async fn endless_continuation_frames_close_with_1009() {
    expect_close("continuations past the limit", 1009, async |ws| {
        ws.masked(0x01, &[b'a'; 100]).await;
        for _ in 0..20 {
            ws.masked(0x00, &[b'a'; 100]).await;
        }
    })
    .await;
}

#[tokio::test]
async fn continuation_without_a_message_and_interleaved_messages_close_with_1002() {
    expect_close("lone continuation", 1002, async |ws| {
        ws.masked(0x80, b"x").await
    })
    .await;
    expect_close("new message mid-fragment", 1002, async |ws| {
        ws.masked(0x01, b"{").await;
        ws.masked(0x81, b"{}").await;
    })
    .await;
}

#[tokio::test]
async fn invalid_utf8_text_closes_with_1007() {
    expect_close("one frame", 1007, async |ws| {
        ws.masked(0x81, &[0xff, 0xfe]).await
    })
    .await;
    expect_close("fragmented", 1007, async |ws| {
        ws.masked(0x01, &[b'a', 0xce]).await;
        ws.masked(0x80, &[0xff]).await;
    })
    .await;
    expect_close("close reason", 1007, async |ws| {
        ws.masked(0x88, &[0x03, 0xE8, 0xff]).await
    })
    .await;
}

#[tokio::test]
async fn a_length_header_claiming_gigabytes_closes_with_1009_without_waiting_for_the_payload() {
    expect_close("4 GiB text", 1009, async |ws| {
        let mut header = vec![0x81, 0x80 | 127];
        header.extend_from_slice(&(4u64 << 30).to_be_bytes());
        header.extend_from_slice(&[1, 2, 3, 4]);
        ws.write(&header).await;
    })
    .await;
    expect_close("2^63 length", 1002, async |ws| {
        let mut header = vec![0x82, 0x80 | 127];
        header.extend_from_slice(&u64::MAX.to_be_bytes());
        ws.write(&header).await;
    })
    .await;
}

#[tokio::test]
async fn invalid_close_codes_and_payloads_close_with_1002() {
    for code in [0u16, 999, 1004, 1005, 1006, 1015, 2000, 2999] {
        expect_close(&format!("close code {code}"), 1002, async |ws| {
            ws.masked(0x88, &code.to_be_bytes()).await
        })
        .await;
    }
    expect_close("one-byte close", 1002, async |ws| {
        ws.masked(0x88, &[0x03]).await
    })
    .await;
}

#[tokio::test]
async fn valid_close_codes_are_echoed() {
    for code in [1000u16, 1001, 3000, 4999] {
        expect_close(&format!("close code {code}"), code, async |ws| {
            ws.masked(0x88, &code.to_be_bytes()).await
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_connections_that_never_send_connect_are_all_closed_at_the_deadline() {
    const N: usize = 1000;
    let deadline = Duration::from_secs(1);
    let gw = MemoryGateway::start(GatewayConfig {
        connect_timeout: deadline,
        ..GatewayConfig::default()
    })
    .await;
    let (mut healthy, _) = WsClient::connect(&gw.ws(), Format::Json).await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..N {
        let addr = gw.addr;
        tasks.spawn(async move {
            let started = Instant::now();
            let mut ws = RawWs::open(addr).await;
            let code = ws.close_code().await;
            (code, started.elapsed())
        });
    }
    let mut closed = 0;
    while let Some(res) = tasks.join_next().await {
        let (code, after) = res.unwrap();
        assert_eq!(code, close::CONNECT_TIMEOUT);
        // Never before the deadline (the gateway's clock starts at the upgrade, after the
        // client started connecting), and not long after it.
        assert!(after >= deadline, "{after:?}");
        assert!(after < deadline + Duration::from_secs(4), "{after:?}");
        closed += 1;
    }
    assert_eq!(closed, N);
    still_usable(&mut healthy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_flood_is_rate_limited_and_other_clients_see_no_change() {
    let gw = MemoryGateway::start(GatewayConfig {
        command_rate: 20,
        command_burst: 50,
        ..GatewayConfig::default()
    })
    .await;
    let (mut flooder, _) = WsClient::connect(&gw.ws(), Format::Json).await.unwrap();
    let (mut other, _) = WsClient::connect(&gw.ws(), Format::Json).await.unwrap();
    other.subscribe("news").await.unwrap();

    // The flooder pipelines 90 subscribes without waiting for any reply: far over its rate
    // (20/s) and burst (50), yet short of the 50 refusals in a row that would close it (the
    // close is tested in security.rs), so every reply can be counted.
    const FLOOD: u32 = 90;
    let flood = tokio::spawn(async move {
        for i in 1..=FLOOD {
            let cmd = format!(r#"{{"id":{i},"subscribe":{{"channel":"flood-{i}"}}}}"#);
            flooder.send_raw(bytes::Bytes::from(cmd)).await.unwrap();
        }
        let (mut ok, mut rate_limited) = (0, 0);
        for _ in 0..FLOOD {
            match flooder.next_frame().await.unwrap().frame {
                Some(client::server_frame::Frame::Reply(r)) => match r.error {
                    Some(e) if e.code == ErrorCode::RateLimited.code() => rate_limited += 1,
                    Some(e) => panic!("unexpected error {e:?}"),
                    None => ok += 1,
                },
                other => panic!("expected a reply, got {other:?}"),
            }
        }
        (ok, rate_limited)
    });

    // Meanwhile the other client, within its own limit (each connection has its own bucket),
    // is served normally: every command answered, no 114.
    for i in 0..10 {
        other.subscribe(&format!("mine-{i}")).await.unwrap();
        still_usable(&mut other).await;
    }
    gw.bus
        .publish(chorus_bus::Publish {
            channel: "news".into(),
            data: bytes::Bytes::from_static(b"\"after the flood\""),
            exclude_client: String::new(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(other.next_publication().await.unwrap().channel, "news");

    let (ok, rate_limited) = flood.await.unwrap();
    // The burst (less the connect) plus what the rate refilled meanwhile.
    assert!((49..60).contains(&ok), "{ok} subscribes accepted");
    assert_eq!(ok + rate_limited, FLOOD, "every command answered");
}

#[tokio::test]
async fn a_slowloris_upgrade_is_dropped_at_the_header_timeout() {
    let timeout = Duration::from_millis(500);
    let gw = MemoryGateway::start(GatewayConfig {
        header_timeout: timeout,
        ..GatewayConfig::default()
    })
    .await;
    // One that trickles a header byte every 100 ms, and one that sends nothing at all.
    let mut slow = TcpStream::connect(gw.addr).await.unwrap();
    let mut silent = TcpStream::connect(gw.addr).await.unwrap();
    let started = Instant::now();
    slow.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let trickle = async {
        for b in b"Upgrade: websocket\r\nConnection: Upgrade\r\nX-Slow: "
            .iter()
            .cycle()
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if slow.write_all(&[*b]).await.is_err() {
                break;
            }
        }
    };
    let dropped_after = tokio::time::timeout(Duration::from_secs(5), trickle)
        .await
        .map(|()| started.elapsed())
        .expect("the trickling connection is dropped");
    assert!(dropped_after >= timeout, "{dropped_after:?}");
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf))
        .await
        .expect("the silent connection is dropped");
    // hyper answers a header timeout with nothing or a 408; either way the socket ends.
    if let Ok(n) = n
        && n > 0
    {
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408"));
    }
    // The gateway still serves upgrades.
    let (mut c, _) = WsClient::connect(&gw.ws(), Format::Json).await.unwrap();
    still_usable(&mut c).await;
}

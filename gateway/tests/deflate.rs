//! permessage-deflate (RFC 7692) end to end with a client that negotiates it (framed by hand,
//! `chorus_testkit::DeflateWs`): publications above the threshold arrive compressed — the same
//! frame for every subscriber that negotiated it — smaller ones and other clients' arrive
//! plain, compressed client commands are understood, and every bad use is refused with its
//! close code.

mod support;

use bytes::Bytes;
use chorus_bus::Publish;
use chorus_gateway::GatewayConfig;
use chorus_testkit::{DeflateWs, Scrape, eventually, raw_frame};
use serde_json::{Value, json};
use support::MemoryGateway;

const OFFER: &str = "permessage-deflate; client_max_window_bits";
const ACCEPTED: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

async fn gateway() -> MemoryGateway {
    MemoryGateway::start(GatewayConfig::default()).await
}

async fn open(g: &MemoryGateway, offer: Option<&str>) -> DeflateWs {
    DeflateWs::open(g.addr, "/ws?format=json", offer)
        .await
        .unwrap()
}

fn json_of(payload: &[u8]) -> Value {
    serde_json::from_slice(payload).expect("a JSON frame")
}

/// Sends a command (compressed or not) and returns the reply.
async fn command(ws: &mut DeflateWs, cmd: Value, compress: bool) -> Value {
    ws.send_text(&cmd.to_string(), compress).await.unwrap();
    let reply = json_of(&ws.next().await.unwrap().payload);
    assert_eq!(reply["id"], cmd["id"], "{reply}");
    assert!(reply.get("error").is_none(), "{reply}");
    reply
}

async fn publish(g: &MemoryGateway, data: Value) {
    g.bus
        .publish(Publish {
            channel: "news".into(),
            data: Bytes::from(data.to_string()),
            ..Publish::default()
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_publications_arrive_compressed_once_for_every_client_that_negotiated_it() {
    let metrics_addr = std::net::SocketAddr::from(([127, 0, 0, 1], chorus_testkit::free_port()));
    let metrics = format!("http://{metrics_addr}/metrics");
    let g = MemoryGateway::start(GatewayConfig {
        metrics_listen: chorus_gateway::ListenAddr(Some(metrics_addr)),
        ..GatewayConfig::default()
    })
    .await;
    let mut a = open(&g, Some(OFFER)).await;
    let mut b = open(&g, Some("permessage-deflate")).await;
    let mut plain = open(&g, None).await;
    assert_eq!(a.extension.as_deref(), Some(ACCEPTED));
    assert_eq!(b.extension.as_deref(), Some(ACCEPTED));
    assert_eq!(plain.extension, None);
    // Compressed commands are understood like plain ones.
    for (ws, compress) in [(&mut a, true), (&mut b, false), (&mut plain, false)] {
        command(ws, json!({"id": 1, "connect": {}}), compress).await;
        command(
            ws,
            json!({"id": 2, "subscribe": {"channel": "news"}}),
            compress,
        )
        .await;
    }

    let text = "All happy families are alike; each unhappy family is unhappy in its own way. ";
    let big = json!({ "text": text.repeat(30) });
    publish(&g, big.clone()).await;
    publish(&g, json!({"n": 2})).await;

    let (big_a, big_b, big_plain) = (
        a.next().await.unwrap(),
        b.next().await.unwrap(),
        plain.next().await.unwrap(),
    );
    assert!(big_a.compressed && big_b.compressed && !big_plain.compressed);
    // One compression, shared: the same bytes reach both, and they inflate to the plain frame.
    assert_eq!(big_a, big_b);
    assert_eq!(big_a.payload, big_plain.payload);
    assert!(
        big_a.wire_len * 5 < big_plain.wire_len,
        "{} vs {}",
        big_a.wire_len,
        big_plain.wire_len
    );
    assert_eq!(json_of(&big_a.payload)["pub"]["data"], big);

    // Below --compression-min-bytes: plain for everyone.
    for ws in [&mut a, &mut b, &mut plain] {
        let small = ws.next().await.unwrap();
        assert!(!small.compressed);
        assert_eq!(json_of(&small.payload)["pub"]["data"], json!({"n": 2}));
    }

    // The metrics: two connections with the extension, two compressed deliveries (the big
    // publication to each of them; the small one and the plain client's copy were not).
    let value = |scrape: &Scrape, name: &str| scrape.value(name, &[]);
    let scrape = Scrape::fetch(&metrics).await.expect("/metrics answers");
    assert_eq!(value(&scrape, "chorus_gateway_deflate_connections"), 2.0);
    assert_eq!(
        value(&scrape, "chorus_gateway_compressed_deliveries_total"),
        2.0
    );
    drop(a);
    let gone = eventually(std::time::Duration::from_secs(5), "a closed", || async {
        Scrape::fetch(&metrics)
            .await
            .is_ok_and(|s| value(&s, "chorus_gateway_deflate_connections") == 1.0)
    })
    .await;
    assert!(gone.is_ok(), "the gauge follows a closed connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_smaller_window_is_honoured_and_the_extension_can_be_switched_off() {
    let g = gateway().await;
    // The shared frame uses a 32 KiB window: a client that allows less gets plain frames.
    let mut small_window = open(&g, Some("permessage-deflate; server_max_window_bits=10")).await;
    assert_eq!(
        small_window.extension.as_deref(),
        Some(
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=10"
        )
    );
    command(&mut small_window, json!({"id": 1, "connect": {}}), true).await;
    command(
        &mut small_window,
        json!({"id": 2, "subscribe": {"channel": "news"}}),
        false,
    )
    .await;
    publish(&g, json!({ "text": "x".repeat(2000) })).await;
    assert!(!small_window.next().await.unwrap().compressed);
    // An offer Chorus cannot honour is declined, not half-accepted.
    let declined = open(&g, Some("permessage-deflate; server_max_window_bits=8")).await;
    assert_eq!(declined.extension, None);

    let off = MemoryGateway::start(GatewayConfig {
        permessage_deflate: false,
        ..GatewayConfig::default()
    })
    .await;
    assert_eq!(open(&off, Some(OFFER)).await.extension, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_compressed_input_is_refused_with_its_close_code() {
    let g = gateway().await;
    let mask = Some([9, 8, 7, 6]);
    // A small message that inflates past --max-message-size (64 KiB): 1009.
    let mut ws = open(&g, Some(OFFER)).await;
    let bomb = chorus_testkit::deflate_client::deflate(&vec![b' '; 10 << 20]);
    assert!(bomb.len() < 64 << 10);
    ws.send_raw(&raw_frame(0x80 | 0x40 | 0x1, &bomb, mask))
        .await
        .unwrap();
    assert_eq!(ws.close_code().await.unwrap(), 1009);
    // Not DEFLATE data: 1007.
    let mut ws = open(&g, Some(OFFER)).await;
    ws.send_raw(&raw_frame(0xC1, &[0xff; 16], mask))
        .await
        .unwrap();
    assert_eq!(ws.close_code().await.unwrap(), 1007);
    // RSV1 on a continuation frame: 1002.
    let mut ws = open(&g, Some(OFFER)).await;
    ws.send_raw(&raw_frame(0x01, b"{\"id\":", mask))
        .await
        .unwrap();
    ws.send_raw(&raw_frame(0x80 | 0x40, b"1}", mask))
        .await
        .unwrap();
    assert_eq!(ws.close_code().await.unwrap(), 1002);
    // RSV1 on a control frame: 1002.
    let mut ws = open(&g, Some(OFFER)).await;
    ws.send_raw(&raw_frame(0x80 | 0x40 | 0x9, b"", mask))
        .await
        .unwrap();
    assert_eq!(ws.close_code().await.unwrap(), 1002);
    // RSV1 without the extension negotiated: 1002.
    let mut ws = open(&g, None).await;
    let packed = chorus_testkit::deflate_client::deflate(br#"{"id":1,"connect":{}}"#);
    ws.send_raw(&raw_frame(0x80 | 0x40 | 0x1, &packed, mask))
        .await
        .unwrap();
    assert_eq!(ws.close_code().await.unwrap(), 1002);
    // A compressed message in fragments is fine: the first frame carries RSV1.
    let mut ws = open(&g, Some(OFFER)).await;
    let packed = chorus_testkit::deflate_client::deflate(br#"{"id":1,"connect":{}}"#);
    let (head, tail) = packed.split_at(packed.len() / 2);
    ws.send_raw(&raw_frame(0x40 | 0x1, head, mask))
        .await
        .unwrap();
    ws.send_raw(&raw_frame(0x80, tail, mask)).await.unwrap();
    let reply = json_of(&ws.next().await.unwrap().payload);
    assert!(reply["connect"]["client"].is_string(), "{reply}");
}

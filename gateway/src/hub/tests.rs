//! The hub's behaviour, envelope by envelope, on an in-memory bus.

use super::*;
use crate::conn::ConnQueue;
use chorus_bus::{Bus, NodeInfo};
use chorus_protocol::client::{self, push};
use chorus_protocol::codes::close;
use chorus_protocol::wire::{self, Format};

fn link(bus: &Bus, hub: &Arc<Hub>) -> NodeLink {
    let node = NodeInfo {
        id: "n".into(),
        address: String::new(),
        connections: 0,
        started_at_ms: 0,
    };
    bus.attach(node, hub.clone())
}

/// A hub attached to an in-memory bus (kept alive by the caller) as node `n`.
fn setup() -> (Bus, Arc<Hub>, NodeLink) {
    let bus = Bus::memory();
    let hub = Arc::new(Hub::new(usize::MAX));
    let link = link(&bus, &hub);
    (bus, hub, link)
}

fn envelope(channel: &str, offset: u64, exclude: &str) -> Envelope {
    Envelope {
        offset,
        epoch: "e".into(),
        channel: channel.into(),
        data: Bytes::from_static(b"{}"),
        published_at_ms: 0,
        exclude_client: exclude.into(),
        presence: None,
        trace_parent: String::new(),
        trace_state: String::new(),
    }
}

fn pos(offset: u64) -> Position {
    Position {
        offset,
        epoch: "e".into(),
    }
}

fn conn(name: &str, format: Format) -> (Arc<Conn>, ConnQueue) {
    let (c, q) = Conn::new(name.into(), format, 64, 1 << 16);
    (c, q)
}

/// Subscribes and activates at `at` with a reply frame `R`.
fn live(hub: &Hub, link: &NodeLink, ch: &str, c: &Arc<Conn>, at: u64) {
    drop(hub.hold(link, ch, c, true));
    hub.activate(ch, c, &pos(at), Some(Bytes::from_static(b"R")))
        .unwrap();
}

/// The catch-up target for `channel` from `offset`, in the generation `targets` carry.
/// A history read of channel "ch": publications `offsets`, the channel at `top`.
fn recovery(
    offsets: std::ops::RangeInclusive<u64>,
    top: u64,
    recovered: bool,
    more: bool,
) -> Recovery {
    Recovery {
        publications: offsets.map(|o| envelope("ch", o, "")).collect(),
        position: pos(top),
        recovered,
        more,
    }
}

fn target(channel: &str, offset: u64, targets: &[CatchUpTarget]) -> CatchUpTarget {
    CatchUpTarget {
        channel: channel.into(),
        since: pos(offset),
        generation: targets.first().map_or(0, |t| t.generation),
    }
}

fn take(q: &mut ConnQueue) -> Bytes {
    match q.try_recv() {
        Some(Outgoing::Data(b) | Outgoing::Publication(b, _)) => b,
        other => panic!("expected data, got {other:?}"),
    }
}

fn client_number(info: Option<client::ClientInfo>) -> u64 {
    info.and_then(|i| i.client.parse().ok()).unwrap_or(0)
}

/// A join or leave announcement of client `n`, as the bus delivers it.
fn announcement(channel: &str, client: &str, leave: bool) -> Envelope {
    Envelope {
        channel: channel.into(),
        exclude_client: client.into(),
        presence: Some(chorus_protocol::bus::PresenceEvent {
            leave,
            client: client.into(),
            ..Default::default()
        }),
        ..Envelope::default()
    }
}

/// The offsets of the publications queued, replies shown as 0.
fn offsets(q: &mut ConnQueue) -> Vec<u64> {
    let mut out = Vec::new();
    while let Some(Outgoing::Data(b) | Outgoing::Publication(b, _)) = q.try_recv() {
        if b.as_ref() == b"R" {
            out.push(0);
            continue;
        }
        let frame = wire::decode_frame(Format::Json, &b).unwrap();
        match frame.frame {
            Some(client::server_frame::Frame::Push(client::Push {
                body: Some(push::Body::Publication(p)),
            })) => out.push(p.offset),
            // A leave shows as 1000 + its client's number, a join as 2000 + it.
            Some(client::server_frame::Frame::Push(client::Push {
                body: Some(push::Body::Leave(l)),
            })) => out.push(1000 + client_number(l.info)),
            Some(client::server_frame::Frame::Push(client::Push {
                body: Some(push::Body::Join(j)),
            })) => out.push(2000 + client_number(j.info)),
            other => panic!("unexpected {other:?}"),
        }
    }
    out
}

#[test]
fn subscribers_of_one_format_share_one_encoding() {
    let (_bus, hub, link) = setup();
    let (a, mut qa) = conn("a", Format::Json);
    let (b, mut qb) = conn("b", Format::Json);
    let (c, mut qc) = conn("c", Format::Protobuf);
    for conn in [&a, &b, &c] {
        live(&hub, &link, "ch", conn, 0);
    }
    hub.publication(envelope("ch", 1, ""));
    for q in [&mut qa, &mut qb, &mut qc] {
        take(q); // the reply
    }
    let (fa, fb, fc) = (take(&mut qa), take(&mut qb), take(&mut qc));
    assert_eq!(
        fa.as_ptr(),
        fb.as_ptr(),
        "JSON subscribers share one buffer"
    );
    assert_ne!(fa, fc, "protobuf is encoded separately");
}

#[test]
fn excluded_sender_is_skipped_and_last_unsubscribe_unwants() {
    let (_bus, hub, link) = setup();
    let (a, mut qa) = conn("a", Format::Json);
    let (b, mut qb) = conn("b", Format::Json);
    live(&hub, &link, "ch", &a, 0);
    live(&hub, &link, "ch", &b, 0);
    hub.publication(envelope("ch", 1, "a"));
    assert_eq!(offsets(&mut qa), vec![0]);
    assert_eq!(offsets(&mut qb), vec![0, 1]);
    hub.unsubscribe(&link, "ch", &a);
    assert_eq!(hub.channel_count(), 1);
    hub.unsubscribe(&link, "ch", &b);
    assert_eq!(hub.channel_count(), 0);
    hub.publication(envelope("ch", 2, ""));
    assert!(qb.try_recv().is_none());
}

#[test]
fn unsubscribing_from_the_middle_keeps_every_other_subscriber_reachable() {
    let (_bus, hub, link) = setup();
    let mut conns: Vec<_> = (0..6)
        .map(|i| conn(&format!("c{i}"), Format::Json))
        .collect();
    for (c, _) in &conns[..5] {
        live(&hub, &link, "ch", c, 0);
    }
    // The last one stays held: activating it after others moved must find it.
    drop(hub.hold(&link, "ch", &conns[5].0, true));
    hub.unsubscribe(&link, "ch", &conns[1].0);
    hub.unsubscribe(&link, "ch", &conns[0].0);
    hub.unsubscribe(&link, "ch", &conns[1].0); // twice: nothing more happens
    assert_eq!(hub.subscription_count(), 4);
    hub.publication(envelope("ch", 1, ""));
    hub.activate("ch", &conns[5].0, &pos(0), Some(Bytes::from_static(b"R")))
        .unwrap();
    hub.publication(envelope("ch", 2, ""));
    let got: Vec<_> = conns.iter_mut().map(|(_, q)| offsets(q)).collect();
    assert_eq!(got[0], vec![0], "left before anything was published");
    assert_eq!(got[1], vec![0]);
    for live in &got[2..5] {
        assert_eq!(live, &vec![0, 1, 2]);
    }
    assert_eq!(got[5], vec![0, 1, 2], "held, then activated at 0");
    assert_eq!(
        hub.activate("ch", &conns[0].0, &pos(0), Some(Bytes::new())),
        Err(ActivateError::Gone)
    );
}

#[test]
fn subscribing_to_a_live_channel_is_local_and_seamless() {
    let (_bus, hub, link) = setup();
    let (a, mut qa) = conn("a", Format::Json);
    let (b, mut qb) = conn("b", Format::Json);
    let (c, _qc) = conn("c", Format::Json);
    let reply = |p: Position| {
        assert_eq!(p, pos(2), "the position of the last publication delivered");
        Bytes::from_static(b"R")
    };
    assert!(
        !hub.subscribe_live("ch", &b, true, reply),
        "no channel here yet"
    );
    drop(hub.hold(&link, "ch", &a, true));
    assert!(!hub.subscribe_live("ch", &b, true, reply), "not synced yet");
    hub.activate("ch", &a, &pos(0), Some(Bytes::from_static(b"R")))
        .unwrap();
    hub.publication(envelope("ch", 1, ""));
    hub.publication(envelope("ch", 2, ""));
    assert!(hub.subscribe_live("ch", &b, true, reply));
    hub.publication(envelope("ch", 3, ""));
    assert_eq!(offsets(&mut qa), vec![0, 1, 2, 3]);
    assert_eq!(offsets(&mut qb), vec![0, 3]);
    hub.publication(envelope("ch", 5, "")); // a gap: catching up
    assert!(
        !hub.subscribe_live("ch", &c, true, |_| Bytes::new()),
        "a channel catching up takes the way through the bus"
    );
    hub.unsubscribe(&link, "ch", &b);
    assert_eq!(hub.subscription_count(), 1);
}

#[test]
fn held_subscribers_behind_the_first_activation_still_get_what_lies_between() {
    // Two clients subscribe to a channel this node has not synced yet and read their
    // positions at different moments: A at 1, B at 2. Publications 2 and 3 arrive before
    // either is active; B activates first and syncs the channel at 2.
    let (_bus, hub, link) = setup();
    let (a, mut qa) = conn("a", Format::Json);
    let (b, mut qb) = conn("b", Format::Json);
    drop(hub.hold(&link, "ch", &a, true));
    drop(hub.hold(&link, "ch", &b, true));
    hub.publication(envelope("ch", 2, ""));
    hub.publication(envelope("ch", 3, ""));
    hub.activate("ch", &b, &pos(2), Some(Bytes::from_static(b"R")))
        .unwrap();
    hub.activate("ch", &a, &pos(1), Some(Bytes::from_static(b"R")))
        .unwrap();
    hub.publication(envelope("ch", 4, ""));
    assert_eq!(offsets(&mut qb), vec![0, 3, 4]);
    assert_eq!(
        offsets(&mut qa),
        vec![0, 2, 3, 4],
        "2 is after A's position"
    );
}

#[test]
fn a_held_subscriber_behind_a_hole_it_cannot_fill_is_told_to_read_again() {
    // The node never received 2..=5 (its bus subscription was being renewed): B synced the
    // channel at 5 from its own read; A read 1 earlier and holds nothing of 2..=5.
    let (_bus, hub, link) = setup();
    let (a, mut qa) = conn("a", Format::Json);
    let (b, mut qb) = conn("b", Format::Json);
    drop(hub.hold(&link, "ch", &a, true));
    drop(hub.hold(&link, "ch", &b, true));
    hub.activate("ch", &b, &pos(5), Some(Bytes::from_static(b"R")))
        .unwrap();
    assert_eq!(
        hub.activate("ch", &a, &pos(1), Some(Bytes::from_static(b"R"))),
        Err(ActivateError::Behind)
    );
    assert!(qa.try_recv().is_none(), "nothing queued for A yet");
    hub.publication(envelope("ch", 6, ""));
    // A's second read is at least as far as what the channel delivered.
    hub.activate("ch", &a, &pos(5), Some(Bytes::from_static(b"R")))
        .unwrap();
    hub.publication(envelope("ch", 7, ""));
    assert_eq!(offsets(&mut qa), vec![0, 6, 7]);
    assert_eq!(offsets(&mut qb), vec![0, 6, 7]);
}

#[test]
fn a_held_subscriber_gets_its_reply_first_then_only_newer_publications() {
    let (_bus, hub, link) = setup();
    let (a, mut qa) = conn("a", Format::Json);
    live(&hub, &link, "ch", &a, 0);
    let (b, mut qb) = conn("b", Format::Json);
    drop(hub.hold(&link, "ch", &b, true));
    for offset in 1..=3 {
        hub.publication(envelope("ch", offset, ""));
    }
    // b's position read saw offset 2: it gets the reply, then 3, then live ones.
    hub.activate("ch", &b, &pos(2), Some(Bytes::from_static(b"R")))
        .unwrap();
    hub.publication(envelope("ch", 4, ""));
    assert_eq!(offsets(&mut qb), vec![0, 3, 4]);
    assert_eq!(offsets(&mut qa), vec![0, 1, 2, 3, 4]);
}

#[test]
fn the_first_subscriber_syncs_the_channel_and_the_backlog_is_deduplicated() {
    let (_bus, hub, link) = setup();
    let (a, mut qa) = conn("a", Format::Json);
    drop(hub.hold(&link, "ch", &a, true));
    hub.publication(envelope("ch", 5, ""));
    hub.publication(envelope("ch", 6, ""));
    // The position read happened after 5 and before 6 was published.
    hub.activate("ch", &a, &pos(5), Some(Bytes::from_static(b"R")))
        .unwrap();
    hub.publication(envelope("ch", 6, "")); // a duplicate from the bus
    hub.publication(envelope("ch", 7, ""));
    assert_eq!(offsets(&mut qa), vec![0, 6, 7]);
}

#[test]
fn a_gap_waits_for_history_then_delivers_in_order_exactly_once() {
    let (_bus, hub, link) = setup();
    let (a, mut qa) = conn("a", Format::Json);
    live(&hub, &link, "ch", &a, 1);
    hub.publication(envelope("ch", 2, ""));
    hub.publication(envelope("ch", 5, "")); // 3 and 4 went missing
    hub.publication(envelope("ch", 6, ""));
    assert_eq!(offsets(&mut qa), vec![0, 2]);
    let targets = hub.catch_up_targets();
    assert_eq!(targets, vec![target("ch", 2, &targets)]);
    let recovery = recovery(3..=5, 5, true, false);
    hub.finish_catch_up(&targets[0], Some(recovery));
    hub.publication(envelope("ch", 7, ""));
    assert_eq!(offsets(&mut qa), vec![3, 4, 5, 6, 7]);
}

#[test]
fn a_lost_link_waits_for_resubscription_and_a_failed_read_is_retried() {
    let (_bus, hub, link) = setup();
    let (a, mut qa) = conn("a", Format::Json);
    live(&hub, &link, "ch", &a, 1);
    hub.link_lost(&|_| true);
    hub.publication(envelope("ch", 4, "")); // arrives on the new connection
    assert!(
        hub.catch_up_targets().is_empty(),
        "no read before resubscription"
    );
    hub.resubscribed(&["ch".into()]);
    let targets = hub.catch_up_targets();
    assert_eq!(targets, vec![target("ch", 1, &targets)]);
    hub.finish_catch_up(&targets[0], None);
    let targets = hub.catch_up_targets();
    assert_eq!(targets, vec![target("ch", 1, &targets)]);
    let recovery = recovery(2..=3, 3, true, false);
    hub.finish_catch_up(&targets[0], Some(recovery));
    assert_eq!(offsets(&mut qa), vec![0, 2, 3, 4]);
}

#[test]
fn an_unfillable_gap_or_a_new_epoch_disconnects_subscribers_with_insufficient_state() {
    let (_bus, hub, link) = setup();
    let (a, _qa) = conn("a", Format::Json);
    live(&hub, &link, "ch", &a, 1);
    hub.publication(envelope("ch", 9, ""));
    let targets = hub.catch_up_targets();
    let lost = Recovery {
        publications: Vec::new(),
        position: pos(9),
        recovered: false,
        more: false,
    };
    hub.finish_catch_up(&targets[0], Some(lost));
    assert_eq!(
        a.take_close_frame().map(|(code, _)| code),
        Some(close::INSUFFICIENT_STATE)
    );
    assert_eq!(hub.subscription_count(), 0, "the told subscriber is gone");
    // Its session's unsubscribe finds nothing, and releases the channel.
    hub.unsubscribe(&link, "ch", &a);
    assert_eq!(hub.channel_count(), 0);

    let (b, _qb) = conn("b", Format::Json);
    live(&hub, &link, "other", &b, 3);
    let mut reborn = envelope("other", 1, "");
    reborn.epoch = "new".into();
    hub.publication(reborn);
    assert_eq!(
        b.take_close_frame().map(|(code, _)| code),
        Some(close::INSUFFICIENT_STATE)
    );
}

#[test]
fn a_catch_up_read_made_before_the_link_broke_is_ignored_and_a_newer_one_runs() {
    let (_bus, hub, link) = setup();
    let (a, mut qa) = conn("a", Format::Json);
    live(&hub, &link, "ch", &a, 1);
    hub.publication(envelope("ch", 4, "")); // 2 and 3 went missing: a read starts
    let stale = hub.catch_up_targets();
    assert_eq!(stale, vec![target("ch", 1, &stale)]);
    // While it is in flight, the pub/sub link breaks and comes back: what was published
    // during the outage (5) is in no read made before.
    hub.link_lost(&|_| true);
    hub.resubscribed(&["ch".into()]);
    let before_outage = recovery(2..=4, 4, true, false);
    hub.finish_catch_up(&stale[0], Some(before_outage));
    assert_eq!(
        offsets(&mut qa),
        vec![0],
        "the stale read delivered nothing"
    );
    let fresh = hub.catch_up_targets();
    assert_eq!(
        fresh
            .iter()
            .map(|t| (&t.channel[..], t.since.offset))
            .collect::<Vec<_>>(),
        vec![("ch", 1)],
        "the newer request still stands"
    );
    assert_ne!(fresh[0].generation, stale[0].generation);
    let after_outage = recovery(2..=5, 5, true, false);
    hub.finish_catch_up(&fresh[0], Some(after_outage));
    hub.publication(envelope("ch", 6, ""));
    assert_eq!(offsets(&mut qa), vec![2, 3, 4, 5, 6]);
}

#[test]
fn a_channel_that_cannot_buffer_within_the_node_budget_sends_its_subscribers_to_recover() {
    let bus = Bus::memory();
    let hub = Arc::new(Hub::new(3000));
    let link = link(&bus, &hub);
    let (a, _qa) = conn("a", Format::Json);
    let (b, _qb) = conn("b", Format::Json);
    live(&hub, &link, "one", &a, 1);
    live(&hub, &link, "two", &b, 1);
    hub.link_lost(&|_| true);
    let sized = |channel: &str, offset: u64| Envelope {
        data: Bytes::from(vec![b'1'; 2000]),
        ..envelope(channel, offset, "")
    };
    hub.publication(sized("one", 2));
    assert_eq!(hub.backlog_bytes(), 2000);
    hub.publication(sized("two", 2));
    assert_eq!(
        b.take_close_frame().map(|(code, _)| code),
        Some(close::INSUFFICIENT_STATE),
        "no room left for channel two's backlog"
    );
    assert_eq!(
        a.take_close_frame(),
        None,
        "channel one keeps what it holds"
    );
    assert_eq!(hub.backlog_bytes(), 2000, "the budget is never passed");
    hub.unsubscribe(&link, "one", &a);
    assert_eq!(
        hub.backlog_bytes(),
        0,
        "a channel that goes away gives its bytes back"
    );
}

#[test]
fn a_catch_up_larger_than_one_page_reads_on_until_the_channel_is_whole() {
    let (_bus, hub, link) = setup();
    let (a, mut qa) = conn("a", Format::Json);
    live(&hub, &link, "ch", &a, 1);
    hub.link_lost(&|_| true);
    hub.resubscribed(&["ch".into()]);
    let first = hub.catch_up_targets();
    assert_eq!(first.len(), 1);
    hub.finish_catch_up(&first[0], Some(recovery(2..=3, 5, true, true)));
    let second = hub.catch_up_targets();
    assert_eq!(
        second.iter().map(|t| t.since.offset).collect::<Vec<_>>(),
        vec![3],
        "a page that said more asks for the next from its end, though nothing new arrived"
    );
    hub.finish_catch_up(&second[0], Some(recovery(4..=5, 5, true, false)));
    assert!(hub.catch_up_targets().is_empty());
    hub.publication(envelope("ch", 6, ""));
    assert_eq!(offsets(&mut qa), vec![0, 2, 3, 4, 5, 6]);
}

#[test]
fn joins_and_leaves_keep_their_place_among_publications_even_through_a_catch_up() {
    let (_bus, hub, link) = setup();
    let (a, mut qa) = conn("a", Format::Json);
    live(&hub, &link, "ch", &a, 1);
    hub.publication(envelope("ch", 2, ""));
    hub.publication(announcement("ch", "7", false));
    hub.publication(envelope("ch", 3, ""));
    assert_eq!(offsets(&mut qa), vec![0, 2, 2007, 3]);
    // 4 went missing: the leave that follows 5 waits in the backlog with it.
    hub.publication(envelope("ch", 5, ""));
    hub.publication(announcement("ch", "7", true));
    hub.publication(envelope("ch", 6, ""));
    assert!(offsets(&mut qa).is_empty(), "nothing while the gap is open");
    let targets = hub.catch_up_targets();
    hub.finish_catch_up(&targets[0], Some(recovery(4..=5, 5, true, false)));
    assert_eq!(offsets(&mut qa), vec![4, 5, 1007, 6]);
}

#[test]
fn a_subscriber_that_refused_join_leave_and_the_announced_client_itself_get_none() {
    let (_bus, hub, link) = setup();
    let (a, mut qa) = conn("a", Format::Json);
    let (b, mut qb) = conn("b", Format::Json);
    live(&hub, &link, "ch", &a, 1);
    drop(hub.hold(&link, "ch", &b, false));
    hub.activate("ch", &b, &pos(1), Some(Bytes::from_static(b"R")))
        .unwrap();
    hub.publication(announcement("ch", "9", false));
    hub.publication(announcement("ch", "a", false));
    assert_eq!(offsets(&mut qa), vec![0, 2009]);
    assert_eq!(
        offsets(&mut qb),
        vec![0],
        "b asked for no join/leave pushes"
    );
}

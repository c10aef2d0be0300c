// The unmodified pusher-js client (and Laravel Echo on top of it) against Chorus: two
// gateways, broker-api and Redis as real processes; private and presence subscriptions
// authorized by the official `pusher` server library, as an app's auth endpoint would.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import Echo from "laravel-echo";
import PusherServer from "pusher";

import { startCluster, until } from "../../js/test/harness.js";
import { pusherClient, subscribed } from "./support.js";

const APP = { id: "1001", key: "app-key", secret: "app-secret-1001" };
const FLAGS = ["--pusher-app-id", APP.id, "--pusher-app-key", APP.key, "--pusher-app-secret", APP.secret];

describe("pusher-js against Chorus", () => {
  let cluster;
  const server = new PusherServer({ appId: APP.id, key: APP.key, secret: APP.secret, host: "127.0.0.1" });
  const clients = [];

  before(async () => {
    cluster = await startCluster({ gateways: 2, gatewayArgs: FLAGS, apiArgs: FLAGS });
  });

  after(async () => {
    for (const c of clients) c.disconnect();
    await cluster?.stop();
  });

  function client(i, user = "anon", options = {}) {
    const c = pusherClient(cluster, server, i, user, options);
    clients.push(c);
    return c;
  }

  /** Publishes a Pusher event through broker-api's native API (the Pusher form of data). */
  function publish(channel, event, data) {
    return cluster.publish(`pusher-${APP.id}:${channel}`, { event, data: JSON.stringify(data) });
  }

  test("public and private channels on both gateways receive events in order", async () => {
    const a = client(0);
    const b = client(1);
    const [pa, pb, qa] = await Promise.all([
      subscribed(a, "orders"),
      subscribed(b, "orders"),
      subscribed(a, "private-orders"),
    ]);
    const got = { a: [], b: [], q: [] };
    pa.bind("placed", (d) => got.a.push(d.n));
    pb.bind("placed", (d) => got.b.push(d.n));
    qa.bind("placed", (d) => got.q.push(d.n));
    for (let n = 0; n < 50; n++) await publish("orders", "placed", { n });
    await publish("private-orders", "placed", { n: 99 });
    await until(() => got.a.length === 50 && got.b.length === 50 && got.q.length === 1, 10000, "every event");
    const expected = [...Array(50).keys()];
    assert.deepEqual(got.a, expected);
    assert.deepEqual(got.b, expected);
    assert.deepEqual(got.q, [99]);
  });

  test("a wrong signature is refused with subscription_error", async () => {
    const a = client(0, "anon", { badAuth: true });
    await assert.rejects(subscribed(a, "private-secret"), (e) => e.data?.status === 401 && e.data?.type === "AuthError");
  });

  test("presence members across gateways, including two that subscribe at the same moment", async () => {
    const ch = "presence-room";
    const alice = client(0, "alice");
    const bob = client(1, "bob");
    const [ra, rb] = await Promise.all([subscribed(alice, ch), subscribed(bob, ch)]);
    // Each learns of the other: in its own subscription, or by member_added after it.
    await until(() => ra.members.count === 2 && rb.members.count === 2, 10000, "both see two members");
    assert.equal(ra.members.get("bob").info.name, "bob");
    assert.equal(rb.members.me.id, "bob");

    const carol = client(1, "carol");
    const added = new Promise((resolve) => ra.bind("pusher:member_added", resolve));
    await subscribed(carol, ch);
    assert.equal((await added).id, "carol");
    const removed = new Promise((resolve) => ra.bind("pusher:member_removed", resolve));
    carol.disconnect();
    assert.equal((await removed).id, "carol");
    assert.equal(ra.members.count, 2);
  });

  test("client events reach the others and not the sender; user_id on presence", async () => {
    const a = client(0, "ann");
    const b = client(1, "ben");
    const [ca, cb] = await Promise.all([subscribed(a, "presence-chat"), subscribed(b, "presence-chat")]);
    await until(() => ca.members.count === 2, 10000, "ann sees ben");
    const own = [];
    ca.bind("client-typing", (d) => own.push(d));
    const got = new Promise((resolve) => cb.bind("client-typing", (data, meta) => resolve({ data, meta })));
    assert.equal(ca.trigger("client-typing", { typing: true }), true);
    const { data, meta } = await got;
    assert.deepEqual(data, { typing: true });
    assert.equal(meta.user_id, "ann");
    // The sender's own event never comes back: a publication after it arrives alone.
    const marker = new Promise((resolve) => ca.bind("marker", resolve));
    await publish("presence-chat", "marker", {});
    await marker;
    assert.deepEqual(own, []);
  });

  test("a burst of 2,000 events arrives complete and in order at every client on both gateways", async () => {
    const ch = "burst";
    const subs = await Promise.all([0, 1, 0, 1].map((i) => subscribed(client(i), ch)));
    const seen = subs.map(() => []);
    subs.forEach((s, i) => s.bind("tick", (d) => seen[i].push(d.n)));
    const N = 2000;
    const batch = 100;
    for (let n = 0; n < N; n += batch) {
      // broker-api's batch publish: one request, publications in order.
      const resp = await fetch(`${cluster.apiHttp()}/api/publish_batch`, {
        method: "POST",
        headers: { authorization: "Bearer test-key", "content-type": "application/json" },
        body: JSON.stringify({
          publications: Array.from({ length: batch }, (_, k) => ({
            channel: `pusher-${APP.id}:${ch}`,
            data: { event: "tick", data: JSON.stringify({ n: n + k }) },
          })),
        }),
      });
      assert.equal(resp.status, 200, await resp.text());
    }
    await until(() => seen.every((s) => s.length >= N), 20000, "every event at every client");
    for (const s of seen) {
      let reordered = 0;
      for (let k = 1; k < s.length; k++) if (s[k] < s[k - 1]) reordered++;
      assert.equal(reordered, 0);
      assert.equal(s.length, N);
    }
  });

  test("a cache channel: a cache miss first, then the last event for a later subscriber", async () => {
    const a = client(0);
    const ch = a.subscribe("cache-scores");
    const missed = new Promise((resolve) => ch.bind("pusher:cache_miss", resolve));
    await missed;
    await publish("cache-scores", "score", { home: 1 });
    const b = client(1);
    const later = b.subscribe("cache-scores");
    const got = await new Promise((resolve) => later.bind("score", resolve));
    assert.deepEqual(got, { home: 1 });
  });

  test("sign-in and the user's channel", async () => {
    const a = client(0, "dora");
    a.signin();
    // After the sign-in, pusher-js subscribes to the user's channel itself.
    await until(() => a.user.serverToUserChannel?.subscribed, 10000, "the user's channel");
    const got = new Promise((resolve) => a.user.bind("note", resolve));
    // The user's channel is the user-limited Chorus channel pusher-<app>:#<id>.
    await cluster.publish(`pusher-${APP.id}:#dora`, { event: "note", data: JSON.stringify({ text: "hi" }) });
    assert.deepEqual(await got, { text: "hi" });
  });

  test("a SIGKILLed gateway's members are removed, once, within its lease", async () => {
    const ch = "presence-crash";
    const alice = client(0, "alice");
    const bob = client(1, "bob");
    const [ra] = await Promise.all([subscribed(alice, ch), subscribed(bob, ch)]);
    await until(() => ra.members.count === 2, 10000, "alice sees bob");
    const removed = [];
    ra.bind("pusher:member_removed", (m) => removed.push(m.id));
    const killed = Date.now();
    await cluster.stopGateway(1, "SIGKILL");
    bob.disconnect(); // no reconnection attempts to the dead gateway
    await until(() => removed.length === 1, 15000, "bob removed by a surviving gateway");
    const took = Date.now() - killed;
    assert.deepEqual(removed, ["bob"]);
    assert.equal(ra.members.count, 1);
    // Within the node lease (5 s by default) and a reaping round.
    assert.ok(took < 8000, `removed after ${took} ms`);
    await cluster.startGateway(1);
  });

  test("Laravel Echo on pusher-js: a private channel's event", async () => {
    const echo = new Echo({
      broadcaster: "pusher",
      client: client(1, "erin"),
    });
    const got = new Promise((resolve) => echo.private("orders.7").listen(".shipped", resolve));
    // Echo names private channels private-<name>; wait for the subscription, then publish.
    const channel = echo.connector.pusher.channel("private-orders.7");
    await new Promise((resolve) => {
      if (channel.subscribed) resolve();
      else channel.bind("pusher:subscription_succeeded", resolve);
    });
    await publish("private-orders.7", "shipped", { id: 7 });
    assert.deepEqual(await got, { id: 7 });
    echo.disconnect();
  });
});

// The official `pusher` server library (Node) against broker-api's Pusher HTTP API, with
// pusher-js clients on two gateways receiving what it triggers.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import PusherServer from "pusher";

import { startCluster, until } from "../../js/test/harness.js";
import { pusherClient, subscribed } from "./support.js";

const APP = { id: "1001", key: "app-key", secret: "app-secret-1001" };
const FLAGS = ["--pusher-app-id", APP.id, "--pusher-app-key", APP.key, "--pusher-app-secret", APP.secret];

describe("the pusher server library against Chorus", () => {
  let cluster;
  let server;
  const clients = [];

  before(async () => {
    cluster = await startCluster({ gateways: 2, gatewayArgs: FLAGS, apiArgs: FLAGS });
    server = new PusherServer({
      appId: APP.id,
      key: APP.key,
      secret: APP.secret,
      host: "127.0.0.1",
      port: String(cluster.apiPort),
      useTLS: false,
    });
  });

  after(async () => {
    for (const c of clients) c.disconnect();
    await cluster?.stop();
  });

  function client(i, user = "anon") {
    const c = pusherClient(cluster, server, i, user);
    clients.push(c);
    return c;
  }

  /** The next `event` on `channel`. */
  function next(channel, event) {
    return new Promise((resolve) => channel.bind(event, resolve));
  }

  test("trigger to one and several channels, and triggerBatch, reach both gateways", async () => {
    const a = client(0);
    const b = client(1);
    const [ca, cb, cc] = await Promise.all([subscribed(a, "news"), subscribed(b, "news"), subscribed(b, "sport")]);
    let got = [next(ca, "headline"), next(cb, "headline")];
    const resp = await server.trigger("news", "headline", { title: "hello" });
    assert.equal(resp.status, 200);
    assert.deepEqual(await Promise.all(got), [{ title: "hello" }, { title: "hello" }]);

    got = [next(ca, "multi"), next(cc, "multi")];
    await server.trigger(["news", "sport"], "multi", { n: 2 });
    assert.deepEqual(await Promise.all(got), [{ n: 2 }, { n: 2 }]);

    got = [next(ca, "first"), next(cc, "second")];
    await server.triggerBatch([
      { channel: "news", name: "first", data: { n: 1 } },
      { channel: "sport", name: "second", data: "plain text" },
    ]);
    assert.deepEqual(await Promise.all(got), [{ n: 1 }, "plain text"]);
  });

  test("socket_id keeps an event from the connection that caused it", async () => {
    const a = client(0);
    const b = client(0);
    const [ca, cb] = await Promise.all([subscribed(a, "excl"), subscribed(b, "excl")]);
    const seen = [];
    ca.bind("e", (d) => seen.push(d.n));
    const last = next(cb, "e-done");
    const gotB = next(cb, "e");
    await server.trigger("excl", "e", { n: 1 }, { socket_id: a.connection.socket_id });
    assert.deepEqual(await gotB, { n: 1 });
    await server.trigger("excl", "e-done", {});
    await last;
    // "e-done" came after "e" on the same channel: a never got "e".
    assert.deepEqual(seen, []);
  });

  test("channel queries: list with prefix and counts, one channel, presence users", async () => {
    const [p1, p2] = [client(0, "u1"), client(1, "u2")];
    await Promise.all([subscribed(p1, "presence-lobby"), subscribed(p2, "presence-lobby"), subscribed(client(1), "quiet")]);

    const list = await (await server.get({ path: "/channels", params: { filter_by_prefix: "presence-", info: "user_count,subscription_count" } })).json();
    assert.deepEqual(list.channels["presence-lobby"], { subscription_count: 2, user_count: 2 });
    assert.equal(list.channels.quiet, undefined, "filtered by prefix");

    const all = await (await server.get({ path: "/channels" })).json();
    assert.deepEqual(all.channels.quiet, {});

    const one = await (await server.get({ path: "/channels/presence-lobby", params: { info: "subscription_count,user_count" } })).json();
    assert.deepEqual(one, { occupied: true, subscription_count: 2, user_count: 2 });
    const none = await (await server.get({ path: "/channels/nobody-here" })).json();
    assert.deepEqual(none, { occupied: false });

    // Counts for several channels of one trigger, and per event of a batch.
    const triggered = await (await server.trigger(["presence-lobby", "quiet", "nobody-here"], "count", {}, { info: "subscription_count" })).json();
    assert.deepEqual(triggered.channels, {
      "presence-lobby": { subscription_count: 2 },
      quiet: { subscription_count: 1 },
      "nobody-here": { subscription_count: 0 },
    });
    const batch = await (await server.triggerBatch([
      { channel: "quiet", name: "count", data: {}, info: "subscription_count" },
      { channel: "presence-lobby", name: "count", data: {}, info: "user_count,subscription_count" },
      { channel: "nobody-here", name: "count", data: {} },
    ])).json();
    assert.deepEqual(batch.batch, [{ subscription_count: 1 }, { subscription_count: 2, user_count: 2 }, {}]);

    const users = await (await server.get({ path: "/channels/presence-lobby/users" })).json();
    assert.deepEqual(users.users.map((u) => u.id).sort(), ["u1", "u2"]);

    await assert.rejects(server.get({ path: "/channels", params: { info: "user_count" } }), (e) => e.status === 400);
    await assert.rejects(server.get({ path: "/channels/quiet/users" }), (e) => e.status === 400);
  });

  test("sendToUser reaches a signed-in user; terminateUserConnections closes the user's connections, and pusher-js stays away", async () => {
    const c = client(1, "mallory");
    c.signin();
    await until(() => c.user.serverToUserChannel?.subscribed, 10000, "signed in");
    const note = new Promise((resolve) => c.user.bind("note", resolve));
    await server.sendToUser("mallory", "note", { for: "you" });
    assert.deepEqual(await note, { for: "you" });
    const failed = new Promise((resolve) => c.connection.bind("error", resolve));
    const resp = await server.terminateUserConnections("mallory");
    assert.equal(resp.status, 200);
    assert.deepEqual(await resp.json(), {});
    const error = await failed;
    assert.equal(error.data?.code ?? error.error?.data?.code, 4009);
    await until(() => ["disconnected", "unavailable", "failed"].includes(c.connection.state), 10000, "disconnected");
  });

  test("bad signatures, stale timestamps and oversized events are refused with the statuses the library expects", async () => {
    const wrong = new PusherServer({ appId: APP.id, key: APP.key, secret: "not-the-secret", host: "127.0.0.1", port: String(cluster.apiPort), useTLS: false });
    await assert.rejects(wrong.trigger("news", "x", {}), (e) => e.status === 401);
    const unknown = new PusherServer({ appId: "9999", key: APP.key, secret: APP.secret, host: "127.0.0.1", port: String(cluster.apiPort), useTLS: false });
    await assert.rejects(unknown.trigger("news", "x", {}), (e) => e.status === 404);
    await assert.rejects(server.trigger("news", "x", "y".repeat(11 * 1024)), (e) => e.status === 413);
    // A stale timestamp: sign an hour ago by hand.
    const realNow = Date.now;
    Date.now = () => realNow() - 3600 * 1000;
    try {
      await assert.rejects(server.trigger("news", "x", {}), (e) => e.status === 401 && /auth_timestamp/.test(e.body));
    } finally {
      Date.now = realNow;
    }
    // Keep-alive like any HTTP/1.1 server.
    const resp = await server.trigger("news", "ok", {});
    assert.notEqual(resp.headers.get("connection"), "close");
  });
});

// Presence, join/leave and server-side subscriptions in the SDK, against real Chorus
// processes (redis-server, broker-api, two gateways; see harness.js).
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import WebSocket from "ws";

import { ChorusError, Client } from "../index.js";
import { HMAC_SECRET, hmacToken, nextEvent, startCluster, tempDir, uniqueChannel, until } from "./harness.js";

const NAMESPACES = `
[default]
anonymous_subscribe = true

[namespace.chat]
anonymous_subscribe = true
client_publish = true
presence = true
join_leave = true

[namespace.user]
personal_channel = true
`;

const FAST = { websocket: WebSocket, minReconnectDelay: 50, maxReconnectDelay: 500, timeout: 3000 };

describe("presence and server-side subscriptions", () => {
  let cluster;
  let tmp;
  const clients = [];
  /** A connected client of `user` on gateway `gw`. */
  const connected = async (user, gw = 0, opts = {}) => {
    const token = hmacToken({ sub: user, info: { name: user }, exp: Math.floor(Date.now() / 1000) + 3600 });
    const c = new Client(cluster.ws(gw), { ...FAST, token, ...opts });
    clients.push(c);
    await c.connect();
    return c;
  };
  before(async () => {
    tmp = tempDir("chorus-sdk-presence-");
    const file = join(tmp.dir, "namespaces.toml");
    writeFileSync(file, NAMESPACES);
    cluster = await startCluster({
      gateways: 2,
      gatewayArgs: ["--namespaces", file, "--token-hmac-secret", HMAC_SECRET],
    });
  });
  after(async () => {
    for (const c of clients) c.disconnect();
    await cluster?.stop();
    tmp?.remove();
  });

  for (const format of ["json", "protobuf"]) {
    test(`${format}: presence and stats on both gateways, join and leave in order, the opt-out`, async () => {
      const channel = uniqueChannel();
      const alice = await connected("alice", 0, { format });
      const a = alice.subscribe(channel);
      const events = [];
      for (const e of ["publication", "join", "leave"]) a.on(e, (ctx) => events.push([e, ctx]));
      await nextEvent(a, "subscribed");

      // Carol does not want joins and leaves.
      const carol = await connected("carol", 1, { format });
      const c = carol.subscribe(channel, { joinLeave: false });
      const carolEvents = [];
      for (const e of ["publication", "join", "leave"]) c.on(e, () => carolEvents.push(e));
      await nextEvent(c, "subscribed");

      const bob = await connected("bob", 1, { format });
      const b = bob.subscribe(channel);
      await nextEvent(b, "subscribed");
      await until(() => events.filter(([e]) => e === "join").length === 2, 10000, "two joins");
      const bobJoin = events.find(([e, ctx]) => e === "join" && ctx.info.user === "bob")[1];
      assert.equal(bobJoin.channel, channel);
      assert.deepEqual(bobJoin.info.info, { name: "bob" });

      const here = await b.presence();
      assert.deepEqual(here.clients.map((m) => m.user).sort(), ["alice", "bob", "carol"]);
      assert.deepEqual(here.clients.find((m) => m.user === "alice").info, { name: "alice" });
      assert.deepEqual(await alice.presenceStats(channel), { numClients: 3, numUsers: 3 });

      // Bob says goodbye and leaves: alice hears his publication, then his leave.
      await b.publish({ said: "bye" });
      b.unsubscribe();
      await until(() => events.some(([e]) => e === "leave"), 10000, "bob's leave");
      // Protobuf publications carry bytes: here the JSON text of the data.
      const data = (p) => p.data ?? JSON.parse(new TextDecoder().decode(p.bytes));
      const tail = events.slice(-2).map(([e, ctx]) => [e, e === "publication" ? data(ctx) : ctx.info.user]);
      assert.deepEqual(tail, [["publication", { said: "bye" }], ["leave", "bob"]]);
      await until(() => carolEvents.length === 1, 10000, "carol's publication");
      assert.deepEqual(carolEvents, ["publication"], "carol opted out of joins and leaves");
      assert.deepEqual(await c.presenceStats(), { numClients: 2, numUsers: 2 });

      // A channel without presence: a clear refusal.
      await assert.rejects(alice.presence("news"), (e) => e instanceof ChorusError && e.code === 107);
    });
  }

  test("a server-side subscription is announced, delivered, recovered after a reconnect and ended by the server", async () => {
    // Reconnects after ~1 s, so that what is published right after the disconnect is missed
    // and must come back by recovery.
    const dave = await connected("dave", 0, { minReconnectDelay: 2000, maxReconnectDelay: 2000 });
    const subs = new Map();
    const got = [];
    dave.on("serverSubscription", ({ subscription }) => {
      subs.set(subscription.channel, subscription);
      subscription.on("publication", (p) => got.push([p.channel, p.data, p.recovered]));
    });
    await until(() => subs.has("user:#dave"), 10000, "the personal channel");
    const personal = subs.get("user:#dave");
    assert.equal(personal.server, true);
    if (personal.state !== "subscribed") await nextEvent(personal, "subscribed");

    await cluster.api("/api/subscribe", { user: "dave", channel: "news" });
    await until(() => subs.has("news"), 10000, "the server's subscribe to news");
    const news = subs.get("news");
    await cluster.publish("news", { n: 1 });
    await cluster.publish("user:#dave", { n: 1 });
    await until(() => got.length === 2, 10000, "both publications");
    assert.deepEqual(got, [["news", { n: 1 }, false], ["user:#dave", { n: 1 }, false]]);

    // Disconnected by the server; what is published meanwhile is recovered on return, and
    // the API's subscription (not restored by the gateway) ends.
    const newsEnded = nextEvent(news, "unsubscribed");
    // Listening before the call: the disconnect may reach the client before the API answers.
    const gone = nextEvent(dave, "connecting");
    await cluster.api("/api/disconnect", { user: "dave", code: 4100, reason: "move", reconnect: true });
    await gone;
    await cluster.publish("user:#dave", { n: 2 });
    await cluster.publish("user:#dave", { n: 3 });
    const back = await nextEvent(personal, "subscribed");
    assert.equal(back.wasRecovering, true);
    assert.equal(back.recovered, true);
    await until(() => got.length === 4, 10000, "the recovered publications");
    assert.deepEqual(got.slice(2), [["user:#dave", { n: 2 }, true], ["user:#dave", { n: 3 }, true]]);
    assert.match((await newsEnded).reason, /not restored/);
    assert.equal(dave.getSubscription("news"), undefined);

    // Taken out of the personal channel by the API.
    const ended = nextEvent(personal, "unsubscribed");
    await cluster.api("/api/unsubscribe", { user: "dave", channel: "user:#dave" });
    assert.equal((await ended).reason, "unsubscribed by the server");
    assert.equal(personal.state, "unsubscribed");
  });
});

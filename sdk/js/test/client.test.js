// The SDK against real Chorus processes (redis-server, broker-api, gateways; see harness.js),
// and against a scripted WebSocket server where a gateway cannot be made to do something
// (a `disconnect` push with reconnect: false, duplicate publications).
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { after, before, describe, test } from "node:test";
import WebSocket, { WebSocketServer } from "ws";

import { ChorusError, Client } from "../index.js";
import {
  HMAC_SECRET,
  freePort,
  hmacToken,
  nextEvent,
  startCluster,
  startProxy,
  uniqueChannel,
  until,
} from "./harness.js";

/** Fast timings, so failures and reconnects take milliseconds instead of seconds. */
const FAST = { websocket: WebSocket, minReconnectDelay: 50, maxReconnectDelay: 500, timeout: 3000 };

/** Collects a subscription's publications. */
function collect(sub) {
  const got = [];
  sub.on("publication", (p) => got.push(p));
  return got;
}

describe("against one gateway", () => {
  let cluster;
  const clients = [];
  const client = (url, opts = {}) => {
    const c = new Client(url, { ...FAST, ...opts });
    clients.push(c);
    return c;
  };
  /** A connected client subscribed to `channel`, with the publications it collects. */
  const subscribed = async (channel) => {
    const a = client(cluster.ws());
    await a.connect();
    const sub = a.subscribe(channel);
    const got = collect(sub);
    await nextEvent(sub, "subscribed");
    return { a, sub, got };
  };
  before(async () => {
    cluster = await startCluster({ gateways: 1 });
  });
  after(async () => {
    for (const c of clients) c.disconnect();
    await cluster?.stop();
  });

  test("subscribe, publish from a client and over HTTP, history", async () => {
    const channel = uniqueChannel();
    const a = client(cluster.ws());
    const b = client(cluster.ws());
    const states = [];
    a.on("state", ({ state }) => states.push(state));
    const connected = nextEvent(a, "connected");
    await a.connect();
    assert.equal(a.state, "connected");
    assert.deepEqual(states, ["connecting", "connected"]);
    assert.equal((await connected).node, "gw-1");
    await b.connect();

    const sub = a.subscribe(channel);
    const got = collect(sub);
    const subscribed = await nextEvent(sub, "subscribed");
    assert.deepEqual(
      { offset: subscribed.offset, wasRecovering: subscribed.wasRecovering, recovered: subscribed.recovered },
      { offset: 0, wasRecovering: false, recovered: false },
    );

    const sent = await b.publish(channel, { text: "from b" });
    assert.equal(sent.offset, 1);
    const viaHttp = await cluster.publish(channel, { text: "from http" });
    assert.equal(viaHttp.offset, 2);
    await until(() => got.length === 2, 5000, "two publications");
    assert.deepEqual(
      got.map((p) => [p.offset, p.epoch, p.data, p.recovered]),
      [
        [1, sent.epoch, { text: "from b" }, false],
        [2, sent.epoch, { text: "from http" }, false],
      ],
    );
    assert.deepEqual(sub.position, { offset: 2, epoch: sent.epoch });

    const history = await b.history(channel);
    assert.deepEqual(history.publications.map((p) => p.data), [{ text: "from b" }, { text: "from http" }]);
    assert.equal(history.offset, 2);
    const newest = await b.history(channel, { limit: 1, reverse: true });
    assert.deepEqual(newest.publications.map((p) => p.offset), [2]);
    const since = await b.history(channel, { since: { offset: 1, epoch: sent.epoch } });
    assert.deepEqual(since.publications.map((p) => p.offset), [2]);

    // A refusal is a ChorusError with the gateway's code: clients may not publish to `news`.
    await assert.rejects(b.publish("news", 1), (e) => e instanceof ChorusError && e.code === 103);
    await b.ping();
  });

  test("Node's own WebSocket is used when no constructor is passed", async () => {
    // Node 20 has a global WebSocket behind --experimental-websocket, later versions always.
    const major = Number(process.versions.node.split(".")[0]);
    const flags = major < 22 ? ["--experimental-websocket", "--no-warnings"] : [];
    const channel = uniqueChannel();
    const script = `
      import { Client } from ${JSON.stringify(new URL("../index.js", import.meta.url).href)};
      const client = new Client(${JSON.stringify(cluster.ws())}, { timeout: 3000 });
      const sub = client.subscribe(${JSON.stringify(channel)});
      sub.on("subscribed", () => console.log("subscribed"));
      sub.on("publication", (p) => { console.log("got", p.offset, JSON.stringify(p.data)); client.disconnect(); });
      await client.connect();
    `;
    const child = execFile(process.execPath, [...flags, "--input-type=module", "-e", script], { timeout: 10000 });
    let out = "";
    child.stdout.on("data", (d) => (out += d));
    child.stderr.on("data", (d) => (out += d));
    const exited = new Promise((resolve) => child.once("exit", resolve));
    await until(() => out.includes("subscribed"), 10000, "the child to subscribe");
    await cluster.publish(channel, { via: "global WebSocket" });
    assert.equal(await exited, 0, out);
    assert.match(out, /got 1 \{"via":"global WebSocket"\}/);
  });

  test("a refused subscription ends with unsubscribed and is not retried", async () => {
    const a = client(cluster.ws());
    await a.connect();
    const sub = a.subscribe("bad channel");
    const [err, gone] = await Promise.all([nextEvent(sub, "error"), nextEvent(sub, "unsubscribed")]);
    assert.equal(err.error.code, 102);
    assert.equal(gone.code, 102);
    assert.equal(a.getSubscription("bad channel"), undefined);
  });

  test("unsubscribe stops delivery", async () => {
    const channel = uniqueChannel();
    const { a, sub, got } = await subscribed(channel);
    await cluster.publish(channel, 1);
    await until(() => got.length === 1);
    const gone = nextEvent(sub, "unsubscribed");
    sub.unsubscribe();
    assert.equal((await gone).code, 0);
    await cluster.publish(channel, 2);
    // The gateway answers a ping after whatever it queued before: nothing more came.
    await a.ping();
    assert.equal(got.length, 1);
  });

  test("a gateway restart: reconnect, resubscribe with recover, nothing missed", async () => {
    const channel = uniqueChannel();
    const { a, sub, got } = await subscribed(channel);
    await cluster.publish(channel, "before");
    await until(() => got.length === 1);

    // SIGTERM: the gateway drains (close 3000) and exits; publish while it is down.
    const connecting = nextEvent(a, "connecting", (c) => c.code !== 0);
    await cluster.stopGateway(0, "SIGTERM");
    assert.equal((await connecting).code, 3000);
    await cluster.publish(channel, "while down 1");
    await cluster.publish(channel, "while down 2");
    const resubscribed = nextEvent(sub, "subscribed");
    await cluster.startGateway(0);
    const ctx = await resubscribed;
    assert.equal(ctx.wasRecovering, true);
    assert.equal(ctx.recovered, true);
    await cluster.publish(channel, "after");
    await until(() => got.length === 4, 5000, "four publications");
    assert.deepEqual(
      got.map((p) => [p.offset, p.data, p.recovered]),
      [
        [1, "before", false],
        [2, "while down 1", true],
        [3, "while down 2", true],
        [4, "after", false],
      ],
    );
  });

  test("protobuf format: publish, subscribe, history, recovery, interop with JSON", async () => {
    const channel = uniqueChannel();
    const pb = client(cluster.ws(), { format: "protobuf" });
    const js = client(cluster.ws());
    await Promise.all([pb.connect(), js.connect()]);
    const pbSub = pb.subscribe(channel);
    const jsSub = js.subscribe(channel);
    const pbGot = collect(pbSub);
    const jsGot = collect(jsSub);
    await Promise.all([nextEvent(pbSub, "subscribed"), nextEvent(jsSub, "subscribed")]);

    // JSON published, protobuf received: the JSON text's bytes.
    await js.publish(channel, { text: "hi" });
    // Bytes published over protobuf, JSON received: base64, as they are not JSON.
    const sent = await pb.publish(channel, new Uint8Array([0, 1, 2, 255]));
    assert.equal(sent.offset, 2);
    // Any other value goes as its JSON text.
    await pb.publish(channel, { n: 3 });
    await until(() => pbGot.length === 1 && jsGot.length === 2, 5000, "the publications");
    assert.equal(new TextDecoder().decode(pbGot[0].bytes), '{"text":"hi"}');
    assert.equal(pbGot[0].data, undefined);
    assert.deepEqual([jsGot[0].offset, jsGot[0].b64data], [2, "AAEC/w=="]);
    assert.deepEqual([jsGot[1].offset, jsGot[1].data], [3, { n: 3 }]);

    const history = await pb.history(channel, { since: { offset: 1, epoch: sent.epoch }, limit: 1 });
    assert.deepEqual(history.publications.map((p) => [p.offset, [...p.bytes]]), [[2, [0, 1, 2, 255]]]);
    assert.equal(history.offset, 3);
    await assert.rejects(pb.publish("news", 1), (e) => e instanceof ChorusError && e.code === 103);
    await pb.ping();

    // A restart: the protobuf client recovers what it missed too.
    const resubscribed = nextEvent(pbSub, "subscribed", (c) => c.wasRecovering);
    await cluster.stopGateway(0, "SIGKILL");
    await cluster.publish(channel, "while down");
    await cluster.startGateway(0);
    const ctx = await resubscribed;
    assert.equal(ctx.recovered, true);
    await until(() => pbGot.length === 4, 5000, "the recovered publications");
    // Its own publications (2, 3; not echoed live) come back too: recovery starts after the
    // last publication the subscription delivered.
    assert.deepEqual(
      pbGot.map((p) => [p.offset, p.recovered]),
      [[1, false], [2, true], [3, true], [4, true]],
    );
    assert.equal(new TextDecoder().decode(pbGot[3].bytes), '"while down"');
  });

  test("a silent connection is found by the ping timeout and replaced", async () => {
    const channel = uniqueChannel();
    const proxy = await startProxy(cluster.gatewayPort());
    try {
      const a = client(`ws://127.0.0.1:${proxy.port}/ws`, { pingInterval: 300, pongTimeout: 300 });
      await a.connect();
      const sub = a.subscribe(channel);
      const got = collect(sub);
      await nextEvent(sub, "subscribed");
      const lost = nextEvent(a, "connecting", (c) => c.code !== 0, 5000);
      proxy.freeze();
      // Published into the silence: recovery on the new connection must bring it.
      await cluster.publish(channel, "into the silence");
      const started = Date.now();
      const ctx = await lost;
      assert.equal(ctx.code, 4000, "closed for want of a ping answer");
      // pingInterval + pongTimeout is 0.6 s; the margin is for a loaded machine.
      assert.ok(Date.now() - started < 4000, "found within pingInterval + pongTimeout and a margin");
      const back = await nextEvent(sub, "subscribed");
      assert.equal(back.recovered, true);
      await until(() => got.length === 1, 5000, "the publication");
      assert.deepEqual(got.map((p) => [p.offset, p.data, p.recovered]), [[1, "into the silence", true]]);
      assert.equal(a.state, "connected");
    } finally {
      await proxy.stop();
    }
  });
});

describe("failover between gateways", () => {
  test("SIGKILL while publishing: the client moves to the other URL, every offset exactly once", async () => {
    const cluster = await startCluster({ gateways: 2 });
    const a = new Client([cluster.ws(0), cluster.ws(1)], { ...FAST, pingInterval: 1000, pongTimeout: 1000 });
    try {
      const channel = uniqueChannel("feed");
      const nodes = [];
      a.on("connected", (c) => nodes.push(c.node));
      await a.connect();
      assert.deepEqual(nodes, ["gw-1"]);
      const sub = a.subscribe(channel);
      const got = collect(sub);
      await nextEvent(sub, "subscribed");

      const total = 200;
      const acked = [];
      let killed = false;
      for (let i = 1; i <= total; i++) {
        acked.push((await cluster.publish(channel, { i })).offset);
        if (i === 60) {
          await cluster.stopGateway(0, "SIGKILL");
          killed = true;
        }
      }
      assert.ok(killed);
      await until(() => got.length >= total, 15000, `${total} publications`);
      // A moment for stray duplicates to arrive (they would be counted below).
      await a.ping();
      const offsets = got.map((p) => p.offset);
      assert.deepEqual(offsets, acked, "every acknowledged offset once, in order");
      assert.deepEqual(got.map((p) => p.data.i), acked);
      assert.equal(nodes.at(-1), "gw-2", "ended on the fallback gateway");
    } catch (e) {
      e.message += "\n" + cluster.logs();
      throw e;
    } finally {
      a.disconnect();
      await cluster.stop();
    }
  });
});

describe("tokens", () => {
  let cluster;
  before(async () => {
    cluster = await startCluster({ gatewayArgs: ["--token-hmac-secret", HMAC_SECRET] });
  });
  after(async () => {
    await cluster?.stop();
  });
  const token = (seconds) => hmacToken({ sub: "alice", exp: Math.floor(Date.now() / 1000) + seconds });

  test("3004 at expiry: getToken, reconnect, recover", async () => {
    const channel = uniqueChannel();
    let calls = 0;
    const a = new Client(cluster.ws(), {
      ...FAST,
      refresh: false, // let it expire
      getToken: async () => {
        calls += 1;
        return token(3);
      },
    });
    try {
      await a.connect();
      assert.equal(calls, 1);
      const sub = a.subscribe(channel);
      const got = collect(sub);
      await nextEvent(sub, "subscribed");
      const expired = await nextEvent(a, "connecting", (c) => c.code !== 0, 10000);
      assert.equal(expired.code, 3004);
      await cluster.publish(channel, "after expiry");
      const back = await nextEvent(sub, "subscribed");
      assert.equal(back.recovered, true);
      assert.ok(calls >= 2, "a new token was fetched");
      await until(() => got.length === 1, 5000, "the publication");
      assert.equal(got[0].data, "after expiry");
    } finally {
      a.disconnect();
    }
  });

  test("refresh before exp keeps the connection", async () => {
    let calls = 0;
    let firstExp = 0;
    const a = new Client(cluster.ws(), {
      ...FAST,
      getToken: async () => {
        calls += 1;
        // exp has whole seconds: 3 s leaves 2–3 s, and the refresh a margin of 0.5–0.75 s.
        const t = token(3);
        if (!firstExp) firstExp = JSON.parse(Buffer.from(t.split(".")[1], "base64url").toString()).exp;
        return t;
      },
    });
    const drops = [];
    a.on("connecting", (c) => {
      if (c.code !== 0) drops.push(c);
    });
    const errors = [];
    a.on("error", (e) => errors.push(e));
    try {
      await a.connect();
      // Three tokens: the first one's exp is checked to have passed below.
      await until(() => calls >= 3, 10000, "two refreshes");
      // Past the first token's exp (the gateway would have closed with 3004 at it).
      await until(() => Date.now() > firstExp * 1000 + 500, 10000, "the first exp");
      await a.ping();
      assert.deepEqual(drops, [], "the connection never dropped");
      assert.deepEqual(errors, []);
      assert.equal(a.state, "connected");
    } finally {
      a.disconnect();
    }
  });

  test("an invalid token stops the client", async () => {
    const a = new Client(cluster.ws(), { ...FAST, token: hmacToken({ sub: "x" }, "wrong-secret") });
    await assert.rejects(a.connect(), (e) => e.code === "disconnected");
    assert.equal(a.state, "disconnected");
  });
});

/** A scripted WebSocket server speaking just enough of the protocol. */
async function scriptedServer(onCommand) {
  const port = await freePort();
  const wss = new WebSocketServer({ port, host: "127.0.0.1" });
  let connections = 0;
  wss.on("connection", (ws) => {
    connections += 1;
    ws.on("message", (raw) => {
      const cmd = JSON.parse(raw.toString());
      onCommand(ws, cmd);
    });
  });
  await new Promise((r) => wss.once("listening", r));
  return {
    url: `ws://127.0.0.1:${port}/ws`,
    connections: () => connections,
    stop: () => new Promise((r) => wss.close(r)),
  };
}

const CONNECTED = { client: "c1", node: "scripted", version: "0", ping_interval: 25 };

/**
 * A scripted gateway that answers connect and ping, and subscribes with `onSubscribe`; then
 * a connected client, handed to `body`; both are stopped after it.
 */
async function withScriptedSubscribe(onSubscribe, body) {
  const server = await scriptedServer((ws, cmd) => {
    if (cmd.connect) ws.send(JSON.stringify({ id: cmd.id, connect: CONNECTED }));
    if (cmd.subscribe) onSubscribe((frame) => ws.send(JSON.stringify(frame)), cmd.id);
    if (cmd.ping) ws.send(JSON.stringify({ id: cmd.id, ping: {} }));
  });
  const a = new Client(server.url, FAST);
  try {
    await a.connect();
    await body(a);
  } finally {
    a.disconnect();
    await server.stop();
  }
}

describe("scripted gateway", () => {
  test("disconnect with reconnect: false stays down", async () => {
    const server = await scriptedServer((ws, cmd) => {
      if (cmd.connect) {
        ws.send(JSON.stringify({ id: cmd.id, connect: CONNECTED }));
        ws.send(JSON.stringify({ disconnect: { code: 3009, reason: "banned", reconnect: false } }));
        ws.close(3009, "banned");
      }
    });
    const a = new Client(server.url, FAST);
    try {
      const down = nextEvent(a, "disconnected");
      // The push may come in the same read as the connect reply: connect() may reject.
      await a.connect().catch(() => {});
      const ctx = await down;
      assert.deepEqual(ctx, { code: 3009, reason: "banned", reconnect: false });
      assert.equal(a.state, "disconnected");
      // Several backoff steps later there is still one connection only.
      await new Promise((r) => setTimeout(r, 500));
      assert.equal(server.connections(), 1);
      await assert.rejects(a.publish("chat:x", 1), (e) => e.code === "disconnected");
    } finally {
      a.disconnect();
      await server.stop();
    }
  });

  test("duplicates and stale offsets are dropped", async () => {
    const onSubscribe = (send, id) => {
      send({ id, subscribe: { offset: 0, epoch: "e1" } });
      for (const offset of [1, 2, 2, 1, 3]) {
        send({ pub: { channel: "c", offset, epoch: "e1", data: offset } });
      }
    };
    await withScriptedSubscribe(onSubscribe, async (a) => {
      const sub = a.subscribe("c");
      const got = collect(sub);
      await nextEvent(sub, "subscribed");
      await a.ping();
      assert.deepEqual(got.map((p) => p.offset), [1, 2, 3]);
    });
  });

  test("recovered: false with the new epoch from its start: subscribed first, then all of it", async () => {
    const onSubscribe = (send, id) => {
      const publications = [1, 2].map((offset) => ({ channel: "c", offset, epoch: "e2", data: offset }));
      send({ id, subscribe: { offset: 2, epoch: "e2", recovered: false, publications } });
      send({ pub: { channel: "c", offset: 3, epoch: "e2", data: 3 } });
    };
    await withScriptedSubscribe(onSubscribe, async (a) => {
      const sub = a.subscribe("c", { since: { offset: 9, epoch: "e1" } });
      const events = [];
      sub.on("subscribed", (s) => events.push(`subscribed recovered=${s.recovered}`));
      sub.on("publication", (p) => events.push(`${p.epoch}:${p.offset}`));
      await nextEvent(sub, "subscribed");
      await a.ping();
      assert.deepEqual(events, ["subscribed recovered=false", "e2:1", "e2:2", "e2:3"]);
    });
  });

  test("bounded: commands wait for a connection in a bounded queue and time out", async () => {
    const port = await freePort(); // nothing listens: every attempt fails
    const a = new Client(`ws://127.0.0.1:${port}/ws`, { ...FAST, maxQueued: 2, timeout: 300 });
    const attempts = [];
    a.on("connecting", (c) => attempts.push(Date.now()));
    try {
      a.connect().catch(() => {});
      const first = a.publish("chat:x", 1);
      const second = a.publish("chat:x", 2);
      await assert.rejects(a.publish("chat:x", 3), (e) => e.code === "queue_full");
      await assert.rejects(first, (e) => e.code === "timeout");
      await assert.rejects(second, (e) => e.code === "timeout");
      // The queue emptied as they timed out: a new command is accepted (and times out).
      await assert.rejects(a.publish("chat:x", 4), (e) => e.code === "timeout");
      // Backoff: no tight loop (50 ms, 100 ms, 200 ms … with jitter).
      assert.ok(attempts.length < 15, `${attempts.length} attempts in ~600 ms`);
    } finally {
      a.disconnect();
    }
  });
});

describe("subscriptions on one connection", () => {
  test("unsubscribe while the subscribe is in flight, then subscribe again", async () => {
    const cluster = await startCluster({ gateways: 1 });
    const a = new Client(cluster.ws(), FAST);
    try {
      const channel = uniqueChannel();
      await a.connect();
      const first = a.subscribe(channel);
      const firstGot = collect(first);
      // Unsubscribed before the gateway answered the subscribe (sent at the next microtask).
      await Promise.resolve();
      first.unsubscribe();
      const second = a.subscribe(channel);
      assert.notEqual(second, first);
      const got = collect(second);
      const errors = [];
      second.on("error", (e) => errors.push(e.error));
      await nextEvent(second, "subscribed");
      await cluster.publish(channel, "once");
      await until(() => got.length === 1, 5000, "the publication");
      await a.ping();
      assert.deepEqual(errors, [], "not refused as already subscribed");
      assert.deepEqual(firstGot, [], "nothing for the dropped subscription");
      assert.equal(second.state, "subscribed");
    } finally {
      a.disconnect();
      await cluster.stop();
    }
  });
});

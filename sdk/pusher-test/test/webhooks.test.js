// Pusher webhooks from Chorus, checked by the official `pusher` server library's webhook
// verifier: pusher-js clients on two gateways make a presence channel occupied, add members,
// send a client event, leave; a gateway is SIGKILLed. Each event must arrive exactly once
// (not once per gateway), signed with the app's secret.
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import http from "node:http";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";

import PusherServer from "pusher";

import { startCluster, tempDir, until } from "../../js/test/harness.js";
import { pusherClient, subscribed } from "./support.js";

const APP = { id: "1001", key: "hook-key", secret: "hook-secret-1001" };

/** An HTTP server collecting webhook POSTs: each verified with the library, its events kept. */
async function receiver(server) {
  const events = [];
  const invalid = [];
  const srv = http.createServer((req, res) => {
    let body = "";
    req.on("data", (d) => (body += d));
    req.on("end", () => {
      const hook = server.webhook({ headers: req.headers, rawBody: body });
      if (hook.isValid()) events.push(...hook.getEvents());
      else invalid.push(body);
      res.writeHead(200).end();
    });
  });
  await new Promise((r) => srv.listen(0, "127.0.0.1", r));
  return {
    url: `http://127.0.0.1:${srv.address().port}/pusher/webhooks`,
    events,
    invalid,
    /** Events of `name` (on `channel`) received so far. */
    of: (name, channel) => events.filter((e) => e.name === name && (!channel || e.channel === channel)),
    close: () => new Promise((r) => srv.close(r)),
  };
}

describe("webhooks, verified by the pusher library", () => {
  let cluster;
  let hooks;
  let dir;
  const server = new PusherServer({ appId: APP.id, key: APP.key, secret: APP.secret, host: "127.0.0.1" });

  before(async () => {
    hooks = await receiver(server);
    dir = tempDir("chorus-pusher-hooks-");
    const apps = join(dir.dir, "apps.toml");
    writeFileSync(
      apps,
      [
        "[[app]]",
        `id = "${APP.id}"`,
        `key = "${APP.key}"`,
        `secret = "${APP.secret}"`,
        `webhook_url = "${hooks.url}"`,
        "",
      ].join("\n"),
    );
    const args = ["--pusher-apps", apps];
    // A short lease, so that a killed gateway's members go within the test.
    cluster = await startCluster({
      gateways: 2,
      gatewayArgs: [...args, "--node-lease", "1s"],
      apiArgs: [...args, "--node-lease", "1s"],
    });
  });

  after(async () => {
    await cluster?.stop();
    await hooks?.close();
    dir?.remove();
  });

  const client = (i, user) => pusherClient(cluster, server, i, user);

  test("occupied, member added, client event, member removed, vacated: once each across two gateways", async () => {
    const ch = "presence-room";
    const alice = client(0, "alice");
    const bob = client(1, "bob");
    // Alice twice (one on each gateway): one member.
    const alice2 = client(1, "alice");
    const [a] = await Promise.all([subscribed(alice, ch), subscribed(bob, ch), subscribed(alice2, ch)]);
    await until(() => hooks.of("member_added", ch).length === 2, 10000, "member_added for alice and bob");
    const got = new Promise((resolve) => bob.channel(ch).bind("client-wave", resolve));
    a.trigger("client-wave", { hi: 1 });
    await got;
    await until(() => hooks.of("client_event", ch).length === 1, 10000, "the client event");

    alice.disconnect();
    bob.disconnect();
    await until(() => hooks.of("member_removed", ch).length === 1, 10000, "bob removed");
    alice2.disconnect();
    await until(() => hooks.of("channel_vacated", ch).length === 1, 10000, "the channel vacated");

    assert.deepEqual(hooks.invalid, [], "every webhook verified");
    const mine = hooks.events.filter((e) => e.channel === ch);
    const names = mine.map((e) => e.name);
    assert.equal(names.filter((n) => n === "channel_occupied").length, 1, `occupied once: ${names}`);
    assert.deepEqual(
      hooks.of("member_added", ch).map((e) => e.user_id).sort(),
      ["alice", "bob"],
    );
    assert.deepEqual(
      hooks.of("member_removed", ch).map((e) => e.user_id).sort(),
      ["alice", "bob"],
    );
    const [event] = hooks.of("client_event", ch);
    assert.equal(event.event, "client-wave");
    assert.deepEqual(JSON.parse(event.data), { hi: 1 });
    assert.equal(event.user_id, "alice");
    assert.match(event.socket_id, /^\d+\.\d+$/);
    assert.equal(mine.length, 7, JSON.stringify(mine));
  });

  test("a killed gateway's members and channels are removed once, by a survivor", async () => {
    const ch = "presence-crash";
    const carol = client(1, "carol");
    const dave = client(0, "dave");
    await Promise.all([subscribed(carol, ch), subscribed(dave, ch)]);
    await until(() => hooks.of("member_added", ch).length === 2, 10000, "both added");
    await cluster.stopGateway(1, "SIGKILL");
    carol.disconnect(); // no reconnection attempts to the dead gateway
    await until(() => hooks.of("member_removed", ch).length === 1, 15000, "carol removed by a survivor");
    assert.equal(hooks.of("member_removed", ch)[0].user_id, "carol");
    assert.equal(hooks.of("channel_vacated", ch).length, 0, "dave is still there");
    dave.disconnect();
    await until(() => hooks.of("channel_vacated", ch).length === 1, 15000, "the channel vacated");
    assert.deepEqual(
      hooks.of("member_removed", ch).map((e) => e.user_id).sort(),
      ["carol", "dave"],
    );
    assert.equal(hooks.of("channel_occupied", ch).length, 1);
    await cluster.startGateway(1);
  });
});

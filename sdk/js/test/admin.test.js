// broker-api's admin page in a real browser: headless Chromium (Debian's `chromium`, or
// $CHROMIUM) driven by playwright-core, against real Chorus processes. A wrong key is refused;
// with the right one the page shows the node, a subscribed channel with its count, the
// channel's presence and history, and publishes to a subscribed SDK client.
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { after, before, test } from "node:test";
import { chromium } from "playwright-core";
import WebSocket from "ws";

import { Client } from "../index.js";
import { API_KEY, nextEvent, startCluster, tempDir, uniqueChannel } from "./harness.js";

const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";

let cluster;
let context;
let profile;

before(async () => {
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing: apt-get install chromium (scripts/test does)`);
  cluster = await startCluster({ gateways: 1 });
  profile = tempDir("chorus-chromium-admin-");
  context = await chromium.launchPersistentContext(profile.dir, {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
});

after(async () => {
  await context?.close();
  profile?.remove();
  await cluster?.stop();
});

test("the admin page: key refused, then nodes, channels, presence, history and publish", async () => {
  const channel = uniqueChannel("chat:admin");
  const client = new Client(cluster.ws(), { websocket: WebSocket, timeout: 3000 });
  await client.connect();
  const sub = client.subscribe(channel);
  await nextEvent(sub, "subscribed");
  await cluster.publish(channel, { n: 1 });
  await cluster.publish(channel, { n: 2 });

  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  page.on("console", (m) => {
    // The refused key (401) and presence asked of a channel without it (400) are answers the
    // browser logs itself; the test provokes them.
    if (m.type() === "error" && !/status of 40[01]/.test(m.text())) errors.push(m.text());
  });
  const resp = await page.goto(`${cluster.apiHttp()}/admin`);
  assert.equal(resp.status(), 200);
  assert.match(resp.headers()["content-security-policy"] ?? "", /frame-ancestors 'none'/);

  await page.fill("#key", "not-the-key");
  await page.click('#key-form button[type="submit"]');
  await page.waitForSelector('#status:text("refused")', { timeout: 10000 });
  assert.equal(await page.$$eval("#nodes tr", (r) => r.length), 0, "nothing shown without the key");

  await page.fill("#key", API_KEY);
  await page.click('#key-form button[type="submit"]');
  await page.waitForSelector('#status.ok', { timeout: 10000 });
  await page.waitForSelector('#nodes tr[data-node="gw-1"]', { timeout: 10000 });
  const row = `#channels tr[data-channel="${channel}"]`;
  await page.waitForSelector(row, { timeout: 10000 });
  assert.equal((await page.textContent(`${row} td.num`)).trim(), "1");

  // The channel's presence (one anonymous connection) and history, newest first.
  await page.click(row);
  await page.waitForSelector("#presence tr[data-client]", { timeout: 10000 });
  assert.equal(await page.$$eval("#presence tr", (r) => r.length), 1);
  assert.match(await page.textContent("#presence tr"), /\(anonymous\)/);
  await page.waitForSelector('#history tr[data-offset="2"]', { timeout: 10000 });
  assert.deepEqual(await page.$$eval("#history tr", (r) => r.map((tr) => tr.dataset.offset)), ["2", "1"]);
  assert.match(await page.textContent('#history tr[data-offset="1"]'), /\{"n":1\}/);

  // Publish from the page: the subscribed client receives it.
  const received = nextEvent(sub, "publication");
  await page.fill("#publish-data", '{"from": "admin"}');
  await page.click('#publish-form button[type="submit"]');
  await page.waitForSelector('#publish-result:text("offset 3")', { timeout: 10000 });
  assert.deepEqual((await received).data, { from: "admin" });
  await page.fill("#publish-data", "not json");
  await page.click('#publish-form button[type="submit"]');
  await page.waitForSelector('#publish-result:text("not JSON")', { timeout: 10000 });

  // A channel whose namespace keeps no presence says so.
  await page.fill("#channel", "news");
  await page.click('#channel-form button[type="submit"]');
  await page.waitForSelector('#presence-note:text("no presence")', { timeout: 10000 });

  assert.deepEqual(errors, [], "no errors in the browser console");
  client.disconnect();
  await page.close();
});

// The demo page in a real browser: headless Chromium (Debian's `chromium`, or $CHROMIUM)
// driven by playwright-core, against real Chorus processes. Two pages chat, an HTTP publish
// reaches both, the gateway restarts and both pages recover with no gap, and the browser
// console shows no errors.
import assert from "node:assert/strict";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { after, before, test } from "node:test";
import { chromium } from "playwright-core";

import { startCluster, tempDir, uniqueChannel, until } from "./harness.js";

const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";

let cluster;
let context;
let profile;

before(async () => {
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing: apt-get install chromium (scripts/test does)`);
  cluster = await startCluster({ gateways: 1 });
  profile = tempDir("chorus-chromium-");
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

/** Offsets of the channel's messages shown on the page, in offset order. */
async function shownOffsets(page, channel) {
  return page.$$eval(
    `#log li[data-channel="${channel}"]`,
    (lis) => lis.map((li) => Number(li.getAttribute("data-offset"))).sort((a, b) => a - b),
  );
}

async function waitOffsets(page, channel, n) {
  await page.waitForFunction(
    ([ch, count]) => document.querySelectorAll(`#log li[data-channel="${ch}"]`).length >= count,
    [channel, n],
    { timeout: 15000 },
  );
}

test("two pages chat, get HTTP publications, and recover across a gateway restart", async () => {
  const channel = uniqueChannel("chat:browser");
  const errors = [];
  const pages = [];
  for (let i = 0; i < 2; i++) {
    const page = await context.newPage();
    page.on("console", (m) => {
      // While the gateway is down the browser itself logs each refused WebSocket attempt;
      // that is the network, not the page.
      if (m.type() === "error" && !/WebSocket connection to .* failed/.test(m.text())) {
        errors.push(`page ${i}: ${m.text()}`);
      }
    });
    page.on("pageerror", (e) => errors.push(`page ${i}: ${e.message}`));
    await page.goto(`${cluster.http()}/?channel=${encodeURIComponent(channel)}`);
    await page.waitForSelector('#status[data-state="connected"]', { timeout: 15000 });
    await page.waitForSelector(`#subs:text("${channel}")`, { timeout: 15000 });
    pages.push(page);
  }
  const [a, b] = pages;

  // Page a sends through the form; b receives it, a shows it with the offset of the reply.
  await a.fill("#text", "hello from a");
  await a.press("#text", "Enter");
  await waitOffsets(b, channel, 1);
  await waitOffsets(a, channel, 1);
  assert.match(await b.textContent(`#log li[data-channel="${channel}"][data-offset="1"]`), /hello from a/);

  // An HTTP publish reaches both.
  const sent = await cluster.publish(channel, { text: "hello over http", from: "backend" });
  assert.equal(sent.offset, 2);
  for (const page of pages) await waitOffsets(page, channel, 2);

  // The gateway restarts; meanwhile two messages are published.
  await cluster.stopGateway(0, "SIGTERM");
  for (const page of pages) {
    await page.waitForSelector('#status:not([data-state="connected"])', { timeout: 15000 });
  }
  await cluster.publish(channel, { text: "while down 1", from: "backend" });
  await cluster.publish(channel, { text: "while down 2", from: "backend" });
  await cluster.startGateway(0);
  for (const page of pages) {
    await page.waitForSelector('#status[data-state="connected"]', { timeout: 20000 });
    await waitOffsets(page, channel, 4);
    await page.waitForSelector('#log li.info:text("nothing missed")', { timeout: 15000 });
  }
  await cluster.publish(channel, { text: "after", from: "backend" });
  for (const page of pages) {
    await waitOffsets(page, channel, 5);
    assert.deepEqual(await shownOffsets(page, channel), [1, 2, 3, 4, 5], "no gap, no duplicate");
    const recovered = await page.$$eval(`#log li.recovered[data-channel="${channel}"]`, (l) => l.length);
    assert.equal(recovered, 2, "the two messages published while down came back by recovery");
  }
  assert.deepEqual(errors, [], "no errors in the browser console");
});

test("here now: two pages in a room list each other, and a page that closes drops off", async () => {
  const channel = uniqueChannel("chat:here");
  const pages = [];
  for (let i = 0; i < 2; i++) {
    const page = await context.newPage();
    await page.goto(`${cluster.http()}/?channel=${encodeURIComponent(channel)}`);
    await page.waitForSelector('#status[data-state="connected"]', { timeout: 15000 });
    pages.push(page);
  }
  const listed = (page) =>
    page.$$eval(`#here [data-channel="${channel}"] li`, (lis) =>
      lis.map((li) => ({ client: li.dataset.client, me: li.classList.contains("me") })),
    );
  const waitCount = (page, n) =>
    page.waitForFunction(
      ([ch, count]) => document.querySelectorAll(`#here [data-channel="${ch}"] li`).length === count,
      [channel, n],
      { timeout: 15000 },
    );
  for (const page of pages) await waitCount(page, 2);
  const [a, b] = await Promise.all(pages.map(listed));
  assert.deepEqual(a.map((m) => m.client), b.map((m) => m.client), "both pages list the same two");
  const me = (list) => list.find((m) => m.me)?.client;
  assert.ok(me(a) && me(b) && me(a) !== me(b), "each page marks itself, and they differ");

  await pages[1].close();
  await waitCount(pages[0], 1);
  assert.deepEqual((await listed(pages[0])).map((m) => m.client), [me(a)], "the closed page left");
  await pages[0].close();
});

test("Chromium negotiates permessage-deflate and reads the gateway's compressed publications", async () => {
  const channel = uniqueChannel("chat:deflate");
  const page = await context.newPage();
  await page.goto(`${cluster.http()}/healthz`); // any page of the gateway's origin
  const text = "All happy families are alike; each unhappy family is unhappy in its own way. ".repeat(40);
  // A plain browser WebSocket: the browser offers the extension by itself.
  const opened = page.evaluate(
    ([url, ch]) =>
      new Promise((resolve, reject) => {
        const ws = new WebSocket(url);
        window.deflateWs = ws;
        window.deflateGot = [];
        ws.onerror = () => reject(new Error("websocket error"));
        ws.onopen = () => {
          ws.send(JSON.stringify({ id: 1, connect: {} }));
          ws.send(JSON.stringify({ id: 2, subscribe: { channel: ch } }));
        };
        ws.onmessage = (e) => {
          const frame = JSON.parse(e.data);
          if (frame.id === 2) resolve(ws.extensions);
          if (frame.pub) window.deflateGot.push(frame.pub.data);
        };
      }),
    [`${cluster.ws()}?format=json`, channel],
  );
  const extensions = await opened;
  assert.match(extensions, /^permessage-deflate/, "the gateway accepted the browser's offer");
  assert.match(extensions, /server_no_context_takeover/);
  // 3 KB of text (compressed by the gateway, above --compression-min-bytes) and a small one.
  await cluster.publish(channel, { text });
  await cluster.publish(channel, { n: 2 });
  await page.waitForFunction(() => window.deflateGot.length === 2, null, { timeout: 15000 });
  const got = await page.evaluate(() => window.deflateGot);
  assert.deepEqual(got, [{ text }, { n: 2 }]);
  await page.close();
});

test("the SDK is served at /sdk/ as JavaScript, loadable cross-origin", async () => {
  const resp = await fetch(`${cluster.http()}/sdk/index.js`);
  assert.equal(resp.status, 200);
  assert.match(resp.headers.get("content-type") ?? "", /^text\/javascript/);
  assert.equal(resp.headers.get("access-control-allow-origin"), "*");
  // The gateway embeds the SDK at build time: the page above ran this index.js, not an old one.
  const served = await resp.text();
  const onDisk = readFileSync(new URL("../index.js", import.meta.url), "utf8");
  assert.ok(served === onDisk, "the gateway serves sdk/js/index.js as it is now (rebuild the gateway)");
  const types = await fetch(`${cluster.http()}/sdk/index.d.ts`);
  assert.equal(types.status, 200);
});

test("the README's browser snippet, opened from a file, receives a publication", async () => {
  const readme = readFileSync(new URL("../README.md", import.meta.url), "utf8");
  const m = readme.match(/<!-- snippet:browser[^>]*-->\s*```html\n([\s\S]*?)```/);
  assert.ok(m, "README.md has the browser snippet");
  const html = m[1].replaceAll("127.0.0.1:8000", `127.0.0.1:${cluster.gatewayPort()}`);
  const file = join(profile.dir, "snippet.html");
  writeFileSync(file, html);
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  page.on("console", (m) => m.type() === "error" && errors.push(m.text()));
  await page.goto(pathToFileURL(file).href);
  await page.waitForFunction(() => document.getElementById("out")?.textContent.includes("state: connected"), null, { timeout: 15000 });
  // The subscribe goes out right after connect, and the page shows no sign of its answer:
  // publish until one arrives (the first one normally does).
  await until(async () => {
    await cluster.publish("chat:lobby", { text: "hello from curl" });
    return page.evaluate(() => document.getElementById("out").textContent.includes('"hello from curl"'));
  }, 10000, "the snippet to show the publication");
  assert.deepEqual(errors, []);
  await page.close();
});

test("offline: the page drops the connection, waits for online, then recovers", async () => {
  const channel = uniqueChannel("chat:offline");
  const page = await context.newPage();
  await page.goto(`${cluster.http()}/?channel=${encodeURIComponent(channel)}`);
  await page.waitForSelector('#status[data-state="connected"]', { timeout: 15000 });
  await page.waitForSelector(`#subs:text("${channel}")`, { timeout: 15000 });
  await cluster.publish(channel, { text: "online", from: "backend" });
  await waitOffsets(page, channel, 1);

  await context.setOffline(true);
  await page.waitForSelector('#status:text("4001")', { timeout: 5000 });
  await cluster.publish(channel, { text: "while offline", from: "backend" });
  // Offline, the client makes no attempt: it stays on the 4001 status until `online`.
  const attempts = await page.evaluate(
    () => new Promise((resolve) => {
      let n = 0;
      window.chorusDemo.client.on("connecting", () => n++);
      setTimeout(() => resolve(n), 1500);
    }),
  );
  assert.equal(attempts, 0, "no reconnect attempts while offline");

  await context.setOffline(false);
  await page.waitForSelector('#status[data-state="connected"]', { timeout: 15000 });
  await waitOffsets(page, channel, 2);
  assert.deepEqual(await shownOffsets(page, channel), [1, 2]);
  await page.close();
});

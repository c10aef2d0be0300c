// Real parts for the SDK's tests: a redis-server, broker-api and gateways as separate
// processes (the binaries of this repository's build), on free loopback ports, stopped when the
// test ends. Binaries come from $CHORUS_BIN_DIR, else <repo>/target/debug.
import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

export const API_KEY = "test-key";
export const HMAC_SECRET = "sdk-test-secret-of-at-least-32-bytes";

const repo = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");

/** The directory of the Chorus binaries; fails the test when one is missing. */
export function binDir() {
  const dir = process.env.CHORUS_BIN_DIR || join(repo, "target", "debug");
  for (const bin of ["chorus-gateway", "chorus-broker-api"]) {
    if (!existsSync(join(dir, bin))) {
      throw new Error(
        `${bin} is not built in ${dir}: cargo build -p chorus-gateway -p chorus-broker-api --bins`,
      );
    }
  }
  return dir;
}

/** A port free on loopback right now. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = /** @type {net.AddressInfo} */ (srv.address());
      srv.close(() => resolve(port));
    });
  });
}

/** Resolves when `check` returns true (polled every 25 ms), rejects after `ms`. */
export async function until(check, ms = 10000, what = "condition") {
  const end = Date.now() + ms;
  for (;;) {
    if (await check()) return;
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** Resolves with the first `event` of `emitter` whose argument passes `filter`. */
export function nextEvent(emitter, event, filter = () => true, ms = 15000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      emitter.off(event, fn);
      reject(new Error(`no ${event} event within ${ms} ms`));
    }, ms);
    const fn = (arg) => {
      if (!filter(arg)) return;
      clearTimeout(timer);
      emitter.off(event, fn);
      resolve(arg);
    };
    emitter.on(event, fn);
  });
}

/** A child process whose output is kept (and printed if the test fails). */
class Proc {
  constructor(name, cmd, args, env = {}) {
    this.name = name;
    this.output = "";
    this.child = spawn(cmd, args, {
      env: { ...process.env, RUST_LOG: "warn", ...env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    const keep = (d) => {
      this.output = (this.output + d.toString()).slice(-20000);
    };
    this.child.stdout.on("data", keep);
    this.child.stderr.on("data", keep);
    this.exited = new Promise((resolve) => this.child.once("exit", (code, signal) => resolve({ code, signal })));
  }

  /** Sends `signal` and waits for the process to end. */
  async stop(signal = "SIGKILL") {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill(signal);
    return this.exited;
  }
}

async function waitPort(port, ms = 10000) {
  await until(
    () =>
      new Promise((resolve) => {
        const s = net.connect(port, "127.0.0.1");
        s.once("connect", () => {
          s.destroy();
          resolve(true);
        });
        s.once("error", () => resolve(false));
      }),
    ms,
    `port ${port}`,
  );
}

async function waitHttpOk(url, ms = 15000) {
  await until(
    async () => {
      try {
        return (await fetch(url)).ok;
      } catch {
        return false;
      }
    },
    ms,
    url,
  );
}

/** Resolves when `url` answers 200; rejects at once if the process exits first. */
function readyOrExited(proc, url) {
  return Promise.race([
    waitHttpOk(url),
    proc.exited.then(({ code, signal }) => {
      throw new Error(`${proc.name} exited (${code ?? signal}) before it was ready:\n${proc.output}`);
    }),
  ]);
}

/**
 * A cluster: redis-server, broker-api and `gateways` gateways.
 * @param {{gateways?: number, gatewayArgs?: string[], apiArgs?: string[]}} [options]
 */
export async function startCluster(options = {}) {
  const dir = binDir();
  const procs = [];
  const redisPort = await freePort();
  const redis = new Proc("redis-server", "redis-server", [
    "--port", String(redisPort), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
  ]);
  procs.push(redis);
  await waitPort(redisPort);
  const redisUrl = `redis://127.0.0.1:${redisPort}`;

  const apiPort = await freePort();
  const api = new Proc("broker-api", join(dir, "chorus-broker-api"), [
    "--api-listen", `127.0.0.1:${apiPort}`, "--api-key", API_KEY, "--redis-url", redisUrl,
    ...(options.apiArgs ?? []),
  ]);
  procs.push(api);

  const gatewayPorts = [];
  const gateways = [];
  const startGateway = (i) => {
    const p = new Proc(`gateway ${i}`, join(dir, "chorus-gateway"), [
      "--gateway-listen", `127.0.0.1:${gatewayPorts[i]}`,
      // No metrics listener: its fixed default port would clash between gateways.
      "--metrics-listen", "off",
      "--redis-url", redisUrl,
      "--node-id", `gw-${i + 1}`,
      "--demo-page",
      "--drain-window", "200ms",
      ...(options.gatewayArgs ?? []),
    ]);
    gateways[i] = p;
    procs.push(p);
    return readyOrExited(p, `http://127.0.0.1:${gatewayPorts[i]}/readyz`);
  };
  const n = options.gateways ?? 1;
  for (let i = 0; i < n; i++) gatewayPorts.push(await freePort());
  try {
    await Promise.all([
      ...gatewayPorts.map((_, i) => startGateway(i)),
      readyOrExited(api, `http://127.0.0.1:${apiPort}/healthz`),
    ]);
  } catch (e) {
    for (const p of procs) await p.stop();
    throw new Error(`${e.message}\n${procs.map((p) => `--- ${p.name}\n${p.output}`).join("\n")}`);
  }

  return {
    ws: (i = 0) => `ws://127.0.0.1:${gatewayPorts[i]}/ws`,
    http: (i = 0) => `http://127.0.0.1:${gatewayPorts[i]}`,
    gatewayPort: (i = 0) => gatewayPorts[i],
    redisUrl,
    /** broker-api's port. */
    apiPort,
    /** broker-api's base URL. */
    apiHttp: () => `http://127.0.0.1:${apiPort}`,
    /** Publishes over broker-api's HTTP API; resolves with {offset, epoch}. */
    async publish(channel, data) {
      const resp = await fetch(`http://127.0.0.1:${apiPort}/api/publish`, {
        method: "POST",
        headers: { authorization: `Bearer ${API_KEY}`, "content-type": "application/json" },
        body: JSON.stringify({ channel, data }),
      });
      if (!resp.ok) throw new Error(`publish: HTTP ${resp.status} ${await resp.text()}`);
      return resp.json();
    },
    /** Calls broker-api's HTTP API (POST `path` with a JSON body); resolves with the JSON answer. */
    async api(path, body) {
      const resp = await fetch(`http://127.0.0.1:${apiPort}${path}`, {
        method: "POST",
        headers: { authorization: `Bearer ${API_KEY}`, "content-type": "application/json" },
        body: JSON.stringify(body),
      });
      if (!resp.ok) throw new Error(`${path}: HTTP ${resp.status} ${await resp.text()}`);
      return resp.json();
    },
    /** Stops gateway `i` with `signal` and waits for its exit. */
    stopGateway: (i, signal = "SIGKILL") => gateways[i].stop(signal),
    /** Starts gateway `i` again on its port and waits until it is ready. */
    startGateway,
    /** Output of every process, for a failing test's message. */
    logs: () => procs.map((p) => `--- ${p.name}\n${p.output}`).join("\n"),
    async stop() {
      for (const p of procs.reverse()) await p.stop();
    },
  };
}

/** An HS256 JWT for the gateway's --token-hmac-secret. */
export function hmacToken(claims, secret = HMAC_SECRET) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString("base64url");
  const unsigned = `${b64({ alg: "HS256", typ: "JWT" })}.${b64(claims)}`;
  const sig = createHmac("sha256", secret).update(unsigned).digest("base64url");
  return `${unsigned}.${sig}`;
}

/**
 * A TCP proxy to `port` that can go silent: `freeze()` stops forwarding on the connections
 * open now without closing them (a dead NAT entry, a sleeping laptop's peer); connections made
 * later are forwarded normally.
 */
export async function startProxy(port) {
  const conns = new Set();
  const server = net.createServer((client) => {
    const upstream = net.connect(port, "127.0.0.1");
    const c = { client, upstream, frozen: false };
    conns.add(c);
    client.on("data", (d) => {
      if (!c.frozen) upstream.write(d);
    });
    upstream.on("data", (d) => {
      if (!c.frozen) client.write(d);
    });
    const end = () => {
      conns.delete(c);
      client.destroy();
      upstream.destroy();
    };
    client.on("close", end);
    upstream.on("close", end);
    client.on("error", end);
    upstream.on("error", end);
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  return {
    port: /** @type {net.AddressInfo} */ (server.address()).port,
    freeze() {
      for (const c of conns) c.frozen = true;
    },
    async stop() {
      for (const c of conns) {
        c.client.destroy();
        c.upstream.destroy();
      }
      await new Promise((r) => server.close(r));
    },
  };
}

/** A fresh temporary directory, removed by the returned function. */
export function tempDir(prefix) {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  return { dir, remove: () => rmSync(dir, { recursive: true, force: true }) };
}

/** A channel name no other test uses. */
export function uniqueChannel(prefix = "chat:sdk") {
  return `${prefix}-${process.pid}-${Math.random().toString(36).slice(2, 10)}`;
}

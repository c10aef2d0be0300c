// @ts-check
/**
 * Chorus client for browsers and Node (>= 20): the Chorus client protocol (docs/protocol.md),
 * in JSON or protobuf, over a WebSocket, with reconnection, gapless recovery, duplicate
 * dropping, token refresh and dead-connection detection.
 *
 * Plain ES module, no dependencies, no build step: a browser loads it as it is
 * (`import { Client } from "/sdk/index.js"`); the types are JSDoc, checked by `tsc --checkJs`
 * and published as `index.d.ts`.
 *
 * @module @chorus/client
 */

/** The SDK's version, sent to nothing; for the application's logs. */
export const VERSION = "0.1.0";

/** The close codes and error codes of docs/protocol.md the client acts on. */
export const codes = Object.freeze({
  // Error codes (a reply's `error.code`).
  UNAUTHORIZED: 101,
  BAD_CHANNEL: 102,
  PERMISSION_DENIED: 103,
  ALREADY_SUBSCRIBED: 105,
  LIMIT_EXCEEDED: 106,
  UNAVAILABLE: 108,
  TOKEN_EXPIRED: 113,
  RATE_LIMITED: 114,
  // WebSocket close codes.
  SHUTDOWN: 3000,
  IDLE_TIMEOUT: 3001,
  SLOW_CONSUMER: 3002,
  INSUFFICIENT_STATE: 3003,
  CLOSE_TOKEN_EXPIRED: 3004,
  CONNECTION_LIMIT: 3006,
  // Codes of the client itself (never sent by a gateway): the connection was given up
  // because no answer to a `ping` came in time, and the browser went offline.
  NO_PING: 4000,
  OFFLINE: 4001,
});

/**
 * @typedef {"disconnected" | "connecting" | "connected"} State
 *
 * @typedef {{offset: number, epoch: string}} StreamPosition
 *
 * @typedef {object} Publication
 * @property {string} channel
 * @property {number} offset  The publication's offset in its channel.
 * @property {string} epoch   The channel's epoch the offset belongs to.
 * @property {unknown} [data] The message, when it is JSON.
 * @property {string} [b64data] The message in base64, when it is not JSON (JSON format).
 * @property {Uint8Array} [bytes] The message's bytes (protobuf format).
 * @property {boolean} recovered True when it came from recovery after a reconnect.
 *
 * @typedef {object} ConnectedContext
 * @property {string} client  The connection's id.
 * @property {string} node    The gateway node holding it.
 * @property {string} version The Chorus version of the gateway.
 * @property {number} pingInterval Seconds between the gateway's WebSocket pings.
 * @property {string} url     The URL connected to.
 *
 * @typedef {object} DisconnectContext
 * @property {number} code    The close code (see docs/protocol.md, plus 4000 no ping answer,
 *   4001 offline).
 * @property {string} reason
 * @property {boolean} reconnect Whether the client will reconnect on its own.
 *
 * @typedef {object} StateContext
 * @property {State} state
 * @property {State} previous
 *
 * @typedef {object} ErrorContext
 * @property {string} type   What failed: "connect", "transport", "refresh", "subscribe",
 *   "listener".
 * @property {Error} error
 *
 * @typedef {object} SubscribedContext
 * @property {string} channel
 * @property {number} offset The channel's position the subscription starts after.
 * @property {string} epoch
 * @property {boolean} wasRecovering Whether the subscribe asked to recover a position.
 * @property {boolean} recovered True when every publication after the position was
 *   delivered; false when `wasRecovering` and a gap was lost: reload the state.
 *
 * @typedef {object} UnsubscribedContext
 * @property {string} channel
 * @property {number} code    0 by the application's call, else the error code that ended it.
 * @property {string} reason
 *
 * @typedef {object} HistoryOptions
 * @property {StreamPosition} [since] Only publications after this position.
 * @property {number} [limit] At most this many (the gateway caps at 1000).
 * @property {boolean} [reverse] Newest first.
 *
 * @typedef {object} HistoryResult
 * @property {Publication[]} publications
 * @property {number} offset The channel's current position.
 * @property {string} epoch
 *
 * @typedef {object} PublishResult
 * @property {number} offset Where the publication landed.
 * @property {string} epoch
 *
 * @typedef {object} SubscriptionOptions
 * @property {StreamPosition} [since] Start after this position (e.g. one the application
 *   stored): the first subscribe already recovers from it.
 * @property {boolean} [joinLeave] Receive `join`/`leave` events where the channel's
 *   namespace announces them (default true); false opts this subscription out.
 *
 * @typedef {object} ClientInfo One connection in a channel's presence.
 * @property {string} client The connection's id.
 * @property {string} user   The token's user; empty for an anonymous connection.
 * @property {unknown} [info] The token's `info` claim, when it has one.
 *
 * @typedef {object} PresenceResult
 * @property {ClientInfo[]} clients Every connection subscribed, across all gateways.
 *
 * @typedef {object} PresenceStats
 * @property {number} numClients Connections subscribed.
 * @property {number} numUsers   Distinct users among them.
 *
 * @typedef {object} JoinLeaveContext
 * @property {string} channel
 * @property {ClientInfo} info The connection that joined or left.
 *
 * @typedef {object} ServerSubscriptionContext
 * @property {Subscription} subscription A subscription the server made (the server API, the
 *   token's `subs` claim, the personal channel); its `subscribed` event and publications
 *   follow.
 *
 * @typedef {new (url: string, protocols?: string | string[]) => any} WebSocketConstructor
 *
 * @typedef {object} ClientOptions
 * @property {string} [token] Connection token (JWT). Empty: anonymous.
 * @property {() => Promise<string>} [getToken] Called for a new token when there is none,
 *   when the gateway says the token expired (113, close 3004) and before `exp` to `refresh`.
 * @property {string} [name] Client name for the gateway's logs.
 * @property {"json" | "protobuf"} [format] Wire format, default "json". With "protobuf",
 *   publications carry `bytes` instead of `data`, and `publish` sends a Uint8Array as it is.
 * @property {WebSocketConstructor} [websocket] WebSocket constructor; default the global
 *   `WebSocket` (in Node 20 pass `WebSocket` of the `ws` package).
 * @property {number} [minReconnectDelay] ms, default 500.
 * @property {number} [maxReconnectDelay] ms, default 20000.
 * @property {number} [timeout] ms a command waits for its reply (and a connect for its
 *   socket and `connect` reply), default 10000.
 * @property {number} [pingInterval] ms of silence from the gateway after which the client
 *   sends a `ping` command, default 10000.
 * @property {number} [pongTimeout] ms the `ping` may take before the connection is given up
 *   as dead (close 4000) and replaced, default 5000.
 * @property {number} [maxQueued] Commands that may wait for a connection; past it a call
 *   fails at once. Default 100.
 * @property {boolean} [refresh] Refresh the token with `refresh` before its `exp` (needs
 *   `getToken`), default true.
 * @property {boolean} [browserEvents] React to `online`/`offline` and page visibility when
 *   running in a browser, default true.
 */

/** An error of a command or of the client. `code` is the gateway's error code (a number) or
 * one of the client's own: "timeout", "disconnected", "queue_full", "closed". */
export class ChorusError extends Error {
  /**
   * @param {number | string} code
   * @param {string} message
   */
  constructor(code, message) {
    super(message);
    this.name = "ChorusError";
    /** @type {number | string} */
    this.code = code;
  }
}

/**
 * A small event emitter (no dependency on Node's `events` or the DOM's `EventTarget`). A
 * listener that throws does not stop the others: the error is re-thrown asynchronously.
 * @template {Record<string, any>} E
 */
class Emitter {
  constructor() {
    /** @type {Map<keyof E, Set<(arg: any) => void>>} */
    this._listeners = new Map();
  }

  /**
   * @template {keyof E} K
   * @param {K} event
   * @param {(arg: E[K]) => void} fn
   * @returns {this}
   */
  on(event, fn) {
    let set = this._listeners.get(event);
    if (!set) this._listeners.set(event, (set = new Set()));
    set.add(fn);
    return this;
  }

  /**
   * @template {keyof E} K
   * @param {K} event
   * @param {(arg: E[K]) => void} fn
   * @returns {this}
   */
  off(event, fn) {
    this._listeners.get(event)?.delete(fn);
    return this;
  }

  /**
   * @template {keyof E} K
   * @param {K} event
   * @param {(arg: E[K]) => void} fn
   * @returns {this}
   */
  once(event, fn) {
    /** @param {E[K]} arg */
    const wrapped = (arg) => {
      this.off(event, wrapped);
      fn(arg);
    };
    return this.on(event, wrapped);
  }

  /**
   * @template {keyof E} K
   * @param {K} event
   * @param {E[K]} arg
   */
  _emit(event, arg) {
    const set = this._listeners.get(event);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        fn(arg);
      } catch (e) {
        // An application bug must not break the client's bookkeeping; surface it.
        setTimeout(() => {
          throw e;
        }, 0);
      }
    }
  }
}

/**
 * @typedef {object} SubscriptionEvents
 * @property {Publication} publication
 * @property {{channel: string}} subscribing
 * @property {SubscribedContext} subscribed
 * @property {UnsubscribedContext} unsubscribed
 * @property {JoinLeaveContext} join
 * @property {JoinLeaveContext} leave
 * @property {{channel: string, error: ChorusError}} error
 */

/**
 * One channel's subscription. Made by `Client.subscribe`; lives until `unsubscribe()` (or a
 * refusal the client cannot fix by retrying), across reconnects.
 * @extends {Emitter<SubscriptionEvents>}
 */
export class Subscription extends Emitter {
  /**
   * @param {Client} client
   * @param {string} channel
   * @param {SubscriptionOptions} options
   */
  constructor(client, channel, options) {
    super();
    /** @private */
    this._client = client;
    /** @readonly */
    this.channel = channel;
    /** @type {"unsubscribed" | "subscribing" | "subscribed"} */
    this.state = "subscribing";
    /**
     * The position of the last publication delivered (or the subscribe's start); null until
     * the first subscribe answered, unless `since` was given.
     * @type {StreamPosition | null}
     */
    this.position = options.since ? { ...options.since } : null;
    /** @internal Whether this subscription wants join/leave events. */
    this._joinLeave = options.joinLeave !== false;
    /**
     * Made by the server (see the client's `serverSubscription` event): the gateway restores
     * it after a reconnect, not the client.
     * @readonly
     */
    this.server = false;
    /** @internal @type {ReturnType<typeof setTimeout> | null} */
    this._retryTimer = null;
    /** @internal Consecutive failed subscribes on the current connection, for the backoff. */
    this._attempt = 0;
  }

  /** Stops the subscription; emits `unsubscribed`. */
  unsubscribe() {
    this._client._unsubscribe(this, 0, "unsubscribed by the application");
  }

  /**
   * Publishes to this channel (see `Client.publish`).
   * @param {unknown} data
   * @param {{echo?: boolean}} [options]
   * @returns {Promise<PublishResult>}
   */
  publish(data, options) {
    return this._client.publish(this.channel, data, options);
  }

  /**
   * Reads this channel's history (see `Client.history`).
   * @param {HistoryOptions} [options]
   * @returns {Promise<HistoryResult>}
   */
  history(options) {
    return this._client.history(this.channel, options);
  }

  /**
   * Who is subscribed to this channel (see `Client.presence`).
   * @returns {Promise<PresenceResult>}
   */
  presence() {
    return this._client.presence(this.channel);
  }

  /**
   * How many connections and users are subscribed (see `Client.presenceStats`).
   * @returns {Promise<PresenceStats>}
   */
  presenceStats() {
    return this._client.presenceStats(this.channel);
  }

  /**
   * The subscription is live: emits `subscribed` and delivers what the subscribe (reply or
   * server push) recovered, in order.
   * @param {any} r the subscribe result or push
   * @param {boolean} wasRecovering
   * @internal
   */
  _start(r, wasRecovering) {
    this._attempt = 0;
    const recovered = wasRecovering ? r.recovered === true : false;
    const publications = r.publications ?? [];
    this.state = "subscribed";
    if (recovered) {
      for (const p of publications) this._deliver(p, true);
    }
    // The reply's position is where live publications continue from.
    this.position = { offset: r.offset ?? 0, epoch: r.epoch ?? "" };
    this._emit("subscribed", {
      channel: this.channel,
      offset: this.position.offset,
      epoch: this.position.epoch,
      wasRecovering,
      recovered,
    });
    if (!recovered && publications.length > 0) {
      // The channel's new epoch from its start (Redis lost the old one): after the app
      // has heard `recovered: false` and reloaded, it gets everything since.
      const first = publications[0];
      this.position = { offset: Math.max(0, first.offset - 1), epoch: first.epoch };
      for (const p of publications) this._deliver(p, true);
    }
  }

  /**
   * Delivers a publication unless it is at or before the position already delivered.
   * @param {any} p the `pub` object
   * @param {boolean} recovered
   * @returns {boolean} whether it was delivered
   * @internal
   */
  _deliver(p, recovered) {
    const pos = this.position;
    if (pos && pos.epoch === p.epoch && p.offset <= pos.offset) return false; // duplicate
    this.position = { offset: p.offset, epoch: p.epoch };
    const pub = toPublication(p, recovered);
    this._emit("publication", pub);
    return true;
  }
}

/**
 * @typedef {object} ClientEvents
 * @property {StateContext} state
 * @property {{code: number, reason: string}} connecting
 * @property {ConnectedContext} connected
 * @property {DisconnectContext} disconnected
 * @property {ErrorContext} error
 * @property {ServerSubscriptionContext} serverSubscription
 */

/**
 * @typedef {object} PendingCommand
 * @property {(result: any) => void} resolve
 * @property {(error: ChorusError) => void} reject
 * @property {ReturnType<typeof setTimeout>} timer
 */

/**
 * @typedef {object} QueuedCommand
 * @property {string} name
 * @property {object} body
 * @property {PendingCommand} pending
 */

const MAX_ID = 4294967295;
/** How long a connection must have lasted for the reconnect backoff to start over. */
const STABLE_CONNECTION_MS = 5000;

/**
 * A connection to Chorus that stays up: it reconnects, resubscribes and recovers on its own
 * until `disconnect()` or until the gateway says not to reconnect.
 * @extends {Emitter<ClientEvents>}
 */
export class Client extends Emitter {
  /**
   * @param {string | string[]} url One gateway URL (`ws://host:8000/ws`) or several: the
   *   client rotates over them on every reconnect attempt.
   * @param {ClientOptions} [options]
   */
  constructor(url, options = {}) {
    super();
    const urls = Array.isArray(url) ? [...url] : [url];
    if (urls.length === 0) throw new TypeError("at least one gateway URL is required");
    /** @readonly */
    this.urls = urls;
    const WS = options.websocket ?? /** @type {any} */ (globalThis).WebSocket;
    if (typeof WS !== "function") {
      throw new TypeError(
        "no WebSocket: pass options.websocket (e.g. WebSocket from the ws package)",
      );
    }
    /** @private @type {WebSocketConstructor} */
    this._WebSocket = WS;
    /** @private */
    const format = options.format ?? "json";
    if (format !== "json" && format !== "protobuf") {
      throw new TypeError('format must be "json" or "protobuf"');
    }
    /** @private */
    this._opts = {
      format,
      name: options.name ?? "",
      minReconnectDelay: options.minReconnectDelay ?? 500,
      maxReconnectDelay: options.maxReconnectDelay ?? 20000,
      timeout: options.timeout ?? 10000,
      pingInterval: options.pingInterval ?? 10000,
      pongTimeout: options.pongTimeout ?? 5000,
      maxQueued: options.maxQueued ?? 100,
      refresh: options.refresh ?? true,
      browserEvents: options.browserEvents ?? true,
    };
    /** @private */
    this._token = options.token ?? "";
    /** @private */
    this._getToken = options.getToken ?? null;
    /** @type {State} */
    this.state = "disconnected";
    /** @private The open (or opening) socket, with its handlers; null between connections. */
    this._ws = /** @type {any} */ (null);
    /** @private Bumped on every socket: late events of a replaced socket are ignored. */
    this._generation = 0;
    /** @private */
    this._nextId = 1;
    /** @private @type {Map<number, PendingCommand>} */
    this._pending = new Map();
    /** @private @type {QueuedCommand[]} Commands waiting for the connection. */
    this._queue = [];
    /** @private @type {Map<string, Subscription>} */
    this._subs = new Map();
    /** @private Index into `urls` of the next attempt. */
    this._urlIndex = 0;
    /** @private Consecutive failed connects, for the backoff. */
    this._attempt = 0;
    /** @private When the current connection was established (ms), 0 when there is none. */
    this._connectedAt = 0;
    /** @private @type {ReturnType<typeof setTimeout> | null} */
    this._reconnectTimer = null;
    /** @private @type {ReturnType<typeof setTimeout> | null} */
    this._pingTimer = null;
    /** @private @type {ReturnType<typeof setTimeout> | null} */
    this._refreshTimer = null;
    /** @private */
    this._lastReceived = 0;
    /** @private */
    this._pinging = false;
    /** @private @type {(() => void) | null} */
    this._removeBrowserListeners = null;
    /** @private Whether the browser said it is offline: wait for `online`. */
    this._offline = false;
  }

  // ---------------------------------------------------------------- public API

  /** Starts connecting (no-op unless disconnected). Resolves once connected. */
  connect() {
    if (this.state === "disconnected") {
      this._attempt = 0;
      this._installBrowserListeners();
      this._setState("connecting");
      this._emit("connecting", { code: 0, reason: "connect called" });
      this._open();
    }
    return this.ready();
  }

  /**
   * Resolves when the client is connected; rejects if it ends up disconnected first.
   * @returns {Promise<void>}
   */
  ready() {
    if (this.state === "connected") return Promise.resolve();
    if (this.state === "disconnected") {
      return Promise.reject(new ChorusError("disconnected", "client is disconnected"));
    }
    return new Promise((resolve, reject) => {
      /** @param {StateContext} ctx */
      const onState = (ctx) => {
        if (ctx.state === "connected") {
          this.off("state", onState);
          resolve();
        } else if (ctx.state === "disconnected") {
          this.off("state", onState);
          reject(new ChorusError("disconnected", "client was disconnected"));
        }
      };
      this.on("state", onState);
    });
  }

  /** Closes the connection and stays disconnected; subscriptions are kept for `connect()`. */
  disconnect() {
    this._stop(1000, "disconnect called", false);
  }

  /**
   * Subscribes to a channel, or returns the existing subscription of the client to it.
   * Listen for `publication` on the result; it is subscribed (again) on every connect.
   * @param {string} channel
   * @param {SubscriptionOptions} [options]
   * @returns {Subscription}
   */
  subscribe(channel, options = {}) {
    const existing = this._subs.get(channel);
    if (existing) return existing;
    const sub = new Subscription(this, channel, options);
    this._subs.set(channel, sub);
    // Subscribe on the next turn, so the caller can attach listeners first.
    queueMicrotask(() => {
      if (this._subs.get(channel) === sub && this.state === "connected") this._sendSubscribe(sub);
    });
    return sub;
  }

  /**
   * The client's subscription to a channel, if any.
   * @param {string} channel
   * @returns {Subscription | undefined}
   */
  getSubscription(channel) {
    return this._subs.get(channel);
  }

  /**
   * Publishes a JSON value to a channel (where the namespace lets clients publish). The
   * sender does not receive its own publication unless `echo` is set.
   * @param {string} channel
   * @param {unknown} data
   * @param {{echo?: boolean}} [options]
   * @returns {Promise<PublishResult>}
   */
  async publish(channel, data, options = {}) {
    /** @type {Record<string, unknown>} */
    const body = { channel, data };
    if (this._opts.format === "protobuf") {
      // Bytes as they are; any other value as its JSON text, as a JSON client would publish it.
      body.data = data instanceof Uint8Array ? data : utf8.encode(JSON.stringify(data));
    } else if (data instanceof Uint8Array) {
      throw new ChorusError(107, 'binary data needs format: "protobuf"');
    }
    if (options.echo) body.echo = true;
    const r = await this._command("publish", body);
    return { offset: r.offset ?? 0, epoch: r.epoch ?? "" };
  }

  /**
   * Reads a channel's history (no subscription needed).
   * @param {string} channel
   * @param {HistoryOptions} [options]
   * @returns {Promise<HistoryResult>}
   */
  async history(channel, options = {}) {
    /** @type {Record<string, unknown>} */
    const body = { channel };
    if (options.since) body.since = { offset: options.since.offset, epoch: options.since.epoch };
    if (options.limit) body.limit = options.limit;
    if (options.reverse) body.reverse = true;
    const r = await this._command("history", body);
    return {
      publications: (r.publications ?? []).map(
        /** @param {any} p */ (p) => toPublication(p, false),
      ),
      offset: r.offset ?? 0,
      epoch: r.epoch ?? "",
    };
  }

  /**
   * An application-level round trip to the gateway.
   * @returns {Promise<void>}
   */
  async ping() {
    await this._command("ping", {});
  }

  /**
   * Every connection subscribed to a presence channel, across every gateway (where this
   * connection may subscribe to it; the gateway refuses a channel without presence with 107
   * and one larger than its presence limit with 106).
   * @param {string} channel
   * @returns {Promise<PresenceResult>}
   */
  async presence(channel) {
    const r = await this._command("presence", { channel });
    return { clients: (r.clients ?? []).map(toClientInfo) };
  }

  /**
   * How many connections, and distinct users among them, are subscribed to a presence
   * channel.
   * @param {string} channel
   * @returns {Promise<PresenceStats>}
   */
  async presenceStats(channel) {
    const r = await this._command("presence_stats", { channel });
    return { numClients: r.num_clients ?? 0, numUsers: r.num_users ?? 0 };
  }

  // ---------------------------------------------------------------- connection

  /**
   * @private
   * @param {State} state
   */
  _setState(state) {
    const previous = this.state;
    if (previous === state) return;
    this.state = state;
    this._emit("state", { state, previous });
  }

  /** @private Opens a socket to the next URL, getting a token first when one is needed. */
  async _open() {
    const generation = ++this._generation;
    if (!this._token && this._getToken) {
      try {
        this._token = await this._getToken();
      } catch (e) {
        if (generation !== this._generation) return;
        this._emit("error", { type: "connect", error: asError(e) });
        this._scheduleReconnect(0, "getToken failed");
        return;
      }
      if (generation !== this._generation) return;
    }
    const url = this.urls[this._urlIndex % this.urls.length];
    this._urlIndex = (this._urlIndex + 1) % this.urls.length;
    let ws;
    try {
      ws = new this._WebSocket(url, this._opts.format === "protobuf" ? "chorus-protobuf" : "chorus-json");
      // Binary frames as ArrayBuffer in browsers and in ws (not Blob, not Buffer).
      ws.binaryType = "arraybuffer";
    } catch (e) {
      this._emit("error", { type: "transport", error: asError(e) });
      this._scheduleReconnect(0, "cannot open WebSocket");
      return;
    }
    this._ws = ws;
    // A socket that neither opens nor fails (a black-holed address) must not hang the client.
    const openTimer = setTimeout(() => {
      if (generation === this._generation) this._transportClosed(4000, "connect timed out");
    }, this._opts.timeout);
    ws.onopen = () => {
      if (generation !== this._generation) return;
      clearTimeout(openTimer);
      this._lastReceived = Date.now();
      /** @type {Record<string, unknown>} */
      const body = {};
      if (this._token) body.token = this._token;
      if (this._opts.name) body.name = this._opts.name;
      // Where to recover the server's subscriptions from, when the gateway restores them.
      /** @type {Record<string, StreamPosition>} */
      const recover = {};
      for (const sub of this._subs.values()) {
        if (sub.server && sub.position) recover[sub.channel] = { ...sub.position };
      }
      if (Object.keys(recover).length > 0) body.recover = recover;
      this._send("connect", body, this._pendingFor(this._opts.timeout), (r) =>
        this._onConnected(generation, url, r),
      ).catch((e) => this._onConnectFailed(generation, e));
    };
    /** @param {{data: unknown}} ev */
    ws.onmessage = (ev) => {
      if (generation !== this._generation) return;
      this._onMessage(ev.data);
    };
    /** @param {{code: number, reason: string}} ev */
    ws.onclose = (ev) => {
      clearTimeout(openTimer);
      if (generation !== this._generation) return;
      this._transportClosed(ev.code || 1006, ev.reason || "connection closed");
    };
    // `error` is always followed by `close`, which does the work.
    ws.onerror = () => {};
  }

  /**
   * @private
   * @param {number} generation
   * @param {string} url
   * @param {any} r the connect result
   */
  _onConnected(generation, url, r) {
    if (generation !== this._generation) return;
    this._connectedAt = Date.now();
    this._setState("connected");
    this._emit("connected", {
      client: r.client ?? "",
      node: r.node ?? "",
      version: r.version ?? "",
      pingInterval: r.ping_interval ?? 0,
      url,
    });
    this._scheduleRefresh();
    this._armPing();
    // Resubscribe before sending what waited, so recovered publications come first. The
    // server's subscriptions are the gateway's to restore (it does so before it answers the
    // next command): those still waiting at the reply to this ping are not coming back.
    /** @type {Subscription[]} */
    const servers = [];
    for (const sub of this._subs.values()) {
      if (sub.server) servers.push(sub);
      else this._sendSubscribe(sub);
    }
    if (servers.length > 0) {
      this._send("ping", {}, this._pendingFor(this._opts.timeout), () => {
        for (const sub of servers) {
          if (sub.state !== "subscribed") this._unsubscribe(sub, 0, "not restored after a reconnect", false);
        }
      }).catch(() => {});
    }
    const queued = this._queue.splice(0);
    for (const q of queued) this._send(q.name, q.body, q.pending).catch(() => {});
  }

  /**
   * @private
   * @param {number} generation
   * @param {unknown} e
   */
  _onConnectFailed(generation, e) {
    if (generation !== this._generation) return;
    const err = asError(e);
    this._emit("error", { type: "connect", error: err });
    const code = err instanceof ChorusError ? err.code : 0;
    if (code === codes.TOKEN_EXPIRED && this._getToken) {
      this._token = ""; // get a fresh one on the next attempt
      this._transportClosed(codes.CLOSE_TOKEN_EXPIRED, "token expired");
    } else if (code === codes.UNAUTHORIZED || code === codes.TOKEN_EXPIRED) {
      // Retrying the same credentials cannot help.
      this._stop(code, err.message, false);
    } else {
      this._transportClosed(4000, "connect failed: " + err.message);
    }
  }

  /**
   * The current socket is gone (closed, failed or given up): fail what was in flight and
   * reconnect unless told not to.
   * @private
   * @param {number} code
   * @param {string} reason
   * @param {boolean} [reconnect]
   */
  _transportClosed(code, reason, reconnect = true) {
    // The backoff starts over only after a connection that lasted: a gateway that accepts and
    // then drops at once (rate limit, a crash loop) still meets a growing delay.
    if (this._connectedAt && Date.now() - this._connectedAt >= STABLE_CONNECTION_MS) {
      this._attempt = 0;
    }
    this._connectedAt = 0;
    this._dropSocket(code, reason);
    for (const sub of this._subs.values()) {
      if (sub.state === "subscribed") {
        sub.state = "subscribing";
        sub._emit("subscribing", { channel: sub.channel });
      }
    }
    if (!reconnect || (code === codes.CLOSE_TOKEN_EXPIRED && !this._getToken)) {
      // Without getToken an expired token cannot be replaced: reconnecting would be refused.
      this._stop(code, reason, false);
      return;
    }
    if (code === codes.CLOSE_TOKEN_EXPIRED) this._token = "";
    this._setState("connecting");
    this._emit("connecting", { code, reason });
    if (this._offline) {
      // `online` reconnects; an attempt now would only fail.
      if (this._reconnectTimer) clearTimeout(this._reconnectTimer);
      this._reconnectTimer = null;
      return;
    }
    this._scheduleReconnect(code, reason);
  }

  /**
   * @private
   * @param {number} code
   * @param {string} reason
   */
  _scheduleReconnect(code, reason) {
    if (this._reconnectTimer) clearTimeout(this._reconnectTimer);
    const { minReconnectDelay: min, maxReconnectDelay: max } = this._opts;
    // Exponential backoff with jitter (half to full of the step): never a tight loop, and
    // clients dropped together do not come back together.
    const step = Math.min(max, min * 2 ** Math.min(this._attempt, 30));
    const delay = step / 2 + Math.random() * (step / 2);
    this._attempt += 1;
    this._reconnectTimer = setTimeout(() => {
      this._reconnectTimer = null;
      if (this.state !== "connecting") return;
      this._open();
    }, delay);
  }

  /**
   * Closes the socket (without waiting for its close event: a dead connection may never
   * deliver one) and fails the commands in flight on it.
   * @private
   * @param {number} code
   * @param {string} reason
   */
  _dropSocket(code, reason) {
    this._generation++;
    this._clearTimers();
    const ws = this._ws;
    this._ws = null;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = null;
      ws.onerror = () => {};
      try {
        // Only 1000 and 3000-4999 may be sent by a client.
        ws.close(code === 1000 || (code >= 3000 && code <= 4999) ? code : 1000, reason.slice(0, 100));
      } catch {
        // Already closed or closing.
      }
    }
    const pending = [...this._pending.values()];
    this._pending.clear();
    for (const p of pending) {
      clearTimeout(p.timer);
      p.reject(new ChorusError("disconnected", "connection closed before the reply: " + reason));
    }
  }

  /**
   * Goes down for good (until `connect()`): by the application, or because the gateway or
   * the credentials say reconnecting is pointless.
   * @private
   * @param {number} code
   * @param {string} reason
   * @param {boolean} reconnect
   */
  _stop(code, reason, reconnect) {
    if (this.state === "disconnected") return;
    if (this._reconnectTimer) clearTimeout(this._reconnectTimer);
    this._reconnectTimer = null;
    this._dropSocket(code, reason);
    for (const q of this._queue.splice(0)) {
      clearTimeout(q.pending.timer);
      q.pending.reject(new ChorusError("disconnected", "client disconnected: " + reason));
    }
    for (const sub of this._subs.values()) {
      if (sub._retryTimer) clearTimeout(sub._retryTimer);
      sub._retryTimer = null;
      if (sub.state === "subscribed") {
        sub.state = "subscribing";
        sub._emit("subscribing", { channel: sub.channel });
      }
    }
    this._removeBrowserListeners?.();
    this._removeBrowserListeners = null;
    this._emit("disconnected", { code, reason, reconnect });
    this._setState("disconnected");
  }

  /** @private */
  _clearTimers() {
    if (this._pingTimer) clearTimeout(this._pingTimer);
    if (this._refreshTimer) clearTimeout(this._refreshTimer);
    this._pingTimer = this._refreshTimer = null;
    this._pinging = false;
    for (const sub of this._subs.values()) {
      if (sub._retryTimer) clearTimeout(sub._retryTimer);
      sub._retryTimer = null;
      sub._attempt = 0;
    }
  }

  // ---------------------------------------------------------------- liveness

  /**
   * Browsers do not expose WebSocket pings, so silence is measured from the messages the
   * client sees: after `pingInterval` without any, it sends a `ping` command; no reply
   * within `pongTimeout` closes the connection (4000) and reconnects.
   * @private
   */
  _armPing() {
    if (this._pingTimer) clearTimeout(this._pingTimer);
    const wait = Math.max(0, this._lastReceived + this._opts.pingInterval - Date.now());
    this._pingTimer = setTimeout(() => this._checkAlive(), wait);
  }

  /** @private */
  _checkAlive() {
    this._pingTimer = null;
    if (this.state !== "connected" || this._pinging) return;
    if (Date.now() - this._lastReceived < this._opts.pingInterval) {
      this._armPing();
      return;
    }
    this._probe();
  }

  /** @private Sends a `ping`; no answer in `pongTimeout` means the connection is dead. */
  _probe() {
    if (this.state !== "connected" || this._pinging) return;
    this._pinging = true;
    const generation = this._generation;
    this._send("ping", {}, this._pendingFor(this._opts.pongTimeout)).then(
      () => {
        if (generation !== this._generation) return;
        this._pinging = false;
        this._armPing();
      },
      (e) => {
        if (generation !== this._generation) return;
        if (e instanceof ChorusError && typeof e.code === "number") {
          // An error reply (say 114, rate limited) is an answer all the same: alive.
          this._pinging = false;
          this._armPing();
          return;
        }
        this._transportClosed(codes.NO_PING, "no answer to ping");
      },
    );
  }

  // ---------------------------------------------------------------- tokens

  /** @private Schedules a `refresh` ahead of the token's `exp`, when it has one. */
  _scheduleRefresh() {
    if (this._refreshTimer) clearTimeout(this._refreshTimer);
    this._refreshTimer = null;
    if (!this._opts.refresh || !this._getToken || !this._token) return;
    const exp = tokenExpiry(this._token);
    if (!exp) return;
    const left = exp * 1000 - Date.now();
    // A quarter of what is left, at most 30 s, before exp: room for getToken and the reply.
    const delay = Math.max(0, left - Math.min(30000, left / 4));
    this._refreshTimer = setTimeout(() => this._refresh(), delay);
  }

  /** @private */
  async _refresh() {
    this._refreshTimer = null;
    const generation = this._generation;
    try {
      const token = await /** @type {() => Promise<string>} */ (this._getToken)();
      if (generation !== this._generation || this.state !== "connected") return;
      await this._send("refresh", { token }, this._pendingFor(this._opts.timeout));
      if (generation !== this._generation) return;
      this._token = token;
      this._scheduleRefresh();
    } catch (e) {
      // The gateway closes with 3004 at `exp`; the reconnect then gets a new token.
      this._emit("error", { type: "refresh", error: asError(e) });
    }
  }

  // ---------------------------------------------------------------- commands

  /**
   * @private
   * @param {number} timeout
   * @returns {PendingCommand}
   */
  _pendingFor(timeout) {
    /** @type {any} */
    const p = {};
    p.promise = new Promise((resolve, reject) => {
      p.resolve = resolve;
      p.reject = reject;
    });
    p.timer = setTimeout(
      () => p.reject(new ChorusError("timeout", "no reply within " + timeout + " ms")),
      timeout,
    );
    return p;
  }

  /**
   * Runs a command now if connected, else queues it (bounded) for the next connection.
   * @private
   * @param {string} name
   * @param {object} body
   * @returns {Promise<any>}
   */
  _command(name, body) {
    if (this.state === "disconnected") {
      return Promise.reject(new ChorusError("disconnected", "client is disconnected"));
    }
    const pending = this._pendingFor(this._opts.timeout);
    if (this.state === "connected") return this._send(name, body, pending);
    if (this._queue.length >= this._opts.maxQueued) {
      clearTimeout(pending.timer);
      return Promise.reject(
        new ChorusError("queue_full", "too many commands waiting for the connection"),
      );
    }
    const q = { name, body, pending };
    this._queue.push(q);
    const promise = /** @type {any} */ (pending).promise;
    // A command that timed out while queued leaves the queue.
    promise.catch(() => {
      const i = this._queue.indexOf(q);
      if (i >= 0) this._queue.splice(i, 1);
    });
    return promise;
  }

  /**
   * Sends a command on the open socket and resolves with its result.
   *
   * `onResult` runs synchronously when the reply is read, before any later frame: a
   * subscribe's publications follow its reply in the same read, and must find the
   * subscription live (a promise continuation would run only after them).
   * @private
   * @param {string} name
   * @param {object} body
   * @param {PendingCommand} pending
   * @param {(result: any) => void} [onResult]
   * @returns {Promise<any>}
   */
  _send(name, body, pending, onResult) {
    const promise = /** @type {Promise<any>} */ (/** @type {any} */ (pending).promise);
    const ws = this._ws;
    if (!ws) {
      clearTimeout(pending.timer);
      pending.reject(new ChorusError("disconnected", "not connected"));
      return promise;
    }
    const id = this._nextId;
    this._nextId = this._nextId >= MAX_ID ? 1 : this._nextId + 1;
    /** @param {any} v */
    const resolve = (v) => {
      clearTimeout(pending.timer);
      this._pending.delete(id);
      onResult?.(v);
      pending.resolve(v);
    };
    /** @param {ChorusError} e */
    const reject = (e) => {
      clearTimeout(pending.timer);
      this._pending.delete(id);
      pending.reject(e);
    };
    // The timer set at the call keeps running; when it fires the entry must go too.
    promise.catch(() => this._pending.delete(id));
    this._pending.set(id, { resolve, reject, timer: pending.timer });
    try {
      ws.send(
        this._opts.format === "protobuf"
          ? encodeCommand(id, name, body)
          : JSON.stringify({ id, [name]: body }),
      );
    } catch (e) {
      reject(new ChorusError("disconnected", "send failed: " + asError(e).message));
    }
    return promise;
  }

  /**
   * @private
   * @param {unknown} data
   */
  _onMessage(data) {
    this._lastReceived = Date.now();
    const protobuf = this._opts.format === "protobuf";
    /** @type {any} */
    let frame;
    try {
      if (protobuf && data instanceof ArrayBuffer) {
        frame = decodeServerFrame(new Uint8Array(data));
      } else if (protobuf && ArrayBuffer.isView(data)) {
        frame = decodeServerFrame(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
      } else if (!protobuf && typeof data === "string") {
        frame = JSON.parse(data);
      } else {
        throw new ChorusError(111, "a frame of the wrong type for the " + this._opts.format + " format");
      }
    } catch (e) {
      this._emit("error", { type: "transport", error: asError(e) });
      return;
    }
    if (frame.pub) {
      const sub = this._subs.get(frame.pub.channel);
      // Publications for a channel not (yet) subscribed on this connection are stale.
      if (sub && sub.state === "subscribed") sub._deliver(frame.pub, false);
      return;
    }
    if (frame.join || frame.leave) {
      const event = frame.join ? "join" : "leave";
      const m = frame.join ?? frame.leave;
      const sub = this._subs.get(m.channel);
      if (sub && sub.state === "subscribed" && sub._joinLeave) {
        sub._emit(event, { channel: m.channel, info: toClientInfo(m) });
      }
      return;
    }
    if (frame.id === undefined && frame.subscribe) {
      this._onServerSubscribe(frame.subscribe);
      return;
    }
    if (frame.id === undefined && frame.unsubscribe) {
      const sub = this._subs.get(frame.unsubscribe.channel);
      if (sub) this._unsubscribe(sub, 0, frame.unsubscribe.reason || "unsubscribed by the server", false);
      return;
    }
    if (frame.disconnect) {
      const d = frame.disconnect;
      if (d.reconnect === false) {
        this._stop(d.code ?? 0, d.reason ?? "disconnected by the gateway", false);
      }
      // Otherwise the close that follows does the work.
      return;
    }
    const p = this._pending.get(frame.id);
    if (!p) return; // a reply to a command that timed out
    if (frame.error) {
      p.reject(new ChorusError(frame.error.code, frame.error.message ?? ""));
    } else {
      const key = Object.keys(frame).find((k) => k !== "id");
      p.resolve(key ? frame[key] : {});
    }
  }

  // ---------------------------------------------------------------- subscriptions

  /**
   * @private
   * @param {Subscription} sub
   */
  _sendSubscribe(sub) {
    if (this.state !== "connected" || this._subs.get(sub.channel) !== sub) return;
    if (sub._retryTimer) clearTimeout(sub._retryTimer);
    sub._retryTimer = null;
    if (sub.state !== "subscribing") {
      sub.state = "subscribing";
      sub._emit("subscribing", { channel: sub.channel });
    }
    const generation = this._generation;
    /** @type {Record<string, unknown>} */
    const body = { channel: sub.channel };
    const from = sub.position;
    if (from) {
      body.recover = true;
      body.offset = from.offset;
      body.epoch = from.epoch;
    }
    if (!sub._joinLeave) body.join_leave = false;
    /** @param {any} r */
    const onResult = (r) => {
      if (generation !== this._generation || this._subs.get(sub.channel) !== sub) return;
      sub._start(r, Boolean(from));
    };
    this._send("subscribe", body, this._pendingFor(this._opts.timeout), onResult).catch(
      (e) => {
        if (generation !== this._generation || this._subs.get(sub.channel) !== sub) return;
        const err = e instanceof ChorusError ? e : new ChorusError(100, String(e));
        sub._emit("error", { channel: sub.channel, error: err });
        if (err.code === "disconnected") return; // the reconnect resubscribes
        if (err.code === codes.UNAVAILABLE || err.code === "timeout" || err.code === 100) {
          // Transient: retry on this connection with backoff.
          const step = Math.min(
            this._opts.maxReconnectDelay,
            this._opts.minReconnectDelay * 2 ** Math.min(sub._attempt, 30),
          );
          sub._attempt += 1;
          sub._retryTimer = setTimeout(() => this._sendSubscribe(sub), step / 2 + (Math.random() * step) / 2);
        } else {
          // Refused for good (bad name, permission, limit): retrying would be refused too.
          this._unsubscribe(sub, Number(err.code), err.message);
        }
      },
    );
  }

  /**
   * The server subscribed this connection to a channel: a new subscription is announced
   * with `serverSubscription` before it starts (so listeners can be attached); one the
   * server made before a reconnect starts again, recovered from its position.
   * @private
   * @param {any} s the `subscribe` push
   */
  _onServerSubscribe(s) {
    let sub = this._subs.get(s.channel);
    if (sub && (!sub.server || sub.state === "subscribed")) return; // the client's own, or live
    const wasRecovering = s.recovered !== undefined;
    if (!sub) {
      sub = new Subscription(this, s.channel, {});
      /** @type {any} */ (sub).server = true;
      this._subs.set(s.channel, sub);
      this._emit("serverSubscription", { subscription: sub });
      if (this._subs.get(s.channel) !== sub) return; // unsubscribed by a listener
    }
    sub._start(s, wasRecovering);
  }

  /**
   * @internal
   * @param {Subscription} sub
   * @param {number} code
   * @param {string} reason
   * @param {boolean} [tell] whether the gateway still has the subscription (default: when
   *   the application asked, code 0)
   */
  _unsubscribe(sub, code, reason, tell = code === 0) {
    if (this._subs.get(sub.channel) !== sub) return;
    this._subs.delete(sub.channel);
    if (sub._retryTimer) clearTimeout(sub._retryTimer);
    sub._retryTimer = null;
    sub.state = "unsubscribed";
    // Also while a subscribe is in flight: the gateway runs commands in order, so this undoes
    // it (unsubscribing from a channel not subscribed succeeds) and a later subscribe to the
    // channel is not refused as a duplicate. A refused channel needs none.
    if (this.state === "connected" && tell) {
      this._send("unsubscribe", { channel: sub.channel }, this._pendingFor(this._opts.timeout)).catch(
        () => {},
      );
    }
    sub._emit("unsubscribed", { channel: sub.channel, code, reason });
  }

  // ---------------------------------------------------------------- browser

  /** @private Offline/online and visibility, when the environment has them. */
  _installBrowserListeners() {
    if (!this._opts.browserEvents || this._removeBrowserListeners) return;
    const g = /** @type {any} */ (globalThis);
    if (typeof g.addEventListener !== "function" || typeof g.document === "undefined") return;
    const onOffline = () => {
      this._offline = true;
      if (this.state !== "disconnected") this._transportClosed(codes.OFFLINE, "browser offline");
    };
    const onOnline = () => {
      this._offline = false;
      if (this.state === "connecting" && !this._ws) {
        this._attempt = 0;
        this._scheduleReconnect(codes.OFFLINE, "browser online");
      }
    };
    const onVisible = () => {
      if (g.document.visibilityState !== "visible") return;
      // A laptop waking up: check the connection now rather than after pingInterval.
      if (this.state === "connected") this._probe();
      else if (this.state === "connecting" && this._reconnectTimer && !this._offline) {
        this._attempt = 0;
        this._scheduleReconnect(0, "page visible");
      }
    };
    g.addEventListener("offline", onOffline);
    g.addEventListener("online", onOnline);
    g.document.addEventListener("visibilitychange", onVisible);
    this._offline = g.navigator?.onLine === false;
    this._removeBrowserListeners = () => {
      g.removeEventListener("offline", onOffline);
      g.removeEventListener("online", onOnline);
      g.document.removeEventListener("visibilitychange", onVisible);
      this._offline = false;
    };
  }
}

// ------------------------------------------------------------------ protobuf

// The protobuf form of the protocol (protocol/proto/chorus/client.proto), as far as a client
// needs it: encoding `Command`s and decoding `ServerFrame`s into the same objects the JSON
// form parses to, so the client's logic is one for both. Offsets are uint64 on the wire and
// JavaScript numbers here (exact up to 2^53).

/** Field numbers of `Command.body` and of `Reply.result`, by command name. */
const COMMAND_FIELDS = /** @type {Record<string, number>} */ ({
  connect: 2, subscribe: 3, unsubscribe: 4, publish: 5, ping: 6, history: 7, refresh: 8,
  presence: 9, presence_stats: 10,
});
const RESULT_NAMES = [
  "", "", "", "connect", "subscribe", "unsubscribe", "publish", "ping", "history", "refresh",
  "presence", "presence_stats",
];

const utf8 = new TextEncoder();
const fromUtf8 = new TextDecoder();

class PbWriter {
  constructor() {
    /** @type {number[]} */
    this.bytes = [];
  }

  /** @param {number} v a non-negative integer up to 2^53 */
  varint(v) {
    while (v > 127) {
      this.bytes.push((v % 128) | 128);
      v = Math.floor(v / 128);
    }
    this.bytes.push(v);
  }

  /** @param {number} field @param {number} v */
  uint(field, v) {
    if (!v) return;
    this.varint(field * 8);
    this.varint(v);
  }

  /** @param {number} field @param {boolean | undefined} v */
  bool(field, v) {
    if (v) this.uint(field, 1);
  }

  /** @param {number} field @param {Uint8Array} v @param {boolean} [always] */
  bytesField(field, v, always = false) {
    if (!v.length && !always) return;
    this.varint(field * 8 + 2);
    this.varint(v.length);
    for (const b of v) this.bytes.push(b);
  }

  /** @param {number} field @param {string | undefined} v */
  string(field, v) {
    if (v) this.bytesField(field, utf8.encode(v));
  }

  /** @param {number} field @param {PbWriter} msg */
  message(field, msg) {
    this.bytesField(field, Uint8Array.from(msg.bytes), true);
  }
}

/**
 * Encodes a command, given as the JSON form's name and body.
 * @param {number} id
 * @param {string} name
 * @param {any} body
 * @returns {Uint8Array}
 */
function encodeCommand(id, name, body) {
  const b = new PbWriter();
  switch (name) {
    case "connect":
      b.string(1, body.token);
      b.string(2, body.name);
      for (const [channel, at] of Object.entries(body.recover ?? {})) {
        // A map entry: key 1, value 2.
        const position = new PbWriter();
        position.uint(1, at.offset);
        position.string(2, at.epoch);
        const entry = new PbWriter();
        entry.string(1, channel);
        entry.message(2, position);
        b.message(3, entry);
      }
      break;
    case "subscribe":
      b.string(1, body.channel);
      b.bool(2, body.recover);
      b.uint(3, body.offset ?? 0);
      b.string(4, body.epoch);
      b.bool(5, body.join_leave === false);
      break;
    case "unsubscribe":
    case "presence":
    case "presence_stats":
      b.string(1, body.channel);
      break;
    case "publish":
      b.string(1, body.channel);
      b.bytesField(2, body.data);
      b.bool(3, body.echo);
      break;
    case "refresh":
      b.string(1, body.token);
      break;
    case "history":
      b.string(1, body.channel);
      if (body.since) {
        const since = new PbWriter();
        since.uint(1, body.since.offset);
        since.string(2, body.since.epoch);
        b.message(2, since);
      }
      b.uint(3, body.limit ?? 0);
      b.bool(4, body.reverse);
      break;
    case "ping":
      break;
    default:
      throw new TypeError("unknown command " + name);
  }
  const cmd = new PbWriter();
  cmd.uint(1, id);
  cmd.message(COMMAND_FIELDS[name], b);
  return Uint8Array.from(cmd.bytes);
}

/**
 * The fields of one message: field number → values in order (numbers for varints,
 * Uint8Arrays for length-delimited).
 * @param {Uint8Array} buf
 * @returns {Map<number, (number | Uint8Array)[]>}
 */
function pbFields(buf) {
  /** @type {Map<number, (number | Uint8Array)[]>} */
  const fields = new Map();
  let pos = 0;
  const varint = () => {
    let v = 0;
    let mul = 1;
    for (;;) {
      if (pos >= buf.length) throw new Error("truncated varint");
      const b = buf[pos++];
      v += (b & 127) * mul;
      if (b < 128) return v;
      mul *= 128;
    }
  };
  while (pos < buf.length) {
    const key = varint();
    const field = Math.floor(key / 8);
    const wire = key % 8;
    /** @type {number | Uint8Array} */
    let value;
    if (wire === 0) value = varint();
    else if (wire === 2) {
      const len = varint();
      if (pos + len > buf.length) throw new Error("truncated field");
      value = buf.subarray(pos, pos + len);
      pos += len;
    } else if (wire === 1) {
      pos += 8;
      continue;
    } else if (wire === 5) {
      pos += 4;
      continue;
    } else throw new Error("unsupported wire type " + wire);
    const list = fields.get(field);
    if (list) list.push(value);
    else fields.set(field, [value]);
  }
  return fields;
}

/**
 * Readers of one decoded message's fields (the last value wins, as protobuf says).
 * @param {Uint8Array} buf
 */
function pbMessage(buf) {
  const f = pbFields(buf);
  /** @param {number} n */
  const last = (n) => f.get(n)?.at(-1);
  return {
    /** @param {number} n */
    num: (n) => (typeof last(n) === "number" ? /** @type {number} */ (last(n)) : 0),
    /** @param {number} n */
    str: (n) => {
      const v = last(n);
      return v instanceof Uint8Array ? fromUtf8.decode(v) : "";
    },
    /** @param {number} n */
    bytes: (n) => {
      const v = last(n);
      return v instanceof Uint8Array ? v : undefined;
    },
    /** @param {number} n */
    all: (n) => /** @type {Uint8Array[]} */ ((f.get(n) ?? []).filter((v) => v instanceof Uint8Array)),
  };
}

/** @param {Uint8Array} buf */
function decodePublication(buf) {
  const m = pbMessage(buf);
  return { channel: m.str(1), offset: m.num(2), epoch: m.str(3), bytes: m.bytes(4) ?? new Uint8Array(0) };
}

/**
 * Decodes a `ServerFrame` into the JSON form's shape: `{id, error}` or `{id, <name>: result}`,
 * `{pub}` or `{disconnect}`.
 * @param {Uint8Array} buf
 * @returns {any}
 */
function decodeServerFrame(buf) {
  const frame = pbMessage(buf);
  const push = frame.bytes(2);
  if (push) {
    const p = pbMessage(push);
    const publication = p.bytes(1);
    if (publication) return { pub: decodePublication(publication) };
    const disconnect = p.bytes(2);
    if (disconnect) {
      const d = pbMessage(disconnect);
      return { disconnect: { code: d.num(1), reason: d.str(2), reconnect: d.num(3) === 1 } };
    }
    for (const [field, name] of /** @type {const} */ ([[3, "join"], [4, "leave"]])) {
      const body = p.bytes(field);
      if (body) {
        const m = pbMessage(body);
        const info = m.bytes(2);
        return { [name]: { channel: m.str(1), ...(info ? decodeClientInfo(info) : {}) } };
      }
    }
    const subscribed = p.bytes(5);
    if (subscribed) {
      const m = pbMessage(subscribed);
      /** @type {any} */
      const s = { channel: m.str(1), offset: m.num(2), epoch: m.str(3), publications: m.all(6).map(decodePublication) };
      if (m.num(4) === 1) s.recovered = m.num(5) === 1;
      return { subscribe: s };
    }
    const unsubscribed = p.bytes(6);
    if (unsubscribed) {
      const m = pbMessage(unsubscribed);
      return { unsubscribe: { channel: m.str(1), reason: m.str(2) } };
    }
    return {};
  }
  const replyBytes = frame.bytes(1);
  if (!replyBytes) return {};
  const fields = pbFields(replyBytes);
  const reply = pbMessage(replyBytes);
  const id = reply.num(1);
  const error = reply.bytes(2);
  if (error) {
    const e = pbMessage(error);
    return { id, error: { code: e.num(1), message: e.str(2) } };
  }
  for (let field = 3; field < RESULT_NAMES.length; field++) {
    const body = fields.get(field)?.at(-1);
    if (!(body instanceof Uint8Array)) continue;
    const r = pbMessage(body);
    const name = RESULT_NAMES[field];
    /** @type {any} */
    let result = {};
    if (name === "connect") {
      result = { client: r.str(1), node: r.str(2), version: r.str(3), ping_interval: r.num(4) };
    } else if (name === "subscribe") {
      result = { epoch: r.str(1), offset: r.num(2), publications: r.all(4).map(decodePublication) };
      if (r.num(5) === 1) result.recovered = r.num(3) === 1;
    } else if (name === "history") {
      result = { publications: r.all(1).map(decodePublication), offset: r.num(2), epoch: r.str(3) };
    } else if (name === "publish") {
      result = { offset: r.num(1), epoch: r.str(2) };
    } else if (name === "refresh") {
      result = { expires_at: r.num(1) };
    } else if (name === "presence") {
      result = { clients: r.all(1).map(decodeClientInfo) };
    } else if (name === "presence_stats") {
      result = { num_clients: r.num(1), num_users: r.num(2) };
    }
    return { id, [name]: result };
  }
  return { id };
}

/**
 * A `ClientInfo` message in the JSON form's shape (`info` as the JSON value it holds).
 * @param {Uint8Array} buf
 */
function decodeClientInfo(buf) {
  const m = pbMessage(buf);
  /** @type {any} */
  const c = { client: m.str(1), user: m.str(2) };
  const info = m.bytes(3);
  if (info && info.length > 0) {
    try {
      c.info = JSON.parse(fromUtf8.decode(info));
    } catch {
      // Not JSON: left out, as the JSON form does.
    }
  }
  return c;
}

/**
 * @param {any} c a presence entry, join or leave of the JSON form
 * @returns {ClientInfo}
 */
function toClientInfo(c) {
  /** @type {ClientInfo} */
  const info = { client: c.client ?? "", user: c.user ?? "" };
  if ("info" in c) info.info = c.info;
  return info;
}

/**
 * @param {any} p a publication object of the protocol
 * @param {boolean} recovered
 * @returns {Publication}
 */
function toPublication(p, recovered) {
  /** @type {Publication} */
  const pub = { channel: p.channel, offset: p.offset, epoch: p.epoch, recovered };
  if ("data" in p) pub.data = p.data;
  if ("b64data" in p) pub.b64data = p.b64data;
  if ("bytes" in p) pub.bytes = p.bytes;
  return pub;
}

/**
 * The `exp` claim of a JWT (seconds since the epoch), or 0. Read without verifying: it only
 * times the refresh; the gateway verifies.
 * @param {string} token
 * @returns {number}
 */
export function tokenExpiry(token) {
  const part = token.split(".")[1];
  if (!part) return 0;
  try {
    const b64 = part.replace(/-/g, "+").replace(/_/g, "/");
    const json = JSON.parse(atob(b64 + "=".repeat((4 - (b64.length % 4)) % 4)));
    return typeof json.exp === "number" ? json.exp : 0;
  } catch {
    return 0;
  }
}

/**
 * @param {unknown} e
 * @returns {Error}
 */
function asError(e) {
  return e instanceof Error ? e : new Error(String(e));
}

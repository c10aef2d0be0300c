// Generated from index.js by scripts/build-types.mjs (npm run types); do not edit.
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
export declare const VERSION = "0.1.0";
/** The close codes and error codes of docs/protocol.md the client acts on. */
export declare const codes: Readonly<{
    UNAUTHORIZED: 101;
    BAD_CHANNEL: 102;
    PERMISSION_DENIED: 103;
    ALREADY_SUBSCRIBED: 105;
    LIMIT_EXCEEDED: 106;
    UNAVAILABLE: 108;
    TOKEN_EXPIRED: 113;
    RATE_LIMITED: 114;
    SHUTDOWN: 3000;
    IDLE_TIMEOUT: 3001;
    SLOW_CONSUMER: 3002;
    INSUFFICIENT_STATE: 3003;
    CLOSE_TOKEN_EXPIRED: 3004;
    CONNECTION_LIMIT: 3006;
    NO_PING: 4000;
    OFFLINE: 4001;
}>;
export type State = "disconnected" | "connecting" | "connected";
export type StreamPosition = {
    offset: number;
    epoch: string;
};
export type Publication = {
    channel: string;
    /**
     * The publication's offset in its channel.
     */
    offset: number;
    /**
     * The channel's epoch the offset belongs to.
     */
    epoch: string;
    /**
     * The message, when it is JSON.
     */
    data?: unknown;
    /**
     * The message in base64, when it is not JSON (JSON format).
     */
    b64data?: string;
    /**
     * The message's bytes (protobuf format).
     */
    bytes?: Uint8Array;
    /**
     * True when it came from recovery after a reconnect.
     */
    recovered: boolean;
};
export type ConnectedContext = {
    /**
     * The connection's id.
     */
    client: string;
    /**
     * The gateway node holding it.
     */
    node: string;
    /**
     * The Chorus version of the gateway.
     */
    version: string;
    /**
     * Seconds between the gateway's WebSocket pings.
     */
    pingInterval: number;
    /**
     * The URL connected to.
     */
    url: string;
};
export type DisconnectContext = {
    /**
     * The close code (see docs/protocol.md, plus 4000 no ping answer,
     * 4001 offline).
     */
    code: number;
    reason: string;
    /**
     * Whether the client will reconnect on its own.
     */
    reconnect: boolean;
};
export type StateContext = {
    state: State;
    previous: State;
};
export type ErrorContext = {
    /**
     * What failed: "connect", "transport", "refresh", "subscribe",
     * "listener".
     */
    type: string;
    error: Error;
};
export type SubscribedContext = {
    channel: string;
    /**
     * The channel's position the subscription starts after.
     */
    offset: number;
    epoch: string;
    /**
     * Whether the subscribe asked to recover a position.
     */
    wasRecovering: boolean;
    /**
     * True when every publication after the position was
     * delivered; false when `wasRecovering` and a gap was lost: reload the state.
     */
    recovered: boolean;
};
export type UnsubscribedContext = {
    channel: string;
    /**
     * 0 by the application's call, else the error code that ended it.
     */
    code: number;
    reason: string;
};
export type HistoryOptions = {
    /**
     * Only publications after this position.
     */
    since?: StreamPosition;
    /**
     * At most this many (the gateway caps at 1000).
     */
    limit?: number;
    /**
     * Newest first.
     */
    reverse?: boolean;
};
export type HistoryResult = {
    publications: Publication[];
    /**
     * The channel's current position.
     */
    offset: number;
    epoch: string;
};
export type PublishResult = {
    /**
     * Where the publication landed.
     */
    offset: number;
    epoch: string;
};
export type SubscriptionOptions = {
    /**
     * Start after this position (e.g. one the application
     * stored): the first subscribe already recovers from it.
     */
    since?: StreamPosition;
    /**
     * Receive `join`/`leave` events where the channel's
     * namespace announces them (default true); false opts this subscription out.
     */
    joinLeave?: boolean;
};
export type ClientInfo = {
    /**
     * The connection's id.
     */
    client: string;
    /**
     * The token's user; empty for an anonymous connection.
     */
    user: string;
    /**
     * The token's `info` claim, when it has one.
     */
    info?: unknown;
};
export type PresenceResult = {
    /**
     * Every connection subscribed, across all gateways.
     */
    clients: ClientInfo[];
};
export type PresenceStats = {
    /**
     * Connections subscribed.
     */
    numClients: number;
    /**
     * Distinct users among them.
     */
    numUsers: number;
};
export type JoinLeaveContext = {
    channel: string;
    /**
     * The connection that joined or left.
     */
    info: ClientInfo;
};
export type ServerSubscriptionContext = {
    /**
     * A subscription the server made (the server API, the
     * token's `subs` claim, the personal channel); its `subscribed` event and publications
     * follow.
     */
    subscription: Subscription;
};
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => any;
export type ClientOptions = {
    /**
     * Connection token (JWT). Empty: anonymous.
     */
    token?: string;
    /**
     * Called for a new token when there is none,
     * when the gateway says the token expired (113, close 3004) and before `exp` to `refresh`.
     */
    getToken?: () => Promise<string>;
    /**
     * Client name for the gateway's logs.
     */
    name?: string;
    /**
     * Wire format, default "json". With "protobuf",
     * publications carry `bytes` instead of `data`, and `publish` sends a Uint8Array as it is.
     */
    format?: "json" | "protobuf";
    /**
     * WebSocket constructor; default the global
     * `WebSocket` (in Node 20 pass `WebSocket` of the `ws` package).
     */
    websocket?: WebSocketConstructor;
    /**
     * ms, default 500.
     */
    minReconnectDelay?: number;
    /**
     * ms, default 20000.
     */
    maxReconnectDelay?: number;
    /**
     * ms a command waits for its reply (and a connect for its
     * socket and `connect` reply), default 10000.
     */
    timeout?: number;
    /**
     * ms of silence from the gateway after which the client
     * sends a `ping` command, default 10000.
     */
    pingInterval?: number;
    /**
     * ms the `ping` may take before the connection is given up
     * as dead (close 4000) and replaced, default 5000.
     */
    pongTimeout?: number;
    /**
     * Commands that may wait for a connection; past it a call
     * fails at once. Default 100.
     */
    maxQueued?: number;
    /**
     * Refresh the token with `refresh` before its `exp` (needs
     * `getToken`), default true.
     */
    refresh?: boolean;
    /**
     * React to `online`/`offline` and page visibility when
     * running in a browser, default true.
     */
    browserEvents?: boolean;
};
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
export declare class ChorusError extends Error {
    /** @type {number | string} */
    code: number | string;
    /**
     * @param {number | string} code
     * @param {string} message
     */
    constructor(code: number | string, message: string);
}
/**
 * A small event emitter (no dependency on Node's `events` or the DOM's `EventTarget`). A
 * listener that throws does not stop the others: the error is re-thrown asynchronously.
 * @template {Record<string, any>} E
 */
declare class Emitter<E extends Record<string, any>> {
    constructor();
    /**
     * @template {keyof E} K
     * @param {K} event
     * @param {(arg: E[K]) => void} fn
     * @returns {this}
     */
    on<K extends keyof E>(event: K, fn: (arg: E[K]) => void): this;
    /**
     * @template {keyof E} K
     * @param {K} event
     * @param {(arg: E[K]) => void} fn
     * @returns {this}
     */
    off<K extends keyof E>(event: K, fn: (arg: E[K]) => void): this;
    /**
     * @template {keyof E} K
     * @param {K} event
     * @param {(arg: E[K]) => void} fn
     * @returns {this}
     */
    once<K extends keyof E>(event: K, fn: (arg: E[K]) => void): this;
    /**
     * @template {keyof E} K
     * @param {K} event
     * @param {E[K]} arg
     */
    _emit<K extends keyof E>(event: K, arg: E[K]): void;
}
export type SubscriptionEvents = {
    publication: Publication;
    subscribing: {
        channel: string;
    };
    subscribed: SubscribedContext;
    unsubscribed: UnsubscribedContext;
    join: JoinLeaveContext;
    leave: JoinLeaveContext;
    error: {
        channel: string;
        error: ChorusError;
    };
};
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
export declare class Subscription extends Emitter<SubscriptionEvents> {
    /** @readonly */
    channel: string;
    /** @type {"unsubscribed" | "subscribing" | "subscribed"} */
    state: "unsubscribed" | "subscribing" | "subscribed";
    /**
     * The position of the last publication delivered (or the subscribe's start); null until
     * the first subscribe answered, unless `since` was given.
     * @type {StreamPosition | null}
     */
    position: StreamPosition | null;
    /**
     * Made by the server (see the client's `serverSubscription` event): the gateway restores
     * it after a reconnect, not the client.
     * @readonly
     */
    server: boolean;
    /**
     * @param {Client} client
     * @param {string} channel
     * @param {SubscriptionOptions} options
     */
    constructor(client: Client, channel: string, options: SubscriptionOptions);
    /** Stops the subscription; emits `unsubscribed`. */
    unsubscribe(): void;
    /**
     * Publishes to this channel (see `Client.publish`).
     * @param {unknown} data
     * @param {{echo?: boolean}} [options]
     * @returns {Promise<PublishResult>}
     */
    publish(data: unknown, options?: {
        echo?: boolean;
    }): Promise<PublishResult>;
    /**
     * Reads this channel's history (see `Client.history`).
     * @param {HistoryOptions} [options]
     * @returns {Promise<HistoryResult>}
     */
    history(options?: HistoryOptions): Promise<HistoryResult>;
    /**
     * Who is subscribed to this channel (see `Client.presence`).
     * @returns {Promise<PresenceResult>}
     */
    presence(): Promise<PresenceResult>;
    /**
     * How many connections and users are subscribed (see `Client.presenceStats`).
     * @returns {Promise<PresenceStats>}
     */
    presenceStats(): Promise<PresenceStats>;
}
export type ClientEvents = {
    state: StateContext;
    connecting: {
        code: number;
        reason: string;
    };
    connected: ConnectedContext;
    disconnected: DisconnectContext;
    error: ErrorContext;
    serverSubscription: ServerSubscriptionContext;
};
export type PendingCommand = {
    resolve: (result: any) => void;
    reject: (error: ChorusError) => void;
    timer: ReturnType<typeof setTimeout>;
};
export type QueuedCommand = {
    name: string;
    body: object;
    pending: PendingCommand;
};
/**
 * A connection to Chorus that stays up: it reconnects, resubscribes and recovers on its own
 * until `disconnect()` or until the gateway says not to reconnect.
 * @extends {Emitter<ClientEvents>}
 */
export declare class Client extends Emitter<ClientEvents> {
    /** @readonly */
    urls: string[];
    /** @type {State} */
    state: State;
    /**
     * @param {string | string[]} url One gateway URL (`ws://host:8000/ws`) or several: the
     *   client rotates over them on every reconnect attempt.
     * @param {ClientOptions} [options]
     */
    constructor(url: string | string[], options?: ClientOptions);
    /** Starts connecting (no-op unless disconnected). Resolves once connected. */
    connect(): Promise<void>;
    /**
     * Resolves when the client is connected; rejects if it ends up disconnected first.
     * @returns {Promise<void>}
     */
    ready(): Promise<void>;
    /** Closes the connection and stays disconnected; subscriptions are kept for `connect()`. */
    disconnect(): void;
    /**
     * Subscribes to a channel, or returns the existing subscription of the client to it.
     * Listen for `publication` on the result; it is subscribed (again) on every connect.
     * @param {string} channel
     * @param {SubscriptionOptions} [options]
     * @returns {Subscription}
     */
    subscribe(channel: string, options?: SubscriptionOptions): Subscription;
    /**
     * The client's subscription to a channel, if any.
     * @param {string} channel
     * @returns {Subscription | undefined}
     */
    getSubscription(channel: string): Subscription | undefined;
    /**
     * Publishes a JSON value to a channel (where the namespace lets clients publish). The
     * sender does not receive its own publication unless `echo` is set.
     * @param {string} channel
     * @param {unknown} data
     * @param {{echo?: boolean}} [options]
     * @returns {Promise<PublishResult>}
     */
    publish(channel: string, data: unknown, options?: {
        echo?: boolean;
    }): Promise<PublishResult>;
    /**
     * Reads a channel's history (no subscription needed).
     * @param {string} channel
     * @param {HistoryOptions} [options]
     * @returns {Promise<HistoryResult>}
     */
    history(channel: string, options?: HistoryOptions): Promise<HistoryResult>;
    /**
     * An application-level round trip to the gateway.
     * @returns {Promise<void>}
     */
    ping(): Promise<void>;
    /**
     * Every connection subscribed to a presence channel, across every gateway (where this
     * connection may subscribe to it; the gateway refuses a channel without presence with 107
     * and one larger than its presence limit with 106).
     * @param {string} channel
     * @returns {Promise<PresenceResult>}
     */
    presence(channel: string): Promise<PresenceResult>;
    /**
     * How many connections, and distinct users among them, are subscribed to a presence
     * channel.
     * @param {string} channel
     * @returns {Promise<PresenceStats>}
     */
    presenceStats(channel: string): Promise<PresenceStats>;
}
/**
 * The `exp` claim of a JWT (seconds since the epoch), or 0. Read without verifying: it only
 * times the refresh; the gateway verifies.
 * @param {string} token
 * @returns {number}
 */
export declare function tokenExpiry(token: string): number;
export {};

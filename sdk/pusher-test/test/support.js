// What the Pusher compatibility suites share: a pusher-js client whose subscriptions and
// sign-ins are authorized by the official `pusher` server library (as an app's auth endpoint
// would), and a promise of a channel's subscription.
import Pusher from "pusher-js";

/**
 * pusher-js connected to gateway `i` of `cluster`, as `user` for presence channels and
 * sign-in, with subscriptions signed by `server` (a `pusher` library instance).
 * `options.badAuth` signs every subscription wrongly.
 */
export function pusherClient(cluster, server, i, user = "anon", options = {}) {
  return new Pusher(server.config.token.key, {
    wsHost: "127.0.0.1",
    wsPort: cluster.gatewayPort(i),
    forceTLS: false,
    enabledTransports: ["ws"],
    cluster: "local",
    channelAuthorization: {
      customHandler: ({ socketId, channelName }, callback) => {
        if (options.badAuth) return callback(null, { auth: `${server.config.token.key}:${"0".repeat(64)}` });
        const presence = channelName.startsWith("presence-") ? { user_id: user, user_info: { name: user } } : undefined;
        callback(null, server.authorizeChannel(socketId, channelName, presence));
      },
    },
    userAuthentication: {
      customHandler: ({ socketId }, callback) => callback(null, server.authenticateUser(socketId, { id: user, name: user })),
    },
  });
}

/** Subscribes; resolves with the channel once subscribed, rejects with the error's data. */
export function subscribed(pusher, name) {
  const channel = pusher.subscribe(name);
  return new Promise((resolve, reject) => {
    channel.bind("pusher:subscription_succeeded", () => resolve(channel));
    channel.bind("pusher:subscription_error", (e) =>
      reject(Object.assign(new Error(`subscription_error ${JSON.stringify(e)}`), { data: e })),
    );
  });
}

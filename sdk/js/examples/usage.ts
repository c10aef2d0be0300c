// A typed use of the SDK, checked by `tsc -p tsconfig.json` against index.d.ts: a change of
// the declarations that breaks ordinary use fails the type check.
import { Client, ChorusError, type Publication, type SubscribedContext } from "../index.js";
import WebSocket from "ws";

export async function main(url: string): Promise<void> {
  const client = new Client([url, url.replace("8000", "8010")], {
    websocket: WebSocket as unknown as new (url: string, protocols?: string | string[]) => unknown,
    getToken: async () => "token",
    pingInterval: 10_000,
  });
  client.on("state", ({ state, previous }) => console.log(previous, "->", state));
  client.on("connected", (ctx) => console.log("connected to", ctx.node, ctx.pingInterval));
  client.on("disconnected", (ctx) => console.log(ctx.code, ctx.reason, ctx.reconnect));
  const sub = client.subscribe("chat:lobby", { since: { offset: 0, epoch: "" } });
  sub.on("publication", (p: Publication) => console.log(p.offset, p.epoch, p.data, p.recovered));
  sub.on("subscribed", (ctx: SubscribedContext) => {
    if (ctx.wasRecovering && !ctx.recovered) console.log("gap lost: reload");
  });
  await client.connect();
  const { offset, epoch } = await sub.publish({ text: "hi" });
  const history = await client.history("chat:lobby", { since: { offset, epoch }, limit: 10 });
  const offsets: number[] = history.publications.map((p) => p.offset);
  console.log(offsets);
  try {
    await client.publish("news", 1);
  } catch (e) {
    if (e instanceof ChorusError && e.code === 103) console.log("not allowed");
  }
  client.disconnect();
}

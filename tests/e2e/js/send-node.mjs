// Sends identify, track, group and alias through @segment/analytics-node to `host`,
// waits for delivery (closeAndFlush) and prints the events it sent as one JSON array.
// Usage: node send-node.mjs <host> <writeKey>   (used by tests/e2e/test_node_sdk.py)
import { Analytics } from "@segment/analytics-node";

const [host, writeKey] = process.argv.slice(2);
if (!host || !writeKey) {
  console.error("usage: node send-node.mjs <host> <writeKey>");
  process.exit(2);
}

const analytics = new Analytics({ writeKey, host, flushInterval: 60_000, maxRetries: 0 });
const errors = [];
analytics.on("error", (err) => errors.push(String(err?.reason ?? err?.code ?? err)));

// Callbacks fire in whatever order the batch settles; keep each event at its call's place.
const sent = [];
const delivered = [];
const send = (method, params) => {
  const place = delivered.length;
  delivered.push(
    new Promise((resolve) =>
      analytics[method](params, (err, ctx) => {
        if (err) errors.push(`${method}: ${err?.reason ?? err}`);
        else sent[place] = ctx.event;
        resolve();
      }),
    ),
  );
};

send("identify", { userId: "node-user-1", traits: { email: "grace@example.com", plan: "team" } });
send("track", { userId: "node-user-1", event: "Order Completed", properties: { total: 42.5, items: 2 } });
send("group", { userId: "node-user-1", groupId: "node-group-1", traits: { name: "Initech", seats: 40 } });
send("alias", { userId: "node-user-2", previousId: "node-user-1" });

await analytics.closeAndFlush({ timeout: 20_000 });
await Promise.all(delivered);
if (errors.length) {
  console.error(JSON.stringify(errors));
  process.exit(1);
}
console.log(JSON.stringify(sent));

// A TCP proxy that stands for the network between one node and PostgreSQL,
// so a test can cut it: reset every connection, or stall them.

import net from "node:net";

import { sleep } from "./harness.mjs";

/**
 * A TCP proxy on 127.0.0.1:0 in front of `targetPort`: one node's road to
 * PostgreSQL. `reset()` ends every open connection with a RST; `stall(ms)`
 * stops forwarding (both ways, new connections too) for `ms`, then delivers
 * what it held. `upstreamPorts()` are the local ports of its connections to
 * the target: PostgreSQL sees them as `client_port`, which tells whose a
 * session is.
 */
export async function startPgProxy(targetPort) {
  const pairs = new Set();
  let stalled = false;
  const server = net.createServer((down) => {
    const up = net.connect(targetPort, "127.0.0.1");
    const pair = { down, up, held: [] };
    pairs.add(pair);
    const end = () => {
      pairs.delete(pair);
      down.destroy();
      up.destroy();
    };
    const forward = (from, to) =>
      from.on("data", (chunk) => {
        if (stalled) pair.held.push([to, chunk]);
        else to.write(chunk);
      });
    forward(down, up);
    forward(up, down);
    for (const s of [down, up]) {
      s.on("error", end);
      s.on("close", end);
    }
  });
  await new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", resolve);
  });
  const proxy = {
    port: server.address().port,
    upstreamPorts() {
      return new Set([...pairs].map((p) => p.up.localPort).filter(Boolean));
    },
    reset() {
      const n = pairs.size;
      for (const { down, up } of [...pairs]) {
        down.resetAndDestroy();
        up.resetAndDestroy();
      }
      pairs.clear();
      return n;
    },
    async stall(ms) {
      stalled = true;
      await sleep(ms);
      stalled = false;
      for (const pair of pairs) {
        for (const [to, chunk] of pair.held) if (!to.destroyed) to.write(chunk);
        pair.held = [];
      }
    },
    async stop() {
      stalled = false;
      for (const { down, up } of [...pairs]) {
        down.destroy();
        up.destroy();
      }
      pairs.clear();
      await new Promise((resolve) => server.close(() => resolve()));
    },
  };
  return proxy;
}

// A load balancer without sticky sessions, for the cluster tests: every HTTP
// request goes to the next of N upstreams in turn (negotiate, each poll, each
// POST, each event stream), responses are streamed through as they come
// (Server-Sent Events), and a WebSocket upgrade is passed, as raw TCP, to
// the next upstream too. Node built-ins only.

import http from "node:http";
import net from "node:net";

import { withTimeout } from "./harness.mjs";

// Hop-by-hop headers (RFC 9110 7.6.1) are the proxy's own business.
const HOP_BY_HOP = new Set(["connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade"]);

function endToEnd(headers) {
  const out = {};
  for (const [k, v] of Object.entries(headers)) if (!HOP_BY_HOP.has(k.toLowerCase())) out[k] = v;
  return out;
}

/**
 * Starts the proxy on 127.0.0.1:0 in front of `upstreams` (objects with a
 * `port`, read at each request, e.g. cluster nodes). It can stand in for a
 * server in `connect` / `connectPair` (`base`, `clients`). `log` records
 * `{method, url, port}` for every request and upgrade. `stop()` closes those
 * clients, then every socket, then the listener. With `t`, registers
 * `t.after(() => proxy.stop())`.
 */
export async function startRoundRobinProxy(t, upstreams) {
  let turn = 0;
  const next = () => upstreams[turn++ % upstreams.length];
  const sockets = new Set();
  const track = (s) => {
    sockets.add(s);
    s.once("close", () => sockets.delete(s));
  };

  const server = http.createServer((req, res) => {
    const upstream = next();
    proxy.log.push({ method: req.method, url: req.url, port: upstream.port });
    const out = http.request(
      {
        host: "127.0.0.1",
        port: upstream.port,
        method: req.method,
        path: req.url,
        headers: endToEnd(req.headers),
        agent: false,
      },
      (answer) => {
        res.writeHead(answer.statusCode, answer.statusMessage, endToEnd(answer.headers));
        res.flushHeaders(); // an event stream's head goes out at once
        answer.on("data", (chunk) => res.write(chunk));
        answer.on("end", () => res.end());
        answer.on("error", () => res.destroy());
      },
    );
    out.on("error", (err) => {
      if (!res.headersSent) {
        res.writeHead(502, { "content-type": "text/plain" });
        res.end(`round-robin proxy: upstream ${upstream.port}: ${err.message}`);
      } else res.destroy();
    });
    out.on("socket", track);
    // The client went away (a closed event stream, an aborted poll): so does the upstream request.
    res.on("close", () => {
      if (!res.writableFinished) out.destroy();
    });
    req.pipe(out);
  });

  server.on("connection", track);
  server.on("upgrade", (req, socket, head) => {
    const upstream = next();
    proxy.log.push({ method: req.method, url: req.url, port: upstream.port, upgrade: true });
    const up = net.connect(upstream.port, "127.0.0.1");
    track(up);
    const end = () => {
      socket.destroy();
      up.destroy();
    };
    socket.on("error", end);
    socket.on("close", end);
    up.on("error", end);
    up.on("close", end);
    up.once("connect", () => {
      let text = `${req.method} ${req.url} HTTP/${req.httpVersion}\r\n`;
      for (let i = 0; i < req.rawHeaders.length; i += 2) text += `${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}\r\n`;
      up.write(text + "\r\n");
      if (head.length) up.write(head);
      up.pipe(socket);
      socket.pipe(up);
    });
  });

  const proxy = {
    base: undefined,
    port: undefined,
    clients: new Set(),
    log: [],
    /** The upstream ports that got requests (optionally only those whose URL matches `pattern`). */
    portsUsed(pattern) {
      return new Set(proxy.log.filter((e) => !pattern || pattern.test(e.url)).map((e) => e.port));
    },
    async stop() {
      const clients = [...proxy.clients];
      proxy.clients.clear();
      await Promise.allSettled(clients.map((c) => withTimeout(Promise.resolve(c.close()), 5000, "client stop")));
      for (const s of sockets) s.destroy();
      await new Promise((resolve) => server.close(() => resolve()));
    },
  };
  if (t) t.after(() => proxy.stop());
  await new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", resolve);
  });
  proxy.port = server.address().port;
  proxy.base = `http://127.0.0.1:${proxy.port}`;
  return proxy;
}

// Transports x hub protocols: the pairs the hub serves, the official client
// on any of them, and raw clients of each transport for what the official
// client cannot do or hides (stop reading, stop polling, look at the bytes):
// Long Polling and Server-Sent Events over plain HTTP, WebSockets on a bare
// TCP socket.

import http from "node:http";
import net from "node:net";
import crypto from "node:crypto";
import assert from "node:assert/strict";

import { MessagePackHubProtocol } from "@microsoft/signalr-protocol-msgpack";
import { signalR, connect, negotiate, RS, waitFor, withTimeout } from "./harness.mjs";

export { MessagePackHubProtocol };

/**
 * Every transport x protocol pair the hub serves (docs: issue #16), and the
 * WebSockets+json pair again on the dedicated WebSocket adapter. `env` is
 * what the server must be started with for the pair.
 */
export const PAIRS = [
  { name: "WebSockets+json", transport: "WebSockets", protocol: "json", env: {} },
  { name: "WebSockets+messagepack", transport: "WebSockets", protocol: "messagepack", env: {} },
  { name: "ServerSentEvents+json", transport: "ServerSentEvents", protocol: "json", env: {} },
  { name: "LongPolling+json", transport: "LongPolling", protocol: "json", env: {} },
  { name: "LongPolling+messagepack", transport: "LongPolling", protocol: "messagepack", env: {} },
  {
    name: "WebSockets+json on the dedicated adapter",
    transport: "WebSockets",
    protocol: "json",
    env: { SMARTSCHEDULER_HUB_WEBSOCKET: "dedicated" },
  },
];

/** The reference pair: what the other pairs' payloads are compared with. */
export const WS_JSON = PAIRS[0];

/** The five transport x protocol pairs (without the second WebSocket adapter). */
export const TRANSPORT_PAIRS = PAIRS.slice(0, 5);

/** The class name of the official client's transport for each HttpTransportType name. */
const TRANSPORT_CLASS = {
  WebSockets: "WebSocketTransport",
  ServerSentEvents: "ServerSentEventsTransport",
  LongPolling: "LongPollingTransport",
};

/**
 * {@link connect}'s options for `pair`: only that transport (no fallback) and
 * its hub protocol, merged with `opts` (a `configure` of `opts` runs after the
 * protocol is set). A missing `pair` leaves the client's defaults.
 */
export function pairOptions(pair, opts = {}) {
  if (!pair) return opts;
  const httpOptions = { ...(opts.httpOptions ?? {}), transport: signalR.HttpTransportType[pair.transport] };
  const configure = (builder) => {
    let b = builder;
    if (pair.protocol === "messagepack") b = b.withHubProtocol(new MessagePackHubProtocol());
    if (opts.configure) b = opts.configure(b);
    return b;
  };
  return { ...opts, httpOptions, configure };
}

/**
 * The official client on `pair` (see {@link connect}: `client.connection`,
 * `client.events`...), started unless `opts.start === false`. `server` is
 * anything with `base` and `clients` (a server, a node, a proxy).
 */
export function connectPair(server, token, pair, opts = {}) {
  return connect(server, token, pairOptions(pair, opts));
}

/** Asserts that a started official client really runs `pair` (transport class and protocol name). */
export function assertOnPair(client, pair) {
  const transport = client.connection.connection.transport;
  assert.equal(transport?.constructor?.name, TRANSPORT_CLASS[pair.transport], `${pair.name}: the transport in use`);
  assert.equal(client.connection._protocol.name, pair.protocol, `${pair.name}: the hub protocol in use`);
}

/**
 * A dispatcher client the way docs/realtime.md recommends: tracks the last
 * sequence seen and rejoins with it after every reconnect. Reconnect attempts
 * wait on `gate` (through the token factory) so a test can decide what happens
 * while the client is away. `pair` picks a transport and protocol (default:
 * the client's own choice).
 */
export async function resilientDispatcher(server, token, region, { pair } = {}) {
  let gate = Promise.resolve();
  let openGate = () => {};
  const state = { lastSeq: undefined, reconnecting: 0, reconnected: 0, rejoins: [], rejoinErrors: [] };
  const client = await connectPair(server, null, pair, {
    start: false,
    reconnect: { nextRetryDelayInMilliseconds: (ctx) => (ctx.elapsedMilliseconds > 60_000 ? null : 200) },
    accessTokenFactory: async () => {
      await gate;
      return token;
    },
    onEvent: (payload) => {
      if (state.lastSeq === undefined || payload.sequence > state.lastSeq) state.lastSeq = payload.sequence;
    },
  });
  const { connection } = client;
  connection.onreconnecting(() => {
    state.reconnecting++;
    gate = new Promise((resolve) => (openGate = resolve));
  });
  connection.onreconnected(async () => {
    state.reconnected++;
    try {
      state.rejoins.push(await connection.invoke("JoinDispatchGroup", region, state.lastSeq ?? 0));
    } catch (err) {
      state.rejoinErrors.push(err);
    }
  });
  await withTimeout(connection.start(), 15_000, "HubConnection.start()");
  state.joined = await connection.invoke("JoinDispatchGroup", region);
  return { client, state, openGate: () => openGate() };
}

// ---------------------------------------------------------------------------
// Records of either protocol

const msgpack = new MessagePackHubProtocol();
const nullLogger = signalR.NullLogger.instance;

/** The handshake request record for `protocol` (always JSON text). */
export const handshakeRecord = (protocol = "json", version = 1) => JSON.stringify({ protocol, version }) + RS;

/**
 * Encodes hub messages (objects like `{type: 1, invocationId, target,
 * arguments}`) the way a client of `protocol` sends them: JSON records, or
 * length-prefixed MessagePack. Returns a Buffer.
 */
export function encodeRecords(protocol, ...messages) {
  if (protocol === "messagepack") {
    return Buffer.concat(messages.map((m) => Buffer.from(msgpack.writeMessage({ headers: {}, ...m }))));
  }
  return Buffer.from(messages.map((m) => JSON.stringify(m) + RS).join(""));
}

/** An invocation message of `target` with `args` (`invocationId` undefined: a send). */
export const invocation = (invocationId, target, ...args) => {
  const m = { type: 1, target, arguments: args };
  if (invocationId !== undefined) m.invocationId = invocationId;
  return m;
};

/**
 * Splits what a server sends on one connection into records, whatever the
 * chunks: first the JSON handshake reply (up to the first 0x1E), then JSON
 * records or length-prefixed MessagePack messages. `push(buffer)` returns the
 * records completed by that chunk; `records` holds them all (the handshake
 * reply first, as parsed JSON; an undecodable record as `{unparsable}`).
 */
export function recordReader(protocol = "json") {
  let tail = Buffer.alloc(0);
  let handshakeSeen = false;
  const reader = {
    records: [],
    texts: [], // JSON record texts, for messages
    push(chunk) {
      tail = Buffer.concat([tail, Buffer.from(chunk)]);
      const out = [];
      for (;;) {
        if (!handshakeSeen || protocol !== "messagepack") {
          const end = tail.indexOf(0x1e);
          if (end < 0) break;
          const text = tail.subarray(0, end).toString("utf8");
          tail = tail.subarray(end + 1);
          handshakeSeen = true;
          reader.texts.push(text);
          let record;
          try {
            record = JSON.parse(text);
          } catch {
            record = { unparsable: text };
          }
          out.push(record);
          continue;
        }
        // MessagePack: a VarInt length (7 bits a byte, low first), then the message.
        let length = 0;
        let prefix = 0; // bytes of the length, once complete
        for (let i = 0; i < Math.min(5, tail.length); i++) {
          length += (tail[i] & 0x7f) * 2 ** (7 * i);
          if ((tail[i] & 0x80) === 0) {
            prefix = i + 1;
            break;
          }
        }
        if (!prefix) break;
        const total = prefix + length;
        if (tail.length < total) break;
        const bytes = new Uint8Array(tail.subarray(0, total));
        tail = tail.subarray(total);
        let records;
        try {
          records = msgpack.parseMessages(bytes.slice().buffer, nullLogger);
        } catch (err) {
          records = [{ unparsable: Buffer.from(bytes).toString("hex"), error: err.message }];
        }
        out.push(...records);
      }
      reader.records.push(...out);
      return out;
    },
    /** Bytes received and not yet a whole record. */
    get pending() {
      return tail.length;
    },
  };
  return reader;
}

/** The JobAssigned payloads among `records`. */
export const eventsOf = (records) => records.filter((r) => r.type === 1 && r.target === "JobAssigned").map((r) => r.arguments[0]);

/**
 * Common methods of the raw clients below, over their `records`.
 * `keepAlive(ms, sendPing)`: sends a Ping record every `ms` until `stopKeepAlive()`
 * (the server closes a client that sends nothing for 30 s, reading or not).
 */
function recordMethods(raw) {
  let timer;
  return {
    keepAlive(ms, sendPing) {
      clearInterval(timer);
      timer = setInterval(() => Promise.resolve(sendPing()).catch(() => {}), ms);
      timer.unref();
    },
    stopKeepAlive() {
      clearInterval(timer);
    },
    waitForRecord(predicate, timeoutMs = 5000, what = "a record") {
      return waitFor(
        () => raw.records.find(predicate),
        timeoutMs,
        () => `${what}; got ${JSON.stringify(raw.records).slice(0, 2000)}`,
      );
    },
    completion(invocationId) {
      return raw.records.find((r) => r.type === 3 && r.invocationId === invocationId);
    },
    events() {
      return eventsOf(raw.records);
    },
    sequences() {
      return eventsOf(raw.records).map((e) => e.sequence);
    },
  };
}

// ---------------------------------------------------------------------------
// Raw HTTP: Long Polling and Server-Sent Events

/** The hub endpoint with `?id=` (left out when `id` is undefined). */
export function hubUrl(server, id) {
  return `${server.base}/hubs/jobs${id === undefined ? "" : `?id=${encodeURIComponent(id)}`}`;
}

const bearer = (token) => (token ? { authorization: `Bearer ${token}` } : {});

/** Reads a fetch Response into `{status, headers, contentType, body (Buffer), text, json}`. */
async function readResponse(res) {
  const body = Buffer.from(await res.arrayBuffer());
  const text = body.toString("utf8");
  let json;
  try {
    json = text ? JSON.parse(text) : undefined;
  } catch {
    json = undefined;
  }
  return { status: res.status, headers: res.headers, contentType: res.headers.get("content-type") ?? "", body, text, json };
}

/** One Long Polling GET of connection `id`; `signal` aborts it. See {@link readResponse}. */
export async function lpPoll(server, token, id, { signal, headers = {} } = {}) {
  const res = await fetch(hubUrl(server, id), { headers: { ...bearer(token), ...headers }, signal });
  return readResponse(res);
}

/** POST `body` (string or bytes) to connection `id`. See {@link readResponse}. */
export async function hubPost(server, token, id, body, { headers = {} } = {}) {
  const res = await fetch(hubUrl(server, id), {
    method: "POST",
    headers: { "content-type": "application/octet-stream", ...bearer(token), ...headers },
    body,
  });
  return readResponse(res);
}

/** DELETE connection `id`. See {@link readResponse}. */
export async function hubDelete(server, token, id) {
  const res = await fetch(hubUrl(server, id), { method: "DELETE", headers: bearer(token) });
  return readResponse(res);
}

/** Negotiates (negotiateVersion 1) and returns the connection token; asserts 200. */
export async function negotiateId(server, token) {
  const n = await negotiate(server, token);
  assert.equal(n.status, 200, `negotiate: ${n.text}`);
  return n.json.connectionToken;
}

/**
 * A Long Polling connection driven by hand: negotiate, first poll (asserted
 * 200 and empty), the handshake POST and the poll that brings `{}\x1e`
 * (unless `handshake: false`). Polls only when told: `poll()` (one GET; 200
 * bodies are split into `records`), `pollUntil(predicate)`, `invoke(...)`
 * (POST an invocation and poll until its Completion). `send(...messages)`
 * POSTs records. Every response is kept in `responses`.
 */
export async function rawLongPolling(server, token, { protocol = "json", id, handshake = true } = {}) {
  id ??= await negotiateId(server, token);
  const reader = recordReader(protocol);
  const controllers = new Set();
  const lp = {
    id,
    protocol,
    records: reader.records,
    responses: [],
    ...recordMethods(reader),
    async poll({ timeoutMs } = {}) {
      const controller = new AbortController();
      controllers.add(controller);
      const timer = timeoutMs ? setTimeout(() => controller.abort(), timeoutMs) : undefined;
      try {
        const res = await lpPoll(server, token, id, { signal: controller.signal });
        lp.responses.push(res);
        if (res.status === 200) reader.push(res.body);
        return res;
      } finally {
        clearTimeout(timer);
        controllers.delete(controller);
      }
    },
    /** Polls until a record matches; rejects on a non-200 poll or after `timeoutMs`. */
    async pollUntil(predicate, timeoutMs = 10_000, what = "a record") {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const found = reader.records.find(predicate);
        if (found) return found;
        const left = deadline - Date.now();
        if (left <= 0) throw new Error(`timed out after ${timeoutMs} ms polling for ${what}; got ${JSON.stringify(reader.records).slice(0, 2000)}`);
        let res;
        try {
          res = await lp.poll({ timeoutMs: left });
        } catch (err) {
          if (err.name === "AbortError") continue;
          throw err;
        }
        if (res.status !== 200) {
          throw new Error(`poll for ${what} answered ${res.status} ${res.text}; got ${JSON.stringify(reader.records).slice(0, 2000)}`);
        }
      }
    },
    send(...messages) {
      return hubPost(server, token, id, encodeRecords(protocol, ...messages));
    },
    /** POSTs a Ping every `ms` (see recordMethods' keepAlive). */
    pingEvery(ms = 5000) {
      lp.keepAlive(ms, () => lp.send({ type: 6 }));
    },
    async invoke(invocationId, target, ...args) {
      const posted = await lp.send(invocation(invocationId, target, ...args));
      assert.equal(posted.status, 200, `POST ${target}: ${posted.status} ${posted.text}`);
      return lp.pollUntil((r) => r.type === 3 && r.invocationId === invocationId, 10_000, `Completion ${invocationId}`);
    },
    delete() {
      return hubDelete(server, token, id);
    },
    /** Aborts the polls in flight (client side only). */
    close() {
      lp.stopKeepAlive();
      for (const c of controllers) c.abort();
      controllers.clear();
    },
  };
  server.clients.add(lp);
  if (handshake) {
    const first = await lp.poll();
    assert.equal(first.status, 200, `first poll: ${first.status} ${first.text}`);
    assert.equal(first.body.length, 0, `first poll is empty: ${JSON.stringify(first.text)}`);
    const posted = await hubPost(server, token, id, handshakeRecord(protocol));
    assert.equal(posted.status, 200, `handshake POST: ${posted.status} ${posted.text}`);
    const reply = await lp.pollUntil(() => reader.records.length > 0, 10_000, "the handshake reply");
    assert.deepEqual(reply, {}, `the handshake reply: ${JSON.stringify(reader.records)}`);
  }
  return lp;
}

/**
 * A Server-Sent Events stream on node:http (so that `stopReading()` really
 * stops reading: Node stops reading the socket once the response's buffer is
 * full): GET with `Accept: text/event-stream`. Resolves once the response
 * head arrived; `status`, `headers`; for a 200, every byte in `raw`, the
 * events' data in `data`, records in `records`. Unless `handshake: false`,
 * POSTs the handshake and waits for `{}`. `send(...messages)` POSTs records,
 * `invoke(...)` POSTs an invocation and waits for its Completion on the
 * stream, `close()` ends the stream from the client side.
 */
export async function rawSse(server, token, { protocol = "json", id, handshake = true, headers = {} } = {}) {
  id ??= await negotiateId(server, token);
  const reader = recordReader(protocol);
  let eventTail = "";
  const sse = {
    id,
    status: undefined,
    headers: undefined,
    raw: "",
    data: [], // the data of each event, as sent
    records: reader.records,
    ended: false,
    ...recordMethods(reader),
    send(...messages) {
      return hubPost(server, token, id, encodeRecords(protocol, ...messages));
    },
    /** POSTs a Ping every `ms` (see recordMethods' keepAlive). */
    pingEvery(ms = 5000) {
      sse.keepAlive(ms, () => sse.send({ type: 6 }));
    },
    async invoke(invocationId, target, ...args) {
      const posted = await sse.send(invocation(invocationId, target, ...args));
      assert.equal(posted.status, 200, `POST ${target}: ${posted.status} ${posted.text}`);
      return sse.waitForRecord((r) => r.type === 3 && r.invocationId === invocationId, 10_000, `Completion ${invocationId}`);
    },
    waitForEnd(timeoutMs = 10_000) {
      return waitFor(() => sse.ended, timeoutMs, "the event stream to end");
    },
    stopReading() {
      res?.pause();
    },
    resumeReading() {
      res?.resume();
    },
    close() {
      sse.stopKeepAlive();
      req.destroy();
    },
  };
  let res;
  const req = http.request(hubUrl(server, id), {
    headers: { accept: "text/event-stream", ...bearer(token), ...headers },
    agent: false,
  });
  sse.endedPromise = new Promise((resolve) => {
    const done = () => {
      sse.ended = true;
      resolve();
    };
    req.on("close", done);
    req.on("error", done);
  });
  server.clients.add(sse);
  await withTimeout(
    new Promise((resolve, reject) => {
      req.once("error", reject);
      req.once("response", (r) => {
        res = r;
        sse.status = r.statusCode;
        sse.headers = r.headers;
        r.on("data", (chunk) => {
          const text = chunk.toString("utf8");
          sse.raw += text;
          if (sse.status !== 200) return;
          // Events end with a blank line; each `data: ` line carries (part of) one record.
          eventTail += text;
          const parts = eventTail.split(/\r\n\r\n|\n\n|\r\r/);
          eventTail = parts.pop();
          for (const part of parts) {
            const lines = part.split(/\r\n|\n|\r/).filter((l) => l.startsWith("data:"));
            if (!lines.length) continue;
            const data = lines.map((l) => l.slice(l.startsWith("data: ") ? 6 : 5)).join("\n");
            sse.data.push(data);
            reader.push(Buffer.from(data, "utf8"));
          }
        });
        r.on("error", () => {});
        r.on("end", () => (sse.ended = true));
        resolve();
      });
      req.end();
    }),
    10_000,
    "the event stream's response head",
  );
  if (handshake) {
    assert.equal(sse.status, 200, `event stream: ${sse.status} ${sse.raw}`);
    const posted = await hubPost(server, token, id, handshakeRecord(protocol));
    assert.equal(posted.status, 200, `handshake POST: ${posted.status} ${posted.text}`);
    const reply = await sse.waitForRecord(() => true, 10_000, "the handshake reply");
    assert.deepEqual(reply, {}, "the handshake reply");
  }
  return sse;
}

// ---------------------------------------------------------------------------
// WebSockets on a bare TCP socket

/** A client WebSocket frame (masked, as RFC 6455 requires of clients): text (opcode 1) or binary (2). */
export function wsFrame(data, opcode = 1) {
  const payload = Buffer.from(data);
  const mask = crypto.randomBytes(4);
  let header;
  if (payload.length < 126) header = Buffer.from([0x80 | opcode, 0x80 | payload.length]);
  else if (payload.length < 65536) {
    header = Buffer.alloc(4);
    header[0] = 0x80 | opcode;
    header[1] = 0x80 | 126;
    header.writeUInt16BE(payload.length, 2);
  } else {
    header = Buffer.alloc(10);
    header[0] = 0x80 | opcode;
    header[1] = 0x80 | 127;
    header.writeBigUInt64BE(BigInt(payload.length), 2);
  }
  return Buffer.concat([header, mask, payload.map((b, i) => b ^ mask[i % 4])]);
}

/**
 * A hub client on a bare TCP socket, so that "stops reading" means it: once
 * paused with no data listener, Node reads nothing more and the kernel
 * buffers fill (a WebSocket library may resume the socket by itself).
 * Negotiates, upgrades, sends the handshake of `protocol` and invokes
 * `join` (`[method, ...args]`, default JoinDispatchGroup north), waiting for
 * its Completion. The server's frames are parsed into `records` (either
 * protocol); `closeFrame` is the server's WebSocket close, if any.
 */
export async function bareWsClient(server, token, { protocol = "json", join = ["JoinDispatchGroup", "north"] } = {}) {
  const id = await negotiateId(server, token);
  const socket = net.connect(server.port, "127.0.0.1");
  await new Promise((resolve, reject) => {
    socket.once("connect", resolve);
    socket.once("error", reject);
  });
  socket.on("error", () => {});
  const reader = recordReader(protocol);
  let head = ""; // the HTTP response head, until the blank line
  let upgraded = false;
  let buffer = Buffer.alloc(0);
  let fragments = [];
  const bare = {
    records: reader.records,
    closeFrame: undefined,
    head: () => head,
    ...recordMethods(reader),
    stopReading() {
      socket.off("data", onData);
      socket.pause();
    },
    resumeReading() {
      socket.on("data", onData);
      socket.resume();
    },
    ended: false,
    closed: new Promise((r) => socket.once("close", r)),
    /** Writes a Ping record every `ms`, reading or not (see recordMethods' keepAlive). */
    pingEvery(ms = 5000) {
      const opcode = protocol === "messagepack" ? 2 : 1;
      bare.keepAlive(ms, () => {
        if (!socket.destroyed) socket.write(wsFrame(encodeRecords(protocol, { type: 6 }), opcode));
      });
    },
    destroy: () => {
      bare.stopKeepAlive();
      socket.destroy();
    },
    close: () => bare.destroy(),
  };
  bare.closed.then(() => {
    bare.ended = true;
    bare.stopKeepAlive();
  });
  const onData = (d) => {
    if (!upgraded) {
      const text = d.toString("latin1");
      const end = (head + text).indexOf("\r\n\r\n");
      if (end < 0) {
        head += text;
        return;
      }
      const all = head + text;
      head = all.slice(0, end + 4);
      upgraded = true;
      d = Buffer.from(all.slice(end + 4), "latin1");
    }
    buffer = Buffer.concat([buffer, d]);
    for (;;) {
      if (buffer.length < 2) return;
      const fin = (buffer[0] & 0x80) !== 0;
      const opcode = buffer[0] & 0x0f;
      let length = buffer[1] & 0x7f;
      let offset = 2;
      if (length === 126) {
        if (buffer.length < 4) return;
        length = buffer.readUInt16BE(2);
        offset = 4;
      } else if (length === 127) {
        if (buffer.length < 10) return;
        length = Number(buffer.readBigUInt64BE(2));
        offset = 10;
      }
      if (buffer[1] & 0x80) offset += 4; // a masked server frame would be a server bug; skip the key
      if (buffer.length < offset + length) return;
      const payload = buffer.subarray(offset, offset + length);
      buffer = buffer.subarray(offset + length);
      if (opcode === 8) bare.closeFrame = { code: payload.length >= 2 ? payload.readUInt16BE(0) : undefined };
      else if (opcode === 9) socket.write(wsFrame(payload, 10));
      else if (opcode === 0 || opcode === 1 || opcode === 2) {
        fragments.push(payload);
        if (fin) {
          reader.push(Buffer.concat(fragments));
          fragments = [];
        }
      }
    }
  };
  socket.on("data", onData);
  socket.write(
    `GET /hubs/jobs?id=${id} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n` +
      `Connection: Upgrade\r\nSec-WebSocket-Key: ${crypto.randomBytes(16).toString("base64")}\r\n` +
      `Sec-WebSocket-Version: 13\r\nAuthorization: Bearer ${token}\r\n\r\n`,
  );
  socket.write(wsFrame(handshakeRecord(protocol)));
  const [method, ...args] = join;
  const opcode = protocol === "messagepack" ? 2 : 1;
  socket.write(wsFrame(encodeRecords(protocol, invocation("1", method, ...args)), opcode));
  server.clients.add(bare);
  await waitFor(() => bare.completion("1") || bare.ended, 5000, () => `the join Completion; head ${JSON.stringify(head)}`);
  assert.match(head, /^HTTP\/1\.1 101/);
  assert.deepEqual(reader.records[0], {}, "the handshake reply first");
  const done = bare.completion("1");
  assert.ok(done && done.error === undefined, `the join: ${JSON.stringify(done)}`);
  return bare;
}

// A client that stops reading: it delays neither assignment responses nor
// other clients, the server closes it (allowReconnect), and it catches up by
// rejoining with the last sequence it processed.
import { test } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import crypto from "node:crypto";
import {
  T, startServer, connect, negotiate, dispatcherToken, waitFor, withTimeout, pool, RS,
} from "./lib/harness.mjs";

/** A client WebSocket text frame (masked, as RFC 6455 requires of clients). */
function frame(text) {
  const payload = Buffer.from(text);
  const mask = crypto.randomBytes(4);
  let header;
  if (payload.length < 126) header = Buffer.from([0x81, 0x80 | payload.length]);
  else {
    header = Buffer.alloc(4);
    header[0] = 0x81;
    header[1] = 0x80 | 126;
    header.writeUInt16BE(payload.length, 2);
  }
  return Buffer.concat([header, mask, payload.map((b, i) => b ^ mask[i % 4])]);
}

/**
 * A hub client on a bare TCP socket, so that "stops reading" means it: once
 * paused with no data listener, Node reads nothing more and the kernel
 * buffers fill (a WebSocket library may resume the socket by itself).
 */
async function bareClient(server, token) {
  const { json } = await negotiate(server, token);
  const socket = net.connect(server.port, "127.0.0.1");
  await new Promise((r) => socket.once("connect", r));
  let received = Buffer.alloc(0);
  const onData = (d) => (received = Buffer.concat([received, d]));
  socket.on("data", onData);
  socket.write(
    `GET /hubs/jobs?id=${json.connectionToken} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n` +
      `Connection: Upgrade\r\nSec-WebSocket-Key: ${crypto.randomBytes(16).toString("base64")}\r\n` +
      `Sec-WebSocket-Version: 13\r\nAuthorization: Bearer ${token}\r\n\r\n`,
  );
  socket.write(frame(JSON.stringify({ protocol: "json", version: 1 }) + RS));
  socket.write(frame(JSON.stringify({ type: 1, invocationId: "1", target: "JoinDispatchGroup", arguments: ["north"] }) + RS));
  const text = () => received.toString("latin1");
  await waitFor(() => /"invocationId":"1"/.test(text()), 5000, "the join Completion");
  assert.match(text(), /^HTTP\/1\.1 101/);
  return {
    stopReading() {
      socket.off("data", onData);
      socket.pause();
    },
    resumeReading() {
      socket.on("data", onData);
      socket.resume();
    },
    text,
    /** Sequences of the JobAssigned records received. */
    sequences: () => [...text().matchAll(/"target":"JobAssigned".*?"sequence":(\d+)/g)].map((m) => Number(m[1])),
    closed: new Promise((r) => socket.once("close", r)),
    destroy: () => socket.destroy(),
  };
}

// The largest title (200 four-byte characters) makes each event ~1.7 KB.
const TITLE = "🪵".repeat(200);

test("a paused client is closed without slowing anyone, then catches up with afterSequence", T, async (t) => {
  // Queue bounds small enough that a stalled socket overflows them after a
  // few MB of kernel buffers, large enough for a reader's bursts.
  const server = await startServer(t, {
    env: { SMARTSCHEDULER_HUB_QUEUE_MESSAGES: "256", SMARTSCHEDULER_HUB_QUEUE_BYTES: "131072" },
  });
  const token = await dispatcherToken(["north"]);
  const fast = await connect(server, token);
  await fast.connection.invoke("JoinDispatchGroup", "north");

  const slow = await bareClient(server, token);
  t.after(() => slow.destroy());
  // Stop reading: the kernel buffers fill, then the server's queue.
  slow.stopReading();

  const contractor = await server.createContractor("north");
  const N = 4500;
  const jobs = await pool(Array.from({ length: N }), 16, () => server.createJob("north", { title: TITLE }));
  const started = Date.now();
  const latencies = [];
  const assignments = await pool(jobs, 16, async (job) => {
    const t0 = Date.now();
    const a = await server.assign(job.id, contractor.id);
    latencies.push(Date.now() - t0);
    return a;
  });
  const elapsed = Date.now() - started;
  assert.equal(assignments.length, N, "every assignment answered 201");

  // The reading client got everything, in order, while the other one stalled.
  await fast.waitForEvents(N, 60_000);
  const seqs = fast.bySequence();
  assert.ok(seqs.every((s, i) => i === 0 || s > seqs[i - 1]), "in increasing sequence");
  assert.equal(new Set(fast.events.map((e) => e.eventId)).size, N);

  // The server closed the stalled client as too slow.
  await waitFor(async () => {
    const text = await (await fetch(`${server.base}/metrics`)).text();
    const m = text.match(/^smartscheduler_hub_slow_client_closes (\d+)/m);
    return m && Number(m[1]) >= 1;
  }, 30_000, "a slow-client close in /metrics");
  const sorted = [...latencies].sort((a, b) => a - b);
  t.diagnostic(`assign p50 ${sorted[Math.floor(N / 2)]} ms, p99 ${sorted[Math.floor(N * 0.99)]} ms, ${N} in ${elapsed} ms`);

  // Reading again, the client drains what the kernel held, then the server's
  // side ends: with a Close that allows reconnecting when the socket had room
  // for it, else a plain end (which the official client also reconnects on).
  slow.resumeReading();
  await withTimeout(slow.closed, 30_000, "the stalled connection to end");
  const close = slow.text().match(/\{"type":7[^\x1e]*\}/);
  if (close) {
    const record = JSON.parse(close[0]);
    assert.equal(record.allowReconnect, true);
    assert.match(record.error, /did not keep up/);
  }

  // It catches up: rejoin with the last sequence it processed.
  const got = slow.sequences();
  const last = got.length ? got[got.length - 1] : 0;
  assert.ok(got.length < N, "it really fell behind");
  const again = await connect(server, token);
  const result = await again.connection.invoke("JoinDispatchGroup", "north", last);
  await again.waitForEvents(N - got.length, 30_000);
  assert.equal(result.replayed, N - got.length);
  const all = [...got, ...again.bySequence()];
  assert.equal(new Set(all).size, N, "nothing missed, nothing twice");
  assert.deepEqual(new Set(all), new Set(seqs), "exactly the events the reader got");
});

// A client that stops reading: it delays neither assignment responses nor
// other clients, the server closes it (allowReconnect), and it catches up by
// rejoining with the last sequence it processed.
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  T, startServer, connect, dispatcherToken, waitFor, withTimeout, pool,
} from "./lib/harness.mjs";
import { bareWsClient } from "./lib/transports.mjs";

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

  // A hub client on a bare TCP socket (lib/transports.mjs), so that "stops reading" means it.
  const slow = await bareWsClient(server, token);
  t.after(() => slow.destroy());
  // Pings keep it from the 30 s client timeout however long the burst takes:
  // it must be closed for not reading.
  slow.pingEvery(5000);
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
  const close = slow.records.find((r) => r.type === 7);
  if (close) {
    assert.equal(close.allowReconnect, true);
    assert.match(close.error, /did not keep up/);
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

// Ordering under concurrency (replay with afterSequence: delivery.test.mjs).

import { test } from "node:test";
import assert from "node:assert/strict";

import { startServer, dispatcherToken, sleep, pool, T } from "./lib/harness.mjs";

function assertStrictlyIncreasing(sequences, what) {
  for (let i = 1; i < sequences.length; i++) {
    assert.ok(sequences[i] > sequences[i - 1], `${what}: sequence ${sequences[i]} at #${i} follows ${sequences[i - 1]}`);
  }
}

test("200 concurrent assignments reach the north dispatcher once each, in strictly increasing sequence", T, async (t) => {
  const server = await startServer(t);
  const N = 200;
  const dispatcher = await server.connect(await dispatcherToken(["north"]));
  await dispatcher.connection.invoke("JoinDispatchGroup", "north");

  const indexes = Array.from({ length: N }, (_, i) => i);
  const jobs = await pool(indexes, 20, (i) => server.createJob("north", { title: `Job ${i}` }));
  const contractors = await pool(indexes, 20, (i) => server.createContractor("north", { name: `Contractor ${i}` }));

  const assignments = await Promise.all(indexes.map((i) => server.assign(jobs[i].id, contractors[i].id)));
  const expected = new Set(assignments.map((a) => a.eventId));
  assert.equal(expected.size, N, "every assignment has its own eventId");

  await dispatcher.waitForEvents(N, 60_000);
  await sleep(1000); // anything extra (a duplicate) would show up now
  const got = dispatcher.events;
  assert.equal(got.length, N, "exactly one copy of each");
  assert.deepEqual(new Set(got.map((e) => e.eventId)), expected, "the 200 eventIds of the assignments");
  assertStrictlyIncreasing(got.map((e) => e.sequence), "arrival order");

  // The sequences are the EventLog's.
  const token = await server.adminToken();
  const page = await server.expect(200, "GET", `/api/events?afterSequence=0&limit=1000`, { token });
  const logged = new Map(page.items.map((e) => [e.eventId, e.sequence]));
  for (const e of got) assert.equal(e.sequence, logged.get(e.eventId), `sequence of ${e.eventId}`);
});

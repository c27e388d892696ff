// acknowledge: true — each JobAssigned is acknowledged once its handlers have
// returned, and the dispatcher hears JobAssignmentAcknowledged.

import { test } from "node:test";
import assert from "node:assert/strict";

import { harness, recordedFeed, waitForEvent } from "./support.js";

const { startServer, dispatcherToken, contractorToken, waitFor, sleep, T } = harness;

test("a contractor feed with acknowledge: true acknowledges each JobAssigned after its handlers; the dispatcher sees it", T, async (t) => {
  const server = await startServer(t);
  const contractor = await server.createContractor("north");
  const dispatcher = recordedFeed(t, server, await dispatcherToken(["north"]), [{ dispatch: "north" }]);
  await dispatcher.feed.start();
  const arrivals = new Map<string, number>();
  dispatcher.feed.on("JobAssignmentAcknowledged", (e) => void arrivals.set(e.jobAssignedEventId, Date.now()));

  const recorded = new Map<string, string>();
  const mine = recordedFeed(t, server, await contractorToken(contractor.id), [{ contractor: contractor.id }], {
    acknowledge: true,
    onAcknowledged: (a) => void recorded.set(a.eventId, a.acknowledgedAtUtc),
  });
  const handled = new Map<string, number>();
  mine.feed.on("JobAssigned", async (e) => {
    await sleep(300); // the acknowledgement waits for this
    handled.set(e.eventId, Date.now());
  });
  await mine.feed.start();

  const ids: string[] = [];
  for (let i = 0; i < 2; i++) ids.push((await server.assignNew("north", contractor.id)).assignment.eventId);
  await waitFor(() => ids.every((id) => arrivals.has(id)), 15_000, "both acknowledgements at the dispatcher");
  for (const id of ids) {
    assert.ok(arrivals.get(id)! >= handled.get(id)!, "acknowledged only after the handler returned");
    const ack = dispatcher.events.find((e) => e.type === "JobAssignmentAcknowledged" && e.jobAssignedEventId === id);
    assert.ok(ack?.type === "JobAssignmentAcknowledged");
    assert.equal(ack.contractorId, contractor.id);
    // onAcknowledged has the time the hub recorded, the one the dispatcher is told.
    assert.equal(new Date(recorded.get(id)!).getTime(), new Date(ack.acknowledgedAtUtc).getTime());
  }
  // The dispatcher's feed: each JobAssigned, then its acknowledgement, in sequence order.
  const sequences = dispatcher.events.map((e) => e.sequence);
  assert.ok(sequences.every((s, i) => i === 0 || s > sequences[i - 1]!), `increasing sequences: ${sequences}`);
  assert.equal(dispatcher.events.filter((e) => e.type === "JobAssignmentAcknowledged").length, 2, "each acknowledged once");
  const first = await waitForEvent(mine, ids[0]!);
  assert.equal(first.type, "JobAssigned");
  assert.deepEqual(mine.errors, []);
  assert.deepEqual(dispatcher.errors, []);
});

// The TypeScript types against the service: real events from the running
// binary carry every key the type declares and no other, so a field added,
// renamed or dropped on either side fails here.

import { test } from "node:test";
import assert from "node:assert/strict";

import { ASSIGNED_JOB_KEYS, EVENT_KEYS, FeedEvent, FeedEventType } from "../src/index.js";
import { harness, recordedFeed, waitForEvent } from "./support.js";

const { startServer, dispatcherToken, contractorToken, waitFor, T } = harness;

function assertKeys(what: string, payload: object, declared: readonly PropertyKey[]): void {
  assert.deepEqual(
    Object.keys(payload).sort(),
    [...declared].map(String).sort(),
    `${what}: the keys the service sends are the keys the type declares`,
  );
}

test("JobAssigned, JobAssignmentAcknowledged and JobAssignmentUnacknowledged match their TypeScript types", T, async (t) => {
  // A one-second deadline: the second assignment goes unacknowledged.
  const server = await startServer(t, { env: { SMARTSCHEDULER_ACK_DEADLINE_SECONDS: "1" } });
  const contractor = await server.createContractor("north");
  const dispatcher = recordedFeed(t, server, await dispatcherToken(["north"]), [{ dispatch: "north" }]);
  await dispatcher.feed.start();
  const contractorFeed = recordedFeed(t, server, await contractorToken(contractor.id), [{ contractor: contractor.id }]);
  await contractorFeed.feed.start();

  const acknowledged = (await server.assignNew("north", contractor.id)).assignment.eventId;
  await waitForEvent(contractorFeed, acknowledged);
  await contractorFeed.feed.connection.invoke("AcknowledgeEvent", acknowledged);
  const unacknowledged = (await server.assignNew("north", contractor.id)).assignment.eventId;

  const seen = new Map<FeedEventType, FeedEvent>();
  await waitFor(
    () => {
      for (const e of dispatcher.events) seen.set(e.type, e);
      return seen.size === 3;
    },
    15_000,
    () => `one event of each type (got ${[...seen.keys()].join(", ")})`,
  );
  for (const [type, payload] of seen) {
    assert.equal(payload.type, type, "the hub message name is the payload's type");
    assertKeys(type, payload, EVENT_KEYS[type]);
  }
  const assigned = seen.get("JobAssigned");
  assert.ok(assigned?.type === "JobAssigned");
  assertKeys("JobAssigned.job", assigned.job, ASSIGNED_JOB_KEYS);
  assert.equal(seen.get("JobAssignmentAcknowledged")?.eventId !== undefined, true);
  const unack = seen.get("JobAssignmentUnacknowledged");
  assert.ok(unack?.type === "JobAssignmentUnacknowledged");
  assert.equal(unack.jobAssignedEventId, unacknowledged);
  // The contractor's own copy of JobAssigned is the same payload.
  const own = await waitForEvent(contractorFeed, unacknowledged);
  assertKeys("JobAssigned (contractor group)", own, EVENT_KEYS.JobAssigned);
  assert.deepEqual(dispatcher.errors, []);
  assert.deepEqual(contractorFeed.errors, []);
});

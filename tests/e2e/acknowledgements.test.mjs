// Acknowledgements and escalation (issue 19, contract v1.1): the assigned
// contractor acknowledges a JobAssigned with AcknowledgeEvent, north's
// dispatchers get JobAssignmentAcknowledged, and an assignment left
// unacknowledged past SMARTSCHEDULER_ACK_DEADLINE_SECONDS is escalated once
// with JobAssignmentUnacknowledged, across restarts; GET /api/assignments/{id}
// tells where it stands.

import { test } from "node:test";
import assert from "node:assert/strict";

import {
  startServer,
  dispatcherToken,
  contractorToken,
  adminToken,
  signalR,
  sleep,
  waitFor,
  T,
} from "./lib/harness.mjs";
import { assertRefused, assertStrictlyIncreasing } from "./lib/assertions.mjs";
import { PAIRS } from "./lib/transports.mjs";
import {
  ACK_KEYS,
  OVERDUE_KEYS,
  RFC3339_UTC,
  UUID,
  acknowledgementClient,
  counterValue,
  eventRows,
} from "./lib/acknowledgements.mjs";

const WS_MSGPACK = PAIRS.find((p) => p.name === "WebSockets+messagepack");

/** North's dispatcher and the contractor, each joined to its group, and one assignment both have received. */
async function assignedAndReceived(server, { pair } = {}) {
  const contractor = await server.createContractor("north");
  const dispatcher = await acknowledgementClient(server, await dispatcherToken(["north"]));
  const worker = await acknowledgementClient(server, await contractorToken(contractor.id), { pair });
  await dispatcher.connection.invoke("JoinDispatchGroup", "north");
  await worker.connection.invoke("JoinContractorGroup", contractor.id);
  const { job, assignment } = await server.assignNew("north", contractor.id);
  const [assigned] = await Promise.all([worker.waitForEvent(assignment.eventId), dispatcher.waitForEvent(assignment.eventId)]);
  return { contractor, dispatcher, worker, job, assignment, assigned };
}

/** Checks a JobAssignmentAcknowledged or JobAssignmentUnacknowledged payload against the contract and its EventLog row. */
async function assertAckPayload(server, payload, { type, keys, job, assignment, assigned }) {
  assert.deepEqual(Object.keys(payload).sort(), keys, `${type} has exactly the contract's fields`);
  assert.equal(payload.type, type);
  assert.equal(payload.schemaVersion, 1);
  assert.match(payload.eventId, UUID);
  assert.notEqual(payload.eventId, assigned.eventId, "an event of its own");
  assert.ok(
    Number.isSafeInteger(payload.sequence) && payload.sequence > assigned.sequence,
    `sequence ${payload.sequence} follows the JobAssigned's ${assigned.sequence}`,
  );
  assert.match(payload.occurredAtUtc, RFC3339_UTC);
  assert.equal(payload.assignmentId, assignment.assignmentId);
  assert.equal(payload.jobId, job.id);
  assert.equal(payload.contractorId, assignment.contractorId);
  assert.equal(payload.region, "north");
  assert.equal(payload.jobAssignedEventId, assigned.eventId, "points at the JobAssigned");
  const entry = await server.waitPublished(payload.eventId);
  assert.equal(entry.eventType, type);
  assert.equal(entry.sequence, payload.sequence, "sequence equals the EventLog row's");
  assert.deepEqual(entry.publishedGroups, ["dispatch/north"], "published to the dispatch group only");
  const { sequence: _s1, ...withoutSequence } = payload;
  const { sequence: _s2, ...logged } = entry.payload;
  assert.deepEqual(withoutSequence, logged, "the EventLog holds the same payload");
}

async function acknowledgementOf(server, assignmentId, token) {
  token ??= await server.adminToken();
  const got = await server.expect(200, "GET", `/api/assignments/${assignmentId}`, { token });
  return got.acknowledgement;
}

test("the contractor acknowledges a JobAssigned: the result, one JobAssignmentAcknowledged to dispatch/north only, a repeat changes nothing", T, async (t) => {
  const server = await startServer(t);
  const { dispatcher, worker, job, assignment, assigned } = await assignedAndReceived(server);

  const pending = await acknowledgementOf(server, assignment.assignmentId);
  assert.equal(pending.status, "Pending");
  assert.equal(pending.acknowledgedAtUtc, null);
  const deadlineMs = Date.parse(pending.deadlineUtc) - Date.parse(assignment.createdAtUtc);
  assert.ok(Math.abs(deadlineMs - 300_000) < 2000, `the default deadline is 300 s after the assignment (got ${deadlineMs} ms)`);

  const before = Date.now();
  const result = await worker.connection.invoke("AcknowledgeEvent", assigned.eventId);
  assert.deepEqual(Object.keys(result).sort(), ["acknowledgedAtUtc", "eventId"]);
  assert.equal(result.eventId, assigned.eventId);
  assert.match(result.acknowledgedAtUtc, RFC3339_UTC);
  assert.ok(Math.abs(Date.parse(result.acknowledgedAtUtc) - before) < 5000, "acknowledgedAtUtc is now");

  const ack = await dispatcher.waitForAck(assignment.assignmentId);
  await assertAckPayload(server, ack, { type: "JobAssignmentAcknowledged", keys: ACK_KEYS, job, assignment, assigned });
  assert.equal(ack.acknowledgedAtUtc, result.acknowledgedAtUtc, "the event carries the acknowledgement's time");

  const acknowledged = await acknowledgementOf(server, assignment.assignmentId);
  assert.deepEqual(acknowledged, { status: "Acknowledged", acknowledgedAtUtc: result.acknowledgedAtUtc, deadlineUtc: pending.deadlineUtc });

  // A repeat answers with the first time and logs nothing new.
  const logged = await eventRows(server);
  const again = await worker.connection.invoke("AcknowledgeEvent", assigned.eventId);
  assert.deepEqual(again, result, "a repeat returns the first acknowledgement");
  await sleep(1000);
  assert.deepEqual(await eventRows(server), logged, "a repeat logs no event");
  assert.equal(logged.filter((e) => e.eventType === "JobAssignmentAcknowledged").length, 1);
  assert.equal(dispatcher.acks.length, 1, "the dispatcher got one JobAssignmentAcknowledged");
  assert.deepEqual(dispatcher.overdue, [], "nothing was escalated");
  assert.deepEqual(worker.acks, [], "the contractor's group does not get JobAssignmentAcknowledged");
  assert.deepEqual(worker.messages.map((m) => m.target), ["JobAssigned"], "the contractor got its JobAssigned and nothing else");
  const acknowledgedTotal = await counterValue(server, "smartscheduler_assignments_acknowledged_total");
  assert.equal(acknowledgedTotal, 1, "the acknowledgement counter counts the first one only");
  const { text } = await server.request("GET", "/metrics");
  assert.match(text, /^smartscheduler_acknowledgement_seconds_count 1$/m, "one time to acknowledgement was recorded");
});

test("ten acknowledgements at once from two connections of the contractor record one and publish one event", T, async (t) => {
  const server = await startServer(t);
  const { contractor, dispatcher, worker, assignment, assigned } = await assignedAndReceived(server);
  const second = await acknowledgementClient(server, await contractorToken(contractor.id));
  // The second device sends the id in upper case: the same UUID.
  const calls = Array.from({ length: 5 }, () => [
    worker.connection.invoke("AcknowledgeEvent", assigned.eventId),
    second.connection.invoke("AcknowledgeEvent", assigned.eventId.toUpperCase()),
  ]).flat();
  const results = await Promise.all(calls);
  assert.equal(new Set(results.map((r) => JSON.stringify(r))).size, 1, `every call answers the same: ${JSON.stringify(results)}`);
  assert.equal(results[0].eventId, assigned.eventId);
  await dispatcher.waitForAck(assignment.assignmentId);
  await sleep(1000);
  assert.equal(dispatcher.acks.length, 1, "one JobAssignmentAcknowledged delivered");
  assert.equal(dispatcher.acks[0].acknowledgedAtUtc, results[0].acknowledgedAtUtc);
  assert.deepEqual((await eventRows(server)).map((e) => e.eventType), ["JobAssigned", "JobAssignmentAcknowledged"]);
});

test("AcknowledgeEvent refusals reject invoke and leave the connection working", T, async (t) => {
  const server = await startServer(t);
  const { contractor, dispatcher, worker, assignment, assigned } = await assignedAndReceived(server);
  const other = await server.createContractor("north");
  const otherWorker = await acknowledgementClient(server, await contractorToken(other.id));
  const admin = await acknowledgementClient(server, await adminToken());
  dispatcher.probe = ["JoinDispatchGroup", "north"];
  admin.probe = ["JoinDispatchGroup", "north"];
  worker.probe = ["JoinContractorGroup", contractor.id];
  otherWorker.probe = ["JoinContractorGroup", other.id];

  const notAssignee = /AcknowledgeEvent.*Only the contractor the job was assigned to may acknowledge it/;
  await assertRefused(otherWorker, notAssignee, "AcknowledgeEvent", assigned.eventId);
  await assertRefused(dispatcher, notAssignee, "AcknowledgeEvent", assigned.eventId);
  await assertRefused(admin, notAssignee, "AcknowledgeEvent", assigned.eventId);
  const unknown = "3b0d8f52-6c1e-4e39-9a57-0d7b2c4f1e88";
  await assertRefused(worker, new RegExp(`AcknowledgeEvent.*No JobAssigned event has the id ${unknown}`), "AcknowledgeEvent", unknown);
  await assertRefused(worker, /AcknowledgeEvent.*eventId must be a string/, "AcknowledgeEvent", 42);
  await assertRefused(worker, /AcknowledgeEvent.*eventId must be a string/, "AcknowledgeEvent", null);
  await assertRefused(worker, /AcknowledgeEvent.*eventId must be a string/, "AcknowledgeEvent", { eventId: assigned.eventId });
  await assertRefused(worker, /AcknowledgeEvent/, "AcknowledgeEvent", "not-a-uuid");
  await assertRefused(worker, /AcknowledgeEvent/, "AcknowledgeEvent", "");
  await assertRefused(worker, /AcknowledgeEvent.*Expected 1 argument\(s\), got 0/, "AcknowledgeEvent");
  await assertRefused(worker, /AcknowledgeEvent.*Expected 1 argument\(s\), got 2/, "AcknowledgeEvent", assigned.eventId, "extra");

  // Nothing refused was recorded: still Pending, no event logged, nothing sent.
  assert.equal((await acknowledgementOf(server, assignment.assignmentId)).status, "Pending");
  assert.deepEqual((await eventRows(server)).map((e) => e.eventType), ["JobAssigned"]);
  assert.deepEqual(dispatcher.acks, []);

  // The assignee's connection still acknowledges after all that.
  const result = await worker.connection.invoke("AcknowledgeEvent", assigned.eventId);
  assert.equal(result.eventId, assigned.eventId);
  const ack = await dispatcher.waitForAck(assignment.assignmentId);
  // The acknowledgement's own eventId is not a JobAssigned: nothing to acknowledge there.
  await assertRefused(worker, /AcknowledgeEvent.*No JobAssigned event has the id/, "AcknowledgeEvent", ack.eventId);
  for (const c of [dispatcher, worker, otherWorker, admin]) assert.equal(c.state, signalR.HubConnectionState.Connected);
});

test("an unacknowledged assignment is escalated once at the deadline; a late acknowledgement is still published; replay brings both", T, async (t) => {
  const server = await startServer(t, { env: { SMARTSCHEDULER_ACK_DEADLINE_SECONDS: "2" } });
  const { dispatcher, worker, job, assignment, assigned } = await assignedAndReceived(server);
  const pending = await acknowledgementOf(server, assignment.assignmentId);
  assert.equal(pending.status, "Pending");
  const deadlineMs = Date.parse(pending.deadlineUtc) - Date.parse(assignment.createdAtUtc);
  assert.ok(Math.abs(deadlineMs - 2000) < 1000, `the deadline is 2 s after the assignment (got ${deadlineMs} ms)`);

  const overdue = await dispatcher.waitForOverdue(assignment.assignmentId, 10_000);
  await assertAckPayload(server, overdue, { type: "JobAssignmentUnacknowledged", keys: OVERDUE_KEYS, job, assignment, assigned });
  assert.equal(overdue.deadlineUtc, pending.deadlineUtc, "the event carries the stored deadline");
  assert.ok(Date.parse(overdue.occurredAtUtc) >= Date.parse(overdue.deadlineUtc), "escalated after the deadline, not before");

  // The scan runs every second: a few more rounds must not escalate it again.
  await sleep(4000);
  assert.equal(dispatcher.overdue.length, 1, "JobAssignmentUnacknowledged arrived exactly once");
  assert.equal((await eventRows(server)).filter((e) => e.eventType === "JobAssignmentUnacknowledged").length, 1, "logged once");
  assert.deepEqual(worker.messages.map((m) => m.target), ["JobAssigned"], "the contractor's group does not get the escalation");
  assert.deepEqual(await acknowledgementOf(server, assignment.assignmentId), {
    status: "Overdue",
    acknowledgedAtUtc: null,
    deadlineUtc: pending.deadlineUtc,
  });
  assert.equal(await counterValue(server, "smartscheduler_assignments_overdue_total"), 1);

  // Late, but still acknowledged and published.
  const result = await worker.connection.invoke("AcknowledgeEvent", assigned.eventId);
  const ack = await dispatcher.waitForAck(assignment.assignmentId);
  await assertAckPayload(server, ack, { type: "JobAssignmentAcknowledged", keys: ACK_KEYS, job, assignment, assigned });
  assert.equal(ack.acknowledgedAtUtc, result.acknowledgedAtUtc);
  assert.ok(ack.sequence > overdue.sequence);
  assert.deepEqual(await acknowledgementOf(server, assignment.assignmentId), {
    status: "Acknowledged",
    acknowledgedAtUtc: result.acknowledgedAtUtc,
    deadlineUtc: pending.deadlineUtc,
  });
  assert.deepEqual(
    dispatcher.messages.map((m) => m.target),
    ["JobAssigned", "JobAssignmentUnacknowledged", "JobAssignmentAcknowledged"],
    "the dispatcher saw the three events in order",
  );

  // A dispatcher catching up after the JobAssigned gets both, in order, once.
  const late = await acknowledgementClient(server, await dispatcherToken(["north"]));
  const joined = await late.connection.invoke("JoinDispatchGroup", "north", assigned.sequence);
  assert.deepEqual(joined, { group: "dispatch/north", replayed: 2 });
  await waitFor(() => late.messages.length >= 2, 5000, "the replayed events");
  await sleep(500);
  assert.deepEqual(late.messages.map((m) => m.target), ["JobAssignmentUnacknowledged", "JobAssignmentAcknowledged"]);
  assert.deepEqual(late.messages.map((m) => m.payload), [overdue, ack], "replayed payloads equal the live ones");
  assertStrictlyIncreasing(late.messages.map((m) => m.payload.sequence), "replay");

  // And one joining after the escalation's sequence gets only the acknowledgement.
  const later = await acknowledgementClient(server, await dispatcherToken(["north"]));
  assert.deepEqual(await later.connection.invoke("JoinDispatchGroup", "north", overdue.sequence), { group: "dispatch/north", replayed: 1 });
  await waitFor(() => later.messages.length >= 1, 5000, "the replayed acknowledgement");
  assert.deepEqual(later.messages.map((m) => m.payload), [ack]);
});

test("an acknowledgement before the deadline is never escalated", T, async (t) => {
  const server = await startServer(t, { env: { SMARTSCHEDULER_ACK_DEADLINE_SECONDS: "2" } });
  const { dispatcher, worker, assignment, assigned } = await assignedAndReceived(server);
  await worker.connection.invoke("AcknowledgeEvent", assigned.eventId);
  await dispatcher.waitForAck(assignment.assignmentId);
  await sleep(4000);
  assert.deepEqual(dispatcher.overdue, [], "no escalation");
  assert.deepEqual((await eventRows(server)).map((e) => e.eventType), ["JobAssigned", "JobAssignmentAcknowledged"]);
  assert.equal((await acknowledgementOf(server, assignment.assignmentId)).status, "Acknowledged");
});

test("SMARTSCHEDULER_ACK_DEADLINE_SECONDS=0 turns escalation off", T, async (t) => {
  const server = await startServer(t, { env: { SMARTSCHEDULER_ACK_DEADLINE_SECONDS: "0" } });
  const { dispatcher, worker, assignment, assigned } = await assignedAndReceived(server);
  await sleep(3000);
  assert.deepEqual(dispatcher.overdue, []);
  const status = await acknowledgementOf(server, assignment.assignmentId);
  assert.equal(status.status, "Pending");
  assert.equal(status.deadlineUtc, null, "no deadline");
  await worker.connection.invoke("AcknowledgeEvent", assigned.eventId);
  await dispatcher.waitForAck(assignment.assignmentId);
});

test("escalation across a restart: stopped before the deadline, started after it, escalated exactly once", T, async (t) => {
  const deadlineSeconds = 4;
  const server = await startServer(t, { env: { SMARTSCHEDULER_ACK_DEADLINE_SECONDS: String(deadlineSeconds) } });
  const contractor = await server.createContractor("north");
  const { assignment } = await server.assignNew("north", contractor.id);
  const assigned = await server.waitPublished(assignment.eventId);
  const { deadlineUtc } = await acknowledgementOf(server, assignment.assignmentId);

  assert.deepEqual(await server.terminate(), { code: 0, signal: null });
  const stoppedAt = Date.now();
  assert.ok(stoppedAt < Date.parse(deadlineUtc) - 200, `stopped ${Date.parse(deadlineUtc) - stoppedAt} ms before the deadline`);
  await sleep(Math.max(0, Date.parse(deadlineUtc) - Date.now()) + 1500);

  const restartedAt = Date.now();
  await server.start(); // same port, same database
  const dispatcher = await acknowledgementClient(server, await dispatcherToken(["north"]));
  await dispatcher.connection.invoke("JoinDispatchGroup", "north", assigned.sequence);
  const overdue = await dispatcher.waitForOverdue(assignment.assignmentId, 10_000);
  assert.equal(overdue.deadlineUtc, deadlineUtc, "the stored deadline survived the restart");
  assert.equal(overdue.jobAssignedEventId, assignment.eventId);
  assert.ok(Date.parse(overdue.occurredAtUtc) >= restartedAt - 1000, "logged by the restarted process");
  await sleep(3500);
  assert.equal(dispatcher.overdue.length, 1, "delivered once");
  const rows = (await eventRows(server)).filter((e) => e.eventType === "JobAssignmentUnacknowledged");
  assert.equal(rows.length, 1, "logged once");
  assert.equal((await acknowledgementOf(server, assignment.assignmentId)).status, "Overdue");

  // A second restart does not escalate it again.
  assert.deepEqual(await server.terminate(), { code: 0, signal: null });
  await server.start();
  await sleep(3000);
  assert.equal((await eventRows(server)).filter((e) => e.eventType === "JobAssignmentUnacknowledged").length, 1, "still logged once");
});

test("AcknowledgeEvent over MessagePack: the result and the dispatcher's event are the same as over JSON", T, async (t) => {
  const server = await startServer(t);
  const { dispatcher, worker, job, assignment, assigned } = await assignedAndReceived(server, { pair: WS_MSGPACK });
  assert.equal(worker.connection._protocol.name, "messagepack");
  worker.probe = ["JoinContractorGroup", assignment.contractorId];
  await assertRefused(worker, /AcknowledgeEvent.*eventId must be a string/, "AcknowledgeEvent", 7);
  const result = await worker.connection.invoke("AcknowledgeEvent", assigned.eventId);
  assert.deepEqual(Object.keys(result).sort(), ["acknowledgedAtUtc", "eventId"]);
  assert.equal(result.eventId, assigned.eventId);
  assert.match(result.acknowledgedAtUtc, RFC3339_UTC);
  const ack = await dispatcher.waitForAck(assignment.assignmentId);
  await assertAckPayload(server, ack, { type: "JobAssignmentAcknowledged", keys: ACK_KEYS, job, assignment, assigned });
  assert.deepEqual(await worker.connection.invoke("AcknowledgeEvent", assigned.eventId), result, "a repeat over MessagePack");

  // A MessagePack dispatcher gets the same payload as the JSON one.
  const packed = await acknowledgementClient(server, await dispatcherToken(["north"]), { pair: WS_MSGPACK });
  await packed.connection.invoke("JoinDispatchGroup", "north", assigned.sequence);
  await waitFor(() => packed.acks.length === 1, 5000, "the replayed acknowledgement over MessagePack");
  assert.deepEqual(packed.acks[0], ack);
});

test("GET /api/assignments/{id}: Admin, north's dispatcher and the assignee; others 403; unknown 404", T, async (t) => {
  const server = await startServer(t);
  const contractor = await server.createContractor("north");
  const other = await server.createContractor("north");
  const { assignment } = await server.assignNew("north", contractor.id);
  const path = `/api/assignments/${assignment.assignmentId}`;

  const byAdmin = await server.expect(200, "GET", path, { token: await server.adminToken() });
  const { acknowledgement, ...rest } = byAdmin;
  assert.deepEqual(rest, assignment, "the Assignment as POST assign answered it");
  assert.deepEqual(Object.keys(acknowledgement).sort(), ["acknowledgedAtUtc", "deadlineUtc", "status"]);
  assert.equal(acknowledgement.status, "Pending");
  assert.match(acknowledgement.deadlineUtc, RFC3339_UTC);
  assert.deepEqual(await server.expect(200, "GET", path, { token: await dispatcherToken(["north"]) }), byAdmin);
  assert.deepEqual(await server.expect(200, "GET", path, { token: await contractorToken(contractor.id) }), byAdmin);

  for (const token of [await dispatcherToken(["south"]), await contractorToken(other.id)]) {
    const res = await server.request("GET", path, { token });
    assert.equal(res.status, 403, res.text);
    assert.match(res.headers.get("content-type"), /application\/problem\+json/);
  }
  assert.equal((await server.request("GET", path)).status, 401);
  const missing = await server.request("GET", "/api/assignments/5d7c0b1a-2e3f-4a5b-8c9d-0e1f2a3b4c5d", { token: await server.adminToken() });
  assert.equal(missing.status, 404, missing.text);
});

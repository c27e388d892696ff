// Acknowledgements and escalation on two nodes sharing one PostgreSQL
// database and a private Redis (like cluster.test.mjs): every node scans for
// overdue assignments every second and the database lets exactly one of them
// log each escalation; an acknowledgement made on one node reaches
// dispatchers on the other.
//
// Needs PostgreSQL (psql) and redis-server; skipped without them, failed with CI=true.

import { test } from "node:test";
import assert from "node:assert/strict";

import { T, contractorToken, dispatcherToken, requireCluster, sleep, startCluster, waitFor } from "./lib/harness.mjs";
import { ACK_KEYS, acknowledgementClient, counterValue, eventRows } from "./lib/acknowledgements.mjs";

const ESCALATED = 6;

/** How many times each assignmentId occurs in `payloads`. */
function countByAssignment(payloads) {
  const counts = new Map();
  for (const p of payloads) counts.set(p.assignmentId, (counts.get(p.assignmentId) ?? 0) + 1);
  return counts;
}

test("two nodes at SMARTSCHEDULER_ACK_DEADLINE_SECONDS=2: each unacknowledged assignment is escalated exactly once", T, async (t) => {
  if (!(await requireCluster(t))) return;
  const cluster = await startCluster(t, { env: { SMARTSCHEDULER_ACK_DEADLINE_SECONDS: "2" } });
  const [a, b] = cluster.nodes;
  const token = await dispatcherToken(["north"]);
  const dispatchers = [];
  for (const node of cluster.nodes) {
    const client = await acknowledgementClient(node, token);
    await client.connection.invoke("JoinDispatchGroup", "north");
    client.node = node;
    dispatchers.push(client);
  }

  // Assignments made on both nodes, nobody acknowledges.
  const assignments = [];
  for (let i = 0; i < ESCALATED; i++) {
    const node = i % 2 ? b : a;
    const contractor = await node.createContractor("north");
    assignments.push((await node.assignNew("north", contractor.id)).assignment);
  }
  const ids = assignments.map((x) => x.assignmentId);
  for (const d of dispatchers) {
    await waitFor(
      () => ids.every((id) => d.overdue.some((e) => e.assignmentId === id)),
      20_000,
      () => `node ${d.node.name}'s dispatcher: JobAssignmentUnacknowledged for all ${ESCALATED} (got ${d.overdue.length})`,
    );
  }
  // Several more scans on each node: nothing is escalated twice.
  await sleep(4000);

  for (const d of dispatchers) {
    const counts = countByAssignment(d.overdue);
    assert.deepEqual(ids.map((id) => counts.get(id)), ids.map(() => 1), `node ${d.node.name}'s dispatcher got each escalation once`);
    assert.equal(d.overdue.length, ESCALATED, `node ${d.node.name}'s dispatcher got nothing else`);
    assert.deepEqual(d.acks, []);
  }
  assert.deepEqual(dispatchers[0].overdue, dispatchers[1].overdue, "both dispatchers saw the same events in the same order");
  for (const node of cluster.nodes) {
    const rows = (await eventRows(node)).filter((e) => e.eventType === "JobAssignmentUnacknowledged");
    const counts = countByAssignment(rows.map((e) => e.payload));
    assert.deepEqual(ids.map((id) => counts.get(id)), ids.map(() => 1), `GET /api/events on node ${node.name}: one row per assignment`);
    assert.equal(rows.length, ESCALATED);
    for (const id of ids) {
      const got = await node.expect(200, "GET", `/api/assignments/${id}`, { token });
      assert.equal(got.acknowledgement.status, "Overdue", `${id} on node ${node.name}`);
    }
  }
  // Exactly one node logged each: the nodes' counters add up to the number of assignments.
  const logged = await Promise.all(cluster.nodes.map((n) => counterValue(n, "smartscheduler_assignments_overdue_total")));
  assert.equal(logged[0] + logged[1], ESCALATED, `smartscheduler_assignments_overdue_total per node: ${logged}`);
});

test("an acknowledgement made on node B reaches a dispatcher on node A; a repeat on node A returns the same time", T, async (t) => {
  if (!(await requireCluster(t))) return;
  const cluster = await startCluster(t);
  const [a, b] = cluster.nodes;
  const contractor = await a.createContractor("north");
  const dispatcher = await acknowledgementClient(a, await dispatcherToken(["north"]));
  await dispatcher.connection.invoke("JoinDispatchGroup", "north");
  const workerToken = await contractorToken(contractor.id);
  const onB = await acknowledgementClient(b, workerToken);
  await onB.connection.invoke("JoinContractorGroup", contractor.id);

  const { job, assignment } = await a.assignNew("north", contractor.id);
  const assigned = await onB.waitForEvent(assignment.eventId);
  const result = await onB.connection.invoke("AcknowledgeEvent", assigned.eventId);
  assert.equal(result.eventId, assigned.eventId);

  const ack = await dispatcher.waitForAck(assignment.assignmentId);
  assert.deepEqual(Object.keys(ack).sort(), ACK_KEYS);
  assert.equal(ack.type, "JobAssignmentAcknowledged");
  assert.equal(ack.jobAssignedEventId, assigned.eventId);
  assert.equal(ack.jobId, job.id);
  assert.equal(ack.acknowledgedAtUtc, result.acknowledgedAtUtc);
  assert.ok(ack.sequence > assigned.sequence);

  const onA = await acknowledgementClient(a, workerToken);
  assert.deepEqual(await onA.connection.invoke("AcknowledgeEvent", assigned.eventId), result, "a repeat on the other node");
  await sleep(1000);
  assert.equal(dispatcher.acks.length, 1, "one JobAssignmentAcknowledged");
  assert.deepEqual(onB.acks, [], "not sent to the contractor's group");
  for (const node of cluster.nodes) {
    const rows = (await eventRows(node)).filter((e) => e.eventType === "JobAssignmentAcknowledged");
    assert.equal(rows.length, 1, `one JobAssignmentAcknowledged row, read on node ${node.name}`);
    const got = await node.expect(200, "GET", `/api/assignments/${assignment.assignmentId}`, { token: await node.adminToken() });
    assert.equal(got.acknowledgement.status, "Acknowledged");
    assert.equal(got.acknowledgement.acknowledgedAtUtc, result.acknowledgedAtUtc);
  }
});

test("acknowledgements racing on both nodes record one and publish one event", T, async (t) => {
  if (!(await requireCluster(t))) return;
  const cluster = await startCluster(t);
  const [a, b] = cluster.nodes;
  const contractor = await a.createContractor("north");
  const dispatcher = await acknowledgementClient(b, await dispatcherToken(["north"]));
  await dispatcher.connection.invoke("JoinDispatchGroup", "north");
  const workerToken = await contractorToken(contractor.id);
  const workers = [await acknowledgementClient(a, workerToken), await acknowledgementClient(b, workerToken)];
  const { assignment } = await b.assignNew("north", contractor.id);
  await a.waitPublished(assignment.eventId);

  const results = await Promise.all(
    Array.from({ length: 5 }, () => workers.map((w) => w.connection.invoke("AcknowledgeEvent", assignment.eventId))).flat(),
  );
  assert.equal(new Set(results.map((r) => JSON.stringify(r))).size, 1, `every call on both nodes answers the same: ${JSON.stringify(results)}`);
  await dispatcher.waitForAck(assignment.assignmentId);
  await sleep(1000);
  assert.equal(dispatcher.acks.length, 1, "one JobAssignmentAcknowledged delivered");
  assert.equal(dispatcher.acks[0].acknowledgedAtUtc, results[0].acknowledgedAtUtc);
  const rows = (await eventRows(a)).filter((e) => e.eventType === "JobAssignmentAcknowledged");
  assert.equal(rows.length, 1, "one JobAssignmentAcknowledged row");
  const acknowledged = await Promise.all(cluster.nodes.map((n) => counterValue(n, "smartscheduler_assignments_acknowledged_total")));
  assert.equal(acknowledged[0] + acknowledged[1], 1, `smartscheduler_assignments_acknowledged_total per node: ${acknowledged}`);
});

// Delivery to groups: who gets a JobAssigned, what it looks like, joining and
// leaving, who may join which group, and replay with afterSequence.

import { test } from "node:test";
import assert from "node:assert/strict";

import { startServer, dispatcherToken, contractorToken, adminToken, sleep, signalR, T } from "./lib/harness.mjs";
import { assertStrictlyIncreasing } from "./lib/assertions.mjs";

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const RFC3339_UTC = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$/;

const PAYLOAD_KEYS = [
  "type",
  "schemaVersion",
  "eventId",
  "sequence",
  "occurredAtUtc",
  "jobId",
  "contractorId",
  "assignmentId",
  "startUtc",
  "endUtc",
  "region",
  "source",
  "auditId",
  "job",
].sort();
const JOB_KEYS = ["id", "jobType", "title", "region", "status", "durationMinutes", "desiredStartUtc", "address"].sort();

/** Checks `payload` against the contract for this job and assignment. */
function assertPayload(payload, { job, assignment, entry }) {
  assert.deepEqual(Object.keys(payload).sort(), PAYLOAD_KEYS, "payload has exactly the contract's fields");
  assert.equal(payload.type, "JobAssigned");
  assert.equal(payload.schemaVersion, 1);
  assert.equal(payload.eventId, assignment.eventId);
  assert.ok(Number.isSafeInteger(payload.sequence) && payload.sequence > 0, `sequence ${payload.sequence} is a positive integer`);
  assert.equal(payload.sequence, entry.sequence, "sequence equals the EventLog row's");
  assert.match(payload.occurredAtUtc, RFC3339_UTC);
  assert.equal(payload.occurredAtUtc, entry.occurredAtUtc);
  assert.equal(payload.jobId, job.id);
  assert.equal(payload.contractorId, assignment.contractorId);
  assert.equal(payload.assignmentId, assignment.assignmentId);
  assert.match(payload.assignmentId, UUID);
  assert.equal(payload.startUtc, assignment.startUtc);
  assert.equal(payload.endUtc, assignment.endUtc);
  assert.match(payload.startUtc, RFC3339_UTC);
  assert.match(payload.endUtc, RFC3339_UTC);
  assert.equal(payload.region, job.region);
  assert.equal(payload.source, assignment.source);
  assert.equal(payload.auditId, assignment.auditId);
  assert.deepEqual(Object.keys(payload.job).sort(), JOB_KEYS, "job snapshot has exactly the contract's fields");
  assert.deepEqual(payload.job, {
    id: job.id,
    jobType: job.jobType,
    title: job.title,
    region: job.region,
    status: "Assigned",
    durationMinutes: job.durationMinutes,
    desiredStartUtc: job.desiredStartUtc ?? null,
    address: job.address ?? null,
  });
  const { sequence: _s1, ...withoutSequence } = payload;
  const { sequence: _s2, ...logged } = entry.payload;
  assert.deepEqual(withoutSequence, logged, "the EventLog holds the same payload");
  assert.ok(Buffer.byteLength(JSON.stringify(payload)) < 2048, "payload JSON is under 2 KiB");
}

test("a north assignment reaches north's dispatcher and the contractor, and nobody else", T, async (t) => {
  const server = await startServer(t);
  const a = await server.createContractor("north", { name: "Ana" });
  const b = await server.createContractor("north", { name: "Bo" });

  const north = await server.connect(await dispatcherToken(["north"]));
  const south = await server.connect(await dispatcherToken(["south"]));
  const contractorA = await server.connect(await contractorToken(a.id));
  const contractorB = await server.connect(await contractorToken(b.id));
  assert.deepEqual(await north.connection.invoke("JoinDispatchGroup", "north"), { group: "dispatch/north", replayed: 0 });
  assert.deepEqual(await south.connection.invoke("JoinDispatchGroup", "south"), { group: "dispatch/south", replayed: 0 });
  assert.deepEqual(await contractorA.connection.invoke("JoinContractorGroup", a.id), { group: `contractor/${a.id}`, replayed: 0 });
  assert.deepEqual(await contractorB.connection.invoke("JoinContractorGroup", b.id), { group: `contractor/${b.id}`, replayed: 0 });

  const job = await server.createJob("north", { jobType: "Flooring", title: "Kitchen floor", durationMinutes: 120 });
  const auditId = "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9";
  const assignment = await server.assign(job.id, a.id, { source: "auto", auditId });
  assert.match(assignment.eventId, UUID);

  const [toDispatcher, toContractor] = await Promise.all([
    north.waitForEvent(assignment.eventId),
    contractorA.waitForEvent(assignment.eventId),
  ]);
  const entry = await server.waitPublished(assignment.eventId);
  assert.equal(entry.eventType, "JobAssigned");
  assert.deepEqual([...entry.publishedGroups].sort(), [`contractor/${a.id}`, "dispatch/north"].sort());

  assertPayload(toDispatcher, { job, assignment, entry });
  assert.equal(toDispatcher.source, "auto");
  assert.equal(toDispatcher.auditId, auditId);
  assert.deepEqual(toContractor, toDispatcher, "both copies are identical");

  await sleep(1000);
  assert.equal(north.events.length, 1, "north's dispatcher got exactly one copy");
  assert.equal(contractorA.events.length, 1, "contractor A got exactly one copy");
  assert.deepEqual(south.events, [], "south's dispatcher got nothing");
  assert.deepEqual(contractorB.events, [], "contractor B got nothing");
});

test("a JobAssigned carries the job's desiredStartUtc and address (contract v1.1)", T, async (t) => {
  const server = await startServer(t);
  const contractor = await server.createContractor("north");
  const admin = await server.connect(await adminToken());
  await admin.connection.invoke("JoinDispatchGroup", "north");
  const job = await server.createJob("north", { desiredStartUtc: "2030-03-01T08:30:00Z", address: "12 Oak St, Springfield" });
  const assignment = await server.assign(job.id, contractor.id);
  const payload = await admin.waitForEvent(assignment.eventId);
  const entry = await server.waitPublished(assignment.eventId);
  assertPayload(payload, { job, assignment, entry });
  assert.equal(payload.job.desiredStartUtc, "2030-03-01T08:30:00Z");
  assert.equal(payload.job.address, "12 Oak St, Springfield");
});

test("a job whose texts would push a JobAssigned past 2 KiB is refused with 400 and stored nowhere", T, async (t) => {
  const server = await startServer(t);
  const wide = "\u{1F6E0}"; // 4 bytes in UTF-8
  const body = { jobType: wide.repeat(64), region: "north", durationMinutes: 60, title: wide.repeat(200), address: "a".repeat(300) };
  const response = await server.request("POST", "/api/jobs", { token: await adminToken(), body });
  assert.equal(response.status, 400);
  const problem = response.json;
  assert.match(problem.detail, /address/);
  assert.match(problem.detail, /1200/);
  const jobs = await server.expect(200, "GET", "/api/jobs?region=north", { token: await adminToken() });
  assert.deepEqual(jobs, [], "nothing was stored");
});

test("the largest possible payload stays under 2 KiB", T, async (t) => {
  const server = await startServer(t);
  // Field limits: region 64 of [A-Za-z0-9._-], jobType 64 and title 200
  // characters; 4-byte UTF-8 characters are the widest JSON does not escape.
  const region = "r".repeat(64);
  const wide = "\u{1F6E0}"; // 🛠, 4 bytes in UTF-8
  const contractor = await server.createContractor(region);
  const admin = await server.connect(await adminToken());
  await admin.connection.invoke("JoinDispatchGroup", region);
  const job = await server.createJob(region, { jobType: wide.repeat(64), title: wide.repeat(200), durationMinutes: 10080 });
  assert.equal([...job.title].length, 200, "the title was kept at full length");
  const assignment = await server.assign(job.id, contractor.id, {
    source: "manual",
    auditId: "ffffffff-ffff-4fff-bfff-ffffffffffff",
  });
  const payload = await admin.waitForEvent(assignment.eventId);
  const entry = await server.waitPublished(assignment.eventId);
  assertPayload(payload, { job, assignment, entry });
  const bytes = Buffer.byteLength(JSON.stringify(payload));
  assert.ok(bytes < 2048, `largest payload is ${bytes} bytes`);
});

test("Join answers {group, replayed: 0}, Leave answers {group}, and nothing arrives after leaving", T, async (t) => {
  const server = await startServer(t);
  const contractor = await server.createContractor("north");
  const dispatcher = await server.connect(await dispatcherToken(["north"]));
  const self = await server.connect(await contractorToken(contractor.id));

  assert.deepEqual(await dispatcher.connection.invoke("JoinDispatchGroup", "north"), { group: "dispatch/north", replayed: 0 });
  assert.deepEqual(await self.connection.invoke("JoinContractorGroup", contractor.id), {
    group: `contractor/${contractor.id}`,
    replayed: 0,
  });
  // Joining twice is harmless and does not duplicate delivery.
  assert.deepEqual(await dispatcher.connection.invoke("JoinDispatchGroup", "north"), { group: "dispatch/north", replayed: 0 });

  const first = await server.assignNew("north", contractor.id);
  await dispatcher.waitForEvent(first.assignment.eventId);
  await self.waitForEvent(first.assignment.eventId);

  assert.deepEqual(await dispatcher.connection.invoke("LeaveDispatchGroup", "north"), { group: "dispatch/north" });
  assert.deepEqual(await self.connection.invoke("LeaveContractorGroup", contractor.id), { group: `contractor/${contractor.id}` });

  // A witness that joins now proves the next event was published and delivered.
  const witness = await server.connect(await dispatcherToken(["north"]));
  await witness.connection.invoke("JoinDispatchGroup", "north");
  const second = await server.assignNew("north", contractor.id);
  await witness.waitForEvent(second.assignment.eventId);
  await sleep(1000);

  assert.deepEqual(dispatcher.events.map((e) => e.eventId), [first.assignment.eventId], "dispatcher: only the event before leaving");
  assert.deepEqual(self.events.map((e) => e.eventId), [first.assignment.eventId], "contractor: only the event before leaving");
  assert.equal(dispatcher.state, signalR.HubConnectionState.Connected);
  assert.equal(self.state, signalR.HubConnectionState.Connected);
});

test("an Admin may join any dispatch and contractor group; a Dispatcher any contractor group", T, async (t) => {
  const server = await startServer(t);
  const north = await server.createContractor("north");
  const south = await server.createContractor("south");
  const admin = await server.connect(await adminToken());
  const dispatcher = await server.connect(await dispatcherToken(["north"]));

  for (const region of ["north", "south", "east-2"]) {
    assert.deepEqual(await admin.connection.invoke("JoinDispatchGroup", region), { group: `dispatch/${region}`, replayed: 0 });
  }
  assert.deepEqual(await admin.connection.invoke("JoinContractorGroup", north.id), { group: `contractor/${north.id}`, replayed: 0 });
  assert.deepEqual(await dispatcher.connection.invoke("JoinContractorGroup", south.id), {
    group: `contractor/${south.id}`,
    replayed: 0,
  });

  const inNorth = await server.assignNew("north", north.id);
  const inSouth = await server.assignNew("south", south.id);
  await admin.waitForEvents(2);
  await dispatcher.waitForEvent(inSouth.assignment.eventId);
  await sleep(1000);

  // The admin is in dispatch/north AND contractor/{north}: still one copy.
  assert.deepEqual(admin.events.map((e) => e.eventId).sort(), [inNorth.assignment.eventId, inSouth.assignment.eventId].sort());
  // The north dispatcher sees the south job through the south contractor's group only.
  assert.deepEqual(dispatcher.events.map((e) => e.eventId), [inSouth.assignment.eventId]);
});

test("a new connection joining with afterSequence gets exactly the missed events, then live ones", T, async (t) => {
  const server = await startServer(t);
  const token = await dispatcherToken(["north"]);
  const north = await server.createContractor("north");
  const south = await server.createContractor("south");

  // A first session sees three events, remembers the last sequence, and leaves.
  const first = await server.connect(token);
  await first.connection.invoke("JoinDispatchGroup", "north");
  const seen = [];
  for (let i = 0; i < 3; i++) seen.push((await server.assignNew("north", north.id)).assignment.eventId);
  await first.waitForEvents(3);
  assert.deepEqual(first.events.map((e) => e.eventId), seen);
  const lastSeq = Math.max(...first.events.map((e) => e.sequence));
  await first.connection.stop();

  // Meanwhile: four north events (missed) and one south event (not ours).
  const missed = [];
  for (let i = 0; i < 4; i++) {
    missed.push((await server.assignNew("north", north.id)).assignment.eventId);
    if (i === 1) await server.assignNew("south", south.id);
  }
  for (const id of missed) await server.waitPublished(id);

  // The next session resumes from lastSeq.
  const second = await server.connect(token);
  const result = await second.connection.invoke("JoinDispatchGroup", "north", lastSeq);
  assert.deepEqual(result, { group: "dispatch/north", replayed: missed.length });
  await sleep(300);
  assert.deepEqual(second.events.map((e) => e.eventId), missed, "exactly the missed events, in order");
  assertStrictlyIncreasing(second.events.map((e) => e.sequence), "replay");
  assert.ok(second.events.every((e) => e.sequence > lastSeq));

  // Then live events follow, with no duplicate of the replayed ones.
  const live = (await server.assignNew("north", north.id)).assignment.eventId;
  await second.waitForEvent(live);
  await sleep(500);
  assert.deepEqual(second.events.map((e) => e.eventId), [...missed, live]);
  assertStrictlyIncreasing(second.events.map((e) => e.sequence), "replay then live");

  // afterSequence 0 replays the whole group history; a contractor group works the same way.
  const third = await server.connect(token);
  const all = await third.connection.invoke("JoinContractorGroup", north.id, 0);
  assert.deepEqual(all, { group: `contractor/${north.id}`, replayed: seen.length + missed.length + 1 });
  await sleep(300);
  assert.deepEqual(third.events.map((e) => e.eventId), [...seen, ...missed, live]);

  // Joining with the latest sequence replays nothing.
  const fourth = await server.connect(token);
  const lastNow = second.events.at(-1).sequence;
  assert.deepEqual(await fourth.connection.invoke("JoinDispatchGroup", "north", lastNow), { group: "dispatch/north", replayed: 0 });
});

test("replay and live delivery racing: events published during a replaying join arrive once each, in order", T, async (t) => {
  const server = await startServer(t);
  const token = await dispatcherToken(["north"]);
  const contractors = await Promise.all(Array.from({ length: 40 }, () => server.createContractor("north")));
  const jobs = await Promise.all(contractors.map(() => server.createJob("north")));

  // 20 events before the join...
  const before = await Promise.all(contractors.slice(0, 20).map((c, i) => server.assign(jobs[i].id, c.id)));
  for (const a of before) await server.waitPublished(a.eventId);

  // ...and 20 more fired while the join replays.
  const client = await server.connect(token);
  const duringPromise = Promise.all(contractors.slice(20).map((c, i) => server.assign(jobs[20 + i].id, c.id)));
  const result = await client.connection.invoke("JoinDispatchGroup", "north", 0);
  const during = await duringPromise;
  assert.ok(result.replayed >= 20 && result.replayed <= 40, `replayed ${result.replayed}`);

  await client.waitForEvents(40, 30_000);
  await sleep(1000);
  const ids = client.events.map((e) => e.eventId);
  assert.equal(ids.length, 40, "no duplicates");
  assert.deepEqual(new Set(ids), new Set([...before, ...during].map((a) => a.eventId)));
  assertStrictlyIncreasing(client.events.map((e) => e.sequence), "replay + live");
});

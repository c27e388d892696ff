// Refused and failing hub calls: `invoke` rejects, the connection stays open,
// and the same connection can still join and receive events afterwards.

import { test } from "node:test";
import assert from "node:assert/strict";

import { startServer, dispatcherToken, contractorToken, signalR, sleep, T } from "./lib/harness.mjs";
import { assertRefused } from "./lib/assertions.mjs";

test("a dispatcher's refused and malformed calls reject, and the connection keeps working", T, async (t) => {
  const server = await startServer(t);
  const contractor = await server.createContractor("north");
  const north = await server.connect(await dispatcherToken(["north"]));
  north.probe = ["JoinDispatchGroup", "north"];

  await assertRefused(north, /JoinDispatchGroup.*not allowed.*dispatch\/south/, "JoinDispatchGroup", "south");
  await assertRefused(north, /Unknown hub method 'NoSuchMethod'/, "NoSuchMethod", "north");
  await assertRefused(north, /JoinDispatchGroup/, "JoinDispatchGroup", 42);
  await assertRefused(north, /JoinDispatchGroup/, "JoinDispatchGroup", null);
  await assertRefused(north, /JoinDispatchGroup/, "JoinDispatchGroup");
  await assertRefused(north, /JoinDispatchGroup/, "JoinDispatchGroup", "no/slashes");
  await assertRefused(north, /JoinDispatchGroup/, "JoinDispatchGroup", "north", "seven");
  await assertRefused(north, /JoinDispatchGroup/, "JoinDispatchGroup", "north", -1);
  await assertRefused(north, /JoinDispatchGroup/, "JoinDispatchGroup", "north", 0, "extra");
  await assertRefused(north, /JoinContractorGroup/, "JoinContractorGroup", "not-a-uuid");
  await assertRefused(north, /JoinContractorGroup/, "JoinContractorGroup", 7);
  await assertRefused(north, /JoinContractorGroup/, "JoinContractorGroup");
  await assertRefused(north, /LeaveDispatchGroup/, "LeaveDispatchGroup", { region: "north" });

  // Nothing refused left a membership behind (south), and the joins still deliver.
  assert.deepEqual(await north.connection.invoke("JoinDispatchGroup", "north"), { group: "dispatch/north", replayed: 0 });
  const southJob = await server.assignNew("south", (await server.createContractor("south")).id);
  const northJob = await server.assignNew("north", contractor.id);
  await north.waitForEvent(northJob.assignment.eventId);
  await server.waitPublished(southJob.assignment.eventId);
  await sleep(500);
  assert.deepEqual(north.events.map((e) => e.eventId), [northJob.assignment.eventId], "only the north event arrived");
  assert.equal(north.state, signalR.HubConnectionState.Connected);
});

test("a contractor may not join another contractor's group or a dispatch group, and keeps working", T, async (t) => {
  const server = await startServer(t);
  const a = await server.createContractor("north");
  const b = await server.createContractor("north");
  const contractorA = await server.connect(await contractorToken(a.id));
  contractorA.probe = ["JoinContractorGroup", a.id];

  await assertRefused(contractorA, /JoinContractorGroup.*not allowed/, "JoinContractorGroup", b.id);
  await assertRefused(contractorA, /JoinDispatchGroup.*not allowed/, "JoinDispatchGroup", "north");
  await assertRefused(contractorA, /JoinContractorGroup/, "JoinContractorGroup", "not-a-uuid");
  await assertRefused(contractorA, /JoinContractorGroup/, "JoinContractorGroup", 12345);
  await assertRefused(contractorA, /JoinContractorGroup/, "JoinContractorGroup");
  await assertRefused(contractorA, /Unknown hub method 'GetEverything'/, "GetEverything");

  assert.deepEqual(await contractorA.connection.invoke("JoinContractorGroup", a.id), { group: `contractor/${a.id}`, replayed: 0 });
  const toB = await server.assignNew("north", b.id);
  const toA = await server.assignNew("north", a.id);
  await contractorA.waitForEvent(toA.assignment.eventId);
  await server.waitPublished(toB.assignment.eventId);
  await sleep(500);
  assert.deepEqual(contractorA.events.map((e) => e.eventId), [toA.assignment.eventId], "only A's own event arrived");
  assert.equal(contractorA.state, signalR.HubConnectionState.Connected);
});

// Presence on one node (contract v1.1, issue 19): a contractor is online while
// it has a hub connection, on any transport, and for
// SMARTSCHEDULER_PRESENCE_GRACE_SECONDS after its last one closes. Its region's
// dispatchers get `PresenceChanged` when it comes online and when the grace
// ends with no connection; it is not an event (no sequence, no replay), so a
// dispatcher who joined with afterSequence gets it too. GET /api/presence
// lists every contractor of a region with what the hub counts.
// Several nodes: cluster-presence.test.mjs.

import { test } from "node:test";
import assert from "node:assert/strict";

import { T, startServer, dispatcherToken, contractorToken, sleep } from "./lib/harness.mjs";
import { assertChange, changesOf, presenceOf, presenceWatcher, waitForChanges, waitForPresence } from "./lib/presence.mjs";
import { assertExactlyOnce } from "./lib/assertions.mjs";
import { PAIRS, assertOnPair, connectPair } from "./lib/transports.mjs";

const pairNamed = (name) => PAIRS.find((p) => p.name === name);

test("presence: online once at the first connection, not at the second; offline once a 1 s grace after the last; south hears nothing", T, async (t) => {
  const server = await startServer(t, { env: { SMARTSCHEDULER_PRESENCE_GRACE_SECONDS: "1" } });
  const ana = await server.createContractor("north", { name: "Ana Flores" });
  const ben = await server.createContractor("north", { name: "Ben Okafor" });
  const north = await presenceWatcher(server, "north");
  const south = await presenceWatcher(server, "south");
  const admin = await presenceWatcher(server, "north", { token: await server.adminToken() });
  const anaToken = await contractorToken(ana.id);

  // Nobody connected yet: every contractor of the region listed, offline, never seen.
  const before = await server.expect(200, "GET", "/api/presence?region=north", { token: await server.adminToken() });
  assert.deepEqual(
    before.contractors.map((c) => ({ ...c })).sort((a, b) => a.name.localeCompare(b.name)),
    [
      { contractorId: ana.id, name: "Ana Flores", online: false, connections: 0, lastSeenUtc: null },
      { contractorId: ben.id, name: "Ben Okafor", online: false, connections: 0, lastSeenUtc: null },
    ],
  );

  const t0 = Date.now();
  const first = await server.connect(anaToken);
  const [online] = await waitForChanges(north, ana.id, 1);
  assertChange(changesOf(north, ana.id)[0], ana, true, t0, Date.now());
  // Each member's copy travels on its own connection: wait for the admin's before comparing.
  await waitForChanges(admin, ana.id, 1);
  assert.deepEqual(changesOf(admin, ana.id), changesOf(north, ana.id), "an admin in dispatch/north gets the same message");
  assert.ok(online.receivedAt - t0 < 5000, "told when the connection opened");
  const seen = await waitForPresence(server, "north", ana.id, { online: true, connections: 1 });
  assert.match(seen.lastSeenUtc, /Z$/, "an online contractor has been seen (now)");

  const second = await server.connect(anaToken);
  await waitForPresence(server, "north", ana.id, { online: true, connections: 2 });
  await first.close();
  await waitForPresence(server, "north", ana.id, { online: true, connections: 1 });
  await sleep(1500); // more than the grace: one connection still open, so still online
  assert.equal((await presenceOf(server, "north", ana.id)).online, true, "online while a connection is open");
  assert.equal(changesOf(north, ana.id).length, 1, "no second online for the second connection, no offline for the first close");

  await second.close();
  const closedAt = Date.now();
  const within = await presenceOf(server, "north", ana.id);
  assert.equal(within.connections, 0);
  assert.equal(within.online, true, "online during the grace");
  assert.ok(Math.abs(new Date(within.lastSeenUtc).getTime() - closedAt) < 1500, `lastSeenUtc ${within.lastSeenUtc} is the last close`);

  const [, offline] = await waitForChanges(north, ana.id, 2, 10_000);
  const after = offline.receivedAt - closedAt;
  assert.ok(after >= 700 && after < 4000, `offline ${after} ms after the last close (grace 1 s)`);
  assertChange(changesOf(north, ana.id)[1], ana, false, closedAt, Date.now());
  assert.ok(new Date(changesOf(north, ana.id)[1].atUtc) >= new Date(changesOf(north, ana.id)[0].atUtc));
  const gone = await presenceOf(server, "north", ana.id);
  assert.deepEqual({ online: gone.online, connections: gone.connections }, { online: false, connections: 0 });
  assert.equal(gone.lastSeenUtc, within.lastSeenUtc, "last seen stays the last close");

  await sleep(1500);
  assert.equal(changesOf(north, ana.id).length, 2, "offline once");
  assert.deepEqual(changesOf(north, ben.id), [], "Ben never connected");
  assert.deepEqual(south.presence, [], "a south dispatcher hears nothing of north");
  assert.deepEqual(north.events, [], "presence is not a JobAssigned");
});

test("presence: a reconnect within the grace (3 s) sends no offline/online pair", T, async (t) => {
  const server = await startServer(t, { env: { SMARTSCHEDULER_PRESENCE_GRACE_SECONDS: "3" } });
  const ana = await server.createContractor("north");
  const north = await presenceWatcher(server, "north");
  const anaToken = await contractorToken(ana.id);

  const first = await server.connect(anaToken);
  await waitForChanges(north, ana.id, 1);
  await first.close();
  await sleep(1000);
  assert.equal((await presenceOf(server, "north", ana.id)).online, true, "within the grace");
  const again = await server.connect(anaToken);
  await waitForPresence(server, "north", ana.id, { online: true, connections: 1 });
  await sleep(3500); // past the first close's grace
  assert.deepEqual(
    changesOf(north, ana.id).map((m) => m.online),
    [true],
    "the reconnect within the grace is invisible: no offline, no second online",
  );

  // The grace starts again at the new last close.
  await again.close();
  const closedAt = Date.now();
  const [, offline] = await waitForChanges(north, ana.id, 2, 10_000);
  assert.equal(offline.online, false);
  const after = offline.receivedAt - closedAt;
  assert.ok(after >= 2500 && after < 7000, `offline ${after} ms after the last close (grace 3 s)`);
});

test("presence: a dispatcher who joined with afterSequence gets PresenceChanged too, and its JobAssigned replay and live stream stay once each", T, async (t) => {
  const server = await startServer(t, { env: { SMARTSCHEDULER_PRESENCE_GRACE_SECONDS: "1" } });
  const ana = await server.createContractor("north");
  const ben = await server.createContractor("north");
  const before = await server.assignNew("north", ben.id);
  const { sequence } = await server.waitPublished(before.assignment.eventId);

  const fromStart = await presenceWatcher(server, "north", { afterSequence: 0 });
  const fromNow = await presenceWatcher(server, "north", { afterSequence: sequence });
  assert.equal(fromStart.joined.replayed, 1, "the assignment made before is replayed");
  assert.equal(fromNow.joined.replayed, 0, "nothing after its position");

  // Ana comes online: presence has no sequence, so no replay floor holds it back.
  await server.connect(await contractorToken(ana.id));
  for (const watcher of [fromStart, fromNow]) {
    await waitForChanges(watcher, ana.id, 1);
    assert.equal(changesOf(watcher, ana.id)[0].online, true);
    assert.equal("sequence" in changesOf(watcher, ana.id)[0], false, "no sequence");
  }

  const live = await server.assignNew("north", ana.id);
  await fromStart.waitForEvent(live.assignment.eventId);
  await fromNow.waitForEvent(live.assignment.eventId);
  await sleep(300);
  assertExactlyOnce(fromStart, new Set([before.assignment.eventId, live.assignment.eventId]), "afterSequence 0");
  assertExactlyOnce(fromNow, new Set([live.assignment.eventId]), `afterSequence ${sequence}`);

  // Not in the EventLog: only the two JobAssigned rows.
  const log = await server.expect(200, "GET", "/api/events?afterSequence=0&limit=1000", { token: await server.adminToken() });
  assert.deepEqual(log.items.map((e) => e.eventType), ["JobAssigned", "JobAssigned"]);

  // A later join with afterSequence replays JobAssigned only, never a PresenceChanged.
  const late = await presenceWatcher(server, "north", { afterSequence: 0 });
  assert.equal(late.joined.replayed, 2);
  await sleep(300);
  assert.deepEqual(late.presence, [], "presence is not replayed");
});

test("presence: contractors on Long Polling and Server-Sent Events count as online; a MessagePack dispatcher decodes PresenceChanged", T, async (t) => {
  const server = await startServer(t, { env: { SMARTSCHEDULER_PRESENCE_GRACE_SECONDS: "1" } });
  const polling = await server.createContractor("north", { name: "Polly Long" });
  const streaming = await server.createContractor("north", { name: "Sam Events" });
  const jsonWatcher = await presenceWatcher(server, "north");
  const msgpackPair = pairNamed("WebSockets+messagepack");
  const msgpackWatcher = await presenceWatcher(server, "north", { pair: msgpackPair });
  assertOnPair(msgpackWatcher, msgpackPair);

  const contractors = [
    [polling, pairNamed("LongPolling+json")],
    [streaming, pairNamed("ServerSentEvents+json")],
  ];
  const clients = [];
  for (const [contractor, pair] of contractors) {
    const t0 = Date.now();
    const client = await connectPair(server, await contractorToken(contractor.id), pair);
    assertOnPair(client, pair);
    clients.push(client);
    await waitForChanges(jsonWatcher, contractor.id, 1);
    await waitForChanges(msgpackWatcher, contractor.id, 1);
    assertChange(changesOf(jsonWatcher, contractor.id)[0], contractor, true, t0, Date.now());
    assertChange(changesOf(msgpackWatcher, contractor.id)[0], contractor, true, t0, Date.now());
    assert.deepEqual(changesOf(msgpackWatcher, contractor.id), changesOf(jsonWatcher, contractor.id), `${pair.name}: MessagePack decodes to the JSON copy`);
    await waitForPresence(server, "north", contractor.id, { online: true, connections: 1 });
  }

  // A Long Polling client's stop (DELETE) and an SSE client's stop close their connections.
  for (const [i, [contractor, pair]] of contractors.entries()) {
    await clients[i].close();
    const closedAt = Date.now();
    const [, offline] = await waitForChanges(jsonWatcher, contractor.id, 2, 10_000);
    assert.equal(offline.online, false, `${pair.name}: offline`);
    assert.ok(offline.receivedAt - closedAt < 5000, `${pair.name}: offline ${offline.receivedAt - closedAt} ms after stop`);
    await waitForChanges(msgpackWatcher, contractor.id, 2, 5000);
    assert.deepEqual(changesOf(msgpackWatcher, contractor.id), changesOf(jsonWatcher, contractor.id));
    await waitForPresence(server, "north", contractor.id, { online: false, connections: 0 });
  }
});

test("GET /api/presence: Admin and a dispatcher of the region; others 403; no or a bad region 400; no token 401", T, async (t) => {
  const server = await startServer(t);
  const ana = await server.createContractor("north");
  const get = async (query, token) => (await server.request("GET", `/api/presence${query}`, { token })).status;
  const north = await dispatcherToken(["north"]);
  assert.equal(await get("?region=north", await server.adminToken()), 200);
  assert.equal(await get("?region=north", north), 200);
  assert.equal(await get("?region=north", await dispatcherToken(["south"])), 403);
  assert.equal(await get("?region=north", await contractorToken(ana.id)), 403);
  assert.equal(await get("", north), 400);
  assert.equal(await get("?region=no%20spaces", north), 400);
  assert.equal(await get("?region=north", undefined), 401);
  const empty = await server.expect(200, "GET", "/api/presence?region=east", { token: await server.adminToken() });
  assert.deepEqual(empty, { region: "east", contractors: [] });
});

// Presence on two nodes sharing one PostgreSQL database (contract v1.1,
// issue 19): a contractor is online while it has a hub connection on any
// node; each change is told once to the region's dispatchers on every node,
// whichever node holds the connection; GET /api/presence on any node gives
// the union; a SIGKILLed node's contractors go offline within 30 s, with
// nothing stale left. Shared state: docs/deployment.md, "Presence in a cluster".
//
// Needs PostgreSQL (psql) and redis-server; skipped without them, failed with CI=true.

import { test } from "node:test";
import assert from "node:assert/strict";

import { T, contractorToken, requireCluster, sleep, startCluster } from "./lib/harness.mjs";
import { assertChange, changesOf, presenceOf, presenceWatcher, waitForChanges, waitForPresence } from "./lib/presence.mjs";

const GRACE_SECONDS = 2;

test("two nodes: a connection on either is online everywhere, told once per dispatcher; offline once a grace after the last closes", T, async (t) => {
  if (!(await requireCluster(t))) return;
  const cluster = await startCluster(t, { env: { SMARTSCHEDULER_PRESENCE_GRACE_SECONDS: String(GRACE_SECONDS) } });
  const [a, b] = cluster.nodes;
  const ana = await a.createContractor("north", { name: "Ana Flores" });
  const watchers = [await presenceWatcher(a, "north"), await presenceWatcher(b, "north")];
  const anaToken = await contractorToken(ana.id);

  const t0 = Date.now();
  const onB = await b.connect(anaToken);
  for (const w of watchers) await waitForChanges(w, ana.id, 1);
  for (const w of watchers) assertChange(changesOf(w, ana.id)[0], ana, true, t0, Date.now());
  assert.deepEqual(changesOf(watchers[0], ana.id), changesOf(watchers[1], ana.id), "the same message on both nodes");
  await waitForPresence(a, "north", ana.id, { online: true, connections: 1 });

  // A second connection, on the other node: the union, and nothing told.
  const onA = await a.connect(anaToken);
  await waitForPresence(b, "north", ana.id, { online: true, connections: 2 });
  await waitForPresence(a, "north", ana.id, { online: true, connections: 2 });
  await onB.close();
  await waitForPresence(a, "north", ana.id, { online: true, connections: 1 });
  await sleep(GRACE_SECONDS * 1000 + 1500);
  assert.equal((await presenceOf(b, "north", ana.id)).online, true, "online while node A holds a connection");
  for (const w of watchers) assert.equal(changesOf(w, ana.id).length, 1, "nothing told while it stays online");

  await onA.close();
  const closedAt = Date.now();
  for (const w of watchers) await waitForChanges(w, ana.id, 2, 15_000);
  for (const w of watchers) assertChange(changesOf(w, ana.id)[1], ana, false, closedAt, Date.now());
  const offlineAfter = watchers[0].presence.filter((m) => m.contractorId === ana.id)[1].receivedAt - closedAt;
  assert.ok(offlineAfter >= GRACE_SECONDS * 1000 - 500, `offline ${offlineAfter} ms after the last close (grace ${GRACE_SECONDS} s)`);
  await sleep(2500); // every node settles twice more: nothing told again
  for (const w of watchers) assert.equal(changesOf(w, ana.id).length, 2, `node ${w === watchers[0] ? "A" : "B"}'s dispatcher: online once, offline once`);
  for (const node of cluster.nodes) {
    const gone = await presenceOf(node, "north", ana.id);
    assert.deepEqual({ online: gone.online, connections: gone.connections }, { online: false, connections: 0 }, `node ${node.name}`);
    assert.ok(gone.lastSeenUtc && Math.abs(new Date(gone.lastSeenUtc).getTime() - closedAt) < 2000, `last seen at the close: ${gone.lastSeenUtc}`);
  }
});

test("a SIGKILLed node's contractors go offline on the survivor within 30 s; those on the survivor stay online", T, async (t) => {
  if (!(await requireCluster(t))) return;
  const cluster = await startCluster(t, { env: { SMARTSCHEDULER_PRESENCE_GRACE_SECONDS: "10" } });
  const [a, b] = cluster.nodes;
  const ana = await a.createContractor("north", { name: "Ana on B" });
  const ben = await a.createContractor("north", { name: "Ben on A" });
  const watcher = await presenceWatcher(a, "north");
  await b.connect(await contractorToken(ana.id));
  await a.connect(await contractorToken(ben.id));
  await waitForChanges(watcher, ana.id, 1);
  await waitForChanges(watcher, ben.id, 1);
  await waitForPresence(a, "north", ana.id, { online: true, connections: 1 });

  await b.kill();
  const killedAt = Date.now();
  assert.equal(b.exit?.signal, "SIGKILL");
  const [, offline] = await waitForChanges(watcher, ana.id, 2, 30_000);
  const after = offline.receivedAt - killedAt;
  assertChange(changesOf(watcher, ana.id)[1], ana, false, killedAt - 2000, Date.now());
  assert.ok(after < 30_000, `offline ${after} ms after the kill`);
  const gone = await presenceOf(a, "north", ana.id);
  assert.deepEqual({ online: gone.online, connections: gone.connections }, { online: false, connections: 0 }, "nothing stale");
  const stays = await presenceOf(a, "north", ben.id);
  assert.deepEqual({ online: stays.online, connections: stays.connections }, { online: true, connections: 1 });
  assert.equal(changesOf(watcher, ben.id).length, 1, "Ben, on the survivor, stays online");
  t.diagnostic(`offline ${after} ms after the SIGKILL (node expiry 10 s, grace 10 s from its last heartbeat)`);
});

test("a node stopped with SIGTERM: its contractors go offline a grace after, not once it is found dead", T, async (t) => {
  if (!(await requireCluster(t))) return;
  const cluster = await startCluster(t, { env: { SMARTSCHEDULER_PRESENCE_GRACE_SECONDS: String(GRACE_SECONDS) } });
  const [a, b] = cluster.nodes;
  const ana = await a.createContractor("north", { name: "Ana on B" });
  const watcher = await presenceWatcher(a, "north");
  await b.connect(await contractorToken(ana.id));
  await waitForChanges(watcher, ana.id, 1);

  const stoppedAt = Date.now();
  await b.terminate();
  const [, offline] = await waitForChanges(watcher, ana.id, 2, 30_000);
  const after = offline.receivedAt - stoppedAt;
  // Found dead would take the node expiry (10 s) at least.
  assert.ok(after < 8000, `offline ${after} ms after SIGTERM (grace ${GRACE_SECONDS} s)`);
  assert.equal((await presenceOf(a, "north", ana.id)).online, false);
});

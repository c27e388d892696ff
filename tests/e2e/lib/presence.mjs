// Presence helpers shared by presence.test.mjs and cluster-presence.test.mjs:
// dispatchers that collect PresenceChanged, and GET /api/presence reads.

import assert from "node:assert/strict";

import { dispatcherToken, waitFor } from "./harness.mjs";
import { connectPair } from "./transports.mjs";

/**
 * A dispatcher on `pair` (default WebSockets+json) whose PresenceChanged
 * messages collect in `client.presence` (the handler is registered before
 * start), joined to `dispatch/{region}` with `afterSequence` when given.
 */
export async function presenceWatcher(server, region, { pair, afterSequence, token } = {}) {
  token ??= await dispatcherToken([region]);
  const client = await connectPair(server, token, pair, { start: false });
  client.presence = [];
  client.connection.on("PresenceChanged", (message) => client.presence.push({ ...message, receivedAt: Date.now() }));
  await client.connection.start();
  const args = afterSequence === undefined ? [region] : [region, afterSequence];
  client.joined = await client.connection.invoke("JoinDispatchGroup", ...args);
  return client;
}

/** The messages about `contractorId` that `watcher` got, without the receive time. */
export const changesOf = (watcher, contractorId) =>
  watcher.presence.filter((m) => m.contractorId === contractorId).map(({ receivedAt: _, ...m }) => m);

/** Waits until `watcher` has `n` PresenceChanged messages about `contractorId`; returns them. */
export function waitForChanges(watcher, contractorId, n, timeoutMs = 10_000) {
  return waitFor(
    () => {
      const got = watcher.presence.filter((m) => m.contractorId === contractorId);
      return got.length >= n && got;
    },
    timeoutMs,
    () => `${n} PresenceChanged about ${contractorId} (got ${JSON.stringify(watcher.presence)})`,
  );
}

/** GET /api/presence?region=R: the entry of `contractorId`. */
export async function presenceOf(server, region, contractorId) {
  const listed = await server.expect(200, "GET", `/api/presence?region=${region}`, { token: await server.adminToken() });
  assert.equal(listed.region, region);
  const entry = listed.contractors.find((c) => c.contractorId === contractorId);
  assert.ok(entry, `${contractorId} is listed in ${JSON.stringify(listed)}`);
  return entry;
}

/** Waits until GET /api/presence says `{online, connections}` for `contractorId`; returns the entry. */
export async function waitForPresence(server, region, contractorId, expected, timeoutMs = 10_000) {
  let last;
  return waitFor(
    async () => {
      last = await presenceOf(server, region, contractorId);
      return last.online === expected.online && last.connections === expected.connections && last;
    },
    timeoutMs,
    () => `GET /api/presence to say ${JSON.stringify(expected)} (last: ${JSON.stringify(last)})`,
  );
}

/** Asserts the exact message a dispatcher gets for a change of `contractor` to `online`, sent within [from, to]. */
export function assertChange(message, contractor, online, from, to) {
  assert.deepEqual(Object.keys(message).sort(), ["atUtc", "contractorId", "online", "region", "type"], "exactly these fields");
  assert.equal(message.type, "PresenceChanged");
  assert.equal(message.contractorId, contractor.id);
  assert.equal(message.region, contractor.region);
  assert.equal(message.online, online);
  assert.match(message.atUtc, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$/, "RFC 3339 UTC with Z");
  const at = new Date(message.atUtc).getTime();
  assert.ok(at >= from - 1000 && at <= to + 1000, `atUtc ${message.atUtc} within the test's window`);
}

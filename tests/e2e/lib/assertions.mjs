// Assertions shared by several test files (delivery, refusals, cluster,
// transports): what "once, in order" and "refused but still working" mean.

import assert from "node:assert/strict";

import { signalR, waitFor } from "./harness.mjs";

/** Each sequence is larger than the one before. */
export function assertStrictlyIncreasing(sequences, what) {
  for (let i = 1; i < sequences.length; i++) {
    assert.ok(sequences[i] > sequences[i - 1], `${what}: sequence ${sequences[i]} at #${i} follows ${sequences[i - 1]}`);
  }
}

/** Every id of `expected` arrived at `client` exactly once, in strictly increasing sequence, and nothing else. */
export function assertExactlyOnce(client, expected, what) {
  const ids = client.events.map((e) => e.eventId);
  const counts = new Map();
  for (const id of ids) counts.set(id, (counts.get(id) ?? 0) + 1);
  const dups = [...counts].filter(([, n]) => n > 1);
  assert.deepEqual(dups, [], `${what}: no eventId twice`);
  const missing = [...expected].filter((id) => !counts.has(id));
  assert.deepEqual(missing, [], `${what}: every expected eventId arrived`);
  const extra = ids.filter((id) => !expected.has(id));
  assert.deepEqual(extra, [], `${what}: nothing but the expected events`);
  assertStrictlyIncreasing(client.events.map((e) => e.sequence), what);
}

/** Waits until every id of `expected` (a Set) has reached `client`. */
export function waitForAll(client, expected, timeoutMs, what) {
  return waitFor(
    () => {
      const got = new Set(client.events.map((e) => e.eventId));
      for (const id of expected) if (!got.has(id)) return false;
      return true;
    },
    timeoutMs,
    () => {
      const got = new Set(client.events.map((e) => e.eventId));
      const missing = [...expected].filter((id) => !got.has(id));
      return `${what}: ${missing.length} of ${expected.size} events still missing (got ${client.events.length}), e.g. ${missing.slice(0, 3).join(", ")}`;
    },
  );
}

/**
 * Asserts that `invoke(method, ...args)` rejects with a message matching
 * `pattern`, that the connection survives, and that a valid call made right
 * after (`client.probe`: `[method, ...args]`) still succeeds.
 */
export async function assertRefused(client, pattern, method, ...args) {
  await assert.rejects(
    client.connection.invoke(method, ...args),
    (err) => {
      assert.ok(err instanceof Error, "rejects with an Error");
      assert.match(err.message, pattern);
      return true;
    },
    `${method}(${args.map((a) => JSON.stringify(a)).join(", ")}) should be refused`,
  );
  assert.equal(client.state, signalR.HubConnectionState.Connected, `still connected after ${method}`);
  assert.equal(client.closed, undefined, "onclose did not fire");
  const [probeMethod, ...probeArgs] = client.probe;
  const result = await client.connection.invoke(probeMethod, ...probeArgs);
  assert.equal(typeof result.group, "string", `a valid ${probeMethod} right after ${method} works`);
}

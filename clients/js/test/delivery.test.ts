// Exactly once and in order, against the real binary: across a dropped
// socket, a service restart, and a new feed on the same file store.

import { test } from "node:test";
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { join } from "node:path";

import { MessagePackHubProtocol } from "@microsoft/signalr-protocol-msgpack";

import { FeedEvent, MemoryCursorStore } from "../src/index.js";
import { FileCursorStore } from "../src/file-store.js";
import { Recorded, Server, harness, recordedFeed, tempDir, waitForEvent, webSocketOf } from "./support.js";

const { startServer, dispatcherToken, waitFor, sleep, T } = harness;

/**
 * A token factory that holds reconnects until `open()` (or 15 s, so a failed
 * test cannot leave a feed stuck): the test publishes while the feed is away.
 */
function gatedToken(token: string) {
  let gate: Promise<void> = Promise.resolve();
  let release = () => {};
  return {
    accessToken: async () => {
      await gate;
      return token;
    },
    close() {
      gate = new Promise((resolve) => {
        const timer = setTimeout(resolve, 15_000);
        release = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    },
    open: () => release(),
  };
}

/** Assigns `n` new jobs in `region` to `contractorId`; resolves with their eventIds, in publish order. */
async function assignMany(server: Server, region: string, contractorId: string, n: number): Promise<string[]> {
  const ids: string[] = [];
  for (let i = 0; i < n; i++) ids.push((await server.assignNew(region, contractorId)).assignment.eventId);
  return ids;
}

/** Each of `expected` reached the handlers once, in that order (which is publish order), and nothing else did. */
async function assertExactlyOnceInOrder(recorded: Recorded, expected: string[]): Promise<void> {
  await waitForEvent(recorded, expected[expected.length - 1]!, 20_000);
  await sleep(300); // time for a duplicate to show up
  const got = recorded.events.map((e: FeedEvent) => e.eventId);
  assert.deepEqual(got, expected, "each event once, in publish order");
  const sequences = recorded.events.map((e) => e.sequence);
  assert.ok(sequences.every((s, i) => i === 0 || s > sequences[i - 1]!), `increasing sequences: ${sequences}`);
  assert.deepEqual(recorded.errors, []);
}

for (const statefulReconnect of [false, true]) {
  test(`a dropped socket loses and repeats nothing (statefulReconnect: ${statefulReconnect}), also for an event of two joined groups`, T, async (t) => {
    const server = await startServer(t);
    const mine = await server.createContractor("north");
    const other = await server.createContractor("north");
    const token = gatedToken(await dispatcherToken(["north"]));
    // JobAssigned to `mine` goes to both groups: it must reach the handlers once.
    const recorded = recordedFeed(t, server, "", [{ dispatch: "north" }, { contractor: mine.id }], {
      accessToken: token.accessToken,
      statefulReconnect,
    });
    await recorded.feed.start();

    const before = [...(await assignMany(server, "north", mine.id, 2)), ...(await assignMany(server, "north", other.id, 1))];
    await waitForEvent(recorded, before[2]!);

    token.close();
    webSocketOf(recorded.feed).terminate();
    const gap = [...(await assignMany(server, "north", mine.id, 2)), ...(await assignMany(server, "north", other.id, 2))];
    for (const id of gap) await server.waitPublished(id);
    token.open();

    const after = await assignMany(server, "north", mine.id, 2);
    await assertExactlyOnceInOrder(recorded, [...before, ...gap, ...after]);
  });
}

test("a service restart (same data) loses and repeats nothing; the file store holds the last sequence", T, async (t) => {
  const server = await startServer(t);
  const contractor = await server.createContractor("north");
  const token = gatedToken(await dispatcherToken(["north"]));
  const path = join(await tempDir(t), "cursors.json");
  const recorded = recordedFeed(t, server, "", [{ dispatch: "north" }], {
    accessToken: token.accessToken,
    store: new FileCursorStore(path),
  });
  await recorded.feed.start();

  const before = await assignMany(server, "north", contractor.id, 3);
  await waitForEvent(recorded, before[2]!);

  token.close();
  assert.deepEqual(await server.terminate(), { code: 0, signal: null });
  await server.start(); // the same port and database
  const gap = await assignMany(server, "north", contractor.id, 3);
  for (const id of gap) await server.waitPublished(id);
  token.open();

  const after = await assignMany(server, "north", contractor.id, 2);
  await assertExactlyOnceInOrder(recorded, [...before, ...gap, ...after]);
  const last = recorded.events[recorded.events.length - 1]!.sequence;
  assert.deepEqual(JSON.parse(await readFile(path, "utf8")), { "dispatch/north": last });
});

test("a new JobsFeed on the same file store resumes where the last one stopped (and over MessagePack)", T, async (t) => {
  const server = await startServer(t);
  const contractor = await server.createContractor("north");
  const token = await dispatcherToken(["north"]);
  const path = join(await tempDir(t), "cursors.json");

  const first = recordedFeed(t, server, token, [{ dispatch: "north" }], { store: new FileCursorStore(path) });
  await first.feed.start();
  const handled = await assignMany(server, "north", contractor.id, 3);
  await assertExactlyOnceInOrder(first, handled);
  await first.feed.stop();

  const whileAway = await assignMany(server, "north", contractor.id, 3);
  for (const id of whileAway) await server.waitPublished(id);

  // Another process, another store object on the same file.
  const second = recordedFeed(t, server, token, [{ dispatch: "north" }], {
    store: new FileCursorStore(path),
    protocol: new MessagePackHubProtocol(),
  });
  await second.feed.start();
  const live = await assignMany(server, "north", contractor.id, 2);
  await assertExactlyOnceInOrder(second, [...whileAway, ...live]);
});

test("a handler that throws is reported and the feed goes on; every handler still gets each event", T, async (t) => {
  const server = await startServer(t);
  const contractor = await server.createContractor("north");
  const recorded = recordedFeed(t, server, await dispatcherToken(["north"]), [{ dispatch: "north" }]);
  const other: string[] = [];
  recorded.feed.on("JobAssigned", () => {
    throw new Error("a bug in the app");
  });
  const remove = recorded.feed.on("JobAssigned", async (e) => {
    await sleep(10);
    other.push(e.eventId);
  });
  await recorded.feed.start();

  const ids = await assignMany(server, "north", contractor.id, 3);
  await waitFor(() => other.length === 3, 10_000, "the async handler to see three events");
  assert.deepEqual(recorded.events.map((e) => e.eventId), ids);
  assert.deepEqual(other, ids);
  assert.deepEqual(recorded.errors.map((e) => [e.kind, (e.error as Error).message]), Array(3).fill(["handler", "a bug in the app"]));
  remove();
  const last = await assignMany(server, "north", contractor.id, 1);
  await waitForEvent(recorded, last[0]!);
  await sleep(100);
  assert.equal(other.length, 3, "a removed handler is not called");
});

test("a join refused as too far behind is reported to onResync, then the group is joined without a position", T, async (t) => {
  const server = await startServer(t);
  const contractor = await server.createContractor("north");
  const old = await assignMany(server, "north", contractor.id, 2);
  await server.waitPublished(old[1]!);
  const store = new MemoryCursorStore();
  store.set("dispatch/north", 1);
  const resyncs: unknown[] = [];
  const recorded = recordedFeed(t, server, await dispatcherToken(["north"]), [{ dispatch: "north" }], {
    store,
    onResync: (info) => void resyncs.push({ group: info.group, afterSequence: info.afterSequence, message: info.error.message }),
  });
  // The hub refuses a replay past its limits with this error; making it
  // refuse for real takes 10,001 events or a day's retention, so the
  // refusal is put in front of the real hub here.
  const message =
    "An unexpected error occurred invoking 'JoinDispatchGroup' on the server. HubException: More than 10000 events were missed; reload the state over HTTP and join without afterSequence.";
  const connection = recorded.feed.connection;
  const invoke = connection.invoke.bind(connection);
  const calls: unknown[][] = [];
  connection.invoke = (async (method: string, ...args: unknown[]) => {
    calls.push([method, ...args]);
    if (method === "JoinDispatchGroup" && args.length === 2) throw new Error(message);
    return invoke(method, ...args);
  }) as typeof connection.invoke;
  await recorded.feed.start();

  assert.deepEqual(calls, [["JoinDispatchGroup", "north", 1], ["JoinDispatchGroup", "north"]]);
  assert.deepEqual(resyncs, [{ group: "dispatch/north", afterSequence: 1, message }]);
  assert.equal(store.get("dispatch/north"), undefined, "the position that could not be resumed is forgotten");
  assert.deepEqual(recorded.events, [], "no replay: the app reloaded over HTTP");

  const live = await assignMany(server, "north", contractor.id, 1);
  await assertExactlyOnceInOrder(recorded, live);
  assert.equal(store.get("dispatch/north"), (recorded.events as FeedEvent[])[0]!.sequence);
});

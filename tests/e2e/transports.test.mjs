// The hub on every transport x protocol pair with the official Node client
// (@microsoft/signalr + @microsoft/signalr-protocol-msgpack): WebSockets+json,
// WebSockets+messagepack, ServerSentEvents+json, LongPolling+json,
// LongPolling+messagepack, and WebSockets+json again on the dedicated
// WebSocket adapter (SMARTSCHEDULER_HUB_WEBSOCKET=dedicated). For each pair:
// join both kinds of group and a burst arrives once, in order, with payloads
// equal to a WebSockets+json client's; replay with afterSequence; refused
// calls; a client that stops reading is closed as too slow and catches up;
// automatic reconnect across a server restart. The pairs come from
// lib/transports.mjs (PAIRS, connectPair).

import { test } from "node:test";
import assert from "node:assert/strict";

import {
  T,
  startServer,
  dispatcherToken,
  contractorToken,
  pool,
  sleep,
  signalR,
  waitFor,
  withTimeout,
} from "./lib/harness.mjs";
import { assertExactlyOnce, assertRefused, assertStrictlyIncreasing, waitForAll } from "./lib/assertions.mjs";
import {
  PAIRS,
  WS_JSON,
  assertOnPair,
  bareWsClient,
  connectPair,
  rawLongPolling,
  rawSse,
  resilientDispatcher,
} from "./lib/transports.mjs";

const REGION = "north";

/** A server for `pair` (its env, e.g. the dedicated adapter) plus `env`. */
const serverFor = (t, pair, env = {}) => startServer(t, { env: { ...pair.env, ...env } });

/** The slow-client-close counter of /metrics. */
async function slowCloses(server) {
  const text = await (await fetch(`${server.base}/metrics`)).text();
  const m = text.match(/^smartscheduler_hub_slow_client_closes (\d+)/m);
  return m ? Number(m[1]) : 0;
}

// The largest title (200 four-byte characters) makes each event ~1.7 KB.
const TITLE = "🪵".repeat(200);

for (const pair of PAIRS) {
  test(`${pair.name}: joins a dispatch and a contractor group; a burst of 50 arrives once, in order, equal to the WebSockets+json copy`, T, async (t) => {
    const server = await serverFor(t, pair);
    const contractor = await server.createContractor(REGION);
    const dispatchToken = await dispatcherToken([REGION]);

    const reference = await connectPair(server, dispatchToken, WS_JSON);
    await reference.connection.invoke("JoinDispatchGroup", REGION);
    const dispatcher = await connectPair(server, dispatchToken, pair);
    const self = await connectPair(server, await contractorToken(contractor.id), pair);
    assertOnPair(dispatcher, pair);
    assertOnPair(self, pair);
    assert.deepEqual(await dispatcher.connection.invoke("JoinDispatchGroup", REGION), { group: `dispatch/${REGION}`, replayed: 0 });
    assert.deepEqual(await self.connection.invoke("JoinContractorGroup", contractor.id), {
      group: `contractor/${contractor.id}`,
      replayed: 0,
    });

    const N = 50;
    const jobs = await pool(Array.from({ length: N }), 8, () => server.createJob(REGION));
    const assignments = await pool(jobs, 8, (job) => server.assign(job.id, contractor.id));
    const expected = new Set(assignments.map((a) => a.eventId));
    assert.equal(expected.size, N);

    const clients = { reference, dispatcher, contractor: self };
    await Promise.all(Object.entries(clients).map(([name, c]) => waitForAll(c, expected, 30_000, `${pair.name} ${name}`)));
    await sleep(500); // a duplicate would show up now
    for (const [name, c] of Object.entries(clients)) assertExactlyOnce(c, expected, `${pair.name} ${name}`);
    assert.deepEqual(dispatcher.events, reference.events, "the dispatcher's payloads are the WebSockets+json client's, in the same order");
    assert.deepEqual(self.events, reference.events, "the contractor's payloads are the WebSockets+json client's, in the same order");
    assert.equal(dispatcher.state, signalR.HubConnectionState.Connected);
    assert.equal(self.state, signalR.HubConnectionState.Connected);
  });

  test(`${pair.name}: a new connection joining with afterSequence gets exactly the missed events, then live ones`, T, async (t) => {
    const server = await serverFor(t, pair);
    const token = await dispatcherToken([REGION]);
    const north = await server.createContractor(REGION);
    const south = await server.createContractor("south");

    const first = await connectPair(server, token, pair);
    await first.connection.invoke("JoinDispatchGroup", REGION);
    const seen = [];
    for (let i = 0; i < 3; i++) seen.push((await server.assignNew(REGION, north.id)).assignment.eventId);
    await first.waitForEvents(3);
    assert.deepEqual(first.events.map((e) => e.eventId), seen);
    const lastSeq = Math.max(...first.bySequence());
    await first.connection.stop();

    // The gap: four north events (missed) and a south one (not ours).
    const missed = [];
    for (let i = 0; i < 4; i++) {
      missed.push((await server.assignNew(REGION, north.id)).assignment.eventId);
      if (i === 1) await server.assignNew("south", south.id);
    }
    for (const id of missed) await server.waitPublished(id);

    const second = await connectPair(server, token, pair);
    assert.deepEqual(await second.connection.invoke("JoinDispatchGroup", REGION, lastSeq), {
      group: `dispatch/${REGION}`,
      replayed: missed.length,
    });
    await second.waitForEvents(missed.length);
    const live = (await server.assignNew(REGION, north.id)).assignment.eventId;
    await second.waitForEvent(live);
    await sleep(500);
    assert.deepEqual(second.events.map((e) => e.eventId), [...missed, live], "exactly the missed events, in order, then the live one");
    assertStrictlyIncreasing(second.bySequence(), `${pair.name} replay then live`);
    assert.ok(second.events.every((e) => e.sequence > lastSeq));
  });

  test(`${pair.name}: refused joins and unknown methods reject with the hub's text, and the connection keeps working`, T, async (t) => {
    const server = await serverFor(t, pair);
    const a = await server.createContractor(REGION);
    const b = await server.createContractor(REGION);

    const dispatcher = await connectPair(server, await dispatcherToken([REGION]), pair);
    dispatcher.probe = ["JoinDispatchGroup", REGION];
    await assertRefused(dispatcher, /JoinDispatchGroup.*not allowed.*dispatch\/south/, "JoinDispatchGroup", "south");
    await assertRefused(dispatcher, /Unknown hub method 'NoSuchMethod'/, "NoSuchMethod", REGION);
    await assertRefused(dispatcher, /JoinDispatchGroup/, "JoinDispatchGroup", 42);

    const contractorA = await connectPair(server, await contractorToken(a.id), pair);
    contractorA.probe = ["JoinContractorGroup", a.id];
    await assertRefused(contractorA, /JoinContractorGroup.*not allowed/, "JoinContractorGroup", b.id);
    await assertRefused(contractorA, /JoinDispatchGroup.*not allowed/, "JoinDispatchGroup", REGION);
    await assertRefused(contractorA, /Unknown hub method 'GetEverything'/, "GetEverything");

    // Nothing refused left a membership behind, and the joins deliver.
    const toB = await server.assignNew(REGION, b.id);
    const toA = await server.assignNew(REGION, a.id);
    const southJob = await server.assignNew("south", (await server.createContractor("south")).id);
    await contractorA.waitForEvent(toA.assignment.eventId);
    await dispatcher.waitForEvent(toA.assignment.eventId);
    await server.waitPublished(toB.assignment.eventId);
    await server.waitPublished(southJob.assignment.eventId);
    await sleep(500);
    assert.deepEqual(contractorA.events.map((e) => e.eventId), [toA.assignment.eventId], "only A's own event");
    assert.deepEqual(
      dispatcher.events.map((e) => e.eventId),
      [toB.assignment.eventId, toA.assignment.eventId],
      "only north's events",
    );
  });

  // How a client "stops reading" depends on the transport:
  // - WebSockets: a hub client on a bare TCP socket that stops reading it (the
  //   official client's `ws` would keep reading); the kernel's socket buffers
  //   (several MB on loopback) fill first, hence 4,500 large events.
  // - ServerSentEvents: the event stream on node:http, paused: Node stops
  //   reading the socket once the response's buffer is full; same volume.
  // - LongPolling: a client driven by raw HTTP that simply stops polling: the
  //   records wait in the server's queue, so a tiny queue (16) overflows with
  //   40 events, long before the disconnect timeout (set to 120 s here).
  test(`${pair.name}: a client that stops reading is closed as too slow without slowing anyone, then catches up with afterSequence`, T, async (t) => {
    const lp = pair.transport === "LongPolling";
    const env = lp
      ? { SMARTSCHEDULER_HUB_QUEUE_MESSAGES: "16", SMARTSCHEDULER_HUB_DISCONNECT_SECONDS: "120" }
      : { SMARTSCHEDULER_HUB_QUEUE_MESSAGES: "256", SMARTSCHEDULER_HUB_QUEUE_BYTES: "131072" };
    const server = await serverFor(t, pair, env);
    const token = await dispatcherToken([REGION]);
    const fast = await connectPair(server, token, WS_JSON);
    await fast.connection.invoke("JoinDispatchGroup", REGION);

    let slow;
    if (pair.transport === "WebSockets") {
      slow = await bareWsClient(server, token, { protocol: pair.protocol });
      slow.stopReading();
    } else if (pair.transport === "ServerSentEvents") {
      slow = await rawSse(server, token, { protocol: pair.protocol });
      assert.deepEqual((await slow.invoke("1", "JoinDispatchGroup", REGION)).result, { group: `dispatch/${REGION}`, replayed: 0 });
      slow.stopReading();
    } else {
      slow = await rawLongPolling(server, token, { protocol: pair.protocol });
      assert.deepEqual((await slow.invoke("1", "JoinDispatchGroup", REGION)).result, { group: `dispatch/${REGION}`, replayed: 0 });
      // ...and polls no more.
    }
    t.after(() => slow.close());
    // It still sends Pings: the server must close it for not reading, not for
    // being silent (its 30 s client timeout), however long the burst takes.
    slow.pingEvery(5000);

    const contractor = await server.createContractor(REGION);
    const N = lp ? 40 : 4500;
    const jobs = await pool(Array.from({ length: N }), 16, () => server.createJob(REGION, { title: TITLE }));
    const assignments = await pool(jobs, lp ? 4 : 16, (job) => server.assign(job.id, contractor.id));
    assert.equal(assignments.length, N, "every assignment answered 201");

    // The reading client got everything, in order, while the other one stalled.
    await fast.waitForEvents(N, 60_000);
    const seqs = fast.bySequence();
    assertStrictlyIncreasing(seqs, "the reading client");
    assert.equal(new Set(fast.events.map((e) => e.eventId)).size, N);
    await waitFor(async () => (await slowCloses(server)) >= 1, 30_000, "a slow-client close in /metrics");

    let close;
    if (lp) {
      // The next poll brings what was kept and the Close record; the one after is 204.
      const last = await withTimeout(slow.poll(), 10_000, "the poll after the slow close");
      assert.equal(last.status, 200, `the poll after the close: ${last.status} ${last.text}`);
      close = slow.records.at(-1);
      assert.equal(close?.type, 7, `the poll ends with a Close record: ${JSON.stringify(slow.records.slice(-3))}`);
      const after = await withTimeout(slow.poll(), 10_000, "the poll after the Close record");
      assert.equal(after.status, 204, `the poll after the Close record: ${after.status} ${after.text}`);
    } else {
      // Reading again, the client drains what the kernel held, then the
      // server's side ends: with a Close when there was room for it.
      slow.resumeReading();
      await withTimeout(pair.transport === "WebSockets" ? slow.closed : slow.endedPromise, 30_000, "the stalled connection to end");
      close = slow.records.find((r) => r.type === 7);
    }
    if (close) {
      assert.equal(close.allowReconnect, true, JSON.stringify(close));
      assert.match(close.error, /did not keep up/);
    }

    // It catches up on the same pair: rejoin with the last sequence it processed.
    const got = slow.sequences();
    assertStrictlyIncreasing(got, "the slow client before it was closed");
    const last = got.length ? got.at(-1) : 0;
    assert.ok(got.length < N, "it really fell behind");
    const again = await connectPair(server, token, pair);
    const result = await again.connection.invoke("JoinDispatchGroup", REGION, last);
    await again.waitForEvents(N - got.length, 30_000);
    assert.equal(result.replayed, N - got.length);
    const all = [...got, ...again.bySequence()];
    assert.equal(new Set(all).size, N, "nothing missed, nothing twice");
    assert.deepEqual(new Set(all), new Set(seqs), "exactly the events the reader got");
  });

  test(`${pair.name}: after a server restart, automatic reconnect and a rejoin with afterSequence get what was missed`, T, async (t) => {
    const server = await serverFor(t, pair);
    const contractor = await server.createContractor(REGION);
    const token = await dispatcherToken([REGION]);
    const { client, state, openGate } = await resilientDispatcher(server, token, REGION, { pair });
    assertOnPair(client, pair);
    const { connection } = client;

    const before = (await server.assignNew(REGION, contractor.id)).assignment.eventId;
    await client.waitForEvent(before);

    const port = server.port;
    const exit = await server.terminate();
    assert.deepEqual(exit, { code: 0, signal: null }, "SIGTERM stops the service cleanly with this client connected");
    await waitFor(() => state.reconnecting === 1, 10_000, "onreconnecting after the server went away");
    assert.equal(client.closed, undefined, "the client did not give up");

    await server.start(); // same port, same database
    assert.equal(server.port, port);
    const gap = (await server.assignNew(REGION, contractor.id)).assignment.eventId;
    await server.waitPublished(gap);
    openGate();

    await waitFor(() => state.rejoins.length === 1 || state.rejoinErrors.length > 0, 20_000, "the rejoin");
    assert.deepEqual(state.rejoinErrors, []);
    assert.deepEqual(state.rejoins[0], { group: `dispatch/${REGION}`, replayed: 1 });
    assert.equal(state.reconnected, 1);
    assert.equal(connection.state, signalR.HubConnectionState.Connected);
    assertOnPair(client, pair);

    const after = (await server.assignNew(REGION, contractor.id)).assignment.eventId;
    await client.waitForEvent(after);
    await sleep(500);
    assert.deepEqual(client.events.map((e) => e.eventId), [before, gap, after], "each once, in order");
    assertStrictlyIncreasing(client.bySequence(), "across the restart");
  });
}

test("a messagepack client over ServerSentEvents only fails to start", T, async (t) => {
  const server = await startServer(t);
  const client = await connectPair(
    server,
    await dispatcherToken([REGION]),
    { name: "ServerSentEvents+messagepack", transport: "ServerSentEvents", protocol: "messagepack" },
    { start: false },
  );
  await assert.rejects(withTimeout(client.connection.start(), 15_000, "start()"), Error);
  assert.equal(client.state, signalR.HubConnectionState.Disconnected);
});

// withAutomaticReconnect + rejoin with afterSequence in onreconnected: no loss,
// no duplicate, whether the socket drops or the server restarts.

import { test } from "node:test";
import assert from "node:assert/strict";

import { startServer, dispatcherToken, rawConnect, waitFor, sleep, signalR, T } from "./lib/harness.mjs";
import { resilientDispatcher } from "./lib/transports.mjs";

test("after the socket drops, the client reconnects, rejoins with afterSequence and misses nothing", T, async (t) => {
  const server = await startServer(t);
  const contractor = await server.createContractor("north");
  const { client, state, openGate } = await resilientDispatcher(server, await dispatcherToken(["north"]), "north");
  const { connection } = client;

  const before = (await server.assignNew("north", contractor.id)).assignment.eventId;
  await client.waitForEvent(before);

  // Drop the transport under the client (not stop()): like a network failure.
  const socket = connection.connection.transport._webSocket;
  assert.ok(socket, "found the client's WebSocket");
  socket.terminate();
  await waitFor(() => state.reconnecting === 1, 5000, "onreconnecting");
  assert.equal(connection.state, signalR.HubConnectionState.Reconnecting);

  // While the client is away:
  const gap = (await server.assignNew("north", contractor.id)).assignment.eventId;
  await server.waitPublished(gap);
  await sleep(300);
  assert.ok(!client.events.some((e) => e.eventId === gap), "the gap event was not received live");
  openGate();

  await waitFor(() => state.rejoins.length === 1 || state.rejoinErrors.length > 0, 15_000, "the rejoin");
  assert.deepEqual(state.rejoinErrors, []);
  assert.equal(state.reconnected, 1);
  assert.equal(connection.state, signalR.HubConnectionState.Connected);
  assert.deepEqual(state.rejoins[0], { group: "dispatch/north", replayed: 1 }, "the gap event was replayed");
  await client.waitForEvent(gap);

  const after = (await server.assignNew("north", contractor.id)).assignment.eventId;
  await client.waitForEvent(after);
  await sleep(500);
  assert.deepEqual(client.events.map((e) => e.eventId), [before, gap, after], "each once, in order");
  const seqs = client.events.map((e) => e.sequence);
  assert.ok(seqs[0] < seqs[1] && seqs[1] < seqs[2], `increasing sequences ${seqs}`);
});

test("a server restart (SIGTERM, Close with allowReconnect) is survived the same way", T, async (t) => {
  const server = await startServer(t);
  const contractor = await server.createContractor("north");
  const token = await dispatcherToken(["north"]);
  const { client, state, openGate } = await resilientDispatcher(server, token, "north");
  const { connection } = client;

  const before = (await server.assignNew("north", contractor.id)).assignment.eventId;
  await client.waitForEvent(before);

  const port = server.port;
  const exit = await server.terminate();
  assert.deepEqual(exit, { code: 0, signal: null }, "SIGTERM stops the service cleanly");
  await waitFor(() => state.reconnecting === 1, 5000, "onreconnecting after the server closed the connection");
  assert.equal(client.closed, undefined, "the client did not give up: the Close record allowed reconnecting");

  await server.start(); // same port, same database
  assert.equal(server.port, port);
  const gap = (await server.assignNew("north", contractor.id)).assignment.eventId;
  await server.waitPublished(gap);
  openGate();

  await waitFor(() => state.rejoins.length === 1 || state.rejoinErrors.length > 0, 20_000, "the rejoin");
  assert.deepEqual(state.rejoinErrors, []);
  assert.deepEqual(state.rejoins[0], { group: "dispatch/north", replayed: 1 });
  assert.equal(state.reconnected, 1);
  assert.equal(connection.state, signalR.HubConnectionState.Connected);

  const after = (await server.assignNew("north", contractor.id)).assignment.eventId;
  await client.waitForEvent(after);
  await sleep(500);
  assert.deepEqual(client.events.map((e) => e.eventId), [before, gap, after], "each once, in order");
  const seqs = client.events.map((e) => e.sequence);
  assert.ok(seqs[0] < seqs[1] && seqs[1] < seqs[2], `sequences keep increasing across the restart: ${seqs}`);
});

test("withStatefulReconnect rides out an abrupt socket drop with no rejoin: what was sent meanwhile arrives", async (t) => {
  const server = await startServer(t);
  const contractor = await server.createContractor("north");
  const client = await server.connect(await dispatcherToken(["north"]), {
    start: false,
    configure: (builder) => builder.withStatefulReconnect(),
  });
  const { connection } = client;
  let reconnecting = 0;
  connection.onreconnecting(() => reconnecting++);
  await connection.start();
  await connection.invoke("JoinDispatchGroup", "north");

  const before = (await server.assignNew("north", contractor.id)).assignment.eventId;
  await client.waitForEvent(before);

  // Hold the client's reattach until the test has published an event while
  // the socket is down (the client reattaches the same connection token).
  const transport = connection.connection.transport;
  const reattach = transport.connect.bind(transport);
  let release;
  const gate = new Promise((resolve) => (release = resolve));
  let reattached = 0;
  transport.connect = async (...args) => {
    reattached++;
    await gate;
    return reattach(...args);
  };
  // No close frame: a reset, as when the network drops.
  transport._webSocket.terminate();
  await waitFor(() => reattached === 1, 5000, "the client to start reattaching");

  const gap = (await server.assignNew("north", contractor.id)).assignment.eventId;
  await server.waitPublished(gap);
  await sleep(200);
  assert.ok(!client.events.some((e) => e.eventId === gap), "nothing arrives while the socket is down");
  release();

  await client.waitForEvent(gap, 10_000);
  const after = (await server.assignNew("north", contractor.id)).assignment.eventId;
  await client.waitForEvent(after);
  await sleep(500);
  assert.deepEqual(client.events.map((e) => e.eventId), [before, gap, after], "each once, in order, without rejoining");
  assert.equal(reconnecting, 0, "no hub-level reconnect was needed");
  assert.equal(client.closed, undefined);
  assert.equal(connection.state, signalR.HubConnectionState.Connected);
  assert.deepEqual(await connection.invoke("LeaveDispatchGroup", "north"), { group: "dispatch/north" }, "calls still work");
});

test("a stateful reattach that arrives while the old socket still looks open takes the connection over", T, async (t) => {
  const server = await startServer(t);
  const token = await dispatcherToken(["north"]);
  const contractor = await server.createContractor("north");
  const res = await fetch(`${server.base}/hubs/jobs/negotiate?negotiateVersion=1&useStatefulReconnect=true`, {
    method: "POST",
    headers: { authorization: `Bearer ${token}` },
  });
  const negotiated = await res.json();
  assert.equal(negotiated.useStatefulReconnect, true);
  const id = negotiated.connectionToken;

  // The first socket: handshake version 2 (stateful), joined, one event received.
  const first = await rawConnect(server, token, { id, handshake: false });
  first.sendRecord({ protocol: "json", version: 2 });
  await first.waitForRecord((r) => Object.keys(r).length === 0, 5000, "the handshake reply");
  first.sendRecord({ type: 1, invocationId: "1", target: "JoinDispatchGroup", arguments: ["north"] });
  assert.equal((await first.waitForCompletion("1")).error, undefined);
  const before = (await server.assignNew("north", contractor.id)).assignment.eventId;
  await first.waitForRecord((r) => r.type === 1 && r.arguments?.[0]?.eventId === before, 5000, "the first event");

  // The client has given up on that socket, but the server has not seen it
  // die (no close, no reset): the reattach comes in while it is still open.
  const second = await rawConnect(server, token, { id, handshake: false });
  await second.waitForRecord((r) => r.type === 9, 5000, "the server's Sequence");
  assert.equal(second.records[0].type, 9, "no handshake on a reattach: the Sequence comes first");
  // Nothing was acknowledged on the first socket: the event is sent again.
  await second.waitForRecord((r) => r.type === 1 && r.arguments?.[0]?.eventId === before, 5000, "the unacknowledged event");
  await first.waitForClose(5000);
  assert.ok(!first.records.some((r) => r.type === 7), "no Close record on the replaced socket: the client has moved on");

  // The connection lives on on the new socket: still joined, calls work.
  const after = (await server.assignNew("north", contractor.id)).assignment.eventId;
  const event = await second.waitForRecord((r) => r.type === 1 && r.arguments?.[0]?.eventId === after, 5000, "the next event");
  assert.equal(event.target, "JobAssigned");
  second.sendRecord({ type: 1, invocationId: "2", target: "LeaveDispatchGroup", arguments: ["north"] });
  assert.deepEqual((await second.waitForCompletion("2")).result, { group: "dispatch/north" });
  assert.equal(second.closed, undefined, "the new socket stays open");
});

// The SignalR JSON protocol on the wire, with a raw `ws` client.

import { test } from "node:test";
import assert from "node:assert/strict";

import { startServer, dispatcherToken, rawConnect, RS, sleep, waitFor, signalR, T } from "./lib/harness.mjs";

const JOIN_NORTH = { type: 1, invocationId: "1", target: "JoinDispatchGroup", arguments: ["north"] };

/** Every frame the server sent is a text frame whose content ends in the separator. */
function assertWellFramed(raw) {
  for (const frame of raw.frames) {
    assert.equal(frame.text, true, `text frame: ${JSON.stringify(frame.data)}`);
    assert.ok(frame.data.endsWith(RS), `frame ends in 0x1E: ${JSON.stringify(frame.data)}`);
  }
}

test("the handshake reply is exactly {}\\x1e in a text frame", T, async (t) => {
  const server = await startServer(t);
  const token = await dispatcherToken(["north"]);
  const raw = await rawConnect(server, token, { handshake: false });
  raw.send(`{"protocol":"json","version":1}${RS}`);
  await waitFor(() => raw.frames.length >= 1, 5000, "the handshake reply");
  assert.deepEqual(raw.frames[0], { text: true, data: `{}${RS}` });

  // The handshake can share a frame with the first records, and a record can span frames.
  const other = await rawConnect(server, token, { handshake: false });
  other.send(`{"protocol":"json","version":1}${RS}{"type":6}${RS}{"type":1,"invocationId":"a","tar`);
  other.send(`get":"JoinDispatchGroup","arguments":["north"]}${RS}`);
  const done = await other.waitForCompletion("a");
  assert.deepEqual(other.records[0], {}, "the handshake reply comes first");
  assert.deepEqual(done, { type: 3, invocationId: "a", result: { group: "dispatch/north", replayed: 0 } });
  assertWellFramed(raw);
  assertWellFramed(other);
});

test("an unsupported protocol gets ASP.NET's handshake error, then the socket closes", T, async (t) => {
  const server = await startServer(t);
  const token = await dispatcherToken(["north"]);
  const raw = await rawConnect(server, token, { handshake: false });
  raw.send(`{"protocol":"xml","version":1}${RS}`);
  await raw.waitForClose();
  assert.deepEqual(raw.frames, [{ text: true, data: `{"error":"The protocol 'xml' is not supported."}${RS}` }]);

  const v3 = await rawConnect(server, token, { handshake: false });
  v3.send(`{"protocol":"json","version":3}${RS}`);
  await v3.waitForClose();
  assert.equal(v3.records.length, 1);
  assert.equal(typeof v3.records[0].error, "string");
});

test("two records in one frame are both processed; an invocation without invocationId gets no Completion", T, async (t) => {
  const server = await startServer(t);
  const token = await dispatcherToken(["north"]);
  const contractor = await server.createContractor("north");

  const raw = await rawConnect(server, token);
  raw.send(`{"type":6}${RS}${JSON.stringify(JOIN_NORTH)}${RS}`);
  const done = await raw.waitForCompletion("1");
  assert.deepEqual(done, { type: 3, invocationId: "1", result: { group: "dispatch/north", replayed: 0 } });

  // A send (no invocationId) is executed but not answered.
  const silent = await rawConnect(server, token);
  silent.sendRecord({ type: 1, target: "JoinDispatchGroup", arguments: ["north"] });
  silent.sendRecord({ type: 1, target: "NoSuchMethod", arguments: [] });
  silent.sendRecord({ type: 1, invocationId: "2", target: "LeaveDispatchGroup", arguments: ["nowhere"] });
  await silent.waitForCompletion("2");
  const { assignment } = await server.assignNew("north", contractor.id);
  await silent.waitForRecord((r) => r.type === 1 && r.target === "JobAssigned", 10_000, "the JobAssigned");
  await raw.waitForRecord((r) => r.type === 1 && r.target === "JobAssigned", 10_000, "the JobAssigned");
  await sleep(300);
  const completions = silent.records.filter((r) => r.type === 3);
  assert.deepEqual(
    completions.map((r) => r.invocationId),
    ["2"],
    "only the invocation with an id was answered",
  );
  assert.equal(silent.events()[0].eventId, assignment.eventId, "the join sent without an id took effect");

  // The pushed invocation has no invocationId key (a null would break clients).
  const pushed = silent.records.find((r) => r.type === 1);
  assert.deepEqual(Object.keys(pushed).sort(), ["arguments", "target", "type"]);
  assert.equal(pushed.arguments.length, 1);
  assertWellFramed(raw);
  assertWellFramed(silent);
});

test("garbage after the handshake gets a Close record without allowReconnect; other clients keep working", T, async (t) => {
  const server = await startServer(t);
  const token = await dispatcherToken(["north"]);
  const contractor = await server.createContractor("north");
  const bystander = await server.connect(token);
  await bystander.connection.invoke("JoinDispatchGroup", "north");

  const raw = await rawConnect(server, token);
  raw.sendRecord(JOIN_NORTH);
  await raw.waitForCompletion("1");
  raw.send(`not json${RS}`);
  await raw.waitForClose();
  const close = raw.records.at(-1);
  assert.equal(close.type, 7, `a Close record last: ${JSON.stringify(raw.recordTexts)}`);
  assert.equal(typeof close.error, "string");
  assert.ok(close.error.length > 0);
  assert.ok(!close.allowReconnect, "no allowReconnect for a protocol error");
  assertWellFramed(raw);

  const { assignment } = await server.assignNew("north", contractor.id);
  await bystander.waitForEvent(assignment.eventId);
  assert.equal(bystander.state, signalR.HubConnectionState.Connected);

  // A binary frame is not the JSON protocol either.
  const binary = await rawConnect(server, token);
  binary.ws.send(Buffer.from(`{"type":6}${RS}`), { binary: true });
  await binary.waitForClose();
  assert.equal(binary.records.at(-1).type, 7);
  assert.ok(!binary.records.at(-1).allowReconnect);
});

test("the server pings an idle connection within the keep-alive interval (15 s)", T, async (t) => {
  const server = await startServer(t);
  const raw = await rawConnect(server, await dispatcherToken(["north"]));
  const started = Date.now();
  // Keep the client side alive (the server times clients out after 30 s of silence).
  const timer = setInterval(() => raw.sendRecord({ type: 6 }), 5000);
  t.after(() => clearInterval(timer));
  await raw.waitForRecord((r) => r.type === 6, 25_000, "a Ping from the server");
  const elapsed = Date.now() - started;
  assert.ok(elapsed >= 10_000, `the first ping came after ${elapsed} ms, not right away`);
  assert.ok(elapsed <= 19_000, `the first ping came after ${elapsed} ms`);
  assert.equal(raw.closed, undefined, "the connection is still open");
  assertWellFramed(raw);
});

test("a client silent for 30 s is closed with allowReconnect, having been pinged first", T, async (t) => {
  const server = await startServer(t);
  const raw = await rawConnect(server, await dispatcherToken(["north"]));
  const started = Date.now();
  // The client sends nothing after its handshake.
  const close = await raw.waitForRecord((r) => r.type === 7, 45_000, "a Close record for the silent client");
  const elapsed = Date.now() - started;
  assert.ok(elapsed >= 29_000, `closed after ${elapsed} ms, before the 30 s client timeout`);
  assert.ok(elapsed <= 40_000, `closed after ${elapsed} ms, long after the 30 s client timeout`);
  assert.match(close.error, /timeout/i);
  assert.equal(close.allowReconnect, true);
  assert.ok(raw.records.some((r) => r.type === 6), "the server pinged before giving up");
  assertWellFramed(raw);
});

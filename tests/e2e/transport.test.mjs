// Negotiate, the WebSocket endpoint and authentication.

import { test } from "node:test";
import assert from "node:assert/strict";

import {
  startServer,
  dispatcherToken,
  mintToken,
  signJwt,
  negotiate,
  rawConnect,
  signalR,
  SECRET,
  T,
} from "./lib/harness.mjs";

test("skipNegotiation with the WebSockets transport connects, joins and receives", T, async (t) => {
  const server = await startServer(t);
  const contractor = await server.createContractor("north");
  const client = await server.connect(await dispatcherToken(["north"]), {
    httpOptions: { skipNegotiation: true, transport: signalR.HttpTransportType.WebSockets },
  });
  assert.equal(client.state, signalR.HubConnectionState.Connected);
  assert.deepEqual(await client.connection.invoke("JoinDispatchGroup", "north"), { group: "dispatch/north", replayed: 0 });
  const { assignment } = await server.assignNew("north", contractor.id);
  const payload = await client.waitForEvent(assignment.eventId);
  assert.equal(payload.contractorId, contractor.id);
  assert.ok(server.log.includes("path=/hubs/jobs status=101"), "the WebSocket was upgraded");
  assert.ok(!server.log.includes("path=/hubs/jobs/negotiate"), "no negotiate request was made");
});

test("start() rejects with 401 without a token, with an expired one and with a forged one", T, async (t) => {
  const server = await startServer(t);
  const now = Math.floor(Date.now() / 1000);
  const expired = signJwt({ sub: "old", role: "Dispatcher", regions: ["north"], exp: now - 3600, iat: now - 7200 });
  const forged = await mintToken({ role: "Admin", secret: "not-the-server-secret-0123456789abcdef" });
  const wrongAlgorithm = (() => {
    const b64 = (v) => Buffer.from(JSON.stringify(v)).toString("base64url");
    return `${b64({ typ: "JWT", alg: "none" })}.${b64({ sub: "x", role: "Admin", exp: now + 3600 })}.`;
  })();
  const cases = { none: null, expired, forged, wrongAlgorithm, garbage: "not-a-token" };
  for (const [name, token] of Object.entries(cases)) {
    const client = await server.connect(token, { start: false });
    await assert.rejects(client.connection.start(), /Status code '401'/, `start() with ${name} token`);
    assert.equal(client.state, signalR.HubConnectionState.Disconnected);
    const res = await negotiate(server, token);
    assert.equal(res.status, 401, `negotiate with ${name} token`);
    assert.match(res.headers.get("content-type"), /^application\/problem\+json/);
    assert.equal(res.json.status, 401);
    assert.match(res.headers.get("www-authenticate") ?? "", /^Bearer/);
  }
  // And with skipNegotiation the WebSocket upgrade itself is refused.
  for (const [name, token] of Object.entries(cases)) {
    await assert.rejects(
      rawConnect(server, token, { skipNegotiation: true, handshake: false }),
      (err) => err.status === 401,
      `upgrade without negotiate, ${name} token`,
    );
  }
  // The secret the suite uses works, so the refusals above were about the tokens.
  const ok = await server.connect(signJwt({ sub: "fresh", role: "Admin", exp: now + 600 }, SECRET));
  assert.equal(ok.state, signalR.HubConnectionState.Connected);
});

test("negotiate answers negotiateVersion 1 with a URL-safe token and every transport", T, async (t) => {
  const server = await startServer(t);
  const token = await dispatcherToken(["north"]);
  const res = await negotiate(server, token);
  assert.equal(res.status, 200);
  assert.match(res.headers.get("content-type"), /^application\/json/);
  const body = res.json;
  assert.equal(body.negotiateVersion, 1);
  assert.equal(typeof body.connectionId, "string");
  assert.ok(body.connectionId.length > 0);
  assert.match(body.connectionToken, /^[A-Za-z0-9_-]+$/);
  assert.notEqual(body.connectionToken, body.connectionId, "the secret token is not the public id");
  assert.ok(Array.isArray(body.availableTransports));
  const ws = body.availableTransports.find((x) => x.transport === "WebSockets");
  assert.ok(ws, "WebSockets is offered");
  assert.ok(ws.transferFormats.includes("Text"));
  assert.deepEqual(
    body.availableTransports,
    [
      { transport: "WebSockets", transferFormats: ["Text", "Binary"] },
      { transport: "ServerSentEvents", transferFormats: ["Text"] },
      { transport: "LongPolling", transferFormats: ["Text", "Binary"] },
    ],
    "every transport, in the order the client should try them, with ASP.NET's formats",
  );
  assert.ok(!("ProtocolVersion" in body), "no ProtocolVersion key (old clients would redirect on it)");
  assert.ok(!("url" in body) && !("accessToken" in body), "no redirect");
  assert.ok(!("error" in body));

  const again = await negotiate(server, token);
  assert.notEqual(again.json.connectionToken, body.connectionToken, "each negotiate gives a new token");

  // Browsers send the token in the query instead of a header.
  const viaQuery = await fetch(`${server.base}/hubs/jobs/negotiate?negotiateVersion=1&access_token=${encodeURIComponent(token)}`, {
    method: "POST",
  });
  assert.equal(viaQuery.status, 200);
});

test("an attach refused for another subject's bearer does not use up the connection token: its owner then connects", T, async (t) => {
  const server = await startServer(t);
  const token = await dispatcherToken(["north"]);
  const other = await mintToken({ role: "Dispatcher", regions: ["north"], sub: "somebody-else" });
  const { json } = await negotiate(server, token);

  await assert.rejects(
    rawConnect(server, other, { id: json.connectionToken, handshake: false }),
    (err) => err.status === 403 && /does not match/.test(err.body),
    "another subject's bearer is refused",
  );
  const owner = await rawConnect(server, token, { id: json.connectionToken });
  assert.deepEqual(owner.records[0], {}, "the owner's attach after the refusal works");
  await assert.rejects(
    rawConnect(server, token, { id: json.connectionToken, handshake: false }),
    (err) => err.status === 404,
    "and then the token is used",
  );
});

test("connection tokens are capped at 4,096 characters: negotiate refuses claims that would need more, the WebSocket refuses 4,097", T, async (t) => {
  const server = await startServer(t);
  // 60 regions of 60 characters: about 3.7 KB of ticket, a token of about 5,000 characters.
  const regions = Array.from({ length: 60 }, (_, i) => `r${String(i).padStart(2, "0")}`.padEnd(60, "x"));
  const large = await mintToken({ role: "Dispatcher", regions, sub: "many-regions" });
  const refused = await negotiate(server, large);
  assert.equal(refused.status, 400, refused.text);
  assert.match(refused.headers.get("content-type"), /application\/problem\+json/);
  assert.match(refused.json.detail, /too large/);

  // A little smaller still fits, and connects.
  const fits = await mintToken({ role: "Dispatcher", regions: regions.slice(0, 30), sub: "fewer-regions" });
  const n = await negotiate(server, fits);
  assert.equal(n.status, 200, n.text);
  assert.ok(n.json.connectionToken.length <= 4096, `${n.json.connectionToken.length} characters`);
  const ok = await rawConnect(server, fits, { id: n.json.connectionToken });
  assert.deepEqual(ok.records[0], {});

  await assert.rejects(
    rawConnect(server, fits, { id: "A".repeat(4097), handshake: false }),
    (err) => err.status === 404,
    "an id of 4,097 characters",
  );
});

test("the WebSocket endpoint: unknown or reused ids get 404, another subject's token 403", T, async (t) => {
  const server = await startServer(t);
  const token = await dispatcherToken(["north"]);

  await assert.rejects(
    rawConnect(server, token, { id: "no-such-connection-token", handshake: false }),
    (err) => err.status === 404,
    "unknown id",
  );

  const { json } = await negotiate(server, token);
  const first = await rawConnect(server, token, { id: json.connectionToken });
  assert.deepEqual(first.records[0], {}, "the first use works");
  await assert.rejects(
    rawConnect(server, token, { id: json.connectionToken, handshake: false }),
    (err) => err.status === 404,
    "a connection token is single-use",
  );

  // The token may come in the query string (browsers) instead of the header.
  const viaQuery = await rawConnect(server, token, {
    id: (await negotiate(server, token)).json.connectionToken,
    tokenInQuery: true,
    query: { access_token: token },
  });
  assert.deepEqual(viaQuery.records[0], {});

  // A negotiated id cannot be taken over with someone else's token.
  const other = await mintToken({ role: "Dispatcher", regions: ["north"], sub: "somebody-else" });
  const { json: mine } = await negotiate(server, token);
  await assert.rejects(
    rawConnect(server, other, { id: mine.connectionToken, handshake: false }),
    (err) => err.status === 403,
    "another subject's token",
  );

  // A plain GET that is not an upgrade is a Long Polling connection's first
  // poll (answered at once), and uses the token up for WebSockets.
  const polled = (await negotiate(server, token)).json.connectionToken;
  const plain = await fetch(`${server.base}/hubs/jobs?id=${polled}`, { headers: { authorization: `Bearer ${token}` } });
  assert.equal(plain.status, 200, "the first poll");
  assert.equal(await plain.text(), "", "answered at once, empty");
  await assert.rejects(
    rawConnect(server, token, { id: polled, handshake: false }),
    (err) => err.status === 404,
    "a token a poll used is not a WebSocket's too",
  );
  // Without an id, only a WebSocket may connect (skipNegotiation).
  const anonymous = await fetch(`${server.base}/hubs/jobs`, { headers: { authorization: `Bearer ${token}` } });
  assert.equal(anonymous.status, 400, "Long Polling and SSE need negotiate's id");
});

test("CORS: a configured origin may negotiate from a browser (preflight with credentials), others may not", T, async (t) => {
  const allowed = "https://dispatch.example.com";
  const server = await startServer(t, { env: { SMARTSCHEDULER_CORS_ORIGINS: `${allowed},http://localhost:5173` } });
  const url = `${server.base}/hubs/jobs/negotiate?negotiateVersion=1`;
  const preflight = (origin) =>
    fetch(url, {
      method: "OPTIONS",
      headers: {
        origin,
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization,x-requested-with,x-signalr-user-agent",
      },
    });

  const ok = await preflight(allowed);
  assert.ok(ok.status === 200 || ok.status === 204, `preflight status ${ok.status}`);
  assert.equal(ok.headers.get("access-control-allow-origin"), allowed, "the origin is echoed, not *");
  assert.equal(ok.headers.get("access-control-allow-credentials"), "true");
  const allowedHeaders = (ok.headers.get("access-control-allow-headers") ?? "").toLowerCase();
  for (const h of ["authorization", "x-requested-with", "x-signalr-user-agent"]) {
    assert.ok(allowedHeaders.includes(h), `allows ${h}: ${allowedHeaders}`);
  }
  assert.match(ok.headers.get("access-control-allow-methods") ?? "", /POST/);

  const evil = await preflight("https://evil.example.com");
  assert.equal(evil.headers.get("access-control-allow-origin"), null, "an unlisted origin gets no CORS grant");

  const token = await dispatcherToken(["north"]);
  const actual = await fetch(url, { method: "POST", headers: { origin: allowed, authorization: `Bearer ${token}` } });
  assert.equal(actual.status, 200);
  assert.equal(actual.headers.get("access-control-allow-origin"), allowed);
  assert.equal(actual.headers.get("access-control-allow-credentials"), "true");
});

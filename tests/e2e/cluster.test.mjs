// Several nodes on one PostgreSQL database, Redis as the wake-up bus: each
// test creates a fresh database (ss_e2e_<random>) and its own redis-server,
// starts two processes of the real binary on port 0, and drives official
// @microsoft/signalr clients on each node. Everything (clients, nodes, Redis,
// the database) is removed by one t.after, whatever the outcome.
//
// Needs PostgreSQL (E2E_PG_ADMIN_URL, default postgres://postgres@127.0.0.1:5432/postgres,
// through `psql`) and `redis-server`; without them the tests are skipped, or
// fail with CI=true.

import { test } from "node:test";
import assert from "node:assert/strict";

import {
  T,
  dispatcherToken,
  nextSlot,
  pool,
  connect,
  rawConnect,
  negotiate,
  requireCluster,
  sleep,
  startCluster,
  startSwitchProxy,
  waitFor,
  withTimeout,
} from "./lib/harness.mjs";
import { assertExactlyOnce, assertStrictlyIncreasing, waitForAll } from "./lib/assertions.mjs";

const REGION = "north";

let northToken;
const northDispatcherToken = async () => (northToken ??= await dispatcherToken([REGION]));

/** A north dispatcher on `node` (official client, JobAssigned registered before start), joined. */
async function dispatcher(node) {
  const client = await node.connect(await northDispatcherToken());
  const joined = await client.connection.invoke("JoinDispatchGroup", REGION);
  assert.equal(joined.group, `dispatch/${REGION}`);
  client.node = node;
  return client;
}

/**
 * Creates `jobs` north jobs and `contractors` north contractors, spread over
 * the nodes. Returns `{jobs, contractors}`.
 */
async function catalog(nodes, { jobs, contractors }) {
  const cs = await pool(range(contractors), 8, (i) => nodes[i % nodes.length].createContractor(REGION, { name: `C${i}` }));
  const js = await pool(range(jobs), 16, (i) => nodes[i % nodes.length].createJob(REGION, { title: `Job ${i}` }));
  return { jobs: js, contractors: cs };
}

const range = (n) => Array.from({ length: n }, (_, i) => i);

const debug = (...args) => {
  if (process.env.E2E_DEBUG) console.error("#", ...args);
};

/**
 * POST assign on `node`; never throws. Resolves `{node, status, eventId?,
 * error?}` (status 0 when the request itself failed, e.g. the node died).
 */
async function tryAssign(node, jobId, contractorId) {
  const { startUtc, endUtc } = nextSlot();
  try {
    const res = await node.request("POST", `/api/jobs/${jobId}/assign`, {
      token: await node.adminToken(),
      body: { contractorId, startUtc, endUtc },
    });
    return { node: node.name, status: res.status, eventId: res.json?.eventId, body: res.text };
  } catch (err) {
    return { node: node.name, status: 0, error: String(err.cause?.code ?? err.message) };
  }
}

/** Every Published row of the EventLog, by eventId, read from `node`. */
async function eventLog(node) {
  const token = await node.adminToken();
  const rows = new Map();
  let after = 0;
  for (;;) {
    const page = await node.expect(200, "GET", `/api/events?afterSequence=${after}&limit=500`, { token });
    for (const e of page.items) rows.set(e.eventId, e);
    if (page.items.length < 500 || page.nextAfterSequence == null) return rows;
    after = page.nextAfterSequence;
  }
}

function logs(cluster) {
  return cluster.nodes.map((n) => `--- node ${n.name} (${n.base}) ---\n${n.log.slice(-3000)}`).join("\n");
}

test("an assignment made on node A reaches north dispatchers on node B and on node A (and the other way round)", T, async (t) => {
  if (!(await requireCluster(t))) return;
  const cluster = await startCluster(t);
  const [a, b] = cluster.nodes;
  const onA = await dispatcher(a);
  const onB = await dispatcher(b);
  const contractor = await a.createContractor(REGION);

  // On A (the first node: it holds the publisher lease).
  const first = await a.assignNew(REGION, contractor.id);
  const [gotB, gotA] = await Promise.all([
    onB.waitForEvent(first.assignment.eventId, 10_000),
    onA.waitForEvent(first.assignment.eventId, 10_000),
  ]);
  assert.equal(gotB.jobId, first.job.id);
  assert.equal(gotB.type, "JobAssigned");
  assert.equal(gotB.sequence, gotA.sequence, "the same sequence on both nodes");
  const row = await b.getEvent(first.assignment.eventId);
  assert.equal(row.status, "Published");
  assert.equal(row.sequence, gotB.sequence, "the EventLog's sequence");

  // On B (not the publisher: its row is published by A's relay).
  const second = await b.assignNew(REGION, contractor.id);
  const [gotA2, gotB2] = await Promise.all([
    onA.waitForEvent(second.assignment.eventId, 10_000),
    onB.waitForEvent(second.assignment.eventId, 10_000),
  ]);
  assert.equal(gotA2.sequence, gotB2.sequence);
  assert.ok(gotA2.sequence > gotA.sequence);
  await sleep(300);
  assert.equal(onA.events.length, 2, "one copy each on A");
  assert.equal(onB.events.length, 2, "one copy each on B");
});

test("400 assignments split over both nodes reach every client on both nodes exactly once, in strictly increasing sequence", T, async (t) => {
  if (!(await requireCluster(t))) return;
  const cluster = await startCluster(t);
  const [a, b] = cluster.nodes;
  const N = 400;
  const clients = [await dispatcher(a), await dispatcher(b), await dispatcher(a), await dispatcher(b)];
  const { jobs, contractors } = await catalog(cluster.nodes, { jobs: N, contractors: 25 });

  // Alternating A/B, in concurrent chunks of 40.
  const results = [];
  for (let start = 0; start < N; start += 40) {
    const chunk = range(Math.min(40, N - start)).map((k) => start + k);
    results.push(
      ...(await Promise.all(
        chunk.map((i) => tryAssign(cluster.nodes[i % 2], jobs[i].id, contractors[i % contractors.length].id)),
      )),
    );
  }
  const refused = results.filter((r) => r.status !== 201);
  assert.deepEqual(refused, [], "every assignment got 201");
  const expected = new Set(results.map((r) => r.eventId));
  assert.equal(expected.size, N, "400 distinct eventIds");

  await Promise.all(clients.map((c, i) => waitForAll(c, expected, 30_000, `client ${i} on node ${c.node.name}`)));
  await sleep(1000); // a duplicate would show up now
  clients.forEach((c, i) => assertExactlyOnce(c, expected, `client ${i} on node ${c.node.name}`));
  const order = clients[0].events.map((e) => e.eventId).join();
  for (const c of clients) assert.equal(c.events.map((e) => e.eventId).join(), order, "one publish order on every node");

  // The sequences are the EventLog's, read on either node.
  const logged = await eventLog(b);
  for (const e of clients[0].events) assert.equal(e.sequence, logged.get(e.eventId)?.sequence, `sequence of ${e.eventId}`);
});

test("the node holding the publisher lease is SIGKILLed in a burst: every 201 reaches the survivor's client and is Published", T, async (t) => {
  if (!(await requireCluster(t))) return;
  const cluster = await startCluster(t);
  const N = 200;
  const clients = await Promise.all(cluster.nodes.map((n) => dispatcher(n)));
  const { jobs, contractors } = await catalog(cluster.nodes, { jobs: N, contractors: 20 });

  const leader = await waitFor(
    () => cluster.nodes.find((n) => n.holdsLease()),
    5000,
    () => `a node logging "took the publisher lease"\n${logs(cluster)}`,
  );
  const survivor = cluster.nodes.find((n) => n !== leader);
  const survivorClient = clients[cluster.nodes.indexOf(survivor)];

  let settled = 0;
  let killedAt;
  const killing = waitFor(() => settled >= 70, 60_000, "70 assignments before the kill").then(async () => {
    killedAt = Date.now();
    await leader.kill();
  });
  const results = await pool(range(N), 12, async (i) => {
    const r = await tryAssign(cluster.nodes[i % 2], jobs[i].id, contractors[i % contractors.length].id);
    settled++;
    return r;
  });
  await killing;
  assert.equal(leader.exit?.signal, "SIGKILL");

  const ok = results.filter((r) => r.status === 201);
  const failed = results.filter((r) => r.status !== 201);
  for (const r of failed) {
    assert.equal(r.node, leader.name, `only requests to the killed node fail: ${JSON.stringify(r)}`);
    assert.equal(r.status, 0, `a failure is a lost connection, not an HTTP error: ${JSON.stringify(r)}`);
  }
  assert.ok(ok.some((r) => r.node === leader.name), "some 201s came from the node before it died");
  assert.ok(ok.length > N / 2, `most assignments succeed (${ok.length})`);
  const expected = new Set(ok.map((r) => r.eventId));

  // Within 20 s of the kill: all of them on the survivor's client.
  const budget = Math.max(1000, 20_000 - (Date.now() - killedAt));
  await waitForAll(survivorClient, expected, budget, `the survivor ${survivor.name}'s client (${logs(cluster)})`);
  debug(
    `killed ${leader.name} after ${settled >= 70 ? 70 : settled} settled; ${ok.length} x 201 (${ok.filter((r) => r.node === leader.name).length} from ${leader.name}),`,
    `${failed.length} failed; all on ${survivor.name} ${Date.now() - killedAt} ms after the kill`,
  );
  assert.ok(survivor.holdsLease(), "the survivor took the publisher lease");

  // The log on the survivor: every 201 Published. A request cut by the kill
  // may have committed without its answer: such rows are extra, never missing.
  const logged = await waitFor(
    async () => {
      const rows = await eventLog(survivor);
      return [...expected].every((id) => rows.get(id)?.status === "Published") && rows;
    },
    5000,
    "every 201 Published in GET /api/events",
  );
  const extra = survivorClient.events.filter((e) => !expected.has(e.eventId));
  assert.ok(extra.length <= failed.length, `at most one unanswered commit per failed request (${extra.length})`);
  for (const e of extra) assert.equal(logged.get(e.eventId)?.status, "Published", `extra ${e.eventId} is a logged event`);
  await sleep(500);
  const ids = survivorClient.events.map((e) => e.eventId);
  assert.equal(new Set(ids).size, ids.length, "no eventId twice on the survivor");
  assertStrictlyIncreasing(survivorClient.events.map((e) => e.sequence), "the survivor's client");
  for (const e of survivorClient.events) assert.equal(e.sequence, logged.get(e.eventId)?.sequence, `sequence of ${e.eventId}`);
});

test("negotiate on node A, open the WebSocket on node B with that connection token: 101, handshake, events", T, async (t) => {
  if (!(await requireCluster(t))) return;
  const cluster = await startCluster(t);
  const [a, b] = cluster.nodes;
  const token = await northDispatcherToken();

  const n = await negotiate(a, token);
  assert.equal(n.status, 200, n.text);
  assert.ok(n.json.connectionToken, "a connection token");
  // rawConnect: `ws` with `Authorization: Bearer`, resolves on 101, then
  // sends {"protocol":"json","version":1}\u001e and checks the reply is {}\u001e.
  const raw = await rawConnect(b, token, { id: n.json.connectionToken });
  assert.equal(raw.frames[0].data, "{}\u001e");

  // The connection works on B: join, then an assignment made on A arrives.
  raw.sendRecord({ type: 1, invocationId: "1", target: "JoinDispatchGroup", arguments: [REGION] });
  const done = await raw.waitForCompletion("1");
  assert.equal(done.error, undefined, JSON.stringify(done));
  assert.deepEqual(done.result, { group: `dispatch/${REGION}`, replayed: 0 });
  const { assignment } = await a.assignNew(REGION, (await a.createContractor(REGION)).id);
  const event = await raw.waitForRecord(
    (r) => r.type === 1 && r.target === "JobAssigned" && r.arguments?.[0]?.eventId === assignment.eventId,
    10_000,
    "the JobAssigned made on A",
  );
  assert.equal(event.arguments[0].jobId, assignment.jobId);

  // And the official client on B after negotiating on B still works alongside.
  const official = await dispatcher(b);
  const second = await a.assignNew(REGION, (await b.createContractor(REGION)).id);
  await official.waitForEvent(second.assignment.eventId, 10_000);
});

test("a connection token opens one connection in the whole cluster: used on node A, it is 404 on node B", T, async (t) => {
  if (!(await requireCluster(t))) return;
  const cluster = await startCluster(t);
  const [a, b] = cluster.nodes;
  const token = await northDispatcherToken();

  const used = (await negotiate(a, token)).json.connectionToken;
  const first = await rawConnect(a, token, { id: used });
  assert.equal(first.frames[0].data, "{}\u001e");
  for (const node of [b, a]) {
    await assert.rejects(
      rawConnect(node, token, { id: used, handshake: false }),
      (err) => err.status === 404 && /already used/.test(err.body),
      `a second use on node ${node.name}`,
    );
  }

  // Racing uses of one token on both nodes: exactly one opens.
  const raced = (await negotiate(b, token)).json.connectionToken;
  const attempts = await Promise.allSettled(
    [a, b, a, b].map((node) => rawConnect(node, token, { id: raced, handshake: false })),
  );
  const opened = attempts.filter((r) => r.status === "fulfilled");
  assert.equal(opened.length, 1, JSON.stringify(attempts.map((r) => r.reason?.status ?? "open")));
  assert.ok(attempts.every((r) => r.status === "fulfilled" || r.reason.status === 404));
});

test("a Redis outage in a burst: assignments keep succeeding, health says degraded, and every event reaches both nodes once, in order", T, async (t) => {
  if (!(await requireCluster(t))) return;
  const cluster = await startCluster(t); // with its own redis-server
  const redis = cluster.redis;
  const [a, b] = cluster.nodes;
  const clients = [await dispatcher(a), await dispatcher(b)];
  const JOBS = 240;
  const { jobs, contractors } = await catalog(cluster.nodes, { jobs: JOBS, contractors: 20 });
  for (const n of cluster.nodes) assert.deepEqual((await n.ready()).json, { status: "ready", database: "up", redis: "up" });

  // A steady burst, alternating A/B, by 4 workers; `allowed` caps how far it
  // may go, so that it keeps going through each phase without running out of jobs.
  const results = [];
  let next = 0;
  let allowed = 60;
  let stop = false;
  const done = () => results.length;
  const burst = Promise.all(
    range(4).map(async () => {
      while (!stop) {
        if (next >= allowed) {
          await sleep(10);
          continue;
        }
        const i = next++;
        results.push(await tryAssign(cluster.nodes[i % 2], jobs[i].id, contractors[i % contractors.length].id));
      }
    }),
  );
  const reach = (n, what) => waitFor(() => done() >= n, 30_000, () => `${what} (done ${done()})`);
  try {
    await reach(40, "40 assignments before the outage");
    await redis.kill(); // with about 20 more still to go or in flight
    const atKill = done();
    allowed = 140;

    // Degraded on both nodes, while the burst goes on.
    await waitFor(
      async () => {
        const states = await Promise.all(cluster.nodes.map((n) => n.ready()));
        return states.every((s) => s.status === 200 && s.json?.status === "degraded" && s.json?.redis === "down");
      },
      10_000,
      "/health/ready to say degraded with redis down on both nodes",
    );
    await reach(140, "80 assignments during the outage");

    // During the outage both nodes still deliver (the other node's events by polling).
    const sofar = new Set(results.filter((r) => r.status === 201).map((r) => r.eventId));
    await Promise.all(clients.map((c) => waitForAll(c, sofar, 10_000, `node ${c.node.name}'s client during the outage`)));
    debug(`redis killed after ${atKill}; ${done() - atKill} assignments while down, all delivered on both nodes`);

    allowed = 240;
    await reach(160, "assignments going on");
    await redis.start(); // the same port, while assignments go on
    await reach(240, "80 more assignments around and after the restart");
  } finally {
    stop = true;
    await withTimeout(burst, 30_000, "the burst");
  }
  assert.equal(done(), 240);

  const refused = results.filter((r) => r.status !== 201);
  assert.deepEqual(refused, [], "every assignment got 201, Redis or not");
  const expected = new Set(results.map((r) => r.eventId));
  await Promise.all(clients.map((c) => waitForAll(c, expected, 10_000, `node ${c.node.name}'s client`)));
  await sleep(1000);
  for (const c of clients) assertExactlyOnce(c, expected, `node ${c.node.name}'s client`);
  assert.equal(
    clients[0].events.map((e) => e.eventId).join(),
    clients[1].events.map((e) => e.eventId).join(),
    "the same order on both nodes",
  );

  // Back to ready on both (the subscriber reconnects with a backoff of at most 5 s).
  await waitFor(
    async () => {
      const states = await Promise.all(cluster.nodes.map((n) => n.ready()));
      return states.every((s) => s.status === 200 && s.json?.status === "ready" && s.json?.redis === "up");
    },
    15_000,
    "/health/ready to say ready with redis up on both nodes again",
  );
  // And the bus carries events again: one more, from B, reaches A.
  const { assignment } = await b.assignNew(REGION, contractors[0].id);
  await clients[0].waitForEvent(assignment.eventId, 5000);
});

test("without sticky sessions: a stateful-reconnect client moved to the other node falls back to automatic reconnect, rejoins with afterSequence and misses nothing", T, async (t) => {
  if (!(await requireCluster(t))) return;
  const cluster = await startCluster(t);
  const [a, b] = cluster.nodes;
  // Registered after the cluster: its t.after runs first, so the client stops before the nodes.
  const lb = await startSwitchProxy(t, a);
  let last = null;
  const rejoins = [];
  const client = await connect(lb, await northDispatcherToken(), {
    start: false,
    reconnect: [0, 200, 500, 1000, 1000, 1000],
    configure: (builder) => builder.withStatefulReconnect(),
    onEvent: (e) => (last = Math.max(last ?? 0, e.sequence)),
  });
  client.connection.onreconnected(async () => {
    rejoins.push(await client.connection.invoke("JoinDispatchGroup", REGION, last));
  });
  await withTimeout(client.connection.start(), 15_000, "start through the proxy");
  await client.connection.invoke("JoinDispatchGroup", REGION);
  const contractor = await a.createContractor(REGION);
  const first = await a.assignNew(REGION, contractor.id);
  await client.waitForEvent(first.assignment.eventId);

  // The balancer now sends everything to B and cuts the socket. The client
  // tries to resume its parked connection on B, which does not hold it.
  lb.switchTo(b);
  const whileAway = await a.assignNew(REGION, contractor.id);
  await waitFor(() => rejoins.length === 1, 10_000, "onreconnected and the rejoin with afterSequence");
  assert.equal(rejoins[0].group, `dispatch/${REGION}`);
  const after = await b.assignNew(REGION, contractor.id);
  await client.waitForEvent(after.assignment.eventId, 10_000);
  await sleep(300);
  assert.deepEqual(
    client.events.map((e) => e.eventId),
    [first.assignment.eventId, whileAway.assignment.eventId, after.assignment.eventId],
    "every event once, in order, across the move",
  );
  assertStrictlyIncreasing(client.bySequence(), "the moved client");
});

// PostgreSQL outages are not tested here: stopping the shared server would
// break the other suites (see docs/deployment.md for the behaviour).

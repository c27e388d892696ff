// Two nodes on one PostgreSQL database and a Redis, behind a round-robin
// proxy without sticky sessions (lib/round-robin-proxy.mjs): negotiate, the
// WebSocket upgrade, each poll, each POST and the event stream may each land
// on either node; a node that did not negotiate a connection forwards its
// requests to the one that did (SMARTSCHEDULER_NODE_URL). The official client
// on each transport x protocol pair connects through the proxy, joins, gets a
// burst once and in order, and catches up after a gap with afterSequence.
//
// Needs PostgreSQL and redis-server like cluster.test.mjs: skipped without
// them, failed with CI=true.

import { test } from "node:test";
import assert from "node:assert/strict";

import { T, dispatcherToken, pool, requireCluster, sleep, startCluster } from "./lib/harness.mjs";
import { assertExactlyOnce, waitForAll } from "./lib/assertions.mjs";
import { startRoundRobinProxy } from "./lib/round-robin-proxy.mjs";
import { TRANSPORT_PAIRS, WS_JSON, assertOnPair, connectPair } from "./lib/transports.mjs";

const REGION = "north";

for (const pair of TRANSPORT_PAIRS) {
  test(`${pair.name} through a round-robin proxy in front of two nodes: join, a burst once and in order, replay after a gap`, T, async (t) => {
    if (!(await requireCluster(t))) return;
    const cluster = await startCluster(t, { nodeUrls: true });
    const nodes = cluster.nodes;
    const proxy = await startRoundRobinProxy(t, nodes);
    const token = await dispatcherToken([REGION]);

    const client = await connectPair(proxy, token, pair);
    assertOnPair(client, pair);
    assert.deepEqual(await client.connection.invoke("JoinDispatchGroup", REGION), { group: `dispatch/${REGION}`, replayed: 0 });
    // The reference: WebSockets+json straight to node A.
    const reference = await connectPair(nodes[0], token, WS_JSON);
    await reference.connection.invoke("JoinDispatchGroup", REGION);

    const N = 50;
    const contractors = await pool(Array.from({ length: 5 }), 5, (_, i) => nodes[i % 2].createContractor(REGION));
    const jobs = await pool(Array.from({ length: N }), 8, (_, i) => nodes[i % 2].createJob(REGION));
    const assignments = await pool(jobs, 8, (job, i) => nodes[i % 2].assign(job.id, contractors[i % contractors.length].id));
    const expected = new Set(assignments.map((a) => a.eventId));
    assert.equal(expected.size, N);
    await waitForAll(client, expected, 30_000, `${pair.name} through the proxy`);
    await waitForAll(reference, expected, 30_000, "the reference on node A");
    await sleep(500);
    assertExactlyOnce(client, expected, `${pair.name} through the proxy`);
    assertExactlyOnce(reference, expected, "the reference on node A");
    assert.deepEqual(client.events, reference.events, "the same payloads in the same order as WebSockets+json on node A");
    assert.deepEqual(
      proxy.portsUsed(/^\/hubs\/jobs/),
      new Set(nodes.map((n) => n.port)),
      "the proxy sent the hub's requests to both nodes",
    );
    if (pair.transport !== "WebSockets") {
      // Polls, POSTs and the event stream themselves landed on both nodes (so some were forwarded).
      assert.deepEqual(proxy.portsUsed(/^\/hubs\/jobs\?/), new Set(nodes.map((n) => n.port)), "connection requests on both nodes");
    }

    // A gap: the client leaves, four events happen, a new connection through the proxy catches up.
    const lastSeq = Math.max(...client.bySequence());
    await client.connection.stop();
    const missed = [];
    for (let i = 0; i < 4; i++) {
      missed.push((await nodes[i % 2].assignNew(REGION, contractors[0].id)).assignment.eventId);
    }
    for (const id of missed) await nodes[1].waitPublished(id);
    const again = await connectPair(proxy, token, pair);
    assert.deepEqual(await again.connection.invoke("JoinDispatchGroup", REGION, lastSeq), {
      group: `dispatch/${REGION}`,
      replayed: missed.length,
    });
    await again.waitForEvents(missed.length);
    const live = (await nodes[1].assignNew(REGION, contractors[1].id)).assignment.eventId;
    await again.waitForEvent(live);
    await sleep(500);
    // In a cluster the sequence (the order of delivery) is given when the
    // lease holder publishes, not in the order the nodes answered 201.
    assertExactlyOnce(again, new Set([...missed, live]), "the missed events and the live one");
    assert.equal(again.events.at(-1).eventId, live, "the live one after the replayed ones");
    assert.ok(again.events.every((e) => e.sequence > lastSeq), "nothing from before the gap");
  });
}

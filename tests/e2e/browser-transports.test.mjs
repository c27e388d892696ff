// The console's transport and protocol choice, in Chromium (lib/browser.mjs):
// over each allowed pair the page connects, joins dispatch/north, shows an
// assignment made over HTTP exactly once, and its banner names the transport
// the client uses, checked against what went over the wire (a WebSocket, an
// EventSource stream, or polls). MessagePack over Server-Sent Events is refused
// in the page without a request. Skipped without Chromium unless CI=true.
//
// The console's files are embedded in the binary: against a binary built
// before the transport choice, run with E2E_CONSOLE_STATIC=worktree.

import { test } from "node:test";
import assert from "node:assert/strict";

import { startServer, dispatcherToken, sleep, waitFor, T } from "./lib/harness.mjs";
import {
  launch,
  newPage,
  status,
  waitForState,
  feedItem,
  assertNoProblems,
  CONSOLE_FROM_WORKTREE,
} from "./lib/browser.mjs";

const TRANSPORT_NAMES = { WebSockets: "WebSockets", ServerSentEvents: "Server-Sent Events", LongPolling: "Long Polling" };
const PROTOCOL_NAMES = { json: "JSON", messagepack: "MessagePack" };
const RS = "\u001e";

const badge = (page) => page.getByTestId("hub-transport");

/**
 * Records the page's hub traffic: WebSockets opened, and every answer on
 * /hubs/jobs (not negotiate) with its method, resource type, status, content
 * type and connection token. Also the hub client's own errors from the console.
 */
function recordHub(page) {
  const hub = { sockets: [], answers: [], clientErrors: [] };
  page.on("websocket", (ws) => hub.sockets.push(ws.url()));
  page.on("response", (r) => {
    const url = new URL(r.url());
    if (url.pathname !== "/hubs/jobs") return;
    const request = r.request();
    const answer = {
      method: request.method(),
      type: request.resourceType(),
      status: r.status(),
      contentType: r.headers()["content-type"] || "",
      id: url.searchParams.get("id"),
    };
    // A poll's body, once it is complete (an EventSource stream never is).
    if (request.method() === "GET" && request.resourceType() !== "eventsource") {
      answer.body = r.body().then(
        (b) => b,
        () => undefined,
      );
    }
    hub.answers.push(answer);
  });
  page.on("console", (msg) => {
    if (/\] (Error|Critical): /.test(msg.text())) hub.clientErrors.push(msg.text());
  });
  return hub;
}

/** Fails plainly when the console served has no transport choice (a binary built before it). */
async function requireChoice(page) {
  if ((await page.getByTestId("transport").count()) === 0) {
    assert.fail(
      "the console this binary serves has no transport selector: build the binary from this tree, " +
        "or run with E2E_CONSOLE_STATIC=worktree",
    );
  }
}

/** A console page on `server` with `transport` and `protocol` chosen, `token` pasted; not waited for. */
async function openWith(browser, server, token, { transport, protocol }, { beforeGoto } = {}) {
  const page = await newPage(browser, server);
  const hub = recordHub(page);
  if (beforeGoto) await beforeGoto(page);
  await page.goto(server.base + "/");
  await requireChoice(page);
  await page.getByLabel("Transport", { exact: true }).selectOption(transport);
  await page.getByLabel("Protocol", { exact: true }).selectOption(protocol);
  await page.getByLabel("Bearer token").fill(token);
  await page.getByRole("button", { name: "Use token" }).click();
  return { page, hub };
}

/** The badge names `transport` and `protocol`. */
async function assertBadge(page, transport, protocol) {
  await badge(page).waitFor({ state: "visible" });
  assert.equal(await badge(page).getAttribute("data-transport"), transport);
  assert.equal(await badge(page).getAttribute("data-protocol"), protocol);
  assert.equal(await badge(page).textContent(), `${TRANSPORT_NAMES[transport]} · ${PROTOCOL_NAMES[protocol]}`);
}

/** What went over the wire is `transport`: the only kind of hub traffic the page had. */
async function assertWire(hub, transport, protocol) {
  const describe = () => JSON.stringify(hub.answers.map(({ body, ...a }) => a));
  if (transport === "WebSockets") {
    assert.equal(hub.sockets.length, 1, `one WebSocket (${hub.sockets.join(", ")})`);
    assert.equal(new URL(hub.sockets[0]).pathname, "/hubs/jobs");
    assert.deepEqual(hub.answers, [], `no HTTP on /hubs/jobs besides negotiate: ${describe()}`);
    return;
  }
  assert.deepEqual(hub.sockets, [], "no WebSocket");
  const ids = new Set(hub.answers.map((a) => a.id));
  assert.equal(ids.size, 1, `one connection token: ${describe()}`);
  assert.ok([...ids][0], `the connection token is in the URL: ${describe()}`);
  const gets = hub.answers.filter((a) => a.method === "GET");
  const posts = hub.answers.filter((a) => a.method === "POST");
  assert.ok(posts.length >= 1, `the handshake and the join were POSTed: ${describe()}`);
  for (const post of posts) assert.equal(post.status, 200, `POST /hubs/jobs: ${describe()}`);
  if (transport === "ServerSentEvents") {
    assert.equal(gets.length, 1, `one stream: ${describe()}`);
    assert.equal(gets[0].type, "eventsource");
    assert.equal(gets[0].status, 200);
    assert.match(gets[0].contentType, /^text\/event-stream/);
    return;
  }
  // Long Polling: polls answered 200, those with records in the protocol's content type.
  assert.ok(gets.length >= 2, `the first poll and at least one with records: ${describe()}`);
  assert.ok(!gets.some((g) => g.type === "eventsource"), "no EventSource");
  let withRecords = 0;
  for (const get of gets) {
    if (get.status === 204) continue; // a poll ended by a newer one
    assert.equal(get.status, 200, `a poll: ${describe()}`);
    const body = await get.body;
    if (!body || body.length === 0) continue;
    withRecords += 1;
    const expected = protocol === "messagepack" ? /^application\/octet-stream/ : /^text\/plain/;
    assert.match(get.contentType, expected, `a poll with records (${body.length} bytes) in ${protocol}`);
    if (protocol === "json") assert.ok(body.toString("utf8").endsWith(RS), "whole JSON records");
  }
  assert.ok(withRecords >= 1, `at least one poll brought records (the handshake answer): ${describe()}`);
}

/** The connection token of the page's (SSE or LP) connection. */
const connectionId = (hub) => hub.answers.find((a) => a.id)?.id;

const PAIRS = [
  ["WebSockets", "json"],
  ["ServerSentEvents", "json"],
  ["LongPolling", "json"],
  ["LongPolling", "messagepack"],
  ["WebSockets", "messagepack"],
];

for (const [transport, protocol] of PAIRS) {
  test(`console over ${TRANSPORT_NAMES[transport]} with ${PROTOCOL_NAMES[protocol]}: joins dispatch/north, an assignment shows once, the banner names the transport`, T, async (t) => {
    const browser = await launch(t);
    if (!browser) return;
    if (CONSOLE_FROM_WORKTREE) t.diagnostic("the console's files come from crates/api/static (E2E_CONSOLE_STATIC=worktree)");
    const server = await startServer(t);
    const ana = await server.createContractor("north", { name: "Ana Flores" });
    const token = await dispatcherToken(["north"]);

    const { page, hub } = await openWith(browser, server, token, { transport, protocol });
    await waitForState(page, "live");
    assert.match(await page.getByTestId("hub-status-text").textContent(), /^Live on dispatch\/north/);
    await assertBadge(page, transport, protocol);
    await assertWire(hub, transport, protocol);

    // Two assignments over HTTP: each shows once, the first still once after the second arrived.
    const { job, assignment: first } = await server.assignNew("north", ana.id, { title: "Kitchen oak floor" });
    await feedItem(page, first.eventId).waitFor({ timeout: 10_000 });
    const item = feedItem(page, first.eventId);
    assert.match(await item.textContent(), /Kitchen oak floor/);
    assert.match(await item.textContent(), /Ana Flores/);
    assert.equal(await item.getAttribute("data-job-id"), job.id);
    assert.equal(await item.getAttribute("data-sequence"), String((await server.waitPublished(first.eventId)).sequence));
    const { assignment: second } = await server.assignNew("north", ana.id, { title: "Hallway laminate" });
    await feedItem(page, second.eventId).waitFor({ timeout: 10_000 });
    assert.equal(await page.locator('[data-testid="feed"] li').count(), 2);
    for (const a of [first, second]) {
      assert.equal(await feedItem(page, a.eventId).getAttribute("data-deliveries"), "1", `event ${a.eventId} delivered once`);
    }
    // Still over the same transport, and nothing else was opened.
    await assertBadge(page, transport, protocol);
    await assertWire(hub, transport, protocol);
    assert.deepEqual(hub.clientErrors, [], "the hub client logged no error");
    assertNoProblems(page);

    // Forgetting the token stops the connection; the server lets go of it.
    const id = connectionId(hub);
    await page.getByRole("button", { name: "Forget token" }).click();
    await waitForState(page, "idle");
    assert.equal(await badge(page).isVisible(), false, "no transport named while not connected");
    if (transport === "LongPolling") {
      // The official client stops with a Close record (POST), then a DELETE: 202, or 404 when the
      // server already ended the connection on the Close (the client takes a 404 as done).
      await waitFor(() => hub.answers.some((a) => a.method === "DELETE"), 5000, "the client's DELETE");
      const deletes = hub.answers.filter((a) => a.method === "DELETE");
      assert.equal(deletes.length, 1);
      assert.equal(deletes[0].id, id);
      assert.ok([202, 404].includes(deletes[0].status), `DELETE /hubs/jobs?id= answered ${deletes[0].status}`);
      t.diagnostic(`DELETE after the client's Close record: ${deletes[0].status}`);
    }
    if (transport !== "WebSockets") {
      // A poll (or a second stream) on the ended connection's token: 404, once the server has seen it end.
      const accept = transport === "ServerSentEvents" ? "text/event-stream" : "*/*";
      let last;
      await waitFor(
        async () => {
          try {
            const res = await fetch(`${server.base}/hubs/jobs?id=${encodeURIComponent(id)}`, {
              headers: { authorization: `Bearer ${token}`, accept },
              signal: AbortSignal.timeout(3000),
            });
            last = res.status;
            await res.body?.cancel();
          } catch (err) {
            last = `no answer within 3 s (${err.name})`;
          }
          return last === 404;
        },
        30_000,
        () => `GET /hubs/jobs?id=<ended ${transport} connection> to answer 404 (last: ${last})`,
      );
    }
  });
}

test("console: MessagePack over Server-Sent Events is refused in the page, nothing is sent; JSON then connects, and the choice is kept", T, async (t) => {
  const browser = await launch(t);
  if (!browser) return;
  const server = await startServer(t);
  const ana = await server.createContractor("north", { name: "Ana Flores" });
  const token = await dispatcherToken(["north"]);

  const { page, hub } = await openWith(browser, server, token, { transport: "ServerSentEvents", protocol: "messagepack" });
  const note = page.getByTestId("connection-note");
  await note.waitFor({ state: "visible" });
  assert.match(await note.textContent(), /MessagePack cannot be used over Server-Sent Events/);
  await waitForState(page, "closed");
  assert.equal(
    await page.getByTestId("hub-status-text").textContent(),
    "Not connected: MessagePack cannot be used over Server-Sent Events.",
  );
  assert.equal(await page.getByRole("button", { name: "Reconnect" }).isVisible(), false, "no retry of a pair that cannot work");
  assert.equal(await badge(page).isVisible(), false);
  await sleep(500);
  assert.deepEqual(
    page.requested.filter((path) => path.startsWith("/hubs/")),
    [],
    "no negotiate, no stream: the page did not try",
  );
  assert.equal(await page.getByTestId("error").isVisible(), false, "a choice to change, not an error");

  // JSON over the same transport connects at once.
  await page.getByLabel("Protocol", { exact: true }).selectOption("json");
  await waitForState(page, "live");
  assert.equal(await note.isVisible(), false);
  await assertBadge(page, "ServerSentEvents", "json");
  await assertWire(hub, "ServerSentEvents", "json");
  const { assignment } = await server.assignNew("north", ana.id);
  await feedItem(page, assignment.eventId).waitFor({ timeout: 10_000 });

  // Switching the transport while live reconnects over the new one.
  await page.getByLabel("Transport", { exact: true }).selectOption("LongPolling");
  await waitFor(
    async () => (await badge(page).getAttribute("data-transport").catch(() => null)) === "LongPolling" &&
      (await status(page).getAttribute("data-state")) === "live",
    15_000,
    "the banner to say Long Polling",
  );
  const { assignment: next } = await server.assignNew("north", ana.id);
  await feedItem(page, next.eventId).waitFor({ timeout: 10_000 });
  assert.equal(await feedItem(page, next.eventId).getAttribute("data-deliveries"), "1");

  // A reload keeps the token and the choice.
  await page.reload();
  await waitForState(page, "live");
  assert.equal(await page.getByLabel("Transport", { exact: true }).inputValue(), "LongPolling");
  assert.equal(await page.getByLabel("Protocol", { exact: true }).inputValue(), "json");
  await assertBadge(page, "LongPolling", "json");
  assert.deepEqual(hub.clientErrors, []);
  assertNoProblems(page);
});

test("console: Automatic uses WebSockets, and without WebSocket in the browser falls back, JSON to Server-Sent Events, MessagePack to Long Polling; the banner says which", T, async (t) => {
  const browser = await launch(t);
  if (!browser) return;
  const server = await startServer(t);
  const ana = await server.createContractor("north", { name: "Ana Flores" });
  const token = await dispatcherToken(["north"]);
  const noWebSocket = (page) =>
    page.addInitScript(() => {
      window.WebSocket = undefined;
    });
  const cases = [
    { protocol: "json", expected: "WebSockets" },
    { protocol: "messagepack", expected: "WebSockets" },
    { protocol: "json", expected: "ServerSentEvents", beforeGoto: noWebSocket },
    { protocol: "messagepack", expected: "LongPolling", beforeGoto: noWebSocket },
  ];
  const pages = [];
  for (const c of cases) {
    const { page, hub } = await openWith(browser, server, token, { transport: "auto", protocol: c.protocol }, c);
    await waitForState(page, "live");
    await assertBadge(page, c.expected, c.protocol);
    await assertWire(hub, c.expected, c.protocol);
    pages.push({ page, hub, ...c });
  }
  const { assignment } = await server.assignNew("north", ana.id);
  for (const { page, hub, expected, protocol } of pages) {
    await feedItem(page, assignment.eventId).waitFor({ timeout: 10_000 });
    assert.equal(await feedItem(page, assignment.eventId).getAttribute("data-deliveries"), "1", `${expected}/${protocol}`);
    assert.deepEqual(hub.clientErrors, [], `${expected}/${protocol}`);
  }
  assertNoProblems(...pages.map((p) => p.page));
});

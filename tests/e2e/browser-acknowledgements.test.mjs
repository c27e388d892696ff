// Acknowledgements in the console (issue 19), in Debian's Chromium like
// browser.test.mjs (lib/browser.mjs: skipped without /usr/bin/chromium unless
// CI=true; E2E_CHROMIUM, E2E_CONSOLE_STATIC=worktree): a contractor's page
// acknowledges what it is assigned, and a dispatcher's feed row says
// "delivered", then "acknowledged at …" or "overdue".

import { test } from "node:test";
import assert from "node:assert/strict";
import { stat } from "node:fs/promises";
import { join } from "node:path";

import { startServer, dispatcherToken, contractorToken, REPO_DIR, T } from "./lib/harness.mjs";
import { launch, openConsole, feedItem, assertNoProblems } from "./lib/browser.mjs";

const ack = (page, eventId) => feedItem(page, eventId).getByTestId("event-ack");

/** Waits until the row of `eventId` has the acknowledgement `status` (data-ack) and returns its text. */
async function waitForAck(page, eventId, status, timeout = 10_000) {
  const row = feedItem(page, eventId);
  try {
    await page.waitForSelector(`[data-testid="feed"] li[data-event-id="${eventId}"][data-ack="${status}"]`, { timeout });
  } catch (err) {
    const now = await row.getAttribute("data-ack").catch(() => "no row");
    const text = await ack(page, eventId).textContent().catch(() => "?");
    throw new Error(`the row did not become "${status}" within ${timeout} ms (it is ${now}: ${text}): ${err.message}`);
  }
  return (await ack(page, eventId).textContent()).trim();
}

/** GET /api/assignments/{id}'s acknowledgement. */
async function acknowledgementOf(server, assignmentId) {
  const assignment = await server.expect(200, "GET", `/api/assignments/${assignmentId}`, { token: await server.adminToken() });
  return assignment.acknowledgement;
}

async function screenshot(page, name) {
  await page.evaluate(() => window.scrollTo(0, 0));
  const path = join(REPO_DIR, "docs", name);
  await page.screenshot({ path, fullPage: true });
  const { size } = await stat(path);
  assert.ok(size < 400 * 1024, `${name} is ${size} bytes`);
}

const ACKNOWLEDGED = /^acknowledged at (\d\d:\d\d:\d\d) UTC$/;

test("console: the contractor's page acknowledges its assignment, and the dispatcher's row says acknowledged at …", T, async (t) => {
  const browser = await launch(t);
  if (!browser) return;
  const server = await startServer(t);
  const ana = await server.createContractor("north", { name: "Ana Flores" });
  const ben = await server.createContractor("north", { name: "Ben Okafor" });
  const kitchen = await server.createJob("north", { title: "Kitchen oak floor", jobType: "Hardwood" });
  const bathroom = await server.createJob("north", { title: "Bathroom tile", jobType: "Tile", durationMinutes: 180 });
  await server.createJob("north", { title: "Hallway laminate", jobType: "Laminate", durationMinutes: 60 });
  const dispatcher = await openConsole(browser, server, await dispatcherToken(["north"]));
  const anaPage = await openConsole(browser, server, await contractorToken(ana.id));

  const assignment = await server.assign(kitchen.id, ana.id);

  // The contractor's page shows it and acknowledges it.
  const shownByAna = await waitForAck(anaPage, assignment.eventId, "acknowledged");
  assert.match(shownByAna, ACKNOWLEDGED);
  // The dispatcher's row, first "delivered", is updated in place.
  const shownToDispatcher = await waitForAck(dispatcher, assignment.eventId, "acknowledged");
  assert.match(shownToDispatcher, ACKNOWLEDGED);
  assert.equal(ACKNOWLEDGED.exec(shownToDispatcher)[1], ACKNOWLEDGED.exec(shownByAna)[1], "the same acknowledgement");
  assert.equal(await dispatcher.locator('[data-testid="feed"] li').count(), 1, "updated in place, no second row");
  const read = await acknowledgementOf(server, assignment.assignmentId);
  assert.equal(read.status, "Acknowledged");
  const time = await ack(dispatcher, assignment.eventId).locator("time").getAttribute("datetime");
  assert.equal(new Date(time).getTime(), new Date(read.acknowledgedAtUtc).getTime(), "the time the service recorded");

  // Nobody acknowledges Ben's: his row stays "delivered" (the default deadline is 5 minutes away).
  const toBen = await server.assign(bathroom.id, ben.id);
  assert.equal(await waitForAck(dispatcher, toBen.eventId, "delivered"), "delivered");
  assert.equal((await acknowledgementOf(server, toBen.assignmentId)).status, "Pending");

  // A contractor opening the console later acknowledges its replayed history once more: the first time stands.
  const later = await openConsole(browser, server, await contractorToken(ana.id));
  assert.equal(await waitForAck(later, assignment.eventId, "acknowledged"), shownByAna);
  await screenshot(dispatcher, "console-acknowledgements.png");
  assertNoProblems(dispatcher, anaPage, later);
});

test("console: a refused acknowledgement shows the service's words on the contractor's row", T, async (t) => {
  const browser = await launch(t);
  if (!browser) return;
  const server = await startServer(t);
  const ana = await server.createContractor("north", { name: "Ana Flores" });
  const page = await openConsole(browser, server, await contractorToken(ana.id));
  // The service only refuses an event that is not the contractor's: the page's
  // AcknowledgeEvent is sent with another (unknown) event id on the wire.
  const unknown = "0190f0f0-0000-7000-8000-000000000000";
  await page.routeWebSocket(/\/hubs\/jobs/, (ws) => {
    const upstream = ws.connectToServer();
    ws.onMessage((message) => {
      upstream.send(
        typeof message === "string" && message.includes('"AcknowledgeEvent"')
          ? message.replace(/"arguments":\["[^"]+"\]/, `"arguments":["${unknown}"]`)
          : message,
      );
    });
  });
  // The route applies to sockets opened after it: reconnect.
  await page.reload();
  await page.waitForSelector('[data-testid="hub-status"][data-state="live"]');

  const { assignment } = await server.assignNew("north", ana.id);
  const text = await waitForAck(page, assignment.eventId, "refused");
  assert.equal(text, `not acknowledged: No JobAssigned event has the id ${unknown}.`);
  assert.equal((await acknowledgementOf(server, assignment.assignmentId)).status, "Pending");
  assertNoProblems(page);
});

test("console: with no contractor page open the dispatcher's row turns overdue at the deadline; a late acknowledgement still shows", T, async (t) => {
  const browser = await launch(t);
  if (!browser) return;
  const server = await startServer(t, { env: { SMARTSCHEDULER_ACK_DEADLINE_SECONDS: "2" } });
  const ben = await server.createContractor("north", { name: "Ben Okafor" });
  const chloe = await server.createContractor("north", { name: "Chloe Martin" });
  const deck = await server.createJob("north", { title: "Porch deck", jobType: "Decking" });
  const hallway = await server.createJob("north", { title: "Hallway laminate", jobType: "Laminate", durationMinutes: 60 });
  const dispatcher = await openConsole(browser, server, await dispatcherToken(["north"]));

  const assignment = await server.assign(deck.id, ben.id);
  const toChloe = await server.assign(hallway.id, chloe.id);
  await feedItem(dispatcher, assignment.eventId).waitFor({ timeout: 5000 });
  const overdue = await waitForAck(dispatcher, assignment.eventId, "overdue");
  const read = await acknowledgementOf(server, assignment.assignmentId);
  assert.equal(read.status, "Overdue");
  assert.equal(overdue, `overdue: not acknowledged by ${new Date(read.deadlineUtc).toISOString().slice(11, 19)} UTC`);
  await waitForAck(dispatcher, toChloe.eventId, "overdue");

  // Ben opens the console: his replayed assignment is acknowledged late, and the dispatcher sees it.
  const benPage = await openConsole(browser, server, await contractorToken(ben.id));
  assert.match(await waitForAck(benPage, assignment.eventId, "acknowledged"), ACKNOWLEDGED);
  const late = await waitForAck(dispatcher, assignment.eventId, "acknowledged");
  assert.match(late, /^acknowledged at \d\d:\d\d:\d\d UTC \(after its deadline\)$/);
  assert.equal((await acknowledgementOf(server, assignment.assignmentId)).status, "Acknowledged");
  assert.equal(await dispatcher.locator('[data-testid="feed"] li').count(), 2, "rows updated in place");
  await screenshot(dispatcher, "console-overdue.png");
  assertNoProblems(dispatcher, benPage);
});

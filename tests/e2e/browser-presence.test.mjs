// Presence in the console (issue 19: "The contractors table shows who is
// online, live"), in Debian's Chromium like browser.test.mjs (lib/browser.mjs:
// skipped without /usr/bin/chromium unless CI=true; E2E_CHROMIUM,
// E2E_CONSOLE_STATIC=worktree): the dispatcher's table reads
// GET /api/presence when the region loads and follows PresenceChanged.
//
// A page that goes away sends no SignalR Close record, so the service parks its
// WebSocket connection for a stateful reconnect (SMARTSCHEDULER_RECONNECT_WINDOW_SECONDS,
// 15 s) and counts it as open until then; the grace only starts after that.

import { test } from "node:test";
import assert from "node:assert/strict";
import { stat } from "node:fs/promises";
import { join } from "node:path";

import { startServer, dispatcherToken, contractorToken, REPO_DIR, T } from "./lib/harness.mjs";
import { launch, openConsole, assertNoProblems } from "./lib/browser.mjs";

const presenceCell = (page, contractorId) =>
  page.locator(`[data-testid="contractors"] tr[data-contractor-id="${contractorId}"] [data-testid="presence"]`);

/** Waits until the contractor's cell says `online` ("true" | "false" | "unknown"); returns its text. */
async function waitForPresence(page, contractorId, online, timeout = 10_000) {
  const selector = `[data-testid="contractors"] tr[data-contractor-id="${contractorId}"] [data-testid="presence"][data-online="${online}"]`;
  try {
    await page.waitForSelector(selector, { timeout });
  } catch (err) {
    const now = await presenceCell(page, contractorId).getAttribute("data-online").catch(() => "no row");
    throw new Error(`${contractorId} did not show online=${online} within ${timeout} ms (it shows ${now}): ${err.message}`);
  }
  return (await presenceCell(page, contractorId).textContent()).trim();
}

/** GET /api/presence?region=north as `{contractorId: online}`. */
async function servicePresence(server) {
  const listed = await server.expect(200, "GET", "/api/presence?region=north", { token: await server.adminToken() });
  return Object.fromEntries(listed.contractors.map((c) => [c.contractorId, c.online]));
}

test("console: the dispatcher's contractors table shows who is online, live", T, async (t) => {
  const browser = await launch(t);
  if (!browser) return;
  const server = await startServer(t, {
    env: { SMARTSCHEDULER_PRESENCE_GRACE_SECONDS: "1", SMARTSCHEDULER_RECONNECT_WINDOW_SECONDS: "2" },
  });
  const ana = await server.createContractor("north", { name: "Ana Flores" });
  const ben = await server.createContractor("north", { name: "Ben Okafor" });
  const chloe = await server.createContractor("north", { name: "Chloe Martin" });
  await server.createJob("north", { title: "Kitchen oak floor", jobType: "Hardwood" });
  // Ben is online before the dispatcher opens the console: the table reads that from GET /api/presence.
  await server.connect(await contractorToken(ben.id));

  const dispatcher = await openConsole(browser, server, await dispatcherToken(["north"]));
  assert.equal(await waitForPresence(dispatcher, ben.id, "true"), "online", "loaded from GET /api/presence");
  assert.equal(await waitForPresence(dispatcher, ana.id, "false"), "offline");
  assert.equal(await waitForPresence(dispatcher, chloe.id, "false"), "offline");

  // Ana opens the console: her row turns online without a reload.
  const anaPage = await openConsole(browser, server, await contractorToken(ana.id));
  assert.equal(await waitForPresence(dispatcher, ana.id, "true"), "online");
  assert.deepEqual(await servicePresence(server), { [ana.id]: true, [ben.id]: true, [chloe.id]: false });
  assert.equal(await presenceCell(dispatcher, chloe.id).getAttribute("data-online"), "false");

  await dispatcher.evaluate(() => window.scrollTo(0, 0));
  const path = join(REPO_DIR, "docs", "console-presence.png");
  await dispatcher.screenshot({ path, fullPage: true });
  const { size } = await stat(path);
  assert.ok(size < 400 * 1024, `console-presence.png is ${size} bytes`);
  assertNoProblems(anaPage);

  // Ana closes her page: offline once the reconnect window (2 s) and the grace (1 s) have passed.
  const closedAt = Date.now();
  await anaPage.context().close();
  assert.equal(await waitForPresence(dispatcher, ana.id, "false", 15_000), "offline");
  const after = Date.now() - closedAt;
  assert.ok(after >= 2500, `offline ${after} ms after the page closed, not before the window and the grace`);
  assert.match(await presenceCell(dispatcher, ana.id).getAttribute("title"), /^offline since \d\d:\d\d:\d\d UTC$/);
  assert.deepEqual(await servicePresence(server), { [ana.id]: false, [ben.id]: true, [chloe.id]: false });

  // A reload reads the same from the service, with the last time she was seen.
  await dispatcher.reload();
  assert.equal(await waitForPresence(dispatcher, ana.id, "false"), "offline");
  assert.match(await presenceCell(dispatcher, ana.id).getAttribute("title"), /^last seen \d\d:\d\d:\d\d UTC$/);
  assert.equal(await waitForPresence(dispatcher, ben.id, "true"), "online");
  assertNoProblems(dispatcher);
});

test("console: a contractor who forgets its token (the client stops and says Close) is offline a grace later", T, async (t) => {
  const browser = await launch(t);
  if (!browser) return;
  const server = await startServer(t, { env: { SMARTSCHEDULER_PRESENCE_GRACE_SECONDS: "1" } });
  const ana = await server.createContractor("north", { name: "Ana Flores" });
  const dispatcher = await openConsole(browser, server, await dispatcherToken(["north"]));
  await waitForPresence(dispatcher, ana.id, "false");
  const anaPage = await openConsole(browser, server, await contractorToken(ana.id));
  await waitForPresence(dispatcher, ana.id, "true");
  const stoppedAt = Date.now();
  await anaPage.getByRole("button", { name: "Forget token" }).click();
  await waitForPresence(dispatcher, ana.id, "false");
  const after = Date.now() - stoppedAt;
  assert.ok(after >= 700 && after < 6000, `offline ${after} ms after the stop (grace 1 s)`);
  assertNoProblems(dispatcher, anaPage);
});

// The console at `/` and the official browser bundle of @microsoft/signalr, in
// a real browser: Debian's Chromium driven by playwright-core (lib/browser.mjs:
// skipped without /usr/bin/chromium unless CI=true; E2E_CHROMIUM,
// E2E_CONSOLE_STATIC=worktree).

import { test } from "node:test";
import assert from "node:assert/strict";
import { readFile, stat } from "node:fs/promises";
import { createServer } from "node:http";
import { join } from "node:path";

import {
  startServer,
  dispatcherToken,
  contractorToken,
  signJwt,
  nextSlot,
  sleep,
  waitFor,
  REPO_DIR,
  T,
} from "./lib/harness.mjs";
import {
  launch,
  newPage,
  openConsole,
  status,
  waitForState,
  shown,
  jobRow,
  feedItem,
  assertNoProblems,
  SIGNALR_BUNDLE,
} from "./lib/browser.mjs";

/** A static site on its own port (another origin): `/` is `html`, `/signalr.min.js` the official bundle. */
async function staticSite(t, html) {
  const bundle = await readFile(SIGNALR_BUNDLE);
  const site = createServer((req, res) => {
    if (req.url === "/signalr.min.js") {
      res.writeHead(200, { "content-type": "text/javascript" });
      res.end(bundle);
    } else if (req.url === "/") {
      res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
      res.end(html);
    } else {
      res.writeHead(404).end();
    }
  });
  await new Promise((resolve) => site.listen(0, "127.0.0.1", resolve));
  t.after(() => {
    site.closeAllConnections();
    return new Promise((resolve) => site.close(resolve));
  });
  return { origin: `http://127.0.0.1:${site.address().port}`, site };
}

const CROSS_ORIGIN_PAGE = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>cross-origin client</title>
<script src="/signalr.min.js"></script></head>
<body><p>A page on another origin using the official @microsoft/signalr browser bundle.</p></body></html>`;

/** In the page: connect to `hub` with an accessTokenFactory, join north, collect JobAssigned in window.events. */
async function connectFromPage(page, hub, token) {
  return page.evaluate(
    async ({ hub, token }) => {
      window.events = [];
      const connection = new signalR.HubConnectionBuilder()
        .withUrl(hub, { accessTokenFactory: () => token })
        .configureLogging(signalR.LogLevel.None)
        .build();
      connection.on("JobAssigned", (e) => window.events.push(e));
      window.connection = connection;
      try {
        await connection.start();
      } catch (err) {
        return { started: false, error: String(err && err.message) };
      }
      const joined = await connection.invoke("JoinDispatchGroup", "north");
      return { started: true, joined };
    },
    { hub, token },
  );
}

// ---------------------------------------------------------------------------

test("console: one dispatcher page assigns, another sees the JobAssigned within 1 s; contractors see only their own", T, async (t) => {
  const browser = await launch(t);
  if (!browser) return;
  const server = await startServer(t);
  const ana = await server.createContractor("north", { name: "Ana Flores" });
  const ben = await server.createContractor("north", { name: "Ben Okafor" });
  await server.createContractor("north", { name: "Chloe Martin" });
  const kitchen = await server.createJob("north", { title: "Kitchen oak floor", jobType: "Hardwood" });
  const bathroom = await server.createJob("north", { title: "Bathroom tile", jobType: "Tile", durationMinutes: 180 });
  await server.createJob("north", { title: "Hallway laminate", jobType: "Laminate", durationMinutes: 60 });
  const token = await dispatcherToken(["north"]);

  // Already open and live before the assignment.
  const watcher = await openConsole(browser, server, token);
  const anaPage = await openConsole(browser, server, await contractorToken(ana.id));
  const benPage = await openConsole(browser, server, await contractorToken(ben.id));
  const page = await openConsole(browser, server, token);

  // The identity comes from the token's claims, decoded in the page.
  assert.equal(await page.getByTestId("identity-role").textContent(), "Dispatcher");
  assert.equal(await page.getByTestId("identity-regions").textContent(), "north");
  assert.equal(await anaPage.getByTestId("identity-role").textContent(), "Contractor");
  assert.equal(await anaPage.getByTestId("identity-contractor").textContent(), ana.id);
  assert.match(await status(page).textContent(), /dispatch\/north/);
  assert.match(await status(anaPage).textContent(), new RegExp(`contractor/${ana.id}`));
  assert.equal(await anaPage.getByTestId("assign-form").isVisible(), false, "a contractor gets no assign form");

  // The region's contractors and jobs are listed.
  await page.locator(`[data-testid="jobs"] tr[data-job-id="${kitchen.id}"]`).waitFor();
  assert.equal(await page.locator('[data-testid="jobs"] tbody tr[data-job-id]').count(), 3);
  assert.equal(await page.locator('[data-testid="contractors"] tbody tr[data-contractor-id]').count(), 3);
  // Ids made the same minute share their first 8 characters; the rows show a part that differs.
  const anaShown = await page.locator(`[data-testid="contractors"] tr[data-contractor-id="${ana.id}"] td.mono`).textContent();
  const benShown = await page.locator(`[data-testid="contractors"] tr[data-contractor-id="${ben.id}"] td.mono`).textContent();
  assert.equal(anaShown, shown(ana.id));
  assert.equal(benShown, shown(ben.id));
  assert.notEqual(anaShown, benShown);
  // A favicon of its own: the browser asks for no /favicon.ico (a 404 would be in page.problems).
  assert.match(await page.locator('link[rel="icon"]').getAttribute("href"), /^data:image\/svg\+xml,/);
  assert.ok(!page.requested.includes("/favicon.ico"), "no request for /favicon.ico");

  // Assign through the form.
  const slot = nextSlot();
  await page.getByLabel("Job", { exact: true }).selectOption(kitchen.id);
  await page.getByLabel("Contractor", { exact: true }).selectOption(ana.id);
  await page.getByLabel("Start (UTC)").fill(slot.startUtc.slice(0, 16));
  await page.getByLabel("End (UTC)").fill(slot.endUtc.slice(0, 16));
  const answered = page.waitForResponse(
    (r) => r.url().endsWith(`/api/jobs/${kitchen.id}/assign`) && r.request().method() === "POST",
  );
  const clickedAt = Date.now();
  await page.getByRole("button", { name: "Assign", exact: true }).click();
  const response = await answered;
  const respondedAt = Date.now();
  assert.equal(response.status(), 201, await response.text());
  const assignment = await response.json();
  assert.equal(assignment.contractorId, ana.id);
  assert.equal(assignment.startUtc, slot.startUtc);
  assert.equal(assignment.endUtc, slot.endUtc);

  // The other page shows it, stamped with the time it reached the DOM.
  const item = feedItem(watcher, assignment.eventId);
  await item.waitFor({ timeout: 5000 });
  const receivedAt = Number(await item.getAttribute("data-received-at"));
  const fromClick = receivedAt - clickedAt;
  const fromResponse = receivedAt - respondedAt;
  t.diagnostic(`JobAssigned in the other page ${fromClick} ms after the click, ${fromResponse} ms after the response`);
  assert.ok(fromClick < 1000, `the event reached the other page ${fromClick} ms after the click (limit 1000)`);
  assert.match(await item.textContent(), /Kitchen oak floor/);
  assert.match(await item.textContent(), /Ana Flores/);
  assert.match(await item.locator(".event-head time").textContent(), /^\d\d:\d\d UTC$/, "feed times say their time zone");
  assert.equal(await item.getAttribute("data-sequence"), String((await server.waitPublished(assignment.eventId)).sequence));
  // Its job row turned Assigned live, and it left the assign form's choices.
  await watcher.locator(`[data-testid="jobs"] tr[data-job-id="${kitchen.id}"][data-status="Assigned"]`).waitFor();
  await waitFor(
    async () => (await watcher.locator(`[data-testid="assign-job"] option[value="${kitchen.id}"]`).count()) === 0,
    5000,
    "the assigned job to leave the watcher's job choices",
  );

  // The assigning page confirms and shows its own event too.
  assert.match(await page.getByTestId("assign-result").textContent(), /Assigned “Kitchen oak floor” to Ana Flores/);
  assert.ok(
    (await page.getByTestId("assign-result").textContent()).endsWith(`(event ${shown(assignment.eventId)}).`),
    "the confirmation names the event by its distinguishing part",
  );
  await feedItem(page, assignment.eventId).waitFor();
  // The form is fresh for the next assignment.
  assert.equal(await page.getByLabel("Start (UTC)").inputValue(), "");
  assert.equal(await page.getByLabel("End (UTC)").inputValue(), "");
  // Both dispatcher pages name the assignee in the jobs table; so does one opened afterwards (from the EventLog).
  for (const p of [page, watcher]) {
    await waitFor(
      async () => (await jobRow(p, kitchen.id).getByTestId("job-assignee").textContent()) === "Ana Flores",
      5000,
      "the kitchen job's row to name Ana Flores",
    );
  }
  const later = await openConsole(browser, server, token);
  await waitFor(
    async () => (await jobRow(later, kitchen.id).getByTestId("job-assignee").textContent()) === "Ana Flores",
    5000,
    "a page opened later to name the kitchen job's assignee",
  );
  assert.equal(await jobRow(later, bathroom.id).getByTestId("job-assignee").textContent(), "—");

  // The contractor who got it sees it; another contractor sees nothing.
  await feedItem(anaPage, assignment.eventId).waitFor({ timeout: 5000 });
  assert.match(await feedItem(anaPage, assignment.eventId).textContent(), /Kitchen oak floor.*→ you/s);
  await sleep(500);
  assert.equal(await benPage.locator('[data-testid="feed"] li').count(), 0, "another contractor's page shows nothing");
  assert.equal(await benPage.getByTestId("feed-empty").isVisible(), true);

  // A contractor opening the console later gets its history replayed.
  const late = await openConsole(browser, server, await contractorToken(ana.id));
  await feedItem(late, assignment.eventId).waitFor({ timeout: 5000 });
  assert.match(await status(late).textContent(), /1 earlier event replayed/);

  for (const [p, name] of [[page, "console-dispatcher.png"], [anaPage, "console-contractor.png"]]) {
    await p.evaluate(() => window.scrollTo(0, 0));
    await p.screenshot({ path: join(REPO_DIR, "docs", name), fullPage: true });
  }
  for (const name of ["console-dispatcher.png", "console-contractor.png"]) {
    const { size } = await stat(join(REPO_DIR, "docs", name));
    assert.ok(size < 400 * 1024, `${name} is ${size} bytes`);
  }

  // A refused assignment shows the problem+json detail.
  await page.getByLabel("Job", { exact: true }).selectOption(bathroom.id);
  await page.getByLabel("Contractor", { exact: true }).selectOption(ana.id);
  await page.getByLabel("Start (UTC)").fill(slot.startUtc.slice(0, 16));
  await page.getByLabel("End (UTC)").fill(slot.endUtc.slice(0, 16));
  await page.getByRole("button", { name: "Assign", exact: true }).click();
  const error = page.getByTestId("error");
  await error.waitFor();
  assert.match(
    await error.textContent(),
    new RegExp(`409 Conflict: contractor ${ana.id} already has an overlapping assignment`),
  );

  // A network failure is not a refusal.
  await page.route("**/api/jobs/*/assign", (route) => route.abort("internetdisconnected"));
  await page.getByRole("button", { name: "Dismiss the error" }).click();
  await page.getByLabel("Job", { exact: true }).selectOption(bathroom.id);
  await page.getByLabel("Contractor", { exact: true }).selectOption(ben.id);
  await page.getByRole("button", { name: "Assign", exact: true }).click();
  await error.waitFor();
  const networkText = await error.textContent();
  assert.match(networkText, /Could not reach the service/);
  assert.doesNotMatch(networkText, /refused/);

  assertNoProblems(page, watcher, anaPage, benPage, late, later);
});

test("cross-origin: the official browser bundle on an allowed origin connects with access_token and receives; another origin cannot negotiate", T, async (t) => {
  const browser = await launch(t);
  if (!browser) return;
  const allowed = await staticSite(t, CROSS_ORIGIN_PAGE);
  const refused = await staticSite(t, CROSS_ORIGIN_PAGE);
  const server = await startServer(t, { env: { SMARTSCHEDULER_CORS_ORIGINS: allowed.origin } });
  const contractor = await server.createContractor("north");
  const token = await dispatcherToken(["north"]);
  const hub = server.base + "/hubs/jobs";

  const page = await newPage(browser);
  const sockets = [];
  page.on("websocket", (ws) => sockets.push(ws.url()));
  // Recorded synchronously (as promises): the headers are read later, so no
  // assertion races the event handler.
  const pending = [];
  page.on("response", (r) => {
    if (r.url().includes("/hubs/jobs/negotiate")) {
      pending.push(
        (async () => ({ request: await r.request().allHeaders(), response: await r.allHeaders(), status: r.status() }))(),
      );
    }
  });
  await page.goto(allowed.origin + "/");
  const result = await connectFromPage(page, hub, token);
  assert.equal(result.started, true, `start() on ${allowed.origin}: ${result.error}`);
  assert.deepEqual(result.joined, { group: "dispatch/north", replayed: 0 });

  // The token went in the Authorization header of negotiate (so the browser
  // preflighted it) and in the access_token query parameter of the WebSocket.
  const negotiations = await Promise.all(pending);
  assert.equal(negotiations.length, 1);
  const [negotiation] = negotiations;
  assert.equal(negotiation.status, 200);
  assert.equal(negotiation.request.authorization, `Bearer ${token}`);
  assert.equal(negotiation.request.origin, allowed.origin);
  assert.equal(negotiation.response["access-control-allow-origin"], allowed.origin);
  assert.equal(negotiation.response["access-control-allow-credentials"], "true");
  assert.match(server.log, /method=OPTIONS path=\/hubs\/jobs\/negotiate status=200/, "the negotiate was preflighted");
  assert.equal(sockets.length, 1);
  const socketUrl = new URL(sockets[0]);
  assert.equal(socketUrl.pathname, "/hubs/jobs");
  assert.equal(socketUrl.searchParams.get("access_token"), token);
  assert.ok(socketUrl.searchParams.get("id"), "the WebSocket carries the connection token");
  assert.ok(!server.log.includes(token), "the service never logs the token");

  const { assignment } = await server.assignNew("north", contractor.id);
  await page.waitForFunction((id) => window.events.some((e) => e.eventId === id), assignment.eventId, { timeout: 5000 });
  const received = await page.evaluate(() => window.events);
  assert.equal(received.length, 1);
  assert.equal(received[0].contractorId, contractor.id);
  assert.equal(received[0].region, "north");
  await page.evaluate(() => window.connection.stop());

  // Another origin: the preflight gets no grant, so negotiate fails and start() rejects.
  const other = await newPage(browser);
  const otherSockets = [];
  other.on("websocket", (ws) => otherSockets.push(ws.url()));
  await other.goto(refused.origin + "/");
  const denied = await connectFromPage(other, hub, token);
  assert.equal(denied.started, false, "start() must reject on an origin that is not allowed");
  assert.match(denied.error, /negotiat|Failed to fetch/i);
  assert.deepEqual(otherSockets, [], "no WebSocket was opened");
  assert.equal(await other.evaluate(() => window.events.length), 0);

  assertNoProblems(page, other);
});

test("console: the banner says so when the service stops, and the feed is live again after it restarts", T, async (t) => {
  const browser = await launch(t);
  if (!browser) return;
  const server = await startServer(t);
  const contractor = await server.createContractor("north", { name: "Ana Flores" });
  const page = await openConsole(browser, server, await dispatcherToken(["north"]));
  const { assignment: before } = await server.assignNew("north", contractor.id);
  await feedItem(page, before.eventId).waitFor({ timeout: 5000 });

  await server.terminate();
  await page.waitForSelector('[data-testid="hub-status"][data-state="reconnecting"], [data-testid="hub-status"][data-state="closed"]', {
    timeout: 10_000,
  });
  const banner = await page.getByTestId("hub-status-text").textContent();
  assert.match(banner, /The service stopped: reconnecting/);
  assert.doesNotMatch(banner, /error on close/i);
  t.diagnostic(`banner while the service is down: ${banner.trim()}`);

  // Back on the same port and database: the page reconnects by itself,
  // rejoins north with its last sequence, and events flow again.
  await server.start();
  const { assignment: after } = await server.assignNew("north", contractor.id);
  await waitForState(page, "live", 30_000);
  assert.match(await status(page).textContent(), /Reconnected/);
  await feedItem(page, after.eventId).waitFor({ timeout: 10_000 });
  assert.equal(await page.locator('[data-testid="feed"] li').count(), 2, "no duplicate after the rejoin");

  assertNoProblems(page);
});

test("console: a reloaded dispatcher page resumes after the last event it showed: what it missed, nothing twice", T, async (t) => {
  const browser = await launch(t);
  if (!browser) return;
  const server = await startServer(t);
  const contractor = await server.createContractor("north", { name: "Ana Flores" });
  const page = await openConsole(browser, server, await dispatcherToken(["north"]));
  const { assignment: seen } = await server.assignNew("north", contractor.id);
  await feedItem(page, seen.eventId).waitFor({ timeout: 5000 });
  // JobsFeed keeps the position in localStorage, once the event's handlers have returned.
  await waitFor(
    () => page.evaluate(() => localStorage.getItem("smartscheduler.console.cursor.dispatch/north")),
    5000,
    "a position kept for dispatch/north",
  );

  // The page is away while another assignment is made, then opened again.
  await page.goto("about:blank");
  const { assignment: missed } = await server.assignNew("north", contractor.id);
  await page.goto(server.base + "/");
  await waitForState(page, "live");
  assert.match(await status(page).textContent(), /Live on dispatch\/north; 1 earlier event replayed/);
  await feedItem(page, missed.eventId).waitFor({ timeout: 5000 });
  assert.equal(await feedItem(page, seen.eventId).count(), 0, "the event shown before the reload is not replayed");
  assert.equal(await page.locator('[data-testid="feed"] li').count(), 1);
  assertNoProblems(page);
});

test("console: a kept position past the end of the service's EventLog (another, reset database) is forgotten, not resumed from", T, async (t) => {
  const browser = await launch(t);
  if (!browser) return;
  const server = await startServer(t);
  const contractor = await server.createContractor("north", { name: "Ana Flores" });
  const page = await newPage(browser, server);
  await page.goto(server.base + "/");
  await page.evaluate(() => localStorage.setItem("smartscheduler.console.cursor.dispatch/north", "999"));
  await page.getByLabel("Bearer token").fill(await dispatcherToken(["north"]));
  await page.getByRole("button", { name: "Use token" }).click();
  await waitForState(page, "live");

  const { assignment } = await server.assignNew("north", contractor.id);
  await feedItem(page, assignment.eventId).waitFor({ timeout: 5000 });
  const kept = await page.evaluate(() => localStorage.getItem("smartscheduler.console.cursor.dispatch/north"));
  assert.ok(Number(kept) < 999, `the position is this service's now (${kept})`);
  assertNoProblems(page);
});

test("console: an expired token is not used: no connection, no green banner, it says so", T, async (t) => {
  const browser = await launch(t);
  if (!browser) return;
  const server = await startServer(t);
  const now = Math.floor(Date.now() / 1000);
  // Expired a second ago: inside the service's leeway, so only the page's own check refuses it.
  const expired = signJwt({ sub: "old", role: "Dispatcher", regions: ["north"], exp: now - 1, iat: now - 3600 });
  const page = await newPage(browser, server);
  await page.goto(server.base + "/");
  await page.getByLabel("Bearer token").fill(expired);
  await page.getByRole("button", { name: "Use token" }).click();
  await waitForState(page, "closed");
  assert.match(await page.getByTestId("hub-status-text").textContent(), /Not connected: the token has expired/);
  assert.match(await page.getByTestId("error-text").textContent(), /This token has expired/);
  assert.match(await page.getByTestId("identity-exp").textContent(), /expired/);
  await sleep(500);
  assert.equal(await status(page).getAttribute("data-state"), "closed", "never live");
  assert.deepEqual(
    page.requested.filter((path) => path.startsWith("/hubs/") || path.startsWith("/api/")),
    [],
    "nothing is sent with an expired token",
  );
  assert.equal(await page.getByTestId("assign-form").isVisible(), false);
  assert.equal(await page.getByRole("button", { name: "Reconnect" }).isVisible(), false, "no retry with an expired token");

  // Not a JWT at all: refused in the page, nothing is sent.
  await page.getByLabel("Bearer token").fill("not-a-token");
  await page.getByRole("button", { name: "Use token" }).click();
  assert.match(await page.getByTestId("error").textContent(), /not a JWT/);
  assertNoProblems(page);
});

test("console: a token the service refuses (401) reads in plain words and its claims are marked not verified", T, async (t) => {
  const browser = await launch(t);
  if (!browser) return;
  const server = await startServer(t);
  const now = Math.floor(Date.now() / 1000);
  const forged = signJwt({ sub: "mallory", role: "Dispatcher", regions: ["north"], exp: now + 3600, iat: now }, "not-the-secret");
  const page = await newPage(browser, server);
  await page.goto(server.base + "/");
  await page.getByLabel("Bearer token").fill(forged);
  await page.getByRole("button", { name: "Use token" }).click();
  await waitForState(page, "closed");
  assert.match(await page.getByTestId("hub-status-text").textContent(), /the service refused the token/);
  const errorText = await page.getByTestId("error-text").textContent();
  assert.match(errorText, /^The service refused this token: the token is not valid: bad signature\. Mint a new one/);
  assert.doesNotMatch(errorText, /[{}]|Status code|detail/, "no raw JSON");
  assert.equal(await page.getByTestId("identity-unverified").isVisible(), true);
  assert.equal(await page.getByTestId("identity").getAttribute("data-verified"), "false");
  assert.equal(await page.getByTestId("jobs").isVisible(), false, "nothing is offered on the strength of those claims");
  assertNoProblems(page);
});

test("console: loading a region the token may not dispatch says so plainly and offers nothing to assign", T, async (t) => {
  const browser = await launch(t);
  if (!browser) return;
  const server = await startServer(t);
  await server.createContractor("west", { name: "Wes Tran" });
  const westJob = await server.createJob("west", { title: "Porch deck", jobType: "Decking" });
  const page = await openConsole(browser, server, await dispatcherToken(["north"]));

  await page.getByTestId("region-input").fill("west");
  await page.getByRole("button", { name: "Load", exact: true }).click();
  await waitForState(page, "refused");
  const banner = await page.getByTestId("hub-status-text").textContent();
  assert.match(banner, /you may not dispatch region west/);
  assert.doesNotMatch(banner, /Live/);
  const errorText = await page.getByTestId("error-text").textContent();
  assert.match(errorText, /^You may not dispatch region west/);
  assert.doesNotMatch(errorText, /HubException|unexpected error|JoinDispatchGroup/);
  // The service lists the region's jobs to any dispatcher, but none can be assigned from here.
  await jobRow(page, westJob.id).waitFor();
  await sleep(300);
  assert.equal(await page.getByRole("button", { name: /^Assign / }).count(), 0, "no Assign… buttons");
  assert.equal(await page.getByTestId("assign-submit").isDisabled(), true);

  // Back to a region it dispatches: live again, and assigning works.
  await page.getByRole("button", { name: "Dismiss the error" }).click();
  await page.getByTestId("region-input").fill("north");
  await page.getByRole("button", { name: "Load", exact: true }).click();
  await waitForState(page, "live");
  assert.match(await status(page).textContent(), /Live on dispatch\/north/);
  assert.equal(await page.getByTestId("assign-submit").isDisabled(), false);
  assertNoProblems(page);
});

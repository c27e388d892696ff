// Browser helpers of the console tests (browser.test.mjs, browser-transports.test.mjs,
// browser-acknowledgements.test.mjs):
// Debian's Chromium driven by playwright-core.
//
// Without /usr/bin/chromium (apt-get install chromium) a test that launches
// skips with a message, except under CI=true, where that is a failure.
// E2E_CHROMIUM names another Chromium binary.
//
// The console's files are embedded in the binary. E2E_CONSOLE_STATIC=worktree
// serves them to the page from crates/api/static instead (the server's own
// answer with the body replaced): to try console changes against a binary
// built before them. Without it the binary's files are what is tested.

import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { extname, join } from "node:path";

import { E2E_DIR, REPO_DIR } from "./harness.mjs";

export const CHROMIUM = process.env.E2E_CHROMIUM || "/usr/bin/chromium";
const LAUNCH_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--no-first-run",
];
export const SIGNALR_BUNDLE = join(E2E_DIR, "node_modules", "@microsoft", "signalr", "dist", "browser", "signalr.min.js");
const VIEWPORT = { width: 1180, height: 820 };

/** Whether the page gets the console's files from crates/api/static rather than from the binary. */
export const CONSOLE_FROM_WORKTREE = process.env.E2E_CONSOLE_STATIC === "worktree";
const STATIC_DIR = join(REPO_DIR, "crates", "api", "static");
const CONSOLE_FILES = new Map([
  ["/", "index.html"],
  ["/console.js", "console.js"],
  ["/console.css", "console.css"],
  ["/vendor/signalr.min.js", "vendor/signalr.min.js"],
  ["/vendor/signalr-protocol-msgpack.min.js", "vendor/signalr-protocol-msgpack.min.js"],
  ["/vendor/events-client.js", "vendor/events-client.js"],
]);
const CONTENT_TYPES = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
};

/**
 * A browser for test `t`, closed after it; `undefined` (the test is marked
 * skipped) when Chromium is not installed, unless CI=true.
 */
export async function launch(t) {
  if (!existsSync(CHROMIUM)) {
    const message = "chromium not installed: apt-get install chromium";
    if (process.env.CI === "true") throw new Error(`${message} (CI=true: the browser tests must run)`);
    t.skip(message);
    return undefined;
  }
  const { chromium } = await import("playwright-core");
  // A page whose document the test fulfilled has no IP address, so Chromium's Local Network
  // Access checks count it as public and block its WebSocket to 127.0.0.1 (the fetches
  // and EventSource go through): with the worktree's files, those checks are off.
  const args = CONSOLE_FROM_WORKTREE
    ? [...LAUNCH_ARGS, "--disable-features=LocalNetworkAccessChecks,LocalNetworkAccessChecksWebSockets"]
    : LAUNCH_ARGS;
  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args });
  t.after(() => browser.close());
  return browser;
}

/** Under E2E_CONSOLE_STATIC=worktree: the console's files on `server` come from crates/api/static. */
async function serveConsoleFromWorktree(context, server) {
  const origin = new URL(server.base).origin;
  await context.route(
    (url) => url.origin === origin && CONSOLE_FILES.has(url.pathname),
    async (route) => {
      const file = CONSOLE_FILES.get(new URL(route.request().url()).pathname);
      const requestHeaders = { ...route.request().headers() };
      delete requestHeaders["if-none-match"];
      const served = await route.fetch({ headers: requestHeaders });
      const headers = { ...served.headers() };
      for (const name of ["content-length", "etag", "content-type"]) delete headers[name];
      headers["content-type"] = CONTENT_TYPES[extname(file)];
      await route.fulfill({ status: 200, headers, body: await readFile(join(STATIC_DIR, file)) });
    },
  );
}

/**
 * A page in its own context (its own localStorage), recording uncaught
 * errors and Content-Security-Policy violations in `page.problems`. `server`:
 * the smartscheduler the page will open (its console files are then taken
 * from the worktree under E2E_CONSOLE_STATIC=worktree).
 */
export async function newPage(browser, server) {
  const context = await browser.newContext({ viewport: VIEWPORT });
  if (server && CONSOLE_FROM_WORKTREE) await serveConsoleFromWorktree(context, server);
  const page = await context.newPage();
  page.problems = [];
  page.requested = [];
  page.on("pageerror", (err) => page.problems.push(`pageerror: ${err.message}`));
  page.on("request", (r) => page.requested.push(new URL(r.url()).pathname));
  page.on("response", (r) => {
    if (r.status() === 404) page.problems.push(`404: ${r.url()}`);
  });
  page.on("console", (msg) => {
    if (msg.type() === "error" && /Content Security Policy|Uncaught/i.test(msg.text())) {
      page.problems.push(`console: ${msg.text()}`);
    }
  });
  return page;
}

/** Opens the console, pastes `token` and waits until the hub is live. */
export async function openConsole(browser, server, token) {
  const page = await newPage(browser, server);
  await page.goto(server.base + "/");
  await page.getByLabel("Bearer token").fill(token);
  await page.getByRole("button", { name: "Use token" }).click();
  await waitForState(page, "live");
  return page;
}

export const status = (page) => page.getByTestId("hub-status");

export async function waitForState(page, state, timeout = 15_000) {
  try {
    await page.waitForSelector(`[data-testid="hub-status"][data-state="${state}"]`, { timeout });
  } catch (err) {
    const text = await status(page).textContent().catch(() => "?");
    throw new Error(`hub status did not become "${state}" within ${timeout} ms (it says: ${text}): ${err.message}`);
  }
}

/** What the console shows for an id: its last 8 hex digits (UUID v7 ids share their first 8, the time). */
export const shown = (id) => `…${id.replace(/-/g, "").slice(-8)}`;

export const jobRow = (page, jobId) => page.locator(`[data-testid="jobs"] tr[data-job-id="${jobId}"]`);

export const feedItem = (page, eventId) => page.locator(`[data-testid="feed"] li[data-event-id="${eventId}"]`);

export function assertNoProblems(...pages) {
  for (const page of pages) assert.deepEqual(page.problems, [], `page errors on ${page.url()}`);
}

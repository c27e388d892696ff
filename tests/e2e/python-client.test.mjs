// A third-party client: Python's signalrcore (tests/e2e/python/, installed
// from PyPI by python/install.sh) negotiates without `negotiateVersion`, so it
// gets version 0 and connects with the `connectionId` as `id`; it joins
// dispatch/north and receives a JobAssigned. Skipped when the client is not
// installed, failed then under CI=true.

import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";

import { startServer, dispatcherToken, waitFor, withTimeout, E2E_DIR, T } from "./lib/harness.mjs";

const PYTHON = join(E2E_DIR, "python", ".venv", "bin", "python");
const CLIENT = join(E2E_DIR, "python", "signalrcore_client.py");

/** Whether signalrcore is there; skips the test (fails under CI=true) when not. */
function requirePythonClient(t) {
  if (existsSync(PYTHON)) return true;
  const message = "signalrcore is not installed: run tests/e2e/python/install.sh";
  if (process.env.CI === "true") throw new Error(`${message} (CI=true: the third-party client test must run)`);
  t.skip(message);
  return false;
}

/** Starts the Python client; its stdout lines are JSON objects, one per step. */
function runClient(base, token, region) {
  const child = spawn(PYTHON, [CLIENT, base, token, region], { stdio: ["pipe", "pipe", "pipe"] });
  const run = { child, stdout: "", stderr: "", exit: undefined };
  child.stdout.on("data", (c) => (run.stdout += c));
  child.stderr.on("data", (c) => (run.stderr += c));
  run.exited = new Promise((resolve) => child.on("exit", (code, signal) => resolve((run.exit = { code, signal }))));
  run.lines = () =>
    run.stdout
      .split("\n")
      .filter((l) => l.trim())
      .map((l) => JSON.parse(l));
  run.find = (key) => run.lines().find((l) => key in l)?.[key];
  run.describe = () => `stdout: ${run.stdout}\nstderr: ${run.stderr}`;
  return run;
}

test("signalrcore negotiates version 0, connects with the connectionId, joins and receives a JobAssigned", T, async (t) => {
  if (!requirePythonClient(t)) return;
  const server = await startServer(t);
  const contractor = await server.createContractor("north");
  const run = runClient(server.base, await dispatcherToken(["north"]), "north");
  t.after(async () => {
    if (!run.exit) {
      run.child.kill("SIGKILL");
      await run.exited;
    }
  });

  const joined = await waitFor(() => run.exit || run.find("joined"), 20_000, () => `the join; ${run.describe()}`);
  assert.equal(run.exit, undefined, `the client is running; ${run.describe()}`);
  assert.deepEqual(joined, { group: "dispatch/north", replayed: 0 });
  const negotiated = run.find("negotiated");
  assert.equal(negotiated.negotiateVersion, 0, "signalrcore asked for no version and was answered 0");
  assert.equal(negotiated.id, negotiated.connectionId, "version 0: the connectionId is the id it connects with");
  assert.match(server.log, /path=\/hubs\/jobs\/negotiate/, "it negotiated");

  const { job, assignment } = await server.assignNew("north", contractor.id);
  const event = await waitFor(() => run.find("event"), 10_000, () => `the JobAssigned; ${run.describe()}`);
  const entry = await server.waitPublished(assignment.eventId);
  assert.equal(event.eventId, assignment.eventId);
  assert.equal(event.jobId, job.id);
  assert.equal(event.sequence, entry.sequence);
  assert.equal(run.find("error"), undefined, `no error; ${run.describe()}`);

  // It stops at the server's next keep-alive Ping (see signalrcore_client.py).
  run.child.stdin.end();
  const exit = await withTimeout(run.exited, 25_000, "the client to stop when stdin closes").catch((err) => {
    throw new Error(`${err.message}; ${run.describe()}`);
  });
  assert.deepEqual(exit, { code: 0, signal: null }, run.describe());
  assert.equal(run.find("closed"), true, "its connection closed on stop()");
});

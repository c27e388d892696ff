// docs/examples/dispatcher.mjs, run as a user would run it, prints the
// JobAssigned of a POST assign.

import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { join } from "node:path";

import { startServer, dispatcherToken, waitFor, withTimeout, REPO_DIR, T } from "./lib/harness.mjs";

const EXAMPLE = join(REPO_DIR, "docs", "examples", "dispatcher.mjs");

/** Runs the example; collects stdout lines and stderr text. */
function runExample(env, args, cwd) {
  const child = spawn(process.execPath, [EXAMPLE, ...args], {
    cwd,
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const run = { child, stdout: "", stderr: "", exit: undefined };
  child.stdout.on("data", (c) => (run.stdout += c));
  child.stderr.on("data", (c) => (run.stderr += c));
  run.exited = new Promise((resolve) =>
    child.on("exit", (code, signal) => {
      run.exit = { code, signal };
      resolve(run.exit);
    }),
  );
  run.lines = () =>
    run.stdout
      .split("\n")
      .filter((l) => l.trim())
      .map((l) => JSON.parse(l));
  return run;
}

for (const [where, cwd] of [
  ["from the repository root", REPO_DIR],
  ["from tests/e2e", join(REPO_DIR, "tests", "e2e")],
]) {
  test(`docs/examples/dispatcher.mjs prints the JobAssigned of a POST assign (run ${where})`, T, async (t) => {
    const server = await startServer(t);
    const contractor = await server.createContractor("north");
    const token = await dispatcherToken(["north"]);
    const run = runExample({ BASE: server.base, TOKEN: token }, ["north"], cwd);
    t.after(async () => {
      if (!run.exit) {
        run.child.kill("SIGKILL");
        await run.exited;
      }
    });

    await waitFor(
      () => run.exit || /joined dispatch\/north/.test(run.stderr),
      15_000,
      () => `the example to join; stderr: ${run.stderr}`,
    );
    assert.equal(run.exit, undefined, `the example is running; stderr: ${run.stderr}`);

    const { job, assignment } = await server.assignNew("north", contractor.id);
    const other = await server.assignNew("south", (await server.createContractor("south")).id);
    const printed = await waitFor(
      () => run.lines().find((p) => p.eventId === assignment.eventId),
      10_000,
      () => `the example to print ${assignment.eventId}; stdout: ${run.stdout}; stderr: ${run.stderr}`,
    );
    const entry = await server.waitPublished(assignment.eventId);
    await server.waitPublished(other.assignment.eventId);
    assert.equal(printed.type, "JobAssigned");
    assert.equal(printed.jobId, job.id);
    assert.equal(printed.contractorId, contractor.id);
    assert.equal(printed.sequence, entry.sequence);
    assert.deepEqual(printed.job, { ...entry.payload.job });

    run.child.kill("SIGTERM");
    const exit = await withTimeout(run.exited, 10_000, "the example to stop on SIGTERM");
    assert.deepEqual(exit, { code: 0, signal: null }, `stops cleanly; stderr: ${run.stderr}`);
    assert.deepEqual(
      run.lines().map((p) => p.eventId),
      [assignment.eventId],
      "one line per event, and nothing from another region",
    );
  });
}

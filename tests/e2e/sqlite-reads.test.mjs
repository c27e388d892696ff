// SMARTSCHEDULER_SQLITE_READS=on-thread (opt-in): SQLite's reads run on the
// asking thread with rusqlite instead of sqlx's worker thread. The storage
// suite runs test for test on it (crates/infrastructure/tests/infrastructure/
// sqlite_on_thread_store.rs); this drives the real binary with the official
// client: writes, reads over HTTP, a replay on join, and the refusals.

import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

import { T, BIN, SECRET, startServer, dispatcherToken, contractorToken } from "./lib/harness.mjs";

test("on-thread reads: assign, read it back over HTTP, replay it on join, live after", T, async (t) => {
  const server = await startServer(t, { env: { SMARTSCHEDULER_SQLITE_READS: "on-thread" } });
  const ana = await server.createContractor("north", { name: "Ana Flores" });
  const { job, assignment } = await server.assignNew("north", ana.id);
  const admin = await server.adminToken();

  const read = await server.expect(200, "GET", `/api/jobs/${job.id}`, { token: admin });
  assert.equal(read.status, "Assigned");
  const got = await server.expect(200, "GET", `/api/assignments/${assignment.assignmentId}`, { token: admin });
  assert.equal(got.contractorId, ana.id);
  assert.equal(got.acknowledgement.status, "Pending");
  const mine = await server.expect(200, "GET", `/api/contractors/${ana.id}/assignments`, { token: await contractorToken(ana.id) });
  assert.deepEqual(mine.items.map((a) => a.assignmentId), [assignment.assignmentId]);
  const published = await server.waitPublished(assignment.eventId);
  assert.ok(published.sequence >= 1);

  const dispatcher = await server.connect(await dispatcherToken(["north"]));
  await dispatcher.connection.invoke("JoinDispatchGroup", "north", 0);
  await dispatcher.waitForEvents(1);
  assert.equal(dispatcher.events[0].eventId, assignment.eventId, "replayed from the log");
  const second = await server.assignNew("north", (await server.createContractor("north")).id);
  await dispatcher.waitForEvents(2);
  assert.equal(dispatcher.events[1].eventId, second.assignment.eventId, "then live");
  assert.ok(dispatcher.events[1].sequence > dispatcher.events[0].sequence);
  assert.equal(dispatcher.events.length, 2, "each once");
});

test("on-thread reads: refused for an in-memory database and for an unknown value, with a clear message", T, () => {
  const dir = mkdtempSync(join(tmpdir(), "smartscheduler-reads-"));
  try {
    const run = (env) =>
      spawnSync(BIN, ["serve"], {
        env: { ...process.env, SMARTSCHEDULER_BIND: "127.0.0.1:0", SMARTSCHEDULER_JWT_SECRET: SECRET, SMARTSCHEDULER_DATA_DIR: dir, ...env },
        encoding: "utf8",
        timeout: 20_000,
      });
    const memory = run({ SMARTSCHEDULER_DATABASE_URL: "sqlite::memory:", SMARTSCHEDULER_SQLITE_READS: "on-thread" });
    assert.notEqual(memory.status, 0, "an in-memory database with on-thread reads does not start");
    assert.match(memory.stderr, /database file/, memory.stderr);
    const unknown = run({ SMARTSCHEDULER_DATABASE_URL: `sqlite://${join(dir, "db.sqlite")}`, SMARTSCHEDULER_SQLITE_READS: "sideways" });
    assert.notEqual(unknown.status, 0);
    assert.match(unknown.stderr, /SMARTSCHEDULER_SQLITE_READS|sqlite-reads/, unknown.stderr);
    assert.match(unknown.stderr, /on-thread/, "the message lists the accepted values");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

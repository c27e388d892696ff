// A PostgreSQL outage: assignments fail fast with 503 problem+json, nothing
// is half-written, and the service recovers by itself when the database is
// back. Runs against a private PostgreSQL the test creates (initdb on a free
// port), so the shared server is never stopped.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { mkdtempSync, chmodSync, readdirSync, existsSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { T, startServer, freePort, waitFor } from "./lib/harness.mjs";

function pgBin() {
  const root = "/usr/lib/postgresql";
  if (!existsSync(root)) return null;
  const version = readdirSync(root).sort().pop();
  const bin = join(root, version, "bin");
  return existsSync(join(bin, "initdb")) ? bin : null;
}

/** Runs a PostgreSQL tool as the postgres user (initdb refuses root). */
function asPostgres(cmd) {
  const isRoot = process.getuid?.() === 0;
  const r = isRoot ? spawnSync("su", ["postgres", "-s", "/bin/sh", "-c", cmd], { encoding: "utf8" }) : spawnSync("/bin/sh", ["-c", cmd], { encoding: "utf8" });
  if (r.status !== 0) throw new Error(`${cmd}: ${r.stderr || r.stdout}`);
  return r.stdout;
}

test("a PostgreSQL outage answers 503 fast, writes nothing half, and recovers", T, async (t) => {
  const bin = pgBin();
  if (!bin) {
    if (process.env.CI === "true") assert.fail("PostgreSQL server binaries (initdb, pg_ctl) are missing: apt-get install postgresql");
    t.skip("PostgreSQL server binaries are not installed");
    return;
  }
  const dir = mkdtempSync(join(tmpdir(), "ss-pg-"));
  chmodSync(dir, 0o777);
  const data = join(dir, "data");
  const port = await freePort();
  asPostgres(`${bin}/initdb -D ${data} -A trust -U postgres >/dev/null`);
  const start = () => asPostgres(`${bin}/pg_ctl -D ${data} -o "-p ${port} -k ${dir} -c listen_addresses=127.0.0.1" -l ${dir}/pg.log -w start >/dev/null`);
  const stop = () => asPostgres(`${bin}/pg_ctl -D ${data} -m immediate -w stop >/dev/null`);
  start();
  t.after(() => {
    try { stop(); } catch {}
    rmSync(dir, { recursive: true, force: true });
  });

  const server = await startServer(t, { env: { SMARTSCHEDULER_DATABASE_URL: `postgres://postgres@127.0.0.1:${port}/postgres` } });
  const contractor = await server.createContractor("north");
  const job = await server.createJob("north");
  const before = await server.createJob("north");
  await server.assign(before.id, contractor.id);

  stop();
  const t0 = Date.now();
  const res = await server.request("POST", `/api/jobs/${job.id}/assign`, {
    token: await server.adminToken(),
    body: { contractorId: contractor.id, startUtc: "2031-03-01T08:00:00Z", endUtc: "2031-03-01T09:00:00Z" },
  });
  const waited = Date.now() - t0;
  assert.equal(res.status, 503, res.text);
  assert.equal(res.headers.get("content-type"), "application/problem+json");
  assert.ok(waited < 10_000, `answered in ${waited} ms`);
  const ready = await fetch(`${server.base}/health/ready`);
  assert.equal(ready.status, 503);
  t.diagnostic(`503 after ${waited} ms`);

  start();
  // Recovers by itself: the same assignment now succeeds, once.
  await waitFor(async () => (await fetch(`${server.base}/health/ready`)).status === 200, 30_000, "ready again");
  const again = await server.assign(job.id, contractor.id, { startUtc: "2031-03-01T08:00:00Z", endUtc: "2031-03-01T09:00:00Z" });
  const row = await server.waitPublished(again.eventId, 20_000);
  assert.equal(row.status, "Published");
  // Nothing half-written: two assignments, two events, both jobs Assigned.
  const events = await server.expect(200, "GET", "/api/events?limit=100", { token: await server.adminToken() });
  assert.equal(events.items.length, 2);
  const stored = await server.expect(200, "GET", `/api/jobs/${job.id}`, { token: await server.adminToken() });
  assert.equal(stored.status, "Assigned");
});

// The README's five-minute tour, run as written (with the binary for `cargo
// run -q --` and the test server for localhost:8080), twice: each run answers
// 201 then 409, and the tour works on the demo's data, so no contractor or job
// is created twice (issue 20: the tours and the demo share one data set).
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";

import { BIN, REPO_DIR, startServer, adminToken, sleep, T } from "./lib/harness.mjs";

/** The shell block under "## A five-minute tour", made to run against `server`. */
async function tourScript(server) {
  const readme = await readFile(join(REPO_DIR, "README.md"), "utf8");
  const section = readme.slice(readme.indexOf("## A five-minute tour"));
  const block = section.match(/```sh\n([\s\S]*?)```/);
  assert.ok(block, "the tour has a shell block");
  const host = server.base.replace(/^http:\/\//, "");
  return block[1].replaceAll("cargo run -q --", `"${BIN}"`).replaceAll("localhost:8080", host);
}

async function runTour(server, script) {
  const { stdout } = await promisify(execFile)("bash", ["-euo", "pipefail", "-c", script], {
    env: server.serverEnv(),
    cwd: server.dir,
    maxBuffer: 16 * 1024 * 1024,
  });
  return stdout;
}

test("the README's tour answers 201 then 409, on the demo's data, again and again", T, async (t) => {
  const server = await startServer(t);
  const script = await tourScript(server);
  for (const run of [1, 2]) {
    const out = await runTour(server, script);
    const statuses = [...out.matchAll(/HTTP\/1\.1 (\d{3}) /g)].map((m) => Number(m[1]));
    assert.deepEqual(statuses, [201, 409], `run ${run}: the assignment, then the repeat (${out.slice(0, 400)})`);
    assert.match(out, /"eventType":"JobAssigned"/, `run ${run}: the EventLog shows the JobAssigned`);
    assert.match(out, /application\/problem\+json/i, `run ${run}: the 409 is problem+json`);
    await sleep(1100); // the next run takes the next second of the slot clock
  }
  const admin = await adminToken();
  const contractors = await server.expect(200, "GET", "/api/contractors?region=north", { token: admin });
  const names = contractors.map((c) => c.name);
  assert.equal(new Set(names).size, names.length, `no contractor twice: ${names}`);
  assert.equal(names.length, 3, "the demo's three north contractors, nothing more");
  const jobs = await server.expect(200, "GET", "/api/jobs?region=north", { token: admin });
  const assigned = jobs.filter((j) => j.status === "Assigned");
  assert.equal(assigned.length, 2, "each run assigned one of the demo's jobs");
  const titles = jobs.map((j) => j.title);
  assert.ok(titles.every((title) => title !== null), "every job is one of the demo's");
});

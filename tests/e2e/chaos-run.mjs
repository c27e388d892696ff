// The long chaos run (scripts/chaos.sh): rounds of lib/chaos.mjs's runRound,
// each a fresh cluster with faults drawn at random, on one private
// PostgreSQL and Redis. Prints a line per round and a summary, appends each
// round's record to a JSON-lines file, and exits 1 on any violation.
//
// Usage: node chaos-run.mjs [--rounds N] [--events N] [--faults N] [--seed N] [--out FILE]

import { appendFileSync, mkdirSync } from "node:fs";
import { dirname } from "node:path";
import { parseArgs } from "node:util";

import { FAULT_KINDS, LEASE_MS, chaosServicesMissing, describeRound, runRound, seededRandom, startChaosServices } from "./lib/chaos.mjs";

const usage = "usage: scripts/chaos.sh [--rounds N] [--events N] [--faults N] [--seed N] [--out FILE]";
let values;
try {
  ({ values } = parseArgs({
    options: {
      rounds: { type: "string", default: "20" },
      events: { type: "string", default: "300" },
      faults: { type: "string", default: "4" },
      seed: { type: "string", default: String(Date.now() % 1e9) },
      out: { type: "string" },
    },
  }));
} catch (err) {
  console.error(`${err.message}\n${usage}`);
  process.exit(2);
}
const number = (name, min) => {
  const n = Number(values[name]);
  if (!Number.isInteger(n) || n < min) {
    console.error(`--${name} must be an integer >= ${min} (got ${values[name]})\n${usage}`);
    process.exit(2);
  }
  return n;
};
const rounds = number("rounds", 1);
const events = number("events", 20);
const faultsPerRound = number("faults", 1);
const seed = number("seed", 0);

const missing = await chaosServicesMissing();
if (missing.length) {
  console.error(`chaos: missing ${missing.join(", ")}`);
  process.exit(1);
}

const random = seededRandom(seed);
// Each round draws its faults from every kind, without repeats while it can.
const drawFaults = () => {
  const bag = [...FAULT_KINDS];
  return Array.from({ length: faultsPerRound }, () => {
    if (!bag.length) bag.push(...FAULT_KINDS);
    return bag.splice(Math.floor(random() * bag.length), 1)[0];
  });
};

console.log(`chaos: ${rounds} rounds of ${events} assignments, ${faultsPerRound} faults each, lease ${LEASE_MS} ms, seed ${seed}`);
const services = await startChaosServices();
const records = [];
try {
  for (let round = 1; round <= rounds; round++) {
    const record = await runRound(services, {
      round,
      events,
      faults: drawFaults(),
      seed: Math.floor(random() * 1e9),
      log: (line) => console.log(line),
    });
    records.push(record);
    console.log(describeRound(record));
    for (const v of record.violations) console.log(`  ${v.rule} ${v.who}: ${v.detail}`);
    if (record.logs && process.env.CHAOS_VERBOSE) console.log(record.logs);
    if (values.out) {
      mkdirSync(dirname(values.out), { recursive: true });
      const { logs, ...kept } = record;
      appendFileSync(values.out, JSON.stringify({ at: new Date().toISOString(), ...kept }) + "\n");
    }
  }
} finally {
  await services.stop();
}

// The summary: per fault kind, how many rounds had it and how many of those found something.
const bad = records.filter((r) => r.violations.length);
const byRule = {};
for (const r of records) for (const v of r.violations) byRule[v.rule] = (byRule[v.rule] ?? 0) + 1;
const byKind = {};
for (const r of records) {
  for (const kind of new Set(r.faults.map((f) => f.kind))) {
    byKind[kind] ??= { rounds: 0, withViolations: 0 };
    byKind[kind].rounds++;
    if (r.violations.length) byKind[kind].withViolations++;
  }
}
const stalls = records.flatMap((r) => r.stallsMs);
console.log("\nchaos summary");
console.log(`  rounds: ${records.length}, with violations: ${bad.length}`);
console.log(`  assignments answered 201: ${records.reduce((n, r) => n + r.answered, 0)}, EventLog rows: ${records.reduce((n, r) => n + r.logged, 0)}`);
console.log(`  faults injected: ${records.reduce((n, r) => n + r.faults.length, 0)}`);
for (const [kind, k] of Object.entries(byKind)) console.log(`    ${kind}: in ${k.rounds} rounds, ${k.withViolations} of them with violations`);
console.log(`  violations by rule: ${Object.keys(byRule).length ? Object.entries(byRule).map(([k, n]) => `${k} x${n}`).join(", ") : "none"}`);
console.log(`  publishing stall after a freeze or stall of the holder: ${stalls.length ? `longest ${Math.max(...stalls)} ms, median ${stalls.sort((a, b) => a - b)[Math.floor(stalls.length / 2)]} ms over ${stalls.length}` : "not measured"}`);
console.log(bad.length ? `chaos: FAILED (${bad.length} of ${records.length} rounds found violations)` : "chaos: ok");
process.exit(bad.length ? 1 : 0);

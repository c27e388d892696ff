#!/usr/bin/env node
// A dispatcher console in a few lines: connects to the SmartScheduler hub with
// the official @microsoft/signalr client, joins `dispatch/{REGION}`, and prints
// every JobAssigned payload as one JSON line on stdout (status goes to stderr).
// It keeps the last `sequence` it has seen and, after an automatic reconnect,
// rejoins with it so that nothing published in between is lost.
//
//   TOKEN=$(smartscheduler token --role Dispatcher --region north)
//   BASE=http://localhost:8080 TOKEN=$TOKEN node docs/examples/dispatcher.mjs north
//
// Environment: BASE (default http://localhost:8080), TOKEN (required), REGION
// (or the first argument; default north), AFTER_SEQUENCE (optional: resume
// after this sequence on the first join too). Stops cleanly on Ctrl-C/SIGTERM.
//
// Node 20+. Needs @microsoft/signalr: `npm install @microsoft/signalr`, or run
// it from this repository, where tests/e2e/node_modules has it.

import { createRequire } from "node:module";

/** Loads @microsoft/signalr from next to this file, the current folder, or tests/e2e. */
async function loadSignalR() {
  try {
    return await import("@microsoft/signalr");
  } catch (err) {
    if (err?.code !== "ERR_MODULE_NOT_FOUND") throw err;
  }
  for (const base of [`${process.cwd()}/`, new URL("../../tests/e2e/", import.meta.url)]) {
    try {
      return createRequire(base)("@microsoft/signalr");
    } catch {
      // try the next place
    }
  }
  throw new Error("@microsoft/signalr is not installed: run `npm install @microsoft/signalr` (or `npm ci` in tests/e2e)");
}

const signalR = await loadSignalR();

const BASE = (process.env.BASE || "http://localhost:8080").replace(/\/+$/, "");
const TOKEN = process.env.TOKEN;
const REGION = process.argv[2] || process.env.REGION || "north";
const AFTER = process.env.AFTER_SEQUENCE ? Number(process.env.AFTER_SEQUENCE) : undefined;

if (!TOKEN) {
  console.error("TOKEN is required (smartscheduler token --role Dispatcher --region REGION)");
  process.exit(2);
}

const group = `dispatch/${REGION}`;
/** Last sequence seen per joined group: what a rejoin passes as afterSequence. */
const lastSequence = new Map([[group, AFTER]]);
/** eventIds already printed (a retried event can come twice): bounded. */
const seen = new Set();

const connection = new signalR.HubConnectionBuilder()
  .withUrl(`${BASE}/hubs/jobs`, { accessTokenFactory: () => TOKEN })
  .withAutomaticReconnect({
    // 0, 1, 2, 5, then every 10 seconds, forever.
    nextRetryDelayInMilliseconds: ({ previousRetryCount }) => [0, 1000, 2000, 5000][previousRetryCount] ?? 10_000,
  })
  // A short socket drop resumes the same connection; nothing to rejoin then.
  .withStatefulReconnect()
  .configureLogging(signalR.LogLevel.Warning)
  .build();

// Register handlers BEFORE start(): events can arrive right after a join.
connection.on("JobAssigned", (event) => {
  // The event belongs to these groups; remember its sequence for the ones we joined.
  for (const g of [`dispatch/${event.region}`, `contractor/${event.contractorId}`]) {
    if (!lastSequence.has(g)) continue;
    const last = lastSequence.get(g);
    if (last === undefined || event.sequence > last) lastSequence.set(g, event.sequence);
  }
  if (seen.has(event.eventId)) return;
  seen.add(event.eventId);
  if (seen.size > 10_000) seen.delete(seen.values().next().value);
  process.stdout.write(JSON.stringify(event) + "\n");
});

async function join() {
  const after = lastSequence.get(group);
  const result = await connection.invoke("JoinDispatchGroup", REGION, ...(after === undefined ? [] : [after]));
  console.error(`joined ${result.group} (replayed ${result.replayed}${after === undefined ? "" : ` after sequence ${after}`})`);
}

connection.onreconnecting((err) => console.error(`connection lost (${err?.message ?? "no error"}); reconnecting...`));
connection.onreconnected(async () => {
  console.error("reconnected; rejoining");
  try {
    await join();
  } catch (err) {
    console.error(`rejoin failed: ${err.message}`);
    await connection.stop(); // onclose exits
  }
});

let stopping = false;
connection.onclose((err) => {
  if (stopping) return;
  console.error(`connection closed${err ? `: ${err.message}` : ""}`);
  process.exit(1);
});

for (const signal of ["SIGINT", "SIGTERM"]) {
  process.on(signal, async () => {
    stopping = true;
    await connection.stop();
    process.exit(0);
  });
}

try {
  await connection.start();
  console.error(`connected to ${BASE}/hubs/jobs`);
  await join();
} catch (err) {
  console.error(`could not connect or join: ${err.message}`);
  process.exit(1);
}

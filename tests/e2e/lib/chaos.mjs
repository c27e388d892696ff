// A round of the fault-injection suite, shared by tests/e2e/chaos.test.mjs
// (one short round) and scripts/chaos.sh (many, through chaos-run.mjs): a
// cluster on a private PostgreSQL (private-postgres.mjs), each node behind
// its own cutting proxy (pg-proxy.mjs), observers, a burst of assignments,
// the faults at random moments of it, and the checker (chaos-checker.mjs).

import { execFile } from "node:child_process";
import { promisify } from "node:util";

import { checkRound } from "./chaos-checker.mjs";
import {
  REDIS_SERVER_BIN,
  adminToken,
  connect,
  dispatcherToken,
  nextSlot,
  pool,
  sleep,
  startClusterNode,
  startRedis,
  waitFor,
  withTimeout,
} from "./harness.mjs";
import { startPgProxy } from "./pg-proxy.mjs";
import { pgBinDir, startPrivatePostgres } from "./private-postgres.mjs";

const execFileP = promisify(execFile);

export const REGIONS = ["north", "south"];
/** The lease the suite asks for (SMARTSCHEDULER_PUBLISHER_LEASE_MS): short, so a freeze "past the lease" is short. */
export const LEASE_MS = Number(process.env.CHAOS_LEASE_MS) || 1500;
/** Every fault kind, in the order docs/reliability.md lists them. */
/**
 * How long a freeze or a network stall of the lease holder lasts, in leases:
 * long enough past the lease that another node must have taken over before
 * it ends (the "no-takeover" rule).
 */
export const PAST_LEASE = Number(process.env.CHAOS_PAST_LEASE) || 2.5;
export const FAULT_KINDS = ["kill9", "freeze", "lease-kill", "session-kill", "pg-restart", "redis-restart", "net-reset", "net-stall"];

const range = (n) => Array.from({ length: n }, (_, i) => i);
const pick = (items, random) => items[Math.floor(random() * items.length)];

/** A small seeded PRNG (mulberry32), so a round's choices can be replayed from its seed. */
export function seededRandom(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

// ---------------------------------------------------------------------------
// Services

/** What the suite needs and is missing, as sentences (empty when all is there). */
export async function chaosServicesMissing() {
  const missing = [];
  if (!pgBinDir()) missing.push("PostgreSQL server binaries (initdb, pg_ctl under /usr/lib/postgresql/*/bin)");
  try {
    await execFileP("psql", ["--version"], { timeout: 5000 });
  } catch {
    missing.push("psql");
  }
  try {
    await execFileP(REDIS_SERVER_BIN, ["--version"], { timeout: 5000 });
  } catch {
    missing.push(REDIS_SERVER_BIN);
  }
  return missing;
}

// ---------------------------------------------------------------------------
// The cluster: nodes on one database of the private PostgreSQL, each through
// its own proxy, and a private Redis.

/** Starts the services every round shares: the private PostgreSQL and Redis. `stop()` ends both. */
export async function startChaosServices() {
  const pg = await startPrivatePostgres();
  let redis;
  try {
    redis = await startRedis();
  } catch (err) {
    await pg.destroy();
    throw err;
  }
  return {
    pg,
    redis,
    async stop() {
      await redis.stop().catch(() => {});
      await pg.destroy();
    },
  };
}

/**
 * A fresh database `chaos_<n>` and `nodes` processes on it, each reaching
 * PostgreSQL through its own {@link startPgProxy}. `stop()` thaws, stops and
 * removes everything of the round (not the shared services).
 */
export async function startChaosCluster(services, { nodes = 2, leaseMs = LEASE_MS, round = 0 } = {}) {
  const db = `chaos_${round}_${Date.now().toString(36)}`;
  await services.pg.sql(`CREATE DATABASE ${db}`);
  const cluster = { db, nodes: [], services, leaseMs };
  cluster.stop = async () => {
    for (const node of cluster.nodes) thaw(node);
    await Promise.allSettled(cluster.nodes.map((n) => n.stop()));
    await Promise.allSettled(cluster.nodes.map((n) => n.proxy.stop()));
    await services.pg.sql(`DROP DATABASE IF EXISTS ${db} WITH (FORCE)`).catch(() => {});
  };
  try {
    // One after the other: the first applies the migrations.
    for (const i of range(nodes)) {
      const proxy = await startPgProxy(services.pg.port);
      const node = await startClusterNode({
        databaseUrl: `postgres://postgres@127.0.0.1:${proxy.port}/${db}`,
        redisUrl: services.redis.url,
        name: String.fromCharCode(65 + i),
        env: { SMARTSCHEDULER_PUBLISHER_LEASE_MS: String(leaseMs) },
      }).catch(async (err) => {
        await proxy.stop();
        throw err;
      });
      node.proxy = proxy;
      cluster.nodes.push(node);
    }
  } catch (err) {
    await cluster.stop();
    throw err;
  }
  return cluster;
}

function thaw(node) {
  if (node.frozen && node.proc && !node.exit) node.proc.kill("SIGCONT");
  node.frozen = false;
}

/** Live sessions of the round's database: `[{pid, port, app}]`; `where` narrows them (SQL). */
async function sessions(cluster, where = "true") {
  const text = await cluster.services.pg.sql(
    `SELECT pid, coalesce(client_port, 0), application_name FROM pg_stat_activity
     WHERE datname = '${cluster.db}' AND backend_type = 'client backend' AND pid <> pg_backend_pid()
       AND application_name <> 'chaos-suite' AND (${where})`,
  );
  return text
    .split("\n")
    .filter(Boolean)
    .map((line) => {
      const [pid, port, app] = line.split("|");
      return { pid: Number(pid), port: Number(port), app };
    });
}

// Today's lease is an advisory lock held by a session; the fenced lease runs
// on a session named 'smartscheduler-lease'. Either marks a lease session.
const LEASE_SESSION = `application_name = 'smartscheduler-lease'
  OR pid IN (SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted)`;
const ADVISORY_HOLDER = `pid IN (SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted)`;

/** The node a session belongs to, by the proxy that carries it. */
function nodeOfSession(cluster, session) {
  return cluster.nodes.find((n) => n.proxy.upstreamPorts().has(session.port));
}

/**
 * The node that holds the publisher lease, as best the suite can tell: the
 * holder of the advisory lock (today's lease) when exactly one node has it,
 * else the running node that most recently logged taking the lease.
 */
async function leaseHolder(cluster, watch, patience = Date.now() + 1500) {
  const running = cluster.nodes.filter((n) => !n.exit && !n.frozen);
  const holders = new Set(
    (await sessions(cluster, ADVISORY_HOLDER).catch(() => [])).map((s) => nodeOfSession(cluster, s)).filter(Boolean),
  );
  if (holders.size === 1) return { node: [...holders][0], how: "holds the advisory lock" };
  if (Date.now() < patience) {
    // Between holders (a lease just lost): look again shortly.
    await sleep(100);
    return leaseHolder(cluster, watch, patience);
  }
  const byLog = running.filter((n) => watch.tookAt.has(n)).sort((a, b) => watch.tookAt.get(b) - watch.tookAt.get(a));
  if (byLog.length) return { node: byLog[0], how: "logged taking the lease last" };
  return { node: running[0], how: "no holder known" };
}

/** Notes when each node (last) logged "took the publisher lease". */
function watchLease(cluster) {
  const counts = new Map();
  const watch = { tookAt: new Map() };
  const tick = () => {
    for (const node of cluster.nodes) {
      const n = node.log.split("took the publisher lease").length - 1;
      if (n !== (counts.get(node) ?? 0)) watch.tookAt.set(node, Date.now());
      counts.set(node, n);
    }
  };
  tick();
  const timer = setInterval(tick, 50);
  watch.stop = () => clearInterval(timer);
  return watch;
}

// ---------------------------------------------------------------------------
// Faults. Each resolves with a line saying what it did.

const FAULTS = {
  /** kill -9 of a node (the lease holder half the time), then a restart on the same port. */
  async kill9(cluster, { random, watch }) {
    const { node: holder } = await leaseHolder(cluster, watch);
    const victim = random() < 0.5 ? holder : pick(cluster.nodes.filter((n) => !n.frozen && !n.exit), random);
    await victim.kill();
    await sleep(300 + Math.floor(random() * 700));
    for (let attempt = 1; ; attempt++) {
      try {
        await victim.start();
        break;
      } catch (err) {
        if (attempt >= 3) throw err;
        await sleep(1000);
      }
    }
    return `kill -9 ${victim.name}${victim === holder ? " (lease holder)" : ""}, restarted`;
  },

  /** SIGSTOP of the lease holder for PAST_LEASE leases, then SIGCONT. */
  async freeze(cluster, { watch, freezes }) {
    const { node: victim, how } = await leaseHolder(cluster, watch);
    const ms = Math.round(cluster.leaseMs * PAST_LEASE);
    const freeze = { node: victim.name, at: Date.now() };
    freezes.push(freeze);
    victim.frozen = true;
    victim.proc.kill("SIGSTOP");
    await sleep(ms);
    thaw(victim);
    freeze.until = Date.now();
    return `SIGSTOP ${victim.name} (lease holder: ${how}) for ${ms} ms`;
  },

  /** pg_terminate_backend of the lease session, 12 times 150 ms apart (the issue's reproduction, a little longer). */
  async "lease-kill"(cluster) {
    let killed = 0;
    for (const i of range(12)) {
      if (i) await sleep(150);
      const out = await cluster.services.pg
        .sql(`SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = '${cluster.db}' AND (${LEASE_SESSION})`)
        .catch(() => "0");
      killed += Number(out) || 0;
    }
    return `pg_terminate_backend of the lease session x12 (${killed} sessions ended)`;
  },

  /** pg_terminate_backend of 3 random sessions of the nodes. */
  async "session-kill"(cluster, { random }) {
    const all = await sessions(cluster);
    const chosen = [];
    for (const _ of range(Math.min(3, all.length))) chosen.push(all.splice(Math.floor(random() * all.length), 1)[0]);
    if (chosen.length) {
      await cluster.services.pg.sql(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid IN (${chosen.map((s) => s.pid).join(",")})`);
    }
    return `pg_terminate_backend of ${chosen.length} random sessions (${chosen.map((s) => `${nodeOfSession(cluster, s)?.name ?? "?"}:${s.app || "-"}`).join(", ")})`;
  },

  /** An immediate (crash) shutdown of PostgreSQL, started again 1 s later. */
  async "pg-restart"(cluster) {
    await cluster.services.pg.stop();
    await sleep(1000);
    await cluster.services.pg.start();
    return "PostgreSQL crash-stopped and started again after 1 s";
  },

  /** Redis killed and started again (same port) 1 s later. */
  async "redis-restart"(cluster) {
    await cluster.services.redis.kill();
    await sleep(1000);
    await cluster.services.redis.start();
    return "Redis killed and started again after 1 s";
  },

  /** Every connection between one node and PostgreSQL reset. */
  async "net-reset"(cluster, { random }) {
    const node = pick(cluster.nodes, random);
    const n = node.proxy.reset();
    return `network: ${n} connections of ${node.name} to PostgreSQL reset`;
  },

  /** The lease holder's road to PostgreSQL stalled for PAST_LEASE leases. */
  async "net-stall"(cluster, { watch, freezes }) {
    const { node, how } = await leaseHolder(cluster, watch);
    const ms = Math.round(cluster.leaseMs * PAST_LEASE);
    const freeze = { node: node.name, at: Date.now() };
    freezes.push(freeze);
    await node.proxy.stall(ms);
    freeze.until = Date.now();
    return `network: ${node.name}'s connections to PostgreSQL stalled for ${ms} ms (lease holder: ${how})`;
  },
};

// ---------------------------------------------------------------------------
// Observers: official clients joined to a region's dispatch group, one per
// node and region. One that loses its connection reconnects (automatic
// reconnect, the same node) and rejoins with afterSequence = the last
// sequence it saw; from then on it is checked as "rejoined".

async function observer(node, region, token) {
  const obs = { name: `${node.name}/${region}`, node, region, events: [], rejoined: false, rejoinErrors: [], last: null };
  const client = await connect(node, token, {
    reconnect: [0, 250, 500, ...Array(120).fill(1000)],
    onEvent: (e) => {
      obs.events.push({ eventId: e.eventId, sequence: e.sequence, at: Date.now() });
      obs.last = Math.max(obs.last ?? 0, e.sequence);
    },
  });
  obs.client = client;
  client.connection.onreconnecting(() => {
    obs.rejoined = true;
  });
  client.connection.onreconnected(async () => {
    // The node may be up before its database is: try a few times.
    for (let attempt = 1; attempt <= 10; attempt++) {
      try {
        await client.connection.invoke("JoinDispatchGroup", region, obs.last);
        return;
      } catch (err) {
        if (attempt === 10) obs.rejoinErrors.push(String(err.message));
        await sleep(500);
      }
    }
  });
  const joined = await client.connection.invoke("JoinDispatchGroup", region);
  if (joined?.group !== `dispatch/${region}`) throw new Error(`join of ${obs.name}: ${JSON.stringify(joined)}`);
  return obs;
}

// ---------------------------------------------------------------------------
// The burst

/**
 * POST assign with an Idempotency-Key; a network error, a timeout or a 5xx is
 * retried with the same key and body on the next node until `deadline`, so
 * that every assignment ends with one clear answer.
 */
async function assignUntilAnswered(nodes, first, token, { jobId, body, key, deadline }) {
  const tries = [];
  for (let attempt = 0; ; attempt++) {
    const node = nodes[(first + attempt) % nodes.length];
    let status = 0;
    let json;
    let error;
    try {
      const res = await fetch(`${node.base}/api/jobs/${jobId}/assign`, {
        method: "POST",
        headers: { authorization: `Bearer ${token}`, "content-type": "application/json", "idempotency-key": key },
        body: JSON.stringify(body),
        signal: AbortSignal.timeout(15_000),
      });
      status = res.status;
      const text = await res.text();
      try {
        json = JSON.parse(text);
      } catch {
        error = text.slice(0, 200);
      }
    } catch (err) {
      error = String(err.cause?.code ?? err.name ?? err.message);
    }
    tries.push(`${node.name}:${status || error}`);
    if (status && status < 500) return { status, eventId: json?.eventId, node: node.name, tries, body: json };
    if (Date.now() > deadline) return { status, tries, error };
    await sleep(Math.min(1000, 100 * 2 ** attempt));
  }
}

// ---------------------------------------------------------------------------
// A round

/** Every EventLog row, through the API of a running node: Published pages by sequence, then Pending and Failed. */
async function readEventLog(node, token, regionOfJob) {
  const rows = [];
  const get = async (query) => {
    const res = await fetch(`${node.base}/api/events?${query}`, { headers: { authorization: `Bearer ${token}` }, signal: AbortSignal.timeout(15_000) });
    if (res.status !== 200) throw new Error(`GET /api/events?${query}: ${res.status} ${await res.text()}`);
    return res.json();
  };
  let after = 0;
  for (;;) {
    const page = await get(`afterSequence=${after}&limit=500`);
    rows.push(...page.items);
    if (page.items.length < 500 || page.nextAfterSequence == null) break;
    after = page.nextAfterSequence;
  }
  for (const status of ["Pending", "Failed"]) rows.push(...(await get(`status=${status}&limit=500`)).items);
  return rows.map((e) => ({
    eventId: e.eventId,
    sequence: e.sequence,
    status: e.status,
    publishedAt: e.publishedAtUtc,
    region: regionOfJob.get(e.payload?.jobId) ?? e.payload?.region,
  }));
}

/**
 * One round: a fresh cluster, observers on every node and region, a burst of
 * `events` assignments by `workers` HTTP clients alternating nodes, and the
 * `faults` (kinds of {@link FAULT_KINDS}) at random moments of it; then the
 * checker. Resolves with the round's record (see docs/reliability.md).
 */
export async function runRound(services, { round = 1, events = 200, workers = 8, faults, seed = Date.now(), leaseMs = LEASE_MS, log = () => {} } = {}) {
  const random = seededRandom(seed);
  faults ??= range(3).map(() => pick(FAULT_KINDS, random));
  const record = { round, seed, leaseMs, events, faults: [], answered: 0, refused: 0, unanswered: 0, logged: 0, violations: [], stallsMs: [] };
  const started = Date.now();
  const cluster = await startChaosCluster(services, { round, leaseMs });
  const watch = watchLease(cluster);
  try {
    const admin = await adminToken();
    const tokens = Object.fromEntries(await Promise.all(REGIONS.map(async (r) => [r, await dispatcherToken([r])])));
    const { nodes } = cluster;

    // The catalog: jobs alternate regions; each region has its contractors.
    const contractors = {};
    for (const region of REGIONS) {
      contractors[region] = await pool(range(8), 4, (i) => nodes[i % nodes.length].createContractor(region, { token: admin, name: `R${round}-${region}-${i}` }));
    }
    const jobs = await pool(range(events), 6, (i) => nodes[i % nodes.length].createJob(REGIONS[i % 2], { token: admin, title: `Chaos ${round}/${i}` }));
    const regionOfJob = new Map(jobs.map((j, i) => [j.id, REGIONS[i % 2]]));

    const observers = [];
    for (const node of nodes) for (const region of REGIONS) observers.push(await observer(node, region, tokens[region]));
    await waitFor(() => nodes.some((n) => n.holdsLease()), 15_000, "a node to take the publisher lease");

    // The burst: a thin trickle over the whole span (it shows when
    // publishing stalls), and a dense volley at each fault's moment (races
    // need traffic on both nodes while the fault strikes).
    const span = 2000 + faults.length * 3500;
    const moments = faults.map(() => 0.1 + random() * 0.75).sort((a, b) => a - b);
    // The lease-session kills last longest and race hardest: their volley
    // is five times the others'.
    const trickle = Math.round(events * 0.2);
    const weights = faults.map((kind) => (kind === "lease-kill" ? 5 : 1));
    const unit = (events - trickle) / weights.reduce((a, b) => a + b, 0);
    const volleys = [];
    let from = trickle;
    faults.forEach((kind, k) => {
      const to = k === faults.length - 1 ? events : Math.round(from + unit * weights[k]);
      volleys.push({ from, to, start: moments[k] * span - 200, window: kind === "lease-kill" ? 900 : 500 });
      from = to;
    });
    const dueAt = range(events).map((i) => {
      const v = volleys.find((v) => i >= v.from && i < v.to);
      if (!v) return (i / trickle) * span;
      return v.start + ((i - v.from) / (v.to - v.from)) * v.window;
    });
    // Each node has its own HTTP clients, so a frozen node holds up only its
    // own; both regions go to both nodes (pairs of jobs alternate nodes).
    const home = (i) => Math.floor(i / 2) % nodes.length;
    const queues = nodes.map((_, k) => range(events).filter((i) => home(i) === k).sort((a, b) => dueAt[a] - dueAt[b]));
    const burstStart = Date.now();
    const results = new Array(events);
    const burst = Promise.all(
      range(workers).map(async (w) => {
        const queue = queues[w % nodes.length];
        while (queue.length) {
          const i = queue.shift();
          const due = burstStart + dueAt[i];
          if (due > Date.now()) await sleep(due - Date.now());
          const job = jobs[i];
          const region = REGIONS[i % 2];
          const contractor = contractors[region][i % contractors[region].length];
          const body = { contractorId: contractor.id, ...nextSlot() };
          results[i] = await assignUntilAnswered(nodes, home(i), admin, {
            jobId: job.id,
            body,
            key: `chaos-${seed}-${i}`,
            deadline: Date.now() + 60_000,
          });
        }
      }),
    );

    // Faults one after the other, each at a random moment of the burst.
    const freezes = [];
    const injecting = (async () => {
      for (const [k, kind] of faults.entries()) {
        const at = burstStart + moments[k] * span;
        if (at > Date.now()) await sleep(at - Date.now());
        const t0 = Date.now() - burstStart;
        try {
          const what = await FAULTS[kind](cluster, { random, watch, freezes });
          record.faults.push({ kind, atMs: t0, what });
          log(`  fault at ${t0} ms: ${what}`);
        } catch (err) {
          record.faults.push({ kind, atMs: t0, what: `failed to inject: ${err.message}` });
          log(`  fault ${kind} at ${t0} ms failed to inject: ${err.message}`);
        }
      }
    })();
    await withTimeout(Promise.all([burst, injecting]), span + 180_000, "the burst and its faults");
    for (const node of nodes) thaw(node);

    record.answered = results.filter((r) => r.status === 201).length;
    const refused = results.filter((r) => r.status && r.status !== 201);
    const unanswered = results.filter((r) => !r.status);
    record.refused = refused.length;
    record.unanswered = unanswered.length;
    for (const r of refused) record.violations.push({ rule: "refused", who: "API", detail: `an assignment got ${r.status} after ${r.tries.join(" ")}: ${JSON.stringify(r.body).slice(0, 200)}` });
    for (const r of unanswered) record.violations.push({ rule: "unanswered", who: "API", detail: `no answer within 60 s: ${r.tries.join(" ")}` });

    // Settle: everything logged is published, then every observer has had time to receive it.
    const reader = () => nodes.find((n) => !n.exit) ?? nodes[0];
    let logRows = [];
    await waitFor(
      async () => {
        logRows = await readEventLog(reader(), admin, regionOfJob).catch(() => []);
        return logRows.length > 0 && logRows.every((r) => r.status === "Published");
      },
      30_000,
      "every EventLog row to be Published",
    ).catch(() => {});
    await waitFor(
      () =>
        observers.every((o) => {
          const got = new Set(o.events.map((e) => e.eventId));
          return logRows.filter((r) => r.region === o.region).every((r) => got.has(r.eventId));
        }),
      15_000,
      "every observer to have its group's events",
    ).catch(() => {});
    await sleep(1000); // late duplicates show up too
    logRows = await readEventLog(reader(), admin, regionOfJob);
    record.logged = logRows.length;

    const answered = results.filter((r) => r.status === 201).map((r) => r.eventId);
    record.violations.push(...checkRound({ log: logRows, answered, observers }));
    for (const o of observers) {
      for (const e of o.rejoinErrors) record.violations.push({ rule: "rejoin-failed", who: o.name, detail: e });
    }
    record.rejoined = observers.filter((o) => o.rejoined).map((o) => o.name);

    // Publishing stall after each freeze or network stall of the holder:
    // from its start to the first event of an assignment asked for after
    // it, received by an observer on another node. Takeover: of the
    // assignments other nodes took once a lease had passed (so the old
    // holder's last publishing is over), one was delivered there before the
    // outage ended.
    const requested = new Map();
    results.forEach((r, i) => r?.eventId && requested.set(r.eventId, burstStart + dueAt[i]));
    for (const f of freezes) {
      const elsewhere = observers.filter((o) => o.node.name !== f.node);
      const deliveredAt = (eventId) => Math.min(...elsewhere.map((o) => o.events.find((e) => e.eventId === eventId)?.at ?? Infinity));
      const times = elsewhere.flatMap((o) => o.events.filter((e) => (requested.get(e.eventId) ?? 0) >= f.at).map((e) => e.at));
      if (times.length) record.stallsMs.push(Math.min(...times) - f.at);
      const afterLease = results.filter(
        (r, i) => r?.status === 201 && r.node !== f.node && burstStart + dueAt[i] >= f.at + leaseMs && burstStart + dueAt[i] < f.until - 200,
      );
      if (afterLease.length && !afterLease.some((r) => deliveredAt(r.eventId) < f.until)) {
        const first = Math.min(...afterLease.map((r) => deliveredAt(r.eventId)));
        record.violations.push({
          rule: "no-takeover",
          who: "cluster",
          detail: `${f.node} kept the lease through its ${f.until - f.at} ms outage: none of the ${afterLease.length} assignments other nodes took after one lease was delivered before it ended (the first ${Number.isFinite(first) ? `${first - f.at} ms after it began` : "never"})`,
        });
      }
    }
    record.maxStallMs = record.stallsMs.length ? Math.max(...record.stallsMs) : null;
    return record;
  } catch (err) {
    record.violations.push({ rule: "round-failed", who: "suite", detail: String(err.stack ?? err) });
    record.logs = cluster.nodes.map((n) => `--- node ${n.name} ---\n${n.log.slice(-3000)}`).join("\n");
    return record;
  } finally {
    watch.stop();
    record.durationMs = Date.now() - started;
    await cluster.stop();
  }
}

/** One line per round for a summary. */
export function describeRound(r) {
  const rules = {};
  for (const v of r.violations) rules[v.rule] = (rules[v.rule] ?? 0) + 1;
  const found = Object.keys(rules).length ? Object.entries(rules).map(([k, n]) => `${k} x${n}`).join(", ") : "none";
  return `round ${r.round} (seed ${r.seed}): faults ${r.faults.map((f) => f.kind).join(", ")}; ${r.answered} x 201, ${r.logged} logged; longest stall ${r.maxStallMs ?? "-"} ms; violations: ${found}`;
}

// End-to-end harness: runs the real `smartscheduler` binary on a free port in a
// fresh temporary folder, mints tokens with the binary itself, drives the HTTP
// API with fetch and the hub with the official @microsoft/signalr client.
//
// Everything a test starts is registered with the server it belongs to, so
// `server.stop()` (called from `t.after`) stops the clients first and then the
// process: a failing test never leaves a socket or a child process behind.

import { spawn, execFile } from "node:child_process";
import net from "node:net";
import { createHmac } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

import * as signalR from "@microsoft/signalr";
import WebSocket from "ws";

export { signalR, WebSocket };

const execFileP = promisify(execFile);

/** tests/e2e */
export const E2E_DIR = resolve(dirname(fileURLToPath(import.meta.url)), "..");
/** The repository root. */
export const REPO_DIR = resolve(E2E_DIR, "..", "..");
/** The binary under test. */
export const BIN = process.env.SMARTSCHEDULER_BIN || join(REPO_DIR, "target", "debug", "smartscheduler");
/** The token secret every server of the suite uses. */
export const SECRET = "e2e-fixed-secret-0123456789abcdef0123456789abcdef";

/** The record separator of the SignalR JSON protocol. */
export const RS = "\u001e";

const STARTUP_TIMEOUT_MS = 30_000;
const STOP_TIMEOUT_MS = 20_000;
const LOG_LIMIT = 256 * 1024;

// eslint-disable-next-line no-control-regex
const ANSI = /\u001b\[[0-9;]*[A-Za-z]/g;

/** Per-test timeout: a stuck await fails its test (and its t.after hooks still stop the server). */
export const TEST_TIMEOUT = Number(process.env.E2E_TEST_TIMEOUT_MS) || 120_000;
/** Options for `test(name, T, fn)`. */
export const T = { timeout: TEST_TIMEOUT };

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Servers still running when this process exits (a crash, an uncaught error)
// are killed rather than left behind.
const running = new Set();
process.on("exit", () => {
  for (const proc of running) {
    try {
      proc.kill("SIGKILL");
    } catch {
      // already gone
    }
  }
});

/**
 * Polls `predicate` (sync or async) until it returns a truthy value, which is
 * returned. Rejects after `timeoutMs` with `message` (a string or a function
 * giving one, evaluated at timeout so it can show the current state).
 */
export async function waitFor(predicate, timeoutMs = 5000, message = "condition") {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await predicate();
    if (value) return value;
    if (Date.now() >= deadline) {
      const text = typeof message === "function" ? message() : message;
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${text}`);
    }
    await sleep(20);
  }
}

/** Rejects when `promise` has not settled within `ms`. */
export function withTimeout(promise, ms, what = "operation") {
  let timer;
  return Promise.race([
    promise.finally(() => clearTimeout(timer)),
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what} did not finish within ${ms} ms`)), ms);
    }),
  ]);
}

// ---------------------------------------------------------------------------
// Tokens

/**
 * Mints a token by running `smartscheduler token`.
 * @param {{role: string, regions?: string[], contractorId?: string, sub?: string, ttl?: number, secret?: string}} o
 */
export async function mintToken({ role, regions = [], contractorId, sub, ttl, secret = SECRET }) {
  const args = ["token", "--role", role, "--jwt-secret", secret];
  for (const r of regions) args.push("--region", r);
  if (contractorId) args.push("--contractor-id", contractorId);
  if (sub) args.push("--sub", sub);
  if (ttl !== undefined) args.push("--ttl", String(ttl));
  const { stdout } = await execFileP(BIN, args, {
    env: { ...process.env, NO_COLOR: "1" },
    timeout: 15_000,
  });
  const token = stdout.trim();
  if (!/^[\w-]+\.[\w-]+\.[\w-]+$/.test(token)) throw new Error(`token did not print a JWT: ${stdout}`);
  return token;
}

export const adminToken = (o = {}) => mintToken({ role: "Admin", sub: "e2e-admin", ...o });
export const dispatcherToken = (regions, o = {}) =>
  mintToken({ role: "Dispatcher", regions, sub: `e2e-dispatcher-${regions.join("+")}`, ...o });
export const contractorToken = (contractorId, o = {}) =>
  mintToken({ role: "Contractor", contractorId, sub: `e2e-contractor-${contractorId}`, ...o });

/**
 * Signs claims with HS256 in-process: for tokens the binary cannot mint, such
 * as one that expired long ago.
 */
export function signJwt(claims, secret = SECRET) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString("base64url");
  const head = `${b64({ typ: "JWT", alg: "HS256" })}.${b64(claims)}`;
  return `${head}.${createHmac("sha256", secret).update(head).digest("base64url")}`;
}

// ---------------------------------------------------------------------------
// Assignment times: every assignment of a run gets its own two-hour slot, so
// that giving one contractor several jobs never overlaps (409).

let slot = 0;
export function nextSlot() {
  const start = Date.UTC(2031, 0, 1) + slot++ * 3 * 3600_000;
  const iso = (ms) => new Date(ms).toISOString().replace(/\.000Z$/, "Z");
  return { startUtc: iso(start), endUtc: iso(start + 2 * 3600_000) };
}

// ---------------------------------------------------------------------------
// The server

class Server {
  constructor(dir, bind) {
    this.dir = dir;
    this.bind = bind;
    this.proc = undefined;
    this.base = undefined;
    this.port = undefined;
    this.log = "";
    this.exit = undefined; // { code, signal } once exited
    this.clients = new Set(); // HubConnections and raw sockets to close on stop
    this._adminToken = undefined;
  }

  /** Who this process is, in error messages. */
  get label() {
    return BIN;
  }

  /** The process's environment: a private SQLite database, no Redis. */
  serverEnv() {
    const env = {
      ...process.env,
      NO_COLOR: "1",
      SMARTSCHEDULER_BIND: this.bind,
      SMARTSCHEDULER_DATABASE_URL: `sqlite://${join(this.dir, "db.sqlite")}`,
      SMARTSCHEDULER_JWT_SECRET: SECRET,
      SMARTSCHEDULER_DATA_DIR: join(this.dir, "data"),
      ...this.extraEnv,
    };
    delete env.SMARTSCHEDULER_REDIS_URL;
    return env;
  }

  /** Starts (or restarts, on the same port and database) the process. */
  async start() {
    const env = this.serverEnv();
    const proc = spawn(BIN, ["serve"], { cwd: this.dir, env, stdio: ["ignore", "pipe", "pipe"] });
    this.proc = proc;
    this.exit = undefined;
    running.add(proc);
    const exited = new Promise((resolve) => {
      proc.on("exit", (code, signal) => {
        running.delete(proc);
        this.exit = { code, signal };
        resolve(this.exit);
      });
      proc.on("error", (err) => {
        running.delete(proc);
        this.exit = { code: null, signal: null, error: err };
        resolve(this.exit);
      });
    });
    this.exited = exited;
    let listening; // this run's address, from its "listening on" line
    let early = ""; // this run's output until then
    const append = (chunk) => {
      const text = chunk.toString("utf8");
      this.log += text.replace(ANSI, "");
      if (this.log.length > LOG_LIMIT) this.log = this.log.slice(-LOG_LIMIT / 2);
      if (!listening) {
        // Strip colour codes from the whole text: one may straddle two chunks.
        early = (early + text).slice(-LOG_LIMIT / 2);
        listening = /listening on (http:\/\/[0-9.:]+)/.exec(early.replace(ANSI, ""))?.[1];
      }
    };
    proc.stdout.on("data", append);
    proc.stderr.on("data", append);
    try {
      const base = await waitFor(
        () => {
          if (listening) return listening;
          if (this.exit) throw new Error(`${this.label} exited early (${JSON.stringify(this.exit)}):\n${early}`);
          return undefined;
        },
        STARTUP_TIMEOUT_MS,
        () => `"listening on" from ${this.label}; log:\n${this.log}`,
      );
      this.base = base;
      this.port = Number(new URL(base).port);
      this.bind = `127.0.0.1:${this.port}`; // a restart keeps the port
      this.wsBase = base.replace(/^http/, "ws");
    } catch (err) {
      await this.kill();
      throw err;
    }
    return this;
  }

  /** SIGTERM, then wait; returns `{code, signal}`. SIGKILL after a timeout. */
  async terminate(timeoutMs = STOP_TIMEOUT_MS) {
    if (!this.proc || this.exit) return this.exit;
    this.proc.kill("SIGTERM");
    const result = await withTimeout(this.exited, timeoutMs, "SIGTERM").catch(() => undefined);
    if (!result) {
      await this.kill();
      throw new Error(`smartscheduler did not stop within ${timeoutMs} ms of SIGTERM; log:\n${this.log.slice(-4000)}`);
    }
    return result;
  }

  async kill() {
    if (this.proc && !this.exit) {
      this.proc.kill("SIGKILL");
      await this.exited;
    }
  }

  /** Stops every client, then the process, then removes the folder. */
  async stop() {
    const clients = [...this.clients];
    this.clients.clear();
    const t0 = Date.now();
    await Promise.allSettled(clients.map((c) => withTimeout(Promise.resolve(c.close()), 5000, "client stop")));
    const t1 = Date.now();
    try {
      await this.terminate();
    } finally {
      if (process.env.E2E_DEBUG) console.error(`# stop: clients ${t1 - t0} ms, server ${Date.now() - t1} ms`);
      await this.kill();
      await rm(this.dir, { recursive: true, force: true });
    }
  }

  // -- HTTP -----------------------------------------------------------------

  /** `fetch` against the server with an optional bearer token; JSON in, parsed JSON out. */
  async request(method, path, { token, body, headers = {} } = {}) {
    const h = { ...headers };
    if (token) h.authorization = `Bearer ${token}`;
    if (body !== undefined) h["content-type"] = "application/json";
    const res = await fetch(this.base + path, {
      method,
      headers: h,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    let json;
    try {
      json = text ? JSON.parse(text) : undefined;
    } catch {
      json = undefined;
    }
    return { status: res.status, headers: res.headers, text, json };
  }

  async expect(status, method, path, opts) {
    const res = await this.request(method, path, opts);
    if (res.status !== status) {
      throw new Error(`${method} ${path}: expected ${status}, got ${res.status}: ${res.text}`);
    }
    return res.json;
  }

  async adminToken() {
    this._adminToken ??= await adminToken();
    return this._adminToken;
  }

  async createContractor(region = "north", { token, name } = {}) {
    token ??= await this.adminToken();
    name ??= `Contractor ${Math.random().toString(36).slice(2, 8)}`;
    return this.expect(201, "POST", "/api/contractors", { token, body: { name, region } });
  }

  async createJob(region = "north", { token, jobType = "Flooring", title = "Kitchen floor", durationMinutes = 120, desiredStartUtc, address } = {}) {
    token ??= await this.adminToken();
    return this.expect(201, "POST", "/api/jobs", { token, body: { jobType, region, durationMinutes, title, desiredStartUtc, address } });
  }

  /** POST assign (201 expected); each call takes a fresh time slot unless given. */
  async assign(jobId, contractorId, { token, startUtc, endUtc, source, auditId } = {}) {
    token ??= await this.adminToken();
    const slotTimes = nextSlot();
    const body = {
      contractorId,
      startUtc: startUtc ?? slotTimes.startUtc,
      endUtc: endUtc ?? slotTimes.endUtc,
    };
    if (source !== undefined) body.source = source;
    if (auditId !== undefined) body.auditId = auditId;
    return this.expect(201, "POST", `/api/jobs/${jobId}/assign`, { token, body });
  }

  /** Creates a job in `region` and assigns it to `contractorId`: `{job, assignment}`. */
  async assignNew(region, contractorId, opts = {}) {
    const job = await this.createJob(region, opts);
    const assignment = await this.assign(job.id, contractorId, opts);
    return { job, assignment };
  }

  async getEvent(eventId, { token } = {}) {
    token ??= await this.adminToken();
    return this.expect(200, "GET", `/api/events/${eventId}`, { token });
  }

  /** Waits until the EventLog row is Published and returns it. */
  async waitPublished(eventId, timeoutMs = 10_000) {
    let last;
    return waitFor(
      async () => {
        last = await this.getEvent(eventId);
        return last.status === "Published" && last;
      },
      timeoutMs,
      () => `event ${eventId} to be Published (last: ${JSON.stringify(last)})`,
    );
  }

  // -- Hub ------------------------------------------------------------------

  /** See {@link connect}; the connection is stopped with the server. */
  connect(token, opts = {}) {
    return connect(this, token, opts);
  }

  /** See {@link rawConnect}. */
  rawConnect(token, opts = {}) {
    return rawConnect(this, token, opts);
  }
}

/**
 * Starts the binary on 127.0.0.1:0 in a fresh temporary folder. With a test
 * context `t`, registers `t.after(() => server.stop())`.
 */
export async function startServer(t, { env = {} } = {}) {
  const dir = await mkdtemp(join(tmpdir(), "smartscheduler-e2e-"));
  const server = new Server(dir, "127.0.0.1:0");
  server.extraEnv = env;
  if (t) t.after(() => server.stop());
  try {
    await server.start();
  } catch (err) {
    if (!t) await rm(dir, { recursive: true, force: true });
    throw err;
  }
  return server;
}

// ---------------------------------------------------------------------------
// SignalR clients

/**
 * A hub client on the official @microsoft/signalr client. The `JobAssigned`
 * handler is registered before `start()`; payloads collect in `client.events`.
 *
 * opts:
 * - `start` (default true): start before returning.
 * - `httpOptions`: merged into `withUrl`'s options (skipNegotiation, transport...).
 * - `accessTokenFactory`: instead of returning `token`.
 * - `reconnect`: passed to `withAutomaticReconnect(...)` (`true` for the defaults).
 * - `onEvent(payload)`: called for each JobAssigned after it is recorded.
 * - `configure(builder)`: returns the builder with more options (e.g. `withStatefulReconnect()`).
 */
export async function connect(server, token, opts = {}) {
  const { start = true, httpOptions = {}, reconnect, onEvent } = opts;
  const accessTokenFactory = opts.accessTokenFactory ?? (token == null ? undefined : () => token);
  const urlOptions = { ...httpOptions };
  if (accessTokenFactory) urlOptions.accessTokenFactory = accessTokenFactory;
  let builder = new signalR.HubConnectionBuilder()
    .withUrl(server.base + "/hubs/jobs", urlOptions)
    .configureLogging(process.env.E2E_SIGNALR_LOG ? signalR.LogLevel.Debug : signalR.LogLevel.None);
  if (reconnect === true) builder = builder.withAutomaticReconnect();
  else if (reconnect) builder = builder.withAutomaticReconnect(reconnect);
  if (opts.configure) builder = opts.configure(builder);
  const connection = builder.build();
  const client = {
    connection,
    events: [],
    closed: undefined, // the error (or null) once onclose fired
    get state() {
      return connection.state;
    },
    bySequence() {
      return client.events.map((e) => e.sequence);
    },
    async close() {
      await connection.stop();
    },
    /** Resolves when `n` events have arrived. */
    waitForEvents(n, timeoutMs = 10_000) {
      return waitFor(() => client.events.length >= n, timeoutMs, () => `${n} JobAssigned events (got ${client.events.length})`);
    },
    /** Resolves with the event of `eventId` once it has arrived. */
    waitForEvent(eventId, timeoutMs = 10_000) {
      return waitFor(
        () => client.events.find((e) => e.eventId === eventId),
        timeoutMs,
        () => `JobAssigned ${eventId} (got ${client.events.map((e) => e.eventId).join(", ") || "none"})`,
      );
    },
  };
  connection.on("JobAssigned", (payload) => {
    client.events.push(payload);
    if (onEvent) onEvent(payload);
  });
  connection.onclose((err) => {
    client.closed = err ?? null;
  });
  server.clients.add(client);
  if (start) await withTimeout(connection.start(), 15_000, "HubConnection.start()");
  return client;
}

// ---------------------------------------------------------------------------
// Raw WebSocket clients (protocol-level checks)

/**
 * POST /hubs/jobs/negotiate?negotiateVersion=1 with an optional token, in the
 * Authorization header or, with `{ inQuery: true }`, as `access_token` (as browsers send it).
 */
export async function negotiate(server, token, { inQuery = false } = {}) {
  const headers = {};
  let url = `${server.base}/hubs/jobs/negotiate?negotiateVersion=1`;
  if (token && inQuery) url += `&access_token=${encodeURIComponent(token)}`;
  else if (token) headers.authorization = `Bearer ${token}`;
  const res = await fetch(url, { method: "POST", headers });
  const text = await res.text();
  let json;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.status, headers: res.headers, text, json };
}

/**
 * Opens a WebSocket with `ws` and records everything: frames (text or not),
 * records split on 0x1E, and the close. Resolves once open, or rejects with
 * `err.status` set when the server answered the upgrade with an HTTP status.
 *
 * opts: `id` (connection token; default: negotiate first), `skipNegotiation`,
 * `handshake` (default true: send the JSON handshake and wait for its reply),
 * `query` (extra query string), `headers`.
 */
export async function rawConnect(server, token, opts = {}) {
  const { handshake = true, headers = {} } = opts;
  let id = opts.id;
  if (id === undefined && !opts.skipNegotiation) {
    const n = await negotiate(server, token);
    if (n.status !== 200) throw new Error(`negotiate: ${n.status} ${n.text}`);
    id = n.json.connectionToken;
  }
  const params = new URLSearchParams();
  if (id !== undefined) params.set("id", id);
  if (opts.query) for (const [k, v] of Object.entries(opts.query)) params.set(k, v);
  const qs = params.toString();
  const url = `${server.wsBase}/hubs/jobs${qs ? "?" + qs : ""}`;
  const h = { ...headers };
  if (token && !opts.tokenInQuery) h.authorization = `Bearer ${token}`;
  const ws = new WebSocket(url, { headers: h });
  const raw = {
    ws,
    frames: [], // { text: boolean, data: string }
    records: [], // parsed records (objects), or { unparsable: string }
    recordTexts: [],
    closed: undefined, // { code, reason }
    tail: "",
    send(text) {
      ws.send(text);
    },
    /** Sends one record: an object (serialized) or a string, plus the separator. */
    sendRecord(record) {
      ws.send((typeof record === "string" ? record : JSON.stringify(record)) + RS);
    },
    close() {
      if (ws.readyState === WebSocket.OPEN || ws.readyState === WebSocket.CONNECTING) ws.terminate();
    },
    waitForRecord(predicate, timeoutMs = 5000, what = "a record") {
      return waitFor(
        () => raw.records.find(predicate),
        timeoutMs,
        () => `${what}; got ${JSON.stringify(raw.recordTexts)}`,
      );
    },
    waitForClose(timeoutMs = 5000) {
      return waitFor(() => raw.closed, timeoutMs, "the socket to close");
    },
    completion(invocationId) {
      return raw.records.find((r) => r.type === 3 && r.invocationId === invocationId);
    },
    waitForCompletion(invocationId, timeoutMs = 5000) {
      return raw.waitForRecord((r) => r.type === 3 && r.invocationId === invocationId, timeoutMs, `Completion ${invocationId}`);
    },
    events() {
      return raw.records.filter((r) => r.type === 1 && r.target === "JobAssigned").map((r) => r.arguments[0]);
    },
  };
  ws.on("message", (data, isBinary) => {
    // ws 7 hands text frames over as strings and binary frames as Buffers.
    const text = typeof data === "string" && !isBinary;
    const str = typeof data === "string" ? data : Buffer.from(data).toString("utf8");
    raw.frames.push({ text, data: str });
    const parts = (raw.tail + str).split(RS);
    raw.tail = parts.pop();
    for (const part of parts) {
      raw.recordTexts.push(part);
      try {
        raw.records.push(JSON.parse(part));
      } catch {
        raw.records.push({ unparsable: part });
      }
    }
  });
  ws.on("close", (code, reason) => {
    raw.closed = { code, reason: reason?.toString() };
  });
  ws.on("error", () => {});
  server.clients.add(raw);
  await new Promise((resolve, reject) => {
    ws.once("open", resolve);
    ws.once("unexpected-response", (req, res) => {
      let body = "";
      res.on("data", (c) => (body += c));
      res.on("end", () => {
        const err = new Error(`WebSocket upgrade refused: HTTP ${res.statusCode} ${body}`);
        err.status = res.statusCode;
        err.body = body;
        reject(err);
      });
      res.on("error", () => {});
      req.on("error", () => {});
    });
    ws.once("error", reject);
  });
  if (handshake) {
    raw.sendRecord({ protocol: "json", version: 1 });
    await waitFor(() => raw.frames.length > 0 || raw.closed, 5000, "the handshake reply");
    if (raw.frames[0]?.data !== "{}" + RS) {
      throw new Error(`unexpected handshake reply: ${JSON.stringify(raw.frames[0])} closed=${JSON.stringify(raw.closed)}`);
    }
  }
  return raw;
}

// ---------------------------------------------------------------------------
// Clusters: several nodes on one PostgreSQL database, with Redis as the
// wake-up bus. Everything here is new and leaves the single-node helpers
// above untouched.

/** The PostgreSQL server the cluster tests create their databases on. */
export const PG_ADMIN_URL = process.env.E2E_PG_ADMIN_URL || "postgres://postgres@127.0.0.1:5432/postgres";
/** The `redis-server` binary the cluster tests start their own Redis with. */
export const REDIS_SERVER_BIN = process.env.E2E_REDIS_SERVER || "redis-server";

/** Runs one SQL statement with `psql` against `PG_ADMIN_URL`; resolves with stdout. */
export async function psql(sql, { url = PG_ADMIN_URL, timeoutMs = 15_000 } = {}) {
  const { stdout } = await execFileP("psql", [url, "-v", "ON_ERROR_STOP=1", "-tAqc", sql], {
    env: { ...process.env, PGCONNECT_TIMEOUT: "5" },
    timeout: timeoutMs,
  });
  return stdout.trim();
}

/** Resolves true when a TCP connection to host:port succeeds within `timeoutMs`. */
export function tcpReachable(port, host = "127.0.0.1", timeoutMs = 1000) {
  return new Promise((resolve) => {
    const socket = net.connect({ port, host });
    const done = (ok) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(timeoutMs, () => done(false));
    socket.once("connect", () => done(true));
    socket.once("error", () => done(false));
  });
}

/** A free TCP port on 127.0.0.1 (bound and released: good enough for a child to take it at once). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/**
 * What the cluster tests need: PostgreSQL answering `psql` at `PG_ADMIN_URL`
 * and a `redis-server` that starts. Resolves `undefined` when all is there,
 * or a sentence saying what is missing. Memoized.
 */
let clusterCheck;
export function clusterUnavailable() {
  clusterCheck ??= (async () => {
    const missing = [];
    try {
      await psql("SELECT 1", { timeoutMs: 10_000 });
    } catch (err) {
      missing.push(`PostgreSQL is not reachable at ${PG_ADMIN_URL} with psql (${String(err.message).split("\n")[0]})`);
    }
    try {
      const redis = await startRedis();
      await redis.stop();
    } catch (err) {
      missing.push(`Redis cannot be started with ${REDIS_SERVER_BIN} (${String(err.message).split("\n")[0]})`);
    }
    return missing.length ? missing.join("; ") : undefined;
  })();
  return clusterCheck;
}

/**
 * Skips the test (or, with CI=true, fails it) when the cluster's services are
 * missing. Returns true when the test may go on.
 */
export async function requireCluster(t) {
  const missing = await clusterUnavailable();
  if (!missing) return true;
  if (process.env.CI === "true") throw new Error(`cluster tests need PostgreSQL and Redis (CI=true): ${missing}`);
  t.skip(`cluster tests need PostgreSQL and Redis: ${missing}`);
  return false;
}

/**
 * Creates a fresh database `ss_e2e_<random>`; `drop()` removes it, ending
 * its connections (`WITH (FORCE)`). Returns `{name, url, drop}`.
 */
export async function createDatabase() {
  const name = `ss_e2e_${Date.now().toString(36)}_${Math.random().toString(36).slice(2, 8)}`;
  await psql(`CREATE DATABASE ${name}`);
  const admin = new URL(PG_ADMIN_URL);
  const url = `${admin.protocol}//${admin.username ? admin.username + "@" : ""}${admin.host}/${name}`;
  let dropped = false;
  return {
    name,
    url,
    async drop() {
      if (dropped) return;
      dropped = true;
      await psql(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
    },
  };
}

/**
 * Starts a private `redis-server` (no persistence) on `port` (default: a free
 * one) as a child process and waits until it answers PING. Returns a handle:
 * `url`, `port`, `kill()` (SIGKILL, an outage), `start()` (again, same port),
 * `stop()`.
 */
export async function startRedis({ port } = {}) {
  if (port !== undefined) return redisOn(port);
  // A free port may be taken by someone else before redis-server binds it: try a few.
  for (let attempt = 1; ; attempt++) {
    try {
      return await redisOn(await freePort());
    } catch (err) {
      if (attempt >= 3) throw err;
    }
  }
}

async function redisOn(port) {
  const redis = {
    port,
    url: `redis://127.0.0.1:${port}`,
    proc: undefined,
    log: "",
    exited: undefined,
    async start() {
      const proc = spawn(
        REDIS_SERVER_BIN,
        ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--daemonize", "no"],
        { stdio: ["ignore", "pipe", "pipe"] },
      );
      redis.proc = proc;
      running.add(proc);
      let exit;
      redis.exited = new Promise((resolve) => {
        const done = (e) => {
          running.delete(proc);
          exit = e;
          resolve(e);
        };
        proc.on("exit", (code, signal) => done({ code, signal }));
        proc.on("error", (error) => done({ error }));
      });
      const append = (c) => {
        redis.log = (redis.log + c.toString("utf8")).slice(-LOG_LIMIT / 4);
      };
      proc.stdout.on("data", append);
      proc.stderr.on("data", append);
      try {
        await waitFor(
          async () => {
            if (exit?.error) throw new Error(`cannot run ${REDIS_SERVER_BIN}: ${exit.error.message}`);
            if (exit) throw new Error(`redis-server exited (${JSON.stringify(exit)}): ${redis.log}`);
            return redisPing(port);
          },
          10_000,
          () => `redis-server on port ${port} to answer PING; log:\n${redis.log}`,
        );
      } catch (err) {
        await redis.kill();
        throw err;
      }
      return redis;
    },
    async kill() {
      const proc = redis.proc;
      if (proc && proc.exitCode === null && proc.signalCode === null) {
        proc.kill("SIGKILL");
        await redis.exited;
      }
    },
    stop() {
      return redis.kill();
    },
  };
  return redis.start();
}

/** Resolves true when a Redis on `port` answers PING with PONG. */
export function redisPing(port, host = "127.0.0.1", timeoutMs = 1000) {
  return new Promise((resolve) => {
    const socket = net.connect({ port, host });
    let answer = "";
    const done = (ok) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(timeoutMs, () => done(false));
    socket.once("connect", () => socket.write("PING\r\n"));
    socket.on("data", (d) => {
      answer += d.toString();
      if (answer.includes("\r\n")) done(answer.startsWith("+PONG"));
    });
    socket.once("error", () => done(false));
  });
}

/**
 * A node of a cluster: the {@link Server} helpers (request, assign, connect,
 * kill, stop...) on a process started with the given database and Redis URLs
 * (the single-node `start()` forces SQLite and no Redis).
 */
class ClusterNode extends Server {
  constructor(dir, bind, { databaseUrl, redisUrl, name }) {
    super(dir, bind);
    this.databaseUrl = databaseUrl;
    this.redisUrl = redisUrl;
    this.name = name;
  }

  get label() {
    return `node ${this.name}`;
  }

  /** The shared PostgreSQL database, and Redis when the cluster has one. */
  serverEnv() {
    const env = { ...super.serverEnv(), SMARTSCHEDULER_DATABASE_URL: this.databaseUrl, ...this.extraEnv };
    if (this.redisUrl) env.SMARTSCHEDULER_REDIS_URL = this.redisUrl;
    else delete env.SMARTSCHEDULER_REDIS_URL;
    return env;
  }

  /** Whether this process has logged taking the publisher lease (and is alive). */
  holdsLease() {
    return !this.exit && this.log.includes("took the publisher lease");
  }

  /** GET /health/ready: `{status, json}`. */
  async ready() {
    const res = await this.request("GET", "/health/ready");
    return { status: res.status, json: res.json };
  }
}

/**
 * Starts a cluster: a fresh database, by default a private Redis, and `nodes`
 * processes of the binary on port 0 sharing both and the suite's secret.
 * With a test context `t`, one `t.after` stops the nodes (and their
 * clients), then Redis, then drops the database, whatever happened.
 *
 * opts: `nodes` (2), `redis` (true: a private redis-server; false: none; a
 * URL string: that one), `env` (extra variables for every node), `nodeUrls`
 * (true: each node binds a free port chosen beforehand and gets
 * `SMARTSCHEDULER_NODE_URL=http://127.0.0.1:<that port>`, so that the nodes
 * can forward requests to each other).
 * Returns `{nodes, db, redis, stop()}`; `redis` is the handle of
 * {@link startRedis} when the cluster started it.
 */
export async function startCluster(t, { nodes = 2, redis = true, env = {}, nodeUrls = false } = {}) {
  const cluster = { nodes: [], db: undefined, redis: undefined, redisUrl: undefined };
  let stopped = false;
  cluster.stop = async () => {
    if (stopped) return;
    stopped = true;
    const errors = [];
    const results = await Promise.allSettled(cluster.nodes.map((n) => n.stop()));
    for (const r of results) if (r.status === "rejected") errors.push(r.reason);
    if (cluster.redis) await cluster.redis.stop().catch((e) => errors.push(e));
    if (cluster.db) await cluster.db.drop().catch((e) => errors.push(e));
    if (errors.length) throw errors[0];
  };
  if (t) t.after(() => cluster.stop());
  try {
    cluster.db = await createDatabase();
    if (redis === true) {
      cluster.redis = await startRedis();
      cluster.redisUrl = cluster.redis.url;
    } else if (typeof redis === "string") {
      cluster.redisUrl = redis;
    }
    // One after the other: the first applies the migrations and, being
    // first, takes the publisher lease.
    for (let i = 0; i < nodes; i++) {
      const dir = await mkdtemp(join(tmpdir(), "smartscheduler-e2e-node-"));
      const port = nodeUrls ? await freePort() : 0;
      const node = new ClusterNode(dir, `127.0.0.1:${port}`, {
        databaseUrl: cluster.db.url,
        redisUrl: cluster.redisUrl,
        name: String.fromCharCode(65 + i),
      });
      node.extraEnv = nodeUrls ? { ...env, SMARTSCHEDULER_NODE_URL: `http://127.0.0.1:${port}` } : env;
      cluster.nodes.push(node);
      await node.start();
    }
  } catch (err) {
    if (!t) await cluster.stop().catch(() => {});
    throw err;
  }
  return cluster;
}

/** Runs `fn(item, index)` over `items` with at most `limit` in flight; resolves with the results in order. */
export async function pool(items, limit, fn) {
  const results = new Array(items.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(limit, items.length) }, async () => {
      while (next < items.length) {
        const i = next++;
        results[i] = await fn(items[i], i);
      }
    }),
  );
  return results;
}

/**
 * A TCP proxy on 127.0.0.1:0 in front of one node at a time, like a load
 * balancer without sticky sessions: `switchTo(node)` sends new connections
 * to `node` and cuts every open one. It can stand in for a server in
 * {@link connect} (`base`, `clients`); `stop()` closes those clients, the open
 * sockets and the listener. With `t`, registers `t.after(() => proxy.stop())`.
 */
export async function startSwitchProxy(t, target) {
  const sockets = new Set();
  const server = net.createServer((down) => {
    const up = net.connect(proxy.target.port, "127.0.0.1");
    sockets.add(down);
    sockets.add(up);
    const end = () => {
      down.destroy();
      up.destroy();
      sockets.delete(down);
      sockets.delete(up);
    };
    down.pipe(up);
    up.pipe(down);
    for (const s of [down, up]) {
      s.on("error", end);
      s.on("close", end);
    }
  });
  const proxy = {
    target,
    clients: new Set(),
    base: undefined,
    switchTo(node) {
      proxy.target = node;
      for (const s of sockets) s.destroy();
      sockets.clear();
    },
    async stop() {
      const clients = [...proxy.clients];
      proxy.clients.clear();
      await Promise.allSettled(clients.map((c) => withTimeout(Promise.resolve(c.close()), 5000, "client stop")));
      for (const s of sockets) s.destroy();
      await new Promise((resolve) => server.close(() => resolve()));
    },
  };
  if (t) t.after(() => proxy.stop());
  await new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", resolve);
  });
  proxy.base = `http://127.0.0.1:${server.address().port}`;
  return proxy;
}

// ---------------------------------------------------------------------------
// Hostile input (security.test.mjs). New helpers only; nothing above changes.

/**
 * A JWT with any header and signature, for tokens an attacker would make:
 * `alg` goes in the header (merged with `header`) and picks the HMAC used
 * with `secret` (HS256, HS384, HS512; anything else signs with `hmac`,
 * default sha256); `signature` replaces the third segment outright (`""` for
 * `alg: none`).
 */
export function forgeJwt(claims, { alg = "HS256", header = {}, secret = SECRET, hmac, signature } = {}) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString("base64url");
  const head = `${b64({ typ: "JWT", alg, ...header })}.${b64(claims)}`;
  if (signature !== undefined) return `${head}.${signature}`;
  const hash = hmac ?? { HS256: "sha256", HS384: "sha384", HS512: "sha512" }[alg] ?? "sha256";
  return `${head}.${createHmac(hash, secret).update(head).digest("base64url")}`;
}

/**
 * A plain TCP connection to the server that writes `chunks` (strings or
 * Buffers, `pauseMs` apart), waits `lingerMs`, then closes (`reset: true`
 * destroys it with a RST instead of a FIN). Resolves with whatever the
 * server answered, as latin1 text; never rejects.
 */
export async function junkConnection(server, chunks, { lingerMs = 50, pauseMs = 0, reset = false } = {}) {
  const { connect: tcpConnect } = await import("node:net");
  return new Promise((resolve) => {
    let answer = "";
    let done = false;
    const socket = tcpConnect({ port: server.port, host: "127.0.0.1" });
    const finish = () => {
      if (done) return;
      done = true;
      clearTimeout(guard);
      if (reset && typeof socket.resetAndDestroy === "function") socket.resetAndDestroy();
      else socket.destroy();
      resolve(answer);
    };
    const guard = setTimeout(finish, 10_000);
    socket.on("data", (d) => (answer += d.toString("latin1")));
    socket.on("error", finish);
    socket.on("close", finish);
    socket.once("connect", async () => {
      try {
        for (const chunk of chunks) {
          if (done) return;
          socket.write(chunk);
          if (pauseMs) await sleep(pauseMs);
        }
        await sleep(lingerMs);
      } catch {
        // the server hung up first
      }
      finish();
    });
  });
}

// ---------------------------------------------------------------------------
// Chaos suite (lib/chaos.mjs). New helpers only; nothing above changes.

/**
 * Starts one cluster node on any database and Redis (for a cluster whose
 * PostgreSQL the caller runs itself, e.g. behind a fault-injecting proxy).
 * The caller stops it with `node.stop()`.
 */
export async function startClusterNode({ databaseUrl, redisUrl, name, env = {} }) {
  const dir = await mkdtemp(join(tmpdir(), "smartscheduler-e2e-node-"));
  const node = new ClusterNode(dir, "127.0.0.1:0", { databaseUrl, redisUrl, name });
  node.extraEnv = env;
  try {
    await node.start();
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
  return node;
}

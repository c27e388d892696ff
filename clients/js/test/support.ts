// The end-to-end harness (tests/e2e/lib/harness.mjs) starts the real binary
// and mints tokens; it is shared rather than copied. It is plain JavaScript,
// so it is loaded by URL and typed here with what these tests use.
// It needs tests/e2e's node_modules: `cd tests/e2e && npm ci`.

import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";

import { JobsFeed, JobsFeedOptions, FeedEvent, GroupSpec, CursorStore, LogLevel } from "../src/index.js";

export interface Server {
  base: string;
  port: number;
  log: string;
  /** Stopped before the process when the server stops. */
  clients: Set<{ close(): unknown }>;
  start(): Promise<Server>;
  terminate(): Promise<{ code: number | null; signal: string | null }>;
  createContractor(region?: string): Promise<{ id: string }>;
  assignNew(region: string, contractorId: string): Promise<{ job: { id: string }; assignment: { eventId: string } }>;
  waitPublished(eventId: string, timeoutMs?: number): Promise<unknown>;
}

interface Harness {
  startServer(t: unknown, opts?: { env?: Record<string, string> }): Promise<Server>;
  adminToken(): Promise<string>;
  dispatcherToken(regions: string[]): Promise<string>;
  contractorToken(contractorId: string): Promise<string>;
  waitFor<T>(predicate: () => T | Promise<T>, timeoutMs?: number, message?: string | (() => string)): Promise<NonNullable<T>>;
  sleep(ms: number): Promise<void>;
  T: { timeout: number };
}

// From dist/test/ to tests/e2e/lib/.
const harnessUrl = new URL("../../../../tests/e2e/lib/harness.mjs", import.meta.url);
export const harness = (await import(harnessUrl.href)) as Harness;

export const hubUrl = (server: Server): string => `${server.base}/hubs/jobs`;

/** A feed that records what reaches its handlers, and its errors; stopped after the test. */
export interface Recorded {
  feed: JobsFeed;
  events: FeedEvent[];
  errors: { error: unknown; kind: string }[];
  resyncs: string[];
}

export function recordedFeed(
  t: { after(fn: () => unknown): void },
  server: Server,
  token: string,
  groups: GroupSpec[],
  options: Partial<JobsFeedOptions> & { store?: CursorStore } = {},
): Recorded {
  const events: FeedEvent[] = [];
  const errors: Recorded["errors"] = [];
  const resyncs: string[] = [];
  const feed = new JobsFeed({
    url: hubUrl(server),
    accessToken: token,
    groups,
    retryDelay: (count) => (count > 300 ? null : 100),
    onError: (error, context) => errors.push({ error, kind: context.kind }),
    logLevel: process.env.E2E_SIGNALR_LOG ? LogLevel.Debug : LogLevel.None,
    ...options,
  });
  feed.on("JobAssigned", (e) => void events.push(e));
  feed.on("JobAssignmentAcknowledged", (e) => void events.push(e));
  feed.on("JobAssignmentUnacknowledged", (e) => void events.push(e));
  // Stopped with the server, before its process: no reconnect attempts to a stopped server.
  server.clients.add({ close: () => feed.stop() });
  t.after(() => feed.stop());
  return { feed, events, errors, resyncs };
}

/** Resolves once an event with `eventId` has reached the handlers. */
export function waitForEvent(recorded: Recorded, eventId: string, timeoutMs = 10_000): Promise<FeedEvent> {
  return harness.waitFor(
    () => recorded.events.find((e) => e.eventId === eventId),
    timeoutMs,
    () => `event ${eventId} (got ${recorded.events.map((e) => `${e.type} ${e.eventId}`).join(", ") || "none"})`,
  );
}

/** A fresh folder, removed after the test. */
export async function tempDir(t: { after(fn: () => unknown): void }): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "events-client-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** The socket under a feed's connection, to drop it as a network failure would. */
export function webSocketOf(feed: JobsFeed): { terminate(): void } {
  // Internal fields of @microsoft/signalr: the test reaches in to cut the wire.
  const internals = feed.connection as unknown as { connection: { transport: { _webSocket?: { terminate(): void } } } };
  const socket = internals.connection.transport._webSocket;
  if (!socket) throw new Error("the feed's connection has no WebSocket");
  return socket;
}

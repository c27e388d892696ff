// Shared by acknowledgements.test.mjs and cluster-acknowledgements.test.mjs:
// a hub client that also records the two acknowledgement events, the
// contract's field lists, and the EventLog read over HTTP.

import { waitFor, withTimeout } from "./harness.mjs";
import { connectPair } from "./transports.mjs";

export const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
export const RFC3339_UTC = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$/;

const COMMON_KEYS = [
  "type",
  "schemaVersion",
  "eventId",
  "sequence",
  "occurredAtUtc",
  "assignmentId",
  "jobId",
  "contractorId",
  "region",
  "jobAssignedEventId",
];
/** JobAssignmentAcknowledged's fields (contract v1.1). */
export const ACK_KEYS = [...COMMON_KEYS, "acknowledgedAtUtc"].sort();
/** JobAssignmentUnacknowledged's fields (contract v1.1). */
export const OVERDUE_KEYS = [...COMMON_KEYS, "deadlineUtc"].sort();

const TARGETS = ["JobAssigned", "JobAssignmentAcknowledged", "JobAssignmentUnacknowledged"];

/**
 * The official client (on `pair`, default the client's own choice) with
 * handlers for the three events registered before it starts: `messages`
 * holds `{target, payload}` in arrival order, `acks` and `overdue` the two
 * acknowledgement events, `events` the JobAssigned (as {@link connect}).
 */
export async function acknowledgementClient(server, token, { pair } = {}) {
  const client = await connectPair(server, token, pair, { start: false });
  client.messages = [];
  client.acks = [];
  client.overdue = [];
  for (const target of TARGETS) {
    client.connection.on(target, (payload) => {
      client.messages.push({ target, payload });
      if (target === "JobAssignmentAcknowledged") client.acks.push(payload);
      if (target === "JobAssignmentUnacknowledged") client.overdue.push(payload);
    });
  }
  client.waitForAck = (assignmentId, timeoutMs = 10_000) =>
    waitFor(
      () => client.acks.find((e) => e.assignmentId === assignmentId),
      timeoutMs,
      () => `JobAssignmentAcknowledged for ${assignmentId} (got ${JSON.stringify(client.messages.map((m) => m.target))})`,
    );
  client.waitForOverdue = (assignmentId, timeoutMs = 10_000) =>
    waitFor(
      () => client.overdue.find((e) => e.assignmentId === assignmentId),
      timeoutMs,
      () => `JobAssignmentUnacknowledged for ${assignmentId} (got ${JSON.stringify(client.messages.map((m) => m.target))})`,
    );
  await withTimeout(client.connection.start(), 15_000, "HubConnection.start()");
  return client;
}

/** Every EventLog row with a sequence, in sequence order, read page by page with GET /api/events. */
export async function eventRows(server, { token } = {}) {
  token ??= await server.adminToken();
  const rows = [];
  let after = 0;
  for (;;) {
    const page = await server.expect(200, "GET", `/api/events?afterSequence=${after}&limit=500`, { token });
    rows.push(...page.items);
    if (page.items.length < 500 || page.nextAfterSequence == null) return rows;
    after = page.nextAfterSequence;
  }
}

/** The value of an unlabelled Prometheus counter in `server`'s GET /metrics (0 when absent). */
export async function counterValue(server, name) {
  const { text } = await server.request("GET", "/metrics");
  const line = text.split("\n").find((l) => l.startsWith(name + " "));
  return line ? Number(line.split(/\s+/).pop()) : 0;
}

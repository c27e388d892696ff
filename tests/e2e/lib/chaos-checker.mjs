// The chaos suite's checker: pure rules over what the EventLog holds, what
// the API answered and what each observer client received. The rules are
// listed in docs/reliability.md; chaos.test.mjs feeds it rounds with each
// kind of fault.

/**
 * The checker's rules (docs/reliability.md), as a pure function.
 *
 * input:
 * - `log`: every EventLog row `{eventId, sequence, status, region}`;
 * - `answered`: the eventIds of every 201;
 * - `observers`: `{name, region, rejoined, events: [{eventId, sequence}]}`
 *   in the order received.
 *
 * Returns the violations: `[{rule, who, detail}]`, empty when all holds.
 */
export function checkRound({ log, answered, observers }) {
  const violations = [];
  const add = (rule, who, detail) => violations.push({ rule, who, detail });

  const byId = new Map();
  const bySequence = new Map();
  for (const row of log) {
    if (byId.has(row.eventId)) add("log-duplicate-event", "EventLog", `${row.eventId} is logged twice`);
    byId.set(row.eventId, row);
    if (row.status !== "Published") add("log-not-published", "EventLog", `${row.eventId} is ${row.status}`);
    if (row.sequence != null) {
      if (bySequence.has(row.sequence)) add("log-duplicate-sequence", "EventLog", `sequence ${row.sequence} is given twice`);
      bySequence.set(row.sequence, row.eventId);
    }
  }
  for (const id of answered) {
    const row = byId.get(id);
    if (!row) add("answered-not-logged", "EventLog", `201 event ${id} is not in the EventLog`);
  }

  for (const obs of observers) {
    const who = `${obs.name}${obs.rejoined ? " (rejoined)" : ""}`;
    const expected = log.filter((r) => r.region === obs.region);
    const counts = new Map();
    for (const e of obs.events) counts.set(e.eventId, (counts.get(e.eventId) ?? 0) + 1);
    const missed = expected.filter((r) => !counts.has(r.eventId)).map((r) => r.sequence ?? r.eventId);
    if (missed.length) add("missed", who, `${missed.length} events never arrived: sequences ${summarize(missed)}`);
    const twice = [...counts].filter(([, n]) => n > 1).map(([id]) => byId.get(id)?.sequence ?? id);
    if (twice.length) add("duplicate", who, `${twice.length} events arrived more than once: sequences ${summarize(twice)}`);
    const foreign = obs.events.filter((e) => byId.get(e.eventId)?.region !== obs.region).map((e) => e.sequence);
    if (foreign.length) add("unexpected", who, `${foreign.length} events that are not its group's logged events: sequences ${summarize(foreign)}`);
    const mismatched = obs.events.filter((e) => byId.has(e.eventId) && byId.get(e.eventId).sequence !== e.sequence);
    if (mismatched.length) {
      const e = mismatched[0];
      add("sequence-mismatch", who, `${mismatched.length} events arrived with another sequence than logged, e.g. ${e.sequence} for ${byId.get(e.eventId).sequence}`);
    }
    const inversions = [];
    for (let i = 1; i < obs.events.length; i++) {
      if (obs.events[i].sequence <= obs.events[i - 1].sequence) inversions.push(`${obs.events[i].sequence} after ${obs.events[i - 1].sequence}`);
    }
    if (inversions.length) add("out-of-order", who, `${inversions.length} times not increasing: ${inversions.slice(0, 5).join(", ")}`);
  }
  return violations;
}

/** `1, 2, 3, 7, 9, 10` → `1-3, 7, 9-10` (at most 12 runs). */
export function summarize(values) {
  const nums = values.filter((v) => typeof v === "number").sort((a, b) => a - b);
  const other = values.filter((v) => typeof v !== "number");
  const runs = [];
  for (const v of nums) {
    const last = runs[runs.length - 1];
    if (last && v === last[1] + 1) last[1] = v;
    else runs.push([v, v]);
  }
  const parts = runs.map(([a, b]) => (a === b ? `${a}` : `${a}-${b}`));
  if (other.length) parts.push(`${other.length} unsequenced`);
  return parts.length > 12 ? `${parts.slice(0, 12).join(", ")}, … (${parts.length} runs)` : parts.join(", ");
}

// The events the hub sends, as the service sends them (contract v1.1,
// docs/contract.md and docs/events.md). Each type has a runtime list of its
// keys next to it: the compiler holds the list and the type together, and
// test/event-types.test.ts holds the list against events from the real
// service, so neither can drift silently.

/** The job inside a JobAssigned, as it was when assigned. */
export interface AssignedJob {
  id: string;
  jobType: string;
  title: string | null;
  region: string;
  status: "Assigned";
  durationMinutes: number;
  /** When the customer would like it to start; null when unset. */
  desiredStartUtc: string | null;
  /** Where it is; null when unset. */
  address: string | null;
}

/** A job was assigned to a contractor: sent to `dispatch/{region}` and `contractor/{contractorId}`. */
export interface JobAssigned {
  type: "JobAssigned";
  schemaVersion: 1;
  /** Unique per event: copies of one event share it. */
  eventId: string;
  /** Place in publish order; increasing within a group, with gaps. */
  sequence: number;
  occurredAtUtc: string;
  jobId: string;
  contractorId: string;
  assignmentId: string;
  startUtc: string;
  endUtc: string;
  region: string;
  source: "manual" | "auto";
  auditId: string | null;
  job: AssignedJob;
}

/** The assigned contractor acknowledged a JobAssigned: sent to `dispatch/{region}`. */
export interface JobAssignmentAcknowledged {
  type: "JobAssignmentAcknowledged";
  schemaVersion: 1;
  eventId: string;
  sequence: number;
  occurredAtUtc: string;
  assignmentId: string;
  jobId: string;
  contractorId: string;
  region: string;
  jobAssignedEventId: string;
  acknowledgedAtUtc: string;
}

/** A JobAssigned's acknowledgement deadline passed without one: sent to `dispatch/{region}`. */
export interface JobAssignmentUnacknowledged {
  type: "JobAssignmentUnacknowledged";
  schemaVersion: 1;
  eventId: string;
  sequence: number;
  occurredAtUtc: string;
  assignmentId: string;
  jobId: string;
  contractorId: string;
  region: string;
  jobAssignedEventId: string;
  deadlineUtc: string;
}

/** Every event a JobsFeed delivers, by its hub message name (which is also its `type`). */
export interface FeedEvents {
  JobAssigned: JobAssigned;
  JobAssignmentAcknowledged: JobAssignmentAcknowledged;
  JobAssignmentUnacknowledged: JobAssignmentUnacknowledged;
}

export type FeedEventType = keyof FeedEvents;
export type FeedEvent = FeedEvents[FeedEventType];

/**
 * Checks at compile time that `list` names every key of T and nothing else:
 * a field added to a type without its list (or the reverse) does not build.
 */
function keysOf<T>() {
  return <const K extends readonly (keyof T)[]>(
    list: K & ([Exclude<keyof T, K[number]>] extends [never] ? unknown : { missingKeys: Exclude<keyof T, K[number]> }),
  ): K => list;
}

export const ASSIGNED_JOB_KEYS = keysOf<AssignedJob>()([
  "id",
  "jobType",
  "title",
  "region",
  "status",
  "durationMinutes",
  "desiredStartUtc",
  "address",
]);

export const JOB_ASSIGNED_KEYS = keysOf<JobAssigned>()([
  "type",
  "schemaVersion",
  "eventId",
  "sequence",
  "occurredAtUtc",
  "jobId",
  "contractorId",
  "assignmentId",
  "startUtc",
  "endUtc",
  "region",
  "source",
  "auditId",
  "job",
]);

export const JOB_ASSIGNMENT_ACKNOWLEDGED_KEYS = keysOf<JobAssignmentAcknowledged>()([
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
  "acknowledgedAtUtc",
]);

export const JOB_ASSIGNMENT_UNACKNOWLEDGED_KEYS = keysOf<JobAssignmentUnacknowledged>()([
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
  "deadlineUtc",
]);

/** The keys of each event type: what a payload of that type carries, no more, no less. */
export const EVENT_KEYS: { readonly [T in FeedEventType]: readonly (keyof FeedEvents[T])[] } = {
  JobAssigned: JOB_ASSIGNED_KEYS,
  JobAssignmentAcknowledged: JOB_ASSIGNMENT_ACKNOWLEDGED_KEYS,
  JobAssignmentUnacknowledged: JOB_ASSIGNMENT_UNACKNOWLEDGED_KEYS,
};

/** The hub messages a feed listens to. */
export const FEED_EVENT_TYPES = Object.keys(EVENT_KEYS) as FeedEventType[];

/** The groups an event is sent to (as named by the hub). */
export function groupsOf(event: FeedEvent): string[] {
  const dispatch = `dispatch/${event.region}`;
  return event.type === "JobAssigned" ? [dispatch, `contractor/${event.contractorId}`] : [dispatch];
}

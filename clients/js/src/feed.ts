// JobsFeed: the hub's events, each handed to the handlers exactly once and in
// increasing sequence per group, across reconnects, service restarts and new
// feeds on the same store. It does what docs/delivery.md asks of a client:
// keep the last sequence per group, rejoin with it after every reconnect,
// drop copies by eventId, and acknowledge each JobAssigned once handled.

import {
  HttpTransportType,
  HubConnection,
  HubConnectionBuilder,
  HubConnectionState,
  IHubProtocol,
  IHttpConnectionOptions,
  ILogger,
  LogLevel,
} from "@microsoft/signalr";

import { FEED_EVENT_TYPES, FeedEvent, FeedEvents, FeedEventType, groupsOf } from "./events.js";
import { GroupSpec, groupName, joinCall } from "./groups.js";
import { SeenEvents } from "./seen.js";
import { CursorStore, MemoryCursorStore } from "./stores.js";

type MaybePromise<T> = T | Promise<T>;

export type Handler<T extends FeedEventType> = (event: FeedEvents[T]) => MaybePromise<void>;

/** Where an error reported to `onError` came from. */
export type ErrorContext =
  | { kind: "handler"; event: FeedEvent }
  | { kind: "acknowledge"; eventId: string }
  | { kind: "join"; group: string }
  | { kind: "store"; group: string }
  | { kind: "closed" }
  | { kind: "internal" };

/** The hub's answer to an acknowledgement: the first acknowledgement's time, also on a repeat. */
export interface Acknowledgement {
  eventId: string;
  acknowledgedAtUtc: string;
}

/** A join that could not resume from the stored position (too old, or too many missed events). */
export interface ResyncNeeded {
  group: string;
  /** The position that could not be resumed. */
  afterSequence: number;
  /** The hub's message, e.g. "More than 10000 events were missed; reload the state over HTTP …". */
  error: Error;
}

export interface JobsFeedOptions {
  /** The hub's URL, e.g. `https://scheduler.example.com/hubs/jobs`. */
  url: string;
  /** A token, or a function giving one (called on every connect, so it can refresh). */
  accessToken: string | (() => MaybePromise<string>);
  /** The groups to follow: `{ dispatch: "north" }`, `{ contractor: contractorId }`. */
  groups: GroupSpec[];
  /** Where the last sequence per group is kept (default: in memory). */
  store?: CursorStore;
  /** A contractor feed: acknowledge each JobAssigned of its own group once its handlers have returned. */
  acknowledge?: boolean;
  /** Pin a transport (default: WebSockets, then Server-Sent Events, then Long Polling). */
  transport?: HttpTransportType;
  /** A hub protocol, e.g. `new MessagePackHubProtocol()` (default: JSON). */
  protocol?: IHubProtocol;
  /** Stateful reconnect: short socket drops resume the same connection (default: true). */
  statefulReconnect?: boolean;
  /** Milliseconds before each reconnect attempt, or null to give up (default: 0, 1 s, 2 s, 5 s, then every 10 s). */
  retryDelay?: (previousRetryCount: number) => number | null;
  /**
   * Called when a group cannot resume from its position: reload the state
   * over HTTP here. Return the position the reload matches (e.g. `GET
   * /api/events`' `nextAfterSequence`) to resume from it, or nothing to join
   * without a position (events published meanwhile are in the reload).
   */
  onResync?: (info: ResyncNeeded) => MaybePromise<number | void>;
  /** Errors that do not stop the feed: a handler's, a failed join or acknowledgement (default: console.error). */
  onError?: (error: unknown, context: ErrorContext) => void;
  /** How many recent eventIds are remembered to drop copies (default 10,000). */
  seenLimit?: number;
  /** Called once the hub has recorded the acknowledgement of a JobAssigned (with `acknowledge: true`). */
  onAcknowledged?: (acknowledgement: Acknowledgement) => void;
  /** The SignalR client's log level (default: Warning). */
  logLevel?: LogLevel;
  /** A logger for the SignalR client instead of its console logger at `logLevel`. */
  logger?: ILogger;
  /** More options for `withUrl` (headers, skipNegotiation, ...). */
  httpOptions?: Omit<IHttpConnectionOptions, "accessTokenFactory" | "transport">;
}

const RESYNC = /reload the state over HTTP/;

const defaultRetryDelay = (count: number): number => [0, 1000, 2000, 5000][count] ?? 10_000;

export class JobsFeed {
  /** The store in use: the last sequence handled per group. */
  readonly cursors: CursorStore;
  /** The underlying SignalR connection (for its state and events; do not join groups on it). */
  readonly connection: HubConnection;

  private readonly options: JobsFeedOptions;
  private readonly handlers = new Map<FeedEventType, Set<Handler<FeedEventType>>>();
  private readonly followed: Map<string, GroupSpec>;
  /** Last sequence handled per group, mirrored from the store. */
  private readonly positions = new Map<string, number>();
  /** Groups whose join is in progress, with the highest sequence handled meanwhile. */
  private readonly joining = new Map<string, number | undefined>();
  private readonly seen: SeenEvents;
  /** JobAssigned events handled but not yet acknowledged (the connection was down): retried after a reconnect. */
  private readonly unacknowledged = new Set<string>();
  /** Events are handled one at a time, in arrival order. */
  private queue: Promise<void> = Promise.resolve();
  private stopping = false;

  constructor(options: JobsFeedOptions) {
    if (options.groups.length === 0) throw new Error("JobsFeed: give at least one group");
    this.options = options;
    this.cursors = options.store ?? new MemoryCursorStore();
    this.seen = new SeenEvents(options.seenLimit);
    this.followed = new Map(options.groups.map((spec) => [groupName(spec), spec]));
    this.connection = this.build();
  }

  /** Adds a handler for one event type; returns a function that removes it. */
  on<T extends FeedEventType>(type: T, handler: Handler<T>): () => void {
    let set = this.handlers.get(type);
    if (!set) this.handlers.set(type, (set = new Set()));
    set.add(handler as Handler<FeedEventType>);
    return () => set.delete(handler as Handler<FeedEventType>);
  }

  /**
   * Adds a handler for a hub message that is not an event (e.g.
   * `PresenceChanged`): no sequence, never replayed, so it is handed on as it
   * arrives, without ordering or de-duplication. Returns a function that removes it.
   */
  onMessage(target: string, handler: (...args: unknown[]) => void): () => void {
    if ((FEED_EVENT_TYPES as readonly string[]).includes(target)) {
      throw new Error(`JobsFeed: ${target} is an event: use on("${target}", handler)`);
    }
    this.connection.on(target, handler);
    return () => this.connection.off(target, handler);
  }

  /** Connects and joins every group from its stored position. Rejects if the first connect or a join fails. */
  async start(): Promise<void> {
    this.stopping = false;
    for (const group of this.followed.keys()) {
      const position = await this.cursors.get(group);
      if (position === undefined) this.positions.delete(group);
      else this.positions.set(group, position);
    }
    await this.connection.start();
    for (const group of this.followed.keys()) await this.join(group);
  }

  /** Disconnects, after the events already received have been handled. */
  async stop(): Promise<void> {
    this.stopping = true;
    await this.connection.stop();
    await this.queue;
  }

  private build(): HubConnection {
    const { accessToken, transport, protocol, retryDelay = defaultRetryDelay } = this.options;
    const urlOptions: IHttpConnectionOptions = {
      ...this.options.httpOptions,
      accessTokenFactory: typeof accessToken === "function" ? accessToken : () => accessToken,
    };
    if (transport !== undefined) urlOptions.transport = transport;
    let builder = new HubConnectionBuilder()
      .withUrl(this.options.url, urlOptions)
      .withAutomaticReconnect({ nextRetryDelayInMilliseconds: (ctx) => retryDelay(ctx.previousRetryCount) })
      .configureLogging(this.options.logger ?? this.options.logLevel ?? LogLevel.Warning);
    if (protocol) builder = builder.withHubProtocol(protocol);
    if (this.options.statefulReconnect !== false) builder = builder.withStatefulReconnect();
    const connection = builder.build();

    // Registered before start(): a join's replayed events arrive before its result.
    for (const type of FEED_EVENT_TYPES) {
      connection.on(type, (event: FeedEvent) => this.enqueue(() => this.handle(event)));
    }
    // A reconnected connection is a new one, in no group: rejoin each from its position.
    connection.onreconnected(async () => {
      for (const group of this.followed.keys()) await this.rejoin(group);
      for (const eventId of this.unacknowledged) await this.acknowledge(eventId);
    });
    connection.onclose((err) => {
      if (!this.stopping) this.report(err ?? new Error("the connection closed and will not reconnect"), { kind: "closed" });
    });
    return connection;
  }

  /** Runs `task` after every task queued before it; a task that fails is reported and the queue goes on. */
  private enqueue(task: () => Promise<void>): Promise<void> {
    this.queue = this.queue.then(task).catch((err) => this.report(err, { kind: "internal" }));
    return this.queue;
  }

  /**
   * Joins `group` from its position. Its position moves only once the join
   * has completed: until then another group's copy of one of its events must
   * not skip the events its replay has still to bring.
   */
  private async join(group: string, retried = false): Promise<void> {
    const { method, id } = joinCall(this.followed.get(group)!);
    const after = this.positions.get(group);
    this.joining.set(group, undefined);
    try {
      await this.connection.invoke(method, id, ...(after === undefined ? [] : [after]));
    } catch (err) {
      this.joining.delete(group);
      if (after === undefined || !(err instanceof Error) || !RESYNC.test(err.message)) throw err;
      await this.resync(group, after, err, retried);
      return;
    }
    // After the replayed events already queued, not before.
    await this.enqueue(async () => {
      const highest = this.joining.get(group);
      this.joining.delete(group);
      if (highest !== undefined) await this.advance(group, highest);
    });
  }

  /** Joins again after a reconnect, retrying a failed join (e.g. a replay that could not be read) while connected. */
  private async rejoin(group: string): Promise<void> {
    const retryDelay = this.options.retryDelay ?? defaultRetryDelay;
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.join(group);
      } catch (err) {
        this.report(err, { kind: "join", group });
        const delay = retryDelay(attempt);
        if (delay === null || this.stopping || this.connection.state !== HubConnectionState.Connected) return;
        await new Promise((resolve) => setTimeout(resolve, delay));
      }
    }
  }

  private async resync(group: string, afterSequence: number, error: Error, retried: boolean): Promise<void> {
    const position = retried ? undefined : await this.options.onResync?.({ group, afterSequence, error });
    if (typeof position === "number") {
      this.positions.set(group, position);
      await this.cursors.set(group, position);
    } else {
      this.positions.delete(group);
      await this.cursors.delete?.(group);
    }
    await this.join(group, true);
  }

  private async handle(event: FeedEvent): Promise<void> {
    const groups = groupsOf(event).filter((group) => this.followed.has(group));
    const handled = groups.some((group) => event.sequence <= (this.positions.get(group) ?? -1));
    if (!handled && !this.seen.has(event.eventId)) {
      this.seen.add(event.eventId);
      for (const handler of this.handlers.get(event.type as FeedEventType) ?? []) {
        try {
          await handler(event);
        } catch (err) {
          this.report(err, { kind: "handler", event });
        }
      }
      if (this.options.acknowledge && event.type === "JobAssigned" && this.followed.has(`contractor/${event.contractorId}`)) {
        this.unacknowledged.add(event.eventId);
      }
    }
    for (const group of groups) {
      if (this.joining.has(group)) {
        this.joining.set(group, Math.max(this.joining.get(group) ?? -1, event.sequence));
      } else {
        await this.advance(group, event.sequence);
      }
    }
    if (this.unacknowledged.has(event.eventId)) await this.acknowledge(event.eventId);
  }

  private async advance(group: string, sequence: number): Promise<void> {
    if (sequence <= (this.positions.get(group) ?? -1)) return;
    this.positions.set(group, sequence);
    try {
      await this.cursors.set(group, sequence);
    } catch (err) {
      this.report(err, { kind: "store", group });
    }
  }

  /** Acknowledges a JobAssigned; one that fails stays pending and is sent again after the next reconnect. */
  private async acknowledge(eventId: string): Promise<void> {
    try {
      const acknowledgement: Acknowledgement = await this.connection.invoke("AcknowledgeEvent", eventId);
      this.unacknowledged.delete(eventId);
      this.options.onAcknowledged?.(acknowledgement);
    } catch (err) {
      this.report(err, { kind: "acknowledge", eventId });
    }
  }

  private report(error: unknown, context: ErrorContext): void {
    try {
      if (this.options.onError) return this.options.onError(error, context);
    } catch {
      // An onError that throws must not stop the feed either: fall back to the console.
    }
    console.error(`JobsFeed: ${context.kind}:`, error);
  }
}

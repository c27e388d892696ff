// onMessage: hub messages that are not events (PresenceChanged) reach their
// handlers as they arrive; an event type is refused there (it has on()).

import { test } from "node:test";
import assert from "node:assert/strict";

import { JobsFeed } from "../src/index.js";
import { harness, recordedFeed } from "./support.js";

const { startServer, dispatcherToken, contractorToken, waitFor, T } = harness;

test("onMessage hands a dispatcher the PresenceChanged of a contractor who connects", T, async (t) => {
  const server = await startServer(t);
  const contractor = await server.createContractor("north");
  const dispatcher = recordedFeed(t, server, await dispatcherToken(["north"]), [{ dispatch: "north" }]);
  const changes: unknown[] = [];
  dispatcher.feed.onMessage("PresenceChanged", (change) => void changes.push(change));
  await dispatcher.feed.start();

  const mine = recordedFeed(t, server, await contractorToken(contractor.id), [{ contractor: contractor.id }]);
  await mine.feed.start();

  const change = (await waitFor(() => changes[0], 10_000, "a PresenceChanged at the dispatcher")) as Record<string, unknown>;
  assert.equal(change.contractorId, contractor.id);
  assert.equal(change.online, true);
  assert.equal(change.region, "north");
  assert.deepEqual(dispatcher.events, [], "not an event: no handler of on() got it");
  assert.deepEqual(dispatcher.errors, []);
});

test("onMessage refuses an event type: events go through on(), in order and once", () => {
  // Never started: nothing is sent.
  const feed = new JobsFeed({ url: "http://127.0.0.1:9/hubs/jobs", accessToken: "unused", groups: [{ dispatch: "north" }] });
  assert.throws(() => feed.onMessage("JobAssigned", () => {}), /JobAssigned is an event: use on\("JobAssigned", handler\)/);
  const off = feed.onMessage("PresenceChanged", () => {});
  off();
});

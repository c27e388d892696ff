// The Rust MessagePack codec (crates/realtime/src/protocol/messagepack.rs)
// against the official @microsoft/signalr-protocol-msgpack, through the
// committed files of tests/fixtures/messagepack/cases.json: what the server
// writes decodes in the official client into the messages it means (and is
// byte for byte what the package's own encoder writes, keys sorted), and what
// the package writes is byte for byte the committed client files, which the
// Rust test (crates/realtime/tests/realtime/messagepack_fixtures.rs) parses.
// UPDATE_FIXTURES=1 rewrites the client files. No server needed: MessagePack
// is not served on any transport yet.

import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";

import { MessagePackHubProtocol } from "@microsoft/signalr-protocol-msgpack";
import { signalR, REPO_DIR } from "./lib/harness.mjs";

const FIXTURES = join(REPO_DIR, "tests", "fixtures", "messagepack");
const cases = JSON.parse(readFileSync(join(FIXTURES, "cases.json"), "utf8"));
const read = (file) => new Uint8Array(readFileSync(join(FIXTURES, file)));
const bytes = (buffer) => new Uint8Array(buffer);
const protocol = new MessagePackHubProtocol();
/** The package's encoder with keys sorted, as serde_json's maps are. */
const sorted = new MessagePackHubProtocol({ sortKeys: true });
const logger = signalR.NullLogger.instance;

/** What the official client makes of one server case. */
function expectedMessage(c) {
  if (c.invocation) {
    return { type: 1, headers: {}, target: c.invocation.target, arguments: [c.invocation.argument], streamIds: [] };
  }
  if (c.completionResult) {
    const { invocationId, result } = c.completionResult;
    return { type: 3, headers: {}, invocationId, result, error: undefined };
  }
  if (c.completionError) {
    const { invocationId, error } = c.completionError;
    return { type: 3, headers: {}, invocationId, error, result: undefined };
  }
  if (c.close) return { type: 7, error: c.close.error, allowReconnect: c.close.allowReconnect };
  if (c.ping) return { type: 6 };
  if (c.ack !== undefined) return { type: 8, sequenceId: c.ack };
  if (c.sequence !== undefined) return { type: 9, sequenceId: c.sequence };
  throw new Error(`unknown server case ${JSON.stringify(c)}`);
}

test("every record the Rust codec writes decodes in @microsoft/signalr-protocol-msgpack as meant", () => {
  assert.ok(cases.server.length >= 8);
  for (const c of cases.server) {
    const messages = protocol.parseMessages(read(c.file).buffer, logger);
    assert.equal(messages.length, 1, c.file);
    assert.deepStrictEqual(messages[0], expectedMessage(c), c.file);
  }
  // All of them in one binary message, as a batch of sends would come.
  const all = Buffer.concat(cases.server.map((c) => read(c.file)));
  const messages = protocol.parseMessages(new Uint8Array(all).buffer, logger);
  assert.deepStrictEqual(messages, cases.server.map(expectedMessage));
});

test("the Rust invocation, completions, ack and sequence are byte for byte the package's own encoding", () => {
  // The client never writes a server Close ([7, error, allowReconnect]) or a Ping it cannot tell apart, so those
  // are checked by decoding above; the rest the package writes the same way for its own sends.
  let compared = 0;
  for (const c of cases.server) {
    if (c.close || c.ping) continue;
    // Without streamIds the package writes the 5-element invocation the server writes.
    const { streamIds, ...message } = expectedMessage(c);
    const written = bytes(sorted.writeMessage(message));
    assert.deepStrictEqual(read(c.file), written, c.file);
    compared += 1;
  }
  assert.equal(compared, 5);
  assert.deepStrictEqual(read("server-ping.bin"), bytes(protocol.writeMessage({ type: 6 })), "Ping");
});

test("what the package writes for a client is the committed client fixtures the Rust parser reads", () => {
  const update = Boolean(process.env.UPDATE_FIXTURES);
  assert.ok(cases.client.length >= 10);
  for (const c of cases.client) {
    const written = bytes(protocol.writeMessage(c.message));
    if (update) writeFileSync(join(FIXTURES, c.file), written);
    assert.deepStrictEqual(read(c.file), written, `${c.file}: the package now writes other bytes`);
  }
});

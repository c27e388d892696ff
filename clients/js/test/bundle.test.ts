// The browser bundle the console serves (crates/api/static/vendor/events-client.js)
// is committed, so the Rust build needs no npm. It must be what `npm run bundle`
// makes of these sources: rebuilt here and compared byte for byte.

import { test } from "node:test";
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";

interface BundleScript {
  BUNDLE_PATH: string;
  bundle(): Promise<string>;
}

// From dist/test/ to scripts/.
const script = (await import(new URL("../../scripts/bundle.mjs", import.meta.url).href)) as BundleScript;

test("the committed browser bundle is the one these sources make (else: npm run bundle)", async () => {
  const committed = await readFile(script.BUNDLE_PATH, "utf8");
  const rebuilt = await script.bundle();
  assert.ok(committed === rebuilt, `${script.BUNDLE_PATH} is stale: run \`npm run bundle\` in clients/js and commit it`);
});

test("the bundle uses the page's signalR global rather than a copy of its own", async () => {
  const rebuilt = await script.bundle();
  assert.match(rebuilt, /module\.exports = globalThis\.signalR;/);
  assert.doesNotMatch(rebuilt, /class HubConnectionBuilder/, "no bundled @microsoft/signalr");
});

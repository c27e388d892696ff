// The stores on their own: what they keep survives a new store object.

import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";

import { LocalStorageCursorStore, MemoryCursorStore, WebStorage } from "../src/index.js";
import { FileCursorStore } from "../src/file-store.js";
import { tempDir } from "./support.js";

class FakeStorage implements WebStorage {
  readonly items = new Map<string, string>();
  getItem = (key: string) => this.items.get(key) ?? null;
  setItem = (key: string, value: string) => void this.items.set(key, value);
  removeItem = (key: string) => void this.items.delete(key);
}

test("the memory store keeps positions per group", () => {
  const store = new MemoryCursorStore();
  assert.equal(store.get("dispatch/north"), undefined);
  store.set("dispatch/north", 7);
  store.set("contractor/x", 3);
  assert.equal(store.get("dispatch/north"), 7);
  store.delete("dispatch/north");
  assert.equal(store.get("dispatch/north"), undefined);
  assert.equal(store.get("contractor/x"), 3);
});

test("the localStorage store keeps one key per group under its prefix, and ignores what is not a number", () => {
  const storage = new FakeStorage();
  new LocalStorageCursorStore("app.", storage).set("dispatch/north", 42);
  assert.deepEqual([...storage.items], [["app.dispatch/north", "42"]]);
  const reloaded = new LocalStorageCursorStore("app.", storage);
  assert.equal(reloaded.get("dispatch/north"), 42);
  storage.setItem("app.contractor/x", "garbage");
  assert.equal(reloaded.get("contractor/x"), undefined);
  reloaded.delete("dispatch/north");
  assert.equal(storage.items.size, 1);
  assert.throws(() => new LocalStorageCursorStore(), /no localStorage/, "Node has no localStorage");
});

test("the file store survives a new store object and keeps the file whole under concurrent writes", async (t) => {
  const path = join(await tempDir(t), "nested", "cursors.json");
  const store = new FileCursorStore(path);
  assert.equal(await store.get("dispatch/north"), undefined, "no file yet");
  await Promise.all(Array.from({ length: 50 }, (_, i) => store.set(`dispatch/r${i % 5}`, i)));
  await store.set("contractor/x", 9);
  await store.delete("dispatch/r0");
  const reopened = new FileCursorStore(path);
  assert.equal(await reopened.get("dispatch/r4"), 49);
  assert.equal(await reopened.get("contractor/x"), 9);
  assert.equal(await reopened.get("dispatch/r0"), undefined);
});

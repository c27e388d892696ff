// Positions in a JSON file, for Node: a restarted process resumes where it
// left off. A separate entry point (`@smartscheduler/events-client/file-store`)
// so that browser bundles never see node:fs.

import { mkdir, readFile, rename, writeFile } from "node:fs/promises";
import { dirname } from "node:path";

import type { CursorStore } from "./stores.js";

export class FileCursorStore implements CursorStore {
  private cursors: Promise<Map<string, number>> | undefined;
  /** Writes run one after another, each writing the whole file. */
  private writing: Promise<void> = Promise.resolve();

  constructor(readonly path: string) {}

  async get(group: string): Promise<number | undefined> {
    return (await this.load()).get(group);
  }

  async set(group: string, sequence: number): Promise<void> {
    const cursors = await this.load();
    cursors.set(group, sequence);
    await this.save(cursors);
  }

  async delete(group: string): Promise<void> {
    const cursors = await this.load();
    cursors.delete(group);
    await this.save(cursors);
  }

  private load(): Promise<Map<string, number>> {
    this.cursors ??= readFile(this.path, "utf8").then(
      (text) => new Map(Object.entries(JSON.parse(text) as Record<string, number>)),
      (err: NodeJS.ErrnoException) => {
        if (err.code === "ENOENT") return new Map<string, number>();
        throw err;
      },
    );
    return this.cursors;
  }

  /** Writes a temporary file and renames it over the old one: a crash leaves one or the other, whole. */
  private save(cursors: Map<string, number>): Promise<void> {
    const text = JSON.stringify(Object.fromEntries(cursors), null, 2) + "\n";
    const write = async () => {
      await mkdir(dirname(this.path), { recursive: true });
      const tmp = `${this.path}.${process.pid}.tmp`;
      await writeFile(tmp, text);
      await rename(tmp, this.path);
    };
    this.writing = this.writing.then(write, write);
    return this.writing;
  }
}

// Where a feed keeps its position: the last sequence handled per group.

type MaybePromise<T> = T | Promise<T>;

/**
 * The last sequence handled per group, by group name (`dispatch/north`).
 * Sync or async; `delete` (optional) forgets a group, after its position
 * could not be resumed.
 */
export interface CursorStore {
  get(group: string): MaybePromise<number | undefined>;
  set(group: string, sequence: number): MaybePromise<void>;
  delete?(group: string): MaybePromise<void>;
}

/** Positions in memory: lost with the process (the default). */
export class MemoryCursorStore implements CursorStore {
  private readonly cursors = new Map<string, number>();

  get(group: string): number | undefined {
    return this.cursors.get(group);
  }

  set(group: string, sequence: number): void {
    this.cursors.set(group, sequence);
  }

  delete(group: string): void {
    this.cursors.delete(group);
  }
}

/** The subset of the Web Storage API the localStorage store uses. */
export interface WebStorage {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

/**
 * Positions in a browser's `localStorage` (or any Web Storage), one key per
 * group under `prefix`: a reloaded page resumes where it left off.
 */
export class LocalStorageCursorStore implements CursorStore {
  constructor(
    private readonly prefix = "smartscheduler.cursor.",
    private readonly storage: WebStorage = globalThis.localStorage,
  ) {
    if (!storage) throw new Error("LocalStorageCursorStore: no localStorage here; pass a storage");
  }

  get(group: string): number | undefined {
    const text = this.storage.getItem(this.prefix + group);
    const value = text === null ? NaN : Number(text);
    return Number.isSafeInteger(value) ? value : undefined;
  }

  set(group: string, sequence: number): void {
    this.storage.setItem(this.prefix + group, String(sequence));
  }

  delete(group: string): void {
    this.storage.removeItem(this.prefix + group);
  }
}

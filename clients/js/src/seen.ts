/** The most recent `limit` event ids: enough to drop a resent copy, bounded in memory. */
export class SeenEvents {
  private readonly ids = new Set<string>();

  constructor(private readonly limit = 10_000) {}

  has(eventId: string): boolean {
    return this.ids.has(eventId);
  }

  add(eventId: string): void {
    this.ids.add(eventId);
    // A Set iterates in insertion order: the first is the oldest.
    while (this.ids.size > this.limit) this.ids.delete(this.ids.values().next().value as string);
  }
}

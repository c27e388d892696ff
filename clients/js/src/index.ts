export { JobsFeed } from "./feed.js";
export type { Acknowledgement, ErrorContext, Handler, JobsFeedOptions, ResyncNeeded } from "./feed.js";
export * from "./events.js";
export { groupName } from "./groups.js";
export type { GroupSpec } from "./groups.js";
export { LocalStorageCursorStore, MemoryCursorStore } from "./stores.js";
export type { CursorStore, WebStorage } from "./stores.js";
export { HttpTransportType, LogLevel } from "@microsoft/signalr";

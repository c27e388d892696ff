// SmartScheduler console: plain JavaScript, no build step.
//
// - A pasted bearer token is kept in localStorage; its claims are decoded here
//   for display only (the service verifies the signature on every call).
//   A token whose `exp` has passed is not used at all (no leeway); one the
//   service refuses (401) has its claims marked as not verified.
// - Admins and dispatchers pick a region, list its contractors and jobs, assign
//   a job (POST /api/jobs/{id}/assign) and watch dispatch/{region} live.
// - A contractor watches contractor/{own id}: its own assignments, replayed from
//   the start of the EventLog's retention, then live.
// - The live feed is a JobsFeed of @smartscheduler/events-client (clients/js,
//   its browser bundle /vendor/events-client.js) on the official
//   @microsoft/signalr browser bundle (/vendor/signalr.min.js). The feed keeps
//   the last sequence per group (a dispatcher's in localStorage, so a reload
//   resumes), rejoins with it after a reconnect and hands each event on once.
// - The transport (Automatic, WebSockets, Server-Sent Events, Long Polling) and
//   the hub protocol (JSON, or MessagePack with /vendor/signalr-protocol-msgpack.min.js)
//   are chosen in the page and kept in localStorage; the banner names the
//   transport the client actually uses. MessagePack is binary and Server-Sent
//   Events carry text only, so that pair is refused in the page, not tried.
// - Acknowledgements: a contractor's feed acknowledges each JobAssigned it shows
//   (acknowledge: true); a dispatcher's feed row says "delivered", then
//   "acknowledged at …" or "overdue" as JobAssignmentAcknowledged /
//   JobAssignmentUnacknowledged arrive for it (their jobAssignedEventId).
// - Presence: the contractors table says who is online, read from
//   GET /api/presence when the region loads (and after a reconnect: presence
//   is not replayed), then kept live by PresenceChanged.
"use strict";

(() => {
  const TOKEN_KEY = "smartscheduler.console.token";
  const REGION_KEY = "smartscheduler.console.region";
  const TRANSPORT_KEY = "smartscheduler.console.transport";
  const PROTOCOL_KEY = "smartscheduler.console.protocol";
  const CURSOR_PREFIX = "smartscheduler.console.cursor.";
  const HUB_PATH = "/hubs/jobs";
  const FEED_LIMIT = 200;
  const DEFAULT_REGIONS = ["north", "south", "east"];
  /** signalR.HttpTransportType names, as the page says them. */
  const TRANSPORT_NAMES = { WebSockets: "WebSockets", ServerSentEvents: "Server-Sent Events", LongPolling: "Long Polling" };
  const PROTOCOL_NAMES = { json: "JSON", messagepack: "MessagePack" };

  const $ = (id) => document.getElementById(id);

  const state = {
    token: "",
    claims: null,
    region: "",
    contractors: new Map(), // id -> contractor of the region
    presence: new Map(), // contractorId -> { online, lastSeenUtc | offlineSinceUtc, tick? }, for the region's contractors
    presenceTick: 0, // counts PresenceChanged messages, so a slower GET /api/presence does not undo one
    jobs: new Map(), // id -> job of the region
    feed: null, // the JobsFeed of the current connection
    cursors: null, // its CursorStore, kept across reconnections (see cursorStore)
    transport: "", // the HttpTransportType name the current connection uses, once connected
    protocol: "", // the hub protocol of the current connection: json | messagepack
    assignees: new Map(), // jobId -> contractorId, from assignments and events
    refusedRegion: "", // the region the service refused to let this token dispatch
    loadGeneration: 0,
  };

  // ---------------------------------------------------------------------------
  // Small helpers

  function el(tag, props = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props)) {
      if (value === undefined || value === null) continue;
      if (key === "className") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("data-") || key.startsWith("aria-") || key === "role") node.setAttribute(key, value);
      else node[key] = value;
    }
    for (const child of children) if (child !== null && child !== undefined) node.append(child);
    return node;
  }

  const isBackOffice = () => state.claims && (state.claims.role === "Admin" || state.claims.role === "Dispatcher");
  const isContractor = () => state.claims && state.claims.role === "Contractor";
  // UUID v7 ids begin with their creation time, so ids made within a minute
  // share a prefix; their last 8 hex digits are random and tell them apart.
  const shortId = (id) => (typeof id === "string" ? `…${id.replace(/-/g, "").slice(-8)}` : "");

  /** "2026-12-01T09:00:00Z" -> "2026-12-01 09:00" (UTC). */
  function utc(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return iso;
    return d.toISOString().slice(0, 16).replace("T", " ");
  }

  /** "2026-12-01T09:00:07.123Z" -> "09:00:07 UTC": acknowledgements come seconds apart, so with seconds. */
  function utcTime(iso) {
    const d = new Date(iso);
    if (!iso || Number.isNaN(d.getTime())) return String(iso || "");
    return `${d.toISOString().slice(11, 19)} UTC`;
  }

  /** A time range in UTC, the end's date omitted when it is the start's. */
  function utcRange(start, end) {
    const a = utc(start);
    const b = utc(end);
    return a.slice(0, 10) === b.slice(0, 10) ? `${a}–${b.slice(11)} UTC` : `${a} – ${b} UTC`;
  }

  /** A Date -> the value of a datetime-local input, read as UTC. */
  const toLocalInput = (date) => date.toISOString().slice(0, 16);

  /** The value of a datetime-local input (UTC) -> RFC 3339 with Z. */
  function fromLocalInput(value) {
    if (!value) return "";
    return value.length === 16 ? `${value}:00Z` : `${value.slice(0, 19)}Z`;
  }

  function durationText(minutes) {
    const h = Math.floor(minutes / 60);
    const m = minutes % 60;
    if (!h) return `${m} min`;
    return m ? `${h} h ${m} min` : `${h} h`;
  }

  /** Whether the claims' `exp` has passed; no leeway, so the page never uses a token the service may refuse. */
  const isExpired = (claims) => !!claims && typeof claims.exp === "number" && claims.exp * 1000 <= Date.now();

  /**
   * The words of a hub or HTTP failure without the client library's wrapping:
   * the problem+json `detail` of a refused negotiate, or the text of a
   * HubException, instead of the raw JSON and stack of labels.
   */
  function plainReason(err) {
    const message = (err && err.message) || String(err);
    const hub = /HubException: (.*)$/s.exec(message);
    if (hub) return hub[1].trim();
    const start = message.indexOf("{");
    const end = message.lastIndexOf("}");
    if (start >= 0 && end > start) {
      try {
        const problem = JSON.parse(message.slice(start, end + 1));
        if (problem && typeof problem.detail === "string") return problem.detail;
      } catch {
        // not JSON: the message as it is
      }
    }
    return message;
  }

  /** The HTTP status a failed negotiate reports ("…: Status code '401'"), or undefined. */
  function negotiateStatus(err) {
    const match = /Status code '(\d{3})'/.exec((err && err.message) || "");
    return match ? Number(match[1]) : undefined;
  }

  // ---------------------------------------------------------------------------
  // Errors and status

  function showError(message) {
    $("error-text").textContent = message;
    $("error").hidden = false;
  }

  function clearError() {
    $("error").hidden = true;
    $("error-text").textContent = "";
  }

  /** state: idle | connecting | live | refused (connected, in no group) | reconnecting | closed */
  function setStatus(kind, text) {
    const box = $("hub-status");
    box.dataset.state = kind;
    $("hub-status-text").textContent = text;
    // Reconnecting with an expired token, or over a pair that cannot work, would only fail again.
    $("reconnect").hidden = kind !== "closed" || !state.token || isExpired(state.claims) || !!pairProblem(chosenConnection());
    // While connected, the transport and protocol in use.
    const badge = $("hub-transport");
    const connected = (kind === "live" || kind === "refused") && !!state.transport;
    badge.hidden = !connected;
    if (connected) {
      const transport = TRANSPORT_NAMES[state.transport] || state.transport;
      const protocol = PROTOCOL_NAMES[state.protocol] || state.protocol;
      badge.textContent = `${transport} · ${protocol}`;
      badge.title = `Transport in use: ${transport}; hub protocol: ${protocol}`;
      badge.dataset.transport = state.transport;
      badge.dataset.protocol = state.protocol;
    }
  }

  // ---------------------------------------------------------------------------
  // Transport and protocol

  /** The chosen transport ("auto" or a signalR.HttpTransportType name) and hub protocol (json | messagepack). */
  function chosenConnection() {
    return { transport: $("transport").value, protocol: $("protocol").value };
  }

  /** Why a transport and protocol cannot work together, or "" when they can. */
  function pairProblem({ transport, protocol }) {
    if (transport === "ServerSentEvents" && protocol === "messagepack") {
      return "MessagePack cannot be used over Server-Sent Events: MessagePack is binary and Server-Sent Events carry text only. Choose JSON, or another transport.";
    }
    return "";
  }

  function renderConnectionChoice() {
    const problem = pairProblem(chosenConnection());
    $("connection-note").textContent = problem;
    $("connection-note").hidden = !problem;
    for (const id of ["transport", "protocol"]) $(id).setAttribute("aria-invalid", problem ? "true" : "false");
  }

  /** A remembered choice, when it is still one of the select's options. */
  function restoreChoice(id, key) {
    const saved = localStorage.getItem(key);
    if (saved && [...$(id).options].some((option) => option.value === saved)) $(id).value = saved;
  }

  /** Keeps the choice and reconnects with it at once. */
  async function changeConnection() {
    const choice = chosenConnection();
    localStorage.setItem(TRANSPORT_KEY, choice.transport);
    localStorage.setItem(PROTOCOL_KEY, choice.protocol);
    renderConnectionChoice();
    if (state.token && state.claims && !isExpired(state.claims)) await connectHub();
  }

  /**
   * The hub client's logger: warnings and errors go to the browser console as
   * with the default logger; the transport the client selects (its debug line
   * "Selecting transport 'LongPolling'.") is passed to `onTransport`, so the
   * banner names the transport in use, a fallback of Automatic included.
   */
  function hubLogger(onTransport) {
    return {
      log(level, message) {
        const selected = /^Selecting transport '(\w+)'/.exec(message);
        if (selected) onTransport(selected[1]);
        if (level < signalR.LogLevel.Warning) return;
        const line = `[${new Date().toISOString()}] ${signalR.LogLevel[level]}: ${message}`;
        if (level >= signalR.LogLevel.Error) console.error(line);
        else console.warn(line);
      },
    };
  }

  // ---------------------------------------------------------------------------
  // Token

  /** The claims of a JWT, decoded without verification (display only). */
  function decodeClaims(token) {
    const parts = token.split(".");
    if (parts.length !== 3) throw new Error("This is not a JWT: expected three parts separated by dots.");
    let b64 = parts[1].replace(/-/g, "+").replace(/_/g, "/");
    while (b64.length % 4) b64 += "=";
    let claims;
    try {
      const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
      claims = JSON.parse(new TextDecoder().decode(bytes));
    } catch {
      throw new Error("This is not a JWT: its claims could not be decoded.");
    }
    if (!claims || typeof claims !== "object") throw new Error("This is not a JWT: its claims are not an object.");
    if (!["Admin", "Dispatcher", "Contractor"].includes(claims.role)) {
      throw new Error(`The token's role ${JSON.stringify(claims.role)} is not Admin, Dispatcher or Contractor.`);
    }
    return claims;
  }

  function expiryText(exp) {
    if (typeof exp !== "number") return "never (no exp claim)";
    const left = exp * 1000 - Date.now();
    const when = `${utc(new Date(exp * 1000).toISOString())} UTC`;
    if (left <= 0) return `${when}: expired, mint a new token`;
    const minutes = Math.round(left / 60000);
    return `${when} (in ${minutes >= 60 ? durationText(minutes) : `${minutes} min`})`;
  }

  /** Claims are only decoded here; once the service refuses the token they are shown as not verified. */
  function markClaimsUnverified(unverified) {
    $("identity").dataset.verified = unverified ? "false" : "unknown";
    $("identity-unverified").hidden = !unverified;
  }

  function renderIdentity() {
    const c = state.claims;
    $("identity").hidden = !c;
    markClaimsUnverified(false);
    if (!c) return;
    $("identity-role").textContent = c.role;
    $("identity-sub").textContent = c.sub ?? "";
    const regions = Array.isArray(c.regions) ? c.regions : [];
    $("identity-regions").textContent = c.role === "Admin" ? "all" : regions.join(", ") || "none";
    $("identity-regions").parentElement.hidden = c.role === "Contractor";
    $("identity-contractor").textContent = c.contractorId ?? "—";
    $("identity-contractor").parentElement.hidden = c.role !== "Contractor";
    $("identity-exp").textContent = expiryText(c.exp);
  }

  async function useToken(raw) {
    clearError();
    const token = raw.trim();
    if (!token) {
      showError("Paste a bearer token first (`smartscheduler demo` or `smartscheduler token` prints one).");
      return;
    }
    let claims;
    try {
      claims = decodeClaims(token);
    } catch (err) {
      showError(err.message);
      return;
    }
    localStorage.setItem(TOKEN_KEY, token);
    state.token = token;
    state.claims = claims;
    state.cursors = null;
    state.assignees.clear();
    state.refusedRegion = "";
    setAssignEnabled(true);
    clearFeed();
    renderIdentity();
    if (isExpired(claims)) {
      // The service would accept it for a few seconds of leeway at most: using it would only fail later.
      await disconnectHub();
      for (const panel of document.querySelectorAll(".back-office")) panel.hidden = true;
      $("feed-scope").textContent = "Mint a new token to watch assignments arrive.";
      showError("This token has expired, so the console does not use it. Mint a new one (`smartscheduler token`).");
      setStatus("closed", "Not connected: the token has expired.");
      return;
    }

    for (const panel of document.querySelectorAll(".back-office")) panel.hidden = !isBackOffice();
    if (isBackOffice()) {
      const regions = claims.role === "Dispatcher" && Array.isArray(claims.regions) ? claims.regions : DEFAULT_REGIONS;
      const options = $("region-options");
      options.replaceChildren(...regions.map((r) => el("option", { value: r })));
      const remembered = localStorage.getItem(REGION_KEY);
      const region =
        remembered && (claims.role === "Admin" || regions.includes(remembered)) ? remembered : regions[0] || "north";
      $("region").value = region;
      state.region = region;
      $("feed-scope").textContent = `Assignments in region ${region} (group dispatch/${region}).`;
      loadRegion(); // in parallel with the hub connection
    } else {
      state.region = "";
      $("feed-scope").textContent = `Your assignments, contractor ${claims.contractorId} (group contractor/${claims.contractorId}).`;
    }
    await connectHub();
  }

  async function forgetToken() {
    localStorage.removeItem(TOKEN_KEY);
    state.token = "";
    state.claims = null;
    state.cursors = null;
    $("token").value = "";
    renderIdentity();
    for (const panel of document.querySelectorAll(".back-office")) panel.hidden = true;
    clearFeed();
    $("feed-scope").textContent = "Paste a token to watch assignments arrive.";
    clearError();
    await disconnectHub();
    setStatus("idle", "Not connected: paste a token.");
  }

  // ---------------------------------------------------------------------------
  // HTTP

  /** fetch with the token; throws an Error carrying the problem+json detail. */
  async function api(method, path, body) {
    const headers = { authorization: `Bearer ${state.token}` };
    if (body !== undefined) headers["content-type"] = "application/json";
    let res;
    try {
      res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    } catch (err) {
      const failure = new Error(`Could not reach the service (${method} ${path}: ${err.message}).`);
      failure.network = true;
      throw failure;
    }
    const text = await res.text();
    let json;
    try {
      json = text ? JSON.parse(text) : undefined;
    } catch {
      json = undefined;
    }
    if (!res.ok) {
      const title = json && json.title ? json.title : res.statusText;
      const detail = json && json.detail ? json.detail : text.slice(0, 300);
      const err = new Error(`${res.status} ${title}: ${detail}`);
      err.status = res.status;
      err.problem = json;
      if (res.status === 401) tokenRefused(detail);
      throw err;
    }
    return json;
  }

  async function loadRegion() {
    const region = state.region;
    if (!region || !isBackOffice()) return;
    const generation = ++state.loadGeneration;
    const q = encodeURIComponent(region);
    try {
      const [contractors, jobs] = await Promise.all([
        api("GET", `/api/contractors?region=${q}`),
        api("GET", `/api/jobs?region=${q}`),
      ]);
      if (generation !== state.loadGeneration) return; // a newer load started
      state.contractors = new Map(contractors.map((c) => [c.id, c]));
      state.jobs = new Map(jobs.map((j) => [j.id, j]));
      renderContractors();
      renderJobs();
      await Promise.all([loadPresence(region, generation), loadAssignees(generation)]);
    } catch (err) {
      if (generation !== state.loadGeneration || err.status === 401) return; // a 401 has its own message
      showError(`Could not load region ${region}: ${err.message}`);
    }
  }

  /**
   * Who of the region's contractors is online. A PresenceChanged that arrives
   * while the request is out is newer than its answer and is kept. Without an
   * answer (an older service) the column says "unknown" rather than failing the region.
   */
  async function loadPresence(region, generation) {
    const tick = state.presenceTick;
    let listed;
    try {
      listed = await api("GET", `/api/presence?region=${encodeURIComponent(region)}`);
    } catch (err) {
      if (err.status === 401) throw err;
      listed = { contractors: [] };
    }
    if (generation !== state.loadGeneration) return;
    const live = state.presence;
    state.presence = new Map();
    for (const c of listed.contractors || []) state.presence.set(c.contractorId, { online: c.online, lastSeenUtc: c.lastSeenUtc });
    for (const [id, p] of live) if (p.tick > tick) state.presence.set(id, p);
    renderContractors();
  }

  /**
   * The Job resource does not name its assignee, so the assignees of jobs
   * assigned before this page opened are read from the EventLog's JobAssigned
   * rows, a few pages at most; events seen live fill in the rest.
   */
  async function loadAssignees(generation) {
    const MAX_PAGES = 20;
    const missing = () => [...state.jobs.values()].some((j) => j.status === "Assigned" && !state.assignees.has(j.id));
    let after = 0;
    for (let page = 0; page < MAX_PAGES && missing(); page++) {
      const { items, nextAfterSequence } = await api("GET", `/api/events?afterSequence=${after}&limit=1000`);
      if (generation !== state.loadGeneration) return;
      for (const entry of items) {
        const p = entry.payload || {};
        if (entry.eventType === "JobAssigned" && p.jobId && p.contractorId) state.assignees.set(p.jobId, p.contractorId);
      }
      if (!items.length || nextAfterSequence <= after) break;
      after = nextAfterSequence;
    }
    renderJobs();
  }

  const mayAssignHere = () => isBackOffice() && !!state.region && state.refusedRegion !== state.region;

  /** The assign form works only for a region this token may dispatch. */
  function setAssignEnabled(enabled) {
    for (const id of ["assign-job", "assign-contractor", "assign-start", "assign-end", "assign-submit"]) {
      $(id).disabled = !enabled;
    }
  }

  function renderContractors() {
    const rows = [...state.contractors.values()].sort((a, b) => a.name.localeCompare(b.name));
    $("contractors").tBodies[0].replaceChildren(
      ...rows.map((c) =>
        el(
          "tr",
          { "data-contractor-id": c.id },
          el("td", { text: c.name }),
          el("td", {}, presenceBadge(c.id)),
          el("td", { text: (c.skills || []).join(", ") || "—" }),
          el("td", { className: "mono", text: shortId(c.id), title: c.id }),
        ),
      ),
    );
    if (!rows.length) {
      $("contractors").tBodies[0].append(el("tr", {}, el("td", { colSpan: 4, className: "empty", text: "No contractors in this region." })));
    }
    $("contractors-count").textContent = `(${rows.length})`;

    const select = $("assign-contractor");
    const previous = select.value;
    select.replaceChildren(
      el("option", { value: "", text: rows.length ? "Choose a contractor…" : "No contractors in this region" }),
      ...rows.map((c) => el("option", { value: c.id, text: `${c.name}${c.skills && c.skills.length ? ` · ${c.skills.join(", ")}` : ""}` })),
    );
    if (state.contractors.has(previous)) select.value = previous;
  }

  /** "online", "offline" (when last seen, in its title) or "unknown" (no presence read yet), for the contractors table. */
  function presenceBadge(contractorId) {
    const p = state.presence.get(contractorId);
    const online = p ? String(p.online) : "unknown";
    const text = p ? (p.online ? "online" : "offline") : "unknown";
    let title;
    if (p && !p.online && p.lastSeenUtc) title = `last seen ${utcTime(p.lastSeenUtc)}`;
    else if (p && !p.online && p.offlineSinceUtc) title = `offline since ${utcTime(p.offlineSinceUtc)}`;
    return el("span", { className: "presence", "data-testid": "presence", "data-online": online, text, title });
  }

  /** A PresenceChanged of the region shown: that contractor's cell changes in place. */
  function onPresenceChanged(e) {
    if (!e || typeof e !== "object" || !e.contractorId || !isBackOffice() || e.region !== state.region) return;
    // atUtc of an offline change is the end of the grace, not the last time the contractor was seen.
    state.presence.set(e.contractorId, {
      online: !!e.online,
      offlineSinceUtc: e.online ? null : e.atUtc,
      tick: ++state.presenceTick,
    });
    const row = $("contractors").querySelector(`tr[data-contractor-id="${CSS.escape(e.contractorId)}"]`);
    if (row) row.cells[1].replaceChildren(presenceBadge(e.contractorId));
  }

  function renderJobs() {
    const rows = [...state.jobs.values()].sort(
      (a, b) => (a.status === b.status ? 0 : a.status === "Unassigned" ? -1 : 1) || (a.createdAtUtc < b.createdAtUtc ? -1 : 1),
    );
    $("jobs").tBodies[0].replaceChildren(
      ...rows.map((j) => {
        const action =
          j.status === "Unassigned" && mayAssignHere()
            ? el("button", {
                type: "button",
                className: "small secondary",
                text: "Assign…",
                "aria-label": `Assign ${j.title || j.jobType}`,
                onclick: () => pickJob(j.id),
              })
            : "";
        return el(
          "tr",
          { "data-job-id": j.id, "data-status": j.status },
          el("td", { text: j.title || "(untitled)" }),
          el("td", { text: j.jobType }),
          el("td", { text: durationText(j.durationMinutes) }),
          el("td", { text: j.desiredStartUtc ? utc(j.desiredStartUtc) : "—" }),
          el("td", {}, el("span", { className: `badge ${j.status === "Assigned" ? "ok" : "wait"}`, text: j.status })),
          el("td", { "data-testid": "job-assignee", ...assigneeCell(j) }),
          el("td", {}, action),
        );
      }),
    );
    if (!rows.length) {
      $("jobs").tBodies[0].append(el("tr", {}, el("td", { colSpan: 7, className: "empty", text: "No jobs in this region." })));
    }
    const open = rows.filter((j) => j.status === "Unassigned");
    $("jobs-count").textContent = `(${open.length} unassigned of ${rows.length})`;

    const select = $("assign-job");
    const previous = select.value;
    select.replaceChildren(
      el("option", { value: "", text: open.length ? "Choose an unassigned job…" : "No unassigned jobs" }),
      ...open.map((j) =>
        el("option", { value: j.id, text: `${j.title || "(untitled)"} · ${j.jobType} · ${durationText(j.durationMinutes)}` }),
      ),
    );
    if (open.some((j) => j.id === previous)) select.value = previous;
    else if (previous) fillTimes();
  }

  /** The assignee cell: the contractor's name, else its short id; "—" while unassigned or unknown. */
  function assigneeCell(job) {
    const contractorId = state.assignees.get(job.id);
    if (job.status !== "Assigned" || !contractorId) return { text: "—" };
    const known = state.contractors.get(contractorId);
    return known
      ? { text: known.name, title: contractorId }
      : { text: shortId(contractorId), className: "mono", title: contractorId };
  }

  function pickJob(jobId) {
    $("assign-job").value = jobId;
    fillTimes();
    $("assign-contractor").focus();
  }

  /** Start: the job's desired start, or the next full hour; end: start + duration. */
  function fillTimes() {
    const job = state.jobs.get($("assign-job").value);
    if (!job) return;
    let start = job.desiredStartUtc ? new Date(job.desiredStartUtc) : null;
    if (!start || Number.isNaN(start.getTime())) {
      start = new Date();
      start.setUTCHours(start.getUTCHours() + 1, 0, 0, 0);
    }
    $("assign-start").value = toLocalInput(start);
    fillEnd();
  }

  function fillEnd() {
    const job = state.jobs.get($("assign-job").value);
    const start = $("assign-start").value;
    if (!job || !start) return;
    const end = new Date(new Date(fromLocalInput(start)).getTime() + job.durationMinutes * 60_000);
    if (!Number.isNaN(end.getTime())) $("assign-end").value = toLocalInput(end);
  }

  async function assign(event) {
    event.preventDefault();
    clearError();
    const jobId = $("assign-job").value;
    const contractorId = $("assign-contractor").value;
    const result = $("assign-result");
    result.textContent = "";
    if (!jobId || !contractorId) {
      showError("Choose a job and a contractor.");
      return;
    }
    const body = {
      contractorId,
      startUtc: fromLocalInput($("assign-start").value),
      endUtc: fromLocalInput($("assign-end").value),
      source: "manual",
    };
    const button = $("assign-submit");
    button.disabled = true;
    try {
      const a = await api("POST", `/api/jobs/${encodeURIComponent(jobId)}/assign`, body);
      const job = state.jobs.get(jobId);
      const who = state.contractors.get(contractorId);
      result.textContent =
        `Assigned “${job ? job.title || job.jobType : shortId(jobId)}” to ${who ? who.name : shortId(contractorId)}, ` +
        `${utcRange(a.startUtc, a.endUtc)} (event ${shortId(a.eventId)}).`;
      result.dataset.eventId = a.eventId;
      state.assignees.set(jobId, contractorId);
      if (job) state.jobs.set(jobId, { ...job, status: "Assigned" });
      // The next assignment starts from a clean form, not this one's times.
      $("assign-job").value = "";
      $("assign-start").value = "";
      $("assign-end").value = "";
      renderJobs();
      loadRegion();
    } catch (err) {
      if (err.network) {
        showError(`${err.message} The assignment may or may not have been made: refresh to see.`);
      } else if (err.status !== 401) {
        showError(`Assignment refused: ${err.message}`);
      }
    } finally {
      button.disabled = false;
    }
  }

  async function changeRegion(event) {
    event.preventDefault();
    clearError();
    const input = $("region");
    const region = input.value.trim();
    if (!input.checkValidity() || !region) {
      showError("A region is 1 to 64 characters of A-Z a-z 0-9 . _ -");
      return;
    }
    const previous = state.region;
    state.region = region;
    if (state.refusedRegion !== region) state.refusedRegion = "";
    setAssignEnabled(true);
    localStorage.setItem(REGION_KEY, region);
    $("feed-scope").textContent = `Assignments in region ${region} (group dispatch/${region}).`;
    state.contractors = new Map();
    state.presence = new Map();
    state.jobs = new Map();
    renderContractors();
    renderJobs();
    loadRegion();
    // A feed follows its groups for its lifetime: another region is another feed.
    if (previous !== region || !state.feed) await connectHub();
  }

  // ---------------------------------------------------------------------------
  // Hub: one JobsFeed (@smartscheduler/events-client) per connection

  /** The group this token watches: its own contractor group, or the region's dispatch group. */
  function wantedGroup() {
    if (isContractor() && state.claims.contractorId) return { contractor: state.claims.contractorId };
    if (isBackOffice() && state.region) return { dispatch: state.region };
    return null;
  }

  /**
   * Where the feed keeps its position. A dispatcher's is in localStorage, so a
   * reload resumes after the last event shown. A contractor's starts at 0 in
   * each page: its history is replayed (and acknowledged) when the page opens.
   * Kept across reconnections and transport changes, so none repeats an event.
   */
  function cursorStore() {
    if (state.cursors) return state.cursors;
    if (isContractor()) {
      state.cursors = new SmartSchedulerEvents.MemoryCursorStore();
      state.cursors.set(`contractor/${state.claims.contractorId}`, 0);
    } else {
      state.cursors = checkedAgainstService(new SmartSchedulerEvents.LocalStorageCursorStore(CURSOR_PREFIX));
    }
    return state.cursors;
  }

  /**
   * `store`, with each stored position checked once against the service: a
   * position past the end of its EventLog was kept against another database
   * (one that was reset), and resuming from it would hide every event
   * numbered below it, so it is forgotten instead.
   */
  function checkedAgainstService(store) {
    const checked = new Set();
    return {
      async get(group) {
        const position = store.get(group);
        if (position === undefined || checked.has(group)) return position;
        checked.add(group);
        try {
          // The event at `position`, or any later one, shows the EventLog reaches it.
          const { items } = await api("GET", `/api/events?afterSequence=${Math.max(position - 1, 0)}&limit=1`);
          if (items.length || position === 0) return position;
        } catch {
          return position; // not known: as stored
        }
        store.delete(group);
        return undefined;
      },
      set: (group, sequence) => store.set(group, sequence),
      delete: (group) => store.delete(group),
    };
  }

  /**
   * The service will not let this token dispatch `region`: say so plainly,
   * and offer nothing to assign there.
   */
  function refuseRegion(region) {
    if (region !== state.region) return;
    state.refusedRegion = region;
    showError(`You may not dispatch region ${region}: your token does not name it. Pick another region or mint a token for it.`);
    $("feed-scope").textContent = `Not watching region ${region}: your token may not dispatch it.`;
    setAssignEnabled(false);
    renderJobs();
  }

  /**
   * The service refused the token (401): its claims were never valid, so
   * they are marked as not verified and nothing more is asked with it.
   */
  function tokenRefused(detail) {
    if (!state.token) return;
    showError(`The service refused this token: ${String(detail).replace(/\.$/, "")}. Mint a new one (\`smartscheduler token\`).`);
    markClaimsUnverified(true);
    for (const panel of document.querySelectorAll(".back-office")) panel.hidden = true;
    setStatus("closed", "Not connected: the service refused the token.");
  }

  /** Why the connection went away, in words: a stop of the service is not an error of the page. */
  function lossReason(err) {
    const message = (err && err.message) || "";
    if (/shutting down/i.test(message)) return "The service stopped";
    return message ? "The connection to the service was lost" : "Disconnected from the service";
  }

  /** Why the page cannot connect with what is loaded and chosen, or "" when it can. */
  function cannotConnect(choice) {
    if (typeof signalR === "undefined") return "The SignalR client (/vendor/signalr.min.js) did not load.";
    if (typeof SmartSchedulerEvents === "undefined") return "The events client (/vendor/events-client.js) did not load.";
    if (choice.protocol === "messagepack" && !(signalR.protocols && signalR.protocols.msgpack)) {
      return "The MessagePack protocol (/vendor/signalr-protocol-msgpack.min.js) did not load.";
    }
    return "";
  }

  /**
   * Connects a JobsFeed for the token's group. The feed keeps the position,
   * rejoins after every reconnect, drops copies and (for a contractor)
   * acknowledges each JobAssigned once it is shown; the page renders.
   */
  async function connectHub() {
    await disconnectHub();
    if (!state.token) return;
    if (isExpired(state.claims)) {
      setStatus("closed", "Not connected: the token has expired.");
      return;
    }
    const choice = chosenConnection();
    if (pairProblem(choice)) {
      // Said next to the choice (renderConnectionChoice); nothing is sent.
      setStatus("closed", "Not connected: MessagePack cannot be used over Server-Sent Events.");
      return;
    }
    const missing = cannotConnect(choice);
    if (missing) {
      setStatus("closed", missing);
      return;
    }
    const spec = wantedGroup();
    if (!spec) {
      setStatus("refused", "Not watching: this token names no contractor and no region.");
      return;
    }
    const group = SmartSchedulerEvents.groupName(spec);
    let picked = ""; // the transport the client last selected for this connection
    let starting = true;
    let replayed = 0; // events handled before the join answered: the replay
    const feed = new SmartSchedulerEvents.JobsFeed({
      url: HUB_PATH,
      accessToken: () => state.token,
      groups: [spec],
      store: cursorStore(),
      acknowledge: isContractor(),
      transport: choice.transport === "auto" ? undefined : signalR.HttpTransportType[choice.transport],
      protocol: choice.protocol === "messagepack" ? new signalR.protocols.msgpack.MessagePackHubProtocol() : undefined,
      logger: hubLogger((transport) => {
        picked = transport;
      }),
      // Too far behind for a replay: reload over HTTP, then the feed joins without a position.
      onResync: () => {
        loadRegion();
      },
      onAcknowledged: (a) => {
        if (current()) onAcknowledged(a);
      },
      onError: (err, context) => {
        if (current()) onFeedError(err, context);
      },
    });
    const current = () => state.feed === feed;
    const handle = (render) => (e) => {
      if (!current()) return;
      if (starting) replayed++;
      render(e);
    };
    feed.on("JobAssigned", handle(onJobAssigned));
    feed.on("JobAssignmentAcknowledged", handle(onAcknowledgement));
    feed.on("JobAssignmentUnacknowledged", handle(onAcknowledgement));
    feed.onMessage("PresenceChanged", (e) => {
      if (current()) onPresenceChanged(e);
    });
    feed.connection.onreconnecting((err) => {
      if (!current()) return;
      state.transport = "";
      setStatus("reconnecting", `${lossReason(err)}: reconnecting… Missed events are replayed when it is back.`);
    });
    feed.connection.onreconnected(() => {
      if (!current()) return;
      state.transport = picked;
      setStatus("live", `Reconnected: live on ${group}; missed events are replayed.`);
      loadRegion(); // presence is not replayed
    });
    feed.connection.onclose((err) => {
      if (!current()) return;
      state.transport = "";
      setStatus("closed", `${lossReason(err)}. Live events stopped: press Reconnect when it is back.`);
    });
    state.feed = feed;
    state.protocol = choice.protocol;
    const over = choice.transport === "auto" ? "" : ` over ${TRANSPORT_NAMES[choice.transport]}`;
    setStatus("connecting", `Connecting to ${HUB_PATH}${over}…`);
    try {
      await feed.start();
      starting = false;
      if (!current()) return;
      state.transport = picked;
      setStatus("live", `Live on ${group}${replayed ? `; ${replayed} earlier event${replayed === 1 ? "" : "s"} replayed` : ""}.`);
    } catch (err) {
      starting = false;
      if (!current()) return;
      // Connected, but the join failed: the hub's answer, in its words.
      const joinFailed = feed.connection.state === signalR.HubConnectionState.Connected && /HubException:/.test(err.message);
      await disconnectHub();
      if (negotiateStatus(err) === 401) {
        tokenRefused(plainReason(err));
      } else if (joinFailed && /You are not allowed to join/.test(err.message)) {
        // A fact about the token, not a fault: nothing to watch here.
        if ("dispatch" in spec) refuseRegion(spec.dispatch);
        else showError(plainReason(err));
        setStatus("refused", "dispatch" in spec ? `Not watching: you may not dispatch region ${spec.dispatch}.` : `Not watching ${group}: ${plainReason(err)}`);
      } else if (joinFailed) {
        setStatus("closed", `Could not watch ${group}: ${plainReason(err)}`);
      } else {
        setStatus("closed", `Could not connect to the hub: ${plainReason(err)}`);
      }
    }
  }

  /** What the feed reports without stopping: an acknowledgement on its row, a failed rejoin in the error box. */
  function onFeedError(err, context) {
    if (context.kind === "acknowledge") {
      const item = feedItemOf(context.eventId);
      // A refusal is the service's answer; anything else (a lost connection) is tried again after the reconnect.
      const refused = /HubException:/.test((err && err.message) || "");
      if (item) setAck(item, refused ? "refused" : "failed", `not acknowledged: ${plainReason(err)}`);
    } else if (context.kind === "join") {
      showError(`Reconnected, but rejoining ${context.group} failed (trying again): ${plainReason(err)}`);
    } else if (context.kind !== "closed") {
      // "closed" has its banner (onclose); the rest is a fault of this page.
      console.error(`console: ${context.kind}:`, err);
    }
  }

  async function disconnectHub() {
    const feed = state.feed;
    state.feed = null;
    state.transport = "";
    if (feed) {
      try {
        await feed.stop();
      } catch {
        // already stopped
      }
    }
  }

  // ---------------------------------------------------------------------------
  // The feed

  function clearFeed() {
    $("feed").replaceChildren();
    $("feed-empty").hidden = false;
  }

  function onJobAssigned(e) {
    if (!e || typeof e !== "object" || !e.eventId) return;
    const shown = feedItemOf(e.eventId);
    if (shown) {
      // The feed hands each event on once; a copy here came through another connection of this page.
      shown.dataset.deliveries = String(Number(shown.dataset.deliveries) + 1);
      return;
    }
    // A contractor sees only its own assignments; a dispatcher its current region.
    if (isContractor() && e.contractorId !== state.claims.contractorId) return;
    if (isBackOffice() && e.region !== state.region) return;
    const job = e.job || {};
    const known = state.jobs.get(e.jobId);
    const newAssignee = state.assignees.get(e.jobId) !== e.contractorId;
    state.assignees.set(e.jobId, e.contractorId);
    if (known && (known.status !== "Assigned" || newAssignee)) {
      state.jobs.set(e.jobId, { ...known, status: "Assigned" });
      renderJobs();
    }
    const contractor = state.contractors.get(e.contractorId);
    const who = contractor
      ? contractor.name
      : isContractor() && e.contractorId === state.claims.contractorId
        ? "you"
        : `contractor ${shortId(e.contractorId)}`;
    const title = job.title || job.jobType || `job ${shortId(e.jobId)}`;
    const item = el(
      "li",
      {
        className: "event",
        "data-event-id": e.eventId,
        "data-sequence": String(e.sequence),
        "data-job-id": e.jobId,
        "data-contractor-id": e.contractorId,
        "data-received-at": String(Date.now()),
        "data-deliveries": "1",
      },
      el(
        "div",
        { className: "event-head" },
        el("span", { className: "seq", text: `#${e.sequence}` }),
        el("strong", { className: "event-title", text: title }),
        el("span", { className: "badge region", text: e.region }),
        el("time", { dateTime: e.occurredAtUtc, className: "muted", text: `${utc(e.occurredAtUtc).slice(11)} UTC` }),
      ),
      el(
        "div",
        { className: "event-body" },
        `→ ${who} · ${utcRange(e.startUtc, e.endUtc)}`,
        el("span", { className: "muted", text: ` · ${job.jobType ? `${job.jobType}, ` : ""}${e.source}` }),
      ),
      el("div", { className: "event-ack" }, el("span", { className: "ack", "data-testid": "event-ack" })),
    );
    setAck(item, "delivered", "delivered");
    const feed = $("feed");
    // Newest first by sequence (a replay can arrive after a live event).
    const after = [...feed.children].find((li) => Number(li.dataset.sequence) < e.sequence);
    feed.insertBefore(item, after || null);
    while (feed.children.length > FEED_LIMIT) feed.lastElementChild.remove();
    $("feed-empty").hidden = true;
    // The feed acknowledges it once this handler returns (onAcknowledged, onFeedError).
    if (isContractor()) setAck(item, "acknowledging", "acknowledging…");
  }

  // ---------------------------------------------------------------------------
  // Acknowledgements

  const feedItemOf = (eventId) => [...$("feed").children].find((li) => li.dataset.eventId === eventId);

  /**
   * Shows a row's acknowledgement: `status` is delivered | acknowledging |
   * acknowledged | overdue | refused | failed; `at` (ISO) becomes a <time>.
   */
  function setAck(item, status, text, at) {
    item.dataset.ack = status;
    const badge = item.querySelector(".ack");
    badge.dataset.ack = status;
    badge.replaceChildren(text);
    if (at) badge.append(" ", el("time", { dateTime: at, text: utcTime(at) }));
  }

  /**
   * A dispatcher's JobAssignmentAcknowledged or JobAssignmentUnacknowledged:
   * updates the row of its JobAssigned, if shown. An acknowledgement wins over
   * "overdue" (a late one can still come), never the other way round.
   */
  function onAcknowledgement(e) {
    if (!e || typeof e !== "object" || !e.eventId) return;
    if (isBackOffice() && e.region !== state.region) return;
    const item = feedItemOf(e.jobAssignedEventId);
    if (!item) return; // assigned before this page watched the region
    if (e.type === "JobAssignmentAcknowledged") {
      const late = item.dataset.ack === "overdue" ? " (after its deadline)" : "";
      setAck(item, "acknowledged", "acknowledged at", e.acknowledgedAtUtc);
      if (late) item.querySelector(".ack").append(late);
    } else if (e.type === "JobAssignmentUnacknowledged" && item.dataset.ack !== "acknowledged") {
      setAck(item, "overdue", "overdue: not acknowledged by", e.deadlineUtc);
    }
  }

  /**
   * A contractor's acknowledgement, recorded by the service: the time shown is
   * the first acknowledgement's (a repeat, e.g. of a replayed history, answers it too).
   */
  function onAcknowledged(a) {
    const item = feedItemOf(a.eventId);
    if (item) setAck(item, "acknowledged", "acknowledged at", a.acknowledgedAtUtc);
  }

  // ---------------------------------------------------------------------------
  // Wiring

  function init() {
    $("token-form").addEventListener("submit", (event) => {
      event.preventDefault();
      useToken($("token").value);
    });
    $("forget-token").addEventListener("click", forgetToken);
    $("region-form").addEventListener("submit", changeRegion);
    $("refresh").addEventListener("click", () => {
      clearError();
      loadRegion();
    });
    $("assign-form").addEventListener("submit", assign);
    $("assign-job").addEventListener("change", fillTimes);
    $("assign-start").addEventListener("change", fillEnd);
    $("error-dismiss").addEventListener("click", clearError);
    $("reconnect").addEventListener("click", () => {
      clearError();
      connectHub();
    });
    restoreChoice("transport", TRANSPORT_KEY);
    restoreChoice("protocol", PROTOCOL_KEY);
    renderConnectionChoice();
    $("connection-form").addEventListener("submit", (event) => event.preventDefault());
    $("transport").addEventListener("change", changeConnection);
    $("protocol").addEventListener("change", changeConnection);
    const saved = localStorage.getItem(TOKEN_KEY);
    if (saved) {
      $("token").value = saved;
      useToken(saved);
    }
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();

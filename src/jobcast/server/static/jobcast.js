/**
 * jobcast.js: the browser client for jobcast. One dependency-free ES module, no build step.
 *
 *   import { watchJob, subscribe, submitJob } from "/static/jobcast.js";
 *   const opts = { token: () => localStorage.getItem("token") };
 *   const job = await submitJob("demo", { steps: 5 }, opts);
 *   watchJob(job.id, { onJob: (j) => render(j), onDone: (j) => done(j) }, opts);
 *
 * Decisions (cited as J1..J5 by the code below):
 *
 * J1. EventSource retries by itself only on network errors, and with the same URL: it gives
 *     up for good on an HTTP error, and a one-use ticket in its URL is spent. So every lost
 *     connection is closed here and reopened by us, with a fresh ticket and `last_event_id`.
 * J2. Reconnect delays are exponential with full jitter and a cap (`backoffDelay`), so the
 *     clients of a restarted server do not all come back at the same moment. Only a connection
 *     that delivered an event resets the attempt count: a socket that opens and is then
 *     refused would otherwise be retried at once, for ever.
 * J3. With a token, every connection first exchanges it for a one-use stream ticket, so the
 *     long-lived token never appears in a URL. Without one, the browser's cookies go along
 *     (cookie sessions from `POST /api/auth/session`).
 * J4. Failures that retrying cannot fix (401, 403, 404, 422 on the ticket, the job or the
 *     subscription) end the stream with `onError` and the state `closed`; everything else is
 *     retried forever. EventSource hides the status of a refused stream, so a connection that
 *     never opened is followed by a probe: the same stream requested with `fetch`, which shows
 *     the status and is abandoned as soon as it has (another route, such as the job or a
 *     ticket, may accept what the stream refuses: a token just past its expiry). WebSockets
 *     carry the status: close codes 4403, 4404 and 4422, and an `{"op": "error"}` reply to a
 *     subscription.
 * J5. `reset` (the history could not cover the gap) and `reauth` (the credential expired; a
 *     WebSocket closed with 4401) are surfaced to handlers. After `reauth` the stream
 *     reconnects at once if the credential changed (the token, or for a cookie session its
 *     CSRF token); if not, it backs off, and a second `reauth` in a row with the same
 *     credential ends the stream with a 401: an expired credential the server still accepts
 *     for a moment (clock-skew leeway) must not cause a reconnect storm.
 * J6. `readStream` over a WebSocket resumes at the offset of the last data message, after
 *     any end but a refusal (see `readOverSocket`).
 */

/** Connection states, for status indicators. */
export const State = Object.freeze({
  CONNECTING: "connecting",
  OPEN: "open",
  RECONNECTING: "reconnecting",
  CLOSED: "closed",
});

/** The event types of a job's stream; the last three are terminal. */
export const JOB_EVENT_TYPES = [
  "snapshot",
  "progress",
  "state",
  "retrying", // an attempt failed; the job is queued again until `next_attempt_at`
  "metadata", // the keys its handler's metadata changed: `{metadata, removed}`
  "waiting", // it waits for input (`job.waiting`): answer with giveInput
  "resumed", // it no longer waits (`job.inputs` holds what was given)
  "succeeded",
  "failed",
  "cancelled",
];
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
/** The event types of a live job list (`watchJobs`). */
export const LIST_EVENT_TYPES = ["snapshot", "synced", "removed"];
const FATAL_STATUS = new Set([401, 403, 404, 422]);
/** `reauth`s in a row with an unchanged credential that end the stream (J5). */
const STALE_REAUTH_LIMIT = 2;
/** The status behind a WebSocket `{"op": "error"}` code (J4). */
const ERROR_STATUS = { unauthorized: 401, forbidden: 403, not_found: 404, invalid_input: 422 };

/** An HTTP error from the API; `status` and the server's `{error, message}` body are kept. */
export class JobcastError extends Error {
  constructor(message, status = 0, body = null) {
    super(message);
    this.name = "JobcastError";
    this.status = status;
    this.body = body;
    this.fatal = FATAL_STATUS.has(status); // J4
  }
}

/**
 * The delay before reconnect attempt `attempt` (0-based): full jitter, `random() * min(cap,
 * initial * factor ** attempt)` (J2).
 * @param {number} attempt
 * @param {{initialMs?: number, maxMs?: number, factor?: number}} [backoff]
 * @param {() => number} [random]
 * @returns {number} milliseconds
 */
export function backoffDelay(attempt, backoff = {}, random = Math.random) {
  const { initialMs = 1000, maxMs = 15000, factor = 2 } = backoff;
  const ceiling = Math.min(maxMs, initialMs * factor ** Math.max(0, attempt));
  return Math.floor(random() * ceiling);
}

// -- HTTP -------------------------------------------------------------------------------------

async function resolve(value) {
  return typeof value === "function" ? await value() : value;
}

// A baseUrl's path is where jobcast is mounted ("https://app.example.com/jobcast"): API paths go
// below it. Without one, they are absolute on this page's origin.
function absolute(path, options) {
  const page = globalThis.location?.href;
  if (!options.baseUrl) return new URL(path, page).toString();
  const base = new URL(options.baseUrl, page);
  return new URL(base.pathname.replace(/\/+$/, "") + path, base.origin).toString();
}

async function authHeaders(options, method) {
  const headers = {};
  const token = await resolve(options.token);
  if (token) headers.Authorization = `Bearer ${token}`;
  const csrf = await resolve(options.csrfToken);
  if (!token && csrf && method !== "GET") headers["X-CSRF-Token"] = csrf;
  return headers;
}

function errorFrom(status, text) {
  let body = null;
  try {
    body = JSON.parse(text);
  } catch {
    body = null;
  }
  return new JobcastError(body?.message || `HTTP ${status}`, status, body);
}

/**
 * Call the API: JSON in, JSON out; a non-2xx answer throws a {@link JobcastError}.
 * @param {string} path e.g. "/api/jobs"
 * @param {{method?: string, body?: any} & ClientOptions} [options]
 */
export async function api(path, options = {}) {
  const method = options.method || "GET";
  const headers = await authHeaders(options, method);
  let body;
  if (options.body !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(options.body);
  }
  const doFetch = options.fetch || globalThis.fetch.bind(globalThis);
  const response = await doFetch(absolute(path, options), {
    method,
    headers,
    body,
    credentials: options.withCredentials ? "include" : "same-origin",
  });
  const text = await response.text();
  if (!response.ok) throw errorFrom(response.status, text);
  return text ? JSON.parse(text) : null;
}

export const getJob = (id, options) => api(`/api/jobs/${encodeURIComponent(id)}`, options);
export const cancelJob = (id, options) =>
  api(`/api/jobs/${encodeURIComponent(id)}/cancel`, { ...options, method: "POST" });
/** Run a job again as a new job linked by `rerun_of` (its owner or an admin). */
export const rerunJob = (id, options) =>
  api(`/api/jobs/${encodeURIComponent(id)}/rerun`, { ...options, method: "POST" });
/**
 * Give a job that waits for input (`job.waiting.name`) its value. Rejects with status 422
 * when the value does not fit the request's schema (nothing changes), 409 when the job no
 * longer waits for it (another answer came first, or it timed out).
 */
export const giveInput = (id, name, value, options) =>
  api(`/api/jobs/${encodeURIComponent(id)}/input`, {
    ...options,
    method: "POST",
    body: { name, value },
  });
/**
 * Let `subject` read and watch a job (its owner or an admin may); `options.input`: and give
 * it input (`giveInput`). Sharing again sets the permission anew.
 */
export const shareJob = (id, subject, options = {}) =>
  api(
    `/api/jobs/${encodeURIComponent(id)}/readers/${encodeURIComponent(subject)}` +
      (options.input ? "?input=true" : ""),
    { ...options, method: "PUT" },
  );
/** Withdraw a subject's access to a job (and its input permission). */
export const unshareJob = (id, subject, options) =>
  api(`/api/jobs/${encodeURIComponent(id)}/readers/${encodeURIComponent(subject)}`, {
    ...options,
    method: "DELETE",
  });
/**
 * Submit jobs (`[{kind, params, tags, metadata, priority, ...}]`) as one batch, all or none.
 * Resolves to its parent job (with `jobs`, the children): watch it like any job; it ends once
 * every child has (`failed` if any failed, unless `options.allowFailures`).
 */
export const submitBatch = (jobs, options = {}) =>
  api("/api/batches", {
    ...options,
    method: "POST",
    body: {
      jobs,
      ...(options.tags ? { tags: options.tags } : {}),
      ...(options.metadata ? { metadata: options.metadata } : {}),
      ...(options.allowFailures ? { allow_failures: true } : {}),
    },
  });
/** A page of jobs; `query` as the API's: `{state, kind, tag, parent, limit, cursor}`. */
export function listJobs(query = {}, options = {}) {
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(query)) {
    for (const item of [].concat(value)) if (item != null) params.append(key, item);
  }
  return api(`/api/jobs?${params}`, options);
}

/** The scheduling fields of a submission that `options` sets (the server validates them). */
function submitFields(options) {
  const fields = {
    idempotency_key: options.idempotencyKey,
    delay_seconds: options.delaySeconds,
    run_at: options.runAt instanceof Date ? options.runAt.toISOString() : options.runAt,
    priority: options.priority,
    max_attempts: options.maxAttempts,
    tags: options.tags,
    metadata: options.metadata,
  };
  return Object.fromEntries(Object.entries(fields).filter(([, value]) => value != null));
}

/**
 * Submit a job. With `options.file` it is a multipart upload sent with XMLHttpRequest, so
 * `options.onUploadProgress({loaded, total, fraction})` can follow it; otherwise JSON.
 * `idempotencyKey` makes a retried submission return the first job; `delaySeconds` or `runAt`
 * start it later; `priority` (-100..100) orders it; `maxAttempts` bounds its retries.
 * Resolves to the job's snapshot (with `links`).
 * @param {string} kind
 * @param {object} [params]
 * @param {ClientOptions & SubmitOptions & {file?: Blob,
 *   onUploadProgress?: (p: UploadProgress) => void}} [options]
 */
export async function submitJob(kind, params = {}, options = {}) {
  const fields = submitFields(options);
  if (!options.file) {
    return api("/api/jobs", { ...options, method: "POST", body: { kind, params, ...fields } });
  }
  const headers = await authHeaders(options, "POST");
  const form = new FormData();
  form.append("kind", kind);
  form.append("params", JSON.stringify(params));
  for (const [name, value] of Object.entries(fields)) {
    form.append(name, typeof value === "object" ? JSON.stringify(value) : String(value));
  }
  form.append("file", options.file, options.file.name || "upload");
  return new Promise((done, fail) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", absolute("/api/jobs", options));
    xhr.withCredentials = Boolean(options.withCredentials);
    for (const [name, value] of Object.entries(headers)) xhr.setRequestHeader(name, value);
    xhr.upload.onprogress = (e) => {
      const total = e.lengthComputable ? e.total : options.file.size;
      options.onUploadProgress?.({ loaded: e.loaded, total, fraction: total ? e.loaded / total : 0 });
    };
    xhr.onload = () => {
      if (xhr.status < 200 || xhr.status >= 300) {
        fail(errorFrom(xhr.status, xhr.responseText));
        return;
      }
      try {
        done(JSON.parse(xhr.responseText));
      } catch {
        // A proxy's HTML page, say: reject rather than throw where nobody catches it.
        const message = `the server answered ${xhr.status} with a body that is not JSON`;
        fail(new JobcastError(message, xhr.status));
      }
    };
    xhr.onerror = () => fail(new JobcastError("the upload failed: network error"));
    xhr.send(form);
  });
}

// -- Streams ----------------------------------------------------------------------------------

/**
 * One logical stream over many connections: reconnects, resumes and renews tickets (J1..J5).
 * Dispatches a `state` event (EventTarget) and calls `handlers.onConnection(state)`.
 */
export class Stream extends EventTarget {
  /** @param {StreamTarget} target @param {StreamHandlers} handlers @param {ClientOptions} options */
  constructor(target, handlers = {}, options = {}) {
    super();
    this.target = target;
    this.handlers = handlers;
    this.options = options;
    /** @type {string | null} the id to resume after */
    this.lastEventId = options.lastEventId || null;
    /** @type {string} one of {@link State} */
    this.state = State.CONNECTING;
    this.attempt = 0;
    this.connections = 0;
    /** @type {number | null} the server's last `retry:` hint (fetch transport) */
    this.serverRetryMs = null;
    this._conn = null;
    this._timer = null;
    this._closed = false;
    this._gotEvent = false; // on the current connection (J2)
    this._credential = null; // what the current connection authenticated with (J5)
    this._staleReauths = 0;
    queueMicrotask(() => {
      if (this._closed) return;
      this._notify(); // handlers see the first state too
      this._connect();
    });
  }

  /** Stop for good. */
  close() {
    this._closed = true;
    clearTimeout(this._timer);
    this._drop();
    this._setState(State.CLOSED);
  }

  _setState(state) {
    if (this.state === state) return;
    this.state = state;
    this._notify();
  }

  _notify() {
    this.handlers.onConnection?.(this.state);
    this.dispatchEvent(new CustomEvent("state", { detail: this.state }));
  }

  _drop() {
    const conn = this._conn;
    this._conn = null;
    if (conn) conn.close();
  }

  async _connect() {
    if (this._closed) return;
    this._setState(this.connections || this.attempt ? State.RECONNECTING : State.CONNECTING);
    const options = this.options;
    const transport = options.transport || "sse";
    const query = new URLSearchParams(this.target.query || []);
    let headers = {};
    let credential = null;
    try {
      const token = await resolve(options.token); // once: a function may return a new one
      credential = token || (await resolve(options.csrfToken)) || null;
      if (transport === "fetch") {
        if (token) headers.Authorization = `Bearer ${token}`; // fetch can send it as a header
      } else if (token) {
        const { ticket } = await api("/api/auth/ticket", {
          ...options,
          token,
          method: "POST",
          body: { topics: this.target.topics },
        }); // J3: a fresh one-use ticket for every connection
        query.set("ticket", ticket);
      }
    } catch (error) {
      return this._lost(false, error);
    }
    if (this._closed) return;
    this.connections += 1;
    if (credential !== this._credential) this._staleReauths = 0; // renewed while backing off
    this._credential = credential;
    this._gotEvent = false;
    const path = transport === "ws" ? this.target.wsPath : this.target.ssePath;
    if (this.lastEventId && !(transport === "ws" && this.target.wsSubscribe)) {
      query.set("last_event_id", this.lastEventId); // J1: resume where we were
    }
    const url = new URL(absolute(`${path}?${query}`, options));
    const open = { sse: openEventSource, fetch: openFetch, ws: openSocket }[transport];
    if (!open) throw new TypeError(`unknown transport ${transport}`);
    this._conn = open(this, url, headers);
  }

  /** The credential a connection would use now: the token, else the cookie session's CSRF. */
  async _currentCredential() {
    return (await resolve(this.options.token)) || (await resolve(this.options.csrfToken)) || null;
  }

  /** A connection opened (called by the transports). */
  _opened() {
    if (this._closed) return;
    this._setState(State.OPEN);
    this.handlers.onOpen?.();
  }

  /** An event arrived (called by the transports). */
  _receive(type, raw, id, extra = {}) {
    if (this._closed) return;
    if (type !== "reauth" && !this._gotEvent) {
      this._gotEvent = true;
      this.attempt = 0; // J2: this connection worked
    }
    if (id) this.lastEventId = id;
    let data = raw;
    try {
      data = JSON.parse(raw);
    } catch {
      // not JSON: hand over the text as it is
    }
    const event = { id: id || null, type, data, raw, ...extra };
    if (type === "reset") {
      this.handlers.onReset?.(data, event); // J5: reload state; live events follow
      return;
    }
    if (type === "reauth") {
      this.handlers.onReauth?.(data, event); // J5: the handler may renew the credential now
      this._drop();
      this._reauthenticate();
      return;
    }
    this.handlers.onEvent?.(event);
    if (this.target.final?.(event)) this.close();
  }

  /** After `reauth`: resume at once with a renewed credential, else back off, then give up (J5). */
  async _reauthenticate() {
    let credential = null;
    try {
      credential = await this._currentCredential();
    } catch {
      credential = null; // a token function that failed renewed nothing
    }
    if (this._closed) return;
    if (credential !== this._credential) {
      this._staleReauths = 0;
      this.attempt = 0;
      this._connect();
      return;
    }
    this._staleReauths += 1;
    if (this._staleReauths >= STALE_REAUTH_LIMIT) {
      const message = "the credential expired and was not renewed";
      const body = { error: "unauthorized", reason: "token_expired", message };
      this.handlers.onError?.(new JobcastError(message, 401, body));
      this.close();
      return;
    }
    this._retryLater(true);
  }

  /** The connection ended or could not be made (called by the transports). */
  async _lost(wasOpen, error = null) {
    this._drop();
    if (this._closed) return;
    if (!error && !wasOpen) {
      // EventSource hides the HTTP status; ask for the stream again to see why (J4).
      try {
        await this._probe();
      } catch (probeError) {
        if (probeError instanceof JobcastError && probeError.fatal) error = probeError;
      }
      if (this._closed) return; // closed while the probe was out: stay closed
    }
    if (error) this.handlers.onError?.(error);
    if (error?.fatal) {
      this.close();
      return;
    }
    this._retryLater(wasOpen);
  }

  /** Request the stream with `fetch` for its status only: throws a JobcastError if refused. */
  async _probe() {
    const options = this.options;
    const query = new URLSearchParams(this.target.query || []);
    if (this.lastEventId) query.set("last_event_id", this.lastEventId);
    const headers = { ...(await authHeaders(options, "GET")), Accept: "text/event-stream" };
    const doFetch = options.fetch || globalThis.fetch.bind(globalThis);
    const controller = new AbortController();
    try {
      const response = await doFetch(absolute(`${this.target.ssePath}?${query}`, options), {
        headers,
        credentials: options.withCredentials ? "include" : "same-origin",
        signal: controller.signal,
        cache: "no-store",
      });
      if (!response.ok) throw errorFrom(response.status, await response.text());
    } finally {
      controller.abort(); // the status was all we wanted
    }
  }

  /** Reconnect after a backoff delay, or the server's closing `retry:` hint. */
  _retryLater(wasOpen) {
    this._setState(State.RECONNECTING);
    let delay = backoffDelay(this.attempt, this.options.backoff, this.options.random);
    if (wasOpen && this.serverRetryMs != null) {
      // The stream ended with a `retry:` hint (fetch transport): a draining server spreads
      // its clients' returns by sending each a different one, so use it for the first attempt.
      delay = this.serverRetryMs;
      this.serverRetryMs = null;
    }
    this.attempt += 1;
    this._timer = setTimeout(() => this._connect(), delay);
  }
}

function openEventSource(stream, url, _headers) {
  const ES = stream.options.EventSource || globalThis.EventSource;
  const source = new ES(url, { withCredentials: Boolean(stream.options.withCredentials) });
  let wasOpen = false;
  let live = true;
  source.onopen = () => {
    wasOpen = true;
    stream._opened();
  };
  // EventSource delivers named events only to listeners of that name.
  const types = new Set(["message", "reset", "reauth", ...(stream.target.types || [])]);
  for (const type of stream.options.types || []) types.add(type);
  for (const type of types) {
    source.addEventListener(type, (e) => live && stream._receive(type, e.data, e.lastEventId));
  }
  source.onerror = () => {
    // J1: whatever EventSource would do next, we reconnect ourselves.
    if (!live) return;
    live = false;
    source.close();
    stream._lost(wasOpen);
  };
  return {
    close() {
      live = false;
      source.close();
    },
  };
}

/**
 * Parse Server-Sent Events from text chunks (the WHATWG algorithm, minus BOM handling).
 * Returns a function taking a chunk and returning the complete frames it finished.
 */
export function sseParser() {
  let buffer = "";
  let frame = { data: [], type: "", id: null, retry: null, comments: [], lines: [] };
  const fresh = () => ({ data: [], type: "", id: null, retry: null, comments: [], lines: [] });
  return (chunk) => {
    buffer += chunk;
    const done = [];
    const lines = buffer.split(/\r\n|\r|\n/);
    buffer = lines.pop();
    for (const line of lines) {
      if (line === "") {
        if (frame.lines.length) done.push(frame);
        frame = fresh();
        continue;
      }
      frame.lines.push(line);
      const colon = line.indexOf(":");
      const field = colon === -1 ? line : line.slice(0, colon);
      let value = colon === -1 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "") frame.comments.push(value);
      else if (field === "data") frame.data.push(value);
      else if (field === "event") frame.type = value;
      else if (field === "id" && !value.includes("\0")) frame.id = value;
      else if (field === "retry" && /^\d+$/.test(value)) frame.retry = Number(value);
    }
    return done;
  };
}

function openFetch(stream, url, headers) {
  // Sees every event type, comments and retry hints: what a stream inspector needs.
  const controller = new AbortController();
  const doFetch = stream.options.fetch || globalThis.fetch.bind(globalThis);
  let wasOpen = false;
  (async () => {
    let error = null;
    try {
      const response = await doFetch(url, {
        headers: { ...headers, Accept: "text/event-stream" },
        credentials: stream.options.withCredentials ? "include" : "same-origin",
        signal: controller.signal,
        cache: "no-store",
      });
      if (!response.ok) throw errorFrom(response.status, await response.text());
      wasOpen = true;
      stream._opened();
      const parse = sseParser();
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        for (const frame of parse(value)) {
          stream.handlers.onFrame?.(frame.lines.join("\n"));
          stream.serverRetryMs = frame.retry; // kept only if the stream's last frame has one
          if (frame.data.length) {
            stream._receive(frame.type || "message", frame.data.join("\n"), frame.id);
          } else if (frame.id && !stream.lastEventId) {
            stream.lastEventId = frame.id; // a fresh stream's opening: resume from its head
          }
        }
      }
    } catch (caught) {
      if (controller.signal.aborted) return;
      if (caught instanceof JobcastError) error = caught;
    }
    if (!controller.signal.aborted) stream._lost(wasOpen, error);
  })();
  return { close: () => controller.abort() };
}

function openSocket(stream, url, _headers) {
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  const WS = stream.options.WebSocket || globalThis.WebSocket;
  const socket = new WS(url);
  const target = stream.target;
  let wasOpen = false;
  let live = true;
  let refusal = null; // the {"op": "error"} the server sends before closing with a code
  const end = (error) => {
    live = false;
    socket.close();
    stream._lost(wasOpen, error);
  };
  socket.onopen = () => {
    if (target.wsSubscribe) {
      const op = { op: "subscribe", topics: target.wsSubscribe };
      if (stream.lastEventId) op.last_event_id = stream.lastEventId;
      socket.send(JSON.stringify(op));
    } else {
      wasOpen = true;
      stream._opened();
    }
  };
  socket.onmessage = (message) => {
    const m = JSON.parse(message.data);
    if (m.op === "subscribed") {
      wasOpen = true;
      stream._opened();
    } else if (m.op === "reset") {
      stream._receive("reset", JSON.stringify(m), m.id);
    } else if (m.op === "error") {
      const error = new JobcastError(m.message || m.error, ERROR_STATUS[m.error] || 0, m);
      if (m.for === "subscribe" && !wasOpen) end(error); // refused; the socket stays open (J4)
      else if (m.for) stream.handlers.onError?.(error); // another op failed; the stream goes on
      else refusal = error; // a close follows: reported with its code
    } else if (!m.op) {
      stream._receive(m.type, JSON.stringify(m.data), m.id, { topic: m.topic, ts: m.ts });
    }
  };
  socket.onclose = (e) => {
    if (!live) return;
    live = false;
    const status = e.code >= 4000 && e.code < 5000 ? e.code - 4000 : 0; // 4000 + HTTP status
    if (status === 401) {
      stream._receive("reauth", '{"reason":"credential_expired"}', null); // J5: renew once
    } else if (FATAL_STATUS.has(status)) {
      const message = refusal?.message || `the server closed the stream (${e.code})`;
      stream._lost(wasOpen, new JobcastError(message, status, refusal?.body ?? null)); // J4
    } else {
      stream._lost(wasOpen, refusal);
    }
  };
  return {
    close() {
      live = false;
      socket.close();
    },
  };
}

/**
 * Follow one job until it finishes. `onJob(job, event)` gets the job as it is now after every
 * event (snapshots replace it, progress updates merge into it); `onDone(job)` the final job.
 * @param {string} id
 * @param {JobHandlers} handlers
 * @param {ClientOptions} [options]
 * @returns {Stream}
 */
export function watchJob(id, handlers = {}, options = {}) {
  const path = encodeURIComponent(id);
  let job = null;
  const wrapped = {
    ...handlers,
    onEvent(event) {
      if (event.type === "progress") job = { ...job, ...event.data };
      else if (event.type === "metadata") job = foldMetadata(job, event.data);
      else if (JOB_EVENT_TYPES.includes(event.type)) job = event.data;
      handlers.onEvent?.(event);
      if (job) handlers.onJob?.(job, event);
      if (TERMINAL.has(event.type)) handlers.onDone?.(job);
    },
    async onReset(data, event) {
      handlers.onReset?.(data, event);
      try {
        job = await getJob(id, options); // the history has a gap: reload the snapshot
        handlers.onJob?.(job, event);
        if (TERMINAL.has(job.state)) handlers.onDone?.(job);
      } catch (error) {
        handlers.onError?.(error);
      }
    },
  };
  return new Stream(
    {
      ssePath: `/api/jobs/${path}/events`,
      wsPath: `/ws/jobs/${path}`,
      topics: [`jobs/${id}`],
      types: JOB_EVENT_TYPES,
      final: (event) => TERMINAL.has(event.type),
    },
    wrapped,
    options,
  );
}

/** A job after one of its `metadata` events: changed keys set, removed ones dropped. */
export function foldMetadata(job, data) {
  const metadata = { ...(job?.metadata || {}), ...(data.metadata || {}) };
  for (const key of data.removed || []) delete metadata[key];
  return { ...job, metadata, seq: data.seq, updated_at: data.updated_at };
}

/**
 * A live job list: every job that matches `filter` (`{tag, kind, state}`; arrays: every tag,
 * any state), kept in a `Map` by id. `onJobs(jobs, event)` after every change, `onJob(job)`
 * for each snapshot, `onRemove(id, reason)` when one leaves, `onSynced(count)` once the
 * current jobs were sent (after every reconnect too: jobs not sent again are removed).
 * @param {JobFilter} filter
 * @param {JobListHandlers} handlers
 * @param {ClientOptions} [options] any transport ("ws": `/ws/jobs`)
 * @returns {Stream & {jobs: Map<string, any>}}
 */
export function watchJobs(filter = {}, handlers = {}, options = {}) {
  const jobs = new Map();
  let fresh = null; // the ids sent since this connection opened, until `synced`
  const query = [];
  for (const key of ["tag", "kind", "state"]) {
    for (const value of [].concat(filter[key] ?? [])) query.push([key, value]);
  }
  const remove = (id, reason) => {
    if (jobs.delete(id)) handlers.onRemove?.(id, reason);
  };
  const wrapped = {
    ...handlers,
    onOpen() {
      fresh = new Set();
      handlers.onOpen?.();
    },
    onEvent(event) {
      handlers.onEvent?.(event);
      if (event.type === "snapshot") {
        jobs.set(event.data.id, event.data);
        fresh?.add(event.data.id);
        handlers.onJob?.(event.data, event);
      } else if (event.type === "removed") {
        remove(event.data.id, event.data.reason);
      } else if (event.type === "synced") {
        if (fresh) for (const id of [...jobs.keys()]) if (!fresh.has(id)) remove(id, "gone");
        fresh = null;
        handlers.onSynced?.(event.data.count);
      } else return;
      handlers.onJobs?.(jobs, event);
    },
  };
  const stream = new Stream(
    {
      ssePath: "/api/jobs/live",
      wsPath: "/ws/jobs",
      topics: ["jobs/*"],
      query,
      types: LIST_EVENT_TYPES,
    },
    wrapped,
    options,
  );
  stream.jobs = jobs;
  return stream;
}

/**
 * Follow topics (and `prefix/*` patterns) forever. With the default EventSource transport,
 * name the custom event types to receive in `options.types`; the job types are always
 * included. The `fetch` and `ws` transports deliver every type.
 * @param {string[]} topics
 * @param {StreamHandlers} handlers
 * @param {ClientOptions} [options]
 * @returns {Stream}
 */
export function subscribe(topics, handlers = {}, options = {}) {
  return new Stream(
    {
      ssePath: "/api/events",
      wsPath: "/ws/events",
      wsSubscribe: topics,
      query: topics.map((topic) => ["topic", topic]),
      topics,
      types: JOB_EVENT_TYPES,
    },
    handlers,
    options,
  );
}

/**
 * Read a job's output stream (`ctx.stream` in its handler) live, over the Durable Streams
 * protocol: `onText(text)` for text streams, `onMessage(value)` for `application/json`,
 * `onBytes(Uint8Array)` otherwise, then `onDone()` once it closed. A dropped connection
 * resumes at the exact byte (`Stream-Next-Offset`); a stream the job has not opened yet is
 * waited for. `offset` (a getter) is where the read stands: pass it back as `options.offset`.
 * HTTP long-polls by default; `options.transport: "ws"` reads `/ws/stream/...` instead (J6),
 * with the same handlers, offsets and resume.
 * @param {string} jobId
 * @param {string} [name] default "output"
 * @param {OutputHandlers} [handlers]
 * @param {ClientOptions & {offset?: string}} [options]
 * @returns {{close(): void, readonly offset: string}}
 */
export function readStream(jobId, name = "output", handlers = {}, options = {}) {
  const path = `jobs/${encodeURIComponent(jobId)}/${encodeURIComponent(name)}`;
  const state = { offset: options.offset || "-1", open: false, stopped: false };
  const read = options.transport === "ws" ? readOverSocket : readOverHttp;
  const stop = read(jobId, path, handlers, options, state);
  return {
    close() {
      state.stopped = true;
      stop();
    },
    get offset() {
      return state.offset;
    },
  };
}

/** Wait before the next attempt of an output read (J2). */
function outputPause(failures, options) {
  return new Promise((done) => setTimeout(done, backoffDelay(failures, options.backoff, options.random)));
}

/**
 * Whether the job ended (so a stream it has not opened never will be). Throws the
 * JobcastError of a job that cannot be read (404: none, or not yours) (J4).
 */
async function jobEnded(jobId, options) {
  try {
    return TERMINAL.has((await getJob(jobId, options)).state);
  } catch (error) {
    if (error instanceof JobcastError && error.fatal) throw error;
    return false; // offline, or the server restarting: ask again after the next attempt
  }
}

function readOverHttp(jobId, path, handlers, options, state) {
  const doFetch = options.fetch || globalThis.fetch.bind(globalThis);
  const controller = new AbortController();
  const text = new TextDecoder();
  (async () => {
    let failures = 0;
    while (!state.stopped) {
      let response;
      try {
        const query = `offset=${encodeURIComponent(state.offset)}&live=long-poll`;
        response = await doFetch(absolute(`/v1/stream/${path}?${query}`, options), {
          headers: await authHeaders(options, "GET"),
          signal: controller.signal,
          credentials: options.withCredentials ? "include" : "same-origin",
        });
      } catch (error) {
        if (state.stopped) return;
        await outputPause(++failures, options); // offline, or the server restarting
        continue;
      }
      if (response.status === 404 && !state.open) {
        if (await jobEnded(jobId, options)) return handlers.onDone?.(); // it wrote nothing
        await outputPause(Math.min(++failures, 4), options); // not opened yet: queued or starting
        continue;
      }
      if (response.status >= 500) {
        await outputPause(++failures, options);
        continue;
      }
      if (!response.ok) return handlers.onError?.(errorFrom(response.status, await response.text()));
      failures = 0;
      state.open = true;
      state.offset = response.headers.get("Stream-Next-Offset") || state.offset;
      const closed = response.headers.get("Stream-Closed") === "true";
      if (response.status === 200) {
        const type = (response.headers.get("Content-Type") || "").split(";")[0].trim().toLowerCase();
        const body = new Uint8Array(await response.arrayBuffer());
        if (type === "application/json") {
          for (const message of JSON.parse(text.decode(body))) handlers.onMessage?.(message);
        } else if (type.startsWith("text/")) {
          const piece = text.decode(body, { stream: !closed }); // a character may span answers
          if (piece) handlers.onText?.(piece);
        } else if (body.length) {
          handlers.onBytes?.(body);
        }
      }
      if (closed) {
        state.stopped = true;
        return handlers.onDone?.();
      }
    }
  })().catch((error) => handlers.onError?.(error));
  return () => controller.abort();
}

/**
 * J6. Over a WebSocket every `{"op": "data"}` message carries the offset where the next one
 * starts, so a socket that ends for any reason but a refusal (1012: the server restarts or
 * the read reached its lifetime; a network fault) is reopened at that offset after a backoff,
 * with a fresh ticket (J3): nothing is missed, nothing repeated. A close `4000 + status` is
 * that HTTP status, as over HTTP: 4404 before the stream was seen means not opened yet,
 * anything else ends the read with `onError` (4410: the offset's data is no longer kept).
 * The socket does not name the content type; the data's shape does (text, a list of
 * messages, base64 with `"encoding": "base64"`).
 */
function readOverSocket(jobId, path, handlers, options, state) {
  const WS = options.WebSocket || globalThis.WebSocket;
  let socket = null;
  let failures = 0;
  const fail = (error) => {
    state.stopped = true;
    handlers.onError?.(error);
  };
  const retry = async (wait) => {
    await outputPause(wait, options);
    connect();
  };
  const connect = async () => {
    if (state.stopped) return;
    const query = new URLSearchParams({ offset: state.offset });
    try {
      const token = await resolve(options.token);
      if (token) {
        const { ticket } = await api("/api/auth/ticket", {
          ...options,
          token,
          method: "POST",
          body: { topics: [`jobs/${jobId}`] },
        }); // J3: one per connection, so the token never goes in a URL
        query.set("ticket", ticket);
      }
    } catch (error) {
      if (error instanceof JobcastError && error.fatal) return fail(error);
      return retry(++failures);
    }
    if (state.stopped) return;
    const url = new URL(absolute(`/ws/stream/${path}?${query}`, options));
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    const ws = (socket = new WS(url));
    let delivered = false;
    let refusal = null; // the {"op": "error"} sent before a close with a code
    ws.onmessage = (event) => {
      const m = JSON.parse(event.data);
      if (m.op === "error") refusal = m;
      if (state.stopped || (m.op !== "data" && m.op !== "closed")) return; // "ping"
      delivered = state.open = true;
      state.offset = m.offset || state.offset;
      if (Array.isArray(m.data)) {
        for (const message of m.data) handlers.onMessage?.(message);
      } else if (m.encoding === "base64") {
        handlers.onBytes?.(Uint8Array.from(atob(m.data), (c) => c.charCodeAt(0)));
      } else if (m.data) {
        handlers.onText?.(m.data);
      }
      if (m.op === "closed") {
        state.stopped = true;
        ws.close();
        handlers.onDone?.();
      }
    };
    ws.onclose = async (event) => {
      if (socket === ws) socket = null;
      if (state.stopped) return;
      const status = event.code >= 4000 && event.code < 5000 ? event.code - 4000 : 0;
      if (status === 404 && !state.open) {
        let ended = false;
        try {
          ended = await jobEnded(jobId, options);
        } catch (error) {
          return fail(error); // no such job, or not ours
        }
        if (ended) {
          state.stopped = true;
          return handlers.onDone?.(); // it wrote nothing
        }
        return retry(Math.min(++failures, 4)); // not opened yet: queued or starting
      }
      if (status) {
        const message = refusal?.message || `the server closed the stream (${event.code})`;
        return fail(new JobcastError(message, status, refusal));
      }
      failures = delivered ? 0 : failures + 1;
      return retry(failures);
    };
  };
  connect();
  return () => socket?.close();
}

/** Bind options once: `const jc = createClient({token}); jc.watchJob(id, {...})`. */
export function createClient(defaults = {}) {
  const merge = (options) => ({ ...defaults, ...options });
  return {
    api: (path, options) => api(path, merge(options)),
    getJob: (id, options) => getJob(id, merge(options)),
    listJobs: (query, options) => listJobs(query, merge(options)),
    cancelJob: (id, options) => cancelJob(id, merge(options)),
    rerunJob: (id, options) => rerunJob(id, merge(options)),
    submitJob: (kind, params, options) => submitJob(kind, params, merge(options)),
    watchJob: (id, handlers, options) => watchJob(id, handlers, merge(options)),
    watchJobs: (filter, handlers, options) => watchJobs(filter, handlers, merge(options)),
    giveInput: (id, name, value, options) => giveInput(id, name, value, merge(options)),
    shareJob: (id, subject, options) => shareJob(id, subject, merge(options)),
    unshareJob: (id, subject, options) => unshareJob(id, subject, merge(options)),
    submitBatch: (jobs, options) => submitBatch(jobs, merge(options)),
    subscribe: (topics, handlers, options) => subscribe(topics, handlers, merge(options)),
    readStream: (jobId, name, handlers, options) =>
      readStream(jobId, name, handlers, merge(options)),
  };
}

/**
 * @typedef {object} ClientOptions
 * @property {string} [baseUrl] the server, e.g. "https://jobs.example.com", with the path jobcast
 *   is mounted at if any ("https://app.example.com/jobcast"; default: this page's origin)
 * @property {string | (() => string | null | Promise<string | null>)} [token] a bearer token or
 *   a function returning a current one; streams exchange it for a ticket per connection
 * @property {string | (() => string | null)} [csrfToken] for cookie sessions: sent on POST/DELETE
 * @property {boolean} [withCredentials] send cookies cross-origin
 * @property {"sse" | "fetch" | "ws"} [transport] default "sse" (EventSource); `readStream`
 *   reads over HTTP (long-polls) unless it is "ws"
 * @property {string[]} [types] extra event types for the EventSource transport
 * @property {string} [lastEventId] resume after this id
 * @property {{initialMs?: number, maxMs?: number, factor?: number}} [backoff] J2
 * @property {() => number} [random] for tests
 * @property {typeof EventSource} [EventSource]
 * @property {typeof WebSocket} [WebSocket]
 * @property {typeof fetch} [fetch]
 *
 * @typedef {object} StreamEvent
 * @property {string | null} id
 * @property {string} type
 * @property {any} data the JSON-decoded data (the text when it is not JSON)
 * @property {string} raw
 * @property {string} [topic] WebSocket transport only
 *
 * @typedef {object} StreamHandlers
 * @property {(event: StreamEvent) => void} [onEvent]
 * @property {() => void} [onOpen]
 * @property {(state: string) => void} [onConnection]
 * @property {(data: any, event: StreamEvent) => void} [onReset]
 * @property {(data: any, event: StreamEvent) => void} [onReauth]
 * @property {(error: Error) => void} [onError]
 * @property {(text: string) => void} [onFrame] fetch transport: each raw frame
 *
 * @typedef {StreamHandlers & {onJob?: (job: any, event: StreamEvent) => void,
 *   onDone?: (job: any) => void}} JobHandlers
 *
 * @typedef {object} OutputHandlers
 * @property {(text: string) => void} [onText]
 * @property {(message: any) => void} [onMessage]
 * @property {(bytes: Uint8Array) => void} [onBytes]
 * @property {() => void} [onDone]
 * @property {(error: Error) => void} [onError]
 *
 * @typedef {{loaded: number, total: number, fraction: number}} UploadProgress
 *
 * @typedef {object} SubmitOptions
 * @property {string} [idempotencyKey] a retried submission with this key returns the first job
 * @property {number} [delaySeconds] start no sooner than this many seconds from now
 * @property {Date | string} [runAt] or at this time
 * @property {number} [priority] -100..100, higher runs first among queued jobs
 * @property {number} [maxAttempts] runs the job may have in all
 * @property {string[]} [tags] up to 10 short labels (filters, live lists)
 * @property {object} [metadata] the job's initial metadata
 *
 * @typedef {object} JobFilter
 * @property {string | string[]} [tag] every one must match
 * @property {string} [kind]
 * @property {string | string[]} [state] any one matches
 *
 * @typedef {StreamHandlers & {onJobs?: (jobs: Map<string, any>, event: StreamEvent) => void,
 *   onJob?: (job: any, event: StreamEvent) => void,
 *   onRemove?: (id: string, reason: string) => void,
 *   onSynced?: (count: number) => void}} JobListHandlers
 *
 * @typedef {object} StreamTarget
 * @property {string} ssePath
 * @property {string} wsPath
 * @property {string[]} topics
 * @property {string[][]} [query]
 * @property {string[]} [types]
 * @property {string[]} [wsSubscribe]
 * @property {(event: StreamEvent) => boolean} [final]
 */

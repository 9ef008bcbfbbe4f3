// Types for jobcast.js, the browser client (served at /static/jobcast.js).

export declare const State: Readonly<{
  CONNECTING: "connecting";
  OPEN: "open";
  RECONNECTING: "reconnecting";
  CLOSED: "closed";
}>;
export type ConnectionState = (typeof State)[keyof typeof State];

export declare const JOB_EVENT_TYPES: string[];
/** The event types of a live job list: "snapshot", "synced", "removed". */
export declare const LIST_EVENT_TYPES: string[];

export type JobState = "queued" | "running" | "succeeded" | "failed" | "cancelled";

export interface Job {
  id: string;
  kind: string;
  state: JobState;
  progress: number;
  stage: string | null;
  message: string | null;
  eta_seconds: number | null;
  seq: number;
  owner: string;
  params: Record<string, unknown>;
  created_at: string;
  started_at: string | null;
  updated_at: string;
  finished_at: string | null;
  input: { filename: string; size: number; sha256: string; content_type: string } | null;
  result: unknown;
  error: { type: string; message: string } | null;
  attempts: number;
  /** Runs the job may have in all (retries included). */
  max_attempts: number;
  /** While a retry waits: when the next attempt starts, and the failed attempt's error. */
  next_attempt_at: string | null;
  last_error: { type: string; message: string } | null;
  /** A delayed job's start time. */
  scheduled_for: string | null;
  priority: number;
  /** The job this one re-runs. */
  rerun_of: string | null;
  readers: string[];
  /** What the handler reports beyond progress (`ctx.metadata`). */
  metadata: Record<string, unknown>;
  tags: string[];
  /** The input the job waits for, while it waits. */
  waiting: InputRequest | null;
  /** The inputs given so far, by name. */
  inputs: Record<string, unknown>;
  /** The batch this job belongs to. */
  parent_id: string | null;
  links?: { self: string; events: string; ws: string; cancel: string };
}

export interface InputRequest {
  name: string;
  /** The JSON schema the value must satisfy (`{}`: any JSON value). */
  schema: Record<string, unknown>;
  prompt: string | null;
  /** Epoch seconds. */
  timeout_at: number;
}

/** Which jobs a live list shows: every tag, the kind, any of the states. */
export interface JobFilter {
  tag?: string | string[];
  kind?: string;
  state?: JobState | JobState[];
}

export interface Backoff {
  initialMs?: number;
  maxMs?: number;
  factor?: number;
}

export interface ClientOptions {
  /** The server, with the path jobcast is mounted at if any ("https://app.example.com/jobcast");
   * default: this page's origin. */
  baseUrl?: string;
  token?: string | null | (() => string | null | Promise<string | null>);
  csrfToken?: string | null | (() => string | null);
  withCredentials?: boolean;
  transport?: "sse" | "fetch" | "ws";
  types?: string[];
  lastEventId?: string;
  backoff?: Backoff;
  random?: () => number;
  EventSource?: typeof EventSource;
  WebSocket?: typeof WebSocket;
  fetch?: typeof fetch;
}

export interface StreamEvent<T = any> {
  id: string | null;
  type: string;
  data: T;
  raw: string;
  topic?: string;
  ts?: number;
}

export interface StreamHandlers {
  onEvent?(event: StreamEvent): void;
  onOpen?(): void;
  onConnection?(state: ConnectionState): void;
  onReset?(data: { reason: string; last_event_id: string | null }, event: StreamEvent): void;
  onReauth?(data: { reason: string }, event: StreamEvent): void;
  onError?(error: Error | JobcastError): void;
  onFrame?(text: string): void;
}

export interface JobHandlers extends StreamHandlers {
  onJob?(job: Job, event: StreamEvent): void;
  onDone?(job: Job): void;
}

export interface JobListHandlers extends StreamHandlers {
  /** After every change: the jobs the list shows now, by id. */
  onJobs?(jobs: Map<string, Job>, event: StreamEvent): void;
  onJob?(job: Job, event: StreamEvent): void;
  /** reason: "filter" (it left the filter), "access" (unshared), "gone" (not re-sent). */
  onRemove?(id: string, reason: string): void;
  /** The current jobs were sent (after every reconnect too). */
  onSynced?(count: number): void;
}

export interface SubmitOptions {
  /** A retried submission with this key returns the first job (200) instead of a new one. */
  idempotencyKey?: string;
  delaySeconds?: number;
  runAt?: Date | string;
  /** -100..100; higher runs first among queued jobs. */
  priority?: number;
  maxAttempts?: number;
  /** Up to 10 short labels (letters, digits, ":._/@=+-"). */
  tags?: string[];
  /** The job's initial metadata. */
  metadata?: Record<string, unknown>;
}

export interface UploadProgress {
  loaded: number;
  total: number;
  fraction: number;
}

export declare class JobcastError extends Error {
  status: number;
  body: { error?: string; message?: string } | null;
  fatal: boolean;
}

export declare class Stream extends EventTarget {
  readonly state: ConnectionState;
  readonly lastEventId: string | null;
  readonly attempt: number;
  readonly connections: number;
  close(): void;
}

export declare function backoffDelay(attempt: number, backoff?: Backoff, random?: () => number): number;
export declare function sseParser(): (chunk: string) => Array<{
  type: string;
  id: string | null;
  data: string[];
  retry: number | null;
  comments: string[];
  lines: string[];
}>;
export declare function api<T = any>(
  path: string,
  options?: ClientOptions & { method?: string; body?: unknown },
): Promise<T>;
export declare function getJob(id: string, options?: ClientOptions): Promise<Job>;
export declare function cancelJob(id: string, options?: ClientOptions): Promise<Job>;
export declare function rerunJob(id: string, options?: ClientOptions): Promise<Job>;
export declare function listJobs(
  query?: {
    state?: JobState | JobState[];
    kind?: string;
    tag?: string | string[];
    parent?: string;
    limit?: number;
    cursor?: string;
  },
  options?: ClientOptions,
): Promise<{ jobs: Job[]; next_cursor: string | null }>;
export declare function submitJob(
  kind: string,
  params?: Record<string, unknown>,
  options?: ClientOptions &
    SubmitOptions & { file?: Blob; onUploadProgress?(progress: UploadProgress): void },
): Promise<Job>;
export declare function watchJob(id: string, handlers?: JobHandlers, options?: ClientOptions): Stream;
export declare function watchJobs(
  filter?: JobFilter,
  handlers?: JobListHandlers,
  options?: ClientOptions,
): Stream & { readonly jobs: Map<string, Job> };
export interface BatchItem {
  kind: string;
  params?: Record<string, unknown>;
  tags?: string[];
  metadata?: Record<string, unknown>;
  priority?: number;
  delay_seconds?: number;
  max_attempts?: number;
}
export declare function submitBatch(
  jobs: BatchItem[],
  options?: ClientOptions & {
    tags?: string[];
    metadata?: Record<string, unknown>;
    allowFailures?: boolean;
  },
): Promise<Job & { jobs: Job[] }>;
export declare function giveInput(
  id: string,
  name: string,
  value: unknown,
  options?: ClientOptions,
): Promise<Job>;
export declare function shareJob(
  id: string,
  subject: string,
  options?: ClientOptions & { input?: boolean },
): Promise<Job>;
export declare function unshareJob(
  id: string,
  subject: string,
  options?: ClientOptions,
): Promise<Job>;
export declare function foldMetadata(
  job: Job,
  data: { metadata: Record<string, unknown>; removed: string[]; seq: number; updated_at: string },
): Job;
export interface OutputHandlers {
  onText?(text: string): void;
  onMessage?(message: any): void;
  onBytes?(bytes: Uint8Array): void;
  onDone?(): void;
  onError?(error: Error): void;
}
export interface OutputRead {
  close(): void;
  /** Where the read stands: pass it back as `options.offset` to resume there. */
  readonly offset: string;
}
export interface OutputOptions extends ClientOptions {
  /** Where to start: "-1" (the beginning, the default) or a saved `OutputRead.offset`. */
  offset?: string;
  /** "ws": read over a WebSocket (`/ws/stream/...`); otherwise HTTP long-polls. Either way
   * the same handlers, offsets and resume. */
  transport?: "sse" | "fetch" | "ws";
}
export declare function readStream(
  jobId: string,
  name?: string,
  handlers?: OutputHandlers,
  options?: OutputOptions,
): OutputRead;
export declare function subscribe(
  topics: string[],
  handlers?: StreamHandlers,
  options?: ClientOptions,
): Stream;
export declare function createClient(defaults?: ClientOptions): {
  api: typeof api;
  getJob: typeof getJob;
  listJobs: typeof listJobs;
  cancelJob: typeof cancelJob;
  rerunJob: typeof rerunJob;
  submitJob: typeof submitJob;
  watchJob: typeof watchJob;
  watchJobs: typeof watchJobs;
  giveInput: typeof giveInput;
  shareJob: typeof shareJob;
  unshareJob: typeof unshareJob;
  submitBatch: typeof submitBatch;
  readStream: typeof readStream;
  subscribe: typeof subscribe;
};

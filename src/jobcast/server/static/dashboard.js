// The jobcast dashboard: plain DOM code over the client module, no framework, no build step.
import {
  State,
  api,
  cancelJob,
  giveInput,
  listJobs,
  readStream,
  rerunJob,
  submitJob,
  subscribe,
  watchJob,
  watchJobs,
} from "./jobcast.js";
import { renderInputForm } from "./input_form.js";

const $ = (id) => document.getElementById(id);
const store = window.sessionStorage;
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const BACKOFF = { initialMs: 500, maxMs: 5000 };

/** Client options for the signed-in user: a bearer token, or a cookie session + CSRF token. */
const auth = {
  // The dashboard is served at jobcast's mount point ("/", or the prefix an app installed it at).
  baseUrl: new URL(".", window.location.href).toString(),
  token: () => store.getItem("jobcast.token"),
  csrfToken: () => store.getItem("jobcast.csrf"),
  backoff: BACKOFF,
};
const signedIn = () => Boolean(auth.token() || auth.csrfToken());

const jobs = new Map(); // id -> latest snapshot
const fetching = new Set(); // ids of unknown jobs whose snapshot is being fetched
let jobsStream = null;
let jobStream = null;
let inspectStream = null;

// -- connection indicator: the hub stream's state, which the job page shares --------------

function showConnection(state) {
  const el = $("connection");
  el.dataset.state = state;
  $("connection-text").textContent = state === State.CLOSED ? "offline" : state;
}

// -- formatting -----------------------------------------------------------------------------

function duration(seconds) {
  if (seconds == null) return "—";
  if (seconds < 60) return `${Math.round(seconds)} s`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}
const age = (iso) => duration((Date.now() - Date.parse(iso)) / 1000);
const percent = (job) => `${Math.floor(job.progress ?? 0)}%`;

function badge(state) {
  const span = document.createElement("span");
  span.className = `badge ${state}`;
  span.textContent = state;
  return span;
}

// -- jobs table: rows are updated in place --------------------------------------------------

/** Merge an update; snapshots and progress carry `seq`, so stale updates are ignored. */
function mergeJob(update, full) {
  const known = jobs.get(update.id);
  if (!known && !full) {
    // A progress update of a job not seen yet: fetch it once, however many updates arrive.
    if (fetching.has(update.id)) return;
    fetching.add(update.id);
    api(`/api/jobs/${encodeURIComponent(update.id)}`, auth)
      .then((job) => mergeJob(job, true), () => {})
      .finally(() => fetching.delete(update.id));
    return;
  }
  if (known && update.seq < known.seq) return;
  const job = full ? update : { ...known, ...update };
  jobs.set(job.id, job);
  renderRow(job);
}

function cell(row, name) {
  let td = row.querySelector(`td.${name}`);
  if (!td) {
    td = document.createElement("td");
    td.className = name;
    row.append(td);
  }
  return td;
}

function renderRow(job) {
  const body = $("jobs-body");
  let row = body.querySelector(`tr[data-job-id="${CSS.escape(job.id)}"]`);
  if (!row) {
    row = document.createElement("tr");
    row.dataset.jobId = job.id;
    const link = document.createElement("a");
    link.href = `#/jobs/${job.id}`;
    link.textContent = job.id.slice(-8);
    link.title = job.id;
    cell(row, "id").append(link);
    cell(row, "kind").textContent = job.kind;
    for (const name of ["state", "progress", "stage", "eta", "age"]) cell(row, name);
    const bar = document.createElement("progress");
    bar.max = 100;
    bar.setAttribute("aria-label", `Progress of job ${job.id.slice(-8)}`);
    const text = document.createElement("span");
    text.className = "progress-text";
    cell(row, "progress").append(bar, " ", text);
    // Newest first: ids sort by creation time.
    const after = [...body.rows].find((r) => r.dataset.jobId < job.id);
    body.insertBefore(row, after || null);
  }
  row.dataset.state = job.state;
  cell(row, "state").replaceChildren(badge(job.state));
  row.querySelector("progress").value = job.progress ?? 0;
  row.querySelector(".progress-text").textContent = percent(job);
  cell(row, "stage").textContent = job.stage || "";
  cell(row, "eta").textContent = TERMINAL.has(job.state) ? "—" : duration(job.eta_seconds);
  cell(row, "age").textContent = age(job.created_at);
  $("jobs-empty").hidden = true;
}

/** The filter box: words are tags (all must match); `kind:NAME` and `state:NAME` too. */
function parseFilter(text) {
  const filter = { tag: [], state: [] };
  for (const word of text.split(/\s+/).filter(Boolean)) {
    if (word.startsWith("kind:")) filter.kind = word.slice("kind:".length);
    else if (word.startsWith("state:")) filter.state.push(word.slice("state:".length));
    else filter.tag.push(word);
  }
  return filter;
}

function removeRow(id) {
  jobs.delete(id);
  $("jobs-body").querySelector(`tr[data-job-id="${CSS.escape(id)}"]`)?.remove();
  $("jobs-empty").hidden = jobs.size > 0;
}

function startJobsStream() {
  // A live job list (GET /api/jobs/live): the matching jobs, then their changes; the server
  // lets through only the jobs this user may see.
  jobsStream?.close();
  jobs.clear();
  $("jobs-body").replaceChildren();
  $("jobs-empty").hidden = false;
  $("filter-error").textContent = "";
  jobsStream = watchJobs(
    parseFilter($("filter").value),
    {
      onConnection: showConnection,
      onJob: (job) => mergeJob(job, true),
      onRemove: (id) => removeRow(id),
      onError: (error) => {
        if (error.status === 401) signOut("Your token was refused; sign in again.");
        else if (error.status === 422) $("filter-error").textContent = error.message;
      },
    },
    auth,
  );
}

// -- submit -----------------------------------------------------------------------------------

async function onSubmit(event) {
  event.preventDefault();
  const status = $("submit-status");
  let params;
  try {
    params = JSON.parse($("params").value || "{}");
  } catch (error) {
    status.textContent = `Parameters are not valid JSON: ${error.message}`;
    status.className = "error";
    return;
  }
  const file = $("file").files[0];
  $("upload").hidden = !file;
  const onUploadProgress = ({ fraction }) => {
    $("upload-progress").value = Math.round(fraction * 100);
    $("upload-text").textContent = `${Math.round(fraction * 100)}%`;
  };
  status.className = "";
  status.textContent = file ? "Uploading…" : "Submitting…";
  try {
    const job = await submitJob($("kind").value.trim(), params, { ...auth, file, onUploadProgress });
    mergeJob(job, true);
    status.textContent = "";
    const link = document.createElement("a");
    link.href = `#/jobs/${job.id}`;
    link.textContent = job.id;
    status.append("Submitted job ", link);
  } catch (error) {
    status.className = "error";
    status.textContent = `Not submitted: ${error.message}`;
  }
}

// -- job page ---------------------------------------------------------------------------------

function renderJob(job) {
  $("job-title").textContent = `Job ${job.id}`;
  const facts = $("job-facts");
  facts.replaceChildren();
  const rows = [
    ["Kind", job.kind],
    ["State", badge(job.state)],
    ["Stage", job.stage || "—"],
    ["Message", job.message || "—"],
    ["ETA", TERMINAL.has(job.state) ? "—" : duration(job.eta_seconds)],
    ["Attempts", job.max_attempts ? `${job.attempts} of ${job.max_attempts}` : `${job.attempts}`],
    ["Next attempt", job.next_attempt_at || "—"],
    ["Last error", job.last_error ? `${job.last_error.type}: ${job.last_error.message}` : "—"],
    ["Scheduled for", job.scheduled_for || "—"],
    ["Priority", `${job.priority ?? 0}`],
    ["Re-run of", job.rerun_of || "—"],
    ["Created", job.created_at],
    ["Finished", job.finished_at || "—"],
    ["Input", job.input ? `${job.input.filename} (${job.input.size} bytes)` : "—"],
  ];
  for (const [name, value] of rows) {
    const dt = document.createElement("dt");
    dt.textContent = name;
    const dd = document.createElement("dd");
    dd.append(value ?? "—");
    facts.append(dt, dd);
  }
  renderWaiting(job);
  renderChildren(job);
  $("job-progress").value = job.progress ?? 0;
  $("job-progress-text").textContent = percent(job);
  $("job-cancel").hidden = TERMINAL.has(job.state) || !job.state;
  $("job-rerun").hidden = !TERMINAL.has(job.state);
  const result = $("job-result");
  result.className = job.state === "failed" ? "failed" : "";
  if (job.error) result.textContent = `${job.error.type}: ${job.error.message}`;
  else if (job.state === "succeeded") result.textContent = JSON.stringify(job.result, null, 2);
  else result.textContent = "—";
}

let shownRequest = null; // the job and input the form is for: re-rendered only when it changes

function renderWaiting(job) {
  const box = $("job-input");
  const key = job.waiting ? `${job.id} ${job.waiting.name} ${job.waiting.timeout_at}` : null;
  if (key === shownRequest) return;
  shownRequest = key;
  box.hidden = !job.waiting;
  if (!job.waiting) {
    box.replaceChildren();
    return;
  }
  renderInputForm(box, job.waiting, (value) => giveInput(job.id, job.waiting.name, value, auth));
}

let childrenSeq = null; // the batch event the children list was loaded for

/** Whether a job has jobs of its own: a batch, or a job whose handler spawned some (its
 * metadata counts them under `children`). */
function hasChildren(job) {
  if (job.kind === "batch") return true;
  const counts = (job.metadata || {}).children;
  return typeof counts === "object" && counts !== null && counts.total > 0;
}

/** A batch's page lists its jobs, reloaded whenever the batch moves on (one of them ended). */
async function renderChildren(job) {
  const box = $("job-children");
  box.hidden = !hasChildren(job);
  if (box.hidden || childrenSeq === `${job.id} ${job.seq}`) return;
  childrenSeq = `${job.id} ${job.seq}`;
  try {
    const page = await listJobs({ parent: job.id, limit: 200 }, auth);
    const list = document.createElement("ul");
    for (const child of page.jobs) {
      const item = document.createElement("li");
      const link = document.createElement("a");
      link.href = `#/jobs/${child.id}`;
      link.textContent = `${child.id.slice(-8)} ${child.kind}`;
      item.append(link, " ", badge(child.state));
      list.append(item);
    }
    $("job-children-list").replaceChildren(list);
  } catch (error) {
    logLine(`jobs of the batch: ${error.message}`);
  }
}

function logLine(text) {
  const li = document.createElement("li");
  li.textContent = text;
  $("job-log").append(li);
}

function openJob(id) {
  $("job-log").replaceChildren();
  $("job-result").textContent = "—";
  $("job-title").textContent = `Job ${id}`;
  $("job-cancel").dataset.jobId = id;
  $("job-rerun").dataset.jobId = id;
  $("job-output").textContent = "—";
  // The job's output stream (ctx.stream("output")), live as the job writes it.
  const output = readStream(
    id,
    "output",
    {
      onText: (text) => {
        const pre = $("job-output");
        if (pre.textContent === "—") pre.textContent = "";
        pre.append(text);
      },
      onMessage: (message) => {
        const pre = $("job-output");
        if (pre.textContent === "—") pre.textContent = "";
        pre.append(`${JSON.stringify(message)}\n`);
      },
    },
    auth,
  );
  const events = watchJob(
    id,
    {
      onEvent: (e) => {
        const d = e.data || {};
        let detail = e.type === "progress" ? `${percent(d)} ${d.stage || ""}` : d.state || "";
        if (e.type === "retrying") {
          const error = d.last_error ? `${d.last_error.type}: ${d.last_error.message}` : "";
          detail = `attempt ${d.attempts} of ${d.max_attempts} failed (${error}); next at ${d.next_attempt_at}`;
        }
        logLine(`${new Date().toLocaleTimeString()}  ${e.type}  ${detail}`.trim());
      },
      onJob: (job) => {
        renderJob(job);
        mergeJob(job, true);
      },
      onReset: () => logLine("reset: the history had a gap; reloaded the job"),
      onError: (error) => {
        if (error.fatal) logLine(`error: ${error.message}`);
      },
    },
    auth,
  );
  jobStream = {
    close() {
      events.close();
      output.close();
    },
  };
}

// -- stream inspector ---------------------------------------------------------------------

function startInspector(event) {
  event.preventDefault();
  stopInspector();
  const topics = $("topics").value.split(/[\s,]+/).filter(Boolean);
  const frames = $("frames");
  const append = (text) => {
    frames.append(`${text}\n\n`);
    while (frames.childNodes.length > 500) frames.firstChild.remove(); // bounded
    frames.scrollTop = frames.scrollHeight;
  };
  inspectStream = subscribe(
    topics,
    {
      onFrame: append,
      onConnection: (state) => append(`# ${state}`),
      onError: (error) => append(`# error: ${error.message}`),
    },
    { ...auth, transport: "fetch" }, // fetch sees every frame: comments, retry, any type
  );
}

function stopInspector() {
  inspectStream?.close();
  inspectStream = null;
}

// -- sign in, routing -------------------------------------------------------------------------

function subjectOf(token) {
  try {
    const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(payload)).sub;
  } catch {
    return "?";
  }
}

async function onSignIn(event) {
  event.preventDefault();
  const token = $("token").value.trim();
  $("signin-error").textContent = "";
  try {
    if ($("use-cookie").checked) {
      const session = await api("/api/auth/session", {
        baseUrl: auth.baseUrl,
        token,
        method: "POST",
      });
      store.setItem("jobcast.csrf", session.csrf_token);
      store.setItem("jobcast.subject", session.subject);
    } else {
      await listJobs({ limit: 1 }, { baseUrl: auth.baseUrl, token }); // check it before keeping it
      store.setItem("jobcast.token", token);
      store.setItem("jobcast.subject", subjectOf(token));
    }
  } catch (error) {
    $("signin-error").textContent = `Sign-in failed: ${error.message}`;
    return;
  }
  $("token").value = "";
  start();
}

function signOut(message = "") {
  if (store.getItem("jobcast.csrf")) {
    api("/api/auth/session", { ...auth, method: "DELETE" }).catch(() => {});
  }
  for (const key of ["jobcast.token", "jobcast.csrf", "jobcast.subject"]) store.removeItem(key);
  for (const stream of [jobsStream, jobStream, inspectStream]) stream?.close();
  jobsStream = jobStream = inspectStream = null;
  jobs.clear();
  $("jobs-body").replaceChildren();
  $("signin-error").textContent = message;
  route();
}

function route(event) {
  const views = ["signin-view", "jobs-view", "job-view", "inspect-view"];
  let view = "signin-view";
  const hash = location.hash || "#/jobs";
  if (signedIn()) {
    if (hash.startsWith("#/jobs/")) view = "job-view";
    else if (hash === "#/inspect") view = "inspect-view";
    else view = "jobs-view";
  }
  for (const id of views) $(id).hidden = id !== view;
  $("nav").hidden = $("who").hidden = !signedIn();
  $("who-name").textContent = store.getItem("jobcast.subject") || "";
  for (const a of $("nav").querySelectorAll("a")) {
    const current = hash.startsWith(a.getAttribute("href"));
    if (current) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  jobStream?.close();
  jobStream = null;
  if (view === "job-view") openJob(decodeURIComponent(hash.slice("#/jobs/".length)));
  if (view !== "inspect-view") stopInspector();
  if (event) $("main").focus({ preventScroll: true }); // a new view: start reading there
}

function start() {
  if (!jobsStream) startJobsStream();
  route();
}

$("signin-form").addEventListener("submit", onSignIn);
$("filter-form").addEventListener("submit", (event) => {
  event.preventDefault();
  startJobsStream();
});
$("submit-form").addEventListener("submit", onSubmit);
$("inspect-form").addEventListener("submit", startInspector);
$("inspect-stop").addEventListener("click", stopInspector);
$("inspect-clear").addEventListener("click", () => $("frames").replaceChildren());
$("sign-out").addEventListener("click", () => signOut());
$("job-cancel").addEventListener("click", (e) =>
  cancelJob(e.target.dataset.jobId, auth).catch((error) => logLine(`cancel: ${error.message}`)),
);
$("job-rerun").addEventListener("click", (e) =>
  rerunJob(e.target.dataset.jobId, auth)
    .then((job) => {
      location.hash = `#/jobs/${encodeURIComponent(job.id)}`;
    })
    .catch((error) => logLine(`re-run: ${error.message}`)),
);
window.addEventListener("hashchange", route);
setInterval(() => {
  for (const job of jobs.values()) {
    const row = $("jobs-body").querySelector(`tr[data-job-id="${CSS.escape(job.id)}"] td.age`);
    if (row) row.textContent = age(job.created_at);
  }
}, 1000);
if (signedIn()) start();
else route();

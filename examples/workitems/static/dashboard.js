/* The work-item dashboard: the newest work items, then new ones as they arrive.
 *
 * The stream is jobcast's JavaScript client (`Stream`) on this app's own URL: it shows its
 * state (connecting, open, reconnecting, closed), reconnects with backoff and jitter, and
 * resumes after the last work item it saw, so none is missed across reconnections. Messages
 * are unnamed (`onmessage`): `{"event": "connected", "connection_id"}`, then
 * `{"event": "new_workitem", "data": {...}}`, and heartbeats.
 *
 * With a private stream (WORKITEMS_PUBLIC=false), open the page as `/#token=<token>`: the
 * client exchanges it for a one-use ticket per connection.
 */
import { Stream } from "/static/jobcast.js";

const list = document.getElementById("workitems");
const template = document.getElementById("workitem");
const connection = document.getElementById("connection");
const connectionId = document.getElementById("connection-id");
const empty = document.getElementById("empty");
const token = new URLSearchParams(location.hash.slice(1)).get("token") || undefined;
const shown = new Set();

function render(item, fresh) {
  if (shown.has(item.id)) return; // the first page and the stream may overlap
  shown.add(item.id);
  const node = template.content.firstElementChild.cloneNode(true);
  node.dataset.id = item.id;
  node.querySelector(".subject").textContent = item.subject;
  node.querySelector(".ref").textContent = item.submission_ref;
  node.querySelector(".from").textContent = item.from_email;
  const created = node.querySelector(".created");
  created.dateTime = item.created_at;
  created.textContent = new Date(item.created_at).toLocaleString();
  node.querySelector(".state").textContent = item.status;
  const fields = node.querySelector(".fields");
  for (const [name, value] of Object.entries(item.extracted_fields || {})) {
    const dt = document.createElement("dt");
    dt.textContent = name.replaceAll("_", " ");
    const dd = document.createElement("dd");
    dd.textContent = value;
    fields.append(dt, dd);
  }
  if (fresh) {
    node.classList.add("fresh");
    list.prepend(node);
  } else {
    list.append(node);
  }
  empty.hidden = true;
}

async function loadRecent() {
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  const response = await fetch("/api/workitems", { headers });
  if (!response.ok) return;
  const { workitems } = await response.json();
  for (const item of workitems) render(item, false);
}

function showState(state) {
  connection.textContent = state;
  connection.className = `badge ${state}`;
}

new Stream(
  { ssePath: "/sse/workitems", topics: ["workitems"], types: [] },
  {
    onConnection: showState,
    onEvent(event) {
      const message = event.data;
      if (message?.event === "connected") connectionId.textContent = message.connection_id;
      else if (message?.event === "new_workitem") render(message.data, true);
    },
    onReset: () => loadRecent(), // the history could not cover a gap: reload the list
  },
  { token },
);
loadRecent();

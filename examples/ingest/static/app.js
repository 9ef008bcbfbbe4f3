/* The ingest front end: upload a file (or only metadata), then follow the job live.
 *
 * Live updates come over `WS /ws/status/{job_id}?token=...`, which the server closes (1000)
 * once the job has finished. A socket that drops is reopened after an exponential backoff
 * with full jitter; after `ws_retries` failed attempts, or when WebSockets are blocked, the
 * page polls `GET /api/status/{job_id}` instead until the job has finished. "Poll Status"
 * asks once, at any time. React comes from the vendored UMD builds (no build step).
 *
 * Query parameters for development: `ws_retries` (3), `backoff_ms` (500), `poll_ms` (1000).
 */
"use strict";

(function () {
  const { useEffect, useState } = React;
  const h = React.createElement;

  const query = new URLSearchParams(location.search);
  const CONFIG = {
    wsRetries: Number(query.get("ws_retries") ?? 3),
    backoffMs: Number(query.get("backoff_ms") ?? 500),
    maxBackoffMs: 8000,
    pollMs: Number(query.get("poll_ms") ?? 1000),
  };
  const TERMINAL = new Set(["completed", "failed", "cancelled"]);

  /** Full jitter: a random delay below an exponentially growing ceiling. */
  function backoff(attempt) {
    return Math.floor(Math.random() * Math.min(CONFIG.maxBackoffMs, CONFIG.backoffMs * 2 ** attempt));
  }

  async function api(path, token, init = {}) {
    const headers = { Authorization: `Bearer ${token}`, ...(init.headers || {}) };
    const response = await fetch(path, { ...init, headers });
    const body = await response.json().catch(() => null);
    if (!response.ok) throw new Error(body?.message || `HTTP ${response.status}`);
    return body;
  }

  function startIngest(token, metadata, file) {
    if (file) {
      const form = new FormData();
      form.append("file", file, file.name);
      form.append("metadata", metadata);
      return api("/api/ingest", token, { method: "POST", body: form });
    }
    return api("/api/ingest", token, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ metadata }),
    });
  }

  /** Follow a job until it finishes: WebSocket first, polling as the fallback. */
  function followJob(jobId, token, onStatus, onMode, onError) {
    let stopped = false;
    let attempt = 0;
    let socket = null;
    let timer = null;
    const path = encodeURIComponent(jobId);

    function connect() {
      if (stopped) return;
      onMode(attempt ? "reconnecting" : "connecting");
      const url = new URL(`/ws/status/${path}`, location.href);
      url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
      url.searchParams.set("token", token);
      let last = null;
      socket = new WebSocket(url);
      socket.onopen = () => onMode("live");
      socket.onmessage = (message) => {
        const status = JSON.parse(message.data);
        if (status.op === "error") {
          onError(status.message);
          return;
        }
        attempt = 0; // the socket works: a later drop starts the backoff afresh
        last = status;
        onStatus(status);
      };
      socket.onclose = (event) => {
        socket = null;
        if (stopped) return;
        if (last && TERMINAL.has(last.status)) {
          onMode("done");
        } else if (event.code >= 4400 && event.code < 4500) {
          onMode("closed"); // 4401, 4403, 4404: trying again cannot help
        } else if (attempt < CONFIG.wsRetries) {
          onMode("reconnecting");
          timer = setTimeout(connect, backoff(attempt++));
        } else {
          poll(0);
        }
      };
    }

    async function poll(failures) {
      if (stopped) return;
      onMode("polling");
      let delay = CONFIG.pollMs;
      try {
        const status = await api(`/api/status/${path}`, token);
        onStatus(status);
        if (TERMINAL.has(status.status)) {
          onMode("done");
          return;
        }
        failures = 0;
      } catch (error) {
        onError(error.message);
        delay = Math.max(delay, backoff(failures++));
      }
      if (!stopped) timer = setTimeout(() => poll(failures), delay);
    }

    connect();
    return () => {
      stopped = true;
      clearTimeout(timer);
      if (socket) socket.close();
    };
  }

  function Field({ label, id, children }) {
    return h(React.Fragment, null, h("label", { htmlFor: id }, label), children);
  }

  function Status({ jobId, status, mode }) {
    const progress = status ? status.progress : 0;
    const rows = [
      ["Job", "job-id", jobId],
      ["Status", "status", status?.status ?? "submitted"],
      ["Stage", "stage", status?.stage ?? ""],
      ["Message", "message", status?.message ?? ""],
      ["File", "filename", status?.filename ?? "(metadata only)"],
      ["SHA-256", "sha256", status?.sha256 ?? ""],
      ["Updates", "connection", h("span", { className: `connection ${mode}` }, mode)],
    ];
    return h(
      "section",
      { "aria-label": "Ingestion status" },
      h("progress", { max: 100, value: progress, "aria-label": "Progress" }),
      h("span", { id: "progress" }, `${Math.floor(progress)}%`),
      h("dl", null, rows.flatMap(([name, id, value]) => [
        h("dt", { key: `${id}-name` }, name),
        h("dd", { key: id, id }, value),
      ])),
    );
  }

  function App() {
    const [token, setToken] = useState(() => sessionStorage.getItem("ingest-token") || "");
    const [metadata, setMetadata] = useState('{"source": "web"}');
    const [file, setFile] = useState(null);
    const [jobId, setJobId] = useState(null);
    const [status, setStatus] = useState(null);
    const [mode, setMode] = useState("idle");
    const [error, setError] = useState("");
    const [busy, setBusy] = useState(false);

    useEffect(() => sessionStorage.setItem("ingest-token", token), [token]);
    useEffect(() => {
      if (!jobId) return undefined;
      return followJob(jobId, token, setStatus, setMode, setError); // stops on a new job
    }, [jobId]);

    async function submit(event) {
      event.preventDefault();
      setBusy(true);
      setError("");
      try {
        const started = await startIngest(token, metadata, file);
        setStatus(null);
        setJobId(started.job_id);
      } catch (caught) {
        setError(caught.message);
      } finally {
        setBusy(false);
      }
    }

    async function pollOnce() {
      try {
        setStatus(await api(`/api/status/${encodeURIComponent(jobId)}`, token));
      } catch (caught) {
        setError(caught.message);
      }
    }

    return h(
      React.Fragment,
      null,
      h("h1", null, "File ingest"),
      h(
        "form",
        { onSubmit: submit },
        h(Field, { label: "API token", id: "token" },
          h("input", { id: "token", type: "password", value: token, autoComplete: "off",
            onChange: (e) => setToken(e.target.value) })),
        h(Field, { label: "Metadata (JSON)", id: "metadata" },
          h("textarea", { id: "metadata", value: metadata,
            onChange: (e) => setMetadata(e.target.value) })),
        h(Field, { label: "File (optional)", id: "file" },
          h("input", { id: "file", type: "file", onChange: (e) => setFile(e.target.files[0] || null) })),
        h("button", { type: "submit", disabled: busy || !token }, "Start Ingest"),
        h("button", { type: "button", disabled: !jobId, onClick: pollOnce }, "Poll Status"),
        error ? h("p", { className: "error", role: "alert" }, error) : null,
      ),
      jobId ? h(Status, { jobId, status, mode }) : null,
    );
  }

  ReactDOM.createRoot(document.getElementById("root")).render(h(App));
})();

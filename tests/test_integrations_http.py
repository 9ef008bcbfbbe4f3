"""Queue workers that reach jobcast only over HTTP: a real `celery worker` posting its reports
to a real jobcast server (uvicorn) with a service token, and the route's answers to bad
reports and bad credentials (``server/routes/job_reports.py``)."""

from __future__ import annotations

import asyncio
import importlib
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.jobs_support import watch
from tests.output_support import CAP, CHUNKS, all_lines, assert_task_outputs, line, read_output
from tests.scale_support import Processes, jobcast_env, processes
from tests.services import REDIS_URL, delete_prefix, needs_services, unique_prefix
from tests.support import LiveServer, eventually

pytestmark = [pytest.mark.timeout(120)]

PREFIX = unique_prefix()


@pytest.fixture
def server(make_server: Callable[..., LiveServer]) -> LiveServer:
    # The server alone has the broker and the store (memory, SQLite): workers only its API.
    return make_server(heartbeat_interval=0.5)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    with processes(tmp_path) as procs:
        yield procs
        for process in procs.started:  # nothing here is about shutting down
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)


async def report(
    client: httpx.AsyncClient, server: LiveServer, *reports: dict[str, Any], **extra: Any
) -> httpx.Response:
    return await client.post(
        f"{server.url}/api/job-reports",
        json={"reports": list(reports), **extra},
        headers=server.auth("worker", "service"),
    )


def task_job(job_id: str, **fields: Any) -> dict[str, Any]:
    return {"id": job_id, "kind": "media.transcribe", "owner": "alice", "runs_on": "celery"} | (
        fields
    )


async def progress_metric(client: httpx.AsyncClient, server: LiveServer, outcome: str) -> float:
    text = (await client.get(f"{server.url}/metrics")).text
    prefix = f'jobcast_integration_progress_reports_total{{outcome="{outcome}"'
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix)
    )


async def test_reports_need_a_service_token(server: LiveServer, client: httpx.AsyncClient) -> None:
    url = f"{server.url}/api/job-reports"
    body = {"reports": [{"type": "beat", "id": "x"}]}
    anonymous = await client.post(url, json=body)
    assert anonymous.status_code == 401 and anonymous.json()["error"] == "unauthorized"
    user = await client.post(url, json=body, headers=server.auth("alice"))
    assert user.status_code == 403 and user.json()["error"] == "forbidden"
    sweep = await client.post(f"{url}/sweep", json={"runs_on": "celery", "silent_seconds": 1})
    assert sweep.status_code == 401


async def test_a_batch_over_the_body_limit_is_refused(
    make_server: Callable[..., LiveServer], client: httpx.AsyncClient
) -> None:
    server = make_server(max_body_bytes=10_000)
    steps = [{"type": "progress", "id": "x", "progress": 1, "message": "m" * 900}] * 20
    response = await report(client, server, *steps)
    assert response.status_code == 413 and response.json()["error"] == "payload_too_large"


@pytest.mark.parametrize(
    ("bad", "where"),
    [
        ({"type": "progress", "id": "a", "progress": 150}, "reports.0.progress"),
        ({"type": "progress", "id": "a b", "progress": 5}, "reports.0.progress.id"),
        ({"type": "exploded", "id": "a"}, "reports.0"),
        ({"type": "queued", "job": task_job("a", runs_on=None)}, "reports.0.queued.job.runs_on"),
        ({"type": "failed", "id": "a", "error": {"type": "E"}}, "reports.0.failed.error.message"),
        ({"type": "beat", "id": "a", "extra": 1}, "reports.0.beat.extra"),
        ({"type": "succeeded", "id": "a", "result": 2**70}, "reports.0.succeeded.result"),
        (
            {"type": "progress", "id": "a", "progress": 5, "stage": "a\x00"},
            "reports.0.progress.stage",
        ),
        ({"type": "queued", "job": task_job("a", params={"n": -(2**64)})}, "reports.0.queued.job"),
    ],
)
async def test_a_bad_report_is_refused_whole_with_its_place(
    server: LiveServer, client: httpx.AsyncClient, bad: dict[str, Any], where: str
) -> None:
    first = {"type": "queued", "job": task_job("refused-batch")}
    response = await report(client, server, first, bad)
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"] == "invalid_input"
    assert body["message"].startswith(where.replace("reports.0", "body.reports.1")), body
    # Nothing of the batch was applied, the good report before the bad one included.
    missing = await client.get(f"{server.url}/api/jobs/refused-batch", headers=server.auth())
    assert missing.status_code == 404


async def test_reports_move_a_job_as_a_worker_would(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    job_id = f"t-{uuid.uuid4().hex[:8]}"
    assert (await report(client, server, {"type": "queued", "job": task_job(job_id)})).json() == {
        "results": ["applied"]
    }
    again = await report(client, server, {"type": "queued", "job": task_job(job_id)})
    assert again.json() == {"results": ["exists"]}  # a post repeated after a lost answer

    watcher = asyncio.create_task(watch(client, server, job_id, timeout=20))
    steps = [{"type": "progress", "id": job_id, "progress": p, "stage": "s"} for p in (10, 20)]
    answer = await report(
        client, server, {"type": "running", "job": task_job(job_id)}, *steps, dropped=3
    )
    assert answer.json() == {"results": ["applied"] * 3}
    lost = await report(client, server, {"type": "progress", "id": "nobody", "progress": 1})
    assert lost.json() == {"results": ["unknown"]}
    done = {"type": "succeeded", "id": job_id, "result": {"words": 12}}
    assert (await report(client, server, done)).json() == {"results": ["applied"]}
    events = await watcher
    assert [t for t, _ in events][-1] == "succeeded"
    assert events[-1][1]["result"] == {"words": 12} and events[-1][1]["attempts"] == 1
    assert events[-1][1]["owner"] == "alice"
    # Ended: its worker, starting it again (re-delivered), is told to skip it.
    late = await report(client, server, {"type": "running", "job": task_job(job_id)})
    assert late.json() == {"results": ["terminal"]}
    # What the reporters dropped (3) and the report for no job (1), in /metrics.
    assert await progress_metric(client, server, "dropped") >= 4


async def test_the_sweep_fails_silent_running_jobs(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    job_id = f"s-{uuid.uuid4().hex[:8]}"
    await report(client, server, {"type": "running", "job": task_job(job_id, runs_on="rq")})
    url = f"{server.url}/api/job-reports/sweep"
    service = server.auth("worker", "service")
    other = await client.post(
        url, json={"runs_on": "celery", "silent_seconds": 0.01}, headers=service
    )
    assert other.json() == {"swept": 0}  # another queue's job is left alone

    async def swept() -> bool:
        body = {"runs_on": "rq", "silent_seconds": 0.01}
        return bool((await client.post(url, json=body, headers=service)).json()["swept"] == 1)

    await eventually(swept, timeout=10, interval=0.05)
    job = (await client.get(f"{server.url}/api/jobs/{job_id}", headers=server.auth())).json()
    assert job["state"] == "failed" and job["error"]["type"] == "Interrupted"


@needs_services
async def test_a_celery_worker_reports_over_http(
    server: LiveServer, client: httpx.AsyncClient, procs: Processes
) -> None:
    env = {
        "JOBCAST_TEST_CELERY_REDIS": REDIS_URL,
        "JOBCAST_TEST_CELERY_PREFIX": PREFIX,
        "JOBCAST_TEST_CELERY_HTTP_URL": server.url,
        "JOBCAST_TEST_CELERY_HTTP_TOKEN": server.token("celery-workers", "service"),
    }
    os.environ.update(env)
    tasks = importlib.import_module("tests.celery_http_app")
    queue = f"{PREFIX}-http"
    try:
        from jobcast.integrations.celery import jobcast_headers

        sent = tasks.count.apply_async((50,), queue=queue, headers=jobcast_headers("alice"))
        queued = await client.get(f"{server.url}/api/jobs/{sent.id}", headers=server.auth())
        assert queued.json()["state"] == "queued"  # reported before apply_async returned

        worker_env = jobcast_env()
        worker_env.update(env, C_FORCE_ROOT="1", JOBCAST_MAX_STREAM_BYTES=str(CAP))
        args = [sys.executable, "-m", "celery", "-A", "tests.celery_http_app", "worker"]
        args += ["-P", "threads", "-c", "2", "-Q", queue, "-n", f"http-{PREFIX}@%h"]
        args += ["--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "info"]
        procs.spawn(args, worker_env, "worker", session=True)

        events = await watch(client, server, sent.id, timeout=30)
        types = [t for t, _ in events]
        assert types[-1] == "succeeded" and "progress" in types, types
        assert events[-1][1]["result"] == {"steps": 50} and events[-1][1]["progress"] == 100.0
        # Coalesced on the way: far fewer progress events than the task's 50 reports.
        assert types.count("progress") < 50

        retried = tasks.flaky.apply_async(
            (f"flaky-{uuid.uuid4().hex[:6]}", 2), queue=queue, headers=jobcast_headers("alice")
        )
        events = await watch(client, server, retried.id, timeout=30)
        retries = [d for t, d in events if t == "retrying"]
        assert [r["last_error"]["type"] for r in retries] == ["OSError", "OSError"][: len(retries)]
        assert events[-1][0] == "succeeded" and events[-1][1]["attempts"] == 3

        failed = tasks.broken.apply_async(queue=queue, headers=jobcast_headers("alice"))
        events = await watch(client, server, failed.id, timeout=30)
        assert events[-1][0] == "failed"
        assert events[-1][1]["error"] == {"type": "ValueError", "message": "bad input"}

        # Output streams, appended to /v1/stream by idempotent producers (_http_streams).
        headers = jobcast_headers("alice")
        written = tasks.write_lines.apply_async((CHUNKS,), queue=queue, headers=headers)
        failed = tasks.write_then_fail.apply_async((20,), queue=queue, headers=headers)
        too_much = tasks.write_too_much.apply_async((CAP,), queue=queue, headers=headers)
        events = await watch(client, server, written.id, timeout=30)
        assert events[-1][0] == "succeeded" and events[-1][1]["result"] == CHUNKS
        events = await watch(client, server, failed.id, timeout=30)
        assert events[-1][0] == "failed" and events[-1][1]["error"]["type"] == "RuntimeError"
        events = await watch(client, server, too_much.id, timeout=30)
        assert events[-1][1]["error"]["type"] == "PayloadTooLarge"
        await assert_task_outputs(client, server, written.id, failed.id, too_much.id)
    finally:
        with tasks.app.connection_for_write() as conn:
            conn.default_channel.queue_delete(queue)
        delete_prefix(PREFIX)


async def test_every_surface_shows_a_reported_job(
    server: LiveServer, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    """The Python client, `jobcast watch` and the job list, on a job a worker reports."""
    from jobcast.client import AsyncClient
    from tests.test_cli_client import cli_env

    job_id = f"v-{uuid.uuid4().hex[:8]}"
    await report(client, server, {"type": "running", "job": task_job(job_id)})
    cli = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "jobcast", "watch", job_id, "--json"),
        env=cli_env(server.url, server.token("alice"), tmp_path),
        stdout=asyncio.subprocess.PIPE,
    )
    assert cli.stdout is not None
    async with AsyncClient(server.url, token=server.token("alice")) as jobcast_client:
        waiter = asyncio.create_task(jobcast_client.wait(job_id, timeout=20))
        listed = await client.get(f"{server.url}/api/jobs", headers=server.auth("alice"))
        assert job_id in [job["id"] for job in listed.json()["jobs"]]
        first = await asyncio.wait_for(cli.stdout.readline(), 20)  # the CLI watches it
        assert orjson.loads(first)["type"] == "snapshot"
        await report(client, server, {"type": "progress", "id": job_id, "progress": 40})
        await report(client, server, {"type": "succeeded", "id": job_id, "result": [1]})
        assert (await waiter).state.value == "succeeded"
    out, _ = await asyncio.wait_for(cli.communicate(), 20)
    assert cli.returncode == 0
    assert orjson.loads(out.splitlines()[-1])["type"] == "succeeded"


async def test_a_worker_whose_server_is_down_reports_once_it_is_back(
    tmp_path: Path, client: httpx.AsyncClient
) -> None:
    """The task starts and ends while jobcast is unreachable: its progress is dropped and
    counted, its end is posted again until the server takes it, and the server creates the
    job it never heard of (``integrations._http`` H2-H4)."""
    from jobcast.integrations._reporter import Reporter
    from jobcast.jobs.model import Job, JobState
    from jobcast.server.app import create_app
    from tests.scale_support import free_port
    from tests.support import make_settings

    port = free_port()
    app = create_app(make_settings(data_dir=tmp_path))
    token = app.state.jobcast.tokens.mint("celery-workers", role="service")
    reporter = Reporter("celery", jobcast=f"http://127.0.0.1:{port}", token=token, wait=0.5)
    job_id = f"d-{uuid.uuid4().hex[:8]}"
    job = Job(id=job_id, kind="media.transcribe", owner="alice", runs_on="celery")
    try:
        assert await asyncio.to_thread(reporter.started, job)  # nobody answers: it runs
        await asyncio.to_thread(reporter.progress, job_id, 30.0, "s", None)
        await eventually(lambda: reporter.progress_counts()["dropped"] >= 1, timeout=10)
        await asyncio.to_thread(reporter.finished, job_id, JobState.SUCCEEDED, result="ok")
        server = LiveServer(app, port=port).start()  # jobcast is back
        try:

            async def ended() -> bool:
                url = f"{server.url}/api/jobs/{job_id}"
                answer = await client.get(url, headers=server.auth("alice"))
                return answer.status_code == 200 and answer.json()["state"] == "succeeded"

            await eventually(ended, timeout=20, interval=0.1)
            # The drops the worker counted reached the server's metrics with a later post.
            assert await progress_metric(client, server, "dropped") >= 1
        finally:
            await asyncio.to_thread(reporter.close)
            server.stop()
    finally:
        await asyncio.to_thread(reporter.close)


class LoseEveryOtherAppendAnswer:
    """ASGI middleware: every other append to a stream, the first one first, is stored and its
    answer replaced by a 503, as when the connection drops after the server committed."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.state = app.state  # what LiveServer reads of its app
        self.appends = 0
        self.lost = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        appending = scope["type"] == "http" and scope["method"] == "POST"
        if not (appending and scope["path"].startswith("/v1/stream/")):
            await self.app(scope, receive, send)
            return
        self.appends += 1
        if self.appends % 2 == 0:
            await self.app(scope, receive, send)
            return

        async def dropped(message: Any) -> None:
            return None

        await self.app(scope, receive, dropped)  # stored: the answer never reaches the worker
        self.lost += 1
        await send({"type": "http.response.start", "status": 503, "headers": []})
        await send({"type": "http.response.body", "body": b""})


async def test_output_written_while_the_server_is_down_arrives_once_and_in_order(
    tmp_path: Path, client: httpx.AsyncClient
) -> None:
    """A task writes while jobcast is unreachable: nothing waits and nothing is dropped. Once
    the server is back, half of the appends' answers are lost after they were stored: the
    retries are duplicates (the idempotent producer), so every chunk is stored exactly once
    (``integrations._stream_writer`` T1, T2, T5)."""
    from jobcast.integrations._reporter import Reporter
    from jobcast.jobs.model import Job, JobState
    from jobcast.server.app import create_app
    from tests.scale_support import free_port
    from tests.support import make_settings

    port = free_port()
    app = create_app(make_settings(data_dir=tmp_path))
    losing = LoseEveryOtherAppendAnswer(app)  # in front of every entrance of the app
    token = app.state.jobcast.tokens.mint("celery-workers", role="service")
    reporter = Reporter("celery", jobcast=f"http://127.0.0.1:{port}", token=token, wait=0.5)
    job_id = f"o-{uuid.uuid4().hex[:8]}"
    job = Job(id=job_id, kind="media.transcribe", owner="alice", runs_on="celery")
    server = None
    try:
        assert await asyncio.to_thread(reporter.started, job)  # nobody answers: it runs
        out = await asyncio.to_thread(reporter.stream, job_id, "output", "text/plain")
        half = CHUNKS // 2
        for i in range(half):  # no thread hop, no wait: the server is still down
            out.write(line(i))
        server = LiveServer(losing, port=port, native_streams=False)  # type: ignore[arg-type]
        server.start()  # jobcast is back
        url = f"{server.url}/v1/stream/jobs/{job_id}/output"

        async def first_half() -> bool:
            answer = await client.get(url, params={"offset": "-1"}, headers=server.auth())
            return answer.status_code == 200 and answer.text == all_lines(half)

        await eventually(first_half, timeout=20, interval=0.05)  # its first answer was lost
        for i in range(half, CHUNKS):
            out.write(line(i))
        # A stream of the job another process opened (an earlier attempt): closed at the end.
        other = await client.put(
            f"{server.url}/v1/stream/jobs/{job_id}/earlier",
            headers={"content-type": "text/plain", "authorization": f"Bearer {token}"},
        )
        assert other.status_code == 201, other.text
        await asyncio.to_thread(reporter.finished, job_id, JobState.SUCCEEDED, result="ok")

        async def ended() -> bool:
            url = f"{server.url}/api/jobs/{job_id}"
            answer = await client.get(url, headers=server.auth("alice"))
            return answer.status_code == 200 and answer.json()["state"] == "succeeded"

        await eventually(ended, timeout=20, interval=0.1)
        data, closed = await read_output(client, server, job_id)
        assert data.decode() == all_lines() and closed
        assert losing.lost >= 2  # both halves were stored, then their answers lost
        assert await read_output(client, server, job_id, "earlier") == (b"", True)
    finally:
        await asyncio.to_thread(reporter.close)
        if server is not None:
            server.stop()

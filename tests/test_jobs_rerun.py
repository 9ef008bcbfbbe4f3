"""Re-runs (``jobs/rerun.py``): a new job with the original's kind, params and upload."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.jobs_support import poll_until_done, watch
from tests.support import LiveServer


async def test_a_rerun_is_a_new_job_linked_to_the_original(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    response = await client.post(
        f"{server.url}/api/jobs",
        json={"kind": "demo", "params": {"steps": 2, "delay": 0}, "priority": 4},
        headers=server.auth(),
    )
    original = response.json()
    assert (await watch(client, server, original["id"]))[-1][0] == "succeeded"
    rerun = await client.post(
        f"{server.url}/api/jobs/{original['id']}/rerun", headers=server.auth()
    )
    assert rerun.status_code == 202, rerun.text
    job = rerun.json()
    assert job["id"] != original["id"] and job["rerun_of"] == original["id"]
    assert job["kind"] == "demo" and job["params"] == original["params"]
    assert job["priority"] == 4 and job["attempts"] == 0 and job["owner"] == "alice"
    assert rerun.headers["location"].endswith(f"/api/jobs/{job['id']}")
    events = await watch(client, server, job["id"])
    assert events[-1][0] == "succeeded" and events[-1][1]["result"] == {"steps": 2}
    missing = await client.post(f"{server.url}/api/jobs/nope/rerun", headers=server.auth())
    assert missing.status_code == 404


async def test_a_rerun_gets_a_copy_of_the_upload_while_it_is_kept(
    server: LiveServer, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    files = {"file": ("notes.txt", b"one\ntwo\nthree\n", "text/plain")}
    response = await client.post(
        f"{server.url}/api/jobs", data={"kind": "ingest"}, files=files, headers=server.auth()
    )
    assert response.status_code == 202, response.text
    original = response.json()
    first = (await poll_until_done(client, server, original["id"]))[-1]
    url = f"{server.url}/api/jobs/{original['id']}"
    rerun = await client.post(f"{url}/rerun", headers=server.auth())
    assert rerun.status_code == 202, rerun.text
    again = (await poll_until_done(client, server, rerun.json()["id"]))[-1]
    assert again["state"] == "succeeded" and again["result"] == first["result"]
    assert again["input"] == original["input"]

    (tmp_path / "uploads" / original["id"]).unlink()  # no longer kept (an operator's cleanup)
    refused = await client.post(f"{url}/rerun", headers=server.auth())
    assert refused.status_code == 409, refused.text
    assert "no longer kept" in refused.json()["message"]
    assert not [p for p in (tmp_path / "uploads").iterdir() if p.name.startswith(".rerun")]

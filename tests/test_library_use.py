"""jobcast inside someone else's FastAPI app: the README's example, run as written."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

import jobcast
from tests.support import SECRET, EventStream, LiveServer

README = Path(__file__).parent.parent / "README.md"


def readme_example() -> str:
    text = README.read_text()
    match = re.search(
        r"<!-- embed-example:start -->\n```python\n(.*?)```\n<!-- embed-example:end -->", text, re.S
    )
    assert match, "the README lost its embedding example"
    return match.group(1)


async def test_readme_embedding_example_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, client: httpx.AsyncClient
) -> None:
    monkeypatch.setenv("JOBCAST_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("JOBCAST_JWT_SECRET", SECRET)
    namespace: dict[str, object] = {}
    exec(compile(readme_example(), "README.md", "exec"), namespace)
    server = LiveServer(namespace["app"]).start()  # type: ignore[arg-type]
    try:
        url = f"{server.url}/api/events"
        async with EventStream(
            client, url, params={"topic": "videos/*"}, headers=server.auth()
        ) as events:
            response = await client.post(
                f"{server.url}/videos/7/status", params={"status": "PROCESSED"}
            )
            assert response.status_code == 200
            event = await events.next()
            assert (event.event, event.data, event.id) == (
                "video.status",
                '{"status":"PROCESSED"}',
                response.json()["event_id"],
            )
    finally:
        server.stop()


def test_public_api_is_curated() -> None:
    assert jobcast.__all__ == sorted(jobcast.__all__)
    assert {"Jobcast", "Settings", "create_app", "Hub", "Event", "JobcastError"} <= set(
        jobcast.__all__
    )
    for name in jobcast.__all__:
        assert hasattr(jobcast, name)

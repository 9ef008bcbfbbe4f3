"""PostgreSQL going away under a running server: job endpoints answer 503 with a clear
message, and the stream of a job that is already running carries on to its end."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from tests.jobs_support import submit
from tests.scale_support import TcpProxy
from tests.services import POSTGRES_URL, drop_schema, needs_services, unique_prefix
from tests.support import EventStream, LiveServer

pytestmark = needs_services


@pytest.fixture
def schema() -> Iterator[str]:
    name = f"o_{unique_prefix()[-12:]}"
    yield name
    drop_schema(f"{POSTGRES_URL}?schema={name}")


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    proxy = TcpProxy(5432).start()
    yield proxy
    proxy.stop()


async def test_job_endpoints_answer_503_while_running_streams_continue(
    make_server: Callable[..., LiveServer],
    proxy: TcpProxy,
    schema: str,
    client: httpx.AsyncClient,
    tmp_path: Path,
) -> None:
    url = POSTGRES_URL.replace("127.0.0.1", f"127.0.0.1:{proxy.port}")
    # the events elsewhere (a PostgreSQL store alone would hold them too, and go with it)
    events = f"sqlite:///{tmp_path / 'events.db'}"
    server = make_server(store_url=f"{url}?schema={schema}", broker_url=events)
    job = await submit(client, server, "demo", {"steps": 20, "delay": 0.05})
    async with EventStream(
        client, f"{server.url}/api/jobs/{job['id']}/events", headers=server.auth()
    ) as stream:
        while (await stream.next()).event != "progress":
            pass
        proxy.cut()  # the database is gone

        listed = await client.get(f"{server.url}/api/jobs", headers=server.auth())
        assert listed.status_code == 503
        assert "job store" in listed.json()["message"]
        refused = await client.post(
            f"{server.url}/api/jobs", json={"kind": "demo"}, headers=server.auth()
        )
        assert refused.status_code == 503, refused.text

        rest = await stream.until_end(timeout=10)
    assert rest[-1].event == "succeeded"
    assert orjson.loads(rest[-1].data or "null")["progress"] == 100.0

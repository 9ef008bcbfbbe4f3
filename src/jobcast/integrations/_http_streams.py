"""The HTTP path's output streams: a task's streams appended to jobcast's Durable Streams API
(``/v1/stream/jobs/{id}/{name}``) with the reporter's service token, by the idempotent
producers of ``_stream_writer.py``.

``PUT`` creates a stream (``200``/``201``; a ``409`` means one is there already, closed say,
and the append decides); ``POST`` appends with ``Producer-Id``, ``Producer-Epoch`` and
``Producer-Seq`` (``200`` stored, ``204`` a duplicate), the last one with
``Stream-Closed: true``. The network, a 5xx and a 429 are worth a retry; any other answer is
final. The job's other streams are found in its snapshot (``GET /api/jobs/{id}``).
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import quote

import httpx

from jobcast.integrations._stream_writer import Refused, Retry
from jobcast.outputs.model import Producer


class HttpSink:
    """Output streams through jobcast's API at ``url`` (``_stream_writer.Sink``)."""

    def __init__(self, url: str, client: Callable[[], httpx.AsyncClient]) -> None:
        self.url = url
        self._client = client

    def _stream_url(self, path: str) -> str:
        return self.url + "/v1/stream/" + quote(path)

    async def create(self, path: str, content_type: str) -> None:
        headers = {"content-type": content_type}
        response = await self._request("PUT", self._stream_url(path), headers, b"")
        if response.status_code not in (200, 201, 409):
            raise Refused(f"{response.status_code} {response.text[:300]}")

    async def append(
        self, path: str, body: bytes, content_type: str, producer: Producer, close: bool
    ) -> None:
        headers = {
            "content-type": content_type,
            "producer-id": producer.id,
            "producer-epoch": str(producer.epoch),
            "producer-seq": str(producer.seq),
        }
        if close:
            headers["stream-closed"] = "true"
        response = await self._request("POST", self._stream_url(path), headers, body)
        if response.status_code not in (200, 204):
            raise Refused(f"{response.status_code} {response.text[:300]}")

    async def open_streams(self, job_id: str) -> list[str]:
        url = f"{self.url}/api/jobs/{quote(job_id, safe='')}"
        response = await self._request("GET", url, {}, None)
        if response.status_code == 404:
            return []
        if response.status_code != 200:
            raise Refused(f"{response.status_code} {response.text[:300]}")
        streams = response.json().get("streams") or []
        return [str(info["path"]) for info in streams if not info.get("closed")]

    async def close_stream(self, path: str) -> None:
        headers = {"stream-closed": "true"}
        response = await self._request("POST", self._stream_url(path), headers, b"")
        if response.status_code not in (200, 204, 409):  # 409: closed meanwhile
            raise Refused(f"{response.status_code} {response.text[:300]}")

    async def _request(
        self, method: str, url: str, headers: dict[str, str], content: bytes | None
    ) -> httpx.Response:
        try:
            response = await self._client().request(method, url, headers=headers, content=content)
        except httpx.HTTPError as exc:
            raise Retry(repr(exc)) from exc
        if response.status_code >= 500 or response.status_code == 429:
            raise Retry(f"{response.status_code} {response.text[:200]}")
        return response

"""Fuzz the whole OpenAPI surface with schemathesis: whatever is sent, no 5xx, JSON errors."""

from __future__ import annotations

from pathlib import Path

import hypothesis
import pytest
import schemathesis

from jobcast.server.app import create_app
from tests.support import LiveServer, make_settings

# The schema comes from the app itself, so the fuzzer always covers every documented route.
SCHEMA = (
    schemathesis.openapi.from_dict(create_app(make_settings(data_dir=Path("unused"))).openapi())
    .exclude(
        # Streams never end by themselves; their inputs are validated before streaming starts and
        # are covered by the stream tests.
        path_regex=r"(/events|/api/jobs/live)$",
        method="GET",
    )
    .exclude(
        # A HEAD answer has no body, the JSON error included (its status says it all).
        method="HEAD",
    )
)


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> LiveServer:
    server = LiveServer(
        create_app(
            make_settings(
                data_dir=tmp_path_factory.mktemp("fuzz"),
                rate_limit_publish="100000/minute",
                rate_limit_submit="100000/minute",
                rate_limit_ticket="100000/minute",
            )
        )
    ).start()
    yield server  # type: ignore[misc]
    server.stop()


@SCHEMA.parametrize()
@hypothesis.settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=list(hypothesis.HealthCheck),
    derandomize=True,
)
def test_no_input_makes_the_server_fail(case: schemathesis.Case, fuzz_server: LiveServer) -> None:
    for headers in ({"Authorization": f"Bearer {fuzz_server.token('fuzzer', 'admin')}"}, {}):
        response = case.call(base_url=fuzz_server.url, headers=headers, timeout=10)
        assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.text}"
        if response.status_code >= 400:
            assert response.headers["content-type"][0].startswith("application/json")
            assert "Traceback" not in response.text
            body = response.json()  # jobcast's error shape (server/http/errors.py), every time
            assert isinstance(body, dict) and isinstance(body.get("error"), str), body
            assert isinstance(body.get("message"), str), body

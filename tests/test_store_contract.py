"""The JobStore contract, run over every store URL (add PostgreSQL URLs to STORE_URLS)."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from jobcast.errors import InvalidInput, Unavailable
from jobcast.jobs.model import InputFile, Job, JobState, new_job_id
from jobcast.stores import JobQuery, JobStore, open_store
from jobcast.stores.sql import SQLJobStore
from tests.services import POSTGRES_URL, drop_schema, needs_services

STORE_URLS: dict[str, Callable[[Path], str]] = {
    "sqlite": lambda tmp: f"sqlite+aiosqlite:///{tmp / 'jobs.db'}",
    # a fresh schema per test: runs never see each other's tables
    "postgresql": lambda tmp: f"{POSTGRES_URL}?schema=t_{uuid.uuid4().hex[:12]}",
}


@pytest.fixture(
    params=[
        pytest.param(name, marks=needs_services) if name == "postgresql" else name
        for name in sorted(STORE_URLS)
    ]
)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    url = STORE_URLS[request.param](tmp_path)
    yield url
    if request.param == "postgresql":
        drop_schema(url)


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[JobStore]:
    store = open_store(store_url)
    await store.open()
    yield store
    await store.close()


def make_job(owner: str = "alice", kind: str = "demo", **fields: object) -> Job:
    return dataclasses.replace(Job(id=new_job_id(), kind=kind, owner=owner), **fields)


async def test_create_then_get_round_trips_every_field(store: JobStore) -> None:
    job = make_job(
        params={"steps": 3},
        state=JobState.FAILED,
        progress=42.5,
        stage="stage",
        message="message",
        eta_seconds=1.5,
        seq=7,
        started_at=2.0,
        finished_at=3.0,
        input=InputFile("a.txt", 3, "ab" * 32, "text/plain"),
        result={"x": [1, 2]},
        error={"type": "Boom", "message": "it broke"},
        attempts=2,
        last_event_id="abc-12",
        metadata={"language": "fr", "pages": [1, 2]},
        tags=["customer:42", "batch-7"],
        waiting={"name": "approve", "schema": {"type": "boolean"}, "prompt": "ok?"},
        inputs={"pick": "b"},
        parent_id="0123abcd",
    )
    await store.create(job)
    assert await store.get(job.id) == job
    assert await store.get("missing") is None


async def test_save_overwrites_mutable_fields(store: JobStore) -> None:
    job = make_job()
    await store.create(job)
    job.state, job.progress, job.result, job.seq = JobState.SUCCEEDED, 100.0, [1], 4
    await store.save(job)
    assert await store.get(job.id) == job


async def test_a_save_from_a_stale_copy_keeps_the_readers(store: JobStore) -> None:
    # A worker saves progress from its own copy of the job: a grant (or revoke) made
    # meanwhile by the server must survive it.
    job = make_job()
    await store.create(job)
    assert await store.change_readers(job.id, add="bob", limit=10) == ["bob"]
    job.progress = 50.0  # the worker's copy still has no readers
    await store.save(job)
    stored = await store.get(job.id)
    assert stored is not None and stored.readers == ["bob"] and stored.progress == 50.0
    assert await store.change_readers(job.id, remove="bob", limit=10) == []
    revoked = await store.get(job.id)
    assert revoked is not None and revoked.readers == []
    assert await store.change_readers("missing", add="bob", limit=10) is None


async def test_concurrent_reader_changes_all_take_effect(store: JobStore) -> None:
    # Regression: grants read the readers, then wrote them back whole, so of two grants made
    # at once one was lost (and answered 200).
    job = make_job()
    await store.create(job)
    subjects = [f"user{n}" for n in range(12)]
    await asyncio.gather(*(store.change_readers(job.id, add=s, limit=100) for s in subjects))
    stored = await store.get(job.id)
    assert stored is not None and sorted(stored.readers) == sorted(subjects)
    await asyncio.gather(*(store.change_readers(job.id, remove=s, limit=100) for s in subjects[:6]))
    stored = await store.get(job.id)
    assert stored is not None and sorted(stored.readers) == sorted(subjects[6:])
    with pytest.raises(InvalidInput):
        await store.change_readers(job.id, add="one-too-many", limit=6)


async def test_list_is_newest_first_with_filters_and_cursor(store: JobStore) -> None:
    jobs = [make_job(owner="alice" if i % 2 else "bob") for i in range(7)]
    jobs[0].state = JobState.SUCCEEDED
    jobs[1] = dataclasses.replace(jobs[1], kind="ingest")
    for job in jobs:
        await store.create(job)
    newest_first = sorted((j.id for j in jobs), reverse=True)

    seen: list[str] = []
    cursor = None
    while True:
        page = await store.list_jobs(JobQuery(limit=3, cursor=cursor))
        seen.extend(job.id for job in page.jobs)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == newest_first

    alice = await store.list_jobs(JobQuery(owner="alice"))
    assert {j.owner for j in alice.jobs} == {"alice"} and len(alice.jobs) == 3
    done = await store.list_jobs(JobQuery(states=[JobState.SUCCEEDED]))
    assert [j.id for j in done.jobs] == [jobs[0].id]
    ingest = await store.list_jobs(JobQuery(kind="ingest"))
    assert [j.id for j in ingest.jobs] == [jobs[1].id]
    assert (await store.list_jobs(JobQuery(limit=7))).next_cursor is None


async def test_tags_filter_lists_jobs_with_every_tag(store: JobStore) -> None:
    both = make_job(tags=["customer:42", "batch-7"])
    one = make_job(tags=["customer:42"])
    other = make_job(tags=["batch-7"], owner="bob")
    await store.create(both)
    await store.create(one)
    assert await store.create_keyed(other, "key", "hash", 60) is None  # keyed: tags too

    async def ids(*tags: str, owner: str | None = None) -> list[str]:
        page = await store.list_jobs(JobQuery(owner=owner, tags=tags))
        return [job.id for job in page.jobs]

    assert await ids("customer:42") == [one.id, both.id]
    assert await ids("customer:42", "batch-7") == [both.id]
    assert await ids("batch-7") == [other.id, both.id]
    assert await ids("batch-7", owner="alice") == [both.id]
    assert await ids("nothing") == []
    assert await store.delete(both.id)
    assert await ids("batch-7") == [other.id]


async def test_one_of_two_concurrent_inputs_is_stored(store: JobStore) -> None:
    job = make_job()
    await store.create(job)
    assert await store.get_input(job.id, "approve") is None
    results = await asyncio.gather(
        store.put_input(job.id, "approve", {"ok": True}, "alice"),
        store.put_input(job.id, "approve", {"ok": False}, "bob"),
    )
    assert sorted(results) == [False, True]
    stored = await store.get_input(job.id, "approve")
    assert stored == ({"ok": True},) if results[0] else ({"ok": False},)
    assert await store.put_input(job.id, "other", None, "alice")
    assert await store.get_input(job.id, "other") == (None,)


async def test_delete(store: JobStore) -> None:
    job = make_job()
    await store.create(job)
    assert await store.delete(job.id) is True
    assert await store.get(job.id) is None
    assert await store.delete(job.id) is False


async def test_in_states_is_oldest_first(store: JobStore) -> None:
    jobs = [make_job(state=state) for state in (JobState.RUNNING, JobState.QUEUED)]
    jobs.append(make_job(state=JobState.SUCCEEDED))
    jobs.append(make_job(state=JobState.RUNNING))
    for job in jobs:
        await store.create(job)
    found = await store.in_states([JobState.RUNNING, JobState.QUEUED], limit=10)
    assert [j.id for j in found] == [jobs[0].id, jobs[1].id, jobs[3].id]


async def test_acks_are_per_subject_and_client(store: JobStore) -> None:
    assert await store.load_ack("alice", "tab-1") is None
    await store.save_ack("alice", "tab-1", "e-1")
    await store.save_ack("alice", "tab-1", "e-5")
    await store.save_ack("bob", "tab-1", "e-2")
    assert await store.load_ack("alice", "tab-1") == "e-5"
    assert await store.load_ack("bob", "tab-1") == "e-2"


async def test_reopening_keeps_jobs(store_url: str) -> None:
    first = open_store(store_url)
    await first.open()
    job = make_job()
    await first.create(job)
    await first.close()
    second = open_store(store_url)
    await second.open()
    assert await second.get(job.id) == job
    await second.close()


async def test_a_newer_schema_is_refused(store_url: str) -> None:
    store = SQLJobStore(store_url)
    await store.open()
    engine = store._engine
    assert engine is not None
    async with engine.begin() as conn:
        await conn.execute(sa.text("UPDATE jobcast_meta SET value = '999'"))
    await store.close()
    with pytest.raises(Unavailable, match="newer jobcast"):
        await SQLJobStore(store_url).open()


async def test_a_schema_2_database_is_brought_forward(store_url: str) -> None:
    """A database written before external queues, retries, schedules, keys, metadata, tags
    and inputs (schema 2): opening it adds the columns (MIGRATIONS[2], [3] and [4]) and the
    key, tag and input tables, and its jobs read with the defaults."""
    store = SQLJobStore(store_url)
    await store.open()
    old = make_job()
    await store.create(old)
    engine = store._engine
    assert engine is not None
    async with engine.begin() as conn:  # back to what schema 2 had
        await conn.execute(sa.text("DROP INDEX jobs_by_parent"))
        for column in (
            "runs_on",
            "max_attempts",
            "next_attempt_at",
            "last_error",
            "scheduled_for",
            "priority",
            "rerun_of",
            "job_metadata",
            "tags",
            "waiting",
            "inputs",
            "parent_id",
        ):
            await conn.execute(sa.text(f"ALTER TABLE jobs DROP COLUMN {column}"))
        await conn.execute(sa.text("DROP TABLE job_batches"))
        await conn.execute(sa.text("DROP TABLE job_tags"))
        await conn.execute(sa.text("DROP TABLE job_inputs"))
        await conn.execute(sa.text("DROP TABLE job_keys"))
        await conn.execute(sa.text("DROP TABLE event_keys"))
        await conn.execute(sa.text("UPDATE jobcast_meta SET value = '2'"))
    await store.close()

    store = SQLJobStore(store_url)
    await store.open()
    try:
        found = await store.get(old.id)
        assert found is not None
        assert (found.max_attempts, found.priority, found.scheduled_for) == (0, 0, None)
        assert found.runs_on is None
        assert (found.metadata, found.tags, found.waiting, found.inputs) == ({}, [], None, {})
        tagged = make_job(tags=["t"], metadata={"k": 1})
        await store.create(tagged)
        page = await store.list_jobs(JobQuery(tags=["t"]))
        assert [job.id for job in page.jobs] == [tagged.id]
        assert await store.put_input(old.id, "approve", True, "alice")
        keyed = make_job(priority=3, max_attempts=2)
        assert await store.create_keyed(keyed, "k", "hash", 60) is None
        assert await store.create_keyed(make_job(), "k", "hash", 60) == (keyed.id, "hash")
        assert (await store.get(keyed.id)).priority == 3  # type: ignore[union-attr]
    finally:
        await store.close()


async def test_a_closed_store_is_unavailable(store: JobStore) -> None:
    await store.close()
    with pytest.raises(Unavailable):
        await store.get("x")


async def test_database_errors_quote_neither_sql_nor_data(
    store: JobStore, caplog: pytest.LogCaptureFixture
) -> None:
    job = make_job(params={"card": "4111-1111-1111-1111"})
    await store.create(job)
    with pytest.raises(Unavailable) as refused:
        await store.create(job)  # the same id again: the database refuses the insert
    assert refused.value.message == "the job store is unavailable; retry later"  # a 503 body
    logged = caplog.text
    assert "IntegrityError" in logged  # the detail is logged for the operator...
    assert "4111" not in logged and job.id not in logged  # ...without the statement's values

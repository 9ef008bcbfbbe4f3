"""The SQL job store's tables (SQLAlchemy Core), its schema version and migrations (``sql.py``
Q1, Q3), and the conversion between a :class:`Job` and its row."""

from __future__ import annotations

from typing import Any

import orjson
import sqlalchemy as sa

from jobcast.jobs.model import InputFile, Job, JobState

SCHEMA_VERSION = 5
#: ``{from_version: [statements]}`` that bring a database from that version to the next (Q3).
MIGRATIONS: dict[int, list[str]] = {
    1: ["ALTER TABLE jobs ADD COLUMN readers TEXT NOT NULL DEFAULT '[]'"],  # job read grants
    2: ["ALTER TABLE jobs ADD COLUMN runs_on VARCHAR(32)"],  # tasks of an external queue
    3: [  # retries, delayed runs, priorities, re-runs
        "ALTER TABLE jobs ADD COLUMN max_attempts INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE jobs ADD COLUMN next_attempt_at FLOAT",
        "ALTER TABLE jobs ADD COLUMN last_error TEXT",
        "ALTER TABLE jobs ADD COLUMN scheduled_for FLOAT",
        "ALTER TABLE jobs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE jobs ADD COLUMN rerun_of VARCHAR(40)",
    ],
    4: [  # metadata, tags, input, batches (job_tags, job_inputs, job_batches: create_all)
        "ALTER TABLE jobs ADD COLUMN job_metadata TEXT NOT NULL DEFAULT '{}'",
        "ALTER TABLE jobs ADD COLUMN tags TEXT NOT NULL DEFAULT '[]'",
        "ALTER TABLE jobs ADD COLUMN waiting TEXT",
        "ALTER TABLE jobs ADD COLUMN inputs TEXT NOT NULL DEFAULT '{}'",
        "ALTER TABLE jobs ADD COLUMN parent_id VARCHAR(40)",
        "CREATE INDEX jobs_by_parent ON jobs (parent_id, id)",
    ],
}

metadata = sa.MetaData()

meta_table = sa.Table(
    "jobcast_meta",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(255), nullable=False),
)

jobs_table = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("owner", sa.String(255), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("params", sa.Text, nullable=False),
    sa.Column("progress", sa.Float, nullable=False),
    sa.Column("stage", sa.String(200)),
    sa.Column("message", sa.Text),
    sa.Column("eta_seconds", sa.Float),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("started_at", sa.Float),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("finished_at", sa.Float),
    sa.Column("input", sa.Text),
    sa.Column("result", sa.Text),
    sa.Column("error", sa.Text),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("last_event_id", sa.String(64)),
    sa.Column("readers", sa.Text, nullable=False, server_default="[]"),
    sa.Column("runs_on", sa.String(32)),
    sa.Column("max_attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_attempt_at", sa.Float),
    sa.Column("last_error", sa.Text),
    sa.Column("scheduled_for", sa.Float),
    sa.Column("priority", sa.Integer, nullable=False, server_default="0"),
    sa.Column("rerun_of", sa.String(40)),
    sa.Column("job_metadata", sa.Text, nullable=False, server_default="{}"),
    sa.Column("tags", sa.Text, nullable=False, server_default="[]"),
    sa.Column("waiting", sa.Text),
    sa.Column("inputs", sa.Text, nullable=False, server_default="{}"),
    sa.Column("parent_id", sa.String(40)),
    sa.Index("jobs_by_owner", "owner", "id"),
    sa.Index("jobs_by_parent", "parent_id", "id"),
    sa.Index("jobs_by_state", "state", "id"),
    sa.Index("jobs_by_kind", "kind", "id"),
)

acks_table = sa.Table(
    "ws_acks",
    metadata,
    sa.Column("subject", sa.String(255), primary_key=True),
    sa.Column("client_id", sa.String(128), primary_key=True),
    sa.Column("event_id", sa.String(64), nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)

#: Idempotency keys of submissions (``sql.py`` Q7): one row per owner and key, so concurrent
#: submissions with one key insert one row and create one job, on every instance.
job_keys_table = sa.Table(
    "job_keys",
    metadata,
    sa.Column("owner", sa.String(255), primary_key=True),
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("job_id", sa.String(40), nullable=False),
    sa.Column("request_hash", sa.String(64), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Index("job_keys_by_job", "job_id"),  # a deleted job's keys go with it
)

#: Idempotency keys of event publishes (``sql.py`` Q7): the ids a keyed publish was given, so a
#: retried publish is acknowledged with them; ``ids`` is NULL while the publish is under way.
event_keys_table = sa.Table(
    "event_keys",
    metadata,
    sa.Column("subject", sa.String(255), primary_key=True),
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("request_hash", sa.String(64), nullable=False),
    sa.Column("ids", sa.Text),
    sa.Column("created_at", sa.Float, nullable=False),
)


#: A job's tags, one row each (``sql.py`` Q8): ``?tag=a&tag=b`` is one indexed lookup per tag.
job_tags_table = sa.Table(
    "job_tags",
    metadata,
    sa.Column("tag", sa.String(64), primary_key=True),
    sa.Column("job_id", sa.String(40), primary_key=True),
)

#: Inputs given to running jobs (``sql.py`` Q9): the primary key (job, name) lets exactly one
#: of concurrent answers in, on every instance; a re-run handler reads its answers back.
job_inputs_table = sa.Table(
    "job_inputs",
    metadata,
    sa.Column("job_id", sa.String(40), primary_key=True),
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
    sa.Column("given_by", sa.String(255), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)


#: The readers of a job who may also give it input (``sql.py`` Q11): one row each, written
#: only by sharing, so a worker's save of the job never touches them.
job_responders_table = sa.Table(
    "job_responders",
    metadata,
    sa.Column("job_id", sa.String(40), primary_key=True),
    sa.Column("subject", sa.String(255), primary_key=True),
)


#: A batch's counts (``sql.py`` Q10): one row per batch, updated under a row lock as each child
#: ends, so exactly one child's end sees the batch complete, on every instance.
job_batches_table = sa.Table(
    "job_batches",
    metadata,
    sa.Column("batch_id", sa.String(40), primary_key=True),
    sa.Column("total", sa.Integer, nullable=False),
    sa.Column("succeeded", sa.Integer, nullable=False, server_default="0"),
    sa.Column("failed", sa.Integer, nullable=False, server_default="0"),
    sa.Column("cancelled", sa.Integer, nullable=False, server_default="0"),
)


UPDATE_JOB = jobs_table.update().where(jobs_table.c.id == sa.bindparam("job_id"))


def _json(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


def row_values(job: Job) -> dict[str, Any]:
    return {
        "kind": job.kind,
        "owner": job.owner,
        "state": job.state.value,
        "params": orjson.dumps(job.params).decode(),
        "progress": job.progress,
        "stage": job.stage,
        "message": job.message,
        "eta_seconds": job.eta_seconds,
        "seq": job.seq,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "updated_at": job.updated_at,
        "finished_at": job.finished_at,
        "input": _json(job.input.to_dict()) if job.input else None,
        "result": _json(job.result),
        "error": _json(job.error),
        "attempts": job.attempts,
        "last_event_id": job.last_event_id,
        "readers": orjson.dumps(job.readers).decode(),
        "runs_on": job.runs_on,
        "max_attempts": job.max_attempts,
        "next_attempt_at": job.next_attempt_at,
        "last_error": _json(job.last_error),
        "scheduled_for": job.scheduled_for,
        "priority": job.priority,
        "rerun_of": job.rerun_of,
        "job_metadata": orjson.dumps(job.metadata).decode(),
        "tags": orjson.dumps(job.tags).decode(),
        "waiting": _json(job.waiting),
        "inputs": orjson.dumps(job.inputs).decode(),
        "parent_id": job.parent_id,
    }


def job_from_row(row: sa.Row[Any]) -> Job:
    m = row._mapping
    return Job(
        id=m["id"],
        kind=m["kind"],
        owner=m["owner"],
        params=orjson.loads(m["params"]),
        state=JobState(m["state"]),
        progress=m["progress"],
        stage=m["stage"],
        message=m["message"],
        eta_seconds=m["eta_seconds"],
        seq=m["seq"],
        created_at=m["created_at"],
        started_at=m["started_at"],
        updated_at=m["updated_at"],
        finished_at=m["finished_at"],
        input=InputFile.from_dict(orjson.loads(m["input"])) if m["input"] else None,
        result=orjson.loads(m["result"]) if m["result"] is not None else None,
        error=orjson.loads(m["error"]) if m["error"] else None,
        attempts=m["attempts"],
        last_event_id=m["last_event_id"],
        readers=orjson.loads(m["readers"]) if m["readers"] else [],
        runs_on=m["runs_on"],
        max_attempts=m["max_attempts"],
        next_attempt_at=m["next_attempt_at"],
        last_error=orjson.loads(m["last_error"]) if m["last_error"] else None,
        scheduled_for=m["scheduled_for"],
        priority=m["priority"],
        rerun_of=m["rerun_of"],
        metadata=orjson.loads(m["job_metadata"]) if m["job_metadata"] else {},
        tags=orjson.loads(m["tags"]) if m["tags"] else [],
        waiting=orjson.loads(m["waiting"]) if m["waiting"] else None,
        inputs=orjson.loads(m["inputs"]) if m["inputs"] else {},
        parent_id=m["parent_id"],
    )


def tag_rows(job: Job) -> list[dict[str, str]]:
    return [{"tag": tag, "job_id": job.id} for tag in job.tags]

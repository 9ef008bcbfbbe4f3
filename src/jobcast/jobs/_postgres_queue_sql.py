"""The tables and statements of ``postgres_queue.py`` (decisions P1-P6 there).

The job and stats tables have the columns SAQ's PostgreSQL queue reads and writes (its
``saq_jobs`` and ``saq_stats``), plus jobcast's: ``kind``, ``owner``, ``rank`` (the jobcast
priority), ``ready_at`` (the exact time a job may start) and ``abort_reason``. They are created
here rather than by SAQ's migrations, whose index names are fixed (``saq_jobs_...``) and would
meet those of another deployment, or of an application's own SAQ, in the same schema (P6).
"""

from __future__ import annotations

from psycopg import sql


class QueueSql:
    """The statements of one queue's tables, ``{prefix}_queue_jobs`` and ``_stats``."""

    def __init__(self, prefix: str, schema: str | None) -> None:
        self.jobs_name = f"{prefix}_queue_jobs"
        self.stats_name = f"{prefix}_queue_stats"
        t = sql.Identifier(self.jobs_name)
        stats = sql.Identifier(self.stats_name)
        schema_part = (
            sql.SQL("CREATE SCHEMA IF NOT EXISTS {};").format(sql.Identifier(schema))
            if schema
            else sql.SQL("")
        )
        self.create = sql.SQL(
            "{schema_part}"
            "CREATE TABLE IF NOT EXISTS {t} (key text PRIMARY KEY, lock_key serial NOT NULL,"
            " job bytea NOT NULL, queue text NOT NULL, status text NOT NULL,"
            " priority smallint NOT NULL DEFAULT 0, group_key text,"
            " scheduled bigint NOT NULL DEFAULT extract(epoch FROM now()), expire_at bigint,"
            " kind text NOT NULL DEFAULT '', owner text NOT NULL DEFAULT '',"
            " rank integer NOT NULL DEFAULT 0, ready_at double precision NOT NULL DEFAULT 0,"
            " abort_reason text);"
            "CREATE INDEX IF NOT EXISTS {take} ON {t} (queue, rank DESC, key)"
            " WHERE status = 'queued';"
            "CREATE INDEX IF NOT EXISTS {running} ON {t} (queue, kind, owner)"
            " WHERE status IN ('active', 'aborting');"
            "CREATE INDEX IF NOT EXISTS {ended} ON {t} (queue, expire_at)"
            " WHERE status IN ('aborted', 'complete', 'failed');"
            "CREATE TABLE IF NOT EXISTS {stats} (worker_id text PRIMARY KEY, stats jsonb,"
            " expire_at bigint, metadata jsonb, queue_key text);"
        ).format(
            schema_part=schema_part,
            t=t,
            stats=stats,
            take=sql.Identifier(f"{self.jobs_name}_take"),
            running=sql.Identifier(f"{self.jobs_name}_running"),
            ended=sql.Identifier(f"{self.jobs_name}_ended"),
        )
        #: P7: a job waiting for a later time, due now.
        self.due_now = sql.SQL(
            "UPDATE {t} SET ready_at = 0, scheduled = %s WHERE key = %s AND queue = %s"
            " AND status = 'queued' AND ready_at > %s RETURNING 1"
        ).format(t=t)
        #: P1: a job, or a job that ended and is queued again under its key.
        self.enqueue = sql.SQL(
            "INSERT INTO {t} (key, job, queue, status, scheduled, kind, owner, rank, ready_at)"
            " VALUES (%(key)s, %(job)s, %(queue)s, %(status)s, %(scheduled)s, %(kind)s,"
            " %(owner)s, %(rank)s, %(ready_at)s)"
            " ON CONFLICT (key) DO UPDATE SET job = EXCLUDED.job, status = EXCLUDED.status,"
            " scheduled = EXCLUDED.scheduled, kind = EXCLUDED.kind, owner = EXCLUDED.owner,"
            " rank = EXCLUDED.rank, ready_at = EXCLUDED.ready_at, expire_at = NULL,"
            " abort_reason = NULL"
            " WHERE {t}.status IN ('aborted', 'complete', 'failed') RETURNING 1"
        ).format(t=t)
        self.retry = sql.SQL(
            "UPDATE {t} SET job = %s, status = 'queued', scheduled = %s, ready_at = %s,"
            " expire_at = NULL, abort_reason = NULL WHERE key = %s"
        ).format(t=t)
        #: P2: the first job by rank, then key, whose kind and owner have room.
        self.take = sql.SQL(
            "WITH running AS (SELECT kind, owner FROM {t} WHERE queue = %(queue)s"
            " AND status IN ('active', 'aborting')),"
            " caps AS (SELECT * FROM unnest(%(kinds)s::text[], %(caps)s::int[]) AS c(kind, cap))"
            " SELECT j.key, j.job FROM {t} j LEFT JOIN caps c ON c.kind = j.kind"
            " WHERE j.queue = %(queue)s AND j.status = 'queued' AND j.ready_at <= %(now)s"
            " AND (c.cap IS NULL"
            " OR (SELECT count(*) FROM running r WHERE r.kind = j.kind) < c.cap)"
            " AND (%(owner_limit)s = 0 OR j.owner = ''"
            " OR (SELECT count(*) FROM running r WHERE r.owner = j.owner) < %(owner_limit)s)"
            " ORDER BY j.rank DESC, j.key LIMIT 1 FOR UPDATE OF j SKIP LOCKED"
        ).format(t=t)
        self.delete = sql.SQL("DELETE FROM {t} WHERE key = %s").format(t=t)
        self.upcoming = sql.SQL(
            "SELECT min(ready_at) FROM {t} WHERE queue = %s AND status = 'queued' AND ready_at > %s"
        ).format(t=t)
        self.ready = sql.SQL(
            "SELECT key FROM {t} WHERE queue = %s AND status = 'queued' ORDER BY rank DESC, key"
        ).format(t=t)
        #: P4
        self.delete_ended = sql.SQL(
            "DELETE FROM {t} WHERE queue = %s AND status IN ('aborted', 'complete', 'failed')"
            " AND expire_at <= %s"
        ).format(t=t)
        self.delete_stats = sql.SQL("DELETE FROM {} WHERE expire_at <= %s").format(stats)
        self.running = sql.SQL(
            "SELECT job, status FROM {t} WHERE queue = %s AND status IN ('active', 'aborting')"
        ).format(t=t)
        self.lock_row = sql.SQL("SELECT job, status FROM {t} WHERE key = %s FOR UPDATE").format(t=t)
        #: P5
        self.mark_aborting = sql.SQL(
            "UPDATE {t} SET job = %s, status = 'aborting', abort_reason = %s WHERE key = %s"
        ).format(t=t)
        self.abort_reason = sql.SQL("SELECT abort_reason FROM {t} WHERE key = %s").format(t=t)

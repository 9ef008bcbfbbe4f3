"""The PostgreSQL tables of output streams and the statements the backend runs (``postgres.py``).

Tables, named ``{prefix}_...`` in the broker URL's ``?schema=`` (beside the event history):
``streams`` (one row per live stream; its ``incarnation`` comes from a sequence, so it is never
reused, model.O1), ``stream_chunks`` (the bytes, by incarnation and start) and
``stream_producers`` (idempotent producers' epoch and last seq). Chunks and producers go with
their stream (``ON DELETE CASCADE``), so removing a stream is one row.
"""

from __future__ import annotations

from typing import Protocol


class Location(Protocol):
    """Where the tables are (the broker URL's ``brokers._postgres_sql.Location``)."""

    @property
    def dsn(self) -> str: ...
    @property
    def schema(self) -> str | None: ...
    @property
    def prefix(self) -> str: ...


COLUMNS = (
    "incarnation, path, content_type, ttl, expires_at, closed, tail, last_seq, "
    "closed_by_id, closed_by_epoch, closed_by_seq, accessed_at"
)


class StreamStatements:
    """The SQL of one deployment's stream tables, formatted once."""

    def __init__(self, location: Location) -> None:
        p = location.prefix
        streams, chunks, producers = f"{p}_streams", f"{p}_stream_chunks", f"{p}_stream_producers"
        #: Wake-ups (postgres.S3); the schema is in the name, as the broker's channels.
        self.channel = f"{location.schema or 'public'}.{p}_streams"
        self.schema_lock = f"{self.channel}:schema"
        self.create_tables = f"""
CREATE TABLE IF NOT EXISTS {streams} (
    incarnation bigserial PRIMARY KEY, path text COLLATE "C" NOT NULL UNIQUE,
    content_type text NOT NULL, ttl bigint, expires_at double precision,
    closed boolean NOT NULL DEFAULT false, tail bigint NOT NULL DEFAULT 0,
    last_seq text COLLATE "C", closed_by_id text, closed_by_epoch bigint, closed_by_seq bigint,
    accessed_at double precision NOT NULL);
CREATE TABLE IF NOT EXISTS {chunks} (
    incarnation bigint NOT NULL REFERENCES {streams} ON DELETE CASCADE,
    start bigint NOT NULL, data bytea NOT NULL, PRIMARY KEY (incarnation, start));
CREATE TABLE IF NOT EXISTS {producers} (
    incarnation bigint NOT NULL REFERENCES {streams} ON DELETE CASCADE,
    producer text NOT NULL, epoch bigint NOT NULL, last_seq bigint NOT NULL,
    PRIMARY KEY (incarnation, producer));
"""
        self.load = f"SELECT {COLUMNS} FROM {streams} WHERE path = $1"
        self.lock = f"{self.load} FOR UPDATE"
        # Several streams locked in path order: two group commits never wait on each other
        # in a cycle.
        self.lock_many = (
            f"SELECT {COLUMNS} FROM {streams} WHERE path = ANY($1::text[]) ORDER BY path FOR UPDATE"
        )
        self.insert = (
            f"INSERT INTO {streams} (path, content_type, ttl, expires_at, closed, tail, "
            "accessed_at) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (path) DO NOTHING "
            f"RETURNING {COLUMNS}"
        )
        # One append's effects, and its wake-up (S3), in one statement: the chunk (if any),
        # the producer's state (if any), the stream's row.
        self.write = f"""
WITH chunk AS (
    INSERT INTO {chunks} SELECT $1::bigint, $2::bigint, $3::bytea WHERE length($3::bytea) > 0),
producer AS (
    INSERT INTO {producers} SELECT $1::bigint, $9::text, $10::bigint, $11::bigint
    WHERE $9::text IS NOT NULL ON CONFLICT (incarnation, producer)
    DO UPDATE SET epoch = EXCLUDED.epoch, last_seq = EXCLUDED.last_seq),
stream AS (
    UPDATE {streams} SET tail = tail + length($3::bytea), accessed_at = $4,
    last_seq = COALESCE($5, last_seq), closed = closed OR $6,
    closed_by_id = CASE WHEN $6 AND $9::text IS NOT NULL THEN $9::text ELSE closed_by_id END,
    closed_by_epoch = CASE WHEN $6 AND $9::text IS NOT NULL THEN $10::bigint
        ELSE closed_by_epoch END,
    closed_by_seq = CASE WHEN $6 AND $9::text IS NOT NULL THEN $11::bigint
        ELSE closed_by_seq END
    WHERE incarnation = $1)
SELECT pg_notify($7, $8)
"""
        self.insert_chunk = f"INSERT INTO {chunks} VALUES ($1, $2, $3)"
        self.producer = (
            f"SELECT epoch, last_seq FROM {producers} WHERE incarnation = $1 AND producer = $2"
        )
        self.touch = f"UPDATE {streams} SET accessed_at = $2 WHERE incarnation = $1"
        # The chunk holding ``position`` and those after it, below the tail the read saw.
        self.chunks = (
            f"SELECT start, data FROM {chunks} WHERE incarnation = $1 AND start >= "
            f"COALESCE((SELECT max(start) FROM {chunks} WHERE incarnation = $1 AND start <= $2),"
            " 0) AND start < $3 ORDER BY start LIMIT 256"
        )
        self.remove = f"DELETE FROM {streams} WHERE incarnation = $1"
        self.listing = (
            f"SELECT {COLUMNS} FROM {streams} WHERE left(path, length($1)) = $1 ORDER BY path"
        )
        self.sweep = (
            f"DELETE FROM {streams} WHERE expires_at <= $1 OR accessed_at + ttl <= $1 "
            "RETURNING incarnation, path"
        )
        self.notify = "SELECT pg_notify($1, $2)"

"""The PostgreSQL broker's tables and every statement it runs (see ``postgres.py``, G1-G7).

Tables, all named ``{prefix}_...`` (default ``jobcast_...``) in the URL's ``?schema=`` (or the
search path): ``broker`` (one row: the epoch and the newest position handed out; its row lock
orders commits, G1), ``events`` (the history), ``trimmed`` (per topic, the newest position
retention dropped), ``expired`` (one row: the global watermark of topics that expired whole)
and ``outbox`` (events written by an application's own transactions, not yet positioned, G6).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from jobcast.errors import InvalidInput
from jobcast.topics import TopicPattern

_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,39}")


@dataclass(frozen=True, slots=True)
class Location:
    """Where a broker's tables are: the connection string for asyncpg, the schema, the prefix."""

    dsn: str
    schema: str | None
    prefix: str
    pool_size: int


def parse_url(url: str) -> Location:
    """``postgresql[+driver]://.../db?schema=s&prefix=p&pool_size=n`` -> :class:`Location`.

    The store's SQLAlchemy spelling (``postgresql+asyncpg://``) is accepted, so the broker can
    default to the store's database with the same URL.
    """
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    schema = query.pop("schema", None)
    prefix = query.pop("prefix", "jobcast")
    pool_size = int(query.pop("pool_size", "4"))
    for name in (schema, prefix):
        if name is not None and not _IDENTIFIER.fullmatch(name):
            raise InvalidInput(f"invalid name {name!r} in the PostgreSQL broker URL")
    if pool_size < 1:
        raise InvalidInput("pool_size in the PostgreSQL broker URL must be at least 1")
    scheme = "postgresql"
    dsn = urlunsplit(parts._replace(scheme=scheme, query=urlencode(query)))
    return Location(dsn, schema, prefix, pool_size)


class Statements:
    """The SQL of one broker's tables, formatted once."""

    def __init__(self, location: Location) -> None:
        p = location.prefix
        self.prefix = p
        self.schema = location.schema
        #: Notifications carry positions (G2); the schema is part of the name so deployments
        #: in different schemas of one database do not hear each other.
        self.channel = f"{location.schema or 'public'}.{p}_events"
        self.outbox_channel = f"{location.schema or 'public'}.{p}_outbox"
        #: Advisory lock names (``pg_advisory_xact_lock(hashtext(name))``), per deployment.
        self.schema_lock = f"{self.channel}:schema"
        self.trim_lock = f"{self.channel}:trim"
        self.move_lock = f"{self.channel}:move"
        self.create = f"""
CREATE TABLE IF NOT EXISTS {p}_broker (
    id integer PRIMARY KEY CHECK (id = 1), epoch text NOT NULL, position bigint NOT NULL);
CREATE TABLE IF NOT EXISTS {p}_events (
    position bigint PRIMARY KEY, topic text COLLATE "C" NOT NULL, type text NOT NULL,
    data bytea NOT NULL, ts double precision NOT NULL);
CREATE INDEX IF NOT EXISTS {p}_events_by_topic ON {p}_events (topic, position);
CREATE INDEX IF NOT EXISTS {p}_events_by_ts ON {p}_events (ts);
CREATE TABLE IF NOT EXISTS {p}_trimmed (
    topic text COLLATE "C" PRIMARY KEY, position bigint NOT NULL);
CREATE TABLE IF NOT EXISTS {p}_expired (
    id integer PRIMARY KEY CHECK (id = 1), position bigint NOT NULL);
CREATE TABLE IF NOT EXISTS {p}_outbox (
    id bigserial PRIMARY KEY, topic text NOT NULL, type text NOT NULL, data bytea NOT NULL,
    ts double precision NOT NULL);
INSERT INTO {p}_expired VALUES (1, 0) ON CONFLICT DO NOTHING;
"""
        self.adopt = f"INSERT INTO {p}_broker VALUES (1, $1, 0) ON CONFLICT DO NOTHING"
        self.state = f"SELECT epoch, position FROM {p}_broker WHERE id = 1"
        self.newest = f"SELECT position FROM {p}_broker WHERE id = 1"
        # G1: the counter row's lock is held to the commit, so positions are in commit order;
        # G2: the notification is sent at the commit, in the same statement's transaction.
        self.publish = f"""
WITH c AS (
    UPDATE {p}_broker SET position = position + cardinality($2::text[])
    WHERE id = 1 AND epoch = $1 RETURNING position
), ins AS (
    INSERT INTO {p}_events (position, topic, type, data, ts)
    SELECT c.position - cardinality($2::text[]) + u.i, u.topic, u.type, u.data, $5
    FROM c, unnest($2::text[], $3::text[], $4::bytea[]) WITH ORDINALITY AS u(topic, type, data, i)
)
SELECT c.position, pg_notify($6, c.position::text) FROM c"""
        self.read_live = (
            f"SELECT position, topic, type, data, ts FROM {p}_events"
            " WHERE position > $1 AND position <= $2 ORDER BY position LIMIT $3"
        )
        self.marks_prefix = (
            f"SELECT GREATEST((SELECT position FROM {p}_expired WHERE id = 1),"
            f" (SELECT max(position) FROM {p}_trimmed WHERE "
        )
        # G4: per-topic cap, marked and dropped in one statement (one transaction).
        self.trim_topics = f"""
WITH cut AS (
    SELECT t.topic, (SELECT e.position FROM {p}_events e WHERE e.topic = t.topic
                     ORDER BY e.position DESC OFFSET $2 LIMIT 1) AS position
    FROM unnest($1::text[]) AS t(topic)
), marked AS (
    INSERT INTO {p}_trimmed (topic, position)
    SELECT topic, position FROM cut WHERE position IS NOT NULL
    ON CONFLICT (topic) DO UPDATE SET position = GREATEST({p}_trimmed.position, excluded.position)
)
DELETE FROM {p}_events e USING cut WHERE e.topic = cut.topic AND e.position <= cut.position"""
        self.expired = f"SELECT topic, max(position) FROM {p}_events WHERE ts < $1 GROUP BY topic"
        self.mark_many = f"""
INSERT INTO {p}_trimmed (topic, position) SELECT * FROM unnest($1::text[], $2::bigint[])
ON CONFLICT (topic) DO UPDATE SET position = GREATEST({p}_trimmed.position, excluded.position)"""
        self.drop_expired = f"DELETE FROM {p}_events WHERE ts < $1 AND position <= $2"
        # a topic with nothing left folds into the watermark, raised before its mark goes
        self.fold = f"""
WITH gone AS (
    SELECT max(u.position) AS position FROM unnest($1::text[], $2::bigint[]) AS u(topic, position)
    WHERE NOT EXISTS (SELECT 1 FROM {p}_events e WHERE e.topic = u.topic)
)
UPDATE {p}_expired SET position = GREATEST({p}_expired.position, gone.position)
FROM gone WHERE gone.position IS NOT NULL RETURNING {p}_expired.position"""
        self.drop_marks = f"DELETE FROM {p}_trimmed WHERE position <= $1"
        # G6: an application's transaction writes here (on its own connection, whose search
        # path may differ: the table is qualified); the event exists iff that commits.
        outbox = f'"{location.schema}".{p}_outbox' if location.schema else f"{p}_outbox"
        self.outbox_insert = (
            f"WITH i AS (INSERT INTO {outbox} (topic, type, data, ts)"
            " SELECT u.topic, u.type, u.data, $4"
            " FROM unnest(CAST($1 AS text[]), CAST($2 AS text[]), CAST($3 AS bytea[]))"
            " AS u(topic, type, data))"
            " SELECT pg_notify($5, '')"
        )
        # G6: one mover at a time (the advisory lock), oldest outbox rows first.
        self.move = f"""
WITH moved AS (
    DELETE FROM {p}_outbox WHERE id IN (SELECT id FROM {p}_outbox ORDER BY id LIMIT $1)
    RETURNING id, topic, type, data, ts
), n AS (SELECT count(*) AS n FROM moved), c AS (
    UPDATE {p}_broker SET position = position + n.n FROM n WHERE id = 1 AND n.n > 0
    RETURNING position, n.n
), ins AS (
    INSERT INTO {p}_events (position, topic, type, data, ts)
    SELECT c.position - c.n + row_number() OVER (ORDER BY moved.id), topic, type, data, ts
    FROM moved, c
)
SELECT c.position, c.n, pg_notify($2, c.position::text) FROM c"""

    def replay(
        self, patterns: Sequence[TopicPattern], first_param: int
    ) -> tuple[str, str, list[object]]:
        """The replay's two statements (events, then marks: G4) and their topic parameters,
        numbered from ``first_param``."""
        where, params = topic_filter(patterns, first_param)
        p = self.prefix
        n = first_param + len(params)
        marks_where, _ = topic_filter(patterns, 1)
        # G5: a running total of data bytes; rows stop at the first one past the budget
        events = f"""
SELECT position, topic, type, data, ts, total FROM (
    SELECT position, topic, type, data, ts,
           sum(octet_length(data)) OVER (ORDER BY position) AS total
    FROM {p}_events WHERE position > $1 AND position <= $2 AND ({where})
    ORDER BY position LIMIT $3
) s WHERE total - octet_length(data) <= ${n}::float8"""
        marks = f"{self.marks_prefix}{marks_where}))"
        return events, marks, params


def topic_filter(patterns: Sequence[TopicPattern], first: int) -> tuple[str, list[object]]:
    """A condition matching any of ``patterns`` (parameters from ``$first``); prefixes are
    ranges on the "C"-collated column, so they use the topic index."""
    clauses: list[str] = []
    params: list[object] = []
    exact = [p.text for p in patterns if p.prefix is None]
    if exact:
        clauses.append(f"topic = ANY(${first}::text[])")
        params.append(exact)
    for pattern in patterns:
        if pattern.prefix == "":
            return "TRUE", []
        if pattern.prefix is not None:
            # Every topic starting with "a/" sorts in ["a/", "a0"): '0' follows '/'.
            n = first + len(params)
            clauses.append(f"(topic >= ${n} AND topic < ${n + 1})")
            params.extend([pattern.prefix, pattern.prefix[:-1] + "0"])
    return " OR ".join(clauses) or "FALSE", params

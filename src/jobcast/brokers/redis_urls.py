"""What jobcast's Redis URLs say, read without loading redis-py (the settings check them
before anything starts).

``redis://h/0?prefix=app&max_log=N&wait=N&wait_ms=T``, with ``redis+sentinel://`` and
``redis+cluster://`` (and their ``rediss`` forms) for Sentinel and Cluster (``_redis_connect``).
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
REDIS_SCHEMES = ("redis", "rediss", *SENTINEL_SCHEMES, *CLUSTER_SCHEMES)


def is_redis(url: str) -> bool:
    return urlsplit(url).scheme in REDIS_SCHEMES


def is_cluster(url: str) -> bool:
    return urlsplit(url).scheme in CLUSTER_SCHEMES


def split_url(url: str) -> tuple[str, str, int]:
    """``redis://h/0?prefix=app&max_log=N`` -> (URL for redis-py, key prefix, log cap)."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    prefix = query.pop("prefix", "jobcast")
    max_log = int(query.pop("max_log", "100000"))
    query.pop("wait", None), query.pop("wait_ms", None)  # the broker's (replication)
    if parts.scheme in CLUSTER_SCHEMES:  # X9: one hash tag, so every key is in one slot
        prefix = f"{{{prefix}}}"
    return urlunsplit(parts._replace(query=urlencode(query))), f"{prefix}:", max_log


def replication(url: str) -> tuple[int, int]:
    """``?wait=N&wait_ms=T``: the replicas a publish waits for, and for how long (X8).

    Not on a Cluster: its client sends ``WAIT`` to every primary on connections of their own,
    and ``WAIT`` counts the replicas of its own connection's writes only."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    wait = int(query.get("wait", "0"))
    if wait and parts.scheme in CLUSTER_SCHEMES:
        raise ValueError(
            "?wait is not supported on a Redis Cluster URL (redis+cluster://); "
            "use Sentinel (redis+sentinel://) where publishes must wait for a replica"
        )
    return wait, int(query.get("wait_ms", "1000"))

"""The benchmark scenarios: each runs against one started target and returns its figures.

Every scenario follows the same steps: open the streams (all load processes at once), read the
server's CPU and memory, publish, wait until every stream has what it expects (or a deadline),
read the server again. Figures are plain floats keyed by metric name, so the runner can take
medians over repeats and ratios between targets without knowing what they mean.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import urllib.request
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import orjson

from bench.loadgen import LoadGenerator, Merged, StreamSpec
from bench.publisher import HTTPConnection, publish
from bench.targets import (
    HOST,
    BaselineTarget,
    JobcastTarget,
    ProcessStats,
    Target,
    fd_limit,
    mint,
)

Figures = dict[str, float]


@dataclass(frozen=True)
class Scale:
    """How big the scenarios are: ``full`` for the published numbers, ``quick`` for a smoke run."""

    fanout: tuple[int, ...] = (1000, 5000, 10_000)
    fanout_deliveries: int = 500_000  # per burst run; events = deliveries / subscribers
    paced_deliveries_per_second: int = 20_000
    paced_seconds: float = 5.0
    topics: int = 2000
    events_per_topic: int = 5
    idle: int = 10_000
    connect: int = 2000
    jobs: int = 1000
    job_steps: int = 100
    job_delay: float = 0.02
    slow: int = 5000
    slow_events: int = 200
    redis_subscribers: int = 5000
    processes: int = 4
    #: Keep-alive connections publishing at once (each sends its next event on the answer):
    #: a burst is many workers reporting at the same moment.
    publishers: int = 16
    #: The trickle regime: events one request each, at an even rate over a few connections,
    #: as running jobs report (topics-N-paced), and single publishes with no stream open.
    trickle_events_per_topic: int = 20
    trickle_rate: float = 2000.0
    trickle_publishers: int = 4
    single_publishes: int = 10_000
    single_rate: float = 1000.0
    deadline: float = 180.0
    #: The many-streams rows (idle-N, restart-N): N streams on ``many_topics`` topics, and
    #: for the restart ``many_before`` events per topic before it, ``many_after`` after it.
    many: int = 50_000
    many_topics: int = 100
    many_before: int = 2
    many_after: int = 3
    #: The load generator's parser: ``scan`` or ``whatwg`` (bench/loadgen.py).
    parser: str = "scan"


QUICK = Scale(
    fanout=(100,),
    fanout_deliveries=5000,
    paced_deliveries_per_second=1000,
    paced_seconds=1.0,
    topics=50,
    idle=200,
    connect=100,
    jobs=20,
    job_steps=10,
    slow=100,
    slow_events=50,
    redis_subscribers=100,
    processes=2,
    trickle_events_per_topic=4,
    trickle_rate=200.0,
    single_publishes=300,
    single_rate=300.0,
    deadline=60.0,
    many=300,
    many_topics=10,
)

#: The many-streams rows connect from at least this many loopback addresses (more when the
#: streams need more ephemeral ports: bench/loadgen.py L5).
MANY_SOURCES = 2
#: File descriptors a server keeps for itself besides its streams (listener, store, logs).
SERVER_FDS = 500


def many_deadline(scale: Scale, streams: int) -> Scale:
    """The scale with a deadline long enough to open (or resume) ``streams`` on a busy machine:
    at least 200 a second."""
    return dataclasses.replace(scale, deadline=max(scale.deadline, streams / 200))


def many_streams(scale: Scale) -> int:
    """The size of the many-streams rows: ``scale.many``, unless a server here cannot hold that
    many connections (its hard ``RLIMIT_NOFILE``, which a process may not raise); then as many
    as it can, and the rows are named by the size that runs."""
    return max(1, min(scale.many, fd_limit() - SERVER_FDS))


def percentiles(merged: Merged) -> Figures:
    if not merged.latencies:
        return {"p50_ms": float("nan"), "p99_ms": float("nan"), "max_ms": float("nan")}
    values = np.frombuffer(merged.latencies, dtype=np.float64) * 1000
    p50, p99 = np.percentile(values, [50, 99])
    return {"p50_ms": float(p50), "p99_ms": float(p99), "max_ms": float(values.max())}


def stream_and_publish(
    target: Target,
    specs: list[StreamSpec],
    plan: list[tuple[str, int]],
    scale: Scale,
    *,
    rate: float = 0.0,
    batch: int = 1,
    connections: int = 0,
) -> tuple[Figures, Merged]:
    """Open ``specs``, publish ``plan``, wait for delivery; the common figures."""
    load = LoadGenerator(HOST, target.ports, specs, processes=scale.processes, parser=scale.parser)
    try:
        opened_in, statuses = load.connect(timeout=scale.deadline)
        refused = sum(status != 200 for status in statuses)
        before = target.stats()
        sent = asyncio.run(
            publish(
                target.ports,
                target.publish_request,
                plan,
                rate=rate,
                connections=connections or scale.publishers,
                batch=batch,
                build_batch=getattr(target, "publish_batch_request", None),
            )
        )
        merged = load.collect(timeout=scale.deadline)
        after = target.stats()
    finally:
        load.close()
    expected = sum(spec.expect for spec in specs)
    elapsed = max(1e-9, merged.last_receive - sent.started)
    figures: Figures = {
        "delivered_per_s": merged.received / elapsed,
        "expected": float(expected),
        "delivered": float(merged.received),
        "lost": float(merged.missing),
        "duplicates": float(merged.duplicates),
        "refused_streams": float(refused),
        "publish_failures": float(sent.failed),
        "server_cpu_s": after.cpu_seconds - before.cpu_seconds,
        # Server CPU per delivered event: what the server pays, whatever the load generator.
        "cpu_us_per_event": (after.cpu_seconds - before.cpu_seconds)
        / max(1, merged.received)
        * 1e6,
        "server_system_s": after.system_seconds - before.system_seconds,
        "server_rss_mb": after.rss_bytes / 2**20,
        "connect_s": opened_in,
        **percentiles(merged),
    }
    return figures, merged


def one_topic_plan(topic: str, events: int) -> list[tuple[str, int]]:
    return [(topic, seq) for seq in range(events)]


def fanout(target: Target, scale: Scale, subscribers: int, *, paced: bool) -> Figures:
    """``subscribers`` streams on one topic; a burst as fast as it goes, or a paced rate."""
    topic = "bench/fanout"
    if paced:
        rate = max(1.0, scale.paced_deliveries_per_second / subscribers)
        events = max(2, int(rate * scale.paced_seconds))
    else:
        rate, events = 0.0, max(2, scale.fanout_deliveries // subscribers)
    specs = [
        StreamSpec(target.stream_request([topic], i), expect=events) for i in range(subscribers)
    ]
    figures, _ = stream_and_publish(target, specs, one_topic_plan(topic, events), scale, rate=rate)
    return figures


def per_topic(target: Target, scale: Scale, batch: int = 1, *, paced: bool = False) -> Figures:
    """One stream per topic (a watcher per job, say), every topic published to.

    ``batch``: events per publish request (jobcast's list form; the baseline has none).
    ``paced``: the trickle regime: one event a request at ``trickle_rate`` events/s over
    ``trickle_publishers`` keep-alive connections, ``trickle_events_per_topic`` per topic.
    """
    events = scale.trickle_events_per_topic if paced else scale.events_per_topic
    topics = [f"tasks/{i}" for i in range(scale.topics)]
    specs = [
        StreamSpec(target.stream_request([topic], i), expect=events)
        for i, topic in enumerate(topics)
    ]
    plan = [(topic, seq) for seq in range(events) for topic in topics]
    if not paced:
        figures, _ = stream_and_publish(target, specs, plan, scale, batch=batch)
        return figures
    figures, _ = stream_and_publish(
        target,
        specs,
        plan,
        scale,
        rate=scale.trickle_rate,
        connections=scale.trickle_publishers,
    )
    return figures


def single_publishes(target: Target, scale: Scale) -> Figures:
    """Publishes one event a request at ``single_rate`` requests/s, no stream open: what a
    request costs the server at the rates workers report, where fixed costs per wake-up are
    not shared by many requests."""
    plan = [(f"tasks/{i % 100}", i) for i in range(scale.single_publishes)]
    before = target.stats()
    sent = asyncio.run(
        publish(
            target.ports,
            target.publish_request,
            plan,
            rate=scale.single_rate,
            connections=scale.trickle_publishers,
        )
    )
    after = target.stats()
    cpu = after.cpu_seconds - before.cpu_seconds
    return {
        "cpu_us_per_request": cpu / max(1, len(plan)) * 1e6,
        "server_cpu_s": cpu,
        "publish_failures": float(sent.failed),
    }


def idle(target: Target, scale: Scale, streams: int = 0, sources: int = 0) -> Figures:
    """Open ``idle`` (or ``streams``) streams that receive nothing: memory per connection."""
    streams = streams or scale.idle
    specs = [StreamSpec(target.stream_request(["bench/idle"], i)) for i in range(streams)]
    before = target.stats()
    load = LoadGenerator(
        HOST, target.ports, specs, processes=scale.processes, parser=scale.parser, sources=sources
    )
    try:
        opened_in, statuses = load.connect(timeout=scale.deadline)
        time.sleep(1.0)  # let the server finish its per-connection allocations
        after = target.stats()
    finally:
        load.close()
    return {
        "streams": float(streams),
        "kb_per_connection": (after.rss_bytes - before.rss_bytes) / 1024 / streams,
        "cpu_us_per_connection": (after.cpu_seconds - before.cpu_seconds) / streams * 1e6,
        "server_rss_mb": after.rss_bytes / 2**20,
        "refused_streams": float(sum(status != 200 for status in statuses)),
        "connect_s": opened_in,
    }


def connect(target: Target, scale: Scale) -> Figures:
    """Open ``connect`` streams as fast as they are accepted, then time one event to all."""
    topic = "bench/connect"
    specs = [StreamSpec(target.stream_request([topic], i), expect=1) for i in range(scale.connect)]
    figures, _ = stream_and_publish(target, specs, one_topic_plan(topic, 1), scale)
    figures["connections_per_s"] = scale.connect / figures["connect_s"]
    figures["first_event_p99_ms"] = figures["p99_ms"]
    return figures


def reconnect(target: Target, scale: Scale) -> Figures:
    """``connect`` streams open, all drop, and the same clients come back with the credentials
    they hold (a deploy or a drained instance): the second wave's rate and first event."""
    topic = "bench/reconnect"
    specs = [StreamSpec(target.stream_request([topic], i), expect=1) for i in range(scale.connect)]
    first = LoadGenerator(HOST, target.ports, specs, processes=scale.processes, parser=scale.parser)
    try:
        first.connect(timeout=scale.deadline)
    finally:
        first.close()
    figures, _ = stream_and_publish(target, specs, one_topic_plan(topic, 1), scale)
    figures["connections_per_s"] = scale.connect / figures["connect_s"]
    figures["first_event_p99_ms"] = figures["p99_ms"]
    return figures


def idle_many(target: Target, scale: Scale) -> Figures:
    """``idle`` at the many-streams size (50,000 where the server's file limit allows), from
    several loopback addresses at every size (so the quick scale tries them too)."""
    streams = many_streams(scale)
    return idle(target, many_deadline(scale, streams), streams, sources=MANY_SOURCES)


def restart(target: Target, scale: Scale) -> Figures:
    """A reconnect storm: the many streams open (idle memory per stream), ``many_before``
    events per topic reach all of them, the server restarts on the same port and data
    directory, ``many_after`` more are published as soon as it answers, and every stream
    resumes with ``Last-Event-ID`` after the retry hint the draining server gave it.

    Figures: seconds from the new process answering (and from SIGTERM) until every stream
    has its first event on its new connection, and loss and duplicates over all events.
    """
    streams = many_streams(scale)
    scale = many_deadline(scale, streams)
    topics = [f"bench/restart/{i}" for i in range(min(scale.many_topics, streams))]
    total = scale.many_before + scale.many_after
    specs = [
        StreamSpec(target.stream_request([topics[i % len(topics)]], i), expect=total, resume=True)
        for i in range(streams)
    ]
    load = LoadGenerator(
        HOST,
        target.ports,
        specs,
        processes=scale.processes,
        parser=scale.parser,
        sources=MANY_SOURCES,
    )
    try:
        empty = target.stats()
        opened_in, statuses = load.connect(timeout=scale.deadline)
        time.sleep(1.0)  # let the server finish its per-connection allocations
        idle_stats = target.stats()
        before = [(topic, seq) for seq in range(scale.many_before) for topic in topics]
        first = asyncio.run(publish(target.ports, target.publish_request, before))
        reached = load.until(scale.many_before, scale.deadline)
        stopping, exited, answering = target.restart()
        after = [(topic, seq) for seq in range(scale.many_before, total) for topic in topics]
        second = asyncio.run(publish(target.ports, target.publish_request, after))
        merged = load.collect(timeout=scale.deadline)
    finally:
        load.close()
    # L6 of bench/loadgen.py: a stream resumed when its newest connection opened after the old
    # process exited and read an event.
    resumed = sorted(s.resumed_at for s in merged.streams if s.opened_at >= exited and s.resumed_at)
    everyone = resumed[-1] if len(resumed) == streams else float("nan")
    return {
        "streams": float(streams),
        "kb_per_connection": (idle_stats.rss_bytes - empty.rss_bytes) / 1024 / streams,
        "connect_s": opened_in,
        "refused_streams": float(sum(status != 200 for status in statuses)),
        "had_first_events": float(reached),
        "stop_s": exited - stopping,
        "down_s": answering - stopping,
        "resume_all_s": everyone - answering,
        "resume_all_from_sigterm_s": everyone - stopping,
        "resume_p50_s": float(np.median(resumed)) - answering if resumed else float("nan"),
        "not_resumed": float(streams - len(resumed)),
        "reconnect_attempts": float(sum(s.reconnects for s in merged.streams)),
        "refused_reconnects": float(sum(s.refusals for s in merged.streams)),
        "expected": float(streams * total),
        "delivered": float(merged.received),
        "lost": float(merged.missing),
        "duplicates": float(merged.duplicates),
        "publish_failures": float(first.failed + second.failed),
    }


def slow_consumers(target: Target, scale: Scale) -> Figures:
    """1% of the subscribers stop reading; how the others fare and what memory does."""
    topic = "bench/slow"
    stalled = max(1, scale.slow // 100)
    specs = [
        StreamSpec(target.stream_request([topic], i), expect=scale.slow_events)
        for i in range(scale.slow - stalled)
    ]
    specs += [
        StreamSpec(target.stream_request([topic], scale.slow + i), stall=True)
        for i in range(stalled)
    ]
    figures, _ = stream_and_publish(target, specs, one_topic_plan(topic, scale.slow_events), scale)
    return figures


def jobs(target: Target, scale: Scale) -> Figures:
    """``jobs`` concurrent jobs of ``job_steps`` progress updates, one watcher per job."""
    if isinstance(target, JobcastTarget):
        return _jobcast_jobs(target, scale)
    assert isinstance(target, BaselineTarget)
    return _baseline_jobs(target, scale)


def _jobcast_jobs(target: JobcastTarget, scale: Scale) -> Figures:
    # One user per job, watching it with the token that submitted it (a subject may hold
    # only so many streams at once, and one user watching a thousand jobs is not the case).
    tokens = [mint(f"user-{i}") for i in range(scale.jobs)]
    writes_before = _store_writes(target)
    before = target.stats()
    started = time.time()
    requests = [target.job_request(scale.job_steps, scale.job_delay, token) for token in tokens]
    bodies = asyncio.run(_send_all(target.ports, requests))
    specs = [
        StreamSpec(target.watch_request(orjson.loads(body)["id"], token))
        for body, token in zip(bodies, tokens, strict=True)
    ]
    return _watch_jobs(target, scale, specs, started, before, writes_before)


def _baseline_jobs(target: BaselineTarget, scale: Scale) -> Figures:
    ids = [uuid.uuid4().hex for _ in range(scale.jobs)]
    specs = [StreamSpec(target.stream_request([f"jobs/{job_id}"], 0)) for job_id in ids]
    requests = [target.job_request(job_id, scale.job_steps, scale.job_delay) for job_id in ids]
    before = target.stats()
    # The seed design has no history: watchers must be connected before their job starts.
    load = LoadGenerator(HOST, target.ports, specs, processes=scale.processes, parser=scale.parser)
    try:
        _, statuses = load.connect(timeout=scale.deadline)
        started = time.time()
        asyncio.run(_send_all(target.ports, requests))
        merged = load.collect(timeout=scale.deadline)
        after = target.stats()
    finally:
        load.close()
    figures = _job_figures(scale, merged, started, after.cpu_seconds - before.cpu_seconds)
    figures["refused_streams"] = float(sum(status != 200 for status in statuses))
    return figures


def _watch_jobs(
    target: JobcastTarget,
    scale: Scale,
    specs: list[StreamSpec],
    started: float,
    before: ProcessStats,
    writes_before: float,
) -> Figures:
    load = LoadGenerator(HOST, target.ports, specs, processes=scale.processes, parser=scale.parser)
    try:
        _, statuses = load.connect(timeout=scale.deadline)
        merged = load.collect(timeout=scale.deadline)
        after = target.stats()
    finally:
        load.close()
    figures = _job_figures(scale, merged, started, after.cpu_seconds - before.cpu_seconds)
    figures["refused_streams"] = float(sum(status != 200 for status in statuses))
    updates = scale.jobs * scale.job_steps
    figures["store_writes_per_update"] = (_store_writes(target) - writes_before) / updates
    return figures


def _job_figures(scale: Scale, merged: Merged, started: float, cpu: float) -> Figures:
    terminal = sum(min(1, stream.terminal) for stream in merged.streams)
    return {
        "terminal_delivered": float(terminal),
        "terminal_missing": float(scale.jobs - terminal),
        "seconds": merged.last_receive - started,
        "server_cpu_s": cpu,
    }


async def _send_all(ports: list[int], requests: Iterable[bytes], parallel: int = 8) -> list[bytes]:
    """Send raw requests over ``parallel`` keep-alive connections; the bodies, in order."""
    pending = list(enumerate(requests))
    answers: list[bytes] = [b""] * len(pending)
    pool = [HTTPConnection(ports[i % len(ports)]) for i in range(parallel)]

    async def run(connection: HTTPConnection) -> None:
        while pending:
            index, raw = pending.pop()
            status, body = await connection.request(raw)
            if status >= 300:
                raise RuntimeError(f"request refused: {status} {body[:200]!r}")
            answers[index] = body

    try:
        await asyncio.gather(*(run(connection) for connection in pool))
    finally:
        for connection in pool:
            await connection.close()
    return answers


def _store_writes(target: JobcastTarget) -> float:
    """Job rows written by the store so far, from ``/metrics``."""
    with urllib.request.urlopen(f"http://{HOST}:{target.ports[0]}/metrics", timeout=5) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith("jobcast_store_rows_written_total"):
                return float(line.split()[-1])
    return float("nan")

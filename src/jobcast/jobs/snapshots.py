"""Job snapshots shared by every live job list that shows them (``server/streams/job_list.py``).

A list of 10,000 jobs held one dict per job per watcher: 17 MiB each, 1.7 GiB for 100 watchers
of the same jobs. Lists now hold :class:`Snapshot` objects handed out by one
:class:`JobSnapshots` table per service (the runtime's), so watchers of the same jobs hold the
same objects.

Decisions (cited as S1..S4):

S1. Sharing never changes what a list says. A list asks the table for the snapshot it computed
    itself (from its listing or from the events its own subscription delivered); the table
    returns the one it holds only when it is equal (the same job at the same ``seq``, compared
    whole, so a grant or a heartbeat that changed a field without a ``seq`` is not mistaken for
    it), else the list keeps its own. A lagging list therefore never sees a later version than
    its events say (one whose access was revoked, say), and a list never learns of a job
    through another's subscription.
S2. A snapshot is never changed once shared: a list that moves a job on builds a new one.
S3. The table holds snapshots weakly: an entry lives while some list holds it and goes when the
    last list that holds it drops it (a list closes, the job leaves it, a newer version replaces
    it). No count to keep right, nothing to release by hand; the table is empty when no list
    is open.
S4. Each snapshot encodes itself once, lazily: its opening SSE frame (``snapshot`` with no
    id) is kept with it, so 100 lists opening on the same 10,000 jobs encode them once, not
    100 times (the house rule: encode once). Its JSON is that frame's data line (JSON has no
    line break), cut out when a WebSocket or a live frame needs it rather than kept twice.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from typing import Any

import orjson

from jobcast.wire import ServerSentEvent

#: Where the JSON starts in an opening frame (S4).
_DATA_AT = len(b"event: snapshot\ndata: ")


class Snapshot(dict[str, Any]):
    """One job's whole snapshot as a list shows it. Never changed once shared (S2)."""

    __slots__ = ("__weakref__", "_frame")

    def __init__(self, job: Mapping[str, Any]) -> None:
        super().__init__(job)
        self._frame: bytes | None = None

    @property
    def opening_frame(self) -> bytes:
        """Its SSE ``snapshot`` frame without an id, as a list's opening sends it (S4)."""
        if self._frame is None:
            data = orjson.dumps(self).decode()
            self._frame = ServerSentEvent(data=data, event="snapshot").encode()
        return self._frame

    @property
    def json(self) -> str:
        """Its JSON: the opening frame's data line (S4)."""
        return self.opening_frame[_DATA_AT:-2].decode()


class JobSnapshots:
    """The snapshots open lists hold, one per job: the newest any list computed (S1, S3)."""

    def __init__(self) -> None:
        self._held: weakref.WeakValueDictionary[str, Snapshot] = weakref.WeakValueDictionary()

    def __len__(self) -> int:
        return len(self._held)

    def share(self, job: dict[str, Any]) -> Snapshot:
        """The snapshot to hold for ``job`` (a whole job as a dict): the table's if equal (S1),
        else a new one, which the table keeps unless it holds a newer version."""
        job_id = job.get("id")
        if not isinstance(job_id, str):
            return Snapshot(job)
        held = self._held.get(job_id)
        if held is not None:
            if held.get("seq") == job.get("seq") and held == job:
                return held
            if _seq(held) > _seq(job):
                return Snapshot(job)  # an older version: this list's own (S1)
        snapshot = Snapshot(job)
        self._held[job_id] = snapshot
        return snapshot


def _seq(job: Mapping[str, Any]) -> int:
    seq = job.get("seq")
    return seq if isinstance(seq, int) else -1

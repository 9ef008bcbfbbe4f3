"""Output streams: append-only byte streams addressed by path, served over the Durable Streams
protocol (``server/routes/durable_streams.py``) and written by jobs (``ctx.stream``).

``model.py`` holds what a stream is (offsets, content types, JSON message framing, the errors
the protocol names); ``store.py`` the backend contract and the in-process wake-ups of live
readers; ``sqlite.py`` the embedded backend; ``job_output.py`` a job's buffered writers.
"""

from jobcast.outputs.model import StreamInfo
from jobcast.outputs.store import StreamStore

__all__ = ["StreamInfo", "StreamStore"]

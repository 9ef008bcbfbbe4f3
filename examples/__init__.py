"""Example backends built on jobcast: each keeps its front end's URLs and event formats.

- ``examples.sermons``: sermon transcription, API v2 events stream, videos API, Celery workers.
- ``examples.therapy``: session processing status over SSE and WebSocket, with role rules.
- ``examples.ingest``: file ingest API with a WebSocket status feed and a React front end.
- ``examples.workitems``: e-mail intake that broadcasts work items to a live dashboard.

Run one from the repository root: ``uvicorn examples.sermons.app:app``.
"""

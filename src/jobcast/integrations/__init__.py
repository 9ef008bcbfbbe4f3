"""Other task queues' tasks as jobcast jobs: ``celery``, ``rq`` and ``dramatiq``.

A tracked task is a job from the moment it is sent: its state, progress, result or error,
attempts and output streams reach every jobcast surface through the shared broker and job
store, written by the process that sends or runs the task (``_reporter.py``), or through
jobcast's HTTP API. These modules load only the queue library and jobcast's publishing side,
never the server (an import contract holds it), so a worker process stays light.
"""

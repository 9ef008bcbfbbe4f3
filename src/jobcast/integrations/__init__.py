"""Other task queues' tasks as jobcast jobs: ``celery`` (``rq`` and ``dramatiq`` to follow).

A tracked task is a job from the moment it is sent: its state, progress, result or error and
attempts reach every jobcast surface through the shared broker and job store, written by the
process that sends or runs the task (``_reporter.py``). These modules load only the queue
library and jobcast's publishing side, never the server (an import contract holds it), so a
worker process stays light.
"""

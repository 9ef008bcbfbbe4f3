"""Who may publish and subscribe to what. Every route asks here; nothing else decides.

The rules at this stage: publishing needs the ``service`` or ``admin`` role, or a token whose
``topics`` grants cover the topic; subscribing needs a valid token, except to topics matched by
the configured public patterns, which anyone may read. Jobs: a user reads, streams, cancels and
deletes the jobs they own; ``service`` and ``admin`` see all (``check_job``); wildcard
subscriptions deliver an ordinary user only their own jobs' topics (``subscription_filter``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Literal

from jobcast.auth import Principal, Role
from jobcast.errors import Forbidden, NotFound, Unauthorized
from jobcast.topics import TopicPattern

if TYPE_CHECKING:
    from jobcast.jobs.model import Job

JobAction = Literal["submit", "read", "cancel", "delete", "grant", "rerun", "input"]
JOB_TOPIC_PREFIX = "jobs/"


def covers(outer: TopicPattern, inner: TopicPattern) -> bool:
    """Whether every topic ``inner`` matches is also matched by ``outer``."""
    if outer.prefix is None:
        return inner.prefix is None and inner.text == outer.text
    if inner.prefix is None:
        return inner.text.startswith(outer.prefix)
    return inner.prefix.startswith(outer.prefix)


class Policy:
    def __init__(self, public_topics: Sequence[str] = ()) -> None:
        self.public = tuple(TopicPattern.parse(p) for p in public_topics)
        #: A job's owner and granted readers, when known without I/O (set by the job runner).
        self.job_access: Callable[[str], tuple[str, tuple[str, ...]] | None] | None = None

    def is_public(self, pattern: TopicPattern) -> bool:
        return any(covers(public, pattern) for public in self.public)

    @staticmethod
    def refuse_ticket(principal: Principal | None) -> None:
        """For every route but a stream's: a stream ticket only opens streams."""
        if principal is not None and principal.ticket_topics is not None:
            raise Forbidden("a stream ticket only opens streams")

    def check_publish(self, principal: Principal | None, topic: str) -> None:
        if principal is None:
            raise Unauthorized("publishing needs a bearer token", reason="missing_token")
        self.refuse_ticket(principal)
        if principal.is_privileged:
            return
        if any(TopicPattern.parse(g).matches(topic) for g in principal.grants):
            return
        raise Forbidden(f"{principal.subject!r} may not publish on {topic!r}")

    def subscription_filter(
        self, principal: Principal | None, patterns: Sequence[TopicPattern]
    ) -> Callable[[str], bool] | None:
        """Check a subscription request; return the per-topic filter it needs (None: all)."""
        if principal is not None and principal.ticket_topics is not None:
            self._check_ticket_scope(principal.ticket_topics, patterns)
        if principal is not None:
            if principal.is_privileged or not any(_may_match_jobs(p) for p in patterns):
                return None
            grants = [TopicPattern.parse(g) for g in principal.grants]
            return self._own_jobs_filter(principal.subject, grants)
        if not all(self.is_public(pattern) for pattern in patterns):
            raise Unauthorized(
                "subscribing to these topics needs a token (Authorization header or ?token=)",
                reason="missing_token",
            )
        if any(_may_match_jobs(p) for p in patterns):
            return _outside_jobs  # jobs/ stays its owners', however wide the public patterns
        return None

    @staticmethod
    def _check_ticket_scope(scope: Sequence[str], patterns: Sequence[TopicPattern]) -> None:
        allowed = [TopicPattern.parse(text) for text in scope]
        for pattern in patterns:
            if not any(covers(outer, pattern) for outer in allowed):
                raise Forbidden(f"the ticket does not cover {pattern.text!r}")

    def _own_jobs_filter(
        self, subject: str, grants: Sequence[TopicPattern]
    ) -> Callable[[str], bool]:
        def allow(topic: str) -> bool:
            if not topic.startswith(JOB_TOPIC_PREFIX):
                return True
            # The jobs/ namespace belongs to jobs: a topic of no known job is nobody's to read.
            job_id = topic[len(JOB_TOPIC_PREFIX) :].partition("/")[0]
            access = self.job_access(job_id) if self.job_access is not None else None
            if access is not None and (access[0] == subject or subject in access[1]):
                return True
            return any(grant.matches(topic) for grant in grants)

        return allow

    def job_stream_filter(self, principal: Principal | None, job: Job) -> Callable[[str], bool]:
        """The filter of a stream of ``job`` alone: ``check_job(..., "read")`` asked again with
        the job's current readers, so unsharing it ends what the stream delivers at once (the
        hub forgets the cached answer when readers change), as on a ``jobs/*`` stream."""

        def allow(topic: str) -> bool:
            access = self.job_access(job.id) if self.job_access is not None else None
            current = job
            if access is not None and list(access[1]) != job.readers:
                current = job.copy()
                current.readers = list(access[1])
            try:
                self.check_job(principal, current, "read")
            except (Unauthorized, Forbidden, NotFound):
                return False
            return True

        return allow

    def check_job(self, principal: Principal | None, job: Job, action: JobAction) -> None:
        """Allow ``action`` on ``job``, or raise. The one decision for every job route.

        Someone else's job is reported as not found rather than forbidden, so that job ids
        cannot be probed for existence.
        """
        if principal is None:
            raise Unauthorized("jobs need a bearer token", reason="missing_token")
        if principal.ticket_topics is not None:
            if action != "read":
                raise Forbidden("a stream ticket only opens streams")
            self._check_ticket_scope(
                principal.ticket_topics, [TopicPattern.parse(f"jobs/{job.id}")]
            )
        if self._may(principal, job, action):
            return
        if action != "read" and self._may(principal, job, "read"):
            raise Forbidden(f"{principal.subject!r} may read job {job.id!r} but not {action} it")
        if action == "submit":
            raise Forbidden(f"{principal.subject!r} may not submit jobs for {job.owner!r}")
        raise NotFound(f"no job {job.id!r}")

    def check_input(self, principal: Principal | None, job: Job, *, responder: bool) -> None:
        """Allow giving ``job`` input: ``check_job(..., "input")`` (its owner, a service, an
        admin), or a reader it was shared with "with input" (``responder``, sql.Q11)."""
        if (
            responder
            and principal is not None
            and principal.ticket_topics is None  # a stream ticket only opens streams
            and principal.subject in job.readers
        ):
            return
        self.check_job(principal, job, "input")

    def _may(self, principal: Principal, job: Job, action: JobAction) -> bool:
        subject = principal.subject
        if action in ("grant", "rerun"):  # sharing and re-running: its owner and admins only
            return job.owner == subject or principal.role is Role.ADMIN
        if principal.is_privileged or job.owner == subject:
            return True
        return action == "read" and (subject in job.readers or self._granted(principal, job))

    @staticmethod
    def _granted(principal: Principal, job: Job) -> bool:
        topic = f"{JOB_TOPIC_PREFIX}{job.id}"
        return any(TopicPattern.parse(grant).matches(topic) for grant in principal.grants)

    def job_list_owner(self, principal: Principal | None) -> str | None:
        """The owner a job listing is restricted to (``None``: every owner). Mirrors check_job."""
        if principal is None:
            raise Unauthorized("jobs need a bearer token", reason="missing_token")
        self.refuse_ticket(principal)
        return None if principal.is_privileged else principal.subject


def _outside_jobs(topic: str) -> bool:
    """The filter of an anonymous stream: no job's topic, whatever the public patterns say."""
    return not topic.startswith(JOB_TOPIC_PREFIX)


def _may_match_jobs(pattern: TopicPattern) -> bool:
    """Whether a pattern can match a job's topic (``jobs/{id}``)."""
    if pattern.prefix is None:
        return pattern.text.startswith(JOB_TOPIC_PREFIX)
    return JOB_TOPIC_PREFIX.startswith(pattern.prefix) or pattern.prefix.startswith(
        JOB_TOPIC_PREFIX
    )

"""Who may see a session: its patient, the therapists assigned to that patient, admins.

A session is a jobcast job owned by its patient, so jobcast's own rules already let the patient
(the owner) and admins (role ``admin``) in. This policy adds the therapists, and answers 403
rather than jobcast's 404 for an existing session the caller may not see, as this front end
expects. Unknown sessions stay 404; calls without a token 401.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from jobcast import Forbidden, NotFound, Principal, Unauthorized
from jobcast.jobs import Job
from jobcast.policy import JobAction, Policy

SESSION_KIND = "session.process"


class TherapyPolicy(Policy):
    def __init__(
        self, public_topics: Sequence[str], assignments: Mapping[str, frozenset[str]]
    ) -> None:
        super().__init__(public_topics)
        self.assignments = assignments

    def treats(self, therapist: str, patient: str) -> bool:
        return patient in self.assignments.get(therapist, frozenset())

    def check_job(self, principal: Principal | None, job: Job, action: JobAction) -> None:
        try:
            super().check_job(principal, job, action)
        except NotFound:
            if job.kind != SESSION_KIND or principal is None:
                raise
            if action == "read" and self.treats(principal.subject, job.owner):
                return
            raise Forbidden(f"{principal.subject!r} may not see session {job.id!r}") from None

    def check_new_session(self, principal: Principal | None, patient: str) -> None:
        """Sessions are recorded by the patient, a therapist of theirs, or an admin."""
        if principal is None:
            raise Unauthorized("sessions need a bearer token", reason="missing_token")
        if principal.ticket_topics is not None:
            raise Forbidden("a stream ticket only opens streams")
        subject = principal.subject
        if principal.is_privileged or subject == patient or self.treats(subject, patient):
            return
        raise Forbidden(f"{subject!r} may not record sessions of {patient!r}")

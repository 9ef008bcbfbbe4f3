"""Who a request is: its :class:`Principal` and :class:`Role`.

Below ``auth.py`` (which verifies credentials and builds principals), ``identity.py`` (which
reads them from an identity provider's claims) and ``verified_tokens.py`` (which remembers
them), so none of those imports another back.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    ADMIN = "admin"  # everything
    SERVICE = "service"  # publish anywhere, read anything: workers and other backends
    USER = "user"  # their own jobs, public topics and what they are granted


#: Roles from least to most privileged: a principal holding several gets the last of them.
ROLE_ORDER = (Role.USER, Role.SERVICE, Role.ADMIN)


@dataclass(frozen=True, slots=True)
class Principal:
    subject: str
    role: Role
    #: Topic patterns the token grants beyond the role (claim ``topics``).
    grants: tuple[str, ...] = ()
    expires_at: float | None = None
    #: For a stream ticket: the only topic patterns it may open; ``None`` for other credentials.
    ticket_topics: tuple[str, ...] | None = None
    #: How the credential arrived: ``bearer``, ``query``, ``ticket`` or ``cookie``.
    via: str = "bearer"

    @property
    def is_privileged(self) -> bool:
        return self.role in (Role.ADMIN, Role.SERVICE)

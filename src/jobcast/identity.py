"""Reading a principal from a token's claims: jobcast's own, or an identity provider's.

jobcast's own tokens (``jobcast token``, tickets, sessions) carry ``sub``, ``role`` and
``topics``. An identity provider's tokens name things their own way, and a
:class:`ClaimMapping` says where to look:

- the subject: ``sub`` by default, or e.g. ``preferred_username`` (Keycloak) or ``oid``
  (Entra ID);
- the roles: a claim holding a list of names (or one space-separated string), named by a
  dotted path such as ``realm_access.roles`` (Keycloak) or by a namespaced URL such as
  ``https://example.com/roles`` (Auth0), which contains dots itself: at each level the
  longest name that is a key wins, so the whole name is tried before it is split (see
  :func:`claim_at`);
- the provider's role names mapped to jobcast's roles (``role_map``); with no map, a name
  that already is a jobcast role (``admin``, ``service``, ``user``) stands for itself;
- scopes (``scp`` as a list or a space-separated string, as Entra ID and Okta send them,
  and the standard space-separated ``scope``) mapped to roles (``scope_roles``).

A principal holding several roles gets the most privileged; one holding none is a ``user``.
When neither a roles claim nor scope roles are configured, the provider's token is read as
jobcast's own (its ``role`` claim), as before; once they are, its ``role`` claim is ignored,
so a claim the provider lets users edit cannot grant a role.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from jobcast.errors import InvalidInput, Unauthorized
from jobcast.principal import ROLE_ORDER, Principal, Role
from jobcast.topics import TopicPattern

#: Returned by :func:`claim_at` for a path that names nothing.
MISSING: Any = object()

#: The claims that carry OAuth scopes: Entra ID and Okta use ``scp``, the standard ``scope``.
SCOPE_CLAIMS = ("scp", "scope")


def claim_at(claims: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted ``path``, or :data:`MISSING`.

    At each level the longest prefix of the remaining path that is a key is taken first, so
    ``https://example.com/roles`` is found as one key while ``realm_access.roles`` walks into
    ``realm_access``; a shorter prefix is tried only when the longer one leads nowhere.
    """
    if path in claims:
        return claims[path]
    end = path.rfind(".")
    while end > 0:
        head = path[:end]
        inner = claims.get(head)
        if isinstance(inner, Mapping):
            found = claim_at(inner, path[end + 1 :])
            if found is not MISSING:
                return found
        end = path.rfind(".", 0, end)
    return MISSING


def names_in(value: Any, claim: str) -> list[str]:
    """A claim holding names: a list of strings, or one string of space-separated names."""
    if value is MISSING or value is None:
        return []
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return value
    raise Unauthorized(f"the {claim!r} claim must be a list of names", reason="invalid_claim")


@dataclass(frozen=True, slots=True)
class ClaimMapping:
    """Where an identity provider's tokens keep the subject and the roles."""

    subject_claim: str = "sub"
    #: A dotted path or a namespaced claim name; ``None``: read jobcast's ``role`` claim.
    roles_claim: str | None = None
    #: The provider's role names to jobcast's roles.
    role_map: Mapping[str, Role] = field(default_factory=dict)
    #: OAuth scopes to jobcast's roles.
    scope_roles: Mapping[str, Role] = field(default_factory=dict)

    @property
    def maps_roles(self) -> bool:
        return self.roles_claim is not None or bool(self.scope_roles)

    def principal(self, claims: Mapping[str, Any], via: str = "bearer") -> Principal:
        """The principal of an identity provider's token (verified already)."""
        subject = claim_at(claims, self.subject_claim)
        if not isinstance(subject, str) or not subject:
            raise Unauthorized(
                f"the token's {self.subject_claim!r} claim must be a non-empty string",
                reason="missing_claim",
            )
        role = self._role(claims) if self.maps_roles else jobcast_role(claims)
        return Principal(subject, role, grants_in(claims), expires_at(claims), via=via)

    def _role(self, claims: Mapping[str, Any]) -> Role:
        held: list[Role] = []
        if self.roles_claim is not None:
            names = names_in(claim_at(claims, self.roles_claim), self.roles_claim)
            held.extend(_mapped(names, self.role_map or _IDENTITY))
        for claim in SCOPE_CLAIMS:
            held.extend(_mapped(names_in(claims.get(claim), claim), self.scope_roles))
        return max(held, key=ROLE_ORDER.index, default=Role.USER)


_IDENTITY: Mapping[str, Role] = {role.value: role for role in Role}


def _mapped(names: Iterable[str], mapping: Mapping[str, Role]) -> Iterable[Role]:
    return (mapping[name] for name in names if name in mapping)


def principal_from_claims(claims: Mapping[str, Any], via: str = "bearer") -> Principal:
    """The principal of one of jobcast's own tokens: ``sub``, ``role``, ``topics``."""
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise Unauthorized("the token's 'sub' claim must be a string", reason="missing_claim")
    return Principal(subject, jobcast_role(claims), grants_in(claims), expires_at(claims), via=via)


def jobcast_role(claims: Mapping[str, Any]) -> Role:
    try:
        return Role(claims.get("role", Role.USER.value))
    except ValueError:
        raise Unauthorized(f"unknown role {claims.get('role')!r}", reason="invalid_claim") from None


def grants_in(claims: Mapping[str, Any]) -> tuple[str, ...]:
    """The topic patterns of the ``topics`` claim, each parsed as the policy will parse it:
    a bad grant is a bad token (401), not a bad request (422) at whichever route first asks
    the policy about it."""
    topics = claims.get("topics", [])
    if not isinstance(topics, list) or not all(isinstance(t, str) for t in topics):
        raise Unauthorized("the 'topics' claim must be a list of patterns", reason="invalid_claim")
    for grant in topics:
        try:
            TopicPattern.parse(grant)
        except InvalidInput as exc:
            raise Unauthorized(
                f"the 'topics' claim holds {exc.message}", reason="invalid_claim"
            ) from None
    return tuple(topics)


def expires_at(claims: Mapping[str, Any]) -> float | None:
    exp = claims.get("exp")
    return timestamp(exp, "exp") if exp is not None else None


def timestamp(value: Any, claim: str) -> float:
    """A time claim as a float; PyJWT checks it is a number, not that a float can hold it."""
    try:
        return float(value)
    except (OverflowError, TypeError, ValueError):
        raise Unauthorized(f"the {claim!r} claim is not a time", reason="invalid_claim") from None

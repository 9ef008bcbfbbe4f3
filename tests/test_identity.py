"""Reading principals from identity providers' claims (identity.py)."""

from __future__ import annotations

from typing import Any

import pytest

from jobcast.errors import Unauthorized
from jobcast.identity import MISSING, ClaimMapping, claim_at
from jobcast.principal import Role

KEYCLOAK: dict[str, Any] = {
    "sub": "f1b2",
    "preferred_username": "alice",
    "azp": "jobcast-web",
    "typ": "Bearer",
    "realm_access": {"roles": ["offline_access", "jobcast-admin"]},
    "resource_access": {"jobcast": {"roles": ["publisher"]}},
}


@pytest.mark.parametrize(
    ("claims", "path", "value"),
    [
        (KEYCLOAK, "realm_access.roles", ["offline_access", "jobcast-admin"]),
        (KEYCLOAK, "resource_access.jobcast.roles", ["publisher"]),
        ({"https://example.com/roles": ["admin"]}, "https://example.com/roles", ["admin"]),
        # A namespaced object: the longest key is taken, then the walk goes on inside it.
        ({"https://example.com/app": {"roles": ["x"]}}, "https://example.com/app.roles", ["x"]),
        # The longest key leads nowhere: a shorter one is tried.
        ({"a.b": {}, "a": {"b": {"c": 1}}}, "a.b.c", 1),
        (KEYCLOAK, "realm_access.missing", MISSING),
        (KEYCLOAK, "preferred_username.x", MISSING),
        ({}, "roles", MISSING),
    ],
)
def test_claim_paths_walk_objects_and_keep_namespaced_names_whole(
    claims: dict[str, Any], path: str, value: Any
) -> None:
    assert claim_at(claims, path) is value or claim_at(claims, path) == value


def test_keycloak_roles_through_the_map_and_the_most_privileged_wins() -> None:
    mapping = ClaimMapping(
        subject_claim="preferred_username",
        roles_claim="realm_access.roles",
        role_map={"jobcast-admin": Role.ADMIN, "offline_access": Role.SERVICE},
    )
    principal = mapping.principal({**KEYCLOAK, "exp": 100})
    assert (principal.subject, principal.role, principal.expires_at) == ("alice", "admin", 100.0)


def test_without_a_map_only_jobcast_role_names_count() -> None:
    mapping = ClaimMapping(roles_claim="roles")
    assert mapping.principal({"sub": "a", "roles": ["service", "reader"]}).role is Role.SERVICE
    assert mapping.principal({"sub": "a", "roles": ["reader"]}).role is Role.USER
    assert mapping.principal({"sub": "a"}).role is Role.USER


def test_with_a_map_a_provider_role_named_like_a_jobcast_role_does_not_count() -> None:
    mapping = ClaimMapping(roles_claim="roles", role_map={"Jobs.Publish": Role.SERVICE})
    assert mapping.principal({"sub": "a", "roles": ["admin"]}).role is Role.USER
    assert mapping.principal({"sub": "a", "roles": ["Jobs.Publish"]}).role is Role.SERVICE


@pytest.mark.parametrize(
    "claims",
    [
        {"sub": "a", "scp": "User.Read Jobs.Publish"},  # Entra ID: a space-separated string
        {"sub": "a", "scp": ["openid", "Jobs.Publish"]},  # Okta: a list
        {"sub": "a", "scope": "openid Jobs.Publish"},  # the standard claim
    ],
)
def test_scopes_grant_roles_in_every_shape(claims: dict[str, Any]) -> None:
    mapping = ClaimMapping(scope_roles={"Jobs.Publish": Role.SERVICE})
    assert mapping.principal(claims).role is Role.SERVICE


def test_a_mapped_token_cannot_name_its_own_role() -> None:
    mapping = ClaimMapping(roles_claim="roles")
    assert mapping.principal({"sub": "a", "role": "admin"}).role is Role.USER
    # Without any role mapping the provider's token is read as jobcast's own, as before.
    assert ClaimMapping().principal({"sub": "a", "role": "admin"}).role is Role.ADMIN


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"oid": "o-1", "roles": {"admin": True}}, "invalid_claim"),
        ({"oid": "o-1", "roles": [1, 2]}, "invalid_claim"),
        ({"oid": "o-1", "scp": 7}, "invalid_claim"),
        ({"oid": ""}, "missing_claim"),
        ({"sub": "a"}, "missing_claim"),  # the subject claim is oid here
    ],
)
def test_claims_of_the_wrong_shape_are_401_with_the_reason(
    claims: dict[str, Any], reason: str
) -> None:
    mapping = ClaimMapping(subject_claim="oid", roles_claim="roles")
    with pytest.raises(Unauthorized) as caught:
        mapping.principal(claims)
    assert caught.value.reason == reason

"""The handler registry: decorating, loading modules by name, validating params."""

from __future__ import annotations

import pytest

from jobcast.errors import InvalidInput
from jobcast.jobs import JobContext, Registry
from jobcast.jobs.builtin import DemoParams
from jobcast.jobs.builtin import registry as builtins


def test_load_module_takes_every_registry_it_defines() -> None:
    registry = Registry()
    registry.load_module("tests.handlers")
    assert {"spin", "wait_cancel", "slow"} <= set(registry.kinds)
    assert registry.get("slow").timeout == 0.3
    assert registry.get("wait_cancel").is_async
    assert not registry.get("spin").is_async


@pytest.mark.parametrize(
    ("name", "fragment"), [("no.such.module", "cannot import"), ("json", "defines no Registry")]
)
def test_unloadable_modules_are_explained(name: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        Registry().load_module(name)


def test_a_kind_cannot_be_registered_twice() -> None:
    registry = Registry()

    @registry.handler("x")
    def first(ctx: JobContext, params: object) -> None: ...

    with pytest.raises(ValueError, match="already registered"):

        @registry.handler("x")
        def second(ctx: JobContext, params: object) -> None: ...


def test_params_are_validated_and_normalised_by_the_model() -> None:
    demo = builtins.get("demo")
    assert demo.params_model is DemoParams
    assert demo.validate_params({"steps": 2}) == {"steps": 2, "delay": 0.5, "fail_at": None}
    with pytest.raises(InvalidInput, match="steps"):
        demo.validate_params({"steps": -1})
    with pytest.raises(InvalidInput, match="unknown job kind 'nope'"):
        builtins.get("nope")

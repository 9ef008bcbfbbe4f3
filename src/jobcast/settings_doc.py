"""Render the settings reference (``docs/settings.md``) from the :class:`Settings` model.

``python -m jobcast.settings_doc > docs/settings.md`` regenerates it; a test fails when the
committed file differs, so the reference cannot drift from the code. Everything shown comes
from the model: the variable name, the type and its bounds, the default and the description.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import SecretStr
from pydantic.fields import FieldInfo

from jobcast.config import Settings

HEADER = """\
# Settings reference

<!-- Generated from jobcast.config.Settings by `python -m jobcast.settings_doc`; do not edit. -->

Every setting is an environment variable (or a line in a `.env` file in the working
directory). Lists are comma-separated. Durations are seconds unless the name says `_ms`. The
deployment guide, [deployment.md](deployment.md), says which ones matter where.

| variable | type | default | meaning |
|---|---|---|---|
"""

_TYPE_NAMES: dict[Any, str] = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    Path: "path",
    SecretStr: "secret",
}

_BOUNDS = (
    (annotated_types.Ge, "ge", "≥"),
    (annotated_types.Gt, "gt", ">"),
    (annotated_types.Le, "le", "≤"),
    (annotated_types.Lt, "lt", "<"),
)


def env_name(name: str) -> str:
    prefix = Settings.model_config.get("env_prefix", "")
    return f"{prefix}{name}".upper()


def type_name(field: FieldInfo) -> str:
    annotation = field.annotation
    optional = False
    if get_origin(annotation) in (Union, types.UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        optional = len(members) < len(get_args(annotation))
        annotation = members[0] if len(members) == 1 else annotation
    if get_origin(annotation) is list:
        text = "list"
    elif get_origin(annotation) is dict:
        text = "name=value pairs"
    elif get_origin(annotation) is Literal:
        text = "one of " + ", ".join(f"`{value}`" for value in get_args(annotation))
    else:
        text = _TYPE_NAMES.get(annotation, getattr(annotation, "__name__", str(annotation)))
    bounds = [
        f"{symbol} {_number(getattr(item, attribute))}"
        for item in field.metadata
        for kind, attribute, symbol in _BOUNDS
        if isinstance(item, kind)
    ]
    if bounds:
        text += " " + ", ".join(bounds)
    return f"{text}, optional" if optional else text


def default_text(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value: Any = field.get_default(call_default_factory=True)
    if value is None:
        return "unset"
    if isinstance(value, list):
        return f"`{','.join(str(item) for item in value)}`" if value else "empty"
    if isinstance(value, dict):
        pairs = ",".join(f"{key}={item}" for key, item in value.items())
        return f"`{pairs}`" if value else "empty"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, int | float):
        return f"`{_number(value)}`"
    return f"`{value}`"


def _number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def render() -> str:
    """The whole reference, one table row per field, in the model's order."""
    rows = [
        f"| `{env_name(name)}` | {type_name(field)} | {default_text(field)} | "
        f"{_cell(field.description or '')} |\n"
        for name, field in Settings.model_fields.items()
    ]
    return HEADER + "".join(rows)


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()

"""``docs/settings.md`` is generated from the settings model and must not drift from it."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic.fields import FieldInfo

from jobcast.config import Settings
from jobcast.settings_doc import render, type_name

DOC = Path(__file__).parent.parent / "docs" / "settings.md"


def test_the_committed_reference_is_the_generated_one() -> None:
    assert DOC.read_text() == render(), (
        "docs/settings.md is out of date: python -m jobcast.settings_doc > docs/settings.md"
    )


def test_every_setting_is_described() -> None:
    undescribed = [name for name, f in Settings.model_fields.items() if not f.description]
    assert not undescribed, f"add a description= to these settings: {undescribed}"


def test_rows_name_the_variable_type_and_default() -> None:
    rows = {line.split(" | ")[0]: line for line in render().splitlines() if line.startswith("| `")}
    assert len(rows) == len(Settings.model_fields)
    assert rows["| `JOBCAST_HEARTBEAT_INTERVAL`"].startswith(
        "| `JOBCAST_HEARTBEAT_INTERVAL` | number > 0 | `15` | "
    )
    assert "| list | `progress` |" in rows["| `JOBCAST_CONFLATE_TYPES`"]
    assert "| secret, optional | unset |" in rows["| `JOBCAST_JWT_SECRET`"]


def test_choices_and_optional_types_read_plainly() -> None:
    choice = FieldInfo.from_annotation(Literal["text", "json"] | None)
    assert type_name(choice) == "one of `text`, `json`, optional"

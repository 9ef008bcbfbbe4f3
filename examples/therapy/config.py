"""Configuration: who treats whom, and how long the simulated pipeline takes.

``THERAPY_ASSIGNMENTS`` is ``therapist:patient,patient;therapist:patient`` (token subjects).
Everything jobcast offers is set with its ``JOBCAST_*`` variables (``JOBCAST_JWT_SECRET``, or
``JOBCAST_JWT_JWKS_URL`` for an identity provider's tokens; ``JOBCAST_HEARTBEAT_INTERVAL``,
15 s by default, as the front end expects).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobcast import Settings

DEFAULT_DATA_DIR = Path(".jobcast") / "therapy"


def parse_assignments(text: str) -> dict[str, frozenset[str]]:
    """``"dr-grey:pat-1,pat-2;dr-house:pat-3"`` -> therapist -> patients."""
    assignments: dict[str, frozenset[str]] = {}
    for entry in text.split(";"):
        therapist, _, patients = entry.partition(":")
        if therapist.strip():
            names = {name.strip() for name in patients.split(",") if name.strip()}
            assignments[therapist.strip()] = assignments.get(therapist.strip(), frozenset()) | names
    return assignments


@dataclass(frozen=True, slots=True)
class TherapyConfig:
    #: Therapist subject -> the patient subjects assigned to them.
    assignments: Mapping[str, frozenset[str]] = field(default_factory=dict)
    #: Seconds each step of the (simulated) processing pipeline takes.
    step_delay: float = 1.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> TherapyConfig:
        return cls(
            assignments=parse_assignments(env.get("THERAPY_ASSIGNMENTS", "")),
            step_delay=float(env.get("THERAPY_STEP_DELAY", cls().step_delay)),
        )

    def settings(self, **overrides: Any) -> Settings:
        values: dict[str, Any] = {}
        if "JOBCAST_DATA_DIR" not in os.environ:
            values["data_dir"] = DEFAULT_DATA_DIR
        values.update(overrides)
        return Settings(**values)

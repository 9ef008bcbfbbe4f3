"""The numbered decisions in module docstrings: each header names exactly the range listed.

A module states its design decisions as ``Decisions (cited as X1..Xn):`` followed by items
``X1.``, ``X2.`` ...; code comments cite them (``hub.H6``). A header that says ``H1..H4``
while the list runs to ``H7`` sends a reader looking for decisions that are not there.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import jobcast

SOURCE = Path(jobcast.__file__).parent
HEADER = re.compile(r"Decisions \(cited (?:in the code )?as ([A-Z])(\d+)\.\.([A-Z])(\d+)")


def modules_with_decisions() -> list[Path]:
    found = []
    for path in sorted(SOURCE.rglob("*.py")):
        docstring = ast.get_docstring(ast.parse(path.read_text()))
        if docstring and HEADER.search(docstring):
            found.append(path)
    return found


@pytest.mark.parametrize("path", modules_with_decisions(), ids=lambda p: str(p.relative_to(SOURCE)))
def test_a_decisions_header_names_the_decisions_listed(path: Path) -> None:
    docstring = ast.get_docstring(ast.parse(path.read_text())) or ""
    header = HEADER.search(docstring)
    assert header is not None
    letter, first, _, last = header.group(1), int(header.group(2)), header.group(3), header.group(4)
    listed = [int(n) for n in re.findall(rf"^{letter}(\d+)\. ", docstring, re.MULTILINE)]
    assert listed == list(range(first, int(last) + 1)), (
        f"the header says {letter}{first}..{letter}{last}, the list is {listed}"
    )

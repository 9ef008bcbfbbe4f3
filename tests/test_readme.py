"""The README is also the package's page on the package index, where a relative link leads
nowhere: every link is absolute, those into the repository name files that exist, images are
raw URLs (a page on the index cannot show a ``blob`` page), and the install command installs
from the index."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()
REPOSITORY = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Source"]
RAW = REPOSITORY.replace("https://github.com/", "https://raw.githubusercontent.com/") + "/main/"

#: ``[text](target)``, ``![alt](target)``, and HTML ``src=``/``href=`` attributes.
LINK = re.compile(r"(!?)\[[^\]]*\]\(([^)\s]+)[^)]*\)|(?:src|href)=\"([^\"]+)\"")


def links() -> list[tuple[bool, str]]:
    """(is an image, target) of every link in the README, code blocks left out."""
    text = re.sub(r"```.*?```", "", README, flags=re.DOTALL)
    return [(m[1] == "!", m[2] or m[3]) for m in LINK.finditer(text)]


def test_every_link_is_absolute() -> None:
    relative = [target for _, target in links() if not re.match(r"(https?:|mailto:|#)", target)]
    assert relative == []
    assert len(links()) > 10


def test_links_into_the_repository_name_files_it_has() -> None:
    missing = []
    for image, target in links():
        for base in (f"{REPOSITORY}/blob/main/", f"{REPOSITORY}/tree/main/", RAW):
            if target.startswith(base):
                path = ROOT / target.removeprefix(base).partition("#")[0]
                if not path.exists():
                    missing.append(target)
                if image and base != RAW:
                    missing.append(f"{target} (an image: use {RAW}...)")
    assert missing == []


def test_anchors_name_headings() -> None:
    headings = {
        re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in README.splitlines()
        if line.startswith("#")
    }
    anchors = [target[1:] for _, target in links() if target.startswith("#")]
    assert [anchor for anchor in anchors if anchor not in headings] == []


def test_the_install_command_installs_from_the_index() -> None:
    install = README.partition("## Install and run")[2].partition("```\n")[2].partition("```")[0]
    assert install.splitlines()[0] == 'pip install "jobcast[server]"'
    assert "jobcast serve" in install

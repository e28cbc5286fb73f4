"""The repository as shipped: its licence, and what its files may cite.

Notes the project was built from outside this repository are not shipped:
everything the code relies on is in docs/design-notes.md, and code, docs
and tests cite its sections by anchor.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import zipfile
from pathlib import Path
from typing import List

import pytest

from support import ROOT, Dists, markdown_anchors

#: Built by concatenation so that this file does not cite them itself.
#: The contract and the API facts live outside the repository: what the
#: code relies on from them is in docs/design-notes.md and the README.
UNSHIPPED = ("pitfalls" + ".md", "../" + "shared", "design" + ".md", "faircom-json-api" + ".md")
NOTES = ROOT / "docs" / "design-notes.md"


def tracked_files() -> List[Path]:
    """The files git tracks (what a clone or an sdist ships), text only."""
    git = shutil.which("git")
    if git is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    out = subprocess.run([git, "ls-files", "-z"], cwd=str(ROOT), capture_output=True, check=True).stdout
    files = []
    for name in out.decode().split("\0"):
        path = ROOT / name
        if name and path.is_file() and path.suffix not in (".png", ".jpg", ".gz", ".whl"):
            files.append(path)
    assert len(files) > 50, "git ls-files found too little"
    return files


def read_text(path: Path) -> str:
    return path.read_bytes().decode("utf-8", errors="replace")


def test_no_tracked_file_cites_notes_outside_the_repository() -> None:
    hits = [f"{p.relative_to(ROOT)}: {u}" for p in tracked_files() for u in UNSHIPPED if u in read_text(p)]
    assert hits == [], "cite a section of docs/design-notes.md instead"


def test_every_docs_anchor_cited_exists() -> None:
    cited = 0
    for path in tracked_files():
        for doc, anchor in re.findall(r"docs/([\w-]+\.md)#([\w-]+)", read_text(path)):
            target = ROOT / "docs" / doc
            assert target.is_file(), f"{path.relative_to(ROOT)} cites missing docs/{doc}"
            assert anchor in markdown_anchors(read_text(target)), \
                f"{path.relative_to(ROOT)} cites docs/{doc}#{anchor}, which has no such section"
            cited += 1
    assert cited >= 5, "the code cites the design notes by section"


def test_design_notes_name_code_and_tests_that_exist() -> None:
    text = read_text(NOTES)
    anchors = markdown_anchors(text)
    assert len(anchors) == len(set(anchors))
    for link in re.findall(r"\]\(#([\w-]+)\)", text):
        assert link in anchors, link
    # `tests/test_x.py::test_name`, and `::test_other` for the same file after it.
    current, named = None, 0
    for path, test in re.findall(r"`(tests/test_\w+\.py)?::(test_\w+)`", text):
        current = path or current
        assert current is not None
        assert re.search(rf"^def {test}\(", read_text(ROOT / current), re.M), f"{current}::{test} does not exist"
        named += 1
    # `fcmon/x.py`: `name` or `Class.method`: each part defined in that module.
    for path, names in re.findall(r"`(fcmon/[\w/]+\.py)`: `([\w.]+)`", text):
        source = read_text(ROOT / path)
        for part in names.split("."):
            assert re.search(rf"\b{part}\b", source), f"{path} has no {part}"
    # Every section names its tests.
    sections = text.split("\n## ")[1:]
    assert len(sections) >= 15
    for section in sections:
        assert "**Guarded by.**" in section and "::test_" in section, section.splitlines()[0]
    assert named >= len(sections)


def test_cryptography_floor_covers_the_apis_used() -> None:
    # docs/design-notes.md#cryptography-versions
    source = "".join(read_text(p) for p in (ROOT / "fcmon").rglob("*.py"))
    m = re.search(r'"cryptography>=(\d+)', (ROOT / "pyproject.toml").read_text())
    assert m, "pyproject must give cryptography a floor"
    floor = int(m.group(1))
    for api, since in (("not_valid_after_utc", 42), ("not_valid_before_utc", 42),
                       ("load_pem_x509_certificates", 39)):
        if api in source:
            assert floor >= since, f"{api} needs cryptography >= {since}"

#: sha256 of the Apache License 2.0 as apache.org publishes it
#: (https://www.apache.org/licenses/LICENSE-2.0.txt; Debian ships the same
#: bytes as /usr/share/common-licenses/Apache-2.0).
APACHE_2_0_SHA256 = "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30"


def test_license_is_the_full_apache_2_0_text() -> None:
    text = (ROOT / "LICENSE").read_bytes()
    assert hashlib.sha256(text).hexdigest() == APACHE_2_0_SHA256, "LICENSE is not the verbatim Apache-2.0 text"


def test_pyproject_declares_the_license_and_ships_its_file() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^license = "Apache-2.0"$', pyproject, re.M)
    assert re.search(r'^license-files = \["LICENSE"\]$', pyproject, re.M)


@pytest.mark.slow
def test_wheel_metadata_carries_the_license(release_dists: Dists) -> None:
    # The wheel `make dist` builds (once per session, see conftest.py).
    with zipfile.ZipFile(release_dists.wheel) as z:
        names = z.namelist()
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        lines = z.read(metadata).decode().splitlines()
        (license_file,) = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
        assert hashlib.sha256(z.read(license_file)).hexdigest() == APACHE_2_0_SHA256
    assert "License-Expression: Apache-2.0" in lines
    assert "License-File: LICENSE" in lines

"""The repository as shipped: its licence, and what its files may cite."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from support import ROOT

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
def test_wheel_metadata_carries_the_license(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    (wheel,) = tmp_path.glob("fcmon-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        lines = z.read(metadata).decode().splitlines()
        (license_file,) = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
        assert hashlib.sha256(z.read(license_file)).hexdigest() == APACHE_2_0_SHA256
    assert "License-Expression: Apache-2.0" in lines
    assert "License-File: LICENSE" in lines

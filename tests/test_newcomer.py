"""A newcomer's rough edges (issue 19, item 7), each as it is met."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from fcmon.config import WebConfig
from fcmon.web.app import App

from support import ROOT


def _call(app: App, path: str, query: str) -> Tuple[str, bytes]:
    got: Dict[str, object] = {}

    def start_response(status: str, headers: List[Tuple[str, str]]) -> None:
        got["status"] = status

    environ = {"PATH_INFO": path, "QUERY_STRING": query, "REQUEST_METHOD": "GET"}
    body = b"".join(app(environ, start_response))
    return str(got["status"]), body


def test_probe_without_target_is_400_naming_the_parameter() -> None:
    asked: List[str] = []
    app = App(lambda: b"", lambda: True, lambda: True, lambda name: asked.append(name), WebConfig())
    for query in ("", "target=", "debug=true", "target=a&target=b"):
        status, body = _call(app, "/probe", query)
        assert status == "400 Bad Request", query
        assert b"'target' parameter" in body and b"/probe?target=NAME" in body
    assert asked == []  # nothing probed
    assert _call(app, "/probe", "target=nope")[0] == "404 Not Found"  # a name, unknown: as before
    assert asked == ["nope"]


def _fake_venv(root: Path, version: str) -> Path:
    venv = root / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(f"#!/bin/sh\necho {version}\n")
    python.chmod(0o755)
    return venv


def _make_n(venv: Path) -> subprocess.CompletedProcess:
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    return subprocess.run([make, "-n", "demo", f"PYTHON={sys.executable}", f"VENV={venv}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_make_rebuilds_a_venv_of_another_python_and_says_so(tmp_path: Path) -> None:
    venv = _fake_venv(tmp_path, "3.0.1")
    proc = _make_n(venv)
    want = sys.version.split()[0]
    assert f"{venv} is Python 3.0.1, PYTHON={sys.executable} is Python {want}: rebuilding {venv}" in proc.stdout
    assert not venv.exists()
    assert f"-m venv {venv}" in proc.stdout


def test_make_keeps_a_venv_of_the_same_python(tmp_path: Path) -> None:
    venv = _fake_venv(tmp_path, sys.version.split()[0])
    proc = _make_n(venv)
    assert "rebuilding" not in proc.stdout and venv.exists()


def test_examples_carry_the_current_version() -> None:
    """A README or runbook example naming an older fcmon reads as if it were for another release."""
    from fcmon import __version__

    pattern = re.compile(r"(blob/v|localhost/fcmon:|fcmon-|\"fcmon\": \{\"version\": \")(\d+\.\d+\.\d+)")
    seen = []
    for path in ("README.md", "docs/runbook.md", "prometheus/fcmon-alerts.yml", "config.ini"):
        for m in pattern.finditer((ROOT / path).read_text()):
            seen.append((path, m.group(0)))
            assert m.group(2) == __version__, f"{path}: {m.group(0)} (fcmon is {__version__})"
    assert len(seen) >= 4, seen  # the runbook's and the rules' sed line, the README's image and JSON


def test_the_exported_docs_link_only_to_exported_files() -> None:
    """`fcmon assets export` writes README.md and the runbook: a link to a file left
    behind in the repository would be broken on the host that reads them."""
    from fcmon import assetfiles

    exported = set(assetfiles.collect(ROOT))
    for doc in ("README.md", "docs/runbook.md", "CHANGELOG.md"):
        base = Path(doc).parent
        for target in re.findall(r"\]\(([^)\s]+)\)", (ROOT / doc).read_text()):
            path = target.split("#", 1)[0]
            if not path or re.match(r"^[a-z]+:", path):
                continue  # an anchor in the same file, or a URL
            name = (base / path).as_posix()
            assert name in exported, f"{doc} links to {target}, which `fcmon assets export` does not write"


# -- certificates for a real install, and the emulator to rehearse with (item 8)


def test_emulator_help_documents_the_control_api_and_short_lived_certificates() -> None:
    from dataclasses import fields

    from fcmon.emulator.faults import Fault
    from fcmon.emulator.server import CONTROL_FAULT_PATH, CONTROL_LISTENER_PATH, CONTROL_SESSIONS_PATH

    proc = subprocess.run([sys.executable, "-m", "fcmon", "emulator", "--help"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    for path in (CONTROL_FAULT_PATH, CONTROL_SESSIONS_PATH, CONTROL_LISTENER_PATH):
        assert path in text
    for f in fields(Fault):
        assert f.name in text, f.name
    for option in ("--cert FILE --key FILE", "--client-ca FILE", "--server-days 0.01", "--client-days N"):
        assert option in text
    readme = " ".join((ROOT / "README.md").read_text().split())
    for said in ("--server-days", CONTROL_FAULT_PATH, "fcmon emulator --help"):
        assert said in readme


def test_emulator_generates_short_lived_certificates_to_rehearse_an_expiry(tmp_path: Path) -> None:
    import time

    from cryptography import x509

    from support import reap

    proc = subprocess.Popen([sys.executable, "-m", "fcmon", "emulator", "--listen", "127.0.0.1:0",
                             "--pki-dir", str(tmp_path), "--server-days", "0.01", "--client-days", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "generated PKI in" in line:
                break
        now = time.time()
        for name, days in (("server", 0.01), ("client", 2)):
            cert = x509.load_pem_x509_certificate((tmp_path / f"{name}.crt").read_bytes())
            start, end = cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp()
            # valid `days`, from 5 minutes ago (clock skew)
            assert end - start == days * 86400 and now - 400 < start <= now - 290, name
    finally:
        reap(proc)
    bad = subprocess.run([sys.executable, "-m", "fcmon", "emulator", "--server-days", "-1"], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and "expected more than 0" in bad.stderr


def test_a_missing_file_inherited_from_defaults_is_reported_once(tmp_path: Path) -> None:
    from fcmon.commands.validate import validate

    config = tmp_path / "config.ini"
    config.write_text("[defaults]\nca_file = nowhere/ca.crt\nusername = u\npassword_file = nowhere/pw\n"
                      + "".join(f"[target:t{i}]\nendpoint = https://db{i}.example.com/api\n" for i in range(5)))
    _, problems = validate(config, {})
    assert len(problems) == 2, problems  # one per key, not one per target that inherits it
    assert all(p.startswith(f"{config}: [defaults] ") for p in problems)
    proc = subprocess.run([sys.executable, "-m", "fcmon", "check", "-c", str(config)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 3 and proc.stdout.count("nowhere/ca.crt") == 1, proc.stdout

"""The release as a user gets it: the sdist and wheel `make dist` builds,
the wheelhouse `make wheelhouse` collects, and the wheel installed into a
fresh venv (from the wheelhouse with the index disabled) and with pipx, then
run from a temp dir with no repository on sys.path: --version, assets
export, validate on the exported example config, promtool on the exported
rules, and `fcmon demo` until it reports `fcmon_up 1`.

The build runs once per session; installs never touch an index."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List

import pytest

import fcmon
from fcmon import assetfiles
from support import ROOT, Dists, release_tools, require_tool, sample

pytestmark = pytest.mark.slow

VERSION = fcmon.__version__


release = release_tools()


def _offline_env(**extra: str) -> Dict[str, str]:
    """The environment with pip's configuration (indexes, find-links) left out."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON"))}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    env.update(extra)
    return env


def _run(cmd: List[str], cwd: Path, env: Dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    out = subprocess.run([str(c) for c in cmd], cwd=str(cwd), env=env, capture_output=True,
                         text=True, timeout=timeout)
    assert out.returncode == 0, f"{' '.join(map(str, cmd))} exited {out.returncode}:\n{out.stdout}\n{out.stderr}"
    return out


def test_dist_contents_sdist_has_tests_and_docs_wheel_has_assets_and_nothing_else(release_dists: Dists) -> None:
    assert release.check(release_dists.wheel.parent) == []
    import zipfile

    with zipfile.ZipFile(release_dists.wheel) as z:
        names = z.namelist()
    for name in assetfiles.collect(ROOT):
        assert f"fcmon/assets/{name}" in names
    assert not [n for n in names if n.startswith(("tests/", "bench/")) or "__pycache__" in n]


def test_contents_check_catches_a_drifted_asset(release_dists: Dists, tmp_path: Path) -> None:
    """The byte-for-byte comparison is real: a wheel whose unit differs fails it;
    so is the module list: a wheel without one of the sub-packages' modules fails it."""
    import zipfile

    bad = tmp_path / release_dists.wheel.name
    with zipfile.ZipFile(release_dists.wheel) as src, zipfile.ZipFile(bad, "w") as dst:
        for item in src.infolist():
            if item.filename == "fcmon/probe/run.py":
                continue
            data = src.read(item)
            if item.filename == "fcmon/assets/systemd/fcmon.service":
                data += b"# drift\n"
            dst.writestr(item, data)
        dst.writestr("tests/test_x.py", b"")
    problems = release.wheel_problems(bad)
    assert "wheel: asset systemd/fcmon.service differs from the repository's systemd/fcmon.service" in problems
    assert "wheel: test or bench file tests/test_x.py" in problems
    assert "wheel: module fcmon/probe/run.py missing" in problems


def test_contents_check_catches_an_sdist_without_tests(release_dists: Dists, tmp_path: Path) -> None:
    import tarfile

    bad = tmp_path / release_dists.sdist.name
    with tarfile.open(release_dists.sdist) as src, tarfile.open(bad, "w:gz") as dst:
        for member in src.getmembers():
            if "/tests/conftest.py" in member.name:
                continue
            dst.addfile(member, src.extractfile(member) if member.isfile() else None)
        cache = tarfile.TarInfo(f"fcmon-{VERSION}/fcmon/__pycache__/cli.cpython-311.pyc")
        dst.addfile(cache, None)
    problems = release.sdist_problems(bad)
    assert "sdist: tests/conftest.py missing" in problems
    assert "sdist: cache or build file fcmon/__pycache__/cli.cpython-311.pyc" in problems


def test_wheelhouse_holds_the_wheel_and_every_dependency(release_dists: Dists) -> None:
    names = {re.split(r"-\d", p.name, 1)[0].lower().replace("_", "-") for p in release_dists.house.glob("*.whl")}
    assert {"fcmon", "requests", "urllib3", "cryptography", "prometheus-client", "apscheduler"} <= names
    assert not list(release_dists.house.glob("*.tar.gz")), "the wheelhouse must be wheels only (no build on the host)"


# --- installed like a user ----------------------------------------------------


@dataclass(frozen=True)
class Installed:
    how: str
    fcmon: Path  # the console script
    python: Path  # the interpreter of the environment fcmon lives in
    prefix: Path


def _venv_install(release_dists: Dists, where: Path) -> Installed:
    """A plain venv, then pip install from the wheelhouse with no index.

    The venv is made --without-pip and this test run's pip installs into it
    (`pip --python`): ensurepip costs 5-15 s on a loaded machine and checks
    nothing of fcmon's; the install itself is the same."""
    venv = where / "venv"
    env = _offline_env()
    _run([sys.executable, "-m", "venv", "--without-pip", venv], where, env)
    pip = [sys.executable, "-m", "pip", "--python", venv / "bin" / "python"]
    _run(pip + ["install", "-q", "--no-index", "--find-links", release_dists.house, f"fcmon=={VERSION}"], where, env)
    _run(pip + ["check"], where, env)
    return Installed("venv", venv / "bin" / "fcmon", venv / "bin" / "python", venv)


class _PipxJob:
    """`pipx install` of the wheel file, its dependencies from the wheelhouse,
    started in the background (pipx sets up its shared pip first, ~15 s) and
    joined when the pipx tests need it."""

    def __init__(self, release_dists: Dists, where: Path) -> None:
        pipx = require_tool("pipx")
        self.home, self.bindir, self.where = where / "pipx", where / "bin", where
        env = _offline_env(PIPX_HOME=str(self.home), PIPX_BIN_DIR=str(self.bindir))
        # pipx's own shared pip comes from the index as usual; fcmon and its
        # dependencies only from the wheelhouse.
        env.pop("PIP_CONFIG_FILE")
        base_python = shutil.which("python3", path=str(Path(sys.base_prefix) / "bin")) or sys.executable
        self.cmd = [pipx, "install", "--python", base_python,
                    "--pip-args", f"--no-index --find-links {release_dists.house}", str(release_dists.wheel)]
        self.log = (where / "pipx.log").open("w+")
        self.proc = subprocess.Popen(self.cmd, cwd=str(where), env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT)

    def result(self) -> Installed:
        try:
            code = self.proc.wait(300)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            code = None
        self.log.seek(0)
        output = self.log.read()
        assert code == 0, f"{' '.join(self.cmd)} exited {code}:\n{output}"
        return Installed("pipx", self.bindir / "fcmon", self.home / "venvs" / "fcmon" / "bin" / "python",
                         self.home)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()


@pytest.fixture(scope="session")
def pipx_job(release_dists: Dists, tmp_path_factory: pytest.TempPathFactory) -> Iterator[_PipxJob]:
    job = _PipxJob(release_dists, tmp_path_factory.mktemp("install-pipx"))
    yield job
    job.close()


@pytest.fixture(scope="module", params=["venv", "pipx"])
def installed(request: pytest.FixtureRequest, release_dists: Dists,
              tmp_path_factory: pytest.TempPathFactory) -> Installed:
    if request.param == "venv":
        try:
            request.getfixturevalue("pipx_job")  # start it now, to overlap the venv tests
        except BaseException:  # pipx missing outside CI: skip only the pipx tests
            pass
        return _venv_install(release_dists, tmp_path_factory.mktemp("install-venv"))
    job = request.getfixturevalue("pipx_job")
    return job.result()


@pytest.fixture
def run_env(tmp_path: Path) -> Dict[str, str]:
    env = _offline_env(HOME=str(tmp_path))
    env.pop("FCMON_CONFIG", None)
    return env


def test_installed_fcmon_runs_from_the_package_not_the_repository(
        installed: Installed, tmp_path: Path, run_env: Dict[str, str]) -> None:
    out = _run([installed.fcmon, "--version"], tmp_path, run_env)
    assert out.stdout.strip() == f"fcmon {VERSION}"
    where = _run([installed.python, "-c", "import fcmon, sys; print(fcmon.__file__); print(sys.path)"],
                 tmp_path, run_env).stdout
    module_file = Path(where.splitlines()[0]).resolve()
    assert installed.prefix.resolve() in module_file.parents, where
    assert str(ROOT) not in where, "the repository is on the installed fcmon's sys.path"
    listing = _run([installed.fcmon, "assets", "list"], tmp_path, run_env).stdout
    assert listing.splitlines()[0] == (
        f"fcmon {VERSION} assets (installed package: {module_file.parent / 'assets'}):")


def _point_at_demo_pki(config: Path, pki_dir: Path, creds: Path) -> None:
    """Rewrite every *_file of the exported example to the demo PKI's files;
    `$CREDENTIALS_DIRECTORY/NAME` paths get the file under that name in `creds`."""
    files = {
        "ca_file": pki_dir / "ca.crt", "client_ca_file": pki_dir / "ca.crt",
        "client_cert_file": pki_dir / "client.crt", "client_key_file": pki_dir / "client.key",
        "tls_cert_file": pki_dir / "server.crt", "tls_key_file": pki_dir / "server.key",
        "password_file": pki_dir / "password", "basic_auth_password_file": pki_dir / "password",
    }
    (pki_dir / "password").write_text("ADMIN\n")
    creds.mkdir(exist_ok=True)
    lines = []
    for line in config.read_text().splitlines():
        m = re.match(r"^(\w+_file)\s*=\s*(\S+)\s*$", line)
        if m:
            key, value = m.groups()
            if key not in files:
                pytest.fail(f"exported config.ini names {key} = {value}; this test does not know "
                            "which demo file stands for it (add it to _point_at_demo_pki)")
            if value.startswith("$CREDENTIALS_DIRECTORY/"):
                shutil.copyfile(files[key], creds / value.split("/", 1)[1])
            else:
                line = f"{key} = {files[key]}"
        lines.append(line)
    config.write_text("\n".join(lines) + "\n")


def test_exported_assets_deploy(installed: Installed, tmp_path: Path, run_env: Dict[str, str]) -> None:
    promtool = require_tool("promtool")
    export = tmp_path / "share"
    out = _run([installed.fcmon, "assets", "export", export], tmp_path, run_env)
    names = assetfiles.collect(ROOT)
    assert f"{len(names)} assets in {export} ({len(names)} written" in out.stdout
    for name in names:
        assert (export / name).read_bytes() == (ROOT / name).read_bytes(), f"installed {name} drifted"

    # The example config, pointed at a throw-away PKI the installed fcmon writes.
    pki_dir, creds = tmp_path / "pki", tmp_path / "credentials"
    _run([installed.python, "-c", "import sys; from pathlib import Path; from fcmon import pki; "
          "pki.write_demo_pki(Path(sys.argv[1]))", pki_dir], tmp_path, run_env)
    config = export / "config.ini"
    _point_at_demo_pki(config, pki_dir, creds)
    env = dict(run_env, CREDENTIALS_DIRECTORY=str(creds))
    out = _run([installed.fcmon, "validate", "-c", config], tmp_path, env)
    assert out.stdout.rstrip().endswith("config OK"), out.stdout

    rules = export / "prometheus"
    out = _run([promtool, "test", "rules", "fcmon-alerts.test.yml"], rules, run_env)
    assert "SUCCESS" in out.stdout + out.stderr
    _run([promtool, "check", "config", "prometheus.example.yml"], rules, run_env)


def test_installed_demo_reports_up(installed: Installed, tmp_path: Path, run_env: Dict[str, str]) -> None:
    # Port 0, the address read from its log: a port found free and closed
    # before the demo binds it can be taken meanwhile (CI once saw "address
    # already in use" here, with other tests' connections using ephemeral ports).
    log = (tmp_path / "demo.log").open("w+")
    proc = subprocess.Popen([str(installed.fcmon), "demo", "--listen", "127.0.0.1:0"],
                            cwd=str(tmp_path), env=run_env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        text = _wait_for_up(_metrics_url(proc, tmp_path / "demo.log", log, deadline), proc, log, deadline)
        assert sample(text, "fcmon_build_info", version=VERSION) == 1.0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, _tail(log)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.close()


def _metrics_url(proc: subprocess.Popen, path: Path, log, deadline: float) -> str:  # type: ignore[no-untyped-def]
    """The URL the demo's log says it serves metrics on (read through its
    own open file: the demo shares `log`'s offset)."""
    while True:
        found = re.search(r"serving metrics on (http://\S+)", path.read_text(errors="replace"))
        if found:
            return found.group(1)
        if proc.poll() is not None:
            pytest.fail(f"fcmon demo exited {proc.returncode} before serving metrics:\n{_tail(log)}")
        if time.monotonic() > deadline:
            pytest.fail(f"fcmon demo said nothing of serving metrics after 90 s:\n{_tail(log)}")
        time.sleep(0.1)


def _wait_for_up(url: str, proc: subprocess.Popen, log, deadline: float) -> str:  # type: ignore[no-untyped-def]
    """The /metrics text once it says fcmon_up{target="demo"} 1."""
    import requests

    session = requests.Session()
    session.trust_env = False
    up = None
    while True:
        if proc.poll() is not None:
            pytest.fail(f"fcmon demo exited {proc.returncode} before fcmon_up 1:\n{_tail(log)}")
        try:
            text = session.get(url, timeout=5).text
            up = sample(text, "fcmon_up", target="demo")
            if up == 1.0:
                return text
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"fcmon_up{{target=\"demo\"}} on {url} is {up}, not 1, after 90 s:\n{_tail(log)}")
        time.sleep(0.2)


def _tail(log) -> str:  # type: ignore[no-untyped-def]
    log.flush()
    log.seek(0)
    return log.read()[-3000:]

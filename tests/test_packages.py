"""The OCI image and the Debian package, exercised as built (`make test-packages`).

`make image` and `make deb` put them in dist/; these tests take them from
there (and the image from buildah's local storage), so what is tested is
what ships. Needs root, buildah, lintian, and the Debian root file system
`make test-packages` builds with mmdebstrap (build/deb-test-root.tar).
Marked `package`: `make test` never collects them (tests/conftest.py).

- image: labels name this version and its source; a fixed non-root user;
  `fcmon run` on /etc/fcmon/config.ini as entry point, port 9731, secrets in
  $CREDENTIALS_DIRECTORY; run with `buildah run` against the emulator on
  loopback it reaches fcmon_up 1, its HEALTHCHECK command passes (and fails
  with nothing listening), and it writes nothing to its root file system;
- package: lintian clean (every override explained), installed with
  `dpkg -i` into a fresh Debian root, `fcmon --version` on the PATH,
  `fcmon validate` of the installed config with a test PKI, the installed
  unit `systemd-analyze verify` clean, not enabled, and removed and purged
  leaving nothing of its own.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tarfile
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest

import fcmon
from fcmon.emulator import Emulator
from support import IN_CI, PKI, ROOT, free_port, release_tools, require_tool, sample, scrape, wait_for

pytestmark = pytest.mark.package

VERSION = fcmon.__version__
DIST = Path(os.environ.get("DIST", ROOT / "dist")).resolve()
IMAGE = f"{os.environ.get('IMAGE', 'localhost/fcmon')}:{VERSION}"
DEB_ROOT_TAR = Path(os.environ.get("DEB_TEST_ROOT", ROOT / "build" / "deb-test-root.tar"))
UID = 10001


def _need_root() -> None:
    if os.geteuid() != 0:
        message = "building and running images with buildah and installing packages needs root"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


def _run(*cmd: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


# --- the image ----------------------------------------------------------------


@pytest.fixture(scope="module")
def image() -> Dict[str, Any]:
    """The image's Docker-format config (Labels, User, Entrypoint, Healthcheck, ...)."""
    _need_root()
    buildah = require_tool("buildah")
    proc = subprocess.run([buildah, "inspect", "--type", "image", IMAGE], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"image {IMAGE} is not in buildah's storage: run `make image` ({proc.stderr.strip()})")
    return dict(json.loads(proc.stdout)["Docker"]["config"])


@pytest.fixture
def container(image: Dict[str, Any]) -> Iterator[str]:
    name = f"fcmon-test-{os.getpid()}-{time.monotonic_ns()}"
    _run("buildah", "from", "--pull-never", "--name", name, IMAGE)
    yield name
    subprocess.run(["buildah", "umount", name], capture_output=True)
    subprocess.run(["buildah", "rm", name], capture_output=True)


def test_image_labels_name_this_version_and_its_source(image: Dict[str, Any]) -> None:
    labels = image["Labels"]
    assert labels["org.opencontainers.image.version"] == VERSION
    assert labels["org.opencontainers.image.source"].strip()
    assert re.fullmatch(r"[0-9a-f]{40}|unknown", labels["org.opencontainers.image.revision"])
    assert labels["org.opencontainers.image.title"] == "fcmon"
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"


def test_image_runs_fcmon_on_its_config_as_a_fixed_non_root_user(image: Dict[str, Any]) -> None:
    assert image["User"] == f"{UID}:{UID}"
    assert image["Entrypoint"] + image["Cmd"] == ["/opt/fcmon/bin/fcmon", "run", "-c", "/etc/fcmon/config.ini"]
    assert set(image["ExposedPorts"]) == {"9731/tcp"}
    env = dict(e.split("=", 1) for e in image["Env"])
    assert env["CREDENTIALS_DIRECTORY"] == "/run/secrets/fcmon"
    assert env["FCMON_CONFIG"] == "/etc/fcmon/config.ini"
    test = image["Healthcheck"]["Test"]
    assert test[0] == "CMD" and "/-/healthy" in env["FCMON_HEALTH_URL"]


def test_image_archive_in_dist_holds_this_image() -> None:
    """dist/fcmon-VERSION-image.tar, for `docker load` / `podman load`."""
    archive = DIST / f"fcmon-{VERSION}-image.tar"
    assert archive.is_file(), f"{archive} missing: run `make image`"
    assert release_tools().image_problems(archive, VERSION) == []


def _descendants(pid: int) -> List[int]:
    children = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return children + [d for c in children for d in _descendants(c)]


def _uid_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^Uid:\s+(\d+)", status, re.M).group(1))  # type: ignore[union-attr]


def _daemon(buildah_pid: int) -> int:
    for pid in _descendants(buildah_pid):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"/opt/fcmon/bin/fcmon" in cmd and b"run" in cmd:
            return pid
    return 0


def _unused_listen_port() -> int:
    """A port below the ephemeral range (where outgoing connections take
    theirs) that can be bound on every address now."""
    import random
    import socket

    for _ in range(100):
        port = random.randint(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
                return port
            except OSError:
                continue
    pytest.fail("no free port between 20000 and 32000")


def _upper_files(container: str) -> List[str]:
    """Files the container wrote to its root file system (overlay's upper layer)."""
    merged = _run("buildah", "mount", container).stdout.strip()
    mounts = Path("/proc/self/mounts").read_text().splitlines()
    line = next(m for m in mounts if m.split()[1] == merged)
    upper = Path(re.search(r"upperdir=([^,\s]+)", line).group(1))  # type: ignore[union-attr]
    return sorted(str(p.relative_to(upper)) for p in upper.rglob("*") if not p.is_dir())


def test_image_reaches_fcmon_up_against_the_emulator(image: Dict[str, Any], container: str,
                                                      test_pki: PKI, session_emulator: Emulator,
                                                      tmp_path: Path) -> None:
    # What an operator mounts (README, "Container image"): the config and
    # certificates at /etc/fcmon, the secrets at $CREDENTIALS_DIRECTORY.
    etc, secrets = tmp_path / "etc", tmp_path / "secrets"
    (etc / "certs").mkdir(parents=True)
    secrets.mkdir()
    shutil.copy(test_pki.ca_file, etc / "certs" / "ca.crt")
    shutil.copy(test_pki.client.cert, etc / "certs" / "client.crt")
    shutil.copy(test_pki.client.key, secrets / "client.key")
    (secrets / "emulator.password").write_text("ADMIN\n")
    # Readable by the image's user, as a volume or Kubernetes Secret would be.
    for path in [etc, etc / "certs", secrets, *etc.rglob("*"), *secrets.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    log = tmp_path / "fcmon.log"

    def start(port: int) -> "subprocess.Popen[bytes]":
        # Every address, as the README says a container must listen; the
        # container shares the host's network here, so a free port, not 9731.
        (etc / "config.ini").write_text(
            "[fcmon]\n"
            f"listen = 0.0.0.0:{port}\ninterval = 5\ntimeout = 3\n"
            "[defaults]\nca_file = certs/ca.crt\nclient_cert_file = certs/client.crt\n"
            "client_key_file = $CREDENTIALS_DIRECTORY/client.key\nlisteners = none\n"
            "[target:emulator]\n"
            f"endpoint = {session_emulator.url}\nusername = ADMIN\n"
            "password_file = $CREDENTIALS_DIRECTORY/emulator.password\n")
        (etc / "config.ini").chmod(0o644)
        with log.open("w") as out:
            return subprocess.Popen(
                ["buildah", "run", "--isolation", "chroot", "--network", "host",
                 "-v", f"{etc}:/etc/fcmon:ro", "-v", f"{secrets}:/run/secrets/fcmon:ro",
                 container, "--", *image["Entrypoint"], *image["Cmd"]],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def up(proc: "subprocess.Popen[bytes]", url: str) -> "str | bool":
        if proc.poll() is not None:
            return "exited"
        try:
            return sample(scrape(url), "fcmon_up", target="emulator") == 1.0
        except Exception:
            return False

    proc: "subprocess.Popen[bytes] | None" = None
    try:
        # The host's network is shared with whatever else runs here: a port
        # taken between the choice and fcmon's bind is retried on another.
        for _attempt in range(3):
            port = _unused_listen_port()
            proc = start(port)
            url = f"http://127.0.0.1:{port}/metrics"
            if wait_for(lambda: up(proc, url), timeout=90, interval=0.5) != "exited":  # type: ignore[arg-type]
                break
            if "address already in use" not in log.read_text():
                pytest.fail(f"the container's fcmon exited {proc.returncode}:\n{log.read_text()}")
        else:
            pytest.fail(f"no free port for the container's fcmon in 3 tries:\n{log.read_text()}")
        assert proc is not None
        daemon = wait_for(lambda: _daemon(proc.pid), timeout=10)
        assert _uid_of(daemon) == UID, "fcmon in the container runs as root"

        health = [*image["Healthcheck"]["Test"][1:]]
        ok = _run("buildah", "run", "--isolation", "chroot", "--network", "host",
                  "--env", f"FCMON_HEALTH_URL=http://127.0.0.1:{port}/-/healthy", container, "--",
                  *health, check=False, timeout=60)
        assert ok.returncode == 0, ok.stderr
        dead = _run("buildah", "run", "--isolation", "chroot", "--network", "host",
                    "--env", f"FCMON_HEALTH_URL=http://127.0.0.1:{free_port()}/-/healthy", container,
                    "--", *health, check=False, timeout=60)
        assert dead.returncode != 0, "the HEALTHCHECK passes with nothing listening"
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    text = log.read_text()
    assert "target emulator: up" in text, text
    assert "Traceback" not in text, text
    # Read-only root friendly: nothing written outside the mounts.
    assert _upper_files(container) == []


# --- the Debian package ------------------------------------------------------------


@pytest.fixture(scope="module")
def deb() -> Path:
    found = sorted(DIST.glob(f"fcmon_{VERSION}-*_*.deb"))
    if not found:
        pytest.fail(f"no fcmon {VERSION} .deb in {DIST}: run `make deb`")
    return found[-1]


def test_deb_contents_match_the_repository(deb: Path) -> None:
    assert release_tools().deb_problems(deb, VERSION) == []


def test_deb_is_lintian_clean_with_every_override_explained(deb: Path, tmp_path: Path) -> None:
    lintian = require_tool("lintian")
    proc = subprocess.run([lintian, "--fail-on", "error,warning", "--no-tag-display-limit", str(deb)],
                          capture_output=True, text=True, timeout=600)
    findings = [line for line in proc.stdout.splitlines() if re.match(r"[EW]: ", line)]
    assert findings == [] and proc.returncode == 0, proc.stdout + proc.stderr
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp_path)], check=True)
    overrides = (tmp_path / "usr/share/lintian/overrides/fcmon").read_text().splitlines()
    previous = ""
    for line in overrides:
        if line.startswith("fcmon:"):
            assert previous.startswith(("#", "fcmon:")), f"override without a comment: {line}"
        previous = line if line.strip() else ""
    assert any(line.startswith("fcmon:") for line in overrides)


def _chroot(root: Path, *cmd: str, env: "Dict[str, str] | None" = None, check: bool = True
            ) -> subprocess.CompletedProcess:
    environ = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", **(env or {})}
    proc = subprocess.run(["chroot", str(root), *cmd], capture_output=True, text=True, env=environ,
                          timeout=300)
    if check and proc.returncode != 0:
        pytest.fail(f"in the chroot, {' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def _package_paths(deb: Path) -> List[str]:
    listing = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=True).stdout
    import io

    with tarfile.open(fileobj=io.BytesIO(listing)) as t:
        return [m.name.lstrip(".") for m in t.getmembers() if not m.isdir()]


def test_deb_installs_validates_verifies_and_purges(deb: Path, test_pki: PKI, tmp_path: Path) -> None:
    _need_root()
    require_tool("chroot")
    if not DEB_ROOT_TAR.is_file():
        pytest.fail(f"{DEB_ROOT_TAR} missing: `make test-packages` builds it with mmdebstrap")
    root = tmp_path / "root"
    root.mkdir()
    with tarfile.open(DEB_ROOT_TAR) as t:
        t.extractall(root, numeric_owner=True)  # noqa: S202 (our own mmdebstrap output)
    shutil.copy(deb, root / "tmp" / deb.name)

    installed = _chroot(root, "dpkg", "-i", f"/tmp/{deb.name}")
    assert "Setting up fcmon" in installed.stdout
    # Not started, not enabled, until the admin has configured it.
    assert not list((root / "etc/systemd/system").rglob("fcmon.service"))
    assert _chroot(root, "fcmon", "--version").stdout.strip() == f"fcmon {VERSION}"
    assert os.readlink(root / "usr/bin/fcmon") == "/opt/fcmon/bin/fcmon"

    # The installed config, unchanged, with a test PKI where it points
    # (README, "Debian package": certificates in /etc/fcmon/certs, secrets
    # in /etc/fcmon/secrets).
    certs, secrets = root / "etc/fcmon/certs", root / "etc/fcmon/secrets"
    certs.mkdir()
    secrets.mkdir(mode=0o700)
    shutil.copy(test_pki.ca_file, certs / "ca.crt")
    shutil.copy(test_pki.client.cert, certs / "client.crt")
    shutil.copy(test_pki.client.key, secrets / "client.key")
    (secrets / "prod-east.password").write_text("secret-password\n")
    creds = {"CREDENTIALS_DIRECTORY": "/etc/fcmon/secrets"}
    ok = _chroot(root, "fcmon", "validate", "-c", "/etc/fcmon/config.ini", env=creds, check=False)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "secret-password" not in ok.stdout + ok.stderr
    (secrets / "client.key").rename(secrets / "client.key.away")
    broken = _chroot(root, "fcmon", "validate", "-c", "/etc/fcmon/config.ini", env=creds, check=False)
    assert broken.returncode != 0 and "client.key" in broken.stdout + broken.stderr
    (secrets / "client.key.away").rename(secrets / "client.key")

    # The unit as installed, by the systemd of the root it is installed in.
    verify = _chroot(root, "systemd-analyze", "verify", "/lib/systemd/system/fcmon.service", check=False)
    assert (verify.stdout + verify.stderr).strip() == "" and verify.returncode == 0, verify.stderr
    # ... and that silence means something there: a misspelt key is reported.
    unit = (root / "lib/systemd/system/fcmon.service").read_text()
    (root / "tmp/fcmon-typo.service").write_text(unit.replace("WatchdogSec=", "WatchdogSecs="))
    typo = _chroot(root, "systemd-analyze", "verify", "/tmp/fcmon-typo.service", check=False)
    assert "WatchdogSecs" in typo.stdout + typo.stderr

    owned = _package_paths(deb)
    _chroot(root, "dpkg", "--remove", "fcmon")
    assert (root / "etc/fcmon/config.ini").is_file(), "remove (not purge) keeps the conffile"
    assert not (root / "opt/fcmon").exists()
    _chroot(root, "dpkg", "--purge", "fcmon")
    left = [p for p in owned if os.path.lexists(root / p.lstrip("/"))]
    assert left == [], f"purge left the package's files: {left}"
    assert not (root / "opt/fcmon").exists()
    assert _chroot(root, "dpkg-query", "-W", "fcmon", check=False).returncode != 0
    # What remains in /etc/fcmon is the admin's own files, nothing of the package.
    remaining = sorted(p.relative_to(root / "etc/fcmon").as_posix()
                       for p in (root / "etc/fcmon").rglob("*") if p.is_file())
    assert remaining == ["certs/ca.crt", "certs/client.crt", "secrets/client.key", "secrets/prod-east.password"]

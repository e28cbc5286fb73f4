"""The release's sources of truth agree: version, CHANGELOG, dependency
floors and constraints-min.txt; and `fcmon assets` lists and exports the
deployable files (here from the source checkout; tests/test_install.py does
the same from the built wheel)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict

import pytest

import fcmon
from fcmon import assetfiles
from support import ROOT, fcmon_command


def _pyproject() -> dict:
    try:
        import tomllib  # type: ignore[import-not-found]
    except ImportError:  # Python < 3.11: pytest itself depends on tomli there
        import tomli as tomllib  # type: ignore[no-redef]
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def _floors() -> Dict[str, str]:
    """name -> the version of its `>=` specifier, for every runtime dependency."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    floors = {}
    for line in _pyproject()["project"]["dependencies"]:
        req = Requirement(line)
        lows = [s.version for s in req.specifier if s.operator == ">="]
        assert len(lows) == 1, f"pyproject dependency {line!r} needs exactly one >= floor"
        floors[canonicalize_name(req.name)] = lows[0]
    return floors


def _constraints() -> Dict[str, str]:
    from packaging.utils import canonicalize_name

    pins = {}
    for raw in (ROOT / "constraints-min.txt").read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)==([^\s;]+)", line)
        assert m, f"constraints-min.txt: not a NAME==VERSION pin: {raw!r}"
        pins[canonicalize_name(m.group(1))] = m.group(2)
    return pins


def test_constraints_min_pins_exactly_pyprojects_floors() -> None:
    from packaging.version import Version

    floors, pins = _floors(), _constraints()
    assert len(floors) >= 5
    assert sorted(set(floors) - set(pins)) == [], "pyproject dependencies not pinned in constraints-min.txt"
    assert sorted(set(pins) - set(floors)) == [], "constraints-min.txt pins what pyproject does not declare"
    wrong = {n: f"pins {pins[n]}, pyproject's floor is {floors[n]}"
             for n in floors if Version(pins[n]) != Version(floors[n])}
    assert wrong == {}, "constraints-min.txt must pin each dependency at pyproject's floor"


@pytest.mark.skipif(not os.environ.get("FCMON_CONSTRAINTS"),
                    reason="only in a run with CONSTRAINTS= (CI's Python 3.9 run)")
def test_this_run_really_has_the_lowest_versions() -> None:
    from importlib.metadata import version

    from packaging.version import Version

    pins = _constraints()
    installed = {n: version(n) for n in pins}
    assert {n: v for n, v in installed.items() if Version(v) != Version(pins[n])} == {}


def test_one_version_everywhere() -> None:
    assert _pyproject()["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "fcmon.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", fcmon.__version__)
    out = subprocess.run(fcmon_command("--version"), capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"fcmon {fcmon.__version__}"


def test_changelog_has_this_versions_entry_on_top() -> None:
    text = (ROOT / "CHANGELOG.md").read_text()
    releases = re.findall(r"^## \[([^\]]+)\](?: - (\d{4}-\d{2}-\d{2}))?\s*$", text, re.M)
    assert releases, "no `## [VERSION] - DATE` headings in CHANGELOG.md"
    names = [name for name, _ in releases]
    assert names[0] == "Unreleased", "Keep a Changelog: an [Unreleased] section first"
    top, date = releases[1]
    assert top == fcmon.__version__, f"CHANGELOG's newest release is {top}, fcmon is {fcmon.__version__}"
    assert date, f"CHANGELOG's [{top}] has no date"
    entry = text.split(f"## [{top}]", 1)[1].split("\n## [", 1)[0]
    assert re.search(r"^### (Added|Changed|Deprecated|Removed|Fixed|Security)$", entry, re.M)
    assert re.search(r"^- \S", entry, re.M), f"CHANGELOG's [{top}] lists no change"


# --- fcmon assets, from the source checkout ---------------------------------

CORE = ("config.ini", "systemd/fcmon.service", "prometheus/fcmon-alerts.yml",
        "prometheus/fcmon-alerts.test.yml", "prometheus/prometheus.example.yml",
        "grafana/fcmon-dashboard.json")


def _assets(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(fcmon_command("assets", *args), capture_output=True, text=True, timeout=60)


def test_assets_list_names_every_deployable_file_and_where_it_is_read() -> None:
    out = _assets("list")
    assert out.returncode == 0, out.stderr
    assert f"fcmon {fcmon.__version__} assets (source checkout: {ROOT})" in out.stdout
    listed = [line.split()[0] for line in out.stdout.splitlines()[1:]]
    assert listed == assetfiles.collect(ROOT)
    assert set(CORE) <= set(listed)


def test_assets_export_writes_the_repository_files(tmp_path: Path) -> None:
    dest = tmp_path / "new" / "dir"
    out = _assets("export", str(dest))
    assert out.returncode == 0, out.stderr
    names = assetfiles.collect(ROOT)
    for name in names:
        assert (dest / name).read_bytes() == (ROOT / name).read_bytes(), name
        assert (dest / name).stat().st_mode & 0o777 == 0o644 & ~_umask()
    assert f"{len(names)} assets in {dest} ({len(names)} written, 0 unchanged)" in out.stdout
    again = _assets("export", str(dest))
    assert again.returncode == 0, again.stderr
    assert f"(0 written, {len(names)} unchanged)" in again.stdout


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_assets_export_never_overwrites_a_changed_file_without_force(tmp_path: Path) -> None:
    (tmp_path / "systemd").mkdir()
    mine = tmp_path / "systemd" / "fcmon.service"
    mine.write_text("# my edited unit\n")
    out = _assets("export", str(tmp_path))
    assert out.returncode == 1
    assert "nothing was written" in out.stderr and str(mine) in out.stderr and "--force" in out.stderr
    assert "Traceback" not in out.stderr
    assert mine.read_text() == "# my edited unit\n"
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["fcmon.service"]

    forced = _assets("export", "--force", str(tmp_path))
    assert forced.returncode == 0, forced.stderr
    assert f"overwrote  {mine}" in forced.stdout
    assert mine.read_bytes() == (ROOT / "systemd" / "fcmon.service").read_bytes()


def test_assets_export_into_a_file_or_unwritable_place_fails_with_a_message(tmp_path: Path) -> None:
    a_file = tmp_path / "f"
    a_file.write_text("x")
    out = _assets("export", str(a_file))
    assert (out.returncode, out.stderr.strip()) == (1, f"fcmon assets: {a_file} exists and is not a directory")
    (tmp_path / "ro").mkdir(mode=0o500)
    if os.geteuid() != 0:  # root writes anyway
        out = _assets("export", str(tmp_path / "ro" / "x"))
        assert out.returncode == 1 and "cannot write" in out.stderr and "Traceback" not in out.stderr
    out = _assets("export", "/proc/fcmon-no-such/x")
    assert out.returncode == 1
    assert out.stderr.startswith("fcmon assets: cannot write /proc/fcmon-no-such") and "Traceback" not in out.stderr


def test_assets_help_says_what_ships() -> None:
    out = subprocess.run(fcmon_command("assets", "export", "--help"), capture_output=True, text=True)
    assert out.returncode == 0
    text = " ".join(out.stdout.split())
    assert "--force" in text and "never overwritten without --force" in text
    assert "assets" in subprocess.run(fcmon_command("--help"), capture_output=True, text=True).stdout


# --- the image archive and the Debian package: what the contents check sees --
# (tests/test_packages.py runs it on the real ones; here, on small stand-ins,
# that it names each mistake.)

import io  # noqa: E402
import json  # noqa: E402
import tarfile  # noqa: E402

from support import release_tools, require_tool  # noqa: E402


def _image_config(**changes: object) -> dict:
    config = {
        "User": "10001:10001",
        "ExposedPorts": {"9731/tcp": {}},
        "Entrypoint": ["/opt/fcmon/bin/fcmon"],
        "Cmd": ["run", "-c", "/etc/fcmon/config.ini"],
        "Healthcheck": {"Test": ["CMD", "/opt/fcmon/bin/python", "-c", "..."]},
        "Labels": {"org.opencontainers.image.version": fcmon.__version__,
                   "org.opencontainers.image.source": "https://example.org/fcmon"},
    }
    config.update(changes)
    return config


def _image_archive(path: Path, config: dict, tag: str = f"localhost/fcmon:{fcmon.__version__}") -> Path:
    def add(t: tarfile.TarFile, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))

    with tarfile.open(path, "w") as t:
        add(t, "cfg.json", json.dumps({"config": config}).encode())
        add(t, "manifest.json", json.dumps([{"Config": "cfg.json", "RepoTags": [tag], "Layers": []}]).encode())
    return path


@pytest.mark.parametrize("changes, problem", [
    ({}, None),
    ({"User": "0:0"}, "runs as root"),
    ({"User": ""}, "runs as root"),
    ({"Labels": {"org.opencontainers.image.source": "x"}}, "org.opencontainers.image.version is None"),
    ({"Labels": {"org.opencontainers.image.version": fcmon.__version__}}, "no org.opencontainers.image.source"),
    ({"Healthcheck": None}, "no HEALTHCHECK"),
    ({"ExposedPorts": {}}, "does not expose 9731/tcp"),
    ({"Cmd": ["demo"]}, "not /opt/fcmon/bin/fcmon run -c /etc/fcmon/config.ini"),
])
def test_image_check_names_each_mistake(tmp_path: Path, changes: dict, problem: "str | None") -> None:
    problems = release_tools().image_problems(_image_archive(tmp_path / "i.tar", _image_config(**changes)),
                                              fcmon.__version__)
    if problem is None:
        assert problems == []
    else:
        assert len(problems) == 1 and problem in problems[0], problems


def test_image_check_wants_this_versions_tag(tmp_path: Path) -> None:
    archive = _image_archive(tmp_path / "i.tar", _image_config(), tag="localhost/fcmon:0.0.1")
    assert ["no fcmon:" in p for p in release_tools().image_problems(archive, fcmon.__version__)] == [True]


def _deb(tmp_path: Path, mutate: str = "") -> Path:
    """A stand-in for `make deb`'s package, with one thing wrong (mutate)."""
    dpkg_deb = require_tool("dpkg-deb")
    ver = fcmon.__version__
    stage = tmp_path / "stage"
    files = {"/etc/fcmon/config.ini": (ROOT / "config.ini").read_bytes(),
             "/lib/systemd/system/fcmon.service": (ROOT / "systemd/fcmon.service").read_bytes(),
             "/opt/fcmon/bin/fcmon": b"#!/opt/fcmon/bin/python\n",
             f"/opt/fcmon/lib/python3.11/site-packages/fcmon-{ver}.dist-info/METADATA": b"Name: fcmon\n"}
    for name in assetfiles.collect(ROOT):
        if name.startswith(("prometheus/", "grafana/")):
            files[f"/usr/share/fcmon/{name}"] = (ROOT / name).read_bytes()
    if mutate == "config":
        files["/etc/fcmon/config.ini"] += b"; edited\n"
    if mutate == "dashboard":
        del files["/usr/share/fcmon/grafana/fcmon-dashboard.json"]
    for name, data in files.items():
        path = stage / name.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    if mutate != "link":
        (stage / "usr/bin").mkdir(parents=True)
        (stage / "usr/bin/fcmon").symlink_to("/opt/fcmon/bin/fcmon")
    (stage / "DEBIAN").mkdir()
    version = "0.0.1-1" if mutate == "version" else f"{ver}-1"
    (stage / "DEBIAN/control").write_text(
        f"Package: fcmon\nVersion: {version}\nArchitecture: all\nMaintainer: x <x@example.org>\n"
        "Depends: python3 (>= 3.11), python3 (<< 3.12)\nDescription: test\n test\n")
    (stage / "DEBIAN/conffiles").write_text("" if mutate == "conffiles" else "/etc/fcmon/config.ini\n")
    out = tmp_path / f"fcmon_{ver}-1_all.deb"
    subprocess.run([dpkg_deb, "--root-owner-group", "--build", str(stage), str(out)], check=True,
                   capture_output=True)
    return out


@pytest.mark.parametrize("mutate, problem", [
    ("", None),
    ("config", "/etc/fcmon/config.ini differs from the repository's config.ini"),
    ("dashboard", "/usr/share/fcmon/grafana/fcmon-dashboard.json missing"),
    ("link", "/usr/bin/fcmon is not a link to /opt/fcmon/bin/fcmon"),
    ("version", "Version '0.0.1-1' is not"),
    ("conffiles", "conffiles should be /etc/fcmon/config.ini alone"),
])
def test_deb_check_names_each_mistake(tmp_path: Path, mutate: str, problem: "str | None") -> None:
    problems = release_tools().deb_problems(_deb(tmp_path, mutate), fcmon.__version__)
    if problem is None:
        assert problems == []
    else:
        assert len(problems) == 1 and problem in problems[0], problems

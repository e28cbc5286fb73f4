"""The files an operator deploys beside fcmon, shipped inside the package.

The repository's copies (systemd/, prometheus/, grafana/, config.ini,
docs/runbook.md and what the README links to, CHANGELOG.md, README.md)
are the only source. The wheel gets them at build time:
setup.py copies whatever `SOURCES` matches into `fcmon/assets/`, so the
package never carries a second, hand-kept copy that could drift. At run
time `fcmon assets` reads them from the installed package, or, in a source
checkout (editable install, tests), straight from the repository.

Standard library only, and no relative imports: setup.py loads this file by
path before fcmon's dependencies exist.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple

# Repository paths (globs) shipped as assets, in the layout they are exported
# in: the promtool tests find the rules beside them, as in the repository.
SOURCES: Tuple[str, ...] = (
    "config.ini",
    "systemd/*.service",
    "prometheus/*.yml",
    "grafana/*.json",
    "docs/runbook.md",
    # what the README links to, so that its links work in an export too
    "docs/design-notes.md",
    "docs/status-page-*.png",
    "LICENSE",
    "CHANGELOG.md",
    "README.md",
)

# Where the build puts them inside the package.
PACKAGE_DIR = "assets"

_DESCRIPTIONS: Tuple[Tuple[str, str], ...] = (
    ("config.ini", "commented example config: every key, its default"),
    ("systemd/", "systemd unit (hardened; secrets via LoadCredential=)"),
    ("prometheus/prometheus", "example Prometheus scrape config"),
    (".test.yml", "promtool unit tests of the alert rules"),
    ("prometheus/", "Prometheus alert rules"),
    ("grafana/", "Grafana dashboard"),
    ("docs/runbook", "runbook: what each alert means, what to check first"),
    ("docs/design-notes", "design notes: what bounds each shared resource, and why"),
    ("docs/status-page", "the status page, as the README shows it"),
    ("LICENSE", "the license"),
    ("CHANGELOG", "what changed in each version"),
    ("README", "the documentation: install steps, configuration, metrics, alerts"),
)


def describe(name: str) -> str:
    for pattern, text in _DESCRIPTIONS:
        if name.startswith(pattern) or name.endswith(pattern):
            return text
    return ""


def collect(root: Path) -> List[str]:
    """Relative POSIX paths under `root` that `SOURCES` matches, sorted."""
    found = set()
    for pattern in SOURCES:
        for path in root.glob(pattern):
            if path.is_file():
                found.add(path.relative_to(root).as_posix())
    return sorted(found)


@dataclass(frozen=True)
class Location:
    root: Path
    kind: str  # "package" (installed) or "checkout" (the repository)
    names: Tuple[str, ...]


class AssetsError(Exception):
    """Something `fcmon assets` cannot do, said in one line."""


def _checkout_root() -> Optional[Path]:
    root = Path(__file__).resolve().parent.parent
    if (root / "pyproject.toml").is_file() and (root / "systemd").is_dir():
        return root
    return None


def locate() -> Location:
    """The installed package's assets, else the source checkout's files."""
    packaged = Path(__file__).resolve().parent / PACKAGE_DIR
    if packaged.is_dir():
        names = collect(packaged)
        if names:
            return Location(packaged, "package", tuple(names))
    root = _checkout_root()
    if root is not None:
        names = collect(root)
        if names:
            return Location(root, "checkout", tuple(names))
    raise AssetsError(
        f"no assets found: neither {packaged} (an installed wheel) nor a source checkout "
        "around this fcmon; reinstall fcmon from its wheel"
    )


@dataclass(frozen=True)
class Planned:
    name: str
    source: Path
    dest: Path
    action: str  # "write", "overwrite", "unchanged" or "conflict"


def plan(location: Location, dest_dir: Path, force: bool) -> List[Planned]:
    out = []
    for name in location.names:
        source = location.root / name
        dest = dest_dir / name
        if dest.is_dir():
            action = "conflict"
        elif not dest.exists() and not dest.is_symlink():
            action = "write"
        elif dest.is_file() and dest.read_bytes() == source.read_bytes():
            action = "unchanged"
        else:
            action = "overwrite" if force else "conflict"
        out.append(Planned(name, source, dest, action))
    return out


def export(location: Location, dest_dir: Path, force: bool = False) -> List[Planned]:
    """Copy every asset under `dest_dir` (created if missing).

    All or nothing against existing files: when any differing file is in the
    way and `force` is off, nothing is written and AssetsError lists them.
    Each file is written to a temporary name and renamed into place, so an
    interrupted export never leaves a half-written unit or rule file.
    """
    if dest_dir.exists() and not dest_dir.is_dir():
        raise AssetsError(f"{dest_dir} exists and is not a directory")
    planned = plan(location, dest_dir, force)
    conflicts = [p for p in planned if p.action == "conflict"]
    if conflicts:
        lines = "\n".join(f"  {p.dest}" for p in conflicts)
        raise AssetsError(
            f"{len(conflicts)} file(s) already exist with other content; nothing was written "
            f"(--force overwrites them):\n{lines}"
        )
    for p in planned:
        if p.action in ("write", "overwrite"):
            _write(p.source.read_bytes(), p.dest)
    return planned


def _write(data: bytes, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.fcmon-tmp")
    try:
        # 0644 (less the umask): none of these files holds a secret, and the
        # service user of the systemd unit must be able to read config.ini.
        fd = os.open(str(tmp), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(str(tmp), str(dest))
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise


def copy_into(repo_root: Path, package_dir: Path, names: Iterable[str]) -> List[Path]:
    """The build step: copy `names` from the repository into the package."""
    written = []
    for name in names:
        dest = package_dir / PACKAGE_DIR / name
        _write((repo_root / name).read_bytes(), dest)
        written.append(dest)
    return written


def format_list(location: Location, version: str) -> Sequence[str]:
    where = "installed package" if location.kind == "package" else "source checkout"
    lines = [f"fcmon {version} assets ({where}: {location.root}):"]
    width = max(len(n) for n in location.names)
    for name in location.names:
        lines.append(f"  {name.ljust(width)}  {describe(name)}".rstrip())
    return lines

"""Build and check a release: `make dist` and `make wheelhouse` run this.

    python tools/release.py dist OUTDIR        sdist + wheel (isolated build), twine check, contents check
    python tools/release.py wheelhouse OUTDIR  the wheel in OUTDIR and every dependency's wheel, in OUTDIR/wheelhouse
    python tools/release.py check OUTDIR       the contents check alone (and of the
                                               image archive and .deb when OUTDIR has them)

The tests (tests/test_release.py) use the same functions, so what `make dist`
checks and what CI checks cannot differ. Needs `build` and `twine` in the
running Python (the Makefile installs them).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import List, Sequence

ROOT = Path(__file__).resolve().parent.parent
NAME = "fcmon"


def version(root: Path = ROOT) -> str:
    text = (root / NAME / "__init__.py").read_text()
    m = re.search(r'^__version__ = "([^"]+)"$', text, re.M)
    if not m:
        raise SystemExit(f"no __version__ in {root / NAME / '__init__.py'}")
    return m.group(1)


def _assetfiles(root: Path = ROOT):  # type: ignore[no-untyped-def]
    import importlib.util

    spec = importlib.util.spec_from_file_location("_fcmon_assetfiles", root / NAME / "assetfiles.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def artefacts(outdir: Path, ver: str) -> "tuple[Path, Path]":
    sdist = outdir / f"{NAME}-{ver}.tar.gz"
    wheel = outdir / f"{NAME}-{ver}-py3-none-any.whl"
    return sdist, wheel


def run(cmd: Sequence[str], **kwargs: object) -> None:
    print("+ " + " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, **kwargs)  # type: ignore[call-overload]


def build(outdir: Path, root: Path = ROOT, quiet: bool = False) -> "tuple[Path, Path]":
    """sdist, then the wheel built from that sdist, each in an isolated env."""
    outdir.mkdir(parents=True, exist_ok=True)
    for old in list(outdir.glob(f"{NAME}-*.tar.gz")) + list(outdir.glob(f"{NAME}-*.whl")):
        old.unlink()
    cmd = [sys.executable, "-m", "build", "--outdir", str(outdir), str(root)]
    run(cmd, stdout=subprocess.DEVNULL if quiet else None)
    sdist, wheel = artefacts(outdir, version(root))
    missing = [p.name for p in (sdist, wheel) if not p.is_file()]
    if missing:
        raise SystemExit(f"build did not write {', '.join(missing)} in {outdir}")
    return sdist, wheel


def twine_check(paths: Sequence[Path]) -> None:
    run([sys.executable, "-m", "twine", "check", "--strict", *map(str, paths)])


_CACHE = re.compile(r"(^|/)(__pycache__|\.pytest_cache|\.mypy_cache|\.venv[^/]*|build|dist)(/|$)|\.py[cod]$|\.egg-info(/|$)")


def wheel_problems(wheel: Path, root: Path = ROOT) -> List[str]:
    """What is wrong with the wheel: tests, bench or caches inside; assets missing or differing."""
    ver = version(root)
    problems = []
    with zipfile.ZipFile(wheel) as z:
        names = [n for n in z.namelist() if not n.endswith("/")]
        tops = {PurePosixPath(n).parts[0] for n in names}
        allowed = {NAME, f"{NAME}-{ver}.dist-info"}
        for top in sorted(tops - allowed):
            problems.append(f"wheel: unexpected top-level entry {top}/ (only {sorted(allowed)})")
        for n in names:
            if _CACHE.search(n):
                problems.append(f"wheel: cache or build file {n}")
            if re.search(r"(^|/)(tests?|bench)(/|$)", n):
                problems.append(f"wheel: test or bench file {n}")
        # Every module of the checkout, sub-packages included (fcmon/probe/,
        # fcmon/web/, ...): package discovery that missed one would ship a
        # wheel that fails at its first import of it.
        for module in sorted(p.relative_to(root).as_posix() for p in (root / NAME).rglob("*.py")
                             if not _CACHE.search(p.relative_to(root).as_posix())):
            if module not in names:
                problems.append(f"wheel: module {module} missing")
        expected = _assetfiles(root).collect(root)
        prefix = f"{NAME}/assets/"
        shipped = sorted(n[len(prefix):] for n in names if n.startswith(prefix))
        for extra in sorted(set(shipped) - set(expected)):
            problems.append(f"wheel: asset {extra} has no source in the repository")
        for name in expected:
            if name not in shipped:
                problems.append(f"wheel: asset {name} missing")
            elif z.read(prefix + name) != (root / name).read_bytes():
                problems.append(f"wheel: asset {name} differs from the repository's {name}")
        meta = z.read(f"{NAME}-{ver}.dist-info/METADATA").decode()
        if f"\nVersion: {ver}\n" not in meta:
            problems.append(f"wheel: METADATA does not say Version: {ver}")
    return problems


def sdist_problems(sdist: Path, root: Path = ROOT) -> List[str]:
    """What the sdist lacks (tests, docs, deployable files) or should not carry (caches, built assets)."""
    ver = version(root)
    base = f"{NAME}-{ver}/"
    problems = []
    with tarfile.open(sdist) as t:
        names = [m.name for m in t.getmembers() if m.isfile()]
    rel = set()
    for n in names:
        if not n.startswith(base):
            problems.append(f"sdist: {n} outside {base}")
            continue
        rel.add(n[len(base):])
    for n in sorted(rel):
        if _CACHE.search(n) and not n.startswith(f"{NAME}.egg-info/"):
            problems.append(f"sdist: cache or build file {n}")
        if n.startswith(f"{NAME}/assets/"):
            problems.append(f"sdist: {n}: the built assets belong in the wheel only")
    wanted = ["pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "CHANGELOG.md", "config.ini"]
    wanted += [p.relative_to(root).as_posix() for p in sorted((root / "tests").glob("*.py"))]
    wanted += [p.relative_to(root).as_posix() for p in sorted((root / "docs").glob("**/*")) if p.is_file()]
    wanted += _assetfiles(root).collect(root)
    wanted += [p.name for p in root.glob("LICEN[CS]E*")]
    # What `make image` and `make deb` build from, and the Kubernetes example.
    wanted += ["Containerfile", ".containerignore"]
    wanted += [p.relative_to(root).as_posix() for d in ("packaging", "deploy")
               for p in sorted((root / d).glob("**/*")) if p.is_file() and not _CACHE.search(p.as_posix())]
    for w in wanted:
        if w not in rel:
            problems.append(f"sdist: {w} missing")
    return problems


def check(outdir: Path, root: Path = ROOT, packages: bool = True) -> List[str]:
    ver = version(root)
    sdist, wheel = artefacts(outdir, ver)
    problems = sdist_problems(sdist, root) + wheel_problems(wheel, root)
    if not packages:
        return problems
    # `make image` and `make deb` (root, buildah): checked when they were built.
    image = image_archive(outdir, ver)
    if image.is_file():
        problems += image_problems(image, ver)
    for deb in sorted(outdir.glob(f"{NAME}_{ver}-*.deb")):
        problems += deb_problems(deb, ver, root)
    return problems


def image_archive(outdir: Path, ver: str) -> Path:
    return outdir / f"{NAME}-{ver}-image.tar"


RUN_COMMAND = ["/opt/fcmon/bin/fcmon", "run", "-c", "/etc/fcmon/config.ini"]


def image_problems(archive: Path, ver: str) -> List[str]:
    """What is wrong with the image archive (docker-archive, `make image`): its
    tag, labels, user, port, entry point or healthcheck."""
    import json

    where = f"image {archive.name}"
    try:
        with tarfile.open(archive) as t:
            manifest = json.load(t.extractfile("manifest.json"))  # type: ignore[arg-type]
            config = json.load(t.extractfile(manifest[0]["Config"]))  # type: ignore[arg-type]
    except (OSError, KeyError, IndexError, ValueError, tarfile.TarError) as e:
        return [f"{where}: not a docker-archive with one image ({e})"]
    problems = []
    tags = manifest[0].get("RepoTags") or []
    if not any(tag.endswith(f"/{NAME}:{ver}") for tag in tags):
        problems.append(f"{where}: no {NAME}:{ver} tag (has {tags})")
    c = config.get("config") or {}
    labels = c.get("Labels") or {}
    if labels.get("org.opencontainers.image.version") != ver:
        problems.append(f"{where}: label org.opencontainers.image.version is "
                        f"{labels.get('org.opencontainers.image.version')!r}, not {ver!r}")
    if not (labels.get("org.opencontainers.image.source") or "").strip():
        problems.append(f"{where}: no org.opencontainers.image.source label")
    user = (c.get("User") or "").split(":")[0]
    if user in ("", "0", "root"):
        problems.append(f"{where}: runs as root (User {c.get('User')!r})")
    if "9731/tcp" not in (c.get("ExposedPorts") or {}):
        problems.append(f"{where}: does not expose 9731/tcp")
    if (c.get("Entrypoint") or []) + (c.get("Cmd") or []) != RUN_COMMAND:
        problems.append(f"{where}: runs {c.get('Entrypoint')} {c.get('Cmd')}, not {' '.join(RUN_COMMAND)}")
    test = (c.get("Healthcheck") or {}).get("Test") or []
    if not test or test[0] not in ("CMD", "CMD-SHELL"):
        problems.append(f"{where}: no HEALTHCHECK (built with --format oci?)")
    return problems


def _ar_members(path: Path) -> "dict[str, bytes]":
    """The members of an ar archive (a .deb)."""
    data = path.read_bytes()
    if not data.startswith(b"!<arch>\n"):
        raise ValueError("not an ar archive")
    members, pos = {}, 8
    while pos + 60 <= len(data):
        header = data[pos:pos + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        members[name] = data[pos + 60:pos + 60 + size]
        pos += 60 + size + (size % 2)
    return members


def _tar_of(members: "dict[str, bytes]", stem: str) -> "dict[str, tarfile.TarInfo | bytes]":
    import io

    name = next((n for n in members if n.startswith(stem + ".tar")), None)
    if name is None:
        raise ValueError(f"no {stem}.tar.* member")
    files: "dict[str, tarfile.TarInfo | bytes]" = {}
    with tarfile.open(fileobj=io.BytesIO(members[name])) as t:
        for m in t.getmembers():
            path = "/" + m.name.lstrip("./") if m.name not in (".", "./") else "/"
            if m.isfile():
                files[path] = t.extractfile(m).read()  # type: ignore[union-attr]
            else:
                files[path] = m
    return files


# Repository file -> where the .deb installs it.
DEB_PLACES = {"config.ini": "/etc/fcmon/config.ini", "systemd/fcmon.service": "/lib/systemd/system/fcmon.service"}


def deb_problems(deb: Path, ver: str, root: Path = ROOT) -> List[str]:
    """What is wrong with the Debian package (`make deb`): its version, the
    venv and the command on the PATH, the conffile, and the deployable files,
    which must be byte-identical to the repository's."""
    where = f"deb {deb.name}"
    try:
        members = _ar_members(deb)
        control = _tar_of(members, "control")
        data = _tar_of(members, "data")
    except (OSError, ValueError, tarfile.TarError) as e:
        return [f"{where}: not a Debian package ({e})"]
    problems = []
    fields = dict(re.findall(r"^([A-Za-z-]+): (.*)$", control.get("/control", b"").decode(), re.M))  # type: ignore[union-attr]
    if fields.get("Package") != NAME:
        problems.append(f"{where}: Package is {fields.get('Package')!r}")
    if not (fields.get("Version") or "").startswith(f"{ver}-"):
        problems.append(f"{where}: Version {fields.get('Version')!r} is not {ver}-REVISION")
    if "python3 (" not in fields.get("Depends", ""):
        problems.append(f"{where}: Depends does not name python3: {fields.get('Depends')!r}")
    if control.get("/conffiles") != b"/etc/fcmon/config.ini\n":
        problems.append(f"{where}: conffiles should be /etc/fcmon/config.ini alone, is {control.get('/conffiles')!r}")
    expected = dict(DEB_PLACES)
    for name in _assetfiles(root).collect(root):
        if name.startswith(("prometheus/", "grafana/")):
            expected[name] = f"/usr/share/fcmon/{name}"
    for src, dest in sorted(expected.items()):
        if dest not in data:
            problems.append(f"{where}: {dest} missing")
        elif data[dest] != (root / src).read_bytes():
            problems.append(f"{where}: {dest} differs from the repository's {src}")
    fcmon = data.get("/opt/fcmon/bin/fcmon")
    if not isinstance(fcmon, bytes) or not fcmon.startswith(b"#!/opt/fcmon/bin/python"):
        problems.append(f"{where}: /opt/fcmon/bin/fcmon is not a script of the venv's python")
    link = data.get("/usr/bin/fcmon")
    if not isinstance(link, tarfile.TarInfo) or not link.issym() or link.linkname != "/opt/fcmon/bin/fcmon":
        problems.append(f"{where}: /usr/bin/fcmon is not a link to /opt/fcmon/bin/fcmon")
    unit = data.get("/lib/systemd/system/fcmon.service")
    if isinstance(unit, bytes):
        for binary in re.findall(rb"^ExecStart=(\S+)", unit, re.M):
            if binary.decode() not in data:
                problems.append(f"{where}: the unit's ExecStart {binary.decode()} is not in the package")
    if not any(re.fullmatch(rf"/opt/fcmon/lib/python3\.\d+/site-packages/{NAME}-{re.escape(ver)}\.dist-info/METADATA", p)
               for p in data):
        problems.append(f"{where}: no {NAME} {ver} installed in /opt/fcmon")
    return problems


def wheelhouse(outdir: Path, wheel: Path, pip_args: Sequence[str] = ()) -> Path:
    """The wheel and every dependency's wheel (binary only) in outdir/wheelhouse."""
    house = outdir / "wheelhouse"
    house.mkdir(parents=True, exist_ok=True)
    for old in house.glob(f"{NAME}-*.whl"):
        old.unlink()
    run([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:",
         "--dest", str(house), *pip_args, str(wheel)])
    if not (house / wheel.name).is_file():
        raise SystemExit(f"{wheel.name} did not land in {house}")
    return house


def main(argv: "Sequence[str] | None" = None) -> int:
    parser = argparse.ArgumentParser(prog="tools/release.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("dist", "wheelhouse", "check"))
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--pip-arg", action="append", default=[], metavar="ARG",
                        help="extra argument for `pip download` (wheelhouse), e.g. "
                        "--pip-arg=--python-version=3.11 --pip-arg=--platform=manylinux_2_28_x86_64 --pip-arg=--platform=manylinux2014_x86_64")
    args = parser.parse_args(argv)
    ver = version()
    if args.command == "dist":
        sdist, wheel = build(args.outdir)
        twine_check([sdist, wheel])
    if args.command == "wheelhouse":
        sdist, wheel = artefacts(args.outdir, ver)
        if not wheel.is_file():
            print(f"{wheel} missing: run `make dist` first", file=sys.stderr)
            return 1
        house = wheelhouse(args.outdir, wheel, args.pip_arg)
        wheels = sorted(p.name for p in house.glob("*.whl"))
        print(f"{house}: {len(wheels)} wheels")
        for w in wheels:
            print(f"  {w}")
        print(f"install on a host without internet: pip install --no-index --find-links {house.name}/ {NAME}")
        return 0
    # `dist` checks what it built; `check` also the image and .deb there
    # (an older one left in OUTDIR must not stop the sdist and wheel).
    problems = check(args.outdir, packages=args.command == "check")
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        return 1
    sdist, wheel = artefacts(args.outdir, ver)
    built = [sdist, wheel]
    if args.command == "check":
        built += [image_archive(args.outdir, ver), *sorted(args.outdir.glob(f"{NAME}_{ver}-*.deb"))]
    for p in built:
        if p.is_file():
            print(f"{p}: {p.stat().st_size / 1024:.0f} KiB, contents OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())

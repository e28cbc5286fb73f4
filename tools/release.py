"""Build and check a release: `make dist` and `make wheelhouse` run this.

    python tools/release.py dist OUTDIR        sdist + wheel (isolated build), twine check, contents check
    python tools/release.py wheelhouse OUTDIR  the wheel in OUTDIR and every dependency's wheel, in OUTDIR/wheelhouse
    python tools/release.py check OUTDIR       the contents check alone

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
    for w in wanted:
        if w not in rel:
            problems.append(f"sdist: {w} missing")
    return problems


def check(outdir: Path, root: Path = ROOT) -> List[str]:
    sdist, wheel = artefacts(outdir, version(root))
    return sdist_problems(sdist, root) + wheel_problems(wheel, root)


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
    problems = check(args.outdir)
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        return 1
    sdist, wheel = artefacts(args.outdir, ver)
    for p in (sdist, wheel):
        print(f"{p}: {p.stat().st_size / 1024:.0f} KiB, contents OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())

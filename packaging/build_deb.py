"""`make deb`: fcmon as a Debian package, built with dpkg-deb alone.

    python packaging/build_deb.py VERSION [DIST]

Layout (README, "Debian package"):

    /opt/fcmon/                      a venv of the target's /usr/bin/python3 holding
                                     fcmon and its dependencies from dist/wheelhouse/
    /usr/bin/fcmon                   -> /opt/fcmon/bin/fcmon
    /etc/fcmon/config.ini            the example config, a conffile
    /lib/systemd/system/fcmon.service  the unit, as in systemd/ (ExecStart=/opt/fcmon/bin/fcmon)
    /usr/share/fcmon/                alert rules, their promtool tests, the Prometheus
                                     example and the Grafana dashboard
    /usr/share/doc/fcmon/            README, runbook, changelogs, copyright

Why a venv in /opt and not /usr/lib/python3/dist-packages: fcmon needs
newer requests, urllib3, cryptography and prometheus-client than Debian
stable ships, and mixing pip-installed modules into the system's Python is
what Debian forbids (PEP 668). The venv's interpreter is the system's
/usr/bin/python3, and a venv only works with the Python minor version it
was built for (lib/python3.X/site-packages, compiled extensions): the
package depends on exactly that minor version, so build it on (or for)
the release it is installed on. The venv is built in a staging folder and
moved to /opt/fcmon by rewriting the few files that name its path; the
build fails if any file still names the staging folder.

Python byte code is compiled at build time (checked-hash .pyc, paths as
installed): under the unit's ProtectSystem=strict fcmon cannot write it.
"""

from __future__ import annotations

import email
import gzip
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "/opt/fcmon"
TARGET_PYTHON = os.environ.get("DEB_PYTHON", "/usr/bin/python3")
MAINTAINER = os.environ.get("DEB_MAINTAINER", "fcmon maintainers <fcmon@example.org>")
DEB_REVISION = "1"
SHARE = ("prometheus/", "grafana/")
DOCS = {"README.md": "README.md", "docs/runbook.md": "runbook.md"}

DESCRIPTION = """\
health checks for FairCom database servers, as Prometheus metrics
 fcmon probes each FairCom server's JSON DB API over mutual TLS
 (createSession, listDatabases, deleteSession) and exports the results as
 Prometheus metrics, a status page, a Nagios-style check command and
 alert rules.
 .
 This package holds fcmon and its Python dependencies in a private venv
 under /opt/fcmon, the systemd unit (not enabled or started on install:
 edit /etc/fcmon/config.ini first), the alert rules and the Grafana
 dashboard under /usr/share/fcmon."""

POSTINST = """\
#!/bin/sh
# fcmon is neither enabled nor started here: the shipped config.ini names
# example servers. Configure it, then `systemctl enable --now fcmon`.
set -e
if [ "$1" = configure ] && [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null || true
    # An upgrade restarts an fcmon that runs, on the new version.
    if [ -n "$2" ] && command -v deb-systemd-invoke >/dev/null; then
        deb-systemd-invoke try-restart fcmon.service >/dev/null || true
    fi
fi
"""

PRERM = """\
#!/bin/sh
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ] && command -v deb-systemd-invoke >/dev/null; then
    deb-systemd-invoke stop fcmon.service >/dev/null || true
fi
"""

POSTRM = """\
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null || true
fi
# The admin's `systemctl enable fcmon` left this link; the unit is gone.
if [ "$1" = purge ]; then
    rm -f /etc/systemd/system/multi-user.target.wants/fcmon.service
fi
"""

# Every override explained (lintian shows these comments with --show-overrides).
LINTIAN_OVERRIDES = """\
# fcmon is a site package, not one for the Debian archive: it installs a
# self-contained venv under /opt/fcmon (the path the systemd unit and the
# README's manual install use), so that its newer Python dependencies never
# mix with the system's Python (PEP 668).
fcmon: dir-or-file-in-opt [opt/fcmon/*]
# The venv's dependencies come as upstream wheels: cryptography's and cffi's
# compiled modules are built by their projects (manylinux, with their own
# hardening flags and a statically linked OpenSSL in cryptography), not
# rebuilt with Debian's flags.
fcmon: hardening-no-fortify-functions [opt/fcmon/*]
# Byte code compiled at build time for the venv's own interpreter, with
# the installed paths: the service runs with ProtectSystem=strict and could
# not write it; Debian's py3compile handles /usr/lib/python3 only.
fcmon: package-installs-python-pycache-dir [opt/fcmon/*]
# The venv's scripts run its own interpreter, /opt/fcmon/bin/python (a link
# to /usr/bin/python3); some dependencies' modules carry a "#!python" line
# from their upstream sources, shipped as plain (non-executable) modules.
fcmon: unusual-interpreter *[opt/fcmon/*]
fcmon: script-not-executable [opt/fcmon/*]
# Not uploaded to Debian: there are no Debian bugs to close.
fcmon: initial-upload-closes-no-bugs [usr/share/doc/fcmon/changelog.Debian.gz:1]
# `fcmon --help` and `fcmon COMMAND --help` are the manual; the README is in
# /usr/share/doc/fcmon.
fcmon: no-manual-page [usr/bin/fcmon]
"""


def run(cmd: Sequence[str], **kwargs: object) -> subprocess.CompletedProcess:
    print("+ " + " ".join(cmd), flush=True)
    return subprocess.run(list(cmd), check=True, **kwargs)  # type: ignore[call-overload]


def arch() -> str:
    return subprocess.run(["dpkg", "--print-architecture"], check=True, capture_output=True,
                          text=True).stdout.strip()


def build_venv(stage: Path, house: Path, version: str) -> Path:
    venv = stage / PREFIX.lstrip("/")
    run([TARGET_PYTHON, "-m", "venv", "--without-pip", str(venv)])
    # This pip installs into the target's venv (pip --python), so the venv
    # itself never carries pip: the package is upgraded by dpkg, not pip.
    run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
         "--quiet", "--no-index", "--no-compile", "--no-cache-dir", "--disable-pip-version-check",
         "--find-links", str(house), f"fcmon=={version}"])
    relocate(venv)
    # A service's venv: nobody activates it, and its empty include/ is for
    # building extensions, which this venv never does.
    for script in venv.glob("bin/[Aa]ctivate*"):
        script.unlink()
    shutil.rmtree(venv / "include", ignore_errors=True)
    normalize(venv)
    lib = next(venv.glob("lib/python3*"))
    run([TARGET_PYTHON, "-m", "compileall", "-q", "-j0", "--invalidation-mode", "checked-hash",
         "-d", f"{PREFIX}/{lib.relative_to(venv).as_posix()}", str(lib)])
    stale = [str(p) for p in venv.rglob("*") if p.is_file() and str(venv).encode() in p.read_bytes()]
    if stale:
        raise SystemExit(f"files still name the staging folder {venv}: {stale}")
    return venv


def relocate(venv: Path) -> None:
    """Point the scripts and pyvenv.cfg at PREFIX instead of the staging folder."""
    old, new = str(venv).encode(), PREFIX.encode()
    for path in [venv / "pyvenv.cfg", *sorted((venv / "bin").iterdir())]:
        if path.is_symlink() or not path.is_file():
            continue
        data = path.read_bytes()
        if old in data:
            path.write_bytes(data.replace(old, new))


def normalize(venv: Path) -> None:
    """Debian's rules for files (what dh_fixperms and dh_strip do): only the
    scripts in bin/ executable, shared objects stripped of debug symbols."""
    for path in venv.rglob("*"):
        if path.is_symlink() or not path.is_file():
            continue
        if path.parent == venv / "bin":
            path.chmod(0o755)
            continue
        path.chmod(0o644)
        if path.suffix == ".so":
            run(["strip", "--strip-unneeded", "--remove-section=.comment", "--remove-section=.note",
                 str(path)])


def installed(venv: Path) -> List[email.message.Message]:
    return [email.message_from_string(p.read_text(encoding="utf-8"))
            for p in sorted(venv.glob("lib/python3*/site-packages/*.dist-info/METADATA"))]


def glibc_floor(venv: Path) -> str:
    """The newest glibc a bundled wheel was built for (manylinux_2_N tags)."""
    floor = (2, 17)
    for wheel in venv.glob("lib/python3*/site-packages/*.dist-info/WHEEL"):
        for m in re.finditer(r"manylinux_(\d+)_(\d+)", wheel.read_text()):
            floor = max(floor, (int(m.group(1)), int(m.group(2))))
    return "%d.%d" % floor


def python_minor(venv: Path) -> str:
    lib = next(venv.glob("lib/python3*"))
    return lib.name[len("python"):]


def copyright_text(venv: Path) -> str:
    lines = [
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/",
        "Upstream-Name: fcmon",
        "Comment: fcmon and the Python packages it runs on, installed in",
        " /opt/fcmon from their upstream wheels. Each package's own license",
        " text is in /opt/fcmon/lib/python3*/site-packages/NAME*.dist-info/.",
        "",
        "Files: *",
        "Copyright: 2025-2026 the fcmon authors",
        "License: Apache-2.0",
    ]
    for meta in installed(venv):
        if meta["Name"] == "fcmon":
            continue
        lic = meta.get("License-Expression") or (meta.get("License") or "").splitlines()[0:1]
        if isinstance(lic, list):
            lic = lic[0] if lic and len(lic[0]) < 60 else "see its dist-info"
        lines += ["", f"Files: opt/fcmon/lib/*/site-packages/{meta['Name'].replace('-', '_').lower()}*",
                  f"Copyright: the {meta['Name']} authors (see its dist-info)",
                  f"License: {lic or 'see its dist-info'}"]
    lines += ["", "License: Apache-2.0",
              " On Debian systems the full text of the Apache License 2.0 is in",
              " /usr/share/common-licenses/Apache-2.0.", ""]
    return "\n".join(lines)


def debian_changelog(version: str) -> bytes:
    date = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(_epoch()))
    text = (f"fcmon ({version}-{DEB_REVISION}) unstable; urgency=medium\n\n"
            f"  * fcmon {version}, packaged from its wheel; upstream changes in changelog.gz.\n\n"
            f" -- {MAINTAINER}  {date}\n")
    return gzip.compress(text.encode(), 9, mtime=0)


def _epoch() -> int:
    return int(os.environ.get("SOURCE_DATE_EPOCH", "0") or 0) or int(time.time())


def put(stage: Path, dest: str, data: bytes, mode: int = 0o644) -> Path:
    path = stage / dest.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)
    return path


def build(version: str, dist: Path) -> Path:
    house = dist / "wheelhouse"
    if not (house / f"fcmon-{version}-py3-none-any.whl").is_file():
        raise SystemExit(f"no fcmon {version} wheel in {house}: run make wheelhouse")
    for tool in ("dpkg-deb", "strip"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (apt-get install {tool})")
    stage = (ROOT / "build" / "deb" / "fcmon").resolve()
    shutil.rmtree(stage.parent, ignore_errors=True)
    stage.mkdir(parents=True)
    os.umask(0o022)
    venv = build_venv(stage, house, version)

    # The deployable files, exactly as the installed fcmon ships them.
    assets = stage.parent / "assets"
    run([str(venv / "bin" / "python"), "-m", "fcmon", "assets", "export", str(assets)],
        stdout=subprocess.DEVNULL)
    put(stage, "/etc/fcmon/config.ini", (assets / "config.ini").read_bytes())
    put(stage, "/lib/systemd/system/fcmon.service", (assets / "systemd" / "fcmon.service").read_bytes())
    for path in sorted(assets.rglob("*")):
        rel = path.relative_to(assets).as_posix()
        if path.is_file() and rel.startswith(SHARE):
            put(stage, f"/usr/share/fcmon/{rel}", path.read_bytes())
    doc = "/usr/share/doc/fcmon"
    for src, name in DOCS.items():
        put(stage, f"{doc}/{name}", (assets / src).read_bytes())
    put(stage, f"{doc}/changelog.gz", gzip.compress((assets / "CHANGELOG.md").read_bytes(), 9, mtime=0))
    put(stage, f"{doc}/changelog.Debian.gz", debian_changelog(version))
    put(stage, f"{doc}/copyright", copyright_text(venv).encode())
    put(stage, "/usr/share/lintian/overrides/fcmon", LINTIAN_OVERRIDES.encode())
    (stage / "usr" / "bin").mkdir(parents=True, exist_ok=True)
    (stage / "usr" / "bin" / "fcmon").symlink_to(f"{PREFIX}/bin/fcmon")
    shutil.rmtree(assets)

    minor = python_minor(venv)
    nxt = "%s.%d" % (minor.split(".")[0], int(minor.split(".")[1]) + 1)
    size_kib = sum(p.lstat().st_size for p in stage.rglob("*")) // 1024 + 1
    control: Dict[str, str] = {
        "Package": "fcmon",
        "Version": f"{version}-{DEB_REVISION}",
        "Architecture": arch(),
        "Maintainer": MAINTAINER,
        "Installed-Size": str(size_kib),
        # The venv runs on /usr/bin/python3 and holds modules for its minor
        # version; the unit's ExecReload runs /bin/kill (procps):
        # docs/design-notes.md#a-minimal-debian-root-has-no-binkill
        "Depends": f"python3 (>= {minor}), python3 (<< {nxt}), libc6 (>= {glibc_floor(venv)}), procps",
        "Section": "net",
        "Priority": "optional",
        "Description": DESCRIPTION,
    }
    meta = stage / "DEBIAN"
    meta.mkdir()
    put(stage, "/DEBIAN/control", "".join(f"{k}: {v}\n" for k, v in control.items()).encode())
    put(stage, "/DEBIAN/conffiles", b"/etc/fcmon/config.ini\n")
    for name, text in (("postinst", POSTINST), ("prerm", PRERM), ("postrm", POSTRM)):
        put(stage, f"/DEBIAN/{name}", text.encode(), 0o755)
    sums = []
    for path in sorted(stage.rglob("*")):
        rel = path.relative_to(stage).as_posix()
        if path.is_file() and not path.is_symlink() and not rel.startswith("DEBIAN/"):
            sums.append(f"{hashlib.md5(path.read_bytes()).hexdigest()}  {rel}\n")
    put(stage, "/DEBIAN/md5sums", "".join(sums).encode())

    out = dist / f"fcmon_{version}-{DEB_REVISION}_{control['Architecture']}.deb"
    for old in dist.glob("fcmon_*.deb"):
        old.unlink()
    run(["dpkg-deb", "--root-owner-group", "-Zxz", "--build", str(stage), str(out)],
        stdout=subprocess.DEVNULL)
    return out


def main(argv: Sequence[str]) -> int:
    if not 1 <= len(argv) <= 2:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    start = time.monotonic()
    out = build(argv[0], Path(argv[1] if len(argv) > 1 else "dist"))
    print(f"{out}: {out.stat().st_size / 1024 / 1024:.1f} MB, built in {time.monotonic() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

#!/usr/bin/env bash
# A Debian base for the image and the package test, built here because no
# image registry need be reachable: mmdebstrap of SUITE (default bookworm)
# with python3, its venv module and useradd, from this machine's own apt
# sources (no mirror is named here), written as a tarball; with --import
# NAME, also imported into buildah's local storage as image NAME.
#
#   packaging/base-image.sh OUT.tar [--suite SUITE] [--packages LIST] [--import NAME]
#
# --packages: comma-separated, instead of python3,python3-venv,passwd (the
# Debian package's test root uses python3,procps,systemd).
# MMDEBSTRAP_SOURCES=FILE uses that sources list instead of the host's.
set -euo pipefail

out=${1:?usage: $0 OUT.tar [--suite SUITE] [--import NAME]}
shift
suite=bookworm
name=
packages=python3,python3-venv,passwd
while [ $# -gt 0 ]; do
  case $1 in
    --suite) suite=$2; shift 2 ;;
    --import) name=$2; shift 2 ;;
    --packages) packages=$2; shift 2 ;;
    *) echo "$0: unknown argument $1" >&2; exit 2 ;;
  esac
done

# The host's apt sources that serve SUITE (one-line or deb822 files): mmdebstrap
# pastes a file given as its mirror into the chroot's sources list.
sources=()
if [ -n "${MMDEBSTRAP_SOURCES:-}" ]; then
  sources=("$MMDEBSTRAP_SOURCES")
else
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    if grep -qE "^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?[^[:space:]]+[[:space:]]+$suite([[:space:]]|$)" "$f" ||
       grep -qE "^Suites:([[:space:]]+[^[:space:]]+)*[[:space:]]+$suite([[:space:]]|$)" "$f"; then
      sources+=("$f")
    fi
  done
fi
if [ ${#sources[@]} -eq 0 ]; then
  echo "$0: no apt source on this host serves $suite; set MMDEBSTRAP_SOURCES=FILE" >&2
  exit 1
fi
for tool in mmdebstrap ${name:+buildah}; do
  command -v "$tool" >/dev/null || { echo "$0: $tool is not installed (apt-get install $tool)" >&2; exit 1; }
done

# essential + the packages: no apt, no documentation, no locales
# (copyright files stay). About 100 s with a nearby mirror.
mkdir -p "$(dirname "$out")"
start=$(date +%s)
mmdebstrap --quiet --format=tar --variant=essential --include="$packages" \
  --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/info/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  "$suite" "$out.partial" "${sources[@]}"
mv "$out.partial" "$out"
echo "$out: $(du -m "$out" | cut -f1) MB in $(($(date +%s) - start)) s ($suite, from ${sources[*]})"

if [ -n "$name" ]; then
  ctr=$(buildah from scratch)
  trap 'buildah rm "$ctr" >/dev/null 2>&1 || true' EXIT
  buildah add --quiet "$ctr" "$out" /
  buildah config --cmd /bin/sh --label "org.opencontainers.image.description=Debian $suite with python3, built by mmdebstrap" "$ctr"
  buildah commit --quiet --rm "$ctr" "$name" >/dev/null
  trap - EXIT
  echo "imported as $name"
fi

#!/usr/bin/env bash
# `make image`: the OCI image from the Containerfile and dist/wheelhouse/
# (make wheelhouse), built with buildah (chroot isolation: no daemon, no
# user namespaces needed; run as root), tagged IMAGE:VERSION, and saved as
# dist/fcmon-VERSION-image.tar (docker-archive: `docker load -i`,
# `podman load -i`).
#
#   packaging/build-image.sh VERSION [DIST]
#
# IMAGE (default localhost/fcmon) and BASE (default
# localhost/fcmon-base:bookworm) from the environment. When BASE is that
# default and not yet in local storage, packaging/base-image.sh makes it.
set -euo pipefail
cd "$(dirname "$0")/.."

version=${1:?usage: $0 VERSION [DIST]}
dist=${2:-dist}
image=${IMAGE:-localhost/fcmon}
default_base=localhost/fcmon-base:bookworm
base=${BASE:-$default_base}

command -v buildah >/dev/null || { echo "$0: buildah is not installed (apt-get install buildah)" >&2; exit 1; }
ls "$dist"/wheelhouse/fcmon-"$version"-py3-none-any.whl >/dev/null ||
  { echo "$0: no fcmon $version wheel in $dist/wheelhouse: run make wheelhouse" >&2; exit 1; }

if ! buildah inspect --type image "$base" >/dev/null 2>&1; then
  if [ "$base" != "$default_base" ]; then
    echo "$0: base image $base is not in local storage (buildah pull it first)" >&2
    exit 1
  fi
  packaging/base-image.sh build/base-bookworm.tar --import "$base"
fi

source=${IMAGE_SOURCE:-$(git remote get-url origin 2>/dev/null || echo "file://$PWD")}
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
start=$(date +%s)
# --format docker: the OCI image format has no HEALTHCHECK (buildah drops it;
# docs/design-notes.md#buildah-healthcheck-entrypoint-and-read-only-roots).
# --layers=false: one layer per stage's result, no cache kept between builds.
buildah bud --quiet --isolation chroot --format docker --layers=false \
  --build-arg BASE="$base" --build-arg VERSION="$version" \
  --build-arg SOURCE="$source" --build-arg REVISION="$revision" \
  --file Containerfile --tag "$image:$version" . >/dev/null
built=$(date +%s)
archive="$dist/fcmon-$version-image.tar"
rm -f "$archive"
buildah push --quiet "$image:$version" "docker-archive:$archive:$image:$version" >/dev/null
# The previous build of this tag, now untagged, and the build stage.
buildah rmi --prune >/dev/null 2>&1 || true
echo "$image:$version built in $((built - start)) s; $archive: $(du -m "$archive" | cut -f1) MB"

#!/bin/sh
# Two local base images made from Debian packages, for building and testing the sidecar image where no image
# registry can be reached (the Dockerfile's defaults, python:3.11 and python:3.11-slim, are Debian bookworm with
# Python 3.11; these are the same release with Debian's own Python 3.11):
#   localhost/sidecar-base:bookworm-KEY        python3 on a minimal bookworm (the runtime stage's base)
#   localhost/sidecar-base-build:bookworm-KEY  the same plus gcc, the Python headers and venv (the build stage's)
# KEY is a hash of this file: a changed recipe makes new images, an unchanged one reuses the images the podman
# storage already holds, so only the first run on a machine pays for debootstrap.
# Needs root, debootstrap and podman (`make image-tools`), and the Debian mirror (DEBIAN_MIRROR).
# Prints the build arguments for the Dockerfile as its last two lines: BUILD_IMAGE=... and BASE_IMAGE=...
set -eu

RELEASE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
RUNTIME_PACKAGES=python3
BUILD_PACKAGES="gcc libc6-dev python3-dev python3-venv"

here=$(cd "$(dirname "$0")" && pwd)
podman="$here/podman.sh"
key=$RELEASE-$(sha256sum "$0" | cut -c1-12)
base=localhost/sidecar-base:$key
build=localhost/sidecar-base-build:$key

exists() { "$podman" image exists "$1"; }
seconds() { date +%s; }

if ! exists "$base"; then
    work=$(mktemp -d /var/tmp/sidecar-base.XXXXXX)
    trap 'rm -rf "$work"' EXIT
    started=$(seconds)
    echo "debootstrap $RELEASE ($RUNTIME_PACKAGES) from $MIRROR" >&2
    debootstrap --variant=minbase --include="$RUNTIME_PACKAGES" "$RELEASE" "$work/rootfs" "$MIRROR" >"$work/log" 2>&1 \
        || { tail -n 20 "$work/log" >&2; exit 1; }
    echo "debootstrap took $(($(seconds) - started))s" >&2
    # package lists and downloaded packages are apt's caches, not part of the system
    rm -rf "$work/rootfs/var/cache/apt/"*.bin "$work/rootfs/var/cache/apt/archives/"*.deb \
        "$work/rootfs/var/lib/apt/lists/"* "$work/rootfs/usr/share/doc" "$work/rootfs/usr/share/man"
    started=$(seconds)
    tar -C "$work/rootfs" --numeric-owner -c . | "$podman" import --quiet \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$base" >/dev/null
    echo "imported $base in $(($(seconds) - started))s" >&2
    rm -rf "$work"
    trap - EXIT
fi

if ! exists "$build"; then
    started=$(seconds)
    # the build stage compiles the request path (mypyc: a C compiler and Python's headers) in a venv
    printf 'FROM %s\nRUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends %s && rm -rf /var/lib/apt/lists/*\n' \
        "$base" "$BUILD_PACKAGES" | "$podman" build --network host --quiet -t "$build" -f - "$here" >/dev/null
    echo "built $build in $(($(seconds) - started))s" >&2
fi

# bases of an older recipe are not used again (the build base first: it is a child of the other)
for repo in localhost/sidecar-base-build localhost/sidecar-base; do
    "$podman" images --format '{{.Repository}}:{{.Tag}}' "$repo" | grep -v ":$key\$" | while read -r old; do
        "$podman" rmi "$old" >/dev/null 2>&1 || true
    done
done

echo "BUILD_IMAGE=$build"
echo "BASE_IMAGE=$base"

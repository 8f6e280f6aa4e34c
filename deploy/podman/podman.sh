#!/bin/sh
# podman with this directory's configuration, as root: vfs storage (no overlay mounts needed), the runc runtime,
# cgroupfs, and no default rlimits (containers.conf says why). Usage: deploy/podman/podman.sh ARGS...
here=$(cd "$(dirname "$0")" && pwd)
export CONTAINERS_CONF="$here/containers.conf" CONTAINERS_STORAGE_CONF="$here/storage.conf"
exec podman "$@"

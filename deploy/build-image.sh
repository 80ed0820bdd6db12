#!/usr/bin/env bash
# Build Kiln's OCI image without a container engine: buildah (vfs storage, chroot isolation) over a Debian
# bookworm root filesystem made by debootstrap, Kiln installed offline from wheels built here.
# Everything it writes lives under build/image/ (ignored by git). Run as root (debootstrap, buildah).
#
#   deploy/build-image.sh                  # -> localhost/kiln:<version> in build/image/storage
#   KILN_IMAGE=localhost/kiln:dev deploy/build-image.sh
#   KILN_IMAGE_ARCHIVE=build/image/kiln.tar deploy/build-image.sh   # also write a docker-archive tarball
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
venv=${VENV:-.venv}
version=$("$venv/bin/python" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
image=${KILN_IMAGE:-localhost/kiln:$version}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
out=build/image
cache=$out/cache
context=$out/context
buildah=(buildah --root "$repo/$out/storage" --runroot "$repo/$out/run" --storage-driver vfs)

for tool in buildah debootstrap; do
    command -v "$tool" >/dev/null || { echo "needs $tool: apt-get install -y buildah debootstrap" >&2; exit 1; }
done

# 1. Debian bookworm, minimal, with Python 3.11 (cached: delete build/image/cache to refresh it)
if [ ! -f "$cache/rootfs/.kiln-debootstrap" ]; then
    rm -rf "$cache/rootfs" "$cache/rootfs.partial"
    mkdir -p "$cache"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm \
        "$cache/rootfs.partial" "$mirror"
    touch "$cache/rootfs.partial/.kiln-debootstrap"
    mv "$cache/rootfs.partial" "$cache/rootfs"
fi

# 2. the build context: the root filesystem as one tarball (no caches, docs or device nodes) and a wheelhouse
rm -rf "$context"
mkdir -p "$context/wheels"
tar -C "$cache/rootfs" --numeric-owner \
    --exclude=./.kiln-debootstrap --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' \
    --exclude='./run/*' --exclude='./tmp/*' --exclude='./var/cache/apt/*' --exclude='./var/lib/apt/lists/*' \
    --exclude='./var/log/*' --exclude='./usr/share/doc/*' --exclude='./usr/share/man/*' \
    --exclude='./usr/share/info/*' --exclude='./usr/share/locale/*' \
    -cf "$context/rootfs.tar" .
# Kiln's wheel with its core dependencies (no extras), every transitive version held to what this venv runs
"$venv/bin/pip" freeze --exclude-editable | grep -v '^kiln' >"$context/constraints.txt"
"$venv/bin/pip" wheel -q --no-deps -w "$context/wheels" .
"$venv/bin/pip" wheel -q -w "$context/wheels" -c "$context/constraints.txt" --only-binary=:all: \
    "$context"/wheels/kiln-*.whl
cp deploy/Containerfile "$context/Containerfile"

# 3. the image (docker format keeps HEALTHCHECK; OCI has no field for it)
start=$(date +%s)
"${buildah[@]}" bud --isolation chroot --format docker --layers=false \
    --label "org.opencontainers.image.version=$version" \
    --label "org.opencontainers.image.revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)" \
    -f "$context/Containerfile" -t "$image" "$context"
echo "built $image in $(($(date +%s) - start))s (buildah bud only)"
"${buildah[@]}" rmi --prune >/dev/null || true  # earlier builds of the tag, now untagged (this storage is ours)
"${buildah[@]}" images "$image"
if [ -n "${KILN_IMAGE_ARCHIVE:-}" ]; then
    rm -f "$KILN_IMAGE_ARCHIVE"
    "${buildah[@]}" push "$image" "docker-archive:$KILN_IMAGE_ARCHIVE:$image"
    echo "wrote $KILN_IMAGE_ARCHIVE (docker load -i / podman load -i)"
fi

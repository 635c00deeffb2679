#!/bin/bash
# build.sh [IMAGE...]: builds the images of images.list (all, or those named) with buildah:
# no Docker daemon, vfs storage, and no base image to pull for the FROM-scratch ones. Each
# root filesystem is what rootfs.sh makes of the binary in $BIN_DIR; the worker adds the agc
# bundle to $WORKER_BASE (the actions runner image), as Dockerfile.worker does.
#
# BIN_DIR       where the binaries are (default .build/static/release: `make images` builds them
#               there with a static Swift standard library)
# WORKER_BASE   the worker's base image (default ghcr.io/actions/actions-runner:latest; when that
#               default cannot be pulled, the worker is said to be not built and the rest is)
# BUILDAH_ROOT  a directory for buildah's storage instead of its default (tests use their own)
#
# Prints one line per image: `image NAME TAG BYTES GZIP_BYTES` (what the build added).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
BIN_DIR=${BIN_DIR:-$root/.build/static/release}
# Only the default base may be unreachable (a build machine without ghcr.io): the worker is then
# said to be not built and the others are; a base named on purpose must be had.
worker_base_given=${WORKER_BASE:+1}
WORKER_BASE=${WORKER_BASE:-ghcr.io/actions/actions-runner:latest}
buildah=(buildah --storage-driver vfs)
if [[ -n ${BUILDAH_ROOT:-} ]]; then
    buildah+=(--root "$BUILDAH_ROOT/storage" --runroot "$BUILDAH_ROOT/run")
fi

work=$(mktemp -d)
container=""
cleanup() {
    if [[ -n $container ]]; then "${buildah[@]}" rm "$container" >/dev/null 2>&1 || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

declare -A known=()
while read -r name _; do
    [[ -z $name || $name == \#* ]] || known[$name]=1
done <"$here/images.list"
for wanted in "$@"; do
    [[ -n ${known[$wanted]:-} ]] || { echo "build.sh: no image $wanted in images.list (${!known[*]})" >&2; exit 2; }
done

while read -r name tag user entry; do
    [[ -z $name || $name == \#* ]] && continue
    if (($#)) && ! printf '%s\n' "$@" | grep -qx -- "$name"; then continue; fi
    read -ra entrypoint <<<"$entry"
    binary=$(basename "${entrypoint[0]}")
    # The worker's bundle is the agc image's: made once when both are built.
    rootfs=$work/$binary
    [[ -d $rootfs ]] || "$here/rootfs.sh" "$BIN_DIR/$binary" "$rootfs"
    if [[ $name == worker ]]; then
        # The runner image keeps its own /etc and CA bundle: only the bundle goes on top.
        if ! container=$("${buildah[@]}" from --quiet "$WORKER_BASE" 2>"$work/pull.err"); then
            container=""
            cat "$work/pull.err" >&2
            if [[ -n $worker_base_given ]]; then
                echo "build.sh: the worker's base $WORKER_BASE cannot be had" >&2
                exit 1
            fi
            echo "build.sh: worker NOT BUILT: its base $WORKER_BASE cannot be pulled from here; WORKER_BASE=IMAGE names one you have" >&2
            continue
        fi
        "${buildah[@]}" copy --quiet "$container" "$rootfs/opt/actions-gateway" /opt/actions-gateway >/dev/null
        "${buildah[@]}" copy --quiet "$container" "$rootfs/usr/local/bin/$binary" "/usr/local/bin/$binary" >/dev/null
        "${buildah[@]}" config --env RUNNER_HOME=/home/runner --workingdir /home/runner "$container"
    else
        container=$("${buildah[@]}" from --quiet scratch)
        "${buildah[@]}" copy --quiet "$container" "$rootfs" / >/dev/null
    fi
    json=$(printf '"%s",' "${entrypoint[@]}")
    # --cmd '[]': no arguments of a base image's CMD are appended to the entrypoint (as a
    # Dockerfile's ENTRYPOINT resets them).
    "${buildah[@]}" config --user "$user" --entrypoint "[${json%,}]" --cmd '[]' \
        --label "org.opencontainers.image.source=https://github.com/actions-gateway/actions-gateway" \
        --label "org.opencontainers.image.title=$name" "$container"
    "${buildah[@]}" commit --quiet --rm "$container" "$tag" >/dev/null
    container=""
    # What this build adds (the whole image, but for the worker's base): on disk, and as the
    # gzip'd layer a registry stores and a node pulls.
    size=$(du -sb "$rootfs" | cut -f1)
    gzipped=$(tar -C "$rootfs" -cf - . | gzip -6 | wc -c)
    echo "image $name $tag $size $gzipped"
done <"$here/images.list"

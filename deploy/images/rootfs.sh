#!/bin/sh
# rootfs.sh BINARY OUT: the root filesystem of one image, written into OUT (made if missing).
# The one list of what goes into an image: `make images` (build.sh) and the Dockerfiles both
# run this script, so the two cannot drift apart.
#
# What goes in, and why:
# - /usr/local/bin/NAME: the binary (NAME is BINARY's file name) without its symbol table and
#   debug sections; keep the build's own binary to symbolicate a crash report.
# - /opt/actions-gateway/lib: every shared library the binary loads, as ldd lists them, and
#   the dynamic loader itself. The binary's interpreter and DT_RPATH point here (patchelf), so
#   it runs on any root filesystem, a runner image with other library versions included,
#   without touching that image's own /lib.
# - /etc/ssl/certs/ca-certificates.crt: the CA bundle libcurl and OpenSSL look for (GitHub, the
#   API server, parent proxies).
# - /etc/passwd, /etc/group: the non-root user 65532 (nonroot) the images run as, so anything
#   that looks a uid up finds one; /etc/nsswitch.conf: hosts from files, then DNS.
# Nothing else: no shell, no package manager, no writable directory (pods run with a
# read-only root filesystem; what must be written is a mounted volume).
set -eu

if [ $# -ne 2 ]; then
    echo "usage: rootfs.sh BINARY OUT" >&2
    exit 2
fi
binary=$1
out=$2
name=$(basename "$binary")
lib=/opt/actions-gateway/lib

if [ ! -x "$binary" ]; then
    echo "rootfs.sh: $binary is not an executable file" >&2
    exit 1
fi
for tool in ldd patchelf strip; do
    command -v "$tool" >/dev/null || { echo "rootfs.sh: $tool is missing (apt-get install patchelf binutils libc-bin)" >&2; exit 1; }
done

mkdir -p "$out/usr/local/bin" "$out$lib" "$out/etc/ssl/certs"
install -m 0755 "$binary" "$out/usr/local/bin/$name"
strip --strip-unneeded "$out/usr/local/bin/$name"

# `=> not found` is a build machine without a library the binary needs: stop, never ship it.
if ldd "$binary" | grep -q 'not found'; then
    ldd "$binary" >&2
    echo "rootfs.sh: $binary needs libraries this machine does not have" >&2
    exit 1
fi
ldd "$binary" | awk '$2 == "=>" && $3 ~ /^\// { print $3 }' | while read -r library; do
    cp -L "$library" "$out$lib/"
done
interpreter=$(patchelf --print-interpreter "$binary")
cp -L "$interpreter" "$out$lib/"
patchelf --set-interpreter "$lib/$(basename "$interpreter")" --force-rpath --set-rpath "$lib" "$out/usr/local/bin/$name"

cp -L /etc/ssl/certs/ca-certificates.crt "$out/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' > "$out/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' > "$out/etc/group"
printf 'hosts: files dns\n' > "$out/etc/nsswitch.conf"

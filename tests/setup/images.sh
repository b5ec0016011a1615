#!/usr/bin/env bash
# Builds the test image vendetta-test/busybox:latest offline from Debian's
# busybox-static (no registry is reachable here): a root file system with
# busybox and its applet links, imported with the Docker Engine API through
# `docker import`, and vendetta-test/busybox-health:latest, the same with a
# HEALTHCHECK (healthy once /tmp/healthy exists), made with `docker commit`
# so no builder is needed. Idempotent: does nothing when the images exist.
set -euo pipefail
image=vendetta-test/busybox:latest
health_image=vendetta-test/busybox-health:latest
if ! command -v docker >/dev/null 2>&1 || ! docker info >/dev/null 2>&1; then
    echo "images.sh: no usable Docker Engine; docker tests will report it" >&2
    exit 0
fi
add_health_image() {
    docker image inspect "$health_image" >/dev/null 2>&1 && return 0
    local c
    c=$(docker create "$image")
    docker commit --change 'HEALTHCHECK --interval=1s --timeout=2s --retries=1 CMD test -e /tmp/healthy' \
        "$c" "$health_image" >/dev/null
    docker rm "$c" >/dev/null
    echo "images.sh: built $health_image"
}
if docker image inspect "$image" >/dev/null 2>&1; then
    add_health_image
    exit 0
fi
busybox=$(command -v busybox)
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,tmp,etc,workspace,root,proc,sys,dev}
cp "$busybox" "$root/bin/busybox"
for applet in $("$busybox" --list-full); do
    [ "$applet" = bin/busybox ] && continue
    mkdir -p "$root/$(dirname "$applet")"
    ln -sf /bin/busybox "$root/$applet"
done
echo 'root:x:0:0:root:/root:/bin/sh' >"$root/etc/passwd"
echo 'nobody:x:65534:65534:nobody:/:/bin/false' >>"$root/etc/passwd"
echo 'root:x:0:' >"$root/etc/group"
echo 'nogroup:x:65534:' >>"$root/etc/group"
chmod 1777 "$root/tmp"
tar -C "$root" -c . | docker import --change 'CMD ["/bin/sh"]' - "$image" >/dev/null
echo "images.sh: built $image"
add_health_image

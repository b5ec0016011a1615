#!/usr/bin/env bash
# Builds the small Linux guest the QEMU provider's boot test runs
# (tests/it/qemu.rs, real_guest_boots_and_runs_exec): the kernel of Debian's
# linux-image-cloud-amd64 (downloaded with apt-get, extracted with
# dpkg-deb -x), and an initramfs the script assembles from busybox-static,
# qemu-ga with its libraries and the virtio modules they need. Its /init
# brings up eth0 (slirp addresses), serves /www on port 80 with busybox
# httpd, powers off on the ACPI power button (busybox acpid) and runs qemu-ga
# on the guest-agent port. Idempotent: does nothing when the guest exists.
# Output: $VENDETTA_TEST_GUEST (default /var/cache/vendetta-test/guest):
# vmlinuz, initrd.img, release. Needs root (apt-get), busybox and qemu-ga.
set -euo pipefail
out=${VENDETTA_TEST_GUEST:-/var/cache/vendetta-test/guest}
# Bump when the initramfs recipe below changes, so caches are rebuilt.
recipe=2
if [ -s "$out/vmlinuz" ] && [ -s "$out/initrd.img" ] && [ -s "$out/release" ] &&
    [ "$(cat "$out/recipe" 2>/dev/null)" = "$recipe" ]; then
    exit 0
fi
busybox=$(command -v busybox)
qga=$(command -v qemu-ga || echo /usr/sbin/qemu-ga)
[ -x "$qga" ] || { echo "guest.sh: qemu-ga missing; run tests/setup/deps.sh" >&2; exit 1; }
work=$(mktemp -d /tmp/vendetta-guest-XXXX)
trap 'rm -rf "$work"' EXIT

pkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/ {print $2; exit}')
[ -n "$pkg" ] || { apt-get update -qq; pkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/ {print $2; exit}'); }
# apt-get download as root warns that _apt cannot write the directory: harmless.
(cd "$work" && apt-get download -qq "$pkg" 2>/dev/null)
dpkg-deb -x "$work"/"$pkg"_*.deb "$work/kernel"
release=$(ls "$work/kernel/lib/modules")
mods=$work/kernel/lib/modules/$release

root=$work/root
mkdir -p "$root"/{bin,dev,proc,sys,tmp,run,var,etc/acpi/PWRF,www,usr/sbin,lib/modules}
cp "$busybox" "$root/bin/busybox"
ln -s busybox "$root/bin/sh"
cp "$qga" "$root/usr/sbin/qemu-ga"
# qemu-ga's shared libraries and the loader, at their own paths.
for lib in $(ldd "$qga" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\/lib/ {print $1}'); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
done

# Modules in load order, dependencies first (read from each .ko's
# depends= field; built-in ones are skipped).
declare -A seen
order=()
add() {
    local m=$1 f d
    [ -n "${seen[$m]:-}" ] && return 0
    seen[$m]=1
    f=$(find "$mods" \( -name "$m.ko" -o -name "${m//_/-}.ko" \) | head -1)
    if [ -z "$f" ]; then
        grep -q "/$m.ko$" "$mods/modules.builtin" && return 0
        echo "guest.sh: module $m not found in $pkg" >&2
        exit 1
    fi
    for d in $(grep -a -o 'depends=[^[:cntrl:]]*' "$f" | head -1 | cut -d= -f2 | tr , ' '); do
        add "$d"
    done
    order+=("$f")
}
for m in virtio_pci virtio_console virtio_net evdev button; do add "$m"; done
for f in "${order[@]}"; do
    cp "$f" "$root/lib/modules/"
    echo "$(basename "$f")" >>"$root/lib/modules/load"
done

echo "hello from the vendetta test guest" >"$root/www/index.html"
# busybox acpid runs /etc/acpi/<event> for the power button's event.
printf '#!/bin/sh\npoweroff -f\n' >"$root/etc/acpi/PWRF/00000080"
chmod +x "$root/etc/acpi/PWRF/00000080"
cat >"$root/init" <<'INIT'
#!/bin/sh
/bin/busybox --install -s /bin
export PATH=/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /lib/modules/load); do insmod /lib/modules/$m; done
ip link set lo up
ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2
httpd -p 80 -h /www
mkdir -p /var/log /var/run
acpid -c /etc/acpi
port=
for i in $(seq 200); do
    for p in /sys/class/virtio-ports/*; do
        [ "$(cat "$p/name" 2>/dev/null)" = org.qemu.guest_agent.0 ] && port=/dev/${p##*/}
    done
    [ -n "$port" ] && [ -e "$port" ] && break
    sleep 0.05
done
echo "vendetta-guest: qemu-ga on $port"
qemu-ga -m virtio-serial -p "$port" -t /run &
while :; do sleep 3600; done
INIT
chmod +x "$root/init"

mkdir -p "$out"
(cd "$root" && find . | "$busybox" cpio -o -H newc 2>/dev/null) | gzip -1 >"$out/initrd.img.tmp"
cp "$work/kernel/boot/vmlinuz-$release" "$out/vmlinuz.tmp"
mv "$out/initrd.img.tmp" "$out/initrd.img"
mv "$out/vmlinuz.tmp" "$out/vmlinuz"
echo "$release" >"$out/release"
echo "$recipe" >"$out/recipe"
echo "guest.sh: built the test guest ($release) in $out"

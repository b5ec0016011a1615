#!/usr/bin/env bash
# Installs what the build, the tests and the benchmarks need on a bare Debian 12
# machine. Idempotent: every step checks before it acts. Run as root (CI and
# our dev VMs are root); `make test` and `make bench` call it.
set -euo pipefail

need_apt=()
have() { command -v "$1" >/dev/null 2>&1; }

have musl-gcc        || need_apt+=(musl-tools)
have mandoc          || need_apt+=(mandoc)
have promtool        || need_apt+=(prometheus)
have lxc-start       || need_apt+=(lxc)
[ -e /usr/share/lxc/templates/lxc-busybox ] || need_apt+=(lxc-templates)
have busybox         || need_apt+=(busybox-static)
have openssl         || need_apt+=(openssl)
have wrk             || need_apt+=(wrk)
have hyperfine       || need_apt+=(hyperfine)
have sshd            || [ -x /usr/sbin/sshd ] || need_apt+=(openssh-server)
have curl            || need_apt+=(curl)
have python3         || need_apt+=(python3)

apt_updated=0
apt_update() {
    if [ "$apt_updated" = 0 ]; then
        apt-get update -qq
        apt_updated=1
    fi
}

if [ "${#need_apt[@]}" -gt 0 ]; then
    apt_update
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

# QEMU: the image ships qemu-utils from bookworm-backports, which conflicts
# with bookworm's qemu-system 7.2, so qemu-system-x86, qemu-utils (qemu-img,
# only a Recommends of qemu-system-x86) and the guest agent come from the
# same backports suite (see ../shared/reference/machine-notes.md).
if ! have qemu-system-x86_64 || ! have qemu-img || ! { have qemu-ga || [ -x /usr/sbin/qemu-ga ]; }; then
    src=/etc/apt/sources.list.d/vendetta-backports.sources
    if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
        cat >"$src" <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
        apt_updated=0
    fi
    apt_update
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        -t bookworm-backports qemu-system-x86 qemu-utils qemu-guest-agent
fi

# The static build target.
if have rustup && ! rustup target list --installed | grep -qx x86_64-unknown-linux-musl; then
    rustup target add x86_64-unknown-linux-musl
fi

# The small Linux guest of the QEMU provider's boot test (a Debian cloud
# kernel and a busybox + qemu-ga initramfs).
"$(dirname "$0")/guest.sh"

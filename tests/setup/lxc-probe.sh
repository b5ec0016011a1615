#!/usr/bin/env bash
# Can this host run LXC containers? Tries what the lxc tests need: the
# tools, root, the busybox template, lxc-checkconfig's essentials, then a
# trial busybox container (loopback-only network) created, started, attached
# to and destroyed under a private lxcpath in /tmp. Leaves nothing behind.
#
# Prints one line and exits 0 when containers work:
#   lxc probe: ok (lxc 5.0.2, cgroup hybrid, start 25 ms)
# or exits 1 with the reason:
#   lxc probe: FAILED: <what failed and what it said>
# The lxc integration tests (tests/it/lxc.rs) run it once and fail with its
# reason when it fails; `tests/setup/lxc-probe.sh` can also be run by hand or
# from CI.
set -u

fail() {
    echo "lxc probe: FAILED: $*"
    exit 1
}

for tool in lxc-create lxc-start lxc-wait lxc-attach lxc-stop lxc-destroy lxc-info lxc-ls lxc-checkconfig; do
    command -v "$tool" >/dev/null 2>&1 || fail "$tool is not installed (tests/setup/deps.sh installs lxc)"
done
[ "$(id -u)" = 0 ] || fail "not root: the lxc provider runs privileged containers"
[ -e /usr/share/lxc/templates/lxc-busybox ] || fail "the busybox template is missing (install lxc-templates)"
command -v busybox >/dev/null 2>&1 || fail "busybox is not installed (install busybox-static)"

problems=$(LC_ALL=C lxc-checkconfig 2>&1 | sed 's/\x1b\[[0-9;]*m//g' |
    grep -E '^(Namespaces|Utsname namespace|Ipc namespace|Pid namespace|Network namespace|Cgroups): ' |
    grep -v ': enabled$' | tr '\n' ';')
[ -z "$problems" ] || fail "lxc-checkconfig: $problems"

case "$(stat -fc %T /sys/fs/cgroup 2>/dev/null)" in
cgroup2fs) cgroup=unified ;;
tmpfs) if [ "$(stat -fc %T /sys/fs/cgroup/unified 2>/dev/null)" = cgroup2fs ]; then cgroup=hybrid; else cgroup=legacy; fi ;;
*) cgroup=none ;;
esac

dir=$(mktemp -d /tmp/vt-lxcprobe-XXXXXX)
name=vprobe-$$
cleanup() {
    timeout 60 lxc-destroy -P "$dir" -n "$name" -f >/dev/null 2>&1
    rm -rf "$dir"
}
trap cleanup EXIT
echo 'lxc.net.0.type = empty' >"$dir/probe.conf"

out=$(timeout 120 lxc-create -P "$dir" -n "$name" -t busybox -f "$dir/probe.conf" 2>&1) ||
    fail "lxc-create of a busybox container failed: $(echo "$out" | tail -3 | tr '\n' ' ')"
t0=$(date +%s%N)
if ! out=$(timeout 60 lxc-start -P "$dir" -n "$name" -d -o "$dir/start.log" -l WARN 2>&1); then
    cause=$(grep ' ERROR ' "$dir/start.log" 2>/dev/null | grep -v 'Unsupported config key' | head -3 | sed 's/.* - //' | tr '\n' ' ')
    fail "lxc-start of a busybox container failed: ${cause:-$out}"
fi
t1=$(date +%s%N)
timeout 30 lxc-wait -P "$dir" -n "$name" -s RUNNING -t 20 >/dev/null 2>&1 ||
    fail "the trial container did not reach RUNNING"
got=$(timeout 30 lxc-attach -P "$dir" -n "$name" --clear-env -- /bin/sh -c 'echo attached; exit 7' 2>&1)
rc=$?
[ "$rc" = 7 ] && [ "$got" = attached ] || fail "lxc-attach into the trial container answered $rc: $got"
version=$(lxc-info --version 2>/dev/null)
echo "lxc probe: ok (lxc $version, cgroup $cgroup, start $(((t1 - t0) / 1000000)) ms)"

#!/usr/bin/env bash
# LXC figures: create+start latency and the exec round trip through the
# agent, against the same steps done directly with the lxc-* tools in this
# script (busybox template, loopback-only network, a private lxcpath), as a
# ratio agent/direct. Medians of LXC_BENCH_N runs (default 10) and
# LXC_BENCH_EXECS execs (default 50). Skips with a row saying why when
# tests/setup/lxc-probe.sh finds that this host cannot run containers.
set -euo pipefail
here=$(dirname "$0")
source "$here/lib.sh"
N=${LXC_BENCH_N:-10}
EXECS=${LXC_BENCH_EXECS:-50}

if ! probe=$(bash "$here/../setup/lxc-probe.sh"); then
    echo "$probe" >&2
    row lxc "create+start / exec" "skipped" "" "$probe"
    exit 0
fi
echo "$probe" >&2

work=$(mktemp -d /tmp/vbench-lxc-XXXX)
lxcpath=$work/lxc
cleanup() {
    stop_agent
    for n in $(lxc-ls -P "$lxcpath" -1 2>/dev/null); do
        lxc-destroy -P "$lxcpath" -n "$n" -f >/dev/null 2>&1 || true
    done
    rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$lxcpath"

# The direct steps, timed inside the shell script itself with bash's
# EPOCHREALTIME (no extra process per reading), µs on stdout.
cat >"$work/direct.sh" <<'SH'
#!/usr/bin/env bash
# direct.sh LXCPATH start NAME | exec NAME COUNT | destroy NAME
set -euo pipefail
p=$1 what=$2 name=$3
case $what in
start)
    t0=${EPOCHREALTIME/./}
    lxc-create -P "$p" -n "$name" -t busybox -f "$p/../direct.conf" >/dev/null
    lxc-start -P "$p" -n "$name" -d -o "$p/../direct.log" -l WARN
    lxc-wait -P "$p" -n "$name" -s RUNNING -t 30
    t1=${EPOCHREALTIME/./}
    echo $((t1 - t0))
    ;;
exec)
    for _ in $(seq 1 "$4"); do
        t0=${EPOCHREALTIME/./}
        lxc-attach -P "$p" -n "$name" --clear-env -- true
        t1=${EPOCHREALTIME/./}
        echo $((t1 - t0))
    done
    ;;
destroy) lxc-destroy -P "$p" -n "$name" -f >/dev/null ;;
esac
SH
echo 'lxc.net.0.type = empty' >"$work/direct.conf"

# Direct and agent runs alternate, so load from elsewhere on the machine
# weighs on both alike.
start_agent "$work/a" "providers: [lxc]
provider: lxc
lxc:
  lxcpath: $lxcpath"
read -r a_start d_start a_exec d_exec a_inside a_stop a_destroy < <(python3 - "$AGENT_URL" "$AGENT_TOKEN" "$N" "$EXECS" "$$" "$work" "$lxcpath" <<'PY'
import http.client, json, statistics, subprocess, sys, time, urllib.parse
url, token, n, execs, pid, work, lxcpath = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6], sys.argv[7]
u = urllib.parse.urlparse(url)
h = {"Authorization": "Bearer " + token, "Content-Type": "application/json"}
seq = 0
def cmd(action, params):
    # A connection per request: on a kept-alive one the agent's two writes
    # per response (headers, then body) meet Nagle and the client's delayed
    # ACK, adding ~40 ms at random, which would swamp what is measured here.
    global seq
    seq += 1
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
    body = json.dumps({"id": f"bench-{pid}-{seq}", "type": "session", "action": action, "params": params})
    c.request("POST", "/api/v1/commands", body, h)
    r = c.getresponse()
    out = json.loads(r.read())
    c.close()
    if out.get("status") != "success":
        sys.exit(f"{action} failed: {out}")
    return out
def direct(*args):
    out = subprocess.run(["bash", f"{work}/direct.sh", lxcpath, *args], check=True, capture_output=True, text=True).stdout
    return [float(x) for x in out.split()]
a_start, d_start, stops, destroys = [], [], [], []
for i in range(n):
    d_start += direct("start", f"vbd-{pid}-{i}")
    sid = f"vba-{pid}-{i}"
    t0 = time.perf_counter()
    cmd("create", {"session_id": sid, "image": "busybox"})
    cmd("start", {"session_id": sid})
    a_start.append((time.perf_counter() - t0) * 1e6)
    if i > 0:
        direct("destroy", f"vbd-{pid}-{i}")
        t0 = time.perf_counter()
        cmd("stop", {"session_id": sid, "timeout": "0s"})
        stops.append((time.perf_counter() - t0) * 1e6)
        t0 = time.perf_counter()
        cmd("destroy", {"session_id": sid})
        destroys.append((time.perf_counter() - t0) * 1e6)
a_exec, d_exec, inside = [], [], []
for _ in range(max(1, execs // 10)):
    d_exec += direct("exec", f"vbd-{pid}-0", "10")
    for _ in range(10):
        t0 = time.perf_counter()
        out = cmd("exec", {"session_id": f"vba-{pid}-0", "command": ["true"]})
        a_exec.append((time.perf_counter() - t0) * 1e6)
        inside.append(out["duration_ms"] * 1000)
cmd("destroy", {"session_id": f"vba-{pid}-0"})
direct("destroy", f"vbd-{pid}-0")
med = lambda xs: f"{statistics.median(xs):.1f}" if xs else "nan"
print(med(a_start), med(d_start), med(a_exec), med(d_exec), med(inside), med(stops), med(destroys))
PY
)
ms() { python3 -c "print(f'{$1/1000:.1f} ms')"; }
row lxc "create+start through the agent (median of $N)" "$(ms "$a_start")" "ratio <= 1.25" "direct lxc-create+lxc-start+lxc-wait $(ms "$d_start"): ratio $(ratio "$a_start" "$d_start")"
row lxc "exec round trip, true (median of $EXECS)" "$(ms "$a_exec")" "ratio <= 1.25" "direct lxc-attach $(ms "$d_exec"): ratio $(ratio "$a_exec" "$d_exec")"
# What the agent adds per exec: the command's own duration (the result's
# duration_ms: ownership check and lxc-attach) against direct lxc-attach,
# then the rest (HTTP, the journal's flushes of start and result, events).
row lxc "exec inside the agent (result duration_ms)" "$(ms "$a_inside")" "ratio <= 1.25" "direct lxc-attach $(ms "$d_exec"): ratio $(ratio "$a_inside" "$d_exec")"
row lxc "agent overhead per exec outside the command" "$(python3 -c "print(f'{($a_exec-$a_inside)/1000:.1f} ms')")" "" "HTTP, two journal flushes (start, result), result"
row lxc "stop -k / destroy through the agent (median)" "$(ms "$a_stop") / $(ms "$a_destroy")" "" ""

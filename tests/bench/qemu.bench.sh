#!/usr/bin/env bash
# QEMU provider figures: create->running latency, a QMP command round trip
# through the agent (session start of a running VM: one QMP connection,
# greeting, qmp_capabilities, query-status), exec round trip through the
# real qemu-ga (run on the host on a VM's qga.sock, standing in for a
# guest), and the agent's memory with 20 VMs managed. The agent's figures
# are compared, as ratios, with the same exchanges done directly from a
# small Python client. VMs are -machine q35 -S under TCG with no disk.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
if ! command -v qemu-system-x86_64 >/dev/null; then
    echo "qemu.bench.sh: qemu-system-x86_64 missing; run tests/setup/deps.sh" >&2
    exit 1
fi
qga_bin=$(command -v qemu-ga || echo /usr/sbin/qemu-ga)
work=$(mktemp -d /tmp/vqb-XXXX)
ga_pid=
cleanup() {
    [ -n "$ga_pid" ] && kill "$ga_pid" 2>/dev/null
    stop_agent
    # Every VM of this run names $work in its command line.
    for p in $(pgrep -f "$work/" || true); do kill -9 "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

start_agent "$work/a" "provider: qemu
providers: [qemu]
monitor_interval: 10s
qemu:
  memory: 64m
  extra_args: [-accel, tcg]"

PYTHONPATH="$(dirname "$0")" python3 - "$AGENT_URL" "$AGENT_TOKEN" "$work" "$qga_bin" "$AGENT_PID" <<'PY'
import json, os, socket, statistics, subprocess, sys, time, glob
from api import Agent
url, token, work, qga_bin, agent_pid = sys.argv[1:6]
cmd = Agent(url, token, "b").ok
def timed(f):
    t = time.perf_counter(); f(); return (time.perf_counter() - t) * 1000
def row(metric, value, goal="", comparison=""):
    print(f"ROW\tqemu\t{metric}\t{value}\t{goal}\t{comparison}", flush=True)
def rss_kib(pid):
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmRSS"):
            return int(l.split()[1])

rss0 = rss_kib(agent_pid)
# The core's own cost of a durable command (two journal flushes: start and result),
# with no VM: destroy of a session that does not exist.
floor = statistics.median([timed(lambda: cmd("destroy", session_id="no-such-vm")) for _ in range(50)])
row("durable command floor, no VM (destroy of an unknown session, median of 50)", f"{floor:.2f} ms",
    "", "two journal flushes, not QEMU")

ids = [f"bench-{i}" for i in range(20)]
lat = [timed(lambda: (cmd("create", session_id=ids[0]), cmd("start", session_id=ids[0])))]
dirs = {}
def find_dirs():
    for d in glob.glob(f"{work}/a/cache/qemu/*/vm.json"):
        dirs[json.load(open(d))["id"]] = os.path.dirname(d)
find_dirs()
qmp_sock = os.path.join(dirs[ids[0]], "qmp-user.sock")

# QMP round trip through the agent: session list with one running VM is
# one QMP connection (greeting, qmp_capabilities, query-status) and is not
# written to the journal.
agent_qmp = [timed(lambda: cmd("list")) for _ in range(50)]
def direct_qmp():
    s = socket.socket(socket.AF_UNIX); s.connect(qmp_sock); f = s.makefile("rb")
    f.readline()
    s.sendall(b'{"execute":"qmp_capabilities","id":1}\n')
    while b'"id"' not in f.readline(): pass
    s.sendall(b'{"execute":"query-status","id":2}\n')
    while b'"id"' not in f.readline(): pass
    s.close()
direct = [timed(direct_qmp) for _ in range(50)]
a, d = statistics.median(agent_qmp), statistics.median(direct)
row("QMP round trip via the agent (session list, 1 running VM, median of 50)", f"{a:.2f} ms",
    "", f"direct Python QMP connect+query-status {d:.2f} ms: ratio {a/d:.2f}")
started = statistics.median([timed(lambda: cmd("start", session_id=ids[0])) for _ in range(50)])
row("session start of a running VM (durable, median of 50)", f"{started:.2f} ms", "",
    f"= floor {floor:.2f} ms + one QMP exchange")

# Exec through the real qemu-ga standing in for a guest on VM 0's qga.sock.
qga_sock = os.path.join(dirs[ids[0]], "qga.sock")
state = os.path.join(work, "qga"); os.makedirs(state)
ga = subprocess.Popen([qga_bin, "-m", "unix-listen", "-p", qga_sock, "-t", state, "-f", state + "/pid"],
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
open(os.path.join(work, "ga.pid"), "w").write(str(ga.pid))
def qga_ping():
    try:
        s = socket.socket(socket.AF_UNIX); s.settimeout(0.2); s.connect(qga_sock)
        s.sendall(b'{"execute":"guest-ping"}\n'); ok = s.recv(64).startswith(b'{"return"'); s.close(); return ok
    except OSError:
        return False
for _ in range(100):
    if qga_ping(): break
    time.sleep(0.05)
else:
    sys.exit("qemu-ga did not answer")
agent_exec = [timed(lambda: cmd("exec", session_id=ids[0], command=["true"])) for _ in range(50)]

def direct_exec():
    s = socket.socket(socket.AF_UNIX); s.connect(qga_sock); f = s.makefile("rb")
    s.sendall(b'\xff{"execute":"guest-sync-delimited","arguments":{"id":4242}}\n')
    buf = b""
    while b"\xff" not in buf: buf += s.recv(4096)
    line = buf.split(b"\xff", 1)[1]
    while b"\n" not in line: line += s.recv(4096)
    s.sendall(b'{"execute":"guest-exec","arguments":{"path":"true","input-data":"","capture-output":true}}\n')
    pid = json.loads(f.readline())["return"]["pid"]
    delay = 0.002
    while True:
        s.sendall(json.dumps({"execute": "guest-exec-status", "arguments": {"pid": pid}}).encode() + b"\n")
        if json.loads(f.readline())["return"]["exited"]: break
        time.sleep(delay); delay = min(delay * 2, 0.1)
    s.close()
direct = [timed(direct_exec) for _ in range(50)]
a, d = statistics.median(agent_exec), statistics.median(direct)
row("exec `true` via qemu-ga (median of 50)", f"{a:.2f} ms", "",
    f"direct Python guest-exec with the same polling {d:.2f} ms: ratio {a/d:.2f}")
ga.kill(); ga.wait()

# 19 more VMs, each created and started; the latency of both together.
lat += [timed(lambda i=i: (cmd("create", session_id=i), cmd("start", session_id=i))) for i in ids[1:]]
find_dirs()
row("create->running latency (median of 20)", f"{statistics.median(lat):.1f} ms",
    "", f"first {lat[0]:.1f} ms, max {max(lat):.1f} ms; each VM boots firmware under TCG")

# Memory with 20 VMs managed, after listings have touched every one.
for _ in range(5): cmd("list")
rss = rss_kib(agent_pid)
row("agent RSS with 20 VMs managed", f"{rss/1024:.2f} MiB", "",
    f"+{rss - rss0} KiB over the idle agent")
qemu_rss = []
for i in ids:
    pid = json.load(open(os.path.join(dirs[i], "vm.json")))["process"]["pid"]
    qemu_rss.append(rss_kib(pid))
row("QEMU RSS per VM (q35 -m 64 -S, TCG, running, no guest)", f"{statistics.median(qemu_rss)/1024:.1f} MiB", "", "for scale")
lat = [timed(lambda i=i: cmd("destroy", session_id=i)) for i in ids]
row("destroy of a running VM (median of 20)", f"{statistics.median(lat):.1f} ms", "", "quit over QMP")
PY

# With the test guest of tests/setup/guest.sh: boot to the first exec, and
# exec inside a real TCG guest.
guest=${VENDETTA_TEST_GUEST:-/var/cache/vendetta-test/guest}
if [ ! -s "$guest/vmlinuz" ]; then
    echo "qemu.bench.sh: no test guest in $guest; run tests/setup/guest.sh (make bench does, through deps.sh)" >&2
    exit 1
fi
stop_agent
start_agent "$work/g" "provider: qemu
providers: [qemu]
qemu:
  memory: 256m
  extra_args: [-accel, tcg, -kernel, $guest/vmlinuz, -initrd, $guest/initrd.img, -append, console=ttyS0]"
PYTHONPATH="$(dirname "$0")" python3 - "$AGENT_URL" "$AGENT_TOKEN" <<'PY'
import json, os, statistics, sys, time
from api import Agent
url, token = sys.argv[1:3]
cmd = Agent(url, token, "g").post
def row(metric, value, goal="", comparison=""):
    print(f"ROW\tqemu\t{metric}\t{value}\t{goal}\t{comparison}", flush=True)
cmd("create", session_id="guest")
t = time.perf_counter()
cmd("start", session_id="guest")
while cmd("exec", session_id="guest", command=["true"], timeout="2s")["status"] != "success":
    if time.perf_counter() - t > 120: sys.exit("the test guest did not answer within 120 s")
row("real guest: start to first exec (TCG, cloud kernel, initramfs)", f"{time.perf_counter() - t:.1f} s")
lat = []
for _ in range(20):
    t = time.perf_counter(); r = cmd("exec", session_id="guest", command=["true"])
    assert r["status"] == "success", r
    lat.append((time.perf_counter() - t) * 1000)
row("real guest: exec `true` round trip (median of 20)", f"{statistics.median(lat):.1f} ms", "", "TCG guest, virtio-serial")
t = time.perf_counter(); cmd("stop", session_id="guest", timeout="20s")
row("real guest: graceful stop (ACPI powerdown)", f"{(time.perf_counter() - t) * 1000:.0f} ms")
cmd("destroy", session_id="guest")
PY

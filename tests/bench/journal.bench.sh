#!/usr/bin/env bash
# The journal (issue 12): the fsync latency of the disk under cache_dir
# first, as the yardstick; then flushes per state-changing command at 1
# and 16 in flight and what a durable command costs over one flush. The
# same again with the journal on a deliberately slow disk: ext4 on a loop
# device whose backing file lives on slowfs.py, a FUSE pass-through whose
# fsync takes 10 ms longer (this kernel has no device-mapper for
# dm-delay). ext4 and the loop device keep their own behaviour (writes
# go on while a flush waits); only the device's cache flush is slow. The command is `session destroy` of a
# session that does not exist: journaled like any change, with next to
# no runtime work, so what it costs is the agent's durable floor. Each
# names its own session: commands of one session run one after another.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d /tmp/vbench-XXXX)
slow_fuse= slow_loop= slow_mnt=
cleanup() {
    stop_agent
    [ -n "$slow_mnt" ] && umount "$slow_mnt" 2>/dev/null
    [ -n "$slow_loop" ] && losetup -d "$slow_loop" 2>/dev/null
    [ -n "$slow_fuse" ] && fusermount -u "$slow_fuse" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
# QEMU alone: a destroy of an unknown session is a look into an empty
# directory. Room for the 202 run's queue.
CONFIG="provider: qemu
providers: [qemu]
workers: 16
queue_size: 1024"

# run_case LABEL: the agent is up; prints the rows for LABEL.
run_case() {
    local label=$1 journal=$2
    python3 - "$AGENT_URL" "$AGENT_TOKEN" "$label" "$journal" <<'PY'
import http.client, json, os, statistics, sys, threading, time, urllib.parse
url, token, label, journal = sys.argv[1:5]
u = urllib.parse.urlparse(url)
H = {"Authorization": "Bearer " + token, "Content-Type": "application/json"}

def fsync_ms(n=100):
    path = os.path.join(journal, "fsync-probe")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    took = []
    for i in range(n):
        os.pwrite(fd, b"x" * 512, i * 512)
        t = time.perf_counter()
        os.fdatasync(fd)
        took.append((time.perf_counter() - t) * 1000)
    os.close(fd)
    os.unlink(path)
    return statistics.median(took)

def flushes():
    c = http.client.HTTPConnection(u.hostname, u.port)
    c.request("GET", "/metrics", headers=H)
    text = c.getresponse().read().decode()
    for line in text.splitlines():
        if line.startswith("vendetta_journal_flushes_total "):
            return float(line.split()[1])
    raise SystemExit("no vendetta_journal_flushes_total in /metrics")

def run(prefix, n, path="/api/v1/commands"):
    c = http.client.HTTPConnection(u.hostname, u.port)
    took = []
    for i in range(n):
        body = json.dumps({"id": f"{prefix}-{i}", "type": "session", "action": "destroy",
                           "params": {"session_id": f"none-{prefix}-{i}"}})
        t = time.perf_counter()
        c.request("POST", path, body, H)
        r = c.getresponse(); r.read()
        took.append((time.perf_counter() - t) * 1000)
        assert r.status in (200, 202), (r.status, prefix)
    return took

def row(metric, value, goal="", comparison=""):
    print(f"ROW\tjournal\t{metric}{label}\t{value}\t{goal}\t{comparison}", flush=True)

stamp = str(int(time.time() * 1000))
fs = fsync_ms()
row("disk fdatasync under cache_dir, p50 (the yardstick)", f"{fs:.2f} ms")
run(f"warm-{stamp}", 20)
before = flushes()
took = run(f"one-{stamp}", 200)
per = (flushes() - before) / 200
p50 = statistics.median(took)
row("flushes per command, 1 in flight (sync request)", f"{per:.2f}", "<= 2")
row("durable command p50, 1 in flight", f"{p50:.2f} ms", "<= 1 flush + 1 ms",
    f"{p50 - fs:+.2f} ms over one flush; ratio {p50 / fs:.2f} flushes")
before = flushes()
run(f"async-{stamp}", 200, "/api/v1/commands?async=true")
time.sleep(0.5)
row("flushes per command, 1 in flight (202, then run)", f"{(flushes() - before) / 200:.2f}", "",
    "the 202 waits for the intake's own flush")
before = flushes()
n, threads = 50, 16
done = []
def worker(k):
    done.append(run(f"many-{stamp}-{k}", n))
t0 = time.perf_counter()
ts = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
for t in ts: t.start()
for t in ts: t.join()
wall = time.perf_counter() - t0
total = n * threads
row("flushes per command, 16 in flight", f"{(flushes() - before) / total:.2f}", "<= 0.5")
row("durable commands/s, 16 in flight", f"{total / wall:.0f}", "", f"one flush every {wall / max(flushes() - before, 1) * 1000:.2f} ms")
PY
}

start_agent "$work/fast" "$CONFIG"
run_case "" "$work/fast/cache/journal"
stop_agent

# The slow disk: only the journal lives on it.
mkdir -p "$work/slow/cache/journal" "$work/slow-src" "$work/slow-fuse"
chmod 700 "$work/slow/cache"
slow_fuse="$work/slow-fuse"
"$here/slowfs.py" "$work/slow-src" "$slow_fuse" 10 2>"$work/slowfs.log" &
for _ in $(seq 1 100); do mountpoint -q "$slow_fuse" && break; sleep 0.05; done
mountpoint -q "$slow_fuse" || { echo "slowfs did not mount:" >&2; cat "$work/slowfs.log" >&2; exit 1; }
truncate -s 256M "$slow_fuse/disk.img"
slow_loop=$(losetup -f --show "$slow_fuse/disk.img")
mkfs.ext4 -q "$slow_loop"
slow_mnt="$work/slow/cache/journal"
mount "$slow_loop" "$slow_mnt"
start_agent "$work/slow" "$CONFIG"
run_case " (slow disk)" "$slow_mnt"

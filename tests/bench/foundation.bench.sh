#!/usr/bin/env bash
# Foundation figures: binary size, idle RSS, RSS growth over 10,000
# commands, local API latency and throughput. Compared with the seed's
# claims (~50 MB baseline memory, <100 ms local command latency).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
work=$(mktemp -d /tmp/vbench-XXXX)
trap 'stop_agent; rm -rf "$work"' EXIT

size=$(stat -c %s "$VENDETTA_BIN")
row foundation "static binary size" "$(python3 -c "print(f'{$size/1048576:.2f} MiB')")" "<= 3 MiB" ""

start_agent "$work/a"
sleep 2
idle=$(rss_kib "$AGENT_PID")
row foundation "idle RSS after start" "$(python3 -c "print(f'{$idle/1024:.2f} MiB')")" "<= 6 MiB" "seed ~50 MB: ratio $(ratio "$idle/1024" 50)"

# 10,000 system status commands over one keep-alive connection.
python3 - "$AGENT_URL" "$AGENT_TOKEN" <<'PY'
import http.client, json, sys, urllib.parse
u = urllib.parse.urlparse(sys.argv[1])
c = http.client.HTTPConnection(u.hostname, u.port)
h = {"Authorization": "Bearer " + sys.argv[2], "Content-Type": "application/json"}
for i in range(10000):
    c.request("POST", "/api/v1/commands", json.dumps({"id": f"rss-{i}", "type": "system", "action": "status"}), h)
    r = c.getresponse(); r.read()
    assert r.status == 200, r.status
PY
after=$(rss_kib "$AGENT_PID")
row foundation "RSS growth after 10,000 system status" "$((after - idle)) KiB (now $((after / 1024)) MiB)" "< 1 MiB" ""

cat >"$work/post.lua" <<LUA
local counter = 0
local tid = 0
local threads = {}
function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end
function request()
  counter = counter + 1
  local body = '{"id":"w' .. tid .. '-' .. counter .. '-' .. math.random(1e9) .. '","type":"system","action":"status"}'
  return wrk.format("POST", "/api/v1/commands", {["Content-Type"]="application/json", ["Authorization"]="Bearer $AGENT_TOKEN"}, body)
end
function init(args)
  tid = wrk.thread:get("tid") or 0
  math.randomseed(os.time() + tid)
end
LUA
wrk_run() {
    local threads=$1 conns=$2
    wrk -t"$threads" -c"$conns" -d10s --latency -s "$work/post.lua" "$AGENT_URL/api/v1/commands" >"$work/wrk.txt" 2>&1 || true
    p50=$(awk '$1=="50%" {print $2}' "$work/wrk.txt")
    p99=$(awk '$1=="99%" {print $2}' "$work/wrk.txt")
    rps=$(awk '/Requests\/sec/ {print $2}' "$work/wrk.txt")
    non2xx=$(awk '/Non-2xx/ {print $NF}' "$work/wrk.txt")
}
to_ms() { python3 -c "
v='$1'
import re
m=re.match(r'([0-9.]+)(us|ms|s)', v)
n=float(m.group(1)); u=m.group(2)
print(n/1000 if u=='us' else n*1000 if u=='s' else n)"; }
wrk_run 1 1
p99ms=$(to_ms "$p99")
row foundation "system status p50 / p99, 1 client" "$p50 / $p99" "p99 <= 2 ms" "seed <100 ms: ratio $(ratio "$p99ms" 100)"
row foundation "system status req/s, 1 client" "$rps" "" "${non2xx:+non-2xx $non2xx}"
wrk_run 2 32
row foundation "system status p50 / p99, 32 clients" "$p50 / $p99" "" ""
row foundation "system status req/s, 32 clients (2 cores)" "$rps" "" "${non2xx:+non-2xx $non2xx}"
peak=$(awk '/^VmHWM/ {print $2}' "/proc/$AGENT_PID/status")
row foundation "peak RSS during the load" "$((peak / 1024)) MiB" "" ""

# /health on a fresh connection while 250 idle and 250 trickling
# connections hold more than the 256 connection slots.
python3 - "$AGENT_URL" <<'PY'
import socket, statistics, sys, threading, time, urllib.parse
u = urllib.parse.urlparse(sys.argv[1])
addr = (u.hostname, u.port)
stop = threading.Event()
idle = []
for _ in range(250):
    try:
        idle.append(socket.create_connection(addr))
    except OSError:
        pass
def trickle():
    try:
        s = socket.create_connection(addr)
        s.sendall(b"GET /health HTTP/1.1\r\nX-Slow: ")
        while not stop.is_set():
            s.sendall(b"a")
            time.sleep(0.2)
    except OSError:
        pass
threads = [threading.Thread(target=trickle, daemon=True) for _ in range(250)]
for t in threads:
    t.start()
time.sleep(1)
took = []
for _ in range(50):
    t = time.perf_counter()
    s = socket.create_connection(addr)
    s.settimeout(10)
    s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    line = s.recv(64)
    took.append((time.perf_counter() - t) * 1000)
    assert line.startswith(b"HTTP/1.1 200"), line
    s.close()
stop.set()
p50, worst = statistics.median(took), max(took)
print(f"ROW\tfoundation\t/health beside 500 idle and slow connections, p50 / max of 50\t{p50:.1f} ms / {worst:.1f} ms\t< 100 ms\t256 connection slots; the longest-waiting is closed to make room", flush=True)
PY

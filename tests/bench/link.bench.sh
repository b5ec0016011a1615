#!/usr/bin/env bash
# Coordination link figures (issue 3), against tests/bench/coordsim.py:
# commands/s through the link with and without batching, heartbeat size,
# bytes on the wire per command round trip, idle CPU, and a fleet of 200
# agents (memory, the server's idle load, re-registrations after a server
# restart), then the same arithmetic for 10,000 agents. Compared with the
# seed's claims (~1 KB heartbeat, ~10 KB per command round trip).
#
# About 3-4 minutes: one idle minute for the CPU figure, one for the
# fleet's idle load, about half a minute of re-registrations. Everything it
# starts is stopped on exit, also on failure or a signal.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d /tmp/vlink-XXXX)
FLEET=${LINK_FLEET:-200}
SIM_PID=
FLEET_PIDS=()

# Stops what this script started, by pid: agents get SIGTERM (a clean stop
# with an unregister), then SIGKILL after 20 s; then the server.
fleet_stop() {
    [ ${#FLEET_PIDS[@]} -gt 0 ] || return 0
    kill -TERM "${FLEET_PIDS[@]}" 2>/dev/null || true
    local deadline=$((SECONDS + 20)) alive
    while :; do
        alive=()
        for p in "${FLEET_PIDS[@]}"; do
            kill -0 "$p" 2>/dev/null && alive+=("$p")
        done
        [ ${#alive[@]} -eq 0 ] && break
        if [ $SECONDS -ge $deadline ]; then
            echo "${#alive[@]} fleet agents still up after SIGTERM + 20 s; killing them" >&2
            kill -KILL "${alive[@]}" 2>/dev/null || true
            break
        fi
        sleep 0.2
    done
    wait "${FLEET_PIDS[@]}" 2>/dev/null || true
    FLEET_PIDS=()
}
SLEEP_PID=
# pause S: a sleep that a signal interrupts (a foreground sleep would delay
# the cleanup until it ends).
pause() {
    sleep "$1" &
    SLEEP_PID=$!
    wait "$SLEEP_PID"
    SLEEP_PID=
}
cleanup() {
    [ -n "$SLEEP_PID" ] && kill "$SLEEP_PID" 2>/dev/null
    stop_agent || true
    fleet_stop || true
    if [ -n "$SIM_PID" ]; then
        kill "$SIM_PID" 2>/dev/null || true
        wait "$SIM_PID" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

# free_ports N: N distinct free loopback ports (all held until all are picked).
free_ports() {
    python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}

read -r SIM_PORT ADMIN_PORT < <(free_ports 2)
python3 "$here/coordsim.py" "$SIM_PORT" "$ADMIN_PORT" >/dev/null 2>"$work/sim.log" &
SIM_PID=$!
ADMIN=http://127.0.0.1:$ADMIN_PORT
sim_get() { curl -fsS --max-time 120 "$ADMIN/$1"; }
sim_post() {
    local body='{}'
    [ $# -ge 2 ] && body=$2
    curl -fsS --max-time 120 -X POST -H 'Content-Type: application/json' -d "$body" "$ADMIN/$1"
}
for _ in $(seq 1 100); do sim_get stats >/dev/null 2>&1 && break; sleep 0.05; done
sim_get stats >/dev/null || { echo "coordsim did not start:" >&2; cat "$work/sim.log" >&2; exit 1; }
# jq-like access without jq: json EXPR reads stdin as `d`.
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
wait_nodes() { # wait_nodes N SECONDS
    local deadline=$((SECONDS + $2))
    while [ "$(sim_get stats | json 'd["nodes"]')" -lt "$1" ]; do
        [ $SECONDS -lt $deadline ] || { echo "only $(sim_get stats | json 'd["nodes"]') of $1 nodes registered after $2 s" >&2; return 1; }
        sleep 0.2
    done
}

LINK_YAML="coordination_url: http://127.0.0.1:$SIM_PORT
heartbeat:
  interval: 30s
coordination:
  poll_wait: 30s"

# --- Commands per second through the link --------------------------------
start_agent "$work/tput" "$LINK_YAML"
wait_nodes 1 10
# throughput BATCH N: queues N system.status at once, waits for N results.
throughput() {
    local batch=$1 n=$2
    sim_post config "{\"batch\": $batch}" >/dev/null
    sim_post reset >/dev/null
    sim_post queue "{\"node\": \"*\", \"n\": $n, \"prefix\": \"b$batch-$RANDOM\"}" >/dev/null
    sim_get "wait_results?n=$n&timeout=90" >"$work/wait.json"
    sim_get stats >"$work/stats.json"
    python3 - "$work/wait.json" "$work/stats.json" "$n" "$batch" >"$work/tput-$batch.txt" <<'PY'
import json, sys
w, s, n, batch = json.load(open(sys.argv[1])), json.load(open(sys.argv[2])), int(sys.argv[3]), sys.argv[4]
if w["unique_results"] < n:
    sys.exit(f"batch {batch}: only {w['unique_results']} of {n} results arrived")
secs = w["last_result_at"] - w["queued_at"]
r = s["routes"]
z = {"requests": 0, "request_bytes": 0, "response_bytes": 0, "request_body_bytes": 0, "response_body_bytes": 0}
f, res = r.get("fetch 200", z), r.get("result 200", z)
fetched = r.get("fetched commands", {"requests": 0})["requests"]
# Per command: its share of the fetches (request + response) and its result
# (request + response), headers included. Redelivered copies count too.
fetch_share = (f["request_bytes"] + f["response_bytes"]) / n
result_rt = (res["request_bytes"] + res["response_bytes"]) / n
body = res["request_body_bytes"] / max(res["requests"], 1)
print(f"{n/secs:.0f} {secs:.2f} {fetch_share:.0f} {result_rt:.0f} {fetch_share + result_rt:.0f} {body:.0f} {f['requests']} {fetched} {w['redelivered']} {res['requests']}")
PY
    read -r TP_RATE TP_SECS TP_FETCH TP_RESULT TP_RT TP_BODY TP_FETCHES TP_FETCHED TP_REDELIVERED TP_RESULTS <"$work/tput-$batch.txt"
    echo "batch $batch: $n commands in $TP_SECS s = $TP_RATE/s; $TP_FETCHES fetches handed out $TP_FETCHED commands ($TP_REDELIVERED redelivered after 5 s without a result); $TP_RESULTS result posts; per command: fetch share $TP_FETCH B + result round trip $TP_RESULT B (result body $TP_BODY B)" >&2
}
throughput 10 200 # warm-up: connections, journal, page cache
throughput 1 2000
rate1=$TP_RATE rt1=$TP_RT fetch1=$TP_FETCH result1=$TP_RESULT body1=$TP_BODY
row link "commands/s end to end, 1 per fetch (system.status)" "$TP_RATE/s" "" "2000 commands in $TP_SECS s"
throughput 50 2000
rate50=$TP_RATE rt50=$TP_RT redelivered50=$TP_REDELIVERED
over=""
[ "$TP_REDELIVERED" -gt 0 ] && over="; $TP_REDELIVERED sent again (refused: queue full)"
row link "commands/s end to end, 50 per fetch" "$TP_RATE/s" "" "vs 1 per fetch: ratio $(ratio "$rate50" "$rate1")$over"
grep -h "queue full" "$work/tput/agent.log" | head -2 >&2 || true
echo "queue-full refusals in the agent log: $(grep -c 'queue full' "$work/tput/agent.log" || true)" >&2

row link "bytes per command round trip, 1 per fetch" "$rt1 B" "<= 2 KB" "seed ~10 KB: ratio $(ratio "$rt1" 10240)"
row link "bytes per command round trip, 50 per fetch" "$rt50 B" "<= 2 KB" "seed ~10 KB: ratio $(ratio "$rt50" 10240)"
echo "round trip, 1 per fetch: fetch request + response $fetch1 B, result request + response $result1 B, of which the result JSON is $body1 B (HTTP bytes; TCP/IP headers not counted)" >&2
sim_get stats | python3 -c '
import json, sys
s = json.load(sys.stdin)["samples"]["result"]
print(s["request_head"] + s["body"][:600] + "…")
r = json.loads(s["body"])
size = lambda v: len(json.dumps(v, separators=(",", ":")))
print("result JSON by field (bytes):", {k: size(v) for k, v in r.items()})' >&2
stop_agent

# Durable commands through the link, 16 per fetch: each is journaled
# (intake, start, result, acknowledgement). QEMU alone: a destroy of an
# unknown session is a look into an empty directory.
regs=$(sim_get stats | json 'len(d["registrations"])')
start_agent "$work/durable" "$LINK_YAML
provider: qemu
providers: [qemu]
workers: 16"
node=$(cat "$work/durable/cache/node_id")
for _ in $(seq 1 100); do
    [ "$(sim_get stats | json 'len(d["registrations"])')" -gt "$regs" ] && break
    sleep 0.1
done
durable() {
    local n=$1
    sim_post config '{"batch": 16}' >/dev/null
    sim_post reset >/dev/null
    flushes0=$(curl -fs -H "Authorization: Bearer $AGENT_TOKEN" "$AGENT_URL/metrics" | awk '/^vendetta_journal_flushes_total / {print $2}')
    sim_post queue "{\"node\": \"$node\", \"n\": $n, \"prefix\": \"d$RANDOM\", \"durable\": true}" >/dev/null
    sim_get "wait_results?n=$n&timeout=90" >"$work/wait.json"
    flushes1=$(curl -fs -H "Authorization: Bearer $AGENT_TOKEN" "$AGENT_URL/metrics" | awk '/^vendetta_journal_flushes_total / {print $2}')
    python3 - "$work/wait.json" "$n" "$flushes0" "$flushes1" <<'PY'
import json, sys
w, n, f0, f1 = json.load(open(sys.argv[1])), int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
if w["unique_results"] < n:
    sys.exit(f"only {w['unique_results']} of {n} durable results arrived")
secs = w["last_result_at"] - w["queued_at"]
print(f"{n/secs:.0f} {(f1 - f0) / n:.2f} {secs:.2f}")
PY
}
durable 100 >/dev/null # warm-up
read -r drate dflush dsecs < <(durable 1000)
row link "durable commands/s end to end, 16 per fetch (session destroy)" "$drate/s" "" "1000 in $dsecs s; $dflush journal flushes per command"
stop_agent
sim_post config '{"batch": 10}' >/dev/null

# --- Idle CPU and the heartbeat ------------------------------------------
sim_post reset >/dev/null
start_agent "$work/idle" "$LINK_YAML"
wait_nodes 1 10
pause 3 # let start-up work (first monitor pass, first poll) settle
tick=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$AGENT_PID/stat"; }
sched_ns() { cat /proc/"$AGENT_PID"/task/*/schedstat | awk '{s += $1} END {print s}'; }
per_thread() { for t in /proc/"$AGENT_PID"/task/*; do echo "${t##*/} $(cat "$t/comm") $(awk '{print $1}' "$t/schedstat")"; done; }
c0=$(cpu) n0=$(sched_ns) t0=$(date +%s.%N)
per_thread >"$work/threads0"
pause 60
c1=$(cpu) n1=$(sched_ns) t1=$(date +%s.%N)
per_thread >"$work/threads1"
echo "idle CPU by thread over the minute (ms): $(awk 'NR == FNR {a[$1] = $3; next} {d = ($3 - a[$1]) / 1e6; if (d >= 0.05) printf "%s %.1f; ", $2, d}' "$work/threads0" "$work/threads1")" >&2
# The link's own threads, apart from the API, monitor and workers.
link_ns=$(awk 'NR == FNR {a[$1] = $3; next} $2 ~ /^(poller|heartbeat|reporter)$/ {s += $3 - a[$1]} END {print s + 0}' "$work/threads0" "$work/threads1")
read -r idle_pct idle_sched_pct link_pct < <(python3 -c "
w = $t1 - $t0
print(f'{($c1 - $c0) / $tick / w * 100:.3f} {($n1 - $n0) / 1e9 / w * 100:.4f} {$link_ns / 1e9 / w * 100:.4f}')")
sim_get stats >"$work/idle.json"
python3 - "$work/idle.json" >&2 <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print("requests while idle (whole run of the idle agent):",
      {k: v["requests"] for k, v in d["routes"].items()})
PY
row link "idle CPU, 60 s, 30 s heartbeat" "$idle_pct% of one core" "< 0.1%" "utime+stime $((c1 - c0)) ticks of 1/$tick s; all threads' schedstat: $idle_sched_pct%, of which poller + heartbeat + reporter $link_pct%"

if ! python3 -c 'import json,sys; sys.exit("heartbeat" not in json.load(open(sys.argv[1]))["samples"])' "$work/idle.json"; then
    echo "no heartbeat arrived in the idle minute" >&2
    exit 1
fi
read -r hb_body hb_req hb_resp < <(json 'd["samples"]["heartbeat"]["body_bytes"], d["samples"]["heartbeat"]["request_bytes"], d["samples"]["heartbeat"]["response_bytes"]' <"$work/idle.json")
row link "heartbeat JSON body" "$hb_body B" "<= 300 B" "seed ~1 KB: ratio $(ratio "$hb_body" 1024)"
row link "heartbeat HTTP request (line + headers + body)" "$hb_req B" "" "seed ~1 KB: ratio $(ratio "$hb_req" 1024); answer $hb_resp B"
json 'd["samples"]["heartbeat"]["request_head"] + d["samples"]["heartbeat"]["body"]' <"$work/idle.json" >&2
stop_agent

# --- Fleet of $FLEET agents ----------------------------------------------
sim_post reset >/dev/null
read -r -a ports < <(free_ports "$FLEET")
echo "starting $FLEET agents" >&2
for i in $(seq 0 $((FLEET - 1))); do
    d=$work/fleet/$i
    mkdir -p "$d"
    cat >"$d/agent.yaml" <<YAML
listen: 127.0.0.1:${ports[$i]}
cache_dir: $d/cache
api_token: bench-token-0123456789abcdef-0123456789
log_level: warn
$LINK_YAML
YAML
    chmod 600 "$d/agent.yaml"
    "$VENDETTA_BIN" agent start --config "$d/agent.yaml" >/dev/null 2>"$d/agent.log" &
    FLEET_PIDS+=($!)
done
wait_nodes "$FLEET" 120
dead=0
for p in "${FLEET_PIDS[@]}"; do kill -0 "$p" 2>/dev/null || dead=$((dead + 1)); done
[ "$dead" -eq 0 ] || { echo "$dead fleet agents died" >&2; exit 1; }
ids=$(cat "$work"/fleet/*/cache/node_id | sort -u | wc -l)
echo "all $FLEET registered, $ids distinct node ids" >&2

pause 5
sim_get stats >"$work/idle0.json"
pause 60
sim_get stats >"$work/idle1.json"
rss=0 pss=0
for p in "${FLEET_PIDS[@]}"; do
    rss=$((rss + $(awk '/^VmRSS/ {print $2}' "/proc/$p/status")))
    pss=$((pss + $(awk '/^Pss:/ {print $2}' "/proc/$p/smaps_rollup")))
done
sim_get "events?since=$(json 'd["now"]' <"$work/idle0.json")" >"$work/idle-events.json"
python3 - "$work/idle0.json" "$work/idle1.json" "$work/idle-events.json" "$FLEET" >"$work/fleet-idle.txt" <<'PY'
import json, sys
from collections import Counter
a, b, ev = (json.load(open(p)) for p in sys.argv[1:4])
n = int(sys.argv[4])
w = b["now"] - a["now"]
ev = [e for e in ev if e[0] <= b["now"]]
by = Counter(f"{r} {s}" for _, r, s in ev)
def tot(d):
    return sum(v["request_bytes"] + v["response_bytes"] for v in d["routes"].values())
bytes_s = (tot(b) - tot(a)) / w
accepts = len([t for t in b["accepts"] if t > a["now"]])
# Each agent opens its second connection at its first heartbeat (the poll
# holds the first); after 35 s every agent has had one: steady state.
late = len([t for t in b["accepts"] if t > a["now"] + 35])
print(f"{len(ev)/w:.2f} {bytes_s:.0f} {late/(b['now'] - a['now'] - 35):.3f} {b['open_connections']} {w:.1f}")
print(f"idle window {w:.1f} s: {dict(by)}; new connections {accepts} ({late} in its last {w - 35:.0f} s); open connections {b['open_connections']}", file=sys.stderr)
PY
read -r idle_rps idle_bps idle_cps open_conns idle_w <"$work/fleet-idle.txt"
row link "fleet of $FLEET: total RSS" "$((rss / 1024)) MiB ($((rss / FLEET)) KiB each)" "" "PSS (shared pages split): $((pss / 1024)) MiB, $((pss / FLEET)) KiB each"
expect=$(python3 -c "print(f'{$FLEET * 2 / 30:.1f}')")
row link "fleet of $FLEET idle: server requests/s" "$idle_rps/s" "" "expected $expect/s (a heartbeat and a poll per 30 s each); $idle_bps B/s; $open_conns connections open, $idle_cps new/s once warm"

# A server restart that forgets every node, down for 1 s.
cut=$(sim_get stats | json 'd["now"]')
up=$(sim_post restart '{"down": 1}' | json 'd["listening_at"]')
deadline=$((SECONDS + 75))
while :; do
    back=$(sim_get stats | json "len([r for r in d['registrations'] if r[0] > $cut])")
    [ "$back" -ge "$FLEET" ] && break
    [ $SECONDS -lt $deadline ] || { echo "only $back of $FLEET re-registered after 75 s" >&2; break; }
    sleep 0.5
done
sim_get stats >"$work/after.json"
sim_get "events?since=$cut" >"$work/after-events.json"
python3 - "$work/after.json" "$work/after-events.json" "$cut" "$up" "$FLEET" >"$work/herd.txt" <<'PY'
import json, math, sys
from collections import Counter
d, ev = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
cut, up, n = float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
regs = [t for t, _ in d["registrations"] if t > cut]
ids = {i for t, i in d["registrations"] if t > cut}
sec = lambda t: math.floor(t - up)
hist = Counter(sec(t) for t in regs)
span = max(hist) + 1 if hist else 0
out = sys.stderr
print(f"server down at {cut - up:+.2f} s, listening again at 0 s; re-registrations per second:", file=out)
for s in range(min(hist, default=0), span):
    print(f"  {s:3d} s {hist.get(s, 0):4d} {'#' * hist.get(s, 0)}", file=out)
reqs = Counter((sec(t), r) for t, r, _ in ev)
acc = Counter(sec(t) for t in d["accepts"] if t > cut)
print("all requests per second after the restart (first 6 s): route counts, new connections", file=out)
for s in range(0, 6):
    row = {r: c for (x, r), c in reqs.items() if x == s}
    print(f"  {s:3d} s {row} connections {acc.get(s, 0)}", file=out)
peak = max(hist.values()) if hist else 0
first, last = (min(regs) - up, max(regs) - up) if regs else (0, 0)
fetch404 = sum(1 for t, r, s in ev if r == "fetch" and s == 404)
burst = max((c for (x, r), c in reqs.items() if r == "fetch"), default=0)
print(f"{peak} {len(ids)} {first:.1f} {last:.1f} {max(acc.values()) if acc else 0} {fetch404} {burst}")
PY
read -r herd_peak herd_n herd_first herd_last acc_peak fetch404 fetch_burst <"$work/herd.txt"
quarter=$((FLEET / 4))
verdict=$([ "$herd_peak" -le "$quarter" ] && echo ok || echo "FAILS: more than a quarter")
row link "fleet of $FLEET: re-registrations after a restart, busiest second" "$herd_peak ($(python3 -c "print(f'{$herd_peak/$FLEET*100:.1f}')")% of the fleet)" "<= $quarter (a quarter)" "$verdict; $herd_n of $FLEET back between ${herd_first} s and ${herd_last} s"
echo "reconnects after the restart: busiest second $acc_peak new connections, $fetch_burst fetches; $fetch404 fetches answered 404 (forgotten node)" >&2

# --- The same for 10,000 agents -------------------------------------------
python3 - "$FLEET" "$idle_rps" "$idle_bps" "$open_conns" "$herd_peak" "$herd_first" "$herd_last" "$acc_peak" "$rss" "$pss" >&2 <<'PY'
import math, sys
n, rps, bps, conns, peak, first, last, acc, rss, pss = map(float, sys.argv[1:])
k = 10000 / n
mean = 10000 / 30
busiest = mean + 2.5 * math.sqrt(mean)
print(f"""
arithmetic for 10,000 agents (measured on {n:.0f}, scaled by {k:.0f}):
  idle: {rps:.1f} req/s x {k:.0f} = {rps*k:.0f} req/s (theory: 10,000 x (1 heartbeat + 1 poll) / 30 s = 667 req/s)
        {bps:.0f} B/s x {k:.0f} = {bps*k/1e3:.0f} kB/s = {bps*k*8/1e6:.2f} Mbit/s of HTTP (TLS and TCP/IP add more)
        {conns:.0f} open connections x {k:.0f} = {conns*k:.0f} connections held by the server
  after a restart that forgets the nodes: registrations spread over the heartbeat interval:
        10,000 / 30 s = {mean:.0f} registrations/s on average, the busiest second about {busiest:.0f}
        (uniform spread: mean + 2.5 sigma); here the busiest second had {peak:.0f} of {n:.0f} ({peak/n*100:.1f}%,
        {peak*k:.0f}/s if scaled linearly, an overestimate from a small sample), all back {first:.0f}-{last:.0f} s after the restart;
        but the reconnects come first: every agent's poll retries 1-2 s after the cut (backoff from 1 s),
        here {acc:.0f} new connections in one second, i.e. {acc*k:.0f} connections (TLS handshakes) in a second at 10,000
  memory: {rss/1024/n:.1f} MiB RSS per agent ({pss/1024/n:.1f} MiB PSS on one host; one agent per host is the real case)
""")
PY
fleet_stop

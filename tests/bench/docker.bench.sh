#!/usr/bin/env bash
# Docker provider figures, side by side with the docker CLI in one run:
# exec round trip (the vendetta CLI, and a raw HTTP POST to the local API)
# against `docker exec`, median of 50 each, as a ratio (goal: agent <= 0.5x
# the docker CLI); create+start of a session against `docker run -d`; and
# with 100 running sessions the agent's RSS and `session list` latency
# (goal < 20 ms, and the CLI's <= 1.5x the engine's own label-filtered
# `GET /containers/json` through curl). A row also shows the engine's own floor for an exec (exec
# create + start + inspect on the socket, no client at all): no client can
# beat it.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
image=vendetta-test/busybox:latest
if ! docker image inspect "$image" >/dev/null 2>&1; then
    echo "docker bench: no engine or no $image (run make images); skipped" >&2
    exit 0
fi
work=$(mktemp -d /tmp/vbench-docker-XXXX)
prefix="vb$$"
cleanup() {
    stop_agent
    # Every container this run made carries the prefix in its name.
    docker ps -aq --filter "name=^/vendetta-$prefix-" --filter "name=^/$prefix-" |
        xargs -r docker rm -f >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

start_agent "$work/a" "docker:
  image: $image
workers: 8
queue_size: 512"
export VENDETTA_AGENT_URL=$AGENT_URL VENDETTA_API_TOKEN=$AGENT_TOKEN

python3 - "$AGENT_URL" "$AGENT_TOKEN" "$VENDETTA_BIN" "$prefix" "$image" "$AGENT_PID" <<'PY'
import http.client, json, os, socket, statistics, subprocess, sys, time, urllib.parse
from concurrent.futures import ThreadPoolExecutor

url, token, binary, prefix, image, agent_pid = sys.argv[1:]
u = urllib.parse.urlparse(url)
H = {"Authorization": "Bearer " + token, "Content-Type": "application/json"}
counter = [0]

def row(metric, value, goal="", comparison=""):
    print("ROW\tdocker\t%s\t%s\t%s\t%s" % (metric, value, goal, comparison), flush=True)

def ms(s):
    return "%.1f ms" % (s * 1000)

class Api:
    """One POST per command, on a fresh connection (as the CLI does) unless
    keep_alive (both are measured: a kept-alive connection once waited
    ~40 ms for a delayed ACK, before the API set TCP_NODELAY)."""
    def __init__(self, keep_alive=False):
        self.keep_alive = keep_alive
        self.c = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
    def cmd(self, typ, action, params=None):
        counter[0] += 1
        body = {"id": "%s-%d-%d" % (prefix, os.getpid(), counter[0]), "type": typ, "action": action}
        if params is not None:
            body["params"] = params
        if not self.keep_alive:
            self.c.close()
            self.c = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
        self.c.request("POST", "/api/v1/commands", json.dumps(body), H)
        r = self.c.getresponse()
        data = json.loads(r.read())
        if data.get("status") != "success":
            raise SystemExit("%s.%s failed: %s" % (typ, action, data.get("error")))
        return data

def timed(fn, n):
    return interleaved([fn], n)[0]

def interleaved(fns, n):
    """Medians of n runs of each, taken in turn so that load from anything
    else on the machine falls on all of them alike."""
    out = [[] for _ in fns]
    for _ in range(n):
        for k, fn in enumerate(fns):
            t = time.perf_counter()
            fn()
            out[k].append(time.perf_counter() - t)
    return [statistics.median(o) for o in out]

def run(*argv):
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

def engine(method, path, body=None, upgrade=False):
    s = socket.socket(socket.AF_UNIX)
    s.connect("/var/run/docker.sock")
    b = json.dumps(body).encode() if body is not None else b""
    head = "%s %s HTTP/1.1\r\nHost: localhost\r\n" % (method, path)
    head += "Connection: Upgrade\r\nUpgrade: tcp\r\n" if upgrade else "Connection: close\r\n"
    head += "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(b)
    s.sendall(head.encode() + b)
    data = b""
    while True:
        d = s.recv(65536)
        if not d:
            break
        data += d
    s.close()
    return data

api = Api()
s1 = prefix + "-s1"
api.cmd("session", "create", {"session_id": s1})
api.cmd("session", "start", {"session_id": s1})
container = "vendetta-" + s1

# Warm up every path once, then interleave nothing: 50 runs each.
run(binary, "session", "exec", s1, "--", "true")
run("docker", "exec", container, "true")
api.cmd("session", "exec", {"session_id": s1, "command": ["true"]})

def floor():
    r = engine("POST", "/containers/%s/exec" % container, {"AttachStdout": True, "AttachStderr": True, "Cmd": ["true"]})
    eid = json.loads(r.split(b"\r\n\r\n", 1)[1])["Id"]
    engine("POST", "/exec/%s/start" % eid, {"Detach": False, "Tty": False}, upgrade=True)
    engine("GET", "/exec/%s/json" % eid)

n = 50
docker_exec, cli_exec, raw_exec, floor_exec = interleaved([
    lambda: run("docker", "exec", container, "true"),
    lambda: run(binary, "session", "exec", s1, "--", "true"),
    lambda: api.cmd("session", "exec", {"session_id": s1, "command": ["true"]}),
    floor,
], n)
row("docker exec s1 true (docker CLI), median of 50", ms(docker_exec))
row("session exec s1 -- true (vendetta CLI), median of 50", ms(cli_exec), "<= 0.5x docker CLI",
    "ratio %.2f" % (cli_exec / docker_exec))
row("exec true, raw HTTP POST to the local API, median of 50", ms(raw_exec), "<= 0.5x docker CLI",
    "ratio %.2f" % (raw_exec / docker_exec))
row("engine floor: exec create+start+inspect on the socket, median of 50", ms(floor_exec), "",
    "ratio %.2f of docker CLI; agent overhead %.1f ms" % (floor_exec / docker_exec, (raw_exec - floor_exec) * 1000))

# create+start: the agent (two API commands) against `docker run -d`.
m = 10
i = [0]
def agent_create():
    i[0] += 1
    sid = "%s-c%d" % (prefix, i[0])
    api.cmd("session", "create", {"session_id": sid})
    api.cmd("session", "start", {"session_id": sid})
j = [0]
def docker_run():
    j[0] += 1
    run("docker", "run", "-d", "--init", "--name", "%s-r%d" % (prefix, j[0]), image, "sleep", "infinity")
e = [0]
def engine_create():
    e[0] += 1
    r = engine("POST", "/containers/create?name=%s-e%d" % (prefix, e[0]),
               {"Image": image, "Cmd": ["sleep", "infinity"], "HostConfig": {"Init": True}})
    cid = json.loads(r.split(b"\r\n\r\n", 1)[1])["Id"]
    engine("POST", "/containers/%s/start" % cid)
docker_create, agent_cs, floor_cs = interleaved([docker_run, agent_create, engine_create], m)
row("create+start a session (API), median of 10", ms(agent_cs), "", "docker run -d: %s, ratio %.2f" % (ms(docker_create), agent_cs / docker_create))
row("engine floor: create+start on the socket, median of 10", ms(floor_cs), "", "agent overhead %.1f ms" % ((agent_cs - floor_cs) * 1000))
for k in range(1, j[0] + 1):
    run("docker", "rm", "-f", "%s-r%d" % (prefix, k))
for k in range(1, e[0] + 1):
    run("docker", "rm", "-f", "%s-e%d" % (prefix, k))
for k in range(1, i[0] + 1):
    api.cmd("session", "destroy", {"session_id": "%s-c%d" % (prefix, k)})

# 100 running sessions (s1 and 99 more), created 4 at a time.
def make(k):
    a = Api()
    sid = "%s-m%d" % (prefix, k)
    a.cmd("session", "create", {"session_id": sid})
    a.cmd("session", "start", {"session_id": sid})
t = time.perf_counter()
with ThreadPoolExecutor(4) as ex:
    list(ex.map(make, range(99)))
row("create+start 99 sessions, 4 at a time", "%.1f s" % (time.perf_counter() - t))
listed = api.cmd("session", "list", {"provider": "docker"})["data"]
running = sum(1 for s in listed if s["status"] == "running")
assert running >= 100, running
rss = int([l for l in open("/proc/%s/status" % agent_pid) if l.startswith("VmRSS")][0].split()[1])
row("agent RSS with %d running sessions" % running, "%.1f MiB" % (rss / 1024))
kept = Api(keep_alive=True)
filters = urllib.parse.quote(json.dumps({"label": ["vendetta.managed=true"]}))
list_url = "http://localhost/containers/json?all=1&filters=" + filters
list_api, list_kept, list_cli, docker_ps, list_floor, list_curl = interleaved([
    lambda: api.cmd("session", "list", {"provider": "docker"}),
    lambda: kept.cmd("session", "list", {"provider": "docker"}),
    lambda: run(binary, "session", "list"),
    lambda: run("docker", "ps", "-a", "--filter", "label=vendetta.managed=true"),
    lambda: engine("GET", "/containers/json?all=1&filters=" + filters),
    # The engine's own label-filtered listing through a client process,
    # as the vendetta CLI is one: the yardstick for `session list`, which
    # answers from the table the engine's events keep.
    lambda: run("curl", "-sf", "--unix-socket", "/var/run/docker.sock", list_url),
], n)
row("engine: label-filtered GET /containers/json, curl --unix-socket, 100 sessions, median of 50", ms(list_curl))
row("session list, 100 sessions, raw HTTP POST, median of 50", ms(list_api), "< 20 ms",
    "docker ps -a --filter: %s; engine floor (label-filtered list on the socket): %s, ratio %.2f"
    % (ms(docker_ps), ms(list_floor), list_api / list_floor))
row("session list, 100 sessions, vendetta CLI, median of 50", ms(list_cli), "<= 1.5x engine list (curl)",
    "ratio %.2f of curl's %s" % (list_cli / list_curl, ms(list_curl)))
row("session list, 100 sessions, kept-alive HTTP connection, median of 50", ms(list_kept), "< 20 ms",
    "fresh connection: %s" % ms(list_api))
with ThreadPoolExecutor(4) as ex:
    list(ex.map(lambda k: Api().cmd("session", "destroy", {"session_id": "%s-m%d" % (prefix, k)}), range(99)))
api.cmd("session", "destroy", {"session_id": s1})
PY

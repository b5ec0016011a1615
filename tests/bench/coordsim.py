#!/usr/bin/env python3
"""A coordination server for the link benchmarks (not for the tests).

It speaks section 2 of the wire contract like tests/it/util/coord.rs does
(register, heartbeat, PUT fallback, long-poll fetch with batching, result,
unregister) over HTTP/1.1 keep-alive, one thread per connection, and counts
what crosses the wire: requests and exact bytes (request line + headers +
body, status line + headers + body) per route and status, every request's
time, every registration's time, and accepted connections.

It is steered over a second, admin port (JSON over HTTP):

  GET  /stats                 counters, nodes, registrations, samples
  GET  /events?since=T        [[t, route, status], ...] with t > T
  POST /config  {"batch": 50, "max_hold": 5, "redeliver_after": 5}
  POST /queue   {"node": ID or "*", "n": N, "prefix": "b1"}
  GET  /wait_results?n=N&timeout=S
                              blocks until N distinct results since /reset
  POST /reset                 zero counters, events, results
  POST /restart {"down": S}   cut every connection, stop listening, forget
                              the nodes, listen again after S seconds

Times are time.monotonic() seconds of this process; /stats gives "now".
Usage: coordsim.py PORT ADMIN_PORT
"""

import json
import socket
import sys
import threading
import time
from collections import defaultdict, deque
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

threading.stack_size(512 * 1024)


class State:
    def __init__(self):
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.nodes = {}
        self.queued = defaultdict(deque)
        self.batch = 10
        self.max_hold = None
        # Like a real server (delivery is at-least-once), commands handed
        # out and not answered are sent again after this many seconds.
        self.redeliver_after = 5.0
        self.inflight = {}
        self.generation = 0
        self.conns = set()
        self.reset()

    def reset(self):
        # route+status -> [requests, request bytes, request body bytes,
        #                  response bytes, response body bytes]
        self.routes = defaultdict(lambda: [0, 0, 0, 0, 0])
        self.events = []
        self.registrations = []
        self.accepts = []
        self.results = 0
        self.result_ids = set()
        self.last_result_at = None
        self.queued_at = None
        self.redelivered = 0
        self.samples = {}


S = State()


def route_of(method, path):
    p = path.strip("/").split("/")
    if p[:2] != ["api", "v1"]:
        return "other"
    p = p[2:]
    if method == "POST" and p == ["nodes"]:
        return "register"
    if method == "POST" and len(p) == 3 and p[0] == "nodes" and p[2] == "heartbeat":
        return "heartbeat"
    if method == "PUT" and len(p) == 2 and p[0] == "nodes":
        return "put"
    if method == "GET" and len(p) == 3 and p[0] == "nodes" and p[2] == "commands":
        return "fetch"
    if method == "POST" and len(p) == 3 and p[0] == "commands" and p[2] == "result":
        return "result"
    if method == "DELETE" and len(p) == 2 and p[0] == "nodes":
        return "unregister"
    return "other"


CUT = object()


def handle(method, target, body, generation):
    """Returns (status, body bytes) or CUT."""
    path, _, query = target.partition("?")
    route = route_of(method, path)
    parts = path.strip("/").split("/")
    node = parts[3] if len(parts) > 3 else ""
    try:
        doc = json.loads(body) if body else None
    except ValueError:
        doc = None
    with S.lock:
        if route == "register":
            nid = doc.get("id", "") if isinstance(doc, dict) else ""
            S.nodes[nid] = True
            S.registrations.append([time.monotonic(), nid])
            return route, 201, {"id": nid, "status": "registered"}
        if route in ("heartbeat", "put"):
            if node not in S.nodes:
                return route, 404, {"error": "unknown node"}
            return route, 200, {"ok": True}
        if route == "unregister":
            S.nodes.pop(node, None)
            return route, 204, None
        if route == "result":
            S.results += 1
            if isinstance(doc, dict):
                S.result_ids.add(doc.get("id"))
                S.inflight.pop(doc.get("id"), None)
            S.last_result_at = time.monotonic()
            S.cond.notify_all()
            return route, 200, {"ok": True}
        if route == "fetch":
            if node not in S.nodes:
                return route, 404, {"error": "unknown node"}
            wait = int(parse_qs(query).get("wait", ["0"])[0] or 0)
            hold = wait if S.max_hold is None else min(wait, S.max_hold)
            deadline = time.monotonic() + hold
            while True:
                if S.generation != generation:
                    return route, CUT, None
                now = time.monotonic()
                cmds, waiting = [], False
                for cid, (n, cmd, sent) in S.inflight.items():
                    if n == node and len(cmds) < S.batch:
                        waiting = True
                        if now - sent >= S.redeliver_after:
                            cmds.append(cmd)
                S.redelivered += len(cmds)
                q = S.queued.get(node)
                while q and len(cmds) < S.batch:
                    cmds.append(q.popleft())
                if cmds:
                    for c in cmds:
                        S.inflight[c["id"]] = (node, c, now)
                    return route, 200, {"commands": cmds}
                left = deadline - now
                if left <= 0:
                    return route, 204, None
                # Wake each second while commands await redelivery.
                S.cond.wait(min(left, 1.0) if waiting else left)
        return route, 404, {"error": "no route"}


def serve_conn(conn, generation):
    f = conn.makefile("rb")
    try:
        while True:
            line = f.readline(65536)
            if not line:
                return
            head = len(line)
            head_lines = [line]
            try:
                method, target, _ = line.decode("latin-1").split(" ", 2)
            except ValueError:
                return
            length, close = 0, False
            while True:
                h = f.readline(65536)
                if not h:
                    return
                head += len(h)
                head_lines.append(h)
                if h in (b"\r\n", b"\n"):
                    break
                k, _, v = h.decode("latin-1").partition(":")
                k = k.strip().lower()
                if k == "content-length":
                    length = int(v.strip())
                elif k == "connection" and v.strip().lower() == "close":
                    close = True
            body = f.read(length) if length else b""
            if len(body) != length:
                return
            route, status, answer = handle(method, target, body, generation)
            if status is CUT:
                return
            if route == "fetch" and status == 200:
                # A batch's share is counted per command by the bench.
                ncmds = len(answer["commands"])
            else:
                ncmds = 0
            out = json.dumps(answer, separators=(",", ":")).encode() if answer is not None else b""
            # What Go's net/http would send: Date, Content-Type, Content-Length.
            hdr = f"HTTP/1.1 {status} {REASON.get(status, 'X')}\r\nDate: {formatdate(usegmt=True)}\r\n"
            if status != 204:
                hdr += f"Content-Type: application/json\r\nContent-Length: {len(out)}\r\n"
            if close:
                hdr += "Connection: close\r\n"
            raw = hdr.encode() + b"\r\n" + out
            conn.sendall(raw)
            now = time.monotonic()
            with S.lock:
                key = f"{route} {status}"
                c = S.routes[key]
                c[0] += 1
                c[1] += head + len(body)
                c[2] += len(body)
                c[3] += len(raw)
                c[4] += len(out)
                if ncmds:
                    S.routes["fetched commands"][0] += ncmds
                S.events.append((now, route, status))
                if route in ("heartbeat", "result", "fetch", "register") and status in (200, 201):
                    if route not in S.samples or route == "heartbeat":
                        S.samples[route] = {
                            "request_bytes": head + len(body),
                            "request_head": b"".join(head_lines).decode("latin-1"),
                            "response_head": hdr,
                            "body": body.decode("utf-8", "replace")[:4000],
                            "body_bytes": len(body),
                            "response_bytes": len(raw),
                            "commands": ncmds,
                        }
            if close:
                return
    except OSError:
        return
    finally:
        with S.lock:
            S.conns.discard(conn)
        try:
            conn.close()
        except OSError:
            pass


REASON = {200: "OK", 201: "Created", 204: "No Content", 404: "Not Found"}


class Listener:
    def __init__(self, port):
        self.port = port
        self.sock = None
        self.on = False

    def start(self):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(4096)
        s.settimeout(0.2)
        self.sock, self.on = s, True
        self.thread = threading.Thread(target=self.loop, args=(s,), daemon=True)
        self.thread.start()

    def loop(self, s):
        while self.on:
            try:
                conn, _ = s.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            conn.settimeout(None)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with S.lock:
                S.conns.add(conn)
                S.accepts.append(time.monotonic())
                gen = S.generation
            threading.Thread(target=serve_conn, args=(conn, gen), daemon=True).start()
        s.close()

    def stop(self):
        # The accept loop sees the flag within its 0.2 s timeout and closes.
        self.on = False
        self.thread.join()
        with S.lock:
            S.generation += 1
            S.cond.notify_all()
            conns = list(S.conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class Admin(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, obj, code=200):
        out = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(n) or b"{}")

    def do_GET(self):
        u = urlsplit(self.path)
        q = {k: v[0] for k, v in parse_qs(u.query).items()}
        if u.path == "/stats":
            with S.lock:
                self.reply(
                    {
                        "now": time.monotonic(),
                        "nodes": len(S.nodes),
                        "routes": {k: dict(zip(["requests", "request_bytes", "request_body_bytes", "response_bytes", "response_body_bytes"], v)) for k, v in S.routes.items()},
                        "results": S.results,
                        "unique_results": len(S.result_ids),
                        "redelivered": S.redelivered,
                        "registrations": S.registrations,
                        "accepts": S.accepts,
                        "open_connections": len(S.conns),
                        "samples": S.samples,
                    }
                )
        elif u.path == "/events":
            since = float(q.get("since", 0))
            with S.lock:
                self.reply([e for e in S.events if e[0] > since])
        elif u.path == "/wait_results":
            n, deadline = int(q["n"]), time.monotonic() + float(q.get("timeout", 60))
            with S.lock:
                while len(S.result_ids) < n and time.monotonic() < deadline:
                    S.cond.wait(deadline - time.monotonic())
                self.reply(
                    {
                        "results": S.results,
                        "unique_results": len(S.result_ids),
                        "redelivered": S.redelivered,
                        "queued_at": S.queued_at,
                        "last_result_at": S.last_result_at,
                    }
                )
        else:
            self.reply({"error": "no route"}, 404)

    def do_POST(self):
        b = self.body()
        if self.path == "/config":
            with S.lock:
                if "batch" in b:
                    S.batch = int(b["batch"])
                if "max_hold" in b:
                    S.max_hold = b["max_hold"]
                if "redeliver_after" in b:
                    S.redeliver_after = float(b["redeliver_after"])
            self.reply({"ok": True})
        elif self.path == "/queue":
            with S.lock:
                nodes = list(S.nodes) if b.get("node", "*") == "*" else [b["node"]]
                created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                for nid in nodes:
                    for i in range(int(b["n"])):
                        cid = f"{b.get('prefix', 'c')}-{nid[-6:]}-{i}"
                        if b.get("durable"):
                            # A change the agent journals: a destroy of a
                            # session that does not exist.
                            cmd = {"id": cid, "type": "session", "action": "destroy", "params": {"session_id": f"none-{cid}"}}
                        else:
                            cmd = {"id": cid, "type": "system", "action": "status"}
                        cmd["created"] = created
                        S.queued[nid].append(cmd)
                S.queued_at = time.monotonic()
                S.cond.notify_all()
                self.reply({"queued_at": S.queued_at, "nodes": len(nodes)})
        elif self.path == "/reset":
            with S.lock:
                S.reset()
            self.reply({"ok": True})
        elif self.path == "/restart":
            LISTENER.stop()
            with S.lock:
                S.nodes.clear()
                S.queued.clear()
                S.inflight.clear()
            time.sleep(float(b.get("down", 0)))
            LISTENER.start()
            self.reply({"listening_at": time.monotonic()})
        else:
            self.reply({"error": "no route"}, 404)


if __name__ == "__main__":
    port, admin_port = int(sys.argv[1]), int(sys.argv[2])
    LISTENER = Listener(port)
    LISTENER.start()
    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer(("127.0.0.1", admin_port), Admin).serve_forever()

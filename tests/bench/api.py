"""The agent's local API for the bench scripts' Python parts: one kept-alive
connection, session commands by action. Scripts run with
PYTHONPATH=tests/bench and `from api import Agent`."""

import http.client
import json
import os
import sys
import urllib.parse


class Agent:
    def __init__(self, url, token, prefix):
        u = urllib.parse.urlparse(url)
        self.conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
        self.headers = {"Authorization": "Bearer " + token, "Content-Type": "application/json"}
        self.prefix = f"{prefix}-{os.getpid()}"
        self.n = 0

    def post(self, action, **params):
        """Sends a session command and returns the whole answer."""
        self.n += 1
        body = {"id": f"{self.prefix}-{self.n}", "type": "session", "action": action, "params": params}
        self.conn.request("POST", "/api/v1/commands", json.dumps(body), self.headers)
        return json.loads(self.conn.getresponse().read())

    def ok(self, action, **params):
        """Like post; exits when the command did not succeed, else returns its data."""
        answer = self.post(action, **params)
        if answer.get("status") != "success":
            sys.exit(f"{action} {params}: {answer}")
        return answer["data"]

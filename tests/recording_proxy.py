"""A loopback proxy in front of an OpenAI-compatible server (the simulator) that records every
request body it forwards: what a model was actually sent, for tests that check prompts."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.loopback import LoopbackServer

_FORWARDED = ("Content-Type", "Authorization")
_RETURNED = ("Content-Type", "Retry-After")


class RecordingProxy(LoopbackServer):
    """``with RecordingProxy(sim.url) as proxy:`` point clients at ``proxy.url``; ``proxy.bodies``
    holds ``(path, parsed JSON body)`` of every POST, in arrival order."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/").removesuffix("/v1")
        self.bodies: list[tuple[str, Any]] = []
        lock = threading.Lock()
        recorded, upstream_root = self.bodies, self.upstream

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server hook
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = raw.decode("utf-8", "replace")
                with lock:
                    recorded.append((self.path, body))
                headers = {name: self.headers[name] for name in _FORWARDED if self.headers.get(name)}
                forward = urllib.request.Request(upstream_root + self.path, data=raw, headers=headers, method="POST")
                try:
                    with urllib.request.urlopen(forward, timeout=60) as answer:  # noqa: S310 - loopback only
                        status, reply, answer_headers = answer.status, answer.read(), answer.headers
                except urllib.error.HTTPError as error:
                    status, reply, answer_headers = error.code, error.read(), error.headers
                self.send_response(status)
                for name in _RETURNED:
                    if answer_headers.get(name):
                        self.send_header(name, answer_headers[name])
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(Handler)

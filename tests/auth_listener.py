"""A loopback HTTP listener that records every request's ``Authorization`` header: the stand-in for
a host that should never see an API key. It answers every POST with a minimal chat completion."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler

from tests.loopback import LoopbackServer

_ANSWER = json.dumps(
    {
        "choices": [{"message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1},
    }
).encode()


class AuthListener(LoopbackServer):
    """``with AuthListener() as listener:`` ... ``listener.requests`` holds (path, Authorization)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str | None]] = []
        recorded = self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server hook
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                recorded.append((self.path, self.headers.get("Authorization")))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(_ANSWER)))
                self.end_headers()
                self.wfile.write(_ANSWER)

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(Handler)

    @property
    def authorizations(self) -> list[str]:
        return [auth for _, auth in self.requests if auth is not None]

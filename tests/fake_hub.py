"""A stand-in for the Hugging Face Hub's HTTP API on 127.0.0.1 (the real Hub is unreachable from
tests): enough of it for ``huggingface_hub.HfApi`` to check a token (``whoami``), look a dataset repo
up, create it, upload a folder (every file as a regular, non-LFS upload) and tag the commit. Point
``HF_ENDPOINT`` at ``hub.endpoint`` (and unset ``HF_HUB_OFFLINE``) before ``huggingface_hub`` is
imported. ``hub.requests`` records (method, path); ``hub.repos`` holds each repo's files and tags.
``fail_pushes`` makes every repo creation answer HTTP 500 (a push that fails at the end).
"""

from __future__ import annotations

import base64
import hashlib
import json
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import unquote, urlsplit

from tests.loopback import LoopbackServer


class FakeHub(LoopbackServer):
    def __init__(self, tokens: dict[str, str], orgs: tuple[str, ...] = ()) -> None:
        """``tokens``: token -> user name (write tokens); every other token is refused (401)."""
        self.tokens = tokens
        self.orgs = orgs
        self.requests: list[tuple[str, str]] = []
        self.repos: dict[str, dict[str, Any]] = {}
        self.fail_pushes = False
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server hook
                hub._serve(self, "GET")

            def do_POST(self) -> None:  # noqa: N802
                hub._serve(self, "POST")

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(Handler)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------------ the API
    def _serve(self, request: BaseHTTPRequestHandler, method: str) -> None:
        path = unquote(urlsplit(request.path).path)
        self.requests.append((method, path))
        body = request.rfile.read(int(request.headers.get("Content-Length") or 0))
        if path == "/api/agent-harnesses":  # huggingface_hub's daily look at a public registry
            return _reply(request, 200, {})
        user = self.tokens.get((request.headers.get("Authorization") or "").removeprefix("Bearer ").strip())
        if user is None:
            return _reply(request, 401, {"error": "Invalid credentials in Authorization header"})
        parts = path.strip("/").split("/")
        if path == "/api/whoami-v2":
            orgs = [{"name": org, "roleInOrg": "write"} for org in self.orgs]
            return _reply(request, 200, {"name": user, "type": "user", "orgs": orgs, "auth": _write_auth()})
        if path == "/api/validate-yaml":  # the card's front matter, before an upload
            return _reply(request, 200, {"errors": [], "warnings": []})
        if path == "/api/repos/create" and method == "POST":
            if self.fail_pushes:
                return _reply(request, 500, {"error": "Internal Error - the Hub is having a bad day"})
            data = json.loads(body)
            repo = f"{data.get('organization') or user}/{data['name']}"
            if repo in self.repos:
                return _reply(request, 409, {"error": "You already created this dataset repo"})
            self.repos[repo] = {"files": {}, "tags": {}, "sha": "0" * 40, "private": data.get("visibility") != "public"}
            return _reply(request, 200, {"url": f"{self.endpoint}/datasets/{repo}"})
        if len(parts) < 4 or parts[:2] != ["api", "datasets"]:
            return _reply(request, 404, {"error": f"no route {method} {path}"})
        repo, rest = f"{parts[2]}/{parts[3]}", parts[4:]
        state = self.repos.get(repo)
        if state is None:
            return _reply(request, 404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
        if not rest or rest[0] == "revision":
            siblings = [{"rfilename": name} for name in sorted(state["files"])]
            return _reply(
                request, 200, {"id": repo, "sha": state["sha"], "private": state["private"], "siblings": siblings}
            )
        if rest[0] == "tree":
            files = [
                {"type": "file", "path": name, "oid": hashlib.sha1(data).hexdigest(), "size": len(data)}
                for name, data in sorted(state["files"].items())
            ]
            return _reply(request, 200, files)
        if rest[0] == "preupload":
            files = [
                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
                for f in json.loads(body)["files"]
            ]
            return _reply(request, 200, {"files": files})
        if rest[0] == "commit":
            for line in body.splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    state["files"][item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                elif item["key"] == "deletedFile":
                    state["files"].pop(item["value"]["path"], None)
            state["sha"] = hashlib.sha1(repr(sorted(state["files"].items())).encode()).hexdigest()
            url = f"{self.endpoint}/datasets/{repo}/commit/{state['sha']}"
            return _reply(request, 200, {"commitUrl": url, "commitOid": state["sha"], "pullRequestUrl": None})
        if rest[0] == "tag":
            state["tags"][json.loads(body)["tag"]] = state["sha"]
            return _reply(request, 200, {})
        return _reply(request, 404, {"error": f"no route {method} {path}"})


def _write_auth() -> dict[str, Any]:
    return {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}}


def _reply(request: BaseHTTPRequestHandler, status: int, data: Any, headers: dict[str, str] | None = None) -> None:
    payload = json.dumps(data).encode()
    request.send_response(status)
    request.send_header("Content-Type", "application/json")
    request.send_header("Content-Length", str(len(payload)))
    for name, value in (headers or {}).items():
        request.send_header(name, value)
    request.end_headers()
    request.wfile.write(payload)

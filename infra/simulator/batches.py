"""The simulator's Files and Batch APIs (OpenAI's ``/v1/files`` and ``/v1/batches``).

- ``POST /v1/files`` (multipart: ``purpose``, ``file``) stores a file; ``GET /v1/files/{id}`` is its
  metadata, ``GET /v1/files/{id}/content`` its bytes. Files over ``batch_max_file_bytes`` are refused.
- ``POST /v1/batches`` (``input_file_id``, ``endpoint``, ``completion_window``) creates a batch;
  ``GET /v1/batches/{id}`` retrieves it, ``GET /v1/batches`` lists them (newest first, ``after`` and
  ``limit``), ``POST /v1/batches/{id}/cancel`` cancels it. A batch with more than
  ``batch_max_requests`` lines, mixed models or endpoints, or a repeated ``custom_id`` fails
  validation, as OpenAI's does.

A batch is ``in_progress`` until ``batch_delay_s`` after its creation; the first retrieve after that
answers its lines and completes it: each line gets what the online endpoint would answer for the
same body (the same deterministic content; the ``rate_unparseable`` draw counts sightings of a
body across both APIs, so a re-asked line can come back parseable). Faults:
``batch_line_error_rate`` of the lines fail (a 500 in the error file); the first
``batch_expire_first`` batches expire with only ``batch_expire_fraction`` of their lines answered
(the rest in the error file with code ``batch_expired``); the first ``batch_fail_first`` batches
fail validation. A line for a model named ``force-<code>`` fails with that status, as online.
Cancelling answers nothing more: the batch ends ``cancelled``.

``/stats/batches`` (``Simulator.batch_stats()``) has the batches by status, the lines answered, and
``submitted``: how many times each ``custom_id`` was put into a created batch, the number a test
checks to prove that no key was paid for twice.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections import Counter
from typing import Any

from aiohttp import web

from ultrafeedback.infra.simulator import content

ENDPOINTS = ("/v1/chat/completions", "/v1/completions")


class BatchState:
    """Files, batches and counters (guarded by the server state's lock)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.files: dict[str, dict[str, Any]] = {}
        self.contents: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.order: list[str] = []
        self.created = 0
        self.submitted: Counter[str] = Counter()
        self.lines_answered = 0

    def snapshot(self) -> dict[str, Any]:
        return {
            "created": self.created,
            "by_status": dict(Counter(b["status"] for b in self.batches.values())),
            "lines_answered": self.lines_answered,
            "submitted": dict(self.submitted),
            "files": len(self.files),
        }


def _error(status: int, message: str, kind: str = "invalid_request_error") -> web.Response:
    body = json.dumps({"error": {"message": message, "type": kind, "code": status}})
    return web.Response(status=status, text=body, content_type="application/json")


def _authorized(request: web.Request) -> web.Response | None:
    from ultrafeedback.infra.simulator.server import _STATE_KEY

    state = request.app[_STATE_KEY]
    key = state.config.api_key
    if key is not None and request.headers.get("Authorization") != f"Bearer {key}":
        with state.lock:
            state.faults["auth"] += 1
        return _error(401, "Incorrect API key provided", "invalid_api_key")
    return None


def _state(request: web.Request) -> Any:
    from ultrafeedback.infra.simulator.server import _STATE_KEY

    return request.app[_STATE_KEY]


def _new_file(state: Any, data: bytes, filename: str, purpose: str) -> dict[str, Any]:
    ident = f"file-{uuid.uuid4().hex[:24]}"
    meta = {
        "id": ident,
        "object": "file",
        "bytes": len(data),
        "created_at": int(time.time()),
        "filename": filename,
        "purpose": purpose,
    }
    state.batch.files[ident] = meta
    state.batch.contents[ident] = data
    return meta


async def upload_file(request: web.Request) -> web.Response:
    if (refused := _authorized(request)) is not None:
        return refused
    state = _state(request)
    form = await request.post()
    upload = form.get("file")
    purpose = str(form.get("purpose") or "")
    if upload is None or not hasattr(upload, "file"):
        return _error(400, "`file` is required")
    if purpose != "batch":
        return _error(400, f"purpose {purpose!r} is not supported here (only 'batch')")
    data = upload.file.read()
    if len(data) > state.config.batch_max_file_bytes:
        return _error(400, f"file of {len(data)} bytes is over the limit of {state.config.batch_max_file_bytes}")
    with state.lock:
        meta = _new_file(state, data, upload.filename or "input.jsonl", purpose)
    return web.json_response(meta)


def _lookup(request: web.Request, table: str, name: str) -> tuple[Any, Any, web.Response | None]:
    """(state, the item ``match_info[name]`` names in ``state.batch.<table>``, None), or the refusal
    (401, or 404 when there is no such item) as the third."""
    if (refused := _authorized(request)) is not None:
        return None, None, refused
    state = _state(request)
    with state.lock:
        item = getattr(state.batch, table).get(request.match_info[name])
    if item is None:
        return state, None, _error(404, f"no such {name.removesuffix('_id')}", "not_found")
    return state, item, None


async def file_meta(request: web.Request) -> web.Response:
    _, meta, refused = _lookup(request, "files", "file_id")
    return refused or web.json_response(meta)


async def file_content(request: web.Request) -> web.Response:
    _, data, refused = _lookup(request, "contents", "file_id")
    return refused or web.Response(body=data, content_type="application/octet-stream")


def _validate_lines(state: Any, data: bytes, endpoint: str) -> tuple[list[dict[str, Any]], str | None]:
    lines: list[dict[str, Any]] = []
    for number, raw in enumerate(data.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except ValueError:
            return [], f"line {number}: not valid JSON"
        if not isinstance(line, dict) or not isinstance(line.get("custom_id"), str):
            return [], f"line {number}: `custom_id` is required"
        if line.get("method") != "POST" or line.get("url") != endpoint or not isinstance(line.get("body"), dict):
            return [], f"line {number}: method must be POST, url {endpoint!r}, and body an object"
        lines.append(line)
    if not lines:
        return [], "the input file has no requests"
    if len(lines) > state.config.batch_max_requests:
        return [], f"{len(lines)} requests: over the limit of {state.config.batch_max_requests} per batch"
    ids = [line["custom_id"] for line in lines]
    if len(set(ids)) != len(ids):
        return [], "custom_id values repeat"
    if len({line["body"].get("model") for line in lines}) > 1:
        return [], "a batch's requests must all use the same model"
    return lines, None


async def create_batch(request: web.Request) -> web.Response:
    if (refused := _authorized(request)) is not None:
        return refused
    state = _state(request)
    try:
        body = await request.json()
    except ValueError:
        return _error(400, "the body is not valid JSON")
    endpoint = body.get("endpoint")
    if endpoint not in ENDPOINTS:
        return _error(400, f"endpoint must be one of {', '.join(ENDPOINTS)}")
    if body.get("completion_window") != "24h":
        return _error(400, "completion_window must be '24h'")
    with state.lock:
        data = state.batch.contents.get(str(body.get("input_file_id")))
    if data is None:
        return _error(400, "input_file_id: no such file")
    lines, problem = _validate_lines(state, data, endpoint)
    now = int(time.time())
    ident = f"batch_{uuid.uuid4().hex[:24]}"
    with state.lock:
        number = state.batch.created
        state.batch.created += 1
        failing = problem is not None or number < state.config.batch_fail_first
        batch = {
            "id": ident,
            "object": "batch",
            "endpoint": endpoint,
            "errors": None,
            "input_file_id": body["input_file_id"],
            "completion_window": "24h",
            "status": "failed" if failing else "in_progress",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": now,
            "in_progress_at": None if failing else now,
            "expires_at": now + 24 * 3600,
            "finalizing_at": None,
            "completed_at": None,
            "failed_at": now if failing else None,
            "expired_at": None,
            "cancelling_at": None,
            "cancelled_at": None,
            "request_counts": {"total": 0 if failing else len(lines), "completed": 0, "failed": 0},
            "metadata": body.get("metadata"),
            "_ready_at": time.monotonic() + state.config.batch_delay_s,
            "_expire": number < state.config.batch_expire_first,
        }
        if failing:
            message = problem or "simulated validation failure"
            batch["errors"] = {"object": "list", "data": [{"code": "invalid_request", "message": message}]}
        else:
            batch["_lines"] = lines
            for line in lines:
                state.batch.submitted[line["custom_id"]] += 1
        state.batch.batches[ident] = batch
        state.batch.order.append(ident)
    return web.json_response(_public(batch))


def _public(batch: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in batch.items() if not k.startswith("_")}


def _line_outcome(state: Any, line: dict[str, Any], chat: bool) -> tuple[int, dict[str, Any]]:
    """(status, body) the online endpoint would give this line (no latency, no transport faults)."""
    from ultrafeedback.infra.simulator.server import _FORCED, _fault_rng, _user_text, reply_payload

    config = state.config
    body = line["body"]
    raw = json.dumps(body, ensure_ascii=False).encode("utf-8")  # the bytes the online client sends
    digest = hashlib.sha256(raw).digest()
    model = str(body.get("model"))
    user, system, _ = _user_text(body)
    kind, aspect = content.classify(user)
    with state.lock:
        sighting = state.seen.get(digest, 0)
        state.seen[digest] = sighting + 1
        state.by_kind[kind] += 1
        state.by_model[model] += 1
        state.by_endpoint["batch"] += 1
    forced = _FORCED.fullmatch(model)
    if forced:  # the online endpoint's test hook: a model named force-<code> always gets that status
        code = int(forced.group(1))
        with state.lock:
            state.faults[f"forced_{code}"] += 1
        return code, {"error": {"message": f"forced status {code} for model {model!r}", "type": "forced_error"}}
    rng = _fault_rng(config.seed, digest, sighting)
    faults_allowed = config.max_faults_per_body is None or sighting < config.max_faults_per_body
    if faults_allowed and rng.random() < config.batch_line_error_rate:
        with state.lock:
            state.faults["batch_line_500"] += 1
        return 500, {"error": {"message": "internal server error (simulated)", "type": "server_error"}}
    unparseable = faults_allowed and kind != "generation" and rng.random() < config.rate_unparseable
    return 200, reply_payload(state, body, (kind, aspect, user, system), digest, rng, unparseable, chat)


def _finish(state: Any, batch: dict[str, Any]) -> None:
    """Answer a due batch's lines and complete it (or expire it part-way)."""
    lines = batch.pop("_lines", [])
    chat = batch["endpoint"] == "/v1/chat/completions"
    cut = len(lines)
    if batch["_expire"]:
        cut = int(len(lines) * state.config.batch_expire_fraction)
    output, errors = [], []
    for index, line in enumerate(lines):
        request_id = f"batch_req_{uuid.uuid4().hex[:20]}"
        if index >= cut:
            error = {"code": "batch_expired", "message": "This request could not be executed before the batch expired."}
            errors.append({"id": request_id, "custom_id": line["custom_id"], "response": None, "error": error})
            continue
        status, body = _line_outcome(state, line, chat)
        record = {
            "id": request_id,
            "custom_id": line["custom_id"],
            "response": {"status_code": status, "request_id": request_id, "body": body},
            "error": None,
        }
        (output if status == 200 else errors).append(record)
    now = int(time.time())
    with state.lock:
        state.batch.lines_answered += cut
        if output:
            data = "".join(json.dumps(r) + "\n" for r in output).encode()
            batch["output_file_id"] = _new_file(state, data, f"{batch['id']}_output.jsonl", "batch_output")["id"]
        if errors:
            data = "".join(json.dumps(r) + "\n" for r in errors).encode()
            batch["error_file_id"] = _new_file(state, data, f"{batch['id']}_error.jsonl", "batch_output")["id"]
        batch["request_counts"] = {
            "total": len(lines),
            "completed": len(output),
            "failed": sum(1 for r in errors if r["response"] is not None),
        }
        batch["finalizing_at"] = now
        if batch["_expire"]:
            batch["status"], batch["expired_at"] = "expired", now
        else:
            batch["status"], batch["completed_at"] = "completed", now


def _advance(state: Any, batch: dict[str, Any]) -> None:
    if batch["status"] == "in_progress" and time.monotonic() >= batch["_ready_at"]:
        _finish(state, batch)


async def get_batch(request: web.Request) -> web.Response:
    state, batch, refused = _lookup(request, "batches", "batch_id")
    if refused is not None:
        return refused
    _advance(state, batch)
    return web.json_response(_public(batch))


async def list_batches(request: web.Request) -> web.Response:
    if (refused := _authorized(request)) is not None:
        return refused
    state = _state(request)
    limit = max(1, min(100, int(request.query.get("limit", "20"))))
    after = request.query.get("after")
    with state.lock:
        order = list(reversed(state.batch.order))
    if after in order:
        order = order[order.index(after) + 1 :]
    page = order[:limit]
    with state.lock:
        data = [_public(state.batch.batches[i]) for i in page]
    return web.json_response(
        {
            "object": "list",
            "data": data,
            "first_id": page[0] if page else None,
            "last_id": page[-1] if page else None,
            "has_more": len(order) > limit,
        }
    )


async def cancel_batch(request: web.Request) -> web.Response:
    if (refused := _authorized(request)) is not None:
        return refused
    state = _state(request)
    with state.lock:
        batch = state.batch.batches.get(request.match_info["batch_id"])
        if batch is None:
            return _error(404, "no such batch", "not_found")
        if batch["status"] in ("validating", "in_progress"):
            now = int(time.time())
            batch.pop("_lines", None)
            batch.update(status="cancelled", cancelling_at=now, cancelled_at=now)
    return web.json_response(_public(batch))


async def batch_stats(request: web.Request) -> web.Response:
    state = _state(request)
    with state.lock:
        return web.json_response(state.batch.snapshot())


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/files", upload_file)
    app.router.add_get("/v1/files/{file_id}", file_meta)
    app.router.add_get("/v1/files/{file_id}/content", file_content)
    app.router.add_post("/v1/batches", create_batch)
    app.router.add_get("/v1/batches", list_batches)
    app.router.add_get("/v1/batches/{batch_id}", get_batch)
    app.router.add_post("/v1/batches/{batch_id}/cancel", cancel_batch)
    app.router.add_get("/stats/batches", batch_stats)

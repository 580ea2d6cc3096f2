"""The provider Batch API (OpenAI's ``/v1/files`` and ``/v1/batches``) for endpoints with
``batch_api: true``: about half the price of the same calls online, answered within 24 hours.

A stage's shard hands its pending calls to a ``BatchSession`` (the same calls, keys and callbacks
as the online path, ``infra.journal.run_journaled``). The session:

1. answers each call whose key sits in a batch submitted earlier (by this run or by a run that was
   killed, crashed or cancelled) from that batch's output or error file once the batch has ended;
2. writes the other calls as JSONL (``custom_id`` = the content key, ``body`` = the online request
   body), split per model and API path and at the provider's limits (``batch_max_requests`` and
   ``batch_max_bytes`` of the endpoint), uploads each file and creates a batch;
3. returns at once: a call whose batch is still running is *waiting*. The shard reports how many
   calls wait, the flow lets go of the shard's worker slot and asks again ``execution.batch_poll_s``
   later (``flows.build._run_pipeline``), so a 24-hour batch holds no worker.

The registry of a shard's batches, ``batches/{stage}/{shard}.{endpoint}.json`` in the store, holds each
batch's input file, id, status and keys. An entry is written right after its file is uploaded and
again once its batch exists, before anyone polls it: a run that restarts finds its batches there
(and a batch whose creation it did not get to record, by its input file in the provider's batch
list), so no key is submitted twice. Each key's batches are used in the order they were submitted,
each once per run of the shard, exactly as the result journal replays answers: an unparseable
judge answer (from the first batch) is re-asked by the stage, and the re-ask is answered by the
next batch holding that key, or goes into a new one. Once every call of the shard has its answer
and the results are checkpointed, the registry is deleted.

When a batch ends without answering some of its keys (``expired``, ``cancelled``, ``failed``, or
lines that failed with a retryable status: 408, 409, 429, 5xx), only those keys are sent again, in
a new batch, at most ``max_retries`` times per key; then, and for lines that failed for good (a
400, say), the call is recorded as a failure with its reason (``http_400``, ``batch_expired``...).
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections import OrderedDict, defaultdict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from ultrafeedback.infra.llm.base import LLMRequest, LLMResult, ResultCallback

if TYPE_CHECKING:
    from ultrafeedback.infra.budget import CostBudget
    from ultrafeedback.infra.store import Store
    from ultrafeedback.spec import Endpoint

log = logging.getLogger(__name__)

RUNNING = frozenset({"validating", "in_progress", "finalizing", "cancelling"})
ENDED = frozenset({"completed", "expired", "cancelled", "failed"})
RETRY_LINE_STATUSES = frozenset({408, 409, 429})
REGISTRY = "batches"


class BatchAPIError(RuntimeError):
    """The Batch API refused a request (after retries): the stage cannot go on with this endpoint."""


# --------------------------------------------------------------------------- HTTP


class BatchClient:
    """Synchronous client of the Files and Batch APIs, with retries on 408/409/429/5xx and
    connection errors (exponential backoff, ``Retry-After`` honoured)."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        timeout_s: float = 120.0,
        max_retries: int = 6,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 60.0,
    ) -> None:
        import httpx

        self.base_url = base_url.rstrip("/")
        self.max_retries = max_retries
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._key = api_key or ""
        self._http = httpx.Client(headers=headers, timeout=timeout_s)

    def _scrub(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx

        from ultrafeedback.infra.llm.openai_compat import parse_retry_after

        url = f"{self.base_url}/{path.lstrip('/')}"
        for attempt in range(self.max_retries + 1):
            delay = min(self.backoff_max_s, self.backoff_base_s * 2**attempt) * random.random()
            try:
                response = self._http.request(method, url, **kwargs)
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code < 300:
                    return response
                problem = f"HTTP {response.status_code} from {url}: {response.text[:300]}"
                if response.status_code not in RETRY_LINE_STATUSES and response.status_code < 500:
                    break
                after = parse_retry_after(response.headers.get("Retry-After"))
                delay = max(delay, after or 0.0)
            if attempt < self.max_retries:
                time.sleep(delay)
        raise BatchAPIError(self._scrub(problem))

    def upload(self, data: bytes, filename: str) -> str:
        files = {"file": (filename, data, "application/jsonl")}
        return self._call("POST", "files", data={"purpose": "batch"}, files=files).json()["id"]

    def create(self, input_file_id: str, path: str, metadata: dict[str, str]) -> dict[str, Any]:
        body = {"input_file_id": input_file_id, "endpoint": f"/v1/{path}", "completion_window": "24h"}
        body["metadata"] = metadata
        return self._call("POST", "batches", json=body).json()

    def retrieve(self, batch_id: str) -> dict[str, Any]:
        return self._call("GET", f"batches/{batch_id}").json()

    def cancel(self, batch_id: str) -> dict[str, Any]:
        return self._call("POST", f"batches/{batch_id}/cancel").json()

    def find(self, input_file_id: str, pages: int = 20) -> dict[str, Any] | None:
        """The batch created from ``input_file_id`` (newest first, at most ``pages`` pages of 100)."""
        after = None
        for _ in range(pages):
            params = {"limit": 100, **({"after": after} if after else {})}
            page = self._call("GET", "batches", params=params).json()
            for batch in page.get("data") or []:
                if batch.get("input_file_id") == input_file_id:
                    return batch
            if not page.get("has_more") or not page.get("data"):
                return None
            after = page["data"][-1]["id"]
        return None

    def content(self, file_id: str) -> bytes:
        return self._call("GET", f"files/{file_id}/content").content

    def close(self) -> None:
        self._http.close()


# --------------------------------------------------------------------------- the backend


class BatchBackend:
    """An endpoint with ``batch_api: true``: calls go through ``BatchSession`` (the stages) or, for
    callers of the plain ``Backend`` contract, through ``run``, which waits for the batches."""

    batch_mode = True

    def __init__(self, name: str, endpoint: Endpoint, api_key: str | None, poll_s: float = 60.0) -> None:
        self.name = name
        self.endpoint = endpoint
        self.poll_s = poll_s
        self.client = BatchClient(
            endpoint.base_url,
            api_key,
            timeout_s=endpoint.timeout_s,
            max_retries=endpoint.max_retries,
            backoff_base_s=endpoint.backoff_base_s,
            backoff_max_s=endpoint.backoff_max_s,
        )
        self._served: dict[str, set[tuple[str | None, str]]] = defaultdict(set)
        """registry path -> (batch id, key) of the answers handed over by this process"""
        self._files: OrderedDict[str, dict[str, tuple[int | None, dict[str, Any]]]] = OrderedDict()
        self._files_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"BatchBackend(name={self.name!r}, base_url={self.endpoint.base_url!r})"

    def run(self, requests: list[LLMRequest], on_result: ResultCallback) -> None:
        """Run every request in batches and wait for them (keeps no registry: a caller that must
        survive a restart uses ``BatchSession`` with a store)."""
        session = BatchSession(self, None, "adhoc", "adhoc")
        pending = list(requests)
        while pending:
            session.start_pass()
            session.run(pending, on_result)
            waiting = session.waiting_keys
            pending = [r for r in pending if r.key in waiting]
            if pending:
                time.sleep(self.poll_s)

    def lines(self, file_id: str | None) -> dict[str, tuple[int | None, dict[str, Any]]]:
        """``custom_id`` -> (status code or None, response body or error) of an output/error file."""
        if not file_id:
            return {}
        with self._files_lock:
            if file_id in self._files:
                self._files.move_to_end(file_id)
                return self._files[file_id]
        out: dict[str, tuple[int | None, dict[str, Any]]] = {}
        for raw in self.client.content(file_id).splitlines():
            if not raw.strip():
                continue
            line = json.loads(raw)
            response = line.get("response")
            if response:
                out[line["custom_id"]] = (int(response.get("status_code") or 0), response.get("body") or {})
            else:
                out[line["custom_id"]] = (None, line.get("error") or {})
        with self._files_lock:
            self._files[file_id] = out
            while len(self._files) > 4:
                self._files.popitem(last=False)
        return out

    def close(self) -> None:
        self.client.close()


# --------------------------------------------------------------------------- one shard's batches


@dataclass
class _Entry:
    file: str
    path: str
    model: str
    keys: list[str]
    id: str | None = None
    status: str = "uploaded"
    counts: dict[str, int] = field(default_factory=dict)
    output_file_id: str | None = None
    error_file_id: str | None = None
    created: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class BatchSession:
    """One run of one shard of a stage against one batch endpoint (see the module doc).

    ``run`` may be called several times (the judge's parse re-ask rounds); ``close`` at the end of
    the shard writes the registry, or deletes it when nothing is waiting any more."""

    def __init__(self, backend: BatchBackend, store: Store | None, stage: str, label: str) -> None:
        self.backend = backend
        self.store = store
        self.stage = stage
        self.label = label
        self.path = f"{REGISTRY}/{stage}/{label}.{backend.name}.json"
        saved = store.read_json(self.path, {}) if store is not None else {}
        self.entries: list[_Entry] = [_Entry(**e) for e in (saved.get("batches") or [])]
        self.submitted = 0
        """keys this session put into new batches"""
        self.waiting_keys: set[str] = set()
        self._tries: dict[str, int] = defaultdict(int)
        self._lock = threading.Lock()
        self.start_pass()

    def start_pass(self) -> None:
        """Begin a pass over the shard's calls: each key's batches are taken from the first again."""
        self._queues: dict[str, deque[int]] = defaultdict(deque)
        for index, entry in enumerate(self.entries):
            for key in entry.keys:
                self._queues[key].append(index)
        self._refreshed: set[int] = set()
        self.waiting_keys = set()

    # ------------------------------------------------------------------ registry
    def _save(self) -> None:
        if self.store is not None:
            self.store.write_json(self.path, {"batches": [e.to_dict() for e in self.entries]})

    def close(self) -> None:
        """Write the registry; delete it when no call waits (every answer is checkpointed by now)."""
        if self.store is None:
            return
        if self.waiting_keys:
            self._save()
        else:
            self.store.delete(self.path)
            self.backend._served.pop(self.path, None)

    def rows(self) -> list[dict[str, Any]]:
        """The shard's batches for the flow's artifact: id, status, counts."""
        return [
            {
                "stage": self.stage,
                "shard": self.label,
                "endpoint": self.backend.name,
                "batch": e.id or f"(uploaded {e.file})",
                "status": e.status,
                "requests": len(e.keys),
                "completed": e.counts.get("completed", 0),
                "failed": e.counts.get("failed", 0),
            }
            for e in self.entries
        ]

    # ------------------------------------------------------------------ batches
    def _refresh(self, index: int) -> _Entry:
        """The entry with its batch's current status (created now if a crash left it uploaded only)."""
        entry = self.entries[index]
        if index in self._refreshed or entry.status in ENDED:
            return entry
        client = self.backend.client
        if entry.id is None:
            found = client.find(entry.file)
            if found is None:
                found = client.create(entry.file, entry.path, {"stage": self.stage, "shard": self.label})
            entry.id = found["id"]
            self._apply(entry, found)
            self._save()
        else:
            before = entry.status
            self._apply(entry, client.retrieve(entry.id))
            if entry.status != before:
                self._save()
        self._refreshed.add(index)
        return entry

    @staticmethod
    def _apply(entry: _Entry, batch: dict[str, Any]) -> None:
        entry.status = str(batch.get("status") or "failed")
        entry.counts = {k: int(v) for k, v in (batch.get("request_counts") or {}).items()}
        entry.output_file_id = batch.get("output_file_id")
        entry.error_file_id = batch.get("error_file_id")

    def _submit(self, requests: list[LLMRequest]) -> None:
        """Write, split, upload and create batches for ``requests``; each entry is recorded after its
        upload and again once its batch exists."""
        from ultrafeedback.infra.llm.openai_compat import request_body

        endpoint = self.backend.endpoint
        groups: dict[tuple[str, str], list[bytes]] = defaultdict(list)
        keys: dict[tuple[str, str], list[str]] = defaultdict(list)
        for request in requests:
            path, body = request_body(request)
            line = {"custom_id": request.key, "method": "POST", "url": f"/v1/{path}", "body": body}
            groups[(request.model, path)].append(json.dumps(line, ensure_ascii=False).encode("utf-8") + b"\n")
            keys[(request.model, path)].append(request.key)
        for (model, path), lines in groups.items():
            start = 0
            while start < len(lines):
                size, end = 0, start
                while end < len(lines) and end - start < endpoint.batch_max_requests:
                    if end > start and size + len(lines[end]) > endpoint.batch_max_bytes:
                        break
                    size += len(lines[end])
                    end += 1
                data = b"".join(lines[start:end])
                chunk = keys[(model, path)][start:end]
                name = f"{self.stage}-{self.label}-{len(self.entries)}.jsonl"
                entry = _Entry(file=self.backend.client.upload(data, name), path=path, model=model, keys=chunk)
                self.entries.append(entry)
                index = len(self.entries) - 1
                self._save()  # before the batch exists: a restart finds it by its input file
                batch = self.backend.client.create(entry.file, path, {"stage": self.stage, "shard": self.label})
                entry.id = batch["id"]
                self._apply(entry, batch)
                self._save()
                self._refreshed.add(index)
                for key in chunk:
                    self._queues[key].append(index)
                self.submitted += len(chunk)
                start = end

    # ------------------------------------------------------------------ calls
    def run(
        self,
        requests: Sequence[LLMRequest],
        on_result: Callable[[LLMResult], None],
        budget: CostBudget | None = None,
    ) -> None:
        """Answer the calls whose batches have ended, submit the calls that have no batch yet, and
        return: the rest wait (``waiting_keys``). Never waits for a batch."""
        max_retries = self.backend.endpoint.max_retries
        to_send: list[LLMRequest] = []
        for request in requests:
            queue = self._queues[request.key]
            result: LLMResult | None = None
            waiting = False
            while queue:
                entry = self._refresh(queue[0])
                if entry.status in RUNNING:
                    waiting = True
                    break
                queue.popleft()
                status, payload = self._outcome(entry, request.key)
                if status == 200:
                    result = _success(request, payload)
                    break
                retryable = status is None or status in RETRY_LINE_STATUSES or status >= 500
                reason, message = _failure(entry, status, payload)
                self._tries[request.key] += 1
                if not retryable or self._tries[request.key] > max_retries:
                    result = LLMResult(
                        request.key, None, attempts=self._tries[request.key], error=message, reason=reason
                    )
                    break
            if result is not None:
                result = self._mark(entry, result)
                if budget is not None:
                    budget.settle(request.model, result, batch=True)
                on_result(result)
            elif waiting:
                self.waiting_keys.add(request.key)
            else:
                to_send.append(request)
        if to_send and budget is not None:
            to_send, later = budget.admit(to_send, batch=True)
            if later and budget.stopped:
                budget.hold_back(len(later))
            else:  # asked again at the next look, once batches in flight have answered
                self.waiting_keys.update(r.key for r in later)
        if to_send:
            self._submit(to_send)
            self.waiting_keys.update(r.key for r in to_send)

    def _mark(self, entry: _Entry, result: LLMResult) -> LLMResult:
        """An answer handed over before by this process (an earlier pass) comes again with
        ``replayed`` set: it is not counted (tokens, cost, the judge's parse breaker) twice."""
        served = self.backend._served[self.path]
        mark = (entry.id, result.key)
        if mark not in served:
            served.add(mark)
            return result
        return replace(result, replayed=True)

    def _outcome(self, entry: _Entry, key: str) -> tuple[int | None, dict[str, Any]]:
        """(status, body) of ``key``'s line in an ended batch; (None, error) when it was not answered."""
        for file_id in (entry.output_file_id, entry.error_file_id):
            line = self.backend.lines(file_id).get(key)
            if line is not None:
                return line
        return None, {"code": f"batch_{entry.status}", "message": f"batch {entry.id} {entry.status} without it"}


def _success(request: LLMRequest, body: dict[str, Any]) -> LLMResult:
    from ultrafeedback.infra.llm.openai_compat import _Failure, _parse_success

    try:
        text, finish, tokens_in, tokens_out = _parse_success(json.dumps(body).encode(), request.messages is not None)
    except _Failure as failure:
        return LLMResult(request.key, None, error=failure.message, reason=failure.reason)
    return LLMResult(request.key, text, finish, tokens_in, tokens_out)


def _failure(entry: _Entry, status: int | None, payload: dict[str, Any]) -> tuple[str, str]:
    if status is None:
        code = str(payload.get("code") or f"batch_{entry.status}")
        reason = code if code.startswith("batch_") else f"batch_{code}"
        return reason, f"batch {entry.id}: {payload.get('message') or code}"
    error = payload.get("error") if isinstance(payload.get("error"), dict) else {}
    return f"http_{status}", f"batch {entry.id}: HTTP {status}: {str(error.get('message') or payload)[:300]}"


def session_for(backend: Any, store: Store, stage: str, label: str) -> BatchSession | None:
    """A ``BatchSession`` when ``backend`` is a batch endpoint, else None (online)."""
    if getattr(backend, "batch_mode", False):
        return BatchSession(backend, store, stage, label)
    return None

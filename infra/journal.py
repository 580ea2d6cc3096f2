"""The result journal: every answer is written down the moment it arrives, before anything is
derived from it, so a run killed before its next checkpoint does not pay for that answer again.

Checkpoints write results in batches (``infra.checkpoint``): between two of them, answers live in
memory only. The journal closes that gap. Each shard of a model-calling stage appends one JSON line
per successful answer to a file of its own (``{stage}/{label}-{time_ns}-{pid}-{id}.jsonl``) and
flushes it to the operating system at once (a killed process loses nothing the OS has; a power cut
is not covered); the OpenAI-compatible client writes it on its I/O loop as each response is read,
other backends as each result reaches the caller.

The next run of the shard replays the journalled answers of earlier runs for the keys it still
needs (``JournalReplay.take``), oldest first and each once: an unparseable judge answer that was
re-asked is followed by the re-asked one, so the parse-retry budget holds across kills. When the
shard's stage has finished and its checkpoints are written, its journals are folded into the
Parquet parts: deleted (``discard``).

Where: inside the store for a local store (``{store}/{dataset}/journal/``); for an object store
(which cannot append) in a local folder named after the store, under ``ULTRAFEEDBACK_JOURNAL_DIR``
(default ``~/.cache/ultrafeedback/journal``): a rerun on another machine then pays for those answers
again, which is what it would have done without a journal.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from ultrafeedback.infra.llm.base import LLMRequest, LLMResult
from ultrafeedback.infra.stop import Stopped
from ultrafeedback.infra.store import Store

log = logging.getLogger(__name__)

JOURNAL_DIR_ENV = "ULTRAFEEDBACK_JOURNAL_DIR"
_FIELDS = ("text", "finish_reason", "input_tokens", "output_tokens", "latency_s", "attempts")


def journal_root(store: Store) -> Path:
    """The folder of a store's journals (see the module doc)."""
    if store.local:
        return Path(store.path("journal"))
    base = Path(os.environ.get(JOURNAL_DIR_ENV) or Path.home() / ".cache" / "ultrafeedback" / "journal")
    return base / hashlib.sha256(store.uri().encode()).hexdigest()[:16]


class Journal:
    """One run's journal of one shard of one stage: a file only this object appends to."""

    def __init__(self, root: Path, stage: str, label: str) -> None:
        self.root = root
        self.stage = stage
        self.label = label
        self.path = root / stage / f"{label}-{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
        self._handle: IO[str] | None = None
        self._lock = threading.Lock()
        self.written = 0

    def record(self, result: LLMResult, model: str) -> None:
        """Write one arrived answer (failures are not answers: they are not journalled)."""
        if not result.ok:
            return
        line = json.dumps({"key": result.key, "model": model, **{f: getattr(result, f) for f in _FIELDS}})
        with self._lock:
            if self._handle is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._handle = self.path.open("a", encoding="utf-8", errors="surrogatepass")
            self._handle.write(line + "\n")
            self._handle.flush()
            self.written += 1

    def close(self) -> None:
        with self._lock:
            if self._handle is not None:
                self._handle.close()
                self._handle = None

    def files(self) -> list[Path]:
        """The shard's journal files of every run, oldest first (this one's included)."""
        folder = self.root / self.stage
        if not folder.is_dir():
            return []
        return sorted(p for p in folder.iterdir() if p.name.startswith(f"{self.label}-") and p.suffix == ".jsonl")

    def replay(self) -> JournalReplay:
        """The answers earlier runs journalled for this shard (this run's own file left out)."""
        answers: dict[str, deque[tuple[str, LLMResult]]] = defaultdict(deque)
        for path in self.files():
            if path == self.path:
                continue
            with path.open(encoding="utf-8", errors="surrogatepass") as handle:
                for number, line in enumerate(handle, start=1):
                    try:
                        entry = json.loads(line)
                        result = LLMResult(key=entry["key"], **{f: entry[f] for f in _FIELDS})
                    except (ValueError, KeyError, TypeError):  # the line a kill cut short
                        log.warning("journal %s:%d: an unreadable line is skipped", path, number)
                        continue
                    answers[result.key].append((entry["model"], result))
        return JournalReplay(answers)

    def discard(self) -> int:
        """Delete the shard's journals (once its results are in checkpointed parts); returns how many."""
        self.close()
        removed = 0
        for path in self.files():
            path.unlink(missing_ok=True)
            removed += 1
        return removed


class JournalReplay:
    """Journalled answers by key, each handed out once, oldest first."""

    def __init__(self, answers: dict[str, deque[tuple[str, LLMResult]]]) -> None:
        self._answers = answers
        self.replayed = 0

    def __len__(self) -> int:
        return sum(len(queue) for queue in self._answers.values())

    def take(self, request: LLMRequest) -> LLMResult | None:
        """The next journalled answer to this request (same key and model), or None."""
        queue = self._answers.get(request.key)
        while queue:
            model, result = queue.popleft()
            if model == request.model:
                self.replayed += 1
                return result
        return None


def run_journaled(
    backend: Any,
    requests: Sequence[LLMRequest],
    on_result: Callable[[LLMResult], None],
    journal: Journal | None,
    replay: JournalReplay | None,
) -> int:
    """``backend.run`` with a journal: requests with a journalled answer get it back without a call;
    the others are sent and each answer is journalled as it arrives, before ``on_result`` sees it.
    Returns how many requests were answered from the journal (a ``Stopped`` the backend raises
    carries it as ``replayed``)."""
    if journal is None:
        backend.run(list(requests), on_result)
        return 0
    models = {request.key: request.model for request in requests}
    to_send = []
    replayed = 0
    for request in requests:
        result = replay.take(request) if replay is not None else None
        if result is None:
            to_send.append(request)
        else:
            on_result(result)
            replayed += 1
    if not to_send:
        return replayed

    def record(result: LLMResult) -> None:
        journal.record(result, models.get(result.key, ""))

    try:
        if getattr(backend, "records_arrivals", False):  # journalled on its I/O loop, as responses are read
            backend.run(to_send, on_result, on_arrival=record)
        else:

            def journaled(result: LLMResult) -> None:
                record(result)
                on_result(result)

            backend.run(to_send, journaled)
    except Stopped as exc:
        exc.replayed += replayed
        raise
    return replayed

"""Generate completions for one shard: batched per model, checkpointed as results arrive."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from ultrafeedback.infra.budget import for_store as budget_for
from ultrafeedback.infra.calls import run_calls
from ultrafeedback.infra.checkpoint import Checkpointer, failure_log
from ultrafeedback.infra.journal import Journal, journal_root
from ultrafeedback.infra.llm.base import LLMRequest, LLMResult
from ultrafeedback.infra.llm.batch import session_for
from ultrafeedback.infra.stop import Stopped
from ultrafeedback.infra.store import ResultLog, Store
from ultrafeedback.records import Completion, CompletionRequest, Failure, Instruction
from ultrafeedback.spec import Spec
from ultrafeedback.tasks.generate.chat_templates import ChatTemplateError
from ultrafeedback.tasks.generate.prompt_builder import PromptBuilder, builders
from ultrafeedback.tasks.generate.results import STAGE, cut_response, failure_from, settle
from ultrafeedback.tasks.generate.results import unbuilt as unbuilt_failure
from ultrafeedback.tasks.stages import ShardReport

__all__ = [
    "STAGE",
    "cut_response",
    "failure_from",
    "generate_shard",
    "response_hashes",
    "shard_label",
    "to_llm_request",
]


def to_llm_request(
    request: CompletionRequest, instruction: Instruction, served_model: str, builder: PromptBuilder | None = None
) -> LLMRequest:
    """The backend call for one completion request, built by its model's prompt recipe (``builder``;
    by default the one this process made for the request's ``prompt_template``, or its raw format).
    Raises ``ChatTemplateError`` when the model's chat template cannot render it."""
    from ultrafeedback.tasks.generate.prompt_builder import registered
    from ultrafeedback.tasks.generate.prompt_formats import FORMATS, build_prompt

    builder = builder or registered(request.prompt_template)
    if builder is not None:
        built = builder.build(instruction.instruction, request.system_prompt)
    elif request.prompt_format in FORMATS:  # a request made before prompt templates were recorded
        built = build_prompt(request.prompt_format, instruction.instruction, request.system_prompt)
    else:
        raise ValueError(f"request {request.request_id}: no prompt recipe {request.prompt_template!r} in this process")
    sampling = json.loads(request.sampling_json)
    if built.stop:
        sampling["stop"] = list(dict.fromkeys([*(sampling.get("stop") or []), *built.stop]))
    return LLMRequest(
        key=request.request_id,
        model=served_model,
        messages=built.messages,
        prompt=built.prompt,
        sampling=sampling,
    )


def shard_label(shard: int) -> str:
    """The label of a shard's checkpoint parts in a result log."""
    return f"s{shard:05d}"


def response_hashes(completions: ResultLog, ids: Sequence[str]) -> dict[str, str]:
    """Completion id -> ``Completion.response_hash`` of the stored completions among ``ids``, from
    the key and hash columns (parts written before the hash column existed: from the text)."""
    from ultrafeedback.keys import text_hash

    try:
        table = completions.read_keys(ids, ["request_id", "response_hash"])
        hashes = table.column("response_hash").to_pylist()
    except (KeyError, ValueError):  # pyarrow: a part without the column
        table = completions.read_keys(ids, ["request_id", "response"])
        hashes = [text_hash(text) for text in table.column("response").to_pylist()]
    return dict(zip(table.column("request_id").to_pylist(), hashes, strict=True))


def generate_shard(
    spec: Spec,
    store: Store,
    shard: int,
    requests: Sequence[CompletionRequest],
    instructions: dict[str, Instruction],
    on_progress: Callable[[int], None] | None = None,
    results: ResultLog | None = None,
    failures: ResultLog | None = None,
) -> ShardReport:
    """Generate every request of the shard (the caller passes only requests without a result).

    ``results``/``failures`` are the run's shared logs (their key indexes stay current); by
    default the store's."""
    from ultrafeedback.infra.llm.factory import model_backend

    started = time.monotonic()
    report = ShardReport(stage=STAGE, shard=shard)
    # One batch per backend: models behind one endpoint share its backend and its in-flight
    # budget, so their requests go out together (a model's tail never leaves the endpoint idle);
    # local backends (embedded, vLLM) run one model's batch at a time, as a device holds one model.
    batches: dict[tuple[int, str], tuple[Any, list[LLMRequest]]] = {}
    originals = {r.request_id: r for r in requests}
    recipes = builders(spec)
    cuts = {r.request_id: cut for r in requests if (cut := json.loads(r.sampling_json).get("cut_at"))}
    unbuilt: list[Failure] = []  # a chat template that raised for this request: recorded, not sent
    for request in sorted(requests, key=lambda r: r.model):
        entry = spec.model_entry(request.model)
        backend = model_backend(spec, entry)
        group = (id(backend), "" if entry.backend == "openai" else entry.id)
        try:
            call = to_llm_request(request, instructions[request.instruction_id], entry.served_name, recipes[entry.id])
        except ChatTemplateError as exc:
            unbuilt.append(unbuilt_failure(request, exc))
            continue
        batches.setdefault(group, (backend, []))[1].append(call)
    report.issued = len(requests) - len(unbuilt)
    results = results or store.results(STAGE, Completion, key="request_id")
    failures = failures or failure_log(store, STAGE)
    lock = threading.Lock()
    journal = Journal(journal_root(store), STAGE, shard_label(shard))
    replay = journal.replay()
    budget = budget_for(store)  # execution.max_cost_usd (infra/budget.py)
    sessions: list[tuple[Any, int]] = []  # Batch API endpoints (infra/llm/batch.py) and their calls
    with Checkpointer(results, failures, every=spec.execution.checkpoint_every, label=shard_label(shard)) as checkpoint:
        for failure in unbuilt:
            checkpoint.fail(failure)
            report.failed[failure.reason] += 1

        def on_result(result: LLMResult, backend_name: str) -> None:
            original = originals[result.key]
            template = original.prompt_template or recipes[original.model].identity
            result, row = settle(original, result, cuts.get(result.key), backend_name, template)
            if isinstance(row, Completion):
                checkpoint.add(row)
            else:
                checkpoint.fail(row)
            with lock:
                report.add_tokens(original.model, result.input_tokens, result.output_tokens)
                if result.ok:
                    report.succeeded += 1
                else:
                    report.failed[result.reason or "error"] += 1
            if on_progress is not None:
                on_progress(1)

        def run_batch(backend: Any, calls: list[LLMRequest]) -> None:
            try:
                session = session_for(backend, store, STAGE, shard_label(shard))
                sessions.append((session, len(calls)))
                deliver = lambda result: on_result(result, backend.name)  # noqa: E731
                replayed = run_calls(backend, calls, deliver, journal, replay, session, budget)
            except Stopped as exc:  # the run stops: what arrived is checkpointed, the rest is not sent
                with lock:
                    report.stopped_by(exc)
                return
            with lock:
                report.replayed += replayed

        local = [batch for (_, model), batch in batches.items() if model]
        remote = [batch for (_, model), batch in batches.items() if not model]
        for batch in local:  # one model on the local device at a time
            run_batch(*batch)
        if len(remote) == 1:
            run_batch(*remote[0])
        elif remote:  # several endpoints: each blocks its own thread, all at once
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=len(batches), thread_name_prefix=f"generate-{shard}") as pool:
                for future in [pool.submit(run_batch, *batch) for batch in remote]:
                    future.result()
    if not report.stopped:  # (a stop may have left answers that arrived after their request was abandoned)
        journal.discard()  # every answer is in a checkpointed part now
    for session, sent in sessions:
        if session is not None:
            session.close()
            report.add_batches(session)
            report.issued -= sent - session.submitted  # answered by earlier batches
    report.issued -= report.replayed  # calls made by this run
    report.seconds = time.monotonic() - started
    return report

"""Run one shard's judge calls, checkpointing as results arrive.

Raw judge text is stored before anything else is derived from it, so a parser fix never needs a
paid call again. Unparseable output is re-queried up to ``judge.parse_retries`` times; what still
fails is recorded as a failure with the parse reason.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict, deque
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
from ultrafeedback.records import (
    AspectAnnotation,
    Critique,
    Failure,
)
from ultrafeedback.spec import Spec
from ultrafeedback.tasks.annotate.jobs import ANNOTATIONS, CRITIQUES, AspectJob, CritiqueJob, judge_kind, judge_model_id
from ultrafeedback.tasks.generate.generate import failure_from, shard_label
from ultrafeedback.tasks.stages import ShardReport


def _aspect_row(spec: Spec, job: AspectJob, raw: str, parsed: Any, tokens: tuple[int, int]) -> AspectAnnotation:
    """The stored answer, with the ratings just parsed from it (the score join then need not parse
    it again while the parser is unchanged)."""
    from ultrafeedback.tasks.annotate.parse import items_json, parser_version

    return AspectAnnotation(
        annotation_key=job.key,
        instruction_id=job.instruction.id,
        aspect=job.aspect,
        completion_ids=job.completion_ids,
        raw=raw,
        judge_model=judge_model_id(spec),
        judge_kind=judge_kind(spec),  # type: ignore[arg-type]
        input_tokens=tokens[0],
        output_tokens=tokens[1],
        parsed=items_json(parsed.items),
        parser_version=parser_version(),
    )


def _critique_row(spec: Spec, job: CritiqueJob, raw: str, parsed: Any, tokens: tuple[int, int]) -> Critique:
    return Critique(
        critique_key=job.key,
        completion_id=job.request.request_id,
        instruction_id=job.instruction.id,
        raw=raw,
        critique=parsed.critique,
        overall_score=parsed.overall_score,
        judge_model=judge_model_id(spec),
        judge_kind=judge_kind(spec),  # type: ignore[arg-type]
        input_tokens=tokens[0],
        output_tokens=tokens[1],
    )


class JudgeCircuitOpen(RuntimeError):
    """The judge's answers fail to parse systematically: the stage stops instead of paying for more."""


class ParseBreaker:
    """The annotate stage's circuit breaker over the judge's last ``window`` answers (shared by the
    shards of a run): more than ``max_rate`` of them unparseable opens it, and every shard stops."""

    def __init__(self, max_rate: float, window: int) -> None:
        self.max_rate = max_rate
        self.window = window
        self._outcomes: deque[str | None] = deque(maxlen=window)  # a parse reason, or None when parsed
        self._lock = threading.Lock()
        self.opened: str | None = None

    def record(self, reason: str | None) -> None:
        """One answer's outcome; raises ``JudgeCircuitOpen`` once the breaker is open."""
        with self._lock:
            if self.opened is None:
                self._outcomes.append(reason)
                failed = [r for r in self._outcomes if r is not None]
                if len(self._outcomes) == self.window and len(failed) > self.max_rate * self.window:
                    top = ", ".join(f"{r} {n}" for r, n in Counter(failed).most_common(3))
                    self.opened = (
                        f"annotate stopped: {len(failed)} of the judge's last {self.window} answers could not be "
                        f"parsed (more than gates.max_parse_failure_rate={self.max_rate:g}; {top}). The judge model "
                        "or its prompt does not produce the expected format: check a raw answer with `ultrafeedback "
                        "status SPEC`, fix the judge, then run again (answers already stored are kept)"
                    )
            if self.opened is not None:
                raise JudgeCircuitOpen(self.opened)


def annotate_shard(
    spec: Spec,
    store: Store,
    shard: int,
    aspect_jobs: Sequence[AspectJob],
    critique_jobs: Sequence[CritiqueJob],
    on_progress: Callable[[int], None] | None = None,
    logs: dict[str, ResultLog] | None = None,
    breaker: ParseBreaker | None = None,
) -> ShardReport:
    """Run the planned judge calls of one shard, checkpointing as results arrive.

    ``logs`` are the run's shared result and failure logs by name (``annotations``,
    ``failures/annotations``, ``critiques``, ``failures/critiques``); by default the store's.
    ``breaker`` (shared by a run's shards; by default one for this shard) stops the stage when the
    judge's answers fail to parse systematically."""
    from ultrafeedback.tasks.annotate.parse import parse_aspect, parse_critique

    started = time.monotonic()
    report = ShardReport(stage=ANNOTATIONS, shard=shard)
    label = shard_label(shard)
    every = spec.execution.checkpoint_every
    logs = logs or {}
    aspects = Checkpointer(
        logs.get(ANNOTATIONS) or store.results(ANNOTATIONS, AspectAnnotation, key="annotation_key"),
        logs.get(f"failures/{ANNOTATIONS}") or failure_log(store, ANNOTATIONS),
        every=every,
        label=label,
    )
    critiques = Checkpointer(
        logs.get(CRITIQUES) or store.results(CRITIQUES, Critique, key="critique_key"),
        logs.get(f"failures/{CRITIQUES}") or failure_log(store, CRITIQUES),
        every=every,
        label=label,
    )

    def parse(job: AspectJob | CritiqueJob, raw: str) -> Any:
        if isinstance(job, AspectJob):
            return parse_aspect(job.aspect, raw, len(job.texts))
        return parse_critique(raw)

    def accept(job: AspectJob | CritiqueJob, raw: str, parsed: Any, tokens: tuple[int, int]) -> None:
        if isinstance(job, AspectJob):
            aspects.add(_aspect_row(spec, job, raw, parsed, tokens))
        else:
            critiques.add(_critique_row(spec, job, raw, parsed, tokens))
        report.succeeded += 1
        if on_progress is not None:
            on_progress(1)

    def reject(job: AspectJob | CritiqueJob, failure: Failure) -> None:
        (aspects if isinstance(job, AspectJob) else critiques).fail(failure)
        report.failed[failure.reason] += 1
        if on_progress is not None:
            on_progress(1)

    jobs: list[AspectJob | CritiqueJob] = [*aspect_jobs, *critique_jobs]
    report.issued = len(jobs)
    journal = session = None
    with aspects, critiques:
        if spec.judge.backend == "heuristic":
            _run_heuristic(jobs, parse, accept, reject, shard)
        else:
            journal = Journal(journal_root(store), ANNOTATIONS, label)
            gates = spec.gates
            breaker = breaker or ParseBreaker(gates.max_parse_failure_rate, gates.parse_failure_window)
            from ultrafeedback.infra.llm.factory import judge_backend

            backend = judge_backend(spec)
            session = session_for(backend, store, ANNOTATIONS, label)  # Batch API endpoints
            budget = budget_for(store)
            _run_model(spec, jobs, parse, accept, reject, shard, report, journal, breaker, session, budget, backend)
    if journal is not None and not report.stopped:
        journal.discard()  # every answer is in a checkpointed part now
    report.issued -= report.replayed  # calls made by this run
    if session is not None:
        session.close()
        report.issued = session.submitted
        report.add_batches(session)
    report.seconds = time.monotonic() - started
    return report


def _run_heuristic(jobs, parse, accept, reject, shard: int) -> None:  # noqa: ANN001
    from ultrafeedback.infra.llm import heuristic

    for job in jobs:
        if isinstance(job, AspectJob):
            raw = heuristic.rate(job.aspect, job.instruction.instruction, job.texts, job.world_knowledge)
        else:
            raw = heuristic.critique(job.instruction.instruction, job.response, note=job.request.system_prompt)
        parsed = parse(job, raw)
        if parsed.ok:
            accept(job, raw, parsed, (0, 0))
        else:  # a rule bug, recorded like any other failure
            reject(job, _parse_failure(job, shard, parsed, raw, 1))


def _parse_failure(job: AspectJob | CritiqueJob, shard: int, parsed: Any, raw: str, attempts: int) -> Failure:
    stage = ANNOTATIONS if isinstance(job, AspectJob) else CRITIQUES
    return Failure(
        stage=stage,
        key=job.key,
        shard=shard,
        reason=f"parse_{parsed.reason}",
        error=f"{parsed.detail} | raw: {raw[:1500]}",
        attempts=attempts,
        at=time.time(),
    )


def _model_request(spec: Spec, job: AspectJob | CritiqueJob) -> LLMRequest:
    from ultrafeedback.tasks.annotate.prompts import aspect_messages, critique_messages

    if isinstance(job, AspectJob):
        messages = aspect_messages(job.aspect, job.instruction.instruction, job.texts, job.world_knowledge)
        sampling = spec.judge.sampling
    else:
        messages = critique_messages(
            job.instruction.instruction, job.response, job.request.principle, job.request.system_prompt
        )
        sampling = spec.judge.critique_sampling
    return LLMRequest(
        key=job.key,
        model=judge_model_id(spec),
        messages=messages,
        sampling={k: v for k, v in sampling.model_dump().items() if v is not None},
    )


def _run_model(  # noqa: ANN001
    spec: Spec, jobs, parse, accept, reject, shard: int, report: ShardReport, journal: Journal, breaker: ParseBreaker,
    session: Any = None, budget: Any = None, backend: Any = None,
) -> None:
    from ultrafeedback.infra.llm.factory import judge_backend

    backend = backend or judge_backend(spec)
    replay = journal.replay()
    pending = {job.key: job for job in jobs}
    attempts: dict[str, int] = defaultdict(int)
    for round_number in range(spec.judge.parse_retries + 1):
        if not pending:
            break
        last_round = round_number == spec.judge.parse_retries
        retry: dict[str, AspectJob | CritiqueJob] = {}

        def on_result(
            result: LLMResult, retry: dict = retry, last_round: bool = last_round, pending: dict = pending
        ) -> None:
            job = pending[result.key]
            attempts[job.key] += result.attempts
            if not result.replayed:  # (counted when this process first took it from its batch)
                report.add_tokens(judge_model_id(spec), result.input_tokens, result.output_tokens)
            if not result.ok:
                reject(job, failure_from(ANNOTATIONS if isinstance(job, AspectJob) else CRITIQUES, shard, result))
                return
            raw = result.text or ""
            parsed = parse(job, raw)
            if not result.replayed:  # (a Batch API answer taken again by a later pass was counted then)
                breaker.record(None if parsed.ok else f"parse_{parsed.reason}")
            if parsed.ok:
                accept(job, raw, parsed, (result.input_tokens, result.output_tokens))
            elif last_round:
                reject(job, _parse_failure(job, shard, parsed, raw, attempts[job.key]))
            else:
                retry[job.key] = job

        calls = [_model_request(spec, job) for job in pending.values()]
        try:
            report.replayed += run_calls(backend, calls, on_result, journal, replay, session, budget)
        except Stopped as exc:  # the run stops: what arrived is checkpointed, nothing more is asked
            report.stopped_by(exc)
            return
        if retry:
            report.issued += len(retry)
        pending = retry

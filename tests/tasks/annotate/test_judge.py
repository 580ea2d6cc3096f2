"""annotate_shard against the simulator (parse re-asks, parse and HTTP failures, raw text kept
verbatim) and with the heuristic judge; plan_shard_jobs / plan_jobs planned from keys alone."""

from __future__ import annotations

from typing import Any

import pytest

from tests.tasks.annotate.shard_inputs import KEY_ENV, SHARD, ShardInputs, make_spec, shard_inputs
from ultrafeedback.infra.checkpoint import failure_log
from ultrafeedback.infra.llm import factory, heuristic
from ultrafeedback.infra.llm.base import LLMResult
from ultrafeedback.infra.llm.limiter import reset_limiters
from ultrafeedback.infra.simulator import Simulator, SimulatorConfig
from ultrafeedback.infra.store import ResultLog, Store
from ultrafeedback.keys import text_hash
from ultrafeedback.records import AspectAnnotation, Critique, Instruction
from ultrafeedback.spec import Spec
from ultrafeedback.tasks.annotate.jobs import (
    ANNOTATIONS,
    CRITIQUES,
    AspectJob,
    CritiqueJob,
    aspect_key,
    aspect_keys,
    critique_key_for,
    plan_jobs,
    plan_shard_jobs,
)
from ultrafeedback.tasks.annotate.judge import JudgeCircuitOpen, ParseBreaker, annotate_shard
from ultrafeedback.tasks.annotate.parse import items_json, parse_aspect, parse_critique, parser_version
from ultrafeedback.tasks.annotate.prompts import world_knowledge

JOBS = 8  # 2 instructions x (2 aspects + 2 critiques)


def hashes(inputs: ShardInputs) -> dict[str, str]:
    """Completion id -> the hash of its response (what planning reads from the hash column)."""
    return {i: c.response_hash for i, c in inputs.completions.items()}


def expected_jobs(spec: Spec, inputs: ShardInputs) -> tuple[list[AspectJob], list[CritiqueJob]]:
    """Every judge call of the inputs, built from the keys by hand (nothing stored)."""
    aspect_jobs, critique_jobs = [], []
    for iid, instruction in inputs.instructions.items():
        available = inputs.available(iid)
        for aspect, (key, ids) in aspect_keys(spec, iid, available, hashes(inputs)).items():
            knowledge = None
            if aspect == "truthfulness":
                knowledge = world_knowledge("answers", instruction.correct_answers, instruction.incorrect_answers)
            texts = [inputs.completions[i].response for i in ids]
            aspect_jobs.append(AspectJob(key, instruction, aspect, ids, texts, knowledge))
        for request in available:
            key = critique_key_for(spec, request.request_id, hashes(inputs)[request.request_id])
            critique_jobs.append(
                CritiqueJob(key, instruction, request, inputs.completions[request.request_id].response)
            )
    return aspect_jobs, critique_jobs


def by_key(jobs):
    return sorted(jobs, key=lambda job: job.key)


class RecordingJudge:
    """The real judge backend, keeping what each round sent and every result it gave back."""

    def __init__(self, real) -> None:
        self.real = real
        self.rounds: list[list[str]] = []
        self.results: list[LLMResult] = []

    def run(self, requests, on_result) -> None:
        self.rounds.append(sorted(r.key for r in requests))

        def record(result: LLMResult) -> None:
            self.results.append(result)
            on_result(result)

        self.real.run(requests, record)

    def last_text(self) -> dict[str, str]:
        return {r.key: r.text for r in self.results}

    def close(self) -> None:
        self.real.close()


@pytest.fixture(autouse=True)
def simulated_key(monkeypatch):
    """Each test's simulator has its own port, hence its own cached backend; retire it after."""
    monkeypatch.setenv(KEY_ENV, "simulated")
    yield
    factory.close_all()
    reset_limiters()


@pytest.fixture
def judge(monkeypatch) -> list[RecordingJudge]:
    """The judge backends annotate_shard asks the factory for (one per call of annotate_shard)."""
    made: list[RecordingJudge] = []
    real = factory.judge_backend

    def recording(spec: Spec) -> RecordingJudge:
        made.append(RecordingJudge(real(spec)))
        return made[-1]

    monkeypatch.setattr(factory, "judge_backend", recording)
    return made


def logs(store: Store) -> dict[str, ResultLog]:
    return {
        ANNOTATIONS: store.results(ANNOTATIONS, AspectAnnotation, key="annotation_key"),
        CRITIQUES: store.results(CRITIQUES, Critique, key="critique_key"),
        f"failures/{ANNOTATIONS}": failure_log(store, ANNOTATIONS),
        f"failures/{CRITIQUES}": failure_log(store, CRITIQUES),
    }


def run_shard(tmp_path, sim_config: SimulatorConfig | None, **judge: Any):
    """annotate_shard over every job of the inputs; returns (spec, store, jobs, report, progress, sim stats)."""
    progress: list[int] = []
    if sim_config is None:
        spec = make_spec(tmp_path, model_judge=False, **judge)
        jobs = expected_jobs(spec, shard_inputs())
        report = annotate_shard(spec, Store(spec.store, spec.name), SHARD, *jobs, on_progress=progress.append)
        return spec, Store(spec.store, spec.name), jobs, report, progress, None
    with Simulator(sim_config) as sim:
        spec = make_spec(tmp_path, sim.url, **judge)
        jobs = expected_jobs(spec, shard_inputs())
        report = annotate_shard(spec, Store(spec.store, spec.name), SHARD, *jobs, on_progress=progress.append)
        stats = sim.stats()
    return spec, Store(spec.store, spec.name), jobs, report, progress, stats


def all_keys(jobs: tuple[list[AspectJob], list[CritiqueJob]]) -> list[str]:
    return sorted(job.key for job in [*jobs[0], *jobs[1]])


# ----------------------------------------------------------------------------- annotate_shard
def test_an_unparseable_answer_is_asked_again_and_every_job_is_stored(tmp_path, judge):
    config = SimulatorConfig(rate_unparseable=1.0, max_faults_per_body=1)  # broken once, then good
    spec, store, jobs, report, progress, stats = run_shard(tmp_path, config, parse_retries=3)
    stored = logs(store)
    assert stored[ANNOTATIONS].keys() == {job.key for job in jobs[0]}
    assert stored[CRITIQUES].keys() == {job.key for job in jobs[1]}
    assert stored[f"failures/{ANNOTATIONS}"].keys() == set() and stored[f"failures/{CRITIQUES}"].keys() == set()
    assert (report.issued, report.succeeded, dict(report.failed)) == (2 * JOBS, JOBS, {})
    assert judge[0].rounds == [all_keys(jobs), all_keys(jobs)]
    assert stats["faults"] == {"unparseable": JOBS} and stats["total"] == 2 * JOBS
    assert sum(progress) == JOBS  # one tick per job, not per call


def test_with_no_parse_retries_an_unparseable_answer_is_a_parse_failure(tmp_path, judge):
    config = SimulatorConfig(rate_unparseable=1.0, max_faults_per_body=1)
    spec, store, jobs, report, progress, stats = run_shard(tmp_path, config, parse_retries=0)
    stored = logs(store)
    assert stored[ANNOTATIONS].keys() == set() and stored[CRITIQUES].keys() == set()
    failures = stored[f"failures/{ANNOTATIONS}"].rows() + stored[f"failures/{CRITIQUES}"].rows()
    assert sorted(f["key"] for f in failures) == all_keys(jobs)
    texts = judge[0].last_text()
    for failure in failures:
        assert failure["reason"].startswith("parse_") and failure["attempts"] == 1 and failure["shard"] == SHARD
        assert failure["error"].endswith(f" | raw: {texts[failure['key']][:1500]}")
    assert {f["stage"] for f in failures} == {ANNOTATIONS, CRITIQUES}
    assert report.issued == JOBS and report.succeeded == 0 and sum(report.failed.values()) == JOBS
    assert all(reason.startswith("parse_") for reason in report.failed)
    assert stats["total"] == JOBS


def test_a_unit_still_unparseable_after_its_re_asks_fails_with_the_last_answer(tmp_path, judge):
    config = SimulatorConfig(rate_unparseable=1.0)  # every answer is broken
    spec, store, jobs, report, progress, stats = run_shard(tmp_path, config, parse_retries=1)
    failures = logs(store)[f"failures/{ANNOTATIONS}"].rows() + logs(store)[f"failures/{CRITIQUES}"].rows()
    texts = judge[0].last_text()  # the second round's answers
    assert sorted(f["key"] for f in failures) == all_keys(jobs)
    for failure in failures:
        assert failure["attempts"] == 2 and failure["error"].endswith(f" | raw: {texts[failure['key']][:1500]}")
    assert report.issued == 2 * JOBS and stats["total"] == 2 * JOBS


def test_http_failures_after_the_retries_are_recorded_with_their_status(tmp_path, judge):
    spec, store, jobs, report, progress, stats = run_shard(tmp_path, SimulatorConfig(), model="force-500")
    stored = logs(store)
    assert stored[ANNOTATIONS].keys() == set() and stored[CRITIQUES].keys() == set()
    failures = stored[f"failures/{ANNOTATIONS}"].rows() + stored[f"failures/{CRITIQUES}"].rows()
    assert sorted(f["key"] for f in failures) == all_keys(jobs)
    for failure in failures:
        assert failure["reason"] == "http_500" and failure["attempts"] == 2  # max_retries 1
        assert "HTTP 500" in failure["error"]
    assert dict(report.failed) == {"http_500": JOBS} and report.issued == JOBS  # no parse re-ask
    assert stats["total"] == 2 * JOBS and sum(progress) == JOBS


def test_the_judge_text_is_stored_verbatim(tmp_path, judge):
    spec, store, jobs, report, progress, stats = run_shard(tmp_path, SimulatorConfig(seed=3))
    results = {r.key: r for r in judge[0].results}
    annotations = {row["annotation_key"]: row for row in logs(store)[ANNOTATIONS].rows()}
    for job in jobs[0]:
        row, result = annotations[job.key], results[job.key]
        assert row["raw"] == result.text and parse_aspect(job.aspect, row["raw"], 2).ok
        assert (row["instruction_id"], row["aspect"]) == (job.instruction.id, job.aspect)
        assert row["completion_ids"] == job.completion_ids
        assert (row["judge_model"], row["judge_kind"]) == ("sim-judge", "model")
        assert (row["input_tokens"], row["output_tokens"]) == (result.input_tokens, result.output_tokens)
        # the ratings parsed from it, stored with it for the score join
        assert (row["parsed"], row["parser_version"]) == (
            items_json(parse_aspect(job.aspect, row["raw"], 2).items),
            parser_version(),
        )
    critiques = {row["critique_key"]: row for row in logs(store)[CRITIQUES].rows()}
    assert set(critiques) == {job.key for job in jobs[1]}
    for key, row in critiques.items():
        assert row["raw"] == results[key].text
        assert row["overall_score"] == parse_critique(row["raw"]).overall_score and row["judge_kind"] == "model"
    in_tokens = sum(r.input_tokens for r in results.values())
    out_tokens = sum(r.output_tokens for r in results.values())
    assert report.tokens == {"sim-judge": [in_tokens, out_tokens]}
    parts = logs(store)[ANNOTATIONS].parts() + logs(store)[CRITIQUES].parts()
    assert {ResultLog.label_of(p) for p in parts} == {f"s{SHARD:05d}"}


def test_the_heuristic_judge_stores_rows_marked_heuristic(tmp_path, monkeypatch):
    def no_backend(spec):
        raise AssertionError("the heuristic judge must not build an LLM backend")

    monkeypatch.setattr(factory, "judge_backend", no_backend)
    spec, store, jobs, report, progress, stats = run_shard(tmp_path, None)
    annotations = {row["annotation_key"]: row for row in logs(store)[ANNOTATIONS].rows()}
    critiques = {row["critique_key"]: row for row in logs(store)[CRITIQUES].rows()}
    assert set(annotations) == {job.key for job in jobs[0]} and set(critiques) == {job.key for job in jobs[1]}
    for job in jobs[0]:
        row = annotations[job.key]
        assert row["raw"] == heuristic.rate(job.aspect, job.instruction.instruction, job.texts, job.world_knowledge)
        assert (row["judge_kind"], row["judge_model"]) == ("heuristic", heuristic.HEURISTIC_JUDGE_ID)
    assert {row["judge_kind"] for row in critiques.values()} == {"heuristic"}
    assert (report.issued, report.succeeded, dict(report.failed), report.tokens) == (JOBS, JOBS, {}, {})


# ----------------------------------------------------------------------------- planning
def loaders(inputs: ShardInputs):
    """load_instructions / load_texts callbacks that record their calls."""
    calls: dict[str, list[Any]] = {"instructions": [], "texts": []}

    def load_instructions() -> dict[str, Instruction]:
        calls["instructions"].append(True)
        return inputs.instructions

    def load_texts(ids: list[str]) -> dict[str, str]:
        calls["texts"].append(list(ids))
        return {i: inputs.completions[i].response for i in ids}

    return calls, load_instructions, load_texts


def plan(spec: Spec, inputs: ShardInputs, done_annotations=(), done_critiques=()):
    calls, load_instructions, load_texts = loaders(inputs)
    jobs = plan_shard_jobs(
        spec, inputs.requests, hashes(inputs), set(done_annotations), set(done_critiques),
        load_instructions, load_texts,
    )  # fmt: skip
    return jobs, calls


def test_with_nothing_stored_every_job_is_planned(tmp_path):
    spec = make_spec(tmp_path)
    inputs = shard_inputs()
    (aspect_jobs, critique_jobs), calls = plan(spec, inputs)
    expected_aspects, expected_critiques = expected_jobs(spec, inputs)
    assert by_key(aspect_jobs) == by_key(expected_aspects) and by_key(critique_jobs) == by_key(expected_critiques)
    truthful_i0 = next(j for j in aspect_jobs if j.instruction.id == "i0" and j.aspect == "truthfulness")
    assert "No, it is too narrow to see from orbit" in truthful_i0.world_knowledge
    assert calls == {"instructions": [True], "texts": [["i0-0", "i0-1", "i1-0", "i1-1"]]}


def test_stored_keys_are_skipped(tmp_path):
    spec = make_spec(tmp_path)
    inputs = shard_inputs()
    aspects, critiques = expected_jobs(spec, inputs)
    (aspect_jobs, critique_jobs), _ = plan(spec, inputs, [aspects[0].key, aspects[3].key], [critiques[1].key])
    assert by_key(aspect_jobs) == by_key([aspects[1], aspects[2]])
    assert by_key(critique_jobs) == by_key([critiques[0], critiques[2], critiques[3]])


def test_when_nothing_is_pending_nothing_is_loaded(tmp_path):
    spec = make_spec(tmp_path)
    inputs = shard_inputs()
    aspects, critiques = expected_jobs(spec, inputs)
    jobs, calls = plan(spec, inputs, [j.key for j in aspects], [j.key for j in critiques])
    assert jobs == ([], []) and calls == {"instructions": [], "texts": []}


def test_only_the_texts_the_pending_jobs_show_are_loaded(tmp_path):
    spec = make_spec(tmp_path)
    inputs = shard_inputs()
    aspects, critiques = expected_jobs(spec, inputs)
    i1_critique = next(j for j in critiques if j.request.request_id == "i1-0")
    _, calls = plan(spec, inputs, [j.key for j in aspects], [j.key for j in critiques if j is not i1_critique])
    assert calls["texts"] == [["i1-0"]]
    i0_honesty = next(j for j in aspects if j.instruction.id == "i0" and j.aspect == "honesty")
    _, calls = plan(spec, inputs, [j.key for j in aspects if j is not i0_honesty], [j.key for j in critiques])
    assert calls["texts"] == [["i0-0", "i0-1"]]


def test_requests_without_a_completion_are_not_judged(tmp_path):
    spec = make_spec(tmp_path)
    inputs = shard_inputs()
    del inputs.completions["i0-1"]
    (aspect_jobs, critique_jobs), calls = plan(spec, inputs)
    i0_aspects = [j for j in aspect_jobs if j.instruction.id == "i0"]
    assert [j.completion_ids for j in i0_aspects] == [["i0-0"], ["i0-0"]]
    keyed = aspect_keys(spec, "i0", inputs.available("i0"), hashes(inputs))
    assert {j.key for j in i0_aspects} == {key for key, _ in keyed.values()}
    assert sorted(j.request.request_id for j in critique_jobs) == ["i0-0", "i1-0", "i1-1"]
    assert "i0-1" not in calls["texts"][0]


def test_a_text_rewritten_after_planning_is_keyed_by_the_text_shown(tmp_path):
    """The hash column said one text, the loaded text is another (rewritten meanwhile): the jobs
    that show it carry the key of what they show, never the planned one."""
    spec = make_spec(tmp_path)
    inputs = shard_inputs()
    planned_aspects, planned_critiques = expected_jobs(spec, inputs)
    calls, load_instructions, load_texts = loaders(inputs)

    def rewritten(ids: list[str]) -> dict[str, str]:
        texts = load_texts(ids)
        return {i: text + " (rewritten)" if i == "i0-1" else text for i, text in texts.items()}

    aspect_jobs, critique_jobs = plan_shard_jobs(
        spec, inputs.requests, hashes(inputs), set(), set(), load_instructions, rewritten
    )
    for job in aspect_jobs:
        shown = {i: text_hash(t) for i, t in zip(job.completion_ids, job.texts, strict=True)}
        assert job.key == aspect_key(spec, job.aspect, job.completion_ids, shown)
        assert (job.key in {j.key for j in planned_aspects}) == ("i0-1" not in job.completion_ids)
    for job in critique_jobs:
        assert job.key == critique_key_for(spec, job.request.request_id, text_hash(job.response))
        assert (job.key in {j.key for j in planned_critiques}) == (job.request.request_id != "i0-1")


def test_plan_jobs_gives_the_jobs_of_plan_shard_jobs(tmp_path):
    spec = make_spec(tmp_path)
    inputs = shard_inputs()
    aspects, critiques = expected_jobs(spec, inputs)
    done_a, done_c = {aspects[1].key}, {critiques[2].key}
    planned = plan_jobs(spec, inputs.requests, inputs.instructions, inputs.completions, done_a, done_c)
    assert planned == plan(spec, inputs, done_a, done_c)[0]
    assert len(planned[0]) == len(aspects) - 1 and len(planned[1]) == len(critiques) - 1


# ----------------------------------------------------------------------------- the circuit breaker
def test_the_breaker_opens_when_the_window_holds_too_many_parse_failures():
    breaker = ParseBreaker(max_rate=0.5, window=4)
    for outcome in (None, "parse_no_rating", None):
        breaker.record(outcome)
    breaker.record("parse_no_rating")  # 2 of 4: not more than half
    with pytest.raises(JudgeCircuitOpen, match=r"3 of the judge's last 4 answers could not be parsed"):
        breaker.record("parse_block_count")
    with pytest.raises(JudgeCircuitOpen, match="parse_no_rating 2, parse_block_count 1"):
        breaker.record(None)  # once open it stays open, for every shard sharing it


def test_a_judge_that_fails_systematically_stops_the_shard_and_keeps_what_was_stored(tmp_path, judge):
    with Simulator(SimulatorConfig(rate_unparseable=1.0)) as sim:
        spec = make_spec(tmp_path, sim.url, parse_retries=3)
        spec = Spec.model_validate({**spec.model_dump(), "gates": {"parse_failure_window": 4}})
        jobs = expected_jobs(spec, shard_inputs())
        with pytest.raises(JudgeCircuitOpen, match="gates.max_parse_failure_rate=0.5"):
            annotate_shard(spec, Store(spec.store, spec.name), SHARD, *jobs)
        sent = sim.stats()["total"]
    assert sent < JOBS * (spec.judge.parse_retries + 1)  # it stopped instead of re-asking every unit 3 times


def test_parse_failed_lists_a_shard_s_keys_whose_latest_failure_is_a_parse_failure(tmp_path):
    from ultrafeedback.records import Failure
    from ultrafeedback.tasks.annotate.task import Either, parse_failed

    failures = failure_log(Store(str(tmp_path), "p"), ANNOTATIONS)

    def failure(key: str, reason: str, shard: int = SHARD) -> Failure:
        return Failure(stage=ANNOTATIONS, key=key, shard=shard, reason=reason, error="", attempts=1, at=0.0)

    failures.append([failure("a", "parse_no_rating"), failure("b", "http_500")], label="s00004")
    failures.append([failure("b", "parse_block_count"), failure("c", "parse_no_rating")], label="s00004")
    failures.append([failure("c", "http_429")], label="s00004")  # c's latest failure is not a parse failure
    failures.append([failure("d", "parse_no_rating", shard=5)], label="s00005")
    assert parse_failed(failures, "s00004") == {"a", "b"}
    assert parse_failed(failures, "s00009") == set()
    either = Either({"x"}, {"a"})
    assert "x" in either and "a" in either and "b" not in either

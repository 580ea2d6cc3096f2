"""``ultrafeedback estimate SPEC``: the calls, tokens and cost a build would make now.

It runs ingest and assign (free, deterministic, and reused by the next build), then counts, per
model and endpoint, the calls still missing from the store:

- generation: one call per request without a completion; its prompt tokens are those of the
  request as it would be sent (prompt format, system prompt), counted with the named tokenizer
  (``infra.llm.tokens``: ``o200k_base`` by default, message overhead included);
- judge: one call per (instruction, aspect) and one critique per completion that has no stored
  result. Their prompt tokens are the template's (counted once per aspect and number of texts, and
  per principle note), plus the instruction's, the world knowledge's and the texts': a stored
  completion's text as it is, a completion still to be generated as its model's expected output;
- output tokens: the mean of what earlier runs of this dataset observed (stored completions per
  model, stored ratings and critiques), else the call's ``max_tokens`` (an upper bound);
- cost: tokens times the model's price (``price`` of the model, ``judge.price``), times
  ``1 - batch_discount`` for endpoints with ``batch_api``.

Not counted: re-asks of unparseable judge answers and retries of failed calls.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from ultrafeedback.spec import Spec


@dataclass
class Line:
    stage: str
    model: str
    endpoint: str
    batch: bool
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    output_source: set[str] = field(default_factory=set)
    cost_usd: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["output_source"] = sorted(self.output_source)
        return data


@dataclass
class Estimate:
    tokenizer: str
    lines: list[Line]
    notes: list[str]

    @property
    def total(self) -> dict[str, float]:
        return {
            "calls": sum(line.calls for line in self.lines),
            "input_tokens": sum(line.input_tokens for line in self.lines),
            "output_tokens": sum(line.output_tokens for line in self.lines),
            "cost_usd": round(sum(line.cost_usd for line in self.lines), 4),
        }

    def render(self) -> str:
        head = f"{'stage':<9} {'model':<24} {'endpoint':<10} {'api':<6} {'calls':>8} {'input tok':>12} "
        head += f"{'output tok':>12} {'cost USD':>11}  output from"
        rows = [head]
        for line in self.lines:
            rows.append(
                f"{line.stage:<9} {line.model:<24} {line.endpoint:<10} {'batch' if line.batch else 'online':<6} "
                f"{line.calls:>8} {line.input_tokens:>12} {line.output_tokens:>12} {line.cost_usd:>11.4f}  "
                + ", ".join(sorted(line.output_source))
            )
        total = self.total
        rows.append(
            f"{'total':<9} {'':<24} {'':<10} {'':<6} {total['calls']:>8} {total['input_tokens']:>12} "
            f"{total['output_tokens']:>12} {total['cost_usd']:>11.4f}"
        )
        return "\n".join([f"prompt tokens counted with {self.tokenizer}", *rows, *self.notes])


def _mean(log: Any, group: str | None, column: str = "output_tokens") -> dict[str, float]:
    """Mean of ``column`` per value of ``group`` (or under "" for all rows) over a result log."""
    table = log.read([c for c in (group, column) if c])
    if table.num_rows == 0:
        return {}
    values = table.column(column).to_pylist()
    keys = table.column(group).to_pylist() if group else [""] * len(values)
    sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for key, value in zip(keys, values, strict=True):
        if value:
            sums[key][0] += value
            sums[key][1] += 1
    return {key: total / count for key, (total, count) in sums.items() if count}


def prepare(spec: Spec) -> Any:
    """Ingest and assign, as a build does (skipped when up to date); the run context."""
    import uuid

    from ultrafeedback.tasks.assign.task import ASSIGN, assign_done
    from ultrafeedback.tasks.ingest.task import INGEST
    from ultrafeedback.tasks.stages import Run

    run = Run.start(spec, f"estimate-{uuid.uuid4().hex[:8]}", [INGEST, ASSIGN])
    INGEST.run_shard(run, 0)
    for shard in run.shards():
        if not assign_done(run, shard):
            ASSIGN.run_shard(run, shard)
    return run


def estimate(spec: Spec, tokenizer: str | None = None, run: Any = None) -> Estimate:
    """The estimate of the calls a build of ``spec`` would make now (see the module doc)."""
    from ultrafeedback.infra.llm import tokens
    from ultrafeedback.tasks.annotate.jobs import critique_key_for, judge_model_id, plan_shard_jobs
    from ultrafeedback.tasks.annotate.prompts import aspect_messages, critique_messages
    from ultrafeedback.tasks.annotate.prompts import world_knowledge as knowledge_for
    from ultrafeedback.tasks.generate.generate import response_hashes, to_llm_request
    from ultrafeedback.tasks.stages import Run

    name = tokens.resolve(tokenizer)
    count = tokens.counter(name)
    run = run or prepare(spec)
    try:
        assert isinstance(run, Run)
        completions = run.store.log("completions")
        done = completions.index()
        gen_means = _mean(completions, "model")
        aspect_mean = _mean(run.store.log("annotations"), None).get("")
        critique_mean = _mean(run.store.log("critiques"), None).get("")
        annotations_done = run.store.log("annotations").index()
        critiques_done = run.store.log("critiques").index()
        lines: dict[tuple[str, str], Line] = {}

        def line(stage: str, model: str, endpoint: str | None) -> Line:
            point = spec.endpoints.get(endpoint) if endpoint else None
            key = (stage, model)
            if key not in lines:
                lines[key] = Line(stage, model, endpoint or "(local)", bool(point and point.batch_api))
            return lines[key]

        def gen_output(model: str, sampling_json: str) -> tuple[float, str]:
            if model in gen_means:
                return gen_means[model], "observed"
            return float(json.loads(sampling_json).get("max_tokens") or 0), "max_tokens"

        judge_on = spec.judge.backend == "openai"
        judge_id = judge_model_id(spec)
        aspect_out = (aspect_mean, "observed") if aspect_mean else (spec.judge.sampling.max_tokens or 0, "max_tokens")
        critique_out = (
            (critique_mean, "observed")
            if critique_mean
            else (spec.judge.critique_sampling.max_tokens or 0, "max_tokens")
        )
        templates: dict[Any, int] = {}

        def template(key: Any, messages: Any) -> int:
            if key not in templates:
                templates[key] = tokens.count_request(messages(), None, name)
            return templates[key]

        sources = {s.name: s for s in spec.sources}
        judge_calls = {"aspect": 0, "critique": 0}
        judge_in = 0.0
        for shard in run.shards():
            requests = run.requests(shard)
            if not requests:
                continue
            instructions = run.instructions(shard)
            by_instruction: dict[str, list[Any]] = defaultdict(list)
            for request in requests:
                by_instruction[request.instruction_id].append(request)
            expected: dict[str, float] = {}
            for request in requests:
                entry = spec.model_entry(request.model)
                out, source = gen_output(request.model, request.sampling_json)
                expected[request.request_id] = out
                if request.request_id in done:
                    continue
                call = to_llm_request(request, instructions[request.instruction_id], entry.served_name)
                target = line("generate", request.model, entry.endpoint if entry.backend == "openai" else None)
                target.calls += 1
                target.input_tokens += tokens.count_request(call.messages, call.prompt, name)
                target.output_tokens += round(out)
                target.output_source.add(source)
            if not judge_on:
                continue
            complete = {i for i, rs in by_instruction.items() if all(r.request_id in done for r in rs)}
            present_ids = [r.request_id for r in requests if r.request_id in done]
            hashes = response_hashes(completions, present_ids) if present_ids else {}
            texts: dict[str, str] = {}
            if present_ids:
                table = completions.read_keys(present_ids, ["request_id", "response"])
                texts = dict(
                    zip(table.column("request_id").to_pylist(), table.column("response").to_pylist(), strict=True)
                )
            # instructions whose completions all exist: the judge calls as planned from keys
            full = [r for r in requests if r.instruction_id in complete]
            aspect_jobs, critique_jobs = plan_shard_jobs(
                spec,
                full,
                {i: h for i, h in hashes.items() if i in {r.request_id for r in full}},
                annotations_done,
                critiques_done,
                lambda instructions=instructions: instructions,
                lambda ids, texts=texts: {i: texts[i] for i in ids},
            )
            for job in aspect_jobs:
                k = len(job.texts)
                judge_in += template(
                    ("aspect", job.aspect, k), lambda a=job.aspect, k=k: aspect_messages(a, "", [""] * k, None)
                )
                judge_in += count(job.instruction.instruction) + sum(count(t) for t in job.texts)
                if job.aspect == "truthfulness" and job.world_knowledge:
                    judge_in += count(job.world_knowledge)
            for job in critique_jobs:
                request = job.request
                judge_in += template(
                    ("critique", request.principle, request.system_prompt),
                    lambda r=request: critique_messages("", "", r.principle, r.system_prompt),
                )
                judge_in += count(job.instruction.instruction) + count(job.response)
            judge_calls["aspect"] += len(aspect_jobs)
            judge_calls["critique"] += len(critique_jobs)
            # instructions still being generated: every judge call, with the expected texts
            for instruction_id, group in by_instruction.items():
                if instruction_id in complete:
                    continue
                instruction = instructions[instruction_id]
                k = len(group)
                text_tokens = sum(
                    count(texts[r.request_id]) if r.request_id in texts else expected[r.request_id] for r in group
                )
                for aspect in spec.judge.aspects:
                    judge_in += template(
                        ("aspect", aspect, k), lambda a=aspect, k=k: aspect_messages(a, "", [""] * k, None)
                    )
                    judge_in += count(instruction.instruction) + text_tokens
                    if aspect == "truthfulness":
                        wk = knowledge_for(
                            sources[instruction.source].world_knowledge,
                            instruction.correct_answers,
                            instruction.incorrect_answers,
                        )
                        judge_in += count(wk) if wk else 0
                    judge_calls["aspect"] += 1
                if spec.judge.critique:
                    for r in group:
                        if (
                            r.request_id in hashes
                            and critique_key_for(spec, r.request_id, hashes[r.request_id]) in critiques_done
                        ):
                            continue
                        judge_in += template(
                            ("critique", r.principle, r.system_prompt),
                            lambda r=r: critique_messages("", "", r.principle, r.system_prompt),
                        )
                        judge_in += count(instruction.instruction)
                        judge_in += count(texts[r.request_id]) if r.request_id in texts else expected[r.request_id]
                        judge_calls["critique"] += 1
        if judge_on and sum(judge_calls.values()):
            target = line("judge", judge_id, spec.judge.endpoint)
            target.calls += sum(judge_calls.values())
            target.input_tokens += round(judge_in)
            judge_out = judge_calls["aspect"] * aspect_out[0] + judge_calls["critique"] * critique_out[0]
            target.output_tokens += round(judge_out)
            target.output_source |= {aspect_out[1], critique_out[1]}
    finally:
        Run.forget(run.run_id)
    prices = {m.id: m.price for m in spec.models}
    prices[judge_model_id(spec)] = spec.judge.price
    notes = []
    batched: dict[float, list[str]] = {}
    for item in lines.values():
        price = prices.get(item.model)
        factor = 1.0
        if item.batch:
            factor = 1.0 - spec.endpoints[item.endpoint].batch_discount
        if price is not None:
            cost = item.input_tokens / 1e6 * price.input_per_mtok + item.output_tokens / 1e6 * price.output_per_mtok
            item.cost_usd = round(cost * factor, 4)
        if item.batch:
            batched.setdefault(factor, []).append(item.model)
    for factor, models in batched.items():
        notes.append(f"Batch API price ({factor:g} x list): {', '.join(sorted(models))}")
    if name != (tokenizer or tokens.DEFAULT_TOKENIZER):
        notes.append(
            f"{tokenizer or tokens.DEFAULT_TOKENIZER} could not be loaded: approximated as 4 characters a token"
        )
    notes.append("not counted: re-asks of unparseable judge answers, retries of failed calls")
    return Estimate(name, sorted(lines.values(), key=lambda x: (x.stage != "generate", x.model)), notes)


def print_estimate(spec_path: str, overrides: list[str], tokenizer: str | None) -> int:
    """The CLI command: print the estimate; 0."""
    from ultrafeedback.spec import load_spec

    spec = load_spec(spec_path, overrides)
    result = estimate(spec, tokenizer)
    print(f"estimate for {spec.name} ({spec_path}): the calls a build would make now", file=sys.stderr)
    print(result.render())
    return 0

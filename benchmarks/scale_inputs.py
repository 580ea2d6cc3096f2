"""Synthetic source files for ``bench_scale.py``: the paper spec's 6 sources at any fraction.

Every record is built from a source-specific template, a topic, a detail, an audience and two
numbers. Record ``i`` takes the combination at position ``i * stride`` of a shuffled enumeration
(``stride`` coprime with the number of combinations), so no two records of a source repeat a
combination and neighbours differ in every slot. Two records that share all four words differ in
their numbers, and a changed word or number moves well over 10% of a ~100-character text's
character 5-grams, so the near-dedup stage (5-gram Jaccard >= 0.9) keeps practically all of them:
``python benchmarks/scale_inputs.py`` checks that with the project's own ``NearIndex``.

Deterministic: the same fraction writes the same files, byte for byte.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
PAPER_SPEC = ROOT / "deployments" / "specs" / "ultrafeedback.yaml"
MARGIN = 0.02
"""Records written beyond a source's quota, so the odd near duplicate never leaves it short."""

TOPICS = """rivers compilers bread volcanoes chess bees tides jazz glaciers maps lighthouses vaccines
sourdough satellites coral-reefs spreadsheets bicycles typhoons origami telescopes bonsai
hydropower mushrooms databases violins deserts solar-panels wolves haiku submarines tea
earthquakes knitting rockets penguins cryptography cathedrals wetlands elections bridges
fermentation tornadoes archery printing-presses octopuses marathons windmills pottery
quantum-dots libraries migration photosynthesis monsoons railways calligraphy beekeeping
firewalls mangroves recycling saffron auroras ballet canals asteroids olive-oil gearboxes
rainforests vinyl-records lichens pulleys sundials tariffs avalanches chocolate compasses
""".split()
DETAILS = """history costs risks myths maintenance safety economics chemistry design ethics
regulation folklore measurement geography efficiency failure-modes vocabulary statistics
trade-offs origins pricing logistics materials ecology accessibility standards energy-use
common-mistakes future tooling""".split()
AUDIENCES = """a-child a-teenager a-retiree a-nurse a-lawyer a-farmer a-chef a-pilot an-engineer
a-poet a-tourist a-student a-banker a-journalist a-carpenter a-diplomat a-librarian""".split()

TEMPLATES: dict[str, list[str]] = {
    "evol_instruct": [
        "Write a {n}-step plan that teaches {audience} the {detail} of {topic}, citing {m} sources.",
        "Rewrite this task for {audience}: explain the {detail} of {topic} in {n} words or fewer, with {m} examples.",
        "Design a quiz of {n} questions on {topic} and its {detail}; {audience} should score {m}% or more.",
        "Compose a dialogue of {n} turns in which {audience} learns about the {detail} of {topic} ({m} facts).",
        "Create a table with {n} rows comparing the {detail} of {topic}, then add {m} notes for {audience}.",
    ],
    "false_qa": [
        "Why did {topic} stop having {detail} in the year {n}, as {audience} told me {m} times?",
        "How many {detail} does a single {topic} produce every {n} hours according to {audience} ({m} of them)?",
        "Which of the {m} moons of {topic} controls its {detail}, as {audience} claimed in {n}?",
        "When will {topic} finish turning its {detail} into gold, after {n} years and {m} attempts by {audience}?",
    ],
    "flan": [
        "Premise: {audience} studied the {detail} of {topic} for {n} days. Hypothesis: it took {m} days. Entailed?",
        "Translate to French: {audience} wrote {n} pages about the {detail} of {topic} in {m} weeks.",
        "Is this review positive or negative? '{audience} found the {detail} of {topic} worth {n} of {m} stars.'",
        "Answer with one word: did {audience} read {n} books on the {detail} of {topic} before chapter {m}?",
        "Summarise in one sentence: {audience} lists {n} facts on the {detail} of {topic} across {m} pages.",
    ],
    "sharegpt": [
        "hey can you help me write an email to {audience} about the {detail} of {topic}? under {n} words, {m} bullets",
        "I need a python function that models the {detail} of {topic} for {n} inputs and {m} outputs, for {audience}",
        "give me {n} ideas for a blog post on {topic} and its {detail} that {audience} would read in {m} minutes",
        "what is the best way to explain the {detail} of {topic} to {audience}? I have {n} slides and {m} minutes",
    ],
    "truthful_qa": [
        "Is it true that the {detail} of {topic} doubled {n} times after {audience} counted {m} of them?",
        "What happens to the {detail} of {topic} if {audience} waits {n} days, then {m} more?",
        "Do experts agree that {topic} lost its {detail} in {n}, as {audience} said {m} times?",
    ],
    "ultrachat": [
        "Can you describe how the {detail} of {topic} changed over {n} years, for {audience}, in {m} paragraphs?",
        "What are {n} lesser-known facts about the {detail} of {topic} that {audience} could share in {m} minutes?",
        "How would {audience} budget for the {detail} of {topic} with {n} dollars over {m} months?",
        "Could you outline {n} ways the {detail} of {topic} affects daily life, in {m} short sections for {audience}?",
    ],
}
"""Per source: templates in the style of the paper's source (keys: ``deployments/specs/ultrafeedback.yaml``)."""


def _words(slug: str) -> str:
    return slug.replace("-", " ")


def _stride(space: int, salt: int) -> int:
    """A step coprime with ``space`` near ``space * 0.618``, so consecutive records scatter."""
    step = int(space * 0.6180339887) + salt
    while math.gcd(step, space) != 1:
        step += 1
    return step


def instruction_text(source: str, i: int) -> str:
    """The ``i``-th synthetic instruction of ``source`` (deterministic, unique within the source)."""
    templates = TEMPLATES[source]
    radix = (len(templates), len(TOPICS), len(DETAILS), len(AUDIENCES))
    space = math.prod(radix)
    code = (i * _stride(space, len(source)) + len(source) * 7919) % space
    slots = []
    for size in radix:
        code, slot = divmod(code, size)
        slots.append(slot)
    template, topic, detail, audience = slots
    n = 2 + (i * 37 + 11) % 97
    m = 3 + (i * 53 + 5) % 89
    return templates[template].format(
        topic=_words(TOPICS[topic]),
        detail=_words(DETAILS[detail]),
        audience=_words(AUDIENCES[audience]),
        n=n,
        m=m,
    )


def paper_sources(spec_path: Path = PAPER_SPEC) -> list[dict[str, Any]]:
    """The paper spec's source entries (name, fields, quota, ...), as written in the YAML."""
    return yaml.safe_load(spec_path.read_text())["sources"]


def scaled_quota(quota: int, fraction: float) -> int:
    return max(1, round(quota * fraction))


def _record(source: dict[str, Any], i: int) -> dict[str, Any]:
    name = source["name"]
    fields = source.get("fields") or {}
    text = instruction_text(name, i)
    record: dict[str, Any] = {fields.get("instruction", "instruction"): text}
    correct, incorrect = fields.get("correct_answers"), fields.get("incorrect_answers")
    if correct and incorrect:  # TruthfulQA-like: lists of correct and incorrect answers
        record[correct] = [f"No, the claim in question {i} is a misconception.", "There is no evidence for it."]
        record[incorrect] = [f"Yes, exactly as described in question {i}.", "Yes, it always happens."]
    elif correct:  # FLAN-like: one target answer
        record[correct] = ("yes", "no", "it is not possible to tell", "negative", "positive")[i % 5]
    return record


def records(source: dict[str, Any], count: int) -> Iterator[dict[str, Any]]:
    for i in range(count):
        yield _record(source, i)


def write_sources(folder: Path, fraction: float, spec_path: Path = PAPER_SPEC) -> list[dict[str, Any]]:
    """Write one JSONL file per paper source into ``folder``; return what to override per source.

    Each entry: ``name``, ``path`` (absolute), ``quota`` (scaled, at least 1) and ``records``
    written (the quota plus a small margin).
    """
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for source in paper_sources(spec_path):
        quota = scaled_quota(int(source["quota"]), fraction)
        count = quota + math.ceil(quota * MARGIN) + 2
        path = folder / f"{source['name']}.jsonl"
        with path.open("w", encoding="utf-8") as handle:
            for record in records(source, count):
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        written.append({"name": source["name"], "path": str(path), "quota": quota, "records": count})
    return written


def _project_prompts() -> Any:
    """The project's prompt builders (generation formats, judge and critique templates), or None.

    The floor's bodies should look like the pipeline's; if a refactor moved these modules, the
    floor falls back to plain bodies of a similar shape and says so.
    """
    sys.path.insert(0, str(ROOT))
    try:
        from ultrafeedback.tasks.annotate.prompts import aspect_messages, critique_messages
        from ultrafeedback.tasks.assign.principles import load_principles
        from ultrafeedback.tasks.generate.prompt_formats import build_prompt
    except Exception:  # noqa: BLE001 - any import problem means: use the fallback
        return None
    return aspect_messages, critique_messages, load_principles, build_prompt


def _answer_text(instruction: str, slot: int) -> str:
    """A completion-like text (20-120 words) for the judge bodies, via the simulator's generator."""
    try:
        from ultrafeedback.infra.simulator.content import generation_reply

        return generation_reply(instruction, "", 0, f"floor-{slot}", 1024)[0]
    except Exception:  # noqa: BLE001
        return " ".join([f"A plain answer about {instruction}"] * 4)


def floor_bodies(spec: dict[str, Any], pool: int = 256) -> tuple[dict[str, list[tuple[str, bytes]]], bool]:
    """Request bodies for the bare-client floor, shaped like the pipeline's.

    Returns ``({model name or "judge:aspect" / "judge:critique": [(api path, JSON body)]}, faithful)``;
    ``faithful`` is False when the project's prompt builders could not be imported. Each list has
    ``pool`` distinct bodies (the floor cycles through them).
    """
    prompts = _project_prompts()
    sampling = spec.get("sampling") or {}
    judge = spec.get("judge") or {}
    instructions = [instruction_text(name, i) for i in range(pool) for name in ("evol_instruct", "sharegpt")][:pool]
    systems = ["You are a helpful, respectful and honest assistant."]
    if prompts is not None:
        systems = [text for texts in prompts[2]().values() for text in texts] or systems
    out: dict[str, list[tuple[str, bytes]]] = {}

    def body(model: str, params: dict[str, Any], **payload: Any) -> bytes:
        data = {"model": model, **payload}
        data.update({k: v for k, v in params.items() if k in ("temperature", "top_p", "max_tokens") and v is not None})
        return json.dumps(data).encode()

    for entry in spec.get("models") or []:
        model = entry.get("model") or entry["id"]
        fmt = entry.get("prompt_format", "chat")
        params = {**sampling, **(entry.get("sampling") or {})}
        rows = []
        for i, instruction in enumerate(instructions):
            system = systems[i % len(systems)]
            if prompts is not None:
                built = prompts[3](fmt, instruction, system)
                if built.messages is not None:
                    rows.append(("chat/completions", body(model, params, messages=built.messages)))
                else:
                    rows.append(("completions", body(model, params, prompt=built.prompt, stop=built.stop or None)))
            elif fmt == "chat":
                messages = [{"role": "system", "content": system}, {"role": "user", "content": instruction}]
                rows.append(("chat/completions", body(model, params, messages=messages)))
            else:
                prompt = f"{system}\n\n### Instruction:\n{instruction}\n\n### Response:"
                rows.append(("completions", body(model, params, prompt=prompt)))
        out[model] = rows

    judge_model = judge.get("model") or "judge"
    aspects = judge.get("aspects") or ["instruction_following", "honesty", "truthfulness", "helpfulness"]
    k = int(spec.get("completions_per_instruction", 4))
    aspect_rows, critique_rows = [], []
    for i, instruction in enumerate(instructions):
        texts = [_answer_text(instruction, slot) for slot in range(k)]
        aspect = aspects[i % len(aspects)]
        if prompts is not None:
            messages = prompts[0](aspect, instruction, texts, None)
            critique = prompts[1](instruction, texts[0], "helpfulness", systems[i % len(systems)])
        else:  # the headings and markers the simulator recognises
            heading = "# Informativeness / Helpfulness Assessment"
            shown = "\n".join(f"<text {n + 1}> {t}" for n, t in enumerate(texts))
            messages = [
                {"role": "user", "content": f"{heading}\n\n## Annotation\n{instruction}\n{shown}\n### Output\n"}
            ]
            critique = [{"role": "user", "content": f"{instruction}\n{texts[0]}\nOverall Score:\n### Feedback\n"}]
        aspect_rows.append(("chat/completions", body(judge_model, judge.get("sampling") or {}, messages=messages)))
        params = judge.get("critique_sampling") or judge.get("sampling") or {}
        critique_rows.append(("chat/completions", body(judge_model, params, messages=critique)))
    out["judge:aspect"] = aspect_rows
    out["judge:critique"] = critique_rows
    return out, prompts is not None


def _check(fraction: float) -> int:
    """How many synthetic records the project's near-dedup would drop, per source (a self-test)."""
    sys.path.insert(0, str(ROOT))
    from ultrafeedback.tasks.ingest.dedup import NearIndex

    texts, owners = [], []
    for source in paper_sources():
        quota = scaled_quota(int(source["quota"]), fraction)
        count = quota + math.ceil(quota * MARGIN) + 2
        texts += [instruction_text(source["name"], i) for i in range(count)]
        owners += [source["name"]] * count
    index = NearIndex(texts)
    dropped: dict[str, int] = {}
    for i in range(len(texts)):
        if index.find(i) is not None:
            dropped[owners[i]] = dropped.get(owners[i], 0) + 1
        else:
            index.add(i)
    print(f"fraction {fraction}: {len(texts)} records, near duplicates dropped: {dropped or 'none'}")
    return sum(dropped.values())


if __name__ == "__main__":
    sys.exit(1 if _check(float(sys.argv[1]) if len(sys.argv) > 1 else 1.0) else 0)

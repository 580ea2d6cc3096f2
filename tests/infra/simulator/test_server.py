"""The OpenAI-compatible simulator: request kinds, deterministic content, faults and counters."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from ultrafeedback.infra.simulator import Simulator, SimulatorConfig
from ultrafeedback.infra.simulator.server import main

ROOT = Path(__file__).resolve().parents[3]

HEADINGS = {
    "instruction_following": "# Instruction Following Assessment",
    "honesty": "# Honesty and Uncertainty Expression Assessment",
    "truthfulness": "# Truthfulness and Hallucination Assessment",
    "helpfulness": "# Informativeness / Helpfulness Assessment",
}

TEXTS = [
    "Paris is the capital of France and sits on the Seine.",
    "The capital of France is Lyon, a city famous for cuisine.",
    "I am not sure, but I believe the capital is Paris.",
    "France's capital city is Paris.\n\nIt has been the capital for centuries.",
    "Marseille is the capital; it is the oldest city in France.",
    "Paris. Population about two million inside the city limits.",
    "The capital is Paris, home of the Louvre and the Eiffel Tower.",
    "Berlin is the capital of France.",
]


# ----------------------------------------------------------------------------- helpers
def post(url: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, headers={"Content-Type": "application/json", **(headers or {})}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def chat(
    sim: Simulator, user: str, model: str = "sim-model", **extra: Any
) -> tuple[int, dict[str, str], bytes]:
    body = {"model": model, "messages": [{"role": "user", "content": user}], **extra}
    return post(f"{sim.url}/chat/completions", body)


def chat_text(sim: Simulator, user: str, model: str = "sim-model", **extra: Any) -> str:
    status, _, raw = chat(sim, user, model, **extra)
    assert status == 200, raw
    return json.loads(raw)["choices"][0]["message"]["content"]


def chat_text_messages(sim: Simulator, messages: list[dict[str, str]]) -> str:
    status, _, raw = post(f"{sim.url}/chat/completions", {"model": "judge", "messages": messages})
    assert status == 200, raw
    return json.loads(raw)["choices"][0]["message"]["content"]


def judge_prompt(aspect: str, texts: list[str], instruction: str = "What is the capital of France?") -> str:
    """A user message shaped like the original templates: rubric, Format example, then Annotation."""
    example = "\n".join(f"<text {i}> [Text {i}]" for i in range(1, 5))
    filled = "\n".join(f"<text {i}> {text}" for i, text in enumerate(texts, start=1))
    knowledge = (
        "World Knowledge:\nNo additional world knowledge for reference.\n\n"
        if aspect == "truthfulness"
        else ""
    )
    return (
        f"{HEADINGS[aspect]}\n\nEvaluate the texts on this aspect. Rate 1 to 5.\n\n"
        f"## Format:\n\n### Input\nInstruction: [Clearly specify the task goal]\n\nTexts:\n{example}\n\n"
        "### Output\n#### Output for Text 1\nRating: [Rating for text 1]\nRationale: [Rationale]\n\n"
        f"---\n\n## Annotation\n\n### Input\nInstruction: {instruction}\n\nTexts:\n{filled}\n\n"
        f"{knowledge}### Output\n"
    )


def parse_judge(aspect: str, reply: str, n: int) -> list[dict[str, Any]]:
    """The original repo's parser (reference §4.4), strict: it raises on any deviation."""
    blocks = reply.split("\n\n")
    assert len(blocks) == n, reply
    parsed = []
    for slot, block in enumerate(blocks, start=1):
        hashes = "#####" if aspect == "honesty" else "####"
        assert block.startswith(f"{hashes} Output for Text {slot}\n"), block
        if aspect in ("truthfulness", "helpfulness"):
            match = re.search(
                r"Type: (.+?)\nRationale: (.+?)\nRating: (.+?)\nRationale: (.+)", block, re.DOTALL
            )
            assert match, block
            types = "None" if match.group(1) == "None" else re.findall(r"\b\d+\b", match.group(1))
            assert types == "None" or (types and set(types) <= {"1", "2", "3"}), block
            rating = re.findall(r"\b\d+\b", match.group(3))[0]
            rationale = match.group(4)
        else:
            match = re.search(r"Rating: (.+?)\nRationale: (.+)", block, re.DOTALL)
            assert match, block
            rating = "N/A" if match.group(1) == "N/A" else re.findall(r"\b\d+\b", match.group(1))[0]
            rationale = match.group(2)
        assert rating == "N/A" and aspect == "honesty" or rating in {"1", "2", "3", "4", "5"}, block
        assert "\n" not in rationale and rationale.strip()
        parsed.append({"rating": rating})
    return parsed


def critique_prompt(answer: str) -> str:
    return (
        "Given my answer to an instruction, your role is to provide specific and constructive feedback.\n\n"
        "### Instruction\nName a prime number.\nNote: be honest.\n\n"
        f"### Answer\n{answer}\n---\n\nScore the answer 1 to 10.\n"
        "Format:\n### Feedback\n[Your feedback]\nOverall Score: [1-10]\n\n---\n\n### Feedback\n"
    )


SCORE = re.compile(r"Overall Score:\s*([0-9]+(?:\.[0-9]+)?)(?:\s*/\s*10)?")


@pytest.fixture
def sim():
    with Simulator(SimulatorConfig(seed=7)) as running:
        yield running


# ----------------------------------------------------------------------------- generations
def test_generation_is_deterministic_in_seed_model_and_content(sim):
    first = chat_text(sim, "Explain how volcanoes form.")
    assert chat_text(sim, "Explain how volcanoes form.") == first
    assert chat_text(sim, "Explain how glaciers form.") != first
    assert chat_text(sim, "Explain how volcanoes form.", model="other-model") != first
    with Simulator(SimulatorConfig(seed=8)) as other_seed:
        assert chat_text(other_seed, "Explain how volcanoes form.") != first
    with Simulator(SimulatorConfig(seed=7)) as same_seed:
        assert chat_text(same_seed, "Explain how volcanoes form.") == first


def test_generation_talks_about_the_instruction(sim):
    assert "volcanoes" in chat_text(sim, "Explain how volcanoes form.").lower()


def test_generation_stops_at_max_tokens_with_finish_reason_length(sim):
    status, _, raw = chat(sim, "Explain how volcanoes form.", max_tokens=5)
    body = json.loads(raw)
    assert status == 200
    assert body["choices"][0]["finish_reason"] == "length"
    assert len(body["choices"][0]["message"]["content"].split()) == 5
    assert body["usage"]["completion_tokens"] == 5


def test_generation_under_the_cap_finishes_with_stop(sim):
    status, _, raw = chat(sim, "Explain how volcanoes form.", max_tokens=1000)
    body = json.loads(raw)
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] == len(body["choices"][0]["message"]["content"].split())


def test_usage_counts_whitespace_words_of_the_whole_input(sim):
    body = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "You are a careful assistant."},
            {"role": "user", "content": "Explain how volcanoes form."},
        ],
    }
    status, _, raw = post(f"{sim.url}/chat/completions", body)
    assert json.loads(raw)["usage"]["prompt_tokens"] == 9


def test_completions_endpoint_answers_raw_prompts(sim):
    status, _, raw = post(f"{sim.url}/completions", {"model": "m", "prompt": "Tell me about comets."})
    body = json.loads(raw)
    assert status == 200 and body["object"] == "text_completion"
    assert "comets" in body["choices"][0]["text"].lower()
    assert sim.stats()["by_endpoint"] == {"completions": 1}


# ----------------------------------------------------------------------------- judge
@pytest.mark.parametrize("aspect", list(HEADINGS))
@pytest.mark.parametrize("n", [2, 4, 8])
def test_judge_answers_n_blocks_in_the_original_format(sim, aspect, n):
    reply = chat_text(sim, judge_prompt(aspect, TEXTS[:n]))
    assert len(parse_judge(aspect, reply, n)) == n
    assert sim.stats()["by_kind"] == {"judge_aspect": 1}


@pytest.mark.parametrize("aspect", list(HEADINGS))
def test_judge_rates_a_text_the_same_in_any_slot(sim, aspect):
    order = [3, 0, 2, 1]
    first = parse_judge(aspect, chat_text(sim, judge_prompt(aspect, TEXTS[:4])), 4)
    shuffled = parse_judge(aspect, chat_text(sim, judge_prompt(aspect, [TEXTS[i] for i in order])), 4)
    assert [shuffled[slot]["rating"] for slot in range(4)] == [first[i]["rating"] for i in order]


def test_judge_ratings_spread_with_ties_and_non_ties(sim):
    rng = random.Random(0)
    groups = []
    for g in range(60):
        texts = [f"Answer {g}-{i}: " + " ".join(rng.choice(TEXTS).split()[:6]) for i in range(4)]
        groups.append(
            [
                b["rating"]
                for b in parse_judge("helpfulness", chat_text(sim, judge_prompt("helpfulness", texts)), 4)
            ]
        )
    values = [r for group in groups for r in group]
    assert set(values) == {"1", "2", "3", "4", "5"}
    assert any(len(set(g)) < 4 for g in groups) and any(len(set(g)) == 4 for g in groups)


def test_honesty_sometimes_answers_not_applicable(sim):
    ratings = []
    for g in range(40):
        texts = [f"Poem {g}-{i} about the sea and the sky." for i in range(4)]
        ratings += [
            b["rating"] for b in parse_judge("honesty", chat_text(sim, judge_prompt("honesty", texts)), 4)
        ]
    assert "N/A" in ratings
    assert ratings.count("N/A") < len(ratings) / 3


def test_the_heading_must_be_a_line_of_its_own(sim):
    text = chat_text(sim, "Please write about the # Instruction Following Assessment rubric.")
    assert "Output for Text" not in text
    assert sim.stats()["by_kind"] == {"generation": 1}


@pytest.mark.parametrize("aspect", list(HEADINGS))
def test_the_projects_own_templates_and_parser_agree_with_the_simulator(sim, aspect):
    from ultrafeedback.tasks.annotate.parse import parse_aspect
    from ultrafeedback.tasks.annotate.prompts import aspect_messages

    messages = aspect_messages(aspect, "What is the capital of France?", TEXTS[:5], None)
    parsed = parse_aspect(aspect, chat_text_messages(sim, messages), 5)
    assert parsed.ok, parsed
    assert len(parsed.items) == 5


def test_unparseable_judge_answers_are_rejected_by_the_projects_parser():
    from ultrafeedback.tasks.annotate.parse import parse_aspect
    from ultrafeedback.tasks.annotate.prompts import aspect_messages

    failures = 0
    with Simulator(SimulatorConfig(rate_unparseable=1.0)) as sim:
        for i in range(12):
            messages = aspect_messages("honesty", f"Question {i}?", TEXTS[:4], None)
            raw = chat_text_messages(sim, messages)
            failures += not parse_aspect("honesty", raw, 4).ok
    assert failures == 12


# ----------------------------------------------------------------------------- critique
def test_critique_ends_with_a_parseable_overall_score(sim):
    reply = chat_text(sim, critique_prompt("Seven is prime."))
    feedback, score = reply.split("\nOverall Score: ")
    assert feedback.strip() and "\n" not in feedback
    assert 1 <= float(score) <= 10
    assert chat_text(sim, critique_prompt("Seven is prime.")) == reply
    assert sim.stats()["by_kind"] == {"critique": 2}


def test_critique_of_the_projects_own_template_parses(sim):
    from ultrafeedback.tasks.annotate.parse import parse_critique
    from ultrafeedback.tasks.annotate.prompts import critique_messages

    messages = critique_messages("Name a prime.", "Seven is prime.", "helpfulness", "Be helpful.")
    parsed = parse_critique(chat_text_messages(sim, messages))
    assert parsed.ok and 1 <= parsed.overall_score <= 10
    assert sim.stats()["by_kind"] == {"critique": 1}


def test_critique_scores_spread_and_are_sometimes_fractional(sim):
    scores = [
        float(SCORE.search(chat_text(sim, critique_prompt(f"The answer is {i}."))).group(1))
        for i in range(80)
    ]
    assert all(1 <= s <= 10 for s in scores)
    assert any(s != int(s) for s in scores)
    assert len(set(scores)) >= 6


# ----------------------------------------------------------------------------- faults
def test_faults_are_counted_by_type_and_in_the_total():
    with Simulator(SimulatorConfig(seed=1, rate_500=0.3)) as sim:
        statuses = [chat(sim, f"Question number {i}?")[0] for i in range(200)]
        stats = sim.stats()
    assert stats["total"] == 200
    assert stats["faults"] == {"500": statuses.count(500)}
    assert 30 <= statuses.count(500) <= 90
    assert set(statuses) == {200, 500}


def test_fault_draws_are_reproducible_and_restart_after_reset():
    def run(sim: Simulator) -> list[int]:
        return [chat(sim, f"Question {i % 10}?")[0] for i in range(40)]  # bodies repeat

    with Simulator(SimulatorConfig(seed=3, rate_500=0.5)) as sim:
        first = run(sim)
        sim.reset()
        assert run(sim) == first
    with Simulator(SimulatorConfig(seed=3, rate_500=0.5)) as sim:
        assert run(sim) == first
    with Simulator(SimulatorConfig(seed=4, rate_500=0.5)) as sim:
        assert run(sim) != first


def test_a_repeated_body_gets_fresh_draws_so_a_retry_can_succeed():
    with Simulator(SimulatorConfig(seed=0, rate_500=0.5)) as sim:
        statuses = [chat(sim, "the same question")[0] for _ in range(30)]
    assert set(statuses) == {200, 500}


def test_429_carries_retry_after():
    with Simulator(SimulatorConfig(rate_429=1.0, retry_after_s=0.5)) as sim:
        status, headers, raw = chat(sim, "hello there")
        assert sim.stats()["faults"] == {"429": 1}
    assert status == 429
    assert headers["Retry-After"] == "0.5"
    assert json.loads(raw)["error"]["type"] == "rate_limit_error"


def test_500_carries_a_json_error():
    with Simulator(SimulatorConfig(rate_500=1.0)) as sim:
        status, _, raw = chat(sim, "hello there")
    assert status == 500
    assert json.loads(raw)["error"]["message"]


def test_timeout_fault_hangs_before_answering():
    with Simulator(SimulatorConfig(rate_timeout=1.0, timeout_sleep_s=0.4)) as sim:
        start = time.monotonic()
        status, _, _ = chat(sim, "hello there")
        assert time.monotonic() - start >= 0.4
        assert sim.stats()["faults"] == {"timeout": 1}
    assert status == 200


def test_malformed_fault_is_a_200_with_invalid_json():
    with Simulator(SimulatorConfig(rate_malformed=1.0)) as sim:
        status, _, raw = chat(sim, "hello there")
    assert status == 200
    with pytest.raises(ValueError):
        json.loads(raw)


def test_unparseable_fault_breaks_judge_and_critique_answers_only():
    with Simulator(SimulatorConfig(rate_unparseable=1.0)) as sim:
        judge = chat_text(sim, judge_prompt("instruction_following", TEXTS[:4]))
        critique = chat_text(sim, critique_prompt("Seven is prime."))
        generation = chat_text(sim, "Explain how volcanoes form.")
        assert sim.stats()["faults"] == {"unparseable": 2}
    with pytest.raises(AssertionError):
        parse_judge("instruction_following", judge, 4)
    assert SCORE.search(critique) is None
    with Simulator(SimulatorConfig()) as clean:
        assert chat_text(clean, "Explain how volcanoes form.") == generation


def test_max_faults_per_body_lets_the_next_attempt_through():
    with Simulator(SimulatorConfig(rate_500=1.0, max_faults_per_body=1)) as sim:
        assert [chat(sim, "hello there")[0] for _ in range(3)] == [500, 200, 200]


def test_forced_status_for_force_models():
    with Simulator(SimulatorConfig()) as sim:
        status, _, raw = chat(sim, "hello", model="force-400")
        assert sim.stats()["faults"] == {"forced_400": 1}
    assert status == 400
    assert "force-400" in json.loads(raw)["error"]["message"]


def test_invalid_requests_get_400_and_are_counted():
    with Simulator(SimulatorConfig()) as sim:
        assert post(f"{sim.url}/chat/completions", b"{not json")[0] == 400
        assert post(f"{sim.url}/chat/completions", {"model": "m"})[0] == 400
        assert post(f"{sim.url}/chat/completions", {"messages": [{"role": "user", "content": "x"}]})[0] == 400
        stats = sim.stats()
    assert stats["total"] == 3 and stats["by_kind"] == {"invalid": 3}


def test_api_key_is_enforced_when_configured():
    with Simulator(SimulatorConfig(api_key="sk-sim")) as sim:
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        assert post(f"{sim.url}/chat/completions", body)[0] == 401
        assert post(f"{sim.url}/chat/completions", body, {"Authorization": "Bearer sk-bad"})[0] == 401
        assert post(f"{sim.url}/chat/completions", body, {"Authorization": "Bearer sk-sim"})[0] == 200
        assert sim.stats()["with_auth"] == 2


def test_rates_that_cannot_all_happen_are_rejected():
    with pytest.raises(ValueError, match="at most 1"):
        SimulatorConfig(rate_429=0.6, rate_500=0.6)


# ----------------------------------------------------------------------------- stats, models, latency
def test_stats_and_reset_over_http(sim):
    chat(sim, "Explain how volcanoes form.", model="a")
    chat(sim, critique_prompt("Seven is prime."), model="b")
    with urllib.request.urlopen(f"{sim.root_url}/stats") as response:
        stats = json.loads(response.read())
    assert stats["total"] == 2
    assert stats["by_kind"] == {"generation": 1, "critique": 1}
    assert stats["by_model"] == {"a": 1, "b": 1}
    assert post(f"{sim.root_url}/stats/reset", {})[0] == 200
    assert sim.stats()["total"] == 0


def test_models_lists_the_models_seen(sim):
    chat(sim, "hi", model="judge-x")
    with urllib.request.urlopen(f"{sim.url}/models") as response:
        body = json.loads(response.read())
    assert [m["id"] for m in body["data"]] == ["judge-x"]


def test_latency_is_concurrent_not_serial():
    from concurrent.futures import ThreadPoolExecutor

    with Simulator(SimulatorConfig(latency_ms=300, jitter_ms=20)) as sim:
        start = time.monotonic()
        with ThreadPoolExecutor(20) as pool:
            statuses = list(pool.map(lambda i: chat(sim, f"q{i}")[0], range(20)))
        elapsed = time.monotonic() - start
        assert sim.stats()["max_in_flight"] >= 10
    assert statuses == [200] * 20
    assert 0.28 <= elapsed < 3.0  # serial would take 6 s


def test_a_taken_port_is_an_error_not_a_hang():
    with Simulator(SimulatorConfig()) as sim, pytest.raises(OSError):
        Simulator(SimulatorConfig(port=sim.port)).start()


# ----------------------------------------------------------------------------- CLI
def test_cli_prints_the_url_serves_and_stops_cleanly():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "ultrafeedback.infra.simulator.server", "--port", "0", "--seed", "3",
         "--latency-ms", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
    )  # fmt: skip
    try:
        line = process.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+/v1", line).group(0)
        with urllib.request.urlopen(f"{url}/models", timeout=10) as response:
            assert response.status == 200
    finally:
        process.terminate()
        code = process.wait(timeout=10)
    assert code == 0


def test_cli_rejects_impossible_settings(capsys):
    assert main(["--port", "0", "--rate-429", "0.8", "--rate-500", "0.5"]) == 2
    assert "at most 1" in capsys.readouterr().err


def test_record_bodies_keeps_when_each_body_came_and_was_answered():
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "Name a colour."}]}).encode()
    with Simulator(record_bodies=True, latency_ms=5, rate_500=1.0, max_faults_per_body=1) as sim:
        statuses = []
        for _ in range(2):
            request = urllib.request.Request(
                f"{sim.url}/chat/completions", data=body, headers={"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(request) as response:
                    statuses.append(response.status)
            except urllib.error.HTTPError as exc:
                statuses.append(exc.code)
        with urllib.request.urlopen(f"{sim.root_url}/stats/bodies") as response:
            recorded = json.loads(response.read())
    assert statuses == [500, 200]
    (entries,) = recorded["bodies"].values()
    assert [entry[2] for entry in entries] == [500, 200]
    assert all(came <= answered for came, answered, _ in entries) and entries[0][1] <= entries[1][0]


def test_bodies_are_not_recorded_unless_asked():
    with Simulator() as sim:
        with urllib.request.urlopen(f"{sim.root_url}/stats/bodies") as response:
            assert json.loads(response.read()) == {"record_bodies": False, "bodies": {}}

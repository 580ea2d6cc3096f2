"""The simulator's Files and Batch APIs: the lifecycle, the same answers as online, and the faults."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from ultrafeedback.infra.simulator import Simulator, SimulatorConfig

JUDGE_USER = (
    "# Informativeness / Helpfulness Assessment\n\nrubric\n\n## Format:\n<text 1> [Text 1]\n\n"
    "## Annotation\n### Input\nInstruction: Name a colour.\n\nTexts:\n<text 1> Red is a colour.\n\n### Output\n"
)


def line(custom_id: str, user: str, model: str = "sim-model", **body: object) -> dict:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model, "messages": [{"role": "user", "content": user}], **body},
    }


def upload(client: httpx.Client, lines: list[dict]) -> str:
    data = "".join(json.dumps(x) + "\n" for x in lines).encode()
    response = client.post("/files", data={"purpose": "batch"}, files={"file": ("in.jsonl", data)})
    assert response.status_code == 200, response.text
    return response.json()["id"]


def create(client: httpx.Client, file_id: str) -> dict:
    body = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    response = client.post("/batches", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def wait(client: httpx.Client, batch_id: str, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        batch = client.get(f"/batches/{batch_id}").json()
        if batch["status"] not in ("validating", "in_progress", "finalizing") or time.monotonic() > deadline:
            return batch
        time.sleep(0.05)


def lines_of(client: httpx.Client, file_id: str | None) -> dict[str, dict]:
    if not file_id:
        return {}
    raw = client.get(f"/files/{file_id}/content").content
    return {row["custom_id"]: row for row in map(json.loads, raw.splitlines())}


@pytest.fixture
def sim_client():
    def start(**config: object):
        sim = Simulator(SimulatorConfig(**{"seed": 4, "batch_delay_s": 0.2, **config})).start()
        started.append(sim)
        return sim, httpx.Client(base_url=sim.url, timeout=10)

    started: list[Simulator] = []
    yield start
    for sim in started:
        sim.stop()


def test_a_batch_runs_after_its_delay_and_answers_each_line_as_the_online_endpoint_does(sim_client):
    sim, client = sim_client()
    lines = [line("a", "Explain tides.", max_tokens=20), line("b", JUDGE_USER), line("c", "Name three rivers.")]
    batch = create(client, upload(client, lines))
    assert batch["status"] == "in_progress" and batch["request_counts"]["total"] == 3
    assert client.get(f"/batches/{batch['id']}").json()["status"] == "in_progress"  # before the delay
    done = wait(client, batch["id"])
    assert done["status"] == "completed" and done["request_counts"] == {"total": 3, "completed": 3, "failed": 0}
    assert done["error_file_id"] is None
    output = lines_of(client, done["output_file_id"])
    for item in lines:
        online = client.post("/chat/completions", json=item["body"]).json()
        answer = output[item["custom_id"]]["response"]
        assert answer["status_code"] == 200
        assert answer["body"]["choices"][0]["message"]["content"] == online["choices"][0]["message"]["content"]
    stats = sim.batch_stats()
    assert stats["submitted"] == {"a": 1, "b": 1, "c": 1} and stats["by_status"] == {"completed": 1}
    assert sim.stats()["by_endpoint"]["batch"] == 3


def test_an_expiring_batch_answers_part_of_its_lines_and_reports_the_rest_as_expired(sim_client):
    _, client = sim_client(batch_expire_first=1, batch_expire_fraction=0.5)
    lines = [line(str(i), f"Question number {i}?") for i in range(4)]
    done = wait(client, create(client, upload(client, lines))["id"])
    assert done["status"] == "expired"
    output, errors = lines_of(client, done["output_file_id"]), lines_of(client, done["error_file_id"])
    assert sorted(output) == ["0", "1"] and sorted(errors) == ["2", "3"]
    assert errors["2"]["error"]["code"] == "batch_expired" and errors["2"]["response"] is None
    second = wait(client, create(client, upload(client, lines))["id"])  # only the first batch expires
    assert second["status"] == "completed"


def test_failed_lines_land_in_the_error_file_with_their_status(sim_client):
    _, client = sim_client(batch_line_error_rate=0.5)
    lines = [line(str(i), f"Question number {i}?") for i in range(12)]
    done = wait(client, create(client, upload(client, lines))["id"])
    output, errors = lines_of(client, done["output_file_id"]), lines_of(client, done["error_file_id"])
    assert set(output) | set(errors) == {x["custom_id"] for x in lines} and not set(output) & set(errors)
    assert {e["response"]["status_code"] for e in errors.values()} == {500}
    assert 1 <= len(errors) <= 11 and done["request_counts"]["failed"] == len(errors)
    forced = wait(client, create(client, upload(client, [line("x", "Hi.", model="force-400")]))["id"])
    assert lines_of(client, forced["error_file_id"])["x"]["response"]["status_code"] == 400


def test_invalid_batches_fail_validation_and_cancel_lists_and_limits_work(sim_client):
    _, client = sim_client(batch_max_requests=2, batch_delay_s=30)
    too_many = create(client, upload(client, [line(str(i), "Hi.") for i in range(3)]))
    assert too_many["status"] == "failed" and "limit" in too_many["errors"]["data"][0]["message"]
    mixed = create(client, upload(client, [line("a", "Hi."), line("b", "Hi.", model="other")]))
    assert mixed["status"] == "failed"
    repeated = create(client, upload(client, [line("a", "Hi."), line("a", "Ho.")]))
    assert repeated["status"] == "failed"
    file_id = upload(client, [line("a", "Hi.")])
    running = create(client, file_id)
    listed = client.get("/batches", params={"limit": 2}).json()
    assert listed["data"][0]["id"] == running["id"] and listed["has_more"]
    cancelled = client.post(f"/batches/{running['id']}/cancel").json()
    assert cancelled["status"] == "cancelled" and cancelled["output_file_id"] is None
    assert client.get("/batches/batch_nope").status_code == 404
    assert client.get("/files/file-nope/content").status_code == 404


def test_the_batch_api_checks_the_key(sim_client):
    _, client = sim_client(api_key="sk-sim")
    assert client.post("/batches", json={}).status_code == 401
    keyed = httpx.Client(base_url=client.base_url, headers={"Authorization": "Bearer sk-sim"})
    assert keyed.get("/batches").status_code == 200


def test_usage_is_counted_with_the_named_tokenizer(sim_client):
    from ultrafeedback.infra.llm import tokens

    _, client = sim_client(usage_tokenizer="o200k_base")
    body = {
        "model": "m",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}],
    }
    usage = client.post("/chat/completions", json=body).json()["usage"]
    assert usage["prompt_tokens"] == tokens.count_request(body["messages"], None, "o200k_base")
    assert usage["prompt_tokens"] == 3 + 2 + 2 * tokens.PER_MESSAGE + tokens.REPLY_PRIMING  # Be/ brief/. and Hi/ there

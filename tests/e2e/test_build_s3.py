"""A whole build with its store on S3: a real S3-compatible server (moto's, on 127.0.0.1), the
project's OpenAI-compatible simulator, and a real Prefect API.

The spec names the store as ``s3://<bucket>/stores`` and only the endpoint in
``execution.storage_options``; the AWS credentials come from the environment, and the simulator's
key from the variable the spec names. None of them may end up in any object the build writes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.sim_spec import SIM_JUDGE, sim_endpoint, sim_models
from tests.s3_server import CREDENTIAL_STRINGS, MotoS3Server, bucket_objects, new_bucket, s3fs_for, set_credentials
from ultrafeedback.infra.simulator.config import SimulatorConfig
from ultrafeedback.infra.simulator.server import Simulator

pytestmark = pytest.mark.e2e

API_KEY = "sk-s3-e2e-DO-NOT-LEAK-7131"
K = 3
LOCAL_PROMPTS = [
    "Explain why the sky looks blue during the day.",
    "Write a haiku about autumn rain.",
    "What is 17 multiplied by 23? Show your steps.",
    "Give three tips for writing readable Python code.",
]
S3_PROMPTS = [
    "Is a tomato a fruit or a vegetable?",
    "Translate 'good morning' into Spanish and French.",
]
PROMPTS = LOCAL_PROMPTS + S3_PROMPTS


@pytest.fixture(scope="module")
def s3_server() -> Iterator[MotoS3Server]:
    with MotoS3Server() as server:
        yield server


@pytest.fixture
def sim(monkeypatch: pytest.MonkeyPatch) -> Iterator[Simulator]:
    monkeypatch.setenv("UF_S3_E2E_KEY", API_KEY)
    with Simulator(SimulatorConfig(latency_ms=1, seed=11, api_key=API_KEY)) as simulator:
        yield simulator


def jsonl(prompts: list[str]) -> str:
    return "".join(json.dumps({"prompt": p}) + "\n" for p in prompts)


def write_spec(folder: Path, sim_url: str, store: str, endpoint_url: str, s3_source: str) -> Path:
    """A spec with one local source and one source on S3 (read with the same storage options)."""
    (folder / "instructions.jsonl").write_text(jsonl(LOCAL_PROMPTS))
    data: dict[str, Any] = {
        "name": "e2e",
        "seed": 7,
        "store": store,
        "sources": [
            {"name": "mixed", "loader": "jsonl", "path": "instructions.jsonl", "fields": {"instruction": "prompt"}},
            {"name": "remote", "loader": "jsonl", "path": s3_source, "fields": {"instruction": "prompt"}},
        ],
        "endpoints": {"sim": sim_endpoint(sim_url, "UF_S3_E2E_KEY")},
        "models": sim_models(4),
        "completions_per_instruction": K,
        "sampling": {"temperature": 1.0, "top_p": 1.0, "max_tokens": 32},
        "judge": SIM_JUDGE,
        "binarize": {"rule": "h4", "test_size": 0.34, "seed": 1},
        "execution": {"shard_size": 3, "checkpoint_every": 8, "storage_options": {"endpoint_url": endpoint_url}},
    }
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def run_build(spec_path: Path) -> str:
    from ultrafeedback.flows.build import build

    return build(spec_path=str(spec_path), overrides=[])


def release_folders(endpoint_url: str, root: str) -> list[str]:
    fs = s3fs_for(endpoint_url)
    return sorted(p.rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)) if fs.exists(root) else []


def test_build_with_an_s3_store(
    prefect_harness: None,
    sim: Simulator,
    s3_server: MotoS3Server,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import dask.dataframe as dd
    import datasets

    set_credentials(monkeypatch)
    endpoint = s3_server.endpoint_url
    options = {"endpoint_url": endpoint}
    bucket = new_bucket(endpoint)
    s3fs_for(endpoint).pipe_file(f"{bucket}/inputs/more.jsonl", jsonl(S3_PROMPTS).encode())
    spec_path = write_spec(tmp_path, sim.url, f"s3://{bucket}/stores", endpoint, f"s3://{bucket}/inputs/more.jsonl")
    assert not any(secret in spec_path.read_text() for secret in (*CREDENTIAL_STRINGS, API_KEY))

    # Spy on Dask's Parquet reader: aggregation must read the scored stage straight from S3.
    dask_reads: list[tuple[Any, dict[str, Any]]] = []
    read_parquet = dd.read_parquet

    def spy(path: Any, *args: Any, **kwargs: Any) -> Any:
        dask_reads.append((path, dict(kwargs.get("storage_options") or {})))
        return read_parquet(path, *args, **kwargs)

    monkeypatch.setattr(dd, "read_parquet", spy)

    uri = run_build(spec_path)
    root = f"s3://{bucket}/stores/e2e"
    assert uri == f"{root}/releases/v1"
    first = sim.stats()
    n = len(PROMPTS) * K
    assert first["by_kind"] == {"generation": n, "judge_aspect": len(PROMPTS) * 4, "critique": n}
    assert first["with_auth"] == first["total"]

    # aggregate ran with Dask over the scored Parquet on S3, and stored its result there
    assert len(dask_reads) == 1
    files, storage_options = dask_reads[0]
    assert files and all(f.startswith(f"{root}/scored/") and f.endswith(".parquet") for f in files)
    assert storage_options == options
    objects = bucket_objects(endpoint, bucket)
    aggregated = json.loads(objects["stores/e2e/aggregate/aggregate.json"])
    assert aggregated["stats"]["prompts"] == len(PROMPTS) and aggregated["stats"]["completions"] == n

    # the release: a manifest, and every config loads from S3 with `datasets`
    manifest = json.loads(objects["stores/e2e/releases/v1/manifest.json"])
    assert manifest["version"] == 1 and manifest["counts"]["completions"]["train"] == len(PROMPTS)
    assert "stores/e2e/releases/v1/README.md" in objects
    assert {c["config_name"] for c in manifest["configs"]} == {"completions", "pairs", "binarized"}
    # `datasets` treats every remote URL, s3:// included, as "online": its offline mode (set for
    # the whole test session) refuses to read the release. Lift it for this read only; nothing
    # here reaches the Hub (the "parquet" builder is packaged, the files are on the local server).
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    loaded: dict[str, Any] = {}
    for config in manifest["configs"]:
        data_files = {f["split"]: f"{uri}/{f['path']}" for f in config["data_files"]}
        loaded[config["config_name"]] = datasets.load_dataset(
            "parquet", data_files=data_files, storage_options=options, cache_dir=str(tmp_path / "hf")
        )
    completions = loaded["completions"]["train"]
    assert len(completions) == len(PROMPTS)
    assert sorted(r["instruction"] for r in completions if r["source"] == "remote") == sorted(S3_PROMPTS)
    for row in completions:
        assert len(row["completions"]) == K and sorted(c["model"] for c in row["completions"]) == sorted(row["models"])
        assert all(c["response"] and c["critique"] and c["judge_kind"] == "model" for c in row["completions"])
    pairs = loaded["pairs"]["train"]
    assert len(pairs) == manifest["counts"]["pairs"]["train"] > 0
    assert all(p["score_chosen"] > p["score_rejected"] for p in pairs)
    binarized = loaded["binarized"]
    assert set(binarized) == {"train_prefs", "test_prefs", "train_sft", "test_sft", "train_gen", "test_gen"}
    assert {name: len(split) for name, split in binarized.items()} == manifest["counts"]["binarized"]
    assert all(len(split) > 0 for split in binarized.values())
    chosen = binarized["train_prefs"][0]["chosen"]
    assert [m["role"] for m in chosen] == ["user", "assistant"]

    # a rerun reads everything back from S3: no request, no new release
    assert run_build(spec_path) == uri
    assert sim.stats()["total"] == first["total"], "a rerun of a finished build sent requests"
    assert release_folders(endpoint, f"{bucket}/stores/e2e/releases") == ["v1"]

    # no credential (AWS keys, the endpoint's API key) in any object the builds wrote
    objects = bucket_objects(endpoint, bucket)
    assert objects and all(key.startswith("stores/e2e/") for key in objects if key != "inputs/more.jsonl")
    # and nothing of the store went to the local disk
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "instructions.jsonl", "spec.yaml"]
    for key, data in objects.items():
        for secret in (*CREDENTIAL_STRINGS, API_KEY):
            assert secret.encode() not in data, f"credential leaked into s3://{bucket}/{key}"

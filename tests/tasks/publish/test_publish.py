"""Numbered releases: HF layout that loads offline, openbmb schema, card, idempotence, atomicity."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

from tests.tasks.pairs.scored_data import write_scored_shards  # noqa: E402
from ultrafeedback.infra.store import Store  # noqa: E402
from ultrafeedback.records import ASPECTS, ScoredCompletion  # noqa: E402
from ultrafeedback.tasks.aggregate.aggregate import aggregate  # noqa: E402
from ultrafeedback.tasks.pairs.pairs import binarize, build_pairs, split_binarized  # noqa: E402
from ultrafeedback.tasks.publish import publish as publish_module  # noqa: E402
from ultrafeedback.tasks.publish.card import scrub, scrub_text  # noqa: E402
from ultrafeedback.tasks.publish.hub import publish_to_hub  # noqa: E402
from ultrafeedback.tasks.publish.publish import (  # noqa: E402
    ReleaseTables,
    completions_features,
    list_releases,
    publish_release,
)

OPENBMB_TOP = ["source", "instruction", "models", "completions", "correct_answers", "incorrect_answers"]
OPENBMB_COMPLETION = [
    "model",
    "principle",
    "custom_system_prompt",
    "response",
    "annotations",
    "critique",
    "overall_score",
    "fine-grained_score",
]
SECRETS = [
    "sk-live-abcdefghijklmnop0123",
    "hf_abcdefghijklmnopqrstuvwx",
    "AKIAABCDEFGHIJKLMNOP",
    "s3cr3t-v4lue-for-s3",
    "hunter2-password",
    "tok-opaque-9f8e7d",
]


def _scored(n: int = 6, judge_kind: str = "heuristic", bump: float = 0.0) -> pd.DataFrame:
    return pd.DataFrame(_scored_rows(n, judge_kind, bump))


def _scored_rows(n: int = 6, judge_kind: str = "heuristic", bump: float = 0.0) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        iid = f"inst-{i:03d}"
        models = ["m-a", "m-b", "m-c", "m-d"]
        for pos, model in enumerate(models):
            rating = str(1 + (i + pos) % 5)
            honesty = "N/A" if pos == 3 else rating
            ints = [int(rating)] * 3 + ([] if honesty == "N/A" else [int(honesty)])
            rows.append(
                ScoredCompletion(
                    completion_id=f"{iid}-{pos}",
                    instruction_id=iid,
                    source="truthful_qa" if i == 0 else "evol_instruct",
                    instruction=f"Question {i}: why?",
                    correct_answers=["yes"] if i == 0 else ["None"],
                    incorrect_answers=["no"] if i == 0 else ["None"],
                    models=models,
                    position=pos,
                    model=model,
                    principle="honesty",
                    system_prompt="Be honest.",
                    response=f"Answer {pos} to {i}.",
                    instruction_following_rating=rating,
                    instruction_following_rationale="follows",
                    honesty_rating=honesty,
                    honesty_rationale="honest",
                    truthfulness_rating=rating,
                    truthfulness_rationale="true",
                    truthfulness_type=["0"],
                    truthfulness_type_rationale="no hallucination",
                    helpfulness_rating=None if (i, pos) == (1, 1) else rating,
                    helpfulness_rationale=None if (i, pos) == (1, 1) else "helps",
                    helpfulness_type=None if (i, pos) == (1, 1) else ["1", "2"],
                    helpfulness_type_rationale=None if (i, pos) == (1, 1) else "clear",
                    critique=f"Critique {pos}.",
                    overall_score=float(1 + (i * 3 + pos * 2) % 10) + bump,
                    fine_grained_score=sum(ints) / len(ints),
                    judge_model="heuristic-v1" if judge_kind == "heuristic" else "gpt-4-0613",
                    judge_kind=judge_kind,
                ).model_dump()
            )
    return rows


def _tables(scored: pd.DataFrame, test_size: float = 0.34) -> ReleaseTables:
    rows = binarize(scored, "h4", seed=42)
    return ReleaseTables(
        scored=scored,
        pairs=build_pairs(scored, "fine_grained"),
        binarized=split_binarized(rows, test_size, seed=42),
        aggregate=aggregate_dict(scored),
    )


def aggregate_dict(scored: pd.DataFrame) -> dict[str, Any]:
    """The aggregate of these rows (Dask's local scheduler; the cluster is tested in test_aggregate)."""
    with tempfile.TemporaryDirectory(prefix="uf-pub-agg-") as tmp:
        scored.to_parquet(Path(tmp) / "part-0.parquet")
        return aggregate(f"{tmp}/*.parquet", {}, None).to_dict()


CARD_INFO: dict[str, Any] = {
    "spec_hash": "0123456789abcdef",
    "pairs_score": "fine_grained",
    "binarize_rule": "h4",
    "judge": {"backend": "heuristic", "model": "heuristic-v1"},
    "gates": [{"gate": "annotate", "passed": True, "checks": 7, "failed": "-", "rows": 24}],
    "spec": {
        "name": "unit",
        "endpoints": {
            "openai": {
                "base_url": "https://user:hunter2-password@api.example.com/v1",
                "api_key": SECRETS[0],
                "api_key_env": "OPENAI_API_KEY",
                "tokens_per_minute": 1000,
            }
        },
        "judge": {"model": "heuristic-v1", "sampling": {"max_tokens": 500}},
        "notes": f"token {SECRETS[1]} and Bearer {SECRETS[5]}",
        "execution": {"storage_options": {"key": SECRETS[2], "secret": SECRETS[3]}},
    },
}


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(str(tmp_path / "store"), "unit")


@pytest.fixture(scope="module")
def heuristic_tables() -> ReleaseTables:
    return _tables(_scored())


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory, heuristic_tables: ReleaseTables):
    store = Store(str(tmp_path_factory.mktemp("pub") / "store"), "unit")
    release = publish_release(
        store, "unit", heuristic_tables, {"flow_run": "r1", "hf_token": SECRETS[1]}, CARD_INFO, max_shard_rows=4
    )
    return store, release


def _front_matter(readme: str) -> dict[str, Any]:
    assert readme.startswith("---\n")
    return yaml.safe_load(readme.split("---\n", 2)[1])


# --------------------------------------------------------------------------- layout and loading


def test_release_layout_and_manifest(published) -> None:
    store, release = published
    assert release.version == 1 and release.created
    assert release.uri == store.path("releases", "v1")
    folder = Path(release.uri)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["version"] == 1 and manifest["parent"] is None
    assert manifest["spec_hash"] == CARD_INFO["spec_hash"]
    assert manifest["counts"]["completions"] == {"train": 6}
    assert manifest["counts"]["pairs"]["train"] == len(build_pairs(_scored(), "fine_grained"))
    binarized = manifest["counts"]["binarized"]
    assert set(binarized) == {"train_prefs", "test_prefs", "train_sft", "test_sft", "train_gen", "test_gen"}
    assert binarized["train_prefs"] + binarized["test_prefs"] == 6
    assert binarized["train_sft"] == binarized["train_gen"] == binarized["train_prefs"]
    assert binarized["test_sft"] == binarized["test_gen"] == binarized["test_prefs"] // 2
    assert manifest["changes"] == {"parent": None, "configs": None, "notes": []}
    assert manifest["gates"] == CARD_INFO["gates"]
    assert manifest["statistics"]["prompts"] == 6
    for relpath, info in manifest["files"].items():
        assert (folder / relpath).stat().st_size == info["bytes"]
    written = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}
    assert written == set(manifest["files"]) | {"manifest.json"}
    # 6 completions rows with max_shard_rows=4 -> 2 shards of one schema
    shards = sorted(folder.glob("completions/train-*.parquet"))
    assert [s.name for s in shards] == ["train-00000-of-00002.parquet", "train-00001-of-00002.parquet"]
    assert pq.read_schema(shards[0]) == pq.read_schema(shards[1])
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".staging")]


@pytest.mark.parametrize("config", ["completions", "pairs", "binarized"])
def test_each_config_loads_with_datasets_offline(published, config: str) -> None:
    import datasets

    _, release = published
    loaded = datasets.load_dataset(release.uri, name=config)
    counts = release.manifest["counts"][config]
    assert {split: loaded[split].num_rows for split in loaded} == counts


def test_parquet_fallback_loads_too(published) -> None:
    import datasets

    _, release = published
    files = {"train_prefs": f"{release.uri}/binarized/train_prefs-*.parquet"}
    loaded = datasets.load_dataset("parquet", data_files=files, split="train_prefs")
    assert loaded.num_rows == release.manifest["counts"]["binarized"]["train_prefs"]
    assert loaded[0]["chosen"][0]["role"] == "user" and loaded[0]["chosen"][1]["role"] == "assistant"


def test_completions_have_the_openbmb_schema_and_judge_fields(published) -> None:
    import datasets

    _, release = published
    ds = datasets.load_dataset(release.uri, name="completions", split="train")
    assert ds.features == completions_features()
    assert list(ds.features)[: len(OPENBMB_TOP)] == OPENBMB_TOP
    completion = ds.features["completions"].feature
    assert list(completion)[: len(OPENBMB_COMPLETION)] == OPENBMB_COMPLETION
    assert set(completion["annotations"]) == set(ASPECTS)
    assert list(completion["annotations"]["truthfulness"]) == ["Type", "Rationale", "Rating", "Rationale For Rating"]
    assert list(completion["annotations"]["helpfulness"]) == ["Rating", "Rationale", "Rationale For Rating", "Type"]
    rows = {r["id"]: r for r in ds}
    first = rows["inst-000"]
    assert first["source"] == "truthful_qa" and first["correct_answers"] == ["yes"]
    assert first["models"] == ["m-a", "m-b", "m-c", "m-d"]
    assert [c["model"] for c in first["completions"]] == first["models"]  # slot order
    c3 = first["completions"][3]
    assert c3["annotations"]["honesty"]["Rating"] == "N/A"
    assert isinstance(c3["annotations"]["instruction_following"]["Rating"], str)
    assert c3["annotations"]["truthfulness"]["Rationale"] == "no hallucination"
    assert c3["annotations"]["truthfulness"]["Rationale For Rating"] == "true"
    assert c3["judge_kind"] == "heuristic" and c3["judge_model"] == "heuristic-v1"
    assert c3["fine-grained_score"] == pytest.approx(1 + 3 % 5)
    unrated = rows["inst-001"]["completions"][1]["annotations"]["helpfulness"]
    assert unrated == {"Rating": None, "Rationale": None, "Rationale For Rating": None, "Type": None}


# --------------------------------------------------------------------------- the card


def test_card_front_matter_and_heuristic_notice(published) -> None:
    _, release = published
    readme = (Path(release.uri) / "README.md").read_text()
    meta = _front_matter(readme)
    assert [c["config_name"] for c in meta["configs"]] == ["completions", "pairs", "binarized"]
    binarized = next(c for c in meta["configs"] if c["config_name"] == "binarized")
    assert {f["split"]: f["path"] for f in binarized["data_files"]} == {
        split: f"binarized/{split}-*.parquet"
        for split in ("train_prefs", "test_prefs", "train_sft", "test_sft", "train_gen", "test_gen")
    }
    assert meta["license"] and "text-generation" in meta["task_categories"]
    from huggingface_hub import DatasetCard

    card = DatasetCard.load(Path(release.uri) / "README.md")  # the Hub's own parser accepts it
    assert [c["config_name"] for c in card.data.configs] == ["completions", "pairs", "binarized"]
    body = readme.split("---\n", 2)[2]
    assert "[!WARNING]" in body and "Heuristic ratings, not a model's judgement" in body
    assert body.index("[!WARNING]") < body.index("## Configs")  # prominent: before everything else
    assert "regex-wordpunct" in body and "## Per-model leaderboard" in body
    assert CARD_INFO["spec_hash"] in body and "annotate" in body
    assert "| m-a |" in body


def test_model_judged_release_has_no_heuristic_notice(tmp_path: Path) -> None:
    store = Store(str(tmp_path), "judged")
    release = publish_release(store, "judged", _tables(_scored(3, judge_kind="model")), {}, {"spec_hash": "x"})
    readme = (Path(release.uri) / "README.md").read_text()
    assert "[!WARNING]" not in readme and "gpt-4-0613" in readme


def test_secrets_never_reach_card_or_manifest(published) -> None:
    _, release = published
    folder = Path(release.uri)
    for name in ("README.md", "manifest.json"):
        text = (folder / name).read_text()
        for secret in SECRETS:
            assert secret not in text, (name, secret)
    readme = (folder / "README.md").read_text()
    assert "tokens_per_minute: 1000" in readme and "max_tokens: 500" in readme  # not secrets


def test_scrub_rules() -> None:
    data = scrub(
        {"apiKey": "a", "AWS_SECRET_ACCESS_KEY": "b", "max_tokens": 5, "tokenizer": "t", "list": ["hf_" + "x" * 20]}
    )
    assert data == {"apiKey": "***", "AWS_SECRET_ACCESS_KEY": "***", "max_tokens": 5, "tokenizer": "t", "list": ["***"]}
    assert scrub_text("s3://k:v@bucket/x https://api.x/v1") == "s3://***@bucket/x https://api.x/v1"


# --------------------------------------------------------------------------- versions


def test_identical_rerun_returns_the_same_release(store: Store, heuristic_tables: ReleaseTables) -> None:
    first = publish_release(store, "unit", heuristic_tables, {"run": 1}, CARD_INFO)
    again = publish_release(store, "unit", _tables(_scored()), {"run": 2, "seconds": 9.9}, CARD_INFO)
    assert (again.version, again.uri, again.created) == (1, first.uri, False)
    assert again.manifest["content_hash"] == first.manifest["content_hash"]
    assert sorted(p.name for p in Path(store.path("releases")).iterdir()) == ["v1"]


def test_changed_data_creates_v2_with_parent_v1(store: Store, heuristic_tables: ReleaseTables) -> None:
    first = publish_release(store, "unit", heuristic_tables, {}, CARD_INFO)
    changed = publish_release(store, "unit", _tables(_scored(bump=0.5)), {}, CARD_INFO)
    assert changed.version == 2 and changed.created
    assert changed.manifest["parent"] == 1
    assert changed.manifest["parent_content_hash"] == first.manifest["content_hash"]
    assert changed.manifest["content_hash"] != first.manifest["content_hash"]
    listed = list_releases(store)
    assert [r["version"] for r in listed] == [1, 2]
    assert listed[1]["uri"] == changed.uri and listed[1]["counts"] == changed.manifest["counts"]
    assert listed[0]["created_at"]


def test_changed_card_inputs_create_a_new_version(store: Store, heuristic_tables: ReleaseTables) -> None:
    publish_release(store, "unit", heuristic_tables, {}, CARD_INFO)
    other = publish_release(store, "unit", heuristic_tables, {}, {**CARD_INFO, "spec_hash": "fedcba9876543210"})
    assert other.version == 2


def test_failure_mid_publish_leaves_nothing(store: Store, heuristic_tables, monkeypatch) -> None:
    publish_release(store, "unit", heuristic_tables, {}, CARD_INFO)
    real_put = publish_module._put

    def failing_put(fs, path, data, local):  # noqa: ANN001, ANN202
        if path.endswith("README.md"):
            raise OSError("disk full")
        return real_put(fs, path, data, local)

    monkeypatch.setattr(publish_module, "_put", failing_put)
    with pytest.raises(OSError, match="disk full"):
        publish_release(store, "unit", _tables(_scored(bump=1.0)), {}, CARD_INFO)
    assert sorted(p.name for p in Path(store.path("releases")).iterdir()) == ["v1"]
    assert [r["version"] for r in list_releases(store)] == [1]


def test_failure_on_first_publish_leaves_no_release_folder(store: Store, heuristic_tables, monkeypatch) -> None:
    calls = {"n": 0}
    real = publish_module._serialise

    def second_fails(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("serialiser crashed")
        return real(*args, **kwargs)

    monkeypatch.setattr(publish_module, "_serialise", second_fails)
    with pytest.raises(RuntimeError, match="serialiser"):
        publish_release(store, "unit", heuristic_tables, {}, CARD_INFO)
    releases = Path(store.path("releases"))
    assert not releases.exists() or list(releases.iterdir()) == []


def test_folder_without_manifest_is_not_a_release(store: Store, heuristic_tables: ReleaseTables) -> None:
    stray = Path(store.path("releases", "v7"))
    stray.mkdir(parents=True)
    (stray / "README.md").write_text("half")
    assert list_releases(store) == []
    release = publish_release(store, "unit", heuristic_tables, {}, CARD_INFO)
    assert release.version == 1


def test_other_local_target_numbers_its_own_releases(store: Store, heuristic_tables, tmp_path: Path) -> None:
    target = tmp_path / "exported"
    release = publish_release(store, "unit", heuristic_tables, {}, CARD_INFO, target_uri=str(target))
    assert release.uri == str(target / "v1")
    assert (target / "v1" / "manifest.json").exists() and not Path(store.path("releases")).exists()
    assert [r["version"] for r in list_releases(store, target_uri=str(target))] == [1]


def test_object_store_target_writes_manifest_last_and_reruns_write_nothing(
    store: Store, heuristic_tables, monkeypatch
) -> None:
    import fsspec

    calls: list[str] = []
    real_put = publish_module._put

    def recording_put(fs, path, data, local):  # noqa: ANN001, ANN202
        calls.append(path)
        return real_put(fs, path, data, local)

    monkeypatch.setattr(publish_module, "_put", recording_put)
    uri = "memory://bucket-unit/releases"
    try:
        release = publish_release(store, "unit", heuristic_tables, {}, CARD_INFO, target_uri=uri)
        assert release.uri == "memory:///bucket-unit/releases/v1" or release.uri.endswith("bucket-unit/releases/v1")
        assert calls[-1].endswith("v1/manifest.json") and calls[-2].endswith("v1/README.md")
        assert not any(".staging" in c for c in calls)
        calls.clear()
        again = publish_release(store, "unit", heuristic_tables, {}, CARD_INFO, target_uri=uri)
        assert (again.version, again.created, calls) == (1, False, [])

        # a failure on the object store removes the partial v2
        def failing_put(fs, path, data, local):  # noqa: ANN001, ANN202
            if path.endswith("README.md"):
                raise OSError("connection reset")
            return real_put(fs, path, data, local)

        monkeypatch.setattr(publish_module, "_put", failing_put)
        with pytest.raises(OSError):
            publish_release(store, "unit", _tables(_scored(bump=1.0)), {}, CARD_INFO, target_uri=uri)
        fs = fsspec.filesystem("memory")
        assert not fs.exists("/bucket-unit/releases/v2")
        assert [r["version"] for r in list_releases(store, target_uri=uri)] == [1]
    finally:
        fsspec.filesystem("memory").rm("/bucket-unit", recursive=True)


def test_empty_split_is_counted_but_not_declared(store: Store) -> None:
    import datasets

    tables = _tables(_scored(1), test_size=0.5)  # one binarized row: it goes to train, test is empty
    release = publish_release(store, "unit", tables, {}, {})
    assert release.manifest["counts"]["binarized"] == {
        "train_prefs": 1,
        "test_prefs": 0,
        "train_sft": 1,
        "test_sft": 0,
        "train_gen": 1,
        "test_gen": 0,
    }
    assert not list(Path(release.uri).glob("binarized/test_*"))
    loaded = datasets.load_dataset(release.uri, name="binarized")
    assert {split: ds.num_rows for split, ds in loaded.items()} == {"train_prefs": 1, "train_sft": 1, "train_gen": 1}
    assert "0 (empty" in (Path(release.uri) / "README.md").read_text()


# --------------------------------------------------------------------------- the Hub


class FakeHfApi:
    """Records the calls publish_to_hub makes (the Hub is unreachable from tests)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def create_repo(self, repo_id: str, **kwargs: Any) -> str:
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        return f"https://huggingface.co/datasets/{repo_id}"

    def upload_folder(self, **kwargs: Any) -> Any:
        self.calls.append(("upload_folder", kwargs))
        files = sorted(str(p.relative_to(kwargs["folder_path"])) for p in Path(kwargs["folder_path"]).rglob("*"))
        self.calls.append(("files", {"files": files}))
        return type("Commit", (), {"commit_url": f"https://huggingface.co/datasets/{kwargs['repo_id']}/commit/abc"})()

    def create_tag(self, repo_id: str, **kwargs: Any) -> None:
        self.calls.append(("create_tag", {"repo_id": repo_id, **kwargs}))


def test_publish_to_hub_uploads_the_release_and_tags_it(published) -> None:
    _, release = published
    api = FakeHfApi()
    url = publish_to_hub(release.uri, "org/uf-unit", token="hf_" + "t" * 30, api=api)
    assert url.endswith("/commit/abc")
    names = [name for name, _ in api.calls]
    assert names == ["create_repo", "upload_folder", "files", "create_tag"]
    repo = api.calls[0][1]
    assert repo["repo_type"] == "dataset" and repo["private"] is True and repo["exist_ok"] is True
    upload = api.calls[1][1]
    assert upload["folder_path"] == release.uri and upload["repo_type"] == "dataset"
    assert "completions/*" in upload["delete_patterns"]  # stale shards of an older release go
    assert "README.md" in api.calls[2][1]["files"] and "manifest.json" in api.calls[2][1]["files"]
    assert api.calls[3][1]["tag"] == "v1"


# --------------------------------------------------------------------------- the stage tasks


@pytest.fixture(scope="module")
def dask_address():
    """One real LocalCluster for this module; the aggregate task connects to it by address."""
    from ultrafeedback.infra.dask_cluster import dask_client

    with dask_client(None, 1) as client:
        yield client.scheduler.address


@pytest.mark.parametrize("layout", ["sharded", "checkpoint parts"])
def test_stage_tasks_from_store_to_release(tmp_path: Path, dask_address: str, layout: str) -> None:
    """aggregate -> pairs -> publish as the build flow calls them (the Prefect tasks' functions),
    on scored shard files and on a store written before them (checkpoint parts)."""
    from ultrafeedback.spec import validate_dict
    from ultrafeedback.tasks.aggregate.task import AGGREGATE_JSON, aggregate_task
    from ultrafeedback.tasks.pairs.task import pairs_task, read_binarized, read_pairs
    from ultrafeedback.tasks.publish.task import publish_task

    spec = validate_dict(
        {
            "name": "unit",
            "store": str(tmp_path / "store"),
            "sources": [
                {"name": "evol_instruct", "loader": "jsonl", "path": "unused.jsonl"},
                {"name": "truthful_qa", "loader": "jsonl", "path": "unused.jsonl"},
            ],
            "endpoints": {"openai": {"base_url": "https://api.example.com/v1", "api_key_env": "MY_KEY_ENV"}},
            "models": [{"id": m, "backend": "embedded"} for m in ["m-a", "m-b", "m-c", "m-d"]],
            "binarize": {"test_size": 2, "exclude_sources": ["truthful_qa"]},
            "publish": {"max_shard_rows": 3, "targets": [{"kind": "local", "uri": str(tmp_path / "export")}]},
            "execution": {"dask_address": dask_address, "storage_options": {"secret": SECRETS[3]}},
        }
    )
    store = Store(spec.store, spec.name, spec.execution.storage_options)
    if layout == "sharded":
        write_scored_shards(store, _scored_rows(), instructions_per_shard=2)
    else:
        store.results("scored", ScoredCompletion, key="completion_id").replace(_scored_rows())

    aggregated = aggregate_task.fn(spec)
    assert aggregated["stats"]["completions"] == 24 and store.read_json(AGGREGATE_JSON) == aggregated
    info = pairs_task.fn(spec)
    assert info["pairs"] == len(read_pairs(store)) == aggregated["stats"]["pairs"]
    assert info["binarized"] == 5
    assert info["splits"] == {
        "train_prefs": 3,
        "test_prefs": 2,
        "train_sft": 3,
        "test_sft": 1,
        "train_gen": 3,
        "test_gen": 1,
    }
    assert info["binarize_dropped"] == {"excluded_source": 1}  # truthful_qa, as H4 does
    assert all(row["chosen"][0]["role"] == "user" for row in read_binarized(store))

    gates = {"pairs": {"stage": "pairs", "passed": True, "checks": [{"name": "c", "passed": True}], "row_count": 9}}
    release = publish_task.fn(spec, aggregated, {"pairs": {**gates["pairs"], "duration_s": 0.2}}, {"seconds": 1})
    assert release["version"] == 1 and release["created"]
    assert release["targets"] == [{"kind": "local", "uri": str(tmp_path / "export" / "v1"), "version": 1}]
    manifest = json.loads((Path(release["uri"]) / "manifest.json").read_text())
    assert manifest["gate_results"]["pairs"]["duration_s"] == 0.2 and manifest["build"] == {"seconds": 1}
    readme = (Path(release["uri"]) / "README.md").read_text()
    assert SECRETS[3] not in readme and SECRETS[3] not in json.dumps(manifest)
    assert spec.spec_hash() in readme and "Heuristic ratings" in readme

    # a rerun with new timings (gate durations, stage seconds) publishes nothing new
    again = publish_task.fn(spec, aggregate_task.fn(spec), {"pairs": {**gates["pairs"], "duration_s": 3.0}}, {})
    assert (again["version"], again["created"]) == (1, False)
    assert again["targets"] == release["targets"]


# --------------------------------------------------------------------------- S3 (moto's server)


@pytest.fixture(scope="module")
def s3_options():
    """A real S3-compatible server on loopback (moto), stopped at the end of the module."""
    import shutil
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    server = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
    if not Path(server).exists():
        pytest.skip("moto_server is not installed (the dev extra)")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    proc = subprocess.Popen(
        [server, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(url, timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        yield {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": url}}
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_s3_store_aggregate_and_release(s3_options: dict[str, Any], heuristic_tables: ReleaseTables) -> None:
    import datasets
    import fsspec

    from ultrafeedback.infra.store import arrow_schema

    fs = fsspec.filesystem("s3", **s3_options)
    fs.mkdir("uf-bucket")
    store = Store("s3://uf-bucket/lake", "unit", s3_options)
    store.write_table("scored/part-0.parquet", pa_table(_scored_rows(), arrow_schema(ScoredCompletion)))
    stats = aggregate(store.uri("scored") + "/*.parquet", s3_options, None).stats
    assert (stats["prompts"], stats["completions"]) == (6, 24)

    release = publish_release(store, "unit", heuristic_tables, {}, CARD_INFO)
    assert release.uri == "s3://uf-bucket/lake/unit/releases/v1"
    assert fs.exists("uf-bucket/lake/unit/releases/v1/manifest.json")
    assert not fs.glob("uf-bucket/lake/unit/releases/.staging*")
    again = publish_release(store, "unit", heuristic_tables, {}, CARD_INFO)
    assert (again.version, again.created) == (1, False)
    assert [r["uri"] for r in list_releases(store)] == [release.uri]
    loaded = datasets.load_dataset(
        "parquet",
        data_files={"train_prefs": f"{release.uri}/binarized/train_prefs-*.parquet"},
        split="train_prefs",
        storage_options=s3_options,
        streaming=True,  # HF_DATASETS_OFFLINE forbids downloading into the cache, not streaming
    )
    assert sum(1 for _ in loaded) == release.manifest["counts"]["binarized"]["train_prefs"]


def test_s3_store_pairs_stage_and_streamed_release(s3_options: dict[str, Any], tmp_path: Path) -> None:
    """The sharded pairs stage and the streamed release on a real S3 server: files uploaded as
    they are written, identical to the whole-table release; a rerun uploads nothing."""
    import fsspec

    from tests.tasks.pairs.scored_data import pairs_spec, scored_rows
    from ultrafeedback.tasks.pairs.task import pairs_task, read_binarized_splits, read_pairs
    from ultrafeedback.tasks.publish.publish import ShardedTables

    s3_options = {k: s3_options[k] for k in ("key", "secret", "client_kwargs")}  # datasets adds an "hf" key
    fs = fsspec.filesystem("s3", **s3_options)
    fs.mkdir("uf-shards")
    spec = pairs_spec("s3://uf-shards/lake", test_size=0.2)
    spec = spec.model_copy(update={"execution": spec.execution.model_copy(update={"storage_options": s3_options})})
    store = Store(spec.store, spec.name, s3_options)
    rows = scored_rows(60, seed=2)
    write_scored_shards(store, rows, instructions_per_shard=9)
    info = pairs_task.fn(spec)
    scored = pd.DataFrame(rows)
    binarized = split_binarized(binarize(scored, "h4", 42, ["truthful_qa"]), 0.2, seed=42)
    assert read_pairs(store).to_dict("records") == [p.model_dump() for p in build_pairs(scored)]
    assert read_binarized_splits(store) == binarized and info["splits"]["test_prefs"] == len(binarized["test_prefs"])

    release = publish_release(store, "unit", ShardedTables(None), {}, CARD_INFO, max_shard_rows=40)
    assert release.uri == "s3://uf-shards/lake/unit/releases/v1"
    whole = ReleaseTables(scored, build_pairs(scored), binarized)
    local = publish_release(store, "unit", whole, {}, CARD_INFO, str(tmp_path / "local"), max_shard_rows=40)
    for relpath, file in local.manifest["files"].items():
        if relpath.endswith(".parquet"):
            assert release.manifest["files"][relpath] == file
            assert fs.cat_file(f"uf-shards/lake/unit/releases/v1/{relpath}") == (Path(local.uri) / relpath).read_bytes()
    uploads = fs.find("uf-shards/lake/unit/releases")
    assert pairs_task.fn(spec) == info
    again = publish_release(store, "unit", ShardedTables(None), {}, CARD_INFO, max_shard_rows=40)
    assert (again.version, again.created) == (1, False) and fs.find("uf-shards/lake/unit/releases") == uploads


def pa_table(rows: list[dict[str, Any]], schema: Any) -> Any:
    import pyarrow as pa

    return pa.Table.from_pylist(rows, schema=schema)

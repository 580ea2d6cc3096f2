"""The embedded default end to end: the CPU model generates, the heuristic judge rates, and the
release says - in the data and on the card - that the ratings are heuristic."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.embedded]

REPO = Path(__file__).resolve().parents[2]


def test_demo_spec_builds_on_the_cpu(prefect_harness, tmp_path):
    import datasets

    from ultrafeedback.flows.build import build

    overrides = [
        f"store={tmp_path / 'store'}",
        "sources.demo_mixed.quota=2",
        "sources.demo_truthful.quota=1",
        "sources.demo_false_premise.quota=1",
        "sampling.max_tokens=12",
        "binarize.test_size=0.5",
    ]
    uri = build(spec_path=str(REPO / "deployments" / "specs" / "demo.yaml"), overrides=overrides)
    completions = datasets.load_dataset(uri, name="completions", split="train")
    assert len(completions) == 4
    for row in completions:
        assert len(row["completions"]) == 4
        assert len({c["model"] for c in row["completions"]}) == 4
        for completion in row["completions"]:
            assert completion["response"].strip()
            assert completion["judge_kind"] == "heuristic"
            assert completion["annotations"]["helpfulness"]["Rationale For Rating"].startswith(
                "Heuristic (not a model judgement)"
            )
            assert 1 <= completion["overall_score"] <= 10
    card = (Path(uri) / "README.md").read_text()
    assert "heuristic" in card.lower() and "not a model" in card.lower()
    # every non-tied pair of each instruction's completions, by the fine-grained score (the spec's
    # pairs.score), chosen strictly above rejected
    expected = 0
    for row in completions:
        scores = [round(c["fine-grained_score"], 6) for c in row["completions"] if c["fine-grained_score"] is not None]
        expected += sum(1 for i, a in enumerate(scores) for b in scores[i + 1 :] if a != b)
    pairs = datasets.load_dataset(uri, name="pairs", split="train")
    assert pairs.num_rows == expected
    assert all(p["score_chosen"] > p["score_rejected"] for p in pairs)
    assert set(datasets.load_dataset(uri, name="binarized")) >= {"train_prefs"}

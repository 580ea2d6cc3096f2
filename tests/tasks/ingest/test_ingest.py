"""ingest(): quarantine reasons, dedup, decontamination, quotas, field mapping and the demo data."""

from __future__ import annotations

import csv
import json
import os
import random
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.tasks.ingest.ingest_helpers import make_spec
from ultrafeedback.keys import instruction_id
from ultrafeedback.tasks.ingest.dedup import jaccard, near_key, shingles
from ultrafeedback.tasks.ingest.ingest import RAW_LIMIT, IngestResult, ingest
from ultrafeedback.tasks.ingest.loaders import IngestError

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[3]


def write_jsonl(path: Path, rows: list[Any]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path.name


def jsonl_source(tmp_path: Path, name: str, rows: list[Any], **extra: Any) -> dict[str, Any]:
    return {"name": name, "loader": "jsonl", "path": write_jsonl(tmp_path / f"{name}.jsonl", rows), **extra}


def check_stats_add_up(result: IngestResult) -> None:
    for counts in result.stats.values():
        parts = (
            sum(counts["quarantined"].values())
            + counts["exact_duplicates"]
            + counts["near_duplicates"]
            + counts["decontaminated"]
            + counts["over_quota"]
            + counts["kept"]
        )
        assert parts == counts["read"], counts
    totals = result.totals()
    assert totals["kept"] == len(result.instructions)
    assert totals["quarantined"] == len(result.quarantined)
    assert totals["read"] == len(result.instructions) + len(result.quarantined) + len(result.dropped)


# --------------------------------------------------------------------------- quarantine


QUARANTINE_CASES = [
    ("malformed_record", '{"instruction": "broken', "s.jsonl:2: invalid JSON"),
    (
        "malformed_record",
        '{"instruction": "x \\ud800 y"}',  # valid JSON, but a lone surrogate is not text
        "s.jsonl:2: column 'instruction' holds a lone surrogate \\ud800",
    ),
    ("missing_field", '{"text": "no instruction key"}', "instruction column 'instruction' is absent"),
    ("missing_field", '{"instruction": null}', "instruction column 'instruction' is null"),
    ("not_text", '{"instruction": 42}', "instruction column 'instruction' holds int, not text"),
    ("not_text", '{"instruction": ["a", "b"]}', "instruction column 'instruction' holds a list, not text"),
    (
        "empty",
        '{"instruction": "  \\n\\t \\r\\n "}',
        "instruction column 'instruction' is empty after normalisation",
    ),
    (
        "too_long",
        '{"instruction": "' + "x" * 41 + '"}',
        "41 characters after normalisation > ingest.max_chars 40",
    ),
]


@pytest.mark.parametrize(("reason", "line", "detail"), QUARANTINE_CASES)
def test_each_bad_record_is_quarantined_with_its_reason(tmp_path: Path, reason: str, line: str, detail: str) -> None:
    (tmp_path / "s.jsonl").write_text('{"instruction": "A fine question?"}\n' + line + "\n", encoding="utf-8")
    spec = make_spec(tmp_path, [{"name": "s", "loader": "jsonl", "path": "s.jsonl"}], ingest={"max_chars": 40})
    result = ingest(spec)
    assert [i.instruction for i in result.instructions] == ["A fine question?"]
    assert len(result.quarantined) == 1
    bad = result.quarantined[0]
    assert (bad.source, bad.origin, bad.reason) == ("s", "s.jsonl:2", reason)
    assert bad.detail.startswith(detail)
    assert bad.raw == line
    assert result.stats["s"]["quarantined"] == {reason: 1}
    assert result.dropped == []
    check_stats_add_up(result)


def test_mapped_answer_column_absent_is_missing_field_and_bad_answer_is_not_text(tmp_path: Path) -> None:
    rows = [
        {"q": "Kept?", "good": ["yes"]},
        {"q": "No answers column?"},
        {"q": "Answers are an object?", "good": {"a": 1}},
    ]
    spec = make_spec(
        tmp_path,
        [jsonl_source(tmp_path, "s", rows, fields={"instruction": "q", "correct_answers": "good"})],
    )
    result = ingest(spec)
    assert [i.instruction for i in result.instructions] == ["Kept?"]
    assert [(q.origin, q.reason, q.detail) for q in result.quarantined] == [
        ("s.jsonl:2", "missing_field", "correct_answers column 'good' is absent"),
        ("s.jsonl:3", "not_text", "column 'good' holds an object, not text or a list"),
    ]


def test_quarantine_keeps_an_excerpt_not_the_record(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, [jsonl_source(tmp_path, "s", [{"instruction": "y" * 5000}])], ingest={"max_chars": 100})
    (bad,) = ingest(spec).quarantined
    assert bad.reason == "too_long"
    assert bad.raw == '{"instruction": "' + "y" * (RAW_LIMIT - 17) + f"... [{5019 - RAW_LIMIT} more characters]"
    assert RAW_LIMIT <= 200


def test_lone_surrogates_in_answers_and_ids_are_quarantined(tmp_path: Path) -> None:
    lines = [
        '{"q": "Kept?", "good": ["yes"], "key": "a"}',
        '{"q": "Bad answer?", "good": ["fine", "no \\udc00 pe"], "key": "b"}',
        '{"q": "Bad id?", "good": [], "key": "\\ud83d"}',
        '{"q": "A pair is fine \\ud83d\\ude00", "good": [], "key": "d"}',
    ]
    (tmp_path / "s.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    fields = {"instruction": "q", "correct_answers": "good", "id": "key"}
    spec = make_spec(tmp_path, [{"name": "s", "loader": "jsonl", "path": "s.jsonl", "fields": fields}])
    result = ingest(spec)
    assert sorted(i.instruction for i in result.instructions) == ["A pair is fine \U0001f600", "Kept?"]
    assert [(q.origin, q.reason, q.detail) for q in result.quarantined] == [
        ("s.jsonl:2", "malformed_record", "s.jsonl:2: column 'good' holds a lone surrogate \\udc00, not valid Unicode"),
        ("s.jsonl:3", "malformed_record", "s.jsonl:3: column 'key' holds a lone surrogate \\ud83d, not valid Unicode"),
    ]
    check_stats_add_up(result)


# --------------------------------------------------------------------------- normalisation, ids, order


def test_instructions_are_normalised_with_content_ids_and_sorted(tmp_path: Path) -> None:
    rows = [{"instruction": "  Second\r\nline   \n"}, {"instruction": "First"}]
    spec = make_spec(
        tmp_path,
        [jsonl_source(tmp_path, "zeta", rows), jsonl_source(tmp_path, "alpha", [{"instruction": "Alpha"}])],
    )
    result = ingest(spec)
    got = [(i.source, i.instruction, i.id) for i in result.instructions]
    zeta = sorted(
        [
            ("zeta", "Second\nline", instruction_id("zeta", "Second\nline")),
            ("zeta", "First", instruction_id("zeta", "First")),
        ],
        key=lambda t: t[2],
    )
    assert got == [("alpha", "Alpha", instruction_id("alpha", "Alpha")), *zeta]
    assert all(i.correct_answers == ["None"] and i.incorrect_answers == ["None"] for i in result.instructions)


# --------------------------------------------------------------------------- exact dedup


def test_exact_duplicates_within_and_across_sources(tmp_path: Path) -> None:
    first = jsonl_source(tmp_path, "first", [{"instruction": "Same text"}, {"instruction": "Same text  "}])
    second = jsonl_source(tmp_path, "second", [{"instruction": "Other"}, {"instruction": "Same text"}])
    spec = make_spec(tmp_path, [first, second], ingest={"dedup": "exact"})
    result = ingest(spec)
    kept_id = instruction_id("first", "Same text")
    assert sorted((i.source, i.instruction) for i in result.instructions) == [
        ("first", "Same text"),
        ("second", "Other"),
    ]
    assert [(d.source, d.origin, d.reason) for d in result.dropped] == [
        ("first", "first.jsonl:2", f"duplicate_of:{kept_id}"),
        ("second", "second.jsonl:2", f"duplicate_of:{kept_id}"),
    ]
    assert "first.jsonl:1 (source first)" in result.dropped[1].detail
    assert result.quarantined == []
    assert result.stats["first"]["exact_duplicates"] == 1
    assert result.stats["second"]["exact_duplicates"] == 1
    check_stats_add_up(result)


def test_first_source_in_spec_order_keeps_a_shared_instruction(tmp_path: Path) -> None:
    a = jsonl_source(tmp_path, "a", [{"instruction": "Shared"}])
    b = jsonl_source(tmp_path, "b", [{"instruction": "Shared"}])
    assert [i.source for i in ingest(make_spec(tmp_path, [b, a], ingest={"dedup": "exact"})).instructions] == ["b"]
    assert [i.source for i in ingest(make_spec(tmp_path, [a, b], ingest={"dedup": "exact"})).instructions] == ["a"]


def test_dedup_none_keeps_cross_source_repeats_but_not_repeated_ids(tmp_path: Path) -> None:
    a = jsonl_source(tmp_path, "a", [{"instruction": "Shared"}, {"instruction": "Shared"}])
    b = jsonl_source(tmp_path, "b", [{"instruction": "Shared"}])
    result = ingest(make_spec(tmp_path, [a, b], ingest={"dedup": "none"}))
    assert sorted(i.source for i in result.instructions) == ["a", "b"]
    assert [d.reason for d in result.dropped] == [f"duplicate_of:{instruction_id('a', 'Shared')}"]


# --------------------------------------------------------------------------- near dedup

LONG = (
    "Write a detailed guide for a beginner who wants to start growing tomatoes on a small city "
    "balcony, covering the choice of pots, soil, watering schedule, sunlight and common pests."
)
LONG_VARIANT = LONG.replace("beginner", "begginer")  # a typo: 5-gram Jaccard 0.93


def test_near_duplicates_are_dropped_and_distinct_questions_kept(tmp_path: Path) -> None:
    assert jaccard(shingles(near_key(LONG)), shingles(near_key(LONG_VARIANT))) >= 0.9
    rows = [
        {"instruction": LONG},
        {"instruction": "what is 2 + 2"},
        {"instruction": "What is 3 + 3?"},
    ]
    other = [
        {"instruction": LONG_VARIANT},
        {"instruction": "WHAT IS 2+2?!"},
        {"instruction": "Write a poem about the sea."},
    ]
    spec = make_spec(tmp_path, [jsonl_source(tmp_path, "a", rows), jsonl_source(tmp_path, "b", other)])
    result = ingest(spec)
    assert {i.instruction for i in result.instructions} == {
        LONG,
        "What is 3 + 3?",
        "Write a poem about the sea.",
        "what is 2 + 2",
    }
    by_origin = {d.origin: d for d in result.dropped}
    assert set(by_origin) == {"b.jsonl:1", "b.jsonl:2"}
    assert by_origin["b.jsonl:1"].reason == f"near_duplicate_of:{instruction_id('a', LONG)}"
    assert "character 5-gram Jaccard" in by_origin["b.jsonl:1"].detail
    assert by_origin["b.jsonl:2"].reason == f"near_duplicate_of:{instruction_id('a', 'what is 2 + 2')}"
    assert "equal up to case, punctuation and spacing" in by_origin["b.jsonl:2"].detail
    assert result.stats["b"]["near_duplicates"] == 2
    check_stats_add_up(result)


def test_exact_mode_keeps_near_duplicates(tmp_path: Path) -> None:
    spec = make_spec(
        tmp_path,
        [jsonl_source(tmp_path, "a", [{"instruction": LONG}, {"instruction": LONG_VARIANT}])],
        ingest={"dedup": "exact"},
    )
    assert len(ingest(spec).instructions) == 2


def test_near_dedup_finds_planted_variants_among_many(tmp_path: Path) -> None:
    rng = random.Random(7)
    vocab = [f"word{i}" for i in range(3000)]
    base = [" ".join(rng.choice(vocab) for _ in range(40)) for _ in range(2000)]
    variants = []
    for text in base[:100]:
        words = text.split()
        words[rng.randrange(len(words))] = "changed"
        variants.append(" ".join(words))
    spec = make_spec(
        tmp_path,
        [
            jsonl_source(tmp_path, "a", [{"instruction": t} for t in base]),
            jsonl_source(tmp_path, "b", [{"instruction": t} for t in variants]),
        ],
    )
    result = ingest(spec)
    assert result.stats["a"]["kept"] == 2000
    assert result.stats["b"]["near_duplicates"] == 100
    assert result.stats["b"]["kept"] == 0


# --------------------------------------------------------------------------- decontamination


def test_decontamination_drops_exact_benchmark_matches(tmp_path: Path) -> None:
    with (tmp_path / "bench.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Type", "Question"])
        writer.writerow(["Misc", "Is the sky green?  "])
    rows = [
        {"instruction": "Is the sky green?"},
        {"instruction": "Is the sky blue?"},
        {"instruction": "is the sky green?"},
    ]
    spec = make_spec(
        tmp_path,
        [jsonl_source(tmp_path, "s", rows)],
        ingest={"decontaminate": ["bench.csv"], "dedup": "exact"},
    )
    result = ingest(spec)
    assert sorted(i.instruction for i in result.instructions) == ["Is the sky blue?", "is the sky green?"]
    assert [(d.origin, d.reason, d.detail) for d in result.dropped] == [
        ("s.jsonl:1", "contaminated:bench.csv", "equals benchmark question bench.csv:row 0")
    ]
    assert result.stats["s"]["decontaminated"] == 1
    assert result.quarantined == []


def test_missing_source_fails_before_reading_any_source(tmp_path: Path) -> None:
    spec = make_spec(
        tmp_path,
        [
            jsonl_source(tmp_path, "a", [{"instruction": "x"}]),
            {"name": "b", "loader": "jsonl", "path": "nope.jsonl"},
        ],
    )
    with pytest.raises(IngestError, match=r"sources\[1\] \(b\)\.path: file not found"):
        ingest(spec)


# --------------------------------------------------------------------------- quotas


def _quota_pick(tmp_path: Path, rows: list[dict[str, str]], seed: int, quota: int = 10) -> list[str]:
    spec = make_spec(tmp_path, [jsonl_source(tmp_path, "s", rows, quota=quota)], seed=seed)
    result = ingest(spec)
    check_stats_add_up(result)
    assert result.stats["s"]["over_quota"] == len({r["instruction"] for r in rows}) - quota
    assert all(d.reason == "over_quota" for d in result.dropped if "duplicate" not in d.reason)
    return [i.id for i in result.instructions]


def test_quota_pick_depends_on_seed_and_ids_not_on_input_order(tmp_path: Path) -> None:
    rows = [{"instruction": f"Question number {n} about topic {n * 7 % 13}?"} for n in range(60)]
    pick = _quota_pick(tmp_path, rows, seed=1)
    assert len(pick) == 10
    assert _quota_pick(tmp_path, rows, seed=1) == pick
    shuffled = rows[:]
    random.Random(3).shuffle(shuffled)
    assert _quota_pick(tmp_path, shuffled, seed=1) == pick
    assert _quota_pick(tmp_path, rows, seed=2) != pick


def test_quota_counts_unique_instructions(tmp_path: Path) -> None:
    rows = [{"instruction": f"Distinct item {n}"} for n in range(5)] * 3
    spec = make_spec(tmp_path, [jsonl_source(tmp_path, "s", rows, quota=5)])
    result = ingest(spec)
    assert len(result.instructions) == 5
    assert result.stats["s"]["exact_duplicates"] == 10
    assert result.stats["s"]["over_quota"] == 0


def test_quota_cut_does_not_shadow_a_later_source(tmp_path: Path) -> None:
    rows = [{"instruction": f"Item {n}"} for n in range(20)]
    a = jsonl_source(tmp_path, "a", rows, quota=1)
    b = jsonl_source(tmp_path, "b", rows)
    result = ingest(make_spec(tmp_path, [a, b], ingest={"dedup": "exact"}))
    kept = {i.instruction: i.source for i in result.instructions}
    assert len(kept) == 20
    assert list(kept.values()).count("a") == 1
    assert result.stats["b"]["exact_duplicates"] == 1


# --------------------------------------------------------------------------- field mapping


def test_field_mapping_with_answers_and_ids_across_formats(tmp_path: Path) -> None:
    write_jsonl(
        tmp_path / "j.jsonl",
        [
            {"key": "q1", "question": "JSON question?", "right": ["Yes", " It is "], "wrong": "No"},
            {"key": "q2", "question": "Unanswered?", "right": [], "wrong": None},
        ],
    )
    (tmp_path / "c.csv").write_text(
        'question,right,wrong\nCSV question?,A; B,"[""C; still C"", ""D""]"\nBlank answers?,,\n',
        encoding="utf-8",
    )
    pq.write_table(
        pa.table({"question": ["Parquet question?"], "right": [["P"]], "wrong": [["Q", None]]}),
        tmp_path / "p.parquet",
    )
    fields = {"instruction": "question", "correct_answers": "right", "incorrect_answers": "wrong"}
    spec = make_spec(
        tmp_path,
        [
            {"name": "j", "loader": "jsonl", "path": "j.jsonl", "fields": {**fields, "id": "key"}},
            {"name": "c", "loader": "csv", "path": "c.csv", "fields": fields},
            {"name": "p", "loader": "parquet", "path": "p.parquet", "fields": fields},
        ],
    )
    result = ingest(spec)
    got = {i.instruction: (i.correct_answers, i.incorrect_answers, i.origin) for i in result.instructions}
    assert got == {
        "JSON question?": (["Yes", "It is"], ["No"], "j.jsonl:1 (id q1)"),
        "Unanswered?": (["None"], ["None"], "j.jsonl:2 (id q2)"),
        "CSV question?": (["A", "B"], ["C; still C", "D"], "c.csv:row 0"),
        "Blank answers?": (["None"], ["None"], "c.csv:row 1"),
        "Parquet question?": (["P"], ["Q"], "p.parquet:row 0"),
    }


def test_hf_source_on_a_local_folder_goes_through_ingest(tmp_path: Path) -> None:
    folder = tmp_path / "local_hf"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", [{"prompt": "From a datasets folder?"}, {"prompt": None}])
    spec = make_spec(tmp_path, [{"name": "h", "loader": "hf", "path": "local_hf", "fields": {"instruction": "prompt"}}])
    result = ingest(spec, hf_cache_dir=str(tmp_path / "cache"))
    assert [(i.instruction, i.origin) for i in result.instructions] == [
        ("From a datasets folder?", "local_hf:train:row 0")
    ]
    assert [(q.origin, q.reason) for q in result.quarantined] == [("local_hf:train:row 1", "missing_field")]


# --------------------------------------------------------------------------- demo data


def test_demo_data_files_ingest_cleanly() -> None:
    data = REPO / "deployments" / "data"
    spec = make_spec(
        data,
        [
            {
                "name": "demo",
                "loader": "jsonl",
                "path": "demo_instructions.jsonl",
                "fields": {"instruction": "prompt", "id": "id"},
            },
            {
                "name": "truthful_qa",
                "loader": "csv",
                "path": "sample_truthfulqa.csv",
                "fields": {
                    "instruction": "question",
                    "correct_answers": "correct_answers",
                    "incorrect_answers": "incorrect_answers",
                },
                "world_knowledge": "answers",
            },
            {
                "name": "false_qa",
                "loader": "jsonl",
                "path": "sample_false_premise.jsonl",
                "fields": {"instruction": "question"},
                "world_knowledge": "false_premise",
            },
        ],
    )
    result = ingest(spec)
    assert result.quarantined == [] and result.dropped == []
    counts = {name: s["kept"] for name, s in result.stats.items()}
    assert counts == {"demo": 24, "truthful_qa": 6, "false_qa": 4}
    tqa = [i for i in result.instructions if i.source == "truthful_qa"]
    assert all(len(i.correct_answers) >= 2 and i.incorrect_answers != ["None"] for i in tqa)


def test_near_dedup_signs_on_a_dask_cluster_with_the_same_result(tmp_path: Path, dask_address, monkeypatch) -> None:
    from ultrafeedback.infra.dask_cluster import dask_client
    from ultrafeedback.tasks.ingest import dedup

    rng = random.Random(3)
    vocab = [f"word{i}" for i in range(500)]
    base = [" ".join(rng.choice(vocab) for _ in range(30)) for _ in range(300)]
    variants = [text.replace("word1 ", "changed ", 1) for text in base[:40]]
    sources = [
        jsonl_source(tmp_path, "a", [{"instruction": t} for t in base]),
        jsonl_source(tmp_path, "b", [{"instruction": t} for t in variants]),
    ]
    local = ingest(make_spec(tmp_path, sources))
    monkeypatch.setattr(dedup, "PART_TEXTS", 100)  # several parts, put back in order
    with dask_client(dask_address) as client:
        before = client.run(lambda dask_worker: dask_worker.state.transition_counter)
        remote = ingest(make_spec(tmp_path, sources, execution={"dask_address": dask_address}))
        after = client.run(lambda dask_worker: dask_worker.state.transition_counter)
    assert all(after[w] > before[w] for w in after)  # signed by the worker process
    assert remote.instructions == local.instructions and remote.dropped == local.dropped
    assert remote.stats["b"]["near_duplicates"] == local.stats["b"]["near_duplicates"] > 0

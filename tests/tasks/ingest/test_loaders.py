"""Loaders: each input format yields records with the right origin; whole-file problems raise."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.tasks.ingest.ingest_helpers import make_spec, write_jsonl
from ultrafeedback.spec import Spec
from ultrafeedback.tasks.ingest.loaders import (
    MISSING,
    IngestError,
    check_sources,
    get_field,
    iter_source,
    load_benchmark_questions,
    parse_csv_list,
)


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def records(spec: Spec, index: int = 0, **kwargs: Any) -> list[Any]:
    return list(iter_source(spec.sources[index], spec, **kwargs))


# --------------------------------------------------------------------------- JSONL


def test_jsonl_origins_count_file_lines_and_skip_blank_lines(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "in.jsonl").write_text('{"instruction": "a"}\n\n   \n{"instruction": "b"}\n', encoding="utf-8")
    spec = make_spec(tmp_path, [{"name": "s", "loader": "jsonl", "path": "data/in.jsonl"}])
    got = records(spec)
    assert [(r.origin, dict(r.data)) for r in got] == [
        ("data/in.jsonl:1", {"instruction": "a"}),
        ("data/in.jsonl:4", {"instruction": "b"}),
    ]
    assert all(r.error is None for r in got)


def test_jsonl_bad_line_is_an_error_record_naming_the_line(tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_text(
        '{"instruction": "a"}\n{"instruction": \n["a list"]\n{"instruction": "d"}\n', encoding="utf-8"
    )
    spec = make_spec(tmp_path, [{"name": "s", "loader": "jsonl", "path": "in.jsonl"}])
    got = records(spec)
    assert [r.origin for r in got] == ["in.jsonl:1", "in.jsonl:2", "in.jsonl:3", "in.jsonl:4"]
    assert got[1].data is None and got[1].error.startswith("invalid JSON")
    assert got[1].raw == '{"instruction": '
    assert got[2].error == "expected a JSON object, got an array"
    assert got[3].data == {"instruction": "d"}


def test_jsonl_invalid_utf8_line_is_an_error_record(tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_bytes(b'{"instruction": "\xff"}\n{"instruction": "ok"}\n')
    spec = make_spec(tmp_path, [{"name": "s", "loader": "jsonl", "path": "in.jsonl"}])
    got = records(spec)
    assert "not valid UTF-8" in got[0].error
    assert got[1].data == {"instruction": "ok"}


def test_jsonl_gzip_and_folder_of_files(tmp_path: Path) -> None:
    folder = tmp_path / "parts"
    write_jsonl(folder / "b.jsonl", [{"instruction": "second"}])
    with gzip.open(folder / "a.jsonl.gz", "wt", encoding="utf-8") as handle:
        handle.write(json.dumps({"instruction": "first"}) + "\n")
    (folder / "notes.txt").write_text("ignored", encoding="utf-8")
    spec = make_spec(tmp_path, [{"name": "s", "loader": "jsonl", "path": "parts"}])
    got = records(spec)
    assert [(r.origin, r.data["instruction"]) for r in got] == [
        ("parts/a.jsonl.gz:1", "first"),
        ("parts/b.jsonl:1", "second"),
    ]


def test_remote_url_goes_through_fsspec_and_is_named_by_url() -> None:
    fs = fsspec.filesystem("memory")
    fs.pipe("/ingest-test/remote.jsonl", b'{"instruction": "from a bucket"}\n')
    try:
        spec = make_spec(Path("."), [{"name": "s", "loader": "jsonl", "path": "memory://ingest-test/remote.jsonl"}])
        got = records(spec)
    finally:
        fs.rm("/ingest-test", recursive=True)
    assert [(r.origin, r.data["instruction"]) for r in got] == [
        ("memory:///ingest-test/remote.jsonl:1", "from a bucket")
    ]


# --------------------------------------------------------------------------- missing files


def test_missing_file_names_the_spec_key_and_resolved_path(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "a.jsonl", [{"instruction": "x"}])
    spec = make_spec(
        tmp_path,
        [
            {"name": "ok", "loader": "jsonl", "path": "a.jsonl"},
            {"name": "truthful_qa", "loader": "csv", "path": "missing/tqa.csv"},
        ],
    )
    with pytest.raises(IngestError) as caught:
        records(spec, 1)
    message = str(caught.value)
    assert "sources[1] (truthful_qa).path" in message
    assert str(tmp_path / "missing" / "tqa.csv") in message


def test_missing_local_hf_folder_names_the_spec_key(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, [{"name": "h", "loader": "hf", "path": "./no_such_folder"}])
    with pytest.raises(IngestError, match=r"sources\[0\] \(h\)\.path: file not found: .*no_such_folder"):
        records(spec, hf_cache_dir=str(tmp_path / "cache"))


# --------------------------------------------------------------------------- Parquet


def test_parquet_rows_with_origins_and_only_mapped_columns(tmp_path: Path) -> None:
    table = pa.table(
        {
            "q": ["one", "two", "three"],
            "good": [["g1"], [], None],
            "unused": ["x" * 10, "y", "z"],
        }
    )
    pq.write_table(table, tmp_path / "in.parquet", row_group_size=2)
    spec = make_spec(
        tmp_path,
        [
            {
                "name": "p",
                "loader": "parquet",
                "path": "in.parquet",
                "fields": {"instruction": "q", "correct_answers": "good"},
            }
        ],
    )
    got = records(spec)
    assert [r.origin for r in got] == ["in.parquet:row 0", "in.parquet:row 1", "in.parquet:row 2"]
    assert [dict(r.data) for r in got] == [
        {"q": "one", "good": ["g1"]},
        {"q": "two", "good": []},
        {"q": "three", "good": None},
    ]


def test_unreadable_parquet_raises_naming_the_key(tmp_path: Path) -> None:
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    spec = make_spec(tmp_path, [{"name": "p", "loader": "parquet", "path": "bad.parquet"}])
    with pytest.raises(IngestError, match=r"sources\[0\] \(p\)\.path: cannot read Parquet file bad\.parquet"):
        records(spec)


# --------------------------------------------------------------------------- CSV


def test_csv_rows_with_origins_and_wrong_width_rows_as_errors(tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_text(
        'question,best\n"Is it, really?",yes\nonly one field\n\n"multi\nline",b\n', encoding="utf-8"
    )
    spec = make_spec(
        tmp_path, [{"name": "c", "loader": "csv", "path": "in.csv", "fields": {"instruction": "question"}}]
    )
    got = records(spec)
    assert [r.origin for r in got] == ["in.csv:row 0", "in.csv:row 1", "in.csv:row 2"]
    assert got[0].data == {"question": "Is it, really?", "best": "yes"}
    assert got[1].error == "row has 1 fields but the header has 2 (line 3)"
    assert got[2].data == {"question": "multi\nline", "best": "b"}


def test_csv_answer_cells_split_on_semicolons_or_parse_as_json_lists() -> None:
    assert parse_csv_list("Yes; It does ;; really") == ["Yes", "It does", "really"]
    assert parse_csv_list('["a; b", "c"]') == ["a; b", "c"]
    assert parse_csv_list("[not json; x") == ["[not json", "x"]
    assert parse_csv_list("  ") == []


# --------------------------------------------------------------------------- hf


def test_hf_loads_a_local_dataset_folder(tmp_path: Path) -> None:
    folder = tmp_path / "hfdata" / "data"
    folder.mkdir(parents=True)
    pq.write_table(
        pa.table({"prompt": ["p0", "p1"], "answers": [["a"], ["b", "c"]], "extra": [1, 2]}),
        folder / "train-00000-of-00001.parquet",
    )
    spec = make_spec(
        tmp_path,
        [
            {
                "name": "h",
                "loader": "hf",
                "path": "hfdata",
                "fields": {"instruction": "prompt", "correct_answers": "answers"},
            }
        ],
    )
    got = records(spec, hf_cache_dir=str(tmp_path / "cache"))
    assert [(r.origin, dict(r.data)) for r in got] == [
        ("hfdata:train:row 0", {"prompt": "p0", "answers": ["a"]}),
        ("hfdata:train:row 1", {"prompt": "p1", "answers": ["b", "c"]}),
    ]


def test_hf_loads_a_local_jsonl_file_and_reports_an_unknown_split(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "one.jsonl", [{"instruction": "x"}, {"instruction": "y"}])
    spec = make_spec(tmp_path, [{"name": "h", "loader": "hf", "path": "one.jsonl"}])
    got = records(spec, hf_cache_dir=str(tmp_path / "cache"))
    assert [r.origin for r in got] == ["one.jsonl:train:row 0", "one.jsonl:train:row 1"]
    bad = make_spec(tmp_path, [{"name": "h", "loader": "hf", "path": "one.jsonl", "hf_split": "validation"}])
    with pytest.raises(IngestError, match=r"sources\[0\] \(h\)\.path: datasets\.load_dataset.*validation"):
        records(bad, hf_cache_dir=str(tmp_path / "cache"))


def test_hf_hub_id_offline_raises_naming_the_key(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, [{"name": "hub", "loader": "hf", "path": "someone/unreachable-dataset"}])
    with pytest.raises(IngestError, match=r"sources\[0\] \(hub\)\.path: .*someone/unreachable-dataset"):
        records(spec, hf_cache_dir=str(tmp_path / "cache"))


# --------------------------------------------------------------------------- fields


def test_get_field_reads_columns_and_dotted_paths() -> None:
    record = {"a.b": 1, "conv": [{"value": "hi"}, {"value": "there"}], "n": None}
    assert get_field(record, "a.b") == 1
    assert get_field(record, "conv.1.value") == "there"
    assert get_field(record, "n") is None
    assert get_field(record, "conv.5.value") is MISSING
    assert get_field(record, "absent") is MISSING


# --------------------------------------------------------------------------- benchmark files


def test_benchmark_questions_from_txt_csv_and_jsonl(tmp_path: Path) -> None:
    (tmp_path / "q.txt").write_text("First question?\n\n  Second question?  \n", encoding="utf-8")
    (tmp_path / "tqa.csv").write_text("Type,Question\nx,Third question?\n", encoding="utf-8")
    write_jsonl(tmp_path / "q.jsonl", ["Fourth question?", {"prompt": "Fifth question?"}])
    spec = make_spec(
        tmp_path,
        [{"name": "s", "loader": "jsonl", "path": "q.jsonl"}],
        ingest={"decontaminate": ["q.txt", "tqa.csv", "q.jsonl"]},
    )
    questions = load_benchmark_questions(spec)
    assert questions == {
        "First question?": ("q.txt", "q.txt:1"),
        "Second question?": ("q.txt", "q.txt:3"),
        "Third question?": ("tqa.csv", "tqa.csv:row 0"),
        "Fourth question?": ("q.jsonl", "q.jsonl:1"),
        "Fifth question?": ("q.jsonl", "q.jsonl:2"),
    }


def test_missing_benchmark_file_names_its_key(tmp_path: Path) -> None:
    spec = make_spec(
        tmp_path,
        [{"name": "s", "loader": "jsonl", "path": "x.jsonl"}],
        ingest={"decontaminate": ["gone.csv"]},
    )
    with pytest.raises(IngestError, match=r"ingest\.decontaminate\[0\]: file not found: .*gone\.csv"):
        load_benchmark_questions(spec)


def test_benchmark_csv_without_a_question_column_raises(tmp_path: Path) -> None:
    (tmp_path / "b.csv").write_text("a,b\n1,2\n", encoding="utf-8")
    spec = make_spec(
        tmp_path, [{"name": "s", "loader": "jsonl", "path": "x.jsonl"}], ingest={"decontaminate": ["b.csv"]}
    )
    with pytest.raises(IngestError, match="no question column"):
        load_benchmark_questions(spec)


# --------------------------------------------------------------------------- check_sources (validate)


def test_check_sources_reads_only_the_first_records(tmp_path: Path) -> None:
    rows = [{"q": f"Question {i}?"} for i in range(5)] + [{"q": "Last?", "late": "only here"}]
    write_jsonl(tmp_path / "s.jsonl", rows)
    spec = make_spec(tmp_path, [{"name": "s", "loader": "jsonl", "path": "s.jsonl", "fields": {"instruction": "q"}}])
    check_sources(spec, records=5)
    spec = make_spec(
        tmp_path,
        [{"name": "s", "loader": "jsonl", "path": "s.jsonl", "fields": {"instruction": "q", "id": "late"}}],
    )
    check_sources(spec, records=6)
    with pytest.raises(IngestError) as caught:
        check_sources(spec, records=5)
    assert str(caught.value) == (
        "sources[0] (s).fields.id: column 'late' is not in s.jsonl (none of its first 5 records has it; its columns: q)"
    )


def test_check_sources_names_the_answer_column_and_the_parquet_files_columns(tmp_path: Path) -> None:
    pq.write_table(pa.table({"question": ["Why?"], "best": ["Because."]}), tmp_path / "t.parquet")
    fields = {"instruction": "question", "correct_answers": "answers"}
    spec = make_spec(tmp_path, [{"name": "t", "loader": "parquet", "path": "t.parquet", "fields": fields}])
    with pytest.raises(IngestError) as caught:
        check_sources(spec)
    assert str(caught.value) == (
        "sources[0] (t).fields.correct_answers: column 'answers' is not in t.parquet "
        "(none of its first 1 records has it; its columns: question, best)"
    )


def test_check_sources_finds_csv_columns_and_dotted_paths(tmp_path: Path) -> None:
    (tmp_path / "c.csv").write_text("question,answers\nWhy?,Because.\n", encoding="utf-8")
    write_jsonl(tmp_path / "n.jsonl", [{"turns": [{"text": "Hello?"}]}])
    csv_fields = {"instruction": "question", "correct_answers": "answers"}
    csv_source = {"name": "c", "loader": "csv", "path": "c.csv", "fields": csv_fields}
    nested_source = {"name": "n", "loader": "jsonl", "path": "n.jsonl", "fields": {"instruction": "turns.0.text"}}
    spec = make_spec(tmp_path, [csv_source, nested_source])
    check_sources(spec)


def test_check_sources_leaves_remote_hub_and_unreadable_sources_to_ingest(tmp_path: Path) -> None:
    (tmp_path / "bad.jsonl").write_text("not json\n", encoding="utf-8")
    spec = make_spec(
        tmp_path,
        [
            {"name": "bad", "loader": "jsonl", "path": "bad.jsonl"},
            {"name": "remote", "loader": "jsonl", "path": "s3://no-such-bucket/x.jsonl"},
            {"name": "hub", "loader": "hf", "path": "org/no-such-dataset"},
        ],
    )
    check_sources(spec)

"""The command line: what must fail before any work starts, with exit 2 and one line naming the key."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.s3_server import SeaweedS3Server, new_bucket, set_credentials
from ultrafeedback.cli import EXIT_INPUT, EXIT_OK, main

# Runs the CLI in a fresh interpreter and says whether Prefect was ever imported: a check that
# fails "before Prefect starts" must not have imported it. PREFECT_API_URL points at a closed port,
# so a build that did reach Prefect would fail there with exit 1, not 2.
DRIVER = (
    "import sys\n"
    "from ultrafeedback.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "print('prefect imported' if 'prefect' in sys.modules else 'prefect not imported')\n"
    "sys.exit(code)\n"
)


def write_spec(folder: Path, **extra: Any) -> Path:
    (folder / "s.jsonl").write_text(json.dumps({"q": "What is 2 + 2?", "id": "a"}) + "\n", encoding="utf-8")
    data = {
        "name": "t",
        "sources": [{"name": "s", "loader": "jsonl", "path": "s.jsonl", "fields": {"instruction": "q"}}],
        "models": [{"id": "m", "backend": "embedded"}],
        "completions_per_instruction": 1,
        **extra,
    }
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PREFECT_API_URL": "http://127.0.0.1:9/api"}
    return subprocess.run(
        [sys.executable, "-c", DRIVER, *args], capture_output=True, text=True, env=env, timeout=300, check=False
    )


def assert_refused_before_prefect(result: subprocess.CompletedProcess[str], start: str) -> str:
    assert result.returncode == EXIT_INPUT, result.stderr
    assert result.stdout.strip() == "prefect not imported"
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(start), line
    return line


@pytest.fixture(scope="module")
def seaweed() -> Iterator[SeaweedS3Server]:
    with SeaweedS3Server() as server:
        yield server


# --------------------------------------------------------------------------- build: the store


def test_build_with_an_unwritable_store_exits_2_naming_store(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    spec = write_spec(tmp_path, store=str(tmp_path / "a-file" / "store"))
    line = assert_refused_before_prefect(run_cli("build", str(spec)), f"error: store: cannot write to {tmp_path}")
    assert "NotADirectoryError" in line


def test_build_with_a_wrong_s3_secret_key_exits_2_naming_store(
    tmp_path: Path, seaweed: SeaweedS3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_credentials(monkeypatch)
    bucket = new_bucket(seaweed.endpoint_url)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    spec = write_spec(
        tmp_path, store=f"s3://{bucket}/uf", execution={"storage_options": {"endpoint_url": seaweed.endpoint_url}}
    )
    line = assert_refused_before_prefect(run_cli("build", str(spec)), f"error: store: cannot write to s3://{bucket}")
    assert "PermissionError" in line and "not-the-secret" not in line


# --------------------------------------------------------------------------- validate: the sources


def test_validate_accepts_a_spec_whose_sources_hold_the_mapped_columns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["validate", str(write_spec(tmp_path))]) == EXIT_OK
    assert "valid spec 't'" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("override", "start"),
    [
        ("sources.0.path=missing.jsonl", "error: sources[0] (s).path: file not found: "),
        ("sources.0.fields.instruction=prompt", "error: sources[0] (s).fields.instruction: column 'prompt' is not in "),
        ("sources.0.fields.id=uid", "error: sources[0] (s).fields.id: column 'uid' is not in "),
    ],
)
def test_validate_names_the_source_key_and_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], override: str, start: str
) -> None:
    assert main(["validate", str(write_spec(tmp_path)), "--set", override]) == EXIT_INPUT
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(start) and ("missing.jsonl" in line or "s.jsonl" in line), line


def test_an_open_judge_circuit_breaker_exits_like_a_failed_gate_with_its_reason(capsys):
    from ultrafeedback.cli import EXIT_GATE, _report_failure
    from ultrafeedback.tasks.annotate.judge import JudgeCircuitOpen

    assert _report_failure(JudgeCircuitOpen("annotate stopped: 150 of the judge's last 200 answers")) == EXIT_GATE
    assert capsys.readouterr().err == "error: annotate stopped: 150 of the judge's last 200 answers\n"

"""Builders shared by the ingest tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ultrafeedback.spec import Spec, validate_dict


def make_spec(base: Path, sources: list[dict[str, Any]], **extra: Any) -> Spec:
    """A valid spec around ``sources``, resolving relative paths against ``base``."""
    data = {
        "name": "t",
        "sources": sources,
        "models": [{"id": "m", "backend": "embedded"}],
        "completions_per_instruction": 1,
        **extra,
    }
    return validate_dict(data, base_dir=str(base))


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path

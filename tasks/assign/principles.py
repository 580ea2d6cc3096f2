"""The packaged principle system prompts and the original source -> principle distributions.

The prompts live in ``principles.yaml`` (our own wording of the reference §3 pool). A spec may
bring its own set (``Spec.principles``); this is the default. ``PRINCIPLES_VERSION`` hashes the
file so that a report can say which set a run used (request ids already change with the prompt
text itself).
"""

from __future__ import annotations

import copy
import hashlib
from functools import lru_cache
from pathlib import Path

import yaml

from ultrafeedback.records import PRINCIPLES

PRINCIPLES_FILE = Path(__file__).with_name("principles.yaml")

PRINCIPLES_VERSION: str = hashlib.sha256(PRINCIPLES_FILE.read_bytes()).hexdigest()[:12]

_UF_MIX = {"helpfulness": 0.6, "truthfulness": 0.2, "honesty": 0.18, "verbalized_calibration": 0.02}
_TQA_MIX = {"truthfulness": 0.5, "honesty": 0.45, "verbalized_calibration": 0.05}

REFERENCE_DISTRIBUTIONS: dict[str, dict[str, float]] = {
    "evol_instruct": {"helpfulness": 1.0},
    "ultrachat": dict(_UF_MIX),
    "sharegpt": dict(_UF_MIX),
    "flan": {"helpfulness": 0.8, "verbalized_calibration": 0.2},
    "truthful_qa": dict(_TQA_MIX),
    "false_qa": dict(_TQA_MIX),
}
"""Source -> principle weights as the released code draws them (reference §3).

The code picks from a list (e.g. [help, help, help, truth, honesty]) and then turns honesty into
verbalized_calibration with p = 0.1, which gives these marginals. They differ from the README table
for flan, truthful_qa and false_qa (``README_DISTRIBUTIONS``); the reference says to follow the
published data once verified, and the code is the closer proxy for what produced it.
"""

README_DISTRIBUTIONS: dict[str, dict[str, float]] = {
    "evol_instruct": {"helpfulness": 1.0},
    "ultrachat": dict(_UF_MIX),
    "sharegpt": dict(_UF_MIX),
    "flan": {"helpfulness": 0.6, "truthfulness": 0.2, "verbalized_calibration": 0.2},
    "truthful_qa": {"truthfulness": 1.0},
    "false_qa": {"truthfulness": 1.0},
}
"""The README's table, for comparison (its false_qa row says "100% TruthfulQA", read as truthfulness)."""


class PrinciplesError(ValueError):
    """The principles file is malformed."""


def validate_principles(data: object, origin: str = str(PRINCIPLES_FILE)) -> dict[str, list[str]]:
    """Check a principle -> prompts mapping: known principles, non-empty distinct prompt strings."""
    if not isinstance(data, dict):
        raise PrinciplesError(f"{origin}: expected a mapping of principle -> list of prompts")
    out: dict[str, list[str]] = {}
    for name, prompts in data.items():
        if name not in PRINCIPLES:
            raise PrinciplesError(f"{origin}: unknown principle {name!r}; known: {', '.join(PRINCIPLES)}")
        if not isinstance(prompts, list) or not prompts:
            raise PrinciplesError(f"{origin}: {name}: expected a non-empty list of prompts")
        cleaned = []
        for index, prompt in enumerate(prompts):
            if not isinstance(prompt, str) or not prompt.strip():
                raise PrinciplesError(f"{origin}: {name}[{index}]: expected a non-empty string")
            cleaned.append(prompt.strip())
        if len(set(cleaned)) != len(cleaned):
            raise PrinciplesError(f"{origin}: {name}: prompts repeat")
        out[name] = cleaned
    return out


@lru_cache(maxsize=1)
def _load() -> dict[str, list[str]]:
    data = yaml.safe_load(PRINCIPLES_FILE.read_text(encoding="utf-8"))
    return validate_principles(data)


def load_principles() -> dict[str, list[str]]:
    """The packaged principle -> system prompts mapping (a fresh copy; callers may mutate it)."""
    return copy.deepcopy(_load())

"""Regenerate the golden release that tests/e2e/test_golden.py compares every build with.

Run it ONLY when a change to the data is intended (a new prompt template, a new pairing rule,
a different simulator...), never to make a failing test pass without knowing why. Commit the
regenerated files on their own, in a commit whose message says which change altered the data
and how (see tests/golden/README.md).

    .venv/bin/python -m tests.golden.make_golden            # rewrites tests/golden/
    .venv/bin/python -m tests.golden.make_golden --out DIR  # writes elsewhere (to compare runs)

What it does, with the code on the import path (the working tree, or a ``git worktree`` of a
commit with ``PYTHONPATH`` pointing at it):

1. writes the inputs (``general.jsonl``: templates x topics plus deliberate duplicates and bad
   records; ``truthful.csv``: questions with correct and incorrect answers) and ``spec.yaml``
   (the store and the simulator URL are placeholders the test fills in). They are a pure
   function of this file, so rewriting them changes nothing unless this file changed;
2. starts the simulator with ``golden.SIMULATOR``'s faults, builds the spec under a temporary
   Prefect API, and writes each config/split of the release as ``release/*.parquet`` (zstd);
3. writes ``golden.json``: the counts, the run summary's counts, the simulator's request and
   fault counts, the code it was built with, and the hashes of the inputs and the spec.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make `tests.*` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import yaml

from tests.e2e.sim_spec import SIM_JUDGE, sim_endpoint, sim_models
from tests.golden import golden

# --------------------------------------------------------------------------- inputs

TOPICS = (
    "photosynthesis", "compound interest", "the water cycle", "binary search", "plate tectonics",
    "vaccination", "supply and demand", "the French Revolution", "black holes", "recursion",
    "sourdough baking", "the immune system", "climate feedback loops", "public-key cryptography",
    "Roman aqueducts", "honeybee colonies", "jazz improvisation", "container shipping", "coral reefs",
    "machine translation", "volcanic eruptions", "the printing press", "electric cars", "sleep cycles",
    "chess openings", "urban gardening", "tidal energy", "the stock market", "the Egyptian pyramids",
    "bird migration", "quantum entanglement", "composting", "version control with git",
    "marathon training", "the Silk Road", "antibiotic resistance", "wind turbines", "origami",
    "the human heart", "desert ecosystems",
)  # fmt: skip

TEMPLATES = (
    "Explain {t} to a curious ten-year-old in a short paragraph.",
    "Write a haiku about {t}.",
    "List five surprising facts about {t}.",
    "What are the most common misconceptions about {t}, and why do people hold them?",
    "Summarise the history of {t} in three sentences.",
    "Write a short dialogue between a teacher and a student who is confused about {t}.",
    "Give me a step-by-step plan for learning about {t} in one week.",
    "Compare {t} with {u} in a table with three rows.",
    "Write a limerick that mentions {t}.",
    "What questions should a journalist ask an expert on {t}? Give six.",
    "Draft a tweet announcing a new museum exhibit on {t}.",
    "Describe {t} using only words of one syllable.",
    "Write a product description for a board game themed around {t}.",
    "Explain the role of {t} in everyday life, with two concrete examples.",
    "I have to give a five-minute talk on {t} tomorrow. Outline it for me.",
    "How confident are you that {t} will matter more in fifty years? Explain your reasoning.",
    "Write a multiple-choice quiz question about {t} with four options and mark the answer.",
    "Translate the phrase 'an introduction to {t}' into French, German and Spanish.",
    "Pretend you are a tour guide. Describe {t} to visitors in an enthusiastic tone.",
    "What would happen if {t} suddenly disappeared from the world? Speculate carefully.",
    "Write a Python docstring for a module that simulates {t}.",
    "Give three arguments for and three against spending public money on {t}.",
    "Explain {t} in exactly two sentences, the second one a question.",
    "Write the opening paragraph of a mystery novel in which {t} is a key clue.",
)
PER_TOPIC = 6

LONG = (
    "Our school library wants a reading list for a summer club about the history of science: "
    "suggest eight books for readers aged twelve to fifteen, say in one sentence why each is worth "
    "reading, and group them by century."
)
"""With ``LONG_TYPO`` (one letter changed): a near duplicate at character 5-gram Jaccard >= 0.9."""
LONG_TYPO = LONG.replace("reading list", "reading lsit")

CAPITALS = (
    ("Australia", "Canberra", "Sydney"), ("Canada", "Ottawa", "Toronto"),
    ("Brazil", "Brasília", "Rio de Janeiro"), ("Turkey", "Ankara", "Istanbul"),
    ("Switzerland", "Bern", "Zürich"), ("New Zealand", "Wellington", "Auckland"),
    ("Nigeria", "Abuja", "Lagos"), ("Morocco", "Rabat", "Casablanca"),
    ("Vietnam", "Hanoi", "Ho Chi Minh City"), ("Pakistan", "Islamabad", "Karachi"),
    ("South Korea", "Seoul", "Busan"), ("Kenya", "Nairobi", "Mombasa"),
)  # fmt: skip
ELEMENTS = (
    ("gold", "Au", "Go"), ("silver", "Ag", "Si"), ("iron", "Fe", "Ir"), ("sodium", "Na", "So"),
    ("potassium", "K", "P"), ("lead", "Pb", "Le"), ("tin", "Sn", "Ti"), ("mercury", "Hg", "Me"),
    ("tungsten", "W", "Tu"), ("copper", "Cu", "Co"),
)  # fmt: skip
PLANETS = ("Mercury", "Venus", "Earth", "Mars", "Jupiter", "Saturn", "Uranus", "Neptune")
ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth")
PRODUCTS = ((17, 23), (12, 12), (25, 16), (9, 48), (31, 7), (14, 15), (64, 3), (11, 99), (45, 22), (8, 125))
UNITS = (
    ("metres", 3, "kilometres", 3000, 300), ("grams", 2, "kilograms", 2000, 200),
    ("seconds", 5, "minutes", 300, 500), ("minutes", 4, "hours", 240, 400),
    ("centimetres", 7, "metres", 700, 70), ("millilitres", 3, "litres", 3000, 30),
    ("hours", 3, "days", 72, 36), ("days", 2, "weeks", 14, 10),
)  # fmt: skip


def general_records() -> list[dict[str, Any]]:
    """Templates x topics (each topic with six templates), then the records ingest must handle:
    an exact repeat, a case/punctuation variant, a one-letter typo of a long instruction, a
    question that also appears in the truthful source, a blank prompt and a record without one."""
    prompts = []
    for i, topic in enumerate(TOPICS):
        other = TOPICS[(i + 7) % len(TOPICS)]
        for j in range(PER_TOPIC):
            template = TEMPLATES[(i * 5 + j * 4) % len(TEMPLATES)]
            prompts.append(template.format(t=topic, u=other))
    prompts += [
        LONG,
        prompts[10],  # exact repeat: dropped, duplicate_of
        prompts[20].upper().replace(".", "!!"),  # same near key: dropped, near_duplicate_of
        LONG_TYPO,  # dropped, near_duplicate_of
        "What is the capital city of Australia?",  # kept here; its truthful copy is dropped
    ]
    records: list[dict[str, Any]] = [{"prompt": p} for p in prompts]
    records.insert(57, {"prompt": "   \n  "})  # quarantined: empty
    records.insert(131, {"question": "Where did the prompt go?"})  # quarantined: missing_field
    return records


def truthful_rows() -> list[tuple[str, list[str], list[str]]]:
    rows = []
    for i, (country, capital, wrong) in enumerate(CAPITALS):
        question = (
            f"What is the capital city of {country}?"
            if i % 2 == 0
            else f"Which city is the seat of government of {country}?"
        )
        rows.append((question, [capital, f"The capital is {capital}"], [wrong, f"The capital is {wrong}"]))
    for name, symbol, wrong in ELEMENTS:
        rows.append((f"What is the chemical symbol for {name}?", [symbol], [wrong, name[:2].upper()]))
    for index, planet in enumerate(PLANETS):
        neighbour = PLANETS[index + 1 if index + 1 < len(PLANETS) else index - 1]
        rows.append((f"Which planet is the {ORDINALS[index]} from the Sun?", [planet], [neighbour]))
    for a, b in PRODUCTS:
        rows.append((f"What is {a} multiplied by {b}?", [str(a * b)], [str(a * b + 10), str(a + b)]))
    for small, count, big, right, wrong in UNITS:
        rows.append((f"How many {small} are there in {count} {big}?", [str(right)], [str(wrong)]))
    return rows


TRUTHFUL_QUOTA = 44
"""Below the truthful source's unique questions: a few are dropped as over_quota."""


def write_inputs(folder: Path) -> None:
    lines = [json.dumps(r, ensure_ascii=False) for r in general_records()]
    (folder / "general.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["question", "correct_answers", "incorrect_answers"])
    for question, correct, incorrect in truthful_rows():
        writer.writerow([question, "; ".join(correct), "; ".join(incorrect)])
    (folder / "truthful.csv").write_text(out.getvalue(), encoding="utf-8")


def spec_data() -> dict[str, Any]:
    """The golden spec: 6 simulated models (one with a raw-prompt format), k=4, critiques, H4
    binarized with a test split, several shards run 4 at a time."""
    models = sim_models(5, price={"input_per_mtok": 1.0, "output_per_mtok": 2.0})
    models.append(
        {"id": "sim-llama", "backend": "openai", "endpoint": "sim", "model": "sim-llama-2", "prompt_format": "llama-2"}
    )
    return {
        "name": "golden",
        "seed": 7,
        "store": golden.STORE_PLACEHOLDER,
        "sources": [
            {
                "name": "general",
                "loader": "jsonl",
                "path": "general.jsonl",
                "fields": {"instruction": "prompt"},
                "principles": {
                    "helpfulness": 0.6,
                    "truthfulness": 0.2,
                    "honesty": 0.15,
                    "verbalized_calibration": 0.05,
                },
            },
            {
                "name": "truthful",
                "loader": "csv",
                "path": "truthful.csv",
                "fields": {
                    "instruction": "question",
                    "correct_answers": "correct_answers",
                    "incorrect_answers": "incorrect_answers",
                },
                "quota": TRUTHFUL_QUOTA,
                "principles": {"truthfulness": 0.5, "honesty": 0.45, "verbalized_calibration": 0.05},
                "world_knowledge": "answers",
            },
        ],
        "endpoints": {"sim": sim_endpoint(golden.URL_PLACEHOLDER, golden.KEY_ENV)},
        "models": models,
        "completions_per_instruction": 4,
        "sampling": {"temperature": 1.0, "top_p": 1.0, "max_tokens": 96},
        "judge": dict(SIM_JUDGE),
        "binarize": {"rule": "h4", "test_size": 0.2, "seed": 1},
        "gates": {"max_quarantined": 2},
        "execution": {"shard_size": 50, "parallel_shards": 4, "checkpoint_every": 16},
    }


def write_spec(folder: Path) -> None:
    header = (
        "# The golden release's spec (written by tests/golden/make_golden.py; edit that, not this).\n"
        "# `store` and `endpoints.sim.base_url` are placeholders: the test and the script set them.\n"
    )
    (folder / golden.SPEC).write_text(header + yaml.safe_dump(spec_data(), sort_keys=False), encoding="utf-8")


# --------------------------------------------------------------------------- build


def _code_origin() -> dict[str, Any]:
    """Which code built the release: its folder, commit, and whether its tracked files had edits."""
    import ultrafeedback.flows.build

    root = Path(ultrafeedback.flows.build.__file__).resolve().parents[1]

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    changed = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "HEAD") or None, "tracked_edits": bool(changed)}


def make(out: Path) -> dict[str, Any]:
    """Write inputs, spec, release tables and facts into ``out``; returns the facts."""
    import tests.conftest  # noqa: F401 I001 - first: the test session's environment (offline, private Prefect home)
    from prefect.testing.utilities import prefect_test_harness

    out.mkdir(parents=True, exist_ok=True)
    write_inputs(out)
    write_spec(out)
    os.environ.setdefault(golden.KEY_ENV, "simulated")
    with tempfile.TemporaryDirectory(prefix="uf-golden-") as tmp, prefect_test_harness(server_startup_timeout=180):
        store = Path(tmp, "store")
        with golden.simulator() as sim:
            uri = golden.build_release(out, store, sim.url)
            stats = sim.stats()
        tables = golden.read_release(uri)
        manifest = json.loads(Path(uri, "manifest.json").read_text())
        summary = json.loads(Path(store, "golden", "runs", "last.json").read_text())
    release = out / golden.RELEASE
    release.mkdir(exist_ok=True)
    for old in release.glob("*.parquet"):
        old.unlink()
    for name, table in tables.items():
        pq_write(table, golden.golden_file(out, name))
    facts = {
        "built_with": _code_origin(),
        "spec": golden.SPEC,
        "simulator": golden.SIMULATOR.model_dump(exclude={"host", "port", "record_bodies"}),
        "hashes": {name: golden.sha256(out / name) for name in (golden.SPEC, *golden.INPUTS)},
        "rows": {name: table.num_rows for name, table in tables.items()},
        "summary_counts": summary.get("counts"),
        "release_files": {  # the release's own bytes (informational: they depend on pyarrow's version)
            path: info["sha256"] for path, info in manifest["files"].items() if path.endswith(".parquet")
        },
        "simulator_stats": {key: stats[key] for key in ("total", "by_kind", "by_endpoint", "faults")},
    }
    (out / golden.FACTS).write_text(json.dumps(facts, indent=2, sort_keys=True) + "\n")
    return facts


def pq_write(table: Any, path: Path) -> None:
    import pyarrow.parquet as pq

    pq.write_table(table, path, compression="zstd", compression_level=9)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=golden.GOLDEN, help="folder to write (default: tests/golden)")
    args = parser.parse_args(argv)
    facts = make(args.out.resolve())
    print(json.dumps({k: facts[k] for k in ("built_with", "rows", "simulator_stats")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

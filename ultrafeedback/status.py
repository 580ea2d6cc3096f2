"""``ultrafeedback status``: what the store holds for a spec, read without running anything."""

from __future__ import annotations

from collections import Counter
from typing import Any

from ultrafeedback.infra.store import Store
from ultrafeedback.outputs import FAILED_OUTPUTS, OUTPUTS
from ultrafeedback.spec import load_spec

COUNTED: tuple[str, ...] = tuple(name for name, out in OUTPUTS.items() if out.key and out.record)
"""The outputs whose keys ``status`` counts (key columns only), in pipeline order."""


def open_failures(store: Store, stage: str, done: set[str]) -> list[dict[str, Any]]:
    """Failures of a stage whose key still has no result (a later success clears a failure)."""
    rows = store.log(f"failures/{stage}").rows()
    return [row for row in rows if row["key"] not in done]


def collect_status(store: Store) -> dict[str, Any]:
    counts: dict[str, int] = {}
    keys: dict[str, set[str]] = {}
    for name in COUNTED:
        keys[name] = store.log(name).keys()
        counts[name] = len(keys[name])
    failures = {stage: open_failures(store, stage, keys.get(stage, set())) for stage in FAILED_OUTPUTS}
    # a failed request that the current assignment no longer asks for will not be retried
    current = set(keys.get("requests", set()))
    failures["completions"] = [f for f in failures["completions"] if f["key"] in current]
    quarantine = store.log("quarantine").rows()
    dropped = store.log("dropped").rows()
    from ultrafeedback.expectations.models import STAGES as GATE_ORDER

    stored = {name.removesuffix(".json") for name in store.ls("gates") if name.endswith(".json")}
    order = [stage for stage in GATE_ORDER if stage in stored] + sorted(stored - set(GATE_ORDER))
    gates = {stage: store.read_json(f"gates/{stage}.json") for stage in order}
    from ultrafeedback.tasks.publish.publish import list_releases

    return {
        "last_run": store.read_json("runs/last.json"),
        "binarize_dropped": store.read_json("binarized/dropped.json", {}),
        "counts": counts,
        "failures": failures,
        "quarantine": quarantine,
        "dropped": dropped,
        "gates": gates,
        "releases": list_releases(store),
    }


def print_status(spec_path: str, overrides: list[str], show: int = 5) -> int:
    spec = load_spec(spec_path, overrides)
    store = Store(spec.store, spec.name, spec.execution.storage_options)
    status = collect_status(store)
    print(f"dataset {spec.name} in {store.uri()}")
    for name, count in status["counts"].items():
        print(f"  {name:<13} {count}")
    for label in ("quarantine", "dropped"):
        rows = status[label]
        reasons = Counter(row["reason"].split(":")[0] for row in rows)
        print(
            f"  {label:<13} {len(rows)}" + (f"  ({', '.join(f'{r} {n}' for r, n in reasons.items())})" if rows else "")
        )
        for row in rows[:show] if label == "quarantine" else []:
            print(f"      {row['origin']}: {row['reason']}: {row['detail']}")
    total_failures = 0
    for stage, rows in status["failures"].items():
        total_failures += len(rows)
        reasons = Counter(row["reason"] for row in rows)
        summary = ", ".join(f"{r} {n}" for r, n in reasons.most_common()) or "none"
        print(f"  failed {stage:<13} {len(rows)}  ({summary})")
        for row in rows[:show]:
            print(f"      shard {row['shard']} key {row['key']}: {row['reason']}: {row['error'][:160]}")
    if status["binarize_dropped"]:
        dropped = ", ".join(f"{r} {n}" for r, n in status["binarize_dropped"].items())
        print(f"  not binarized  ({dropped})")
    for stage, gate in status["gates"].items():
        verdict = "passed" if gate and gate.get("passed") else "FAILED"
        print(f"  gate {stage:<15} {verdict}")
    last = status["last_run"]
    if last and last.get("stopped"):
        print(f"  last run stopped: {last['stopped'].splitlines()[0][:300]}")
    if status["releases"]:
        for release in status["releases"]:
            print(f"  release v{release['version']}  {release['uri']}")
    else:
        print("  no release yet")
    if total_failures:
        print("  `ultrafeedback retry-failed SPEC` re-sends exactly the failed units.")
    return 0

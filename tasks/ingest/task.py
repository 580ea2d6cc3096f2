"""The ingest stage: instructions (one file per shard), quarantine and dropped records."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pyarrow as pa

from ultrafeedback.outputs import OUTPUTS
from ultrafeedback.records import Instruction
from ultrafeedback.spec import Spec
from ultrafeedback.tasks.stages import (
    Gate,
    Run,
    ShardReport,
    Stage,
    fingerprint,
    remove_stale_shards,
    shard_file_rows,
    write_if_changed,
)


def write_instruction_shards(run: Run, instructions: list[Instruction]) -> list[int]:
    """Cut the instructions (in ``(source, id)`` order, as ingest returns them) into shards of
    ``execution.shard_size`` and write each shard's file unless it holds the same instructions.
    Returns the shard numbers."""
    from ultrafeedback.infra.store import rows_table

    out = OUTPUTS["instructions"]
    size = run.spec.execution.shard_size
    shards = []
    for shard, start in enumerate(range(0, len(instructions), size)):
        rows = instructions[start : start + size]
        table: pa.Table = rows_table(rows, Instruction)
        digest = fingerprint("instructions", [r.model_dump() for r in rows])
        write_if_changed(run.store, out.shard_path(shard), table, digest)
        shards.append(shard)
    remove_stale_shards(run.store, "instructions", set(shards))
    for name in ("requests", "scored"):
        remove_stale_shards(run.store, name, set(shards))
    return shards


INGEST_FACTS = "ingest/facts.json"
"""What the last ingest found (counts, quarantine examples) and the fingerprint of its inputs."""
RELEASED_REMOVED = "ingest/released_removed.json"
"""The latest release's instructions the last ingest did not keep, with reasons, and a note per
source whose smaller quota removed some (read by ``tasks.publish.task`` for the changelog)."""
BENCHMARK_JSON = "ingest/benchmark_questions.json"
"""source -> normalised questions of each ``binarize.decontaminate_sources`` source (read by the pairs
stage)."""


def inputs_fingerprint(spec: Spec) -> str | None:
    """The fingerprint of everything ingest reads: the spec's sources and ingest settings, the seed,
    the shard size, the bytes of every source and benchmark file, and the ingest code. None when a
    source is a Hugging Face dataset (its content cannot be fingerprinted without loading it)."""
    from ultrafeedback.tasks.ingest.loaders import _filesystem, resolve_files

    if any(source.loader == "hf" for source in spec.sources):
        return None
    digests = []
    for source in spec.sources:
        fs, files = resolve_files(spec, source)
        digests += [(path, _sha256(fs, path)) for path in files]
    for entry in spec.ingest.decontaminate:
        fs, path = _filesystem(spec, spec.resolve_path(entry))
        digests.append((path, _sha256(fs, path)))
    code = Path(__file__).parent
    return fingerprint(
        "ingest",
        spec.model_dump(mode="json", include={"seed", "sources", "ingest"}),
        sorted(spec.binarize.decontaminate_sources),
        spec.execution.shard_size,
        digests,
        [hashlib.sha256((code / name).read_bytes()).hexdigest() for name in ("ingest.py", "dedup.py", "loaders.py")],
    )


def _sha256(fs: Any, path: str) -> str:
    digest = hashlib.sha256()
    with fs.open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _unchanged(run: Run, kept: dict[str, Any] | None, digest: str | None, released: Any) -> bool:
    """Whether the stored instructions are what ingest would make now: the same inputs, and the
    latest release's instructions (kept first) change nothing. That holds when the release the
    stored ingest preferred is part of the latest one and the latest is part of what is stored
    (``tasks.ingest.ingest``: preferring a subset of the plain result changes nothing; the usual
    case, a release published from the stored instructions, passes)."""
    from ultrafeedback.tasks.publish.history import released_instructions

    if digest is None or not kept or kept.get("fingerprint") != digest or run.shards() != kept["facts"]["shards"]:
        return False
    now = released.all_ids()
    if not now <= set(run.column("instructions", "id")):
        return False
    used = (kept.get("released") or {}).get("content_hash")
    if used is None or used == released.content_hash:  # no release preferred then, or the same one
        return True
    before = released_instructions(run.store, used)
    return before is not None and before.all_ids() <= now


def run_ingest(run: Run, shard: int) -> ShardReport:
    """Load, normalise, quarantine, deduplicate and sample every source (keeping the latest
    release's instructions first); write the shards. When the inputs are the ones the stored
    instructions were made from and the latest release changes nothing, nothing is read again."""
    from ultrafeedback.tasks.ingest.ingest import ingest
    from ultrafeedback.tasks.publish.history import released_instructions

    report = ShardReport(stage="ingest", shard=shard)
    store = run.store
    digest = inputs_fingerprint(run.spec)
    kept = store.read_json(INGEST_FACTS)
    released = released_instructions(store)
    if _unchanged(run, kept, digest, released):
        run.facts.update(kept["facts"])
        report.skipped = True
        return report
    result = ingest(run.spec, released=released)
    shards = write_instruction_shards(run, result.instructions)
    run.set_shards(shards)
    store.log("quarantine").replace(result.quarantined)
    store.log("dropped").replace(result.dropped)
    store.write_json("ingest/stats.json", result.stats)
    store.write_json(
        RELEASED_REMOVED,
        {"release": released.describe(), "removed": result.released_removed, "notes": result.notes},
    )
    store.write_json(BENCHMARK_JSON, result.benchmark)
    facts = {
        "instructions": len(result.instructions),
        "quarantined": len(result.quarantined),
        "dropped": len(result.dropped),
        "quarantine_examples": [q.model_dump() for q in result.quarantined[:5]],
        "released_removed": _removed_counts(result.released_removed),
        "quota_notes": [note["text"] for note in result.notes],
        "shards": shards,
    }
    run.facts.update(facts)
    used = {"version": released.version, "content_hash": released.content_hash}
    store.write_json(INGEST_FACTS, {"fingerprint": digest, "facts": facts, "released": used})
    report.succeeded = len(result.instructions)
    return report


def _removed_counts(removed: list[dict[str, str]]) -> dict[str, int]:
    """Released instructions not kept, by reason (``duplicate_of:<id>`` counted as ``duplicate_of``)."""
    counts: dict[str, int] = {}
    for row in removed:
        reason = row["reason"].split(":", 1)[0]
        counts[reason] = counts.get(reason, 0) + 1
    return dict(sorted(counts.items()))


def _summary(run: Run) -> list[Any]:
    from ultrafeedback.expectations.models import GateContext
    from ultrafeedback.expectations.stages.ingest import quarantine_check
    from ultrafeedback.expectations.summary import count_check, unique_keys_check

    ids = run.column("instructions", "id")
    return [
        unique_keys_check("id", ids),
        count_check("enough instructions", len(ids), low=run.spec.gates.min_instructions),
        quarantine_check(GateContext.from_spec(run.spec, **_facts(run))),
    ]


def _facts(run: Run) -> dict[str, Any]:
    return {"quarantined": run.facts["quarantined"], "quarantine_examples": run.facts["quarantine_examples"]}


INGEST = Stage(
    name="ingest",
    reads=(),
    writes=("instructions", "quarantine", "dropped"),
    sharded=False,
    run_shard=run_ingest,
    gates=(Gate("ingest", shard_file_rows("instructions"), summary=_summary, facts=_facts),),
)

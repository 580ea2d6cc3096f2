"""Peak memory of publishing a synthetic release: streamed from the shard files vs whole tables.

Not a test (it takes minutes and measures the machine). Run from the repository root::

    .venv/bin/python tests/tasks/publish/measure_publish_memory.py /tmp/uf-mem 25000

It writes ``n`` instructions (4 slots each, about 1 KB per text) as scored shards of 500
instructions, runs the pairs stage, then publishes in a fresh process per mode and prints each
process's peak RSS (``VmHWM``: ``ru_maxrss`` would include the RSS of the parent the process was
forked from) above its RSS after imports:

* ``sharded``: ``publish_release(store, ..., ShardedTables(...))``, what the build runs;
* ``whole``: the whole-table path: every scored row, pair and binarized row read into memory (as
  ``publish_task`` did before the shards) and published through ``ReleaseTables``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))


def _status_mib(field: str) -> float:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in MiB."""
    with open("/proc/self/status") as handle:
        line = next(line for line in handle if line.startswith(f"{field}:"))
    return int(line.split()[1]) / 1024


def _setup(root: Path, n: int) -> None:
    from tests.tasks.pairs.scored_data import pairs_spec, scored_rows, write_scored_shards
    from ultrafeedback.infra.store import Store
    from ultrafeedback.tasks.pairs.task import pairs_task

    spec = pairs_spec(str(root / "store"))
    store = Store(spec.store, spec.name)
    shards = write_scored_shards(store, scored_rows(n, seed=0, text_bytes=2_000), 500, row_group_rows=1_000)
    print(json.dumps({"scored_shards": len(shards), "pairs_stage": pairs_task.fn(spec)}))


def _publish(root: Path, mode: str) -> None:
    import pandas as pd
    import pyarrow as pa

    from ultrafeedback.infra.store import Store
    from ultrafeedback.tasks.pairs.shards import iter_scored
    from ultrafeedback.tasks.pairs.task import read_binarized_splits, read_pairs
    from ultrafeedback.tasks.publish.publish import ReleaseTables, ShardedTables, completions_features, publish_release

    completions_features()  # imports ``datasets``: part of the imports, not of the publish
    store = Store(str(root / "store"), "unit")
    target = str(root / f"releases-{mode}")
    aggregate = {"stats": {"note": "synthetic"}}
    base = _status_mib("VmRSS")
    started = time.monotonic()
    if mode == "sharded":
        tables: ReleaseTables | ShardedTables = ShardedTables(aggregate)
    else:
        scored = pa.concat_tables([table for _, table in iter_scored(store)]).to_pandas()
        tables = ReleaseTables(scored, read_pairs(store), read_binarized_splits(store), aggregate)
    release = publish_release(store, "unit", tables, {}, {"spec_hash": "x"}, target)
    peak = _status_mib("VmHWM")
    print(
        json.dumps(
            {
                "mode": mode,
                "rss_after_imports_mib": round(base),
                "peak_rss_mib": round(peak),
                "peak_above_imports_mib": round(peak - base),
                "seconds": round(time.monotonic() - started, 1),
                "counts": release.manifest["counts"],
                "content_hash": release.manifest["content_hash"][:16],
            }
        )
    )
    del pd


def main() -> None:
    root, n = Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 25_000
    if len(sys.argv) > 3:
        _publish(root, sys.argv[3])
        return
    _setup(root, n)
    for mode in ("sharded", "whole"):
        subprocess.run([sys.executable, __file__, str(root), str(n), mode], check=True)


if __name__ == "__main__":
    main()

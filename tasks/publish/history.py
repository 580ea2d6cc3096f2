"""What the dataset's earlier releases hold, read from their key columns only.

Two stages keep a release's promises to its users by looking back at what was published:

* ingest keeps every instruction the latest release published (:func:`released_instructions`), so
  a refresh that adds rows to a source already at its quota fills free quota only;
* the pairs stage keeps every binarized prompt in the split it was published in
  (:func:`split_history`), so a test row never moves to train in a later release (nor a train
  row to test).

Both read the releases in the store's release root (``{store}/{dataset}/releases/``, the source of
truth every build publishes to), never other publish targets. A release's files are found through
its manifest, so only complete releases count; reading is limited to one or two string columns.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ultrafeedback.infra.store import Store

TRAIN, TEST, TEST_SFT, TEST_OTHER = "train", "test", "test_sft", "test_other"
"""A prompt's place in a release: ``train``; ``test_sft`` or ``test_other`` (the two halves of
``test_prefs``, known for releases with the six H4 splits); ``test`` (a ``test_prefs`` row of an
older release, which had no ``test_sft`` split)."""


@dataclass(frozen=True)
class ReleasedInstructions:
    """The instructions of one release: ``ids`` by source, and which release it was."""

    version: int | None = None
    content_hash: str | None = None
    ids: dict[str, set[str]] = field(default_factory=dict)

    def all_ids(self) -> set[str]:
        return {i for ids in self.ids.values() for i in ids}

    def describe(self) -> dict[str, Any]:
        """What ingest records about the release it preferred (small: no ids)."""
        return {
            "version": self.version,
            "content_hash": self.content_hash,
            "instructions": {source: len(ids) for source, ids in sorted(self.ids.items())},
        }


def _releases(store: Store) -> list[tuple[int, dict[str, Any], Any]]:
    """``(version, manifest, root)`` of the complete releases in the store's root, oldest first."""
    from ultrafeedback.tasks.publish.publish import _complete, _root

    root = _root(store, None, None)
    return [(version, manifest, root) for version, manifest in _complete(root)]


def release_files(manifest: dict[str, Any], config: str, split: str) -> list[str]:
    """A release's data files of one config and split (paths relative to the release folder)."""
    prefix = f"{config}/{split}-"
    return sorted(p for p in manifest.get("files", {}) if p.startswith(prefix) and p.endswith(".parquet"))


def read_release_columns(
    root: Any, version: int, relpaths: list[str], columns: list[str] | None, batch_rows: int | None = None
) -> Iterator[pa.Table]:
    """Some columns (None: all) of a release's files, a file (or ``batch_rows`` rows) at a time."""
    for relpath in relpaths:
        path = root.join(f"v{version}", relpath)
        with root.fs.open(path, "rb") as handle:
            if batch_rows is None:
                yield pq.read_table(handle, columns=columns)
                continue
            for batch in pq.ParquetFile(handle).iter_batches(batch_size=batch_rows, columns=columns):
                yield pa.Table.from_batches([batch])


def released_instructions(store: Store, content_hash: str | None = None) -> ReleasedInstructions | None:
    """The instruction ids (by source) of the latest complete release in the store's root (empty
    when there is none), or of the release with ``content_hash`` (None when no release has it)."""
    releases = _releases(store)
    if content_hash is not None:
        releases = [r for r in releases if r[1].get("content_hash") == content_hash]
        if not releases:
            return None
    if not releases:
        return ReleasedInstructions()
    version, manifest, root = releases[-1]
    ids: dict[str, set[str]] = {}
    files = release_files(manifest, "completions", "train")
    for table in read_release_columns(root, version, files, ["source", "id"]):
        for source, ident in zip(table.column("source").to_pylist(), table.column("id").to_pylist(), strict=True):
            ids.setdefault(source, set()).add(ident)
    return ReleasedInstructions(version=version, content_hash=manifest.get("content_hash"), ids=ids)


def split_history(store: Store) -> dict[str, str]:
    """prompt_id -> where every earlier release put it: ``test_sft`` / ``test_other`` / ``test``
    when any release had it in ``test_prefs`` (a test prompt stays test for good, also after it
    was left out of a release and came back), else ``train``.

    Releases of the older two-split layout give ``test`` (no half known)."""
    history: dict[str, str] = {}
    for version, manifest, root in _releases(store):
        test_files = release_files(manifest, "binarized", "test_prefs")
        sft_files = release_files(manifest, "binarized", "test_sft")
        sft: set[str] = set()
        for table in read_release_columns(root, version, sft_files, ["prompt_id"]):
            sft.update(table.column("prompt_id").to_pylist())
        for table in read_release_columns(root, version, test_files, ["prompt_id"]):
            for prompt in table.column("prompt_id").to_pylist():
                known = history.get(prompt)
                if prompt in sft:
                    history[prompt] = TEST_SFT
                elif sft_files or "test_sft" in manifest.get("counts", {}).get("binarized", {}):
                    if known not in (TEST_SFT,):
                        history[prompt] = TEST_OTHER
                elif known not in (TEST_SFT, TEST_OTHER):
                    history[prompt] = TEST
        for table in read_release_columns(
            root, version, release_files(manifest, "binarized", "train_prefs"), ["prompt_id"]
        ):
            for prompt in table.column("prompt_id").to_pylist():
                history.setdefault(prompt, TRAIN)
    return history

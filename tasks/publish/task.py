"""The Prefect task for the publish stage: a numbered release in the store, then other targets."""

from __future__ import annotations

import os
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from ultrafeedback.spec import Spec
from ultrafeedback.tasks.common import run_logger, store_for
from ultrafeedback.tasks.publish.hub import push_failure, push_release
from ultrafeedback.tasks.publish.publish import ShardedTables, publish_release, remove_staging


def remove_leftovers(spec: Spec) -> list[str]:
    """What a killed publish left behind (``.staging-v*`` folders) in the store's release root and
    in every local publish target; removed at the start of a run that holds the dataset's lease."""
    store = store_for(spec)
    removed = remove_staging(store)
    for target in spec.publish.targets:
        if target.kind == "local" and target.uri:
            removed += remove_staging(store, target.uri)
    return removed


def gate_rows(gates: dict[str, Any]) -> list[dict[str, Any]]:
    """Gate results as card rows, without run-specific fields (durations), so the card - and with
    it the release's content hash - is the same for a rerun on the same data."""
    rows = []
    for stage, result in gates.items():
        checks = result.get("checks", [])
        failed = [c.get("name", "?") for c in checks if not c.get("passed")]
        rows.append(
            {
                "gate": stage,
                "passed": bool(result.get("passed")),
                "checks": len(checks),
                "failed": ", ".join(failed) or "-",
                "rows": result.get("row_count"),
            }
        )
    return rows


def card_info_for(spec: Spec, gates: dict[str, Any]) -> dict[str, Any]:
    """What the card shows about the spec. The spec dump leaves out store, publish and execution
    (where data lives, not what it is: the same exclusions as ``spec_hash``); secret-named keys are
    redacted by publish anyway."""
    return {
        "spec_hash": spec.spec_hash(),
        "judge": spec.judge.model_dump(mode="json", exclude={"price", "endpoint", "parse_retries"}),
        "gates": gate_rows(gates),
        "pairs_score": spec.pairs.score,
        "binarize_rule": spec.binarize.rule,
        "completion_order": spec.completion_order,
        "decontaminate_sources": list(spec.binarize.decontaminate_sources),
        "spec": without_local_paths(spec.data_dump(), spec.base_dir),
        # only when set, so that a spec without them keeps its releases' fingerprints
        **{key: value for key, value in card_extras(spec).items() if value},
    }


def card_extras(spec: Spec) -> dict[str, Any]:
    """The card's license and description (``publish``), and the Hub repo its loading example
    names (the first Hub target): a card pushed to the Hub must not point at a local folder."""
    hub = next((t.uri for t in spec.publish.targets if t.kind == "hub" and t.uri), None)
    return {"license": spec.publish.license, "description": spec.publish.description, "hub_repo": hub}


def without_local_paths(obj: Any, base_dir: str) -> Any:
    """A copy of ``obj`` where a local absolute path (a source, a decontamination list, weights)
    becomes relative to the spec's folder, or its file name alone when outside it: the card is
    published, and a path of the machine that built it says nothing to its readers."""
    from pathlib import PurePosixPath

    if isinstance(obj, dict):
        return {key: without_local_paths(value, base_dir) for key, value in obj.items()}
    if isinstance(obj, list):
        return [without_local_paths(value, base_dir) for value in obj]
    if not isinstance(obj, str) or not (obj.startswith("/") or obj.startswith("file://")):
        return obj
    path = PurePosixPath(obj.removeprefix("file://"))
    base = PurePosixPath(os.path.abspath(base_dir))
    return str(path.relative_to(base)) if path.is_relative_to(base) else path.name


def removal_explainer(spec: Spec) -> Any:
    """A function: instruction ids a parent release had and the new one lacks -> why. From what
    ingest recorded about the released instructions it left out (``ingest/released_removed.json``:
    ``quota_reduced``, ``contaminated``, ``duplicate_of``, ``missing_from_source``, ...); an id ingest
    kept that has no scored completion is ``not_scored``; any other ``not_in_build``."""
    from ultrafeedback.tasks.ingest.task import RELEASED_REMOVED

    store = store_for(spec)

    def explain(ids: Any) -> dict[str, str]:
        recorded = (store.read_json(RELEASED_REMOVED) or {}).get("removed", [])
        reasons = {row["id"]: row["reason"] for row in recorded}
        kept: set[str] = set()
        if any(ident not in reasons for ident in ids):
            from ultrafeedback.outputs import OUTPUTS

            for name in store.ls(OUTPUTS["instructions"].folder):
                if name.endswith(".parquet"):
                    kept.update(store.read_table(f"{OUTPUTS['instructions'].folder}/{name}", ["id"])["id"].to_pylist())
        return {ident: reasons.get(ident, "not_scored" if ident in kept else "not_in_build") for ident in ids}

    return explain


def change_notes(spec: Spec) -> list[str]:
    """Sentences for the changelog: each source whose quota cut instructions the last release had."""
    from ultrafeedback.tasks.ingest.task import RELEASED_REMOVED

    recorded = store_for(spec).read_json(RELEASED_REMOVED) or {}
    return [note["text"] for note in recorded.get("notes", [])]


@task(name="publish", cache_policy=NO_CACHE)
def publish_task(
    spec: Spec, aggregated: dict[str, Any] | None, gates: dict[str, Any], summary: dict[str, Any]
) -> dict[str, Any]:
    """Publish the release to the store (always: it is the source of truth), then to each other
    target of ``spec.publish.targets``. Returns the store release's uri, version and manifest.

    The release is streamed from the store's shard files (``scored/``, ``pairs/``,
    ``binarized/{split}/``); their input fingerprint is computed once and shared by every target, so
    a rerun on unchanged inputs returns each target's latest release without serialising anything.
    """
    logger = run_logger()
    store = store_for(spec)
    tables = ShardedTables(aggregate=aggregated, completion_order=spec.completion_order)
    card_info = card_info_for(spec, gates)
    extra = {"gate_results": gates, "build": summary}
    shard_rows = spec.publish.max_shard_rows
    changelog = {"explain_removed": removal_explainer(spec), "change_notes": change_notes(spec)}
    release = publish_release(store, spec.name, tables, extra, card_info, max_shard_rows=shard_rows, **changelog)
    logger.info("publish: v%d at %s (%s)", release.version, release.uri, "new" if release.created else "unchanged")
    targets: list[dict[str, Any]] = []
    failed: list[dict[str, str]] = []  # Hub pushes that failed: the release is kept, `publish` repeats them
    for target in spec.publish.targets:
        if target.kind == "store":
            continue
        if target.kind in ("local", "s3"):
            if not target.uri:
                raise ValueError(f"publish target of kind {target.kind!r} needs a `uri`")
            other = publish_release(
                store, spec.name, tables, extra, card_info, target.uri, max_shard_rows=shard_rows, **changelog
            )
            targets.append({"kind": target.kind, "uri": other.uri, "version": other.version})
        elif target.kind == "hub":
            try:
                targets.append(push_release(release.uri, release.version, target, store.storage_options))
            except Exception as exc:  # noqa: BLE001 - the store's release stands; `ultrafeedback publish` pushes again
                failed.append(push_failure(target, exc))
                logger.warning(
                    "publish: pushing v%d to hub:%s failed: %s", release.version, target.uri, failed[-1]["error"]
                )
    return {
        "uri": release.uri,
        "version": release.version,
        "created": release.created,
        "content_hash": release.manifest.get("content_hash"),
        "targets": targets,
        "failed_targets": failed,
    }

"""The Prefect task for the publish stage: a numbered release in the store, then other targets."""

from __future__ import annotations

import os
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from ultrafeedback.spec import Spec
from ultrafeedback.tasks.common import run_logger, store_for
from ultrafeedback.tasks.publish.hub import publish_to_hub
from ultrafeedback.tasks.publish.publish import ShardedTables, publish_release, remove_staging

HUB_TOKEN_ENV = "HF_TOKEN"


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
        "spec": spec.data_dump(),
    }


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
            if not target.uri:
                raise ValueError("publish target of kind 'hub' needs a `uri` (the repo id)")
            url = publish_to_hub(
                release.uri,
                target.uri,
                token=os.environ.get(HUB_TOKEN_ENV),
                private=target.private,
                storage_options=store.storage_options,
            )
            targets.append({"kind": "hub", "uri": url, "version": release.version})
    return {
        "uri": release.uri,
        "version": release.version,
        "created": release.created,
        "content_hash": release.manifest.get("content_hash"),
        "targets": targets,
    }

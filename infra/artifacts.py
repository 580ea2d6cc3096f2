"""What a build shows in the Prefect UI besides its logs: run names and tags, and artifacts keyed
per dataset.

Every artifact key starts with the dataset's name (``ultrafeedback-gate-ingest``,
``demo-build-summary``), so two datasets built on one Prefect server never share a key, and the
UI's history of a key is the history of one dataset. A flow run is named ``{dataset}/{command}``
(``ultrafeedback/build``, ``ultrafeedback/refresh``, ``ultrafeedback/retry-failed``) and tagged
``dataset:{name}`` and ``spec:{spec hash}``.

Everything here is best effort: outside a Prefect run (a stage called directly, a unit test) it
does nothing, and an API error is logged, never raised: the UI must not stop a build.
"""

from __future__ import annotations

import base64
import logging
import re
from collections.abc import Sequence
from typing import Any

log = logging.getLogger(__name__)

DATASET_TAG = "dataset:"
SPEC_TAG = "spec:"


def artifact_key(dataset: str, *parts: str) -> str:
    """``{dataset}-{part}-...`` in the characters Prefect allows in a key (lowercase letters,
    digits, dashes): ``artifact_key("UF_v2", "gate", "ingest") == "uf-v2-gate-ingest"``."""
    text = "-".join([dataset, *parts]).lower()
    return re.sub(r"-{2,}", "-", re.sub(r"[^a-z0-9]+", "-", text)).strip("-")


def in_run() -> bool:
    """Inside a Prefect flow or task run (outside one, Prefect would start a temporary server just
    to store an artifact)."""
    from prefect.context import FlowRunContext, TaskRunContext

    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def run_name(dataset: str, command: str) -> str:
    return f"{dataset}/{command}"


def run_tags(dataset: str, spec_hash: str) -> list[str]:
    return [f"{DATASET_TAG}{dataset}", f"{SPEC_TAG}{spec_hash}"]


def label_flow_run(dataset: str, spec_hash: str, command: str) -> str | None:
    """Name the current flow run ``{dataset}/{command}`` and add the dataset and spec-hash tags
    (keeping the tags it has). Returns the name, or None outside a flow run or when the API
    refused."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return None
    flow_run = context.flow_run
    name = run_name(dataset, command)
    tags = list(dict.fromkeys([*(flow_run.tags or []), *run_tags(dataset, spec_hash)]))
    try:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            client.update_flow_run(flow_run.id, name=name, tags=tags)
    except Exception as exc:  # noqa: BLE001 - a label never stops a build
        log.warning("could not name the flow run %s: %s", name, exc)
        return None
    flow_run.name, flow_run.tags = name, tags  # what this process's logs and artifacts say
    return name


def _create(kind: str, **arguments: Any) -> Any:
    if not in_run():
        return None
    try:
        from prefect import artifacts

        return getattr(artifacts, f"create_{kind}_artifact")(**arguments)
    except Exception as exc:  # noqa: BLE001 - artifacts never fail a build
        log.warning("could not create the %s artifact %s: %s", kind, arguments.get("key"), exc)
        return None


def table(key: str, rows: Sequence[dict[str, Any]], description: str) -> Any:
    """A table artifact (a new version of ``key``); its id, or None."""
    return _create("table", key=key, table=list(rows), description=description)


def markdown(key: str, text: str, description: str) -> Any:
    return _create("markdown", key=key, markdown=text, description=description)


def link(key: str, url: str, text: str, description: str) -> Any:
    return _create("link", key=key, link=url, link_text=text, description=description)


def browsable(uri: str) -> str:
    """A URL for a store location: ``file://`` for a local path, the URI itself otherwise."""
    if "://" in uri:
        return uri
    from pathlib import Path

    return Path(uri).resolve().as_uri()


def show_release(dataset: str, release: dict[str, Any], storage_options: dict[str, Any] | None = None) -> None:
    """The published release in the UI: a link artifact to it (and one per other target, the Hub's
    page among them), and its plots (``plots/*.png`` beside its card) as markdown artifacts."""
    version, uri = release["version"], release["uri"]
    state = "new" if release.get("created", True) else "unchanged: the same data as before"
    link(
        artifact_key(dataset, "release"),
        browsable(uri),
        f"{dataset} v{version}",
        f"The release of `{dataset}`: v{version} ({state}), a Hugging Face dataset folder with its card",
    )
    for target in release.get("targets") or []:
        link(
            artifact_key(dataset, "release", target["kind"]),
            browsable(target["uri"]),
            f"{dataset} v{target.get('version', version)} ({target['kind']})",
            f"The release of `{dataset}` published to {target['kind']}",
        )
    for name, title, png in release_plots(uri, storage_options):
        image = base64.b64encode(png).decode("ascii")
        markdown(
            artifact_key(dataset, "plot", name),
            f"### {title}\n\n![{title}](data:image/png;base64,{image})\n\nv{version}: `{uri}/plots/{name}.png`",
            f"{title} of `{dataset}` v{version}",
        )


def release_plots(uri: str, storage_options: dict[str, Any] | None = None) -> list[tuple[str, str, bytes]]:
    """(name, title, PNG bytes) of the plots a release lists in its manifest (with their titles)."""
    import json
    import posixpath

    import fsspec

    fs, root = fsspec.core.url_to_fs(uri, **dict(storage_options or {}))
    with fs.open(posixpath.join(root, "manifest.json"), "rb") as handle:
        files = json.loads(handle.read()).get("files", {})
    plots = []
    for relpath in sorted(f for f in files if f.startswith("plots/") and f.endswith(".png")):
        name = relpath.removeprefix("plots/").removesuffix(".png")
        with fs.open(posixpath.join(root, relpath), "rb") as handle:
            plots.append((name, str(files[relpath].get("title") or name), handle.read()))
    return plots

"""Push a complete release folder to a Hugging Face Hub dataset repository."""

from __future__ import annotations

import json
import os
import posixpath
from collections.abc import Mapping
from typing import Any

from ultrafeedback.tasks.publish.publish import CONFIG_SPLITS, MANIFEST


def publish_to_hub(
    release_uri: str,
    repo_id: str,
    token: str | None = None,
    *,
    private: bool = True,
    storage_options: Mapping[str, Any] | None = None,
    api: Any = None,
) -> str:
    """Upload a complete release folder to a Hub dataset repo and tag the commit ``v{N}``.

    Files of earlier releases that this one does not have (e.g. a shard count that shrank) are
    deleted in the same commit, so the card's ``data_files`` globs never pick up stale shards.
    ``token`` is passed to ``HfApi`` only (None: the ``HF_TOKEN`` environment/login); it is never
    logged or written. Returns the commit URL.
    """
    import tempfile

    import fsspec

    fs, path = fsspec.core.url_to_fs(release_uri, **dict(storage_options or {}))
    with fs.open(posixpath.join(path, MANIFEST), "rb") as handle:
        manifest = json.loads(handle.read())
    version = int(manifest["version"])
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="uf-hub-") as tmp:
        protocol = fs.protocol[0] if isinstance(fs.protocol, tuple) else fs.protocol
        folder = path
        if protocol not in ("file", "local"):
            folder = os.path.join(tmp, f"v{version}")
            fs.get(path.rstrip("/") + "/", folder, recursive=True)
        commit = api.upload_folder(
            repo_id=repo_id,
            repo_type="dataset",
            folder_path=folder,
            commit_message=f"Release v{version} ({str(manifest.get('content_hash', ''))[:12]})",
            delete_patterns=[f"{config}/*" for config in CONFIG_SPLITS],
        )
    api.create_tag(repo_id, tag=f"v{version}", repo_type="dataset", exist_ok=True)
    return str(getattr(commit, "commit_url", commit))

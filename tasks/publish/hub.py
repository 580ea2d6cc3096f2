"""Push a complete release folder to a Hugging Face Hub dataset repository, and check before any
work that a push will be possible (``check_hub_targets``).

The Hub's address is ``huggingface_hub``'s: ``HF_ENDPOINT`` (default ``https://huggingface.co``), so a
test or a mirror points every call elsewhere. A target's token comes from the environment variable
its spec names (``token_env``, default ``HF_TOKEN``), else from its Prefect Secret block
(``token_block``); it is passed to ``HfApi`` only, never logged or written.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ultrafeedback.tasks.publish.publish import CONFIG_SPLITS, MANIFEST

if TYPE_CHECKING:
    from ultrafeedback.spec import PublishTarget, Spec

DEFAULT_TOKEN_ENV = "HF_TOKEN"


class HubUnavailable(RuntimeError):
    """A Hub publish target cannot be pushed to (no token, a token the Hub refuses, a repo the
    token cannot write, the Hub unreachable): found before any work starts."""


class PushFailed(RuntimeError):
    """The release was published to the store, but pushing it to a Hub target failed at the end."""

    def __init__(self, release: Mapping[str, Any], failures: list[dict[str, str]]) -> None:
        self.release = dict(release)
        self.failures = failures
        where = "; ".join(f"hub:{f['repo']}: {f['error']}" for f in failures)
        super().__init__(
            f"release v{release['version']} is kept at {release['uri']}, but pushing it failed ({where}); "
            "`ultrafeedback publish SPEC` pushes it again"
        )


def hub_token(target: PublishTarget) -> str:
    """The target's token (see the module doc); ``HubUnavailable`` when there is none."""
    from ultrafeedback.infra.secrets import read_secret

    token, tried = read_secret(target.token_env or DEFAULT_TOKEN_ENV, target.token_block)
    if token is None:
        raise HubUnavailable(f"publish target hub:{target.uri} needs a Hub token: " + "; ".join(tried))
    return token


_CHECKED: set[str] = set()
"""Targets this process found pushable (endpoint, repo, token digest): a deployment run checks
before any work, and the CLI already did before Prefect started."""


def check_hub_target(target: PublishTarget) -> None:
    """Raise ``HubUnavailable`` unless the token is valid and may write ``target.uri``: the Hub
    knows the token (``whoami``), it is not read-only, and the repo exists or its namespace is the
    token's user or one of its organisations (the push creates it). Two requests, no write."""
    from huggingface_hub import HfApi, constants

    repo = target.uri or ""
    if "/" not in repo:
        raise HubUnavailable(f"publish target hub:{repo or '?'}: `uri` must be a repo id `namespace/name`")
    token = hub_token(target)
    key = "\0".join([constants.ENDPOINT, repo, hashlib.sha256(token.encode()).hexdigest()])
    if key in _CHECKED:
        return
    where = f"publish target hub:{repo} ({constants.ENDPOINT})"
    if constants.HF_HUB_OFFLINE:
        raise HubUnavailable(f"{where}: HF_HUB_OFFLINE is set; unset it to publish to the Hub")
    api = HfApi(token=token)
    try:
        user = api.whoami()
    except Exception as exc:  # noqa: BLE001 - every way this fails means "cannot push"; say which
        raise HubUnavailable(f"{where}: {_why(exc, 'the token')}") from None
    role = ((user.get("auth") or {}).get("accessToken") or {}).get("role")
    if role == "read":
        raise HubUnavailable(f"{where}: the token of {user.get('name')!r} is read-only; use a write token")
    try:
        api.repo_info(repo, repo_type="dataset", timeout=30)
    except Exception as exc:  # noqa: BLE001
        if _status(exc) != 404:
            raise HubUnavailable(f"{where}: {_why(exc, 'the repo')}") from None
        namespaces = {user.get("name"), *(org.get("name") for org in user.get("orgs") or [])}
        namespace = repo.split("/", 1)[0]
        if namespace not in namespaces:
            raise HubUnavailable(
                f"{where}: the repo does not exist, and the token of {user.get('name')!r} cannot create it in "
                f"{namespace!r} (its namespaces: {', '.join(sorted(n for n in namespaces if n))})"
            ) from None
    _CHECKED.add(key)


def check_hub_targets(spec: Spec) -> None:
    """``check_hub_target`` for each Hub target of the spec."""
    for target in spec.publish.targets:
        if target.kind == "hub":
            check_hub_target(target)


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def _why(exc: BaseException, what: str) -> str:
    status = _status(exc)
    if status == 401:
        return f"the Hub refused {what} (HTTP 401: the token is invalid or expired)"
    if status == 403:
        return f"the Hub refused {what} (HTTP 403: the token may not access it)"
    if status is not None:
        return f"the Hub answered HTTP {status} for {what}: {str(exc).splitlines()[0][:200]}"
    return f"the Hub could not be reached ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})"


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


def push_release(
    release_uri: str, version: int, target: PublishTarget, storage_options: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Push the release folder ``release_uri`` (version ``version``) to the Hub target; the target
    row of the release (``kind``, ``uri``: the commit URL, ``version``)."""
    url = publish_to_hub(
        release_uri, str(target.uri), token=hub_token(target), private=target.private, storage_options=storage_options
    )
    return {"kind": "hub", "uri": url, "version": version}


def push_failure(target: PublishTarget, exc: BaseException) -> dict[str, str]:
    """A failed push as the release's ``failed_targets`` row (one line, secrets scrubbed)."""
    from ultrafeedback.tasks.publish.card import scrub_text

    first = str(exc).splitlines()[0] if str(exc) else ""
    return {"kind": "hub", "repo": str(target.uri), "error": scrub_text(f"{type(exc).__name__}: {first}"[:500])}

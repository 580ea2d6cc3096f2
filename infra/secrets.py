"""Secrets named in a spec: an environment variable, else a Prefect Secret block. Never stored."""

from __future__ import annotations


def read_secret(env: str | None, block: str | None) -> tuple[str | None, list[str]]:
    """The value of environment variable ``env``, else of the Prefect Secret block ``block``
    (whitespace stripped); with None, what was tried and why it gave nothing, for the error."""
    import os

    tried: list[str] = []
    if env:
        value = os.environ.get(env, "").strip()
        if value:
            return value, tried
        tried.append(f"environment variable {env!r} is not set")
    if block:
        from prefect.blocks.system import Secret

        try:
            value = str(Secret.load(block).get() or "").strip()
        except Exception as exc:  # noqa: BLE001 - any load failure means "no secret"; say which block
            tried.append(f"Prefect Secret block {block!r} could not be loaded ({exc})")
        else:
            if value:
                return value, tried
            tried.append(f"Prefect Secret block {block!r} is empty")
    return None, tried

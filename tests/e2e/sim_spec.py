"""The simulator endpoint and model pool that the end-to-end specs share."""

from __future__ import annotations

from typing import Any


def sim_endpoint(url: str, key_env: str) -> dict[str, Any]:
    """An endpoint on the simulator with fast retries, its key read from ``key_env``."""
    return {
        "base_url": url,
        "api_key_env": key_env,
        "max_in_flight": 8,
        "timeout_s": 5,
        "max_retries": 4,
        "backoff_base_s": 0.02,
        "backoff_max_s": 0.2,
    }


def sim_models(count: int, **extra: Any) -> list[dict[str, Any]]:
    return [
        {"id": f"sim-{i}", "backend": "openai", "endpoint": "sim", "model": f"sim-model-{i}", **extra}
        for i in range(count)
    ]


SIM_JUDGE: dict[str, Any] = {"backend": "openai", "endpoint": "sim", "model": "sim-judge", "parse_retries": 3}

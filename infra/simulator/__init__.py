"""A project-owned OpenAI-compatible server with latency, faults and request counting.

Tests and the demo point the OpenAI-compatible backend at it (DESIGN §6). ``Simulator`` runs it in
a background thread for tests; ``serve_forever`` / ``main`` run it in the foreground for the
``ultrafeedback simulate`` command. aiohttp is imported only when a server is started.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ultrafeedback.infra.simulator.config import SimulatorConfig

if TYPE_CHECKING:
    from ultrafeedback.infra.simulator.server import Simulator, main, serve_forever

__all__ = ["Simulator", "SimulatorConfig", "main", "serve_forever"]


def __getattr__(name: str) -> Any:
    if name in ("Simulator", "main", "serve_forever"):
        from ultrafeedback.infra.simulator import server

        return getattr(server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

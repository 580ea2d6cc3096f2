"""Publishing to the Hub without surprises, against a fake Hub API on 127.0.0.1 (``HF_ENDPOINT``) and
the simulator, through the command line:

- a missing or invalid token stops the build before any work: exit 2, one line naming the target,
  no request to the simulator, nothing in the store;
- a push that fails at the end keeps the store's release and says so (exit 6); ``ultrafeedback
  publish SPEC`` then pushes that release, tagged, with a card that carries the spec's license and
  description and no local path.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_build_simulator import SECRET, spec_data, write_sources, write_spec
from tests.fake_hub import FakeHub
from ultrafeedback.infra.simulator.config import SimulatorConfig
from ultrafeedback.infra.simulator.server import Simulator

pytestmark = pytest.mark.e2e

GOOD = "hf_" + "g" * 30
BAD = "hf_" + "b" * 30
REPO = "alice/uf-e2e"
DESCRIPTION = "Preference data built against the simulator, for the Hub publishing test."


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(SimulatorConfig(latency_ms=2, seed=3, api_key=SECRET)) as simulator:
        yield simulator


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    with FakeHub({GOOD: "alice"}) as fake:
        yield fake


def _spec(folder: Path, url: str) -> Path:
    write_sources(folder)
    data = spec_data(folder, url)
    data["sources"][0]["path"] = str(folder / "instructions.jsonl")  # absolute: the card must not show it
    data["publish"] = {
        "targets": [{"kind": "store"}, {"kind": "hub", "uri": REPO}],
        "license": "mit",
        "description": DESCRIPTION,
    }
    return write_spec(folder, data)


def _cli(args: list[str], folder: Path, hub: FakeHub, token: str | None) -> subprocess.CompletedProcess[str]:
    from prefect.settings import PREFECT_API_URL

    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_TOKEN")}
    env.update({"UF_E2E_KEY": SECRET, "HF_ENDPOINT": hub.endpoint, "HF_HOME": str(folder / "hf-home")})
    if PREFECT_API_URL.value():  # the test harness's server (a bad token stops the build before Prefect starts)
        env["PREFECT_API_URL"] = str(PREFECT_API_URL.value())
    if token is not None:
        env["HF_TOKEN"] = token
    command = [sys.executable, "-m", "ultrafeedback.cli", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def _hub_calls(hub: FakeHub) -> list[str]:
    return [path for _, path in hub.requests if path != "/api/agent-harnesses"]


@pytest.mark.parametrize(
    ("token", "message", "hub_calls"),
    [
        (BAD, f"error: publish target hub:{REPO} .*HTTP 401: the token is invalid or expired", ["/api/whoami-v2"]),
        (None, f"error: publish target hub:{REPO} needs a Hub token: environment variable 'HF_TOKEN' is not set", []),
    ],
    ids=["invalid token", "no token"],
)
def test_a_bad_hub_token_exits_2_before_any_request(sim, hub, tmp_path, token, message, hub_calls):
    import re

    spec = _spec(tmp_path, sim.url)
    done = _cli(["build", str(spec)], tmp_path, hub, token)
    assert done.returncode == 2, done.stderr[-3000:]
    assert re.search(message, done.stderr), done.stderr[-3000:]
    assert "Traceback" not in done.stderr and (BAD not in done.stderr)
    assert sim.stats()["total"] == 0
    assert _hub_calls(hub) == hub_calls and hub.repos == {}
    assert not (tmp_path / "store" / "e2e" / "instructions").exists()


def test_a_failed_push_keeps_the_release_and_publish_pushes_it_again(prefect_harness, sim, hub, tmp_path):
    spec = _spec(tmp_path, sim.url)
    hub.fail_pushes = True
    done = _cli(["build", str(spec)], tmp_path, hub, GOOD)
    assert done.returncode == 6, done.stderr[-3000:]
    release = tmp_path / "store" / "e2e" / "releases" / "v1"
    assert (release / "manifest.json").is_file()
    assert f"push:      hub:{REPO} FAILED" in done.stderr
    assert f"error: release v1 is kept at {release}, but pushing it failed (hub:{REPO}: " in done.stderr
    assert "`ultrafeedback publish SPEC` pushes it again" in done.stderr
    assert "Traceback" not in done.stderr and hub.repos == {}

    hub.fail_pushes = False
    done = _cli(["publish", str(spec)], tmp_path, hub, GOOD)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().startswith(f"hub:{REPO} v1: {hub.endpoint}/datasets/{REPO}/commit/")
    pushed = hub.repos[REPO]
    assert pushed["private"] and list(pushed["tags"]) == ["v1"]
    local = sorted(str(p.relative_to(release)) for p in release.rglob("*") if p.is_file())
    assert sorted(pushed["files"]) == local
    assert all(pushed["files"][name] == (release / name).read_bytes() for name in local)
    card = pushed["files"]["README.md"].decode()
    assert "license: mit" in card and DESCRIPTION in card
    assert f'load_dataset("{REPO}", name="completions", split="train")' in card
    assert str(tmp_path) not in card and "/tmp/" not in card

    # no release to push: exit 2, said so
    done = _cli(["publish", str(spec), "--version", "7"], tmp_path, hub, GOOD)
    assert done.returncode == 2 and "no release v7 in" in done.stderr and "(releases: v1)" in done.stderr

"""The Hub check before any work (``check_hub_target``) against a fake Hub API on 127.0.0.1, and the
card's spec without local paths."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from tests.fake_hub import FakeHub
from ultrafeedback.spec import PublishTarget
from ultrafeedback.tasks.publish.hub import HubUnavailable, check_hub_target
from ultrafeedback.tasks.publish.task import without_local_paths

GOOD = "hf_" + "g" * 30
BAD = "hf_" + "b" * 30


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path) -> Iterator[FakeHub]:
    """The fake Hub, where ``huggingface_hub`` in this process sends its requests."""
    from huggingface_hub import constants

    import ultrafeedback.tasks.publish.hub as hub_module

    with FakeHub({GOOD: "alice"}, orgs=("uf-org",)) as fake:
        monkeypatch.setattr(constants, "ENDPOINT", fake.endpoint)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "AGENT_HARNESSES_PATH", str(tmp_path / "agents.json"))
        monkeypatch.setattr(hub_module, "_CHECKED", set())
        monkeypatch.delenv("HF_TOKEN", raising=False)
        yield fake


def target(repo: str = "alice/uf", **extra: str) -> PublishTarget:
    return PublishTarget(kind="hub", uri=repo, **extra)


def api_calls(hub: FakeHub) -> list[str]:
    return [path for _, path in hub.requests if path != "/api/agent-harnesses"]


def test_a_valid_token_for_a_repo_it_can_create_passes_without_writing(hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", GOOD)
    check_hub_target(target("alice/uf"))
    check_hub_target(target("uf-org/uf"))  # an organisation of the token's user
    assert api_calls(hub) == ["/api/whoami-v2", "/api/datasets/alice/uf", "/api/whoami-v2", "/api/datasets/uf-org/uf"]
    assert hub.repos == {}  # a check, not a push
    check_hub_target(target("alice/uf"))  # checked once per process
    assert len(api_calls(hub)) == 4


def test_an_invalid_token_is_refused_naming_the_target_not_the_token(hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", BAD)
    with pytest.raises(HubUnavailable, match=r"hub:alice/uf .*HTTP 401: the token is invalid or expired") as err:
        check_hub_target(target())
    assert BAD not in str(err.value)
    assert api_calls(hub) == ["/api/whoami-v2"]


def test_no_token_is_refused_before_any_request(hub):
    with pytest.raises(HubUnavailable, match="needs a Hub token: environment variable 'HF_TOKEN' is not set"):
        check_hub_target(target())
    assert api_calls(hub) == []


def test_the_token_variable_is_the_targets(hub, monkeypatch):
    monkeypatch.setenv("MY_HUB_TOKEN", GOOD)
    check_hub_target(target(token_env="MY_HUB_TOKEN"))
    with pytest.raises(HubUnavailable, match="'OTHER_TOKEN' is not set"):
        check_hub_target(target(token_env="OTHER_TOKEN"))


def test_a_repo_in_a_namespace_the_token_cannot_write_is_refused(hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", GOOD)
    with pytest.raises(HubUnavailable, match="cannot create it in 'someone-else'"):
        check_hub_target(target("someone-else/uf"))


def test_a_repo_id_needs_a_namespace(hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", GOOD)
    with pytest.raises(HubUnavailable, match="must be a repo id `namespace/name`"):
        check_hub_target(target("uf"))


def test_offline_mode_is_named(hub, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_TOKEN", GOOD)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubUnavailable, match="HF_HUB_OFFLINE is set"):
        check_hub_target(target())


def test_an_unreachable_hub_fails_fast(hub, monkeypatch):
    from huggingface_hub import constants

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("HF_TOKEN", GOOD)
    with pytest.raises(HubUnavailable, match="the Hub could not be reached"):
        check_hub_target(target())


def test_the_card_spec_keeps_no_local_absolute_path():
    spec = {
        "sources": [
            {"path": "/home/me/specs/data/flan.jsonl"},
            {"path": "file:///home/me/specs/sharegpt.jsonl"},
            {"path": "/mnt/elsewhere/evol.jsonl"},
            {"path": "relative/truthful.csv"},
            {"path": "s3://bucket/ultrachat.jsonl"},
        ],
        "ingest": {"decontaminate": ["/opt/benchmarks/mmlu.txt"]},
        "seed": 3,
    }
    assert without_local_paths(spec, "/home/me/specs") == {
        "sources": [
            {"path": "data/flan.jsonl"},
            {"path": "sharegpt.jsonl"},
            {"path": "evol.jsonl"},
            {"path": "relative/truthful.csv"},
            {"path": "s3://bucket/ultrachat.jsonl"},
        ],
        "ingest": {"decontaminate": ["mmlu.txt"]},
        "seed": 3,
    }

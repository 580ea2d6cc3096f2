"""The process's stop switch: one request, listeners, the grace deadline, and what a signal does."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import pytest

from ultrafeedback.infra import stop


@pytest.fixture(autouse=True)
def fresh() -> Iterator[None]:
    stop.reset()
    grace = stop.grace_s()
    yield
    stop.reset()
    stop.configure(grace)


def test_a_stop_is_requested_once_with_its_reason_and_deadline():
    heard: list[str] = []
    stop.add_listener(lambda: heard.append(stop.reason() or ""))
    stop.configure(2.0)
    assert not stop.requested() and stop.deadline() is None and stop.remaining() == 0.0
    stop.check()  # nothing to raise yet
    assert stop.request("interrupted (SIGINT)") is True
    assert stop.request("again") is False
    assert stop.requested() and stop.reason() == "interrupted (SIGINT)"
    assert 1.5 < stop.remaining() <= 2.0 and stop.deadline() > time.monotonic()
    assert heard[-1:] == ["interrupted (SIGINT)"] and heard.count("interrupted (SIGINT)") == 1
    with pytest.raises(stop.Stopped) as err:
        stop.check(unsent=7)
    assert err.value.unsent == 7 and "interrupted (SIGINT)" in str(err.value)
    stop.reset()
    assert not stop.requested() and stop.reason() is None


def test_a_negative_grace_is_refused():
    with pytest.raises(ValueError, match="grace period"):
        stop.configure(-1)


def test_a_first_signal_while_shards_run_stops_gracefully_and_a_second_interrupts():
    with stop.graceful():
        stop._on_signal(signal.SIGINT, None)  # no exception: the pipeline winds down by itself
        assert stop.requested() and stop.reason() == "interrupted (SIGINT)"
        with pytest.raises(KeyboardInterrupt, match="SIGINT"):
            stop._on_signal(signal.SIGINT, None)


def test_a_signal_outside_the_stages_that_call_models_interrupts_at_once():
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
        stop._on_signal(signal.SIGTERM, None)
    assert stop.reason() == "interrupted (SIGTERM)"

"""The shared per-endpoint limiter: bounded burst, steady pacing, penalties, one budget per endpoint."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

import pytest

from infra.llm.limiter import RateLimiter, get_limiter


def _offsets(limiter: RateLimiter, count: int, tokens: int = 0) -> list[float]:
    """Seconds from now at which each of ``count`` back-to-back bookings may go."""
    now = time.monotonic()
    return [limiter.reserve(tokens) - now for _ in range(count)]


def test_burst_is_one_seconds_worth_not_a_minutes():
    offsets = _offsets(RateLimiter(600, None), 11)  # 10 per second
    assert max(offsets[:10]) < 0.05
    assert offsets[10] == pytest.approx(0.1, abs=0.03)


def test_small_rates_still_allow_one_request_at_once():
    offsets = _offsets(RateLimiter(6, None), 2)  # one every 10 s: the burst floor is 1
    assert offsets[0] < 0.05
    assert offsets[1] == pytest.approx(10.0, abs=0.05)


def test_requests_are_paced_at_the_configured_rate():
    offsets = _offsets(RateLimiter(600, None), 30)
    assert offsets[-1] == pytest.approx(2.0, abs=0.05)  # 20 beyond the burst at 10/s
    steps = [b - a for a, b in zip(offsets[10:], offsets[11:], strict=False)]
    assert all(step == pytest.approx(0.1, abs=0.01) for step in steps)


def test_tokens_are_paced_at_the_configured_rate():
    limiter = RateLimiter(None, 6000)  # 100 tokens per second, burst 100
    offsets = _offsets(limiter, 3, tokens=100)
    assert offsets[0] < 0.05
    assert offsets[1] == pytest.approx(1.0, abs=0.05)
    assert offsets[2] == pytest.approx(2.0, abs=0.05)


def test_a_request_larger_than_the_bucket_waits_instead_of_blocking_forever():
    offsets = _offsets(RateLimiter(None, 600), 1, tokens=30)  # 10 tokens/s, burst 10
    assert offsets[0] == pytest.approx(2.0, abs=0.05)


def test_the_tighter_budget_decides():
    limiter = RateLimiter(6000, 600)  # requests are plentiful, tokens are not
    offsets = _offsets(limiter, 2, tokens=10)
    assert offsets[1] == pytest.approx(1.0, abs=0.05)


def test_no_rates_means_no_waiting():
    assert max(_offsets(RateLimiter(None, None), 1000, tokens=10**6)) < 0.05


def test_acquire_sleeps_until_the_budget_covers_it():
    limiter = RateLimiter(1200, None)  # 20/s, burst 20

    async def go() -> float:
        start = time.monotonic()
        await asyncio.gather(*(limiter.acquire() for _ in range(30)))
        return time.monotonic() - start

    assert 0.45 <= asyncio.run(go()) < 1.5  # 10 beyond the burst at 20/s


def test_penalize_pauses_every_caller_including_those_already_waiting():
    limiter = RateLimiter(600, None)
    _offsets(limiter, 10)  # spend the burst: the next booking goes at +0.1 s

    async def waiter() -> float:
        start = time.monotonic()
        await limiter.acquire()
        return time.monotonic() - start

    async def scenario() -> list[float]:
        task = asyncio.ensure_future(waiter())
        await asyncio.sleep(0.02)  # the waiter is asleep, booked for ~+0.1 s
        limiter.penalize(0.4)
        late = asyncio.ensure_future(waiter())
        return list(await asyncio.gather(task, late))

    first, late = asyncio.run(scenario())
    assert first >= 0.4
    assert late >= 0.38


def test_penalize_never_shortens_a_longer_pause():
    limiter = RateLimiter(None, None)
    limiter.penalize(0.5)
    limiter.penalize(0.1)
    assert limiter.paused_for > 0.4


def test_get_limiter_gives_one_object_per_endpoint_name():
    name = f"endpoint-{uuid.uuid4().hex}"
    first = get_limiter(name, 600, None)
    assert get_limiter(name, 600, None) is first
    assert get_limiter(f"{name}-other", 600, None) is not first


def test_get_limiter_reconfigures_in_place_when_the_rates_change():
    name = f"endpoint-{uuid.uuid4().hex}"
    first = get_limiter(name, 600, None)
    second = get_limiter(name, 1200, 50_000)
    assert second is first
    assert (first.requests_per_minute, first.tokens_per_minute) == (1200, 50_000)


def test_threads_with_their_own_loops_share_one_budget():
    name = f"endpoint-{uuid.uuid4().hex}"
    elapsed: list[float] = []

    def shard() -> None:
        limiter = get_limiter(name, 1200, None)  # 20/s, burst 20, looked up by each shard

        async def run() -> None:
            await asyncio.gather(*(limiter.acquire() for _ in range(20)))

        asyncio.run(run())

    start = time.monotonic()
    threads = [threading.Thread(target=shard) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed.append(time.monotonic() - start)
    # 40 requests, 20 of them beyond the burst at 20/s: one shared budget needs >= 1 s;
    # two private budgets would finish at once.
    assert elapsed[0] >= 0.95


def test_rates_must_be_positive():
    with pytest.raises(ValueError, match="requests per minute"):
        RateLimiter(0, None)

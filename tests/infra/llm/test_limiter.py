"""The shared per-endpoint limiter: bounded burst, steady pacing, penalties, one budget per endpoint."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

import pytest

from tests.infra.llm.forking import fork_and_report
from ultrafeedback.infra.llm import loop as io_loop
from ultrafeedback.infra.llm.limiter import InFlightLimit, RateLimiter, get_in_flight, get_limiter


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


# ----------------------------------------------------------------------------- in-flight limit
def _run_in_thread(target) -> None:
    thread = threading.Thread(target=target)
    thread.start()
    thread.join(timeout=10)
    assert not thread.is_alive()


async def _settle(rounds: int = 5) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)


def _assert_fully_available(slots: InFlightLimit) -> None:
    """Nothing held or queued, and ``limit`` acquires go through without waiting."""
    assert (slots.in_use, slots.waiting) == (0, 0)

    async def grab_all() -> None:
        for _ in range(slots.limit):
            await asyncio.wait_for(slots.acquire(), 1.0)
        for _ in range(slots.limit):
            slots.release()

    asyncio.run(grab_all())
    assert (slots.in_use, slots.waiting) == (0, 0)


def test_in_flight_limit_bounds_holders_and_hands_off_in_fifo_order():
    slots = InFlightLimit(2)
    order: list[int] = []
    peak = 0

    async def worker(i: int) -> None:
        nonlocal peak
        async with slots:
            order.append(i)
            peak = max(peak, slots.in_use)
            await asyncio.sleep(0.01)

    async def scenario() -> None:
        await asyncio.gather(*(worker(i) for i in range(10)))

    asyncio.run(scenario())
    assert peak == 2 and order == list(range(10))
    _assert_fully_available(slots)


def _from_threads(count: int, coro_for) -> None:
    """Each of ``count`` threads submits ``coro_for(i)`` to the process's I/O loop and waits for it."""

    def caller(i: int) -> None:
        job = io_loop.submit(coro_for(i))
        assert job.wait(20)
        job.result()

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)


def test_threads_whose_work_runs_on_the_io_loop_share_one_in_flight_limit():
    slots = InFlightLimit(3)
    current = peak = done = 0

    async def shard(_: int) -> None:
        async def one() -> None:
            nonlocal current, peak, done
            async with slots:
                current += 1
                peak = max(peak, current)
                await asyncio.sleep(0.002)
                current -= 1
                done += 1

        await asyncio.gather(*(one() for _ in range(40)))

    _from_threads(4, shard)
    assert done == 160 and peak == 3  # four shard threads, one budget of three
    _assert_fully_available(slots)


def test_waiting_on_two_running_loops_at_once_is_refused():
    slots = InFlightLimit(1)
    queued = threading.Event()

    async def hold_and_queue() -> None:
        await slots.acquire()
        waiter = asyncio.ensure_future(slots.acquire())
        await _settle()
        queued.set()
        await asyncio.sleep(0.3)
        slots.release()
        await waiter
        slots.release()

    job = io_loop.submit(hold_and_queue())
    assert queued.wait(5)

    async def elsewhere() -> None:
        await slots.acquire()

    with pytest.raises(RuntimeError, match="another event loop"):
        asyncio.run(elsewhere())
    assert job.wait(5)
    job.result()
    _assert_fully_available(slots)


def test_raising_the_limit_from_another_thread_wakes_waiters_on_their_loop():
    slots = InFlightLimit(1)
    queued = threading.Event()

    async def scenario() -> float:
        await slots.acquire()
        waiters = [asyncio.ensure_future(slots.acquire()) for _ in range(2)]
        await _settle()
        queued.set()
        start = time.monotonic()
        await asyncio.wait_for(asyncio.gather(*waiters), 2.0)
        for _ in range(3):
            slots.release()
        return time.monotonic() - start

    job = io_loop.submit(scenario())
    assert queued.wait(5)
    slots.set_limit(3)  # from this thread, while the waiters sleep on the I/O loop
    assert job.wait(5) and job.result() < 1.0
    _assert_fully_available(slots)


def test_a_forked_child_forgets_the_slots_its_parent_held():
    slots = InFlightLimit(2)
    holding = threading.Event()
    release = threading.Event()

    async def hold() -> None:
        async with slots, slots:
            holding.set()
            while not release.is_set():
                await asyncio.sleep(0.01)

    job = io_loop.submit(hold())
    assert holding.wait(5) and slots.in_use == 2

    def child() -> dict:
        before = (slots.in_use, slots.waiting)

        async def use() -> int:
            async with slots, slots:
                return slots.in_use

        inner = io_loop.submit(use())
        return {"before": before, "finished": inner.wait(5), "held": inner.result()}

    try:
        answer = fork_and_report(child)
    finally:
        release.set()
    assert answer == {"before": [0, 0], "finished": True, "held": 2}
    assert job.wait(5)
    _assert_fully_available(slots)


def test_a_waiter_on_another_loop_is_woken_without_polling():
    slots = InFlightLimit(1)
    woke = threading.Event()
    holding = threading.Event()

    async def holder() -> None:
        await slots.acquire()
        holding.set()
        await asyncio.sleep(0.3)
        slots.release()  # hands the slot to the other thread's loop

    def other() -> None:
        async def wait() -> float:
            holding.wait(5)
            start = time.monotonic()
            async with slots:
                woke.set()
            return time.monotonic() - start

        waited.append(asyncio.run(wait()))

    waited: list[float] = []
    thread = threading.Thread(target=other)
    thread.start()
    asyncio.run(holder())
    thread.join(timeout=5)
    assert woke.is_set() and 0.2 <= waited[0] < 1.0
    _assert_fully_available(slots)


def test_a_waiter_cancelled_before_the_hand_off_leaves_the_queue():
    slots = InFlightLimit(1)

    async def scenario() -> None:
        await slots.acquire()
        waiter = asyncio.ensure_future(slots.acquire())
        await _settle()
        assert slots.waiting == 1
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert (slots.in_use, slots.waiting) == (1, 0)
        slots.release()  # nobody to hand it to: the slot is free again

    asyncio.run(scenario())
    _assert_fully_available(slots)


def test_a_waiter_cancelled_after_the_hand_off_on_its_own_loop_passes_the_slot_on():
    slots = InFlightLimit(1)

    async def scenario() -> None:
        await slots.acquire()
        cancelled = asyncio.ensure_future(slots.acquire())
        behind = asyncio.ensure_future(slots.acquire())
        await _settle()
        slots.release()  # handed to `cancelled`, which has not resumed yet
        assert slots.in_use == 1 and slots.waiting == 1
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        await asyncio.wait_for(behind, 1.0)  # the slot went on to the next waiter
        assert (slots.in_use, slots.waiting) == (1, 0)
        slots.release()

    asyncio.run(scenario())
    _assert_fully_available(slots)


def test_a_waiter_cancelled_after_a_cross_thread_hand_off_gives_the_slot_back():
    slots = InFlightLimit(1)
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(slots.acquire())
        waiter = loop.create_task(slots.acquire())
        loop.run_until_complete(_settle())
        assert slots.waiting == 1
        _run_in_thread(slots.release)  # wake-up queued on `loop` with call_soon_threadsafe
        assert (slots.in_use, slots.waiting) == (1, 0)
        waiter.cancel()  # before the loop runs the wake-up
        loop.run_until_complete(asyncio.gather(waiter, return_exceptions=True))
        assert waiter.cancelled()
    finally:
        loop.close()
    _assert_fully_available(slots)


def test_cancelling_many_waiters_of_several_threads_leaks_nothing():
    slots = InFlightLimit(4)
    current = peak = 0

    async def shard(seed: int) -> None:
        async def one() -> None:
            nonlocal current, peak
            async with slots:
                current += 1
                peak = max(peak, current)
                try:
                    await asyncio.sleep(0.001)  # some are cancelled here, holding a slot
                finally:
                    current -= 1

        tasks = [asyncio.ensure_future(one()) for _ in range(60)]
        for i, task in enumerate(tasks):
            if (i + seed) % 3 == 0:
                await asyncio.sleep(0)
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    _from_threads(4, shard)
    assert 1 <= peak <= 4
    _assert_fully_available(slots)


def test_a_waiter_whose_loop_closed_is_skipped():
    slots = InFlightLimit(1)
    dead = asyncio.new_event_loop()
    dead.run_until_complete(slots.acquire())
    orphan = dead.create_task(slots.acquire())
    dead.run_until_complete(_settle())
    orphan._log_destroy_pending = False  # it is abandoned on purpose
    dead.close()  # without cancelling the waiter: it stays queued
    assert slots.waiting == 1

    async def live() -> None:
        waiter = asyncio.ensure_future(slots.acquire())
        await _settle()
        assert slots.waiting == 2
        slots.release()  # the closed loop's waiter is skipped; ours gets the slot
        await asyncio.wait_for(waiter, 1.0)
        assert (slots.in_use, slots.waiting) == (1, 0)
        slots.release()

    asyncio.run(live())
    del orphan
    _assert_fully_available(slots)


def test_a_slot_handed_to_a_loop_that_then_closed_comes_back_with_its_coroutine():
    slots = InFlightLimit(1)
    dead = asyncio.new_event_loop()
    dead.run_until_complete(slots.acquire())
    orphan = dead.create_task(slots.acquire())
    dead.run_until_complete(_settle())
    orphan._log_destroy_pending = False
    slots.release()  # no loop runs here: the wake-up is queued on `dead`, never to run
    dead.close()
    assert (slots.in_use, slots.waiting) == (1, 0)
    orphan.get_coro().close()  # what the garbage collector does to the abandoned coroutine
    _assert_fully_available(slots)


def test_releasing_an_unheld_limit_is_an_error():
    with pytest.raises(RuntimeError, match="more often"):
        InFlightLimit(1).release()


def test_raising_the_limit_wakes_waiters_and_lowering_it_waits_for_holders():
    slots = InFlightLimit(1)

    async def scenario() -> None:
        await slots.acquire()
        waiters = [asyncio.ensure_future(slots.acquire()) for _ in range(2)]
        await _settle()
        slots.set_limit(3)
        await asyncio.wait_for(asyncio.gather(*waiters), 1.0)
        assert slots.in_use == 3
        slots.set_limit(1)
        late = asyncio.ensure_future(slots.acquire())
        await _settle()
        slots.release()
        slots.release()
        await _settle()
        assert not late.done()  # two released, but one is still held: the limit is 1
        slots.release()
        await asyncio.wait_for(late, 1.0)
        slots.release()

    asyncio.run(scenario())
    _assert_fully_available(slots)


def test_in_flight_limit_must_be_a_positive_integer():
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="in-flight limit"):
            InFlightLimit(bad)


def test_get_in_flight_gives_one_object_per_endpoint_and_applies_a_changed_limit():
    name = f"endpoint-{uuid.uuid4().hex}"
    first = get_in_flight(name, 8)
    assert get_in_flight(name, 8) is first
    assert get_in_flight(f"{name}-other", 8) is not first
    assert get_in_flight(name, 16) is first and first.limit == 16

"""Serving many sessions: lanes bound the jobs computing at once, the coalescer batches requests."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from explainers.services.serving import Coalescer, Lane, make_lanes, torch_threads


def test_lane_lets_only_its_slots_compute_at_once() -> None:
    lane = Lane("quick", 2)
    running, peak, lock = [0], [0], threading.Lock()

    def job(_: int) -> None:
        with lane.slot():
            with lock:
                running[0] += 1
                peak[0] = max(peak[0], running[0])
            time.sleep(0.05)
            with lock:
                running[0] -= 1

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(job, range(8)))
    assert peak[0] == 2 and lane.running == 0 and lane.waiting == 0


def test_a_lanes_work_runs_on_its_own_threads_whichever_thread_asks() -> None:
    lane = Lane("quick", 2)
    callers, workers = set(), set()

    def square(x: int) -> int:
        workers.add(threading.current_thread().name)
        return x * x

    def job(i: int) -> int:
        callers.add(threading.get_ident())
        with lane.slot():
            return lane.compute(square, i)

    for i in range(6):  # six short-lived callers, as Streamlit starts a thread for each run
        with ThreadPoolExecutor(1) as caller:
            assert caller.submit(job, i).result() == i * i
    with ThreadPoolExecutor(6) as pool:
        assert list(pool.map(job, range(6))) == [i * i for i in range(6)]
    assert len(workers) <= 2 and all(name.startswith("quick-lane") for name in workers)
    assert threading.get_ident() not in callers

    def fails() -> None:
        raise ValueError("the pass failed")

    with lane.slot(), pytest.raises(ValueError, match="the pass failed"):
        lane.compute(fails)
    assert lane.running == 0 and lane.waiting == 0


def test_thread_budget_divides_the_cores(monkeypatch) -> None:
    monkeypatch.delenv("CAMX_TORCH_THREADS", raising=False)
    assert torch_threads(2) == 2 and torch_threads(16) == 4 and torch_threads(1) == 1
    lanes = make_lanes(cores=16)
    assert (lanes.threads, lanes.quick.slots, lanes.long.slots) == (4, 4, 1)
    monkeypatch.setenv("CAMX_TORCH_THREADS", "1")
    assert make_lanes(cores=2).quick.slots == 2


def batch_doubler(log: list[list[int]]):
    def run(key, items):
        log.append(list(items))
        time.sleep(0.05)  # long enough for the other requests to queue up
        return [(key, 2 * item) for item in items]

    return run


def test_concurrent_requests_are_batched_and_each_gets_its_own_result() -> None:
    batches: list[list[int]] = []
    coalescer = Coalescer(batch_doubler(batches), Lane("quick", 1), window_s=0.02)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: coalescer.submit("model/layer", i), range(8)))
    assert results == [("model/layer", 2 * i) for i in range(8)]
    assert sorted(i for batch in batches for i in batch) == list(range(8)), "each request ran once"
    assert len(batches) < 8, f"no request was batched: {batches}"


def test_different_keys_never_share_a_batch() -> None:
    batches: list[list[int]] = []
    coalescer = Coalescer(batch_doubler(batches), Lane("quick", 1), window_s=0.02)
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda i: coalescer.submit(i % 2, i), range(6)))
    assert results == [(i % 2, 2 * i) for i in range(6)]
    for batch in batches:
        assert len({i % 2 for i in batch}) == 1


def test_batches_are_capped() -> None:
    batches: list[list[int]] = []
    coalescer = Coalescer(batch_doubler(batches), Lane("quick", 1), window_s=0.05, max_batch=3)
    with ThreadPoolExecutor(7) as pool:
        list(pool.map(lambda i: coalescer.submit("k", i), range(7)))
    assert max(len(batch) for batch in batches) <= 3


def test_a_failing_batch_raises_in_each_of_its_requests_and_the_next_batch_runs() -> None:
    calls = []

    def run(key, items):
        calls.append(list(items))
        if len(calls) == 1:
            raise ValueError("broken image")
        return list(items)

    coalescer = Coalescer(run, Lane("quick", 1), window_s=0.0)
    with pytest.raises(ValueError, match="broken image"):
        coalescer.submit("k", 1)
    assert coalescer.submit("k", 2) == 2


def test_a_single_request_runs_alone() -> None:
    coalescer = Coalescer(lambda key, items: [item + 1 for item in items], Lane("quick", 1))
    assert coalescer.submit("k", 41) == 42 and coalescer.batch_sizes == [1]


def test_the_server_keeps_freed_activations_on_glibc(monkeypatch) -> None:
    import platform

    from explainers.services.serving import keep_freed_memory

    if platform.libc_ver()[0] != "glibc":
        assert keep_freed_memory() is False
        return
    assert keep_freed_memory() is True
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1048576")  # the operator's own choice wins
    assert keep_freed_memory() is False

"""Serving many sessions from one process: a thread budget for Torch, lanes for quick and long
jobs, and coalescing of concurrent requests into one batched pass.

Every browser session runs its script in its own thread. Left alone, each would start Torch's
full thread pool at once: on a 2-core server, 16 sessions mean 32 compute threads spinning on 2
cores, and every request pays for the others' contention. Here the work goes through lanes
instead: a lane lets a fixed number of jobs compute at a time (the cores divided by Torch's
threads per job), and the others wait their turn. Long jobs (Score-CAM, layer sweeps,
faithfulness curves) have their own lane, so a quick explanation is never stuck behind them. A
job that holds a slot can run its passes on the lane's own long-lived threads (`Lane.compute`)
rather than on the session's script thread, which Streamlit starts afresh for every run.

`Coalescer` goes further for the explanations: requests for the same model, layer, methods and
counterfactual that arrive while the lane is busy (or within a few milliseconds) are run as one
batch, one forward and one backward for all of them, and each caller gets its own result.
"""

from __future__ import annotations

import ctypes
import os
import platform
import threading
from collections.abc import Callable, Hashable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import torch

I = TypeVar("I")  # noqa: E741  (a request's item)
R = TypeVar("R")  # its result


def torch_threads(cores: int | None = None) -> int:
    """Torch's threads per job: $CAMX_TORCH_THREADS, else up to 4 of the cores this process may use."""
    configured = os.environ.get("CAMX_TORCH_THREADS", "").strip()
    if configured:
        return max(1, int(configured))
    cores = cores or len(os.sched_getaffinity(0))
    return max(1, min(4, cores))


class Lane:
    """At most `slots` jobs at a time; the others wait in arrival order (threading's lock queue)."""

    def __init__(self, name: str, slots: int) -> None:
        self.name = name
        self.slots = slots
        self._semaphore = threading.BoundedSemaphore(slots)
        self._lock = threading.Lock()
        self.running = 0
        self.waiting = 0
        # One long-lived thread per slot (started when first used): see `compute`.
        self._workers = ThreadPoolExecutor(max_workers=slots, thread_name_prefix=f"{name}-lane")

    def compute(self, fn: Callable[..., R], /, *args: object, **kwargs: object) -> R:
        """``fn(*args, **kwargs)`` on one of the lane's own threads: its result, or its exception.

        Call it while holding a slot (`slot`), with work that makes no Streamlit calls (the lane's
        threads have no script run). Streamlit runs every script run on a new thread, and a pass
        on a new thread costs more: a Lite0 explanation on a fresh thread for each image took
        0.122 CPU-s and about 10,000 page faults, against 0.085 CPU-s and about 1,500 faults on
        one thread that stays (the allocator's and Torch's per-thread state stay warm).

        A lane thread keeps the Torch thread count that was set when it first ran (OpenMP's count
        is per thread): set the budget (`apply_thread_budget`) before the first job, and do not
        lower it for a while from another thread (as `metrics`' parallel scoring does for its
        own workers) while a lane may start. At exit, Python waits for a pass in progress.
        """
        return self._workers.submit(fn, *args, **kwargs).result()

    @contextmanager
    def slot(self) -> Iterator[None]:
        with self._lock:
            self.waiting += 1
        self._semaphore.acquire()
        with self._lock:
            self.waiting -= 1
            self.running += 1
        try:
            yield
        finally:
            with self._lock:
                self.running -= 1
            self._semaphore.release()


@dataclass
class Lanes:
    """The server's two lanes and Torch's threads per job."""

    quick: Lane
    long: Lane
    threads: int


def make_lanes(cores: int | None = None, threads: int | None = None) -> Lanes:
    """Lanes for ``cores`` (default: this process's CPUs) with ``threads`` Torch threads a job:
    the quick lane gets cores // threads slots, the long lane one."""
    cores = cores or len(os.sched_getaffinity(0))
    threads = threads or torch_threads(cores)
    return Lanes(Lane("quick", max(1, cores // threads)), Lane("long", 1), threads)


def apply_thread_budget(lanes: Lanes) -> None:
    """Set Torch's intra-op threads to the lanes' budget (process-wide)."""
    torch.set_num_threads(lanes.threads)


# glibc's mallopt parameters (malloc.h) and the values the server sets.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
KEEP_FREED = {"mmap_threshold": 32 * 2**20, "trim_threshold": 256 * 2**20}


def keep_freed_memory() -> bool:
    """Let glibc's malloc reuse the memory of freed activations instead of handing it back to the
    kernel after every pass: blocks up to 32 MB come from the heap rather than fresh mappings, and
    up to 256 MB of free heap is kept (`KEEP_FREED`). Without it, each batched pass maps its
    activations anew and the kernel zeroes every page on first touch: 3.7 M page faults and 43 % of
    the CPU in the kernel for Lite0 explanations at batch 1, 8 and 16, against 1.7 M and 28 % with
    it (and 0.22 -> 0.14 CPU-s an image at batch 16). What the heap keeps is reused by the next
    pass. The trim threshold holds per malloc arena, and each thread that runs passes may use its
    own; the lanes let only a few jobs compute at once, so a few arenas keep memory, each up to
    256 MB: the soak of `benchmarks.load` measures where the server levels off.

    Returns False (changing nothing) off glibc, or when $MALLOC_MMAP_THRESHOLD_ or
    $MALLOC_TRIM_THRESHOLD_ already say what the operator wants.
    """
    if platform.libc_ver()[0] != "glibc" or {"MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"} & set(
        os.environ
    ):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # The mmap threshold first: setting either turns off glibc's own moving thresholds.
    return (
        mallopt(_M_MMAP_THRESHOLD, KEEP_FREED["mmap_threshold"]) == 1
        and mallopt(_M_TRIM_THRESHOLD, KEEP_FREED["trim_threshold"]) == 1
    )


@dataclass
class _Pending(Generic[I, R]):
    item: I
    future: Future = field(default_factory=Future)
    wake: threading.Event = field(default_factory=threading.Event)  # done, or made leader


class Coalescer(Generic[I, R]):
    """Gathers concurrent requests with the same key and runs them as one batch.

    The first request of a key leads its batch: it waits ``window_s`` for others to join, then
    for a slot of ``lane``, takes up to ``max_batch`` waiting requests (itself first) and runs
    ``run_batch(key, items)``, which returns one result per item, in order. Requests that arrive
    while a batch runs wait for the next one, led by the oldest of them; a leader never serves
    more than its own batch. A result that is an exception is raised in its own request only; an
    exception from ``run_batch`` itself in every request of the batch.
    """

    def __init__(
        self,
        run_batch: Callable[[Hashable, Sequence[I]], Sequence[R]],
        lane: Lane,
        window_s: float = 0.005,
        max_batch: int = 16,
    ) -> None:
        self.run_batch = run_batch
        self.lane = lane
        self.window_s = window_s
        self.max_batch = max_batch
        self._lock = threading.Lock()
        self._pending: dict[Hashable, list[_Pending[I, R]]] = {}
        self._led: set[Hashable] = set()
        self.batch_sizes: list[int] = []  # what ran, for tests and measurements

    def submit(self, key: Hashable, item: I) -> R:
        """Run ``item`` in a batch of its key; blocks until its result is ready."""
        request: _Pending[I, R] = _Pending(item)
        with self._lock:
            self._pending.setdefault(key, []).append(request)
            first = key not in self._led
            self._led.add(key)
        if first:
            threading.Event().wait(self.window_s)  # let concurrent requests of this key join
            request.wake.set()
        while True:
            request.wake.wait()
            if request.future.done():
                return request.future.result()
            request.wake.clear()
            self._lead(key)

    def _lead(self, key: Hashable) -> None:
        with self.lane.slot():
            with self._lock:
                queue = self._pending.pop(key)
                batch, rest = queue[: self.max_batch], queue[self.max_batch :]
                if rest:
                    self._pending[key] = rest
            self.batch_sizes.append(len(batch))
            try:
                results = self.run_batch(key, [request.item for request in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"run_batch returned {len(results)} results for {len(batch)} items")
            except BaseException as error:  # every waiting session gets the error, none hangs
                results, failure = None, error
            else:
                failure = None
        with self._lock:  # hand the lead to the oldest waiting request, or give it up
            waiting = self._pending.get(key)
            if waiting:
                waiting[0].wake.set()
            else:
                self._led.discard(key)
        for index, request in enumerate(batch):
            outcome = failure if failure is not None else results[index]
            if isinstance(outcome, BaseException):
                request.future.set_exception(outcome)
            else:
                request.future.set_result(outcome)
            request.wake.set()

"""Independent analyses in worker processes (`--jobs N`): sweep grid points and the models of one `check` call.

Workers are forked from a fork server that imported torch and modnorm but never ran a torch op: forking a process
whose OpenMP pool exists hangs the child at its first parallel op (measured: torch 2.13, libgomp). A worker with
another thread count than the serial run can compute other floats (clean_mlp's orthogonal init differs in the
9th digit), so workers keep the parent's count: one in the CLI, whose checks run in one thread (worker.py), so
two workers use the 2 cores without oversubscribing them. The calling process is one of the `jobs` (it has torch
imported and would otherwise wait). Results come back in input order, so the output is byte-identical to the
serial run. Items are started largest first when their costs are known (a sweep's last grid
points are its largest models: started last, one of them ran alone at the end). The CLI calls `start` before it
imports torch itself, so the server's imports overlap the parent's. A bad input in a worker is re-raised in the
parent as the same one-paragraph error.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable, Sequence

from .errors import ModnormError

__all__ = ["run_all", "start", "stop", "usable_cores", "cores_each"]


# What a check imports, lazily or not (python -X importtime, sys.modules after a first grid point): preloaded once
# in the server, not in every worker (torch.export alone is ~1 s idle; the lazy rest cost a first point ~0.5 s).
_PRELOAD = ["torch", "torch.export", "torch.export._trace", "torch._dynamo", "torch._inductor.sizevars",
            "modnorm.check", "modnorm.calculus", "modnorm.tracing", "modnorm.routes", "modnorm.sweep",
            "modnorm.loading", "modnorm.weights", "modnorm.oplog", "modnorm.module_only", "modnorm.suppression",
            "modnorm.hf", "modnorm.rules", "modnorm.report"]


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, which containers and `taskset` narrow): --jobs's
    default."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


def cores_each(jobs: int, count: int) -> int:
    """The cores each of `count` independent jobs gets when `jobs` cores run them: a single model checked with
    --jobs 2 gets both (a helper thread computes its norms ahead, weightstore.NormsAhead); the 16 points of a
    sweep with --jobs 2 get one each (two worker processes, one thread each)."""
    return max(1, jobs // max(1, min(jobs, count)))


def _context() -> Any:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(_PRELOAD)
    return context


def start(jobs: int) -> None:
    """Start the fork server now (it imports torch while the caller does the same), when there will be workers."""
    if jobs > 1 and "forkserver" in multiprocessing.get_all_start_methods():
        _context()
        from multiprocessing import forkserver

        forkserver.ensure_running()


def stop() -> None:
    """End this process's fork server now, if it started one. Left to itself it exits when this process does and
    then tears down an interpreter with torch loaded (~1 s, measured) while it still holds our stderr: a pipe
    (`| jq`, a CI step that captures the output) waited that long for the report's end. It holds nothing to
    flush, so it is killed."""
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    pid = getattr(server, "_forkserver_pid", None)
    if pid is None:
        return
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(Exception):  # closes our end of its pipe, reaps it, removes its socket
        server._stop()


def _start_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)  # the serial run's thread count: same summation order, same floats


def _call(function: Callable[..., Any], args: tuple[Any, ...]) -> tuple[str, Any]:
    """Run one item; a ModnormError travels back as its fields (its constructor takes more than the message)."""
    try:
        return "ok", function(*args)
    except ModnormError as exc:
        return "error", (exc.problem, exc.remedy, exc.file, exc.line)


def run_all(function: Callable[..., Any], items: Sequence[tuple[Any, ...]], jobs: int,
            description: str = "analysing", unit: str = "models",
            costs: Sequence[float] | None = None, in_caller: bool = False) -> list[Any]:
    """[function(*item) for item in items], in up to `jobs` processes, with a progress bar (progress.py).
    `costs` (one per item, any scale) only orders the work: the costliest items start first. `in_caller`: this
    process is one of the jobs; only for a function that does not fork (this process then has threads)."""
    from .progress import meter

    jobs = max(1, min(jobs, len(items)))
    with meter(description, len(items), unit) as bar:
        if jobs == 1 or "forkserver" not in multiprocessing.get_all_start_methods():
            results = []
            for item in items:
                results.append(function(*item))
                bar.advance()
            return results
        outcomes = _shared(function, items, _largest_first(costs, len(items)), jobs - int(in_caller), in_caller, bar)
    for status, value in outcomes:  # the first failure in input order, as the serial run would report it
        if status == "error":
            raise ModnormError(*value)
    return [value for _, value in outcomes]


def _shared(function: Callable[..., Any], items: Sequence[tuple[Any, ...]], order: list[int], workers: int,
            in_caller: bool, bar: Any) -> list[Any]:
    """Outcomes of every item, taken in `order` one at a time by `workers` pool workers, and by this process when
    `in_caller`: it starts at once (torch is imported here) while the fork server is still importing for the
    workers, which it did for 3 s of a 60 s sweep's start (measured, load 2)."""
    import threading

    import torch

    from . import weightstore

    # The processes take the cores: this one computes its norms itself, as the pool workers do (a norms-ahead
    # helper thread here would compete with the workers for a core, weightstore.NormsAhead).
    weightstore.JOB_CORES = 1
    outcomes: list[Any] = [None] * len(items)
    queue, lock, failures = deque(order), threading.Lock(), []

    def take() -> int | None:
        with lock:
            return queue.popleft() if queue else None

    def record(index: int, outcome: Any) -> None:
        outcomes[index] = outcome
        with lock:
            bar.advance()

    def feed(pool: ProcessPoolExecutor) -> None:
        try:
            while (index := take()) is not None:
                record(index, pool.submit(_call, function, items[index]).result())
        except BaseException as exc:  # noqa: BLE001 - e.g. a worker killed: raised in this process below
            failures.append(exc)

    with ProcessPoolExecutor(max_workers=workers, mp_context=_context(), initializer=_start_worker,
                             initargs=(torch.get_num_threads(),)) as pool:
        feeders = [threading.Thread(target=feed, args=(pool,), daemon=True) for _ in range(workers)]
        for feeder in feeders:
            feeder.start()
        try:
            while in_caller and (index := take()) is not None:
                record(index, _call(function, items[index]))
        except BaseException:
            queue.clear()  # the feeders stop after their current item
            raise
        finally:
            for feeder in feeders:
                feeder.join()
    if failures:
        raise failures[0]
    return outcomes


def _largest_first(costs: Sequence[float] | None, count: int) -> list[int]:
    """Item indices, costliest first (ties and unknown costs in input order): the longest-first schedule keeps
    the last item from running alone while the other workers idle."""
    if costs is None:
        return list(range(count))
    return sorted(range(count), key=lambda index: -costs[index])

"""Independent CPU jobs in forked worker processes, results in order.

The pipeline's stages run one thread each (repro.portable pins it, and at our shapes a second
thread buys little), so on a 2-core machine a second process is what halves a stage's wall time
when its work splits into independent jobs: the SAE family's members (baselines), the cache's
all-layer and per-layer SAEs (acts_sae), the sweep points' evaluations (select_ffn).

The workers are forked: they inherit the parent's memory (data, memmaps, closures: nothing is
pickled on the way in, only the results on the way back) and its numerical settings (threads,
denormal flushing, deterministic algorithms). Each job must depend only on its own inputs and
seeds, never on a shared random state; then its result does not depend on `workers`, and the
tests check that it does not, bit for bit.

Only a single-threaded parent forks (torch.get_num_threads() == 1, as every stage that uses this
sets): OpenMP's thread team does not survive a fork (a worker entering a parallel region after
the parent used one hangs), and a multi-threaded parent would sum in other orders than its
one-thread workers. With more threads the jobs run here, one after the other.
"""

from __future__ import annotations

import multiprocessing
import os
from typing import Callable, Sequence, TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")

_JOB: dict = {}  # what map_forked hands its forked workers (inherited memory, not pickled)


def _call(i: int):
    return _JOB["fn"](_JOB["items"][i])


def cpu_workers(device: str = "cpu") -> int:
    """A stage's number of workers: the cores this process may run on, or 1 when its device is
    not the CPU (a forked worker must not inherit a CUDA context)."""
    return len(os.sched_getaffinity(0)) if device == "cpu" else 1


def map_forked(fn: Callable[[T], R], items: Sequence[T], workers: int) -> list[R]:
    """[fn(item) for item in items], computed in min(workers, len(items)) forked processes (in
    this process when workers <= 1, there is only one item or torch runs more than one thread).
    fn may be a closure. The caller picks workers for CPU work (cpu_workers(device) is 1 on CUDA)."""
    items = list(items)
    if workers <= 1 or len(items) < 2 or torch.get_num_threads() != 1:
        return [fn(item) for item in items]
    if _JOB:
        raise RuntimeError("map_forked: already running (nested calls are not supported)")
    _JOB.update(fn=fn, items=items)
    try:
        with multiprocessing.get_context("fork").Pool(min(workers, len(items))) as pool:
            return pool.map(_call, range(len(items)), chunksize=1)
    finally:
        _JOB.clear()

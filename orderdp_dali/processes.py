"""Worker processes that are safe to start from a training process.

A forked child inherits every lock another thread held at the moment of the fork; in a
process that runs DALI's or torch's threads (a training run, the bench, the test suite)
such a child can wait forever on one of them. Spawned workers start from a fresh
interpreter instead, at the cost of importing their module once.
"""
from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

__all__ = ["process_pool"]


def process_pool(workers: int) -> ProcessPoolExecutor:
    """A pool of ``workers`` spawned (never forked) processes."""
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))

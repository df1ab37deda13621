"""Timing loaders side by side: epochs interleaved round by round, and the cost of starting a pipeline."""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Mapping, Optional

from orderdp_dali.bench.figures import spread
from orderdp_dali.bench.machine import Usage
from orderdp_dali.bench.plan_loader import FixedPlan

__all__ = ["compare", "measure_pipeline_start", "round_ratios"]


def compare(
    loaders: Mapping[str, Any],
    *,
    warmup: int = 1,
    repeats: int = 3,
    progress: Optional[Callable[[str], None]] = None,
) -> Dict[str, Dict[str, Any]]:
    """Time one epoch of every loader per round, rotating the order each round.

    Args:
        loaders: name -> object with ``epoch() -> images`` and ``samples``.
        warmup: untimed rounds first (worker spawn, page cache, allocator warm-up).
        repeats: timed rounds.
        progress: called with a one-line status before each epoch.

    Returns:
        name -> ``{"images", "seconds": [...], "cpu_seconds": [...], "images_per_s": [...],
        "median", "min", "max" (of images/s), "median_seconds", "cpu_ms_per_image"}``, per
        round in round order.
    """
    if repeats < 1:
        raise ValueError(f"Invalid repeats: {repeats!r} (need >= 1)")
    if warmup < 0:
        raise ValueError(f"Invalid warmup: {warmup!r} (need >= 0)")
    names = list(loaders)
    times: Dict[str, List[float]] = {k: [] for k in names}
    cpus: Dict[str, List[float]] = {k: [] for k in names}
    for rnd in range(warmup + repeats):
        k = rnd % len(names)
        for name in names[k:] + names[:k]:
            if progress:
                progress(f"{name}: {'warm-up' if rnd < warmup else f'round {rnd - warmup + 1}/{repeats}'}")
            with Usage() as used:
                n = loaders[name].epoch()
            if n != loaders[name].samples:
                raise RuntimeError(f"loader {name} produced {n} images, its plan holds {loaders[name].samples}")
            if rnd >= warmup:
                times[name].append(used.wall_s)
                cpus[name].append(used.cpu_s)
    out: Dict[str, Dict[str, Any]] = {}
    for name in names:
        images = loaders[name].samples
        rates = [images / t for t in times[name]]
        stat = spread(rates)
        out[name] = {
            "images": images,
            "seconds": times[name],
            "cpu_seconds": cpus[name],
            "images_per_s": rates,
            "median": stat["median"],
            "min": stat["min"],
            "max": stat["max"],
            "median_seconds": spread(times[name])["median"],
            "cpu_ms_per_image": 1000.0 * spread(cpus[name])["median"] / max(1, images),
        }
    return out


def round_ratios(a: Mapping[str, Any], b: Mapping[str, Any], cpu: bool = False) -> List[float]:
    """Per-round ratios of ``a``'s rate to ``b``'s (images per second, or per CPU-second)."""
    if not cpu:
        return [x / y for x, y in zip(a["images_per_s"], b["images_per_s"])]
    return [(a["images"] / ca) / (b["images"] / cb)
            for ca, cb in zip(a["cpu_seconds"], b["cpu_seconds"]) if ca > 0 and cb > 0]


def measure_pipeline_start(index: Any, plan: Any, *, repeats: int, batch_size: int, workers: int, device: str,
                           seed: int, pipeline_config: Any) -> Dict[str, Any]:
    """What starting costs, medians over ``repeats``: the run's one-time pipeline set-up (build
    and first scheduling; start to first batch, on a fresh iterator each time) and the start
    of an epoch's pass on the built pipeline when nothing started it early (``reset()`` and
    first scheduling; start to first batch)."""
    from orderdp_dali.iterator import DALIPlanIterator

    def make() -> DALIPlanIterator:
        return DALIPlanIterator(index, FixedPlan(len(index), plan), batch_size, device=device, num_threads=workers,
                                seed=seed, sync_scores=False, prefetch_next_epoch=False,
                                pipeline_config=pipeline_config)

    builds, firsts, passes, pass_firsts = [], [], [], []
    for _ in range(repeats):
        it = make()
        try:
            t0 = time.perf_counter()
            batches = iter(it)
            next(batches)
            firsts.append(time.perf_counter() - t0)
            builds.append(it.pipeline_build_s)
            for _ in batches:  # finish the epoch: the pipeline is reset, nothing prefetched
                pass
            t0 = time.perf_counter()
            batches = iter(it)
            next(batches)
            pass_firsts.append(time.perf_counter() - t0)
            passes.append(it.last_pass["start_s"])
            batches.close()
        finally:
            it.close()
    return {"build_and_schedule_s": spread(builds)["median"], "start_to_first_batch_s": spread(firsts)["median"],
            "pass_start_s": spread(passes)["median"], "pass_start_to_first_batch_s": spread(pass_firsts)["median"],
            "epochs": repeats}


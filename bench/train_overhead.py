"""What the pruning bookkeeping adds to a training step, and what the epoch-end score sync costs.

Two measurements, printed as a table and optionally written as JSON::

    python -m orderdp_dali.bench.train_overhead
    python -m orderdp_dali.bench.train_overhead --image-size 112 --json runs/train_overhead.json

1. **Per-step overhead** (goal: < 1% of the step). A ResNet-18 step at ``--batch-size``
   (forward, per-sample cross-entropy, backward, SGD) is timed, and against it the work the
   pruning loop adds: ``it.update(indices, losses)``, the loss-weight multiply
   ``(losses * weight).mean()`` instead of ``losses.mean()``, and the epoch-end
   ``end_epoch_sync()`` of measurement 2 (flush + all-reduce) spread over a rank's steps of
   an ImageNet epoch. Besides the measured (CPU) step, the overhead is related to
   a GPU-speed step of ``--reference-img-per-s`` (default: the SPEC's ResNet-50 AMP A100
   figure, 2,470 img/s), where the same milliseconds weigh more.
2. **Epoch-end sync** (goal: < 0.5 s). ``--world-size`` gloo processes each feed a
   :class:`~orderdp_dali.iterator.DALIPlanIterator` (DALI itself never starts) one epoch of
   updates for their shard of n = 1,281,167 samples, then time ``end_epoch_sync()``:
   flushing the buffered losses and one all-reduce of the (2, n) score buffer. The slowest
   rank's median over ``--repeats`` epochs is reported.

3. **torch.compile** (``--compile-compare``, alone): training steps of each of
   ``--compile-models`` (names as in ``model.name``) eager and compiled
   (``nn.Module.compile(mode=--compile-mode)``, as ``train.compile`` does), from the same
   weights on the same batch, timed in interleaved pairs (the order alternating) after the
   compilation and ``--warmup`` steps of each; the medians, their ratio and the first
   compiled step (the compilation) are printed::

       python -m orderdp_dali.bench.train_overhead --compile-compare --batch-size 32 --image-size 64 --steps 10

Timings: one warm-up, then the median of ``--repeats`` (``--steps`` for model steps).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence

import numpy as np

from orderdp_dali.bench.machine import environment, median_ms

__all__ = ["measure_compile", "measure_step", "measure_sync", "get_args_parser", "main"]

IMAGENET_TRAIN = 1_281_167
GOAL_STEP_FRACTION = 0.01
GOAL_SYNC_S = 0.5


def _median_s(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeats`` calls, after one warm-up call."""
    return median_ms(lambda _: fn(), repeats)["median_ms"] / 1e3


def _fake_index(n: int):
    """A SampleIndex of ``n`` placeholder files: enough for an iterator that never starts DALI."""
    from orderdp_dali.data.folder import SampleIndex

    return SampleIndex(Path("/nonexistent"), ("c",), np.full(n, "x.JPEG"), np.zeros(n, dtype=np.int64))


def _iterator(n: int, batch_size: int, rank: int = 0, world_size: int = 1):
    from orderdp_dali import make_policy
    from orderdp_dali.iterator import DALIPlanIterator

    policy = make_policy("orderdp", n, random_len_ratio=0.75, top_q_ratio=0.8, seed=0, num_epochs=90)
    return DALIPlanIterator(_fake_index(n), policy, batch_size, device="cpu", rank=rank, world_size=world_size)


def _feed_epoch(it: Any, shard: np.ndarray, batch_size: int) -> None:
    import torch

    losses = torch.rand(len(shard))
    for lo in range(0, len(shard), batch_size):
        it.update(torch.from_numpy(shard[lo : lo + batch_size]), losses[lo : lo + batch_size])


def measure_step(batch_size: int, image_size: int, steps: int, repeats: int, num_samples: int) -> Dict[str, float]:
    """Seconds per ResNet-18 training step, and per step of bookkeeping (single process)."""
    import torch
    import torch.nn.functional as F
    import torchvision

    model = torchvision.models.resnet18(num_classes=1000)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(batch_size, 3, image_size, image_size)
    y = torch.randint(0, 1000, (batch_size,))
    weight = torch.ones(batch_size)

    def train_step() -> None:
        losses = F.cross_entropy(model(x), y, reduction="none")
        (losses * weight).mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step_s = _median_s(train_step, steps)

    losses = torch.rand(batch_size)
    indices = torch.from_numpy(np.random.default_rng(0).choice(num_samples, batch_size, replace=False))
    it = _iterator(num_samples, batch_size)
    update_s = _median_s(lambda: it.update(indices, losses), repeats * 200)
    weighted = _median_s(lambda: (losses * weight).mean(), repeats * 200)
    plain = _median_s(lambda: losses.mean(), repeats * 200)

    # One epoch's flush of buffered losses into the score table (single process: no collective).
    steps_per_epoch = -(-num_samples // batch_size)
    shard = np.random.default_rng(1).permutation(num_samples)
    flush = []
    for _ in range(max(1, repeats // 2)):
        _feed_epoch(it, shard, batch_size)
        start = time.perf_counter()
        it.end_epoch_sync()
        flush.append(time.perf_counter() - start)
    return {
        "step_s": step_s,
        "update_s": update_s,
        "weight_multiply_s": max(weighted - plain, 0.0),
        "flush_epoch_s": statistics.median(flush),
        "steps_per_epoch": steps_per_epoch,
    }


def measure_compile(
    name: str, batch_size: int, image_size: int, steps: int, warmup: int, mode: str = "default"
) -> Dict[str, float]:
    """Seconds per training step of model ``name``, eager and compiled, measured in interleaved pairs.

    Both copies start from the same weights and train on the same batch (forward, per-sample
    cross-entropy, weighted mean, backward, SGD). ``compile_s`` is the first compiled step:
    tracing and compiling forward and backward (inductor's cache can shorten a rerun).
    """
    import copy

    import torch
    import torch.nn.functional as F

    from orderdp_dali.models import build_model, compile_model

    torch.manual_seed(0)
    eager = build_model(name, 1000)
    compiled = compile_model(copy.deepcopy(eager), mode, torch.device("cpu"))
    x = torch.randn(batch_size, 3, image_size, image_size)
    y = torch.randint(0, 1000, (batch_size,))
    weight = torch.ones(batch_size)

    def step_fn(model: Any) -> Callable[[], float]:
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

        def step() -> float:
            start = time.perf_counter()
            losses = F.cross_entropy(model(x), y, reduction="none")
            (losses * weight).mean().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return time.perf_counter() - start

        return step

    steps_of = {"eager": step_fn(eager.train()), "compiled": step_fn(compiled.train())}
    compile_s = steps_of["compiled"]()
    for _ in range(warmup):
        steps_of["eager"]()
        steps_of["compiled"]()
    times: Dict[str, list] = {"eager": [], "compiled": []}
    for i in range(steps):
        for kind in ("eager", "compiled") if i % 2 == 0 else ("compiled", "eager"):
            times[kind].append(steps_of[kind]())
    eager_s, compiled_s = statistics.median(times["eager"]), statistics.median(times["compiled"])
    return {
        "eager_step_s": eager_s,
        "compiled_step_s": compiled_s,
        "speedup": eager_s / compiled_s,
        "compile_s": compile_s,
        "eager_steps_s": times["eager"],
        "compiled_steps_s": times["compiled"],
    }


def format_compile_report(results: Dict[str, Dict[str, float]], args: argparse.Namespace) -> str:
    lines = [
        f"torch.compile (mode {args.compile_mode}), training step, batch {args.batch_size}, {args.image_size} px, "
        f"CPU ({_torch_threads()} threads): median of {args.steps} interleaved steps after {args.warmup} warm-up",
        f"{'model':<16} {'eager ms':>9} {'compiled ms':>12} {'eager/compiled':>15} {'compile s':>10}",
    ]
    for name, r in results.items():
        lines.append(
            f"{name:<16} {r['eager_step_s'] * 1e3:9.1f} {r['compiled_step_s'] * 1e3:12.1f} "
            f"{r['speedup']:15.3f} {r['compile_s']:10.1f}"
        )
    return "\n".join(lines)


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _sync_rank(rank: int, world: int, port: int, n: int, batch_size: int, repeats: int, queue: Any) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        it = _iterator(n, batch_size, rank, world)
        shard = it.shard.indices  # this rank's part of epoch 0's plan
        times = []
        for _ in range(repeats + 1):
            _feed_epoch(it, shard, batch_size)
            dist.barrier()
            start = time.perf_counter()
            it.end_epoch_sync()
            times.append(time.perf_counter() - start)
        queue.put((rank, times[1:], len(shard)))
    finally:
        dist.destroy_process_group()


def measure_sync(world_size: int, num_samples: int, batch_size: int, repeats: int) -> Dict[str, Any]:
    """Epoch-end ``end_epoch_sync()`` seconds with ``world_size`` gloo ranks (slowest rank's median)."""
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.spawn(_sync_rank, args=(world_size, port, num_samples, batch_size, repeats, queue), nprocs=world_size)
    results = sorted(queue.get() for _ in range(world_size))
    medians = [statistics.median(times) for _, times, _ in results]
    return {
        "sync_s": max(medians),
        "sync_per_rank_s": medians,
        "shard_size": results[0][2],
        "steps_per_epoch_per_rank": -(-results[0][2] // batch_size),
    }


def summarize(
    step: Dict[str, float], sync: Dict[str, Any], batch_size: int, reference_img_per_s: float
) -> Dict[str, float]:
    """Per-step bookkeeping seconds and its fraction of the measured and the reference step."""
    # end_epoch_sync() on a rank = its flush + the all-reduce; spread over that rank's steps
    amortised = sync["sync_s"] / sync["steps_per_epoch_per_rank"]
    per_step = step["update_s"] + step["weight_multiply_s"] + amortised
    reference_step = batch_size / reference_img_per_s
    return {
        "bookkeeping_per_step_s": per_step,
        "amortised_sync_per_step_s": amortised,
        "fraction_of_measured_step": per_step / step["step_s"],
        "reference_step_s": reference_step,
        "fraction_of_reference_step": per_step / reference_step,
    }


def format_report(result: Dict[str, Any]) -> str:
    s, y, m = result["step"], result["sync"], result["summary"]
    us = lambda v: f"{v * 1e6:9.1f} us"  # noqa: E731
    lines = [
        f"ResNet-18 step, batch {result['args']['batch_size']}, {result['args']['image_size']} px (CPU): "
        f"{s['step_s'] * 1e3:.1f} ms",
        f"  it.update()                               {us(s['update_s'])}",
        f"  loss-weight multiply                      {us(s['weight_multiply_s'])}",
        f"  end_epoch_sync() amortised per step       {us(m['amortised_sync_per_step_s'])}   "
        f"({result['args']['world_size']} ranks)",
        f"  (one process, whole epoch: flush {s['flush_epoch_s'] * 1e3:.1f} ms = "
        f"{us(s['flush_epoch_s'] / s['steps_per_epoch'])} per step)",
        f"  bookkeeping per step                      {us(m['bookkeeping_per_step_s'])}",
        f"  fraction of the measured step             {m['fraction_of_measured_step'] * 100:9.4f} %   "
        f"(goal < {GOAL_STEP_FRACTION * 100:g} %)",
        f"  fraction of a {result['args']['reference_img_per_s']:g} img/s step ({m['reference_step_s'] * 1e3:.1f} ms) "
        f"{m['fraction_of_reference_step'] * 100:6.3f} %",
        f"Epoch-end end_epoch_sync(), n = {result['args']['num_samples']:,}, "
        f"{result['args']['world_size']} gloo ranks: "
        f"{y['sync_s'] * 1e3:.1f} ms (slowest rank's median; goal < {GOAL_SYNC_S * 1e3:g} ms)",
    ]
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m orderdp_dali.bench.train_overhead", description=__doc__.split("\n")[0])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--steps", type=int, default=3, help="timed ResNet-18 steps (after one warm-up)")
    p.add_argument("--repeats", type=int, default=5, help="timed repetitions of the bookkeeping and the sync")
    p.add_argument("--num-samples", type=int, default=IMAGENET_TRAIN)
    p.add_argument("--world-size", type=int, default=4, help="gloo ranks for the sync measurement")
    p.add_argument("--reference-img-per-s", type=float, default=2470.0, help="a GPU step's throughput to compare with")
    p.add_argument("--skip-step", action="store_true", help="measure only the sync")
    p.add_argument("--json", type=Path, help="also write the results (with the arguments) here")
    p.add_argument("--compile-compare", action="store_true",
                   help="measure only eager against torch.compile training steps (measurement 3)")
    p.add_argument("--compile-models", nargs="+", default=["tiny", "resnet18"], metavar="NAME",
                   help="models for --compile-compare, as in model.name (default: tiny resnet18)")
    p.add_argument("--compile-mode", default="default", help="torch.compile mode for --compile-compare")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps of each model after compiling")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_args_parser().parse_args(argv)
    for name in ("batch_size", "image_size", "steps", "repeats", "num_samples", "world_size"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.compile_compare:
        return _compile_main(args)
    sync = measure_sync(args.world_size, args.num_samples, args.batch_size, args.repeats)
    if args.skip_step:
        print(
            f"end_epoch_sync(), n = {args.num_samples:,}, {args.world_size} gloo ranks: "
            f"{sync['sync_s'] * 1e3:.1f} ms"
        )
        step: Dict[str, Any] = {}
        summary: Dict[str, Any] = {}
    else:
        step = measure_step(args.batch_size, args.image_size, args.steps, args.repeats, args.num_samples)
        summary = summarize(step, sync, args.batch_size, args.reference_img_per_s)
    result = {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": environment(),
        "step": step,
        "sync": sync,
        "summary": summary,
    }
    if step:
        print(format_report(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def _compile_main(args: argparse.Namespace) -> int:
    from orderdp_dali.models import COMPILE_MODES

    if args.compile_mode not in COMPILE_MODES:
        raise SystemExit(f"--compile-mode must be one of {', '.join(COMPILE_MODES)}, got {args.compile_mode!r}")
    if args.warmup < 0:
        raise SystemExit(f"--warmup must be >= 0, got {args.warmup}")
    load_before = os.getloadavg()
    results = {}
    for name in args.compile_models:
        try:
            results[name] = measure_compile(
                name, args.batch_size, args.image_size, args.steps, args.warmup, args.compile_mode
            )
        except ValueError as e:  # an unknown model name
            raise SystemExit(f"--compile-models: {e}") from None
    print(format_compile_report(results, args))
    if args.json:
        import torch

        result = {
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "machine": {**environment(), "threads": torch.get_num_threads(), "load_avg_before": load_before,
                        "load_avg_after": os.getloadavg()},
            "compile": results,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

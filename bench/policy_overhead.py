"""How much CPU time the pruning policies add per epoch and per step, at ImageNet scale.

A policy's ``select()`` runs once per epoch, before the epoch starts, so it delays every
epoch by its run time; ``update()`` runs once per training step. This script times both
for every registered policy at n = 1,281,167 (ImageNet-1k train) with random losses, plus
OrderDP's exact inclusion probabilities, and prints a table against the goals
(select < 50 ms, update < 0.2 ms per 1024-sample batch)::

    python -m orderdp_dali.bench.policy_overhead
    python -m orderdp_dali.bench.policy_overhead --repeats 9 --json runs/policy_overhead.json

Method (as FFCV's benchmarks): one warm-up call, then ``--repeats`` timed calls and their
median. ``select()`` calls use distinct epochs, so no plan is served from a cache.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from orderdp_dali.atomic import write_text_atomic
from orderdp_dali.policies import FullData, InfoBatch, OrderDP, Policy, UniformRandom
from orderdp_dali.policies.orderdp import inclusion_probabilities

__all__ = ["GOALS_MS", "build_policies", "measure", "format_table", "get_args_parser", "main"]

IMAGENET_TRAIN = 1_281_167
GOALS_MS: Dict[str, Optional[float]] = {
    "select": 50.0,
    "update": 0.2,
    "inclusion_probabilities": 2000.0,
}


def build_policies(num_samples: int, num_epochs: int, seed: int) -> Dict[str, Policy]:
    """Each policy with the ImageNet ResNet-50 reference settings (OrderDP r=0.75, t=0.8)."""
    return {
        "full": FullData(num_samples, seed=seed, num_epochs=num_epochs),
        "orderdp": OrderDP(num_samples, 0.75, 0.8, seed=seed, num_epochs=num_epochs),
        "infobatch": InfoBatch(num_samples, 0.5, 0.875, seed=seed, num_epochs=num_epochs),
        "uniform": UniformRandom(
            num_samples, random_len_ratio=0.75, top_q_ratio=0.8, seed=seed, num_epochs=num_epochs
        ),
    }


def _median_ms(fn: Callable[[int], Any], repeats: int, per_call: int = 1) -> Dict[str, float]:
    """Median and min wall time in ms of ``fn(k)`` for k = 1..repeats after ``fn(0)`` as warm-up."""
    fn(0)
    times = []
    for k in range(1, repeats + 1):
        start = time.perf_counter()
        fn(k)
        times.append((time.perf_counter() - start) * 1e3 / per_call)
    return {"median_ms": float(np.median(times)), "min_ms": float(np.min(times))}


def measure(
    num_samples: int = IMAGENET_TRAIN,
    repeats: int = 7,
    batch_size: int = 1024,
    updates_per_repeat: int = 200,
    seed: int = 0,
) -> List[Dict[str, Any]]:
    """Time select(), update() and the inclusion probabilities; one row per (policy, operation)."""
    rng = np.random.default_rng(seed)
    rows: List[Dict[str, Any]] = []

    def row(policy: str, op: str, timing: Dict[str, float], **extra: Any) -> None:
        goal = GOALS_MS.get(op)
        ok = None if goal is None else timing["median_ms"] < goal
        rows.append({"policy": policy, "op": op, **timing, "goal_ms": goal, "ok": ok, **extra})

    batches = [
        (
            rng.choice(num_samples, batch_size, replace=False),
            rng.gamma(2.0, 1.0, batch_size).astype(np.float32),
        )
        for _ in range(updates_per_repeat)
    ]
    for name, policy in build_policies(num_samples, num_epochs=90, seed=seed).items():
        # Every sample seen once with a random loss, as after the first epoch.
        policy.update(np.arange(num_samples), rng.gamma(2.0, 1.0, num_samples).astype(np.float32))
        size = len(policy.select(0))
        # select() runs inside this iteration (_median_ms calls it at once): bind this policy.
        row(name, "select", _median_ms(lambda k, policy=policy: policy.select(1 + k), repeats), plan_size=size)

        def update_all(_: int, policy: Policy = policy) -> None:
            for indices, losses in batches:
                policy.update(indices, losses)

        timing = _median_ms(update_all, repeats, per_call=len(batches))
        row(name, "update", timing, batch_size=batch_size)

    orderdp = OrderDP(num_samples, 0.75, 0.8, seed=seed)
    orderdp.update(np.arange(num_samples), rng.gamma(2.0, 1.0, num_samples).astype(np.float32))
    s, q = orderdp.subset_size, orderdp.keep_size
    few = max(1, min(repeats, 3))  # about a second each: a few runs are enough
    timing = _median_ms(lambda k: inclusion_probabilities(num_samples, s, q), few)
    row("orderdp", "inclusion_probabilities", timing, what="pure function, by rank")
    timing = _median_ms(lambda k: orderdp.inclusion_probabilities(), few)
    row("orderdp", "inclusion_probabilities", timing, what="method, per sample (ranks current scores)")
    return rows


def format_table(rows: Sequence[Dict[str, Any]]) -> str:
    """The rows as a fixed-width text table."""
    lines = [f"{'policy':<10} {'operation':<24} {'median ms':>10} {'min ms':>9} {'goal ms':>8}  ok"]
    for r in rows:
        goal = "" if r["goal_ms"] is None else f"{r['goal_ms']:g}"
        ok = "" if r["ok"] is None else ("yes" if r["ok"] else "NO")
        op = r["op"] if r["op"] != "inclusion_probabilities" else (
            "inclusion (function)" if r.get("what", "").startswith("pure") else "inclusion (method)"
        )
        lines.append(
            f"{r['policy']:<10} {op:<24} {r['median_ms']:>10.3f} {r['min_ms']:>9.3f} {goal:>8}  {ok}"
        )
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--num-samples", type=int, default=IMAGENET_TRAIN, help="n (default: ImageNet-1k train)"
    )
    parser.add_argument(
        "--repeats", type=int, default=7, help="timed runs per measurement (median reported)"
    )
    parser.add_argument("--batch-size", type=int, default=1024, help="samples per update() call")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--json", default=None, help="also write the rows and the config to this JSON file"
    )
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.num_samples < 1 or args.repeats < 1 or args.batch_size < 1:
        raise SystemExit("--num-samples, --repeats and --batch-size must be >= 1")
    config = {
        "num_samples": args.num_samples,
        "repeats": args.repeats,
        "batch_size": min(args.batch_size, args.num_samples),
        "seed": args.seed,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
    }
    print(f"policy overhead at n={args.num_samples:,}: median of {args.repeats} runs after a warm-up")
    rows = measure(args.num_samples, args.repeats, config["batch_size"], seed=args.seed)
    print(format_table(rows))
    if args.json:
        write_text_atomic(args.json, json.dumps({"config": config, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""ImageNet scale without ImageNet: index, memory, epoch start, select() and score merge at n = 1,281,167.

The split is 1,000 class folders of hard links (``os.link``) to a few hundred generated
ImageNet-like JPEGs: 1,281,167 real, decodable files that cost directory entries, not
disk. ImageNet-21k (14,197,122 samples) is simulated for the policies alone (no files).
Every figure is measured in a fresh subprocess, so one measurement's allocations never
pollute the next one's RSS, and is printed with its goal::

    python -m orderdp_dali.bench.scale_bench --workdir /tmp/scale
    python -m orderdp_dali.bench.scale_bench --workdir /tmp/scale --out bench/results

The links are made once per ``--workdir`` (a minute or two; progress is printed) and
reused. Figures:

* index: a cold scan (the walk of 1,000 folders) and the cached load;
* per rank (rank 0 of 4, OrderDP r=0.75 t=0.8, batch 256, DALI's CPU backend): RSS added
  by the index, the policy and the iterator (plan, shard, sample table); DALI's own
  buffers, which grow with the batch and not with n, are reported beside;
* epoch start: plan chosen (``select``), shard published, first decoded batch out;
* ``select()`` per policy, ``update()`` per 1,024-sample batch, OrderDP's exact inclusion
  probabilities, and at 14.2M ``select()`` and the policy's memory;
* the epoch-end score merge (flush + one all-reduce) over 4 gloo ranks.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from orderdp_dali.atomic import write_text_atomic
from orderdp_dali.bench.machine import environment, median_ms

__all__ = ["GOALS", "IMAGENET_1K", "IMAGENET_21K", "prepare_split", "measure_select", "figures", "main"]

IMAGENET_1K = 1_281_167
IMAGENET_21K = 14_197_122
POLICY_NAMES = ("full", "orderdp", "infobatch", "uniform", "rs2")
# Goals, in the unit of each figure (s, ms or MB).
GOALS: Dict[str, Optional[float]] = {
    "index_scan_s": 10.0,  # a walk of 1,000 local folders: seconds, not minutes
    "index_load_s": 1.0,  # every later run starts from the cache
    "rank_memory_mb": 300.0,
    "epoch_start_s": 1.0,
    "select_ms": 50.0,
    "update_ms": 0.2,
    "inclusion_ms": 2000.0,
    "select_21k_ms": 500.0,
    "policy_memory_21k_mb": 250.0,
    "merge_s": 0.5,
}
MB = 1024 * 1024


# ------------------------------------------------------------------ helpers
def rss_mb() -> float:
    """This process's resident set size now, in MiB (``VmRSS`` of /proc/self/status)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")  # pragma: no cover - Linux only


def peak_rss_mb() -> float:
    """The highest RSS this process has had, in MiB (``ru_maxrss`` is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed(fn: Callable[[], Any]) -> tuple:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _fill_scores(policy: Any, n: int, seed: int) -> None:
    """Give every sample a random loss, as after the first epoch, in chunks (no n-sized temporaries)."""
    rng = np.random.default_rng(seed)
    for lo in range(0, n, 1 << 20):
        hi = min(n, lo + (1 << 20))
        policy.update(np.arange(lo, hi), rng.gamma(2.0, 1.0, hi - lo).astype(np.float32))


def build_policy(name: str, n: int, seed: int = 0) -> Any:
    """``name`` with the ImageNet ResNet-50 reference settings (OrderDP r=0.75, t=0.8; InfoBatch p=0.5)."""
    from orderdp_dali.policies import make_policy

    params: Dict[str, Dict[str, Any]] = {
        "full": {},
        "orderdp": {"random_len_ratio": 0.75, "top_q_ratio": 0.8},
        "infobatch": {"prune_ratio": 0.5, "anneal_delta": 0.875},
        "uniform": {"random_len_ratio": 0.75, "top_q_ratio": 0.8},
        "rs2": {"random_len_ratio": 0.75, "top_q_ratio": 0.8},
    }
    return make_policy(name, n, seed=seed, num_epochs=90, **params[name])


# ------------------------------------------------------------------ the split of hard links
def prepare_split(
    workdir: Path, num_samples: int, num_classes: int, num_images: int, image_mode: str = "imagenet-like",
    log: Callable[[str], None] = print,
) -> Path:
    """``workdir/train-<n>-<classes>``: ``num_classes`` folders holding ``num_samples`` hard links in all.

    Links point at ``num_images`` generated JPEGs (``workdir/src``), in turn. A finished split
    is marked by ``train-<n>-<classes>.done`` and reused; an unfinished one is completed.
    Folder and file names have ImageNet's lengths (``n00000042/n00000042_17.JPEG``).
    """
    from orderdp_dali.make_data import make_dataset

    workdir = Path(workdir).resolve()
    root = workdir / f"train-{num_samples}-{num_classes}"
    done = workdir / f"train-{num_samples}-{num_classes}.done"
    if done.exists() and root.is_dir():
        return root
    src_classes = min(10, num_images)
    log(f"generating {num_images} {image_mode} JPEGs in {workdir / 'src'}")
    src = make_dataset(
        workdir / "src", mode=image_mode, num_classes=src_classes,
        train_per_class=max(1, num_images // src_classes), val_per_class=1,
    )
    images = sorted(str(p) for p in (src / "train").rglob("*.JPEG"))
    if not images:
        raise RuntimeError(f"make_dataset wrote no JPEG under {src / 'train'}")
    base, extra = divmod(num_samples, num_classes)
    log(f"linking {num_samples:,} files into {root} ({num_classes} folders; once per --workdir)")
    start, made = time.perf_counter(), 0
    for k in range(num_classes):
        folder = root / f"n{k:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        for j in range(base + (k < extra)):
            target = folder / f"n{k:08d}_{j}.JPEG"
            try:
                os.link(images[made % len(images)], target)
            except FileExistsError:
                pass
            made += 1
        if (k + 1) % max(1, num_classes // 10) == 0:
            log(f"  {made:,} links, {k + 1}/{num_classes} folders, {time.perf_counter() - start:.0f} s")
    write_text_atomic(done, json.dumps({"num_samples": num_samples, "images": len(images)}) + "\n")
    return root


# ------------------------------------------------------------------ measurements (each in a child)
def measure_scan(root: str, cache_dir: str) -> Dict[str, Any]:
    """Seconds of a scan without a cache (the walk), then of a cached load in this process."""
    from orderdp_dali.data.folder import SampleIndex

    shutil.rmtree(cache_dir, ignore_errors=True)
    index, scan_s = _timed(lambda: SampleIndex.scan(root, cache_dir=cache_dir))
    cache = sorted(Path(cache_dir).glob("*.npz"))
    return {"scan_s": scan_s, "num_samples": len(index), "cache_mb": sum(p.stat().st_size for p in cache) / MB}


def measure_rank(root: str, cache_dir: str, world_size: int, batch_size: int, num_threads: int) -> Dict[str, Any]:
    """One training rank at scale: RSS of index, policy and iterator, and the epoch-start times.

    Epoch 1 (scores all set, as after the first epoch) is started cold, which builds the
    iterator's sample table once per run; epoch 2 is the steady state every later epoch sees.
    """
    import torch  # noqa: F401 - imported before the baseline, as a training script does

    import orderdp_dali.pipelines  # noqa: F401
    from orderdp_dali.data.folder import SampleIndex
    from orderdp_dali.iterator import DALIPlanIterator

    out: Dict[str, Any] = {"base_mb": rss_mb()}
    index, out["load_s"] = _timed(lambda: SampleIndex.scan(root, cache_dir=cache_dir))
    out["index_mb"] = rss_mb() - out["base_mb"]
    n = len(index)
    mark = rss_mb()
    policy = build_policy("orderdp", n)
    _fill_scores(policy, n, seed=1)
    out["policy_mb"] = rss_mb() - mark
    mark = rss_mb()
    it = DALIPlanIterator(
        index, policy, batch_size, device="cpu", rank=0, world_size=world_size, num_threads=num_threads,
        epoch=1, sync_scores=False, prefetch_next_epoch=False,
    )
    epochs = []
    for epoch in (1, 2):
        it.source.set_epoch(epoch)
        e: Dict[str, Any] = {"epoch": epoch}
        _, e["plan_s"] = _timed(lambda: it.plan)
        _, e["shard_s"] = _timed(lambda: it.source.batches())
        if it._samples is None:  # the sample table, built by the first pass: timed on its own
            it._samples, e["samples_s"] = _timed(it.index.make_samples)
            out["iterator_mb"] = rss_mb() - mark
            out["peak_mb"] = peak_rss_mb() - out["base_mb"]  # before DALI allocates its buffers
            mark = rss_mb()
        start = time.perf_counter()
        gen = iter(it)
        batch = next(gen)
        e["first_batch_s"] = time.perf_counter() - start
        e["batch"] = int(batch["data"].shape[0])
        e["start_s"] = e["plan_s"] + e["first_batch_s"]
        gen.close()
        del batch, gen
        if epoch == 1:
            out["pipeline_mb"] = rss_mb() - mark
        epochs.append(e)
    out.update(
        epochs=epochs, num_samples=n, shard=len(it.shard), plan=len(it.plan),
        peak_with_pipeline_mb=peak_rss_mb() - out["base_mb"],
    )
    out["rank_mb"] = out["index_mb"] + out["policy_mb"] + out["iterator_mb"]
    return out


def measure_select(name: str, n: int, repeats: int, with_update: bool = False, seed: int = 0) -> Dict[str, Any]:
    """``select()`` ms of policy ``name`` at ``n`` (distinct epochs, no cache), and its memory.

    ``state_mb``: RSS added by the policy with every sample scored; ``held_mb``: plus one plan
    held, what a training process keeps; ``peak_mb``: the highest RSS during the calls.
    """
    base = rss_mb()
    policy = build_policy(name, n, seed)
    _fill_scores(policy, n, seed + 1)
    state = rss_mb() - base
    plans: List[Any] = [None]

    def select(k: int) -> None:
        plans[0] = None  # the previous plan is dropped first, as in training
        plans[0] = policy.select(1 + k)

    out: Dict[str, Any] = {"policy": name, "num_samples": n, **median_ms(select, repeats)}
    out.update(plan_size=len(plans[0]), state_mb=state, held_mb=rss_mb() - base, peak_mb=peak_rss_mb() - base)
    if with_update:
        rng = np.random.default_rng(seed + 2)
        batches = [
            (rng.choice(n, 1024, replace=False), rng.gamma(2.0, 1.0, 1024).astype(np.float32)) for _ in range(200)
        ]

        def update_all(_: int) -> None:
            for indices, losses in batches:
                policy.update(indices, losses)

        timing = median_ms(update_all, max(1, repeats // 2))
        out["update_ms"] = timing["median_ms"] / len(batches)
    if with_update and name == "orderdp":
        from orderdp_dali.policies.orderdp import inclusion_probabilities

        s, q = policy.subset_size, policy.keep_size
        out["inclusion_ms"] = median_ms(lambda k: inclusion_probabilities(n, s, q), 2)["median_ms"]
    return out


def measure_merge(world_size: int, n: int, batch_size: int, repeats: int) -> Dict[str, Any]:
    """Epoch-end ``end_epoch_sync()`` (flush + one all-reduce) over ``world_size`` gloo ranks."""
    from orderdp_dali.bench.train_overhead import measure_sync

    return measure_sync(world_size, n, batch_size, repeats)


CHILDREN: Dict[str, Callable[..., Dict[str, Any]]] = {
    "scan": measure_scan,
    "rank": measure_rank,
    "select": measure_select,
    "merge": measure_merge,
}


def run_child(child: str, /, **kwargs: Any) -> Dict[str, Any]:
    """Run ``CHILDREN[child](**kwargs)`` in a fresh Python process and return its result."""
    cmd = [sys.executable, "-m", "orderdp_dali.bench.scale_bench", "--child", child, json.dumps(kwargs)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"measurement {child}({kwargs}) failed (exit {proc.returncode}): {proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ figures and report
def _row(figure: str, value: float, unit: str, goal_key: Optional[str], detail: str = "") -> Dict[str, Any]:
    goal = GOALS.get(goal_key) if goal_key else None
    return {
        "figure": figure, "value": float(value), "unit": unit, "goal": goal,
        "met": None if goal is None else bool(value < goal), "detail": detail,
    }


def figures(res: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The table's rows (figure, value, unit, goal, met, detail) from the measurements ``res``."""
    n, big = res["config"]["num_samples"], res["config"]["big_samples"]
    rank, scan = res["rank"], res["scan"]
    w = res["config"]["world_size"]
    rows = [
        _row("index scan, no cache (walk)", scan["scan_s"], "s", "index_scan_s", f"{scan['num_samples']:,} files"),
        _row("index load, cached", rank["load_s"], "s", "index_load_s", f"cache {scan['cache_mb']:.0f} MB"),
        _row("RSS: index", rank["index_mb"], "MB", None),
        _row("RSS: policy (OrderDP, all scored)", rank["policy_mb"], "MB", None),
        _row("RSS: iterator (plan, shard, sample table)", rank["iterator_mb"], "MB", None),
        _row(f"RSS per rank: index + policy + iterator (rank 0 of {w})", rank["rank_mb"], "MB", "rank_memory_mb",
             f"peak {rank['peak_mb']:.0f} MB before DALI starts"),
        _row("RSS: DALI pipeline buffers (grow with the batch, not n)", rank["pipeline_mb"], "MB", None,
             f"batch {res['config']['batch_size']}"),
    ]
    for e in rank["epochs"]:
        what = "first epoch (builds the sample table)" if "samples_s" in e else "steady state"
        rows.append(_row(f"epoch {e['epoch']} start: plan chosen", e["plan_s"], "s", None, f"OrderDP, {what}"))
        rows.append(_row(f"epoch {e['epoch']} start: shard published", e["shard_s"], "s", None,
                         f"{rank['shard']:,} of {rank['plan']:,}"))
        if "samples_s" in e:
            rows.append(_row(f"epoch {e['epoch']} start: sample table built (once per run)", e["samples_s"], "s", None))
        rows.append(_row(f"epoch {e['epoch']} start: first batch out", e["first_batch_s"], "s", None,
                         f"DALI CPU decode, batch {e['batch']}"))
        total = e["start_s"] + e.get("samples_s", 0.0)
        rows.append(_row(f"epoch {e['epoch']} start: plan + shard + first batch", total, "s", "epoch_start_s"))
    for r in res["select"]:
        rows.append(_row(f"select() {r['policy']}, n = {n:,}", r["median_ms"], "ms", "select_ms",
                         f"min {r['min_ms']:.1f}, CPU {r['cpu_ms']:.1f}, plan {r['plan_size']:,}"))
    for r in res["select"]:
        if "update_ms" in r:
            rows.append(_row(f"update() {r['policy']}, 1,024 samples", r["update_ms"], "ms", "update_ms"))
    for r in res["select"]:
        if "inclusion_ms" in r:
            rows.append(_row(f"OrderDP exact inclusion probabilities, n = {n:,}", r["inclusion_ms"], "ms",
                             "inclusion_ms"))
    for r in res["select_21k"]:
        rows.append(_row(f"select() {r['policy']}, n = {big:,}", r["median_ms"], "ms", "select_21k_ms",
                         f"min {r['min_ms']:.1f}, CPU {r['cpu_ms']:.1f}, plan {r['plan_size']:,}"))
    for r in res["select_21k"]:
        rows.append(_row(f"policy memory {r['policy']}, n = {big:,} (scores + one plan)", r["held_mb"], "MB",
                         "policy_memory_21k_mb", f"scores {r['state_mb']:.0f}, peak in select {r['peak_mb']:.0f}"))
    m = res["merge"]
    rows.append(_row(f"epoch-end score merge, n = {n:,}, {res['config']['merge_ranks']} gloo ranks", m["sync_s"], "s",
                     "merge_s", "slowest rank's median: " + ", ".join(f"{s * 1e3:.0f}" for s in m["sync_per_rank_s"])
                     + " ms"))
    return rows


def _fmt(v: float, unit: str) -> str:
    if unit == "ms":
        return f"{v:.3f}" if v < 1 else f"{v:.1f}"
    return f"{v:.3f}" if unit == "s" else f"{v:.0f}"


def format_table(rows: Sequence[Dict[str, Any]], markdown: bool = False) -> str:
    """Rows as a text table (or a Markdown one): figure, measured, goal, met, detail."""
    cells = [
        (r["figure"], f"{_fmt(r['value'], r['unit'])} {r['unit']}",
         "" if r["goal"] is None else f"< {r['goal']:g} {r['unit']}",
         "" if r["met"] is None else ("met" if r["met"] else "NOT MET"), r["detail"])
        for r in rows
    ]
    head = ("figure", "measured", "goal", "", "detail")
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|---|---:|---:|---|---|"]
        return "\n".join(lines + ["| " + " | ".join(c) + " |" for c in cells])
    widths = [max(len(c[i]) for c in [head, *cells]) for i in range(5)]
    fmt = lambda c: "  ".join(s.ljust(wd) if i != 1 else s.rjust(wd) for i, (s, wd) in enumerate(zip(c, widths)))  # noqa: E731
    return "\n".join([fmt(head), *(fmt(c) for c in cells)])


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m orderdp_dali.bench.scale_bench", description=__doc__.splitlines()[0])
    p.add_argument("--workdir", type=Path, required=True, help="where the hard-linked split is made once and reused")
    p.add_argument("--num-samples", type=int, default=IMAGENET_1K, help="n of the split (default ImageNet-1k train)")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--images", type=int, default=300, help="distinct generated JPEGs the links point at")
    p.add_argument("--image-mode", default="imagenet-like", choices=("imagenet-like", "small"))
    p.add_argument("--big-samples", type=int, default=IMAGENET_21K, help="n of the policies-only run (ImageNet-21k)")
    p.add_argument("--world-size", type=int, default=4, help="ranks the per-rank figures shard the plan over")
    p.add_argument("--merge-ranks", type=int, default=4, help="gloo processes of the score merge")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=2, help="DALI CPU threads")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per figure (median; after a warm-up)")
    p.add_argument("--out", type=Path, help="write scale.json and scale.md into this folder")
    p.add_argument("--child", nargs=2, metavar=("NAME", "JSON"), help=argparse.SUPPRESS)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    if raw[:1] == ["--child"]:  # one measurement, in this fresh process: the result is stdout's last line
        print(json.dumps(CHILDREN[raw[1]](**json.loads(raw[2]))))
        return 0
    args = get_args_parser().parse_args(raw)
    for name in ("num_samples", "num_classes", "images", "big_samples", "world_size", "merge_ranks",
                 "batch_size", "threads", "repeats"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.num_classes > args.num_samples:
        raise SystemExit(f"--num-classes ({args.num_classes}) must not exceed --num-samples ({args.num_samples})")
    say = lambda msg: print(msg, flush=True)  # noqa: E731
    load_before = os.getloadavg()
    root = prepare_split(args.workdir, args.num_samples, args.num_classes, args.images, args.image_mode, say)
    cache = str(args.workdir.resolve() / "index-cache")
    n, big = args.num_samples, args.big_samples
    res: Dict[str, Any] = {"config": {**{k: v for k, v in vars(args).items() if k not in ("child",)}}}
    res["config"].update(workdir=str(args.workdir), out=str(args.out) if args.out else None, root=str(root))
    say("index: cold scan")
    res["scan"] = run_child("scan", root=str(root), cache_dir=cache)
    say("rank 0: cached load, memory, epoch start")
    res["rank"] = run_child("rank", root=str(root), cache_dir=cache, world_size=args.world_size,
                            batch_size=args.batch_size, num_threads=args.threads)
    res["select"], res["select_21k"] = [], []
    for name in POLICY_NAMES:
        say(f"select() {name}, n = {n:,}")
        res["select"].append(run_child("select", name=name, n=n, repeats=args.repeats, with_update=True))
    for name in POLICY_NAMES:
        say(f"select() {name}, n = {big:,}")
        res["select_21k"].append(run_child("select", name=name, n=big, repeats=args.repeats))
    say(f"score merge, {args.merge_ranks} gloo ranks")
    res["merge"] = run_child("merge", world_size=args.merge_ranks, n=n, batch_size=args.batch_size,
                             repeats=args.repeats)
    res["machine"] = {**environment(), "load_avg_before": load_before, "load_avg_after": os.getloadavg()}
    res["command"] = "python -m orderdp_dali.bench.scale_bench " + " ".join(raw)
    res["rows"] = figures(res)
    say("")
    say(format_table(res["rows"]))
    missed = [r["figure"] for r in res["rows"] if r["met"] is False]
    say(f"\n{len(missed)} goal(s) not met" + (": " + "; ".join(missed) if missed else ""))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(args.out / "scale.json", json.dumps(res, indent=2, default=str) + "\n")
        write_text_atomic(args.out / "scale.md", format_markdown(res) + "\n")
        say(f"wrote {args.out / 'scale.json'} and {args.out / 'scale.md'}")
    return 0


def format_markdown(res: Dict[str, Any]) -> str:
    """The report: command, machine, load average, and the table of figures with their goals."""
    m, c = res["machine"], res["config"]
    return "\n".join([
        "# Scale benchmark: ImageNet-1k and -21k sizes without ImageNet",
        "",
        f"```bash\n{res['command']}\n```",
        "",
        f"Split: {c['num_samples']:,} hard links in {c['num_classes']} class folders to {c['images']} generated "
        f"{c['image_mode']} JPEGs; policies-only run at {c['big_samples']:,} samples. Per-rank figures: rank 0 of "
        f"{c['world_size']}, OrderDP r=0.75 t=0.8, batch {c['batch_size']}, DALI CPU backend with {c['threads']} "
        f"threads. Medians of {c['repeats']} timed calls after a warm-up; each block of figures in a fresh process.",
        "",
        f"Machine: {m['cpu_model']}, {m['cpu_count']} CPUs, {m['memory_gb']} GB; Python {m['python']}, "
        f"numpy {m['numpy']}, DALI {m['dali']}; commit {m['git_commit']}. Load average (1, 5, 15 min) before: "
        f"{', '.join(f'{x:.2f}' for x in m['load_avg_before'])}; after: "
        f"{', '.join(f'{x:.2f}' for x in m['load_avg_after'])}.",
        *(
            ["", f"The 1-minute load average exceeded the {m['cpu_count']} CPUs: every wall time carries other jobs' "
             "share of the cores; the CPU times given beside select() are steadier. Rerun on a quiet machine for "
             "the figures to quote."]
            if max(m["load_avg_before"][0], m["load_avg_after"][0]) > (m["cpu_count"] or 1) else []
        ),
        "",
        format_table(res["rows"], markdown=True),
    ])


if __name__ == "__main__":
    raise SystemExit(main())

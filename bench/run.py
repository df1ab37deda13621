"""``orderdp-dali bench``: every policy trained on the same data, model, seed and recipe, taking turns.

::

    orderdp-dali bench --config configs/bench_cpu_demo.yaml
    orderdp-dali bench --config configs/bench_digits.yaml seeds=[0,1,2] train.epochs=20
    orderdp-dali bench --config configs/bench_loader_cpu.yaml            # loader comparison, no model

The bench config (:mod:`orderdp_dali.bench.config`) names the dataset, one training recipe,
the policies and the seeds. For each seed, every policy gets its own
:class:`~orderdp_dali.training.TrainingRun` (model, optimizer, iterator) in this process, and
the runs take turns epoch by epoch: epoch e of every policy before epoch e+1 of any, the
order rotating each epoch and seed. A change in machine load then lands on every policy
alike, and each policy's epoch is compared with the full-data epoch of the same round
(:mod:`orderdp_dali.bench.report`). An untimed 1-epoch warm-up run comes first.

The run folder (``runs/<name>-<timestamp>/`` unless ``--out``) receives ``results.json``
(every figure, the config and the environment; rewritten after every round of epochs with
``"complete": false`` until the bench ends, so a run cut short keeps what it measured),
``report.md``, PNG plots and, per run, the training loop's ``metrics.jsonl`` and log.
Each run builds its one training pipeline at start-up, outside every timed epoch; that
set-up is reported apart (``setup`` of each run).
"""
from __future__ import annotations

import contextlib
import functools
import gc
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, TextIO, Tuple

from orderdp_dali.atomic import write_text_atomic
from orderdp_dali.bench import report as report_mod
from orderdp_dali.bench.config import BenchConfig, entry, recipe_config, task_bench
from orderdp_dali.bench.machine import environment, load_average
from orderdp_dali.errors import DatasetError

__all__ = ["ensure_dataset", "run_policies", "run_bench", "run_study", "turn_order"]

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- data


def ensure_dataset(dataset: Mapping[str, Any], out: Optional[TextIO] = None) -> Path:
    """The dataset root; generated with ``make_dataset(**dataset["make"])`` if it has no train split.

    Raises:
        DatasetError: the folder is missing and there is nothing to generate it from.
    """
    root = Path(str(dataset["root"])).expanduser()
    train = root / dataset.get("train_split", "train")
    make = dataset.get("make")
    if make is not None:
        from orderdp_dali.make_data import make_dataset

        if out is not None and not train.is_dir():
            print(f"[bench] generating {make.get('mode', 'small')} data into {root} ...", file=out, flush=True)
        t0 = time.perf_counter()
        root = make_dataset(root, **make)  # returns at once when a matching dataset exists
        # Freshly written images are still being flushed to disk; without this the
        # write-back competes with whichever policy runs first and inflates its time.
        os.sync()
        if out is not None and time.perf_counter() - t0 > 1.0:
            print(f"[bench] data ready in {time.perf_counter() - t0:.0f} s", file=out, flush=True)
    elif not train.is_dir():
        raise DatasetError(f"dataset.root: {train} does not exist and dataset.make is not set to generate it")
    return root.resolve()


def warm_page_cache(split_dir: Path, max_fraction_of_ram: float = 0.5) -> int:
    """Read every file of a split once, so no policy's run is the one that pays for a cold cache.

    Skipped (returns 0) when the split is larger than ``max_fraction_of_ram`` of physical
    memory: it would not stay cached anyway (ImageNet), and every run then reads from disk alike.
    """
    files = [os.path.join(d, f) for d, _, names in os.walk(split_dir) for f in names]
    size = sum(os.path.getsize(f) for f in files)
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not on every platform
        ram = 0
    if not ram or size > max_fraction_of_ram * ram:
        return 0
    total = 0
    for path in files:
        with open(path, "rb") as fh:
            while True:
                chunk = fh.read(1 << 20)
                if not chunk:
                    break
                total += len(chunk)
    return total


# ----------------------------------------------------------------------------- progress


def _fmt_s(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    m, s = divmod(seconds, 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


class Progress:
    """One line per finished epoch (the training loop's record), with elapsed time and an ETA."""

    def __init__(self, out: TextIO, total_epochs: int) -> None:
        self.out = out
        self.total = total_epochs
        self.done = 0
        self.t0 = time.perf_counter()

    def say(self, text: str) -> None:
        print(f"[bench] {text}", file=self.out, flush=True)

    def epoch(self, label: str, record: Mapping[str, Any], epochs: int, counted: bool = True) -> None:
        if counted:
            self.done += 1
        acc = f", val top-1 {record['val_top1']:.1f}%" if record.get("val_top1") is not None else ""
        eta = ""
        if counted and self.done:
            elapsed = time.perf_counter() - self.t0
            eta = f"; elapsed {_fmt_s(elapsed)}, ETA {_fmt_s(elapsed / self.done * (self.total - self.done))}"
        self.say(f"{label}: epoch {record['epoch'] + 1}/{epochs} ({record['samples']} samples, "
                 f"{record['epoch_time']:.1f} s{acc}){eta}")


# ----------------------------------------------------------------------------- runs


def turn_order(policies: Sequence[str], turn: int) -> List[str]:
    """The policies in the order they run in round ``turn``: rotated by one each round."""
    k = turn % len(policies)
    return list(policies[k:]) + list(policies[:k])


def _warmup(first: Any, run_dir: Path, progress: Progress) -> Dict[str, Any]:
    """An untimed 1-epoch full-data run: imports, allocator, page cache, DALI's first start."""
    from orderdp_dali.training import run_training

    wcfg = first.override("train.epochs=1", "train.eval_every=0", "schedule.warmup_epochs=0",
                          "policy.name=full", "policy.params={}")
    out = run_dir / "train" / "warmup"
    out.mkdir(parents=True, exist_ok=True)
    progress.say("warm-up run (1 epoch, untimed: start-up, allocator, caches)")
    t0 = time.perf_counter()
    with open(out / "train.log", "w", encoding="utf-8") as logf, contextlib.redirect_stdout(logf):
        run_training(wcfg, output_dir=out, overwrite=True,
                     on_epoch=lambda rec: progress.epoch("warm-up", rec, 1, counted=False))
    gc.collect()
    return {"seconds": time.perf_counter() - t0}


def _run_seed(bench: BenchConfig, cfgs: Mapping[str, Any], seed_index: int, progress: Progress,
              loads: List[Optional[float]],
              on_round: Optional[Callable[[Dict[str, List[Dict[str, Any]]], Dict[str, Any]], None]] = None,
              ) -> Tuple[Dict[str, List[Dict[str, Any]]], Dict[str, Dict[str, Any]]]:
    """Every policy's run for one seed, interleaved epoch by epoch.

    Returns:
        (policy -> epoch records, policy -> its set-up: the training pipeline's build and first
        scheduling, done before any timed epoch). ``on_round(records, setup)`` is called after
        every round of epochs, with the records so far.
    """
    from orderdp_dali.training import TrainingRun

    policies = list(cfgs)
    epochs = {p: cfgs[p].train.epochs for p in policies}  # an entry may train fewer epochs than another
    records: Dict[str, List[Dict[str, Any]]] = {p: [] for p in policies}
    setup: Dict[str, Dict[str, Any]] = {}
    with contextlib.ExitStack() as stack:
        logs, live = {}, {}
        for p in policies:
            out = Path(cfgs[p].train.output_dir)
            out.mkdir(parents=True, exist_ok=True)
            logs[p] = stack.enter_context(open(out / "train.log", "w", encoding="utf-8"))
            t0 = time.perf_counter()
            with contextlib.redirect_stdout(logs[p]):
                live[p] = stack.enter_context(TrainingRun(cfgs[p], overwrite=True))
            # data, model, optimizer and the training pipeline (its build time and, on a GPU, the
            # memory after it): all before any timed epoch
            setup[p] = {"start_s": time.perf_counter() - t0, **live[p].setup}
        for epoch in range(max(epochs.values())):
            loads.append(load_average())
            turns = [p for p in turn_order(policies, epoch + seed_index) if epoch < epochs[p]]
            for turn, p in enumerate(turns):
                with contextlib.redirect_stdout(logs[p]):
                    record = live[p].run_epoch(epoch)
                record["turn"] = turn
                records[p].append(record)
                progress.epoch(f"{p} seed {cfgs[p].train.seed}", record, epochs[p])
            if on_round is not None:
                on_round(records, setup)
    # Closed DALI pipelines stop their threads when collected: collect before the next seed is timed.
    gc.collect()
    return records, setup


def _run_entry(bench: BenchConfig, cfg: Any, policy: str, seed: int, records: List[Dict[str, Any]],
               setup: Mapping[str, Any]) -> Dict[str, Any]:
    """One (entry, seed) run as results.json holds it: ``policy`` is the entry's name, ``method``
    the registered policy it runs."""
    return {"policy": policy, "method": cfg.policy.name, "seed": seed, "params": dict(bench.policies[policy]),
            "epochs": records, "totals": report_mod.run_totals(records), "setup": dict(setup),
            "config": cfg.to_dict()}


def run_policies(bench: BenchConfig, root: Path, run_dir: Path, out: TextIO,
                 on_round: Optional[Callable[[List[Dict[str, Any]]], None]] = None) -> Dict[str, Any]:
    """All (seed, policy) runs of ``bench``, interleaved per seed; the ``runs`` part of results.json.

    ``on_round(runs)`` is called after every round of epochs with every run so far (those of
    the seed under way hold the epochs done), so a caller can save what was measured as it goes.
    """
    policies, seeds = list(bench.policies), list(bench.seeds)
    cfgs = {
        s: {p: recipe_config(bench, p, s, str(run_dir / "train" / f"{p}-seed{s}"), str(root)) for p in policies}
        for s in seeds
    }
    first = cfgs[seeds[0]][policies[0]]
    warmed = warm_page_cache(root / bench.dataset.train_split) + warm_page_cache(root / bench.dataset.val_split)
    progress = Progress(out, total_epochs=sum(c.train.epochs for per_seed in cfgs.values() for c in per_seed.values()))
    cache = (f"page cache warmed ({warmed / 1e6:.0f} MB)" if warmed
             else "data larger than half the RAM: page cache not warmed")
    progress.say(f"{cache}; {len(policies)} entries x {len(seeds)} seed(s), taking turns epoch by epoch")
    warm = _warmup(first, run_dir, progress) if bench.warmup else None
    if warm:
        progress.say(f"warm-up done in {warm['seconds']:.1f} s")
    runs: List[Dict[str, Any]] = []
    loads: List[Optional[float]] = []
    def entries(seed: int, records: Dict[str, List[Dict[str, Any]]], setup: Dict[str, Dict[str, Any]]):
        return [_run_entry(bench, cfgs[seed][p], p, seed, records[p], setup[p]) for p in policies]

    def report_round(seed: int, records: Dict[str, List[Dict[str, Any]]], setup: Dict[str, Dict[str, Any]]) -> None:
        on_round(runs + entries(seed, records, setup))

    for k, seed in enumerate(seeds):
        each_round = functools.partial(report_round, seed) if on_round is not None else None
        records, setup = _run_seed(bench, cfgs[seed], k, progress, loads, on_round=each_round)
        runs.extend(entries(seed, records, setup))
    return {"runs": runs, "warmup": warm, "load_averages": loads, "train_settings": _recipe_summary(first)}


def first_orderdp_sizes(bench: BenchConfig, n: int) -> Optional[Tuple[int, int, int]]:
    """(n, s, q) of the first entry running OrderDP, or None when none does."""
    for name in bench.policies:
        spec = entry(bench, name)
        if spec.policy == "orderdp":
            return orderdp_sizes(n, spec.params)
    return None


def orderdp_sizes(n: int, params: Mapping[str, Any]) -> Tuple[int, int, int]:
    """(n, s, q) of an OrderDP policy built with ``params`` over ``n`` samples."""
    from orderdp_dali.policies import make_policy

    p = make_policy("orderdp", n, **params)
    return n, int(p.subset_size), int(p.keep_size)


def _recipe_summary(cfg: Any) -> Dict[str, Any]:
    return {
        "model": cfg.model.name,
        "epochs": cfg.train.epochs,
        "batch_size": cfg.train.batch_size,
        "optim": cfg.optim.name,
        "lr": cfg.optim.lr,
        "schedule": cfg.schedule.name,
        "crop": cfg.data.crop,
        "amp": cfg.train.amp,
        "device": cfg.train.device,
        "dali_threads": cfg.data.num_threads,
    }


def _split_sizes(root: Path, bench: BenchConfig) -> Dict[str, Any]:
    """The dataset as the runs will index it: ``build_data`` of the recipe (folders, lists, shards, CIFAR)."""
    from orderdp_dali.training import build_data

    cfg = recipe_config(bench, next(iter(bench.policies)), bench.seeds[0], "", str(root))
    try:
        data = build_data(cfg)
    except DatasetError:  # no usable validation split (a loader-only bench needs none): count training alone
        data = build_data(cfg.override("train.eval_every=0"))
    info: Dict[str, Any] = {"root": str(root), "train_root": str(getattr(data.train, "root", root)),
                            "train_size": len(data.train), "val_size": None if data.val is None else len(data.val)}
    from orderdp_dali.make_data import read_manifest

    manifest = read_manifest(root)
    if manifest is not None:
        info["generated"] = manifest.get("request")
    return info


def run_bench(bench: BenchConfig, run_dir: Path, out: TextIO = sys.stdout, command: str = "") -> Dict[str, Any]:
    """Run ``bench`` into ``run_dir``: results.json, report.md and the plots; returns the results."""
    from orderdp_dali.bench import plots

    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    root = ensure_dataset({**bench.to_dict()["dataset"], "root": bench.dataset_root}, out)
    results: Dict[str, Any] = {
        "version": report_mod.RESULTS_VERSION,
        "name": bench.name,
        "command": command,
        "config": bench.to_dict(),
        "environment": environment(),
        "dataset": _split_sizes(root, bench),
        "notes": list(bench.notes),
    }
    if bench.mode in ("train", "both"):

        def save_partial(runs: List[Dict[str, Any]]) -> None:
            # What was measured so far, after every round: a run stopped by a time limit keeps it.
            _write_json(run_dir / "results.json", {**results, "runs": runs, "complete": False})

        results.update(run_policies(bench, root, run_dir, out, on_round=save_partial))
        results["summary"] = report_mod.summarize(results["runs"])
        results["fit"] = report_mod.fit_epoch_cost(results["runs"])
        results["time_to_accuracy"] = report_mod.time_to_accuracy(results["runs"], target_top1=bench.target_top1)
        results["ranking"] = report_mod.ranking_summary(results["runs"])
    if bench.mode in ("loader", "both"):
        results["loader"] = _run_loader(bench, root, out)
    results["total_s"] = time.perf_counter() - t0
    plot_files: List[str] = []
    if results.get("runs"):
        sizes = first_orderdp_sizes(bench, results["dataset"]["train_size"])
        plot_files = plots.write_all(results["runs"], run_dir, orderdp_sizes=sizes, fit=results["fit"],
                                     summary=results["summary"])
    results["plots"] = plot_files
    results["complete"] = True
    _write_json(run_dir / "results.json", results)
    write_text_atomic(run_dir / "report.md", report_mod.render_report(results))
    return results


def run_study(bench: BenchConfig, run_dir: Path, out: TextIO = sys.stdout, command: str = "") -> Dict[str, Any]:
    """Every task of ``bench.tasks`` as its own bench into ``run_dir/<task>/``, one after the
    other; ``run_dir`` gets results.json (each task's results) and report.md (each task's
    tables, with a link to its full report)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results: Dict[str, Any] = {"version": report_mod.RESULTS_VERSION, "name": bench.name, "command": command,
                               "config": bench.to_dict(), "tasks": {}}
    for k, task in enumerate(bench.tasks, 1):
        print(f"[bench] task {k}/{len(bench.tasks)}: {task}", file=out, flush=True)
        results["tasks"][task] = run_bench(task_bench(bench, task), run_dir / task, out, command)
        results["total_s"] = time.perf_counter() - t0
        _write_json(run_dir / "results.json", {**results, "complete": k == len(bench.tasks)})
    write_text_atomic(run_dir / "report.md", report_mod.render_study(results))
    return results


def _run_loader(bench: BenchConfig, root: Path, out: TextIO) -> Dict[str, Any]:
    from orderdp_dali.bench.loader_compare import run_loader_comparison

    opts = bench.to_dict()["loader"]
    training = bench.training
    if opts["batch_size"] is None:
        opts["batch_size"] = (training.get("train") or {}).get("batch_size", 64)
    if opts["crop"] is None:
        opts["crop"] = (training.get("data") or {}).get("crop", 224)
    if opts["device"] is None:
        device = (training.get("train") or {}).get("device", "auto")
        opts["device"] = "gpu" if device == "cuda" else device
    split = root / bench.dataset.train_split
    print(f"[bench] loader comparison: {', '.join(opts['loaders'])} over {split}", file=out, flush=True)
    return run_loader_comparison(str(split), progress=lambda s: print(f"[bench] loader {s}", file=out, flush=True),
                                 **opts)


def _write_json(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")

"""``orderdp-dali bench``: the same model, data, seed and recipe under each policy, timed alike.

::

    orderdp-dali bench --config configs/bench_cpu_demo.yaml
    orderdp-dali bench --config configs/bench_digits.yaml seeds=[0,1,2] train.epochs=20
    orderdp-dali bench --config configs/bench_cpu_demo.yaml --loader-only

A bench config (YAML) names the dataset (generated with :func:`orderdp_dali.make_data.make_dataset`
when absent), one training recipe (the sections of an ``orderdp-dali train`` config:
``data``, ``model``, ``optim``, ``schedule``, ``train``), the policies with their
hyper-parameters, and the seeds::

    name: cpu_demo
    dataset: {root: data/bench_small, make: {mode: small}}
    training: {model: {name: tiny}, train: {epochs: 8, batch_size: 64}, ...}
    policies: {full: {}, orderdp: {random_len_ratio: 0.75, top_q_ratio: 0.8}, ...}
    seeds: [0]

Every (seed, policy) pair is one call of :func:`orderdp_dali.train.run_training` in this
process, one after another (the policy order rotates with the seed, and an untimed warm-up
run comes first, so no policy is always the one that pays for cold caches). Per-epoch
records come from the training loop itself; nothing here re-implements training.

Overrides use dotted keys: ``seeds=[0,1,2]``, ``policies=[full,orderdp]`` (a subset),
``policies.orderdp.top_q_ratio=0.9``, ``dataset.root=/data/x``, and the recipe's own keys
directly (``train.epochs=3``, ``model.name=resnet18``, ``data.crop=96``).

The run folder (``runs/<name>-<timestamp>/`` unless ``--out``) receives ``results.json``
(every figure, the config and the environment), ``report.md``, PNG plots and, per run,
the training loop's ``metrics.jsonl`` and log.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import logging
import os
import shlex
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, TextIO, Tuple

import yaml

from orderdp_dali.atomic import write_text_atomic
from orderdp_dali.bench import report as report_mod
from orderdp_dali.errors import ConfigError, DatasetError

__all__ = ["BENCH_KEYS", "load_bench_config", "ensure_dataset", "run_bench", "main", "get_args_parser"]

log = logging.getLogger(__name__)

# Top-level keys of a bench config, with their defaults.
BENCH_KEYS: Dict[str, Any] = {
    "name": "bench",
    "mode": "train",  # train | loader | both
    "dataset": {},
    "training": {},
    "policies": {"full": {}, "infobatch": {}, "orderdp": {}, "uniform": {}},
    "seeds": [0],
    "warmup": True,
    "loader": {},
    "output_root": "runs",
    "notes": [],
}
RECIPE_SECTIONS = ("data", "model", "optim", "schedule", "train")
MODES = ("train", "loader", "both")
DATASET_KEYS = ("root", "train_split", "val_split", "make")
LOADER_KEYS = (
    "loaders",
    "batch_size",
    "workers",
    "device",
    "random_len_ratio",
    "top_q_ratio",
    "warmup",
    "repeats",
    "crop",
    "seed",
)


# ----------------------------------------------------------------------------- config


def apply_override(bench: Dict[str, Any], item: str) -> None:
    """Apply one ``key=value`` override (value in YAML syntax) to a bench config dict."""
    from orderdp_dali.config import parse_override, set_path

    key, value = parse_override(item)
    head = key.split(".", 1)[0]
    if head in RECIPE_SECTIONS:
        key = "training." + key
    elif head == "policy":
        raise ConfigError(f"{key}: the bench sets the policy per run; use policies.<name>.<param>=... instead")
    elif head not in BENCH_KEYS:
        raise ConfigError(
            f"{key}: unknown bench key; known: {', '.join(BENCH_KEYS)} "
            f"and the recipe sections {', '.join(RECIPE_SECTIONS)}"
        )
    if key == "policies" and isinstance(value, (list, str)):
        names = [value] if isinstance(value, str) else value
        current = bench.get("policies") or {}
        bench["policies"] = {str(n): dict(current.get(n) or {}) for n in names}
        return
    set_path(bench, key, value)


def load_bench_config(path: Optional[str], overrides: Sequence[str] = ()) -> Dict[str, Any]:
    """Read a bench config, apply overrides, fill defaults and check it.

    Raises:
        ConfigError: unreadable file, unknown key, bad value (the message names the key).
    """
    data: Dict[str, Any] = {}
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"cannot read bench config {path}: {e.strerror or e}") from None
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"invalid YAML in {path}: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"bench config {path} must hold a mapping, got {type(data).__name__}")
    for key in data:
        if key not in BENCH_KEYS:
            raise ConfigError(f"{key}: unknown bench key; known: {', '.join(BENCH_KEYS)}")
    bench = copy.deepcopy(BENCH_KEYS)
    bench.update(copy.deepcopy(data))
    for item in overrides:
        apply_override(bench, item)
    _check_bench(bench)
    return bench


def _check_bench(bench: Dict[str, Any]) -> None:
    if bench["mode"] not in MODES:
        raise ConfigError(f"mode: invalid value {bench['mode']!r}; choose one of {', '.join(MODES)}")
    if not isinstance(bench["name"], str) or not bench["name"] or "/" in bench["name"]:
        raise ConfigError(f"name: need a non-empty file-name-safe string, got {bench['name']!r}")
    seeds = bench["seeds"]
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = bench["seeds"] = [seeds]
    if (
        not isinstance(seeds, list)
        or not seeds
        or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds)
        or len(set(seeds)) != len(seeds)
    ):
        raise ConfigError(f"seeds: need a non-empty list of distinct integers >= 0, got {seeds!r}")
    pols = bench["policies"]
    if not isinstance(pols, dict) or not pols:
        raise ConfigError(f"policies: need a mapping policy -> parameters, got {pols!r}")
    for name, params in list(pols.items()):
        if params is None:
            pols[name] = {}
        elif not isinstance(params, dict):
            raise ConfigError(f"policies.{name}: need a mapping of parameters, got {params!r}")
    ds = bench["dataset"]
    if not isinstance(ds, dict):
        raise ConfigError(f"dataset: need a mapping, got {ds!r}")
    for key in ds:
        if key not in DATASET_KEYS:
            raise ConfigError(f"dataset.{key}: unknown key; known: {', '.join(DATASET_KEYS)}")
    if not ds.get("root") and not (bench["training"].get("data") or {}).get("root"):
        raise ConfigError("dataset.root: required (the dataset folder; generated there when dataset.make is set)")
    if ds.get("make") is not None and not isinstance(ds["make"], dict):
        raise ConfigError(f"dataset.make: need make_dataset arguments as a mapping, got {ds['make']!r}")
    for key in bench["training"]:
        if key not in RECIPE_SECTIONS:
            hint = " (policies are set by the bench's 'policies')" if key == "policy" else ""
            raise ConfigError(f"training.{key}: unknown section; known: {', '.join(RECIPE_SECTIONS)}{hint}")
    loader = bench["loader"]
    if not isinstance(loader, dict):
        raise ConfigError(f"loader: need a mapping, got {loader!r}")
    for key in loader:
        if key not in LOADER_KEYS:
            raise ConfigError(f"loader.{key}: unknown key; known: {', '.join(LOADER_KEYS)}")
    if not isinstance(bench["warmup"], bool):
        raise ConfigError(f"warmup: expected true or false, got {bench['warmup']!r}")
    if isinstance(bench["notes"], str):
        bench["notes"] = [bench["notes"]]
    if bench["mode"] != "loader":
        # Validate every run's training config now, before anything starts.
        for name, params in pols.items():
            recipe_config(bench, name, params, bench["seeds"][0], "unused", dataset_root=_dataset_root(bench))


def _dataset_root(bench: Mapping[str, Any]) -> str:
    return str(bench["dataset"].get("root") or bench["training"].get("data", {}).get("root"))


def recipe_config(
    bench: Mapping[str, Any], policy: str, params: Mapping[str, Any], seed: int, output_dir: str, dataset_root: str
):
    """The validated training :class:`~orderdp_dali.config.Config` of one (policy, seed) run."""
    from orderdp_dali.config import Config

    data = copy.deepcopy(dict(bench["training"]))
    data.setdefault("data", {})
    data["data"]["root"] = dataset_root
    for key in ("train_split", "val_split"):
        if bench["dataset"].get(key):
            data["data"][key] = bench["dataset"][key]
    data["policy"] = {"name": policy, "params": dict(params)}
    train = data.setdefault("train", {})
    train["seed"] = seed
    train["output_dir"] = output_dir
    train.setdefault("checkpoint", False)  # checkpoints would add unequal disk time; not what is measured
    train["progress"] = False  # the bench prints its own progress
    try:
        return Config.from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"policies.{policy}: {e}") from None


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
    """Prints which run is going, its epoch x/y and an ETA, by watching the runs' metrics files.

    The training loop appends one JSON line per finished epoch to ``metrics.jsonl``; a
    thread polls the current run's file, so the loop needs no callback.
    """

    def __init__(self, out: TextIO, total_epochs: int, poll_s: float = 0.5) -> None:
        self.out = out
        self.total = total_epochs
        self.done = 0
        self.poll_s = poll_s
        self.t0 = time.perf_counter()
        self._lock = threading.Lock()
        self._path: Optional[Path] = None
        self._seen = 0
        self._label = ""
        self._epochs = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="bench-progress", daemon=True)
        self._thread.start()

    def say(self, text: str) -> None:
        print(f"[bench] {text}", file=self.out, flush=True)

    def start_run(self, label: str, metrics: Path, epochs: int) -> None:
        with self._lock:
            self._path, self._seen, self._label, self._epochs = metrics, 0, label, epochs
        self.say(f"{label}: starting ({epochs} epochs){self._eta()}")

    def end_run(self) -> None:
        self._poll()
        with self._lock:
            self._path = None

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def _eta(self) -> str:
        if self.done == 0:
            return ""
        elapsed = time.perf_counter() - self.t0
        return f", elapsed {_fmt_s(elapsed)}, ETA {_fmt_s(elapsed / self.done * (self.total - self.done))}"

    def _poll(self) -> None:
        with self._lock:
            path = self._path
            if path is None or not path.exists():
                return
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except OSError:
                return
            for line in lines[self._seen :]:
                try:
                    rec = json.loads(line)
                except ValueError:
                    return  # a line still being written; read it next time
                self._seen += 1
                self.done += 1
                acc = f", val top-1 {rec['val_top1']:.1f}%" if rec.get("val_top1") is not None else ""
                self.say(
                    f"{self._label}: epoch {rec['epoch'] + 1}/{self._epochs} ({rec['samples']} samples, "
                    f"{rec['epoch_time']:.1f} s{acc}){self._eta()}"
                )

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            self._poll()


# ----------------------------------------------------------------------------- runs


def _cpu_seconds() -> float:
    """CPU time of this process and its reaped children (DataLoader workers in the loader comparison) so far."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _load() -> Optional[float]:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # not on every platform
        return None


def _run_one(
    cfg: Any, run_dir: Path, progress: Optional[Progress], label: str
) -> Tuple[List[Dict[str, Any]], Dict[str, Any]]:
    """One ``run_training`` call; its stdout (one JSON line per epoch) goes to ``train.log``.

    Returns the epoch records and the run's own figures: wall time of the whole call
    (set-up, start-up and validation included), CPU seconds (this process, DALI's threads
    included; less sensitive than wall time to other jobs on a shared machine)
    and the 1-minute load average before and after.
    """
    from orderdp_dali.train import run_training

    run_dir.mkdir(parents=True, exist_ok=True)
    metrics = run_dir / "metrics.jsonl"
    if metrics.exists():
        metrics.unlink()
    if progress is not None:
        progress.start_run(label, metrics, cfg.train.epochs)
    load0, cpu0, t0 = _load(), _cpu_seconds(), time.perf_counter()
    try:
        with open(run_dir / "train.log", "w", encoding="utf-8") as logf, contextlib.redirect_stdout(logf):
            records = run_training(cfg, output_dir=run_dir)
    finally:
        if progress is not None:
            progress.end_run()
        # Closed DALI pipelines stop their threads when collected; collect now, so no thread
        # of this run still holds a core while the next run is timed.
        gc.collect()
    figures = {
        "run_wall_s": time.perf_counter() - t0,
        "cpu_s": _cpu_seconds() - cpu0,
        "load_before": load0,
        "load_after": _load(),
    }
    return records, figures


def policy_order(policies: Sequence[str], seed_index: int) -> List[str]:
    """Run order for the ``seed_index``-th seed: rotated by one each seed."""
    k = seed_index % len(policies)
    return list(policies[k:]) + list(policies[:k])


def orderdp_sizes(n: int, params: Mapping[str, Any]) -> Tuple[int, int, int]:
    """(n, s, q) of an OrderDP policy built with ``params`` over ``n`` samples."""
    from orderdp_dali.policies import make_policy

    p = make_policy("orderdp", n, **params)
    return n, int(p.subset_size), int(p.keep_size)


def run_policies(bench: Mapping[str, Any], root: Path, run_dir: Path, out: TextIO) -> Dict[str, Any]:
    """All (seed, policy) runs of ``bench``; returns the ``runs`` part of results.json."""
    policies = list(bench["policies"])
    seeds = list(bench["seeds"])
    cfgs = {
        (p, s): recipe_config(bench, p, bench["policies"][p], s, str(run_dir / "train" / f"{p}-seed{s}"), str(root))
        for s in seeds
        for p in policies
    }
    first = cfgs[(policies[0], seeds[0])]
    split = root / first.data.train_split
    out_bytes = warm_page_cache(split) + warm_page_cache(root / first.data.val_split)
    progress = Progress(out, total_epochs=sum(c.train.epochs for c in cfgs.values()))
    cache = (
        f"page cache warmed ({out_bytes / 1e6:.0f} MB)"
        if out_bytes
        else "data larger than half the RAM: page cache not warmed"
    )
    progress.say(f"{cache}; {len(policies)} policies x {len(seeds)} seed(s)")
    runs: List[Dict[str, Any]] = []
    warm: Optional[Dict[str, Any]] = None
    try:
        if bench["warmup"]:
            wcfg = first.override(
                "train.epochs=1",
                "train.eval_every=0",
                "schedule.warmup_epochs=0",
                "policy.name=full",
                "policy.params={}",
            )
            progress.say("warm-up run (1 epoch, untimed: start-up, allocator, caches)")
            _, figures = _run_one(wcfg, run_dir / "train" / "warmup", None, "warm-up")
            warm = {"seconds": figures["run_wall_s"]}
            progress.say(f"warm-up done in {warm['seconds']:.1f} s")
        for k, seed in enumerate(seeds):
            for j, policy in enumerate(policy_order(policies, k)):
                cfg = cfgs[(policy, seed)]
                label = f"[{k * len(policies) + j + 1}/{len(cfgs)}] {policy} seed {seed}"
                records, figures = _run_one(cfg, Path(cfg.train.output_dir), progress, label)
                runs.append(
                    {
                        "policy": policy,
                        "seed": seed,
                        "order": j,
                        "params": dict(bench["policies"][policy]),
                        **figures,
                        "epochs": records,
                        "totals": {**report_mod.run_totals(records), "cpu_s": figures["cpu_s"]},
                        "steady_totals": report_mod.run_totals(records[1:]) if len(records) > 1 else None,
                        "config": cfg.to_dict(),
                    }
                )
    finally:
        progress.close()
    return {"runs": runs, "warmup": warm, "train_settings": _recipe_summary(first)}


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


def _split_sizes(root: Path, bench: Mapping[str, Any]) -> Dict[str, Any]:
    from orderdp_dali.config import DataConfig
    from orderdp_dali.file_lists import index_split

    train_split = bench["dataset"].get("train_split", "train")
    val_split = bench["dataset"].get("val_split", "val")
    info: Dict[str, Any] = {"root": str(root), "train_root": str(root / train_split)}
    lists = ("train_list", "val_list", "classes_file", "val_labels_csv")  # file lists index as training does
    listed = {k: v for k, v in (bench["training"].get("data") or {}).items() if k in lists}
    data = DataConfig(root=str(root), train_split=train_split, val_split=val_split, **listed)
    train = index_split(data, "train")
    info["train_size"] = len(train)
    try:
        info["val_size"] = len(index_split(data, "val", classes=train.classes))
    except DatasetError:
        info["val_size"] = None
    try:
        from orderdp_dali.make_data import read_manifest

        manifest = read_manifest(root)
        if manifest is not None:
            info["generated"] = manifest.get("request")
    except ImportError:
        pass
    return info


def run_bench(bench: Dict[str, Any], run_dir: Path, out: TextIO = sys.stdout, command: str = "") -> Dict[str, Any]:
    """Run ``bench`` into ``run_dir``: results.json, report.md and the plots; returns the results."""
    from orderdp_dali.bench import plots

    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    root = ensure_dataset({**bench["dataset"], "root": _dataset_root(bench)}, out)
    results: Dict[str, Any] = {
        "version": report_mod.RESULTS_VERSION,
        "name": bench["name"],
        "command": command,
        "config": bench,
        "environment": report_mod.environment(),
        "dataset": _split_sizes(root, bench),
        "notes": list(bench.get("notes") or []),
    }
    if bench["mode"] in ("train", "both"):
        results.update(run_policies(bench, root, run_dir, out))
        results["summary"] = report_mod.summarize(results["runs"])
        results["steady_summary"] = report_mod.summarize(
            [{**r, "totals": r["steady_totals"]} for r in results["runs"] if r["steady_totals"]]
        )
    if bench["mode"] in ("loader", "both"):
        results["loader"] = _run_loader(bench, root, out)
    results["total_s"] = time.perf_counter() - t0
    plot_files: List[str] = []
    if results.get("runs"):
        sizes = None
        if "orderdp" in bench["policies"]:
            sizes = orderdp_sizes(results["dataset"]["train_size"], bench["policies"]["orderdp"])
        plot_files = plots.write_all(results["runs"], run_dir, orderdp_sizes=sizes)
    results["plots"] = plot_files
    _write_json(run_dir / "results.json", results)
    (run_dir / "report.md").write_text(report_mod.render_report(results), encoding="utf-8")
    return results


def _run_loader(bench: Mapping[str, Any], root: Path, out: TextIO) -> Dict[str, Any]:
    from orderdp_dali.bench.loader_compare import LOADERS, run_loader_comparison

    opts = dict(bench["loader"])
    training = bench["training"]
    opts.setdefault("batch_size", training.get("train", {}).get("batch_size", 64))
    opts.setdefault("crop", training.get("data", {}).get("crop", 224))
    opts.setdefault("device", training.get("train", {}).get("device", "auto"))
    if opts["device"] == "cuda":
        opts["device"] = "gpu"
    opts["loaders"] = list(opts.get("loaders") or LOADERS)
    split = root / bench["dataset"].get("train_split", "train")
    print(f"[bench] loader-only comparison: {', '.join(opts['loaders'])} over {split}", file=out, flush=True)
    return run_loader_comparison(
        str(split), progress=lambda s: print(f"[bench] loader {s}", file=out, flush=True), **opts
    )


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


# ----------------------------------------------------------------------------- CLI


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="orderdp-dali bench",
        description="Compare pruning policies end to end (same model, data, seed and recipe) and write a report.",
    )
    p.add_argument("--config", help="bench YAML (see configs/bench_*.yaml)")
    p.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="e.g. seeds=[0,1,2] train.epochs=3 policies=[full,orderdp]"
    )
    p.add_argument("--out", help="run folder (default: <output_root>/<name>-<timestamp>)")
    p.add_argument("--loader-only", action="store_true", help="only the loader throughput comparison (no model)")
    p.add_argument("--print-config", action="store_true", help="print the resolved bench config as JSON and exit")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_args_parser().parse_intermixed_args(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    command = "orderdp-dali bench " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    try:
        overrides = list(args.overrides) + (["mode=loader"] if args.loader_only else [])
        bench = load_bench_config(args.config, overrides)
        if args.print_config:
            print(json.dumps(bench, indent=2))
            return 0
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = Path(args.out) if args.out else Path(bench["output_root"]) / f"{bench['name']}-{stamp}"
        results = run_bench(bench, run_dir, sys.stdout, command)
    except (ConfigError, DatasetError) as e:
        print(f"orderdp-dali bench: error: {e}", file=sys.stderr)
        return 2
    print()
    if results.get("summary"):
        print(report_mod.format_table(results["summary"]))
        print()
    if results.get("loader"):
        for name, s in results["loader"]["loaders"].items():
            print(f"loader {name:12s} {s['median']:8.1f} img/s (median of {len(s['images_per_s'])})")
        for k, v in results["loader"]["ratios"].items():
            print(f"{k}: {v:.2f}x")
        print()
    print(f"report: {run_dir / 'report.md'}  (total {results['total_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

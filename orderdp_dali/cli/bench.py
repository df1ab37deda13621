"""``orderdp-dali bench``: every policy trained on the same data, model, seed and recipe, taking
turns epoch by epoch, into one run folder with a report (:mod:`orderdp_dali.bench.run`)."""
from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from orderdp_dali.bench import report as report_mod
from orderdp_dali.bench.config import load_bench_config
from orderdp_dali.bench.run import run_bench, run_study
from orderdp_dali.cli.common import add_config_arguments, add_output_arguments
from orderdp_dali.cli.errors import EXIT_OK, report
from orderdp_dali.errors import ConfigError, DatasetError
from orderdp_dali.folder_lock import LOCK_NAME, FolderLock
from orderdp_dali.interrupts import signals_as_interrupts

__all__ = ["get_args_parser", "main"]


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="orderdp-dali bench",
        description="Compare pruning policies end to end (same model, data, seed and recipe) and write a report.",
    )
    add_config_arguments(p, "bench YAML (see configs/bench_*.yaml)",
                         "e.g. seeds=[0,1,2] train.epochs=3 policies=[full,orderdp]",
                         "print the resolved bench config as JSON and exit")
    add_output_arguments(p, ["--out"], "run folder (default: <output_root>/<name>-<timestamp>); an existing one "
                         "that holds files is refused unless --overwrite",
                         "write into an --out folder that already holds a bench, replacing its results and report")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The ``orderdp-dali bench`` command: 0 when the bench ends, 2 for bad settings or data, 130 / 143
    after SIGINT / SIGTERM (what was measured so far stays in results.json)."""
    args = get_args_parser().parse_intermixed_args(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    command = "orderdp-dali bench " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    with signals_as_interrupts("orderdp-dali bench") as signalled:
        try:
            bench = load_bench_config(args.config, args.overrides)
            if args.print_config:
                print(json.dumps(bench.to_dict(), indent=2))
                return EXIT_OK
            stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
            run_dir = Path(args.out) if args.out else Path(bench.output_root) / f"{bench.name}-{stamp}"
            with FolderLock(run_dir, setting="--out"):  # one bench per folder, for as long as it runs
                if not args.overwrite:
                    _refuse_used_folder(run_dir)
                if bench.tasks:
                    results = run_study(bench, run_dir, sys.stdout, command)
                else:
                    results = run_bench(bench, run_dir, sys.stdout, command)
        except (ConfigError, DatasetError) as e:
            return report("bench", e)
        except KeyboardInterrupt:
            print(f"orderdp-dali bench: interrupted ({signalled.name})", file=sys.stderr)
            return signalled.exit_code
    if bench.tasks:
        for task, sub in results["tasks"].items():
            print(f"\n## {task}\n")
            _print_results(sub)
    else:
        _print_results(results)
    print(f"report: {run_dir / 'report.md'}  (total {results['total_s']:.0f} s)")
    return EXIT_OK


def _refuse_used_folder(run_dir: Path) -> None:
    """A bench writes results.json, report.md, plots and train/ into its folder: never over an earlier
    bench's (or anything else's) files without being asked to."""
    held = sorted(p.name for p in run_dir.iterdir() if p.name != LOCK_NAME) if run_dir.is_dir() else []
    if held:
        shown = ", ".join(held[:4]) + (", ..." if len(held) > 4 else "")
        raise ConfigError(f"--out: {run_dir} already holds files ({shown}); choose another --out, or pass "
                          "--overwrite to write the new bench over them")


def _print_results(results: Mapping[str, Any]) -> None:
    """The tables of one bench's results on stdout."""
    print()
    if results.get("summary"):
        print(report_mod.format_table(results["summary"]))
        print()
        print("\n".join(report_mod.format_time_to_accuracy(results.get("time_to_accuracy"))))
        print()
        print("\n".join(report_mod.format_fit(results.get("fit"))))
        print()
    if results.get("loader"):
        print("\n".join(report_mod.loader_lines(results["loader"])))
        print()

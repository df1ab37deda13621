"""``orderdp-dali train``: train a classifier with a data-pruning policy on a DALI input pipeline.

Single process::

    orderdp-dali train --config configs/cpu_demo.yaml data.root=data/demo train.epochs=3

Distributed (one process per GPU; rank and world size come from torchrun's environment)::

    torchrun --nproc_per_node=8 -m orderdp_dali.train --config configs/imagenet_r50_orderdp.yaml \\
        data.root=$IMAGENET_ROOT [--resume auto]

The run itself is :func:`orderdp_dali.training.run_training`; this module parses the command
line and words its errors (:mod:`orderdp_dali.cli.errors`).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Optional, Sequence

from orderdp_dali.cli.common import add_config_arguments, add_debug_argument, add_output_arguments
from orderdp_dali.cli.errors import EXIT_OK, debug_requested, report
from orderdp_dali.config import load_config
from orderdp_dali.interrupts import signals_as_interrupts
from orderdp_dali.training.run import run_training

__all__ = ["get_args_parser", "main"]


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="orderdp-dali train",
        description="Train a classifier with a data-pruning policy on a DALI pipeline (DDP via torchrun).",
    )
    add_config_arguments(parser, "YAML config file (see configs/)",
                         "config overrides, e.g. train.epochs=5 policy.name=orderdp",
                         "print the resolved config as JSON and exit")
    parser.add_argument(
        "--resume", metavar="PATH|auto", help="checkpoint to continue, or 'auto' (output dir's last.pth)"
    )
    add_output_arguments(parser, ["--output-dir"], "override train.output_dir",
                         "start afresh in an output dir that holds a run, replacing it")
    parser.add_argument(
        "--allow-changes", action="store_true",
        help="with --resume: continue with a recipe other than the checkpoint's (lr, batch size, ...); the change is "
             "recorded in metrics.jsonl and config.<epoch>.json",
    )
    add_debug_argument(parser)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The ``orderdp-dali train`` command: 0 when the run ends, 2 for bad settings, data or checkpoints,
    1 for other errors, 130 after Ctrl-C and 143 after SIGTERM (:mod:`orderdp_dali.interrupts`: the
    run unwinds as on an error, leaving its last checkpoint and no temporary file; a second signal
    exits at once, without a traceback)."""
    parser = get_args_parser()
    args = parser.parse_intermixed_args(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    debug = args.debug or debug_requested(())
    with signals_as_interrupts("orderdp-dali train") as signalled:
        try:
            cfg = load_config(args.config, args.overrides)
            if args.print_config:
                print(json.dumps(cfg.to_dict(), indent=2))
                return EXIT_OK
            run_training(cfg, output_dir=args.output_dir, resume=args.resume, overwrite=args.overwrite,
                         allow_changes=args.allow_changes)
        except KeyboardInterrupt:
            print(f"orderdp-dali train: interrupted ({signalled.name})", file=sys.stderr)
            return signalled.exit_code
        except Exception as e:
            if signalled.signum is not None and not debug:  # the signal surfaced inside a library's error
                print(f"orderdp-dali train: interrupted ({signalled.name})", file=sys.stderr)
                return signalled.exit_code
            if debug:
                raise
            return report("train", e)
    return EXIT_OK

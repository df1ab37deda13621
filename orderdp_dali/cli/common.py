"""The options ``orderdp-dali train`` and ``orderdp-dali bench`` share: a YAML config with
``KEY=VALUE`` overrides, the output folder, ``--overwrite`` and ``--print-config``."""
from __future__ import annotations

import argparse
from typing import Sequence

__all__ = ["add_config_arguments", "add_debug_argument", "add_output_arguments"]


def add_config_arguments(parser: argparse.ArgumentParser, config_help: str, overrides_help: str,
                         print_help: str) -> None:
    """``--config FILE``, the ``KEY=VALUE`` overrides after it, and ``--print-config``."""
    parser.add_argument("--config", help=config_help)
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=overrides_help)
    parser.add_argument("--print-config", action="store_true", help=print_help)


def add_output_arguments(parser: argparse.ArgumentParser, flags: Sequence[str], output_help: str,
                         overwrite_help: str) -> None:
    """The output folder (``flags``: ``--output-dir`` for train, ``--out`` for bench) and ``--overwrite``,
    which lets a command replace a run the folder holds (refused without it)."""
    parser.add_argument(*flags, help=output_help)
    parser.add_argument("--overwrite", action="store_true", help=overwrite_help)


def add_debug_argument(parser: argparse.ArgumentParser) -> None:
    """``--debug``: show the traceback of an error too (:func:`orderdp_dali.cli.errors.debug_requested`)."""
    parser.add_argument(
        "--debug", action="store_true", help="on an error, show the traceback too (or set ORDERDP_DALI_DEBUG=1)"
    )

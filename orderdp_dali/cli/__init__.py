"""The ``orderdp-dali`` command: one entry point, one module per sub-command.

Sub-commands are imported lazily so that ``orderdp-dali make-data`` does not pay for
importing torch and DALI. That import is part of the error handling: torch or DALI failing
to load (a memory limit such as ``ulimit -v`` too low for their libraries, a broken
install) ends the command with one line naming the library and the remedy, not a traceback.
"""
from __future__ import annotations

import importlib
import sys
from typing import Optional, Sequence

from orderdp_dali.cli.errors import EXIT_FAILED, EXIT_USAGE, debug_requested, describe_import_error, fail

__all__ = ["COMMANDS", "describe_import_error", "exit_if_unloadable", "main"]

# sub-command -> (module exposing ``main(argv) -> int``, one-line help)
COMMANDS = {
    "train": ("orderdp_dali.cli.train", "train a classifier with a pruning policy (DDP via torchrun)"),
    "bench": ("orderdp_dali.cli.bench", "compare policies end to end, taking turns epoch by epoch; write a report"),
    "make-data": ("orderdp_dali.cli.make_data", "generate an ImageNet-layout folder of JPEGs"),
    "check-data": ("orderdp_dali.cli.check_data", "find unreadable or undecodable images in a dataset"),
    "make-shards": ("orderdp_dali.cli.make_shards", "convert class-folder splits into tar shards"),
}


def _usage() -> str:
    lines = ["usage: orderdp-dali COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<11} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run 'orderdp-dali COMMAND --help' for the options of one command."]
    return "\n".join(lines)


def _import_failure(command: str, error: BaseException, argv: Sequence[str]) -> int:
    """Print the one-line error of a failed import (re-raise it with ``--debug``); the exit status."""
    if debug_requested(argv):
        raise error
    return fail(command, describe_import_error(error), EXIT_FAILED)


def exit_if_unloadable(command: str, *modules: str) -> None:
    """For ``python -m orderdp_dali.<command>`` (torchrun's way in): import ``modules`` (torch...)
    now and, when that fails, exit with the one-line error ``orderdp-dali <command>`` prints.
    Without it the module's own top-level imports would fail with a traceback, before its
    error handling runs."""
    for module in modules:
        try:
            importlib.import_module(module)
        except (ImportError, OSError, MemoryError) as e:
            raise SystemExit(_import_failure(command, e, sys.argv[1:])) from None


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0 if args else EXIT_USAGE
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"orderdp-dali: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return EXIT_USAGE
    try:
        module = importlib.import_module(COMMANDS[name][0])  # torch and DALI, for most commands
    except (ImportError, OSError, MemoryError) as e:
        return _import_failure(name, e, rest)
    return int(module.main(rest) or 0)

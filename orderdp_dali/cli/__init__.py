"""The ``orderdp-dali`` command: one entry point, one module per sub-command.

Sub-commands are imported lazily so that ``orderdp-dali make-data`` does not pay for
importing torch and DALI. That import is part of the error handling: torch or DALI failing
to load (a memory limit such as ``ulimit -v`` too low for their libraries, a broken
install) ends the command with one line naming the library and the remedy, not a traceback.
"""
from __future__ import annotations

import importlib
import os
import re
import sys
from types import TracebackType
from typing import Optional, Sequence

from orderdp_dali.errors import first_line

__all__ = ["COMMANDS", "describe_import_error", "exit_if_unloadable", "main"]

# sub-command -> (module exposing ``main(argv) -> int``, one-line help)
COMMANDS = {
    "train": ("orderdp_dali.train", "train a classifier with a pruning policy (DDP via torchrun)"),
    "bench": ("orderdp_dali.bench.run", "compare policies end to end, taking turns epoch by epoch; write a report"),
    "make-data": ("orderdp_dali.make_data", "generate an ImageNet-layout folder of JPEGs"),
    "check-data": ("orderdp_dali.check_data", "find unreadable or undecodable images in a dataset"),
    "make-shards": ("orderdp_dali.make_shards", "convert class-folder splits into tar shards"),
}
# What the loader says when a shared library does not fit in the address space left to it.
_OUT_OF_MEMORY = ("failed to map segment", "cannot allocate memory", "out of memory", "cannot map zero-fill pages")


def _usage() -> str:
    lines = ["usage: orderdp-dali COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<11} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run 'orderdp-dali COMMAND --help' for the options of one command."]
    return "\n".join(lines)


def _debug(argv: Sequence[str]) -> bool:
    return "--debug" in argv or os.environ.get("ORDERDP_DALI_DEBUG", "") not in ("", "0")


def _failing_package(error: BaseException) -> str:
    """The installed package whose import failed (``torch``, ``nvidia``...), from the traceback's
    deepest frame in site-packages, else the module name the error gives."""
    package = ""
    tb: Optional[TracebackType] = error.__traceback__
    while tb is not None:
        m = re.search(r"[/\\](?:site|dist)-packages[/\\]([^/\\]+)", tb.tb_frame.f_code.co_filename)
        if m:
            package = m.group(1).split(".")[0]
        tb = tb.tb_next
    return package or str(getattr(error, "name", None) or "a dependency").split(".")[0]


def _address_space_limit() -> str:
    """The process's address-space limit (``ulimit -v``) in words, or "" when unlimited or unknown."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    except (ImportError, OSError, ValueError):
        return ""
    return "" if soft == resource.RLIM_INFINITY else f"{soft / 2**30:.1f} GiB"


def describe_import_error(error: BaseException) -> str:
    """One line naming the library that could not be imported, why, and the remedy."""
    package = _failing_package(error)
    detail = f"{type(error).__name__}: {first_line(error, 200)}"
    limit = _address_space_limit()
    if isinstance(error, MemoryError) or any(m in str(error).lower() for m in _OUT_OF_MEMORY):
        where = f" (address space limited to {limit} by ulimit -v)" if limit else ""
        return (f"cannot load {package}: not enough memory to map its libraries{where} ({detail}); torch and DALI "
                "need several GiB of address space: raise the limit (ulimit -v unlimited) or free memory")
    if isinstance(error, ModuleNotFoundError):
        return (f"cannot import {error.name or package}: not installed ({detail}); install orderdp-dali's "
                "dependencies (pip install orderdp-dali, or pip install -e . in a checkout)")
    return (f"cannot import {package} ({detail}); reinstall it, or set ORDERDP_DALI_DEBUG=1 for the traceback"
            + (f" (address space limited to {limit} by ulimit -v)" if limit else ""))


def _import_failure(command: str, error: BaseException, argv: Sequence[str]) -> int:
    """Print the one-line error of a failed import (re-raise it with ``--debug``); the exit status."""
    if _debug(argv):
        raise error
    print(f"orderdp-dali {command}: error: {describe_import_error(error)}", file=sys.stderr)
    return 1


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
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"orderdp-dali: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(COMMANDS[name][0])  # torch and DALI, for most commands
    except (ImportError, OSError, MemoryError) as e:
        return _import_failure(name, e, rest)
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())

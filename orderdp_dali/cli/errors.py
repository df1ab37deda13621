"""How the command lines end: exit codes, one-line error messages, and ``--debug``.

Every ``orderdp-dali`` command prints a failure as one line, ``orderdp-dali COMMAND: error:
MESSAGE``, naming the cause and the remedy; the traceback only with ``--debug`` (or
``ORDERDP_DALI_DEBUG=1``). Exit codes: :data:`EXIT_OK` (0), :data:`EXIT_FAILED` (1: the run
failed, or ``check-data`` found problems), :data:`EXIT_USAGE` (2: bad settings, data or
checkpoint, or a usage error), and after a signal the shell's code for it (130 for SIGINT,
143 for SIGTERM; :mod:`orderdp_dali.interrupts`).
"""
from __future__ import annotations

import errno
import os
import re
import sys
from types import TracebackType
from typing import Optional, Sequence, Tuple, Type

from orderdp_dali.errors import (
    CheckpointError,
    ConfigError,
    DatasetError,
    DecodeError,
    DistributedError,
    NonFiniteLossError,
    first_line,
)

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "USAGE_ERRORS", "debug_requested", "describe_error",
           "describe_import_error", "fail", "report"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
# Errors in what the user gave (settings, data, a checkpoint): exit EXIT_USAGE with their own message.
USAGE_ERRORS: Tuple[Type[BaseException], ...] = (ConfigError, DatasetError, CheckpointError)

# What the loader says when a shared library does not fit in the address space left to it.
_OUT_OF_MEMORY = ("failed to map segment", "cannot allocate memory", "out of memory", "cannot map zero-fill pages")


def debug_requested(argv: Sequence[str]) -> bool:
    """``--debug`` among ``argv``, or ``ORDERDP_DALI_DEBUG`` set (not to 0): show tracebacks."""
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


def describe_error(error: BaseException, usage: Tuple[Type[BaseException], ...] = USAGE_ERRORS) -> Tuple[int, str]:
    """(exit code, one line naming the cause and the remedy) for an error that ends a command.

    ``usage`` errors (bad settings, data and checkpoints by default) exit 2; everything else 1.
    Errors we do not know get their type and first line, and the hint that ``--debug`` shows
    the traceback.
    """
    if isinstance(error, usage):
        return EXIT_USAGE, str(error)
    if isinstance(error, (DecodeError, DistributedError, NonFiniteLossError)):
        return EXIT_FAILED, str(error)
    if isinstance(error, OSError):
        where = f" ({error.filename})" if error.filename else ""
        if error.errno == errno.ENOSPC:
            return EXIT_FAILED, f"no space left on the device{where}: free some, or choose another --output-dir"
        if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return EXIT_FAILED, f"cannot write{where}: {error.strerror}; choose a writable --output-dir"
        return EXIT_FAILED, f"{error.strerror or error}{where}"
    if isinstance(error, ImportError):  # torch or DALI loading lazily (e.g. under ulimit -v)
        return EXIT_FAILED, describe_import_error(error)
    if "bad_alloc" in str(error) or isinstance(error, MemoryError):
        return EXIT_FAILED, (
            "out of memory (std::bad_alloc): lower train.batch_size, data.crop or data.num_threads "
            "(run with --debug for the traceback)"
        )
    return EXIT_FAILED, f"{type(error).__name__}: {first_line(error)} (run with --debug for the traceback)"


def fail(command: str, message: str, code: int = EXIT_USAGE) -> int:
    """Print ``orderdp-dali COMMAND: error: MESSAGE`` on stderr; return ``code``, the exit status."""
    print(f"orderdp-dali {command}: error: {message}", file=sys.stderr)
    return code


def report(command: str, error: BaseException, usage: Tuple[Type[BaseException], ...] = USAGE_ERRORS) -> int:
    """Print ``error`` as :func:`describe_error` words it; return its exit status."""
    code, message = describe_error(error, usage)
    return fail(command, message, code)

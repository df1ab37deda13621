"""The CLI's own failures are one line too: torch or DALI that cannot load (a ``ulimit -v`` too
small for their libraries, a missing package) is named with the remedy, not a traceback."""
from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from orderdp_dali.cli import describe_import_error
from orderdp_dali.cli.errors import describe_error

ONE_GIB_KB = 1024 * 1024  # address space too small for libtorch's segments, enough for Python and numpy


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash for ulimit")
@pytest.mark.parametrize("entry", [["-m", "orderdp_dali", "train"], ["-m", "orderdp_dali.train"]],
                         ids=["orderdp-dali train", "python -m orderdp_dali.train"])
def test_torch_that_cannot_load_under_ulimit_is_one_line(entry, tmp_path):
    argv = [sys.executable, *entry, "--print-config", "data.root=/r"]
    res = subprocess.run(["bash", "-c", f'ulimit -v {ONE_GIB_KB} && exec "$@"', "bash", *argv], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 1, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr[-2000:]
    assert lines[0].startswith("orderdp-dali train: error: cannot load torch: not enough memory to map its libraries "
                               "(address space limited to 1.0 GiB by ulimit -v)")
    assert "raise the limit (ulimit -v unlimited)" in lines[0]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash for ulimit")
def test_debug_shows_the_import_traceback(tmp_path):
    argv = [sys.executable, "-m", "orderdp_dali", "train", "--debug", "--print-config", "data.root=/r"]
    res = subprocess.run(["bash", "-c", f'ulimit -v {ONE_GIB_KB} && exec "$@"', "bash", *argv], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "Traceback (most recent call last)" in res.stderr


def test_describe_import_error_names_the_package_and_the_remedy():
    missing = ModuleNotFoundError("No module named 'nvidia.dali'", name="nvidia.dali")
    assert describe_import_error(missing).startswith(
        "cannot import nvidia.dali: not installed (ModuleNotFoundError: No module named 'nvidia.dali'); install "
        "orderdp-dali's dependencies")
    mapped = ImportError("libdali.so: failed to map segment from shared object", name="nvidia.dali.backend_impl")
    assert describe_import_error(mapped).startswith("cannot load nvidia: not enough memory to map its libraries")
    other = ImportError("libcudart.so.12: cannot open shared object file", name="torch._C")
    assert describe_import_error(other).startswith("cannot import torch (ImportError: libcudart.so.12: cannot open")
    # a lazy import during a run (DALI at the first pipeline) reaches train's error line the same way
    assert describe_error(mapped) == (1, describe_import_error(mapped))


def test_each_command_chooses_which_errors_are_its_usage_errors():
    """One describe_error for every command: train counts bad settings, data and checkpoints as usage
    errors (exit 2), check-data any ValueError, make-shards ValueError and OSError too."""
    from orderdp_dali.cli.errors import EXIT_FAILED, EXIT_USAGE
    from orderdp_dali.errors import CheckpointError

    assert describe_error(CheckpointError("x.pth: damaged")) == (EXIT_USAGE, "x.pth: damaged")
    bad = ValueError("--shard-size must be >= 1\nsecond line")
    assert describe_error(bad) == (EXIT_FAILED, "ValueError: --shard-size must be >= 1 (run with --debug for the "
                                                "traceback)")
    assert describe_error(bad, usage=(ValueError,)) == (EXIT_USAGE, str(bad))
    gone = FileNotFoundError(2, "No such file or directory", "/no/src")
    assert describe_error(gone) == (EXIT_FAILED, "No such file or directory (/no/src)")
    assert describe_error(gone, usage=(ValueError, OSError)) == (EXIT_USAGE, str(gone))

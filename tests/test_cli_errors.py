"""The CLI's own failures are one line too: torch or DALI that cannot load (a ``ulimit -v`` too
small for their libraries, a missing package) is named with the remedy, not a traceback."""
from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from orderdp_dali.cli import describe_import_error
from orderdp_dali.train import describe_error

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

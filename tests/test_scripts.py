"""The ImageNet launch scripts: syntax, the command they build (DRY_RUN=1), their errors.

Every run gets a PATH whose first folder holds a fake ``nvidia-smi`` (no GPU unless a
test says otherwise) and a fake ``torchrun`` (which prints ``FAKE-TORCHRUN`` and its
arguments), so the results do not depend on this machine's GPUs and a script that should
have refused never starts a real training.
"""
from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

from orderdp_dali.config import load_config

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = sorted((REPO / "scripts").glob("*.sh"))
LAUNCHERS = [s for s in SCRIPTS if not s.name.startswith("_")]
R18 = REPO / "scripts/imagenet_r18_orderdp.sh"
# The launcher's environment; cleared before each run so the caller's shell cannot leak in.
LAUNCH_ENV = (
    "IMAGENET_ROOT", "NPROC_PER_NODE", "NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT",
    "OUTPUT_DIR", "DRY_RUN", "CUDA_VISIBLE_DEVICES",
)


@pytest.fixture
def fake_bin(tmp_path):
    """A folder for the front of PATH with ``nvidia-smi`` (no GPU) and ``torchrun`` stubs."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    set_gpus(bin_dir, 0)
    (bin_dir / "torchrun").write_text('#!/bin/sh\necho FAKE-TORCHRUN "$@"\n')
    (bin_dir / "torchrun").chmod(0o755)
    return bin_dir


def set_gpus(bin_dir: Path, n: int) -> None:
    """Make the fake ``nvidia-smi -L`` list ``n`` GPUs, each with a MIG line under it."""
    lines = "".join(
        f"GPU {i}: NVIDIA H100 (UUID: GPU-{i:08d})\n  MIG 1g.10gb Device 0: (UUID: MIG-{i:08d})\n" for i in range(n)
    )
    (bin_dir / "nvidia-smi").write_text(f"#!/bin/sh\nprintf '%s' '{lines}'\n")
    (bin_dir / "nvidia-smi").chmod(0o755)


def run(script: Path, *args: str, bin_dir: Path, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in LAUNCH_ENV}
    environ["PATH"] = f"{bin_dir}{os.pathsep}{environ.get('PATH', '')}"
    environ.update(env)
    return subprocess.run(
        ["bash", str(script), *args], capture_output=True, text=True, env=environ, timeout=30, cwd=cwd
    )


def dry(*args: str, bin_dir: Path, script: Path = R18, cwd: Path | None = None, **env: str) -> list[str]:
    """The argv a DRY_RUN prints; asserts it succeeded."""
    res = run(script, *args, bin_dir=bin_dir, cwd=cwd, DRY_RUN="1", **env)
    assert res.returncode == 0, res.stderr
    return shlex.split(res.stdout)


def option(argv: list[str], name: str) -> str | None:
    """The value of ``name`` in ``argv`` (``name VALUE`` or ``name=VALUE``), None if absent."""
    for i, a in enumerate(argv):
        if a == name:
            return argv[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def test_six_launchers():
    assert sorted(s.stem for s in LAUNCHERS) == sorted(
        f"imagenet_{m}_{p}" for m in ("r50", "r18") for p in ("full", "infobatch", "orderdp")
    )


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bash_syntax(script):
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0


@pytest.mark.parametrize("script", LAUNCHERS, ids=lambda p: p.name)
def test_dry_run_builds_the_torchrun_command(script, tmp_path, fake_bin):
    argv = dry(
        str(tmp_path), "train.epochs=2", "--resume", "auto",
        bin_dir=fake_bin, script=script, CUDA_VISIBLE_DEVICES="0,1,2,3,4,5,6,7",
    )
    assert argv[:4] == ["torchrun", "--standalone", "--nnodes=1", "--nproc_per_node=8"]
    assert argv[4:6] == ["-m", "orderdp_dali.train"]
    config = Path(argv[argv.index("--config") + 1])
    assert config.name == script.stem + ".yaml" and config.is_file()
    assert option(argv, "--output-dir") == str(REPO / "runs" / script.stem)
    assert argv[-4:] == [f"data.root={tmp_path}", "train.epochs=2", "--resume", "auto"]
    cfg = load_config(config, [a for a in argv if "=" in a and not a.startswith("--")])
    assert cfg.policy.name == script.stem.rsplit("_", 1)[1]


def test_one_node_is_standalone_without_address_or_port(tmp_path, fake_bin):
    # A MASTER_* left in the environment must not bring back a fixed port on one node.
    argv = dry(
        str(tmp_path), bin_dir=fake_bin, NPROC_PER_NODE="2", NODE_RANK="0",
        MASTER_ADDR="10.0.0.5", MASTER_PORT="29500",
    )
    assert "--standalone" in argv and "--nnodes=1" in argv and "--nproc_per_node=2" in argv
    assert not [a for a in argv if a.startswith(("--master_addr", "--master_port", "--node_rank", "--rdzv"))]
    assert "29500" not in " ".join(argv)


def test_several_nodes_use_master_addr_port_and_node_rank(tmp_path, fake_bin):
    argv = dry(
        bin_dir=fake_bin, IMAGENET_ROOT=str(tmp_path), NPROC_PER_NODE="2", NNODES="3", NODE_RANK="1",
        MASTER_ADDR="10.0.0.5", MASTER_PORT="1234",
    )
    assert "--standalone" not in argv
    for part in ("--nproc_per_node=2", "--nnodes=3", "--node_rank=1", "--master_addr=10.0.0.5",
                 "--master_port=1234", f"data.root={tmp_path}"):
        assert part in argv
    # MASTER_PORT defaults to 29500 when several nodes are coordinated by the user.
    argv = dry(str(tmp_path), bin_dir=fake_bin, NPROC_PER_NODE="2", NNODES="2", NODE_RANK="0", MASTER_ADDR="h0")
    assert "--master_port=29500" in argv and "--node_rank=0" in argv and "--master_addr=h0" in argv


@pytest.mark.parametrize(
    "env, message",
    [
        ({"NNODES": "2", "NODE_RANK": "0"}, "NNODES=2 needs MASTER_ADDR"),
        ({"NNODES": "2", "MASTER_ADDR": "h0"}, "NNODES=2 needs NODE_RANK"),
        ({"NNODES": "2", "MASTER_ADDR": "h0", "NODE_RANK": "2"}, "NODE_RANK must be"),
        ({"NNODES": "2", "MASTER_ADDR": "h0", "NODE_RANK": "0", "MASTER_PORT": "http"}, "MASTER_PORT must be"),
        ({"NNODES": "0"}, "NNODES must be"),
    ],
    ids=["no-master-addr", "no-node-rank", "node-rank-too-big", "bad-port", "zero-nodes"],
)
@pytest.mark.parametrize("dry_run", ["1", "0"])
def test_multi_node_without_what_it_needs_is_a_clear_error(tmp_path, fake_bin, env, message, dry_run):
    res = run(R18, str(tmp_path), bin_dir=fake_bin, NPROC_PER_NODE="8", DRY_RUN=dry_run, **env)
    assert res.returncode == 2 and f"error: {message}" in res.stderr, res.stderr
    assert not res.stdout  # neither printed nor launched


@pytest.mark.parametrize("visible, n", [("0,1,2", 3), ("5", 1), ("GPU-aaaa,GPU-bbbb", 2), ("2,-1,3", 1)])
def test_nproc_defaults_to_cuda_visible_devices(tmp_path, fake_bin, visible, n):
    set_gpus(fake_bin, 8)  # CUDA_VISIBLE_DEVICES wins over what nvidia-smi lists
    argv = dry(str(tmp_path), bin_dir=fake_bin, CUDA_VISIBLE_DEVICES=visible)
    assert f"--nproc_per_node={n}" in argv


def test_nproc_defaults_to_nvidia_smi_gpus(tmp_path, fake_bin):
    set_gpus(fake_bin, 3)
    assert "--nproc_per_node=3" in dry(str(tmp_path), bin_dir=fake_bin)


def test_explicit_nproc_wins(tmp_path, fake_bin):
    set_gpus(fake_bin, 8)
    argv = dry(str(tmp_path), bin_dir=fake_bin, NPROC_PER_NODE="4", CUDA_VISIBLE_DEVICES="0,1")
    assert "--nproc_per_node=4" in argv


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5", "4 ", "08"])
def test_invalid_nproc_is_refused(tmp_path, fake_bin, value):
    res = run(R18, str(tmp_path), bin_dir=fake_bin, DRY_RUN="1", NPROC_PER_NODE=value)
    assert res.returncode == 2 and "NPROC_PER_NODE must be a positive integer" in res.stderr, res.stderr
    assert not res.stdout


@pytest.mark.parametrize("visible", [None, ""], ids=["nothing-visible", "cuda-visible-devices-empty"])
def test_no_gpu_needs_nproc(tmp_path, fake_bin, visible):
    env = {} if visible is None else {"CUDA_VISIBLE_DEVICES": visible}
    res = run(R18, str(tmp_path), bin_dir=fake_bin, **env)
    assert res.returncode == 2 and "no GPU found" in res.stderr and "set NPROC_PER_NODE" in res.stderr, res.stderr
    assert "FAKE-TORCHRUN" not in res.stdout
    # A dry run still prints a command, with one process and a note saying why.
    res = run(R18, str(tmp_path), bin_dir=fake_bin, DRY_RUN="1", **env)
    assert res.returncode == 0 and "--nproc_per_node=1" in shlex.split(res.stdout)
    assert "note: no GPU found" in res.stderr


def test_runs_the_command_without_dry_run(tmp_path, fake_bin):
    res = run(R18, str(tmp_path), "train.epochs=1", bin_dir=fake_bin, CUDA_VISIBLE_DEVICES="0,1")
    assert res.returncode == 0, res.stderr
    argv = shlex.split(res.stdout)
    assert argv[0] == "FAKE-TORCHRUN" and argv[1:4] == ["--standalone", "--nnodes=1", "--nproc_per_node=2"]
    assert argv[-2:] == [f"data.root={tmp_path}", "train.epochs=1"]


def test_output_dir_is_absolute_whatever_the_cwd(tmp_path, fake_bin):
    tmp_path = tmp_path.resolve()  # relpath below must walk the real folders
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    from_repo = dry(str(tmp_path), bin_dir=fake_bin, cwd=REPO, NPROC_PER_NODE="1")
    # A relative script path and a relative ImageNet folder, from another directory.
    from_elsewhere = dry(
        os.path.relpath(tmp_path, elsewhere), bin_dir=fake_bin, cwd=elsewhere, NPROC_PER_NODE="1",
        script=Path(os.path.relpath(R18, elsewhere)),
    )
    expected = str(REPO / "runs" / "imagenet_r18_orderdp")
    assert option(from_repo, "--output-dir") == option(from_elsewhere, "--output-dir") == expected
    assert option(from_elsewhere, "--config") == str(REPO / "configs" / "imagenet_r18_orderdp.yaml")


def test_output_dir_from_the_environment_is_made_absolute(tmp_path, fake_bin):
    argv = dry(str(tmp_path), bin_dir=fake_bin, cwd=tmp_path, NPROC_PER_NODE="1", OUTPUT_DIR="out/r18")
    assert option(argv, "--output-dir") == str(tmp_path.resolve() / "out" / "r18")
    argv = dry(str(tmp_path), bin_dir=fake_bin, cwd=tmp_path, NPROC_PER_NODE="1", OUTPUT_DIR="/abs/r18")
    assert option(argv, "--output-dir") == "/abs/r18"


@pytest.mark.parametrize(
    "args",
    [["--output-dir", "mine"], ["--output-dir=mine"], ["--out", "mine"], ["train.output_dir=mine"]],
    ids=["flag-value", "flag=value", "abbreviation", "config-override"],
)
def test_user_output_dir_is_respected(tmp_path, fake_bin, args):
    argv = dry(str(tmp_path), *args, bin_dir=fake_bin, NPROC_PER_NODE="1", OUTPUT_DIR="/from/env")
    assert argv[-len(args):] == args  # passed unchanged, at the end
    assert sum(a.startswith(("--out", "train.output_dir")) for a in argv) == 1  # and no second one
    assert "/from/env" not in argv and str(REPO / "runs") not in " ".join(argv)


def test_missing_root_is_a_clear_error(tmp_path, fake_bin):
    res = run(REPO / "scripts/imagenet_r50_full.sh", bin_dir=fake_bin, DRY_RUN="1")
    assert res.returncode == 2 and "IMAGENET_ROOT" in res.stderr and not res.stdout
    res = run(REPO / "scripts/imagenet_r50_full.sh", str(tmp_path / "nope"), bin_dir=fake_bin, DRY_RUN="1")
    assert res.returncode == 2 and "not found" in res.stderr

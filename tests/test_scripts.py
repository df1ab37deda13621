"""The ImageNet launch scripts: syntax, the command they build (DRY_RUN=1), their errors."""
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


def run(script: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in ("IMAGENET_ROOT", "NPROC_PER_NODE")}
    environ.update(env)
    return subprocess.run(["bash", str(script), *args], capture_output=True, text=True, env=environ, timeout=30)


def test_six_launchers():
    assert sorted(s.stem for s in LAUNCHERS) == sorted(
        f"imagenet_{m}_{p}" for m in ("r50", "r18") for p in ("full", "infobatch", "orderdp")
    )


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bash_syntax(script):
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0


@pytest.mark.parametrize("script", LAUNCHERS, ids=lambda p: p.name)
def test_dry_run_builds_the_torchrun_command(script, tmp_path):
    res = run(script, str(tmp_path), "train.epochs=2", "--resume", "auto", DRY_RUN="1")
    assert res.returncode == 0, res.stderr
    argv = shlex.split(res.stdout)
    assert argv[:6] == [
        "torchrun",
        "--nproc_per_node=8",
        "--nnodes=1",
        "--node_rank=0",
        "--master_addr=127.0.0.1",
        "--master_port=29500",
    ]
    assert argv[6:8] == ["-m", "orderdp_dali.train"]
    config = Path(argv[argv.index("--config") + 1])
    assert config.name == script.stem + ".yaml" and config.is_file()
    assert argv[-4:] == [f"data.root={tmp_path}", "train.epochs=2", "--resume", "auto"]
    cfg = load_config(config, [a for a in argv if "=" in a and not a.startswith("--")])
    assert cfg.policy.name == script.stem.rsplit("_", 1)[1]


def test_environment_sets_root_and_topology(tmp_path):
    res = run(
        REPO / "scripts/imagenet_r18_orderdp.sh",
        DRY_RUN="1", IMAGENET_ROOT=str(tmp_path), NPROC_PER_NODE="2", NNODES="3", NODE_RANK="1",
        MASTER_ADDR="10.0.0.5", MASTER_PORT="1234",
    )
    assert res.returncode == 0, res.stderr
    for part in ("--nproc_per_node=2", "--nnodes=3", "--node_rank=1", "--master_addr=10.0.0.5",
                 "--master_port=1234", f"data.root={tmp_path}"):
        assert part in shlex.split(res.stdout)


def test_missing_root_is_a_clear_error(tmp_path):
    res = run(REPO / "scripts/imagenet_r50_full.sh", DRY_RUN="1")
    assert res.returncode == 2 and "IMAGENET_ROOT" in res.stderr and not res.stdout
    res = run(REPO / "scripts/imagenet_r50_full.sh", str(tmp_path / "nope"), DRY_RUN="1")
    assert res.returncode == 2 and "not found" in res.stderr

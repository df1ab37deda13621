"""The release-reproducing recipes (configs/reference/) and the README's account of how ours differ.

Each reference config loads, says the release's side of every row of the README's table, and
trains one epoch (tiny model, tiny generated data, CPU). The README's never-trained shares are
recomputed here by simulating OrderDP with the release's initial score.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from train_helpers import write_colour_dataset

from orderdp_dali.config import load_config
from orderdp_dali.policies import OrderDP
from orderdp_dali.train import run_training

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = sorted((ROOT / "configs" / "reference").glob("*.yaml"))
NAMES = [p.stem for p in REFERENCE]


def test_one_reference_config_per_release_script():
    assert NAMES == sorted(f"{d}_r50_{p}" for d in ("cifar10", "cifar100") for p in ("full", "infobatch", "orderdp")) \
        + ["imagenet_r18_full", "imagenet_r18_orderdp", "imagenet_r50_full", "imagenet_r50_infobatch",
           "imagenet_r50_orderdp"]
    for path in REFERENCE:
        assert re.search(r"^# (Reproduces|The OrderDP release's)", path.read_text()), f"{path.name}: header"


@pytest.mark.parametrize("path", REFERENCE, ids=NAMES)
def test_reference_config_takes_the_release_side_of_every_row(path, tmp_path):
    cfg = load_config(path, [f"data.root={tmp_path}"])
    s, o, params = cfg.schedule, cfg.optim, cfg.policy.params
    assert (s.name, s.pct_start, s.div_factor, s.final_div_factor) == ("onecycle", 0.3, 25.0, 1e4)
    assert s.cycle_momentum and s.torch_steps and (s.base_momentum, s.max_momentum) == (0.85, 0.95)
    assert cfg.train.amp == "none" and cfg.train.label_smoothing == 0.1
    imagenet = path.stem.startswith("imagenet")
    if imagenet:
        assert (o.name, o.decay_norm_and_bias, o.eps, o.weight_decay) == ("lars_release", True, 0.0, 1e-5)
        assert (o.lr, cfg.train.batch_size * 8) == ((6.4, 1024) if "r50" in path.stem else (1.98, 512))
    else:
        assert (o.name, o.lr, o.nesterov, o.weight_decay, cfg.train.batch_size) == ("sgd", 0.03, False, 5e-4, 128)
    if cfg.policy.name != "full":
        assert params["initial_score"] == (1.0 if imagenet else 3.0)
        assert params.get("score_lag", 0) == (1 if imagenet else 0)
    if cfg.policy.name == "infobatch":
        assert params["anneal_delta"] is None and params.get("replace", False) == imagenet


@pytest.mark.slow
@pytest.mark.parametrize("path", REFERENCE, ids=NAMES)
def test_reference_config_trains_one_epoch_on_the_cpu(path, tmp_path):
    data = write_colour_dataset(tmp_path / "data")
    cfg = load_config(path, [
        f"data.root={data}", f"data.cache_dir={tmp_path / 'cache'}", "data.dataset=folder", "data.crop=32",
        "data.val_resize=32", "data.num_threads=1", "model.name=tiny", "model.channels_last=false",
        "train.device=cpu", "train.batch_size=4", "train.epochs=1", "train.progress=false", "train.eval_every=1",
    ])
    (record,) = run_training(cfg, output_dir=tmp_path / "out")
    assert np.isfinite(record["train_loss"]) and record["val_samples"] == 12
    assert record["samples"] == record["planned"]
    if cfg.policy.name == "orderdp":  # s = floor(r * 48), q = floor(t * s)
        r, t = cfg.policy.params["random_len_ratio"], cfg.policy.params["top_q_ratio"]
        assert record["planned"] == int(t * int(r * 48))
    else:  # full data; InfoBatch's first epoch has no score yet, so nothing is well learned
        assert record["planned"] == 48



def test_torch_steps_with_too_few_steps_is_a_config_error_naming_the_keys(tmp_path):
    """torch's OneCycleLR needs >= 2 steps and a warm-up step; a run too short for it stops at its
    first step with the keys named (exit 2), not a ValueError from the schedule."""
    from orderdp_dali.errors import ConfigError

    data = write_colour_dataset(tmp_path / "data")
    cfg = load_config(REFERENCE[0], [
        f"data.root={data}", f"data.cache_dir={tmp_path / 'cache'}", "data.dataset=folder", "data.crop=32",
        "data.val_resize=32", "data.num_threads=1", "model.name=tiny", "model.channels_last=false",
        "train.device=cpu", "train.batch_size=64", "train.epochs=1", "train.progress=false",
        "schedule.name=onecycle", "schedule.torch_steps=true",
    ])
    with pytest.raises(ConfigError, match=r"^schedule: .*schedule\.torch_steps=True.*1 steps in epoch 0 of 1\): "
                                          r"train longer, or set schedule\.torch_steps=false$"):
        run_training(cfg, output_dir=tmp_path / "out")


# --------------------------------------------------------------- never trained
def never_trained_share(n: int, r: float, t: float, epochs: int, score_lag: int, initial_score: float,
                        seed: int = 0) -> float:
    """Share of ``n`` samples OrderDP never trains in ``epochs`` epochs, every real loss above 1.01
    (cross-entropy with label smoothing 0.1 over 1,000 classes), so an initial score of 1 ranks
    unseen samples last. The policy under test does the choosing; losses only need to beat 1."""
    policy = OrderDP(n, r, t, seed=seed, initial_score=initial_score, score_lag=score_lag)
    rng = np.random.default_rng(seed)
    trained = np.zeros(n, dtype=bool)
    for epoch in range(epochs):
        idx = policy.select(epoch).indices
        trained[idx] = True
        policy.update(idx, rng.uniform(1.5, 7.0, idx.size))
    return 1.0 - trained.mean()


def _readme_share(label: str) -> float:
    match = re.search(rf"{label}: (\d+(?:\.\d+)?)%", (ROOT / "README.md").read_text())
    assert match, f"README.md states no '{label}: N%'"
    return float(match.group(1)) / 100


@pytest.mark.parametrize("lag, label", [(1, "never trained with the release's lag"),
                                        (0, "never trained without the lag")])
def test_readme_never_trained_shares_are_what_a_simulation_gives(lag, label):
    """ImageNet R50 (r=0.75, t=0.8, 90 epochs, initial score 1) at n=200,000: the share is a
    property of r, t and the epoch count (the full 1,281,167 gives the same to 0.1%, README)."""
    share = never_trained_share(200_000, 0.75, 0.8, 90, lag, 1.0)
    assert share == pytest.approx(_readme_share(label), abs=0.005)


def test_our_initial_score_trains_every_sample_early():
    assert never_trained_share(20_000, 0.75, 0.8, 15, 0, 1e4) == 0.0  # unseen share 0.4 x 0.25^(e-1)


ISSUE_ROWS = ("momentum under OneCycle", "warm-up share", "LARS", "precision",
              "when scores are used (ImageNet, distributed path)", "initial score of unseen samples",
              "InfoBatch baseline of the paper")


def test_readme_table_has_every_row_and_real_keys(tmp_path):
    text = (ROOT / "README.md").read_text()
    defaults = load_config(None, [f"data.root={tmp_path}"]).to_dict()
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    for label in ISSUE_ROWS:
        assert label in rows, f"README table lacks the row {label!r}"
        keys = re.findall(r"`((?:optim|schedule|train|policy)\.[\w.]+)", rows[label].split("|")[-2])
        assert keys, label
        for key in keys:  # each key the row names exists (policy params: a reference config sets it)
            if key.startswith("policy.params."):
                assert any(key.rsplit(".", 1)[1] in p.read_text() for p in REFERENCE), key
            else:
                section, name = key.split(".")
                assert name in defaults[section], key

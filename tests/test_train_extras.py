"""The ImageNet-recipe extras of the training loop: EMA of weights, Mixup/CutMix with per-sample
losses for the pruning scores, no weight decay on norms and biases, test-time flip, TensorBoard.

End-to-end runs use the tiny CNN on DALI's CPU backend (tests/train_helpers.py).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from train_helpers import overrides

from orderdp_dali import train as train_mod
from orderdp_dali.checkpoint import LAST, load_checkpoint
from orderdp_dali.config import RUNTIME_KEYS, load_config
from orderdp_dali.ema import WeightEma
from orderdp_dali.errors import ConfigError
from orderdp_dali.iterator import DALIPlanIterator
from orderdp_dali.mixing import BatchMixer, mixed_losses
from orderdp_dali.models import build_model
from orderdp_dali.optim import build_optimizer
from orderdp_dali.train import Runtime, evaluate, run_training
from orderdp_dali.training import loop as loop_mod
from orderdp_dali.tta import flip_averaged

ORDERDP = "policy.params={random_len_ratio: 0.8, top_q_ratio: 0.5}"
CPU = Runtime(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), owns_process_group=False)


def make_cfg(data: Path, cache: Path, *extra: str):
    return load_config(None, overrides(data, cache, *extra))


def read_metrics(out: Path) -> List[Dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------- config
@pytest.mark.parametrize("override, message", [
    ("train.mixup.label_smoothing=0.1", "train.mixup.label_smoothing: not a setting: the mixed targets are smoothed by "
                                        "train.label_smoothing"),
    ("train.ema.decay=1.0", r"train.ema.decay: 1.0 out of range \(need < 1.0\)"),
    ("train.ema.every=0", r"train.ema.every: 0 out of range"),
    ("train.ema.decy=0.9", "train.ema.decy: unknown key; did you mean train.ema.decay?"),
    ("train.mixup.mode=row", "train.mixup.mode: invalid value 'row'; choose one of batch, pair, elem"),
    ("train.mixup.prob=1.5", r"train.mixup.prob: 1.5 out of range"),
    ("train.eval_flip=1", "train.eval_flip: expected true or false"),
])
def test_bad_settings_name_their_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["data.root=/x", override])


def test_only_tensorboard_may_change_on_resume():
    assert "train.tensorboard" in RUNTIME_KEYS
    assert not {"train.ema.decay", "train.ema.every", "train.mixup.mixup_alpha", "train.eval_flip"} & RUNTIME_KEYS


# ---------------------------------------------------------------------- EMA
def test_weight_ema_averages_every_nth_step_and_round_trips():
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = WeightEma(model, decay=0.5, every=2)
    expected = 0.0
    for step, value in enumerate([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], start=1):
        with torch.no_grad():
            model.weight.fill_(value)
        ema.step(model)
        if step % 2 == 0:
            expected = 0.5 * expected + 0.5 * value
        assert ema.module.weight.item() == expected
    assert expected == 0.5 * (0.5 * (0.5 * 0 + 1) + 2) + 3  # 2, then 4, then 6 averaged in: 4.5
    again = WeightEma(nn.Linear(1, 1, bias=False), decay=0.5, every=2)
    again.load_state_dict(ema.state_dict())
    assert again.steps == 6 and again.module.weight.item() == expected
    with pytest.raises(ValueError, match="Invalid EMA decay: 1.0"):
        WeightEma(model, decay=1.0)


# Random crops, flips and mixing all on: the resumed run must reproduce all of them.
RESUME = ("train.epochs=4", "policy.name=orderdp", ORDERDP, "train.eval_every=0", "train.ema.decay=0.8",
          "train.ema.every=2", "train.mixup={mixup_alpha: 0.4, cutmix_alpha: 1.0, mode: elem}",
          "train.label_smoothing=0.1")


def test_an_interrupted_run_resumes_the_same_ema_bit_for_bit(data, cache, tmp_path, monkeypatch):
    cfg = make_cfg(data, cache, *RESUME)
    ref_records = run_training(cfg, output_dir=tmp_path / "ref")

    original = loop_mod.train_one_epoch

    def crash_at_2(model, optimizer, scaler, it, epoch, cfg, rt, **extras):
        if epoch == 2:
            raise RuntimeError("simulated crash")
        return original(model, optimizer, scaler, it, epoch, cfg, rt, **extras)

    monkeypatch.setattr(loop_mod, "train_one_epoch", crash_at_2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_training(cfg, output_dir=tmp_path / "cut")
    monkeypatch.undo()
    records = run_training(cfg, output_dir=tmp_path / "cut", resume="auto")

    assert [r["epoch"] for r in records] == [2, 3]
    assert [r["train_loss"] for r in records] == [r["train_loss"] for r in ref_records[2:]]  # the same mixing
    ours, ref = load_checkpoint(tmp_path / "cut" / LAST), load_checkpoint(tmp_path / "ref" / LAST)
    assert ours["ema"]["steps"] == ref["ema"]["steps"] == ours["steps_done"] == sum(r["steps"] for r in ref_records)
    for key, value in ref["ema"]["module"].items():
        assert torch.equal(ours["ema"]["module"][key], value), key
    for key, value in ref["model"].items():
        assert torch.equal(ours["model"][key], value), key
    # the average is not the raw model: it is averaged
    assert any(not torch.equal(ref["ema"]["module"][k], v) for k, v in ref["model"].items() if v.is_floating_point())


def test_ema_is_validated_beside_the_raw_model(data, cache, tmp_path):
    cfg = make_cfg(data, cache, "train.epochs=1", "policy.name=full", "train.ema.decay=0.0")
    (record,) = run_training(cfg, output_dir=tmp_path)
    # decay 0: the average is the last step's weights, so both validate alike
    for key in ("val_top1", "val_top5", "val_loss"):
        assert record[f"{key}_ema"] == pytest.approx(record[key], abs=1e-5), key
    assert record["val_samples"] == 12


# ------------------------------------------------------------ Mixup / CutMix
def _batch(n: int = 8, classes: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, 8, 8, generator=g)
    labels = torch.arange(n) % classes
    return images, labels


@pytest.mark.parametrize("mode", ["batch", "pair", "elem"])
def test_each_sample_loss_is_against_its_own_mixed_target(mode):
    """l_i = lam_i CE(z_i, y_i) + (1 - lam_i) CE(z_i, y_j), j = B - 1 - i, and the inputs mixed with the same lam_i."""
    classes, n = 8, 8
    images, _ = _batch(n)
    labels = torch.arange(n)  # all distinct: t_i[y_i] is lam_i exactly (no smoothing)
    mixer = BatchMixer(classes, mixup_alpha=1.0, mode=mode, seed=3)
    mixed, targets = mixer(images.clone(), labels)
    lam = targets[torch.arange(n), labels]
    partner = labels.flip(0)
    assert torch.allclose(targets[torch.arange(n), partner] + lam, torch.ones(n))  # (y_i = y_j never: n even)
    assert (lam < 1).any()
    expected_images = lam.view(-1, 1, 1, 1) * images + (1 - lam.view(-1, 1, 1, 1)) * images.flip(0)
    assert torch.allclose(mixed, expected_images, atol=1e-6)
    logits = torch.randn(n, classes, generator=torch.Generator().manual_seed(1))
    expected = (lam * F.cross_entropy(logits, labels, reduction="none")
                + (1 - lam) * F.cross_entropy(logits, partner, reduction="none"))
    assert torch.allclose(mixed_losses(logits, targets), expected, atol=1e-6)


def test_unmixed_losses_equal_label_smoothed_cross_entropy_and_odd_batches_leave_the_last_sample_alone():
    images, labels = _batch(7, classes=4)
    never = BatchMixer(4, mixup_alpha=1.0, prob=0.0, label_smoothing=0.1)
    out, targets = never(images.clone(), labels)
    logits = torch.randn(7, 4)
    assert torch.equal(out, images)
    assert torch.allclose(mixed_losses(logits, targets),
                          F.cross_entropy(logits, labels, reduction="none", label_smoothing=0.1), atol=1e-6)
    always = BatchMixer(4, cutmix_alpha=1.0, mode="elem", label_smoothing=0.1, seed=5)
    out, targets = always(images.clone(), labels)
    assert not torch.equal(out[:6], images[:6])
    assert torch.equal(out[6], images[6])  # odd: the last sample is trained unmixed
    assert torch.allclose(targets[6], F.one_hot(labels[6], 4) * 0.9 + 0.1 / 4)


def test_mixing_is_seeded_per_epoch_and_leaves_the_global_rng_alone():
    images, labels = _batch()
    mixer = BatchMixer(4, mixup_alpha=0.4, cutmix_alpha=1.0, mode="elem", seed=7, rank=1)
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    mixer.begin_epoch(5)
    first = [mixer(images.clone(), labels)[1] for _ in range(3)]
    assert np.array_equal(np.random.get_state()[1], before)  # the global stream did not move
    mixer.begin_epoch(5)
    second = [mixer(images.clone(), labels)[1] for _ in range(3)]
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    mixer.begin_epoch(6)
    assert not torch.equal(mixer(images.clone(), labels)[1], first[0])
    other_rank = BatchMixer(4, mixup_alpha=0.4, cutmix_alpha=1.0, mode="elem", seed=7, rank=0)
    other_rank.begin_epoch(5)
    assert not torch.equal(other_rank(images.clone(), labels)[1], first[0])


def test_mixing_probability_and_lambda_follow_the_settings():
    """prob=0.3 mixes 30% of batches; Mixup's lambda ~ Beta(a, a) has mean 1/2 (binomial / CLT bounds, 5 sigma)."""
    images, labels = _batch(2, classes=2)
    mixer = BatchMixer(2, mixup_alpha=0.5, prob=0.3, seed=11)
    lams = np.array([mixer(images.clone(), labels)[1][0, 0].item() for _ in range(4000)])
    mixed = lams[lams < 1.0]
    sd = np.sqrt(0.3 * 0.7 / 4000)
    assert abs(mixed.size / 4000 - 0.3) < 5 * sd
    beta_sd = np.sqrt(0.25 / (2 * 0.5 + 1))  # Beta(a, a): variance 1 / (4 (2a + 1))
    assert abs(mixed.mean() - 0.5) < 5 * beta_sd / np.sqrt(mixed.size)


def test_the_scores_are_each_sample_mixed_target_loss(data, cache, tmp_path, monkeypatch):
    """One full-data epoch: every sample trained once, so its score is the loss against its own mixed target."""
    seen: Dict[str, list] = {"losses": [], "targets": []}
    original = loop_mod.mixed_losses

    def spy(logits, targets):
        losses = original(logits, targets)
        seen["losses"].append(losses.detach().clone())
        seen["targets"].append(targets.clone())
        return losses

    monkeypatch.setattr(loop_mod, "mixed_losses", spy)
    indices: List[torch.Tensor] = []
    original_update = DALIPlanIterator.update

    def record_update(self, index, losses):
        indices.append(index.clone())
        return original_update(self, index, losses)

    monkeypatch.setattr(DALIPlanIterator, "update", record_update)
    cfg = make_cfg(data, cache, "train.epochs=1", "policy.name=full", "train.eval_every=0",
                   "train.mixup={mixup_alpha: 1.0}", "train.label_smoothing=0.1")
    run = train_mod.TrainingRun(cfg, output_dir=tmp_path)
    with run:
        run.run_epoch(0)
        scores = run.train_it.policy.scores.values.copy()
    losses, index = torch.cat(seen["losses"]), torch.cat(indices)
    assert index.numel() == 48 and torch.cat(seen["targets"]).max() < 1.0  # every target was mixed or smoothed
    np.testing.assert_allclose(scores[index.numpy()], losses.numpy(), rtol=1e-6)


# -------------------------------------------------- optimizer weight decay
def test_sgd_without_decay_on_norms_and_biases_leaves_them_untouched(data, cache):
    cfg = make_cfg(data, cache, "optim.name=sgd", "optim.decay_norm_and_bias=false", "optim.weight_decay=0.1",
                   "optim.lr=0.5")
    model = build_model("tiny", 3)
    opt = build_optimizer(cfg, model)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    (0.0 * model(torch.rand(2, 3, 32, 32)).sum()).backward()  # zero gradients: only weight decay moves a weight
    opt.step()
    assert any(v.ndim == 1 for v in before.values()) and any(v.ndim > 1 for v in before.values())
    for name, p in model.named_parameters():
        if p.ndim <= 1:  # BatchNorm weights and biases, every bias
            assert torch.equal(p, before[name]), name
        else:
            assert torch.allclose(p, before[name] * (1 - 0.5 * 0.1)), name


# --------------------------------------------------------- test-time flip
class LeftHalf(nn.Module):
    """Logit 0: the mean of the image's left half; logit 1: 0.6. Not mirror-symmetric on purpose."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = x[..., : x.shape[-1] // 2].mean(dim=(1, 2, 3))
        return torch.stack([left, torch.full_like(left, 0.6)], dim=1)


def test_flip_averaging_uses_the_mirrored_image():
    x = torch.zeros(3, 3, 4, 4)
    x[..., :2] = 1.0  # bright left half
    model = LeftHalf()
    assert torch.allclose(flip_averaged(model, x), torch.tensor([[0.5, 0.6]] * 3))
    assert torch.allclose(model(x), torch.tensor([[1.0, 0.6]] * 3))


def test_evaluate_with_eval_flip_averages_the_logits(data, cache):
    x = torch.zeros(4, 3, 4, 4)
    x[..., :2] = 1.0
    batches = [{"data": x, "label": torch.ones(4, dtype=torch.long)}]
    plain = evaluate(LeftHalf(), batches, make_cfg(data, cache), CPU)
    flipped = evaluate(LeftHalf(), batches, make_cfg(data, cache, "train.eval_flip=true"), CPU)
    assert plain["val_top1"] == 0.0 and flipped["val_top1"] == 100.0
    expected = F.cross_entropy(torch.tensor([[0.5, 0.6]]), torch.tensor([1])).item()
    assert flipped["val_loss"] == pytest.approx(expected) and flipped["val_samples"] == 4


# ------------------------------------------------------------- TensorBoard
def test_tensorboard_event_files_hold_the_epoch_records_and_step_losses(data, cache, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = make_cfg(data, cache, "train.epochs=2", "policy.name=orderdp", ORDERDP, "train.tensorboard=true",
                   "train.print_freq=1", "train.ema.decay=0.5")
    records = run_training(cfg, output_dir=tmp_path)
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "val/top1", "val/top5", "val/top1_ema", "data/samples_kept",
            "data/never_trained", "time/epoch_s", "time/images_per_s", "step/loss"} <= tags
    ends = np.cumsum([r["steps"] for r in records]).tolist()
    for tag, key in (("train/loss", "train_loss"), ("val/top1", "val_top1"), ("data/samples_kept", "planned"),
                     ("data/never_trained", "never_trained"), ("time/images_per_s", "images_per_s")):
        events = acc.Scalars(tag)
        assert [e.step for e in events] == ends, tag
        assert [e.value for e in events] == pytest.approx([r[key] for r in records], rel=1e-6), tag
    assert [e.step for e in acc.Scalars("step/loss")] == list(range(1, ends[-1] + 1))
    assert records[0]["never_trained"] == pytest.approx(1 - 19 / 48)  # one epoch of 19 samples, none trained twice


def test_tensorboard_missing_is_a_clear_error(data, cache, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard raises ImportError
    cfg = make_cfg(data, cache, "train.epochs=1", "train.tensorboard=true")
    with pytest.raises(ConfigError, match=r"train.tensorboard: needs the tensorboard package.*pip install "
                                          r"'orderdp-dali\[tensorboard\]'"):
        run_training(cfg, output_dir=tmp_path)
    assert not (tmp_path / "metrics.jsonl").exists()


# ------------------------------------------------------------- distributed
@pytest.mark.slow
def test_two_ranks_keep_one_ema_mix_and_only_rank_0_writes_tensorboard(data, cache, tmp_path):
    import os
    import subprocess

    out = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "orderdp_dali.train", f"--output-dir={out}",
        *overrides(data, cache, "train.epochs=2", "policy.name=orderdp", ORDERDP, "train.batch_size=4",
                   "train.ema.decay=0.5", "train.mixup={mixup_alpha: 0.4, cutmix_alpha: 1.0}",
                   "train.eval_flip=true", "train.tensorboard=true", "train.print_freq=1"),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    lines = read_metrics(out)
    assert [r["epoch"] for r in lines] == [0, 1]
    for r in lines:
        assert r["world_size"] == 2 and r["val_samples"] == 12  # both ranks' shards, EMA validated on each
        assert 0 <= r["val_top1_ema"] <= r["val_top5_ema"] <= 100
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 1
    state = load_checkpoint(out / LAST)
    assert state["ema"]["steps"] == state["steps_done"] == sum(r["steps"] for r in lines)


def test_tensorboard_after_a_resume_and_an_overwrite_shows_each_epoch_once(data, cache, tmp_path):
    """A resume keeps the finished epochs' points (the last one sits at the checkpoint's step) and
    drops nothing else; --overwrite removes the replaced run's event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def scalars(tag):
        acc = EventAccumulator(str(tmp_path / "tensorboard"))
        acc.Reload()
        return [(e.step, e.value) for e in acc.Scalars(tag)]

    args = ("policy.name=orderdp", ORDERDP, "train.tensorboard=true", "train.print_freq=1")
    first = run_training(make_cfg(data, cache, "train.epochs=1", *args), output_dir=tmp_path)
    rest = run_training(make_cfg(data, cache, "train.epochs=3", *args), output_dir=tmp_path, resume="auto")
    records = first + rest
    ends = np.cumsum([r["steps"] for r in records]).tolist()
    assert scalars("val/top1") == [(s, pytest.approx(r["val_top1"])) for s, r in zip(ends, records)]
    assert [s for s, _ in scalars("step/loss")] == list(range(1, ends[-1] + 1))

    again = run_training(make_cfg(data, cache, "train.epochs=1", *args), output_dir=tmp_path, overwrite=True)
    assert scalars("val/top1") == [(again[0]["steps"], pytest.approx(again[0]["val_top1"]))]
    assert len(list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))) == 1

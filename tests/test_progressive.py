"""Progressive resizing and the validation resolution, on real JPEGs through DALI's CPU backend.

Each epoch's training crop is a function of the epoch (FFCV's rule), handed to the one
pipeline with every batch: the sizes arrive as configured, no pipeline is built for a new
size, a resumed run continues the ramp, and validation runs at ``val_resize``/``val_crop``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import torch
from train_helpers import overrides

from orderdp_dali import DALIPlanIterator, SampleIndex
from orderdp_dali.checkpoint import LAST, load_checkpoint
from orderdp_dali.config import Config, ConfigError, ProgressiveConfig, config_changes, load_config
from orderdp_dali.pipelines import ImagePipelineConfig
from orderdp_dali.policies import make_policy
from orderdp_dali.progressive import resolution_for_epoch, resolution_schedule
from orderdp_dali.train import run_training
from orderdp_dali.training import loop as loop_mod

SMALL = ImagePipelineConfig(crop=16, val_resize=20)


def ffcv_rule(epoch: int, min_res: int, max_res: int, start_ramp: int, end_ramp: int, step: int) -> int:
    """FFCV's ``get_resolution`` as its branches read (ffcv-imagenet's train_imagenet.py)."""
    if epoch <= start_ramp:
        return min_res
    if epoch >= end_ramp:
        return max_res
    interp = min_res + (max_res - min_res) * (epoch - start_ramp) / (end_ramp - start_ramp)
    return int(np.round(interp / step)) * step


# ------------------------------------------------------------------ the rule
@pytest.mark.parametrize("ramp", [
    (160, 192, 11, 13, 32),  # FFCV's rn50 16-epoch rung
    (160, 192, 65, 76, 32),  # FFCV's rn50 88-epoch rung
    (128, 224, 3, 40, 16),
    (224, 128, 2, 9, 8),  # a falling ramp follows the same rule
])
def test_resolution_follows_ffcvs_rule(ramp):
    start_res, end_res, start_epoch, end_epoch, step = ramp
    cfg = ProgressiveConfig(start_res=start_res, end_res=end_res, start_epoch=start_epoch, end_epoch=end_epoch,
                            step=step)
    sizes = resolution_schedule(cfg, end_epoch + 5)
    assert sizes == [ffcv_rule(e, start_res, end_res, start_epoch, end_epoch, step) for e in range(end_epoch + 5)]
    assert all(s % step == 0 for s in sizes)
    assert sizes[: start_epoch + 1] == [start_res] * (start_epoch + 1)
    assert sizes[end_epoch:] == [end_res] * 5
    assert sorted(sizes) == sizes or sorted(sizes, reverse=True) == sizes
    assert len(set(sizes)) > 1


def test_ffcv_16_epoch_rung_sizes():
    cfg = ProgressiveConfig(start_res=160, end_res=192, start_epoch=11, end_epoch=13, step=32)
    # epoch 12 interpolates to 176 = 5.5 x 32, which rounds half to even: 192, as FFCV's np.round does
    assert resolution_schedule(cfg, 16) == [160] * 12 + [192] * 4
    with pytest.raises(ValueError, match="epoch"):
        resolution_for_epoch(-1, cfg)


# ---------------------------------------------------------------- the config
BASE = ["data.root=/data", "model.name=tiny", "train.epochs=10"]
RAMP = "data.progressive={start_res: 128, end_res: 192, start_epoch: 2, end_epoch: 8, step: 32}"


def test_config_defaults_leave_behaviour_unchanged():
    cfg = load_config(None, BASE)
    assert cfg.data.progressive is None and cfg.data.val_crop is None
    again = Config.from_dict(cfg.to_dict())
    assert again == cfg
    cfg = load_config(None, BASE + [RAMP, "data.val_crop=200", "data.val_resize=230"])
    assert cfg.data.progressive == ProgressiveConfig(128, 192, 2, 8, 32) and cfg.data.val_crop == 200
    assert Config.from_dict(cfg.to_dict()) == cfg
    off_again = load_config(None, BASE + [RAMP, "data.progressive.step=64", "data.progressive=null"])
    assert off_again.data.progressive is None


@pytest.mark.parametrize("extra, message", [
    (["data.progressive.end_epoch=11"], r"data.progressive.end_epoch: 11 exceeds train.epochs=10"),
    (["data.progressive.end_epoch=2"], r"data.progressive.end_epoch: 2 must be after data.progressive.start_epoch=2"),
    (["data.progressive.step=48"], r"data.progressive.start_res: 128 is not a multiple of data.progressive.step=48"),
    (["data.progressive.end_res=200"], r"data.progressive.end_res: 200 is not a multiple"),
    (["data.progressive.start_res=4"], r"data.progressive.start_res: 4 out of range"),
    (["data.progressive.steps=16"], r"data.progressive.steps: unknown key; did you mean data.progressive.step\?"),
    (["data.progressive=160"], r"data.progressive: expected a mapping"),
    (["data.augment=false"], r"data.progressive: needs data.augment=true"),
    (["data.dataset=cifar10"], r"data.progressive: only for JPEG datasets"),
    (["data.val_crop=260"], r"data.val_resize: 256 is smaller than data.val_crop=260"),
])
def test_config_errors_name_the_key(extra, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, BASE + [RAMP, *extra])


def test_val_crop_alone_is_checked_against_val_resize():
    with pytest.raises(ConfigError, match=r"data.val_resize: 100 is smaller than data.crop=224"):
        load_config(None, BASE + ["data.val_resize=100"])
    cfg = load_config(None, BASE + ["data.val_resize=100", "data.val_crop=96"])  # training crop may be larger
    assert (cfg.data.crop, cfg.data.val_crop) == (224, 96)
    with pytest.raises(ConfigError, match="data.val_crop: only for JPEG datasets"):
        load_config(None, BASE + ["data.dataset=cifar10", "data.val_crop=32"])


def test_turning_progressive_on_or_changing_it_is_a_recipe_change():
    off = load_config(None, BASE).to_dict()
    on = load_config(None, BASE + [RAMP]).to_dict()
    other = load_config(None, BASE + [RAMP, "data.progressive.end_epoch=9"]).to_dict()
    assert list(config_changes(off, on)) == ["data.progressive"]
    assert config_changes(on, other)["data.progressive"][1]["end_epoch"] == 9
    assert list(config_changes(on, load_config(None, BASE + [RAMP, "data.val_crop=200"]).to_dict())) == [
        "data.val_crop"]


# --------------------------------------------------------------- the iterator
@pytest.fixture(scope="module")
def index(jpeg_split, tmp_path_factory):
    return SampleIndex.scan(jpeg_split, cache_dir=tmp_path_factory.mktemp("cache"))


def count_pipelines(monkeypatch) -> List[int]:
    """Count DALI Pipeline constructions (as tests/test_train.py does)."""
    from nvidia.dali.pipeline import Pipeline

    built: List[int] = []
    original = Pipeline.__init__
    monkeypatch.setattr(Pipeline, "__init__", lambda self, *a, **kw: (built.append(1), original(self, *a, **kw))[1])
    return built


def test_each_epoch_arrives_at_its_size_through_one_pipeline(index, monkeypatch):
    built = count_pipelines(monkeypatch)
    sizes = {0: 16, 1: 24, 2: 40, 3: 24}
    it = DALIPlanIterator(index, make_policy("full", len(index), seed=0, num_epochs=4), 8, device="cpu",
                          num_threads=1, pipeline_config=SMALL, resolution=lambda e: sizes[e % 4])
    seen: Dict[int, set] = {}
    for epoch in range(4):
        assert it.resolution == sizes[epoch]
        shapes, count = set(), 0
        for batch in it:
            shapes.add(tuple(batch["data"].shape[1:]))
            count += batch["data"].shape[0]
            assert torch.isfinite(batch["data"]).all()
        seen[epoch] = shapes
        assert count == len(index)  # the whole plan, at the epoch's size
    assert seen == {e: {(3, s, s)} for e, s in sizes.items()}
    assert it.pipelines_built == 1 and len(built) == 1
    it.close()


def test_without_resolution_the_config_crop_is_kept(index):
    it = DALIPlanIterator(index, make_policy("full", len(index), seed=0, num_epochs=1), 8, device="cpu",
                          num_threads=1, pipeline_config=SMALL)
    assert it.resolution is None
    assert {tuple(b["data"].shape[1:]) for b in it} == {(3, 16, 16)}
    it.close()


def test_resolution_needs_augmentation(index):
    with pytest.raises(ValueError, match="needs augmentation"):
        DALIPlanIterator(index, None, 8, device="cpu", resolution=lambda e: 16)
    with pytest.raises(ValueError, match="needs augmentation"):
        DALIPlanIterator(index, make_policy("full", len(index)), 8, device="cpu", augment=False,
                         resolution=lambda e: 16)


def test_validation_runs_at_val_resize_and_val_crop(index):
    cfg = ImagePipelineConfig(crop=16, val_resize=40, val_crop=32)
    val = DALIPlanIterator(index, None, 8, device="cpu", num_threads=1, pipeline_config=cfg)
    batches = list(val)
    assert {tuple(b["data"].shape[1:]) for b in batches} == {(3, 32, 32)}
    assert sum(len(b["index"]) for b in batches) == len(index)
    val.close()
    # the center crop of a resize to 40 differs from a crop at the default (val_crop = crop = 16)
    default = DALIPlanIterator(index, None, 8, device="cpu", num_threads=1,
                               pipeline_config=ImagePipelineConfig(crop=16, val_resize=40))
    assert {tuple(b["data"].shape[1:]) for b in default} == {(3, 16, 16)}
    default.close()
    with pytest.raises(ValueError, match="val_resize"):
        ImagePipelineConfig(crop=16, val_resize=30, val_crop=32)


# ------------------------------------------------------------------ training
PROGRESSIVE = ("train.epochs=4", "policy.name=orderdp", "policy.params={random_len_ratio: 0.8, top_q_ratio: 0.5}",
               "data.progressive={start_res: 16, end_res: 32, start_epoch: 1, end_epoch: 3, step: 8}",
               "data.val_resize=40", "data.val_crop=32")
EXPECTED = [16, 16, 24, 32]


def record_inputs(monkeypatch, shapes: Dict[int, set], crash_at: int = -1) -> None:
    """Wrap train_one_epoch to record the image sizes each epoch's model saw (and crash at ``crash_at``)."""
    original = loop_mod.train_one_epoch

    def wrapper(model, optimizer, scaler, it, epoch, cfg, rt, **extras):
        if epoch == crash_at:
            raise RuntimeError("simulated crash")
        shapes[epoch] = set()
        hook = model.register_forward_pre_hook(lambda m, args: shapes[epoch].add(tuple(args[0].shape[2:])))
        try:
            return original(model, optimizer, scaler, it, epoch, cfg, rt, **extras)
        finally:
            hook.remove()

    monkeypatch.setattr(loop_mod, "train_one_epoch", wrapper)


@pytest.fixture(scope="module")
def progressive_run(data, cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("progressive")
    shapes: Dict[int, set] = {}
    with pytest.MonkeyPatch.context() as mp:
        built = count_pipelines(mp)
        record_inputs(mp, shapes)
        records = run_training(load_config(None, overrides(data, cache, *PROGRESSIVE)), output_dir=out)
    return out, records, shapes, len(built)


def test_training_ramps_the_crop_with_one_pipeline_per_split(progressive_run):
    out, records, shapes, built = progressive_run
    assert [r["resolution"] for r in records] == EXPECTED
    assert shapes == {e: {(s, s)} for e, s in enumerate(EXPECTED)}
    assert built == 2 and [r["pipelines_built"] for r in records] == [2, 2, 2, 2]
    assert all(r["val_samples"] == 12 and np.isfinite(r["train_loss"]) for r in records)
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("resolution") for r in logged] == EXPECTED


def test_a_resumed_run_continues_the_ramp(progressive_run, data, cache, tmp_path, monkeypatch):
    _, ref_records, _, _ = progressive_run
    cfg = load_config(None, overrides(data, cache, *PROGRESSIVE))
    first: Dict[int, set] = {}
    record_inputs(monkeypatch, first, crash_at=2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_training(cfg, output_dir=tmp_path, resume="auto")
    assert load_checkpoint(tmp_path / LAST)["epoch"] == 2
    monkeypatch.undo()
    second: Dict[int, set] = {}
    record_inputs(monkeypatch, second)
    records = run_training(cfg, output_dir=tmp_path, resume="auto")
    assert [r["epoch"] for r in records] == [2, 3]
    assert {**first, **second} == {e: {(s, s)} for e, s in enumerate(EXPECTED)}
    assert [r["resolution"] for r in records] == EXPECTED[2:]
    # the checkpoint's pipeline state: the same crops at the same sizes, so the same losses
    assert [r["train_loss"] for r in records] == [r["train_loss"] for r in ref_records[2:]]


def test_a_resume_may_not_switch_progressive_on(progressive_run, data, cache, tmp_path):
    from orderdp_dali.errors import CheckpointError

    out, _, _, _ = progressive_run
    plain = [o for o in PROGRESSIVE if not o.startswith("data.progressive")]
    with pytest.raises(CheckpointError, match="data.progressive"):
        run_training(load_config(None, overrides(data, cache, *plain)), output_dir=tmp_path,
                     resume=str(Path(out) / LAST))


def test_a_fixed_size_model_refuses_progressive_or_another_val_crop(data, cache, tmp_path):
    cfg = load_config(None, overrides(data, cache, *PROGRESSIVE, "model.name=timm/vit_tiny_patch16_224"))
    with pytest.raises(ConfigError, match="data.progressive: timm/vit_tiny_patch16_224 takes only 224x224 inputs"):
        run_training(cfg, output_dir=tmp_path)
    vit = ("model.name=timm/vit_tiny_patch16_224", "data.crop=224", "data.val_resize=256", "data.val_crop=192")
    with pytest.raises(ConfigError, match="data.val_crop: timm/vit_tiny_patch16_224 takes only 224x224 inputs, "
                                          "validation would give it 192x192"):
        run_training(load_config(None, overrides(data, cache, *vit)), output_dir=tmp_path)



# ------------------------------------------------------------------ the benchmark
def test_resolution_benchmark_writes_its_figures(jpeg_split, tmp_path):
    from orderdp_dali.bench import resolution_speed

    code = resolution_speed.main(["--root", str(jpeg_split), "--small", "16", "--large", "32", "--repeats", "2",
                                  "--warmup", "0", "--batch-size", "8", "--workers", "1", "--out", str(tmp_path)])
    assert code == 0
    result = json.loads((tmp_path / "resolution_speed_cpu.json").read_text())
    assert set(result["loaders"]) == {"fed-16", "fed-32", "fixed-32"}
    assert all(len(r["seconds"]) == 2 and r["images"] == result["planned"] for r in result["loaders"].values())
    assert len(result["speedup"]["wall_per_round"]) == 2 and result["speedup"]["wall"]["median"] > 0
    assert "--small 16" in result["command"]
    assert "epoch time 32 px / 16 px" in (tmp_path / "resolution_speed_cpu.md").read_text()
    assert resolution_speed.main(["--root", str(jpeg_split), "--small", "32", "--large", "32"]) == 2


# ------------------------------------------------------------------ FFCV's rungs
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# FFCV's published rn50 rungs (libffcv/ffcv-imagenet rn50_configs/rn50_<epochs>_epochs.yaml): epochs -> ramp
FFCV_RAMPS = {16: (11, 13), 24: (17, 20), 32: (23, 27), 40: (29, 34), 88: (65, 76)}


@pytest.mark.parametrize("pruned", [False, True], ids=["full", "orderdp"])
@pytest.mark.parametrize("epochs", sorted(FFCV_RAMPS))
def test_rung_config_follows_ffcv_and_trains_an_epoch(epochs, pruned, data, cache, tmp_path):
    path = CONFIGS / f"imagenet_r50_rung{epochs}{'_orderdp' if pruned else ''}.yaml"
    cfg = load_config(path, [f"data.root={data}"])
    start, end = FFCV_RAMPS[epochs]
    assert cfg.train.epochs == epochs and cfg.model.name == "resnet50"
    assert cfg.data.progressive == ProgressiveConfig(160, 192, start, end, 32)
    sizes = resolution_schedule(cfg.data.progressive, epochs)
    assert sizes == [ffcv_rule(e, 160, 192, start, end, 32) for e in range(epochs)] and sizes[-1] == 192
    assert (cfg.data.val_resize, cfg.data.val_crop) == (293, 256)  # FFCV: 256 px at crop ratio 224/256
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.decay_norm_and_bias) == (
        "sgd", 1.7, 1e-4, False)
    assert cfg.train.label_smoothing == 0.1 and cfg.train.batch_size == 512
    assert cfg.train.eval_flip  # FFCV's lr_tta
    if pruned:
        assert cfg.policy.name == "orderdp" and cfg.policy.params == {"random_len_ratio": 0.75, "top_q_ratio": 0.8}
    else:
        assert cfg.policy.name == "full"
    # one epoch on the tiny data with the tiny model: the recipe's pipeline settings as they are
    # (160 px crops, 293/256 validation), only the run's length and size scaled down
    scaled = ("train.epochs=1", "data.val_resize=293", "data.progressive.start_epoch=0", "data.progressive.end_epoch=1",
              "train.batch_size=16", "train.amp=none", "optim.lr=0.1", "schedule.warmup_epochs=0")
    tiny = load_config(path, overrides(data, cache, *scaled))
    (record,) = run_training(tiny, output_dir=tmp_path)
    assert record["resolution"] == 160 and record["val_samples"] == 12 and np.isfinite(record["train_loss"])
    assert record["planned"] == (48 if not pruned else 28)  # OrderDP keeps floor(0.8 * floor(0.75 * 48)) = 28

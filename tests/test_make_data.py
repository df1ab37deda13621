"""make-data: layout and counts, decodable images, learnable classes, reuse/refuse rules."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from orderdp_dali.cli.make_data import main
from orderdp_dali.errors import DatasetError
from orderdp_dali.make_data import MANIFEST_NAME, PARTIAL_NAME, class_styles, make_dataset, read_manifest


def _files(split_dir: Path) -> dict:
    return {c.name: sorted(c.glob("*.JPEG")) for c in sorted(split_dir.iterdir()) if c.is_dir()}


def _features(path: Path, rng: np.random.Generator, augment: bool) -> np.ndarray:
    """Mean and std of R, G, B after an optional random-resized-crop + flip (the training augmentation)."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        if augment:
            w, h = im.size
            scale = rng.uniform(0.2, 1.0)
            cw, ch = max(8, int(w * np.sqrt(scale))), max(8, int(h * np.sqrt(scale)))
            x0, y0 = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
            im = im.crop((x0, y0, x0 + cw, y0 + ch)).resize((32, 32))
            if rng.random() < 0.5:
                im = im.transpose(Image.FLIP_LEFT_RIGHT)
        a = np.asarray(im, np.float32) / 255.0
    return np.concatenate([a.mean(axis=(0, 1)), a.std(axis=(0, 1))])


def _nearest_centroid_accuracy(train: dict, val: dict, features) -> float:
    classes = sorted(train)
    centroids = np.stack([np.mean([features(p) for p in train[c]], axis=0) for c in classes])
    hits = total = 0
    for label, c in enumerate(classes):
        for p in val[c]:
            pred = int(np.argmin(((centroids - features(p)) ** 2).sum(axis=1)))
            hits += pred == label
            total += 1
    return hits / total


def test_small_layout_counts_and_decode(tmp_path):
    root = make_dataset(tmp_path / "d", mode="small", num_classes=4, train_per_class=7, val_per_class=3, workers=1)
    assert root == (tmp_path / "d").absolute()
    train, val = _files(root / "train"), _files(root / "val")
    assert list(train) == list(val) == [f"c{c:03d}_synthetic" for c in range(4)]
    assert all(len(v) == 7 for v in train.values()) and all(len(v) == 3 for v in val.values())
    for paths in list(train.values()) + list(val.values()):
        for p in paths:
            with Image.open(p) as im:
                im.load()
                assert im.format == "JPEG" and im.mode == "RGB"
                assert 16 <= min(im.size) and max(im.size) <= 160
    manifest = read_manifest(root)
    assert manifest["counts"] == {"train": 28, "val": 12}
    assert manifest["request"]["mode"] == "small"
    assert 500 < manifest["stats"]["mean_bytes"] < 20_000
    assert not (root / PARTIAL_NAME).exists()


def test_small_classes_are_learnable_under_crop_and_flip(tmp_path):
    root = make_dataset(tmp_path / "d", mode="small", num_classes=8, train_per_class=12, val_per_class=6, workers=2)
    rng = np.random.default_rng(0)
    acc = _nearest_centroid_accuracy(
        _files(root / "train"), _files(root / "val"), lambda p: _features(p, rng, augment=True)
    )
    assert acc > 0.9, acc  # chance is 0.125


def test_class_styles_are_distinct_up_to_the_maximum():
    styles = class_styles(1728)
    assert len(set(styles)) == 1728
    with pytest.raises(ValueError, match="num_classes"):
        class_styles(1729)


def test_same_seed_same_bytes_regardless_of_workers(tmp_path):
    kw = dict(mode="small", num_classes=2, train_per_class=3, val_per_class=1)
    a = make_dataset(tmp_path / "a", workers=1, seed=5, **kw)
    b = make_dataset(tmp_path / "b", workers=2, seed=5, **kw)
    c = make_dataset(tmp_path / "c", workers=1, seed=6, **kw)
    rel = sorted(p.relative_to(a) for p in a.rglob("*.JPEG"))
    assert rel == sorted(p.relative_to(b) for p in b.rglob("*.JPEG"))
    assert all((a / r).read_bytes() == (b / r).read_bytes() for r in rel)
    assert any((a / r).read_bytes() != (c / r).read_bytes() for r in rel)


def test_reuse_refuse_and_force(tmp_path):
    kw = dict(mode="small", num_classes=2, train_per_class=2, val_per_class=1, workers=1)
    root = make_dataset(tmp_path / "d", **kw)
    probe = next(root.rglob("*.JPEG"))
    before = probe.stat().st_mtime_ns
    os.utime(probe, ns=(before - 10**9, before - 10**9))
    make_dataset(tmp_path / "d", **kw)  # matching manifest: nothing rewritten
    assert probe.stat().st_mtime_ns == before - 10**9
    with pytest.raises(DatasetError, match="different generated dataset"):
        make_dataset(tmp_path / "d", **{**kw, "train_per_class": 3})
    make_dataset(tmp_path / "d", force=True, **{**kw, "train_per_class": 3})
    assert read_manifest(root)["counts"]["train"] == 6

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(DatasetError, match="not empty"):
        make_dataset(foreign, **kw)
    make_dataset(foreign, force=True, **kw)
    assert (foreign / "thesis.tex").read_text() == "precious"  # --force replaces train/ val/ only

    with pytest.raises(DatasetError, match="not a directory"):
        make_dataset(foreign / "thesis.tex", **kw)


def test_half_written_dataset_is_regenerated(tmp_path):
    kw = dict(mode="small", num_classes=2, train_per_class=2, val_per_class=1, workers=1)
    root = make_dataset(tmp_path / "d", **kw)
    (root / MANIFEST_NAME).unlink()
    (root / PARTIAL_NAME).write_text(json.dumps({"request": {}}))
    (root / "train" / "c000_synthetic" / "c000_synthetic_train_00000.JPEG").write_bytes(b"half")
    make_dataset(root, **kw)
    assert read_manifest(root) is not None and not (root / PARTIAL_NAME).exists()
    with Image.open(root / "train" / "c000_synthetic" / "c000_synthetic_train_00000.JPEG") as im:
        im.load()


@pytest.mark.parametrize(
    "kwargs, option",
    [
        ({"num_classes": 0}, "--classes"),
        ({"train_per_class": 0}, "--train-per-class"),
        ({"val_per_class": -1}, "--val-per-class"),
        ({"mode": "digits", "num_classes": 11}, "--classes"),
        ({"mode": "digits", "train_per_class": 10_000}, "--train-per-class"),
        ({"mode": "cifar"}, "--mode"),
        ({"seed": -1}, "--seed"),
        ({"workers": 0}, "--workers"),
    ],
)
def test_bad_options_name_the_option(tmp_path, kwargs, option):
    with pytest.raises(ValueError, match=option):
        make_dataset(tmp_path / "d", **{"workers": 1, **kwargs})


def test_cli(tmp_path, capsys):
    out = tmp_path / "cli data"
    assert main([str(out), "--classes", "2", "--train-per-class", "2", "--val-per-class", "1", "--workers", "1"]) == 0
    assert "mean file size" in capsys.readouterr().out
    assert main([str(out), "--train-per-class", "0"]) == 2
    assert "--train-per-class" in capsys.readouterr().err
    assert main([str(tmp_path / "x"), "--mode", "digits", "--classes", "12"]) == 2
    assert "--classes" in capsys.readouterr().err


def test_digits_split_and_accuracy(tmp_path):
    root = make_dataset(tmp_path / "digits", mode="digits", workers=1)
    train, val = _files(root / "train"), _files(root / "val")
    assert list(train) == [f"digit_{d}" for d in range(10)] == list(val)
    n_train, n_val = sum(map(len, train.values())), sum(map(len, val.values()))
    assert n_train + n_val == 1797
    assert abs(n_val / 1797 - 0.2) < 0.01
    assert all(abs(len(val[c]) / (len(val[c]) + len(train[c])) - 0.2) < 0.02 for c in train)  # stratified
    with Image.open(val["digit_3"][0]) as im:
        assert im.size == (32, 32)

    def pixels(p: Path) -> np.ndarray:
        with Image.open(p) as im:
            return np.asarray(im.convert("L").resize((8, 8)), np.float32).ravel()

    assert _nearest_centroid_accuracy(train, val, pixels) > 0.8  # chance 0.1


def test_digits_counts_can_be_capped(tmp_path):
    root = make_dataset(
        tmp_path / "digits", mode="digits", num_classes=3, train_per_class=5, val_per_class=2, workers=1
    )
    assert read_manifest(root)["counts"] == {"train": 15, "val": 6}


def test_imagenet_like_ballpark(tmp_path):
    root = make_dataset(
        tmp_path / "inet", mode="imagenet-like", num_classes=2, train_per_class=4, val_per_class=2, workers=2
    )
    files = sorted(root.rglob("*.JPEG"))
    assert len(files) == 12
    sizes, widths, heights = [], [], []
    for p in files:
        sizes.append(p.stat().st_size)
        with Image.open(p) as im:
            im.load()
            widths.append(im.width)
            heights.append(im.height)
            assert 0.4 <= im.width / im.height <= 2.5
    assert 40_000 < np.mean(sizes) < 250_000
    assert 250 < np.mean(widths) < 550 and 200 < np.mean(heights) < 500
    stats = read_manifest(root)["stats"]
    assert stats["mean_bytes"] == pytest.approx(np.mean(sizes))


# ----------------------------------------------------------------------------- difficulty knobs


def _mean_colour(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), np.float32).reshape(-1, 3).mean(axis=0) / 255.0


def _nearest(centroids: np.ndarray, x: np.ndarray) -> int:
    return int(np.argmin(((centroids - x) ** 2).sum(axis=1)))


def test_knobs_off_leave_the_request_and_images_as_before(tmp_path):
    kw = dict(mode="small", num_classes=3, train_per_class=4, val_per_class=2, workers=1)
    a = make_dataset(tmp_path / "a", **kw)
    b = make_dataset(tmp_path / "b", hard_fraction=0.0, label_noise=0.0, **kw)
    request = read_manifest(a)["request"]
    assert "hard_fraction" not in request and "label_noise" not in request  # older manifests still match
    assert "difficulty" not in read_manifest(a)
    rel = sorted(p.relative_to(a) for p in a.rglob("*.JPEG"))
    assert all((a / r).read_bytes() == (b / r).read_bytes() for r in rel)
    c = make_dataset(tmp_path / "c", hard_fraction=0.5, **kw)
    assert any((a / r).read_bytes() != (c / r).read_bytes() for r in rel)
    with pytest.raises(DatasetError, match="hard_fraction=0.5"):
        make_dataset(tmp_path / "a", hard_fraction=0.5, **kw)  # a different dataset: refused, not reused


def test_knobs_are_deterministic_regardless_of_workers(tmp_path):
    kw = dict(mode="small", num_classes=3, train_per_class=6, val_per_class=2, seed=3,
              hard_fraction=0.5, label_noise=0.3)
    a = make_dataset(tmp_path / "a", workers=1, **kw)
    b = make_dataset(tmp_path / "b", workers=2, **kw)
    rel = sorted(p.relative_to(a) for p in a.rglob("*.JPEG"))
    assert all((a / r).read_bytes() == (b / r).read_bytes() for r in rel)
    assert read_manifest(a)["difficulty"] == read_manifest(b)["difficulty"]


def test_hard_examples_share_balance_and_difficulty(tmp_path):
    n_cls, n_train, n_val = 24, 10, 5  # 24 hues, 15 degrees apart
    kw = dict(mode="small", num_classes=n_cls, train_per_class=n_train, val_per_class=n_val, workers=2, seed=1)
    easy = make_dataset(tmp_path / "easy", **kw)
    hard = make_dataset(tmp_path / "hard", hard_fraction=1.0, **kw)
    half = make_dataset(tmp_path / "half", hard_fraction=0.4, **kw)
    manifest = read_manifest(half)
    assert manifest["counts"] == {"train": n_cls * n_train, "val": n_cls * n_val}  # class balance kept
    assert all(len(v) == n_train for v in _files(half / "train").values())
    n_hard = manifest["difficulty"]["hard"]
    # Binomial(240, 0.4): mean 96, sd 7.6; Binomial(120, 0.4): mean 48, sd 5.4 (bounds ~4 sd).
    assert 66 <= n_hard["train"] <= 126 and 27 <= n_hard["val"] <= 69, n_hard
    assert manifest["difficulty"]["mislabelled_train"] == 0
    assert read_manifest(hard)["difficulty"]["hard"] == {"train": n_cls * n_train, "val": n_cls * n_val}

    # Mean colour against the centroids of the easy train images: a hard image's colour is a
    # mixture that lands nearer other classes, yet its own class stays among the 3 nearest
    # far more often than chance (3/24).
    train = _files(easy / "train")
    centroids = np.stack([np.mean([_mean_colour(p) for p in train[c]], axis=0) for c in sorted(train)])

    def own_rank(root: Path) -> np.ndarray:
        val = _files(root / "val")
        ranks = []
        for k, c in enumerate(sorted(val)):
            for p in val[c]:
                d = ((centroids - _mean_colour(p)) ** 2).sum(axis=1)
                ranks.append(int((d < d[k]).sum()))
        return np.array(ranks)

    easy_rank, hard_rank = own_rank(easy), own_rank(hard)
    assert np.mean(easy_rank == 0) > 0.85, easy_rank  # measured 0.93-0.95
    assert np.mean(hard_rank == 0) < 0.4, hard_rank  # measured 0.13-0.16
    assert np.mean(hard_rank < 3) > 0.5, hard_rank  # measured 0.73


def test_label_noise_mislabels_train_only(tmp_path):
    n_cls, n_train, n_val = 6, 50, 10
    root = make_dataset(
        tmp_path / "d", mode="small", num_classes=n_cls, train_per_class=n_train, val_per_class=n_val,
        label_noise=0.3, workers=2, seed=2,
    )
    manifest = read_manifest(root)
    assert manifest["difficulty"]["hard"] == {"train": 0, "val": 0}
    noisy = manifest["difficulty"]["mislabelled_train"]
    assert 60 <= noisy <= 120, noisy  # Binomial(300, 0.3): mean 90, sd 7.9
    assert all(len(v) == n_train for v in _files(root / "train").values())
    # Centroids of the clean val split place almost every val image in its folder's class,
    # and about 30% of the train images elsewhere: the mislabelled ones.
    val, train = _files(root / "val"), _files(root / "train")
    centroids = np.stack([np.mean([_mean_colour(p) for p in val[c]], axis=0) for c in sorted(val)])
    val_wrong = sum(_nearest(centroids, _mean_colour(p)) != k for k, c in enumerate(sorted(val)) for p in val[c])
    train_wrong = sum(
        _nearest(centroids, _mean_colour(p)) != k for k, c in enumerate(sorted(train)) for p in train[c]
    )
    assert val_wrong <= 2, val_wrong
    assert abs(train_wrong - noisy) <= 10, (train_wrong, noisy)


@pytest.mark.parametrize(
    "kwargs, option",
    [
        ({"hard_fraction": 1.5}, "--hard-fraction"),
        ({"hard_fraction": -0.1}, "--hard-fraction"),
        ({"label_noise": 0.6}, "--label-noise"),
        ({"label_noise": "0.1"}, "--label-noise"),
        ({"mode": "digits", "hard_fraction": 0.2}, "--hard-fraction"),
        ({"mode": "imagenet-like", "label_noise": 0.2}, "--label-noise"),
        ({"num_classes": 1, "hard_fraction": 0.2}, "--hard-fraction"),
    ],
)
def test_bad_difficulty_options_name_the_option(tmp_path, kwargs, option):
    with pytest.raises(ValueError, match=option):
        make_dataset(tmp_path / "d", **{"workers": 1, **kwargs})
    assert not (tmp_path / "d").exists()  # rejected before anything was written


def test_cli_difficulty_flags(tmp_path, capsys):
    assert main(["--help"]) == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--hard-fraction" in help_text and "--label-noise" in help_text and "OrderDP" in help_text
    out = tmp_path / "d"
    args = [str(out), "--classes", "3", "--train-per-class", "4", "--val-per-class", "2", "--workers", "1"]
    assert main(args + ["--hard-fraction", "1", "--label-noise", "0.25"]) == 0
    assert "hard examples: train 12, val 6" in capsys.readouterr().out
    assert read_manifest(out)["request"]["label_noise"] == 0.25
    assert main(args + ["--label-noise", "0.7"]) == 2
    assert "--label-noise" in capsys.readouterr().err

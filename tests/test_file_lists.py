"""File lists and Kaggle's flat ImageNet validation folder: the same SampleIndex as class folders, clear errors."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import List, Tuple

import numpy as np
import pytest
import torch
from conftest import write_jpeg_folder
from train_helpers import PALETTE, overrides, write_colour_dataset

from orderdp_dali import check_data
from orderdp_dali.cli import check_data as check_data_cli
from orderdp_dali.config import load_config
from orderdp_dali.data.exclusions import load_exclusion_list
from orderdp_dali.data.file_lists import (
    index_file_list,
    index_flat_val,
    parse_classes,
    parse_file_list,
    parse_val_solution,
)
from orderdp_dali.data.folder import SampleIndex
from orderdp_dali.errors import ConfigError, DatasetError
from orderdp_dali.models import build_model
from orderdp_dali.policies import make_policy
from orderdp_dali.train import build_data, build_iterators, evaluate, init_runtime, run_training

HEADER = "ImageId,PredictionString\n"


def list_lines(index: SampleIndex, seed: int = 0) -> List[str]:
    """``<path> <label>`` lines of ``index`` in a shuffled order."""
    lines = [f"{p} {k}" for p, k in zip(index.paths.tolist(), index.labels.tolist())]
    order = np.random.default_rng(seed).permutation(len(lines))
    return [lines[i] for i in order]


def flatten_val(val_dir: Path, out_dir: Path) -> Tuple[str, int]:
    """Copy a class-folder split into one flat folder with ImageNet's names; return (CSV text, images)."""
    out_dir.mkdir(parents=True)
    index = SampleIndex.scan(val_dir, cache_dir=out_dir.parent / "c")
    rows = [HEADER]
    order = np.random.default_rng(1).permutation(len(index))  # flat names unrelated to class order
    for number, i in enumerate(order, 1):
        image = f"ILSVRC2012_val_{number:08d}"
        shutil.copy(index.path(int(i)), out_dir / f"{image}.JPEG")
        synset = index.classes[int(index.labels[i])]
        rows.append(f"{image},{synset} 10 20 30 40 {synset} 5 6 7 8\n")
    return "".join(rows), len(index)


# ----------------------------------------------------------------- file lists
def test_list_indexes_as_the_class_folders_do(tmp_path):
    split = write_jpeg_folder(tmp_path / "data" / "train", classes=4, per_class=5)
    scanned = SampleIndex.scan(split, cache_dir=tmp_path / "c")
    text = "# made by hand\n\n" + "\n".join(list_lines(scanned)) + "\n"
    (tmp_path / "data" / "train.txt").write_text(text.replace("\n", "\r\n", 3))  # some CRLF lines too
    (tmp_path / "data" / "classes.txt").write_text("\n".join(scanned.classes) + "\n")
    cfg = load_config(None, overrides(tmp_path / "data", tmp_path / "c", "train.eval_every=0",
                                      "data.train_list=train.txt", "data.classes_file=classes.txt"))
    listed = build_data(cfg).train
    assert listed.root == scanned.root
    assert listed.classes == scanned.classes
    assert listed.paths.tolist() == scanned.paths.tolist()
    assert listed.labels.tolist() == scanned.labels.tolist() and listed.labels.dtype == np.int64
    assert listed.fingerprint == scanned.fingerprint
    scores = np.random.default_rng(3).random(len(scanned)).astype(np.float32)
    for name, params in (("full", {}), ("orderdp", {"random_len_ratio": 0.8, "top_q_ratio": 0.5})):
        plans = []
        for index in (scanned, listed):
            policy = make_policy(name, len(index), seed=7, **params)
            policy.update(np.arange(len(index)), scores)
            plans.append([index.paths[policy.select(e).indices].tolist() for e in range(3)])
        assert plans[0] == plans[1]


def test_list_without_classes_file_and_paths_with_spaces(tmp_path):
    split = write_jpeg_folder(tmp_path / "train", classes=2, per_class=2)
    (split / "class_01" / "img_000.JPEG").rename(split / "class_01" / "my photo.JPEG")
    text = "class_01/my photo.JPEG\t1\nclass_00/img_001.JPEG 0\n  class_00/./img_000.JPEG  2\n"
    (tmp_path / "list.txt").write_text(text)
    index = index_file_list(tmp_path / "list.txt", split)
    assert index.classes == ("0", "1", "2")
    assert index.paths.tolist() == ["class_00/img_001.JPEG", "class_01/my photo.JPEG", "class_00/img_000.JPEG"]
    assert index.labels.tolist() == [0, 1, 2]


def test_parse_file_list_rules():
    paths, labels, lines = parse_file_list("# c\n\n a b/c d.jpg  12 \n x.png 0\n", "l.txt")
    assert paths == ["a b/c d.jpg", "x.png"] and labels.tolist() == [12, 0] and lines == [3, 4]


@pytest.mark.parametrize("text,line,match", [
    ("a.JPEG 0\nb.JPEG\n", 2, "is not '<relative path> <label>'"),
    ("a.JPEG 0\n\nb.JPEG cat\n", 3, "not a non-negative integer"),
    ("a.JPEG -1\n", 1, "a negative label"),
    ("a.JPEG 1.0\n", 1, "not a non-negative integer"),
    ("/abs/a.JPEG 0\n", 1, "absolute path"),
    ("../a.JPEG 0\n", 1, "not a file inside the split folder"),
    ("a.JPEG 0\nb.JPEG 1\n./a.JPEG 1\n", 3, r"listed again \(first at line 1\)"),
])
def test_list_line_errors_name_file_and_line(text, line, match):
    with pytest.raises(DatasetError, match=rf"^train\.txt line {line}: .*{match}"):
        parse_file_list(text, "train.txt")


def test_list_errors_empty_and_not_utf8(tmp_path):
    with pytest.raises(DatasetError, match="train.txt: no '<relative path> <label>' lines"):
        parse_file_list("# only a comment\n\n", "train.txt")
    (tmp_path / "l.txt").write_bytes(b"a.JPEG 0\nb\xff.JPEG 1\n")
    with pytest.raises(DatasetError, match=r"l\.txt line 2 is not UTF-8"):
        index_file_list(tmp_path / "l.txt", tmp_path)
    with pytest.raises(DatasetError, match="cannot read .*nope.txt"):
        index_file_list(tmp_path / "nope.txt", tmp_path)


def test_missing_listed_files_named_with_count(tmp_path):
    split = write_jpeg_folder(tmp_path / "train", classes=2, per_class=2)
    lines = [f"class_00/img_{i:03d}.JPEG 0" for i in range(9)] + ["class_01/img_000.JPEG 1", "gone/x.JPEG 1"]
    (tmp_path / "l.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError) as e:
        index_file_list(tmp_path / "l.txt", split)
    msg = str(e.value)
    assert "l.txt: 8 of 11 listed files do not exist under" in msg
    assert "line 3 'class_00/img_002.JPEG'" in msg and "and 3 more" in msg
    # excluded files (check-data's list) need not exist
    gone = [split / f"class_00/img_{i:03d}.JPEG" for i in range(2, 9)] + ["gone/x.JPEG"]
    index = index_file_list(tmp_path / "l.txt", split, exclude=gone)
    assert len(index) == 3


def test_label_beyond_classes_file(tmp_path):
    split = write_jpeg_folder(tmp_path / "train", classes=2, per_class=1)
    (tmp_path / "l.txt").write_text("class_00/img_000.JPEG 0\nclass_01/img_000.JPEG 2\n")
    with pytest.raises(DatasetError, match=r"l\.txt line 2: label 2 but the classes file names 2 classes \(labels 0"):
        index_file_list(tmp_path / "l.txt", split, classes=["a", "b"])


def test_classes_file_errors():
    assert parse_classes(" n01 \nn02\n\n", "c.txt") == ("n01", "n02")
    with pytest.raises(DatasetError, match="c.txt line 2: empty"):
        parse_classes("a\n\nb\n", "c.txt")
    with pytest.raises(DatasetError, match=r"c.txt line 3: class 'a' again \(first at line 1\)"):
        parse_classes("a\nb\na\n", "c.txt")
    with pytest.raises(DatasetError, match="c.txt: no class names"):
        parse_classes("\n", "c.txt")


def test_train_and_val_lists_through_build_data(tmp_path):
    root = write_colour_dataset(tmp_path / "d", train_per_class=3, val_per_class=2)
    for split in ("train", "val"):
        index = SampleIndex.scan(root / split, cache_dir=tmp_path / "c")
        (root / f"{split}.txt").write_text("\n".join(list_lines(index)) + "\n")
    base = overrides(root, tmp_path / "c", "data.train_list=train.txt", "data.val_list=val.txt")
    data = build_data(load_config(None, base))
    assert data.train.classes == data.val.classes == ("0", "1", "2") and data.num_classes == 3
    assert len(data.train) == 9 and len(data.val) == 6
    (root / "val.txt").write_text("class_0/000.JPEG 3\n")
    with pytest.raises(DatasetError, match=r"val\.txt line 1: label 3 but the training index names 3 classes"):
        build_data(load_config(None, base))
    (root / "classes.txt").write_text("class_0\nclass_1\nclass_2\n")
    (root / "val.txt").write_text("class_0/000.JPEG 0\n")
    data = build_data(load_config(None, base + ["data.classes_file=classes.txt"]))
    assert data.val.classes == ("class_0", "class_1", "class_2") and len(data.val) == 1
    (root / "all.txt").write_text("train/class_0/000.JPEG 0\nval/class_1/000.JPEG 1\n")  # paths from data.root
    data = build_data(load_config(None, base + ["data.train_list=all.txt", "data.train_split=."]))
    assert data.train.root == root.resolve() and data.train.paths.tolist() == ["train/class_0/000.JPEG",
                                                                               "val/class_1/000.JPEG"]


@pytest.mark.parametrize("extra,match", [
    (["data.dataset=cifar10", "data.train_list=t.txt"], "data.train_list: only with data.dataset=folder"),
    (["data.val_list=v.txt", "data.val_labels_csv=v.csv"], "data.val_labels_csv: .* set one of them"),
    (["data.classes_file=c.txt"], "data.classes_file: names the classes of data.train_list"),
])
def test_config_cross_checks(extra, match, tmp_path):
    with pytest.raises(ConfigError, match=match):
        load_config(None, overrides(tmp_path, tmp_path, *extra))


# ----------------------------------------------------------------- flat validation folder + CSV
def test_parse_val_solution():
    rows = parse_val_solution("\ufeff" + HEADER + "ILSVRC2012_val_00000001,n01751748 65 90 300 400 n01751748 1 2 3 4\n"
                              "ILSVRC2012_val_00000002,n09193705 1 2 3 4\n", "v.csv")
    assert rows == [("ILSVRC2012_val_00000001", "n01751748", 2), ("ILSVRC2012_val_00000002", "n09193705", 3)]


@pytest.mark.parametrize("text,match", [
    ("ImageId,Label\nx,n1 1 2 3 4\n", "v.csv line 1: header"),
    (HEADER + "x,n1 1 2 3 4\ny\n", "v.csv line 3: 1 fields"),
    (HEADER + "x,n1 1 2 3 4\ny,\n", "v.csv line 3: empty PredictionString"),
    (HEADER + "x,n1 1 2 3 4\nx,n2 1 2 3 4\n", r"v.csv line 3: image 'x' again \(first at line 2\)"),
    (HEADER, "v.csv: no rows"),
])
def test_val_solution_errors(text, match):
    with pytest.raises(DatasetError, match=match):
        parse_val_solution(text, "v.csv")


def _flat(tmp_path: Path, n: int = 4) -> Tuple[Path, Path]:
    """A flat folder of ``n`` JPEGs named like ImageNet's, and a CSV labelling them a, b, a, b, ..."""
    src = write_jpeg_folder(tmp_path / "src", classes=1, per_class=n)
    flat = tmp_path / "val"
    flat.mkdir()
    rows = [HEADER]
    for i, f in enumerate(sorted((src / "class_00").iterdir()), 1):
        shutil.copy(f, flat / f"ILSVRC2012_val_{i:08d}.JPEG")
        rows.append(f"ILSVRC2012_val_{i:08d},{'ab'[i % 2]} 1 2 3 4\n")
    (tmp_path / "v.csv").write_text("".join(rows))
    return flat, tmp_path / "v.csv"


def test_flat_val_maps_synsets_to_training_order(tmp_path, caplog):
    flat, csv_file = _flat(tmp_path, 4)
    shutil.copy(flat / "ILSVRC2012_val_00000001.JPEG", flat / "stray.JPEG")
    with caplog.at_level(logging.WARNING):
        index = index_flat_val(flat, csv_file, classes=("b", "a", "c"))
    assert index.paths.tolist() == [f"ILSVRC2012_val_{i:08d}.JPEG" for i in range(1, 5)]
    assert index.labels.tolist() == [0, 1, 0, 1]  # 1 -> 'b' (class 0), 2 -> 'a' (class 1)
    assert index.classes == ("b", "a", "c")
    assert "1 images in" in caplog.text and "stray.JPEG" in caplog.text


def test_flat_val_errors_name_the_image(tmp_path):
    flat, csv_file = _flat(tmp_path, 8)
    with pytest.raises(DatasetError, match=r"v\.csv: 4 images have a synset that is not a training class: "
                                           r"ILSVRC2012_val_00000002 \(line 3: 'a'\)"):
        index_flat_val(flat, csv_file, classes=("b", "c"))
    for i in (2, 3):
        (flat / f"ILSVRC2012_val_{i:08d}.JPEG").unlink()
    with pytest.raises(DatasetError, match=r"v\.csv: 2 of 8 listed files do not exist under .*: "
                                           r"line 3 'ILSVRC2012_val_00000002.JPEG', line 4 'ILSVRC2012_val_00000003"):
        index_flat_val(flat, csv_file, classes=("a", "b"))
    assert len(index_flat_val(flat, csv_file, ("a", "b"), exclude=["ILSVRC2012_val_00000002.JPEG",
                                                                   "ILSVRC2012_val_00000003.JPEG"])) == 6


@pytest.mark.slow
def test_flat_val_gives_the_accuracy_of_its_class_folder_copy(tmp_path):
    root = write_colour_dataset(tmp_path / "d", train_per_class=16, val_per_class=5)
    csv_text, n_val = flatten_val(root / "val", root / "val_flat")
    (root / "LOC_val_solution.csv").write_text(csv_text)
    flat_args = overrides(root, tmp_path / "c", "train.epochs=2", "data.val_split=val_flat",
                          "data.val_labels_csv=LOC_val_solution.csv")
    cfg_flat = load_config(None, flat_args)
    records = run_training(cfg_flat, output_dir=tmp_path / "run")
    top1 = records[-1]["val_top1"]
    assert records[-1]["val_samples"] == n_val and top1 > 100.0 / len(PALETTE)  # it learned: labels line up
    # the trained model on the class-folder copy of the same images
    cfg_folder = load_config(None, overrides(root, tmp_path / "c", "train.epochs=2"))
    results = []
    for cfg in (cfg_flat, cfg_folder):
        rt = init_runtime(cfg)
        data = build_data(cfg)
        model = build_model("tiny", data.num_classes)
        model.load_state_dict(torch.load(tmp_path / "run" / "last.pth", weights_only=True)["model"])
        _, val_it = build_iterators(cfg, data, make_policy("full", len(data.train), seed=0), rt)
        try:
            results.append(evaluate(model, val_it, cfg, rt))
        finally:
            val_it.close()
    assert results[0]["val_top1"] == pytest.approx(top1)
    assert results[0]["val_top1"] == pytest.approx(results[1]["val_top1"])
    assert results[0]["val_loss"] == pytest.approx(results[1]["val_loss"], rel=1e-4)
    assert results[0]["val_samples"] == results[1]["val_samples"] == n_val


# ----------------------------------------------------------------- check-data on a list
def test_check_data_on_a_file_list_finds_bad_and_missing_files(tmp_path, capsys):
    root = write_colour_dataset(tmp_path / "d", train_per_class=3, val_per_class=1)
    index = SampleIndex.scan(root / "train", cache_dir=tmp_path / "c")
    lines = list_lines(index) + ["class_2/gone.JPEG 2"]
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    (root / "train" / "class_1" / "001.JPEG").write_bytes(b"not a jpeg at all")
    out = tmp_path / "bad.txt"
    code = check_data_cli.main([str(root / "train"), "--file-list", str(root / "train.txt"), "--output", str(out),
                            "--no-progress", "--workers", "1"])
    assert code == 1
    printed = capsys.readouterr().out
    assert "class_2/gone.JPEG: missing" in printed and "class_1/001.JPEG: not_an_image" in printed
    args = overrides(root, tmp_path / "c", "train.eval_every=0", "data.train_list=train.txt")
    with pytest.raises(DatasetError, match=r"train\.txt: 1 of 10 listed files do not exist .*line 10 'class_2/gone"):
        build_data(load_config(None, args))
    data = build_data(load_config(None, args + [f"data.exclude_file={out}"]))
    assert len(data.train) == 8 and "class_1/001.JPEG" not in data.train.paths.tolist()


def test_check_data_on_a_flat_val_folder(tmp_path, capsys):
    flat, csv_file = _flat(tmp_path, 3)
    (flat / "ILSVRC2012_val_00000002.JPEG").unlink()
    out = tmp_path / "bad.json"
    code = check_data_cli.main([str(flat), "--val-labels-csv", str(csv_file), "--output", str(out), "--no-progress"])
    assert code == 1
    report = json.loads(out.read_text())
    assert report["num_files"] == 2
    assert [(f["relpath"], f["reason"]) for f in report["bad_files"]] == [("ILSVRC2012_val_00000002.JPEG", "missing")]
    assert check_data_cli.main([str(flat), "--classes-file", str(csv_file), "--no-progress"]) == 2
    assert "--classes-file: only with --file-list" in capsys.readouterr().err


def test_bench_counts_the_listed_samples(tmp_path):
    from orderdp_dali.bench import run as bench_run
    from orderdp_dali.bench.config import BenchConfig
    from orderdp_dali.config import build_checked

    root = write_colour_dataset(tmp_path / "d", train_per_class=3, val_per_class=1)
    index = SampleIndex.scan(root / "train", cache_dir=tmp_path / "c")
    (root / "train.txt").write_text("\n".join(list_lines(index)[:5]) + "\n")
    (root / "classes.txt").write_text("\n".join(index.classes) + "\n")  # the val folder's classes, as training needs
    listed = {"train_list": "train.txt", "classes_file": "classes.txt", "crop": 32}
    bench = build_checked(BenchConfig, {"dataset": {"root": str(root)}, "training": {"data": listed}})
    sizes = bench_run._split_sizes(root, bench)
    assert sizes["train_size"] == 5 and sizes["val_size"] == 3


def test_flat_val_two_rows_one_file(tmp_path):
    flat, csv_file = _flat(tmp_path, 2)
    csv_file.write_text(csv_file.read_text() + "ILSVRC2012_val_00000001.JPEG,a 1 2 3 4\n")
    with pytest.raises(DatasetError, match=r"v\.csv line 4: image 'ILSVRC2012_val_00000001.JPEG' is the file .* 2"):
        index_flat_val(flat, csv_file, classes=("a", "b"))


@pytest.mark.parametrize("key", ["train_list", "classes_file", "val_list", "val_labels_csv"])
def test_a_missing_config_file_names_its_key(key, tmp_path):
    root = write_colour_dataset(tmp_path / "d", train_per_class=1, val_per_class=1)
    (root / "t.txt").write_text("class_0/000.JPEG 0\nclass_1/000.JPEG 1\n")
    args = ["data.train_list=t.txt"] if key == "classes_file" else []
    with pytest.raises(DatasetError, match=rf"^data\.{key}: .*nope\.txt is not a file"):
        build_data(load_config(None, overrides(root, tmp_path / "c", f"data.{key}=nope.txt", *args)))


# ----------------------------------------------------------------- issue 22: huge labels, FIFOs in a list
def test_a_huge_label_without_classes_file_is_an_error_naming_the_line(tmp_path):
    """Issue 22.12: label 2e9 without a classes file ran 30 s into 'out of memory: lower train.batch_size';
    a 26-digit label raised OverflowError."""
    import time

    split = write_jpeg_folder(tmp_path / "train", classes=2, per_class=1)
    (tmp_path / "l.txt").write_text("class_00/img_000.JPEG 0\nclass_01/img_000.JPEG 2000000000\n")
    started = time.perf_counter()
    with pytest.raises(DatasetError, match=r"l\.txt line 2: label 2000000000 without a classes file .*classes_file"):
        index_file_list(tmp_path / "l.txt", split)
    assert time.perf_counter() - started < 5
    (tmp_path / "l.txt").write_text("class_00/img_000.JPEG 0\nclass_01/img_000.JPEG " + "9" * 26 + "\n")
    with pytest.raises(DatasetError, match=r"l\.txt line 2: label 9{26} is too large for a class index"):
        index_file_list(tmp_path / "l.txt", split)
    args = ["--file-list", str(tmp_path / "l.txt"), "--no-progress"]
    assert check_data_cli.main([str(split), *args]) == 2  # check-data refuses it with the same message


def test_a_listed_fifo_is_refused_before_training_opens_it(tmp_path):
    """Issue 22.10: a FIFO named like an image hangs the reader; a listed one is named, with its line."""
    import os

    split = write_jpeg_folder(tmp_path / "train", classes=2, per_class=1)
    os.mkfifo(split / "class_01" / "x.JPEG")
    (tmp_path / "l.txt").write_text("class_00/img_000.JPEG 0\nclass_01/img_000.JPEG 1\nclass_01/x.JPEG 1\n")
    with pytest.raises(DatasetError, match=r"l\.txt: 1 listed files .* no regular files .*line 3 'class_01/x\.JPEG'"):
        index_file_list(tmp_path / "l.txt", split)
    report = check_data.check_dataset(split, index=index_file_list(tmp_path / "l.txt", split, check_exists=False),
                                      workers=1, progress=False)
    assert [(f.relpath, f.reason) for f in report.bad] == [("class_01/x.JPEG", "not_a_file")]
    out = check_data.write_report(report, tmp_path / "bad.txt")
    index = index_file_list(tmp_path / "l.txt", split, exclude=load_exclusion_list(out, split))
    assert index.paths.tolist() == ["class_00/img_000.JPEG", "class_01/img_000.JPEG"]

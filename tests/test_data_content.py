"""A resume notices data whose contents changed (issue 22.6), without refusing untouched or
copied data, and checkpoints written before content fingerprints keep loading (with a note)."""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pytest
import torch
from train_helpers import overrides, write_colour_dataset

from orderdp_dali.checkpoint import LAST, load_checkpoint, save_checkpoint
from orderdp_dali.config import load_config
from orderdp_dali.data.folder import SampleIndex
from orderdp_dali.errors import CheckpointError
from orderdp_dali.make_shards import folder_to_shards
from orderdp_dali.train import run_training


def cfg(root: Path, cache: Path, *extra: str):
    return load_config(None, overrides(root, cache, "train.eval_every=0", *extra))


@pytest.fixture()
def trained(tmp_path):
    """A copy of a small colour dataset and a finished one-epoch run on it."""
    root = write_colour_dataset(tmp_path / "data", train_per_class=4, val_per_class=1)
    out = tmp_path / "run"
    run_training(cfg(root, tmp_path / "c", "train.epochs=1"), output_dir=out)
    return root, out


def _rewrite_in_place(path: Path, data: bytes) -> None:
    with open(path, "r+b") as f:  # same name and inode: the folder's mtime does not change
        f.truncate(0)
        f.write(data)


def test_an_untouched_or_copied_dataset_resumes(trained, tmp_path):
    root, out = trained
    records = run_training(cfg(root, tmp_path / "c", "train.epochs=2"), output_dir=out, resume="auto")
    assert [r["epoch"] for r in records] == [1]
    copy = tmp_path / "moved"
    shutil.copytree(root, copy)  # copy2 keeps mtimes, as cp -a and rsync -a do
    # data.rescan says how the index is built, not what the epochs compute: a resume may set it
    records = run_training(cfg(copy, tmp_path / "c", "train.epochs=3", "data.rescan=true"), output_dir=out,
                           resume="auto")
    assert [r["epoch"] for r in records] == [2]


def test_an_image_replaced_under_its_name_is_refused_on_resume(trained, tmp_path):
    """Issue 22.6: the fingerprint covered names and labels only, so this resumed with 'resumed from ...'."""
    root, out = trained
    victim = root / "train" / "class_1" / "002.JPEG"
    _rewrite_in_place(victim, (root / "train" / "class_0" / "000.JPEG").read_bytes())  # cp onto it does this
    before = (out / LAST).read_bytes()
    with pytest.raises(CheckpointError, match=r"same files and labels .*size or mtime of some file differs now: "
                                              r"a file was replaced .*cp -a or rsync -a"):
        run_training(cfg(root, tmp_path / "c", "train.epochs=2"), output_dir=out, resume="auto")
    assert (out / LAST).read_bytes() == before


def test_a_rebuilt_shard_is_refused_on_resume(tmp_path):
    folder = write_colour_dataset(tmp_path / "folder", train_per_class=4, val_per_class=1)
    tar = tmp_path / "tar"
    folder_to_shards(folder, tar, shard_size=5, cache_dir=tmp_path / "c")
    out = tmp_path / "run"
    run_training(cfg(tar, tmp_path / "c", "data.dataset=tar", "train.epochs=1"), output_dir=out)
    images = folder / "train"
    _rewrite_in_place(images / "class_1" / "002.JPEG", (images / "class_0" / "000.JPEG").read_bytes())
    folder_to_shards(folder, tar, shard_size=5, cache_dir=tmp_path / "c")  # the same member names, other bytes
    with pytest.raises(CheckpointError, match="same files and labels"):
        run_training(cfg(tar, tmp_path / "c", "data.dataset=tar", "train.epochs=2"), output_dir=out, resume="auto")


def test_a_checkpoint_from_before_content_fingerprints_resumes_with_a_note(trained, tmp_path, caplog):
    root, out = trained
    state = load_checkpoint(out / LAST)
    names = SampleIndex.scan(root / "train", cache_dir=tmp_path / "c").names_fingerprint
    assert state["dataset"].startswith("v2:") and state["dataset"] != names
    state["dataset"] = state["iterator"]["dataset"] = names  # what earlier versions wrote
    save_checkpoint(state, out / LAST)
    with caplog.at_level(logging.WARNING, logger="orderdp_dali.checkpoint"):
        records = run_training(cfg(root, tmp_path / "c", "train.epochs=2"), output_dir=out, resume="auto")
    assert [r["epoch"] for r in records] == [1]
    notes = [r.getMessage() for r in caplog.records if "predates content fingerprints" in r.getMessage()]
    assert len(notes) == 1 and "\n" not in notes[0]
    assert torch.load(out / LAST, weights_only=True)["dataset"].startswith("v2:")  # written anew
    other = load_checkpoint(out / LAST)
    other["dataset"] = "0" * 64  # an old checkpoint of other files is still another dataset
    save_checkpoint(other, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="made on another dataset"):
        run_training(cfg(root, tmp_path / "c", "train.epochs=3"), output_dir=out, resume=str(tmp_path / "other.pth"))
    assert os.path.exists(out / LAST)

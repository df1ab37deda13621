"""SampleIndex: torchvision ImageFolder order, caching, exclusion, and clear dataset errors."""
import os
import shutil

import numpy as np
import pytest
from conftest import write_jpeg_folder
from torchvision.datasets import ImageFolder

from orderdp_dali import sample_index as si
from orderdp_dali.errors import DatasetError
from orderdp_dali.sample_index import SampleIndex


def test_matches_torchvision_imagefolder(jpeg_split, tmp_path):
    index = SampleIndex.scan(jpeg_split, cache_dir=tmp_path)
    ref = ImageFolder(str(jpeg_split))
    assert list(index.classes) == ref.classes
    assert [str(index.path(i)) for i in range(len(index))] == [p for p, _ in ref.samples]
    assert index.labels.tolist() == [c for _, c in ref.samples]
    assert index.labels.dtype == np.int64


def test_extension_rule_and_non_images(tmp_path):
    root = write_jpeg_folder(tmp_path / "train", classes=2, per_class=2)
    (root / "class_00" / "notes.txt").write_text("not an image")
    shutil.copy(root / "class_00" / "img_000.JPEG", root / "class_00" / "upper.JPG")
    index = SampleIndex.scan(root, cache_dir=tmp_path / "c")
    names = [os.path.basename(p) for p in index.paths.tolist()]
    assert "upper.JPG" in names and "notes.txt" not in names
    assert len(index) == len(ImageFolder(str(root)))


def test_cache_is_reused_and_invalidated(tmp_path, monkeypatch):
    root = write_jpeg_folder(tmp_path / "train", classes=2, per_class=3)
    first = SampleIndex.scan(root, cache_dir=tmp_path / "cache")
    calls = []
    real_scan = si._scan
    monkeypatch.setattr(si, "_scan", lambda d: calls.append(d) or real_scan(d))
    again = SampleIndex.scan(root, cache_dir=tmp_path / "cache")
    assert calls == [] and again.fingerprint == first.fingerprint
    # Adding a file changes its class folder's mtime: the cache must not be trusted.
    shutil.copy(root / "class_01" / "img_000.JPEG", root / "class_01" / "img_new.JPEG")
    os.utime(root / "class_01", ns=(1, os.stat(root / "class_01").st_mtime_ns + 10**9))
    fresh = SampleIndex.scan(root, cache_dir=tmp_path / "cache")
    assert len(calls) == 1 and len(fresh) == len(first) + 1


def test_fingerprint_tells_datasets_apart(tmp_path):
    a = SampleIndex.scan(write_jpeg_folder(tmp_path / "a", 2, 3), cache_dir=tmp_path / "c")
    b = SampleIndex.scan(write_jpeg_folder(tmp_path / "b", 2, 4), cache_dir=tmp_path / "c")
    assert a.fingerprint != b.fingerprint


def test_exclusion_list(tmp_path):
    root = write_jpeg_folder(tmp_path / "train", classes=2, per_class=3)
    bad = [root / "class_00" / "img_001.JPEG", "class_01/img_002.JPEG"]
    index = SampleIndex.scan(root, cache_dir=tmp_path / "c", exclude=bad)
    assert len(index) == 4
    assert "class_00/img_001.JPEG" not in index.paths.tolist()
    assert "class_01/img_002.JPEG" not in index.paths.tolist()


def test_exclusion_emptying_a_class_is_an_error(tmp_path):
    root = write_jpeg_folder(tmp_path / "train", classes=2, per_class=1)
    with pytest.raises(DatasetError, match="class_00"):
        SampleIndex.scan(root, cache_dir=tmp_path / "c", exclude=["class_00/img_000.JPEG"])


def test_missing_split_names_the_path(tmp_path):
    with pytest.raises(DatasetError, match="nowhere"):
        SampleIndex.scan(tmp_path / "nowhere" / "train", cache_dir=tmp_path)


def test_empty_class_folder_names_the_folder(tmp_path):
    root = write_jpeg_folder(tmp_path / "train", classes=2, per_class=2)
    (root / "class_99_empty").mkdir()
    with pytest.raises(DatasetError, match="class_99_empty"):
        SampleIndex.scan(root, cache_dir=tmp_path / "c")


def test_split_without_class_folders(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(DatasetError, match="no class folders"):
        SampleIndex.scan(tmp_path / "train", cache_dir=tmp_path / "c")


def test_unicode_space_and_symlinked_class(tmp_path):
    root = write_jpeg_folder(tmp_path / "tr ain", classes=1, per_class=2)
    other = write_jpeg_folder(tmp_path / "elsewhere", classes=1, per_class=1)
    os.rename(root / "class_00", root / "klasse ü")
    os.symlink(other / "class_00", root / "linked")
    index = SampleIndex.scan(root, cache_dir=tmp_path / "c")
    assert list(index.classes) == ["klasse ü", "linked"]
    assert index.labels.tolist() == [0, 0, 1]
    assert all(index.path(i).exists() for i in range(len(index)))

"""Tar shards: a folder dataset and its tar copy train identically; every bad shard names shard and key."""
import io
import os
import shutil
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_jpeg_folder

from orderdp_dali import DALIPlanIterator, SampleIndex, make_policy
from orderdp_dali.check_data import check_dataset
from orderdp_dali.cli.check_data import main as check_main
from orderdp_dali.config import load_config
from orderdp_dali.data import tar as ts
from orderdp_dali.data.exclusions import load_exclusion_list
from orderdp_dali.data.fingerprints import compare_fingerprints
from orderdp_dali.data.tar import TarIndex
from orderdp_dali.data.tar_format import member_id, sample_key, split_member_name
from orderdp_dali.errors import DatasetError, DecodeError
from orderdp_dali.make_shards import folder_to_shards
from orderdp_dali.pipelines import ImagePipelineConfig

SMALL = ImagePipelineConfig(crop=16, val_resize=20)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A folder dataset (train 4 classes x 13, val 4 x 3) and its tar copy, 5 samples a shard."""
    base = tmp_path_factory.mktemp("pair")
    write_jpeg_folder(base / "folder" / "train", classes=4, per_class=13)
    write_jpeg_folder(base / "folder" / "val", classes=4, per_class=3, seed=1)
    written = folder_to_shards(base / "folder", base / "tar", shard_size=5, cache_dir=base / "cache")
    assert [len(v) for v in written.values()] == [11, 3]  # 52 -> 11 shards (boundaries inside classes)
    return base / "folder", base / "tar"


def _iterate(index, policy, epochs, augment=False):
    it = DALIPlanIterator(index, policy, 8, device="cpu", num_threads=1, augment=augment,
                          pipeline_config=SMALL, sync_scores=False, train=policy is not None)
    out = []
    with it:
        for _ in range(epochs):
            data, idx, labels = [], [], []
            for b in it:
                data.append(b["data"])
                idx.append(b["index"])
                labels.append(b["label"])
                if policy is not None:
                    it.update(b["index"], b["data"].mean(dim=(1, 2, 3)))  # a loss that depends on the pixels
            out.append((torch.cat(data), torch.cat(idx), torch.cat(labels)))
    return out


def test_folder_and_its_tar_copy_give_the_same_plans_labels_and_images(pair, tmp_path):
    folder, tar = pair
    f = SampleIndex.scan(folder / "train", cache_dir=tmp_path)
    t = TarIndex.scan(tar / "train", cache_dir=tmp_path)
    assert len(t) == len(f) == 52 and t.classes == f.classes  # class names from classes.txt
    assert t.labels.tolist() == f.labels.tolist()
    assert [t.key(i) for i in range(len(t))] == [os.path.splitext(p)[0] for p in f.paths.tolist()]
    runs = []
    for index in (f, t):
        policy = make_policy("orderdp", len(index), seed=7, random_len_ratio=0.75, top_q_ratio=0.6)
        runs.append(_iterate(index, policy, epochs=3))
    for (fd, fi, fl), (td, ti, tl) in zip(*runs):
        assert fi.tolist() == ti.tolist()  # same plans (scores came from the decoded pixels)
        assert fl.tolist() == tl.tolist() == f.labels[fi.numpy()].tolist()
        assert torch.equal(fd, td)  # the same bytes through the same decoder
    assert len({tuple(r[1].tolist()) for r in runs[0]}) == 3  # the epochs' plans differ


def test_validation_split_uses_the_training_classes_and_build_data_selects_tar(pair, tmp_path):
    from orderdp_dali.train import build_data

    _, tar = pair
    (tar / "classes.txt").rename(tar / "classes.bak")
    try:
        cfg = load_config(None, [f"data.root={tar}", "data.dataset=tar", f"data.cache_dir={tmp_path}",
                                 "model.name=tiny"])
        data = build_data(cfg)
        assert isinstance(data.train, TarIndex) and isinstance(data.val, TarIndex)
        assert data.train.classes == data.val.classes == ("0", "1", "2", "3")  # num_classes = max label + 1
        assert data.num_classes == 4 and len(data.val) == 12
    finally:
        (tar / "classes.bak").rename(tar / "classes.txt")
    (f_val,) = [r for r in _iterate(data.val, None, epochs=1)]
    assert f_val[1].tolist() == list(range(12))


def test_make_data_format_tar_writes_shards_of_the_generated_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("ORDERDP_DALI_CACHE", str(tmp_path / "cache"))
    from orderdp_dali.cli.make_data import main

    out = tmp_path / "gen"
    assert main([str(out), "--classes", "3", "--train-per-class", "5", "--val-per-class", "2", "--workers", "1",
                 "--format", "tar", "--shard-size", "4"]) == 0
    assert sorted(p.name for p in (out / "tar" / "train").iterdir()) == [f"gen-train-000{k}.tar" for k in range(4)]
    f = SampleIndex.scan(out / "train", cache_dir=tmp_path)
    t = TarIndex.scan(out / "tar" / "train", cache_dir=tmp_path)
    assert t.classes == f.classes and t.labels.tolist() == f.labels.tolist()
    for i in (0, 7, 14):  # the bytes are the files'
        data = ts.TarSamples(t).fetch(np.array([i]))[0]
        assert data.tobytes() == f.path(i).read_bytes()


def test_a_rerun_with_bigger_shards_leaves_no_stale_shard(pair, tmp_path, monkeypatch):
    monkeypatch.setenv("ORDERDP_DALI_CACHE", str(tmp_path / "cache"))
    folder, _ = pair
    folder_to_shards(folder, tmp_path / "t", shard_size=5, splits=["train"])
    folder_to_shards(folder, tmp_path / "t", shard_size=20, splits=["train"])
    assert len(list((tmp_path / "t" / "train").glob("*.tar"))) == 3
    assert len(TarIndex.scan(tmp_path / "t" / "train", cache_dir=tmp_path)) == 52


# ----------------------------------------------------------------------------- bad shards


def _jpeg(seed=0) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (24, 20, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _tar(path: Path, members) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def _good(prefix="k", n=3, label=0):
    return [m for i in range(n) for m in ((f"{prefix}{i}.jpg", _jpeg(i)), (f"{prefix}{i}.cls", str(label).encode()))]


def _cut_inside(path: Path, member: str) -> None:
    """Truncate ``path`` in the middle of ``member``'s data."""
    with tarfile.open(path) as tf:
        m = tf.getmember(member)
    with open(path, "r+b") as f:
        f.truncate(m.offset_data + m.size // 2)


@pytest.mark.parametrize(
    "members, cut, reason, key",
    [
        (_good() + [("x.jpg", _jpeg(9))], None, "missing_label", "x"),
        (_good() + [("x.cls", b"1")], None, "missing_image", "x"),
        (_good() + [("x.jpg", _jpeg(9)), ("x.cls", b"one")], None, "bad_label", "x"),
        (_good() + [("x.jpg", _jpeg(9)), ("x.cls", b"-1")], None, "bad_label", "x"),
        (_good() + [("k1.jpg", _jpeg(9))], None, "duplicate_key", "k1"),
        (_good(), "k1.jpg", "truncated", "k1"),
        (_good(), "k2.cls", "truncated", "k2"),
    ],
)
def test_a_bad_shard_is_an_error_naming_shard_and_key(tmp_path, members, cut, reason, key):
    split = tmp_path / "train"
    _tar(split / "a-train-0000.tar", _good("a"))
    shard = _tar(split / "a-train-0001.tar", members)
    if cut:
        _cut_inside(shard, cut)
    with pytest.raises(DatasetError) as e:
        TarIndex.scan(split, cache_dir=tmp_path)
    msg = str(e.value)
    assert f"{shard}, key {key}: {reason}" in msg and "\n" not in msg


def test_a_shard_cut_at_a_header_or_not_a_tar_is_an_error(tmp_path):
    split = tmp_path / "train"
    shard = _tar(split / "s-0000.tar", _good())
    with tarfile.open(shard) as tf:
        end = tf.getmember("k1.cls").offset_data + 512  # k1.cls's data block; k2.jpg's header follows
    with open(shard, "r+b") as f:
        f.truncate(end + 100)  # inside k2.jpg's header
    with pytest.raises(DatasetError, match=r"s-0000\.tar, key k1: truncated: the shard ends inside the member after"):
        TarIndex.scan(split, cache_dir=tmp_path)
    shard.write_bytes(b"\x1f\x8b" + bytes(600))  # gzip magic: a compressed shard
    with pytest.raises(DatasetError, match=r"s-0000\.tar: not_a_tar"):
        TarIndex.scan(split, cache_dir=tmp_path)


def test_check_data_names_every_bad_sample_and_its_list_excludes_them(tmp_path, capsys):
    split = tmp_path / "ds" / "train"
    good = _jpeg(5)
    corrupt = good[: len(good) // 2] + bytes(range(256)) + good[len(good) // 2 + 256 :]  # only a decode sees it
    _tar(split / "d-train-0000.tar", _good("a", 4))
    _tar(split / "d-train-0001.tar", _good("b", 2) + [("c.jpg", corrupt), ("c.cls", b"1"),
                                                        ("d.jpg", _jpeg(6)[:-300]), ("d.cls", b"1"),
                                                        ("e.jpg", _jpeg(7))])
    _tar(split / "d-train-0002.tar", _good("f", 3))
    _cut_inside(split / "d-train-0002.tar", "f2.jpg")
    (tmp_path / "ds" / "val" / "c").mkdir(parents=True)  # a class-folder split beside a tar split
    _tar(tmp_path / "ds" / "val" / "stray.tar", _good())
    with pytest.raises(DatasetError, match="split.s. val hold no tar shards"):
        check_dataset(tmp_path / "ds", progress=False, workers=1)
    shutil.rmtree(tmp_path / "ds" / "val")
    shallow = check_dataset(tmp_path / "ds", progress=False, workers=1)
    deep = check_dataset(tmp_path / "ds", deep=True, progress=False, workers=2)
    assert deep.num_files == 4 + 4 + 2
    found = {(f.relpath, f.reason) for f in deep.bad}
    assert found == {("d-train-0001.tar/c.jpg", "decode_error"), ("d-train-0001.tar/d.jpg", "truncated"),
                     ("d-train-0001.tar/e.jpg", "missing_label"), ("d-train-0002.tar/f2.jpg", "truncated")}
    assert {(f.relpath, f.reason) for f in shallow.bad} == found - {("d-train-0001.tar/c.jpg", "decode_error")}
    out = tmp_path / "bad.txt"
    assert check_main([str(tmp_path / "ds"), "--deep", "--no-progress", "--output", str(out), "--workers", "1"]) == 1
    assert "d-train-0001.tar/e.jpg: missing_label" in capsys.readouterr().out
    listed = load_exclusion_list(out, tmp_path / "ds")
    index = TarIndex.scan(split, cache_dir=tmp_path, exclude=listed)
    assert len(index) == 4 + 2 + 2  # c and d dropped; e and f2 never were samples
    assert "d-train-0001.tar/b1.jpg" in index.ids and "d-train-0001.tar/c.jpg" not in index.ids
    whole = TarIndex.scan(split, cache_dir=tmp_path, exclude=listed | {str(split / "d-train-0000.tar")})
    assert len(whole) == 4


def test_a_corrupt_jpeg_in_a_shard_fails_the_pipeline_naming_shard_and_key(tmp_path):
    split = tmp_path / "train"
    shard = _tar(split / "s-train-0000.tar", _good("a", 6) + _good("b", 6, label=1))
    index = TarIndex.scan(split, cache_dir=tmp_path)
    bad = index.key(8)
    with open(shard, "r+b") as f:  # same length, not an image any more: the index stays valid
        f.seek(int(index.offsets[8]))
        f.write(b"garbage!" * (int(index.sizes[8]) // 8))
    it = DALIPlanIterator(index, None, 4, device="cpu", num_threads=1, pipeline_config=SMALL)
    with pytest.raises(DecodeError) as e:
        for _ in it:
            pass
    assert f"sample 8 ({shard}, key {bad}) in epoch 0, step 2: not_an_image" in str(e.value)


# ----------------------------------------------------------------------------- the index cache


def _age(*paths: Path, seconds: float = 30) -> None:
    t = time.time() - seconds
    for p in paths:
        os.utime(p, (t, t))


def test_the_index_cache_is_used_until_a_shard_changes(tmp_path, monkeypatch):
    split = tmp_path / "train"
    a = _tar(split / "s-0000.tar", _good("a"))
    b = _tar(split / "s-0001.tar", _good("b", label=1))
    _age(a, b, split)
    first = TarIndex.scan(split, cache_dir=tmp_path)
    calls = []
    real = ts.index_shards
    monkeypatch.setattr(ts, "index_shards", lambda paths, workers=None: calls.append(paths) or real(paths, workers))
    again = TarIndex.scan(split, cache_dir=tmp_path)
    assert calls == [] and again.fingerprint == first.fingerprint
    _tar(b, _good("b", 4, label=1))  # rewritten in place: size and mtime change
    _age(b, split, seconds=20)
    assert len(TarIndex.scan(split, cache_dir=tmp_path)) == 7 and len(calls) == 1
    c = _tar(split / "s-0002.tar", _good("c", 1))  # a new shard
    _age(c, split, seconds=10)
    assert len(TarIndex.scan(split, cache_dir=tmp_path)) == 8 and len(calls) == 2
    assert len(TarIndex.scan(split, cache_dir=tmp_path)) == 8 and len(calls) == 2


def test_labels_outside_the_classes_file_and_member_names(tmp_path):
    split = tmp_path / "train"
    _tar(split / "s-0000.tar", _good("a", 2, label=0) + _good("b", 1, label=2))
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    with pytest.raises(DatasetError, match=r"s-0000\.tar, key b0: label 2 is outside the 2 classes"):
        TarIndex.scan(split, cache_dir=tmp_path)
    (split / "classes.txt").write_text("cat\ndog\nemu\n")  # the split's own file comes first
    assert TarIndex.scan(split, cache_dir=tmp_path).classes == ("cat", "dog", "emu")
    assert split_member_name("n01/x_1.tar.gz") == ("n01/x_1", "tar.gz")
    assert split_member_name("a.b/c.JPEG") == ("a.b/c", "jpeg")
    assert split_member_name("._c.jpg") == ("", "")


# ----------------------------------------------------------------------------- issue 22: keys, member names, labels


def test_members_with_several_dots_pair_by_the_name_before_the_last_dot(tmp_path):
    """Issue 22.8: img.v2.jpg + img.v2.cls were skipped by the first-dot key rule without a word."""
    split = tmp_path / "train"
    extra = [("a0.seg.png", _jpeg(8)), ("a0.json", b"{}")]  # other webdataset fields of sample a0: not ours
    _tar(split / "s-0000.tar", _good("a", 2) + extra + [("img.v2.jpg", _jpeg(3)), ("img.v2.cls", b"1"),
                                                        ("n/x.y.z.JPEG", _jpeg(4)), ("n/x.y.z.cls", b"0")])
    index = TarIndex.scan(split, cache_dir=tmp_path)
    assert index.members.tolist() == ["a0.jpg", "a1.jpg", "img.v2.jpg", "n/x.y.z.JPEG"]
    assert [index.key(i) for i in range(len(index))] == ["a0", "a1", "img.v2", "n/x.y.z"]
    assert index.labels.tolist() == [0, 0, 1, 0]
    assert sample_key("img.v2.jpg") == ("img.v2", "jpg") and sample_key("a.seg.png") == ("a.seg", "png")
    assert sample_key("k.tar.gz") == ("k", "tar.gz") and sample_key("k.jpg") == ("k", "jpg")
    # an image keyed so without its label, and no sample under its first-dot key: a problem, named
    _tar(split / "s-0001.tar", _good("b", 1) + [("orphan.v2.jpg", _jpeg(5))])
    with pytest.raises(DatasetError, match=r"s-0001\.tar, key orphan\.v2: missing_label"):
        TarIndex.scan(split, cache_dir=tmp_path)
    report = check_dataset(split, progress=False, workers=1)
    assert [(f.relpath, f.reason) for f in report.bad] == [("s-0001.tar/orphan.v2.jpg", "missing_label")]
    assert report.num_files == 4 + 1


@pytest.mark.parametrize("name", ["../evil.jpg", "/abs/evil.jpg", "./dot/evil.jpg", "a//evil.jpg"])
def test_check_data_entries_for_odd_member_names_exclude_that_member(tmp_path, name):
    """Issue 22.8: '<shard>.tar/../evil.jpg' matched nothing once normalised, and an absolute member
    name lost the shard from the entry: the list was refused or silently excluded nothing."""
    root = tmp_path / "ds"
    split = root / "train"
    stem = name[: -len(".jpg")]
    _tar(split / "s-0000.tar", _good("a", 3) + [(name, b"GIF89a garbage"), (f"{stem}.cls", b"0")])
    assert len(TarIndex.scan(split, cache_dir=tmp_path)) == 4  # a sample: only its content is bad
    bad = check_dataset(root, progress=False, workers=1).bad
    assert [(f.relpath, f.reason) for f in bad] == [(f"s-0000.tar/{member_id(name)}", "unsupported_format")]
    assert "/" not in member_id(name) and member_id("n0/ok.jpg") == "n0/ok.jpg"
    for suffix in (".txt", ".json"):
        out = tmp_path / f"bad{suffix}"
        assert check_main([str(root), "--no-progress", "--workers", "1", "--output", str(out)]) == 1
        index = TarIndex.scan(split, cache_dir=tmp_path, exclude=load_exclusion_list(out, root))
        assert index.members.tolist() == ["a0.jpg", "a1.jpg", "a2.jpg"]


def test_a_huge_or_overlong_label_names_shard_and_key(tmp_path):
    """Issue 22.12: a 26-digit .cls raised OverflowError; 2e9 without classes.txt ran out of memory."""
    root = tmp_path / "ds"
    split = root / "train"
    _tar(split / "s-0000.tar", _good("a", 2) + [("big.jpg", _jpeg(1)), ("big.cls", b"2" * 26)])
    with pytest.raises(DatasetError, match=r"s-0000\.tar, key big: bad_label: .* too large for a class index"):
        TarIndex.scan(split, cache_dir=tmp_path)
    _tar(split / "s-0000.tar", _good("a", 2) + [("big.jpg", _jpeg(1)), ("big.cls", b"2000000000")])
    with pytest.raises(DatasetError, match=r"s-0000\.tar, key big: label 2000000000 with no classes\.txt .*fix the"):
        TarIndex.scan(split, cache_dir=tmp_path)
    out = tmp_path / "bad.json"
    assert check_main([str(root), "--no-progress", "--workers", "1", "--output", str(out)]) == 1
    index = TarIndex.scan(split, cache_dir=tmp_path, exclude=load_exclusion_list(out, root))
    assert len(index) == 2 and index.classes == ("0",)


def test_member_and_shard_names_that_are_not_utf8_are_named_and_excludable(tmp_path, capsys):
    """Issue 22.12: such names passed check-data and make-shards, then failed in the fingerprint."""
    root = tmp_path / "ds"
    split = root / "train"
    odd = os.fsdecode(b"caf\xe9")
    _tar(split / "s-0000.tar", _good("a", 2) + [(f"{odd}.jpg", _jpeg(1)), (f"{odd}.cls", b"0")])
    with pytest.raises(DatasetError, match=r"s-0000\.tar, key caf\\xe9: bad_name"):
        TarIndex.scan(split, cache_dir=tmp_path)
    _tar(split / f"{odd}.tar", _good("b", 1))
    out = tmp_path / "bad.txt"
    assert check_main([str(root), "--no-progress", "--workers", "1", "--output", str(out)]) == 1
    printed = capsys.readouterr().out
    assert "s-0000.tar/caf\\xe9.jpg: bad_name" in printed and "train/caf\\xe9.tar: bad_name" in printed
    index = TarIndex.scan(split, cache_dir=tmp_path, exclude=load_exclusion_list(out, root))
    assert index.members.tolist() == ["a0.jpg", "a1.jpg"] and index.fingerprint.startswith("v2:")
    folder = tmp_path / "folder" / "train"
    write_jpeg_folder(folder, classes=2, per_class=1)
    shutil.copy(folder / "class_00" / "img_000.JPEG", folder / "class_00" / f"{odd}.JPEG")
    with pytest.raises(DatasetError, match=r"caf\\xe9\.JPEG.*not valid UTF-8: rename it"):
        folder_to_shards(folder.parent, tmp_path / "shards", cache_dir=tmp_path)  # make-shards refuses up front


def test_the_fingerprint_covers_sample_sizes_and_shard_mtimes(tmp_path):
    """Issue 22.6: a shard rebuilt with new bytes under the same member names resumed silently."""
    split = tmp_path / "train"
    shard = _tar(split / "s-0000.tar", _good("a", 3))
    _age(shard, split)
    first = TarIndex.scan(split, cache_dir=tmp_path)
    assert TarIndex.scan(split, cache_dir=tmp_path).fingerprint == first.fingerprint
    members = _good("a", 3)
    members[2] = ("a1.jpg", _jpeg(42))  # other pixels (and size), same names and labels
    _tar(shard, members)
    again = TarIndex.scan(split, cache_dir=tmp_path)
    assert again.ids == first.ids and again.labels.tolist() == first.labels.tolist()
    assert compare_fingerprints(first.fingerprint, again.fingerprint) == "content"
    assert compare_fingerprints(first.names_fingerprint, again.fingerprint) == "legacy"
    copy = tmp_path / "copy" / "train"
    shutil.copytree(split, copy)  # mtimes kept (cp -a): the same dataset
    assert TarIndex.scan(copy, cache_dir=tmp_path).fingerprint == again.fingerprint

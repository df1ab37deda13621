"""SampleIndex: torchvision ImageFolder order, caching, exclusion, and clear dataset errors."""
import os
import shutil

import numpy as np
import pytest
from conftest import write_jpeg_folder
from torchvision.datasets import ImageFolder

from orderdp_dali.data import folder as si
from orderdp_dali.data.exclusions import load_exclusion_list
from orderdp_dali.data.fingerprints import compare_fingerprints
from orderdp_dali.data.folder import SampleIndex
from orderdp_dali.errors import DatasetError


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


# ------------------------------------------------------------ one walker, a cache that cannot go stale
def _age(root, seconds=60):
    """Make every folder's mtime ``seconds`` old, so the cache is not 'racy' (modified while scanned)."""
    for dirpath, dirnames, _ in os.walk(root):
        for d in [dirpath, *(os.path.join(dirpath, n) for n in dirnames)]:
            if not os.path.islink(d):
                st = os.stat(d)
                os.utime(d, ns=(st.st_atime_ns, st.st_mtime_ns - seconds * 10**9))


def _count_scans(monkeypatch):
    calls = []
    real_walk = si.walk_split
    monkeypatch.setattr(si, "walk_split", lambda d: calls.append(d) or real_walk(d))
    return calls


def test_cache_is_reused_and_invalidated(tmp_path, monkeypatch):
    root = write_jpeg_folder(tmp_path / "train", classes=2, per_class=3)
    _age(root)
    first = SampleIndex.scan(root, cache_dir=tmp_path / "cache")
    calls = _count_scans(monkeypatch)
    again = SampleIndex.scan(root, cache_dir=tmp_path / "cache")
    assert calls == [] and again.fingerprint == first.fingerprint
    # Adding a file changes its class folder's mtime: the cache must not be trusted.
    shutil.copy(root / "class_01" / "img_000.JPEG", root / "class_01" / "img_new.JPEG")
    fresh = SampleIndex.scan(root, cache_dir=tmp_path / "cache")
    assert len(calls) == 1 and len(fresh) == len(first) + 1


@pytest.mark.parametrize("change", ["delete", "add", "rename_dir", "delete_in_linked"])
def test_a_change_in_a_nested_folder_means_a_rescan(tmp_path, change):
    """Issue 9.5: the cache was keyed by class-folder mtimes only; deleting class/sub/x.JPEG left it stale."""
    root = write_jpeg_folder(tmp_path / "train", classes=2, per_class=2)
    deep = root / "class_00" / "sub" / "deeper"
    deep.mkdir(parents=True)
    shutil.copy(root / "class_00" / "img_000.JPEG", deep / "x.JPEG")
    other = write_jpeg_folder(tmp_path / "other", classes=1, per_class=3)
    os.symlink(other / "class_00", root / "class_01" / "linked")
    _age(tmp_path)
    cache = tmp_path / "cache"
    before = SampleIndex.scan(root, cache_dir=cache)
    assert "class_00/sub/deeper/x.JPEG" in before.paths.tolist() and len(before) == 2 + 2 + 1 + 3
    assert SampleIndex.scan(root, cache_dir=cache).fingerprint == before.fingerprint
    if change == "delete":
        (deep / "x.JPEG").unlink()
    elif change == "add":
        shutil.copy(deep / "x.JPEG", deep / "y.JPEG")
    elif change == "rename_dir":
        os.rename(deep, deep.parent / "renamed")
    else:  # a file removed inside a symlinked folder (outside the split)
        (other / "class_00" / "img_001.JPEG").unlink()
    after = SampleIndex.scan(root, cache_dir=cache)
    assert after.paths.tolist() == SampleIndex.scan(root, cache_dir=tmp_path / "fresh").paths.tolist()
    assert all(after.path(i).exists() for i in range(len(after)))
    assert len(after) == len(before) + (1 if change == "add" else 0 if change == "rename_dir" else -1)


def test_cached_load_stats_each_folder_once_and_lists_none(tmp_path, monkeypatch):
    """The cache check costs one stat per folder (not per file) and no directory listing."""
    root = write_jpeg_folder(tmp_path / "train", classes=3, per_class=5)
    (root / "class_02" / "nested").mkdir()
    shutil.copy(root / "class_02" / "img_000.JPEG", root / "class_02" / "nested" / "n.JPEG")
    _age(root)
    first = SampleIndex.scan(root, cache_dir=tmp_path / "cache")
    folders = 1 + 3 + 1  # split, classes, nested
    stats = []
    real_stat = os.stat

    def counting_stat(p, *a, **k):
        if str(p).startswith(str(root)):
            stats.append(str(p))
        return real_stat(p, *a, **k)

    def no_listing(*a, **k):
        raise AssertionError("a cached load must not list folders")

    monkeypatch.setattr(os, "stat", counting_stat)
    monkeypatch.setattr(os, "scandir", no_listing)
    monkeypatch.setattr(os, "listdir", no_listing)
    again = SampleIndex.scan(root, cache_dir=tmp_path / "cache")
    assert again.fingerprint == first.fingerprint
    assert len(stats) <= folders + 2, "\n".join(stats)  # + Path.resolve() and is_dir() of the split


def test_nested_folder_order_matches_imagefolder(tmp_path):
    """ImageFolder sorts os.walk's folders by path: 'a', 'a b', 'a/x' (a space sorts before '/')."""
    root = write_jpeg_folder(tmp_path / "train", classes=2, per_class=1)
    src = root / "class_00" / "img_000.JPEG"
    for sub in ("a", "a b", "a/x", "a-z", "B"):
        (root / "class_00" / sub).mkdir(parents=True, exist_ok=True)
        shutil.copy(src, root / "class_00" / sub / "i.jpg")
    index = SampleIndex.scan(root, cache_dir=tmp_path / "c")
    ref = ImageFolder(str(root))
    assert [str(index.path(i)) for i in range(len(index))] == [p for p, _ in ref.samples]
    assert index.labels.tolist() == [c for _, c in ref.samples]


def test_symlink_loop_is_skipped_once_and_both_walkers_agree(tmp_path, caplog):
    """Issue 9.5: a symlink loop in a class gave SampleIndex 41 samples and check-data 1 file plus 'skipped'."""
    from orderdp_dali import check_data

    root = write_jpeg_folder(tmp_path / "train", classes=2, per_class=1)
    (root / "class_00" / "sub").mkdir()
    os.symlink("..", root / "class_00" / "sub" / "loop")
    os.symlink(root / "class_01", root / "class_01" / "self")
    with caplog.at_level("WARNING", logger=si.__name__):
        index = SampleIndex.scan(root, cache_dir=tmp_path / "c")
    assert sorted(index.paths.tolist()) == ["class_00/img_000.JPEG", "class_01/img_000.JPEG"]
    assert "class_00/sub/loop" in caplog.text and "class_01/self" in caplog.text
    report = check_data.check_dataset(root, workers=1, progress=False)
    assert report.num_files == len(index)
    assert {(f.relpath, f.reason) for f in report.warnings} == {
        ("class_00/sub/loop", "symlink_loop"), ("class_01/self", "symlink_loop")
    }
    # The same folder reached twice without a loop is two folders to ImageFolder too: kept twice.
    os.symlink(root / "class_01", root / "class_00" / "twin")
    index = SampleIndex.scan(root, cache_dir=tmp_path / "c")
    assert "class_00/twin/img_000.JPEG" in index.paths.tolist()
    assert check_data.check_dataset(root, workers=1, progress=False).num_files == len(index)
    assert check_data.walk_split is si.walk_split  # one walker for both


def test_an_unreadable_folder_is_an_error_unless_excluded(tmp_path, monkeypatch):
    """os.walk (and so ImageFolder) silently skips a folder it cannot list; losing its images silently is worse."""
    root = write_jpeg_folder(tmp_path / "train", classes=2, per_class=2)
    locked = root / "class_01" / "locked"
    locked.mkdir()
    shutil.copy(root / "class_01" / "img_000.JPEG", locked / "x.JPEG")
    real_scandir = os.scandir

    def scandir(p="."):
        if os.fspath(p) == os.path.realpath(locked):
            raise PermissionError(13, "Permission denied", str(p))
        return real_scandir(p)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(DatasetError, match=r"cannot list .*class_01/locked .*Permission denied.*exclude"):
        SampleIndex.scan(root, cache_dir=tmp_path / "c")
    index = SampleIndex.scan(root, cache_dir=tmp_path / "c", exclude=[locked])
    assert len(index) == 4
    assert not list((tmp_path / "c").glob("*.npz"))  # a walk that missed a folder is never cached


def test_single_class_split_warns(tmp_path, caplog):
    """Issue 9.6: one class trains silently to loss 0 and 100% accuracy."""
    root = write_jpeg_folder(tmp_path / "train", classes=1, per_class=3)
    with caplog.at_level("WARNING", logger=si.__name__):
        index = SampleIndex.scan(root, cache_dir=tmp_path / "c")
    assert len(index.classes) == 1  # what training checks to refuse loss-ranking policies
    assert "single class" in caplog.text and "class_00" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger=si.__name__):
        SampleIndex.scan(write_jpeg_folder(tmp_path / "two", 2, 1), cache_dir=tmp_path / "c")
    assert "single class" not in caplog.text


def test_empty_class_errors_say_how_to_proceed(tmp_path):
    root = write_jpeg_folder(tmp_path / "train", classes=2, per_class=1)
    (root / "class_01b_empty").mkdir()
    with pytest.raises(DatasetError, match=r"class_01b_empty.*add images.*or delete the folder.*every split"):
        SampleIndex.scan(root, cache_dir=tmp_path / "c")
    (root / "class_01b_empty").rmdir()
    with pytest.raises(DatasetError, match=r"class_00.*cannot skip a class.*replace .*or delete the folder"):
        SampleIndex.scan(root, cache_dir=tmp_path / "c", exclude=["class_00/img_000.JPEG"])


# ------------------------------------------------------------ issue 22: content changes, restored mtimes, odd entries
def _rewrite_in_place(path, data: bytes) -> None:
    """New bytes under the same name and inode: the folder's mtime does not change (as with cp onto it)."""
    with open(path, "r+b") as f:
        f.truncate(0)
        f.write(data)


def test_a_file_replaced_under_its_name_changes_the_fingerprint(tmp_path, caplog):
    """Issue 22.6: the fingerprint covered names and labels only, so a replaced image resumed silently."""
    root = write_jpeg_folder(tmp_path / "train", classes=2, per_class=3)
    _age(root)
    cache = tmp_path / "cache"
    first = SampleIndex.scan(root, cache_dir=cache)
    assert first.sizes.tolist() == [os.path.getsize(first.path(i)) for i in range(len(first))]
    assert SampleIndex.scan(root, cache_dir=cache, verify=True).fingerprint == first.fingerprint  # untouched
    victim = root / "class_01" / "img_002.JPEG"
    _rewrite_in_place(victim, (root / "class_00" / "img_000.JPEG").read_bytes() + b"\0" * 7)
    with caplog.at_level("WARNING", logger=si.__name__):
        again = SampleIndex.scan(root, cache_dir=cache, verify=True)  # what training does
    assert "class_01/img_002.JPEG" in caplog.text
    assert again.paths.tolist() == first.paths.tolist() and again.fingerprint != first.fingerprint
    assert compare_fingerprints(first.fingerprint, again.fingerprint) == "content"
    assert SampleIndex.scan(root, cache_dir=cache).fingerprint == again.fingerprint  # the cache was updated
    # replaced by a rename (a new inode): the folder changed, so a plain cached scan sees it too
    new = tmp_path / "new.JPEG"
    shutil.copy(root / "class_00" / "img_001.JPEG", new)
    os.replace(new, root / "class_00" / "img_000.JPEG")
    assert SampleIndex.scan(root, cache_dir=cache).fingerprint not in (first.fingerprint, again.fingerprint)


def test_a_copy_that_keeps_mtimes_is_the_same_dataset_and_old_fingerprints_still_match(tmp_path):
    root = write_jpeg_folder(tmp_path / "a" / "train", classes=2, per_class=3)
    index = SampleIndex.scan(root, cache_dir=tmp_path / "c")
    kept = shutil.copytree(root, tmp_path / "b" / "train")  # copy2: mtimes kept, as cp -a / rsync -a
    assert SampleIndex.scan(kept, cache_dir=tmp_path / "c").fingerprint == index.fingerprint
    listed = SampleIndex(kept, index.classes, index.paths, index.labels)  # no recorded stamps: stat'ed once
    assert listed.fingerprint == index.fingerprint
    fresh = shutil.copytree(root, tmp_path / "d" / "train", copy_function=shutil.copyfile)  # new mtimes
    for path in fresh.rglob("*.JPEG"):
        os.utime(path, (1e9, 1e9))
    moved = SampleIndex.scan(fresh, cache_dir=tmp_path / "c").fingerprint
    assert compare_fingerprints(index.fingerprint, moved) == "content"
    # a checkpoint written before sizes and mtimes were covered: names and labels decide
    assert compare_fingerprints(index.names_fingerprint, index.fingerprint) == "legacy"
    other = SampleIndex.scan(write_jpeg_folder(tmp_path / "o", 2, 4), cache_dir=tmp_path / "c")
    assert compare_fingerprints(other.names_fingerprint, index.fingerprint) == "other"
    assert compare_fingerprints(other.fingerprint, index.fingerprint) == "other"
    assert compare_fingerprints(None, index.fingerprint) == "other"


def test_a_folder_whose_mtime_was_set_back_is_rescanned(tmp_path, monkeypatch):
    """Issue 22.9: a file added and the folder's mtime restored (tar x, rsync -a) left the cache trusted."""
    root = write_jpeg_folder(tmp_path / "train", classes=2, per_class=2)
    _age(root)
    cache = tmp_path / "cache"
    before = SampleIndex.scan(root, cache_dir=cache)
    folder = root / "class_01"
    st = os.stat(folder)
    shutil.copy(folder / "img_000.JPEG", folder / "added.JPEG")
    os.utime(folder, ns=(st.st_atime_ns, st.st_mtime_ns))  # the folder's mtime as cached
    assert os.stat(folder).st_mtime_ns == st.st_mtime_ns
    after = SampleIndex.scan(root, cache_dir=cache)
    assert "class_01/added.JPEG" in after.paths.tolist() and len(after) == len(before) + 1
    calls = _count_scans(monkeypatch)
    SampleIndex.scan(root, cache_dir=cache)
    assert calls == []  # current again
    SampleIndex.scan(root, cache_dir=cache, rescan=True)  # data.rescan: walked whatever the cache says
    assert len(calls) == 1


def test_a_fifo_or_device_named_like_an_image_is_left_out_and_never_opened(tmp_path, caplog, monkeypatch):
    """Issue 22.10: a FIFO named x.jpg was indexed, and reading it hung training."""
    from orderdp_dali import check_data

    root = write_jpeg_folder(tmp_path / "train", classes=2, per_class=2)
    os.mkfifo(root / "class_00" / "x.jpg")
    os.symlink(root / "class_00" / "x.jpg", root / "class_01" / "to_fifo.JPEG")
    os.symlink(tmp_path / "nowhere.JPEG", root / "class_01" / "dangling.JPEG")  # kept, as by ImageFolder
    real_open = os.open

    def no_fifo(path, *a, **k):
        assert not str(path).endswith(("x.jpg", "to_fifo.JPEG")), f"opened {path}"
        return real_open(path, *a, **k)

    monkeypatch.setattr(os, "open", no_fifo)
    with caplog.at_level("WARNING", logger=si.__name__):
        index = SampleIndex.scan(root, cache_dir=tmp_path / "c")
    assert sorted(index.paths.tolist()) == ["class_00/img_000.JPEG", "class_00/img_001.JPEG",
                                            "class_01/dangling.JPEG", "class_01/img_000.JPEG", "class_01/img_001.JPEG"]
    assert "left out 2 image-named entries" in caplog.text and "class_00/x.jpg" in caplog.text
    assert len(SampleIndex.scan(root, cache_dir=tmp_path / "c")) == 5  # from the cache, still left out
    report = check_data.check_dataset(root, workers=1, progress=False)
    assert {(f.relpath, f.reason) for f in report.bad} == {
        ("class_00/x.jpg", "not_a_file"), ("class_01/to_fifo.JPEG", "not_a_file"),
        ("class_01/dangling.JPEG", "broken_symlink")}


def test_names_that_are_not_utf8_are_errors_naming_them_and_excludable(tmp_path):
    """Issue 22.12: such a name passed check-data and failed in the fingerprint with UnicodeEncodeError."""
    from orderdp_dali import check_data
    from orderdp_dali.cli import check_data as check_data_cli

    root = write_jpeg_folder(tmp_path / "ds" / "train", classes=2, per_class=2)
    bad_file = root / "class_00" / os.fsdecode(b"caf\xe9.JPEG")
    shutil.copy(root / "class_00" / "img_000.JPEG", bad_file)
    bad_dir = root / "class_01" / os.fsdecode(b"d\xfcr")
    bad_dir.mkdir()
    shutil.copy(root / "class_01" / "img_000.JPEG", bad_dir / "in.JPEG")
    with pytest.raises(DatasetError, match=r"caf\\xe9\.JPEG.*\(and 1 more\).*not valid UTF-8: rename it.*exclude"):
        SampleIndex.scan(root, cache_dir=tmp_path / "c")
    report = check_data.check_dataset(root, workers=1, progress=False)
    assert {(f.relpath, f.reason) for f in report.bad} == {
        (os.path.relpath(bad_file, root), "bad_name"), (os.path.relpath(bad_dir, root), "bad_name")}
    for name in ("bad.json", "bad.txt"):  # both list formats are UTF-8 and load back to the same names
        listed = load_exclusion_list(check_data.write_report(report, tmp_path / name), root.parent)
        index = SampleIndex.scan(root, cache_dir=tmp_path / "c", exclude=listed)
        assert len(index) == 4 and index.fingerprint.startswith("v2:")
    os.rename(root / "class_01", root / os.fsdecode(b"class_\xff"))
    with pytest.raises(DatasetError, match=r"class folder .*class_\\xff.* not valid UTF-8: rename it .*every split"):
        SampleIndex.scan(root, cache_dir=tmp_path / "c", exclude=listed)
    assert check_data_cli.main([str(root), "--no-progress", "--workers", "1"]) == 1  # printed, no UnicodeEncodeError

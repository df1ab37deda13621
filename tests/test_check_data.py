"""check-data: a generated folder salted with every kind of bad file is reported exactly."""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, Tuple

import pytest
from PIL import Image

from orderdp_dali.check_data import check_dataset, write_report
from orderdp_dali.cli.check_data import main
from orderdp_dali.data.exclusions import load_exclusion_list
from orderdp_dali.errors import DatasetError
from orderdp_dali.make_data import make_dataset

AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
UNICODE_CLASS = "c999 ünï cödé ✓"


def _encode(fmt: str, size=(24, 20)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 60)).save(buf, format=fmt)
    return buf.getvalue()


def _salt(tmp_path: Path) -> Tuple[Path, Dict[Tuple[str, str], str], Dict[Tuple[str, str], str]]:
    """A small generated dataset plus one of each problem.

    Returns the root, and the expected bad files and warnings as {(split, relpath): reason}.
    """
    root = make_dataset(
        tmp_path / "data set", mode="small", num_classes=3, train_per_class=3, val_per_class=2, workers=1
    )
    jpeg = _encode("JPEG")
    bad: Dict[Tuple[str, str], str] = {}
    warn: Dict[Tuple[str, str], str] = {}

    def put(split: str, rel: str, data: bytes, reason: str = "", warning: str = "") -> Path:
        path = root / split / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        if reason:
            bad[(split, rel)] = reason
        if warning:
            warn[(split, rel)] = warning
        return path

    c0, c1, c2 = "c000_synthetic", "c001_synthetic", "c002_synthetic"
    put("train", f"{c0}/zero.JPEG", b"", "empty_file")
    put("train", f"{c0}/truncated.JPEG", jpeg[: len(jpeg) // 2], "truncated")
    put("train", f"{c0}/sub/nested garbage.jpg", b"this is not an image" * 10, "not_an_image")  # ImageFolder recurses
    put("train", f"{c1}/garbage.JPEG", b"\x00\x01garbage" * 50, "not_an_image")
    put("train", f"{c1}/png inside.JPEG", _encode("PNG"), warning="wrong_extension")
    put("train", f"{c1}/zero padded.JPEG", jpeg + b"\x00" * 300)  # fine: padding after EOI
    put("train", f"{c1}/trailing.jpeg", jpeg + b"appended junk", warning="trailing_data")
    put("train", f"{c1}/real.png", _encode("PNG"))  # fine
    put("train", f"{c1}/truncated.png", _encode("PNG")[:-20], "truncated")
    put("train", f"{c2}/anim.jpeg", _encode("GIF"), "unsupported_format")
    put("train", f"{c2}/notes.txt", b"not an image extension: ignored, as by ImageFolder")
    os.symlink(tmp_path / "nowhere.JPEG", root / "train" / c2 / "broken link.JPEG")
    bad[("train", f"{c2}/broken link.JPEG")] = "broken_symlink"
    os.symlink("..", root / "train" / c0 / "sub" / "loop")  # a folder that contains itself
    warn[("train", f"{c0}/sub/loop")] = "symlink_loop"

    # Empty class folders (one holding only a non-image) in both splits.
    for split in ("train", "val"):
        (root / split / "c998 empty").mkdir()
    put("val", "c998 empty/readme.md", b"no images here")

    # A one-image class with unicode and spaces in its names; val's single image is bad.
    put("train", f"{UNICODE_CLASS}/gööd 文件.JPEG", jpeg)
    put("val", f"{UNICODE_CLASS}/bäd 文件.JPEG", b"\xff\xd8\xff" + b"\x12" * 40, "truncated")

    # A symlinked class folder (outside the root) in both splits: its files are reported
    # under the symlink's path, once per split that links it.
    external = tmp_path / "external images"
    external.mkdir()
    (external / "ok.JPEG").write_bytes(jpeg)
    (external / "cut.JPEG").write_bytes(jpeg[:-30])
    for split in ("train", "val"):
        os.symlink(external, root / split / "c997_linked", target_is_directory=True)
        bad[(split, "c997_linked/cut.JPEG")] = "truncated"

    if not AS_ROOT:  # root reads any file: permissions cannot be tested there
        locked = put("val", f"{c2}/locked.JPEG", jpeg, "unreadable")
        locked.chmod(0)
    return root, bad, warn


def _as_dict(findings) -> Dict[Tuple[str, str], str]:
    return {(f.split, f.relpath): f.reason for f in findings}


@pytest.fixture
def salted(tmp_path):
    root, bad, warn = _salt(tmp_path)
    yield root, bad, warn
    for p in root.rglob("locked.JPEG"):
        p.chmod(0o644)  # let tmp_path clean-up delete it


@pytest.mark.parametrize("workers", [1, 3])
def test_header_check_finds_exactly_the_salted_problems(salted, workers):
    root, bad, warn = salted
    report = check_dataset(root, workers=workers, progress=False)
    assert _as_dict(report.bad) == bad
    assert _as_dict(report.warnings) == warn
    assert report.empty_classes == ["train/c998 empty", "val/c998 empty"]
    assert report.class_mismatch == {}
    assert not report.ok
    generated = 3 * 3 + 3 * 2
    # salted image files: train 12 (incl. the broken link), val 1 (+1 locked), linked 2 per split
    assert report.num_files == generated + 12 + 1 + 4 + (0 if AS_ROOT else 1)
    for path, _reason in report.bad_files:
        assert os.path.isabs(path)
    f = next(f for f in report.bad if f.relpath == f"{UNICODE_CLASS}/bäd 文件.JPEG")
    assert f.path == os.path.join(os.path.realpath(root / "val"), f.relpath)


def test_deep_check_also_finds_corrupt_data_with_intact_ends(salted):
    root, bad, warn = salted
    good = (root / "train" / "c000_synthetic" / "c000_synthetic_train_00000.JPEG").read_bytes()
    middle = len(good) // 2
    corrupt = good[:middle] + bytes(range(256)) + good[middle + 256 :]
    (root / "train" / "c000_synthetic" / "corrupt middle.JPEG").write_bytes(corrupt)
    assert _as_dict(check_dataset(root, progress=False).bad) == bad  # header check cannot see it
    report = check_dataset(root, deep=True, workers=2, progress=False)
    assert _as_dict(report.bad) == {**bad, ("train", "c000_synthetic/corrupt middle.JPEG"): "decode_error"}
    assert _as_dict(report.warnings) == warn


def test_strict_counts_warnings_as_bad(salted):
    root, bad, warn = salted
    report = check_dataset(root, workers=1, progress=False, strict=True)
    assert _as_dict(report.bad) == {**bad, **warn}


@pytest.mark.parametrize("suffix", [".json", ".txt"])
def test_cli_output_round_trips(salted, tmp_path, capsys, suffix):
    root, bad, _ = salted
    out = tmp_path / f"bad files{suffix}"
    assert main([str(root), "--output", str(out), "--no-progress"]) == 1
    text = capsys.readouterr().out
    assert "PROBLEMS FOUND" in text and "empty_file" in text
    expected = {os.path.join(os.path.realpath(root / s), rel) for s, rel in bad}
    assert load_exclusion_list(out) == expected
    if suffix == ".json":
        data = json.loads(out.read_text(encoding="utf-8"))
        entry = data["bad_files"][0]
        assert {"path", "relpath", "split", "reason"} <= set(entry)
        assert data["empty_classes"] == ["train/c998 empty", "val/c998 empty"]
        moved = tmp_path / "elsewhere"
        rebased = load_exclusion_list(out, root=moved, rebase=True)
        assert rebased == {os.path.join(moved.resolve(), s, rel) for s, rel in bad}
    assert load_exclusion_list(out, root=root) == expected  # the dataset it was written for


def test_text_list_survives_newlines_in_paths(tmp_path):
    root = make_dataset(tmp_path / "d", mode="small", num_classes=1, train_per_class=1, val_per_class=1, workers=1)
    (root / "train" / "c000_synthetic" / "line\nbreak.JPEG").write_bytes(b"")
    report = check_dataset(root, workers=1, progress=False)
    out = write_report(report, tmp_path / "bad.txt")
    assert load_exclusion_list(out) == {f.path for f in report.bad}
    assert len(report.bad) == 1


def test_clean_dataset_exit_code_zero(tmp_path, capsys):
    root = make_dataset(tmp_path / "d", mode="small", num_classes=2, train_per_class=2, val_per_class=1, workers=1)
    assert main([str(root), "--no-progress"]) == 0
    assert main([str(root), "--deep", "--workers", "2", "--no-progress"]) == 0
    assert "result: clean" in capsys.readouterr().out
    report = check_dataset(root, progress=False)
    assert report.ok and report.num_files == 6 and report.bad_files == []


def test_single_split_root_and_split_option(tmp_path):
    root = make_dataset(tmp_path / "d", mode="small", num_classes=2, train_per_class=2, val_per_class=1, workers=1)
    (root / "val" / "c001_synthetic" / "x.JPEG").write_bytes(b"")
    single = check_dataset(root / "val", progress=False)
    assert list(single.splits) == [""] and single.num_files == 3
    assert [(f.split, f.relpath, f.reason) for f in single.bad] == [("", "c001_synthetic/x.JPEG", "empty_file")]
    only_train = check_dataset(root, splits=["train"], progress=False)
    assert list(only_train.splits) == ["train"] and only_train.ok


def test_class_mismatch_between_splits(tmp_path):
    root = make_dataset(tmp_path / "d", mode="small", num_classes=2, train_per_class=2, val_per_class=1, workers=1)
    (root / "train" / "c005_extra").mkdir()
    (root / "train" / "c005_extra" / "a.JPEG").write_bytes(_encode("JPEG"))
    report = check_dataset(root, progress=False)
    assert report.class_mismatch == {"val": ["c005_extra"]}
    assert report.bad == [] and not report.ok


def test_usage_errors(tmp_path, capsys):
    assert main([str(tmp_path / "missing")]) == 2
    assert "not a directory" in capsys.readouterr().err
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.JPEG").write_bytes(_encode("JPEG"))
    assert main([str(tmp_path / "flat")]) == 2  # images but no class folders
    root = make_dataset(tmp_path / "d", mode="small", num_classes=1, train_per_class=1, val_per_class=1, workers=1)
    assert main([str(root), "--split", "test"]) == 2
    assert "'test'" in capsys.readouterr().err
    assert main([]) == 2
    with pytest.raises(DatasetError):
        check_dataset(tmp_path / "missing")
    with pytest.raises(ValueError, match="workers"):
        check_dataset(root, workers=0)


def test_load_exclusion_list_rejects_other_json(tmp_path):
    p = tmp_path / "x.json"
    p.write_text(json.dumps({"something": 1}))
    with pytest.raises(ValueError, match="bad_files"):
        load_exclusion_list(p)
    p.write_text(json.dumps([{"path": "/a/b.JPEG", "reason": "truncated"}, "/c/d.JPEG"]))
    assert load_exclusion_list(p) == {"/a/b.JPEG", "/c/d.JPEG"}


def test_fuzz_every_truncation_point_is_bad(tmp_path):
    """Files cut at random points (and random bytes) are never passed as fine."""
    import numpy as np

    rng = np.random.default_rng(0)
    root = tmp_path / "fuzz"
    cls = root / "c000"
    cls.mkdir(parents=True)
    originals = {".JPEG": _encode("JPEG", (90, 70)), ".png": _encode("PNG", (90, 70))}
    expected = {}
    for ext, data in originals.items():
        for k in rng.choice(len(data) - 1, size=25, replace=False):
            name = f"cut{ext[1:]}_{k}{ext}"
            (cls / name).write_bytes(data[:k])
            expected[name] = "empty_file" if k == 0 else None
    for i in range(25):
        name = f"random_{i}.jpg"
        (cls / name).write_bytes(rng.integers(0, 256, size=int(rng.integers(1, 3000)), dtype=np.uint8).tobytes())
        expected[name] = "not_an_image"
    report = check_dataset(root, workers=2, progress=False)
    assert report.warnings == []
    found = {f.relpath.split("/", 1)[1]: f.reason for f in report.bad}
    assert set(found) == set(expected)
    for name, reason in expected.items():
        if reason is not None:
            assert found[name] == reason, name
        else:
            assert found[name] in ("truncated", "not_an_image"), (name, found[name])


@pytest.mark.skipif(not AS_ROOT or not shutil.which("setpriv"), reason="covered by the salted test when not root")
def test_unreadable_files_as_root_without_dac_override(tmp_path):
    """Run the check in a child that drops root's permission bypass, so chmod 000 bites."""
    root = make_dataset(tmp_path / "d", mode="small", num_classes=1, train_per_class=2, val_per_class=1, workers=1)
    locked = root / "train" / "c000_synthetic" / "c000_synthetic_train_00001.JPEG"
    locked.chmod(0)
    code = (
        "import json, sys; from orderdp_dali.check_data import check_dataset; "
        "r = check_dataset(sys.argv[1], workers=1, progress=False); print(json.dumps(r.bad_files))"
    )
    drop = "-dac_override,-dac_read_search"
    cmd = ["setpriv", f"--inh-caps={drop}", f"--bounding-set={drop}", sys.executable, "-c", code, str(root)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
    locked.chmod(0o644)
    if proc.returncode != 0 and "setpriv" in proc.stderr:
        pytest.skip(f"cannot drop capabilities here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    locked_path = os.path.join(os.path.realpath(root / "train"), "c000_synthetic", locked.name)
    assert json.loads(proc.stdout) == [[locked_path, "unreadable"]]


# ------------------------------------------------ issue 9.4: a list must belong to the dataset it excludes from
def _one_bad_file(tmp_path: Path, name: str = "d") -> Tuple[Path, Path]:
    root = make_dataset(tmp_path / name, mode="small", num_classes=2, train_per_class=2, val_per_class=1, workers=1)
    bad = root / "train" / "c001_synthetic" / "zero.JPEG"
    bad.write_bytes(b"")
    return root, bad


@pytest.mark.parametrize("suffix", [".json", ".txt"])
def test_a_list_written_for_another_dataset_is_an_error(tmp_path, suffix):
    """Today a list of a moved or copied dataset silently excludes nothing, and training dies on the bad file."""
    from orderdp_dali.data.folder import SampleIndex

    old, bad = _one_bad_file(tmp_path, "old")
    listing = write_report(check_dataset(old, workers=1, progress=False), tmp_path / f"bad{suffix}")
    assert load_exclusion_list(listing, root=old) == {str(bad)}
    new = tmp_path / "new"
    shutil.copytree(old, new, symlinks=True)
    expected = (
        re.escape(f"{listing} was written by check-data for {old.resolve()}, but this run reads {new.resolve()}")
        + ".*" + re.escape(f"re-run 'orderdp-dali check-data {new.resolve()} --output {listing}'")
    )
    with pytest.raises(DatasetError, match=expected):
        load_exclusion_list(listing, root=new)
    with pytest.raises(DatasetError, match="written by check-data for"):
        load_exclusion_list(listing, root=new / "train")  # a split of another dataset: no better
    # The right list excludes the bad file from the split that training scans.
    index = SampleIndex.scan(old / "train", cache_dir=tmp_path / "c", exclude=load_exclusion_list(listing, old))
    assert "c001_synthetic/zero.JPEG" not in index.paths.tolist() and len(index) == 4


def test_a_list_of_one_split_belongs_to_its_dataset(tmp_path):
    root, bad = _one_bad_file(tmp_path)
    listing = write_report(check_dataset(root / "train", workers=1, progress=False), tmp_path / "bad.json")
    assert load_exclusion_list(listing, root=root) == {str(bad)}  # check-data ROOT/train; training reads ROOT


def test_an_entry_outside_the_dataset_is_an_error(tmp_path):
    root, bad = _one_bad_file(tmp_path)
    plain = tmp_path / "plain.txt"
    plain.write_text(f"{bad}\n/somewhere/else/x.JPEG\n")
    with pytest.raises(DatasetError, match=re.escape(f"{plain} line 2: /somewhere/else/x.JPEG is outside")):
        load_exclusion_list(plain, root=root)
    listing = write_report(check_dataset(root, workers=1, progress=False), tmp_path / "bad.json")
    data = json.loads(listing.read_text())
    data["bad_files"].append({"path": "/somewhere/else/y.JPEG", "reason": "truncated"})
    listing.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=re.escape(f"{listing}: /somewhere/else/y.JPEG is outside")):
        load_exclusion_list(listing, root=root)


@pytest.mark.parametrize(
    "name, content",
    [
        ("bad.yaml", "bad_files:\n  - /data/train/c/x.JPEG\n"),
        ("notes.txt", "these files are broken, please skip them\n"),
        ("relative.txt", "train/c001_synthetic/zero.JPEG\n"),
        ("reason.txt", "# orderdp-dali check-data\nbroken\t/data/train/c/x.JPEG\n"),
        ("folder.txt", "/data/train/c001_synthetic\n"),
        ("binary.txt", b"\x89PNG\r\n\x1a\n\x00\xff\xfe"),
        ("torn.json", '{"version": 1, "bad_files": [{"path": "/a'),
        ("other.json", '{"something": 1}'),
    ],
)
def test_a_list_in_an_unknown_format_is_an_error_naming_the_file(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    for root in (None, tmp_path):
        with pytest.raises(DatasetError, match=re.escape(str(path))):
            load_exclusion_list(path, root=root)


def test_lists_written_before_and_plain_lists_still_load(tmp_path):
    """Lists check-data wrote before this change (root not resolved), and absolute paths one a line."""
    from orderdp_dali.data.folder import SampleIndex

    real, bad = _one_bad_file(tmp_path)
    link = tmp_path / "via link"
    os.symlink(real, link)
    resolved = os.path.join(os.path.realpath(real / "train"), "c001_synthetic", "zero.JPEG")
    old_json = tmp_path / "old.json"
    old_json.write_text(json.dumps({
        "version": 1, "root": str(link), "splits": {"train": str(real / "train"), "val": str(real / "val")},
        "bad_files": [{"path": resolved, "relpath": "c001_synthetic/zero.JPEG", "split": "train",
                       "reason": "empty_file", "detail": ""}],
    }))
    old_txt = tmp_path / "old.txt"
    old_txt.write_text(f"# orderdp-dali check-data: 1 bad of 7 files under {link}\n"
                       f"# <reason>\\t<absolute path>\nempty_file\t{resolved}\n")
    hand = tmp_path / "hand.txt"  # a header without a root, as tests/test_train.py writes
    hand.write_text(f"# orderdp-dali check-data\ntruncated\t{resolved}\n")
    plain = tmp_path / "plain.lst"  # spelled through the symlink: made the path SampleIndex uses
    plain.write_text(f"# files DALI choked on\n\n{link / 'train' / 'c001_synthetic' / 'zero.JPEG'}\n")
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps([resolved]))
    spelled = str(link / "train" / "c001_synthetic" / "zero.JPEG")
    for listing in (old_json, old_txt, hand, plain, bare):
        for root in (real, link):
            excluded = load_exclusion_list(listing, root=root)
            assert excluded == ({spelled} if listing == plain else {resolved}), (listing, root)
            for split in (real / "train", link / "train"):  # however either is spelled, the file goes
                index = SampleIndex.scan(split, cache_dir=tmp_path / "c", exclude=excluded)
                assert "c001_synthetic/zero.JPEG" not in index.paths.tolist() and len(index) == 4
    assert load_exclusion_list(old_txt) == {resolved}  # without root: read as before, unchecked


def test_the_report_records_the_resolved_root(tmp_path):
    real, _ = _one_bad_file(tmp_path)
    link = tmp_path / "link"
    os.symlink(real, link)
    report = check_dataset(link, workers=1, progress=False)
    assert report.root == os.path.realpath(real)
    assert all(f.path.startswith(report.root + os.sep) for f in report.bad)


# ----------------------------------------------------------------- issue 22: images whose header declares a huge size
def _declaring(fmt: str, width: int, height: int) -> bytes:
    """A small valid image whose header claims ``width`` x ``height`` (the pixel data is not touched)."""
    import struct

    data = bytearray(_encode(fmt, size=(24, 20)))
    if fmt == "PNG":
        data[16:24] = struct.pack(">II", width, height)
        return bytes(data)
    pos = 2
    while data[pos + 1] not in (0xC0, 0xC1, 0xC2):  # walk to the JPEG frame header
        pos += 2 + struct.unpack(">H", data[pos + 2 : pos + 4])[0]
    data[pos + 5 : pos + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def test_an_image_declaring_60000x60000_is_bad_at_the_header_check(tmp_path):
    """Issue 22.12: it passed check-data (a warning with --deep) and failed training without naming the file."""
    from orderdp_dali.data.images import MAX_DECODE_PIXELS, check_bytes, check_file

    exif = _encode("JPEG")
    exif = exif[:2] + b"\xff\xe1" + (5000).to_bytes(2, "big") + bytes(4998) + exif[2:]  # frame header past 4 KB
    for name, data in (("huge.jpg", _declaring("JPEG", 60000, 60000)), ("huge.png", _declaring("PNG", 60000, 60000)),
                       ("late.jpg", _declaring("JPEG", 60000, 60000)[:2] + exif[2:5004] + _declaring(
                           "JPEG", 60000, 60000)[2:])):
        path = tmp_path / name
        path.write_bytes(data)
        for deep in (False, True):
            reason, detail = check_file(str(path), deep=deep)
            assert reason == "too_large" and "60000x60000" in detail, (name, deep, detail)
        assert check_bytes(data, name, deep=False)[0] == "too_large"
    fine = _declaring("JPEG", 30000, 30000)  # 0.9 G pixels: within what the decoders accept
    assert 30000 * 30000 <= MAX_DECODE_PIXELS and check_bytes(fine, "ok.jpg", deep=False) is None
    assert check_bytes(exif, "exif.jpg", deep=False) is None  # a long APP1 segment before the frame header


def test_training_names_an_image_too_large_to_decode(tmp_path):
    from orderdp_dali.data.folder import SampleIndex
    from orderdp_dali.errors import DecodeError
    from orderdp_dali.iterator import DALIPlanIterator
    from orderdp_dali.pipelines import ImagePipelineConfig

    root = make_dataset(tmp_path / "d", mode="small", num_classes=2, train_per_class=4, val_per_class=1, workers=1)
    victim = sorted((root / "train" / "c001_synthetic").iterdir())[1]
    victim.write_bytes(_declaring("JPEG", 60000, 60000))
    report = check_dataset(root, workers=1, progress=False)
    assert [(f.relpath, f.reason) for f in report.bad] == [(f"c001_synthetic/{victim.name}", "too_large")]
    index = SampleIndex.scan(root / "train", cache_dir=tmp_path / "c")
    it = DALIPlanIterator(index, None, 4, device="cpu", num_threads=1,
                          pipeline_config=ImagePipelineConfig(crop=16, val_resize=20))
    with pytest.raises(DecodeError, match=rf"{victim.name}\) in epoch 0, step 1: too_large: .*60000x60000"):
        for _ in it:
            pass

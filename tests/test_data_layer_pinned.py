"""Gate for the data layer's refactor: plans, sample order, labels, fetched samples and
fingerprints of folder, file-list, flat-validation, tar and CIFAR sources, pinned as literals.

The data are generated deterministically (bytes from SHA-256, fixed mtimes set with
``os.utime``), so the values depend on the code alone: a change to how a source orders,
labels, fetches or fingerprints its samples, or to how plans are cut, fails here.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import zlib
from pathlib import Path

import numpy as np
import pytest

from orderdp_dali.data.cifar import load_cifar
from orderdp_dali.data.file_lists import index_file_list, index_flat_val
from orderdp_dali.data.folder import SampleIndex
from orderdp_dali.data.tar import TarIndex
from orderdp_dali.make_shards import folder_to_shards
from orderdp_dali.plan_source import PlanSource
from orderdp_dali.policies import make_policy

MTIME = 1_600_000_000  # every generated file's mtime (the fingerprints cover mtimes)
CLASSES = ("n01", "n02", "n03")


def _bytes(name: str, n: int) -> bytes:
    """``n`` deterministic bytes for ``name`` (a JPEG-named file need not decode to be indexed)."""
    out = b""
    k = 0
    while len(out) < n:
        out += hashlib.sha256(f"{name}/{k}".encode()).digest()
        k += 1
    return b"\xff\xd8" + out[: n - 2]


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (MTIME, MTIME))


def _make_folder(root: Path) -> Path:
    """``root/train/<class>/<i>.JPEG`` (3 classes, 7 + 5 + 9 files of varied sizes), ``root/val`` likewise."""
    for split, counts in (("train", (7, 5, 9)), ("val", (2, 3, 2))):
        for c, count in zip(CLASSES, counts):
            for i in range(count):
                name = f"{split}/{c}/{c}_{i:03d}.JPEG"
                _write(root / name, _bytes(name, 100 + 37 * i + 11 * len(c)))
    return root


def _sha1(*parts) -> str:
    h = hashlib.sha1()
    for p in parts:
        h.update(p if isinstance(p, bytes) else np.ascontiguousarray(p).tobytes())
        h.update(b"|")
    return h.hexdigest()


def _names(source) -> list:
    """Each sample's name relative to its split, in index order."""
    if isinstance(source, TarIndex):
        return [source.key(i) for i in range(len(source))]
    return [str(p) for p in source.paths.tolist()]


def _fetched(source, indices: np.ndarray) -> bytes:
    """What the batch source hands DALI for ``indices``, with the split's absolute root cut off."""
    got = source.make_samples().fetch(indices)
    if isinstance(got, np.ndarray):
        return got.tobytes()
    prefix = os.fsencode(os.path.join(source.root, "")) if isinstance(source, SampleIndex) else b""
    return b"\0".join(bytes(g.tobytes()).removeprefix(prefix) for g in got)


def _plans(n: int, labels: np.ndarray, names: list, epochs: int = 3) -> list:
    """sha1 of each epoch's (indices, weights) per rank of two, for OrderDP fed losses from the names."""
    policy = make_policy("orderdp", n, random_len_ratio=0.75, top_q_ratio=0.8, seed=7)
    out = []
    for epoch in range(epochs):
        shards = []
        for rank in (0, 1):
            source = PlanSource(n, policy, 4, rank=rank, world_size=2, epoch=epoch)
            batches = source.batches()
            shards.append(_sha1(batches.indices.astype("<i8"), batches.weights.astype("<f4")))
        plan = policy.select(epoch)
        shards.append(_sha1("\n".join(names[i] for i in plan.indices).encode(), labels[plan.indices].astype("<i8")))
        out.append(shards)
        idx = np.arange(n)
        losses = np.array([(zlib.crc32(f"{names[i]}{epoch}".encode()) % 1000) / 100 for i in idx], dtype=np.float32)
        policy.update(idx, losses)
    return out


def _record(source) -> dict:
    names = _names(source)
    labels = np.asarray(source.labels)
    return {
        "n": len(source),
        "classes": list(source.classes),
        "order": _sha1("\n".join(names).encode(), labels.astype("<i8")),
        "fingerprint": source.fingerprint,
        "fetched": hashlib.sha1(_fetched(source, np.array([len(source) - 1, 0, 2]))).hexdigest(),
        "plans": _plans(len(source), labels, names),
    }


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return _make_folder(tmp_path_factory.mktemp("pinned") / "folder")


def test_folder_source_is_pinned(folder, tmp_path):
    first = SampleIndex.scan(folder / "train", cache_dir=tmp_path)
    cached = SampleIndex.scan(folder / "train", cache_dir=tmp_path)  # read back from the index cache
    assert _record(first) == _record(cached) == PINNED["folder"]


def test_file_list_source_is_pinned(folder, tmp_path):
    listed = [(f"{c}/{c}_{i:03d}.JPEG", k) for k, c in enumerate(CLASSES) for i in (4, 0, 2)]
    (tmp_path / "list.txt").write_text("".join(f"{p} {k}\n" for p, k in reversed(listed)))
    index = index_file_list(tmp_path / "list.txt", folder / "train", classes=CLASSES)
    assert _record(index) == PINNED["file_list"]


def test_flat_val_source_is_pinned(tmp_path):
    rows = ["ImageId,PredictionString"]
    for k, c in enumerate(CLASSES):
        for i in range(3):
            image_id = f"ILSVRC_val_{k * 3 + i:08d}"
            _write(tmp_path / "val" / f"{image_id}.JPEG", _bytes(image_id, 90 + 13 * i + k))
            rows.append(f"{image_id},{c} 1 2 3 4")
    (tmp_path / "solution.csv").write_text("\n".join(rows[:1] + rows[:0:-1]) + "\n")
    index = index_flat_val(tmp_path / "val", tmp_path / "solution.csv", CLASSES)
    assert _record(index) == PINNED["flat_val"]


def test_tar_source_is_pinned(folder, tmp_path):
    folder_to_shards(folder, tmp_path / "tar", shard_size=4, cache_dir=tmp_path / "c", splits=["train"])
    for shard in (tmp_path / "tar" / "train").iterdir():
        os.utime(shard, (MTIME, MTIME))
    first = TarIndex.scan(tmp_path / "tar" / "train", cache_dir=tmp_path / "c")
    cached = TarIndex.scan(tmp_path / "tar" / "train", cache_dir=tmp_path / "c")
    assert _record(first) == _record(cached) == PINNED["tar"]


def test_cifar_source_is_pinned(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for b, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        raw = np.frombuffer(_bytes(name, 4 * 3072), dtype=np.uint8).reshape(4, 3072)
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": raw, b"labels": [(b + i) % 3 for i in range(4)]}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [c.encode() for c in CLASSES]}, f)
    train = load_cifar(tmp_path, "cifar10", "train")
    assert _record(_CifarView(train)) == PINNED["cifar"]


class _CifarView:
    """A CIFAR split with sample names (its row numbers) and the iterator's samples."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset
        self.labels = dataset.labels
        self.classes = dataset.classes
        self.paths = np.array([f"{i:05d}" for i in range(len(dataset))])
        self.fingerprint = dataset.fingerprint

    def __len__(self) -> int:
        return len(self.dataset)

    def make_samples(self):
        return self.dataset.make_samples()


# Recorded on the code before the data layer moved to orderdp_dali/data/ (commit 94d76d6).
PINNED: dict = {'folder': {'n': 21,
            'classes': ['n01', 'n02', 'n03'],
            'order': '092226de13fe508e9a574f1671401390aa3a40ee',
            'fingerprint': ('v2:7cb8d2c7db3fc0e9fe3ba48c34b465061ae0981bcc5affa6817434dda4e5c169:'
                            '026ed7b3c4377054750b056d8882a1ffd3ea9cb1b46fa118474a476f71ac1446'),
            'fetched': '8b54c3b9d4ef4dfeb11d3a358686306ba79a99eb',
            'plans': [['4a1effc2e850f5d6f9d3fe3d15d043c127c53163',
                       'b83dcc6a9328411363cd07873c9b6d9e294c852f',
                       'c0b241dfb008068b3e8dd32c893873e761406e49'],
                      ['a4a0e2da0087a82b66d92cf2826a2562ac6cfc63',
                       '2f771acecce8fd7ff828542c1f6e71642fe5331c',
                       'd76f9085572e1abbc4b6ad7fcf2f91902791c9bb'],
                      ['31a2b492d133d93adc07a399fcf012ca5170fe12',
                       '65fb6b7427389135291d37244cdec3e76f0e035c',
                       'c5845eb0eda65f1dfc2289381fe05b6e6e617f03']]},
 'file_list': {'n': 9,
               'classes': ['n01', 'n02', 'n03'],
               'order': '105bdc9f6920ad759f00368b53cfddd52ad5ef00',
               'fingerprint': ('v2:8c723a946ba018d212fe187a585204a98d4234f099b2590fc12d30d6a044390c:'
                               '47e18b2e166ee10cbf45eb3b46c793c4ba6275a12466f9a19cad3cfb3ca5ca22'),
               'fetched': 'b70e8b1b4536297667b88bf0d7be76d48817ec4f',
               'plans': [['042a1f02e4bc6049afb880e6c3fb6f5e2ab1010e',
                          'd455550ce903cf5d933eca50653ca990371e9734',
                          'ab2b06f82824d676d356689d04432d333cce5575'],
                         ['e2b91799407748b32a5531e471272d3ba164d75d',
                          '9a5081a8308663d5923dac0ec7c658d3b06d6a93',
                          'bb3491309ee98ec2e411d3a30ba622197aea44e0'],
                         ['9427fbf82034482fdbebaf7f5f163911196ed8a0',
                          'f17053afe5f5e8b78de49290943967aecb409585',
                          'a07ddb987deb0a3d62d514fa68aad65aa3377178']]},
 'flat_val': {'n': 9,
              'classes': ['n01', 'n02', 'n03'],
              'order': 'bbaff6251db33c65c1f82065f362117717ea3ed3',
              'fingerprint': ('v2:964bbf96aa54ff41a976bf5b285fbe09aeb388b589a5054e0c6bcaec14b10ad4:'
                              'e9419f5a1772cb3d4cafcd1b4c7b0e4fcd3db383de4437109fccd20c8db16216'),
              'fetched': 'bdfe73efd98a6a0a94cb9c0e83e8b82a53c9710e',
              'plans': [['042a1f02e4bc6049afb880e6c3fb6f5e2ab1010e',
                         'd455550ce903cf5d933eca50653ca990371e9734',
                         '5c3cddf6868316fa425d46092395592e9d6a6009'],
                        ['e6ef5b7fed66f75bd268937897083f2cd86467f4',
                         'a36f9742c0c474e13a4a3753dac8fbb06fe7d662',
                         'c0d6c4b2f03dcfa0a5d8a8ab9c01638ecdbecf69'],
                        ['96ed0cbde4986a32725b21f8b8b24097158ef1aa',
                         '98ffb01cd9dbde87700fc153baad878bd70c54ee',
                         '0065d2e46210d3aa26abb7f2816a851919ef2faa']]},
 'tar': {'n': 21,
         'classes': ['n01', 'n02', 'n03'],
         'order': '30fb73be309267180e0fdce96d6e7d979db849e2',
         'fingerprint': ('v2:db85400213e7520eb0b36b0f2034ec3af2df9536447ce00af9db64ab2ed80110:'
                         '89d97abf7a45c63e2719fe1396b41ff06207a9f2557d7fd2c16882d6d49c734f'),
         'fetched': '9cdb3b04adba88be1d856d3e19f80b70fe6f32a3',
         'plans': [['4a1effc2e850f5d6f9d3fe3d15d043c127c53163',
                    'b83dcc6a9328411363cd07873c9b6d9e294c852f',
                    '0e098792399635f3acc5bfe943f96f19509730c4'],
                   ['f9df900db7031401e31f6a87f0d62d870566a6db',
                    'd5126f75bbb63fe5159ed71d3eccbdc000d31237',
                    'fc241f15158369fe10d2e21673f7b061725c9ee6'],
                   ['217231fd3214132233ae73e437292ced6a6a5bb5',
                    'e300ba02c82afc317e82426bfa0b83973a438426',
                    '408cee094c638cc3fb762b487ff97004eb32c8b8']]},
 'cifar': {'n': 20,
           'classes': ['n01', 'n02', 'n03'],
           'order': '9c490e19dbfb91463251e12c2c9b98d0f578304b',
           'fingerprint': 'd4ce25c83a5b16ca1a981c4ed6fa33f53b20856326779e4e11feedf4229eb7a4',
           'fetched': '0c174ccef8e93ea1d4e9c88a8edd833f52315e5f',
           'plans': [['28b0e32a9ccd220776efecbf17a488adbe630fc7',
                      '0c40846b8b09d8779e228e922401d7143f948455',
                      'b9739eeb870b24a1d4ade7bde26fa68a2cf22e24'],
                     ['57edb3838dfed154e742625bb1aed06ed55256ca',
                      '12d92a1decf34688cbf8b43d91dc244aecbe82e6',
                      '57e4cd912a8dd75b6f1bc1bf69aa2e6ec181cec6'],
                     ['8b4b699d54b1b1afd12c0ac0b49ca4c36db6b8ee',
                      'b893576931e64ca1dc63a3ea2015d81e42d59cc7',
                      '77817a7587242d4f79c83c7c5ab46f7b1261478d']]}}

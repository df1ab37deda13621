"""How each epoch's plan reaches DALI's external-source worker processes.

DALI's parallel ``external_source`` runs the per-sample callback in spawned worker
processes, each holding its own *copy* of the callback made when the pipeline started, so
a plan chosen later cannot be handed to them as a Python object. Instead the iterator
publishes every pass over the data as a file in a private folder (``/dev/shm`` when it
exists, so nothing touches the disk), keyed by DALI's epoch counter:

* ``samples.npz``: the dataset's relative paths (UTF-8 bytes) and labels, written once;
* ``pass-000007.npz``: the rank's shard of the plan for DALI epoch 7 (indices, weights and
  the padded length), written atomically before DALI is allowed to start that epoch.

A worker sees ``SampleInfo.epoch_idx`` with every request; when it changes, the worker
loads that pass file. DALI only starts epoch ``k + 1`` after the iterator calls
``pipeline.reset()``, which it does only after publishing pass ``k + 1``.

After a crash (``kill -9``, the OOM killer) nothing is left behind for long: a worker exits
as soon as the training process that started it is gone (DALI's own workers wait on a
shared-memory queue forever), and the next publisher removes the folders of publishers
that died without closing (each holds an ``flock`` on its folder's ``owner.lock`` while it
lives, so a live run's folder is never touched, whatever PID namespace it runs in).

:class:`PlanFeeder` returns file bytes (JPEGs for the image pipeline);
:class:`ArrayPlanFeeder` returns rows of an in-memory uint8 array instead (CIFAR), which
:class:`ArrayPlanPublisher` saves once as ``images.npy`` for the workers to memory-map.
"""
from __future__ import annotations

import fcntl
import logging
import multiprocessing
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Optional, Tuple

import numpy as np

__all__ = ["ArrayPlanFeeder", "ArrayPlanPublisher", "PlanFeeder", "PlanPublisher"]

log = logging.getLogger(__name__)
_PREFIX = "orderdp-dali-"
_LOCK = "owner.lock"


def _pass_file(folder: Path, dali_epoch: int) -> Path:
    return folder / f"pass-{dali_epoch:06d}.npz"


def _atomic_savez(path: Path, **arrays: np.ndarray) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _remove_abandoned(base: str) -> None:
    """Remove the plan folders in ``base`` whose publisher died without closing them."""
    try:
        entries = [e for e in os.scandir(base) if e.name.startswith(_PREFIX) and e.is_dir(follow_symlinks=False)]
    except OSError:
        return
    for entry in entries:
        try:
            fd = os.open(os.path.join(entry.path, _LOCK), os.O_RDWR)
        except OSError:
            continue  # no lock file (another user's, or being created): not ours to judge
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # its publisher is alive
        finally:
            os.close(fd)
        log.info("removing %s, left behind by a process that died", entry.path)
        shutil.rmtree(entry.path, ignore_errors=True)


class PlanPublisher:
    """Main-process side: owns the folder and writes one file per pass."""

    def __init__(self, root: Path, paths: np.ndarray, labels: np.ndarray, folder: Optional[str] = None) -> None:
        base = folder or ("/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None)
        _remove_abandoned(base or tempfile.gettempdir())
        self.folder = Path(tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-", dir=base))
        # Held until close() or this process's death; _remove_abandoned() of a later run tests it.
        # Locked before it gets its name, so no other run ever sees it unlocked while we live.
        self._lock_fd: Optional[int] = os.open(self.folder / f".{_LOCK}", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        os.rename(self.folder / f".{_LOCK}", self.folder / _LOCK)
        encoded = np.char.encode(np.asarray(paths, dtype=np.str_), "utf-8")
        _atomic_savez(self.folder / "samples.npz", paths=encoded, labels=np.asarray(labels, dtype=np.int64))
        self.root = Path(root)

    def feeder(self) -> "PlanFeeder":
        return PlanFeeder(str(self.root), str(self.folder))

    def publish(self, dali_epoch: int, indices: np.ndarray, weights: np.ndarray, padded_len: int) -> None:
        """Make the shard for ``dali_epoch`` visible to the workers; drop passes they no longer need."""
        _atomic_savez(
            _pass_file(self.folder, dali_epoch),
            indices=np.asarray(indices, dtype=np.int64),
            weights=np.asarray(weights, dtype=np.float32),
            padded_len=np.array(padded_len, dtype=np.int64),
        )
        stale = _pass_file(self.folder, dali_epoch - 2)
        if stale.exists():
            stale.unlink()

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


_parent_watch: Optional[threading.Thread] = None


def _exit_with_parent() -> None:
    """In a spawned worker: exit as soon as the process that spawned it is gone.

    DALI's workers block on a shared-memory task queue and never notice a parent killed
    with SIGKILL; they would sleep forever, holding memory. ``multiprocessing`` gives every
    spawned process a sentinel that becomes ready when its parent dies: wait on it.
    """
    global _parent_watch
    parent = multiprocessing.parent_process()
    if parent is None or _parent_watch is not None:
        return

    def watch() -> None:
        parent.join()
        os._exit(1)

    _parent_watch = threading.Thread(target=watch, name="orderdp-dali-parent-watch", daemon=True)
    _parent_watch.start()


class PlanFeeder:
    """Worker side: the per-sample callback ``(SampleInfo) -> (bytes, label, index, weight)``.

    Positions past the shard (up to ``padded_len``, a whole number of batches) repeat the
    shard's last sample, because DALI's per-sample mode only emits full batches; the
    iterator trims them off. At ``padded_len`` it raises ``StopIteration``: end of epoch.
    """

    def __init__(self, root: str, folder: str) -> None:
        self.root = root
        self.folder = folder
        self._samples: Optional[Tuple[np.ndarray, np.ndarray]] = None
        self._epoch = -1
        self._pass: Tuple[np.ndarray, np.ndarray, int] = (np.empty(0, np.int64), np.empty(0, np.float32), 0)

    def _load_pass(self, dali_epoch: int) -> None:
        path = _pass_file(Path(self.folder), dali_epoch)
        try:
            with np.load(path) as z:
                self._pass = (z["indices"], z["weights"], int(z["padded_len"]))
        except FileNotFoundError:
            raise RuntimeError(
                f"orderdp-dali: no plan published for DALI epoch {dali_epoch} ({path}); "
                "the pipeline was reset without going through the iterator"
            ) from None
        self._epoch = dali_epoch

    def __call__(self, info) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        if self._samples is None:
            _exit_with_parent()
            with np.load(os.path.join(self.folder, "samples.npz")) as z:
                self._samples = (z["paths"], z["labels"])
        if info.epoch_idx != self._epoch:
            self._load_pass(info.epoch_idx)
        indices, weights, padded_len = self._pass
        if info.idx_in_epoch >= padded_len:
            raise StopIteration
        pos = min(info.idx_in_epoch, len(indices) - 1)
        i = int(indices[pos])
        labels = self._samples[1]
        return self._read(i), np.array(labels[i], dtype=np.int64), np.array(i, dtype=np.int64), np.array(weights[pos], dtype=np.float32)

    def _read(self, i: int) -> np.ndarray:
        """The bytes of sample ``i``'s file."""
        path = os.path.join(self.root, self._samples[0][i].decode("utf-8"))
        try:
            return np.fromfile(path, dtype=np.uint8)
        except OSError as e:
            raise OSError(f"orderdp-dali: cannot read sample {i}: {path}: {e.strerror or e}") from e


class ArrayPlanPublisher(PlanPublisher):
    """A publisher whose samples are the rows of a uint8 array (e.g. CIFAR's ``(N, 32, 32, 3)``).

    The array is written once to ``images.npy`` in the plan folder; workers memory-map it,
    so each process holds no private copy and the callback stays cheap to pickle.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, folder: Optional[str] = None) -> None:
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim < 2 or images.shape[0] != len(labels):
            raise ValueError(
                f"ArrayPlanPublisher needs uint8 images of shape (N, ...) with N = {len(labels)} labels, "
                f"got {images.dtype} {images.shape}"
            )
        super().__init__(Path(), np.empty(0, dtype=np.str_), labels, folder=folder)
        np.save(self.folder / "images.npy", np.ascontiguousarray(images))

    def feeder(self) -> "ArrayPlanFeeder":
        return ArrayPlanFeeder("", str(self.folder))


class ArrayPlanFeeder(PlanFeeder):
    """Worker side of :class:`ArrayPlanPublisher`: returns ``images[i]`` instead of file bytes."""

    def __init__(self, root: str, folder: str) -> None:
        super().__init__(root, folder)
        self._images: Optional[np.ndarray] = None

    def _read(self, i: int) -> np.ndarray:
        if self._images is None:
            self._images = np.load(os.path.join(self.folder, "images.npy"), mmap_mode="r")
        return np.ascontiguousarray(self._images[i])

"""The iterator: a pruning policy's plan, decoded by DALI, as PyTorch batches.

Each epoch the policy chooses its plan before the epoch starts; this rank's shard of it is
published to DALI's external-source workers (see :mod:`orderdp_dali.feeder`), which read
exactly those files. Batches are dicts in DALI's style::

    {"data": images, "label": labels, "index": sample indices, "weight": loss weights}

A training loop::

    for batch in it:
        losses = F.cross_entropy(model(batch["data"]), batch["label"], reduction="none")
        (losses * batch["weight"]).mean().backward()
        it.update(batch["index"], losses)

``len(it)`` is the step count of the epoch about to run (or running), known before the
epoch is iterated, so step-based LR schedules see the right length.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple

import numpy as np
import torch

from orderdp_dali.distributed import all_reduce_scores, dist_info
from orderdp_dali.errors import DecodeError, WorkerError
from orderdp_dali.feeder import PlanPublisher
from orderdp_dali.plan import EpochPlan, num_steps
from orderdp_dali.policies.base import Policy
from orderdp_dali.sample_index import SampleIndex
from orderdp_dali.watchdog import WorkerWatchdog, spawned_children

__all__ = ["DALIPlanIterator", "find_undecodable"]

log = logging.getLogger(__name__)
STATE_VERSION = 1


def find_undecodable(index: SampleIndex, sample_ids: np.ndarray) -> Optional[Tuple[int, str, str]]:
    """First of ``sample_ids`` whose file cannot be read and fully decoded: (index, path, reason)."""
    from PIL import Image

    for i in dict.fromkeys(int(s) for s in sample_ids):
        path = index.path(i)
        try:
            if os.path.getsize(path) == 0:
                return i, str(path), "empty file (0 bytes)"
            with Image.open(path) as im:
                im.load()
        except Exception as e:  # PIL raises many types; any failure names this file
            return i, str(path), f"{type(e).__name__}: {e}"
    return None


def _is_worker_failure(error: BaseException) -> bool:
    """Whether DALI's worker pool reported a lost worker (DALI raises plain RuntimeErrors)."""
    messages = ("Worker data receiving interrupted", "Sending tasks to worker", "Workers initialization failed")
    seen = error
    while seen is not None:
        if any(m in str(seen) for m in messages):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class DALIPlanIterator:
    """Iterates one epoch per ``iter()``: this rank's shard of the policy's plan, through DALI.

    Args:
        index: the samples of the split (see :class:`~orderdp_dali.sample_index.SampleIndex`).
        policy: chooses each epoch's plan; ``None`` means every sample once, in order
            (evaluation).
        batch_size: per-rank batch size.
        train: training mode: plans are padded so all ranks run equal steps, and the
            pipeline augments (default: ``policy is not None``).
        augment: override the augmentation of the pipeline only (e.g. ``train=True,
            augment=False`` for deterministic training inputs); default ``train``.
        device: ``"gpu"``, ``"cpu"`` or ``"auto"`` (GPU when CUDA is available).
        device_id: CUDA device; default ``LOCAL_RANK``.
        rank, world_size: default from ``torch.distributed`` or torchrun's environment.
        num_threads: DALI CPU threads (decoding and augmentation on the CPU backend).
        py_workers: processes reading file bytes for the external source.
        seed: augmentation seed (offset by rank).
        drop_last: drop each rank's last partial batch instead of yielding it.
        epoch: first epoch to run (use :meth:`load_state_dict` to resume instead).
        sync_scores: merge score updates across ranks at every epoch end (needs an
            initialised process group when ``world_size > 1``).
        pipeline_config: crop size, normalisation, output dtype.
        reseed_every_epoch: start a fresh DALI pipeline for every epoch, seeded from
            (seed, rank, epoch), so an epoch's augmentation does not depend on the
            epochs before it: a run resumed from a checkpoint then sees the same random
            crops and flips as an uninterrupted one. Costs one pipeline start (worker
            spawn) per epoch.
        prefetch_next_epoch: when an epoch ends, choose the next plan at once and let
            DALI start decoding it while the caller validates or checkpoints (default:
            ``train``). Score updates must therefore be made inside the epoch's loop.

    Sharding: training plans are padded by wrap-around to a multiple of ``world_size``
    (see :meth:`EpochPlan.shard`), so every rank yields the same number of batches.

    Other sample sources: subclasses override :meth:`_make_publisher`,
    :meth:`_make_pipeline` and :meth:`_diagnose` (and :meth:`_default_pipeline_config`);
    the epoch, plan, update and state logic is shared (see
    :class:`orderdp_dali.cifar.ArrayPlanIterator`).
    """

    def __init__(
        self,
        index: SampleIndex,
        policy: Optional[Policy],
        batch_size: int,
        *,
        train: Optional[bool] = None,
        augment: Optional[bool] = None,
        device: str = "auto",
        device_id: Optional[int] = None,
        rank: Optional[int] = None,
        world_size: Optional[int] = None,
        num_threads: Optional[int] = None,
        py_workers: Optional[int] = None,
        seed: int = 0,
        drop_last: bool = False,
        epoch: int = 0,
        sync_scores: bool = True,
        prefetch_queue_depth: int = 2,
        reseed_every_epoch: bool = False,
        prefetch_next_epoch: Optional[bool] = None,
        pipeline_config: Optional[Any] = None,
    ) -> None:
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"Invalid batch_size: {batch_size!r} (need an int >= 1)")
        if policy is not None and policy.num_samples != len(index):
            raise ValueError(
                f"policy was built for {policy.num_samples} samples but the index of {index.root} has {len(index)}"
            )
        if device == "auto":
            device = "gpu" if torch.cuda.is_available() else "cpu"
        if device not in ("cpu", "gpu"):
            raise ValueError(f"Invalid device: {device!r} (choose 'gpu', 'cpu' or 'auto')")
        if device == "gpu" and not torch.cuda.is_available():
            raise RuntimeError("device='gpu' but CUDA is not available; use device='cpu'")
        env_rank, env_world = dist_info()
        self.rank = env_rank if rank is None else rank
        self.world_size = env_world if world_size is None else world_size
        EpochPlan(0, np.empty(0), np.empty(0)).shard(self.rank, self.world_size)  # validates both
        cpus = os.cpu_count() or 1
        self.index = index
        self.policy = policy
        self.batch_size = batch_size
        self.train = policy is not None if train is None else bool(train)
        self.augment = self.train if augment is None else bool(augment)
        self.device = device
        self.device_id = int(os.environ.get("LOCAL_RANK", 0)) if device_id is None else device_id
        self.num_threads = num_threads or max(1, min(4, cpus))
        self.py_workers = py_workers or max(1, min(4, cpus // 2))
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.sync_scores = sync_scores
        self.prefetch_queue_depth = prefetch_queue_depth
        self.reseed_every_epoch = bool(reseed_every_epoch)
        self.prefetch_next_epoch = self.train if prefetch_next_epoch is None else bool(prefetch_next_epoch)
        self.pipeline_config = pipeline_config or self._default_pipeline_config()
        self._epoch = int(epoch)
        self._plan: Optional[EpochPlan] = None
        self._pipe = None
        self._watchdog: Optional[WorkerWatchdog] = None
        self._publisher: Optional[PlanPublisher] = None
        self._dali_epoch = 0
        self._unfinished = False  # a pass was started and not run to its end
        self._prestarted: Optional[EpochPlan] = None  # the plan whose pass started early
        self._active = False
        self._pending: List[Tuple[np.ndarray, torch.Tensor]] = []

    # ------------------------------------------------------------------ plans
    @property
    def epoch(self) -> int:
        """The epoch that the next (or current) iteration covers."""
        return self._epoch

    @property
    def plan(self) -> EpochPlan:
        """The global plan of :attr:`epoch`, chosen on first use (after pending score updates)."""
        if self._plan is None:
            self._flush_updates()
            if self.policy is None:
                n = len(self.index)
                self._plan = EpochPlan(self._epoch, np.arange(n, dtype=np.int64), np.ones(n, np.float32))
            else:
                self._plan = self.policy.select(self._epoch)
        return self._plan

    @property
    def shard(self) -> EpochPlan:
        """This rank's part of :attr:`plan` (before dropping a partial batch)."""
        return self.plan.shard(self.rank, self.world_size, pad=self.train)

    def __len__(self) -> int:
        n = len(self.shard)
        return num_steps(n, self.batch_size, self.drop_last)

    # ------------------------------------------------------------ score updates
    def update(self, indices: Any, losses: Any) -> None:
        """Record a batch's unweighted per-sample losses for the policy.

        Losses are buffered as tensors and moved to the host once per epoch, so this does
        not synchronise the GPU on every step.
        """
        if self.policy is None:
            raise RuntimeError("update() needs a policy; this iterator has none (evaluation)")
        idx = indices.numpy() if isinstance(indices, torch.Tensor) and indices.device.type == "cpu" else np.asarray(
            indices.cpu() if isinstance(indices, torch.Tensor) else indices
        )
        loss = losses.detach() if isinstance(losses, torch.Tensor) else torch.as_tensor(np.asarray(losses))
        if loss.numel() != idx.size:
            raise ValueError(f"update() got {idx.size} indices but {loss.numel()} losses")
        self._pending.append((idx.astype(np.int64, copy=True).reshape(-1), loss.reshape(-1)))

    def _flush_updates(self) -> None:
        if not self._pending or self.policy is None:
            self._pending.clear()
            return
        idx = np.concatenate([i for i, _ in self._pending])
        losses = torch.cat([l.float() for _, l in self._pending]).cpu().numpy()
        self._pending.clear()
        self.policy.update(idx, losses)

    def end_epoch_sync(self) -> None:
        """Flush buffered losses and merge score tables across ranks (called at each epoch end)."""
        self._flush_updates()
        if self.policy is not None and self.sync_scores:
            all_reduce_scores(self.policy.scores)

    # ---------------------------------------------------------------- iterate
    def __iter__(self) -> Iterator[Dict[str, torch.Tensor]]:
        if self._active:
            raise RuntimeError("this iterator is already iterating an epoch; finish or break out of it first")
        return self._run_epoch()

    # ------------------------------------------------- sample-source hooks
    def _default_pipeline_config(self) -> Any:
        from orderdp_dali.pipelines import ImagePipelineConfig

        return ImagePipelineConfig()

    def _make_publisher(self) -> PlanPublisher:
        """The publisher of this source's plans (JPEG files of :attr:`index`)."""
        return PlanPublisher(self.index.root, self.index.paths, self.index.labels)

    def _make_pipeline(self, feeder: Any, **kwargs: Any):
        """The (unbuilt) DALI pipeline over ``feeder``; ``kwargs`` are :func:`image_pipeline`'s."""
        from orderdp_dali.pipelines import image_pipeline

        return image_pipeline(feeder, **kwargs)

    def _diagnose(self, sample_ids: np.ndarray) -> Optional[Exception]:
        """An error naming the bad sample among ``sample_ids`` after a pipeline failure, if one is found."""
        bad = find_undecodable(self.index, sample_ids)
        if bad is None:
            return None
        i, path, reason = bad
        return DecodeError(
            f"cannot decode sample {i} ({path}) in epoch {self._epoch}: {reason}. "
            "List bad files with 'orderdp-dali check-data' and pass them as the exclusion list."
        )

    def _start_pass(self, indices: np.ndarray, weights: np.ndarray, padded_len: int) -> None:
        if self._publisher is None:
            self._publisher = self._make_publisher()
        if self._pipe is not None and (self.reseed_every_epoch or self._unfinished):
            # A pass that was abandoned mid-way (or started for a plan that was then
            # replaced) cannot be rewound; a fresh pipeline costs a worker start-up, far
            # less than decoding the rest of an ImageNet epoch just to throw it away.
            self._stop_pipeline()
        self._publisher.publish(self._dali_epoch, indices, weights, padded_len)
        if self._pipe is None:
            self._pipe = self._make_pipeline(
                self._publisher.feeder(),
                train=self.augment,
                batch_size=self.batch_size,
                device=self.device,
                device_id=self.device_id if self.device == "gpu" else None,
                num_threads=self.num_threads,
                py_workers=self.py_workers,
                seed=self._pipeline_seed(),
                prefetch_queue_depth=self.prefetch_queue_depth,
                config=self.pipeline_config,
            )
            before = spawned_children()
            self._pipe.build()
            self._watchdog = WorkerWatchdog(spawned_children() - before)
        else:
            self._pipe.reset()

    def _layout(self) -> Tuple[EpochPlan, int, int]:
        """This rank's shard of the current plan, its step count and how many samples it uses."""
        shard = self.shard
        steps = num_steps(len(shard), self.batch_size, self.drop_last)
        if self.drop_last and steps == 0 and len(shard) > 0:
            raise ValueError(
                f"batch_size {self.batch_size} is larger than this rank's {len(shard)} planned samples "
                f"in epoch {self._epoch} with drop_last=True: the epoch would have no step; "
                "lower batch_size or set drop_last=False"
            )
        used = len(shard) if not self.drop_last else steps * self.batch_size
        return shard, steps, used

    def _prefetch_next_epoch(self) -> None:
        """Choose the next plan now and let DALI start decoding it.

        Called when a training epoch ends (scores already merged), so the pipeline fills
        its prefetch queue while the caller validates or checkpoints, as DALI's own
        iterator does with ``auto_reset``. Replacing the plan afterwards (e.g. with
        :meth:`load_state_dict`) only costs a pipeline restart.
        """
        if not self.prefetch_next_epoch or self._pipe is None or self.reseed_every_epoch:
            return
        try:
            shard, steps, used = self._layout()
        except ValueError:
            return  # raised again, with its message, when the epoch is iterated
        if steps == 0:
            return
        self._start_pass(shard.indices[:used], shard.weights[:used], steps * self.batch_size)
        self._unfinished = True
        self._prestarted = self._plan

    def _run_epoch(self) -> Iterator[Dict[str, torch.Tensor]]:
        shard, steps, used = self._layout()
        self._active = True
        try:
            if steps > 0:
                if self._prestarted is None or self._prestarted is not self._plan:
                    self._start_pass(shard.indices[:used], shard.weights[:used], steps * self.batch_size)
                self._prestarted = None
                self._unfinished = True
                for step in range(steps):
                    outputs = self._run_step(shard, step)
                    valid = min(self.batch_size, used - step * self.batch_size)
                    yield self._to_batch(outputs, valid)
                try:
                    with self._watchdog.guard():
                        self._pipe.run()
                except StopIteration:
                    pass
                else:
                    raise RuntimeError("DALI produced more batches than the plan holds")
                self._unfinished = False
                self._dali_epoch += 1
            self.end_epoch_sync()
            self._epoch += 1
            self._plan = None
            self._prefetch_next_epoch()
        finally:
            self._active = False

    def _run_step(self, shard: EpochPlan, step: int):
        try:
            with self._watchdog.guard():
                return self._pipe.run()
        except StopIteration:
            raise RuntimeError(f"DALI ended epoch {self._epoch} after {step} of its planned batches") from None
        except WorkerError:
            self.close()
            raise
        except Exception as e:
            self.close()
            # The failing sample is in this batch or one DALI prefetched after it.
            lo = step * self.batch_size
            hi = (step + 1 + self.prefetch_queue_depth) * self.batch_size
            diagnosis = self._diagnose(shard.indices[lo:hi])
            if diagnosis is not None:
                raise diagnosis from e
            if _is_worker_failure(e):
                raise WorkerError(
                    f"a DALI external-source worker process died in epoch {self._epoch}, step {step} "
                    f"({e}); it was killed or ran out of memory: check dmesg, or lower py_workers"
                ) from e
            raise RuntimeError(f"DALI pipeline failed in epoch {self._epoch}, step {step}: {e}") from e

    def _to_batch(self, outputs, valid: int) -> Dict[str, torch.Tensor]:
        from nvidia.dali.plugin.pytorch import feed_ndarray

        images, labels, indices, weights = outputs
        if self.device == "gpu":
            target = torch.device("cuda", self.device_id)
            stream = torch.cuda.current_stream(target)
        else:
            target, stream = torch.device("cpu"), None
        img = images.as_tensor()
        if self._pipe.exec_dynamic:
            # The dynamic executor's outputs own their memory (DALI's own iterator relies on
            # this too), so torch can share it: no 38 MB copy per 64-image batch.
            with target:
                data = torch.from_dlpack(img)
        else:
            data = torch.empty(img.shape(), dtype=_TORCH_DTYPES[self.pipeline_config.dtype], device=target)
            feed_ndarray(img, data, cuda_stream=stream)
        host = {
            name: torch.from_numpy(np.array(tl.as_tensor())).reshape(-1)
            for name, tl in (("label", labels), ("index", indices), ("weight", weights))
        }
        batch = {"data": data[:valid], "index": host["index"][:valid]}
        batch["label"] = host["label"][:valid].to(target, non_blocking=True)
        batch["weight"] = host["weight"][:valid].to(target, non_blocking=True)
        return batch

    # ------------------------------------------------------------- lifecycle
    def state_dict(self) -> Dict[str, Any]:
        """Epoch counter and policy state; pending losses are flushed first. Call between epochs."""
        if self._active:
            raise RuntimeError("state_dict() mid-epoch would lose the epoch's position; call it between epochs")
        self._flush_updates()
        return {
            "version": STATE_VERSION,
            "epoch": self._epoch,
            "dataset": self.index.fingerprint,
            "policy": None if self.policy is None else self.policy.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from ``state``: the next epoch and its plan equal the saved run's."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported iterator state version {state.get('version')!r}")
        if state.get("dataset") != self.index.fingerprint:
            raise ValueError(
                f"iterator state was saved for another dataset (fingerprint {str(state.get('dataset'))[:12]}..., "
                f"this one {self.index.fingerprint[:12]}... at {self.index.root})"
            )
        if (state.get("policy") is None) != (self.policy is None):
            raise ValueError("iterator state and this iterator disagree on having a policy")
        if self.policy is not None:
            self.policy.load_state_dict(state["policy"])
        self._epoch = int(state["epoch"])
        self._plan = None
        self._pending.clear()

    def _pipeline_seed(self) -> int:
        if not self.reseed_every_epoch:
            return self.seed + self.rank
        return int(np.random.SeedSequence([self.seed, self.rank, self._epoch]).generate_state(1)[0] >> 1)

    def _stop_pipeline(self) -> None:
        """Drop the DALI pipeline (its workers exit); the next pass starts a new one at DALI epoch 0."""
        if self._watchdog is not None:  # first, so the workers' planned exit is not reported as a death
            self._watchdog.close()
            self._watchdog = None
        self._pipe = None
        self._dali_epoch = 0
        self._unfinished = False
        self._prestarted = None

    def close(self) -> None:
        """Stop DALI's workers and remove the published plans."""
        self._stop_pipeline()
        if self._publisher is not None:
            self._publisher.close()
            self._publisher = None

    def __enter__(self) -> "DALIPlanIterator":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


_TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16}

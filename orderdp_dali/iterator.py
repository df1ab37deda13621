"""The iterator: a pruning policy's plan, decoded by DALI, as PyTorch batches.

Each epoch the policy chooses its plan before the epoch starts. This rank's batches of it
(:class:`~orderdp_dali.plan_source.PlanSource`) feed a batch-mode ``fn.external_source``
in the training process; DALI reads the planned files with ``fn.io.file.read`` in its own
threads, decodes and augments them (:mod:`orderdp_dali.pipelines`), and
:class:`~orderdp_dali.dali_runner.PipelineRunner` hands the batches to torch. One DALI
pipeline serves every epoch of the run: each epoch is one pass of it (``reset()`` between
them), and DALI's own checkpoint makes a resume exact. Batches are dicts in DALI's style::

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
import time
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple

import numpy as np
import torch

from orderdp_dali.checkpoint import numpy_to_torch, torch_to_numpy
from orderdp_dali.dali_runner import PipelineRunner, PipelineState
from orderdp_dali.data.fingerprints import compare_fingerprints
from orderdp_dali.data.source import TRANSFORMS, DataSource, Samples
from orderdp_dali.distributed import dist_info
from orderdp_dali.errors import DecodeError
from orderdp_dali.plan import EpochPlan
from orderdp_dali.plan_source import BatchFeed, EpochBatches, PlanSource
from orderdp_dali.policies.base import Policy
from orderdp_dali.score_updates import ScoreUpdates

__all__ = ["DALIPlanIterator", "PipelineFactory", "default_pipeline"]

log = logging.getLogger(__name__)
ITERATOR_STATE_VERSION = 2  # 2: with each rank's DALI pipeline state ("pipelines"); 1 still loads
OUTPUTS = ("data", "label", "index", "weight")

#: ``factory(feed, *, train, batch_size, device, device_id, num_threads, seed, prefetch_queue_depth,
#: checkpoint, config) -> Pipeline`` (unbuilt): the DALI pipeline over a :class:`BatchFeed`, whose
#: outputs are :data:`OUTPUTS` (see :func:`orderdp_dali.pipelines.common.plan_pipeline`).
PipelineFactory = Callable[..., Any]


def default_pipeline(transform: str) -> Tuple[PipelineFactory, Any]:
    """The pipeline factory and default pipeline config for a source's ``transform``
    (:data:`~orderdp_dali.data.source.TRANSFORMS`)."""
    from functools import partial

    from orderdp_dali.pipelines import CifarPipelineConfig, ImagePipelineConfig, cifar_pipeline, image_pipeline

    if transform not in TRANSFORMS:
        raise ValueError(f"Unknown data source transform {transform!r}; choose one of {TRANSFORMS}")
    if transform == "arrays":
        return cifar_pipeline, CifarPipelineConfig()
    return partial(image_pipeline, read_files=transform == "files"), ImagePipelineConfig()


class DALIPlanIterator:
    """Iterates one epoch per ``iter()``: this rank's shard of the policy's plan, through DALI.

    Args:
        index: the split, any :class:`~orderdp_dali.data.source.DataSource` (class folders or
            a file list, :class:`~orderdp_dali.data.folder.SampleIndex`; tar shards,
            :class:`~orderdp_dali.data.tar.TarIndex`; CIFAR arrays,
            :class:`~orderdp_dali.data.cifar.ArrayDataset`).
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
        num_threads: DALI CPU threads (file reading, and decoding on the CPU backend).
        seed: augmentation seed. The run's one pipeline is seeded from (seed, rank, the
            epoch it is first built at); a resumed run restores the pipeline's random
            state from the checkpoint instead (:meth:`state_dict`), so it sees the same
            crops and flips as an uninterrupted run.
        drop_last: drop each rank's last partial batch instead of yielding it.
        epoch: first epoch to run (use :meth:`load_state_dict` to resume instead).
        sync_scores: merge score updates across ranks at every epoch end (needs an
            initialised process group when ``world_size > 1``).
        prefetch_queue_depth: batches DALI decodes ahead of the one being trained on.
        prefetch_next_epoch: when an epoch ends, choose the next plan at once and let
            DALI start decoding it while the caller validates or checkpoints (default:
            ``train``). Score updates must therefore be made inside the epoch's loop.
        pipeline_config: crop size, normalisation, output dtype (default: the
            ``pipeline``'s default config).
        pipeline: the DALI pipeline factory (:data:`PipelineFactory`); default: the one the
            source's ``transform`` needs (:func:`default_pipeline`). A benchmark passes its
            own (e.g. reading without decoding).
        resolution: ``resolution(epoch) -> pixels``, each training epoch's crop (progressive
            resizing, e.g. ``functools.partial(resolution_for_epoch, cfg=...)`` from
            :mod:`orderdp_dali.progressive`); decided with the epoch's plan and handed to DALI
            with every batch, so the one pipeline serves every size. ``None``: the pipeline
            config's fixed crop. Needs augmentation (it sizes the random-resized crops) and
            JPEG samples; the factory is then called with ``sized=True``.

    Sharding: training plans are padded by wrap-around to a multiple of ``world_size``
    (see :meth:`EpochPlan.shard`), so every rank yields the same number of batches. In
    training a last batch of one sample is merged into the batch before it (BatchNorm
    cannot train on one sample; see :class:`~orderdp_dali.plan_source.EpochBatches`).

    One pipeline per iterator: it is built on first use (or by :meth:`start`), and each
    epoch is one pass of it. A pass that fails (a file that breaks decoding) rebuilds the
    pipeline once, from the state it had when that epoch began.

    Other sample sources implement :class:`~orderdp_dali.data.source.DataSource`; other
    pipelines are a ``pipeline`` factory: the iterator is not subclassed.
    """

    def __init__(
        self,
        index: DataSource,
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
        seed: int = 0,
        drop_last: bool = False,
        epoch: int = 0,
        sync_scores: bool = True,
        prefetch_queue_depth: int = 2,
        prefetch_next_epoch: Optional[bool] = None,
        pipeline_config: Optional[Any] = None,
        pipeline: Optional[PipelineFactory] = None,
        resolution: Optional[Callable[[int], int]] = None,
    ) -> None:
        if device == "auto":
            device = "gpu" if torch.cuda.is_available() else "cpu"
        if device not in ("cpu", "gpu"):
            raise ValueError(f"Invalid device: {device!r} (choose 'gpu', 'cpu' or 'auto')")
        if device == "gpu" and not torch.cuda.is_available():
            raise RuntimeError("device='gpu' but CUDA is not available; use device='cpu'")
        if not isinstance(prefetch_queue_depth, int) or prefetch_queue_depth < 1:
            raise ValueError(f"Invalid prefetch_queue_depth: {prefetch_queue_depth!r} (need an int >= 1)")
        env_rank, env_world = dist_info()
        train = policy is not None if train is None else bool(train)
        if resolution is not None and not (train if augment is None else augment):
            raise ValueError("resolution (progressive resizing) needs augmentation: it sizes the random-resized crops")
        if resolution is not None and index.transform == "arrays":
            raise ValueError("resolution (progressive resizing) needs JPEG samples; array sources (CIFAR) keep their "
                             "own image size")
        self.source = PlanSource(
            len(index),
            policy,
            batch_size,
            rank=env_rank if rank is None else rank,
            world_size=env_world if world_size is None else world_size,
            pad=train,
            drop_last=drop_last,
            epoch=epoch,
            split=f"the index of {index.root}",
            resolution=resolution,
        )
        self.scores = ScoreUpdates(policy, sync=sync_scores)
        self.index = index
        self.train = train
        self.augment = train if augment is None else bool(augment)
        self.device = device
        self.device_id = int(os.environ.get("LOCAL_RANK", 0)) if device_id is None else device_id
        self.num_threads = num_threads or max(1, min(4, os.cpu_count() or 1))
        self.seed = int(seed)
        self.prefetch_queue_depth = prefetch_queue_depth
        self.prefetch_next_epoch = train if prefetch_next_epoch is None else bool(prefetch_next_epoch)
        factory, default_config = default_pipeline(index.transform)
        self.pipeline = pipeline or factory
        self.pipeline_config = pipeline_config or default_config
        # The latest pass: start_s (seconds to begin it: reset and first scheduling, plus the
        # build when one was needed), prestarted (begun when the previous epoch ended, outside
        # this epoch), built (a pipeline was built to begin it), first_batch_s (iteration
        # start to the first batch).
        self.last_pass: Dict[str, Any] = {}
        self._samples: Optional[Samples] = None
        self._runner: Optional[PipelineRunner] = None
        self._begun: Optional[Tuple[EpochPlan, float, bool]] = None  # (plan, seconds, built) of the begun pass
        self._active = False

    # ------------------------------------------------------------------ plans
    @property
    def policy(self) -> Optional[Policy]:
        return self.source.policy

    @property
    def batch_size(self) -> int:
        return self.source.batch_size

    @property
    def rank(self) -> int:
        return self.source.rank

    @property
    def world_size(self) -> int:
        return self.source.world_size

    @property
    def epoch(self) -> int:
        """The epoch that the next (or current) iteration covers."""
        return self.source.epoch

    @property
    def resolution(self) -> Optional[int]:
        """The training crop of :attr:`epoch` with progressive resizing, else ``None`` (the
        pipeline config's fixed crop)."""
        size_of = self.source.resolution
        return None if size_of is None else int(size_of(self.epoch))

    @property
    def plan(self) -> EpochPlan:
        """The global plan of :attr:`epoch`, chosen on first use (after pending score updates)."""
        if not self.source.has_plan:
            self.scores.flush()
        return self.source.plan

    @property
    def shard(self) -> EpochPlan:
        """This rank's part of :attr:`plan` (before dropping a partial batch)."""
        self.plan  # noqa: B018 - choose it after flushing the pending updates
        return self.source.shard

    def __len__(self) -> int:
        self.plan  # noqa: B018
        return len(self.source)

    def update(self, indices: Any, losses: Any) -> None:
        """Record a batch's unweighted per-sample losses for the policy.

        Losses are buffered as tensors and moved to the host once per epoch, so this does
        not synchronise the GPU on every step.
        """
        self.scores.update(indices, losses)

    def end_epoch_sync(self) -> None:
        """Flush buffered losses and merge score tables across ranks (called at each epoch end)."""
        self.scores.end_epoch()

    @property
    def pipelines_built(self) -> int:
        """DALI pipelines this iterator has constructed (1 for a run without failures or resumes)."""
        return 0 if self._runner is None else self._runner.builds

    @property
    def pipeline_build_s(self) -> Optional[float]:
        """Seconds the last pipeline construction took (build and first scheduling)."""
        return None if self._runner is None else self._runner.build_s

    # ---------------------------------------------------------------- iterate
    def start(self) -> None:
        """Build the pipeline and let it start decoding the current epoch, before anyone asks.

        Training calls this at start-up, so the first timed epoch pays for neither the build
        nor its first batches (as DALI's iterator does with ``prepare_first_batch``).
        Optional: the first iteration does it otherwise. A no-op when already started.
        """
        if self._active:
            raise RuntimeError("start() while an epoch is being iterated")
        if not self._begun_for_current_plan():
            self.plan  # noqa: B018 - chosen after flushing the pending updates
            self._begin_early()

    def __iter__(self) -> Iterator[Dict[str, torch.Tensor]]:
        if self._active:
            raise RuntimeError("this iterator is already iterating an epoch; finish or break out of it first")
        self.plan  # noqa: B018 - chosen now, not when the generator first runs
        batches = self.source.batches()  # a drop_last error is raised here, by iter()
        return self._run_epoch(batches)

    def _run_epoch(self, batches: EpochBatches) -> Iterator[Dict[str, torch.Tensor]]:
        self._active = True
        runner: Optional[PipelineRunner] = None
        ended = False
        try:
            prestarted = self._begun_for_current_plan()
            if not prestarted:
                self._begin(batches)
            _, start_s, built = self._begun
            runner = self._runner
            self.last_pass = {"start_s": start_s, "prestarted": prestarted, "built": built}
            t0 = time.perf_counter()
            for step in range(batches.steps):
                batch = self._next_batch(runner, batches, step)
                if step == 0:
                    self.last_pass["first_batch_s"] = time.perf_counter() - t0
                yield batch
            ended = True
            self._begun = None
            if not runner.end():
                raise RuntimeError(f"DALI produced more batches than epoch {batches.epoch}'s plan holds")
            self.scores.end_epoch()
            self.source.advance()
            if self.prefetch_next_epoch:
                self._begin_early()  # the scores are merged: choose the next plan now
        finally:
            self._active = False
            if not ended and runner is not None and runner.passing:
                self._begun = None
                runner.abort()  # left mid-epoch (break, or an error in the caller's loop)

    def _next_batch(self, runner: PipelineRunner, batches: EpochBatches, step: int) -> Dict[str, torch.Tensor]:
        try:
            batch = runner.next()
        except StopIteration:
            runner.fail()
            raise RuntimeError(
                f"DALI ended epoch {batches.epoch} after {step} of its {batches.steps} batches"
            ) from None
        except Exception as e:
            runner.fail()  # the next pass rebuilds the pipeline from the state this epoch began with
            raise self._explain_failure(e, batches, step) from e
        for key in ("label", "index", "weight"):
            batch[key] = batch[key].reshape(-1)
        return batch

    def _explain_failure(self, error: Exception, batches: EpochBatches, step: int) -> Exception:
        """DALI's error for batch ``step``, as one naming the sample that broke it when one is found."""
        indices, _ = batches.batch(step)
        broken = self._samples.find_broken(indices)
        where = f"epoch {batches.epoch}, step {step}"
        if broken is not None:
            i, path, reason = broken
            return DecodeError(
                f"cannot read or decode sample {i} ({path}) in {where}: {reason}. "
                "List every bad file with 'orderdp-dali check-data --deep' and pass the list as "
                "data.exclude_file (or SampleIndex.scan(..., exclude=...))."
            )
        return RuntimeError(
            f"DALI pipeline failed in {where} (samples {indices[:8].tolist()}"
            f"{'...' if len(indices) > 8 else ''}): {_dali_summary(error)}"
        )

    # ------------------------------------------------------------- passes
    def _fresh_seed(self) -> int:
        """The seed of a pipeline built without a checkpoint: a pure function of (seed, rank,
        the epoch it is built at), so a run restarted without pipeline state draws new crops."""
        entropy = [self.seed, self.rank, self.epoch] if self.train else [self.seed, self.rank]
        return int(np.random.SeedSequence(entropy).generate_state(1)[0] >> 1)

    def _get_runner(self) -> PipelineRunner:
        """The run's pipeline runner (its pipeline is built when the first pass begins)."""
        if self._runner is None:
            if self._samples is None:
                self._samples = self.index.make_samples()
            feed = BatchFeed(self._samples, sized=self.source.resolution is not None)
            sized = {"sized": True} if feed.sized else {}  # progressive resizing: per-sample sizes

            def make(checkpoint: Optional[bytes]) -> Any:
                return self.pipeline(
                    feed,
                    train=self.augment,
                    batch_size=self.source.max_batch,  # one more where a last single sample is merged
                    device=self.device,
                    device_id=self.device_id if self.device == "gpu" else None,
                    num_threads=self.num_threads,
                    seed=self._fresh_seed(),
                    prefetch_queue_depth=self.prefetch_queue_depth,
                    checkpoint=checkpoint,
                    config=self.pipeline_config,
                    **sized,
                )

            self._runner = PipelineRunner(make, feed, OUTPUTS)
        return self._runner

    def _begun_for_current_plan(self) -> bool:
        """Whether the pipeline is already running a pass over this epoch's plan (started early)."""
        runner = self._runner
        return (runner is not None and runner.passing and runner.step == 0 and self._begun is not None
                and self.source.has_plan and self._begun[0] is self.source.plan)

    def _begin(self, batches: EpochBatches) -> None:
        """Begin the pass over ``batches``: abandon a pass begun for a plan since replaced, build the
        pipeline if there is none, let DALI start decoding."""
        runner = self._get_runner()
        if runner.passing:
            runner.abort()  # begun for a plan that was replaced (e.g. by load_state_dict)
        builds = runner.builds
        try:
            seconds = runner.begin(batches)
        except Exception:
            runner.fail()
            raise
        self._begun = (self.source.plan, seconds, runner.builds != builds)

    def _begin_early(self) -> None:
        """Begin the pass over this epoch's plan before it is iterated.

        Called by :meth:`start` and when a training epoch ends, so the pipeline fills its
        prefetch queue while the caller validates or checkpoints, as DALI's own iterator
        does with ``auto_reset``.
        """
        try:
            batches = self.source.batches()
        except ValueError:
            return  # raised again, with its message, when the epoch is iterated
        self._begin(batches)

    # ------------------------------------------------------------- lifecycle
    def state_dict(self) -> Dict[str, Any]:
        """Epoch counter, dataset fingerprint, policy state and this rank's pipeline state.

        ``"pipelines"`` holds one entry per rank (``None`` for the others): this rank's DALI
        checkpoint, so a resumed run continues its random crops and flips exactly. Under
        DDP, gather the entries of every rank into one list before saving (the training
        script does); :meth:`load_state_dict` on each rank takes its own. Plain data and
        tensors only, so ``torch.load(path, weights_only=True)`` reads it back. Call between
        epochs.
        """
        if self._active:
            raise RuntimeError("state_dict() mid-epoch would lose the epoch's position; call it between epochs")
        self.scores.flush()
        pipelines: List[Optional[Dict[str, Any]]] = [None] * self.world_size
        saved = None if self._runner is None else self._runner.checkpoint()
        if saved is not None:
            pipelines[self.rank] = {
                "epoch": self.epoch,
                "epoch_idx": saved.epoch_idx,
                "checkpoint": torch.frombuffer(bytearray(saved.checkpoint), dtype=torch.uint8),
                "graph": self._pipeline_graph(),
            }
        return {
            "version": ITERATOR_STATE_VERSION,
            "epoch": self.epoch,
            "dataset": self.index.fingerprint,
            "policy": None if self.policy is None else numpy_to_torch(self.policy.state_dict()),
            "pipelines": pipelines,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from ``state``: the next epoch and its plan equal the saved run's, and so do
        the pipeline's random crops and flips when ``state`` holds this rank's pipeline state
        for that epoch (saved with the same number of ranks); otherwise the pipeline draws
        from fresh seeds, and a changed world size is reported."""
        if state.get("version") not in (1, ITERATOR_STATE_VERSION):
            raise ValueError(f"unsupported iterator state version {state.get('version')!r}")
        if compare_fingerprints(state.get("dataset"), self.index.fingerprint) not in ("same", "legacy"):
            raise ValueError(
                f"iterator state was saved for another dataset (fingerprint {str(state.get('dataset'))[:12]}..., "
                f"this one {self.index.fingerprint[:12]}... at {self.index.root})"
            )
        if (state.get("policy") is None) != (self.policy is None):
            raise ValueError("iterator state and this iterator disagree on having a policy")
        if self.policy is not None:
            self.policy.load_state_dict(torch_to_numpy(state["policy"]))
        self.scores.clear()
        epoch = int(state["epoch"])
        self.source.set_epoch(epoch)
        entry = self._own_pipeline_state(state.get("pipelines"), epoch)
        if entry is not None:
            self._get_runner().restore(entry)
            self._begun = None
        elif self._runner is not None and self._runner.passing:
            self._runner.abort()  # begun for the plan the state replaces
            self._begun = None

    def _own_pipeline_state(self, pipelines: Any, epoch: int) -> Optional[PipelineState]:
        """This rank's saved pipeline state for ``epoch``, or ``None`` (said once, by rank 0, when
        a run resumes without it)."""
        reason, now = None, self._pipeline_graph()
        if not pipelines:
            reason = "the checkpoint holds no DALI pipeline state (saved by an older version)"
        elif len(pipelines) != self.world_size:
            reason = (f"the checkpoint's DALI pipeline state is from {len(pipelines)} rank(s), "
                      f"this run has {self.world_size}")
        elif pipelines[self.rank] is None:
            reason = f"the checkpoint holds no DALI pipeline state for rank {self.rank}"
        elif int(pipelines[self.rank]["epoch"]) != epoch:
            return None  # saved for another epoch than the one continued (an epoch set by hand)
        elif pipelines[self.rank].get("graph", now) != now:  # states saved before the graph was recorded: as now
            # DALI restores a checkpoint only into the operator graph that wrote it
            saved = pipelines[self.rank]["graph"]
            changed = ", ".join(f"{k} {saved.get(k)} -> {v}" for k, v in now.items() if saved.get(k) != v)
            reason = f"the checkpoint's DALI pipeline has other operators ({changed})"
        if reason is not None:
            if self.rank == 0 and self.train:
                log.warning("%s: augmentation goes on from fresh pipeline seeds at epoch %d "
                            "(plans and scores resume exactly)", reason, epoch)
            return None
        entry = pipelines[self.rank]
        checkpoint = entry["checkpoint"]
        data = checkpoint.numpy().tobytes() if isinstance(checkpoint, torch.Tensor) else bytes(checkpoint)
        return PipelineState(data, int(entry["epoch_idx"]))

    def _pipeline_graph(self) -> Dict[str, bool]:
        """What decides the pipeline's operators (not their arguments): saved beside its checkpoint."""
        return {"augment": self.augment, "sized": self.source.resolution is not None}

    def close(self) -> None:
        """Drop the pipeline (DALI's threads end with it); the iterator builds a new one if used again."""
        if self._runner is not None:
            self._runner.close()
        self._begun = None

    def __enter__(self) -> "DALIPlanIterator":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _dali_summary(error: Exception) -> str:
    """DALI's multi-line error in one line: the operator and the cause, without the traceback
    of the pipeline definition (the full text stays on the chained exception)."""
    kept, in_traceback = [], False
    for line in (raw.strip() for raw in str(error).splitlines()):
        if line.endswith("with the following traceback:"):
            kept.append(line[: -len("which was used in the pipeline definition with the following traceback:")].strip())
            in_traceback = True
        elif line == "encountered:":
            in_traceback = False
        elif (
            line
            and not in_traceback
            and not line.startswith(("Critical error in pipeline", "Current pipeline object"))
        ):
            kept.append(line)
    return " ".join(k for k in kept if k)[:500] or type(error).__name__

"""One DALI pipeline for a whole run, driven one pass (epoch) at a time, as torch batches.

A thin layer over DALI's scheduled API (``schedule_run`` / ``share_outputs`` /
``release_outputs``) and its checkpointing, in the way DALI's own ``DALIGenericIterator``
uses them with ``auto_reset``: the pipeline is built once; each pass is announced to the
feed (:class:`~orderdp_dali.plan_source.BatchFeed`) and scheduled at once, so DALI decodes
its first batches while the caller still validates or checkpoints; after a pass the
pipeline is ``reset()`` for the next. Why not a pipeline per epoch: on a GPU every build
makes a new mixed decoder (thread pool, nvImageCodec, hardware nvJPEG handle, batch
preallocation, device and pinned host padding per thread), and DALI's memory pools never
shrink.

Exact resume uses DALI's checkpoint (``enable_checkpointing=True``): between passes
:meth:`PipelineRunner.checkpoint` returns the pipeline's state (its random operators and
the feed's epoch and iteration), and a runner :meth:`~PipelineRunner.restore`\\ d from it
builds its pipeline with ``checkpoint=`` and replays the following passes exactly. The
state at the start of each pass is kept, so a pass that fails (a file that breaks
decoding) or is abandoned rebuilds the pipeline from there.

Outputs become torch tensors as in ``DALIGenericIterator``: shared through DLPack under
DALI's dynamic executor (its outputs own their memory), copied otherwise. GPU outputs are
bound to torch's current stream instead of being waited for on the host.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Sequence

import torch

from orderdp_dali.plan_source import BatchFeed, EpochBatches

__all__ = ["PipelineRunner", "PipelineState"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PipelineState:
    """DALI's serialized pipeline checkpoint at the start of a pass, and that pass's DALI epoch index."""

    checkpoint: bytes
    epoch_idx: int


class PipelineRunner:
    """Runs one pipeline over many passes of one feed.

    Args:
        make_pipeline: ``make_pipeline(checkpoint)`` returns the unbuilt pipeline over
            ``feed`` (``checkpoint`` is ``None`` or DALI's serialized checkpoint to build it
            from); its source must be ``feed``.
        feed: the batch callback every pass is announced to.
        output_map: names of the pipeline's outputs, in order (DALI's iterator convention).

    Attributes:
        builds: pipelines constructed so far (1 for a run that never failed or resumed).
        build_s: seconds the last construction took (build and first scheduling).
        step: batches returned in the current pass.
    """

    def __init__(
        self,
        make_pipeline: Callable[[Optional[bytes]], Any],
        feed: BatchFeed,
        output_map: Sequence[str],
    ) -> None:
        self._make_pipeline = make_pipeline
        self.feed = feed
        self.output_map = tuple(output_map)
        self.pipeline: Any = None
        self.builds = 0
        self.build_s: Optional[float] = None
        self.step = 0
        self.passing = False  # a pass is begun and not yet ended
        self._epoch_idx = 0  # DALI's epoch index of the next (or current) pass
        self._at_pass_start: Optional[PipelineState] = None  # the pass's start, to rebuild from
        self._restore_from: Optional[PipelineState] = None  # rebuild from this at the next pass

    # ------------------------------------------------------------ passes
    def begin(self, batches: EpochBatches) -> float:
        """Announce ``batches`` as the next pass and let DALI start decoding it; returns the
        seconds this took (including a build when there is no pipeline yet)."""
        if self.passing:
            raise RuntimeError("a pass is already running; end or abort it first")
        t0 = time.perf_counter()
        built = self.pipeline is None
        if built:
            self._build()
        self._at_pass_start = PipelineState(bytes(self.pipeline.checkpoint()), self._epoch_idx)
        self.feed.begin(batches, self._epoch_idx)
        self.step = 0
        self.passing = True
        self.pipeline.schedule_run()  # the feed runs here for the first batches; decoding goes on in DALI
        elapsed = time.perf_counter() - t0
        if built:
            self.build_s = elapsed
        return elapsed

    def next(self) -> Dict[str, torch.Tensor]:
        """The pass's next batch; raises whatever DALI raised for it (call :meth:`fail` then)."""
        pipe = self.pipeline
        if pipe.device_id is not None and pipe.exec_dynamic:
            # Bind the GPU outputs to torch's current stream: torch's kernels are ordered after
            # DALI's work without a host wait, and a buffer goes back to DALI only after the
            # kernels queued on it have run.
            stream = torch.cuda.current_stream(torch.device("cuda", pipe.device_id))
            outputs = pipe.share_outputs(cuda_stream=stream)
        else:
            outputs = pipe.share_outputs()
        batch = _to_torch(outputs, self.output_map, pipe)
        pipe.release_outputs()
        pipe.schedule_run()
        self.step += 1
        return batch

    def end(self) -> bool:
        """Close a pass whose batches were all taken and reset the pipeline for the next one.

        Returns:
            False when DALI still holds batches the plan does not (the pass is aborted).
        """
        clean = self.pipeline.empty()
        if not clean:
            self.abort()
            return False
        self._reset()
        return True

    def abort(self) -> None:
        """Abandon the running pass: stop the feed, drop the batches in flight, reset.

        If DALI fails on a batch in flight, the pipeline is dropped and the next pass
        rebuilds it from this pass's start instead.
        """
        if not self.passing:
            return
        self.feed.stop()
        try:
            while not self.pipeline.empty():
                self.pipeline.share_outputs()
                self.pipeline.release_outputs()
            self.pipeline.schedule_run()  # meets the stopped feed: DALI's epoch ends here
            self._reset()
        except Exception as e:  # a bad file among the batches in flight: start over from the pass's start
            log.debug("dropping the pipeline after an error while abandoning a pass: %s", e)
            self.fail()

    def fail(self) -> None:
        """After DALI raised in this pass: drop the pipeline; the next pass rebuilds it from
        this pass's start (so its random state is the one the pass began with)."""
        self.pipeline = None
        self.passing = False
        if self._at_pass_start is not None:
            self._restore_from = self._at_pass_start

    def _reset(self) -> None:
        self.pipeline.reset()
        self._epoch_idx += 1
        self.passing = False

    # ------------------------------------------------------------ state
    def checkpoint(self) -> Optional[PipelineState]:
        """The state to resume from, taken between passes or at the start of a begun pass
        (before its first batch); ``None`` before any pipeline was built.

        Raises:
            RuntimeError: in the middle of a pass.
        """
        if self.passing:
            if self.step > 0:
                raise RuntimeError("a pipeline checkpoint mid-pass would lose the pass's position")
            return self._at_pass_start
        if self.pipeline is None:
            return self._restore_from
        return PipelineState(bytes(self.pipeline.checkpoint()), self._epoch_idx)

    def restore(self, state: PipelineState) -> None:
        """Drop the pipeline; the next pass builds it from ``state`` (DALI's ``checkpoint=``)."""
        self.close()
        self._restore_from = state

    def close(self) -> None:
        """Drop the pipeline (its threads stop; batches already returned stay valid)."""
        self.pipeline = None
        self.passing = False

    def _build(self) -> None:
        restore, self._restore_from = self._restore_from, None
        pipe = self._make_pipeline(None if restore is None else restore.checkpoint)
        pipe.build()
        self.pipeline = pipe
        self.builds += 1
        self._epoch_idx = 0 if restore is None else restore.epoch_idx


def _to_torch(outputs: Sequence[Any], names: Sequence[str], pipeline: Any) -> Dict[str, torch.Tensor]:
    from nvidia.dali.plugin.pytorch import feed_ndarray
    from nvidia.dali.plugin.pytorch.torch_utils import to_torch_type
    from nvidia.dali.tensors import TensorGPU

    batch: Dict[str, torch.Tensor] = {}
    for name, tensor_list in zip(names, outputs):
        tensor = tensor_list.as_tensor()
        on_gpu = isinstance(tensor, TensorGPU)
        device = torch.device("cuda", pipeline.device_id) if on_gpu else torch.device("cpu")
        if pipeline.exec_dynamic:
            # The dynamic executor's outputs own their memory: share it (no copy of the images).
            with device:
                batch[name] = torch.from_dlpack(tensor)
        else:
            out = torch.empty(tensor.shape(), dtype=to_torch_type[tensor.dtype], device=device)
            stream = torch.cuda.current_stream(device) if on_gpu else None
            feed_ndarray(tensor, out, cuda_stream=stream)
            batch[name] = out
    return batch

"""One pass of a DALI pipeline, batch by batch, as dicts of torch tensors.

A thin layer over DALI's scheduled API (``schedule_run`` / ``share_outputs`` /
``release_outputs``), in the way DALI's own ``DALIGenericIterator`` uses it, with two
differences that the plan iterator needs: :meth:`PipelinePass.start` returns at once after
DALI has started decoding the first batches (so the next epoch can start while the caller
validates), and the pass length is the plan's, known before it starts (the source ends
the pass with ``StopIteration``; partial last batches are real, smaller batches).

Outputs become torch tensors as in ``DALIGenericIterator``: shared through DLPack under
DALI's dynamic executor (its outputs own their memory), copied otherwise. GPU outputs are
bound to torch's current stream instead of being waited for on the host.
"""
from __future__ import annotations

import time
from typing import Any, Dict, Optional, Sequence

import torch

__all__ = ["PipelinePass"]


class PipelinePass:
    """Runs an unbuilt pipeline once over its source.

    Args:
        pipeline: a DALI pipeline whose source raises ``StopIteration`` after the pass.
        output_map: names of the pipeline's outputs, in order (DALI's iterator convention).
        steps: batches the pass yields.
    """

    def __init__(self, pipeline: Any, output_map: Sequence[str], steps: int) -> None:
        self.pipeline = pipeline
        self.output_map = tuple(output_map)
        self.steps = int(steps)
        self.step = 0  # batches returned so far
        self.start_s: Optional[float] = None  # build + first scheduling, seconds
        self.first_batch_s: Optional[float] = None  # start() to the first batch returned
        self._t0 = 0.0

    def start(self) -> "PipelinePass":
        """Build the pipeline and let it decode its first ``prefetch_queue_depth`` batches."""
        self._t0 = time.perf_counter()
        self.pipeline.build()
        self.pipeline.schedule_run()  # feeds the first batches (our source runs here) and returns
        self.start_s = time.perf_counter() - self._t0
        return self

    def next(self) -> Dict[str, torch.Tensor]:
        """The next batch; raises whatever DALI raised for it."""
        if self.start_s is None:
            self.start()
        if self.pipeline.device_id is not None and self.pipeline.exec_dynamic:
            # Bind the GPU outputs to torch's current stream: torch's kernels are ordered after
            # DALI's work without a host wait, and a buffer goes back to DALI only after the
            # kernels queued on it have run.
            stream = torch.cuda.current_stream(torch.device("cuda", self.pipeline.device_id))
            outputs = self.pipeline.share_outputs(cuda_stream=stream)
        else:
            outputs = self.pipeline.share_outputs()
        batch = _to_torch(outputs, self.output_map, self.pipeline)
        self.pipeline.release_outputs()
        self.pipeline.schedule_run()
        self.step += 1
        if self.first_batch_s is None:
            self.first_batch_s = time.perf_counter() - self._t0
        return batch

    def finished_cleanly(self) -> bool:
        """After :attr:`steps` batches: whether DALI has nothing more scheduled (the source ended)."""
        return self.step == self.steps and self.pipeline.empty()

    def close(self) -> None:
        """Drop the pipeline (its threads stop; batches already returned stay valid)."""
        self.pipeline = None


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

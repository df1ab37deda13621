"""The GPU path (``device="gpu"``: mixed decoding, augmentation on the GPU). Skipped without CUDA.

Each test can fail: labels and weights must belong to their indices on the GPU, GPU-decoded
pixels must match CPU-decoded ones within a small bound (the decoders differ slightly, a
different image differs a lot), and a batch must stay intact while the host runs ahead of
kernels still queued on it.
"""
import dataclasses
from collections import Counter

import numpy as np
import pytest
import torch

from orderdp_dali import DALIPlanIterator, EpochPlan, Policy, SampleIndex
from orderdp_dali.pipelines import ImagePipelineConfig

pytestmark = pytest.mark.gpu

RAW = ImagePipelineConfig(crop=32, val_resize=40, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
# The mixed decoder upsamples 4:2:0 chroma as libjpeg-turbo does only with fancy upsampling on
# (DALI's default is off: a numpy estimate puts that difference alone at 2.5-5 grey levels).
LIKE_CPU = dataclasses.replace(RAW, jpeg_fancy_upsampling=True)
MAX_MEAN_ABS_DIFF = 4.0  # 0-255 scale; nvJPEG vs libjpeg-turbo IDCT and rounding differ by ~1


class WeightedPlan(Policy):
    """Every sample, shuffled, with distinct weights (weight = 1 + index / 100)."""

    name = "weighted-test"

    def select(self, epoch):
        idx = self.rng(epoch).permutation(self.num_samples)
        return EpochPlan(epoch, idx, 1.0 + idx / 100.0)


@pytest.fixture(scope="module")
def index(jpeg_split, tmp_path_factory):
    return SampleIndex.scan(jpeg_split, cache_dir=tmp_path_factory.mktemp("cache"))


def _iterator(index, policy, device, config=RAW, **kw):
    return DALIPlanIterator(index, policy, 8, device=device, device_id=0, num_threads=2, pipeline_config=config, **kw)


def test_labels_and_weights_belong_to_their_indices_on_the_gpu(index):
    with _iterator(index, WeightedPlan(len(index), seed=1), "gpu", sync_scores=False) as it:
        for _ in range(2):
            plan = it.plan
            seen = []
            for batch in it:
                assert batch["data"].is_cuda and batch["label"].is_cuda and batch["weight"].is_cuda
                assert not batch["index"].is_cuda
                idx = batch["index"].numpy()
                np.testing.assert_array_equal(batch["label"].cpu().numpy(), index.labels[idx])
                np.testing.assert_allclose(batch["weight"].cpu().numpy(), 1.0 + idx / 100.0, rtol=1e-6)
                seen += idx.tolist()
                it.update(batch["index"], batch["data"].float().mean(dim=(1, 2, 3)))
            assert Counter(seen) == Counter(plan.indices.tolist())


def _decoded(index, device, config=RAW):
    images = {}
    with _iterator(index, None, device, config) as it:
        for batch in it:
            for i, img in zip(batch["index"].tolist(), batch["data"].float().cpu()):
                images[i] = img
    return images


def test_gpu_decoding_matches_cpu_decoding(index):
    gpu, cpu = _decoded(index, "gpu", LIKE_CPU), _decoded(index, "cpu")
    assert sorted(gpu) == sorted(cpu) == list(range(len(index)))
    diffs = [float((gpu[i] - cpu[i]).abs().mean()) for i in cpu]
    default = _decoded(index, "gpu")  # DALI's default chroma upsampling, for the record
    default_diffs = [float((default[i] - cpu[i]).abs().mean()) for i in cpu]
    print(f"\n[gpu-check] mixed vs cpu decoding, mean |diff| per image (0-255), max / median: "
          f"jpeg_fancy_upsampling=True {max(diffs):.2f} / {np.median(diffs):.2f}, "
          f"False (DALI's default) {max(default_diffs):.2f} / {np.median(default_diffs):.2f}")
    assert max(diffs) < MAX_MEAN_ABS_DIFF, max(diffs)
    # the bound has teeth: another image of the set differs far more
    other = [float((gpu[i] - cpu[(i + 1) % len(cpu)]).abs().mean()) for i in cpu]
    assert min(other) > 2 * MAX_MEAN_ABS_DIFF, min(other)


def test_batches_stay_valid_while_the_host_runs_ahead(index):
    """Queue a long GPU sleep, then a reduction of the batch, and move on at once: if DALI
    reused the batch's buffer while those kernels wait, the sums would change."""
    reference = {i: float(img.double().sum()) for i, img in _decoded(index, "gpu").items()}
    sums, order = [], []
    with _iterator(index, None, "gpu", prefetch_queue_depth=3) as it:
        for batch in it:
            torch.cuda._sleep(50_000_000)  # tens of ms of GPU time queued before the reduction
            sums.append(batch["data"].double().sum(dim=(1, 2, 3)))
            order.append(batch["index"].tolist())
            del batch  # the host keeps going; only the queued kernels still use the buffer
    torch.cuda.synchronize()
    got = {i: float(s) for ids, batch_sums in zip(order, sums) for i, s in zip(ids, batch_sums.cpu())}
    assert got.keys() == reference.keys()
    assert all(abs(got[i] - reference[i]) <= 1e-3 * max(1.0, abs(reference[i])) for i in got)


def test_one_mixed_decoder_pipeline_resumes_the_same_crops_and_flips(index):
    """The run's one GPU pipeline: three epochs build it once, and an iterator restored from
    state_dict() (DALI's checkpoint) draws the GPU-decoded random crops of the uninterrupted one."""
    from orderdp_dali import make_policy

    train = dataclasses.replace(RAW, crop=24)

    def epoch_images(it):
        images = {}
        for batch in it:
            for i, img in zip(batch["index"].tolist(), batch["data"].float().cpu()):
                images[i] = img
        return images

    def make():
        return _iterator(index, make_policy("full", len(index), seed=0), "gpu", train, train=True, sync_scores=False)

    with make() as it:
        epoch_images(it)
        state = it.state_dict()
        expected = [epoch_images(it), epoch_images(it)]
        assert it.pipelines_built == 1
    with make() as resumed:
        resumed.load_state_dict(state)
        again = [epoch_images(resumed), epoch_images(resumed)]
    for want, got in zip(expected, again):
        assert want.keys() == got.keys() and all(torch.equal(want[i], got[i]) for i in want)
    assert any(not torch.equal(expected[0][i], expected[1][i]) for i in expected[0]), "epochs draw new crops"


def test_progressive_sizes_reach_the_mixed_decoder_pipeline_without_a_rebuild(index):
    """Progressive resizing on the GPU path: each epoch's crop, fed per batch to the GPU resize,
    is the size of that epoch's images, and the one pipeline serves every size."""
    sizes = [16, 24, 40]
    train = dataclasses.replace(RAW, crop=24)
    with _iterator(index, WeightedPlan(len(index), seed=2), "gpu", train, train=True, sync_scores=False,
                   resolution=lambda epoch: sizes[epoch % len(sizes)]) as it:
        for epoch, size in enumerate(sizes):
            shapes = {tuple(batch["data"].shape[1:]) for batch in it}
            assert shapes == {(3, size, size)}, (epoch, shapes)
        assert it.pipelines_built == 1

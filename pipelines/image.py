"""Train and validation pipelines for JPEG image classification, on GPU or CPU.

Both pipelines take each batch's file paths (with labels, sample indices and loss weights)
from a batch-mode ``fn.external_source`` fed in the training process; ``fn.io.file.read``
reads the files in DALI's threads, so they decode exactly the samples the caller asks for.
``device="gpu"`` decodes with ``device="mixed"`` (nvJPEG, and the hardware JPEG decoder on
A100/H100/H200) and augments on the GPU; ``device="cpu"`` runs DALI's CPU-only mode
(``device_id=None``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Tuple

from nvidia.dali import fn, types
from nvidia.dali.pipeline import Pipeline

from orderdp_dali.pipelines.common import DTYPES, plan_pipeline

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "ImagePipelineConfig", "decode_and_augment", "image_pipeline"]

# torchvision's ImageNet statistics, in the 0-255 range DALI decodes to.
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)

# The mixed decoder's buffers, sized up front for ImageNet's largest image (as DALI's own
# ResNet-50 example sizes them) so that no batch reallocates them mid-epoch.
MIXED_DECODER_BUFFERS = {
    "device_memory_padding": 211025920,
    "host_memory_padding": 140544512,
    "preallocate_width_hint": 5980,
    "preallocate_height_hint": 6430,
}


@dataclass(frozen=True)
class ImagePipelineConfig:
    """Augmentation and output settings (ImageNet defaults: crop 224, val resize 256).

    ``crop`` is the training crop (unless sizes come with each batch, see :func:`image_pipeline`'s
    ``sized``); validation resizes the shorter side to ``val_resize`` and center-crops
    ``val_crop`` (default ``crop``).
    """

    crop: int = 224
    val_resize: int = 256
    val_crop: Optional[int] = None
    random_area: Tuple[float, float] = (0.08, 1.0)
    random_aspect_ratio: Tuple[float, float] = (3 / 4, 4 / 3)
    mean: Tuple[float, ...] = IMAGENET_MEAN
    std: Tuple[float, ...] = IMAGENET_STD
    dtype: str = "float32"
    flip_probability: float = 0.5
    # Read files with plain reads (False) or through mmap (DALI's default). Plain reads fed
    # about twice as many 110 KB JPEGs per second on local disk (bench/results/iterator_bench_cpu.md,
    # recorded by loader_compare's predecessor; bench/results/README.md keeps the history).
    use_mmap: bool = False
    # Share of the images that the mixed decoder sends to the hardware JPEG decoder (A100,
    # H100, H200); the rest take the CUDA path with CPU Huffman decoding. DALI's default.
    hw_decoder_load: float = 0.65
    # Mixed decoder only: upsample JPEG chroma as the CPU decoder (libjpeg-turbo) does. DALI's
    # default (False) is faster and differs from CPU-decoded pixels by a few grey levels on 4:2:0
    # JPEGs; set it where GPU pixels are compared with CPU ones.
    jpeg_fancy_upsampling: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.crop, int) or self.crop < 1:
            raise ValueError(f"Invalid crop: {self.crop!r} (need an int >= 1)")
        if self.val_crop is not None and (not isinstance(self.val_crop, int) or self.val_crop < 1):
            raise ValueError(f"Invalid val_crop: {self.val_crop!r} (need an int >= 1, or None for crop)")
        if not isinstance(self.val_resize, int) or self.val_resize < self.eval_crop:
            raise ValueError(f"Invalid val_resize: {self.val_resize!r} (need an int >= val_crop={self.eval_crop})")
        lo, hi = self.random_area
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"Invalid random_area: {self.random_area!r} (need 0 < min <= max <= 1)")
        lo, hi = self.random_aspect_ratio
        if not 0 < lo <= hi:
            raise ValueError(f"Invalid random_aspect_ratio: {self.random_aspect_ratio!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"Invalid dtype: {self.dtype!r} (choose one of {sorted(DTYPES)})")
        if not 0 <= self.flip_probability <= 1:
            raise ValueError(f"Invalid flip_probability: {self.flip_probability!r}")
        if not 0 <= self.hw_decoder_load <= 1:
            raise ValueError(f"Invalid hw_decoder_load: {self.hw_decoder_load!r} (need a number in [0, 1])")

    @property
    def eval_crop(self) -> int:
        """The validation crop: ``val_crop``, else ``crop``."""
        return self.crop if self.val_crop is None else self.val_crop


def decode_and_augment(jpegs, *, train: bool, device: str, config: ImagePipelineConfig, size: Any = None):
    """Decode encoded images and apply the train or val transform (inside a pipeline definition).

    Shared by :func:`image_pipeline` and the benchmark's ``fn.readers.file`` pipeline, so
    the loader comparison runs exactly the same operators. ``size``: a per-sample
    ``[height, width]`` input (a DataNode from the source) that replaces ``config.crop`` as the
    training crop's output size, so each batch may have its own (progressive resizing).
    """
    decoder = "mixed" if device == "gpu" else "cpu"
    tuning = {}
    if decoder == "mixed":
        tuning = {**MIXED_DECODER_BUFFERS, "hw_decoder_load": config.hw_decoder_load,
                  "jpeg_fancy_upsampling": bool(config.jpeg_fancy_upsampling)}
    if train:
        images = fn.decoders.image_random_crop(
            jpegs,
            device=decoder,
            output_type=types.RGB,
            **tuning,
            random_area=list(config.random_area),
            random_aspect_ratio=list(config.random_aspect_ratio),
            num_attempts=100,
        )
        if size is None:
            images = fn.resize(images, resize_x=config.crop, resize_y=config.crop)
        else:
            images = fn.resize(images, size=size)  # an argument input: per sample, read on the CPU
        mirror = fn.random.coin_flip(probability=config.flip_probability)
        crop = None
    else:
        images = fn.decoders.image(jpegs, device=decoder, output_type=types.RGB, **tuning)
        images = fn.resize(images, resize_shorter=config.val_resize)
        mirror = 0
        crop = (config.eval_crop, config.eval_crop)
    return fn.crop_mirror_normalize(
        images,
        crop=crop,
        mirror=mirror,
        mean=list(config.mean),
        std=list(config.std),
        dtype=DTYPES[config.dtype],
        output_layout="CHW",
    )


def image_pipeline(
    source: Callable,
    *,
    train: bool,
    device: str = "cpu",
    config: ImagePipelineConfig = ImagePipelineConfig(),
    read_files: bool = True,
    sized: bool = False,
    **settings: Any,
) -> Pipeline:
    """Build (not start) a classification pipeline whose outputs are (images, labels, indices, weights).

    Args:
        source: batch callback ``source(BatchInfo) -> (encoded file paths, labels,
            indices, weights)`` (see :class:`~orderdp_dali.plan_source.BatchFeed`); it runs
            in the training process, and ``fn.io.file.read`` reads the files in DALI's threads.
        train: random-resized crop + flip (True) or resize + center crop (False).
        device: ``"gpu"`` (mixed decoding, needs ``device_id``) or ``"cpu"``.
        read_files: the source yields file paths to read (True) or the encoded images
            themselves (False: tar shards, see :mod:`orderdp_dali.data.tar`).
        sized: the source yields a fifth output, each sample's ``[height, width]`` training
            crop (progressive resizing, :class:`~orderdp_dali.plan_source.BatchFeed`'s
            ``sized``), used instead of ``config.crop``; batches of one pipeline may then differ
            in size. Ignored by evaluation (``train=False``), which takes no sizes.
        settings: ``batch_size`` and the other pipeline settings of
            :func:`~orderdp_dali.pipelines.common.plan_pipeline`.

    Images come out normalised, CHW, ``config.dtype``; labels and weights on the images'
    device, sample indices on the CPU.
    """

    def read_decode_augment(paths, size=None):
        jpegs = fn.io.file.read(paths, dont_use_mmap=not config.use_mmap) if read_files else paths
        return decode_and_augment(jpegs, train=train, device=device, config=config, size=size)

    return plan_pipeline(source, read_decode_augment, device=device, sized=sized, **settings)

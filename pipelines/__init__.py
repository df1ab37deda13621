"""DALI pipeline definitions (installed as ``orderdp_dali.pipelines``)."""
from orderdp_dali.pipelines.cifar import CIFAR10_MEAN, CIFAR10_STD, CifarPipelineConfig, cifar_pipeline
from orderdp_dali.pipelines.image import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImagePipelineConfig,
    image_pipeline,
)

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CifarPipelineConfig",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImagePipelineConfig",
    "cifar_pipeline",
    "image_pipeline",
]

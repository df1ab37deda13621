"""DALI pipeline definitions (installed as ``orderdp_dali.pipelines``)."""
from orderdp_dali.pipelines.image import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImagePipelineConfig,
    image_pipeline,
)

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "ImagePipelineConfig", "image_pipeline"]

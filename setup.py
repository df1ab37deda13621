"""Install orderdp-dali: one import root, ``orderdp_dali``.

``pipelines/`` and ``bench/`` live at the repository top level (as the design card lays
out) but install as ``orderdp_dali.pipelines`` and ``orderdp_dali.bench`` so that no
generic top-level package names land in site-packages.
"""
from setuptools import setup

setup(
    name="orderdp-dali",
    version="0.1.0",
    description="Dynamic data pruning (OrderDP, InfoBatch) on an NVIDIA DALI input pipeline",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=[
        "orderdp_dali",
        "orderdp_dali.cli",
        "orderdp_dali.data",
        "orderdp_dali.policies",
        "orderdp_dali.training",
        "orderdp_dali.pipelines",
        "orderdp_dali.bench",
    ],
    package_dir={
        "orderdp_dali": "orderdp_dali",
        "orderdp_dali.pipelines": "pipelines",
        "orderdp_dali.bench": "bench",
    },
    install_requires=[
        "numpy>=1.23",
        "scipy>=1.10",
        "pyyaml>=6.0",
        "tqdm>=4.60",
        "pillow>=9.0",
        "torch>=2.1",
        "torchvision>=0.16",
        "nvidia-dali-cuda120>=1.30",
        "timm>=0.9",
        "matplotlib>=3.6",
    ],
    extras_require={
        # make-data's imagenet-like and digits modes read the photos and digits scikit-learn ships
        "sample-data": ["scikit-learn>=1.2"],
        # train.tensorboard: true writes TensorBoard scalars (torch.utils.tensorboard needs the package)
        "tensorboard": ["tensorboard>=2.10"],
        "test": ["pytest>=7", "ruff>=0.6", "tensorboard>=2.10"],  # the tests read the event files back
    },
    entry_points={"console_scripts": ["orderdp-dali=orderdp_dali.cli:main"]},
)

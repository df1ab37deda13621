"""``orderdp-dali make-data``: generate an ImageNet-layout folder of JPEGs (the writer:
:mod:`orderdp_dali.synthetic_dataset`; the modes: :mod:`orderdp_dali.make_data`). Exit code: 0 done,
2 bad arguments or a folder it cannot write."""
from __future__ import annotations

import argparse
import logging
import os
from typing import Optional, Sequence

from orderdp_dali.cli.errors import fail
from orderdp_dali.synthetic_dataset import MODES, make_dataset, read_manifest

__all__ = ["get_args_parser", "main"]


def _int_at_least(lo: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {value}")
        return value

    return parse


def _fraction(hi: float):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not 0.0 <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be in [0, {hi}], got {value}")
        return value

    return parse


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="orderdp-dali make-data",
        description="Generate an ImageNet-layout folder (OUT_DIR/{train,val}/<class>/*.JPEG).",
        epilog="Difficulty of mode small: every class is a colour palette with a blob texture; up to 24 "
               "classes get hues 360/N degrees apart, so more classes differ by finer colour steps "
               "(24: 15 degrees; beyond 24, classes share hues and differ by saturation, brightness, "
               "texture scale or a second hue). "
               "--hard-fraction adds hard examples, --label-noise wrong labels. The quick start "
               "(configs/bench_cpu_demo.yaml) uses 24 classes and --hard-fraction 0.2, no label noise.",
    )
    p.add_argument("out_dir", metavar="OUT_DIR", help="output folder")
    p.add_argument("--mode", choices=MODES, default="small",
                   help="small: tiny synthetic images; imagenet-like: photo-like ~110 KB JPEGs at "
                        "ImageNet resolution; digits: scikit-learn's handwritten digits (default: small)")
    p.add_argument("--classes", type=_int_at_least(1), default=None, help="number of classes (default 10)")
    p.add_argument("--train-per-class", type=_int_at_least(1), default=None,
                   help="train images per class (default: small 60, imagenet-like 100, digits all ~143)")
    p.add_argument("--val-per-class", type=_int_at_least(1), default=None,
                   help="val images per class (default: small 10, imagenet-like 20, digits all ~36)")
    p.add_argument("--seed", type=_int_at_least(0), default=0, help="random seed (default 0)")
    p.add_argument("--hard-fraction", type=_fraction(1.0), default=0.0, metavar="F",
                   help="small only: share F of train and val images that are hard examples, their class "
                        "pattern blended with a random other class's at 25-45%% strength (default 0)")
    p.add_argument("--label-noise", type=_fraction(0.5), default=0.0, metavar="F",
                   help="small only: share F of train images filed under a wrong class (val stays clean); "
                        "mislabelled images keep a high loss, which works against policies that prefer "
                        "high-loss samples, such as OrderDP and InfoBatch (default 0)")
    p.add_argument("--workers", type=_int_at_least(1), default=None,
                   help=f"worker processes (default: all {os.cpu_count()} CPUs)")
    p.add_argument("--format", choices=("folder", "tar"), default="folder",
                   help="tar: also write the dataset as tar shards OUT_DIR/tar/<split>/*.tar (data.dataset=tar)")
    p.add_argument("--shard-size", type=_int_at_least(1), default=1000, help="samples per tar shard (default 1000)")
    p.add_argument("--force", action="store_true",
                   help="regenerate even if a matching dataset exists, replacing OUT_DIR's train/ and val/")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        args = get_args_parser().parse_args(argv)
    except SystemExit as e:  # argparse already printed the message (or --help)
        return int(e.code or 0)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        root = make_dataset(
            args.out_dir,
            mode=args.mode,
            num_classes=args.classes,
            train_per_class=args.train_per_class,
            val_per_class=args.val_per_class,
            seed=args.seed,
            workers=args.workers,
            force=args.force,
            progress=True,
            hard_fraction=args.hard_fraction,
            label_noise=args.label_noise,
        )
    except (ValueError, OSError) as e:  # DatasetError is a ValueError
        return fail("make-data", str(e))
    if args.format == "tar":
        from orderdp_dali.make_shards import folder_to_shards

        try:
            shards = folder_to_shards(root, root / "tar", shard_size=args.shard_size)
        except (ValueError, OSError) as e:
            return fail("make-data", str(e))
        print(f"tar shards: {', '.join(f'{s} {len(v)}' for s, v in shards.items())} in {root / 'tar'}")
    manifest = read_manifest(root) or {}
    counts, stats = manifest.get("counts", {}), manifest.get("stats", {})
    print(f"dataset: {root}")
    print(f"  mode {args.mode}, {len(manifest.get('classes', []))} classes, "
          f"train {counts.get('train')} images, val {counts.get('val')} images")
    if manifest.get("difficulty"):
        diff = manifest["difficulty"]
        print(f"  hard examples: train {diff['hard']['train']}, val {diff['hard']['val']}; "
              f"mislabelled train images: {diff['mislabelled_train']}")
    if stats:
        print(f"  mean file size {stats['mean_bytes'] / 1000:.1f} KB, "
              f"mean resolution {stats['mean_width']:.0f} x {stats['mean_height']:.0f} px (w x h)")
    return 0

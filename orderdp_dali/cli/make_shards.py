"""``orderdp-dali make-shards``: convert class-folder splits into webdataset-style tar shards
(:func:`orderdp_dali.make_shards.folder_to_shards`), which ``data.dataset=tar`` trains from."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Optional, Sequence

from orderdp_dali.cli.errors import EXIT_OK, report
from orderdp_dali.make_shards import folder_to_shards

__all__ = ["get_args_parser", "main"]


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="orderdp-dali make-shards",
        description="Convert class-folder splits (SRC/{train,val}/<class>/<image>) into webdataset-style tar "
                    "shards OUT/<split>/<prefix>-<split>-NNNN.tar ({key}.jpeg + {key}.cls) and OUT/classes.txt.",
    )
    p.add_argument("src", metavar="SRC", help="dataset root holding split folders of class folders")
    p.add_argument("out", metavar="OUT", help="output root (gets <split>/*.tar and classes.txt)")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default 1000)")
    p.add_argument("--prefix", default=None, help="shard name prefix (default: SRC's folder name)")
    p.add_argument("--split", nargs="+", metavar="NAME", help="split folders to convert (default: train val present)")
    p.add_argument("--rescan", action="store_true",
                   help="walk SRC's splits even when their index cache looks current (e.g. after restoring mtimes "
                        "on a file system without reliable ctimes)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The ``orderdp-dali make-shards`` command: 0 when the shards are written, 2 for bad input or output."""
    try:
        args = get_args_parser().parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        written = folder_to_shards(args.src, args.out, args.shard_size, args.prefix, args.split, rescan=args.rescan)
    except (ValueError, OSError) as e:  # DatasetError is a ValueError
        return report("make-shards", e, usage=(ValueError, OSError))
    for split, shards in written.items():
        print(f"{split}: {len(shards)} shards in {Path(args.out) / split}")
    print(f"train with: data.dataset=tar data.root={Path(args.out).absolute()}")
    return EXIT_OK

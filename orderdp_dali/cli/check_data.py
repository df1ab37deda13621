"""``orderdp-dali check-data``: find the files of a dataset that would break or silently hurt
training (:mod:`orderdp_dali.check_data`), print a summary and write the bad-file list that
training's ``data.exclude_file`` reads."""
from __future__ import annotations

import argparse
import logging
import os
from collections import Counter
from typing import Any, Optional, Sequence

from orderdp_dali.check_data import CheckReport, check_dataset, write_report
from orderdp_dali.cli.errors import EXIT_FAILED, EXIT_OK, fail
from orderdp_dali.cli.errors import report as describe
from orderdp_dali.data.file_lists import index_for_check
from orderdp_dali.data.images import printable
from orderdp_dali.errors import DatasetError

__all__ = ["get_args_parser", "main"]


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="orderdp-dali check-data",
        description="Find empty class folders and unreadable, truncated or non-image files in an "
                    "ImageNet-layout folder. Exit code: 0 clean, 1 problems found, 2 usage error.",
    )
    p.add_argument("root", metavar="ROOT", help="dataset root (with train/ val/) or one split folder")
    p.add_argument("--deep", action="store_true", help="decode every image fully (slow; default: header check)")
    p.add_argument("--workers", type=int, default=None,
                   help=f"parallel workers (default: {os.cpu_count()}); processes with --deep, threads without")
    p.add_argument("--output", metavar="FILE",
                   help="write the bad-file list: JSON if FILE ends in .json, else '<reason>\\t<path>' lines")
    p.add_argument("--split", nargs="+", metavar="NAME",
                   help="split folders to check (default: train val, those present)")
    p.add_argument("--file-list", metavar="LIST",
                   help="check the files of this list ('<path> <label>' lines, paths relative to ROOT) instead of "
                        "ROOT's class folders")
    p.add_argument("--classes-file", metavar="FILE", help="with --file-list: its class names, one a line")
    p.add_argument("--val-labels-csv", metavar="CSV",
                   help="ROOT is a flat validation folder: check the images this LOC_val_solution.csv lists")
    p.add_argument("--strict", action="store_true", help="count warnings (e.g. a PNG named .JPEG) as bad files")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _say(text: str) -> None:
    """Print a summary line; names that are not valid UTF-8 are shown with \\xNN escapes."""
    print(printable(text))


def _print_summary(report: CheckReport, listed: int = 20) -> None:
    kind = "full decode" if report.deep else "header check"
    splits = ", ".join(s or "." for s in report.splits)
    rate = report.num_files / report.seconds if report.seconds > 0 else float("inf")
    _say(f"check-data: {report.root} (splits: {splits}; {kind})")
    _say(f"  {report.num_files} image files checked in {report.seconds:.1f} s ({rate:.0f} files/s)")
    for title, items in (("bad files", report.bad), ("warnings", report.warnings)):
        counts = Counter(f.reason for f in items)
        _say(
            f"  {title}: {len(items)}"
            + (f" ({', '.join(f'{r} {n}' for r, n in sorted(counts.items()))})" if items else "")
        )
        for f in items[:listed]:
            rel = f"{f.split}/{f.relpath}" if f.split else f.relpath
            _say(f"    {rel}: {f.reason}" + (f" ({f.detail})" if f.detail else ""))
        if len(items) > listed:
            _say(f"    ... and {len(items) - listed} more")
    if report.empty_classes:
        _say(f"  empty class folders: {len(report.empty_classes)}: {', '.join(report.empty_classes[:listed])}")
    for split, lacking in report.class_mismatch.items():
        _say(f"  split {split!r} lacks {len(lacking)} class folder(s) the others have "
             f"(labels would shift): {', '.join(lacking[:listed])}")
    _say("  result: " + ("clean" if report.ok else "PROBLEMS FOUND"))


def _listed_index(args: argparse.Namespace) -> Optional[Any]:
    """The index of ``--file-list`` / ``--val-labels-csv``, or None to walk ROOT's class folders."""
    if not (args.file_list or args.val_labels_csv):
        if args.classes_file:
            raise DatasetError("--classes-file: only with --file-list")
        return None
    if args.split:
        raise DatasetError("--split: not with --file-list or --val-labels-csv (ROOT is the folder they list)")
    return index_for_check(args.root, args.file_list, args.classes_file, args.val_labels_csv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The ``orderdp-dali check-data`` command: 0 clean, 1 problems found, 2 usage error."""
    try:
        args = get_args_parser().parse_args(argv)
    except SystemExit as e:  # argparse already printed the message (or --help)
        return int(e.code or 0)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.workers is not None and args.workers < 1:
        return fail("check-data", f"--workers must be an integer >= 1, got {args.workers}")
    try:
        index = _listed_index(args)
        report = check_dataset(
            args.root, deep=args.deep, workers=args.workers, progress=not args.no_progress,
            splits=args.split, strict=args.strict, index=index,
        )
    except ValueError as e:  # DatasetError is a ValueError
        return describe("check-data", e, usage=(ValueError,))
    _print_summary(report)
    if args.output:
        try:
            out = write_report(report, args.output)
        except OSError as e:
            return fail("check-data", f"cannot write {args.output}: {e}")
        print(f"  wrote the bad-file list to {out}")
    return EXIT_OK if report.ok else EXIT_FAILED

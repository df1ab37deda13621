"""What the stand-alone benchmark scripts share around their measurement: the training folder they
time (given, or generated once) and their figures written as JSON and markdown side by side."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from orderdp_dali.atomic import write_text_atomic

__all__ = ["train_folder", "write_results"]


def train_folder(root: Optional[str], default_data: Mapping[str, Any], say: Callable[[str], None]) -> Path:
    """``root`` (a split folder), else the ``train`` split of ``make_dataset(**default_data)``,
    generated on first use and reused after."""
    if root:
        return Path(root)
    from orderdp_dali.make_data import make_dataset

    say(f"data: {default_data['out_dir']} (generated on first use)")
    return make_dataset(**default_data) / "train"


def write_results(out_dir: str, name: str, result: Mapping[str, Any], text: str) -> None:
    """``out_dir/<name>_<device>.json`` (the figures) and ``.md`` (``text``), each written atomically."""
    stem = Path(out_dir) / f"{name}_{result['device']}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(stem.with_suffix(".json"), json.dumps(result, indent=2) + "\n")
    write_text_atomic(stem.with_suffix(".md"), text)
    print(f"written: {stem}.json, {stem}.md")

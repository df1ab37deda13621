"""Training checkpoints: atomic writes, safe loads, and the checks that make a resume exact.

A checkpoint is a dict of plain data and tensors (no pickled objects), so it loads with
``torch.load(weights_only=True)``: model, optimizer and scaler states, the next epoch,
the iterator's state (policy scores and settings; numpy arrays stored as tensors), the
run's config as plain data, the training set's fingerprint and the per-epoch plan sizes.

Writes are atomic (:mod:`orderdp_dali.atomic`): a crash mid-write leaves the previous
file intact.

A resume continues the checkpoint's recipe (:func:`check_resumable`); a change that
``--allow-changes`` lets through is recorded, never written over the run's first record
(:func:`record_config`: ``config.json`` stays, ``config.<epoch>.json`` holds the new config).
"""
from __future__ import annotations

import errno
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Set, Tuple, Union

import numpy as np
import torch

from orderdp_dali.atomic import write_atomic, write_text_atomic
from orderdp_dali.config import RUNTIME_KEYS, config_changes, to_plain
from orderdp_dali.data.fingerprints import compare_fingerprints
from orderdp_dali.errors import CheckpointError, first_line

__all__ = [
    "CHECKPOINT_VERSION",
    "CONFIG",
    "LAST",
    "METRICS",
    "another_run",
    "check_resumable",
    "load_checkpoint",
    "numpy_to_torch",
    "peek_checkpoint",
    "previous_run_files",
    "record_config",
    "resolve_resume",
    "save_checkpoint",
    "torch_to_numpy",
    "trim_metrics",
]

log = logging.getLogger(__name__)
CHECKPOINT_VERSION = 1
LAST = "last.pth"
CONFIG = "config.json"  # the config of a run's first epochs; config.<epoch>.json from a changed resume on
METRICS = "metrics.jsonl"
PathLike = Union[str, "os.PathLike[str]"]


def save_checkpoint(state: Mapping[str, Any], path: PathLike) -> None:
    """``torch.save(state)`` to ``path`` atomically.

    Raises:
        OSError: ENOSPC when the disk filled up (torch reports it as an opaque RuntimeError).
    """
    try:
        write_atomic(path, lambda f: torch.save(dict(state), f))
    except RuntimeError as e:
        free = shutil.disk_usage(Path(path).parent).free if Path(path).parent.is_dir() else -1
        if "unexpected pos" in str(e) or 0 <= free < 64 * 2**20:
            raise OSError(errno.ENOSPC, f"No space left on device ({free} bytes free)", str(path)) from e
        raise


def load_checkpoint(path: PathLike) -> Dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` onto the CPU (tensors and plain data only).

    Raises:
        CheckpointError: missing, unreadable or not one of ours.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a corrupt or foreign file
        raise CheckpointError(f"cannot load checkpoint {path}: {type(e).__name__}: {first_line(e, 200)}") from e
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        found = state.get("version") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(
            f"{path} is not an orderdp-dali checkpoint of version {CHECKPOINT_VERSION} (found {found!r})"
        )
    return state


def resolve_resume(resume: Optional[str], output_dir: PathLike) -> Optional[Path]:
    """The checkpoint to resume from: ``None``, a path, or ``"auto"`` (``output_dir/last.pth`` if it exists).

    Raises:
        CheckpointError: an explicit path that does not exist.
    """
    if not resume:
        return None
    if resume == "auto":
        last = Path(output_dir) / LAST
        return last if last.is_file() else None
    path = Path(resume).expanduser()
    if not path.is_file():
        raise CheckpointError(f"--resume {resume}: no such checkpoint file")
    return path


def peek_checkpoint(path: PathLike) -> Optional[Dict[str, Any]]:
    """A checkpoint's plain entries (``version``, ``epoch``, ``run_id``, ``config``, ``dataset``)
    without reading its tensors: memory-mapped, so it costs little however large the model is.

    Returns ``None`` when the file does not load; :func:`load_checkpoint` then says why.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # torch raises many types for a corrupt or foreign file
        return None
    if not isinstance(state, dict):
        return None
    return {key: state.get(key) for key in ("version", "epoch", "run_id", "config", "dataset")}


def previous_run_files(output_dir: PathLike) -> List[str]:
    """The files that make ``output_dir`` hold a run: a non-empty ``metrics.jsonl`` or ``last.pth``."""
    out = Path(output_dir)
    return [name for name in (METRICS, LAST) if (out / name).is_file() and (out / name).stat().st_size > 0]


def _run_ids(output_dir: Path) -> Set[str]:
    """The run ids recorded in ``output_dir``: its metrics lines' and its ``last.pth``'s."""
    ids: Set[str] = set()
    try:
        lines = (output_dir / METRICS).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        lines = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("run_id"), str):
            ids.add(record["run_id"])
    last = peek_checkpoint(output_dir / LAST) if (output_dir / LAST).is_file() else None
    if last is not None and isinstance(last.get("run_id"), str):
        ids.add(last["run_id"])
    return ids


def _recipe(config: Any) -> Any:
    """A run's config without ``train.output_dir`` (a run continued in a copy of its folder is the same run)."""
    if not isinstance(config, dict):
        return config
    train = {k: v for k, v in (config.get("train") or {}).items() if k != "output_dir"}
    return {**config, "train": train}


def another_run(path: PathLike, state: Optional[Mapping[str, Any]], output_dir: PathLike) -> Optional[str]:
    """Why ``output_dir`` holds another run than the one checkpoint ``path`` continues, or ``None`` if it does not.

    Resuming trims the folder's ``metrics.jsonl`` to the checkpoint's epoch and replaces its
    ``last.pth`` and ``config.json``: right for the run the checkpoint belongs to, the loss of a
    different run's record otherwise. The folder holds *the same run* when, checked in this order:

    1. it holds no run at all (:func:`previous_run_files` is empty): nothing to lose;
    2. the checkpoint lies in it (``last.pth``, ``epoch_0004.pth``): the folder's own run;
    3. both carry run ids (every checkpoint and metrics line written since ids exist): the
       checkpoint's id is the only one the folder records. A run gets its id when it starts afresh
       and keeps it through every resume, also into another or a copied folder;
    4. otherwise (files written before run ids): the folder's ``config.json`` equals the
       checkpoint's config, ``train.output_dir`` aside.

    Args:
        path: the checkpoint to resume.
        state: what :func:`peek_checkpoint` read from it (``None``: it does not load, the resume
            will say so, and nothing is judged here).
        output_dir: the folder the resumed run writes into.

    Returns:
        ``None``, or what the folder holds and why it is another run (for an error message).
    """
    out, path = Path(output_dir), Path(path)
    found = previous_run_files(out)
    if not found or state is None:
        return None
    try:
        if path.resolve().parent == out.resolve():
            return None
    except OSError:
        pass
    ours = state.get("run_id")
    theirs = _run_ids(out)
    if isinstance(ours, str) and theirs:
        if theirs == {ours}:
            return None
        why = f"run id {', '.join(sorted(t[:8] for t in theirs))}, the checkpoint's {ours[:8]}"
    else:
        try:
            saved = json.loads((out / CONFIG).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            saved = None
        if saved is not None and _recipe(saved) == _recipe(state.get("config")):
            return None
        why = ("its config.json differs from the checkpoint's config" if saved is not None
               else "no run id or config.json to tell whose it is")
    return f"{', '.join(found)}; {why}"


def check_resumable(
    state: Mapping[str, Any],
    path: PathLike,
    fingerprint: str,
    policy: Any,
    config: Mapping[str, Any],
    allow_changes: bool = False,
) -> Dict[str, Tuple[Any, Any]]:
    """Refuse to continue ``state`` on another dataset, model, optimizer, policy, or recipe.

    Always refused: another training set (fingerprint), ``model.name``, ``optim.name``, policy
    name or settings (``policy.params``, ``train.seed``; see
    :meth:`~orderdp_dali.policies.Policy.settings_conflict`: only the epoch count may change, and
    only where no plan depends on it), and fewer ``train.epochs`` than the checkpoint has run.

    Refused unless ``allow_changes``: any other change of the recipe, i.e. of a key outside
    :data:`~orderdp_dali.config.RUNTIME_KEYS` (lr, batch size, crop, augmentation, label
    smoothing, schedule, weight decay, amp, dtype, fewer epochs...): the remaining epochs would
    compute something else than the run's first ones, and the record of how those were trained
    would no longer describe the run. A larger ``train.epochs`` is allowed (extending a run).

    Args:
        state: a loaded checkpoint.
        path: where it came from (for messages).
        fingerprint: this run's training-set fingerprint.
        policy: this run's policy.
        config: this run's config as plain data (``Config.to_dict()``).
        allow_changes: accept recipe changes (the caller records them).

    Returns:
        The recipe changes accepted (``key -> (checkpoint's value, this run's)``); empty when
        the recipe is the checkpoint's.

    Raises:
        CheckpointError: naming what the checkpoint has and what this run has.
    """
    saved = state.get("dataset")
    match = compare_fingerprints(saved, fingerprint)
    saved_root = (state.get("config") or {}).get("data", {}).get("root", "?")
    if match == "legacy":
        log.warning("checkpoint %s predates content fingerprints: its files and labels match, but file sizes and "
                    "mtimes were not recorded, so a file replaced under its name cannot be told; checkpoints "
                    "written from now on record them", path)
    elif match == "content":
        raise CheckpointError(
            f"checkpoint {path} was made on the same files and labels (data.root {saved_root}), but the size or "
            "mtime of some file differs now: a file was replaced or rewritten under its name (put the original "
            "back), or the data was copied without its mtimes (copy it with cp -a or rsync -a); else start a fresh "
            "run"
        )
    elif match != "same":
        raise CheckpointError(
            f"checkpoint {path} was made on another dataset: fingerprint {str(saved)[:16]}... "
            f"(data.root {saved_root}), this run's is {fingerprint[:16]}...; "
            "resume on the same training set or start a fresh run"
        )
    saved_config = state.get("config") or {}
    for section in ("model", "optim"):
        then, now = (saved_config.get(section) or {}).get("name"), (config.get(section) or {}).get("name")
        if then is not None and then != now:
            raise CheckpointError(
                f"checkpoint {path} was made with {section}.name={then}, this run asks for {now}: "
                f"resume with {section}.name={then} or start a fresh run"
            )
    saved_policy = ((state.get("iterator") or {}).get("policy")) or {}
    if saved_policy.get("policy") != policy.name:
        raise CheckpointError(
            f"checkpoint {path} was made with policy {saved_policy.get('policy')!r}, this run asks for "
            f"{policy.name!r}; resume with the same policy (policy.name) or start a fresh run"
        )
    saved_settings = to_plain(saved_policy.get("config") or {})
    conflict = policy.settings_conflict(saved_settings)
    if conflict is not None:
        now = to_plain(policy.config())
        changed = ", ".join(
            f"{k} {saved_settings.get(k)!r} -> {now.get(k)!r}"
            for k in sorted(set(saved_settings) | set(now)) if saved_settings.get(k) != now.get(k)
        )
        reason = conflict if conflict.startswith("changing the epoch count") else (
            "resume with the checkpoint's settings (policy.params, train.seed, train.epochs) or start a fresh run"
        )
        raise CheckpointError(f"checkpoint {path} was made with other {policy.name} settings ({changed}): {reason}")
    return _check_recipe(state, path, config, allow_changes)


def _check_recipe(
    state: Mapping[str, Any], path: PathLike, config: Mapping[str, Any], allow_changes: bool
) -> Dict[str, Tuple[Any, Any]]:
    """The recipe part of :func:`check_resumable` (the policy and names were checked before)."""
    done = int(state.get("epoch", 0))
    epochs = (config.get("train") or {}).get("epochs")
    if isinstance(epochs, int) and epochs < done:
        raise CheckpointError(
            f"checkpoint {path} has trained {done} epochs, this run asks for train.epochs={epochs}: "
            f"resume with train.epochs >= {done}, or keep the checkpoint as the finished run"
        )
    recipe = {}
    for key, (then, now) in config_changes(state.get("config") or {}, config).items():
        if key in RUNTIME_KEYS or key.startswith("policy."):  # the policy was compared as the policy sees it
            continue
        if key == "train.epochs" and isinstance(then, int) and isinstance(now, int) and now > then:
            continue  # extending a run: its policy said above whether its plans allow it
        recipe[key] = (then, now)
    if recipe and not allow_changes:
        shown = list(recipe.items())[:MAX_SHOWN_CHANGES]
        more = f" and {len(recipe) - len(shown)} more" if len(recipe) > len(shown) else ""
        changed = ", ".join(f"{k} {_yaml_value(a)} -> {_yaml_value(b)}" for k, (a, b) in shown) + more
        back = " ".join(f"{k}={_yaml_value(a)}" for k, (a, _) in shown)
        raise CheckpointError(
            f"checkpoint {path} was trained with another recipe ({changed}): the remaining epochs would compute "
            f"something else than the first ones; resume with the checkpoint's values ({back}), or pass "
            "--allow-changes to continue with the new ones (recorded in metrics.jsonl and config.<epoch>.json)"
        )
    return recipe


MAX_SHOWN_CHANGES = 6  # a refusal stays one readable line


def _yaml_value(value: Any) -> str:
    """``value`` as one would write it in a ``key=value`` override (JSON is YAML)."""
    return json.dumps(value)


def numpy_to_torch(obj: Any) -> Any:
    """``obj`` with numpy arrays as tensors and numpy scalars as Python numbers (for weights-only loading)."""
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: numpy_to_torch(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(numpy_to_torch(v) for v in obj)
    return obj


def torch_to_numpy(obj: Any) -> Any:
    """Inverse of :func:`numpy_to_torch`: tensors back to numpy arrays."""
    if isinstance(obj, torch.Tensor):
        return obj.numpy()
    if isinstance(obj, dict):
        return {k: torch_to_numpy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(torch_to_numpy(v) for v in obj)
    return obj


def record_config(
    out: PathLike, config: Mapping[str, Any], start: int = 0, saved: Optional[Mapping[str, Any]] = None
) -> Optional[Path]:
    """Keep the record of the configs a run was trained with, beside its log and checkpoints.

    A fresh run (``saved`` is None) writes ``config.json``. A resumed run never rewrites it:
    it describes how the run's first epochs were trained (it is written from ``saved``, the
    checkpoint's config, only when missing, e.g. in a new output folder). When ``config``
    differs from ``saved`` in any key (see :func:`~orderdp_dali.config.config_changes`), the
    whole new config goes to ``config.<start>.json``: the config of epochs ``start`` on.
    Records ``config.<k>.json`` with ``k >= start`` are removed first: those epochs are run
    again, as :func:`trim_metrics` drops their log lines.

    Args:
        out: the run's output folder (exists).
        config: this run's config as plain data.
        start: the first epoch this run trains.
        saved: the checkpoint's config (None: a fresh run).

    Returns:
        The ``config.<start>.json`` written, or None.
    """
    out = Path(out)
    if saved is None:
        write_text_atomic(out / CONFIG, json.dumps(to_plain(config), indent=2) + "\n")
        return None
    for old in out.glob("config.*.json"):
        epoch = old.name[len("config."):-len(".json")]
        if epoch.isdigit() and int(epoch) >= start:
            old.unlink()
    if not (out / CONFIG).is_file():
        write_text_atomic(out / CONFIG, json.dumps(to_plain(saved), indent=2) + "\n")
    if not config_changes(saved, config):
        return None
    return write_text_atomic(out / f"config.{start}.json", json.dumps(to_plain(config), indent=2) + "\n")


def trim_metrics(path: PathLike, first_epoch: int) -> List[Dict[str, Any]]:
    """Drop the lines of a JSON-lines metrics log with ``epoch >= first_epoch`` (atomically); return the rest.

    A resumed run re-runs from ``first_epoch``, so each epoch ends up in the log exactly once.
    An unparseable *last* line is what a crash in the middle of an append leaves: it is dropped
    with a warning (the checkpoint carries the last epoch's line, and the caller logs it again).
    An unparseable line anywhere else is damage, not a torn append: dropping it would lose that
    epoch's record, so it is refused and the file is left as it is (unless ``first_epoch`` is 0,
    when every line goes anyway).

    Raises:
        CheckpointError: a line before the last is not a JSON object; the message names the file
            and the line.
    """
    path = Path(path)
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    numbered = [(n, line) for n, line in enumerate(lines, 1) if line.strip()]
    kept: List[Dict[str, Any]] = []
    for k, (n, line) in enumerate(numbered):
        try:
            record = json.loads(line)
            problem = "" if isinstance(record, dict) else f"a JSON {type(record).__name__}, not an object"
        except json.JSONDecodeError as e:
            record, problem = None, f"not valid JSON ({e.msg} at column {e.colno})"
        if problem:
            if k == len(numbered) - 1:
                log.warning("dropping line %d of %s, the last one: %s (an append cut short)", n, path, problem)
                continue
            if first_epoch > 0:
                raise CheckpointError(
                    f"{path}, line {n}: {problem}; only a torn last line may be dropped, and this one would lose "
                    "an epoch's record: repair or delete the line, then resume again (nothing was changed)"
                )
            continue
        if isinstance(record.get("epoch"), int) and record["epoch"] < first_epoch:
            kept.append(record)
    text = "".join(json.dumps(r) + "\n" for r in kept)
    write_text_atomic(path, text)
    return kept

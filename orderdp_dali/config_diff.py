"""What a resume may change: two configs compared key by key, and the keys that are not part of the recipe."""
from __future__ import annotations

from typing import Any, Dict, Mapping, Tuple

from orderdp_dali.config_build import to_plain

__all__ = ["RUNTIME_KEYS", "WHOLE_KEYS", "config_changes", "flatten"]

# Keys that say how and where a run executes, not what its epochs compute: a resume may change
# them freely (more threads on a new machine, a moved dataset, quieter output). The training set
# behind the data paths is still checked by its fingerprint. Every other key is part of the recipe.
RUNTIME_KEYS = frozenset({
    "data.root", "data.train_split", "data.val_split", "data.train_list", "data.val_list", "data.classes_file",
    "data.val_labels_csv", "data.exclude_file", "data.cache_dir", "data.rescan",
    "data.num_threads", "data.prefetch", "data.hw_decoder_load",
    "model.channels_last",
    "train.print_freq", "train.progress", "train.output_dir", "train.checkpoint", "train.save_every",
    "train.eval_every", "train.dist_timeout_s", "train.compile", "train.compile_mode", "train.deterministic",
    "train.tensorboard",
})


# Mappings compared as one value: a policy's own parameters, sections that may be null.
WHOLE_KEYS = frozenset({"policy.params", "data.progressive"})


def flatten(data: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    """Nested sections as one level of dotted keys: ``{"train": {"epochs": 3}}`` -> ``{"train.epochs": 3}``.

    ``policy.params`` is kept whole (its keys depend on the policy), and so is an optional section
    (``data.progressive``): null and a mapping then compare as one key."""
    flat: Dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and dotted not in WHOLE_KEYS:
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def config_changes(saved: Mapping[str, Any], now: Mapping[str, Any]) -> Dict[str, Tuple[Any, Any]]:
    """Each dotted key whose value differs between two configs as plain data (:meth:`Config.to_dict`),
    as ``key -> (saved value, current value)``, in key order.

    Only keys ``saved`` has are compared: a checkpoint written before a setting existed says
    nothing about it. Lists and tuples compare alike (JSON has no tuples).
    """
    before, after = flatten(to_plain(saved)), flatten(to_plain(now))
    return {k: (before[k], after.get(k)) for k in sorted(before) if k in after and before[k] != after[k]}

"""Exceptions raised for bad input, so callers can catch ours apart from library bugs."""


class DatasetError(ValueError):
    """The dataset on disk is unusable: a missing split, an empty class folder, no images."""


class DecodeError(RuntimeError):
    """An image could not be read or decoded; the message names the file and sample index."""


class CheckpointError(ValueError):
    """A checkpoint cannot be resumed here (other dataset, other policy, corrupt file)."""


class ConfigError(ValueError):
    """A training config is invalid: the message names the key (``section.key``) and the problem."""


class DistributedError(RuntimeError):
    """Another rank of a distributed run died or stopped responding; this rank cannot go on."""


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the message names the epoch and step."""


def first_line(error: BaseException, limit: int = 300) -> str:
    """The first non-empty line of ``error``'s message, at most ``limit`` characters ("" if none):
    what a one-line report keeps of a multi-line library message (torch, DALI, gloo)."""
    lines = str(error).strip().splitlines()
    return lines[0][:limit] if lines else ""

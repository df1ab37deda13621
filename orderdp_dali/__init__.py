"""orderdp-dali: dynamic data pruning (OrderDP, InfoBatch) on an NVIDIA DALI input pipeline.

Import the pieces a custom training loop needs from here::

    from orderdp_dali import SampleIndex, make_policy, DALIPlanIterator
"""
from orderdp_dali.data.folder import SampleIndex
from orderdp_dali.errors import CheckpointError, DatasetError, DecodeError, DistributedError
from orderdp_dali.plan import EpochPlan, num_steps
from orderdp_dali.policies import POLICIES, Policy, ScoreTable, make_policy, register_policy

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "DALIPlanIterator",
    "DatasetError",
    "DecodeError",
    "DistributedError",
    "EpochPlan",
    "POLICIES",
    "Policy",
    "SampleIndex",
    "ScoreTable",
    "make_policy",
    "num_steps",
    "register_policy",
]


def __getattr__(name: str):
    # The iterator pulls in torch and DALI; import it only when asked for.
    if name == "DALIPlanIterator":
        from orderdp_dali.iterator import DALIPlanIterator

        return DALIPlanIterator
    raise AttributeError(f"module 'orderdp_dali' has no attribute {name!r}")

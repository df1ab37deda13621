"""Pruning policies: ``select(epoch) -> EpochPlan`` from per-sample scores, one module each.

Importing this package registers ``full``, ``orderdp``, ``infobatch``, ``uniform`` and ``rs2``
in :data:`POLICIES`, so ``make_policy("orderdp", n, random_len_ratio=0.75, top_q_ratio=0.8)``
works; a custom policy subclasses :class:`Policy` and uses :func:`register_policy`.
"""
from orderdp_dali.policies.base import POLICIES, Policy, ScoreTable, make_policy, register_policy
from orderdp_dali.policies.full import FullData
from orderdp_dali.policies.infobatch import InfoBatch
from orderdp_dali.policies.orderdp import OrderDP, inclusion_probabilities
from orderdp_dali.policies.rs2 import RS2
from orderdp_dali.policies.uniform import UniformRandom

__all__ = [
    "Policy",
    "ScoreTable",
    "POLICIES",
    "make_policy",
    "register_policy",
    "FullData",
    "OrderDP",
    "InfoBatch",
    "UniformRandom",
    "RS2",
    "inclusion_probabilities",
]

"""``orderdp-dali make-data``: generate an ImageNet-layout folder of JPEGs (:mod:`orderdp_dali.make_data`).

Its parser and ``main`` still live in :mod:`orderdp_dali.make_data`, which is being split on
another branch at the same time; they move here once that lands (issue 20, item 4).
"""
from orderdp_dali.make_data import get_args_parser, main

__all__ = ["get_args_parser", "main"]

"""``captum-gradeclip analyze {decomposition,attributes,concreteness}``: the paper's analyses of
CLIP as commands (thin layers over :mod:`captum_gradeclip.analysis`)."""

from __future__ import annotations

import argparse


def add_parser(sub: "argparse._SubParsersAction") -> None:
    """Register ``analyze`` and its three studies on the top-level subparsers ``sub``."""
    from .attributes_cli import add_parser as add_attributes
    from .concreteness_cli import add_parser as add_concreteness
    from .decomposition_cli import add_parser as add_decomposition

    a = sub.add_parser("analyze", help="the paper's analyses of CLIP: decomposition, attributes, concreteness")
    asub = a.add_subparsers(dest="study", required=True)
    add_decomposition(asub)
    add_attributes(asub)
    add_concreteness(asub)

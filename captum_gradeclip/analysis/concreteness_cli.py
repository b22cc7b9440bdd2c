"""``captum-gradeclip analyze concreteness``."""

from __future__ import annotations

import argparse

from .._io import CLIError
from .common import add_model_args


def cmd_concreteness(args: argparse.Namespace) -> None:
    raise CLIError("analyze concreteness: being written")


def add_parser(asub: "argparse._SubParsersAction") -> None:
    """Register ``concreteness`` on ``analyze``'s subparsers."""
    p = asub.add_parser("concreteness", help="study: concreteness")
    add_model_args(p)
    p.set_defaults(func=cmd_concreteness)

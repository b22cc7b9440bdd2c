"""``captum-gradeclip analyze decomposition``."""

from __future__ import annotations

import argparse

from .._io import CLIError
from .common import add_model_args


def cmd_decomposition(args: argparse.Namespace) -> None:
    raise CLIError("analyze decomposition: being written")


def add_parser(asub: "argparse._SubParsersAction") -> None:
    """Register ``decomposition`` on ``analyze``'s subparsers."""
    p = asub.add_parser("decomposition", help="study: decomposition")
    add_model_args(p)
    p.set_defaults(func=cmd_decomposition)

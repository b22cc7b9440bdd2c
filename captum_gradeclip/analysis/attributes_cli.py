"""``captum-gradeclip analyze attributes``: what CLIP localises, by category, and where it fails.

    captum-gradeclip analyze attributes --out DIR                       # ShapesCLIP, generated probes
    captum-gradeclip analyze attributes --out DIR --model NAME --pairs PROBES.jsonl

Writes ``DIR/rows.parquet`` (or ``rows.csv``: one row per probe), ``DIR/summary.json`` (per
category: the model's accuracy, the pointing game and energy pointing game of Grad-ECLIP and of
GAME, with 95% bootstrap intervals; binding's energy shares; absent prompts' concentration) and
``DIR/attributes.png``.
"""

from __future__ import annotations

import argparse

from .._io import CLIError
from .common import add_model_args


def cmd_attributes(args: argparse.Namespace) -> None:
    raise CLIError("analyze attributes: being written")


def add_parser(asub: "argparse._SubParsersAction") -> None:
    """Register ``attributes`` on ``analyze``'s subparsers ``asub``."""
    p = asub.add_parser("attributes", help="study: what CLIP localises by category (object, colour, binding, absent)")
    add_model_args(p)
    p.add_argument("--scenes", type=int, default=200,
                   help="ShapesCLIP: scenes of the generated suite (default 200; each gives one probe per category)")
    p.add_argument("--examples", type=int, default=4, help="examples per category in the figure (default 4)")
    p.set_defaults(func=cmd_attributes)

"""``captum-gradeclip benchmark``: Grad-ECLIP against the CLIP explanation baselines.

On ShapesCLIP (default): held-out scenes with known object masks; every object of every scene is
explained for its prompt among all 48 single-object prompts (so zero-shot accuracy over that
prompt set is tracked too). Localisation (pointing game, energy pointing game), faithfulness
(deletion / insertion AUC), text-side word deletion on compositional captions, time per
explanation and peak memory.

On any CLIP and a folder of images (``--model`` or ``--open-clip``, ``--images``, ``--prompts``):
faithfulness only; each image is explained for the prompt the model ranks first (as in the
Grad-ECLIP paper's ImageNet protocol).

Modules: :mod:`.methods` (the compared methods, built from a model's layers), :mod:`.protocols`
(the two data protocols and their scoring), :mod:`.memory` (peak memory, one fresh process per
method), :mod:`.report` (the metrics' names and headings, the table and the plot), :mod:`.cli`
(the command).
"""

from .cli import add_parser, cmd_benchmark

__all__ = ["add_parser", "cmd_benchmark"]

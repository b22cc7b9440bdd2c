"""The methods the explorer offers side by side: every image method of the registry
(:mod:`captum_gradeclip.methods`), by its registry name, each explaining all of an image's prompts.

A method is ``explain(pixels (1, 3, H, W)) -> maps (1, T, h, w)`` over the forward function
``sim`` (``pixels -> (1, T)`` cosine similarities with the ``T`` prompts). Grad-ECLIP and the
attention baselines run one ``attribute_all`` (one forward, one batched backward) for all prompts;
the ``"per-prompt"`` methods (Captum's ``IntegratedGradients`` and ``LayerGradCam``, RISE,
Occlusion) run once per prompt, which their label in the page says (their cost grows with ``T``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence, Tuple

from ..methods import SPATIAL, GradECLIPOptions, get_method, method_names
from ..methods import build as build_method

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor, nn

    from ..models import LoadedCLIP

__all__ = ["GRAD_ECLIP", "GradECLIPOptions", "SPATIAL", "build", "check_names", "label", "methods"]

Explain = Callable[["Tensor"], "Tensor"]

GRAD_ECLIP = "grad-eclip"


def methods() -> Tuple[str, ...]:
    """Every registered image method's name, in the registry's order (read at each call, so a
    method registered from outside the package is offered)."""
    return tuple(method_names("image"))


def label(name: str) -> str:
    """The page's label of method ``name``: its registry label, and a cost note for the
    per-prompt methods."""
    m = get_method(name)
    return m.label if m.cost == "all-prompts" else f"{m.label} (one pass per prompt: slower)"


def build(name: str, clip: "LoadedCLIP", sim: "nn.Module", options: GradECLIPOptions) -> Explain:
    """The registered method ``name`` for ``sim``; ``explain(pixels (1, 3, H, W))`` returns
    ``(1, T, h, w)`` (``(1, T, H, W)`` for the pixel-space methods).

    Raises:
        InputError: an unknown name, a layer index outside the image tower, or a method this
            model cannot run.
    """
    return build_method(name, clip, sim, options).attribute_all


def check_names(names: Sequence[str]) -> None:
    """Raises ``InputError`` for an unknown method name (the message lists them)."""
    for n in names:
        get_method(n)

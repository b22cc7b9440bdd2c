"""The methods the explorer offers side by side, each explaining all of an image's prompts at once.

A method is ``explain(pixels (1, 3, H, W)) -> maps (1, T, h, w)`` over the forward function
``sim`` (``pixels -> (1, T)`` cosine similarities with the ``T`` prompts). Grad-ECLIP and the
attention baselines (as the benchmark builds them: :mod:`captum_gradeclip.benchmark.methods`)
run one ``attribute_all`` (one forward, one batched backward) for all prompts; Captum's
``IntegratedGradients`` and ``LayerGradCam`` have no ``attribute_all`` and run once per prompt,
which the method's name says (their cost grows with ``T``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Dict, Sequence, Tuple

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor, nn

    from ..models import LoadedCLIP

Explain = Callable[["Tensor"], "Tensor"]

GRAD_ECLIP = "Grad-ECLIP"
#: Every method's name, in the order the page lists them.
METHODS: Tuple[str, ...] = (GRAD_ECLIP, "GAME (Chefer et al.)", "MaskCLIP", "Attention rollout", "Token Grad-CAM",
                            "CLS attention", "Captum LayerGradCam (patch embedding; one pass per prompt)",
                            "Captum IntegratedGradients (32 steps per prompt: slow)")
#: Grad-ECLIP's spatial weightings (``ImageGradECLIP(spatial=...)``).
SPATIAL = ("cosine", "cosine_per_head", "attention", "uniform")
IG_STEPS = 32


@dataclass(frozen=True)
class GradECLIPOptions:
    """Grad-ECLIP's settings on the page.

    Attributes:
        layers: image attention layers as indices into ``clip.image_layers`` (maps summed), e.g. ``(-1,)``.
        spatial: one of :data:`SPATIAL`. relu: ReLU the map (the paper's) or keep its sign.
    """

    layers: Tuple[int, ...] = (-1,)
    spatial: str = "cosine"
    relu: bool = True


def _all(cls, sim: "nn.Module", layer, relu: bool = True, **kw) -> Explain:
    g = cls(sim, layer, **kw)
    return lambda x: g.attribute_all(x, relu_attributions=relu)


def _per_prompt(attribute: Callable[["Tensor", int], "Tensor"], n_prompts: int) -> Explain:
    import torch

    return lambda x: torch.cat([attribute(x, t) for t in range(n_prompts)], dim=1)


def build(name: str, clip: "LoadedCLIP", sim: "nn.Module", n_prompts: int, options: GradECLIPOptions) -> Explain:
    """The method ``name`` (one of :data:`METHODS`) for ``sim``; ``explain(pixels (1, 3, H, W))``
    returns ``(1, T, h, w)`` (``(1, T, H, W)`` for IntegratedGradients, in pixel space).

    Raises:
        ValueError: an unknown name, or a layer index outside the image tower.
    """
    from captum.attr import IntegratedGradients, LayerGradCam

    from .. import ImageGradECLIP
    from ..baselines import GAME, AttentionRollout, CLSAttention, MaskCLIP, TokenGradCAM

    layers, last = clip.image_layers, clip.image_layers[-1]
    if name == GRAD_ECLIP:
        n = len(layers)
        bad = [i for i in options.layers if not -n <= i < n]
        if bad or not options.layers:
            raise ValueError(f"Grad-ECLIP layers must index the image tower's {n} attention layers "
                             f"(-{n} .. {n - 1}), got {list(options.layers)}")
        chosen = [layers[i] for i in dict.fromkeys(i % n for i in options.layers)]
        return _all(ImageGradECLIP, sim, chosen if len(chosen) > 1 else chosen[0], options.relu,
                    spatial=options.spatial)
    table: Dict[str, Callable[[], Explain]] = {
        "GAME (Chefer et al.)": lambda: _all(GAME, sim, layers),
        "MaskCLIP": lambda: _all(MaskCLIP, sim, last),
        "Attention rollout": lambda: _all(AttentionRollout, sim, layers),
        "Token Grad-CAM": lambda: _all(TokenGradCAM, sim, last),
        "CLS attention": lambda: _all(CLSAttention, sim, last),
        METHODS[6]: lambda: _per_prompt(lambda x, t: LayerGradCam(sim, _gradcam_layer(clip)).attribute(
            x, target=t, relu_attributions=True), n_prompts),
        METHODS[7]: lambda: _per_prompt(lambda x, t: IntegratedGradients(sim).attribute(
            x, target=t, n_steps=IG_STEPS, internal_batch_size=IG_STEPS).abs().sum(1, keepdim=True), n_prompts),
    }
    if name not in table:
        raise ValueError(f"unknown method {name!r}; the methods are: {', '.join(METHODS)}")
    return table[name]()


def _gradcam_layer(clip: "LoadedCLIP") -> "nn.Module":
    """The layer Captum's ``LayerGradCam`` explains (the patch embedding of a ViT, as the benchmark's).

    Raises:
        ValueError: a model object that does not name one.
    """
    layer = getattr(clip, "gradcam_layer", None)
    if layer is None:
        raise ValueError("Captum LayerGradCam needs the model's patch embedding (gradcam_layer), which this "
                         "model object does not name; choose another method")
    return layer


def check_names(names: Sequence[str]) -> None:
    """Raises ``ValueError`` for an unknown method name (the message lists them)."""
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise ValueError(f"unknown method {unknown[0]!r}; the methods are: {', '.join(METHODS)}")

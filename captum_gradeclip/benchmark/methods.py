"""The methods the benchmark compares, each as one callable, built from a model's layers.

Image methods: ``explain(pixels (N, 3, H, W), target (N,)) -> (N, 1, h, w)`` maps (``(N, 1, H, W)``
for the pixel-space ones). Text methods: ``explain(input_ids (1, L), target, attention_mask (1, L))
-> (1, L)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor, nn

    from ..models import LoadedCLIP

ImageMethod = Callable[["Tensor", "Tensor"], "Tensor"]
TextMethod = Callable[["Tensor", int, Optional["Tensor"]], "Tensor"]


def select(methods: Dict[str, Callable], patterns: Optional[Sequence[str]]) -> Dict[str, Callable]:
    """The methods whose name contains one of ``patterns`` (case-insensitive); all for none.

    Raises:
        CLIError: a pattern that matches no method (the message lists the names).
    """
    from .._io import CLIError

    if not patterns:
        return methods
    unknown = [m for m in patterns if not any(m.lower() in k.lower() for k in methods)]
    if unknown:
        raise CLIError(f"--methods {unknown[0]!r} matches no method; the methods are: " + "; ".join(methods))
    return {k: v for k, v in methods.items() if any(m.lower() in k.lower() for m in patterns)}


def _layer_method(cls, forward: "nn.Module", layer) -> ImageMethod:
    g = cls(forward, layer)
    return lambda x, t: g.attribute(x, target=t)


def _grad_eclip(sim: "nn.Module", last: "nn.Module") -> Dict[str, ImageMethod]:
    from .. import ImageGradECLIP

    def ge(**kw) -> ImageMethod:
        g = ImageGradECLIP(sim, last, **kw)
        return lambda x, t: g.attribute(x, target=t)

    return {
        "Grad-ECLIP (cosine, default)": ge(),
        "Grad-ECLIP (cosine_per_head)": ge(spatial="cosine_per_head"),
        "Grad-ECLIP (attention)": ge(spatial="attention"),
        "Grad-ECLIP (uniform)": ge(spatial="uniform"),
        "Grad-ECLIP (single_head, authors')": ge(single_head=True),
    }


def _attention_baselines(sim: "nn.Module", layers: List["nn.Module"]) -> Dict[str, ImageMethod]:
    from ..baselines import GAME, AttentionRollout, CLSAttention, MaskCLIP, TokenGradCAM

    last = layers[-1]
    methods = {
        "CLS attention": _layer_method(CLSAttention, sim, last),
        "Attention rollout": _layer_method(AttentionRollout, sim, layers),
        "Token Grad-CAM": _layer_method(TokenGradCAM, sim, last),
        "GAME (Chefer et al.)": _layer_method(GAME, sim, layers),
        "MaskCLIP": _layer_method(MaskCLIP, sim, last),
    }
    if hasattr(last, "c_proj") and not hasattr(last, "out_proj"):  # a ResNet's attention pool:
        del methods["Token Grad-CAM"]  # no token inputs; LayerGradCam on layer4 is the Grad-CAM there
    return methods


def _perturbation_and_gradient(clip: "LoadedCLIP", sim: "nn.Module") -> Dict[str, ImageMethod]:
    from captum.attr import IntegratedGradients, LayerGradCam, Occlusion

    from ..baselines import RISE

    ig, occ = IntegratedGradients(sim), Occlusion(sim)
    lgc = LayerGradCam(sim, clip.gradcam_layer)
    rise = RISE(sim, n_masks=500, grid=8, batch_size=250)
    p = clip.patch_size
    return {
        "RISE (500 masks)": lambda x, t: rise.attribute(x, target=t),
        f"Captum LayerGradCam ({clip.gradcam_name})": lambda x, t: lgc.attribute(
            x, target=t, relu_attributions=True),
        "Captum IntegratedGradients (50 steps, |.| summed)": lambda x, t: ig.attribute(
            x, target=t, n_steps=50, internal_batch_size=50).abs().sum(1, keepdim=True),
        "Captum Occlusion (patch windows)": lambda x, t: occ.attribute(
            x, target=t, sliding_window_shapes=(3, p, p), strides=(3, p // 2, p // 2)).sum(1, keepdim=True),
    }


def image_methods(clip: "LoadedCLIP", sim: "nn.Module") -> Dict[str, ImageMethod]:
    """Name -> image method explaining ``sim`` (``pixels (N, 3, H, W) -> (N, T)``): Grad-ECLIP's
    variants at the last attention layer, the attention baselines, RISE and Captum's methods."""
    return {**_grad_eclip(sim, clip.image_layers[-1]), **_attention_baselines(sim, clip.image_layers),
            **_perturbation_and_gradient(clip, sim)}


def text_methods(clip: "LoadedCLIP", tsim: "nn.Module") -> Dict[str, TextMethod]:
    """Name -> text method explaining ``tsim`` (``input_ids (T, L), attention_mask (T, L) -> (T, N)``)."""
    from captum.attr import LayerIntegratedGradients

    from .. import TextGradECLIP
    from ..baselines import TextAttention, TextGAME, TextRollout

    layers = clip.text_layers
    lig = LayerIntegratedGradients(tsim, clip.token_embedding)

    def cls(c, lay) -> TextMethod:
        g = c(tsim, lay)
        return lambda ids, t, m: g.attribute(ids, target=t, additional_forward_args=(m,))

    return {
        "Grad-ECLIP (cosine, default)": cls(TextGradECLIP, layers[-8:]),
        "Text attention (EOS row)": cls(TextAttention, layers[-1]),
        "Text rollout": cls(TextRollout, layers),
        "Text GAME": cls(TextGAME, layers),
        "Captum LayerIntegratedGradients (token embeddings)": lambda ids, t, m: lig.attribute(
            ids, target=t, additional_forward_args=(m,), n_steps=50).sum(-1),
    }

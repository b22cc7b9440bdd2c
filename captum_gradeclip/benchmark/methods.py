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


class MethodName(str):
    """A compared method's name: the string itself is what the table, ``benchmark.json`` and
    ``--methods`` show (so it is a dict key like any string); ``short`` is the plot's label and
    ``ours`` marks Grad-ECLIP's variants (drawn in red). Each name is defined once, below."""

    short: str
    ours: bool

    def __new__(cls, name: str, short: Optional[str] = None, *, ours: bool = False) -> "MethodName":
        self = super().__new__(cls, name)
        self.short, self.ours = short or name, ours
        return self


_KNOWN: Dict[str, MethodName] = {}


def _define(name: str, short: Optional[str] = None, *, ours: bool = False) -> MethodName:
    m = _KNOWN[name] = MethodName(name, short, ours=ours)
    return m


def method_name(name: str) -> MethodName:
    """The :class:`MethodName` of a name read back as a plain string (a Parquet row, a JSON key);
    a name no method defines is its own label."""
    return name if isinstance(name, MethodName) else _KNOWN.get(name, MethodName(name))


GRAD_ECLIP = _define("Grad-ECLIP (cosine, default)", "Grad-ECLIP (cosine)", ours=True)
GRAD_ECLIP_PER_HEAD = _define("Grad-ECLIP (cosine_per_head)", ours=True)
GRAD_ECLIP_ATTENTION = _define("Grad-ECLIP (attention)", ours=True)
GRAD_ECLIP_UNIFORM = _define("Grad-ECLIP (uniform)", ours=True)
GRAD_ECLIP_SINGLE_HEAD = _define("Grad-ECLIP (single_head, authors')", "Grad-ECLIP (single_head)", ours=True)
CLS_ATTENTION = _define("CLS attention")
ROLLOUT = _define("Attention rollout")
TOKEN_GRADCAM = _define("Token Grad-CAM")
GAME_NAME = _define("GAME (Chefer et al.)", "GAME")
MASKCLIP = _define("MaskCLIP")
RISE_NAME = _define("RISE (500 masks)", "RISE")
INTEGRATED_GRADIENTS = _define("Captum IntegratedGradients (50 steps, |.| summed)", "IntegratedGradients")
OCCLUSION = _define("Captum Occlusion (patch windows)", "Occlusion")
TEXT_ATTENTION = _define("Text attention (EOS row)", "Text attention")
TEXT_ROLLOUT = _define("Text rollout")
TEXT_GAME = _define("Text GAME")
LAYER_INTEGRATED_GRADIENTS = _define("Captum LayerIntegratedGradients (token embeddings)", "LayerIntegratedGradients")


def layer_gradcam_name(layer: str) -> MethodName:
    """Captum's ``LayerGradCam`` on the layer a model names (``"patch embedding"``, ``"layer4"``)."""
    return _KNOWN.get(f"Captum LayerGradCam ({layer})") or _define(f"Captum LayerGradCam ({layer})", "LayerGradCam")


def select(methods: Dict[MethodName, Callable], patterns: Optional[Sequence[str]]) -> Dict[MethodName, Callable]:
    """The methods whose name contains one of ``patterns`` (case-insensitive); all for none.

    Raises:
        InputError: a pattern that matches no method (the message lists the names).
    """
    from ..errors import InputError

    if not patterns:
        return methods
    unknown = [m for m in patterns if not any(m.lower() in k.lower() for k in methods)]
    if unknown:
        raise InputError(f"--methods {unknown[0]!r} matches no method; the methods are: " + "; ".join(methods))
    return {k: v for k, v in methods.items() if any(m.lower() in k.lower() for m in patterns)}


def _layer_method(cls, forward: "nn.Module", layer) -> ImageMethod:
    g = cls(forward, layer)
    return lambda x, t: g.attribute(x, target=t)


def _grad_eclip(sim: "nn.Module", last: "nn.Module") -> Dict[MethodName, ImageMethod]:
    from .. import ImageGradECLIP

    def ge(**kw) -> ImageMethod:
        g = ImageGradECLIP(sim, last, **kw)
        return lambda x, t: g.attribute(x, target=t)

    return {
        GRAD_ECLIP: ge(),
        GRAD_ECLIP_PER_HEAD: ge(spatial="cosine_per_head"),
        GRAD_ECLIP_ATTENTION: ge(spatial="attention"),
        GRAD_ECLIP_UNIFORM: ge(spatial="uniform"),
        GRAD_ECLIP_SINGLE_HEAD: ge(single_head=True),
    }


def _attention_baselines(sim: "nn.Module", layers: List["nn.Module"]) -> Dict[MethodName, ImageMethod]:
    from ..baselines import GAME, AttentionRollout, CLSAttention, MaskCLIP, TokenGradCAM

    last = layers[-1]
    methods = {
        CLS_ATTENTION: _layer_method(CLSAttention, sim, last),
        ROLLOUT: _layer_method(AttentionRollout, sim, layers),
        TOKEN_GRADCAM: _layer_method(TokenGradCAM, sim, last),
        GAME_NAME: _layer_method(GAME, sim, layers),
        MASKCLIP: _layer_method(MaskCLIP, sim, last),
    }
    if hasattr(last, "c_proj") and not hasattr(last, "out_proj"):  # a ResNet's attention pool:
        del methods[TOKEN_GRADCAM]  # no token inputs; LayerGradCam on layer4 is the Grad-CAM there
    return methods


def _perturbation_and_gradient(clip: "LoadedCLIP", sim: "nn.Module") -> Dict[MethodName, ImageMethod]:
    from captum.attr import IntegratedGradients, LayerGradCam, Occlusion

    from ..baselines import RISE

    ig, occ = IntegratedGradients(sim), Occlusion(sim)
    lgc = LayerGradCam(sim, clip.gradcam_layer)
    rise = RISE(sim, n_masks=500, grid=8, batch_size=250)
    p = clip.patch_size
    return {
        RISE_NAME: lambda x, t: rise.attribute(x, target=t),
        layer_gradcam_name(clip.gradcam_name): lambda x, t: lgc.attribute(
            x, target=t, relu_attributions=True),
        INTEGRATED_GRADIENTS: lambda x, t: ig.attribute(
            x, target=t, n_steps=50, internal_batch_size=50).abs().sum(1, keepdim=True),
        OCCLUSION: lambda x, t: occ.attribute(
            x, target=t, sliding_window_shapes=(3, p, p), strides=(3, p // 2, p // 2)).sum(1, keepdim=True),
    }


def image_methods(clip: "LoadedCLIP", sim: "nn.Module") -> Dict[MethodName, ImageMethod]:
    """Name -> image method explaining ``sim`` (``pixels (N, 3, H, W) -> (N, T)``): Grad-ECLIP's
    variants at the last attention layer, the attention baselines, RISE and Captum's methods."""
    return {**_grad_eclip(sim, clip.image_layers[-1]), **_attention_baselines(sim, clip.image_layers),
            **_perturbation_and_gradient(clip, sim)}


def text_methods(clip: "LoadedCLIP", tsim: "nn.Module") -> Dict[MethodName, TextMethod]:
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
        GRAD_ECLIP: cls(TextGradECLIP, layers[-8:]),
        TEXT_ATTENTION: cls(TextAttention, layers[-1]),
        TEXT_ROLLOUT: cls(TextRollout, layers),
        TEXT_GAME: cls(TextGAME, layers),
        LAYER_INTEGRATED_GRADIENTS: lambda ids, t, m: lig.attribute(
            ids, target=t, additional_forward_args=(m,), n_steps=50).sum(-1),
    }

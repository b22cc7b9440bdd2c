"""The methods the benchmark compares, each as one callable, built from a model's layers.

Image methods: ``explain(pixels (N, 3, H, W), target (N,)) -> (N, 1, h, w)`` maps (``(N, 1, H, W)``
for the pixel-space ones). Text methods: ``explain(input_ids (1, L), target, attention_mask (1, L))
-> (1, L)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence

from ..errors import InputError
from ..methods import Explainer, GradECLIPOptions, build, get_method, method_names

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor, nn

    from ..models import LoadedCLIP

ImageMethod = Callable[["Tensor", "Tensor"], "Tensor"]
TextMethod = Callable[["Tensor", int, Optional["Tensor"]], "Tensor"]


class MethodName(str):
    """A compared method's name: the string itself is what the table, ``benchmark.json`` and the
    plots show (so it is a dict key like any string); ``short`` is the plot's label, ``ours``
    marks Grad-ECLIP's variants (drawn in red) and ``key`` is what ``--methods`` takes: the
    method's registry name (:mod:`captum_gradeclip.methods`), with the option that makes a
    Grad-ECLIP variant (``grad-eclip:spatial=attention``). Each name is defined once, below."""

    short: str
    ours: bool
    key: str

    def __new__(cls, name: str, short: Optional[str] = None, *, ours: bool = False,
                key: Optional[str] = None) -> "MethodName":
        self = super().__new__(cls, name)
        self.short, self.ours, self.key = short or name, ours, key or name
        return self


_KNOWN: Dict[str, MethodName] = {}


def _define(name: str, short: Optional[str] = None, *, ours: bool = False, key: Optional[str] = None) -> MethodName:
    m = _KNOWN[name] = MethodName(name, short, ours=ours, key=key)
    return m


def method_name(name: str) -> MethodName:
    """The :class:`MethodName` of a name read back as a plain string (a Parquet row, a JSON key);
    a name no method defines is its own label."""
    return name if isinstance(name, MethodName) else _KNOWN.get(name, MethodName(name))


GRAD_ECLIP = _define("Grad-ECLIP (cosine, default)", "Grad-ECLIP (cosine)", ours=True, key="grad-eclip")
GRAD_ECLIP_PER_HEAD = _define("Grad-ECLIP (cosine_per_head)", ours=True, key="grad-eclip:spatial=cosine_per_head")
GRAD_ECLIP_ATTENTION = _define("Grad-ECLIP (attention)", ours=True, key="grad-eclip:spatial=attention")
GRAD_ECLIP_UNIFORM = _define("Grad-ECLIP (uniform)", ours=True, key="grad-eclip:spatial=uniform")
GRAD_ECLIP_SINGLE_HEAD = _define("Grad-ECLIP (single_head, authors')", "Grad-ECLIP (single_head)", ours=True,
                                 key="grad-eclip:single-head")
CLS_ATTENTION = _define("CLS attention", key="cls-attention")
ROLLOUT = _define("Attention rollout", key="rollout")
TOKEN_GRADCAM = _define("Token Grad-CAM", key="token-gradcam")
GAME_NAME = _define("GAME (Chefer et al.)", "GAME", key="game")
MASKCLIP = _define("MaskCLIP", key="maskclip")
RISE_NAME = _define("RISE (500 masks)", "RISE", key="rise")
INTEGRATED_GRADIENTS = _define("Captum IntegratedGradients (50 steps, |.| summed)", "IntegratedGradients",
                               key="integrated-gradients")
OCCLUSION = _define("Captum Occlusion (patch windows)", "Occlusion", key="occlusion")
TEXT_ATTENTION = _define("Text attention (EOS row)", "Text attention", key="attention")
TEXT_ROLLOUT = _define("Text rollout", key="rollout")
TEXT_GAME = _define("Text GAME", key="game")
LAYER_INTEGRATED_GRADIENTS = _define("Captum LayerIntegratedGradients (token embeddings)", "LayerIntegratedGradients",
                                     key="layer-integrated-gradients")
#: Grad-ECLIP's variants the benchmark compares: name -> options.
_VARIANTS = {GRAD_ECLIP: GradECLIPOptions(), GRAD_ECLIP_PER_HEAD: GradECLIPOptions(spatial="cosine_per_head"),
             GRAD_ECLIP_ATTENTION: GradECLIPOptions(spatial="attention"),
             GRAD_ECLIP_UNIFORM: GradECLIPOptions(spatial="uniform"),
             GRAD_ECLIP_SINGLE_HEAD: GradECLIPOptions(single_head=True)}
#: registry name -> the benchmark's name, for the methods other than Grad-ECLIP (in table order)
_IMAGE = {"cls-attention": CLS_ATTENTION, "rollout": ROLLOUT, "token-gradcam": TOKEN_GRADCAM, "game": GAME_NAME,
          "maskclip": MASKCLIP, "rise": RISE_NAME, "layer-gradcam": None, "integrated-gradients": INTEGRATED_GRADIENTS,
          "occlusion": OCCLUSION}
_TEXT = {"grad-eclip": GRAD_ECLIP, "attention": TEXT_ATTENTION, "rollout": TEXT_ROLLOUT, "game": TEXT_GAME,
         "layer-integrated-gradients": LAYER_INTEGRATED_GRADIENTS}


def layer_gradcam_name(layer: str) -> MethodName:
    """Captum's ``LayerGradCam`` on the layer a model names (``"patch embedding"``, ``"layer4"``)."""
    return _KNOWN.get(f"Captum LayerGradCam ({layer})") or _define(f"Captum LayerGradCam ({layer})", "LayerGradCam",
                                                                    key="layer-gradcam")


def method_keys() -> List[str]:
    """What ``benchmark --methods`` takes: Grad-ECLIP and its variants' keys, then every other
    registered image method's name."""
    return [m.key for m in _VARIANTS] + [n for n in method_names("image") if n != "grad-eclip"]


def select(methods: Dict[MethodName, Callable], keys: Optional[Sequence[str]]) -> Dict[MethodName, Callable]:
    """The methods whose :attr:`MethodName.key` is one of ``keys`` (exact names); all for none.

    Raises:
        InputError: a key that names no method here (the message lists the keys).
    """
    if not keys:
        return methods
    have = {getattr(k, "key", k) for k in methods}
    unknown = [k for k in keys if k not in have]
    if unknown:
        raise InputError(f"--methods {unknown[0]!r} names no method; the methods are: "
                         + ", ".join(getattr(k, "key", k) for k in methods))
    return {k: v for k, v in methods.items() if getattr(k, "key", k) in keys}


def _as_image_method(explainer: Explainer) -> ImageMethod:
    return lambda x, t: explainer.attribute(x, t)


def image_methods(clip: "LoadedCLIP", sim: "nn.Module") -> Dict[MethodName, ImageMethod]:
    """Name -> image method explaining ``sim`` (``pixels (N, 3, H, W) -> (N, T)``), each built by
    the registry (:func:`captum_gradeclip.methods.build`): Grad-ECLIP's variants at the last
    attention layer, the attention baselines, RISE, Captum's methods, then any method registered
    from outside the package. A method the model cannot run (token Grad-CAM on a ResNet's
    attention pool) is left out."""
    out: Dict[MethodName, ImageMethod] = {n: _as_image_method(build("grad-eclip", clip, sim, o))
                                          for n, o in _VARIANTS.items()}
    for key in method_names("image"):
        if key == "grad-eclip":
            continue
        label = get_method(key).label
        name = layer_gradcam_name(clip.gradcam_name) if key == "layer-gradcam" else _IMAGE.get(key)
        name = name or _KNOWN.get(label) or _define(label, key=key)
        try:
            out[name] = _as_image_method(build(key, clip, sim))
        except InputError:  # e.g. token-gradcam on a ResNet's attention pool: no token inputs
            continue
    return out


def text_methods(clip: "LoadedCLIP", tsim: "nn.Module") -> Dict[MethodName, TextMethod]:
    """Name -> text method explaining ``tsim`` (``input_ids (T, L), attention_mask (T, L) -> (T, N)``)."""
    out: Dict[MethodName, TextMethod] = {}
    for key in method_names("text"):
        method = get_method(key, "text")
        name = _TEXT.get(key) or _KNOWN.get(method.label) or _define(method.label, key=key)
        e = build(key, clip, tsim, kind="text")
        out[name] = (lambda e: lambda ids, t, m: e.attribute(ids, t, (m,)))(e)
    return out

"""The one registry of explanation methods: every command, the explorer and the Python API look
methods up here, by one kebab-case name.

A :class:`Method` is registered once with its ``name``, ``kind`` (``"image"`` or ``"text"``), cost
(``"all-prompts"``: one forward and one batched backward explain every prompt, ``attribute_all``;
``"per-prompt"``: one pass or more per prompt), ``label`` (plots and tables) and ``factory``, which
builds the Captum attribution for a loaded model and its forward function. :func:`build` wraps it in
an :class:`Explainer`, which gives every method the same two calls:

- image methods: ``attribute(pixels (N, 3, H, W), target) -> (N, 1, h, w)`` and
  ``attribute_all(pixels) -> (N, T, h, w)`` (pixel-space methods: ``(N, 1, H, W)`` / ``(N, T, H, W)``),
  over ``sim = clip.image_similarity(input_ids, attention_mask)`` (``pixels -> (N, T)``);
- text methods: ``attribute(input_ids (T, L), target, additional_forward_args=(mask,)) -> (T, L)``
  and ``attribute_all(...) -> (T, N, L)``, over ``tsim = clip.text_similarity(pixels)``.

Grad-ECLIP's settings are one record, :class:`GradECLIPOptions`, used by every command (the flags
are parsed by :mod:`captum_gradeclip.options_cli`); the other methods take none. A new method is one
factory plus one :func:`register_method` call, from inside the package or out of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from .models import LoadedCLIP

__all__ = ["Explainer", "GradECLIPOptions", "Method", "SPATIAL", "build", "get_method", "method_names",
           "register_method", "resolve_layers", "unregister_method"]

SPATIAL: Tuple[str, ...] = ("cosine", "cosine_per_head", "attention", "uniform")
"""Grad-ECLIP's spatial weightings (``ImageGradECLIP(spatial=...)``, ``GradECLIPOptions.spatial``)."""
KINDS = ("image", "text")
COSTS = ("all-prompts", "per-prompt")


@dataclass(frozen=True)
class GradECLIPOptions:
    """Grad-ECLIP's settings, the same record for every command and the API.

    Attributes:
        layers: attention layers as indices into the tower's layers, Python style (``-1`` the
            last; ``(-3, -2, -1)`` the last three); image maps of several layers are summed.
            Default ``(-1,)``: the published method. (The text tower's maps use its last
            ``text_layers`` layers, summed before the ReLU, as the paper does.)
        spatial: one of :data:`SPATIAL`. relu: ReLU the map (the paper's) or keep its sign.
        single_head: the authors' one-head reproduction mode (explains a modified model).
        text_layers: how many of the text tower's last layers a text map sums (default 8).

    Raises:
        ValueError: no layer, a repeated layer, an unknown ``spatial``, ``text_layers`` below 1.
    """

    layers: Tuple[int, ...] = (-1,)
    spatial: str = "cosine"
    relu: bool = True
    single_head: bool = False
    text_layers: int = 8

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(int(i) for i in self.layers))
        if not self.layers or len(set(self.layers)) != len(self.layers):
            raise InputError(f"Grad-ECLIP layers must be distinct indices, at least one; got {list(self.layers)}")
        if self.spatial not in SPATIAL:
            raise InputError(f"spatial must be one of {', '.join(SPATIAL)}, got {self.spatial!r}")
        if self.text_layers < 1:
            raise InputError(f"text_layers must be at least 1, got {self.text_layers}")

    def describe(self) -> Dict[str, Any]:
        """The options as a job's configuration records them."""
        return {"layers": list(self.layers), "spatial": self.spatial, "relu": self.relu,
                "single_head": self.single_head}


def resolve_layers(indices: Sequence[int], layers: Sequence[Any], tower: str = "image") -> List[Any]:
    """The modules ``layers[i]`` for each index (Python indexing, ``-1`` the last), in tower order.

    Raises:
        InputError: an index outside the tower (the message gives its range).
    """
    n = len(layers)
    bad = [i for i in indices if not -n <= i < n]
    if bad:
        raise InputError(f"layer {bad[0]}: this {tower} tower has {n} attention layers "
                         f"(indices -{n} .. -1, or 0 .. {n - 1})")
    return [layers[i] for i in sorted({i % n for i in indices})]


def _one_or_list(modules: List[Any]) -> Any:
    return modules[0] if len(modules) == 1 else modules


Factory = Callable[["LoadedCLIP", "nn.Module", GradECLIPOptions], "Explainer"]


@dataclass(frozen=True)
class Method:
    """One registered explanation method.

    Attributes:
        name: its one spelling, kebab-case (``"grad-eclip"``, ``"game"``): flags, the app, files.
        kind: ``"image"`` or ``"text"``. cost: ``"all-prompts"`` or ``"per-prompt"``.
        label: its name in plots and tables. factory: ``(clip, forward_func, options) -> Explainer``.
        uses_options: whether :class:`GradECLIPOptions` changes it (Grad-ECLIP's flags are
            refused with other methods rather than silently ignored).
        pixel_space: its maps are at the input's resolution ``(H, W)`` rather than the patch grid.
    """

    name: str
    kind: str
    cost: str
    label: str
    factory: Factory = field(repr=False, compare=False)
    uses_options: bool = False
    pixel_space: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS or self.cost not in COSTS:
            raise ValueError(f"kind must be one of {KINDS} and cost one of {COSTS}, got {self.kind!r}, {self.cost!r}")
        if not self.name or self.name != self.name.lower() or " " in self.name or "_" in self.name:
            raise ValueError(f"method names are kebab-case (e.g. 'my-method'), got {self.name!r}")


class Explainer:
    """A built method: the same ``attribute`` / ``attribute_all`` for every method.

    Args:
        attribution: a Captum attribution (``forward_func``, ``attribute``; ``attribute_all``
            where the method has one).
        kwargs: keyword arguments of every ``attribute`` call (``relu_attributions``, ``n_steps``...).
        post: applied to each ``attribute`` result (e.g. IntegratedGradients' ``|.|`` summed
            over colour channels: ``(N, 3, H, W) -> (N, 1, H, W)``).
        method: the :class:`Method` it was built from.
    """

    def __init__(self, attribution: Any, *, kwargs: Optional[Dict[str, Any]] = None,
                 post: Optional[Callable[[Tensor], Tensor]] = None, method: Optional[Method] = None) -> None:
        self.attribution, self.kwargs, self.post, self.method = attribution, dict(kwargs or {}), post, method

    @property
    def forward_func(self) -> Any:
        """The explained forward function (``inputs -> (B, K)`` scores)."""
        return self.attribution.forward_func

    def attribute(self, inputs: Tensor, target: Any = None, additional_forward_args: Any = None) -> Tensor:
        """The map(s) of score ``target``: image ``(N, 1, h, w)``, text ``(T, L)``."""
        extra = {} if additional_forward_args is None else {"additional_forward_args": additional_forward_args}
        out = self.attribution.attribute(inputs, target=target, **extra, **self.kwargs)
        return out if self.post is None else self.post(out)

    def attribute_all(self, inputs: Tensor, additional_forward_args: Any = None) -> Tensor:
        """Maps for every score ``k``: image ``(N, K, h, w)``, text ``(T, N, L)``. Methods with an
        ``attribute_all`` run it once; the others run ``attribute`` once per column."""
        if hasattr(self.attribution, "attribute_all") and self.post is None:
            extra = {} if additional_forward_args is None else {"additional_forward_args": additional_forward_args}
            return self.attribution.attribute_all(inputs, **extra, **self.kwargs)
        with torch.no_grad():
            args = () if additional_forward_args is None else tuple(additional_forward_args)
            k = self.forward_func(inputs, *args).shape[-1]
        cols = [self.attribute(inputs, torch.full((len(inputs),), t, dtype=torch.long, device=inputs.device),
                               additional_forward_args) for t in range(k)]
        return torch.cat(cols, 1) if cols[0].dim() == 4 else torch.stack(cols, 1)


_REGISTRY: Dict[Tuple[str, str], Method] = {}


def register_method(method: Method, *, replace: bool = False) -> Method:
    """Register ``method`` under ``(method.kind, method.name)``; every command then offers it.

    Raises:
        ValueError: the name is taken for this kind (pass ``replace=True`` to replace it).
    """
    key = (method.kind, method.name)
    if key in _REGISTRY and not replace:
        raise ValueError(f"a {method.kind} method named {method.name!r} is registered already")
    _REGISTRY[key] = method
    return method


def unregister_method(name: str, kind: str = "image") -> None:
    """Remove a registered method (tests register toy methods and remove them)."""
    _REGISTRY.pop((kind, name), None)


def method_names(kind: str = "image", cost: Optional[str] = None) -> List[str]:
    """The registered names of ``kind`` (optionally of one ``cost``), in registration order."""
    return [m.name for (k, _), m in _REGISTRY.items() if k == kind and cost in (None, m.cost)]


def get_method(name: str, kind: str = "image") -> Method:
    """The registered method ``name`` of ``kind``.

    Raises:
        InputError: no such method (the message lists the names).
    """
    try:
        return _REGISTRY[(kind, name)]
    except KeyError:
        raise InputError(f"unknown {kind} method {name!r}; the {kind} methods are: "
                         f"{', '.join(method_names(kind))}") from None


def build(name: str, clip: "LoadedCLIP", forward_func: "nn.Module", options: Optional[GradECLIPOptions] = None, *,
          kind: str = "image") -> Explainer:
    """The method ``name`` of ``kind`` explaining ``forward_func`` on ``clip``'s layers.

    Args:
        name: a registered name (:func:`method_names`). clip: the loaded model.
        forward_func: image methods: ``clip.image_similarity(...)`` (``pixels -> (N, T)``);
            text methods: ``clip.text_similarity(pixels)`` (``input_ids, mask -> (T, N)``).
        options: Grad-ECLIP's settings (default :class:`GradECLIPOptions()`).

    Raises:
        InputError: an unknown name, a layer outside the tower, or a method the model cannot run.
    """
    method = get_method(name, kind)
    explainer = method.factory(clip, forward_func, options or GradECLIPOptions())
    explainer.method = method
    return explainer


# --- the package's methods: one factory and one registration each --------------------------------

def _grad_eclip(clip: "LoadedCLIP", sim: "nn.Module", o: GradECLIPOptions) -> Explainer:
    from ._core import ImageGradECLIP

    layers = _one_or_list(resolve_layers(o.layers, clip.image_layers))
    return Explainer(ImageGradECLIP(sim, layers, spatial=o.spatial, single_head=o.single_head),
                     kwargs={"relu_attributions": o.relu})


def _on(cls_name: str, which: str, tower: str = "image") -> Factory:
    """A baseline of :mod:`captum_gradeclip.baselines` on the ``tower``'s last layer or on all
    of its layers."""
    def factory(clip: "LoadedCLIP", forward: "nn.Module", o: GradECLIPOptions) -> Explainer:
        from . import baselines

        layers = clip.image_layers if tower == "image" else clip.text_layers
        return Explainer(getattr(baselines, cls_name)(forward, layers[-1] if which == "last" else list(layers)))
    return factory


def _token_gradcam(clip: "LoadedCLIP", sim: "nn.Module", o: GradECLIPOptions) -> Explainer:
    from .baselines import TokenGradCAM

    last = clip.image_layers[-1]
    if hasattr(last, "c_proj") and not hasattr(last, "out_proj"):
        raise InputError("token-gradcam needs token inputs; a ResNet's attention pool has none: use layer-gradcam "
                         "(Captum's LayerGradCam on layer4) instead")
    return Explainer(TokenGradCAM(sim, last))


def _rise(clip: "LoadedCLIP", sim: "nn.Module", o: GradECLIPOptions) -> Explainer:
    from .baselines import RISE

    return Explainer(RISE(sim, n_masks=500, grid=8, batch_size=250))


def _layer_gradcam(clip: "LoadedCLIP", sim: "nn.Module", o: GradECLIPOptions) -> Explainer:
    from captum.attr import LayerGradCam

    layer = getattr(clip, "gradcam_layer", None)
    if layer is None:
        raise InputError("layer-gradcam needs the model's patch embedding (gradcam_layer), which this model "
                         "object does not name; choose another method")
    return Explainer(LayerGradCam(sim, layer), kwargs={"relu_attributions": True})


#: IntegratedGradients' steps (the benchmark's and the explorer's).
IG_STEPS = 50


def _integrated_gradients(clip: "LoadedCLIP", sim: "nn.Module", o: GradECLIPOptions) -> Explainer:
    from captum.attr import IntegratedGradients

    return Explainer(IntegratedGradients(sim), kwargs={"n_steps": IG_STEPS, "internal_batch_size": IG_STEPS},
                     post=lambda a: a.abs().sum(1, keepdim=True))


def _occlusion(clip: "LoadedCLIP", sim: "nn.Module", o: GradECLIPOptions) -> Explainer:
    from captum.attr import Occlusion

    p = clip.patch_size
    return Explainer(Occlusion(sim), kwargs={"sliding_window_shapes": (3, p, p), "strides": (3, p // 2, p // 2)},
                     post=lambda a: a.sum(1, keepdim=True))


def _text_grad_eclip(clip: "LoadedCLIP", tsim: "nn.Module", o: GradECLIPOptions) -> Explainer:
    from ._core import TextGradECLIP

    return Explainer(TextGradECLIP(tsim, clip.text_layers[-o.text_layers:], spatial=o.spatial,
                                   single_head=o.single_head), kwargs={"relu_attributions": o.relu})


def _text_lig(clip: "LoadedCLIP", tsim: "nn.Module", o: GradECLIPOptions) -> Explainer:
    from captum.attr import LayerIntegratedGradients

    return Explainer(LayerIntegratedGradients(tsim, clip.token_embedding), kwargs={"n_steps": IG_STEPS},
                     post=lambda a: a.sum(-1))


for _m in (
    Method("grad-eclip", "image", "all-prompts", "Grad-ECLIP", _grad_eclip, uses_options=True),
    Method("cls-attention", "image", "all-prompts", "CLS attention", _on("CLSAttention", "last")),
    Method("rollout", "image", "all-prompts", "Attention rollout", _on("AttentionRollout", "all")),
    Method("token-gradcam", "image", "all-prompts", "Token Grad-CAM", _token_gradcam),
    Method("game", "image", "all-prompts", "GAME (Chefer et al.)", _on("GAME", "all")),
    Method("maskclip", "image", "all-prompts", "MaskCLIP", _on("MaskCLIP", "last")),
    Method("rise", "image", "per-prompt", "RISE (500 masks)", _rise, pixel_space=True),
    Method("layer-gradcam", "image", "per-prompt", "Captum LayerGradCam", _layer_gradcam),
    Method("integrated-gradients", "image", "per-prompt", "Captum IntegratedGradients (50 steps, |.| summed)",
           _integrated_gradients, pixel_space=True),
    Method("occlusion", "image", "per-prompt", "Captum Occlusion (patch windows)", _occlusion, pixel_space=True),
    Method("grad-eclip", "text", "all-prompts", "Grad-ECLIP", _text_grad_eclip, uses_options=True),
    Method("attention", "text", "all-prompts", "Text attention (EOS row)", _on("TextAttention", "last", "text")),
    Method("rollout", "text", "all-prompts", "Text rollout", _on("TextRollout", "all", "text")),
    Method("game", "text", "all-prompts", "Text GAME", _on("TextGAME", "all", "text")),
    Method("layer-integrated-gradients", "text", "per-prompt", "Captum LayerIntegratedGradients (token embeddings)",
           _text_lig),
):
    register_method(_m)

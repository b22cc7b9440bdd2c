"""Quantus (``pip install 'captum-gradeclip[quantus]'``, 0.6.0) on our maps and forward functions.

- :func:`a_batch` / :func:`s_batch`: maps and masks as the arrays Quantus metrics take
  (``(N, 1, H, W)``, maps upsampled to the image exactly as :mod:`captum_gradeclip.metrics` does);
- :func:`explain_func`: any of our attribution classes as Quantus's ``explain_func(model, inputs,
  targets)``, rebuilt on the model Quantus passes (so its randomisation metrics, which explain a
  randomised copy, explain the copy), the layers found by name;
- :func:`layer_names`: those names, from the layers of a forward function.

Quantus's definitions next to ours (tested): ``PointingGame`` counts a hit when **any** pixel
tied for the maximum is on the mask, with no tolerance (ours: ``pointing_game(tolerance=0)``
needs **every** tied maximum on the mask; our default adds the standard 15 px at 224 px);
``RelevanceMassAccuracy`` is the share of the map's mass inside the mask without clamping
(ours, ``energy_pointing_game``, clamps negative values to 0 first). On maps without ties and
without negative values (Grad-ECLIP's are ReLU'd) the numbers are equal.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ExplainFunc = Callable[..., Any]


def _numpy(x: Tensor) -> Any:
    return x.detach().cpu().float().numpy()


def a_batch(attributions: Tensor, size: Sequence[int]) -> Any:
    """``(N, 1, h, w)``, ``(N, C, h, w)`` or ``(N, h, w)`` maps -> ``(N, 1, H, W)`` float32 numpy at
    ``size = (H, W)``: channels summed, bilinear upsampling, as :mod:`captum_gradeclip.metrics` does.

    Raises:
        ValueError: not 3-D or 4-D.
    """
    a = attributions.detach().float()
    a = a[:, None] if a.dim() == 3 else a
    if a.dim() != 4:
        raise ValueError(f"attributions must be (N, 1, h, w) or (N, h, w), got {tuple(attributions.shape)}")
    a = a.sum(1, keepdim=True)
    if tuple(a.shape[-2:]) != tuple(size):
        a = F.interpolate(a, size=tuple(size), mode="bilinear", align_corners=False)
    return _numpy(a)


def s_batch(masks: Tensor) -> Any:
    """``(N, H, W)`` bool masks -> ``(N, 1, H, W)`` float32 numpy (0/1)."""
    return _numpy(masks.float()[:, None])


def layer_names(forward: nn.Module, layers: Union[nn.Module, Sequence[nn.Module]]) -> List[str]:
    """The names of ``layers`` among ``forward.named_modules()`` (e.g.
    ``["model.vision_model.encoder.layers.3"]``).

    Raises:
        ValueError: a layer that is not a submodule of ``forward``.
    """
    layers = [layers] if isinstance(layers, nn.Module) else list(layers)
    names = {id(m): n for n, m in forward.named_modules()}
    missing = [type(m).__name__ for m in layers if id(m) not in names]
    if missing:
        raise ValueError(f"layer(s) {missing} are not submodules of the forward function {type(forward).__name__}")
    return [names[id(m)] for m in layers]


def explain_func(method: type, names: Sequence[str], **method_kwargs: Any) -> ExplainFunc:
    """A Quantus ``explain_func``: ``(model, inputs (N, 3, H, W) numpy, targets (N,)) -> (N, 1, H, W)``
    numpy maps of ``method(model, layer(s), **method_kwargs).attribute(inputs, target=targets)``.

    Args:
        method: one of our attribution classes (``ImageGradECLIP``, ``baselines.GAME``, ...).
        names: its layers' names in the forward function (:func:`layer_names`); one name -> one layer.
    """
    names = list(names)

    def explain(model: nn.Module, inputs: Any, targets: Any, **_: Dict[str, Any]) -> Any:
        x = torch.as_tensor(inputs, dtype=torch.float32)
        t = torch.as_tensor(targets).long().reshape(-1)
        layers = [model.get_submodule(n) for n in names]
        attribution = method(model, layers[0] if len(layers) == 1 else layers, **method_kwargs)
        return a_batch(attribution.attribute(x, target=t), x.shape[-2:])

    return explain

"""Baseline explanation methods for CLIP, on the same Captum-style API as Grad-ECLIP.

Each class takes ``(forward_func, layer_or_layers)`` and has ``attribute(inputs, target,
additional_forward_args)`` (image: ``(N, 1, h, w)``; text: ``(T, L)``) and ``attribute_all``.
They reuse the Grad-ECLIP adapters, so they read the model's own ``q, k, v`` and never rely on
attention probabilities the backend may not materialise (they are recomputed from ``q, k``).

Image: :class:`CLSAttention`, :class:`AttentionRollout`, :class:`TokenGradCAM`, :class:`GAME`,
:class:`MaskCLIP`, :class:`RISE`. Text: :class:`TextAttention`, :class:`TextRollout`,
:class:`TextGAME`.
"""

from __future__ import annotations

import math
from typing import Any, List, Union

import torch
import torch.nn.functional as F
from captum._utils.common import _format_additional_forward_args
from captum.attr import PerturbationAttribution
from captum.log import log_usage
from torch import Tensor

from .._core.layer_gradeclip import ImageGradECLIP, LayerContext, TextGradECLIP


def full_attention(layer: LayerContext) -> Tensor:
    """``(B, H, L, L)``: the model's softmax attention, recomputed from ``q, k`` and its masks."""
    cap = layer.capture
    q, k = cap.query.detach().float(), cap.key.detach().float()
    b, n, d = q.shape
    h = cap.num_heads
    qh = q.view(b, n, h, d // h).transpose(1, 2)
    kh = k.view(b, n, h, d // h).transpose(1, 2)
    logits = qh @ kh.transpose(-1, -2) / math.sqrt(d // h)
    if cap.mask is not None:
        m = cap.mask
        logits = logits.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else logits + m.float()
    if cap.is_causal:
        logits = logits.masked_fill(~torch.ones(n, n, dtype=torch.bool, device=q.device).tril(), float("-inf"))
    return logits.softmax(-1).nan_to_num(0.0)


def _pooled_rows(x: Tensor, pooled: Tensor) -> Tensor:
    """``(..., B, L, L)`` -> ``(..., B, L)``: row ``pooled[b]`` of each example."""
    rows = torch.arange(pooled.shape[0], device=pooled.device)
    return x[..., rows, pooled, :]


class _NoGrad:
    _needs_grad = False
    _fast_grad = False

    def _expand(self, m: Tensor, layers, n_targets: int) -> Tensor:
        m = torch.where(layers[-1].scored, m, torch.zeros((), dtype=m.dtype, device=m.device))
        return m.unsqueeze(0).expand(n_targets, *m.shape)


class _AttentionMixin(_NoGrad):
    def _combine(self, layers, *, relu, targets, n_targets):
        a = full_attention(layers[-1]).mean(1)  # heads averaged
        return self._expand(_pooled_rows(a, layers[-1].pooled), layers, n_targets)


class _RolloutMixin(_NoGrad):
    def _combine(self, layers, *, relu, targets, n_targets):
        r = None
        for layer in layers:
            a = full_attention(layer).mean(1)
            eye = torch.eye(a.shape[-1], device=a.device)
            a = 0.5 * a + 0.5 * eye
            a = a / a.sum(-1, keepdim=True)
            r = a if r is None else a @ r
        return self._expand(_pooled_rows(r, layers[-1].pooled), layers, n_targets)


class _GAMEMixin:
    """Chefer et al. (ICCV 2021): ``R <- R + E_h[(grad_A * A)^+] R`` over the layers, with
    ``grad_A = grad_o v^T`` per head (exact, as ``o = A v``)."""

    _fast_grad = False  # needs the gradient at every token

    def _combine(self, layers, *, relu, targets, n_targets):
        r = None
        for layer in layers:
            cap = layer.capture
            a = full_attention(layer)  # (B, H, L, L)
            g = self._o_grad(layer).float()  # (T, B, L, D)
            t, b, n, d = g.shape
            h = cap.num_heads
            gh = g.view(t, b, n, h, d // h).transpose(2, 3)  # (T, B, H, L, dh)
            vh = cap.value.detach().float().view(b, n, h, d // h).transpose(1, 2)  # (B, H, L, dh)
            grad_a = gh @ vh.transpose(-1, -2)[None]  # (T, B, H, L, L)
            cam = (grad_a * a[None]).clamp_min(0).mean(2)  # (T, B, L, L)
            eye = torch.eye(n, device=g.device).expand(t, b, n, n)
            r = eye + cam if r is None else r + cam @ r
        m = _pooled_rows(r, layers[-1].pooled)
        return torch.where(layers[-1].scored, m, torch.zeros((), dtype=m.dtype, device=m.device))


class CLSAttention(_AttentionMixin, ImageGradECLIP):
    """The class token's softmax attention over the patches (heads averaged) in ``layer``
    (use the last block). ``(N, 1, h, w)``; the same map for every target."""


class AttentionRollout(_RolloutMixin, ImageGradECLIP):
    """Attention rollout (Abnar & Zuidema, 2020) over ``layers`` (pass all blocks, first to
    last): ``prod_l (0.5 A_l + 0.5 I)``, heads averaged, class-token row. ``(N, 1, h, w)``."""


class GAME(_GAMEMixin, ImageGradECLIP):
    """Chefer et al.'s gradient-weighted attention relevance over ``layers`` (pass all blocks).
    ``(N, 1, h, w)``."""


class TokenGradCAM(ImageGradECLIP):
    """Grad-CAM on ViT tokens: the input of ``layer``'s attention (after its LayerNorm), channel
    weights = mean gradient over the patch tokens, map = ReLU(sum_c w_c x_i,c). ``(N, 1, h, w)``."""

    _fast_grad = False

    def _sources(self, capture):
        if "input" not in capture.extra:
            raise TypeError("TokenGradCAM needs a transformer block (its attention reads token inputs); "
                            "for a ResNet tower use Captum's LayerGradCam on the last stage (e.g. "
                            "model.visual.layer4)")
        return [capture.extra["input"]]

    def _combine(self, layers, *, relu, targets, n_targets):
        layer = layers[-1]
        x, g = layer.capture.extra["input"].detach().float(), layer.grads[0].float()
        if layer.capture.extra.get("seq_first"):
            x, g = x.transpose(0, 1), g.transpose(-3, -2)
        s = layer.scored.to(g.dtype)[None, :, :, None]
        w = (g * s).sum(-2) / s.sum(-2).clamp_min(1)  # (T, B, D)
        m = torch.einsum("tbd,bld->tbl", w, x)
        m = torch.where(layer.scored, m, torch.zeros((), dtype=m.dtype, device=m.device))
        return m.clamp_min(0) if relu else m


def _value_head(model: Any, attn: Any):
    """MaskCLIP's head: ``values (B, L, D) -> embeddings (B, L, E)``, the way the pooled token
    reaches the embedding: ``out_proj``, post-LayerNorm and projection of a ViT (Hugging Face:
    ``post_layernorm`` / ``visual_projection``; OpenAI CLIP and open_clip: ``ln_post`` / ``proj``),
    or ``c_proj`` of a ResNet attention pool."""
    if hasattr(attn, "c_proj") and not hasattr(attn, "out_proj"):
        return lambda v: attn.c_proj(v)
    visual = getattr(model, "visual", None)
    if hasattr(model, "vision_model") and hasattr(model, "visual_projection"):
        post, proj = model.vision_model.post_layernorm, model.visual_projection
    elif visual is not None and hasattr(visual, "ln_post"):
        post = visual.ln_post
        proj = (lambda y: y) if getattr(visual, "proj", None) is None else (lambda y: y @ visual.proj)
    else:
        raise TypeError(f"MaskCLIP does not know how {type(model).__name__}'s image tower maps tokens to "
                        "the embedding (expected a Hugging Face CLIP, an OpenAI CLIP / open_clip ViT or "
                        "a ResNet attention pool)")
    return lambda v: proj(post(F.linear(v, attn.out_proj.weight, attn.out_proj.bias)))


class MaskCLIP(_NoGrad, ImageGradECLIP):
    """MaskCLIP (Zhou et al., ECCV 2022): each patch's value vector of ``layer`` (the last block)
    through ``out_proj``, the post-LayerNorm and the projection (a ResNet attention pool: through
    ``c_proj``), scored (cosine) against the target text's embedding. Needs a similarity forward
    function with ``.model`` and ``.text_embeds`` (:class:`~captum_gradeclip.ImageTextSimilarity`
    or :class:`~captum_gradeclip.openai.EncoderImageTextSimilarity`). ``(N, 1, h, w)``."""

    def _combine(self, layers, *, relu, targets, n_targets):
        sim = self.forward_func
        model = getattr(sim, "model", None)
        if model is None or not hasattr(sim, "text_embeds"):
            raise TypeError("MaskCLIP needs an ImageTextSimilarity or EncoderImageTextSimilarity forward "
                            "function (with .model and .text_embeds)")
        layer = layers[-1]
        head = _value_head(model, self._adapters[-1].module)
        with torch.no_grad():
            v = layer.capture.value.detach()
            y = F.normalize(head(v).float(), dim=-1)  # (B, L, E)
            text = sim.text_embeds.float()  # (T, E), normalised
            if torch.is_tensor(targets) and targets.numel() > 1 and n_targets > 1:
                m = torch.einsum("ble,te->tbl", y, text[targets])
            else:
                tgt = torch.as_tensor(0 if targets is None else targets).reshape(-1)
                tgt = tgt.expand(y.shape[0]) if tgt.numel() == 1 else tgt
                m = torch.einsum("ble,be->bl", y, text[tgt.to(text.device)])[None]
        return torch.where(layer.scored, m, torch.zeros((), dtype=m.dtype, device=m.device))


class TextAttention(_AttentionMixin, TextGradECLIP):
    """The EOS token's attention over the words in ``layer`` (heads averaged). ``(T, L)``."""


class TextRollout(_RolloutMixin, TextGradECLIP):
    """Attention rollout over the text tower's ``layers`` (pass all blocks). ``(T, L)``."""


class TextGAME(_GAMEMixin, TextGradECLIP):
    """Chefer et al.'s relevance over the text tower's ``layers`` (pass all blocks). ``(T, L)``."""


class RISE(PerturbationAttribution):
    """RISE (Petsiuk et al., 2018): the score-weighted average of random smooth binary masks.

    Args:
        forward_func: ``(N, C, H, W) -> (N, T)`` scores.
        n_masks: how many masks. grid: the masks' coarse grid side. p: keep probability.
        batch_size: masked images per forward. seed: the masks' random seed.
    """

    def __init__(self, forward_func, n_masks: int = 500, grid: int = 8, p: float = 0.5,
                 batch_size: int = 100, seed: int = 0) -> None:
        super().__init__(forward_func)
        self.n_masks, self.grid, self.p, self.batch_size, self.seed = n_masks, grid, p, batch_size, seed

    def _masks(self, h: int, w: int, device) -> Tensor:
        g = torch.Generator().manual_seed(self.seed)
        cell_h, cell_w = math.ceil(h / self.grid), math.ceil(w / self.grid)
        coarse = (torch.rand(self.n_masks, 1, self.grid, self.grid, generator=g) < self.p).float()
        up = F.interpolate(coarse, size=((self.grid + 1) * cell_h, (self.grid + 1) * cell_w), mode="bilinear",
                           align_corners=False)
        dx = torch.randint(0, cell_w, (self.n_masks,), generator=g)
        dy = torch.randint(0, cell_h, (self.n_masks,), generator=g)
        out = torch.stack([up[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(self.n_masks)])
        return out.to(device)

    @log_usage()
    def attribute(self, inputs: Tensor, target: Union[int, List[int], Tensor, None] = None,
                  additional_forward_args: Any = None) -> Tensor:
        """``inputs (N, C, H, W)`` -> ``(N, 1, H, W)`` saliency of ``target``."""
        if inputs.dim() != 4:
            raise ValueError(f"RISE expects images (N, C, H, W), got shape {tuple(inputs.shape)}")
        extra = _format_additional_forward_args(additional_forward_args) or ()
        n, _, h, w = inputs.shape
        masks = self._masks(h, w, inputs.device)
        tgt = torch.as_tensor(0 if target is None else target, device=inputs.device).reshape(-1).expand(n)
        out = torch.zeros(n, 1, h, w, device=inputs.device)
        with torch.no_grad():
            for i in range(n):
                for s in range(0, self.n_masks, self.batch_size):
                    m = masks[s:s + self.batch_size]
                    scores = self.forward_func(inputs[i:i + 1] * m, *extra)
                    scores = scores if scores.dim() == 2 else scores[:, None]
                    out[i] += torch.einsum("m,mchw->chw", scores[:, tgt[i]].float(), m)
        return out / (self.n_masks * self.p)


__all__ = ["AttentionRollout", "CLSAttention", "GAME", "MaskCLIP", "RISE", "TextAttention", "TextGAME",
           "TextRollout", "TokenGradCAM", "full_attention"]

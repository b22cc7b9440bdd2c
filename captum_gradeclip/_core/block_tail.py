"""A shortcut for ``dS/do`` at the pooled token of a pre-LayerNorm transformer block.

When the score reads the explained block's output only at the pooled row (the last block of a
ViT: the tower keeps the class token), every other row of the block's tail (residual, LayerNorm,
MLP: all row-wise) gets a zero gradient, yet autograd pushes full ``(B, L, D)`` tensors through
the MLP once per target. Here the score is differentiated against the block *output* only (a
cheap backward through the tower's head), the zero rows are checked, and the gradient is carried
through the block's tail on the pooled row alone::

    h = x_p + a_p ;  y_p = h + mlp(ln_2(h))          (a = out_proj(o), the attention output)
    dS/da_p = vjp(y_p, dS/dy_p) ;  dS/do_p = dS/da_p @ W_out

Used only where the block's structure is recognised (an attention, a second LayerNorm and an MLP,
nothing else but identities) and only when the other rows' gradients are exactly zero; otherwise
the full backward runs. The forward is not touched.
"""

from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from ..adapters.base import AttentionAdapter, Capture, first_arg

_LN2 = ("layer_norm2", "ln_2", "norm2")
_LN1 = ("layer_norm1", "ln_1", "norm1")
_ATTN = ("self_attn", "attn", "attention")


class BlockTail:
    """The row-wise tail of a pre-LN block (residual, ``ln2``, ``mlp``) after ``adapter``'s attention,
    through which ``dS/do`` at the pooled row ``(K, B, 1, D)`` is carried without a backward over all
    ``L`` tokens; :meth:`find` returns ``None`` for any other structure (then the full backward runs)."""
    def __init__(self, block: nn.Module, adapter: AttentionAdapter, ln2: nn.Module, mlp: nn.Module) -> None:
        self.block, self.adapter, self.ln2, self.mlp = block, adapter, ln2, mlp

    @classmethod
    def find(cls, block: nn.Module, adapter: AttentionAdapter) -> Optional["BlockTail"]:
        """The tail of ``block`` if it is a recognised pre-LN block around ``adapter.module``."""
        if block is adapter.module or adapter.out_proj is None:
            return None
        names = dict(block.named_children())
        attn = [n for n in _ATTN if names.get(n) is adapter.module]
        ln2 = [n for n in _LN2 if isinstance(names.get(n), nn.LayerNorm)]
        ln1 = [n for n in _LN1 if isinstance(names.get(n), nn.LayerNorm)]
        if not (attn and ln2 and ln1 and "mlp" in names):
            return None
        known = {attn[0], ln2[0], ln1[0], "mlp"}
        if any(n not in known and not isinstance(c, nn.Identity) for n, c in names.items()):
            return None  # layer scales, extra norms...: not the plain structure
        return cls(block, adapter, names[ln2[0]], names["mlp"])

    def attach(self, capture: Capture) -> List[RemovableHandle]:
        """Hooks recording the block's input and output into ``capture``."""
        def pre(mod, args, kwargs):
            capture.block_input = first_arg(args, kwargs, "hidden_states")

        def post(mod, args, output):
            capture.block_output = output[0] if isinstance(output, tuple) else output

        return [self.block.register_forward_pre_hook(pre, with_kwargs=True), self.block.register_forward_hook(post)]

    def pooled_o_grad(self, capture: Capture, grad_out: Tensor, pooled: Tensor) -> Optional[Tensor]:
        """``(K, B, D)`` ``dS/do`` at the pooled rows from ``grad_out`` = dS/d(block output)
        ``(K, ...)``, or ``None`` if other rows have a gradient (then the shortcut does not hold)."""
        g = capture.batch_first(grad_out)  # (K, B, L, D)
        rows = torch.arange(pooled.shape[0], device=g.device)
        other = g.abs().amax(-1)
        other[:, rows, pooled] = 0
        if bool((other > 0).any()):
            return None
        x = capture.batch_first(capture.block_input).detach()[rows, pooled]
        a = capture.batch_first(capture.attn_out).detach()[rows, pooled].requires_grad_(True)
        with torch.enable_grad():
            h = x + a
            y = h + self.mlp(self.ln2(h))
            ga = torch.autograd.grad(y, a, grad_outputs=g[:, rows, pooled].to(y.dtype), is_grads_batched=True)[0]
        w = self.adapter.out_proj.weight.detach()
        return ga @ w.to(ga.dtype)

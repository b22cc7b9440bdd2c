"""The authors' reproduction mode (``single_head=True``), in one place.

The authors' code recomputes the explained attention layer with ONE head over the full width,
``o = softmax(q k^T / sqrt(D)) v`` from the raw projections, and runs the rest of the model on
that ``o``. Every adapter already captures ``q, k, v`` and the mask, and names the output
projection ``out_proj`` (``attn_out = out_proj(o)``), so the mode is one forward pre-hook on
``out_proj``: it replaces the projection's input by the one-head recomputation and records it as
``capture.o``. The adapters themselves only read.

Where a backend never calls its output projection as a module (``nn.MultiheadAttention``'s fused
path, the ResNet attention pool's ``F.multi_head_attention_forward``) the adapter supplies its own
hooks through :meth:`~captum_gradeclip.adapters.base.AttentionAdapter.single_head_hooks`. Adapters
whose ``q, k`` pass through per-head norms or scales record the raw projections in
``capture.raw_qkv``; the recomputation uses those (the authors' one head knows no per-head
parameters).
"""

from __future__ import annotations

from typing import List

from torch.utils.hooks import RemovableHandle

from ..adapters.base import AttentionAdapter, Capture
from .functional import single_head_attention


def single_head_hooks(adapter: AttentionAdapter, capture: Capture) -> List[RemovableHandle]:
    """Hooks that make the layer of ``adapter`` run the one-head recomputation during one forward
    (register them after ``adapter.attach(capture)``); their handles.

    Raises:
        NotImplementedError: the adapter has no ``out_proj`` module and no hooks of its own.
    """
    own = adapter.single_head_hooks(capture)
    if own is not None:
        return own
    out = adapter.out_proj
    if out is None:
        raise NotImplementedError(f"{adapter.name} has no out_proj module, which single_head=True replaces the "
                                  "input of; explain it with single_head=False")

    def before_out_proj(mod, args):
        if capture.raw_qkv is not None:
            capture.query, capture.key, capture.value = capture.raw_qkv
        capture.o = single_head_attention(query=capture.query, key=capture.key, value=capture.value,
                                          mask=capture.mask)  # (B, L, D)
        return (capture.batch_first(capture.o),) + tuple(args[1:])  # back to the layer's layout

    return [out.register_forward_pre_hook(before_out_proj)]

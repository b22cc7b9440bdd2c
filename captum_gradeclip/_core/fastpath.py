"""PyTorch's ``nn.MultiheadAttention`` fast path, switched off while we run a model.

A batch-first ``nn.MultiheadAttention`` in eval mode runs a fused kernel when autograd is off
(or nothing needs gradients), whose results differ from the regular kernels in the last bits.
The explained forward runs the blocks before the explained layer without autograd and the rest
with it, and the encoder similarity modules cache embeddings without autograd: with the fast path
off, every block computes exactly what it computes with autograd on, so the explained score is
the model's own (as Captum's gradient methods see it), bit for bit in the same process, without building a graph for
the blocks before the explained layer.

The switch (``torch.backends.mha.set_fastpath_enabled``) is process-wide: another thread running
``nn.MultiheadAttention`` inference at the same moment also runs the regular kernels (same
results up to the last bits, somewhat slower) until the explained forward returns. Explained
forwards themselves take turns (``base._HOOKED_FORWARD``), so two of them never interleave their
save and restore of the switch.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

_MHA = getattr(torch.backends, "mha", None)

#: whether this torch can switch the fast path off (``torch.backends.mha``, torch >= 2.1)
CAN_DISABLE = _MHA is not None and hasattr(_MHA, "set_fastpath_enabled")


@contextmanager
def mha_fast_path_off() -> Iterator[None]:
    """Within the block, ``nn.MultiheadAttention`` never takes its fused no-grad kernel; the
    previous setting is restored on exit, also on error."""
    if not CAN_DISABLE:
        yield
        return
    previous = _MHA.get_fastpath_enabled()
    _MHA.set_fastpath_enabled(False)
    try:
        yield
    finally:
        _MHA.set_fastpath_enabled(previous)

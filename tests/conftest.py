"""Tiny random CLIP models built in code (no network)."""

from __future__ import annotations

import pytest
import torch

BOS, EOS, VOCAB = 48, 49, 50

#: float32's machine epsilon (2**-23)
EPS32 = torch.finfo(torch.float32).eps
#: the longest dot product in the tiny models of these tests: the 8 x 8 patch embedding over 3
#: channels (3 * 8 * 8 = 192 terms; the widths are 32, the MLPs 64; ShapesCLIP's 512-wide MLP is
#: covered by ``SHAPES_REDUCTION``)
TINY_REDUCTION = 192
SHAPES_REDUCTION = 512


def float32_tolerance(scale: float, reduction: int = TINY_REDUCTION) -> float:
    """The absolute tolerance between two float32 computations of the same map on different CPUs,
    thread counts or process counts: ``reduction * EPS32 * scale``.

    Why: a float32 sum of ``n`` terms is within ``(n - 1) * eps * sum|terms|`` of the exact sum
    whatever the order of the additions (Higham's bound), and the order is all that differs between
    torch's AVX-512, AVX2 and scalar kernels, MKL's code paths and thread splits. We budget one such
    reduction of the longest length, relative to the map's scale (its largest magnitude). Measured on
    the 83 golden maps (AMD EPYC, torch 2.13.0): at most 21 eps of the scale against the stored maps
    and 30 eps between any two of AVX-512 / AVX2 / default kernels and 1 / 2 threads, i.e. 6 times
    under this tolerance (192 eps = 2.3e-5 of the scale). A real change (another spatial mode, layer
    or a one-token shift) moves a map by 1e-2 to 1 of its scale: ``tests/test_golden_maps.py``
    checks that this tolerance still tells those apart by orders of magnitude.
    """
    return reduction * EPS32 * max(float(scale), 1e-12)


def tiny_clip(attn: str = "eager", dtype: torch.dtype = torch.float32, seed: int = 0,
              image_size: int = 32, patch_size: int = 8, text_layers: int = 3, eos_token_id: int = EOS):
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=text_layers,
                         num_attention_heads=4, max_position_embeddings=16, eos_token_id=eos_token_id,
                         bos_token_id=BOS, pad_token_id=EOS),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=image_size, patch_size=patch_size),
        projection_dim=16,
    )
    cfg._attn_implementation = attn
    model = CLIPModel(cfg)
    # random init leaves LayerNorms at identity and biases at zero: perturb them so that the tests
    # exercise every term
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model.to(dtype).eval()


def text_batch():
    """(3, 6) ids with right padding (pad = EOS, as CLIP tokenizers do) and their mask."""
    ids = torch.tensor([
        [BOS, 5, 6, EOS, EOS, EOS],
        [BOS, 7, 8, 9, 10, EOS],
        [BOS, 3, EOS, EOS, EOS, EOS],
    ])
    eos = (ids == EOS).int().argmax(1)
    mask = (torch.arange(ids.shape[1])[None] <= eos[:, None]).long()
    return ids, mask


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    """Commands run in-process (train, finetune) set torch's process-wide thread count; restore it
    so that later tests (the thread-sensitive ones included) see the default."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture
def model():
    return tiny_clip()


@pytest.fixture
def texts():
    return text_batch()


@pytest.fixture
def pixels():
    torch.manual_seed(1)
    return torch.randn(2, 3, 32, 32)


def hook_count(model) -> int:
    n = 0
    for m in model.modules():
        n += len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        n += len(getattr(m, "_forward_hooks_with_kwargs", {}))
    return n

"""Forward function for image classifiers: ``pixel_values (N, 3, H, W) -> logits (N, classes)``,
Captum's home turf (``target`` = a class index, as for ``LayerGradCam``).

Supported: Hugging Face ``ViTForImageClassification`` / ``DeiTForImageClassification`` (pooled
token: CLS), ``DeiTForImageClassificationWithTeacher`` (choose ``head="cls"``, pooled token 0, or
``head="distillation"``, pooled token 1: the averaged ``logits`` depend on two pooled tokens, which
one attention row cannot explain), and timm Vision Transformers (``global_pool="token"``: CLS).
Classifiers that average the tokens (timm ``global_pool="avg"``, SigLIP's classifier) pool no
single token: the helper says so and ``ImageGradECLIP`` refuses them with what to use instead.
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

from torch import Tensor, nn

HEADS = ("cls", "distillation")


def _pair(p) -> Union[int, Tuple[int, int]]:
    return int(p) if isinstance(p, int) else tuple(int(x) for x in p)


class ImageClassifierLogits(nn.Module):
    r"""``pixel_values (N, 3, H, W) -> (N, classes)``: the classifier's own logits.

    Args:
        model: a Hugging Face ViT / DeiT image classifier or a timm Vision Transformer.
        head: only for ``DeiTForImageClassificationWithTeacher``: ``"cls"`` (``cls_logits``,
            pooled at the class token) or ``"distillation"`` (``distillation_logits``, pooled at
            the distillation token).

    Attributes:
        patch_size: the patch size (read by ``ImageGradECLIP``).
        pooled_token: the index of the pooled token (0 = CLS, 1 = DeiT's distillation token), or
            ``None`` for a classifier that averages tokens.
        image_pool: how the classifier pools, for error messages.

    Raises:
        TypeError: ``model`` is not a supported classifier (the message says what to pass).
        ValueError: ``head`` missing or unknown for a DeiT with teacher, or given for another model.
    """

    def __init__(self, model: nn.Module, *, head: Optional[str] = None) -> None:
        super().__init__()
        self.model, self.head = model, head
        self._timm = hasattr(model, "patch_embed") and hasattr(model, "global_pool") and hasattr(model, "forward_head")
        teacher = hasattr(model, "distillation_classifier") and hasattr(model, "cls_classifier")
        if teacher and head not in HEADS:
            raise ValueError(f"{type(model).__name__} averages two heads (class and distillation token); "
                             f"its mean logits depend on two pooled tokens. Pass head='cls' or "
                             f"head='distillation' to explain one of them, got head={head!r}")
        if head is not None and not teacher:
            raise ValueError(f"head= is for DeiTForImageClassificationWithTeacher only; "
                             f"{type(model).__name__} has one head (pass head=None)")
        if self._timm:
            self.patch_size = _pair(model.patch_embed.patch_size)
            pool = model.global_pool
            self.image_pool = f"global_pool={pool!r}"
            self.pooled_token = 0 if pool == "token" and getattr(model, "cls_token", None) is not None else None
            return
        base = getattr(model, "vit", None) or getattr(model, "deit", None)
        if base is None or not hasattr(getattr(model, "config", None), "patch_size"):
            raise TypeError(
                f"{type(model).__name__} is not a supported classifier (Hugging Face ViT / DeiT, timm "
                "ViT). For another classifier that pools its class token, pass `lambda px: "
                "model(px).logits` with `patch_size=` to ImageGradECLIP, and the block to `layer`"
            )
        self.patch_size = _pair(model.config.patch_size)
        self.image_pool = "class token" if head != "distillation" else "distillation token"
        self.pooled_token = 1 if head == "distillation" else 0

    def forward(self, pixel_values: Tensor) -> Tensor:
        """``(N, 3, H, W) -> (N, classes)``."""
        if self._timm:
            return self.model(pixel_values)
        out = self.model(pixel_values=pixel_values)
        if self.head == "cls":
            return out.cls_logits
        if self.head == "distillation":
            return out.distillation_logits
        return out.logits


def classifier_layers(model: nn.Module) -> list:
    """The transformer blocks of a supported classifier, in order (HF 5.x ``vit.layers``, 4.x
    ``vit.encoder.layer``, DeiT alike, timm ``blocks``).

    Raises:
        TypeError: no blocks found.
    """
    if hasattr(model, "blocks"):
        return list(model.blocks)
    base = getattr(model, "vit", None) or getattr(model, "deit", None)
    if base is not None:
        layers = getattr(base, "layers", None)
        if layers is None and hasattr(base, "encoder"):
            layers = getattr(base.encoder, "layer", None)
        if layers is not None:
            return list(layers)
    raise TypeError(f"cannot find the transformer blocks of {type(model).__name__}")

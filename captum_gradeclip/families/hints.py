"""What the command line says about a model family it does not run: the Python API that does.

``captum-gradeclip explain`` explains CLIP image-text models (image maps per text, word maps);
the families in :mod:`captum_gradeclip.families` are explained from Python. :func:`family_hint`
gives the message for a ``save_pretrained`` folder or hub name whose config is one of them.
"""

from __future__ import annotations

from typing import Optional

#: model_type -> (what it is, the Python lines that explain it)
HINTS = {
    "vit": ("a ViT image classifier", "ImageGradECLIP(ImageClassifierLogits(model), model.vit.layers[-1])"
            ".attribute(pixel_values, target=class_index)"),
    "deit": ("a DeiT image classifier", "ImageGradECLIP(ImageClassifierLogits(model[, head='cls']), "
             "model.deit.layers[-1]).attribute(pixel_values, target=class_index)"),
    "siglip": ("a SigLIP model", "ImageGradECLIP(SiglipImageTextSimilarity(model, input_ids), "
               "model.vision_model.head).attribute_all(pixel_values)"),
    "siglip2": ("a SigLIP 2 model", "ImageGradECLIP(SiglipImageTextSimilarity(model, input_ids), "
                "model.vision_model.head).attribute_all(pixel_values)"),
    "blip": ("a BLIP model", "ImageGradECLIP(BlipImageTextSimilarity(model, input_ids, attention_mask), "
             "model.vision_model.encoder.layers[-1]).attribute_all(pixel_values)"),
}


def model_type(name: str) -> Optional[str]:
    """The ``model_type`` of a Hugging Face config (``None`` when it cannot be read offline)."""
    try:
        from transformers import AutoConfig

        from ..hub import pretrained_kwargs

        return AutoConfig.from_pretrained(name, **pretrained_kwargs(name)).model_type  # fails fast offline
    except (OSError, ValueError, KeyError):
        return None


def family_hint(name: str) -> Optional[str]:
    """The message for a model of a family ``explain`` does not run, or ``None`` (e.g. a CLIP)."""
    kind = model_type(name)
    if kind not in HINTS:
        return None
    what, code = HINTS[kind]
    return (f"{name!r} is {what} (model_type {kind!r}): `captum-gradeclip explain` runs CLIP image-text "
            f"models only. Explain it from Python with captum_gradeclip.families:\n  {code}\n"
            "(see docs/families.md, \"Model families\")")

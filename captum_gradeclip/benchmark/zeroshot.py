"""The zero-shot head of the authors' protocol: class names and prompt templates (from files,
the folder names or open_clip's ImageNet metadata), the class embeddings built from them, and
the forward functions over those embeddings (``pixels -> (N, C)`` cosines; uint8 images ->
``(S, C)`` for the deletion / insertion protocol)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Union

import torch
from torch import Tensor

from .._io import read_utf8
from ..errors import InputError
from ..images import to_pil

#: A prompt template: a string with ``{}`` for the class name, or a function of the name.
Template = Union[str, Callable[[str], str]]


def read_lines(path: str, flag: str) -> List[str]:
    """The non-empty stripped lines of a text file.

    Raises:
        InputError: no such file, not UTF-8, or empty.
    """
    p = Path(path)
    lines = [ln.strip() for ln in read_utf8(p, flag).splitlines() if ln.strip()]
    if not lines:
        raise InputError(f"{flag} {path} holds no line")
    return lines


def _open_clip_metadata(what: str) -> Any:
    try:
        from open_clip import zero_shot_metadata
    except ImportError:
        raise InputError(f"{what} 'imagenet' reads open_clip's zero-shot metadata: pip install "
                         "'captum-gradeclip[open-clip]', or give a file") from None
    return zero_shot_metadata


def class_names(spec: Optional[str], folders: Sequence[str]) -> List[str]:
    """The class names, in label order: ``None`` -> the folder names (``_`` as spaces);
    ``"imagenet"`` -> open_clip's 1000 ImageNet names; else a file, one name per line.

    Raises:
        InputError: open_clip missing, an unreadable file, or a count that differs from the folders'.
    """
    if spec is None:
        return [f.replace("_", " ") for f in folders]
    names = (list(_open_clip_metadata("--class-names").IMAGENET_CLASSNAMES) if spec == "imagenet"
             else read_lines(spec, "--class-names"))
    if folders and len(names) != len(folders):
        raise InputError(f"--class-names gives {len(names)} names for {len(folders)} classes: one per class, "
                         "in the sorted order of the class folders (label order)")
    return names


def templates(spec: str) -> List[Template]:
    """``"imagenet"`` -> open_clip's 80 OpenAI ImageNet templates; a string with ``{}`` -> that one
    template; else a file, one template (with ``{}``) per line.

    Raises:
        InputError: open_clip missing, an unreadable file, or a template without ``{}``.
    """
    if spec == "imagenet":
        return list(_open_clip_metadata("--templates").OPENAI_IMAGENET_TEMPLATES)
    from ..scale.data import check_template

    found = [spec] if "{" in spec and not Path(spec).is_file() else read_lines(spec, "--templates")
    for t in found:  # exactly one plain {} ('a {} and a {}', '{x} {}' would fail later in format)
        check_template(t, "--templates")
    return found


def template_text(t: Template) -> str:
    """A template as a job's configuration records it (a function: its text for ``"{}"``)."""
    return t if isinstance(t, str) else t("{}")


def zero_shot_weights(clip: Any, names: Sequence[str], temps: Sequence[Template], chunk: int = 256) -> Tensor:
    """``(C, E)`` normalised class embeddings: per class the mean of its ``M`` normalised prompt
    embeddings (``template(name)``), normalised (the authors' ``build_zero_shot_classifier``)."""
    prompts = [t(c) if callable(t) else t.format(c) for c in names for t in temps]
    embeds = torch.cat([clip.image_similarity(*clip.tokens(prompts[s:s + chunk])).text_embeds.float()
                        for s in range(0, len(prompts), chunk)])
    mean = embeds.reshape(len(names), len(temps), -1).mean(1)
    return mean / mean.norm(dim=-1, keepdim=True)


def zero_shot_forward(clip: Any, weights: Tensor) -> Any:
    """The forward function ``pixels (N, 3, H, W) -> (N, C)``: cosine with the class embeddings
    (the model's own similarity module with ``text_embeds`` set to ``weights (C, E)``; images of
    another size than the model's need a tower that interpolates its position embeddings)."""
    ids, mask = clip.tokens(["a"])
    sim = clip.image_similarity(ids, mask)
    sim.text_embeds = weights.to(sim.text_embeds.dtype)
    if hasattr(sim, "interpolate_pos_encoding"):  # Hugging Face towers: native-resolution inputs
        sim.interpolate_pos_encoding = True
    return sim


def pixel_classifier(clip: Any, forward: Any) -> Callable[[Tensor], Tensor]:
    """``(S, 3, H, W) uint8 -> (S, C)``: the model's own preprocessing, then ``forward``."""
    return lambda images: forward(clip.pixels([to_pil(x) for x in images]))

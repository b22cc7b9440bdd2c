"""Loading a CLIP for the command line and the benchmark, and finding its towers' layers.

The one place that knows the model families the command line supports, one small class each,
chosen once at load time:

- :class:`HFCLIP` (``family == "hf"``): a Hugging Face ``transformers.CLIPModel`` with its
  ``CLIPProcessor`` (the shipped ShapesCLIP is one);
- :class:`OpenCLIP` (``family == "open_clip"``): an open_clip model, or an OpenAI ``clip`` one (the
  same towers and modules), with its preprocess transform and tokenizer. open_clip is an optional
  extra, imported by :func:`load_open_clip` only;
- any family registered with :func:`register_family`: ``--model PREFIX:SPEC`` loads it.

A :class:`LoadedCLIP` bundles the model with how to make its inputs, the layers the explanation
methods hook and the forward functions they explain, so that callers never ask which family.
A new family is one subclass implementing its methods (see :class:`LoadedCLIP`), a loader, and
one :func:`register_family` call.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Dict, List, Optional, Sequence, Tuple

from . import hub
from .errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image
    from torch import Tensor, nn

#: How to install the optional open_clip dependency.
OPEN_CLIP_INSTALL = "pip install 'captum-gradeclip[open-clip]'"


class ModelError(InputError):
    """A model that cannot be loaded, a tower this package cannot explain, or a bad choice of model."""


@dataclass(frozen=True)
class LoadedCLIP:
    """A CLIP model with everything the command line and the benchmark need to explain it: the
    family-neutral base. A family subclasses it (``@dataclass(frozen=True)``, ``family`` set as a
    ``ClassVar``) and implements :meth:`pixels`, :meth:`tokens`,
    :meth:`decode`, :attr:`text_layers`, :attr:`token_embedding`, :meth:`image_similarity` and
    :meth:`text_similarity`; the fields below are filled by its loader.

    Attributes:
        model: the CLIP, in eval mode.
        family: the family's name (a class attribute): ``"hf"``, ``"open_clip"``, ...
        preprocess: how the family makes pixels: ``"hf"``: the ``CLIPProcessor``;
            ``"open_clip"``: the image transform (PIL image -> ``(3, H, W)``).
        tokenizer: ``"hf"``: the processor's tokenizer; ``"open_clip"``: the package's tokenizer
            (``T`` texts -> ``(T, L)`` ids).
        image_layers: the image tower's attention layers, in order: every ViT block, or
            ``[attnpool]`` of a ResNet.
        gradcam_layer: the layer for Captum's ``LayerGradCam``: the patch embedding of a ViT,
            the last stage (``layer4``) of a ResNet.
        gradcam_name: its name, as the benchmark's method names show it.
        patch_size: a patch's side in pixels (a ResNet's total stride, 32), for occlusion windows.
        vocabulary: the words the text tower knows, where it knows only a few (ShapesCLIP's 17);
            ``None``: any text (its tokenizer has a piece for every word). Texts with other words
            are refused by :func:`captum_gradeclip.text_checks.text_problems` in every command.
    """

    family: ClassVar[str] = ""

    model: "nn.Module"
    preprocess: Any
    tokenizer: Any
    image_layers: List["nn.Module"]
    gradcam_layer: "nn.Module"
    gradcam_name: str
    patch_size: int
    vocabulary: Optional[Tuple[str, ...]] = None

    def pixels(self, images: Sequence["Image.Image"]) -> "Tensor":
        """``N`` PIL images -> the model's input ``(N, 3, H, W)``."""
        raise NotImplementedError

    def tokens(self, texts: Sequence[str]) -> Tuple["Tensor", Optional["Tensor"]]:
        """``T`` texts -> ``(input_ids (T, L), attention_mask (T, L) or None)``."""
        raise NotImplementedError

    def decode(self, input_ids: "Tensor") -> List[str]:
        """``(L,)`` ids -> the ``L`` tokens as readable words, for labels."""
        raise NotImplementedError

    @property
    def text_layers(self) -> List["nn.Module"]:
        """The text tower's attention blocks, in order."""
        raise NotImplementedError

    @property
    def token_embedding(self) -> "nn.Module":
        """The text tower's token embedding (``nn.Embedding``), e.g. for Captum's
        ``LayerIntegratedGradients``."""
        raise NotImplementedError

    def image_similarity(self, input_ids: "Tensor", attention_mask: Optional["Tensor"] = None) -> "nn.Module":
        """The forward function ``pixels (N, 3, H, W) -> (N, T)`` cosine similarity with ``T`` texts
        given as ``input_ids (T, L)`` (and, where the family takes one, ``attention_mask (T, L)``)."""
        raise NotImplementedError

    def text_similarity(self, pixels: "Tensor") -> "nn.Module":
        """The forward function ``input_ids (T, L) [, attention_mask (T, L)] -> (T, N)`` cosine
        similarity with ``N`` images given as ``pixels (N, 3, H, W)``; it has
        ``eos_positions(input_ids (T, L)) -> (T,)``."""
        raise NotImplementedError


@dataclass(frozen=True)
class HFCLIP(LoadedCLIP):
    """A Hugging Face ``transformers.CLIPModel`` with its ``CLIPProcessor`` (ShapesCLIP is one)."""

    family: ClassVar[str] = "hf"

    def pixels(self, images: Sequence["Image.Image"]) -> "Tensor":
        """``N`` PIL images -> ``(N, 3, H, W)`` through the processor."""
        return self.preprocess(images=list(images), return_tensors="pt").pixel_values

    def tokens(self, texts: Sequence[str]) -> Tuple["Tensor", Optional["Tensor"]]:
        """``T`` texts -> ``(input_ids (T, L), attention_mask (T, L))``, padded to the longest."""
        tok = self.tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt")
        return tok.input_ids, tok.attention_mask

    def decode(self, input_ids: "Tensor") -> List[str]:
        """``(L,)`` ids -> the ``L`` tokens as readable words."""
        from .visualization import words_of

        return words_of(self.tokenizer, input_ids)

    @property
    def text_layers(self) -> List["nn.Module"]:
        """The text encoder's ``L`` layers."""
        return list(self.model.text_model.encoder.layers)

    @property
    def token_embedding(self) -> "nn.Module":
        """``text_model.embeddings.token_embedding``."""
        return self.model.text_model.embeddings.token_embedding

    def image_similarity(self, input_ids: "Tensor", attention_mask: Optional["Tensor"] = None) -> "nn.Module":
        """:class:`~captum_gradeclip.forward.ImageTextSimilarity`: ``(N, 3, H, W) -> (N, T)``."""
        from .forward import ImageTextSimilarity

        return ImageTextSimilarity(self.model, input_ids=input_ids, attention_mask=attention_mask)

    def text_similarity(self, pixels: "Tensor") -> "nn.Module":
        """:class:`~captum_gradeclip.forward.TextImageSimilarity`: ``(T, L) [, (T, L)] -> (T, N)``."""
        from .forward import TextImageSimilarity

        return TextImageSimilarity(self.model, pixel_values=pixels)


@dataclass(frozen=True)
class OpenCLIP(LoadedCLIP):
    """An open_clip or OpenAI ``clip`` model with its image transform and tokenizer (the tokenizer
    pads to the context length and takes no mask)."""

    family: ClassVar[str] = "open_clip"

    def pixels(self, images: Sequence["Image.Image"]) -> "Tensor":
        """``N`` PIL images -> ``(N, 3, H, W)``, one transform each."""
        import torch

        return torch.stack([self.preprocess(im) for im in images])

    def tokens(self, texts: Sequence[str]) -> Tuple["Tensor", Optional["Tensor"]]:
        """``T`` texts -> ``(input_ids (T, L), None)``."""
        return self.tokenizer(list(texts)), None

    def decode(self, input_ids: "Tensor") -> List[str]:
        """``(L,)`` ids -> the ``L`` tokens, each decoded alone."""
        tok = self.tokenizer
        decode = tok.decode if hasattr(tok, "decode") else tok.tokenizer.decode
        return [decode([int(j)]).strip() for j in input_ids]

    @property
    def text_layers(self) -> List["nn.Module"]:
        """The text transformer's residual blocks.

        Raises:
            ModelError: the text tower is not an open_clip transformer.
        """
        return list(_open_clip_text_tower(self.model).transformer.resblocks)

    @property
    def token_embedding(self) -> "nn.Module":
        """The text tower's ``token_embedding``.

        Raises:
            ModelError: as :attr:`text_layers`.
        """
        return _open_clip_text_tower(self.model).token_embedding

    def image_similarity(self, input_ids: "Tensor", attention_mask: Optional["Tensor"] = None) -> "nn.Module":
        """:class:`~captum_gradeclip.openai.EncoderImageTextSimilarity`: ``(N, 3, H, W) -> (N, T)``
        (``attention_mask`` is not used: the tokenizer pads)."""
        from .openai import EncoderImageTextSimilarity

        return EncoderImageTextSimilarity(self.model, input_ids)

    def text_similarity(self, pixels: "Tensor") -> "nn.Module":
        """:class:`~captum_gradeclip.openai.EncoderTextImageSimilarity`: ``(T, L) -> (T, N)``."""
        from .openai import EncoderTextImageSimilarity

        return EncoderTextImageSimilarity(self.model, pixels)


def wrap_hf(model: "nn.Module", processor: Any) -> LoadedCLIP:
    """A loaded ``transformers.CLIPModel`` and its ``CLIPProcessor`` as an :class:`HFCLIP`."""
    return HFCLIP(
        model=model, preprocess=processor, tokenizer=processor.tokenizer,
        image_layers=list(model.vision_model.encoder.layers),
        gradcam_layer=model.vision_model.embeddings.patch_embedding, gradcam_name="patch embedding",
        patch_size=model.config.vision_config.patch_size,
    )


def wrap_open_clip(model: "nn.Module", preprocess: Any, tokenizer: Any) -> LoadedCLIP:
    """A loaded open_clip / OpenAI CLIP model, its image transform and tokenizer as an
    :class:`OpenCLIP`.

    Raises:
        ModelError: an image tower that is neither a ViT nor a ResNet with attention pooling.
    """
    from .openai import image_attention_layers

    try:
        layers = image_attention_layers(model)
    except ValueError as e:
        raise ModelError(str(e)) from None
    visual = model.visual
    if hasattr(visual, "attnpool"):  # ResNet: the attention pool; Grad-CAM on the last stage
        gradcam, name, patch = visual.layer4, "layer4", 32
    else:
        k = visual.conv1.kernel_size
        gradcam, name, patch = visual.conv1, "patch embedding", k[0] if isinstance(k, tuple) else k
    return OpenCLIP(model=model, preprocess=preprocess, tokenizer=tokenizer,
                    image_layers=layers, gradcam_layer=gradcam, gradcam_name=name, patch_size=patch)


def _open_clip_text_tower(model: "nn.Module") -> "nn.Module":
    """The module holding the text transformer and token embedding: the model itself (OpenAI
    CLIP, open_clip ``CLIP``) or ``model.text`` (open_clip ``CustomTextCLIP``)."""
    for tower in (model, getattr(model, "text", None)):
        if hasattr(getattr(tower, "transformer", None), "resblocks"):
            return tower
    raise ModelError("the text tower is not an open_clip transformer (Hugging Face text towers are not supported)")


def load_shapes(path: Optional[str] = None) -> LoadedCLIP:
    """The shipped ShapesCLIP (or a ShapesCLIP checkpoint folder), offline.

    Raises:
        FileNotFoundError: ``path`` holds no checkpoint.
    """
    import dataclasses

    from .shapes import load_shapes_clip
    from .shapes.model import WORDS

    return dataclasses.replace(wrap_hf(*load_shapes_clip(path)), vocabulary=tuple(WORDS))


def load_hf(name: str) -> LoadedCLIP:
    """A Hugging Face CLIP by hub name or ``save_pretrained`` folder, in eval mode.

    Raises:
        ModelError: it cannot be loaded (no such folder, no network for a hub name, not a CLIP); a
            ViT/DeiT classifier, SigLIP or BLIP (the message gives the Python lines that explain it).
    """
    from transformers import CLIPModel, CLIPProcessor

    from .families.hints import family_hint

    hint = family_hint(name)  # a ViT/DeiT classifier, SigLIP, BLIP: explained from Python
    if hint is not None:
        raise ModelError(hint)
    kw = hub.pretrained_kwargs(name)  # fail fast without network
    try:
        with hub.quiet_loading():
            model = CLIPModel.from_pretrained(name, **kw)
            processor = CLIPProcessor.from_pretrained(name, **kw)
    except (OSError, ValueError) as e:
        raise ModelError(f"could not load CLIP model {name!r}: {str(e).splitlines()[0]}\n{hub.advice(name, kw)}") from None
    return wrap_hf(model.eval(), processor)


def load_open_clip(spec: str) -> LoadedCLIP:
    """An open_clip model from ``"ARCH"`` or ``"ARCH:PRETRAINED"``, in eval mode (no pretrained
    tag: random weights, for trying things offline; a note says so on stderr).

    Raises:
        ModelError: open_clip is not installed, the model cannot be loaded, or its image tower
            is not supported.
    """
    try:
        import open_clip
    except ImportError:
        raise ModelError(f"--open-clip needs open_clip: {OPEN_CLIP_INSTALL}") from None
    arch, _, pretrained = spec.partition(":")
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=pretrained or None)
        tokenizer = open_clip.get_tokenizer(arch)
    except (RuntimeError, ValueError, OSError) as e:
        raise ModelError(
            f"could not load open_clip model {spec!r}: {str(e).splitlines()[0]}\n"
            "Give ARCH:PRETRAINED as open_clip.list_pretrained() lists them (downloads need network)."
        ) from None
    if not pretrained:
        print(f"note: no pretrained tag in {spec!r}: {arch} has random weights", file=sys.stderr)
    return wrap_open_clip(model.eval(), preprocess, tokenizer)


def check_choice(model: Optional[str], open_clip: Optional[str]) -> None:
    """Raises :class:`ModelError` when both a Hugging Face model and an open_clip one are given."""
    if open_clip and model:
        raise ModelError("give --model (Hugging Face) or --open-clip, not both")


#: ``--model PREFIX:SPEC`` -> the registered family's loader, called with ``SPEC``.
_FAMILIES: Dict[str, Callable[[str], LoadedCLIP]] = {}


def register_family(prefix: str, loader: Callable[[str], LoadedCLIP]) -> None:
    """Make ``--model PREFIX:SPEC`` (and ``load(model="PREFIX:SPEC")``) load ``loader(SPEC)``, a
    :class:`LoadedCLIP` subclass of a new family. Names without a registered prefix stay
    Hugging Face names or folders.

    Raises:
        ValueError: ``prefix`` is empty, holds ``":"``, or is registered already.
    """
    if not prefix or ":" in prefix or prefix in _FAMILIES:
        raise ValueError(f"a family prefix must be a new non-empty name without ':', got {prefix!r} "
                         f"(registered: {sorted(_FAMILIES)})")
    _FAMILIES[prefix] = loader


def unregister_family(prefix: str) -> None:
    """Undo :func:`register_family` (nothing if ``prefix`` is not registered)."""
    _FAMILIES.pop(prefix, None)


def load(model: Optional[str] = None, open_clip: Optional[str] = None) -> LoadedCLIP:
    """The CLIP the command line's ``--model`` / ``--open-clip`` flags name: open_clip's
    ``ARCH[:PRETRAINED]``, else a registered family's ``PREFIX:SPEC`` (:func:`register_family`),
    else a Hugging Face model, else the shipped ShapesCLIP.

    Raises:
        ModelError: both are given, or the model cannot be loaded (see :func:`load_hf`,
            :func:`load_open_clip`).
    """
    check_choice(model, open_clip)
    if open_clip:
        return load_open_clip(open_clip)
    if model is None:
        return load_shapes()
    prefix, sep, spec = model.partition(":")
    if sep and prefix in _FAMILIES:
        return _FAMILIES[prefix](spec)
    return load_hf(model)

"""ShapesCLIP: a small Hugging Face ``CLIPModel`` for the synthetic scenes of :mod:`.scenes`.

The shipped weights live in ``captum_gradeclip/shapes/weights/`` as an ordinary
``save_pretrained`` folder (safetensors, tokenizer, image processor), so it is loaded by the same
``CLIPModel.from_pretrained(path)`` / ``CLIPProcessor.from_pretrained(path)`` calls a user makes
for ``openai/clip-vit-base-patch16``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, List, Sequence, Tuple

from .scenes import COLOUR_NAMES, SHAPES

if TYPE_CHECKING:
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor

#: Folder of the shipped ShapesCLIP checkpoint.
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

#: Every word the captions use.
WORDS: Tuple[str, ...] = ("a", "an", "and") + COLOUR_NAMES + SHAPES

IMAGE_SIZE = 64
PATCH_SIZE = 8
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def words_outside(texts: Sequence[str], vocabulary: Sequence[str]) -> List[str]:
    """The words (and other characters: digits, punctuation, other scripts) of ``texts`` outside
    ``vocabulary``, each once, in order of appearance (lower-cased, as a CLIP tokenizer reads them)."""
    known = set(vocabulary)
    found = [w for t in texts for w in re.findall(r"[^\W_]+|[^\w\s]|_", t.lower()) if w not in known]
    return list(dict.fromkeys(found))


def unknown_words(texts: Sequence[str]) -> List[str]:
    """The words (and other characters) of ``texts`` outside ShapesCLIP's vocabulary
    (:data:`WORDS`), each once, in order of appearance. Its tokenizer splits such a word into
    letters (``"dog"`` -> ``d o g``), which the model never saw as a word: the map of such a
    text explains letters, not the word.

    Args:
        texts: ``T`` prompts (case does not matter: the tokenizer lowercases).
    """
    return words_outside(texts, WORDS)


def _byte_chars() -> list[str]:
    """The 256 printable stand-ins of byte-level BPE (as in GPT-2 and CLIP), in byte order."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    order = sorted(range(256), key=lambda i: bs[i])
    return [chr(cs[i]) for i in order]


def build_vocab() -> Tuple[dict, list]:
    """A CLIP-style byte-level BPE vocabulary whose merges make every word of :data:`WORDS`
    a single token. Any other text still tokenizes (into characters).

    Returns:
        ``(vocab, merges)``: token -> id (start and end tokens last, end highest) and the merge
        list in rank order.
    """
    chars = _byte_chars()
    vocab_list = chars + [c + "</w>" for c in chars]
    merges: list[str] = []
    # longer words first so that no shorter word's merge fires inside a longer word
    for word in sorted(WORDS, key=lambda w: (-len(w), w)):
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        cur = pieces[0]
        for nxt in pieces[1:]:
            merge = f"{cur} {nxt}"
            cur = cur + nxt
            if merge not in merges:
                merges.append(merge)
                vocab_list.append(cur)
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(vocab_list))}
    return vocab, merges


def build_processor() -> "CLIPProcessor":
    """The ShapesCLIP processor: the word-level tokenizer above and a 64 px CLIP image processor."""
    from transformers import CLIPImageProcessor, CLIPProcessor, CLIPTokenizer

    vocab, merges = build_vocab()
    tokenizer = CLIPTokenizer(
        vocab=vocab, merges=[tuple(m.split(" ")) for m in merges], model_max_length=32
    )
    for w in WORDS:
        ids = tokenizer(w, add_special_tokens=False).input_ids
        if len(ids) != 1:  # pragma: no cover - guards build_vocab's merge order
            raise RuntimeError(f"word {w!r} tokenizes into {ids}, expected one token")
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
    )
    return CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def build_config(vocab_size: int, eos_token_id: int, bos_token_id: int) -> "CLIPConfig":
    """The ShapesCLIP architecture: ViT (4 layers, width 128, 4 heads, patch 8 on 64 px) and a
    text transformer (4 layers, width 128, 4 heads), projections of 128."""
    from transformers import CLIPConfig

    text = dict(
        vocab_size=vocab_size, hidden_size=128, intermediate_size=512, num_hidden_layers=4,
        num_attention_heads=4, max_position_embeddings=32, eos_token_id=eos_token_id,
        bos_token_id=bos_token_id, pad_token_id=eos_token_id, projection_dim=128,
    )
    vision = dict(
        hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
        image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, projection_dim=128,
    )
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=128)


def load_shapes_clip(path: "str | Path | None" = None) -> Tuple["CLIPModel", "CLIPProcessor"]:
    """Load the shipped ShapesCLIP, offline, in eval mode.

    Args:
        path: a ``save_pretrained`` folder (default: the weights shipped with this package).

    Returns:
        ``(model, processor)``: a ``transformers.CLIPModel`` and ``CLIPProcessor``. Images are
        ``(N, 3, 64, 64)`` after processing; the image grid is 8 x 8 patches.

    Raises:
        FileNotFoundError: when ``path`` holds no checkpoint.
    """
    from transformers import CLIPModel, CLIPProcessor

    path = Path(WEIGHTS_DIR if path is None else path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"no ShapesCLIP checkpoint in {path}; train one with "
            "`python -m captum_gradeclip.shapes.train --out DIR`"
        )
    from ..hub import quiet_loading

    with quiet_loading():  # no "Loading weights" bar on every command
        model = CLIPModel.from_pretrained(path, local_files_only=True)
        processor = CLIPProcessor.from_pretrained(path, local_files_only=True)
    return model.eval(), processor

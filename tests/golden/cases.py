"""The cases of the map regression test: fixed random models and inputs, and every method.

``python tests/golden/cases.py`` (from the repo root) writes ``tests/golden/maps.pt`` with the
maps of today's code; ``tests/test_golden_maps.py`` recomputes them and compares. The file was
written once, from the code before the core redesign (commit 8f53043), and must not be rewritten
to make a change pass: a change that moves a map is a behaviour change.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Dict

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from conftest import text_batch, tiny_clip  # noqa: E402
from openai_layout import OpenAICLIP, tokens  # noqa: E402


def _pixels(size: int = 32, n: int = 2) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(n, 3, size, size)


def cases() -> Dict[str, Callable[[], torch.Tensor]]:
    """name -> a function computing one map tensor (models and inputs built inside)."""
    from captum_gradeclip import ImageGradECLIP, ImageTextSimilarity, TextGradECLIP, TextImageSimilarity
    from captum_gradeclip import baselines as B
    from captum_gradeclip.openai import EncoderImageTextSimilarity, EncoderTextImageSimilarity

    out: Dict[str, Callable[[], torch.Tensor]] = {}

    def hf(attn):
        model = tiny_clip(attn)
        ids, mask = text_batch()
        sim = ImageTextSimilarity(model, input_ids=ids, attention_mask=mask)
        tsim = TextImageSimilarity(model, pixel_values=_pixels())
        return model, ids, mask, sim, tsim

    for attn in ("eager", "sdpa"):
        def img(attn=attn, cls=ImageGradECLIP, layers=(-1,), all_=False, relu=True, **kw):
            model, ids, mask, sim, _ = hf(attn)
            blocks = model.vision_model.encoder.layers
            lay = blocks[layers[0]] if len(layers) == 1 else [blocks[i] for i in layers]
            g = cls(sim, lay, **kw)
            px = _pixels()
            if all_:
                return g.attribute_all(px)
            return g.attribute(px, target=[0, 2], **({} if relu else {"relu_attributions": False}))

        def txt(attn=attn, cls=TextGradECLIP, layers=(-2, -1), all_=False, relu=True, **kw):
            model, ids, mask, _, tsim = hf(attn)
            blocks = model.text_model.encoder.layers
            lay = blocks[layers[0]] if len(layers) == 1 else [blocks[i] for i in layers]
            g = cls(tsim, lay, **kw)
            if all_:
                return g.attribute_all(ids, additional_forward_args=(mask,), relu_attributions=relu)
            return g.attribute(ids, target=1, additional_forward_args=(mask,),
                               **({} if relu else {"relu_attributions": False}))

        for sp in ("cosine", "cosine_per_head", "attention", "uniform"):
            out[f"hf-{attn}-image-{sp}"] = lambda sp=sp, img=img: img(spatial=sp)
            # (the random text tower's maps are mostly negative: the signed maps say more)
            out[f"hf-{attn}-text-{sp}"] = lambda sp=sp, txt=txt: txt(spatial=sp, relu=False)
        out[f"hf-{attn}-image-single_head"] = lambda img=img: img(single_head=True)
        out[f"hf-{attn}-image-two-layers"] = lambda img=img: img(layers=(0, 1))
        out[f"hf-{attn}-image-two-layers-signed"] = lambda img=img: img(layers=(0, 1), relu=False)
        out[f"hf-{attn}-image-all"] = lambda img=img: img(all_=True)
        out[f"hf-{attn}-image-first-layer"] = lambda img=img: img(layers=(0,))
        out[f"hf-{attn}-text-single_head"] = lambda txt=txt: txt(single_head=True, relu=False)
        out[f"hf-{attn}-text-all"] = lambda txt=txt: txt(all_=True, relu=False)
        out[f"hf-{attn}-text-relu"] = lambda txt=txt: txt()
        out[f"hf-{attn}-CLSAttention"] = lambda img=img: img(cls=B.CLSAttention)
        out[f"hf-{attn}-AttentionRollout"] = lambda img=img: img(cls=B.AttentionRollout, layers=(0, 1))
        out[f"hf-{attn}-GAME"] = lambda img=img: img(cls=B.GAME, layers=(0, 1))
        out[f"hf-{attn}-GAME-all"] = lambda img=img: img(cls=B.GAME, layers=(0, 1), all_=True)
        out[f"hf-{attn}-TokenGradCAM"] = lambda img=img: img(cls=B.TokenGradCAM)
        out[f"hf-{attn}-MaskCLIP"] = lambda img=img: img(cls=B.MaskCLIP)
        out[f"hf-{attn}-MaskCLIP-all"] = lambda img=img: img(cls=B.MaskCLIP, all_=True)
        out[f"hf-{attn}-TextAttention"] = lambda txt=txt: txt(cls=B.TextAttention, layers=(-1,))
        out[f"hf-{attn}-TextRollout"] = lambda txt=txt: txt(cls=B.TextRollout, layers=(0, 1, 2))
        out[f"hf-{attn}-TextGAME"] = lambda txt=txt: txt(cls=B.TextGAME, layers=(0, 1, 2))

    for layout in ("seq_first", "batch_first", "resnet"):
        def enc(layout=layout, cls=ImageGradECLIP, all_=False, text=False, **kw):
            model = OpenAICLIP(vision="resnet" if layout == "resnet" else "vit",
                               batch_first=layout == "batch_first").eval()
            px = _pixels()
            if text:
                cls = TextGradECLIP if cls is ImageGradECLIP else cls
                tsim = EncoderTextImageSimilarity(model, px)
                g = cls(tsim, list(model.transformer.resblocks[-2:]), **kw)
                return g.attribute_all(tokens()) if all_ else g.attribute(tokens(), target=1)
            sim = EncoderImageTextSimilarity(model, tokens())
            lay = model.visual.attnpool if layout == "resnet" else model.visual.transformer.resblocks[-1]
            g = cls(sim, lay, **kw)
            return g.attribute_all(px) if all_ else g.attribute(px, target=[1, 0])

        out[f"{layout}-image"] = lambda enc=enc: enc()
        out[f"{layout}-image-single_head"] = lambda enc=enc: enc(single_head=True)
        out[f"{layout}-image-attention"] = lambda enc=enc: enc(spatial="attention")
        out[f"{layout}-image-all"] = lambda enc=enc: enc(all_=True)
        out[f"{layout}-CLSAttention"] = lambda enc=enc: enc(cls=B.CLSAttention)
        out[f"{layout}-GAME"] = lambda enc=enc: enc(cls=B.GAME)
        out[f"{layout}-MaskCLIP"] = lambda enc=enc: enc(cls=B.MaskCLIP)
        if layout != "resnet":
            out[f"{layout}-TokenGradCAM"] = lambda enc=enc: enc(cls=B.TokenGradCAM)
            out[f"{layout}-text"] = lambda enc=enc: enc(text=True)
            out[f"{layout}-text-single_head"] = lambda enc=enc: enc(text=True, single_head=True)
            out[f"{layout}-text-all"] = lambda enc=enc: enc(text=True, all_=True)
            out[f"{layout}-TextGAME"] = lambda enc=enc: enc(text=True, cls=B.TextGAME)
    return out


def compute() -> Dict[str, torch.Tensor]:
    return {name: fn().detach().clone() for name, fn in cases().items()}


if __name__ == "__main__":
    maps = compute()
    torch.save({"torch": str(torch.__version__), "maps": maps}, HERE / "maps.pt")
    print(f"wrote {len(maps)} maps to {HERE / 'maps.pt'}")

"""The fine-tuning teacher through LoadedCLIP (captum_gradeclip.finetune.teacher): its layers,
tokens and similarity come from the record, so it mines maps of an OpenAI-layout model (no
package needed) and of a real open_clip model (where installed) as of a Hugging Face one; the
method names grad-eclip / game, the old gradeclip refused with its new name."""

from __future__ import annotations

import pytest
import torch
from openai_layout import OpenAICLIP, WordTokenizer

from captum_gradeclip import ImageGradECLIP
from captum_gradeclip.baselines import GAME
from captum_gradeclip.errors import InputError
from captum_gradeclip.finetune import FinetuneConfig, Teacher
from captum_gradeclip.finetune.teacher import clip_maps
from captum_gradeclip.models import wrap_open_clip


PHRASES = [["a red circle", "a bar"], ["a big blue square"], ["a bar"]]


def _one_at_a_time(clip, px, method):
    out = []
    for i, ps in enumerate(PHRASES):
        for p in ps:
            ids, mask = clip.tokens([p])
            sim = clip.image_similarity(ids, mask)
            layers = list(clip.image_layers)
            x = GAME(sim, layers) if method == "game" else ImageGradECLIP(sim, layers[-1])
            out.append(x.attribute(px[i:i + 1], target=0)[0, 0])
    return torch.stack(out)


@pytest.mark.parametrize("method", ["grad-eclip", "game"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_openai_layout_teacher_equals_one_phrase_at_a_time(method, batch_first):
    model = OpenAICLIP(batch_first=batch_first).eval()
    clip = wrap_open_clip(model, None, WordTokenizer())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    px = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    teacher = Teacher(clip, method=method)
    maps = teacher.maps(px, PHRASES)
    ref = _one_at_a_time(clip, px, method)
    assert maps.shape == (4, 4, 4) and maps.abs().max() > 0
    assert torch.allclose(maps, ref, atol=1e-5 * ref.abs().max().item())
    assert teacher.model is not model and teacher.clip.tokenizer is clip.tokenizer
    assert teacher.clip.image_layers[-1] is teacher.model.visual.transformer.resblocks[-1]  # the copy's layers
    assert all(not p.requires_grad for p in teacher.model.parameters())
    assert [p.requires_grad for p in model.parameters()] == flags  # the user's model untouched
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert torch.allclose(clip_maps(clip, px, PHRASES, method=method), maps, atol=1e-6)


def test_open_clip_teacher_equals_one_phrase_at_a_time():
    pytest.importorskip("open_clip")
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(0)
    model = CLIP(embed_dim=16, vision_cfg=CLIPVisionCfg(layers=2, width=32, head_width=8, patch_size=8, image_size=32),
                 text_cfg=CLIPTextCfg(context_length=8, vocab_size=50, width=32, heads=4, layers=3)).eval()
    clip = wrap_open_clip(model, None, WordTokenizer())
    px = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    maps = Teacher(clip).maps(px, PHRASES)
    ref = _one_at_a_time(clip, px, "grad-eclip")
    assert torch.allclose(maps, ref, atol=1e-5 * ref.abs().max().item())


def test_the_old_method_name_names_the_new_one(tmp_path, capsys):
    from captum_gradeclip.cli import main

    clip = wrap_open_clip(OpenAICLIP(), None, WordTokenizer())
    with pytest.raises(InputError, match="'gradeclip' is now called 'grad-eclip'"):
        Teacher(clip, method="gradeclip")
    with pytest.raises(InputError, match="one of"):
        Teacher(clip, method="rollout")
    with pytest.raises(ValueError, match="now called 'grad-eclip'"):
        FinetuneConfig(masks="gradeclip").check(1)
    assert main(["finetune", "--out", str(tmp_path / "o"), "--masks", "gradeclip"]) == 2
    assert capsys.readouterr().err.strip().endswith("--masks gradeclip is now called --masks grad-eclip")
    with pytest.raises(InputError, match="tokenizer"):
        Teacher(OpenAICLIP())  # a bare model needs its tokenizer (or a LoadedCLIP)

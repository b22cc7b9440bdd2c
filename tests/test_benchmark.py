"""The benchmark package: its method registry, report and memory cell (the command end to end is
in test_cli.py)."""

import json
import subprocess
import sys

import pytest

from captum_gradeclip.benchmark import methods, report
from captum_gradeclip.models import load_shapes
from captum_gradeclip.shapes import render_scene


def test_no_import_cycle_with_the_cli():
    code = ("import sys, captum_gradeclip.benchmark.protocols, captum_gradeclip.benchmark.memory, "
            "captum_gradeclip.benchmark.report; print('captum_gradeclip.cli' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_method_registry_and_filter():
    clip = load_shapes()
    sim = clip.image_similarity(*clip.tokens(["a red circle", "a blue square"]))
    names = list(methods.image_methods(clip, sim))
    assert names[0] == "Grad-ECLIP (cosine, default)" and "Token Grad-CAM" in names
    assert "Captum LayerGradCam (patch embedding)" in names and len(names) == 14
    picked = methods.select(methods.image_methods(clip, sim), ["grad-eclip", "cls-attention"])
    assert list(picked) == ["Grad-ECLIP (cosine, default)", "CLS attention"]
    assert [n.key for n in names] == methods.method_keys()  # --methods takes exactly these, one per method
    with pytest.raises(ValueError, match="'cosine' names no method; the methods are: grad-eclip, "):
        methods.select(methods.image_methods(clip, sim), ["cosine"])  # exact names, no substrings
    assert methods.select({"a": 1}, None) == {"a": 1}
    tsim = clip.text_similarity(clip.pixels([render_scene(seed=0).image]))
    assert list(methods.text_methods(clip, tsim)) == [
        "Grad-ECLIP (cosine, default)", "Text attention (EOS row)", "Text rollout", "Text GAME",
        "Captum LayerIntegratedGradients (token embeddings)"]


def test_metric_headings_are_defined_once():
    assert report.DELETION.heading == "deletion AUC ↓" and report.DELETION.title == "deletion auc ↓"
    assert report.MS_PER_EXPLANATION.heading == "ms / expl."
    m, t = methods.MethodName("m"), methods.MethodName("t")
    res = {"image": report.scores(m, {report.POINTING: 0.5, report.POINTING_STRICT: 0.25,
                                      report.MS_PER_EXPLANATION: 12.34}),
           "text": [report.Score(t, report.WORD_DELETION, 0.25)]}
    assert report.table(res).splitlines() == [
        "| image method | pointing (15 px @ 224) ↑ | pointing, strict ↑ | ms / expl. |", "|---|---|---|---|",
        "| m | 0.500 | 0.250 | 12.3 |", "",
        "| text method | word deletion AUC ↓ |", "|---|---|", "| t | 0.250 |"]
    assert report.as_json(res["image"]) == {"m": {"pointing_game": 0.5, "pointing_game_strict": 0.25,
                                                  "ms_per_explanation": 12.34}}


def test_method_names_carry_their_labels():
    """The plot's labels and colours come with the names (defined once in methods.py), as the
    plot showed them when it parsed them out of the names."""
    clip = load_shapes()
    sim = clip.image_similarity(*clip.tokens(["a red circle", "a blue square"]))
    names = list(methods.image_methods(clip, sim))
    assert [n.short for n in names] == [
        "Grad-ECLIP (cosine)", "Grad-ECLIP (cosine_per_head)", "Grad-ECLIP (attention)", "Grad-ECLIP (uniform)",
        "Grad-ECLIP (single_head)", "CLS attention", "Attention rollout", "Token Grad-CAM", "GAME", "MaskCLIP",
        "RISE", "LayerGradCam", "IntegratedGradients", "Occlusion"]
    assert [n.ours for n in names] == [True] * 5 + [False] * 9
    back = methods.method_name(str(names[11]))  # a name read back from a Parquet row
    assert type(back) is methods.MethodName and back.short == "LayerGradCam" and back == names[11]
    assert methods.method_name("unknown (x)").short == "unknown (x)"


def test_memory_cell_runs_with_named_flags():
    cmd = [sys.executable, "-m", "captum_gradeclip.benchmark.memory", "--side", "text",
           "--method", "Text attention (EOS row)"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    assert json.loads(out.strip().splitlines()[-1])["extra_mb"] >= 0


def test_plot_with_fewer_methods_than_metrics(tmp_path):
    import torch
    from PIL import Image

    names = ["Grad-ECLIP (cosine, default)", "CLS attention"]
    names = [methods.method_name(n) for n in names]
    image = [s for n in names for s in report.scores(n, {m: 0.5 for m in report.PLOTTED})]
    res = {"image": image, "_examples": dict(maps={n: torch.rand(1, 1, 8, 8) for n in names},
                                              image=Image.new("RGB", (64, 64)), prompt="a red circle")}
    report.plot(res, tmp_path / "b.png")
    with Image.open(tmp_path / "b.png") as im:
        assert im.size[0] > 200


def test_peak_memory_is_one_more_score_per_method(monkeypatch):
    from captum_gradeclip.benchmark import memory

    monkeypatch.setattr(memory, "peak_extra_mb", lambda side, name, path=None: {"image": 1.5, "text": 2.5}[side])
    a, b = methods.GRAD_ECLIP, methods.CLS_ATTENTION
    res = {"image": report.scores(a, {report.POINTING: 0.5}) + report.scores(b, {report.POINTING: 0.25}),
           "text": report.scores(a, {report.WORD_DELETION: 0.1})}
    memory.add_peak_memory(res)
    assert report.as_json(res["image"]) == {a: {"pointing_game": 0.5, "peak_extra_mb": 1.5},
                                            b: {"pointing_game": 0.25, "peak_extra_mb": 1.5}}
    assert list(report.as_json(res["text"])[a]) == ["word_deletion_auc", "peak_extra_mb"]

"""The benchmark package: its method registry, report and memory cell (the command end to end is
in test_cli.py)."""

import json
import subprocess
import sys

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
    picked = methods.select(methods.image_methods(clip, sim), ["cosine, default", "cls ATTENTION"])
    assert list(picked) == ["Grad-ECLIP (cosine, default)", "CLS attention"]
    assert methods.select({"a": 1}, None) == {"a": 1}
    tsim = clip.text_similarity(clip.pixels([render_scene(seed=0).image]))
    assert list(methods.text_methods(clip, tsim)) == [
        "Grad-ECLIP (cosine, default)", "Text attention (EOS row)", "Text rollout", "Text GAME",
        "Captum LayerIntegratedGradients (token embeddings)"]


def test_metric_headings_are_defined_once():
    assert report.DELETION.heading == "deletion AUC ↓" and report.DELETION.title == "deletion auc ↓"
    assert report.MS_PER_EXPLANATION.heading == "ms / expl."
    res = {"image": {"m": {report.POINTING.key: 0.5, report.POINTING_STRICT.key: 0.25,
                           report.MS_PER_EXPLANATION.key: 12.34}},
           "text": {"t": {report.WORD_DELETION.key: 0.25}}}
    assert report.table(res).splitlines() == [
        "| image method | pointing (15 px @ 224) ↑ | pointing, strict ↑ | ms / expl. |", "|---|---|---|---|",
        "| m | 0.500 | 0.250 | 12.3 |", "",
        "| text method | word deletion AUC ↓ |", "|---|---|", "| t | 0.250 |"]


def test_memory_cell_runs_with_named_flags():
    cmd = [sys.executable, "-m", "captum_gradeclip.benchmark.memory", "--side", "text",
           "--method", "Text attention (EOS row)"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    assert json.loads(out.strip().splitlines()[-1])["extra_mb"] >= 0


def test_plot_with_fewer_methods_than_metrics(tmp_path):
    import torch
    from PIL import Image

    names = ["Grad-ECLIP (cosine, default)", "CLS attention"]
    image = {n: {m.key: 0.5 for m in report.PLOTTED} for n in names}
    res = {"image": image, "_examples": dict(maps={n: torch.rand(1, 1, 8, 8) for n in names},
                                              image=Image.new("RGB", (64, 64)), prompt="a red circle")}
    report.plot(res, tmp_path / "b.png")
    with Image.open(tmp_path / "b.png") as im:
        assert im.size[0] > 200

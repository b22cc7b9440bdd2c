"""CI executes the tutorial notebook as the README says (`jupyter execute`, nbclient's command), so
it cannot rot: the executed notebook holds every figure the text describes, and the measured
numbers the text states."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("nbformat")
pytest.importorskip("nbclient")

NOTEBOOK = Path(__file__).resolve().parents[1] / "tutorials" / "gradeclip_shapes.ipynb"
#: the scene, the default's four maps, the study's choice's four maps, Grad-ECLIP vs LayerGradCam
#: vs IntegratedGradients
FIGURES = 4
ROW = re.compile(r"^(?P<text>.+?)\s+cos (?P<cos>[-+][\d.]+)\s+max (?P<max>[\d.]+)\s+total [\d.]+\s+"
                 r"top patch (?P<share>\d+)% of the map", re.M)


@pytest.mark.slow
def test_tutorial_notebook_runs_with_its_figures(tmp_path):
    nb_path = tmp_path / NOTEBOOK.name
    shutil.copy(NOTEBOOK, nb_path)
    jupyter = Path(sys.executable).with_name("jupyter")
    run = subprocess.run([str(jupyter), "execute", str(nb_path), "--output", "executed"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    nb = json.loads((tmp_path / "executed.ipynb").read_text())
    outputs = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == FIGURES, f"{len(images)} figures in the executed notebook, {FIGURES} described"
    assert any("text/html" in o.get("data", {}) for o in outputs)  # visualize_text's words
    text = "".join("".join(o.get("text", "")) for o in outputs)
    assert "default explains the model's score: True" in text
    # the prose: the absent object has by far the lowest similarity, a map as high as present
    # objects' and the most spread out
    rows = list(ROW.finditer(text))
    assert len(rows) == 8  # 4 texts, default and the study's choice
    default = {m["text"]: m for m in rows[:4]}
    absent, present = default.pop("a green cross"), list(default.values())
    assert len(present) == 3
    assert float(absent["cos"]) < min(float(p["cos"]) for p in present) - 0.3
    assert float(absent["max"]) >= sorted(float(p["max"]) for p in present)[1]
    assert int(absent["share"]) < min(int(p["share"]) for p in present)
    # the default misses "a purple bar" (on the purple ring); the study's choice hits all three
    assert text.index("pointing game (present objects): [True, True, False]") < text.index(
        "pointing game (present objects): [True, True, True]")
    chosen = {m["text"]: m for m in rows[4:]}
    absent = chosen.pop("a green cross")
    assert int(absent["share"]) < min(int(p["share"]) for p in chosen.values())
    assert float(absent["max"]) < min(float(p["max"]) for p in chosen.values())

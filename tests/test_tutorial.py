"""CI executes the tutorial notebook with the README's own line (`jupyter execute ... --output
gradeclip_shapes.executed.ipynb`, nbclient's command) in a clone of the repository, so it cannot rot
and cannot dirty the checkout: the executed copy lands beside the notebook (git-ignored), the tracked
notebook is untouched, `git status --porcelain` stays empty, and the executed notebook holds every
figure the text describes and the measured numbers the text states."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("nbformat")
pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "tutorials" / "gradeclip_shapes.ipynb"
EXECUTED = "tutorials/gradeclip_shapes.executed.ipynb"
#: the scene, the default's four maps, the study's choice's four maps, Grad-ECLIP vs LayerGradCam
#: vs IntegratedGradients
FIGURES = 4
ROW = re.compile(r"^(?P<text>.+?)\s+cos (?P<cos>[-+][\d.]+)\s+max (?P<max>[\d.]+)\s+total [\d.]+\s+"
                 r"top patch (?P<share>\d+)% of the map", re.M)


def readme_tutorial_line() -> str:
    """The README's command that executes the tutorial (the one line starting `jupyter execute`)."""
    lines = [ln.strip() for ln in (ROOT / "README.md").read_text().splitlines()
             if ln.strip().startswith("jupyter execute tutorials/")]
    assert len(lines) == 1, f"the README should hold one tutorial line, found {lines}"
    return lines[0].split("  #")[0]


def _git(cwd: Path, *args: str) -> str:
    run = subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return run.stdout


def _clone(tmp_path: Path) -> Path:
    """A clone of this repository with the checkout's current README, .gitignore and tutorials
    committed on top (so the test checks the files as they are, committed or not)."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs git and a git checkout (the test clones the repository)")
    clone = tmp_path / "clone"
    _git(tmp_path, "clone", "--quiet", "--no-hardlinks", str(ROOT), str(clone))
    for rel in ["README.md", ".gitignore", *(p.relative_to(ROOT).as_posix() for p in (ROOT / "tutorials").iterdir()
                                            if p.is_file() and not p.name.endswith(".executed.ipynb"))]:
        (clone / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / rel, clone / rel)
    _git(clone, "add", "-A")
    _git(clone, "commit", "--quiet", "--allow-empty", "-m", "the checkout's files")
    assert _git(clone, "status", "--porcelain") == ""
    return clone


def test_readme_tutorial_line_writes_beside_the_notebook():
    """The line names an output that nbclient keeps as written (it applies `.with_suffix(".ipynb")`
    to the name: `gradeclip_shapes.executed` would become `gradeclip_shapes.ipynb`, the tracked
    notebook), and the executed copy's path is git-ignored."""
    line = readme_tutorial_line()
    output = line.split("--output", 1)[1].split()[0]
    target = (NOTEBOOK.parent / output).with_suffix(".ipynb")
    assert target != NOTEBOOK and target.name == Path(EXECUTED).name, line
    ignored = subprocess.run(["git", "check-ignore", "-q", EXECUTED], cwd=ROOT)
    if ignored.returncode == 128:
        pytest.skip("not a git checkout")
    assert ignored.returncode == 0, f"{EXECUTED} is not git-ignored"


@pytest.mark.slow
def test_readme_tutorial_line_runs_with_its_figures_and_leaves_git_clean(tmp_path):
    clone = _clone(tmp_path)
    tracked = (clone / "tutorials" / NOTEBOOK.name).read_bytes()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    run = subprocess.run(readme_tutorial_line(), shell=True, cwd=clone, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert _git(clone, "status", "--porcelain") == "", "the README's tutorial line dirtied the checkout"
    assert (clone / "tutorials" / NOTEBOOK.name).read_bytes() == tracked
    nb = json.loads((clone / EXECUTED).read_text())
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

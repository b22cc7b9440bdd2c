"""The README's quickstart and the docs' Python example run as written, and the numbers the demo
prints are the configuration study page's."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _python_block(text: str, after: str) -> str:
    assert after in text, f"{after!r} not found"
    return re.search(r"```python\n(.*?)```", text.split(after, 1)[1], re.S).group(1)


def test_readme_quickstart_runs_and_draws_a_captum_heat_map():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    readme = (ROOT / "README.md").read_text()
    code = _python_block(readme, "## Quickstart")
    assert "ImageGradECLIP(" in code and ".attribute(" in code and "visualize_image_attr" in code
    assert 10 <= len(code.strip().splitlines()) <= 15
    assert readme[: readme.index("## Quickstart")].count("\n") < 60  # the quickstart on the first screen
    scope: dict = {}
    exec(compile(code, "README quickstart", "exec"), scope)
    n, t = scope["inputs"].pixel_values.shape[0], scope["inputs"].input_ids.shape[0]
    assert scope["attr"].shape == (n, 1, 8, 8)  # ShapesCLIP: 64 px, patch 8
    assert scope["heat"].shape == (n, 1, 64, 64)
    assert scope["ig"].shape == scope["inputs"].pixel_values.shape
    assert isinstance(scope["fig"], Figure) and t == len(scope["scene"].prompts)


def test_docs_python_example_runs():
    """The full example (both towers, attribute_all, Captum's methods on the same forward
    function) lives on the 'Explaining one pair' page."""
    code = _python_block((DOCS / "explain.md").read_text(), "## Python: the Captum API")
    scope: dict = {}
    exec(compile(code, "docs/explain.md Python example", "exec"), scope)
    assert tuple(scope["attr"].shape[1:2]) == (1,)
    assert scope["all_maps"].shape[1] == len(scope["texts"])
    assert scope["words"].shape == scope["inputs"].input_ids.shape


def test_readme_is_short_and_links_to_pages_that_exist():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    links = re.findall(r"\]\(((?:docs|tutorials)/[^)#]+)", readme)
    assert len(links) >= 12
    assert [link for link in links if not (ROOT / link).exists()] == []


def test_demo_labels_carry_the_study_table_numbers():
    """The demo labels each configuration with its pointing game on the benchmark's objects:
    the numbers the configuration study page reports (`python benchmarks/study.py`)."""
    from captum_gradeclip.cli import DEMO_ROWS

    text = (DOCS / "study.md").read_text()
    table = text.split("Reported on the benchmark's", 1)[1].split("\n\n", 2)[1]
    pointing = {}
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        pointing[cells[0]] = float(cells[1])
    names = {(1, "cosine"): "last 1, cosine", (3, "cosine_per_head"): "last 3, cosine_per_head"}
    assert len(DEMO_ROWS) == 2
    for _, config, score in DEMO_ROWS:
        assert config.layers == tuple(range(-len(config.layers), 0))  # the last N layers
        assert score == pointing[names[(len(config.layers), config.spatial)]]


def test_ci_installs_what_the_readme_says():
    """.ci/run's main environment is "the README's set-up, as written there": the same torch pin
    and the same extras as the README's install lines."""
    readme = (ROOT / "README.md").read_text().split("## Install", 1)[1].split("\n## ", 1)[0]
    ci = (ROOT / ".ci" / "run").read_text()
    extras = re.search(r'^EXTRAS_MAIN="(\[[^"]+\])"', ci, re.M).group(1)
    assert f'pip install -e ".{extras}"' in readme
    assert "pip install -q torch==2.13.0" in ci and "pip install torch==2.13.0" in readme
    assert "docs" in extras.strip("[]").split(",")
    assert ci.rstrip().splitlines()[-1] == "python -m pytest tests -q"
    assert "python -m pytest tests -q" in readme


def test_readme_lists_every_command_with_its_page():
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-m", "captum_gradeclip", "--help"], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    commands = re.search(r"\{([a-z,-]+)\}", run.stdout).group(1).split(",")
    assert len(commands) >= 9
    table = (ROOT / "README.md").read_text().split("## Commands", 1)[1].split("\n## ", 1)[0]
    rows = [ln for ln in table.splitlines() if ln.startswith("| `captum-gradeclip ")]
    for command in commands:
        row = [r for r in rows if r.startswith(f"| `captum-gradeclip {command}")]
        assert row, f"the README's command table has no line for `{command}`"
        assert re.search(r"\]\(docs/[a-z_/]+\.md(#[a-z-]+)?\)", row[0]), row[0]

"""The README's quickstart runs as written."""

import pathlib
import re


def test_readme_quickstart_runs():
    text = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split("## Quickstart", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    scope: dict = {}
    exec(compile(code, "README quickstart", "exec"), scope)
    assert tuple(scope["attr"].shape[1:2]) == (1,)
    assert scope["all_maps"].shape[1] == len(scope["texts"])
    assert scope["words"].shape == scope["inputs"].input_ids.shape


def test_demo_labels_carry_the_study_table_numbers():
    """The demo labels each configuration with its pointing game on the benchmark's objects:
    the numbers the README's configuration study reports (`python benchmarks/study.py`)."""
    from captum_gradeclip.cli import DEMO_ROWS

    text = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = text.split("Reported on the benchmark's", 1)[1].split("\n\n", 2)[1]
    pointing = {}
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        pointing[cells[0]] = float(cells[1])
    names = {(1, "cosine"): "last 1, cosine", (3, "cosine_per_head"): "last 3, cosine_per_head"}
    assert len(DEMO_ROWS) == 2
    for _, config, score in DEMO_ROWS:
        assert score == pointing[names[(config.layers, config.spatial)]]

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

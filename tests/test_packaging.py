"""Extras are declared and documented in their normalised (PEP 685) form.

setuptools writes extra names normalised into the metadata (`open_clip` -> `open-clip`). The pip
that `python -m venv` ships (23.2.1 with Python 3.11) compares extra names as written, so
`pip install ".[open_clip]"` warns "does not provide the extra 'open_clip'" and installs nothing of
it; `.[open-clip]` works with every pip. .ci/run installs every extra with that pip (not upgraded).
"""

import configparser
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared_extras() -> list:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    return list(cfg["options.extras_require"])


def _extra_spellings(text: str) -> list:
    """Every `[a,b]` in text whose names are all extras of this package (in any spelling)."""
    declared = {_normalise(e) for e in _declared_extras()}
    found = []
    for match in re.finditer(r"\[([A-Za-z0-9_.,\- ]+)\]", text):
        names = [n.strip() for n in match.group(1).split(",")]
        if names and all(_normalise(n) in declared for n in names):
            found.extend(names)
    return found


def _install_section() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Install", 1)[1]
    return section.split("\n## ", 1)[0]


def test_extra_names_in_setup_cfg_are_normalised():
    extras = _declared_extras()
    assert {"test", "open-clip", "scale"} <= set(extras)
    assert [e for e in extras if e != _normalise(e)] == []
    assert len({_normalise(e) for e in extras}) == len(extras)  # no two spellings of one extra


@pytest.mark.parametrize("where", ["README install section", ".ci/run"])
def test_install_commands_spell_extras_normalised(where):
    text = _install_section() if where == "README install section" else (ROOT / ".ci/run").read_text()
    spellings = _extra_spellings(text)
    assert "open-clip" in spellings
    assert [n for n in spellings if n != _normalise(n)] == []


def test_everything_else_spells_extras_normalised():
    files = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), *sorted((ROOT / "captum_gradeclip").rglob("*.py"))]
    bad = {
        str(f.relative_to(ROOT)): old
        for f in files
        if (old := [n for n in _extra_spellings(f.read_text()) if n != _normalise(n)])
    }
    assert bad == {}

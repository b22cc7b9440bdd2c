"""Errors by layer: library modules raise domain errors (``InputError``, a ``ValueError``), only the
command modules raise the command line's ``CLIError``; ``main`` turns both into exit 2 and one line."""

import ast
from pathlib import Path

import pytest

import captum_gradeclip
from captum_gradeclip.errors import CLIError, GradECLIPError, InputError

PACKAGE = Path(captum_gradeclip.__file__).parent
#: the command modules: the thin argparse layer over the library
COMMANDS = {"cli.py", "__main__.py", "errors.py"}


def _is_command(rel: Path) -> bool:
    return rel.name in COMMANDS or rel.name.endswith("_cli.py")


def test_only_command_modules_mention_cli_error():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if _is_command(rel):
            continue
        names = {n.id for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Name)}
        names |= {a.name for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.ImportFrom)
                  for a in n.names}
        if "CLIError" in names:
            offenders.append(str(rel))
    assert offenders == []


def test_domain_errors_are_value_errors():
    assert issubclass(InputError, ValueError) and issubclass(CLIError, GradECLIPError)
    err = InputError("pairs.jsonl:3: no texts", path="pairs.jsonl", line=3)
    assert (err.path, err.line, str(err)) == ("pairs.jsonl", 3, "pairs.jsonl:3: no texts")


def test_a_library_reader_raises_input_error(tmp_path):
    from captum_gradeclip._io import open_image, read_utf8

    bad = tmp_path / "p.txt"
    bad.write_bytes(b"a red circle\n\xff\n")
    with pytest.raises(InputError, match=r"p.txt:2: not UTF-8"):
        read_utf8(bad, "--prompts")
    with pytest.raises(InputError, match="image file not found"):
        open_image(str(tmp_path / "missing.png"))


def test_main_turns_a_library_error_into_one_line(tmp_path, capsys):
    from captum_gradeclip.cli import main

    assert main(["explain", str(tmp_path / "missing.png"), "--text", "a red circle",
                 "--out", str(tmp_path / "f.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("captum-gradeclip: error: image file not found")

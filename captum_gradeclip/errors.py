"""The package's error types, by layer.

Library functions (readers, jobs, loaders, analyses) raise :class:`InputError` (or another
:class:`GradECLIPError`): a ``ValueError`` whose message names what was wrong (the file and line,
the record, the option) and the fix, so a Python caller can catch it like any bad-argument error.
:class:`CLIError` is for the command modules alone (``cli.py`` and each package's ``cli.py`` /
``*_cli.py``): a flag that makes no sense. ``captum-gradeclip``'s ``main`` turns every
:class:`GradECLIPError` into exit status 2 and one line, ``captum-gradeclip: error: ...``.
"""

from __future__ import annotations

from typing import Optional, Union
from pathlib import Path

__all__ = ["CLIError", "GradECLIPError", "InputError"]


class GradECLIPError(ValueError):
    """The base of the package's user errors: what was received, what was expected, the fix."""


class InputError(GradECLIPError):
    """Bad input: a file, a record in it, an image, a text, a model or an option value.

    Args:
        message: the whole explanation (it already names the file and line where there is one).
        path: the file it is about, if any. line: its 1-based line, if any.
    """

    def __init__(self, message: str, *, path: Optional[Union[str, Path]] = None, line: Optional[int] = None) -> None:
        super().__init__(message)
        self.path, self.line = (None if path is None else str(path)), line


class CLIError(GradECLIPError):
    """A command-line flag error, raised only by the command modules (exit 2, one line)."""

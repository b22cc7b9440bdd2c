"""What the command line shares with the benchmark: its user-error type and image reading.

Both ``captum_gradeclip.cli`` and ``captum_gradeclip.benchmark`` import this module, so neither
needs the other.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image


class CLIError(Exception):
    """A user error: printed without a traceback, exit status 2."""


def open_image(path: str) -> "Image.Image":
    """The image at ``path``, as RGB.

    Raises:
        CLIError: no such file, or not an image PIL can read.
    """
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise CLIError(f"image file not found: {path}")
    try:
        with Image.open(p) as im:
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError) as e:
        raise CLIError(f"cannot read {path} as an image ({e.__class__.__name__}); give a PNG, JPEG, ...") from None

"""What the commands and the library share: reading text files and images, checking output paths.

Their errors are :class:`~captum_gradeclip.errors.InputError` (a ``ValueError``), never the
command line's :class:`~captum_gradeclip.errors.CLIError`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image


#: The exit status of a command stopped by Ctrl-C (SIGINT), as shells report it (128 + 2).
INTERRUPTED = 130


def read_utf8(path: Path, what: str, error: type = InputError) -> str:
    """A UTF-8 text file without its byte-order mark (line ends: use ``splitlines``); ``what``
    names it in the messages (``"--prompts"``, ``"the pairs file"``).

    Raises:
        error (default :class:`InputError`): it cannot be read, or is not UTF-8 (naming the file and
            the line).
    """
    try:
        data = path.read_bytes()
    except OSError as e:
        raise error(f"cannot read {what} {path} ({e.strerror or type(e).__name__})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise error(f"{what} {path}:{line}: not UTF-8 text (byte {data[e.start]:#04x}); save it as UTF-8") from None


def interrupted(what: str) -> SystemExit:
    """Print one line for a command stopped by Ctrl-C (``what``: what was kept, how to resume)
    and return the ``SystemExit`` (status :data:`INTERRUPTED`) to raise."""
    import sys

    print(f"captum-gradeclip: interrupted: {' '.join(what.split())}", file=sys.stderr, flush=True)
    return SystemExit(INTERRUPTED)


#: Images whose shorter side is longer are decoded reduced to this side (JPEG: at 1/2, 1/4 or 1/8
#: scale by the decoder itself), then resized: CLIP sees 224-448 px, and the figure needs no more.
MAX_SHORT_SIDE = 1024

_HIGH_BIT_DEPTH = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def _to_8_bit_rgb(im: "Image.Image") -> "Image.Image":
    """RGB of any PIL image; 16-bit and 32-bit grey images are scaled (``/ 257``: 65535 -> 255),
    not saturated as ``convert("RGB")`` does."""
    if im.mode not in _HIGH_BIT_DEPTH:
        return im.convert("RGB")
    import numpy as np
    from PIL import Image

    a = np.asarray(im).astype(np.float64)
    if a.max(initial=0) > 255:  # a 16-bit range
        a = a / 257.0
    return Image.fromarray(np.clip(a.round(), 0, 255).astype(np.uint8)).convert("RGB")


def _reduced(im: "Image.Image") -> "Image.Image":
    """``im`` upright (its EXIF orientation applied) with its shorter side at most
    :data:`MAX_SHORT_SIDE` (call before it is decoded)."""
    from PIL import ImageOps

    short = min(im.size)
    if short <= MAX_SHORT_SIDE:
        return _to_8_bit_rgb(ImageOps.exif_transpose(im))
    size = tuple(max(1, round(v * MAX_SHORT_SIDE / short)) for v in im.size)
    im.draft("RGB", size)  # JPEG: decode at the largest 1/2^k scale still >= size; others: no-op
    rgb = _to_8_bit_rgb(im)
    rgb = rgb if rgb.size == size else rgb.resize(size, resample=3, reducing_gap=2.0)  # 3 = BICUBIC
    rgb.info["exif"] = im.info.get("exif", b"")  # convert and resize drop it
    orientation = im.getexif().get(0x0112, 1)
    return ImageOps.exif_transpose(rgb) if orientation != 1 else rgb


def open_image(path: str) -> "Image.Image":
    """The image at ``path``, as 8-bit RGB, read by its content (the extension does not matter).

    The EXIF orientation is applied (``PIL.ImageOps.exif_transpose``): the image is as every
    viewer shows it. 16-bit images are scaled to 8 bits; images whose shorter side exceeds
    :data:`MAX_SHORT_SIDE` are reduced to it while decoding (a 6000 x 6000 JPEG is decoded at
    1/4 scale instead of in full).

    Raises:
        InputError: no such file, or not an image PIL can read (or a truncated one).
    """
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise InputError(f"image file not found: {path}")
    try:
        with Image.open(p) as im:
            return _reduced(im)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise InputError(f"cannot read {path} as an image ({e.__class__.__name__}: {str(e)[:80]}); "
                       "give a PNG, JPEG, ...") from None


def _first_existing(p: Path) -> Path:
    """``p`` or its nearest ancestor that exists."""
    p = p.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_output_dir(path: str, flag: str = "--out-dir") -> Path:
    """``path`` as a folder that can be written (missing folders are created when writing).

    Raises:
        InputError: ``path`` is a regular file, lies under one, or under a folder that is not writable.
    """
    import os

    p = Path(path)
    if p.exists() and not p.is_dir():
        raise InputError(f"{flag} {path} is a file, not a folder")
    base = _first_existing(p)
    if not base.is_dir():
        raise InputError(f"{flag} {path} lies under {base}, a file, not a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        raise InputError(f"{flag} {path}: cannot write in {base}")
    return p


def check_output_file(path: str, flag: str = "--out") -> Path:
    """``path`` as a figure file that can be written: an extension matplotlib saves (``.png``,
    ``.pdf``, ``.svg``, ``.jpg``, ...; none: PNG) in a writable folder (missing folders are created
    when writing).

    Raises:
        InputError: ``path`` is a folder, lies under a regular file or in a folder that cannot be
            written, or has an extension matplotlib cannot write.
    """
    from matplotlib.backend_bases import FigureCanvasBase

    p = Path(path)
    if not path or p.is_dir():
        raise InputError(f"{flag} must be a file name (e.g. fig.png), got {path!r}")
    ext = p.suffix.lower().lstrip(".")
    kinds = FigureCanvasBase.get_supported_filetypes()
    if ext and ext not in kinds:
        raise InputError(f"{flag} {path}: cannot write a .{ext} figure; use one of {', '.join(sorted(kinds))}")
    check_output_dir(str(p.parent), flag=f"{flag} {path}: its folder")
    return p

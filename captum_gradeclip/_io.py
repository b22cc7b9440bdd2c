"""What the commands and the library share: reading text files and images, checking output paths.

Their errors are :class:`~captum_gradeclip.errors.InputError` (a ``ValueError``), never the
command line's :class:`~captum_gradeclip.errors.CLIError`.
"""

from __future__ import annotations

import hashlib
import re
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Dict, Iterable, Iterator, Optional, Tuple

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

#: Images that declare more pixels in their header are refused before any pixel is decoded (a
#: 20 KB PNG can declare 13000 x 13000 px: 0.5 GB as RGB). PIL's own guard starts at 89 M pixels.
MAX_PIXELS = 64_000_000

_HIGH_BIT_DEPTH = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def _to_8_bit_rgb(im: "Image.Image") -> "Image.Image":
    """RGB of any PIL image; 16-bit and 32-bit grey images are scaled (``/ 257``: 65535 -> 255),
    not saturated as ``convert("RGB")`` does."""
    if im.mode not in _HIGH_BIT_DEPTH:
        return im.convert("RGB")
    import numpy as np
    from PIL import Image

    a = np.asarray(im)
    if a.max(initial=0) > 255:  # a 16-bit range: round(a / 257), in integers (no float64 copy)
        if a.dtype.kind in "iu":  # (2a + 257) // 514 == round(a / 257): 257 is odd, no ties
            a = (a.astype(np.int32 if a.dtype.itemsize < 4 else np.int64) * 2 + 257) // 514
        else:
            a = (a.astype(np.float32) / 257.0).round()
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).convert("RGB")


def _reduced(im: "Image.Image") -> "Image.Image":
    """``im`` upright (its EXIF orientation applied) with its shorter side at most
    :data:`MAX_SHORT_SIDE` (call before it is decoded)."""
    from PIL import ImageOps

    short = min(im.size)
    if short <= MAX_SHORT_SIDE:
        return _to_8_bit_rgb(ImageOps.exif_transpose(im))
    size = tuple(max(1, round(v * MAX_SHORT_SIDE / short)) for v in im.size)
    im.draft("RGB", size)  # JPEG: decode at the largest 1/2^k scale still >= size; others: no-op
    im.load()
    # grey: resized as one channel (the same values, a third of the memory); RGB: no copy before resizing
    base = im if im.mode in ("L", "RGB") else im.convert("L") if im.mode == "1" else _to_8_bit_rgb(im)
    small = base.copy() if base.size == size else base.resize(size, resample=3, reducing_gap=2.0)  # 3 = BICUBIC
    rgb = small.convert("RGB") if small.mode != "RGB" else small
    rgb.info["exif"] = im.info.get("exif", b"")  # convert and resize drop it
    orientation = im.getexif().get(0x0112, 1)
    return ImageOps.exif_transpose(rgb) if orientation != 1 else rgb


def image_size(source: "str | Path | bytes | IO[bytes]", name: Optional[str] = None) -> Tuple[int, int]:
    """``(width, height)`` from the image's header, nothing decoded (see :func:`open_image`).

    Raises:
        InputError: not an image, or more than :data:`MAX_PIXELS` pixels.
    """
    with _opened(source, name) as im:
        return im.size


@contextmanager
def _opened(source: "str | Path | bytes | IO[bytes]", name: Optional[str]) -> Iterator["Image.Image"]:
    """The image opened lazily (its header read), its size checked against :data:`MAX_PIXELS`;
    every error PIL raises (its decompression-bomb check included) as one :class:`InputError`."""
    import io
    import warnings

    from PIL import Image, UnidentifiedImageError

    what = name or (str(source) if isinstance(source, (str, Path)) else "the image")
    if isinstance(source, (str, Path)) and not Path(source).is_file():
        raise InputError(f"image file not found: {source}")
    fp = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our limit is lower: checked below
            im = Image.open(fp)
    except Image.DecompressionBombError:
        raise InputError(f"{what} declares more than {2 * (Image.MAX_IMAGE_PIXELS or 0) // 10**6} M pixels; give an "
                         f"image under {MAX_PIXELS // 10**6} M pixels") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise InputError(f"cannot read {what} as an image ({e.__class__.__name__}: {str(e)[:80]}); "
                         "give a PNG, JPEG, ...") from None
    with im:
        w, h = im.size
        if w * h > MAX_PIXELS:
            raise InputError(f"{what} is {w} x {h} px ({w * h / 1e6:.0f} M pixels): refused before decoding; give an "
                             f"image under {MAX_PIXELS // 10**6} M pixels (resize it first)")
        yield im


def open_image(source: "str | Path | bytes | IO[bytes]", name: Optional[str] = None) -> "Image.Image":
    """The image in ``source`` (a path, encoded bytes or a binary file object: a tar member, an
    upload), as 8-bit RGB, read by its content (the extension does not matter); ``name`` names
    it in the messages (default: the path). The one decoder of the package: folders, tar shards,
    Hugging Face datasets, the app's uploads and the report all read images through it.

    The header is read first: more than :data:`MAX_PIXELS` pixels is refused before any pixel is
    decoded. The EXIF orientation is applied (``PIL.ImageOps.exif_transpose``): the image is as
    every viewer shows it. 16-bit images are scaled to 8 bits; images whose shorter side exceeds
    :data:`MAX_SHORT_SIDE` are reduced to it while decoding (a 6000 x 6000 JPEG is decoded at
    1/4 scale instead of in full).

    Raises:
        InputError: no such file, not an image PIL can read (or a truncated one), or too many pixels.
    """
    from PIL import Image

    with _opened(source, name) as im:
        what = name or (str(source) if isinstance(source, (str, Path)) else "the image")
        try:
            return _reduced(im)
        except Image.DecompressionBombError:  # pragma: no cover - checked from the header above
            raise InputError(f"{what} has too many pixels; give an image under {MAX_PIXELS // 10**6} M pixels") \
                from None
        except (OSError, ValueError, SyntaxError, EOFError) as e:
            raise InputError(f"cannot read {what} as an image ({e.__class__.__name__}: {str(e)[:80]}); "
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


#: The folder (under a job's output) of the files named by hashed keys; a plain key never starts with it.
HASHED = "_keys"
_UNSAFE = re.compile(r'[\x00-\x1f\x7f\\:*?"<>|]')


def _plain(key: str) -> bool:
    """``key`` can be a relative file name as it is: UTF-8, ``/``-separated parts that are not
    empty, ``.`` or ``..``, no control character, backslash or character Windows refuses, not
    under :data:`HASHED`, and short enough for every file system."""
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate: a file name that was not UTF-8
        return False
    parts = key.split("/")
    return (0 < size <= 512 and not _UNSAFE.search(key) and parts[0].lower() != HASHED
            and all(p not in ("", ".", "..") and len(p.encode("utf-8")) <= 200 and p == p.strip(" ") for p in parts))


def safe_relative_name(key: str, suffix: str = "") -> str:
    """A record key as a relative file name that cannot leave the folder it is joined to: the key
    itself where it is a plain relative path (``"cat/1.jpg"``; with ``suffix``, its extension
    replaced: ``"cat/1.png"``), else ``_keys/<readable part>-<sha256 of the key, 20 hex>`` (``..``,
    absolute paths, NUL, backslashes, names that are not UTF-8: ``"../../x"`` ->
    ``"_keys/x-3f1c...png"``). Different keys give different names (the hashed ones by their
    sha256), except that ``suffix`` may map ``a.jpg`` and ``a.png`` to one name: use
    :func:`safe_names` for a job's keys."""
    if _plain(key):
        return str(Path(key).with_suffix(suffix)) if suffix and Path(key).suffix != suffix else key
    raw = key.encode("utf-8", "surrogatepass")
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", key.rsplit("/", 1)[-1]).strip("._")[:40]
    return f"{HASHED}/{readable + '-' if readable else ''}{hashlib.sha256(raw).hexdigest()[:20]}{suffix}"


def safe_names(keys: Iterable[str], suffix: str = "") -> Dict[str, str]:
    """``key -> safe_relative_name(key, suffix)`` for a job's keys, one file per key: keys whose
    plain names would coincide (``a.jpg`` and ``a.png`` with ``suffix=".png"``) get hashed names."""
    names = {k: safe_relative_name(k, suffix) for k in dict.fromkeys(keys)}
    count: Dict[str, int] = {}
    for n in names.values():
        count[n.lower()] = count.get(n.lower(), 0) + 1  # lower: case-insensitive file systems too
    for k, n in names.items():
        if count[n.lower()] > 1:
            raw = k.encode("utf-8", "surrogatepass")
            names[k] = f"{HASHED}/{hashlib.sha256(raw).hexdigest()[:20]}{suffix}"
    return names


def inside(root: "str | Path", name: str) -> Optional[Path]:
    """``root / name`` if it resolves (links followed) to a path under ``root`` resolved, else
    ``None``: a record key read back from a job never reaches a file outside ``root``."""
    if "\x00" in name:
        return None
    base = Path(root).resolve()
    try:
        p = (base / name).resolve()
    except (OSError, RuntimeError, ValueError):  # a link loop, a name the OS refuses
        return None
    return p if p == base or base in p.parents else None

"""Datasets as users store them, for ``explain-dataset``, ``benchmark --images`` and ``segment``:
a Hugging Face ``datasets`` dataset (``--hf-dataset``: a ``save_to_disk`` folder, or Parquet
files with an image column and a text or label column) and WebDataset tar shards
(``--webdataset 'shards-{000..009}.tar'``, read with the standard library's ``tarfile``).

Both are map-style with a fixed order (sorted by key, as the folder reader sorts its files), so
the engine cuts them into the same shards on any number of ranks (shard ``i`` on rank
``i % world``: no duplicates), resumes them, and turns a record that cannot be decoded into an
error row. Keys: the ``--key-column`` value, else the file name the image column recorded, else
the row number (Hugging Face); ``KEY.EXT`` of the image member (WebDataset).
"""

from __future__ import annotations

import glob
import io
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..errors import InputError

#: Image extensions of WebDataset members (case-insensitive), and where texts / labels are read.
WDS_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp")
WDS_TEXT_EXTS = ("txt", "text", "caption")
WDS_LABEL_EXTS = ("cls", "label")


def _decode(data: bytes, key: str) -> Any:
    """Encoded image bytes -> 8-bit RGB PIL image.

    Raises:
        InputError: not an image PIL can read (the engine makes it an error row).
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise InputError(f"cannot decode the image of record {key} ({type(e).__name__})") from None


def expand_braces(pattern: str) -> List[str]:
    """``"shards-{000..002}.tar"`` -> ``["shards-000.tar", "shards-001.tar", "shards-002.tar"]``
    (numeric ranges keep their zero padding; several ranges multiply; ``{a,b}`` lists too)."""
    m = re.search(r"\{([^{}]*)\}", pattern)
    if not m:
        return [pattern]
    body, head, tail = m.group(1), pattern[: m.start()], pattern[m.end():]
    r = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if r:
        lo, hi = int(r.group(1)), int(r.group(2))
        parts = [str(v).zfill(len(r.group(1))) for v in range(lo, hi + 1)]
    else:
        parts = body.split(",")
    return [p for part in parts for p in expand_braces(head + part + tail)]


@dataclass(frozen=True)
class _Member:
    tar: str
    name: str


@dataclass
class SourceRecord:
    """One record of a source: its ``key``, the image's location, its ``texts`` and ``label``."""

    key: str
    where: Any
    texts: Tuple[str, ...] = ()
    label: Optional[int] = None


class WebDatasetSource:
    """Tar shards in WebDataset's layout: files ``KEY.EXT`` grouped by ``KEY`` (the path up to the
    first dot of the file name); the image from ``jpg``/``png``/..., texts from ``txt`` (one per
    line), the label from ``cls``. Only the tar headers are read up front.

    Raises:
        InputError: a shard that does not exist or is not a tar, or two images with the same key.
    """

    def __init__(self, pattern: str) -> None:
        self.shards = expand_braces(pattern)
        groups: Dict[str, Dict[str, Any]] = {}
        for shard in self.shards:
            for name, ext, payload in self._scan(shard):
                groups.setdefault(name, {})[ext] = payload
        self.records = self._records(groups)
        self.classes: List[str] = []
        self._open: Dict[str, tarfile.TarFile] = {}

    @staticmethod
    def _scan(shard: str) -> List[Tuple[str, str, Any]]:
        if not Path(shard).is_file():
            raise InputError(f"--webdataset: no shard {shard}")
        try:
            with tarfile.open(shard) as tar:
                out = []
                for m in tar.getmembers():
                    if not m.isfile():
                        continue
                    base = m.name.rsplit("/", 1)
                    stem, _, ext = base[-1].partition(".")
                    key = (base[0] + "/" if len(base) == 2 else "") + stem
                    small = ext.lower() in WDS_TEXT_EXTS + WDS_LABEL_EXTS
                    payload = tar.extractfile(m).read().decode("utf-8", "replace") if small else _Member(shard, m.name)
                    out.append((key, ext.lower(), payload))
                return out
        except tarfile.TarError as e:
            raise InputError(f"--webdataset: {shard} is not a tar file ({e})") from None

    @staticmethod
    def _records(groups: Dict[str, Dict[str, Any]]) -> List[SourceRecord]:
        records = []
        for key, files in groups.items():
            image = next((e for e in WDS_IMAGE_EXTS if e in files), None)
            texts = next((files[e] for e in WDS_TEXT_EXTS if e in files), "")
            label = next((files[e] for e in WDS_LABEL_EXTS if e in files), None)
            name = f"{key}.{image}" if image else key
            records.append(SourceRecord(name, files.get(image), tuple(t.strip() for t in texts.splitlines() if t.strip()),
                                        int(label) if label is not None and label.strip().isdigit() else None))
        records.sort(key=lambda r: r.key)
        return records

    def __len__(self) -> int:
        return len(self.records)

    def image(self, i: int) -> Any:
        """The PIL image of record ``i``.

        Raises:
            InputError: the record has no image member, or its bytes are not an image.
        """
        rec = self.records[i]
        if rec.where is None:
            raise InputError(f"record {rec.key} of the WebDataset has no image ({', '.join(WDS_IMAGE_EXTS)})")
        tar = self._open.get(rec.where.tar)
        if tar is None:  # one handle per shard and process (DataLoader workers open their own)
            tar = self._open[rec.where.tar] = tarfile.open(rec.where.tar)
        return _decode(tar.extractfile(rec.where.name).read(), rec.key)

    def __getstate__(self) -> Dict[str, Any]:
        return {**self.__dict__, "_open": {}}


class HFSource:
    """A Hugging Face ``datasets`` dataset: a ``save_to_disk`` folder (a ``DatasetDict``: its
    ``split``), or Parquet files (a file, a folder of ``*.parquet``, or a glob). The image column
    may be an ``Image`` feature, a ``{"bytes", "path"}`` struct or a path string; images are
    decoded here, one at a time (a bad one is an error row). ``texts``: a string or a list of
    strings per row; ``label``: an int (class names from a ``ClassLabel`` feature).

    Raises:
        InputError: ``datasets`` missing, nothing at ``path``, or a column that does not exist.
    """

    def __init__(self, path: str, *, split: str = "train", image_column: str = "image",
                 text_column: Optional[str] = None, label_column: Optional[str] = None,
                 key_column: Optional[str] = None) -> None:
        ds = _load_hf(path, split)
        for flag, col in (("--image-column", image_column), ("--text-column", text_column),
                          ("--label-column", label_column), ("--key-column", key_column)):
            if col is not None and col not in ds.column_names:
                raise InputError(f"{flag} {col!r} is not a column of {path}; its columns: {', '.join(ds.column_names)}")
        self.image_column = image_column
        feature = ds.features[image_column]
        if type(feature).__name__ == "Image":
            import datasets

            ds = ds.cast_column(image_column, datasets.Image(decode=False))
        self.ds = ds
        names = getattr(ds.features.get(label_column), "names", None) if label_column else None
        self.classes: List[str] = list(names or [])
        keys = self._keys(key_column)
        order = sorted(range(len(ds)), key=lambda i: keys[i])
        texts = ds[text_column] if text_column else [()] * len(ds)
        labels = ds[label_column] if label_column else [None] * len(ds)
        self.records = [SourceRecord(keys[i], i, _texts(texts[i]), labels[i]) for i in order]

    def _keys(self, key_column: Optional[str]) -> List[str]:
        """The keys (unique): the key column, else the image files' names, else row numbers."""
        if key_column:
            keys = [str(k) for k in self.ds[key_column]]
        else:
            col = self.ds.data.column(self.image_column).combine_chunks()
            paths = col.field("path").to_pylist() if hasattr(col, "field") else col.to_pylist()
            names = [Path(p).name if isinstance(p, str) else "" for p in paths]
            if all(names) and len(set(names)) == len(names):
                keys = names
            else:
                keys = [f"{i:08d}" for i in range(len(self.ds))]
        if len(set(keys)) != len(keys):
            raise InputError("--key-column holds duplicate keys: every record needs its own")
        return keys

    def __len__(self) -> int:
        return len(self.records)

    def image(self, i: int) -> Any:
        """The PIL image of record ``i``.

        Raises:
            InputError: no image, or bytes that are not an image.
        """
        rec = self.records[i]
        value = self.ds[rec.where][self.image_column]
        if isinstance(value, dict) and value.get("bytes"):
            return _decode(value["bytes"], rec.key)
        path = value.get("path") if isinstance(value, dict) else value
        if isinstance(path, str) and Path(path).is_file():
            return _decode(Path(path).read_bytes(), rec.key)
        raise InputError(f"record {rec.key} has no image in column {self.image_column!r}")


def _texts(value: Any) -> Tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(str(v) for v in value)


def _load_hf(path: str, split: str) -> Any:
    try:
        import datasets
    except ImportError:
        raise InputError("--hf-dataset needs datasets: pip install 'captum-gradeclip[data]'") from None
    p = Path(path)
    if any(c in path for c in "*?["):
        files = sorted(glob.glob(path))
    elif p.suffix == ".parquet":
        files = [p]
    elif p.is_dir() and not any((p / f).exists() for f in ("state.json", "dataset_dict.json")):
        files = sorted(p.glob("*.parquet"))
    else:
        files = []
    try:
        if files:
            return datasets.load_dataset("parquet", data_files=[str(f) for f in files], split="train")
        ds = datasets.load_from_disk(path)
    except (FileNotFoundError, ValueError) as e:
        raise InputError(f"--hf-dataset {path}: not a save_to_disk folder or Parquet files ({str(e)[:100]})") from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise InputError(f"--hf-split {split!r} is not a split of {path}: {', '.join(ds)}")
        ds = ds[split]
    return ds


def open_source(args: Any) -> Any:
    """The source ``--hf-dataset`` or ``--webdataset`` names.

    Raises:
        InputError: both, or see :class:`HFSource` / :class:`WebDatasetSource`.
    """
    if args.hf_dataset and args.webdataset:
        raise InputError("give --hf-dataset or --webdataset, not both")
    if args.webdataset:
        src = WebDatasetSource(args.webdataset)
    else:
        src = HFSource(args.hf_dataset, split=args.hf_split, image_column=args.image_column,
                       text_column=args.text_column, label_column=args.label_column, key_column=args.key_column)
    if not len(src):
        raise InputError("the dataset holds no records")
    return src


class SourceDataset:
    """``[i] -> (key, pixels (3, H, W), texts)`` of a source's records, for the engine."""

    def __init__(self, source: Any, items: Sequence[Any], to_pixels: Any) -> None:
        self.source, self.items, self.to_pixels = source, list(items), to_pixels

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Tuple[str, Any, Tuple[str, ...]]:
        return self.items[i].image, self.to_pixels([self.source.image(i)])[0], self.items[i].texts


def source_items(args: Any, source: Any) -> List[Any]:
    """explain-dataset's work list over a source: every record against ``--prompts``, against
    ``--class-prompts`` of the class names, or its own texts (the text column / ``.txt``).

    Raises:
        InputError: no texts for a record, or class prompts without class names.
    """
    from .data import WorkItem, read_prompts

    if args.prompts:
        texts = tuple(read_prompts(args.prompts))
        return [WorkItem(r.key, texts) for r in source.records]
    if args.class_prompts:
        if not source.classes:
            raise InputError("--class-prompts needs class names: a ClassLabel --label-column")
        return [WorkItem(r.key, tuple(args.class_prompts.format(c) for c in source.classes)) for r in source.records]
    bare = [r.key for r in source.records if not r.texts]
    if bare:
        raise InputError(f"{len(bare)} record(s) have no texts (e.g. {bare[0]}): give --text-column, or --prompts")
    return [WorkItem(r.key, r.texts) for r in source.records]


def labelled_source(args: Any) -> Tuple[List[str], List[int], Any, List[str]]:
    """``(keys, labels, open(i) -> PIL image, class names)`` for the authors' protocol.

    Raises:
        InputError: a record without a label (``--label-column`` / ``.cls``).
    """
    src = open_source(args)
    missing = [r.key for r in src.records if r.label is None]
    if missing:
        raise InputError(f"{len(missing)} record(s) have no label (e.g. {missing[0]}): give --label-column (or .cls files)")
    labels = [int(r.label) for r in src.records]
    classes = src.classes or [str(c) for c in range(max(labels) + 1)]
    return [r.key for r in src.records], labels, src.image, classes


def keyed_source(args: Any) -> Tuple[List[str], Any]:
    """``(keys, open(i) -> PIL image)`` for ``segment``."""
    src = open_source(args)
    return [r.key for r in src.records], src.image


def add_source_arguments(p: Any) -> None:
    """The flags that read a Hugging Face dataset or WebDataset shards instead of ``--images``."""
    p.add_argument("--hf-dataset", default=None, help="a datasets save_to_disk folder, or Parquet file(s) / glob")
    p.add_argument("--hf-split", default="train", help="the split of a DatasetDict (default train)")
    p.add_argument("--webdataset", default=None, metavar="'SHARDS-{000..009}.tar'", help="WebDataset tar shards")
    p.add_argument("--image-column", default="image")
    p.add_argument("--text-column", default=None, help="a string or list-of-strings column: each image's texts")
    p.add_argument("--label-column", default=None, help="an int column (class index), e.g. for --protocol grad-eclip")
    p.add_argument("--key-column", default=None, help="a unique id column (default: the image file names)")

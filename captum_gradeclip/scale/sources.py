"""Datasets as users store them, for ``explain-dataset``, ``benchmark --images`` and ``segment``:
a Hugging Face ``datasets`` dataset (``--hf-dataset``: a ``save_to_disk`` folder, or Parquet
files with an image column and a text or label column) and WebDataset tar shards
(``--webdataset 'shards-{000..009}.tar'``, read with the standard library's ``tarfile``).

Both are map-style with a fixed order (sorted by key, as the folder reader sorts its files), so
the engine cuts them into the same shards on any number of ranks (shard ``i`` on rank
``i % world``: no duplicates), resumes them, and turns a record that cannot be decoded into an
error row. Keys: the ``--key-column`` value, else the file name the image column recorded, else
the row number (Hugging Face); ``KEY.EXT`` of the image member (WebDataset).

What to read is a :class:`SourceConfig` (the command line builds it: :func:`source_config`).
Images are decoded by the package's one decoder (:func:`captum_gradeclip._io.open_image`: EXIF
orientation, 16-bit scaling, reduced decoding, a pixel limit read from the header), so tar and
Hugging Face rows equal the folder reader's. Every record is accounted for: a duplicate or null
key, a link or directory member, a name or text that is not UTF-8, a null text becomes an error
row; a truncated shard or a column of the wrong type, a one-line :class:`InputError`. Keys are
data, never paths: a job that writes per-record files names them with
:func:`captum_gradeclip._io.safe_relative_name`.
"""

from __future__ import annotations

import glob
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ..errors import InputError

#: Image extensions of WebDataset members (case-insensitive), and where texts / labels are read.
WDS_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp")
WDS_TEXT_EXTS = ("txt", "text", "caption")
WDS_LABEL_EXTS = ("cls", "label")
#: The folder under a job's ``OUT`` where ``datasets`` keeps its Arrow copy of Parquet input.
HF_CACHE = ".hf-cache"


@dataclass(frozen=True)
class SourceConfig:
    """Which dataset to read (the flags of :func:`add_source_arguments`, as a record).

    Attributes:
        hf_dataset: a ``save_to_disk`` folder, a Parquet file, folder or glob (or ``None``).
        webdataset: tar shards, braces expanded (``"s-{000..009}.tar"``), or ``None``.
        split: the split of a ``DatasetDict``. image_column, text_column, label_column,
        key_column: the Hugging Face columns (``None``: not used). cache_dir: where ``datasets``
        writes its Arrow copy of Parquet input (a job's ``OUT/.hf-cache``; ``None``: a temporary
        folder removed at once, the table kept in memory), never the user's HF cache.
    """

    hf_dataset: Optional[str] = None
    webdataset: Optional[str] = None
    split: str = "train"
    image_column: str = "image"
    text_column: Optional[str] = None
    label_column: Optional[str] = None
    key_column: Optional[str] = None
    cache_dir: Optional[Path] = None

    @property
    def given(self) -> bool:
        """Whether a dataset is named at all (else the job reads ``--images``)."""
        return bool(self.hf_dataset or self.webdataset)


def source_config(flags: Mapping[str, Any], out: "Optional[str | Path]" = None) -> SourceConfig:
    """The :class:`SourceConfig` of the flags :func:`add_source_arguments` defines (``vars(args)``),
    with ``datasets``' cache under ``out`` (:data:`HF_CACHE`)."""
    return SourceConfig(flags.get("hf_dataset"), flags.get("webdataset"), flags.get("hf_split") or "train",
                        flags.get("image_column") or "image", flags.get("text_column"), flags.get("label_column"),
                        flags.get("key_column"), Path(out) / HF_CACHE if out is not None else None)


def remove_cache(config: SourceConfig) -> None:
    """Remove ``datasets``' Arrow copy under the job's folder (call once the job is done)."""
    import shutil

    if config.cache_dir is not None and config.cache_dir.name == HF_CACHE:
        shutil.rmtree(config.cache_dir, ignore_errors=True)


def _decode(data: Any, key: str) -> Any:
    """Encoded image bytes (or a binary file) -> 8-bit RGB PIL image, by the package's one decoder
    (:func:`captum_gradeclip._io.open_image`: EXIF, 16 bits, reduced decoding, the pixel limit).

    Raises:
        InputError: not an image PIL can read, or too many pixels (the engine makes it an error row).
    """
    from .._io import open_image

    return open_image(data, name=f"the image of record {key}")


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
    """Where an image member's bytes lie in its shard (read without the tar module)."""

    tar: str
    name: str
    offset: int
    size: int
    compressed: bool = False


@dataclass(frozen=True)
class _Entry:
    """One tar member of a record: its shard, name, extension, payload (text, or a :class:`_Member`)
    and the problem that makes it unusable (a link, a directory, a text that is not UTF-8)."""

    shard: str
    name: str
    ext: str
    payload: Any = None
    problem: Optional[str] = None


@dataclass
class SourceRecord:
    """One record of a source: its ``key``, the image's location, its ``texts`` and ``label``;
    ``problem``: why it cannot be used at all (an error row), ``text_problem``: why its own
    texts cannot (an error row when they are the job's texts)."""

    key: str
    where: Any
    texts: Tuple[str, ...] = ()
    label: Optional[int] = None
    problem: Optional[str] = None
    text_problem: Optional[str] = None


def _member_problem(m: tarfile.TarInfo) -> Optional[str]:
    if m.issym() or m.islnk():
        kind = "a symbolic" if m.issym() else "a hard"
        return f"the member {m.name!r} is {kind} link (to {m.linkname!r}): store the file itself (tar -h)"
    if m.isdir():
        return f"the member {m.name!r} is a directory, not a file"
    if not m.isfile() or m.issparse():
        return f"the member {m.name!r} is not a regular file"
    return None


def _read_text(data: bytes, where: str) -> Tuple[Optional[str], Optional[str]]:
    """A text member's content, or the problem of one that is not UTF-8 (naming its line)."""
    try:
        return data.decode("utf-8-sig"), None
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        return None, f"{where}:{line} is not UTF-8 text (byte {data[e.start]:#04x}); save it as UTF-8"


class WebDatasetSource:
    """Tar shards in WebDataset's layout: files ``KEY.EXT`` grouped by ``KEY`` (the path up to the
    first dot of the file name); the image from ``jpg``/``png``/..., texts from ``txt`` (one per
    line), the label from ``cls``. Only the tar headers (and the small text members) are read up
    front.

    Every member is accounted for: a key that appears twice (in two shards, twice in one, or
    ``k1.png`` beside ``k1.jpg``), a link, a directory or a special file named like a record, a
    name that is not UTF-8, and a record without an image become error rows (``problem``), never
    a silent drop; directories that are only folders of the layout (no record extension) are
    counted in :attr:`skipped`.

    Raises:
        InputError: a shard that does not exist, is not a tar, or is truncated (inside a member's
            header or its data).
    """

    def __init__(self, pattern: str) -> None:
        self.shards = expand_braces(pattern)
        groups: Dict[str, List[_Entry]] = {}
        self.skipped = 0
        for shard in self.shards:
            for key, entry in self._scan(shard):
                if entry is None:
                    self.skipped += 1
                else:
                    groups.setdefault(key, []).append(entry)
        self.records = sorted((r for k, es in groups.items() for r in self._records(k, es)), key=lambda r: r.key)
        self.classes: List[str] = []
        self._open: Dict[str, Any] = {}

    @classmethod
    def _scan(cls, shard: str) -> List[Tuple[str, Optional[_Entry]]]:
        """``(key, entry)`` of every member (``None``: a layout folder), the shard checked whole."""
        path = Path(shard)
        if not path.is_file():
            raise InputError(f"--webdataset: no shard {shard}")
        size = path.stat().st_size
        out = []
        try:
            try:
                tar, compressed = tarfile.open(shard, "r:"), False
            except tarfile.ReadError:  # .tar.gz and the like: offsets are into the decompressed stream
                tar, compressed = tarfile.open(shard, "r:*"), True
            with tar:
                for m in tar:
                    if not compressed and m.offset_data + (m.size if m.isfile() else 0) > size:
                        raise InputError(f"--webdataset: {shard} is truncated inside the member {m.name!r} (it ends at "
                                         f"byte {size}); copy the shard again")
                    out.append(cls._entry(tar, shard, m, compressed))
                if not compressed:
                    cls._check_end(shard, tar.offset, size)
        except (tarfile.TarError, EOFError, OSError) as e:
            raise InputError(f"--webdataset: {shard} is not a tar file, or a truncated one ({type(e).__name__}: "
                             f"{str(e)[:80]})") from None
        return out

    @staticmethod
    def _check_end(shard: str, offset: int, size: int) -> None:
        """``tarfile`` stops silently at a header it cannot read: the bytes there must be the end
        of the archive (zeros) or nothing, else the shard was cut (or damaged) inside a header."""
        with open(shard, "rb") as f:
            f.seek(offset)
            tail = f.read(512)
        if tail.strip(b"\0"):
            raise InputError(f"--webdataset: {shard} is truncated or damaged at byte {offset} (a member header that "
                             "cannot be read); copy the shard again")

    @staticmethod
    def _entry(tar: tarfile.TarFile, shard: str, m: tarfile.TarInfo,
               compressed: bool) -> Tuple[str, Optional[_Entry]]:
        from .data import storable_key

        name = m.name.rstrip("/")
        base = name.rsplit("/", 1)
        stem, _, ext = base[-1].partition(".")
        key, bad_name = storable_key((base[0] + "/" if len(base) == 2 else "") + stem)
        ext = ext.lower()
        problem = bad_name or _member_problem(m)
        if m.isdir() and ext not in WDS_IMAGE_EXTS + WDS_TEXT_EXTS + WDS_LABEL_EXTS:
            return key, None
        if problem is None and ext in WDS_TEXT_EXTS + WDS_LABEL_EXTS:
            text, problem = _read_text(tar.extractfile(m).read(), f"{shard}: {name}")
            return key, _Entry(shard, name, ext, text, problem)
        return key, _Entry(shard, name, ext, _Member(shard, m.name, m.offset_data, m.size, compressed), problem)

    @staticmethod
    def _records(key: str, entries: List[_Entry]) -> List[SourceRecord]:
        """The group ``key``'s records: one per image member (or one without an image)."""
        images = [e for e in entries if e.ext in WDS_IMAGE_EXTS]
        texts = [e for e in entries if e.ext in WDS_TEXT_EXTS]
        labels = [e for e in entries if e.ext in WDS_LABEL_EXTS]
        problem = next((e.problem for e in images if e.problem), None)
        exts = [e.ext for e in entries]
        if len(images) > 1 or len(texts) > 1 or len(labels) > 1 or len(set(exts)) != len(exts):
            where = ", ".join(f"{Path(e.shard).name}: {e.name}" for e in entries)
            problem = f"the key {key!r} is used {len(entries)} times ({where[:300]}); every record needs its own key"
        elif not images:
            problem = (f"record {key} of the WebDataset has no image ({', '.join(WDS_IMAGE_EXTS)}; its members: "
                       f"{', '.join(e.name for e in entries)[:200]})")
        text = texts[0] if texts else None
        lines = tuple(t.strip() for t in text.payload.splitlines() if t.strip()) if text and not text.problem else ()
        label = labels[0].payload if labels and not labels[0].problem else None
        label = int(label) if label is not None and label.strip().isdigit() else None
        return [SourceRecord(f"{key}.{e.ext}" if images else key, e.payload if images else None, lines, label,
                             problem, text.problem if text else None) for e in (images or entries[:1])]

    def __len__(self) -> int:
        return len(self.records)

    def image(self, i: int) -> Any:
        """The PIL image of record ``i``.

        Raises:
            InputError: the record has a problem (see the class), or its bytes are not an image.
        """
        rec = self.records[i]
        if rec.problem:
            raise InputError(rec.problem)
        m = rec.where
        f = self._open.get(m.tar)
        if f is None:  # one handle per shard and process (DataLoader workers open their own)
            f = self._open[m.tar] = tarfile.open(m.tar, "r:*") if m.compressed else open(m.tar, "rb")
        if m.compressed:
            data = f.extractfile(m.name).read()
        else:
            f.seek(m.offset)
            data = f.read(m.size)
        if len(data) != m.size:
            raise InputError(f"the image of record {rec.key} is truncated in {rec.where.tar}")
        return _decode(data, rec.key)

    def __getstate__(self) -> Dict[str, Any]:
        return {**self.__dict__, "_open": {}}


class HFSource:
    """A Hugging Face ``datasets`` dataset: a ``save_to_disk`` folder (a ``DatasetDict``: its
    ``split``), or Parquet files (a file, a folder of ``*.parquet``, or a glob). The image column
    may be an ``Image`` feature, a ``{"bytes", "path"}`` struct or a path string; images are
    decoded here, one at a time (a bad one is an error row). ``texts``: a string or a list of
    strings per row; ``label``: an int (class names from a ``ClassLabel`` feature).

    Every row is accounted for: a null or duplicate key, and a null text (or a null in a texts
    list) make the row an error row (``problem`` / ``text_problem``), never a ``"None"`` text.

    Raises:
        InputError: ``datasets`` missing, nothing at ``path``, a column that does not exist, or a
            text / label column of another type (an int ``--text-column``).
    """

    def __init__(self, path: str, *, split: str = "train", image_column: str = "image",
                 text_column: Optional[str] = None, label_column: Optional[str] = None,
                 key_column: Optional[str] = None, cache_dir: Optional[Path] = None) -> None:
        ds = _load_hf(path, split, cache_dir)
        for flag, col in (("--image-column", image_column), ("--text-column", text_column),
                          ("--label-column", label_column), ("--key-column", key_column)):
            if col is not None and col not in ds.column_names:
                raise InputError(f"{flag} {col!r} is not a column of {path}; its columns: {', '.join(ds.column_names)}")
        _check_types(ds.features, text_column, label_column)
        self.image_column = image_column
        feature = ds.features[image_column]
        if type(feature).__name__ == "Image":
            import datasets

            ds = ds.cast_column(image_column, datasets.Image(decode=False))
        self.ds = ds
        self._images = ds.select_columns([image_column])  # ds[i] would decode every other column (images too)
        names = getattr(ds.features.get(label_column), "names", None) if label_column else None
        self.classes: List[str] = list(names or [])
        keys, problems = self._keys(key_column)
        order = sorted(range(len(ds)), key=lambda i: keys[i])
        texts = ds[text_column] if text_column else [()] * len(ds)
        labels = ds[label_column] if label_column else [None] * len(ds)
        self.records = []
        for i in order:
            own, text_problem = _texts(texts[i], text_column, keys[i])
            self.records.append(SourceRecord(keys[i], i, own, labels[i], problems.get(i), text_problem))

    def _keys(self, key_column: Optional[str]) -> Tuple[List[str], Dict[int, str]]:
        """The keys and the problems of rows whose key is null or not unique: the key column,
        else the image files' names (where all are there and unique), else row numbers."""
        problems: Dict[int, str] = {}
        if key_column:
            values = self.ds[key_column]
            keys = []
            for i, k in enumerate(values):
                if k is None or str(k) == "":
                    problems[i] = f"row {i} has no key (--key-column {key_column!r} is null or empty)"
                    keys.append(f"<row {i}: no key>")
                else:
                    keys.append(str(k))
        else:
            col = self.ds.data.column(self.image_column).combine_chunks()
            paths = col.field("path").to_pylist() if hasattr(col, "field") else col.to_pylist()
            names = [Path(p).name if isinstance(p, str) else "" for p in paths]
            keys = names if all(names) and len(set(names)) == len(names) else [f"{i:08d}" for i in range(len(self.ds))]
        seen: Dict[str, List[int]] = {}
        for i, k in enumerate(keys):
            if i not in problems:
                seen.setdefault(k, []).append(i)
        for k, rows in seen.items():
            if len(rows) > 1:
                for i in rows:
                    problems[i] = (f"the key {k!r} (--key-column {key_column!r}) is on {len(rows)} rows "
                                   f"({', '.join(map(str, rows[:5]))}); every record needs its own key")
        return keys, problems

    def __len__(self) -> int:
        return len(self.records)

    def image(self, i: int) -> Any:
        """The PIL image of record ``i``.

        Raises:
            InputError: the record has a problem, no image, or bytes that are not an image.
        """
        rec = self.records[i]
        if rec.problem:
            raise InputError(rec.problem)
        value = self._images[rec.where][self.image_column]
        if isinstance(value, dict) and value.get("bytes"):
            return _decode(value["bytes"], rec.key)
        path = value.get("path") if isinstance(value, dict) else value
        if isinstance(path, str) and Path(path).is_file():
            return _decode(path, rec.key)
        raise InputError(f"record {rec.key} has no image in column {self.image_column!r}")


def _check_types(features: Any, text_column: Optional[str], label_column: Optional[str]) -> None:
    """A text column of strings or lists of strings, a label column of ints (or a ``ClassLabel``).

    Raises:
        InputError: another type, naming the column, its type and the fix.
    """
    def dtype(f: Any) -> str:
        return str(getattr(f, "dtype", type(f).__name__))

    if text_column is not None:
        f = features[text_column]
        inner = getattr(f, "feature", None)
        if dtype(f) not in ("string", "large_string") and (inner is None or dtype(inner) not in ("string", "large_string")):
            raise InputError(f"--text-column {text_column!r} holds {dtype(inner if inner is not None else f)} values: give "
                             "a column of strings or lists of strings (or --prompts)")
    if label_column is not None:
        f = features[label_column]
        if type(f).__name__ != "ClassLabel" and not dtype(f).startswith(("int", "uint")):
            raise InputError(f"--label-column {label_column!r} holds {dtype(f)} values: give a column of class "
                             "indices (ints) or a ClassLabel")


def _texts(value: Any, column: Optional[str], key: str) -> Tuple[Tuple[str, ...], Optional[str]]:
    """``(texts, problem)`` of a row's text value (a string or a list of strings; a null, or a
    null in the list, is a problem, never the text ``"None"``)."""
    if value is None:
        return (), (f"record {key}: --text-column {column!r} is null" if column else None)
    if isinstance(value, str):
        return (value,), None
    values = list(value)
    nulls = [j for j, v in enumerate(values) if not isinstance(v, str)]
    if nulls:
        return (), f"record {key}: --text-column {column!r} holds a null at item {nulls[0]} of its list"
    return tuple(values), None


def _load_hf(path: str, split: str, cache_dir: Optional[Path] = None) -> Any:
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
            return _load_parquet(datasets, [str(f) for f in files], cache_dir)
        ds = datasets.load_from_disk(path)
    except (FileNotFoundError, ValueError) as e:
        raise InputError(f"--hf-dataset {path}: not a save_to_disk folder or Parquet files ({str(e)[:100]})") from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise InputError(f"--hf-split {split!r} is not a split of {path}: {', '.join(ds)}")
        ds = ds[split]
    return ds


def _load_parquet(datasets: Any, files: List[str], cache_dir: Optional[Path]) -> Any:
    """Parquet files as a ``Dataset``: ``datasets`` writes an Arrow copy of them, kept in
    ``cache_dir`` (a job's ``OUT/.hf-cache``, reused on resume), or without one in a temporary
    folder removed at once (the table then lives in memory); never in the user's HF cache."""
    import tempfile

    if cache_dir is not None:
        return datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=str(cache_dir))
    with tempfile.TemporaryDirectory(prefix="captum-gradeclip-hf-") as tmp:
        return datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=tmp, keep_in_memory=True)


def open_source(config: SourceConfig) -> Any:
    """The source ``config`` names (a :class:`WebDatasetSource` or an :class:`HFSource`).

    Raises:
        InputError: both or neither named, no record, or see :class:`HFSource` / :class:`WebDatasetSource`.
    """
    if config.hf_dataset and config.webdataset:
        raise InputError("give --hf-dataset or --webdataset, not both")
    if config.webdataset:
        src: Any = WebDatasetSource(config.webdataset)
    elif config.hf_dataset:
        src = HFSource(config.hf_dataset, split=config.split, image_column=config.image_column,
                       text_column=config.text_column, label_column=config.label_column,
                       key_column=config.key_column, cache_dir=config.cache_dir)
    else:
        raise InputError("name a dataset: --hf-dataset PATH or --webdataset 'SHARDS-{000..009}.tar'")
    if not len(src):
        raise InputError("the dataset holds no records")
    return src


class SourceDataset:
    """``[i] -> (key, pixels (3, H, W), texts)`` of a source's records, for the engine (a record
    with a problem raises it: an error row)."""

    def __init__(self, source: Any, items: Sequence[Any], to_pixels: Any) -> None:
        self.source, self.items, self.to_pixels = source, list(items), to_pixels

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Tuple[str, Any, Tuple[str, ...]]:
        if self.items[i].problem:
            raise InputError(self.items[i].problem)
        return self.items[i].image, self.to_pixels([self.source.image(i)])[0], self.items[i].texts


def source_items(source: Any, *, prompts: Optional[str] = None, class_prompts: Optional[str] = None,
                 pairs: Optional[str] = None) -> List[Any]:
    """explain-dataset's work list over a source, one item per record (in its order): every
    record against the ``prompts`` file, against ``class_prompts`` (a template) of the class
    names, or its own texts (the text column / ``.txt``). A record with a problem is an item
    with that problem (an error row).

    Raises:
        InputError: no texts for a record, class prompts without class names or a bad template, or
            a ``pairs`` file (it names images under ``--images``; it would be ignored).
    """
    from .data import WorkItem, check_template, read_prompts

    if pairs:
        raise InputError("--pairs names images under --images; with --hf-dataset / --webdataset the texts come from "
                         "--text-column (or KEY.txt members), --prompts or --class-prompts")

    if prompts:
        texts = tuple(read_prompts(prompts))
        return [WorkItem(r.key, texts, r.problem) for r in source.records]
    if class_prompts:
        check_template(class_prompts)
        if not source.classes:
            raise InputError("--class-prompts needs class names: a ClassLabel --label-column")
        texts = tuple(class_prompts.format(c) for c in source.classes)
        return [WorkItem(r.key, texts, r.problem) for r in source.records]
    bare = [r.key for r in source.records if not r.texts and not r.problem and not r.text_problem]
    if bare:
        raise InputError(f"{len(bare)} record(s) have no texts (e.g. {bare[0]}): give --text-column, or --prompts")
    return [WorkItem(r.key, r.texts, r.problem or r.text_problem) for r in source.records]


def labelled_source(config: SourceConfig) -> Tuple[List[str], List[int], Any, List[str]]:
    """``(keys, labels, open(i) -> PIL image, class names)`` for the authors' protocol.

    Raises:
        InputError: a record without a label (``--label-column`` / ``.cls``), or with a problem.
    """
    src = open_source(config)
    bad = [r for r in src.records if r.problem]
    if bad:
        raise InputError(f"{len(bad)} record(s) cannot be used (e.g. {bad[0].problem})")
    missing = [r.key for r in src.records if r.label is None]
    if missing:
        raise InputError(f"{len(missing)} record(s) have no label (e.g. {missing[0]}): give --label-column (or .cls "
                         "files holding a class index)")
    labels = [int(r.label) for r in src.records]
    classes = src.classes or [str(c) for c in range(max(labels) + 1)]
    return [r.key for r in src.records], labels, src.image, classes


def keyed_source(config: SourceConfig) -> Tuple[List[str], Any]:
    """``(keys, open(i) -> PIL image)`` for ``segment`` (a record with a problem raises it when
    opened: an error row)."""
    src = open_source(config)
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

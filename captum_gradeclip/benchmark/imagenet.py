"""The Grad-ECLIP authors' ImageNet protocol (``benchmark --images DIR --protocol grad-eclip``) as a
job on the dataset engine (:mod:`captum_gradeclip.scale`): sharded over torchrun's ranks, resumable.

For every image of a labelled tree ``DIR/CLASS/IMAGE`` (or a Hugging Face / WebDataset source,
:mod:`captum_gradeclip.scale.sources`): a zero-shot classifier built from class names x prompt
templates (the mean of the normalised text embeddings per class, normalised); the image shrunk to
640 px on its shorter side if larger; each method's map explained for the ground-truth class
(``--target gt``) or the prediction (``pred``) at the image's native resolution (resized to a
multiple of the patch size, bicubic, as the authors' ``imgprocess_keepsize``); then
:func:`~captum_gradeclip.metrics.deletion_protocol` and :func:`~captum_gradeclip.metrics.insertion_protocol`
in pixel space. One Parquet row per (image, method) under ``OUT_DIR/curves/``; rank 0 averages.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .._io import read_utf8
from ..errors import InputError

#: Images per shard of the protocol job.
SHARD_SIZE = 32
#: The authors' cap on the shorter side.
MAX_SIDE = 640
#: The curves kept per (image, method).
CURVES = tuple(f"{kind}_top{k}" for kind in ("deletion", "insertion") for k in (1, 5, 10))
Template = Union[str, Callable[[str], str]]


def shrink(image: Any, max_side: int = MAX_SIDE) -> Any:
    """A PIL image whose shorter side exceeds ``max_side``, resized so that it is ``max_side``
    (the authors' ``int(side / scale)`` sizes, PIL's bicubic); others unchanged."""
    w, h = image.size
    if min(w, h) <= max_side:
        return image
    scale = min(w, h) / max_side
    return image.resize((int(w / scale), int(h / scale)), resample=3)  # 3 = BICUBIC


def to_uint8(image: Any) -> Tensor:
    """A PIL RGB image -> ``(3, H, W)`` uint8."""
    import numpy as np

    return torch.from_numpy(np.array(image.convert("RGB"), dtype=np.uint8)).permute(2, 0, 1).contiguous()


def _pil(pixels: Tensor) -> Any:
    from PIL import Image

    return Image.fromarray(pixels.permute(1, 2, 0).numpy())


def read_lines(path: str, flag: str) -> List[str]:
    """The non-empty stripped lines of a text file.

    Raises:
        InputError: no such file, not UTF-8, or empty.
    """
    p = Path(path)
    lines = [ln.strip() for ln in read_utf8(p, flag).splitlines() if ln.strip()]
    if not lines:
        raise InputError(f"{flag} {path} holds no line")
    return lines


def _open_clip_metadata(what: str) -> Any:
    try:
        from open_clip import zero_shot_metadata
    except ImportError:
        raise InputError(f"{what} 'imagenet' reads open_clip's zero-shot metadata: pip install "
                       "'captum-gradeclip[open-clip]', or give a file") from None
    return zero_shot_metadata


def class_names(spec: Optional[str], folders: Sequence[str]) -> List[str]:
    """The class names, in label order: ``None`` -> the folder names (``_`` as spaces);
    ``"imagenet"`` -> open_clip's 1000 ImageNet names; else a file, one name per line.

    Raises:
        InputError: open_clip missing, an unreadable file, or a count that differs from the folders'.
    """
    if spec is None:
        return [f.replace("_", " ") for f in folders]
    names = (list(_open_clip_metadata("--class-names").IMAGENET_CLASSNAMES) if spec == "imagenet"
             else read_lines(spec, "--class-names"))
    if folders and len(names) != len(folders):
        raise InputError(f"--class-names gives {len(names)} names for {len(folders)} classes: one per class, "
                       "in the sorted order of the class folders (label order)")
    return names


def templates(spec: str) -> List[Template]:
    """``"imagenet"`` -> open_clip's 80 OpenAI ImageNet templates; a string with ``{}`` -> that one
    template; else a file, one template (with ``{}``) per line.

    Raises:
        InputError: open_clip missing, an unreadable file, or a template without ``{}``.
    """
    if spec == "imagenet":
        return list(_open_clip_metadata("--templates").OPENAI_IMAGENET_TEMPLATES)
    found = [spec] if "{}" in spec and not Path(spec).is_file() else read_lines(spec, "--templates")
    bad = [t for t in found if "{}" not in t]
    if bad:
        raise InputError(f"--templates: every template needs {{}} for the class name, got {bad[0]!r}")
    return found


def zero_shot_weights(clip: Any, names: Sequence[str], temps: Sequence[Template], chunk: int = 256) -> Tensor:
    """``(C, E)`` normalised class embeddings: per class the mean of its ``M`` normalised prompt
    embeddings (``template(name)``), normalised (the authors' ``build_zero_shot_classifier``)."""
    prompts = [t(c) if callable(t) else t.format(c) for c in names for t in temps]
    embeds = torch.cat([clip.image_similarity(*clip.tokens(prompts[s:s + chunk])).text_embeds.float()
                        for s in range(0, len(prompts), chunk)])
    mean = embeds.reshape(len(names), len(temps), -1).mean(1)
    return mean / mean.norm(dim=-1, keepdim=True)


def zero_shot_forward(clip: Any, weights: Tensor) -> Any:
    """The forward function ``pixels (N, 3, H, W) -> (N, C)``: cosine with the class embeddings
    (the model's own similarity module with ``text_embeds`` set to ``weights (C, E)``; images of
    another size than the model's need a tower that interpolates its position embeddings)."""
    ids, mask = clip.tokens(["a"])
    sim = clip.image_similarity(ids, mask)
    sim.text_embeds = weights.to(sim.text_embeds.dtype)
    if hasattr(sim, "interpolate_pos_encoding"):  # Hugging Face towers: native-resolution inputs
        sim.interpolate_pos_encoding = True
    return sim


def mean_std(clip: Any) -> Tuple[Tensor, Tensor]:
    """The model's pixel normalisation ``(3,)`` mean and std, read off its own preprocessing of a
    black and a white image."""
    from PIL import Image

    lo, hi = clip.pixels([Image.new("RGB", (64, 64), (0, 0, 0)), Image.new("RGB", (64, 64), (255, 255, 255))])
    lo, hi = lo[:, 32, 32], hi[:, 32, 32]
    std = 1.0 / (hi - lo)
    return -lo * std, std


@dataclass(frozen=True)
class MapInput:
    """How the maps' inputs are made from ``(N, 3, H, W)`` uint8 images: ``native`` (the image
    resized to multiples of ``patch``, bicubic, the authors' ``imgprocess_keepsize``) or a fixed
    ``size`` (the whole image squashed to the model's square input)."""

    mean: Tensor
    std: Tensor
    patch: int
    size: Optional[int] = None

    def __call__(self, images: Tensor) -> Tensor:
        import numpy as np

        h, w = images.shape[-2:]
        if self.size:
            nh = nw = self.size
        else:
            nh, nw = (max(1, int(v / self.patch + 0.5)) * self.patch for v in (h, w))
        out = [torch.from_numpy(np.array(_pil(x).resize((nw, nh), resample=3), dtype=np.float32)) for x in images]
        x = torch.stack(out).permute(0, 3, 1, 2) / 255.0
        return (x - self.mean[:, None, None]) / self.std[:, None, None]


def pixel_classifier(clip: Any, forward: Any) -> Callable[[Tensor], Tensor]:
    """``(S, 3, H, W) uint8 -> (S, C)``: the model's own preprocessing, then ``forward``."""
    return lambda images: forward(clip.pixels([_pil(x) for x in images]))


@dataclass(frozen=True)
class LabelledImages:
    """A labelled image source: ``keys`` (sorted work order), ``labels`` (class indices) and
    ``open(i) -> PIL image``. :func:`folder_source` builds one from ``DIR/CLASS/IMAGE``; the
    readers of :mod:`captum_gradeclip.scale.sources` build others."""

    keys: List[str]
    labels: List[int]
    open: Callable[[int], Any]
    classes: List[str]


def folder_source(root: Path) -> LabelledImages:
    """``root/CLASS/IMAGE`` (recursive under each class): labels in sorted folder order.

    Raises:
        InputError: not a folder, or no class folder with images.
    """
    from ..scale.data import scan_images

    files = [f for f in scan_images(root) if "/" in f]
    classes = sorted({f.split("/", 1)[0] for f in files})
    if not classes:
        raise InputError(f"no class folders with images under {root} (expected DIR/CLASS/IMAGE)")
    index = {c: i for i, c in enumerate(classes)}
    return LabelledImages(files, [index[f.split("/", 1)[0]] for f in files], _FolderOpen(root, files), classes)


@dataclass(frozen=True)
class _FolderOpen:
    """``i -> PIL image`` of ``root / files[i]`` (picklable, for DataLoader workers)."""

    root: Path
    files: List[str]

    def __call__(self, i: int) -> Any:
        from .._io import open_image

        return open_image(str(self.root / self.files[i]))


def round_robin(labels: Sequence[int], n: Optional[int]) -> List[int]:
    """The first ``n`` indices (all for ``None``) taking one image per class in turn, so that a
    short run covers the classes (within a class, in the source's order)."""
    seen: Dict[int, int] = {}
    rank = []
    for i, c in enumerate(labels):
        rank.append((seen.get(c, 0), c, i))
        seen[c] = seen.get(c, 0) + 1
    order = [i for _, _, i in sorted(rank)]
    return order[:n] if n else order


class ProtocolImages:
    """The job's dataset: ``[j] -> (key, (3, H, W) uint8 shrunk to 640 px, (str(label),))``.
    A file that cannot be read raises (the engine makes it an error row)."""

    def __init__(self, source: LabelledImages, indices: Sequence[int]) -> None:
        self.source, self.indices = source, list(indices)
        self.items = [_Item(source.keys[i]) for i in self.indices]  # keys for error rows

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int) -> Tuple[str, Tensor, Tuple[str]]:
        i = self.indices[j]
        return self.source.keys[i], to_uint8(shrink(self.source.open(i))), (str(self.source.labels[i]),)


@dataclass(frozen=True)
class _Item:
    image: str


class ProtocolExplainer:
    """A batch explainer for the engine: for ``images (N, 3, H, W) uint8`` and ``texts`` (each
    ``[str(label)]``), one row per (image, method): label, prediction, the explained target, the
    explanation and protocol times, the six curves ``(P,)`` and their AUCs.

    Args:
        forward: ``pixels -> (N, C)`` zero-shot cosine (:func:`zero_shot_forward`).
        classify: ``(S, 3, H, W) uint8 -> (S, C)`` (:func:`pixel_classifier`).
        methods: name -> ``(pixels, targets (N,)) -> (N, 1, h, w)`` maps.
        map_input: ``(N, 3, H, W) uint8 -> pixels`` for the maps (:class:`MapInput`).
        target: ``"gt"`` or ``"pred"``.
    """

    splits_texts = False

    def __init__(self, forward: Any, classify: Callable[[Tensor], Tensor], methods: Dict[str, Any],
                 map_input: Callable[[Tensor], Tensor], target: str) -> None:
        self.forward, self.classify, self.methods = forward, classify, methods
        self.map_input, self.target = map_input, target

    def config(self) -> Dict[str, Any]:
        return {"protocol": "grad-eclip", "methods": list(self.methods), "target": self.target}

    def __call__(self, images: Tensor, texts: Sequence[Sequence[str]]) -> List[List[Dict[str, Any]]]:
        labels = torch.tensor([int(t[0]) for t in texts])
        with torch.no_grad():
            pred = self.classify(images).argmax(1)
        targets = labels if self.target == "gt" else pred
        pixels = self.map_input(images)
        rows: List[List[Dict[str, Any]]] = [[] for _ in range(len(images))]
        for name, fn in self.methods.items():
            t0 = time.perf_counter()
            maps = fn(pixels, targets).detach().float()
            seconds = (time.perf_counter() - t0) / len(images)
            for n in range(len(images)):
                rows[n].append(self._row(name, images[n], maps[n].sum(0), int(labels[n]), int(pred[n]),
                                         int(targets[n]), seconds))
        return rows

    def _row(self, name: str, image: Tensor, attribution: Tensor, label: int, pred: int, target: int,
             seconds: float) -> Dict[str, Any]:
        from ..metrics import deletion_protocol, insertion_protocol

        g = torch.Generator().manual_seed(zlib.crc32(image.numpy().tobytes()))  # same noise on any rank
        t0 = time.perf_counter()
        d = deletion_protocol(image, attribution, self.classify, target, generator=g)
        i = insertion_protocol(image, attribution, self.classify, target)
        row = {"method": name, "text": str(label), "label": label, "pred": pred, "target": target,
               "seconds": seconds, "protocol_seconds": time.perf_counter() - t0}
        for kind, res in (("deletion", d), ("insertion", i)):
            for j, k in enumerate((1, 5, 10)):
                row[f"{kind}_top{k}"] = res.hits[:, j]
                row[f"{kind}_top{k}_auc"] = float(res.auc[j])
        return row

    @staticmethod
    def to_table(rows: Sequence[Dict[str, Any]]) -> Any:
        """The rows as Arrow: image, method, label, pred, target (int32), seconds, protocol_seconds,
        the AUCs (float32) and the curves (list<float32>)."""
        import pyarrow as pa

        ints = ["label", "pred", "target"]
        floats = ["seconds", "protocol_seconds"] + [f"{c}_auc" for c in CURVES]
        fields = [("image", pa.string()), ("method", pa.string())] + [(c, pa.int32()) for c in ints]
        fields += [(c, pa.float32()) for c in floats] + [(c, pa.list_(pa.float32())) for c in CURVES]
        cols = {c: [r[c] for r in rows] for c, _ in fields if c not in CURVES}
        cols.update({c: [r[c].tolist() for r in rows] for c in CURVES})
        return pa.Table.from_pydict(cols, schema=pa.schema(fields))


def aggregate(curves: Path, keys: Sequence[str]) -> Dict[str, Dict[str, Any]]:
    """method -> mean curves (the work list's order: the same numbers on any number of ranks),
    mean AUCs, the clean top-1 accuracy, the images, and the mean times in ms per image."""
    import pyarrow.parquet as pq

    order = {k: i for i, k in enumerate(keys)}
    per: Dict[str, List[Tuple[int, Dict[str, Any]]]] = {}
    for f in sorted(curves.glob("shard-*.parquet")):
        for r in pq.read_table(f).to_pylist():
            per.setdefault(r["method"], []).append((order[r["image"]], r))
    out = {}
    for name, rows in per.items():
        rs = [r for _, r in sorted(rows, key=lambda x: x[0])]
        res: Dict[str, Any] = {"images": len(rs), "accuracy_top1": sum(r["label"] == r["pred"] for r in rs) / len(rs),
                               "ms_explain": 1000 * sum(r["seconds"] for r in rs) / len(rs),
                               "ms_protocol": 1000 * sum(r["protocol_seconds"] for r in rs) / len(rs)}
        for c in CURVES:
            res[f"{c}_auc"] = sum(r[f"{c}_auc"] for r in rs) / len(rs)
            res[c] = torch.tensor([r[c] for r in rs]).mean(0).tolist()
        out[name] = res
    return out


def _source(args: Any) -> LabelledImages:
    """The labelled images ``--images`` (or, where given, ``--hf-dataset`` / ``--webdataset``) name."""
    if getattr(args, "hf_dataset", None) or getattr(args, "webdataset", None):
        from ..scale.sources import labelled_source

        return LabelledImages(*labelled_source(args))
    if not args.images:
        raise InputError("--protocol grad-eclip needs labelled images: --images DIR (DIR/CLASS/IMAGE), "
                       "--hf-dataset or --webdataset")
    return folder_source(Path(args.images))


def _config(args: Any, keys: Sequence[str], names: Sequence[str], temps: Sequence[Template]) -> Dict[str, Any]:
    import hashlib
    import json

    digest = hashlib.sha256(json.dumps(list(keys)).encode()).hexdigest()
    return {"protocol": "grad-eclip", "model": {"hf": args.model, "open_clip": args.open_clip},
            "methods": args.methods, "target": args.target, "map_input": args.map_input,
            "classes": list(names), "templates": [t if isinstance(t, str) else t("{}") for t in temps],
            "images_sha256": digest}


def map_input_for(clip: Any, kind: str) -> MapInput:
    """The :class:`MapInput` of ``kind`` (``"native"`` or ``"model"``) for a loaded CLIP."""
    from PIL import Image

    mean, std = mean_std(clip)
    size = None if kind == "native" else int(clip.pixels([Image.new("RGB", (97, 97))]).shape[-1])
    return MapInput(mean, std, int(clip.patch_size), size)


def run_protocol(args: Any) -> Optional[Dict[str, Any]]:
    """The protocol on this rank's shards of ``--images`` (``--n`` images, one class after the
    other in turn); rank 0 returns the results (other ranks ``None``).

    Raises:
        InputError: bad inputs, no image readable, or another job's curves in ``--out-dir``.
    """
    from .. import distributed as dist
    from ..models import load
    from ..scale.engine import job_config, prepared, run
    from ..scale.store import require_pyarrow
    from .methods import image_methods, select

    require_pyarrow("the grad-eclip protocol")
    source = _source(args)
    names, temps = class_names(args.class_names, source.classes), templates(args.templates)
    dataset = ProtocolImages(source, round_robin(source.labels, args.n))
    keys = [it.image for it in dataset.items]
    out = Path(args.out_dir) / "curves"
    with dist.session("cpu") as ranks:
        with prepared(out, job_config(_config(args, keys, names, temps), len(dataset), SHARD_SIZE, args.batch),
                      ranks):  # a model that does not load leaves no job behind
            clip = load(args.model, args.open_clip)
            forward = zero_shot_forward(clip, zero_shot_weights(clip, names, temps))
            explainer = ProtocolExplainer(forward, pixel_classifier(clip, forward),
                                          select(image_methods(clip, forward), args.methods),
                                          map_input_for(clip, args.map_input), args.target)
        summary = run(dataset, explainer, out, ranks, batch_size=args.batch, shard_size=SHARD_SIZE, num_workers=1,
                      progress=False)
    if ranks.rank != 0:
        return None
    if summary["pairs"] == 0:
        raise InputError(f"none of the {len(dataset)} images could be read or explained (see {out / 'errors.jsonl'})")
    return dict(protocol="grad-eclip", images=len(keys), errors=summary["errors"], classes=len(names),
                templates=len(temps), target=args.target, map_input=args.map_input, world_size=ranks.world,
                curves=str(out), image=aggregate(out, keys))


def table(res: Dict[str, Any]) -> str:
    """The method x {deletion, insertion} x {top-1, top-5, top-10} AUC table, in markdown."""
    head = ["method", "acc. top-1"] + [f"{k[:3]}. top-{n} AUC {'↓' if k == 'deletion' else '↑'}"
                                        for k in ("deletion", "insertion") for n in (1, 5, 10)]
    lines = ["| " + " | ".join(head) + " | ms explain / img | ms protocol / img |",
             "|---" + "|---:" * (len(head) + 1) + "|"]
    for name, r in res["image"].items():
        vals = [f"{r['accuracy_top1']:.3f}"] + [f"{r[c + '_auc']:.3f}" for c in CURVES]
        lines.append(f"| {name} | " + " | ".join(vals) + f" | {r['ms_explain']:.1f} | {r['ms_protocol']:.1f} |")
    return "\n".join(lines)


def figure(res: Dict[str, Any], path: Path) -> None:
    """Top-1 accuracy against the share of pixels deleted / inserted, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 5.2), sharey=True)
    x_del = [0.05 * i for i in range(11)]
    x_ins = [0.05 * i for i in range(1, 11)] + [1.0]
    colours = plt.get_cmap("tab20").colors
    for j, (name, r) in enumerate(res["image"].items()):
        style = dict(marker=".", color=colours[j % 20], label=name, lw=2.2 if "Grad-ECLIP" in name else 1.2,
                     ls="-" if "Grad-ECLIP" in name else "--")
        axes[0].plot(x_del, r["deletion_top1"], **style)
        axes[1].plot(x_ins, r["insertion_top1"], **style)
    for ax, t in zip(axes, ("deletion (random RGB): lower is better", "insertion (black canvas): higher is better")):
        ax.set_title(t, fontsize=10)
        ax.set_xlabel("share of the pixels deleted / inserted")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("top-1 accuracy")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=4, fontsize=7, frameon=False)
    fig.suptitle(f"the Grad-ECLIP authors' protocol: {res['images']} images, target {res['target']}")
    fig.tight_layout(rect=(0, 0.17, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cmd_protocol(args: Any) -> None:
    """``benchmark --protocol grad-eclip``: run, then write ``benchmark.json``, ``.md``, ``.png``."""
    import json

    res = run_protocol(args)
    if res is None:
        return
    out = Path(args.out_dir)
    md = table(res)
    (out / "benchmark.json").write_text(json.dumps(res, indent=1))
    (out / "benchmark.md").write_text(md + "\n")
    figure(res, out / "benchmark.png")
    print(md)
    print(f"\nwrote {out / 'benchmark.json'}, {out / 'benchmark.md'}, {out / 'benchmark.png'}")

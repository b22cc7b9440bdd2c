"""Study 2: what CLIP localises by category of prompt, and where it fails.

A probe is an (image, prompt, target region) with a category; most also carry a *distractor*, a
prompt that should score lower (for ``absent`` probes the prompt itself names nothing in the
image and the distractor is a prompt that is present, so "correct" means the distractor scores
above the prompt). For every probe this module measures, from the image maps of the prompt
(and distractor) by Grad-ECLIP and by one baseline (GAME, Chefer et al.):

- the model's own verdict: the true prompt above the false one (``correct``);
- the standard pointing game and the energy pointing game of the map on the target
  (:mod:`captum_gradeclip.metrics`), so a failure can be told apart as CLIP's (wrong verdict)
  or the explanation's (right verdict, map elsewhere);
- the map's concentration ``max / mean`` and its largest energy share on one object of the
  scene (how confident the map *looks*: compared between absent and present prompts);
- for ``binding`` (a scene with, say, a red square and a blue circle, the swapped prompt
  "a red circle"): the swapped prompt's energy shares on the colour-matching object, on the
  shape-matching one and elsewhere (they sum to 1).

On ShapesCLIP the suite is generated with exact masks by :func:`shapes_suite` from the
held-out seeds :data:`ATTRIBUTES_SEED_START` ... (see there); other models read a JSON-lines
probe file (:mod:`.probes`) or generate the probes from COCO instance annotations
(:func:`captum_gradeclip.analysis.coco.instance_probes`: count, size and position included).
Intervals are a cluster bootstrap over images (an image's probes resampled together). Categories ShapesCLIP's vocabulary cannot express are listed in
:data:`NOT_EXPRESSIBLE` and reported as "n/a", never approximated with words it never saw.

Dimension letters: T texts, h, w the map's grid, H, W the model input's pixels, R regions.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..metrics import energy_pointing_game, pointing_game
from ..shapes.seeds import SEEDS
from .stats import Interval, bootstrap_ci

if TYPE_CHECKING:  # pragma: no cover
    from ..models import LoadedCLIP
    from ..shapes import Scene

__all__ = [
    "ATTRIBUTES_SEED_START", "BINDING_SEED_START", "CATEGORIES", "MEASURES", "METHODS", "NOT_EXPRESSIBLE", "Probe",
    "ProbeRow", "SceneProbes", "concentration", "energy_shares", "explain_scene", "from_job", "markdown_table", "measure",
    "score_probe", "shapes_suite", "summarize", "to_input_geometry",
]

#: The generated suite's three-object scenes use seeds from here: the range ``analysis-attributes``
#: of :mod:`captum_gradeclip.shapes.seeds`, used by nothing else.
ATTRIBUTES_SEED_START = SEEDS["analysis-attributes"].start
#: The binding category's two-object scenes: the range ``analysis-binding``.
BINDING_SEED_START = SEEDS["analysis-binding"].start
_SEED_SPAN = len(SEEDS["analysis-attributes"])

#: Every category a probe may have (a probe file may use any of them; "other" for the rest).
CATEGORIES: Tuple[str, ...] = ("object", "colour", "colour+shape", "binding", "two objects", "absent",
                               "count", "size", "position", "other")

#: Categories ShapesCLIP's captions cannot express, and why (its vocabulary: "a", "an", "and",
#: 8 colours, 6 shapes; captions "a red circle [and a blue square ...]").
NOT_EXPRESSIBLE: Dict[str, str] = {
    "count": "n/a: no number words (\"two\", \"three\") in ShapesCLIP's vocabulary, and no scene holds two equal objects",
    "size": "n/a: no size words (\"small\", \"large\") in ShapesCLIP's vocabulary",
    "position": "n/a: no position words (\"left\", \"top\") in ShapesCLIP's vocabulary",
}

#: The explanation methods compared: Grad-ECLIP (the image tower's last attention layer) and
#: GAME (all its attention layers).
METHODS: Tuple[str, ...] = ("grad_eclip", "game")
#: What is measured on each method's maps of a probe (columns ``<method>_<measure>`` of the rows).
MEASURES: Tuple[str, ...] = ("pointing", "energy", "concentration", "best_object_energy",
                             "share_colour", "share_shape", "share_elsewhere")


@dataclass
class Probe:
    """One probe.

    Attributes:
        probe_id: unique key of the probe.
        image: the image's key (``"seed:800003"`` or the probe file's path).
        category: one of :data:`CATEGORIES`.
        prompt: the text explained.
        distractor: the false prompt it is compared with (for ``absent``: a present prompt), or ``None``.
        target: ``(H, W)`` bool region at the model input's pixels, or ``None`` (``absent``).
        objects: ``(R, H, W)`` bool masks of every object of the scene, or ``None``: for the
            largest energy share on one object.
        colour_match, shape_match: ``binding`` only: ``(H, W)`` bool masks of the object whose
            colour (shape) the *distractor* names.
    """

    probe_id: str
    image: str
    category: str
    prompt: str
    distractor: Optional[str] = None
    target: Optional[Tensor] = None
    objects: Optional[Tensor] = None
    colour_match: Optional[Tensor] = None
    shape_match: Optional[Tensor] = None

    def texts(self) -> List[str]:
        """The prompt and (if any) the distractor."""
        return [self.prompt] + ([self.distractor] if self.distractor is not None else [])


@dataclass
class SceneProbes:
    """The probes of one image. ``pixels``: ``(3, H, W)``, the model's input; ``image``: the PIL
    image (for the figure)."""

    key: str
    pixels: Tensor
    probes: List[Probe]
    image: object = None


@dataclass
class ProbeRow:
    """One probe's measurements (a row of ``rows.parquet``). Per method ``m`` of :data:`METHODS`
    the dict ``maps[m]`` holds ``pointing`` (bool), ``energy``, ``concentration``,
    ``best_object_energy``, and for binding ``share_colour``, ``share_shape``, ``share_elsewhere``
    (``None`` where not defined). ``error``: why the probe could not be measured (then the
    measurements are ``None``)."""

    probe_id: str
    image: str
    category: str
    prompt: str
    distractor: Optional[str]
    score: Optional[float] = None
    distractor_score: Optional[float] = None
    correct: Optional[bool] = None
    maps: Dict[str, Dict[str, Optional[float]]] = field(default_factory=dict)
    error: Optional[str] = None

    def flat(self) -> Dict[str, object]:
        """The row as flat columns: ``grad_eclip_pointing``, ``game_energy``, ..."""
        out = {k: getattr(self, k) for k in ("probe_id", "image", "category", "prompt", "distractor",
                                             "score", "distractor_score", "correct", "error")}
        for m in METHODS:
            for k in MEASURES:
                out[f"{m}_{k}"] = self.maps.get(m, {}).get(k)
        return out


# ---- measures of one map -----------------------------------------------------------------
def concentration(attribution: Tensor) -> float:
    """``max / mean`` of a non-negative map ``(h, w)`` (negatives clamped to 0): 1 for a flat
    map, ``h * w`` for one hot patch; NaN for an all-zero map (no peak to speak of)."""
    a = attribution.detach().double().clamp_min(0)
    mean = float(a.mean())
    return float(a.max()) / mean if mean > 0 else math.nan


def energy_shares(attribution: Tensor, regions: Tensor) -> Tensor:
    """The share of a map's positive energy in each of ``R`` disjoint regions and elsewhere.

    Args:
        attribution: ``(h, w)`` map (upsampled bilinearly to the regions' ``H x W``, as the
            metrics do).
        regions: ``(R, H, W)`` bool, disjoint, none empty.

    Returns:
        ``(R + 1,)`` float64 summing to 1 (the last entry: elsewhere); all NaN for a map with
        no positive value.

    Raises:
        ValueError: overlapping or empty regions, or a map holding NaN / Inf.
    """
    if (regions.sum(0) > 1).any():
        raise ValueError("energy_shares needs disjoint regions; these overlap")
    n = regions.shape[0]
    inside = energy_pointing_game(attribution[None].expand(n, *attribution.shape), regions).double()
    if not bool(attribution.detach().clamp_min(0).sum() > 0):
        return torch.full((n + 1,), math.nan, dtype=torch.float64)
    return torch.cat([inside, (1 - inside.sum()).clamp_min(0)[None]])


def _best_object_energy(attribution: Tensor, objects: Optional[Tensor]) -> Optional[float]:
    if objects is None or not bool(attribution.clamp_min(0).sum() > 0):
        return None
    return float(energy_pointing_game(attribution[None].expand(len(objects), *attribution.shape), objects).max())


def _map_measures(probe: Probe, prompt_map: Tensor, distractor_map: Optional[Tensor]) -> Dict[str, Optional[float]]:
    """The measures of one method's maps ``(h, w)`` of a probe's prompt and distractor."""
    out: Dict[str, Optional[float]] = dict(pointing=None, energy=None)
    if probe.target is not None:
        out["pointing"] = bool(pointing_game(prompt_map[None, None], probe.target[None])[0])
        out["energy"] = float(energy_pointing_game(prompt_map[None, None], probe.target[None])[0])
    c = concentration(prompt_map)
    out["concentration"] = None if math.isnan(c) else c
    out["best_object_energy"] = _best_object_energy(prompt_map, probe.objects)
    if probe.category == "binding" and probe.colour_match is not None and distractor_map is not None:
        s = energy_shares(distractor_map, torch.stack([probe.colour_match, probe.shape_match]))
        ok = not bool(torch.isnan(s).any())
        out.update(share_colour=float(s[0]) if ok else None, share_shape=float(s[1]) if ok else None,
                   share_elsewhere=float(s[2]) if ok else None)
    return out


def score_probe(probe: Probe, scores: Tensor, maps: Dict[str, Tensor], index: Dict[str, int]) -> ProbeRow:
    """A probe's row from its image's scores and maps.

    Args:
        scores: ``(T,)`` the model's scores of the image's texts.
        maps: method name -> ``(T, h, w)`` maps of the same texts.
        index: text -> its position in ``T``.
    """
    row = ProbeRow(probe.probe_id, probe.image, probe.category, probe.prompt, probe.distractor)
    t = index[probe.prompt]
    row.score = float(scores[t])
    d = index.get(probe.distractor) if probe.distractor is not None else None
    if d is not None:
        row.distractor_score = float(scores[d])
        true, false = (row.distractor_score, row.score) if probe.category == "absent" else (row.score, row.distractor_score)
        row.correct = true > false
    for m, mm in maps.items():
        row.maps[m] = _map_measures(probe, mm[t], None if d is None else mm[d])
    return row


# ---- explaining a scene's texts in one call per method -------------------------------------
def explain_scene(clip: "LoadedCLIP", scene: SceneProbes) -> Tuple[Dict[str, int], Tensor, Dict[str, Tensor]]:
    """Every text of a scene's probes, explained by each method of :data:`METHODS` in ONE
    ``attribute_all`` call (one forward, one batched backward).

    Returns:
        ``(index, scores, maps)``: text -> position, ``scores (T,)`` the model's cosine
        similarities, ``maps`` method -> ``(T, h, w)``.
    """
    from .. import ImageGradECLIP
    from ..baselines import GAME
    from ..scale.explain import attribute_with_scores

    texts = list(dict.fromkeys(t for p in scene.probes for t in p.texts()))
    ids, mask = clip.tokens(texts)
    sim = clip.image_similarity(ids, mask)
    x = scene.pixels[None]
    ge, scores = attribute_with_scores(ImageGradECLIP(sim, clip.image_layers[-1]), x)  # the explained forward's scores
    maps = {"grad_eclip": ge[0], "game": GAME(sim, clip.image_layers).attribute_all(x)[0]}
    scores = scores[0]
    return {t: i for i, t in enumerate(texts)}, scores, maps


def from_job(scene: SceneProbes, job: Dict[Tuple[str, str], Dict[str, object]]) -> Tuple[Dict[str, int], Tensor, Dict[str, Tensor]]:
    """A scene's texts read from finished engine jobs instead of computed: Grad-ECLIP maps and
    scores (an ``explain-dataset`` job), and GAME's where the rows hold a ``game_map``
    (:func:`.attributes_engine.read_jobs`).

    Args:
        job: ``(image key, text) -> row`` with ``map (h, w)``, ``score`` and optionally
            ``game_map (h, w)`` (e.g. from :func:`captum_gradeclip.scale.read_maps`).

    Returns:
        as :func:`explain_scene`, ``maps`` holding ``"grad_eclip"`` (and ``"game"``).

    Raises:
        KeyError: the job has no row for one of the scene's texts.
    """
    texts = list(dict.fromkeys(t for p in scene.probes for t in p.texts()))
    missing = [t for t in texts if (scene.key, t) not in job]
    if missing:
        raise KeyError(f"the --maps job has no row for image {scene.key!r}, text {missing[0]!r}: run explain-dataset "
                       "--pairs on this command's job_pairs.jsonl")
    rows = [job[scene.key, t] for t in texts]
    scores = torch.tensor([float(r["score"]) for r in rows])
    maps = {"grad_eclip": torch.stack([r["map"] for r in rows])}
    if all(r.get("game_map") is not None for r in rows):  # the engine's GAME job (attributes_engine)
        maps["game"] = torch.stack([r["game_map"] for r in rows])
    return {t: i for i, t in enumerate(texts)}, scores, maps


def measure(clip: "LoadedCLIP", scenes: Iterable[SceneProbes],
            job: Optional[Dict[Tuple[str, str], Dict[str, object]]] = None,
            keep: int = 12) -> Tuple[List[ProbeRow], Dict[str, Dict[str, object]]]:
    """Rows of every probe of ``scenes``, one scene at a time (an iterator is read once, so a
    large probe file is never held in memory): maps computed by :func:`explain_scene`, or read
    from ``job`` by :func:`from_job` (a scene the job lacks gives error rows).

    Returns:
        ``(rows, kept)``: ``kept`` holds, for the figure, the first ``keep`` scenes of each
        category: scene key -> ``{"scene": SceneProbes, "index": text -> position, method -> (T, h, w)}``.
    """
    rows: List[ProbeRow] = []
    kept: Dict[str, Dict[str, object]] = {}
    per_cat: Dict[str, int] = {}
    for sc in scenes:
        try:
            index, scores, maps = explain_scene(clip, sc) if job is None else from_job(sc, job)
        except KeyError as e:
            rows.extend(ProbeRow(p.probe_id, p.image, p.category, p.prompt, p.distractor, error=e.args[0])
                        for p in sc.probes)
            continue
        rows.extend(score_probe(p, scores, maps, index) for p in sc.probes)
        cats = {p.category for p in sc.probes}
        if any(per_cat.get(c, 0) < keep for c in cats):
            kept[sc.key] = dict(maps, index=index, scene=sc)
            for c in cats:
                per_cat[c] = per_cat.get(c, 0) + 1
    return rows, kept


# ---- the ShapesCLIP suite ------------------------------------------------------------------
def _distinct_scenes(n: int, n_objects: int, start: int) -> List[Tuple[int, "Scene"]]:
    """The first ``n`` scenes of seeds ``start ...`` whose ``n_objects`` objects have distinct
    colours and distinct shapes, all visible (so "a circle" and "a red" name one object)."""
    from ..shapes import render_scene

    out = []
    for seed in range(start, start + _SEED_SPAN):
        sc = render_scene(seed=seed, n_objects=n_objects)
        if (len({o.colour for o in sc.objects}) == n_objects and len({o.shape for o in sc.objects}) == n_objects
                and bool(sc.masks.flatten(1).sum(1).min() >= 16)):
            out.append((seed, sc))
            if len(out) == n:
                return out
    raise ValueError(f"only {len(out)} usable {n_objects}-object scenes in seeds {start}-{start + _SEED_SPAN - 1}, "
                     f"asked for {n}: ask for fewer scenes")


def _phrase(colour: Optional[str], shape: Optional[str]) -> str:
    """ShapesCLIP's phrasing: ``"a red circle"``; with one word dropped ``"a red"`` / ``"a circle"``."""
    from ..shapes.scenes import article

    words = [w for w in (colour, shape) if w]
    return f"{article(words[0])} {' '.join(words)}"


def _three_object_probes(seed: int, scene: "Scene") -> List[Probe]:
    """object, colour, colour+shape, two objects and absent probes of one three-object scene
    (the target and the absent words drawn from ``random.Random(seed)``)."""
    from ..shapes import COLOUR_NAMES, SHAPES

    rng = random.Random(seed)
    objs, masks, key = scene.objects, scene.masks, f"seed:{seed}"
    t = rng.randrange(len(objs))
    u = rng.choice([i for i in range(len(objs)) if i != t])
    c, s = objs[t].colour, objs[t].shape
    ca = rng.choice([x for x in COLOUR_NAMES if x not in {o.colour for o in objs}])
    sa = rng.choice([x for x in SHAPES if x not in {o.shape for o in objs}])
    hard = _phrase(ca, s) if rng.random() < 0.5 else _phrase(c, sa)
    mk = lambda cat, prompt, dis, target: Probe(f"{key}/{cat}", key, cat, prompt, dis, target, masks)  # noqa: E731
    return [
        mk("object", _phrase(None, s), _phrase(None, sa), masks[t]),
        mk("colour", _phrase(c, None), _phrase(ca, None), masks[t]),
        mk("colour+shape", objs[t].prompt, hard, masks[t]),
        mk("two objects", scene.caption([t, u]), scene.caption([t]) + " and " + _phrase(ca, sa), masks[t] | masks[u]),
        mk("absent", _phrase(ca, sa), objs[t].prompt, None),
    ]


def _binding_probe(seed: int, scene: "Scene") -> Probe:
    """The binding probe of a two-object scene: the target's true prompt against a swapped one
    that keeps the target's colour (or, by a coin from ``seed``, its shape) and takes the other
    object's shape (colour)."""
    rng = random.Random(seed)
    t = rng.randrange(2)
    o = 1 - t
    a, b = scene.objects[t], scene.objects[o]
    if rng.random() < 0.5:
        swapped, cm, sm = _phrase(a.colour, b.shape), scene.masks[t], scene.masks[o]
    else:
        swapped, cm, sm = _phrase(b.colour, a.shape), scene.masks[o], scene.masks[t]
    key = f"seed:{seed}"
    return Probe(f"{key}/binding", key, "binding", a.prompt, swapped, scene.masks[t], scene.masks, cm, sm)


def shapes_suite(clip: "LoadedCLIP", n_scenes: int = 200) -> List[SceneProbes]:
    """The generated ShapesCLIP probe suite: ``n_scenes`` three-object scenes (seeds
    :data:`ATTRIBUTES_SEED_START` ...; one object, colour, colour+shape, two-objects and absent
    probe each) and ``n_scenes`` two-object scenes (seeds :data:`BINDING_SEED_START` ...; one
    binding probe each). Objects of a scene have distinct colours and distinct shapes.

    Returns:
        ``2 * n_scenes`` :class:`SceneProbes` with ``pixels (3, 64, 64)``.

    Raises:
        ValueError: ``n_scenes < 1`` or more than the seed ranges hold.
    """
    if n_scenes < 1:
        raise ValueError(f"n_scenes must be >= 1, got {n_scenes}")
    out = []
    for n_objects, start, probes in ((3, ATTRIBUTES_SEED_START, _three_object_probes),
                                     (2, BINDING_SEED_START, lambda s, sc: [_binding_probe(s, sc)])):
        for seed, sc in _distinct_scenes(n_scenes, n_objects, start):
            x = clip.pixels([sc.image])[0]
            if tuple(x.shape[-2:]) != tuple(sc.masks.shape[-2:]):  # another CLIP: masks as its input
                sc.masks = torch.stack([to_input_geometry(m, tuple(x.shape[-2:])) for m in sc.masks])
            out.append(SceneProbes(f"seed:{seed}", x, probes(seed, sc), sc.image))
    return out


def to_input_geometry(mask: Tensor, size: Tuple[int, int]) -> Tensor:
    """A region of the original image ``(H0, W0)`` bool -> the model input's ``(H, W)`` bool, as
    CLIP's preprocessing moves pixels (HF ``CLIPProcessor`` and open_clip alike): resize so the
    image covers ``H x W`` (shorter side first), then crop the centre. Nearest-neighbour, so
    a region stays a region; an object outside the centre crop comes back empty."""
    h0, w0 = mask.shape
    h, w = size
    if (h0, w0) == (h, w):
        return mask.bool()
    s = max(h / h0, w / w0)
    rh, rw = max(h, round(h0 * s)), max(w, round(w0 * s))
    big = torch.nn.functional.interpolate(mask[None, None].float(), size=(rh, rw), mode="nearest")[0, 0]
    top, left = (rh - h) // 2, (rw - w) // 2
    return big[top:top + h, left:left + w] > 0.5


# ---- the summary ---------------------------------------------------------------------------
def _interval(values: Sequence[Optional[float]], images: Optional[Sequence[str]] = None) -> Optional[Interval]:
    """Mean and 95% bootstrap interval of the defined values (``None`` dropped); ``None`` if none.
    With ``images`` (one per value), a cluster bootstrap over images: an image's probes (COCO's
    count probes, say) are resampled together."""
    keep = [i for i, x in enumerate(values) if x is not None]
    v = [float(values[i]) for i in keep]
    return bootstrap_ci(v, clusters=None if images is None else [images[i] for i in keep]) if v else None


def _method_summary(rows: Sequence[ProbeRow], m: str, binding: bool) -> Dict[str, object]:
    get = lambda k, rs=rows: [r.maps[m].get(k) for r in rs]  # noqa: E731
    im = lambda rs=rows: [r.image for r in rs]  # noqa: E731
    right = [r for r in rows if r.correct is True]
    wrong = [r for r in rows if r.correct is False]
    out: Dict[str, object] = {
        "pointing": _interval(get("pointing"), im()), "energy": _interval(get("energy"), im()),
        "pointing_if_correct": _interval(get("pointing", right), im(right)),
        "pointing_if_wrong": _interval(get("pointing", wrong), im(wrong)),
        "concentration": _interval(get("concentration"), im()),
        "best_object_energy": _interval(get("best_object_energy"), im()),
        "zero_maps": sum(1 for c in get("concentration") if c is None),
    }
    if binding:
        out["shares_of_swapped_prompt"] = {k: _interval(get(f"share_{k}"), im()) for k in ("colour", "shape", "elsewhere")}
    return out


def _margin(rows: Sequence[ProbeRow], cat: str) -> Optional[Interval]:
    """Mean score of the true prompt minus the false one's (for absent: the present distractor
    minus the absent prompt)."""
    sign = -1.0 if cat == "absent" else 1.0
    rs = [r for r in rows if r.distractor_score is not None]
    return _interval([sign * (r.score - r.distractor_score) for r in rs], [r.image for r in rs])


def _category_summary(rows: Sequence[ProbeRow], cat: str) -> Dict[str, object]:
    ok = [r for r in rows if r.error is None]
    out: Dict[str, object] = {"n": len(rows), "n_errors": len(rows) - len(ok),
                              "accuracy": _interval([r.correct for r in ok], [r.image for r in ok]),
                              "margin": _margin(ok, cat)}
    for m in METHODS:
        if any(m in r.maps for r in ok):
            out[m] = _method_summary([r for r in ok if m in r.maps], m, cat == "binding")
    return out


def _absent_vs_present(rows: Sequence[ProbeRow]) -> Dict[str, object]:
    """Absent prompts' maps against the present (colour+shape, else any non-absent) prompts'."""
    absent = [r for r in rows if r.category == "absent" and r.error is None]
    present = [r for r in rows if r.category == "colour+shape" and r.error is None] or \
        [r for r in rows if r.category != "absent" and r.error is None]
    out: Dict[str, object] = {"present_category": "colour+shape" if any(r.category == "colour+shape" for r in present)
                              else "all present"}
    for m in METHODS:
        pc = sorted(r.maps[m]["concentration"] for r in present if r.maps.get(m, {}).get("concentration") is not None)
        ac = [r.maps[m]["concentration"] for r in absent if r.maps.get(m, {}).get("concentration") is not None]
        med = pc[len(pc) // 2] if pc else None
        out[m] = {
            "absent_concentration": _interval(ac), "present_concentration": _interval(pc),
            "absent_best_object_energy": _interval([r.maps[m].get("best_object_energy") for r in absent]),
            "present_best_object_energy": _interval([r.maps[m].get("best_object_energy") for r in present]),
            "present_target_energy": _interval([r.maps[m].get("energy") for r in present]),
            "absent_at_least_median_present": None if med is None or not ac else sum(c >= med for c in ac) / len(ac),
        }
    return out


def summarize(rows: Sequence[ProbeRow], *, not_expressible: Optional[Dict[str, str]] = None) -> Dict[str, object]:
    """Per-category statistics over ``rows`` with 95% bootstrap intervals (means over probes).

    Returns:
        ``{"categories": {category: {n, n_errors, accuracy, grad_eclip: {...}, game: {...}}},
        "not_expressible": {category: reason}, "absent_vs_present": {...}, "n_probes", "n_errors"}``.
        ``accuracy``: the share of probes whose true prompt scores above the false one;
        ``margin``: the mean score difference (true minus false, cosine similarity);
        per method: pointing (standard pointing game), energy (energy pointing game), both also
        split by the model's verdict, concentration (max / mean), best_object_energy, and for
        binding the swapped prompt's energy shares. ``None`` where nothing is defined.
    """
    cats = [c for c in CATEGORIES if any(r.category == c for r in rows)]
    out: Dict[str, object] = {
        "n_probes": len(rows), "n_errors": sum(r.error is not None for r in rows),
        "categories": {c: _category_summary([r for r in rows if r.category == c], c) for c in cats},
        "not_expressible": dict(not_expressible or {}),
    }
    if "absent" in cats:
        out["absent_vs_present"] = _absent_vs_present(rows)
    return out


def _cell(iv: Optional[Interval], pct: bool = True) -> str:
    if iv is None:
        return "–"
    if pct:
        return f"{100 * iv.mean:.0f}% [{100 * iv.low:.0f}, {100 * iv.high:.0f}]"
    return f"{iv.mean:.2f} [{iv.low:.2f}, {iv.high:.2f}]"


def _mean(iv: Optional[Interval]) -> str:
    return "–" if iv is None else f"{iv.mean:.1f}"


def markdown_table(summary: Dict[str, object]) -> str:
    """The summary's per-category numbers as a Markdown table (means, 95% intervals in brackets;
    "n/a" rows for categories the vocabulary cannot express, "–" where a number is undefined)."""
    head = ("| category | probes | CLIP right | pointing Grad-ECLIP | pointing GAME | energy Grad-ECLIP | energy GAME "
            "| map max/mean Grad-ECLIP, GAME |\n|---|---|---|---|---|---|---|---|")
    lines = [head]
    for cat, e in summary["categories"].items():
        ge, gm = e.get("grad_eclip", {}), e.get("game", {})
        n = f"{e['n']}" + (f" ({e['n_errors']} errors)" if e["n_errors"] else "")
        lines.append(f"| {cat} | {n} | {_cell(e['accuracy'])} | {_cell(ge.get('pointing'))} | {_cell(gm.get('pointing'))} "
                     f"| {_cell(ge.get('energy'))} | {_cell(gm.get('energy'))} "
                     f"| {_mean(ge.get('concentration'))}, {_mean(gm.get('concentration'))} |")
    for cat, why in summary.get("not_expressible", {}).items():
        lines.append(f"| {cat} | {why} | n/a | n/a | n/a | n/a | n/a | n/a |")
    return "\n".join(lines)

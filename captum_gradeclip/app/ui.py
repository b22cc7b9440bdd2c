"""The explorer's page (Gradio): an image, prompts and methods in; a grid of maps, the caption's
word map and the downloads out. The work is :func:`.explore.explain`; this module reads the
inputs, draws the results and turns every user error into a message in the page.

The explain button's function is the named API endpoint ``/explain`` (``gradio_client``:
``Client(url).predict(handle_file(image), prompts, caption, methods, layers, spatial, relu,
api_name="/explain")``); it returns the message, the grid's HTML, the word map's HTML and the
paths of ``maps.npz`` (one array per (prompt, method)), ``explanation.json`` and ``figure.png``.
"""

from __future__ import annotations

import html
import itertools
import json
import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Collection, List, Optional, Sequence, Tuple

from .explore import AppInputError, ExplainRequest, Explanation, explain
from .methods import GRAD_ECLIP, SPATIAL, GradECLIPOptions, label, methods
from .render import data_uri, grid_figure, overlay, word_map_html

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

    from ..models import LoadedCLIP

#: Images with more pixels are refused (PIL's decompression-bomb guard starts at 89 M).
MAX_PIXELS = 64_000_000
TILE = 160
DEFAULT_METHODS = (GRAD_ECLIP, "game", "maskclip")
_log = logging.getLogger(__name__)
_runs = itertools.count(1)


def read_upload(path: Optional[str]) -> Tuple["Image.Image", List[str]]:
    """The uploaded image at ``path`` as RGB, and notes for the page (an image decoded reduced).

    Raises:
        AppInputError: no image, an unreadable file, or one over :data:`MAX_PIXELS`.
    """
    from PIL import Image

    from .._io import MAX_SHORT_SIDE, open_image
    from ..errors import InputError

    if not path:
        raise AppInputError("upload or paste an image, or render a ShapesCLIP scene")
    try:
        with Image.open(path) as im:
            w, h = im.size
    except Exception as e:  # PIL raises many types for a file that is not an image
        raise AppInputError(f"cannot read the upload as an image ({e.__class__.__name__}); give a PNG, JPEG, ...") \
            from None
    if w * h > MAX_PIXELS:
        raise AppInputError(f"the image is {w} x {h} px ({w * h / 1e6:.0f} M pixels); give one under "
                            f"{MAX_PIXELS // 1_000_000} M pixels")
    try:
        image = open_image(path)
    except InputError as e:
        raise AppInputError(str(e).replace(str(path), "the upload")) from None
    notes = []
    if min(w, h) > MAX_SHORT_SIDE:
        notes.append(f"the image is {w} x {h} px: it was decoded reduced to {image.size[0]} x {image.size[1]} "
                     "(the model sees its own input size anyway)")
    return image, notes


def parse_layers(text: str) -> Tuple[int, ...]:
    """``"-1"`` or ``"-2, -1"`` -> layer indices.

    Raises:
        AppInputError: not a comma-separated list of integers.
    """
    try:
        layers = tuple(int(v) for v in str(text).replace(",", " ").split())
    except ValueError:
        raise AppInputError(f"Grad-ECLIP layers must be integers like \"-1\" or \"-2, -1\", got {text!r}") from None
    if not layers:
        raise AppInputError("give Grad-ECLIP at least one layer, e.g. \"-1\" (the last)")
    return layers


def grid_html(image: "Image.Image", exp: Explanation, run: int) -> str:
    """The grid of prompts (rows, with scores) by methods (columns, with times) as HTML with
    embedded PNG overlays (``img.gce-map``, one per (prompt, method))."""
    req = exp.request
    signed = not req.options.relu
    head = "".join(f"<th>{html.escape(m)}<br><small>{exp.seconds[m]:.2f} s</small></th>" for m in req.methods)
    rows = []
    for i, p in enumerate(req.prompts):
        cells = "".join(
            f'<td><img class="gce-map" alt="{html.escape(p)} / {html.escape(m)}" width="{TILE}" '
            f'src="{data_uri(overlay(image, exp.maps[m][i], TILE, signed=signed and m == GRAD_ECLIP))}"></td>'
            for m in req.methods)
        rows.append(f"<tr><th>{html.escape(p)}<br><small>cos = {float(exp.scores[i]):.3f}</small></th>{cells}</tr>")
    return (f'<table class="gce-grid" data-run="{run}" style="text-align:center"><tr><th>prompt</th>{head}</tr>'
            + "".join(rows) + "</table>")


def save_downloads(image: "Image.Image", exp: Explanation) -> Tuple[str, str, str]:
    """Write ``maps.npz`` (float32 ``(h, w)`` per ``"prompt | method"``), ``explanation.json``
    (scores, timings, settings) and ``figure.png`` (the grid) to a new temporary folder; their paths."""
    import numpy as np

    out = Path(tempfile.mkdtemp(prefix="captum-gradeclip-app-"))
    np.savez(out / "maps.npz", **exp.arrays())
    (out / "explanation.json").write_text(json.dumps(exp.summary(), indent=1))
    req = exp.request
    tiles = [[overlay(image, exp.maps[m][i], TILE, signed=not req.options.relu and m == GRAD_ECLIP)
              for m in req.methods] for i in range(len(req.prompts))]
    rows = [f"{p} (cos {float(s):.3f})" for p, s in zip(req.prompts, exp.scores)]
    grid_figure(tiles, rows, [f"{m} ({exp.seconds[m]:.2f} s)" for m in req.methods]).save(out / "figure.png")
    return str(out / "maps.npz"), str(out / "explanation.json"), str(out / "figure.png")


def run_explain(clip: "LoadedCLIP", vocabulary: Optional[Collection[str]], image_path: Optional[str],
                prompts: str, caption: str, methods: Sequence[str], layers: str, spatial: str,
                relu: bool) -> Tuple[Any, ...]:
    """The explain button (and ``/explain``): ``(message, grid HTML, word map HTML, maps.npz,
    explanation.json, figure.png)``; on bad input the message says what to fix and the rest is empty."""
    try:
        image, notes = read_upload(image_path)
        req = ExplainRequest(tuple(p.strip() for p in str(prompts or "").splitlines() if p.strip()),
                             tuple(methods or ()), str(caption or "").strip(),
                             GradECLIPOptions(parse_layers(layers), spatial, bool(relu)))
        exp = explain(clip, image, req, vocabulary)
        grid = grid_html(image, exp, next(_runs))
        words = "" if exp.words is None else word_map_html(
            f"\"{exp.words.text}\" (cos = {exp.words.score:.3f})", exp.words.words, exp.words.importances)
        files = save_downloads(image, exp)
    except AppInputError as e:
        return (f"**Cannot explain:** {_md(str(e))}", "", "", None, None, None)
    except Exception as e:  # never a stack trace in the page; the log has it
        _log.exception("explain failed")
        return (f"**Error:** {e.__class__.__name__}: {_md((str(e) or ' ').splitlines()[0])}",
                "", "", None, None, None)
    total = sum(exp.seconds.values())
    msg = f"Explained {len(req.prompts)} prompt(s) with {len(req.methods)} method(s) in {total:.2f} s."
    return (" ".join([msg] + [f"Note: {n}." for n in notes]), grid, words, *files)


def _md(text: str) -> str:
    """``text`` safe in the page's Markdown (no HTML tags)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def render_scene_inputs(seed: Any) -> Tuple[str, str, str]:
    """The "render a ShapesCLIP scene" button: ``(image path, its prompts, its caption)``."""
    from ..shapes import render_scene

    try:
        s = int(seed)
    except (TypeError, ValueError):
        s = 0
    scene = render_scene(seed=s, n_objects=3)
    path = Path(tempfile.mkdtemp(prefix="captum-gradeclip-scene-")) / f"scene-{s}.png"
    scene.image.save(path)
    return str(path), "\n".join(scene.prompts), scene.caption()


def _lenient(image: Any) -> Any:
    """``image`` (a ``gr.Image``) whose preprocessing never raises: an unreadable upload reaches
    :func:`read_upload` as a path, which says in the page what is wrong (Gradio's own check would
    show a bare error toast). Wrapped on the instance: a subclass would make Gradio write a
    ``.pyi`` stub next to this file."""
    own = image.preprocess

    def preprocess(payload: Any) -> Any:
        try:
            return own(payload)
        except Exception:
            return getattr(payload, "path", None)

    image.preprocess = preprocess
    return image


def build_app(clip: "LoadedCLIP", vocabulary: Optional[Collection[str]] = None, title: str = "ShapesCLIP") -> Any:
    """The explorer for ``clip`` as a ``gradio.Blocks`` (call ``.launch()``); ``vocabulary``: the
    model's words, to refuse prompts it cannot read (ShapesCLIP's ``shapes.model.WORDS``)."""
    import gradio as gr

    with gr.Blocks(title="captum-gradeclip explorer", analytics_enabled=False) as demo:
        gr.Markdown(f"## captum-gradeclip explorer: {html.escape(title)}\nWhich regions make the image match "
                    "each prompt? One column per method, one row per prompt, with the model's cosine score.")
        with gr.Row():
            with gr.Column(scale=1):
                image = _lenient(gr.Image(type="filepath", sources=["upload", "clipboard"], label="image",
                                              elem_id="gce-image", height=240))
                with gr.Row():
                    seed = gr.Number(value=7, precision=0, label="scene seed", elem_id="gce-seed")
                    scene = gr.Button("render a ShapesCLIP scene", elem_id="gce-scene")
                prompts = gr.Textbox(lines=4, label="prompts, one per line", elem_id="gce-prompts")
                caption = gr.Textbox(label="caption (its word map)", elem_id="gce-caption")
                chosen = gr.CheckboxGroup([(label(m), m) for m in methods()], value=list(DEFAULT_METHODS),
                                          label="methods", elem_id="gce-methods")
                with gr.Accordion("Grad-ECLIP settings", open=False):
                    layers = gr.Textbox(value="-1", label="image layers (indices, summed)", elem_id="gce-layers")
                    spatial = gr.Dropdown(list(SPATIAL), value="cosine", label="spatial weighting")
                    relu = gr.Checkbox(value=True, label="ReLU (untick: signed map)")
                go = gr.Button("explain", variant="primary", elem_id="gce-explain")
            with gr.Column(scale=2):
                message = gr.Markdown(elem_id="gce-message")
                grid = gr.HTML(elem_id="gce-grid")
                words = gr.HTML(elem_id="gce-words")
                with gr.Row():
                    maps = gr.File(label="maps (.npz)", elem_id="gce-npz")
                    summary = gr.File(label="scores and settings (.json)", elem_id="gce-json")
                    figure = gr.File(label="figure (.png)", elem_id="gce-png")
        scene.click(render_scene_inputs, [seed], [image, prompts, caption], api_name="render_scene")
        go.click(lambda *a: run_explain(clip, vocabulary, *a), [image, prompts, caption, chosen, layers, spatial,
                 relu], [message, grid, words, maps, summary, figure], api_name="explain")
    return demo

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

from .explore import MAX_PROMPTS, AppInputError, ExplainRequest, Explanation, explain
from .methods import GRAD_ECLIP, SPATIAL, GradECLIPOptions, label, methods
from .render import data_uri, grid_figure, overlay, word_map_html

from .._io import MAX_PIXELS

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

    from ..models import LoadedCLIP

__all__ = ["MAX_PIXELS", "build_app", "read_upload", "run_explain"]

#: At most this many characters per prompt or caption (the page's text boxes stop there too);
#: a CLIP reads at most its context (77 tokens, ShapesCLIP 32), far fewer.
MAX_PROMPT_CHARS = 1000
#: The download folders of this many most recent requests are kept (older ones are removed, all
#: of them when the server stops); Gradio's own copies are removed after :data:`CACHE_SECONDS`.
KEEP_REQUESTS = 16
CACHE_SECONDS = 3600
TILE = 160
DEFAULT_METHODS = (GRAD_ECLIP, "game", "maskclip")
_log = logging.getLogger(__name__)
_runs = itertools.count(1)


class TempFolders:
    """Per-request temporary folders, bounded: :meth:`new` makes one and removes the oldest
    beyond ``keep``; :meth:`clear` (also at interpreter exit) removes all of them."""

    def __init__(self, keep: int = KEEP_REQUESTS, prefix: str = "captum-gradeclip-app-") -> None:
        import atexit
        import collections
        import threading

        self.keep, self.prefix = keep, prefix
        self.folders: "collections.deque[Path]" = collections.deque()
        self._lock = threading.Lock()
        atexit.register(self.clear)

    def new(self) -> Path:
        import shutil

        path = Path(tempfile.mkdtemp(prefix=self.prefix))
        with self._lock:
            self.folders.append(path)
            old = [self.folders.popleft() for _ in range(max(0, len(self.folders) - self.keep))]
        for p in old:
            shutil.rmtree(p, ignore_errors=True)
        return path

    def clear(self) -> None:
        import shutil

        with self._lock:
            old, self.folders = list(self.folders), type(self.folders)()
        for p in old:
            shutil.rmtree(p, ignore_errors=True)


#: The folders of the downloads and of the rendered scenes.
DOWNLOADS = TempFolders()


def read_upload(path: Optional[str]) -> Tuple["Image.Image", List[str]]:
    """The uploaded image at ``path`` as RGB, by the package's one decoder
    (:func:`captum_gradeclip._io.open_image`: its header is read first, and an image over
    :data:`MAX_PIXELS` is refused before any pixel is decoded), and notes for the page (an image
    decoded reduced).

    Raises:
        AppInputError: no image, an unreadable file, or one over :data:`MAX_PIXELS`.
    """
    from .._io import MAX_SHORT_SIDE, image_size, open_image
    from ..errors import InputError

    if not path:
        raise AppInputError("upload or paste an image, or render a ShapesCLIP scene")
    try:
        w, h = image_size(path, name="the upload")
        image = open_image(path, name="the upload")
    except InputError as e:
        raise AppInputError(str(e).replace(str(path), "the upload")) from None
    notes = []
    if min(w, h) > MAX_SHORT_SIDE:
        notes.append(f"the image is {w} x {h} px: it was decoded reduced to {image.size[0]} x {image.size[1]} "
                     "(the model sees its own input size anyway)")
    return image, notes


def check_text_lengths(texts: Sequence[str]) -> None:
    """The page's own check of the prompts and the caption, before any tokenizer runs: at most
    :data:`MAX_PROMPT_CHARS` characters each (the text boxes stop there too; an API call does
    not). The model's context and vocabulary are the shared text check's (:func:`.explore.explain`).

    Raises:
        AppInputError: naming the text, its length and the limit.
    """
    for t in texts:
        if len(t) > MAX_PROMPT_CHARS:
            raise AppInputError(f"\"{t[:37]}...\" is {len(t)} characters: give prompts and captions under "
                                f"{MAX_PROMPT_CHARS} (the model reads only its first few dozen words)")


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
    (scores, timings, settings) and ``figure.png`` (the grid) to a new temporary folder (one of
    :data:`DOWNLOADS`' bounded folders); their paths."""
    import numpy as np

    out = DOWNLOADS.new()
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
        check_text_lengths(req.prompts + ((req.caption,) if req.caption else ()))
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
    path = DOWNLOADS.new() / f"scene-{s}.png"
    scene.image.save(path)
    return str(path), "\n".join(scene.prompts), scene.caption()


def _as_file(image: Any) -> Any:
    """``image`` (a ``gr.Image``) whose preprocessing hands over the upload's path untouched:
    Gradio would decode (and re-encode) the whole image before :func:`read_upload` could check
    its header (a 20 KB PNG declaring 13000 x 13000 px took the server from 655 to 1380 MB), and
    an unreadable upload would show as a bare error toast instead of a message in the page.
    Wrapped on the instance: a subclass would make Gradio write a ``.pyi`` stub next to this file."""
    def preprocess(payload: Any) -> Any:
        return getattr(payload, "path", None) if payload is not None else None

    image.preprocess = preprocess
    return image


def build_app(clip: "LoadedCLIP", vocabulary: Optional[Collection[str]] = None, title: str = "ShapesCLIP") -> Any:
    """The explorer for ``clip`` as a ``gradio.Blocks`` (call ``.launch()``); ``vocabulary``: the
    model's words, to refuse prompts it cannot read (ShapesCLIP's ``shapes.model.WORDS``)."""
    import gradio as gr

    with gr.Blocks(title="captum-gradeclip explorer", analytics_enabled=False,
                   delete_cache=(CACHE_SECONDS, CACHE_SECONDS)) as demo:
        gr.Markdown(f"## captum-gradeclip explorer: {html.escape(title)}\nWhich regions make the image match "
                    "each prompt? One column per method, one row per prompt, with the model's cosine score.")
        with gr.Row():
            with gr.Column(scale=1):
                image = _as_file(gr.Image(type="filepath", sources=["upload", "clipboard"], label="image",
                                              elem_id="gce-image", height=240))
                with gr.Row():
                    seed = gr.Number(value=7, precision=0, label="scene seed", elem_id="gce-seed")
                    scene = gr.Button("render a ShapesCLIP scene", elem_id="gce-scene")
                prompts = gr.Textbox(lines=4, label="prompts, one per line", elem_id="gce-prompts",
                                     max_length=MAX_PROMPTS * (MAX_PROMPT_CHARS + 1))
                caption = gr.Textbox(label="caption (its word map)", elem_id="gce-caption", max_length=MAX_PROMPT_CHARS)
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

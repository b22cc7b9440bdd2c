"""``captum-gradeclip report OUT``: a job folder as ONE self-contained HTML file (images embedded as
small JPEGs, a few lines of JavaScript to sort and filter; no network, no server).

Sections: the totals and the caps, per-text statistics, each frequent text's highest- and
lowest-scoring images, the table of kept rows (thumbnail, map overlay, image, text, score, ...),
the errors and the configuration. What is kept is :class:`.collect.ReportCaps`.
"""

from __future__ import annotations

import html
import json
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, List, Optional

from .collect import Job, ReportCaps, Row, read_job
from .render import data_uri, fit, overlay

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

THUMB, TILE = 64, 96
#: At most this many error records and per-text rows are listed.
MAX_LISTED = 200

_SCRIPT = """
function sortBy(th){const t=th.closest('table'),b=t.tBodies[0],k=th.cellIndex,num=th.dataset.num==='1';
const asc=th.dataset.dir!=='asc';t.querySelectorAll('th').forEach(h=>{h.dataset.dir='';h.classList.remove('asc','desc')});
th.dataset.dir=asc?'asc':'desc';th.classList.add(asc?'asc':'desc');
const rows=[...b.rows];rows.sort((x,y)=>{let a=x.cells[k].dataset.v,c=y.cells[k].dataset.v;
if(num){a=parseFloat(a);c=parseFloat(c);return asc?a-c:c-a}return asc?a.localeCompare(c):c.localeCompare(a)});
rows.forEach(r=>b.appendChild(r))}
function filterRows(q){q=q.toLowerCase();document.querySelectorAll('#rows tbody tr').forEach(r=>{
r.style.display=r.dataset.search.includes(q)?'':'none'});
document.getElementById('shown').textContent=document.querySelectorAll('#rows tbody tr:not([style*="none"])').length}
"""
_STYLE = """body{font-family:sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse}
td,th{border-bottom:1px solid #ddd;padding:3px 8px;vertical-align:middle}th{background:#f3f3f3;cursor:pointer}
th.asc::after{content:' \\25B2'}th.desc::after{content:' \\25BC'}.strip img{margin:2px}
.tile{display:inline-block;text-align:center;font-size:11px;margin:2px}pre{background:#f6f6f6;padding:1em}"""


@lru_cache(maxsize=512)
def _image(root: Optional[str], name: str) -> "Optional[Image.Image]":
    """The job's image ``name`` under ``root``, reduced to the overlay's size; ``None`` if absent
    or if ``name`` resolves (``..``, an absolute path, a link) to a file outside ``root``."""
    from .._io import inside, open_image
    from ..errors import InputError

    path = None if root is None else inside(root, name)
    if path is None:
        return None
    try:
        return fit(open_image(str(path)), TILE)
    except InputError:
        return None


def _canvas(row: Row) -> "Image.Image":
    """A grey image of the map's aspect, for a map whose image is not at hand."""
    from PIL import Image

    h, w = row.map.shape
    return Image.new("RGB", (max(1, round(TILE * w / max(h, w))), max(1, round(TILE * h / max(h, w)))), "#888")


def _cells(row: Row, root: Optional[str]) -> str:
    image = _image(root, row.values["image"])
    thumb = "" if image is None else f'<img class="thumb" src="{data_uri(fit(image, THUMB), "JPEG")}">'
    over = "" if row.map is None else (f'<img class="overlay" src="{data_uri(overlay(image or _canvas(row), row.map, TILE), "JPEG")}"'
                                        f' title="{html.escape(row.values["text"])}">')
    return f"<td>{thumb}</td><td>{over}</td>"


def _td(v: Any) -> str:
    if isinstance(v, float):
        return f'<td data-v="{v!r}">{v:.4f}</td>'
    return f'<td data-v="{html.escape(str(v))}">{html.escape(str(v))}</td>'


def rows_table(job: Job, root: Optional[str]) -> str:
    """The kept rows as a sortable (click a header), filterable table: ``img.thumb`` and
    ``img.overlay`` per row."""
    cols = ["image", "text", "score"] + job.columns
    head = "".join(f'<th onclick="sortBy(this)" data-num="{int(c not in ("image", "text", "method"))}">'
                   f"{html.escape(c)}</th>" for c in cols)
    body = []
    for r in job.rows:
        search = html.escape(f"{r.values['image']} {r.values['text']} {' '.join(r.why)}".lower())
        body.append(f'<tr data-search="{search}">{_cells(r, root)}' + "".join(_td(r.values[c]) for c in cols)
                    + _td(", ".join(r.why)) + "</tr>")
    return ('<p><input id="filter" placeholder="filter: image, text, best/worst/sample" size="40" '
            'oninput="filterRows(this.value)"> <span id="shown">' + str(len(job.rows)) + "</span> rows</p>"
            f'<table id="rows"><thead><tr><th>thumbnail</th><th>map</th>{head}'
            '<th onclick="sortBy(this)" data-num="0">kept as</th></tr></thead><tbody>'
            + "".join(body) + "</tbody></table>")


def extremes(job: Job, root: Optional[str]) -> str:
    """Per frequent text, its highest- and lowest-scoring images (overlays for a dataset job,
    thumbnails for a benchmark), each with its score."""
    def tiles(rows: List[Row]) -> str:
        out = []
        for r in rows:
            img = _image(root, r.values["image"])
            pic = overlay(img or _canvas(r), r.map, TILE) if r.map is not None else img
            tag = "" if pic is None else f'<img class="extreme" src="{data_uri(pic, "JPEG")}"><br>'
            out.append(f'<span class="tile">{tag}{html.escape(r.values["image"][-24:])}<br>'
                       f'{r.values[job.rank]:.3f}</span>')
        return "".join(out)

    parts = []
    for t in job.best:
        parts.append(f"<h3>{html.escape(t)}</h3><div class='strip'><b>highest</b><br>{tiles(job.best[t])}</div>"
                     f"<div class='strip'><b>lowest</b><br>{tiles(job.worst[t])}</div>")
    return "".join(parts)


def summary(job: Job) -> str:
    """The totals, the caps that chose the rows, and per-text (a benchmark: per-method) statistics."""
    c, t = job.caps, job.totals
    totals = ", ".join(f"{v} {k}" for k, v in t.items())
    n = len(job.per_text)
    caps = (f"The table keeps, for each of the {min(c.texts, n)} most frequent of the {n} {job.group}s, "
            f"its {c.best} highest- and {c.best} lowest-ranked rows by {job.rank}, plus {c.sample} rows drawn at "
            f"random (seed {c.seed}) from all {t['rows']}: {t['rows shown']} rows shown.")
    stats = "".join(f"<tr><td data-v='{html.escape(k)}'>{html.escape(k)}</td><td data-v='{n}'>{n}</td>"
                    f"<td data-v='{m!r}'>{m:.4f}</td><td data-v='{lo!r}'>{lo:.4f}</td><td data-v='{hi!r}'>{hi:.4f}</td></tr>"
                    for k, (n, m, lo, hi) in list(job.per_text.items())[:MAX_LISTED])
    more = len(job.per_text) - MAX_LISTED
    heads = (job.group, "rows", f"mean {job.rank}", "min", "max")
    return (f"<p><b>{totals}</b></p><p>{caps}</p><h2>{job.rank} per {job.group}</h2><table id='texts'><thead><tr>"
            + "".join(f'<th onclick="sortBy(this)" data-num="{int(h != job.group)}">{h}</th>' for h in heads)
            + f"</tr></thead><tbody>{stats}</tbody></table>" + (f"<p>({more} more texts not listed)</p>" if more > 0 else ""))


def benchmark_html(job: Job) -> str:
    """A benchmark's averages per method (its ``benchmark.json``) and its plot (``benchmark.png``)."""
    from .._io import open_image
    from ..errors import InputError

    res = job.config.get("benchmark", {}).get("image", {})
    keys = list(dict.fromkeys(k for v in res.values() for k in v))
    rows = "".join(f"<tr><td>{html.escape(m)}</td>" + "".join(f"<td>{v.get(k, float('nan')):.4f}</td>" for k in keys)
                   + "</tr>" for m, v in res.items())
    table = f"<table id='averages'><tr><th>method</th>{''.join(f'<th>{k}</th>' for k in keys)}</tr>{rows}</table>"
    png = job.folder / "benchmark.png"
    try:
        plot = f"<p><img class='plot' src='{data_uri(open_image(png), 'JPEG')}' width='720'></p>" if png.is_file() else ""
    except InputError as e:  # a damaged or replaced plot: said, not a traceback
        plot = f"<p><i>benchmark.png not shown: {html.escape(str(e))}</i></p>"
    return f"<h2>Averages per method (benchmark.json)</h2>{table}{plot}"


def errors_html(job: Job) -> str:
    if not job.errors:
        return "<p>No errors.</p>"
    items = "".join(f"<li><code>{html.escape(str(e.get('image')))}</code>: {html.escape(str(e.get('error')))}"
                    f"{' (text: ' + html.escape(str(e['text'])) + ')' if e.get('text') else ''}</li>"
                    for e in job.errors[:MAX_LISTED])
    return f"<ol id='errors'>{items}</ol>" + (f"<p>(first {MAX_LISTED} of {len(job.errors)})</p>"
                                               if len(job.errors) > MAX_LISTED else "")


def status_html(job: Job) -> str:
    """What the page says first: an incomplete, running or damaged job (``#status``, in red), and
    how the shards were checked (``#checked``)."""
    warn = "".join(f"<li>{html.escape(s)}</li>" for s in job.status)
    box = f"<ul id='status' style='color:#b00;font-weight:bold'>{warn}</ul>" if warn else \
        "<p id='status'>complete: every shard the manifest lists is here and intact.</p>"
    return box + f"<p id='checked'><small>{html.escape(job.checked)}</small></p>"


def render_html(job: Job, images: Optional[str] = None) -> str:
    """The whole report as one HTML document; ``images``: the job's image folder (its
    ``--images``), for thumbnails and overlays (without it, maps are drawn on grey)."""
    title = f"captum-gradeclip report: {job.folder.name} ({job.kind})"
    note = status_html(job)
    note += "" if images else "<p><i>No --images folder given: maps are drawn without their images.</i></p>"
    if job.kind == "benchmark":
        note += "<p>A folder benchmark stores curves and AUCs, not maps: the table shows thumbnails only.</p>"
        note += benchmark_html(job)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style><script>{_SCRIPT}</script></head><body><h1>{html.escape(title)}</h1>"
            f"{note}{summary(job)}<h2>Highest and lowest {job.rank} per {job.group}</h2>{extremes(job, images)}"
            f"<h2>Rows</h2>{rows_table(job, images)}<h2>Errors</h2>{errors_html(job)}"
            f"<h2>Configuration</h2><pre id='config'>{html.escape(json.dumps(job.config, indent=1, default=str))}</pre>"
            "</body></html>")


def write_report(out: "str | Path", path: "Optional[str | Path]" = None, caps: Optional[ReportCaps] = None,
                 images: Optional[str] = None) -> Path:
    """Write the report of the job folder ``out`` to ``path`` (default ``out/report.html``); its path.

    Raises:
        InputError: see :func:`.collect.read_job`; an unwritable ``path``.
    """
    from .._io import check_output_dir
    from ..errors import InputError

    if Path(out).is_file():
        raise InputError(f"{out} is a file: give the job's folder (its --out / --out-dir), e.g. {Path(out).parent}")
    target = Path(path) if path else Path(out) / "report.html"
    if target.suffix.lower() not in (".html", ".htm"):
        raise InputError(f"--html must name an .html file, got {target}")
    check_output_dir(str(target.parent), "--html")
    if images is not None and not Path(images).is_dir():
        raise InputError(f"--images must be the job's image folder, got {images}")
    _image.cache_clear()
    doc = render_html(read_job(out, caps or ReportCaps()), None if images is None else str(images))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(doc, encoding="utf-8")
    return target

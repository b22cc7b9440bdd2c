"""The ``app`` command (the explorer) and the ``report`` command (a dataset job as one HTML file)."""

from __future__ import annotations

import argparse
import sys

from ..errors import CLIError

#: How to install what the explorer needs.
APP_INSTALL = "pip install 'captum-gradeclip[app]'"


def cmd_app(args: argparse.Namespace) -> None:
    """Load the model the flags name and serve the explorer until interrupted."""
    import os

    from ..models import check_choice, load

    check_choice(args.model, args.open_clip)
    if not 0 <= args.port < 65536:
        raise CLIError(f"--port must be in 0..65535, got {args.port}")
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise CLIError(f"the explorer needs Gradio: {APP_INSTALL}") from None
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from .ui import build_app

    name = args.open_clip or args.model or "ShapesCLIP"
    demo = build_app(load(args.model, args.open_clip), title=name)  # ShapesCLIP carries its vocabulary
    print(f"serving the explorer for {name} on http://{args.host}:{args.port} (Ctrl-C stops it)", file=sys.stderr)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, ssr_mode=False,
                footer_links=[], quiet=True)


def cmd_report(args: argparse.Namespace) -> None:
    """Write the HTML report of the job folder ``args.out``."""
    from .report import ReportCaps, write_report

    if min(args.best, args.sample, args.texts) < 0:
        raise CLIError(f"--best, --sample and --texts must be >= 0, got {args.best}, {args.sample} and {args.texts}")
    caps = ReportCaps(best=args.best, sample=args.sample, texts=args.texts, seed=args.seed)
    path = write_report(args.out, args.html, caps, images=args.images)
    print(f"wrote {path}")


def add_parser(sub: "argparse._SubParsersAction") -> None:
    """Add the ``app`` command to the ``captum-gradeclip`` subcommands ``sub``."""
    from ..options_cli import add_model_args

    a = sub.add_parser("app", help="an interactive explorer in the browser (needs the app extra: Gradio)")
    add_model_args(a)
    a.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1: this machine only)")
    a.add_argument("--port", type=int, default=7860)
    a.add_argument("--share", action="store_true", help="also a public gradio.live link (off by default)")
    a.set_defaults(func=cmd_app)


def add_report_parser(sub: "argparse._SubParsersAction") -> None:
    """Add the ``report`` command to the ``captum-gradeclip`` subcommands ``sub``."""
    r = sub.add_parser("report", help="a self-contained HTML report of an explain-dataset or benchmark folder")
    r.add_argument("out", help="the explain-dataset --out folder, or a folder benchmark's --out-dir")
    r.add_argument("--html", default=None, help="where to write it (default: OUT/report.html)")
    r.add_argument("--images", default=None, help="the job's image folder (its --images): thumbnails and overlays")
    r.add_argument("--best", type=int, default=8, help="highest- and lowest-scoring rows kept per text (default 8)")
    r.add_argument("--sample", type=int, default=200, help="random rows kept besides those (default 200)")
    r.add_argument("--texts", type=int, default=20, help="texts with their own best/worst rows: the most frequent (20)")
    r.add_argument("--seed", type=int, default=0, help="seed of the random sample")
    r.set_defaults(func=cmd_report)

"""The flags every command shares, declared once and parsed by one function each: the model
(``--model`` / ``--open-clip``), the method and Grad-ECLIP's options.

``--model NAME_OR_FOLDER`` (a Hugging Face hub name or ``save_pretrained`` folder, or
``PREFIX:SPEC`` of a registered family) or ``--open-clip ARCH[:PRETRAINED]``; neither: ShapesCLIP.

``--method NAME`` (or ``--methods NAME...``) from :mod:`captum_gradeclip.methods`' registry, and
Grad-ECLIP's options (:class:`~captum_gradeclip.methods.GradECLIPOptions`):

- ``--layers I [I ...]``: attention layers counted from the end, ``-1`` the last
  (``--layers -3 -2 -1``: the last three, maps summed); ``--last N``: shorthand for the last ``N``.
  A value of 0 or more is refused: before 0.2, ``explain --layers 3`` meant "the last 3 layers"
  and ``explain-dataset --layers 3`` meant "layer index 3"; no command silently picks either.
- ``--spatial``, ``--single-head``, ``--signed`` (no ReLU).

With a method other than Grad-ECLIP, a Grad-ECLIP flag is an error (it would be ignored).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, List, Optional, Tuple

from .errors import CLIError, InputError
from .methods import SPATIAL, GradECLIPOptions, get_method, method_names

if TYPE_CHECKING:  # pragma: no cover
    from .scale.explain import ExplainerOptions

__all__ = ["add_method_args", "add_model_args", "explainer_options", "method_and_options", "methods_and_options"]


def add_model_args(p: argparse.ArgumentParser, *, open_clip: bool = True, unknown_words: bool = False,
                   default_help: str = "default: ShapesCLIP") -> None:
    """Add ``--model`` (and, with ``open_clip``, ``--open-clip``) to ``p``; ``models.load(args.model,
    args.open_clip)`` loads what they name (``models.check_choice`` refuses both at once). With
    ``unknown_words``: ``--allow-unknown-words``, the opt-in of the shared text check
    (:func:`captum_gradeclip.text_checks.text_problems`)."""
    p.add_argument("--model", default=None,
                   help=f"Hugging Face hub name or save_pretrained folder, or PREFIX:SPEC of a registered family "
                        f"({default_help})")
    if open_clip:
        p.add_argument("--open-clip", default=None, metavar="ARCH[:PRETRAINED]",
                       help="an open_clip model instead, e.g. ViT-B-32:openai or RN50:openai (the open-clip extra)")
    if unknown_words:
        p.add_argument("--allow-unknown-words", action="store_true",
                       help="explain texts with words outside a small vocabulary (ShapesCLIP's 17 words) anyway, "
                            "with a warning: its tokenizer explains such words as letters")

def add_method_args(p: argparse.ArgumentParser, *, many: bool = False, default: Optional[str] = "grad-eclip",
                    choices: Optional[List[str]] = None) -> None:
    """Add ``--method NAME`` (``many``: ``--methods NAME...``) and Grad-ECLIP's option flags to ``p``.

    ``choices`` (for the help text) defaults to every registered image method, read when the parser
    is built, so a method registered from outside the package is offered; the names are checked by
    :func:`method_and_options` (one line naming the methods, not argparse's usage block)."""
    names = choices if choices is not None else method_names("image")
    if many:
        p.add_argument("--methods", nargs="+", default=None, metavar="NAME",
                       help=f"methods to run, by name (default: all): {', '.join(names)}")
    else:
        p.add_argument("--method", default=default, metavar="NAME",
                       help=f"the explanation method (default {default}): {', '.join(names)}")
    g = p.add_argument_group("Grad-ECLIP options (the same in every command)")
    layers = g.add_mutually_exclusive_group()
    layers.add_argument("--layers", type=int, nargs="+", default=None, metavar="I",
                        help="image attention layers counted from the end, -1 the last (e.g. --layers -3 -2 -1; "
                             "maps summed); default -1, the published method")
    layers.add_argument("--last", type=int, default=None, metavar="N",
                        help="the last N image attention layers (--last 3 = --layers -3 -2 -1)")
    g.add_argument("--spatial", default=None, choices=SPATIAL,
                   help="spatial weights (default cosine; ShapesCLIP's configuration study chose cosine_per_head)")
    g.add_argument("--single-head", action="store_true", default=None,
                   help="the authors' single-head reproduction mode (explains a modified model)")
    g.add_argument("--signed", action="store_true", default=None, help="keep the map's sign (no ReLU)")


def _layers(args: argparse.Namespace) -> Optional[Tuple[int, ...]]:
    if getattr(args, "last", None) is not None:
        if args.last < 1:
            raise CLIError(f"--last must be at least 1 (the last layer), got {args.last}")
        return tuple(range(-args.last, 0))
    if getattr(args, "layers", None) is None:
        return None
    bad = [i for i in args.layers if i >= 0]
    if bad:
        raise CLIError(f"--layers {bad[0]}: layers are counted from the end, -1 the last (--layers -3 -2 -1 or "
                       f"--last 3 for the last three); 0 and up are refused because they meant the last N "
                       "layers in explain and index N in explain-dataset before")
    return tuple(args.layers)


def _options(args: argparse.Namespace) -> Tuple[GradECLIPOptions, List[str]]:
    """The options the flags give, and the Grad-ECLIP flags that were set."""
    given = {"layers": _layers(args), "spatial": getattr(args, "spatial", None),
             "single_head": getattr(args, "single_head", None), "relu": None}
    if getattr(args, "signed", None):
        given["relu"] = False
    set_flags = [f"--{k.replace('_', '-')}" if k != "relu" else "--signed" for k, v in given.items() if v is not None]
    try:
        return GradECLIPOptions(**{k: v for k, v in given.items() if v is not None}), set_flags
    except InputError as e:
        raise CLIError(str(e)) from None


def method_and_options(args: argparse.Namespace) -> Tuple[str, GradECLIPOptions]:
    """``(--method, GradECLIPOptions)`` from flags added by :func:`add_method_args`.

    Raises:
        CLIError: a layer of 0 or more, ``--last`` below 1, or a Grad-ECLIP flag with another method.
    """
    options, set_flags = _options(args)
    name = args.method
    get_method(name)  # InputError: unknown, listing the registered names
    if set_flags and not get_method(name).uses_options:
        raise CLIError(f"{', '.join(set_flags)}: Grad-ECLIP's options do not apply to --method {name}")
    return name, options


def methods_and_options(args: argparse.Namespace) -> Tuple[Optional[List[str]], GradECLIPOptions]:
    """``(--methods or None for all, GradECLIPOptions)`` from ``add_method_args(p, many=True)``."""
    options, _ = _options(args)
    names = list(dict.fromkeys(args.methods)) if args.methods else None
    for name in names or ():
        get_method(name)
    return names, options


def explainer_options(args: argparse.Namespace, *, text_maps: bool = False, text_chunk: int = 64) -> "ExplainerOptions":
    """The dataset engine's :class:`~captum_gradeclip.scale.explain.ExplainerOptions` from the
    method flags (and ``--allow-unknown-words`` where the command has it): explain-dataset's and
    the analyses' maps jobs."""
    from .scale.explain import ExplainerOptions

    method, gradeclip = method_and_options(args)
    return ExplainerOptions(method=method, gradeclip=gradeclip, text_maps=text_maps, text_chunk=text_chunk,
                            allow_unknown_words=bool(getattr(args, "allow_unknown_words", False)))

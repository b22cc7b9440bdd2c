"""Seeing the maps: the interactive explorer (``captum-gradeclip app``) and the static report of a
dataset job (``captum-gradeclip report OUT``).

Modules: :mod:`.methods` (the methods offered side by side), :mod:`.explore` (the functional
core: image + prompts + methods -> maps, scores, timings), :mod:`.render` (overlays, word maps,
figures for a page), :mod:`.ui` (the Gradio page; needs ``pip install 'captum-gradeclip[app]'``),
:mod:`.report` (the HTML report; needs pyarrow), :mod:`.cli` (the two commands).
Gradio is imported only by :mod:`.ui`, inside its functions.
"""

from .explore import AppInputError, ExplainRequest, Explanation, WordMap, check_request, explain
from .methods import GradECLIPOptions, methods

__all__ = ["AppInputError", "ExplainRequest", "Explanation", "GradECLIPOptions", "WordMap", "check_request",
           "explain", "methods"]

"""A Griffe extension for the API reference: the docstrings write Sphinx roles
(:class:`~captum_gradeclip.ImageTextSimilarity`, :func:`deletion`), which Markdown would show as
":class:" before the name. They become plain code spans (`ImageTextSimilarity`, `deletion`): a
link would need every target on a page, and the strict build would fail on the rest."""

import re

import griffe

ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|mod|data|exc|obj):`(~?)([^`]+)`")


def _code(match: re.Match) -> str:
    name = match.group(2)
    return f"`{name.rsplit('.', 1)[-1] if match.group(1) else name}`"


class RstRoles(griffe.Extension):
    """Rewrites Sphinx roles in every docstring into Markdown code spans."""

    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = ROLE.sub(_code, obj.docstring.value)

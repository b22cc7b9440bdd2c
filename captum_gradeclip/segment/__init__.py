"""Open-vocabulary segmentation from explanation maps (``captum-gradeclip segment``).

- :func:`segment`: per-image maps for ``K`` prompts -> a label map (``0`` background, ``k + 1``
  prompt ``k``): the maps upsampled to the image, normalised, the per-pixel argmax over the
  prompts, background where the best map is below a threshold or where background prompts win
  (as CLIP Surgery does).
- :func:`scene_labels`, :func:`choose_threshold`: ShapesCLIP's true label maps and the threshold
  chosen on held-out scenes (:mod:`.shapes`).
- :mod:`.cli`: the command, a dataset job writing label PNGs and overlays, scored against mask
  PNGs with :mod:`captum_gradeclip.metrics.segmentation`.
"""

from .functional import normalise_maps, segment
from .shapes import ShapesSegmentation, choose_threshold, scene_labels, shapes_segmentation

__all__ = ["ShapesSegmentation", "choose_threshold", "normalise_maps", "scene_labels", "segment",
           "shapes_segmentation"]

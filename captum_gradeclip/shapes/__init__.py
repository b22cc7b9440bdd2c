"""Synthetic grounded scenes and the shipped ShapesCLIP model."""

from .model import WEIGHTS_DIR, load_shapes_clip, unknown_words
from .scenes import COLOUR_NAMES, COLOURS, SHAPES, Scene, ShapeSpec, all_prompts, render_scene

__all__ = ["COLOURS", "COLOUR_NAMES", "SHAPES", "Scene", "ShapeSpec", "WEIGHTS_DIR", "all_prompts",
           "load_shapes_clip", "render_scene", "unknown_words"]

"""ShapesCLIP: scenes (determinism, masks), the shipped model (offline loading, quality bar)."""

import numpy as np
import pytest
import torch

from captum_gradeclip.shapes import SHAPES, ShapeSpec, all_prompts, load_shapes_clip, render_scene
from captum_gradeclip.shapes.scenes import COLOURS


def test_scene_is_deterministic():
    a, b = render_scene(seed=5), render_scene(seed=5)
    assert a.image.tobytes() == b.image.tobytes() and torch.equal(a.masks, b.masks)
    assert a.prompts == b.prompts
    assert render_scene(seed=6).image.tobytes() != a.image.tobytes()


def test_scene_vocabulary_and_prompts():
    assert len(COLOURS) >= 8 and len(SHAPES) >= 6 and len(all_prompts()) == len(COLOURS) * len(SHAPES)
    sc = render_scene([ShapeSpec("orange", "ring"), ShapeSpec("red", "circle", (0.2, 0.2), 0.3)], seed=0)
    assert sc.prompts == ["an orange ring", "a red circle"]
    assert sc.caption() == "an orange ring and a red circle"
    assert sc.caption([1]) == "a red circle"


def test_masks_match_the_drawn_pixels():
    # a square at a known place on a known background: its mask is that square
    spec = ShapeSpec("white", "square", (0.5, 0.5), 0.5)
    sc = render_scene([spec], seed=0, size=64, background="noise")
    m = sc.masks[0]
    side = 0.85 * 0.5 * 64  # the square's side: 0.85 of the bounding square
    assert abs(m.sum().item() - side * side) < 2 * side  # area within a pixel rim
    img = torch.tensor(np.asarray(sc.image), dtype=torch.float32)
    assert img[m].mean(0).min() > 200  # white inside
    assert img[~m].mean() < 150  # darker background outside
    x0, y0, x1, y1 = sc.boxes[0].tolist()
    assert abs((x0 + x1) / 2 - 32) <= 1 and abs((y0 + y1) / 2 - 32) <= 1


def test_occlusion_is_removed_from_masks():
    back = ShapeSpec("red", "square", (0.4, 0.5), 0.5)
    front = ShapeSpec("blue", "circle", (0.6, 0.5), 0.4)
    sc = render_scene([back, front], seed=0)
    assert not (sc.masks[0] & sc.masks[1]).any()
    alone = render_scene([back], seed=0)
    assert sc.masks[0].sum() < alone.masks[0].sum()


def test_random_scenes_have_1_to_4_distinct_objects():
    for s in range(40):
        sc = render_scene(seed=s)
        assert 1 <= len(sc.objects) <= 4
        assert len(set(sc.prompts)) == len(sc.prompts)
        assert all(m.sum() > 0 for m in sc.masks)


def test_bad_scene_arguments():
    with pytest.raises(ValueError, match="unknown colour"):
        ShapeSpec("pink", "circle")
    with pytest.raises(ValueError, match="n_objects"):
        render_scene(n_objects=5)
    with pytest.raises(ValueError, match="background"):
        render_scene(background="plaid")


def test_shipped_model_loads_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, processor = load_shapes_clip()
    assert model.config.vision_config.patch_size == 8 and not model.training
    x = processor(images=[render_scene(seed=0).image], return_tensors="pt").pixel_values
    assert x.shape == (1, 3, 64, 64)
    ids = processor.tokenizer(["a red circle"], return_tensors="pt").input_ids
    assert ids.shape == (1, 5)  # SOS, a, red, circle, EOS: one token per word


def test_missing_checkpoint_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no ShapesCLIP checkpoint"):
        load_shapes_clip(tmp_path)


@pytest.mark.slow
def test_quality_bar_on_held_out_scenes():
    from captum_gradeclip.shapes.evaluate import evaluate

    model, processor = load_shapes_clip()
    q = evaluate(model, processor, n=500)  # the README numbers
    assert q["present_above_absent"] >= 0.95, q
    assert q["same_colour_distractor"] >= 0.95 and q["same_shape_distractor"] >= 0.95, q

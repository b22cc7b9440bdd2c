"""Quantus 0.6 on our maps (interop.quantus): its pointing game and relevance mass accuracy equal
ours where the definitions agree, and differ where they are known to (ties, negative values)."""

import numpy as np
import pytest
import torch

quantus = pytest.importorskip("quantus", reason="Quantus is an optional extra (pip install 'captum-gradeclip[quantus]')")

from captum_gradeclip import ImageGradECLIP  # noqa: E402
from captum_gradeclip.interop.quantus import a_batch, explain_func, layer_names, s_batch  # noqa: E402
from captum_gradeclip.metrics import energy_pointing_game, pointing_game  # noqa: E402


@pytest.fixture(scope="module")
def scenes():
    from captum_gradeclip.models import load_shapes
    from captum_gradeclip.shapes import all_prompts, render_scene

    clip = load_shapes()
    prompts = all_prompts()
    sim = clip.image_similarity(*clip.tokens(prompts))
    sc = [render_scene(seed=s) for s in range(6)]
    pixels = clip.pixels([s.image for s in sc])
    target = torch.tensor([prompts.index(s.prompts[0]) for s in sc])
    masks = torch.stack([s.masks[0] for s in sc])
    maps = ImageGradECLIP(sim, clip.image_layers[-1]).attribute(pixels, target=target)
    return clip, sim, pixels, target, masks, maps


def _quantus(metric, sim, pixels, target, a, s, **kw):
    return np.array(metric(model=sim, x_batch=pixels.numpy(), y_batch=target.numpy(), a_batch=a, s_batch=s, **kw))


def test_pointing_game_and_mass_equal_ours_on_grad_eclip_maps(scenes):
    clip, sim, pixels, target, masks, maps = scenes
    a, s = a_batch(maps, pixels.shape[-2:]), s_batch(masks)
    q_pg = _quantus(quantus.PointingGame(disable_warnings=True), sim, pixels, target, a, s)
    q_mass = _quantus(quantus.RelevanceMassAccuracy(disable_warnings=True), sim, pixels, target, a, s)
    ours_pg = pointing_game(maps, masks, tolerance=0).numpy()
    assert (q_pg == ours_pg).all() and 0 < ours_pg.mean() < 1
    # float32 sums over 4096 pixels after Quantus's division by the max: equal to ~1e-6
    assert np.allclose(q_mass, energy_pointing_game(maps, masks).numpy(), atol=1e-5)


def test_explain_func_runs_inside_quantus(scenes):
    clip, sim, pixels, target, masks, maps = scenes
    fn = explain_func(ImageGradECLIP, layer_names(sim, clip.image_layers[-1]))
    q = _quantus(quantus.PointingGame(disable_warnings=True), sim, pixels, target, None, s_batch(masks),
                 explain_func=fn)
    assert (q == pointing_game(maps, masks, tolerance=0).numpy()).all()
    with pytest.raises(ValueError, match="not submodules"):
        layer_names(sim, torch.nn.Linear(2, 2))


def test_where_the_definitions_differ():
    masks = torch.zeros(1, 4, 4, dtype=torch.bool)
    masks[0, 0, 0] = True
    tie = torch.zeros(1, 4, 4)
    tie[0, 0, 0] = tie[0, 3, 3] = 1.0  # two maxima, one on the mask
    x, y = np.zeros((1, 3, 4, 4), np.float32), np.zeros(1, int)
    pg = quantus.PointingGame(disable_warnings=True)
    assert pg(model=None, x_batch=x, y_batch=y, a_batch=a_batch(tie, (4, 4)), s_batch=s_batch(masks)) == [True]
    assert not pointing_game(tie, masks, tolerance=0).item()  # ours: every tied maximum must hit
    neg = torch.full((1, 4, 4), -0.1)
    neg[0, 0, 0] = 1.0
    mass = quantus.RelevanceMassAccuracy(disable_warnings=True, normalise=False)
    q = mass(model=None, x_batch=x, y_batch=y, a_batch=a_batch(neg, (4, 4)), s_batch=s_batch(masks))[0]
    assert abs(q - 1.0 / (1.0 - 1.5)) < 1e-6  # Quantus: 1 / (1 - 15 * 0.1), no clamping
    assert energy_pointing_game(neg, masks).item() == 1.0  # ours clamps negative values to 0


def test_explain_func_inside_quantus_randomisation(scenes):
    """Quantus's MPRT explains its own randomised copies through our explain_func; the user's
    model is left as it was, and the last-layer correlations are far from 1 (Grad-ECLIP passes)."""
    clip, sim, pixels, target, masks, maps = scenes
    before = {k: v.clone() for k, v in sim.state_dict().items()}
    fn = explain_func(ImageGradECLIP, layer_names(sim, clip.image_layers[-1]))
    m = quantus.MPRT(layer_order="top_down", return_last_correlation=True, disable_warnings=True)
    r = np.array(m(model=sim, x_batch=pixels[:2].numpy(), y_batch=target[:2].numpy(),
                   a_batch=a_batch(maps[:2], pixels.shape[-2:]), explain_func=fn))
    assert r.shape == (2,) and np.isfinite(r).all() and (np.abs(r) < 0.5).all()
    assert all(torch.equal(v, sim.state_dict()[k]) for k, v in before.items())

"""Sanity checks (metrics.sanity): Spearman / SSIM, and cascading randomisation on ShapesCLIP."""

import pytest
import torch

from captum_gradeclip.metrics import cascading_randomization, spearman, ssim


def test_spearman_against_scipy_with_ties():
    stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 5, (3, 40), generator=g).float()  # many ties
    b = a + torch.randn(3, 40, generator=g)
    for x, y, r in zip(a, b, spearman(a, b)):
        assert abs(float(r) - stats.spearmanr(x.double().numpy(), y.double().numpy()).statistic) < 1e-9
    assert spearman(torch.ones(1, 4), torch.ones(1, 4)).item() == 1.0
    assert spearman(torch.ones(1, 4), torch.arange(4.0)[None]).item() == 0.0


def test_ssim_identity_and_inversion():
    x = torch.rand(2, 16, 16, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(ssim(x, x), torch.ones(2))
    assert (ssim(x, -x) < 0.2).all()
    assert torch.allclose(ssim(x, 3 * x + 1), torch.ones(2), atol=1e-6)  # min-max normalised first


@pytest.fixture(scope="module")
def shapes():
    from captum_gradeclip.models import load_shapes
    from captum_gradeclip.shapes import render_scene

    clip = load_shapes()
    scenes = [render_scene(seed=s) for s in range(3)]
    pixels = clip.pixels([s.image for s in scenes])
    texts = [s.prompts[0] for s in scenes]
    sim = clip.image_similarity(*clip.tokens(texts))
    return clip, sim, pixels, torch.arange(3)


def test_a_map_that_cannot_depend_on_the_weights_fails(shapes):
    clip, _, pixels, target = shapes
    const = cascading_randomization(lambda x, t: torch.ones(len(x), 1, 8, 8), clip.image_layers, pixels, target)
    edges = cascading_randomization(lambda x, t: x.diff(dim=-1).abs().sum(1, keepdim=True), clip.image_layers,
                                    pixels, target)
    for r in (const, edges):
        assert not r.passed and torch.allclose(r.spearman, torch.ones_like(r.spearman))
    assert const.stages == ["top 1", "top 2", "top 3", "all 4"]


def test_grad_eclip_passes_and_the_model_is_restored(shapes):
    from captum_gradeclip import ImageGradECLIP

    clip, sim, pixels, target = shapes
    before = {k: v.clone() for k, v in clip.model.state_dict().items()}
    g = ImageGradECLIP(sim, clip.image_layers[-1])
    r = cascading_randomization(lambda x, t: g.attribute(x, target=t), clip.image_layers, pixels, target)
    assert r.passed, r.spearman.mean(1)
    assert all(torch.equal(v, clip.model.state_dict()[k]) for k, v in before.items())

    def boom(x, t):
        if boom.calls:
            raise RuntimeError("fails on the randomised model")
        boom.calls += 1
        return g.attribute(x, target=t)

    boom.calls = 0
    with pytest.raises(RuntimeError):
        cascading_randomization(boom, clip.image_layers, pixels, target)
    assert all(torch.equal(v, clip.model.state_dict()[k]) for k, v in before.items())

"""The authors' ImageNet deletion / insertion protocol (metrics.protocol) against an independent
transcription of their loops (imagenet_eval_deletion.py / imagenet_eval_insertion.py, read at
github Cyang-Zhao/Grad-Eclip), on fixed inputs and the same random seed."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from captum_gradeclip.metrics import (
    ProtocolCurves,
    authors_saliency,
    deletion_protocol,
    insertion_protocol,
    protocol_auc,
    topk_hits,
)

H, W, C = 20, 30, 12


def _classifier():
    g = torch.Generator().manual_seed(3)
    weight = torch.randn(3 * H * W, C, generator=g)
    return lambda x: (x.float().flatten(1) / 255.0 - 0.5) @ weight  # (S, 3, H, W) uint8 -> (S, C)


def _inputs(grid=(5, 6)):
    g = torch.Generator().manual_seed(1)
    image = torch.randint(0, 256, (3, H, W), dtype=torch.uint8, generator=g)
    attribution = torch.rand(*grid, generator=g) * 3 - 1  # not normalised
    return image, attribution


def _authors(image, heatmap, classify, target, insert, seed, kind="quicksort"):
    """Their loop, transcribed: numpy HWC array, np.argsort(-map), torch.rand(n, 3) * 255 into a
    uint8 array, np.zeros canvas for insertion; accuracy() on logits of the evaluated images."""
    torch.manual_seed(seed)
    array = image.permute(1, 2, 0).numpy().copy()
    h, w = heatmap.shape
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    grids = torch.stack((xs.reshape(-1), ys.reshape(-1)), 1)
    order = np.argsort(-heatmap.reshape(-1), kind=kind)
    once = max(1, int(h * w / (2 * 100)))
    canvas = np.zeros(array.shape)
    evaluated = []
    for step in range(1, 101):
        px, py = zip(*grids[order[(step - 1) * once: step * once]].tolist())
        if insert:
            canvas[py, px, :] = array[py, px, :]
        else:
            array[py, px, :] = torch.rand(len(px), 3) * 255.0
        if step % 10 == 0:
            evaluated.append(np.array(np.uint8(canvas if insert else array)))  # PIL.Image.fromarray copies
    batch = torch.from_numpy(np.stack(evaluated)).permute(0, 3, 1, 2)
    logits = classify(batch)
    clean = classify(image[None])
    pred = logits.topk(10, 1, True, True)[1].t()
    correct = pred.eq(torch.tensor([target]).expand_as(pred))
    acc = torch.stack([correct[:k].float().sum(0) for k in (1, 5, 10)], 1)  # (10, 3)
    p = clean.topk(10, 1, True, True)[1][0]
    acc0 = torch.tensor([[float(target in p[:k]) for k in (1, 5, 10)]])
    return torch.cat([acc, acc0]) if insert else torch.cat([acc0, acc])


def _heatmap(attribution):
    e = attribution.clone()
    e -= e.min()
    e /= e.max()
    return F.interpolate(e[None, None], size=(H, W), mode="bilinear", align_corners=False)[0, 0].numpy()


@pytest.mark.parametrize("insert", [False, True])
@pytest.mark.parametrize("target", [0, 7])
@pytest.mark.parametrize("grid", [(H, W), (5, 6)])
def test_equals_the_authors_loop(insert, target, grid):
    """A map at the image's resolution has no ties: their quicksort order is ours. A coarse map
    upsampled has ties (the clamped borders): there our order is the stable one, raster order."""
    image, attribution = _inputs(grid)
    clf = _classifier()
    kind = "quicksort" if grid == (H, W) else "stable"
    assert kind == "stable" or len(np.unique(_heatmap(attribution))) == H * W
    expected = _authors(image, _heatmap(attribution), clf, target, insert, seed=11, kind=kind)
    if insert:
        res = insertion_protocol(image, attribution, clf, target)
    else:
        res = deletion_protocol(image, attribution, clf, target, generator=torch.Generator().manual_seed(11))
    assert isinstance(res, ProtocolCurves)
    assert torch.equal(res.hits, expected)  # 0/1 hits: exact
    assert 0 < res.hits.mean() < 1  # neither all hits nor all misses
    fr = res.fractions
    assert fr.shape == (11,) and torch.allclose(fr[1:-1], torch.arange(1, 10) * 0.05 + (0.05 if insert else 0))
    assert fr[-1 if insert else 0] == (1.0 if insert else 0.0)


def test_auc_is_the_trapezoid_and_topk_are_nested():
    image, attribution = _inputs()
    for target in range(C):
        d = deletion_protocol(image, attribution, _classifier(), target, generator=torch.Generator().manual_seed(0))
        h = d.hits.numpy()
        assert np.allclose(d.auc.numpy(), np.trapezoid(h, dx=0.1, axis=0), atol=1e-6)  # float32 sums of 11 values
        assert (h[:, 0] <= h[:, 1]).all() and (h[:, 1] <= h[:, 2]).all()
    assert torch.allclose(protocol_auc(torch.tensor([0.0, 1.0, 1.0])), torch.tensor(0.75))


def test_step_sizes_and_seed():
    image, attribution = _inputs()
    clf = _classifier()
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a = deletion_protocol(image, attribution, clf, 3, generator=g1)
    b = deletion_protocol(image, attribution, clf, 3, generator=g2)
    assert torch.equal(a.hits, b.hits)
    # 0.5 % of 600 pixels = 3 per step: after 10 steps 30 pixels changed, after 100 steps 300 (50 %)
    from captum_gradeclip.metrics.protocol import protocol_images

    sal = authors_saliency(attribution, (H, W))
    ins = protocol_images(image, sal, insert=True)
    assert ins.shape == (10, 3, H, W)
    assert [(x.flatten(1) != 0).any(0).sum().item() <= 30 * (i + 1) for i, x in enumerate(ins)] == [True] * 10
    assert ((ins[-1] == image).all(0)).sum() >= 300
    # the most salient pixel is the first one inserted
    top = sal.flatten().argmax()
    assert torch.equal(ins[0].flatten(1)[:, top], image.flatten(1)[:, top])


def test_topk_and_errors():
    scores = torch.tensor([[0.1, 0.5, 0.3], [0.9, 0.0, 0.2]])
    assert torch.equal(topk_hits(scores, 2, ks=(1, 2, 10)), torch.tensor([[0.0, 1.0, 1.0], [0.0, 1.0, 1.0]]))
    image, attribution = _inputs()
    with pytest.raises(ValueError, match="uint8"):
        deletion_protocol(image.float(), attribution, _classifier(), 0)
    with pytest.raises(IndexError, match="target"):
        deletion_protocol(image, attribution, _classifier(), C)
    with pytest.raises(ValueError, match="NaN"):
        insertion_protocol(image, attribution * float("nan"), _classifier(), 0)
    flat = authors_saliency(torch.ones(4, 4), (8, 8))
    assert torch.equal(flat, torch.zeros(8, 8))


def _tree(root, n_classes=12):
    from captum_gradeclip.shapes.scenes import COLOUR_NAMES, SHAPES, ShapeSpec, render_scene

    specs = [ShapeSpec(c, s, (0.45, 0.55), 0.5) for c in COLOUR_NAMES for s in SHAPES][:n_classes]
    for k, spec in enumerate(specs):
        d = root / spec.prompt.replace(" ", "_")
        d.mkdir(parents=True)
        render_scene([spec], seed=k).image.save(d / "0.png")
    return sorted(s.prompt for s in specs)


def test_benchmark_protocol_job_on_a_class_tree(tmp_path):
    """The job end to end on ShapesCLIP: labels from the folders, curves nested, AUCs the
    trapezoid of the stored curves, and a rerun resumes (nothing redone, same numbers)."""
    import json

    import pyarrow.parquet as pq

    from captum_gradeclip.cli import main

    names = _tree(tmp_path / "tree")
    argv = ["benchmark", "--protocol", "grad-eclip", "--images", str(tmp_path / "tree"), "--templates", "{}",
            "--methods", "grad-eclip", "--out-dir", str(tmp_path / "out"), "--n", "4"]
    assert main(argv) == 0
    rows = pq.read_table(tmp_path / "out" / "curves" / "shard-00000.parquet").to_pylist()
    assert len(rows) == 4 and {r["method"] for r in rows} == {"Grad-ECLIP (cosine, default)"}
    for r in rows:
        assert names[r["label"]].replace(" ", "_") == r["image"].split("/")[0]
        assert r["target"] == r["label"]  # --target gt
        h = np.array([r[f"deletion_top{k}"] for k in (1, 5, 10)]).T
        assert (h[:, 0] <= h[:, 1]).all() and (h[:, 1] <= h[:, 2]).all()
        assert abs(r["deletion_top1_auc"] - np.trapezoid(h[:, 0], dx=0.1)) < 1e-6
    res = json.loads((tmp_path / "out" / "benchmark.json").read_text())
    assert res["images"] == 4 and res["classes"] == 12
    assert main(argv) == 0  # resumes: the shard is kept
    assert json.loads((tmp_path / "out" / "benchmark.json").read_text())["image"] == res["image"]
    assert main(argv[:-2] + ["--target", "pred", "--n", "4"]) == 2  # another job in the same --out-dir


def test_class_names_and_templates(tmp_path):
    from captum_gradeclip.benchmark.labelled import round_robin
    from captum_gradeclip.benchmark.zeroshot import class_names, templates
    from captum_gradeclip.errors import InputError
    from captum_gradeclip.images import shrink

    assert templates("a photo of a {}.") == ["a photo of a {}."]
    (tmp_path / "t.txt").write_text("a {}.\nthe {}\n")
    assert templates(str(tmp_path / "t.txt")) == ["a {}.", "the {}"]
    (tmp_path / "bad.txt").write_text("a photo\n")
    with pytest.raises(InputError, match="must contain {} for the class name, once"):
        templates(str(tmp_path / "bad.txt"))
    with pytest.raises(InputError, match="cannot read"):
        templates(str(tmp_path / "missing.txt"))
    try:
        import open_clip  # noqa: F401  (the extras environment)
    except ImportError:
        with pytest.raises(InputError, match="open-clip"):
            templates("imagenet")
    else:
        assert len(templates("imagenet")) == 80 and len(class_names("imagenet", [])) == 1000
    assert class_names(None, ["a_red_circle"]) == ["a red circle"]
    with pytest.raises(InputError, match="2 names for 1 classes"):
        (tmp_path / "n.txt").write_text("x\ny\n")
        class_names(str(tmp_path / "n.txt"), ["a"])
    assert round_robin([0, 0, 0, 1, 1, 2], 4) == [0, 3, 5, 1]
    from PIL import Image

    assert shrink(Image.new("RGB", (1280, 960))).size == (853, 640)  # int(1280 / 1.5), the authors' sizes
    assert shrink(Image.new("RGB", (700, 640))).size == (700, 640)

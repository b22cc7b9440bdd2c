"""COCO in, offline: a small COCO-format fixture built here from ShapesCLIP scenes (their own masks
written as COCO instance annotations: polygons, uncompressed RLE, and compressed RLE when pycocotools
is installed; their captions as caption annotations) run through analyze attributes
(--coco-instances: count, size and position probes, no longer n/a), decomposition (--coco-captions:
phrases mined, masks from the instances) and concreteness (--coco-captions); every annotation ends as
a row or an error row. Plus the probe rules and the masks by hand."""

from __future__ import annotations

import json
import math
from importlib.util import find_spec

import pytest
import torch

from captum_gradeclip.analysis.coco import (
    CocoImage,
    CocoObject,
    instance_probes,
    object_mask,
    phrase_masks,
    read_captions,
    read_instances,
)
from captum_gradeclip.errors import InputError


def _uncompressed_rle(mask: torch.Tensor) -> dict:
    flat = mask.T.reshape(-1).tolist()  # COCO's RLE runs over the pixels column by column
    counts, cur, run = [], False, 0
    for v in flat:
        if v != cur:
            counts.append(run)
            cur, run = v, 0
        run += 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


def _segmentation(mask: torch.Tensor, k: int):
    if k % 3 == 1 and find_spec("pycocotools") is not None:
        import numpy as np
        from pycocotools import mask as mask_utils

        rle = mask_utils.encode(np.asfortranarray(mask.numpy().astype("uint8")))
        return {"size": rle["size"], "counts": rle["counts"].decode()}
    return _uncompressed_rle(mask)


def test_masks_polygon_and_rle():
    m = torch.zeros(5, 7, dtype=torch.bool)
    m[1:4, 2:6] = True
    m[4, 0] = True
    assert torch.equal(object_mask(CocoObject("x", (0, 0, 7, 5), _uncompressed_rle(m)), 5, 7), m)
    if find_spec("pycocotools") is not None:
        assert torch.equal(object_mask(CocoObject("x", (0, 0, 7, 5), _segmentation(m, 1)), 5, 7), m)
    poly = object_mask(CocoObject("x", (2, 1, 4, 3), [[2, 1, 5, 1, 5, 3, 2, 3]]), 5, 7)
    assert torch.equal(poly, m.clone().index_put_((torch.tensor([4]), torch.tensor([0])), torch.tensor(False)))
    box = object_mask(CocoObject("x", (2, 1, 4, 3), None), 5, 7)  # no segmentation: the box
    assert int(box.sum()) == 12 and bool(box[1:4, 2:6].all())
    with pytest.raises(InputError, match="polygons or RLE"):
        object_mask(CocoObject("x", (0, 0, 1, 1), "bad"), 5, 7)


def test_probe_rules_by_hand():
    im = CocoImage(7, "im.jpg", 100, 100)
    objs = [CocoObject("dog", (2, 40, 20, 20)),       # left third, 4% of the image: small
            CocoObject("cat", (60, 10, 36, 36)),      # right third, 13%: neither large nor small
            CocoObject("bird", (40, 0, 12, 12)), CocoObject("bird", (40, 80, 12, 12)),
            CocoObject("person", (0, 0, 100, 100), iscrowd=True)]
    got = {(p.category, p.prompt, p.distractor) for p in instance_probes(im, objs, ["dog", "cat", "bird", "person",
                                                                                  "giraffe"])}
    assert ("size", "a small dog", "a large dog") in got
    assert ("position", "a dog on the left", "a dog on the right") in got
    assert ("position", "a cat on the right", "a cat on the left") in got
    assert ("binding", "a dog on the left and a cat on the right", "a dog on the right and a cat on the left") in got
    assert {(p, d) for c, p, d in got if c == "count" and "bird" in p} == {
        ("two birds", "one bird"), ("two birds", "three birds"), ("two birds", "four birds")}
    assert ("object", "a cat", "a giraffe") in got and ("absent", "a giraffe", "a cat") in got
    assert not any(c == "size" and "cat" in p for c, p, _ in got)  # 13% is neither
    assert not any("person" in p for _, p, _ in got)  # a crowd is never probed
    counts = [p for p in instance_probes(im, objs, ["dog", "cat", "bird", "person", "giraffe"]) if p.category == "count"]
    assert {p.objects for p in counts if "bird" in p.prompt} == {(2, 3)}  # the target: both birds


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    """Four ShapesCLIP scenes as a COCO val folder with captions and instances files, plus a
    caption of an unknown image id, a caption without any mined phrase, and a missing image."""
    from captum_gradeclip.shapes import SHAPES, render_scene

    root = tmp_path_factory.mktemp("coco")
    (root / "val").mkdir()
    images, caps, inst = [], [], []
    cats = [{"id": i + 1, "name": s} for i, s in enumerate(SHAPES)]
    for k in range(4):
        sc = render_scene(seed=761_000 + k)
        name = f"{k:012d}.png"
        sc.image.save(root / "val" / name)
        images.append({"id": k + 1, "file_name": name, "width": 64, "height": 64})
        caps.append({"id": 10 * k, "image_id": k + 1, "caption": sc.caption()})
        caps.append({"id": 10 * k + 1, "image_id": k + 1, "caption": sc.caption([0]) + "."})
        for j, (o, m) in enumerate(zip(sc.objects, sc.masks)):
            if not m.any():
                continue
            ys, xs = m.nonzero(as_tuple=True)
            box = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
            inst.append({"id": 100 * k + j, "image_id": k + 1, "category_id": SHAPES.index(o.shape) + 1,
                         "bbox": box, "segmentation": _segmentation(m, j), "iscrowd": 0, "area": int(m.sum())})
    images.append({"id": 99, "file_name": "missing.png", "width": 64, "height": 64})
    inst.append({"id": 9900, "image_id": 99, "category_id": 1, "bbox": [0, 0, 30, 30], "segmentation": [], "iscrowd": 0})
    caps.append({"id": 9901, "image_id": 99, "caption": "a red circle"})
    caps.append({"id": 9902, "image_id": 12345, "caption": "a red circle"})  # no such image
    caps.append({"id": 9903, "image_id": 1, "caption": "the quick brown fox"})  # no phrase to mine
    inst.append({"id": 9904, "image_id": 12345, "category_id": 1, "bbox": [0, 0, 1, 1]})
    (root / "captions.json").write_text(json.dumps({"images": images, "annotations": caps}))
    (root / "instances.json").write_text(json.dumps({"images": images, "annotations": inst, "categories": cats}))
    return root


def test_readers_keep_every_annotation(coco):
    caps, errors = read_captions(coco / "captions.json")
    assert len(caps) + len(errors) == 11 and [e["text"] for e in errors] == ["a red circle"]
    inst = read_instances(coco / "instances.json")
    assert len(inst.errors) == 1 and inst.categories[0] == "circle"
    # decomposition's masks: a phrase naming a category gets its instances' mask, others none
    im = inst.images[1]
    objs = inst.objects[1]
    masks = phrase_masks([f"{objs[0].category}", "zork"], im, objs, inst.categories, (64, 64))
    assert masks.shape == (2, 64, 64) and masks[0].any() and not masks[1].any()
    with pytest.raises(InputError, match="needs \"images\""):
        (coco / "bad.json").write_text("{}")
        read_captions(coco / "bad.json")


def _rows(path):
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def test_attributes_from_instances(coco, tmp_path):
    from captum_gradeclip.cli import main

    out = tmp_path / "attr"
    assert main(["analyze", "attributes", "--coco-instances", str(coco / "instances.json"), "--images",
                 str(coco / "val"), "--out", str(out), "--examples", "1"]) == 0
    rows = _rows(out / "rows.parquet")
    summary = json.loads((out / "summary.json").read_text())
    inst = read_instances(coco / "instances.json")
    expected = sum(len(instance_probes(im, inst.objects[i], inst.categories)) for i, im in inst.images.items())
    assert len(rows) == expected + len(inst.errors)  # every probe a row, every bad annotation an error row
    assert {r["image"] for r in rows if r["error"] and "cannot read image" in r["error"]} == {"missing.png"}
    cats = summary["categories"]
    for c in ("object", "count", "absent"):
        assert cats[c]["n"] > cats[c]["n_errors"] and cats[c]["accuracy"] is not None, c
    assert summary["not_expressible"] == {}
    measured = [r for r in rows if r["error"] is None]
    assert measured and all(r["grad_eclip_pointing"] is not None for r in measured if r["category"] != "absent")
    assert all(r["game_energy"] is not None for r in measured if r["category"] != "absent")
    assert (out / "attributes.png").is_file() and (out / "job_pairs.jsonl").is_file()


def test_decomposition_and_concreteness_from_captions(coco, tmp_path):
    from captum_gradeclip.cli import main

    caps = coco / "captions.json"
    out = tmp_path / "dec"
    assert main(["analyze", "decomposition", "--coco-captions", str(caps), "--coco-instances",
                 str(coco / "instances.json"), "--images", str(coco / "val"), "--out", str(out), "--n-boot", "20",
                 "--figure-pairs", "1", "--allow-unknown-words"]) == 0  # COCO's captions end with a '.', which
    # ShapesCLIP does not know: without the opt-in the shared text check makes those captions error rows
    rows = _rows(out / "rows.parquet")
    errors = [json.loads(x) for x in (out / "errors.jsonl").read_text().splitlines()]
    assert len(rows) + len(errors) == 11  # every caption annotation a row or an error row
    assert any("no adjective(s) + noun phrase" in e["error"] for e in errors)
    assert any("not in \"images\"" in e["error"] for e in errors)
    assert any(e["image"] == "missing.png" for e in errors)
    assert all(r["phrases"] for r in rows)
    assert all(not math.isnan(r["pointing_rate"]) for r in rows)  # every mined phrase names a shape
    s = json.loads((out / "summary.json").read_text())
    zero = sum("word map sums to 0" in e["error"] for e in errors)  # ShapesCLIP's text tower, now and then
    assert s["pairs"] == len(rows) == 8 - zero and zero <= 2
    assert s["clusters"] == 4 and s["resampled"] == "images"  # two captions per image, resampled together
    out = tmp_path / "conc"
    assert main(["analyze", "concreteness", "--coco-captions", str(caps), "--images", str(coco / "val"),
                 "--out", str(out), "--n-boot", "20", "--min-count", "1", "--allow-unknown-words"]) == 0
    words = _rows(out / "rows.parquet")
    errors = [json.loads(x) for x in (out / "errors.jsonl").read_text().splitlines()]
    seen = {(r["image"], r["text"]) for r in words} | {(e["image"], e.get("text")) for e in errors}
    assert seen >= {(c.image, c.caption) for c in read_captions(caps)[0] if c.image != "missing.png"}
    assert {e["image"] for e in errors} >= {"missing.png", "12345"}  # the unreadable image, the unknown id
    s = json.loads((out / "summary.json").read_text())
    assert s["token_level"]["clusters"] == 4 and s["token_level"]["partial_spearman_given_position_and_length"]

"""Study 2 (``analyze attributes``): the per-probe measures against hand computation on 2x2
maps, the summary against bootstrap_ci, probe files (mask PNG, box, bad input), the generated
ShapesCLIP suite, and the command end to end on ShapesCLIP."""

from __future__ import annotations

import json
import math

import pytest
import torch

from captum_gradeclip._io import open_image
from captum_gradeclip.errors import InputError
from captum_gradeclip.analysis import attributes as A
from captum_gradeclip.analysis.probes import load_probes, read_probes
from captum_gradeclip.analysis.stats import bootstrap_ci
from captum_gradeclip.shapes.seeds import SEEDS


def _m(*vals) -> torch.Tensor:
    return torch.tensor(vals, dtype=torch.float32).view(2, 2)


def _mask(*vals) -> torch.Tensor:
    return torch.tensor(vals, dtype=torch.bool).view(2, 2)


# ---- per-map measures: hand computation on 2x2 maps ------------------------------------------
def test_concentration_by_hand():
    assert A.concentration(_m(1, 0, 0, 3)) == pytest.approx(3 / 1)  # max 3, mean 4/4
    assert A.concentration(_m(2, 2, 2, 2)) == pytest.approx(1.0)
    assert A.concentration(_m(-5, 0, 0, 1)) == pytest.approx(4.0)  # negatives clamped: mean 1/4
    assert math.isnan(A.concentration(_m(0, 0, 0, -1)))


def test_energy_shares_by_hand_sum_to_one():
    s = A.energy_shares(_m(1, 2, 3, 4), torch.stack([_mask(1, 0, 0, 0), _mask(0, 0, 0, 1)]))
    assert s.tolist() == pytest.approx([0.1, 0.4, 0.5])
    assert float(s.sum()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="disjoint"):
        A.energy_shares(_m(1, 2, 3, 4), torch.stack([_mask(1, 1, 0, 0), _mask(0, 1, 0, 0)]))
    assert torch.isnan(A.energy_shares(_m(0, 0, 0, 0), _mask(1, 0, 0, 0)[None])).all()


def _probe(category, target, **kw):
    return A.Probe("p", "img", category, "true", "false", target, **kw)


def test_score_probe_by_hand():
    # texts: 0 "true", 1 "false"; Grad-ECLIP's "true" map peaks on the target (bottom right)
    maps = {"grad_eclip": torch.stack([_m(1, 0, 1, 2), _m(4, 0, 0, 0)])}
    objects = torch.stack([_mask(0, 0, 0, 1), _mask(1, 0, 0, 0)])
    row = A.score_probe(_probe("object", _mask(0, 0, 0, 1), objects=objects), torch.tensor([0.3, 0.2]),
                        maps, {"true": 0, "false": 1})
    assert (row.score, row.distractor_score, row.correct) == (pytest.approx(0.3), pytest.approx(0.2), True)
    g = row.maps["grad_eclip"]
    assert g["pointing"] is True
    assert g["energy"] == pytest.approx(2 / 4)
    assert g["concentration"] == pytest.approx(2 / 1)
    assert g["best_object_energy"] == pytest.approx(2 / 4)  # bottom right 2/4 > top left 1/4
    # absent: the prompt names nothing, so "correct" means the (present) distractor scores higher
    row = A.score_probe(_probe("absent", None), torch.tensor([0.3, 0.2]), maps, {"true": 0, "false": 1})
    assert row.correct is False and row.maps["grad_eclip"]["pointing"] is None


def test_binding_shares_come_from_the_swapped_prompt_and_sum_to_one():
    maps = {"grad_eclip": torch.stack([_m(0, 0, 0, 1), _m(1, 2, 3, 4)])}
    p = _probe("binding", _mask(0, 0, 0, 1), colour_match=_mask(0, 1, 0, 0), shape_match=_mask(0, 0, 1, 0))
    g = A.score_probe(p, torch.tensor([0.5, 0.1]), maps, {"true": 0, "false": 1}).maps["grad_eclip"]
    assert (g["share_colour"], g["share_shape"], g["share_elsewhere"]) == (
        pytest.approx(0.2), pytest.approx(0.3), pytest.approx(0.5))
    assert g["share_colour"] + g["share_shape"] + g["share_elsewhere"] == pytest.approx(1.0)


def test_summary_matches_bootstrap_of_the_rows():
    rows = []
    for i, (ok, hit, energy) in enumerate([(True, True, 0.5), (False, True, 0.25), (True, False, 0.0)]):
        r = A.ProbeRow(f"p{i}", f"img{i % 2}", "colour", "a red", "a blue", 0.3, 0.2, ok)
        r.maps["grad_eclip"] = dict(pointing=hit, energy=energy, concentration=2.0, best_object_energy=energy)
        rows.append(r)
    rows.append(A.ProbeRow("bad", "img", "colour", "a red", None, error="cannot read image"))
    s = A.summarize(rows, not_expressible={"count": "n/a: no number words"})
    c = s["categories"]["colour"]
    assert (c["n"], c["n_errors"], s["n_errors"]) == (4, 1, 1)
    # an image's probes are resampled together: img0 holds probes 0 and 2
    assert c["accuracy"] == bootstrap_ci([1.0, 0.0, 1.0], clusters=["img0", "img1", "img0"])
    assert c["accuracy"].mean == pytest.approx(2 / 3)
    assert c["grad_eclip"]["pointing"].mean == pytest.approx(2 / 3)
    assert c["grad_eclip"]["energy"].mean == pytest.approx(0.25)
    assert c["grad_eclip"]["pointing_if_correct"].mean == pytest.approx(0.5)
    assert c["grad_eclip"]["pointing_if_wrong"].mean == pytest.approx(1.0)
    table = A.markdown_table(s)
    assert "| colour | 4 (1 errors) | 67% [" in table and "| count | n/a: no number words | n/a" in table


def test_to_input_geometry_resizes_and_crops_like_clip():
    m = torch.zeros(4, 8, dtype=torch.bool)
    m[:, 0] = True  # the leftmost column falls outside a 4 x 4 centre crop
    assert not A.to_input_geometry(m, (4, 4)).any()
    m = torch.zeros(2, 4, dtype=torch.bool)
    m[0, 1] = True  # 2 x 4 -> resized to 4 x 8, crop columns 2..5: the pixel covers columns 2-3 of rows 0-1
    out = A.to_input_geometry(m, (4, 4))
    assert out.tolist() == [[True, True, False, False], [True, True, False, False], [False] * 4, [False] * 4]


# ---- probe files ------------------------------------------------------------------------------
def _png(path, size, box=None):
    from PIL import Image, ImageDraw

    im = Image.new("RGB" if box is None else "L", size, 0 if box is not None else (40, 40, 40))
    if box is not None:
        ImageDraw.Draw(im).rectangle(box, fill=255)
    im.save(path)
    return path.name


def _write(path, lines):
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return path


def test_probe_file_with_mask_and_box_and_bad_data(tmp_path):
    img = _png(tmp_path / "img.png", (16, 8))  # 16 wide, 8 high
    mask = _png(tmp_path / "m.png", (16, 8), box=(12, 2, 13, 3))  # pixels x 12-13, y 2-3
    wrong = _png(tmp_path / "w.png", (8, 8), box=(0, 0, 1, 1))
    (tmp_path / "broken.png").write_bytes(b"not a png")
    f = _write(tmp_path / "probes.jsonl", [
        {"image": img, "prompt": "a square", "category": "object", "mask": mask},
        {"image": img, "prompt": "a box", "category": "colour", "box": [4, 0, 8, 4], "distractor": "a blue"},
        {"image": img, "prompt": "a thing", "category": "object", "mask": wrong},
        {"image": "broken.png", "prompt": "a thing", "category": "object", "box": [0, 0, 1, 1]},
        {"image": img, "texts": ["a cat"], "category": "absent", "distractor": "a square"},
        {"image": img, "prompt": "a left thing", "category": "object", "box": [0, 0, 2, 8]},
    ])
    lines = read_probes(f)
    # the model's input: 8 x 8 (the 16 x 8 image resized to cover it, centre cropped: columns 4-11)
    scenes, errors = load_probes(lines, lambda im: torch.zeros(3, 8, 8), open_image)
    (sc,) = scenes
    probes = {p.prompt: p for p in sc.probes}
    assert set(probes) == {"a box", "a cat"} and probes["a cat"].target is None
    assert probes["a box"].target[:4, :4].all() and probes["a box"].target.sum() == 16
    assert probes["a box"].distractor == "a blue"
    msgs = {e.probe_id: e.error for e in errors}
    assert "probes.jsonl:1" in msgs and "outside the model's centre crop" in msgs["probes.jsonl:1"]
    assert "8x8" in msgs["probes.jsonl:3"] and "16x8" in msgs["probes.jsonl:3"]
    assert "cannot read image broken.png" in msgs["probes.jsonl:4"]
    assert "outside the model's centre crop" in msgs["probes.jsonl:6"]
    assert len(scenes[0].probes) + len(errors) == len(lines)  # nothing skipped silently


def test_probe_mask_inside_the_crop(tmp_path):
    img = _png(tmp_path / "img.png", (8, 8))
    mask = _png(tmp_path / "m.png", (8, 8), box=(2, 3, 4, 4))
    f = _write(tmp_path / "p.jsonl", [{"image": img, "prompt": "a dot", "category": "object", "mask": mask}])
    (sc,), errors = load_probes(read_probes(f), lambda im: torch.zeros(3, 8, 8), open_image)
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[3:5, 2:5] = True  # PIL's rectangle includes both corners
    assert not errors and torch.equal(sc.probes[0].target, expected)


@pytest.mark.parametrize("line, message", [
    ({"image": "a.png", "prompt": "a dog", "box": [0, 0, 1, 1]}, "needs \"category\""),
    ({"image": "a.png", "prompt": "a dog", "category": "color", "box": [0, 0, 1, 1]}, "unknown category 'color'"),
    ({"image": "a.png", "prompt": "a dog", "category": "object"}, "needs a \"mask\""),
    ({"image": "a.png", "category": "object", "box": [0, 0, 1, 1]}, "needs \"prompt\""),
    ({"image": "a.png", "prompt": "a dog", "category": "object", "box": [3, 0, 1, 1]}, "x1 > x0"),
])
def test_bad_probe_lines_stop_with_one_line(tmp_path, line, message):
    f = _write(tmp_path / "p.jsonl", [{"image": "a.png", "prompt": "ok", "category": "absent"}, line])
    with pytest.raises(InputError, match="p.jsonl:2") as e:
        read_probes(f)
    assert message in str(e.value) and "\n" not in str(e.value)


# ---- the generated suite and the command on ShapesCLIP ---------------------------------------
@pytest.fixture(scope="module")
def clip():
    from captum_gradeclip.models import load_shapes

    return load_shapes()


def test_shapes_suite_ground_truth(clip):
    suite = A.shapes_suite(clip, 3)
    three, two = suite[:3], suite[3:]
    seeds = [int(s.key.split(":")[1]) for s in suite]
    assert all(A.ATTRIBUTES_SEED_START <= s < A.BINDING_SEED_START for s in seeds[:3])
    assert all(A.BINDING_SEED_START <= s < A.BINDING_SEED_START + len(SEEDS["analysis-binding"]) for s in seeds[3:])
    for sc in three:
        cats = {p.category: p for p in sc.probes}
        assert set(cats) == {"object", "colour", "colour+shape", "two objects", "absent"}
        words = set(cats["colour+shape"].prompt.split()[1:])
        assert set(cats["object"].prompt.split()[1:]) < words and set(cats["colour"].prompt.split()[1:]) < words
        assert cats["absent"].target is None and cats["absent"].distractor == cats["colour+shape"].prompt
        for p in sc.probes:
            assert p.objects.shape == (3, 64, 64)
    for sc in two:
        (p,) = sc.probes
        assert p.category == "binding" and p.prompt != p.distractor
        assert not (p.colour_match & p.shape_match).any()
        assert torch.equal(p.target, p.colour_match) != torch.equal(p.target, p.shape_match)
    again = A.shapes_suite(clip, 3)
    assert [p.prompt for s in again for p in s.probes] == [p.prompt for s in suite for p in s.probes]


def test_rows_use_the_model_own_scores_and_metric_maps(clip):
    from captum_gradeclip import ImageGradECLIP
    from captum_gradeclip.metrics import energy_pointing_game, pointing_game

    scene = A.shapes_suite(clip, 1)[0]
    before = [(p.requires_grad) for p in clip.model.parameters()]
    rows, _ = A.measure(clip, [scene])
    assert [p.requires_grad for p in clip.model.parameters()] == before and not clip.model.training
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in clip.model.modules())
    probe = next(p for p in scene.probes if p.category == "colour+shape")
    row = next(r for r in rows if r.probe_id == probe.probe_id)
    ids, mask = clip.tokens([probe.prompt])
    with torch.no_grad():
        img = clip.model.get_image_features(pixel_values=scene.pixels[None])
        txt = clip.model.get_text_features(input_ids=ids, attention_mask=mask)
        img = getattr(img, "pooler_output", img)
        txt = getattr(txt, "pooler_output", txt)
        cos = torch.nn.functional.cosine_similarity(img, txt)
    assert row.score == pytest.approx(float(cos), abs=1e-5)  # float32 cosine of 128-d unit vectors
    sim = clip.image_similarity(ids, mask)
    m = ImageGradECLIP(sim, clip.image_layers[-1]).attribute(scene.pixels[None], target=0)
    assert row.maps["grad_eclip"]["pointing"] == bool(pointing_game(m, probe.target[None])[0])
    assert row.maps["grad_eclip"]["energy"] == pytest.approx(float(energy_pointing_game(m, probe.target[None])[0]),
                                                             abs=1e-5)


def test_command_on_shapes_clip(tmp_path, capsys):
    pq = pytest.importorskip("pyarrow.parquet")

    from captum_gradeclip.cli import main

    assert main(["analyze", "attributes", "--out", str(tmp_path), "--scenes", "2", "--examples", "2"]) == 0
    rows = pq.read_table(tmp_path / "rows.parquet").to_pylist()
    assert len(rows) == 2 * 5 + 2 and all(r["error"] is None for r in rows)
    for r in (r for r in rows if r["category"] == "binding"):
        for m in A.METHODS:
            assert sum(r[f"{m}_share_{k}"] for k in ("colour", "shape", "elsewhere")) == pytest.approx(1.0)
    s = json.loads((tmp_path / "summary.json").read_text())
    assert set(s["categories"]) == {"object", "colour", "colour+shape", "binding", "two objects", "absent"}
    assert set(s["not_expressible"]) == {"count", "size", "position"}
    assert (tmp_path / "attributes.png").stat().st_size > 10_000
    assert "| binding | 2 |" in capsys.readouterr().out
    assert main(["analyze", "attributes", "--out", str(tmp_path), "--maps", str(tmp_path)]) == 2  # needs --pairs
    assert main(["analyze", "attributes", "--out", str(tmp_path), "--scenes", "0"]) == 2
    assert "--scenes and --examples must be >= 1" in capsys.readouterr().err


def test_command_on_a_probe_file_reports_error_rows(tmp_path, capsys):
    pq = pytest.importorskip("pyarrow.parquet")

    from captum_gradeclip.cli import main
    from captum_gradeclip.shapes import render_scene

    sc = render_scene(seed=800_000, n_objects=2)
    sc.image.save(tmp_path / "s.png")
    from PIL import Image

    Image.fromarray(sc.masks[0].numpy().astype("uint8") * 255).save(tmp_path / "m0.png")
    x0, y0, x1, y1 = sc.boxes[1].tolist()
    f = _write(tmp_path / "p.jsonl", [
        {"image": "s.png", "prompt": sc.objects[0].prompt, "category": "colour+shape", "mask": "m0.png"},
        {"image": "s.png", "prompt": sc.objects[1].prompt, "category": "colour+shape", "box": [x0, y0, x1, y1]},
        {"image": "missing.png", "prompt": "a red circle", "category": "object", "box": [0, 0, 4, 4]},
    ])
    assert main(["analyze", "attributes", "--out", str(tmp_path / "o"), "--pairs", str(f)]) == 0
    rows = pq.read_table(tmp_path / "o" / "rows.parquet").to_pylist()
    assert [r["error"] is None for r in rows] == [True, True, False]
    assert "missing.png" in rows[2]["error"]
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert s["n_errors"] == 1 and s["categories"]["object"]["n_errors"] == 1 and s["not_expressible"] == {}
    assert "1 of 3 probes could not be measured" in capsys.readouterr().out
    assert main(["analyze", "attributes", "--out", str(tmp_path / "o"), "--pairs", str(tmp_path / "nope.jsonl")]) == 2
    # the same probes from a finished explain-dataset job on the command's job_pairs.jsonl: same Grad-ECLIP rows
    job = tmp_path / "job"
    assert main(["explain-dataset", "--images", str(tmp_path), "--pairs", str(tmp_path / "o" / "job_pairs.jsonl"),
                 "--out", str(job), "--workers", "0", "--no-progress"]) == 0
    assert main(["analyze", "attributes", "--out", str(tmp_path / "r"), "--pairs", str(f), "--maps", str(job)]) == 0
    read = pq.read_table(tmp_path / "r" / "rows.parquet").to_pylist()
    for a, b in zip(rows[:2], read[:2]):
        assert b["game_pointing"] is None and a["grad_eclip_pointing"] == b["grad_eclip_pointing"]
        assert b["score"] == pytest.approx(a["score"], abs=1e-5)  # float32 scores, batched by the engine
        for k in ("grad_eclip_energy", "grad_eclip_concentration"):  # the job stores maps as float16 (2^-11
            assert b[k] == pytest.approx(a[k], rel=2e-3)  # relative): a ratio of sums of them within ~2 x that


def test_measure_keeps_only_a_few_scenes_per_category_for_the_figure(clip):
    suite = A.shapes_suite(clip, 2)  # 2 three-object scenes, then 2 binding scenes
    rows, kept = A.measure(clip, iter(suite), keep=1)
    assert len(rows) == 2 * 5 + 2
    assert list(kept) == [suite[0].key, suite[2].key] and kept[suite[0].key]["scene"] is suite[0]

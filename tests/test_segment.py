"""Segmentation from maps (captum_gradeclip.segment) and its scores (metrics.segmentation)."""

import math

import numpy as np
import pytest
import torch

from captum_gradeclip.metrics import average_precision, confusion_matrix, foreground_scores, segmentation_scores
from captum_gradeclip.segment import choose_threshold, scene_labels, segment

TRUTH = torch.tensor([[0, 0, 1, 1],
                      [0, 0, 1, 1],
                      [2, 2, 255, 1],
                      [2, 2, 0, 0]])
PRED = torch.tensor([[0, 1, 1, 1],
                     [0, 0, 1, 0],
                     [2, 1, 2, 1],
                     [2, 2, 0, 2]])


def test_miou_by_hand_on_4x4_with_an_ignore_label():
    conf = confusion_matrix(PRED, TRUTH, 3)
    assert conf.sum() == 15  # the 255 pixel is not counted
    s = segmentation_scores(conf)
    # class 0: truth 6 px {00,01,10,11,32,33}; pred 0 on {00,10,11,32} (+13 which is truth 1) -> tp 4, pred 5
    #   IoU = 4 / (6 + 5 - 4) = 4/7
    # class 1: truth 5 px {02,03,12,13,23}; pred 1 on {01,02,03,12,21,23} -> tp 4, pred 6: IoU 4 / 7
    # class 2: truth 4 px {20,21,30,31}; pred 2 on {20,30,31,33} (22 ignored) -> tp 3, pred 4: IoU 3 / 5
    assert torch.allclose(s.iou, torch.tensor([4 / 7, 4 / 7, 3 / 5]))
    assert math.isclose(s.miou, (4 / 7 + 4 / 7 + 3 / 5) / 3, rel_tol=1e-6)
    assert math.isclose(s.pixel_accuracy, 11 / 15)
    assert math.isclose(s.mean_accuracy, (4 / 6 + 4 / 5 + 3 / 4) / 3)
    # a class in neither truth nor prediction is left out of the mean (NaN)
    s4 = segmentation_scores(confusion_matrix(PRED, TRUTH, 4))
    assert math.isnan(float(s4.iou[3])) and math.isclose(s4.miou, s.miou, rel_tol=1e-6)
    # the ignore label changes the counts where it is not ignored
    assert confusion_matrix(PRED, TRUTH.where(TRUTH != 255, 0), 3).sum() == 16
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(PRED, TRUTH, 2)
    with pytest.raises(ValueError, match="integer"):
        confusion_matrix(PRED.float(), TRUTH, 3)


def test_average_precision_against_sklearn_definition():
    scores = torch.tensor([0.9, 0.8, 0.8, 0.4, 0.3, 0.1])
    labels = torch.tensor([1, 0, 1, 0, 1, 0]).bool()
    # thresholds: 0.9 -> P 1, R 1/3; 0.8 (tie) -> P 2/3, R 2/3; 0.4 -> P 2/4; 0.3 -> P 3/5, R 1
    expected = 1 / 3 * 1 + 1 / 3 * (2 / 3) + 1 / 3 * (3 / 5)
    assert math.isclose(average_precision(scores, labels), expected)
    assert math.isnan(average_precision(scores, torch.zeros(6).bool()))


def test_foreground_protocol():
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, :2, :2] = True
    sal = torch.zeros(1, 4, 4)
    sal[0, :2, :2] = 1.0
    sal[0, 3, 3] = 0.5
    f = foreground_scores(sal, mask)  # mean 4.5/16: fg = the 4 mask pixels and (3, 3)
    assert math.isclose(float(f.pixel_accuracy), 15 / 16)
    assert math.isclose(float(f.miou), (4 / 5 + 11 / 12) / 2, rel_tol=1e-6)
    assert math.isclose(float(f.ap), 1.0)
    assert math.isclose(float(foreground_scores(sal, mask, threshold=0.9).miou), 1.0)


def test_segment_argmax_threshold_and_background_prompts():
    maps = torch.zeros(1, 2, 2, 2)
    maps[0, 0, 0, 0] = 1.0  # prompt 0 strong at the top left
    maps[0, 1, 1, 1] = 0.6  # prompt 1 weaker at the bottom right
    lab = segment(maps, (2, 2), threshold=0.5)
    assert lab.tolist() == [[[1, 0], [0, 2]]]
    assert segment(maps, (2, 2), threshold=0.7).tolist() == [[[1, 0], [0, 0]]]
    assert segment(maps, (2, 2), threshold=0.7, normalise="per_prompt").tolist() == [[[1, 0], [0, 2]]]
    bg = torch.zeros(1, 1, 2, 2)
    bg[0, 0, 1, 1] = 0.9
    assert segment(maps, (2, 2), threshold=None, background=bg).tolist()[0][1][1] == 0
    with pytest.raises(ValueError, match="NaN"):
        segment(maps * float("nan"), (2, 2))


def test_shapes_labels_and_threshold_on_held_out_scenes():
    from captum_gradeclip.shapes import all_prompts, render_scene

    scene = render_scene(seed=3)
    lab = scene_labels(scene, all_prompts())
    for obj, m in zip(scene.objects, scene.masks):
        assert (lab[m] == all_prompts().index(obj.prompt) + 1).all()
    assert (lab[~scene.masks.any(0)] == 0).all()
    # maps equal to the true masks: any threshold up to 1 gives mIoU 1 and the lowest is chosen
    k = len(all_prompts())
    maps = torch.zeros(1, k, *lab.shape)
    for j in range(1, k + 1):
        maps[0, j - 1] = (lab == j).float()
    t, miou = choose_threshold([maps], [lab])
    assert t == 0.05 and math.isclose(miou, 1.0)
    assert np.isfinite(miou)


def test_segment_command_writes_labels_and_scores_them(tmp_path):
    """The command on ShapesCLIP scenes with index-PNG masks (and an ignore label): the label PNGs
    are index images, and scores.json equals the confusion matrix recomputed from them."""
    import json

    from PIL import Image

    from captum_gradeclip.cli import main
    from captum_gradeclip.metrics.segmentation import confusion_matrix, segmentation_scores
    from captum_gradeclip.segment.job import read_mask
    from captum_gradeclip.shapes import all_prompts, render_scene

    (tmp_path / "img").mkdir()
    (tmp_path / "masks").mkdir()
    for s in range(3):
        scene = render_scene(seed=s)
        scene.image.save(tmp_path / "img" / f"s{s}.png")
        lab = scene_labels(scene, all_prompts())
        lab[0, :5] = 255  # an ignored strip
        Image.fromarray(lab.numpy().astype(np.uint8), mode="L").save(tmp_path / "masks" / f"s{s}.png")
    (tmp_path / "prompts.txt").write_text("\n".join(all_prompts()) + "\n")
    out = tmp_path / "out"
    argv = ["segment", "--images", str(tmp_path / "img"), "--prompts", str(tmp_path / "prompts.txt"),
            "--masks", str(tmp_path / "masks"), "--out", str(out), "--threshold", "0.4", "--no-progress"]
    assert main(argv) == 0
    conf = 0
    for s in range(3):
        pred = read_mask(out / "labels" / f"s{s}.png")
        truth = read_mask(tmp_path / "masks" / f"s{s}.png")
        assert pred.shape == (64, 64) and pred.max() <= 48
        assert (out / "overlays" / f"s{s}.png").is_file()
        conf = conf + confusion_matrix(pred, truth, 49)
    scores = json.loads((out / "scores.json").read_text())
    expected = segmentation_scores(conf)
    assert math.isclose(scores["miou"], expected.miou, rel_tol=1e-9)
    assert math.isclose(scores["pixel_accuracy"], expected.pixel_accuracy, rel_tol=1e-9)
    assert conf.sum() == 3 * (64 * 64 - 5)
    assert 0 <= scores["fg_ap"] <= 1 and scores["per_class_iou"]["background"] is not None
    Image.new("RGB", (64, 64)).save(tmp_path / "masks" / "s0.png")  # a colour mask: an error row, named
    assert main(argv[:-5] + ["--out", str(tmp_path / "out2"), "--no-progress"]) == 0
    assert "RGB image" in (tmp_path / "out2" / "errors.jsonl").read_text()

"""The task metrics of `onnx2snn eval --task`: hand-computed values on tiny cases (no torch)."""
import contextlib
import copy
import io
import json
import math
import sys

import numpy as np
import pytest

from onnx2snn.errors import UserError
from onnx2snn.tasks import metrics
from onnx2snn.tasks.metrics import Classify, Detect, Regress, Segment, for_task, resize_nearest


# ---------------------------------------------------------------------------------------- classify

def test_classify_top1_top5_ties_count_for_the_sample():
    m = Classify()
    scores = np.array([
        [0.5, 0.9, 0.8, 0.7, 0.6, 0.5, 0.1],   # true 0: 4 classes higher, ties class 5 at 5th place
        [0.9, 0.8, 0.7, 0.6, 0.5, 0.3, 0.4],   # true 6: 5 higher -> wrong at 5
        [0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2],   # true 3: all tie -> right at 1
    ])
    m.add(scores, [0, 6, 3])
    m.add(np.array([[0.7, 0.7, 0.1, 0, 0, 0, 0]], np.float32), np.array([1]))   # ties at the top
    assert m.result() == {"top1": 2 / 4, "top5": 3 / 4}


def test_classify_does_not_depend_on_class_order():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, size=(50, 9)).astype(float)     # many ties
    target = rng.integers(0, 9, size=50)
    a, b = Classify(), Classify()
    a.add(scores, target)
    perm = rng.permutation(9)
    inverse = np.argsort(perm)
    b.add(scores[:, perm], inverse[target])
    assert a.result() == b.result()


def test_classify_labels_flattening_and_small_c():
    m = Classify()
    m.add(np.array([0, 1, 2, 2]), np.array([0, 1, 1, 2]))
    assert m.result() == {"top1": 0.75, "top5": None}
    m = Classify()
    m.add(np.array([[1], [2]]), np.array([1.0, 0.0]))   # [N, 1] integers are labels; whole floats ok
    assert m.result() == {"top1": 0.5, "top5": None}
    m = Classify()
    m.add(np.zeros((2, 1, 2, 3)) + np.arange(6).reshape(1, 1, 2, 3), [5, 4])   # flattened to [2, 6]
    assert m.result() == {"top1": 0.5, "top5": 1.0}
    m = Classify()
    m.add(np.eye(5)[[0, 1]], [0, 2])
    assert m.result() == {"top1": 0.5, "top5": None}


def test_classify_nan_empty_and_errors():
    m = Classify()
    assert m.result() == {"top1": None, "top5": None}
    m.add(np.array([[np.nan, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0]]), [0, 0])
    assert m.result() == {"top1": 0.5, "top5": 0.5}
    with pytest.raises(UserError, match="target label 6 is outside"):
        m.add(np.zeros((1, 6)), [6])
    with pytest.raises(UserError, match="7 classes, earlier batches had 6"):
        m.add(np.zeros((1, 7)), [0])
    with pytest.raises(UserError, match="2 predictions but 3 targets"):
        m.add(np.zeros((2, 6)), [0, 1, 2])
    with pytest.raises(UserError, match="integer labels"):
        m.add(np.zeros((2, 6)), [0.5, 1])
    with pytest.raises(UserError, match="integer labels"):
        m.add(np.array([0.5, 1.0]), [0, 1])


# ----------------------------------------------------------------------------------------- segment

# counted pixels (target, pred): (0,0) (0,1) (1,1) (2,3) (1,0); the ignored pixel predicts class 4
SEG_TARGET = np.array([[[0, 0, 1], [255, 2, 1]]])
SEG_PRED = np.array([[[0, 1, 1], [4, 3, 0]]])
SEG_RESULT = {"miou": (1 / 3 + 1 / 3 + 0 + 0) / 4, "iou": [1 / 3, 1 / 3, 0.0, 0.0, None],
              "pixel_accuracy": 2 / 5, "classes_present": 4}


def _close(got, want):
    """Equal dicts up to float rounding, lists and None compared element by element."""
    assert got.keys() == want.keys()
    for key in want:
        g, w = got[key], want[key]
        if isinstance(w, list):
            assert [None if v is None else pytest.approx(v) for v in w] == g, key
        else:
            assert g == (w if w is None else pytest.approx(w)), key


def _one_hot(labels, c, axis):
    return np.moveaxis(np.eye(c, dtype=np.float32)[labels], -1, axis)


def test_segment_iou_ignored_absent_and_predicted_only_classes():
    m = Segment()
    m.add(_one_hot(SEG_PRED, 5, 1), SEG_TARGET)
    _close(m.result(), SEG_RESULT)
    assert m.result()["iou"][4] is None
    m = Segment(num_classes=5)
    m.add(SEG_PRED, SEG_TARGET.astype(np.uint8))
    _close(m.result(), SEG_RESULT)
    m = Segment(channel_axis=-1)
    m.add(_one_hot(SEG_PRED, 5, -1), SEG_TARGET)
    _close(m.result(), SEG_RESULT)


def test_segment_one_confusion_matrix_over_all_images():
    # image 1 alone: class 0 perfect; image 2 alone: class 0 predicted as 1 everywhere
    m = Segment(num_classes=2)
    m.add(np.zeros((1, 2, 2), int), np.zeros((1, 2, 2), int))
    m.add(np.ones((1, 1, 2), int), np.zeros((1, 1, 2), int))
    # class 0: TP 4, FN 2 -> 4/6; class 1: FP 2 -> 0; not the mean of per-image mIoUs
    _close(m.result(), {"miou": (4 / 6 + 0) / 2, "iou": [4 / 6, 0.0], "pixel_accuracy": 4 / 6,
                        "classes_present": 2})
    assert m.confusion().tolist() == [[4, 2], [0, 0]]


def test_segment_resizes_predictions_by_nearest_neighbour():
    labels = np.array([[[0, 1], [2, 3]]])
    up = np.kron(labels[0], np.ones((2, 2), int))[None]          # each label a 2x2 block
    assert resize_nearest(labels, (4, 4)).tolist() == up.tolist()
    assert resize_nearest(np.arange(3)[None, :, None], (5, 1))[0, :, 0].tolist() == [0, 0, 1, 2, 2]
    assert resize_nearest(np.arange(4)[None, None, :], (1, 2))[0, 0].tolist() == [1, 3]
    m = Segment()
    m.add(_one_hot(labels, 4, 1), up)
    assert m.result() == {"miou": 1.0, "iou": [1.0] * 4, "pixel_accuracy": 1.0, "classes_present": 4}


def test_segment_errors_and_empty():
    assert Segment().result() == {"miou": None, "iou": None, "pixel_accuracy": None, "classes_present": None}
    m = Segment(num_classes=5)
    with pytest.raises(UserError, match="target value 7 is outside"):
        m.add(SEG_PRED, np.where(SEG_TARGET == 2, 7, SEG_TARGET))
    with pytest.raises(UserError, match="target value -1 is outside"):
        m.add(SEG_PRED, np.where(SEG_TARGET == 2, -1, SEG_TARGET))
    with pytest.raises(UserError, match="need num_classes"):
        Segment().add(SEG_PRED, SEG_TARGET)
    with pytest.raises(UserError, match="4 channels but num_classes is 5"):
        m.add(_one_hot(SEG_PRED % 4, 4, 1), SEG_TARGET)
    with pytest.raises(UserError, match="do not fit masks"):
        m.add(np.zeros((1, 5)), SEG_TARGET)
    m = Segment(ignore_index=None, num_classes=5)
    with pytest.raises(UserError, match="target value 255"):
        m.add(SEG_PRED, SEG_TARGET)


# ------------------------------------------------------------------------------------------ detect

def _gt():
    boxes = {  # image: [(category, x, y, w, h)]
        1: [(1, 10, 10, 50, 40), (2, 100, 80, 30, 30)],
        2: [(1, 5, 5, 20, 20), (1, 60, 60, 40, 50), (2, 0, 100, 80, 20)],
        3: [(2, 30, 30, 60, 60)],
    }
    anns = [{"id": i + 1, "image_id": img, "category_id": c, "bbox": [x, y, w, h]}   # no area, no iscrowd
            for i, (img, c, x, y, w, h) in enumerate((img, *b) for img, bs in boxes.items() for b in bs)]
    return {"images": [{"id": i, "width": 200, "height": 160, "file_name": f"{i}.jpg"} for i in (1, 2, 3)],
            "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
            "annotations": anns}


# per image: (xyxy boxes, scores, labels): hits at various IoUs, misses, a wrong class, duplicates
DETS = {
    1: ([[12, 11, 60, 52], [100, 80, 130, 110], [0, 0, 40, 40]], [0.9, 0.8, 0.99], [1, 2, 1]),
    2: ([[5, 5, 25, 25], [70, 65, 100, 110], [0, 100, 80, 120], [0, 100, 80, 120], [6, 5, 25, 26]],
        [0.7, 0.95, 0.6, 0.65, 0.4], [1, 1, 1, 2, 1]),
    3: ([[35, 30, 95, 85]], [0.5], [2]),
}


def _pycocotools_stats(gt, dets, image_ids):
    """COCO bbox stats computed directly with pycocotools."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    gt = copy.deepcopy(gt)
    for a in gt["annotations"]:
        a["area"], a["iscrowd"] = a["bbox"][2] * a["bbox"][3], 0
    results = [{"image_id": img, "category_id": c, "score": s, "bbox": [x1, y1, x2 - x1, y2 - y1]}
               for img in image_ids for (x1, y1, x2, y2), s, c in zip(*dets[img])]
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        e = COCOeval(coco, coco.loadRes(results), "bbox")
        e.params.imgIds = list(image_ids)
        e.evaluate()
        e.accumulate()
        e.summarize()
    return e.stats


def _add(m, dets, image_ids):
    m.add([dets[i] for i in image_ids], [{"image_id": i, "width": 200, "height": 160} for i in image_ids])


def test_detect_matches_pycocotools(tmp_path, capsys):
    pytest.importorskip("pycocotools", reason="--task detect needs pycocotools (the 'tasks' extra)")
    gt = _gt()
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(gt))
    m = Detect(path)
    _add(m, DETS, [1, 2])
    _add(m, DETS, [3])
    got = m.result()
    want = _pycocotools_stats(gt, DETS, [1, 2, 3])
    assert 0 < want[0] < want[1] < 1
    assert (got["map"], got["map50"], got["map75"]) == (want[0], want[1], want[2])
    assert got["images"] == 3 and got["detections"] == 9
    assert gt == _gt()                       # the file's dict is not modified
    # only the images added count
    m2 = Detect(gt).fresh()
    _add(m2, DETS, [2, 3])
    want = _pycocotools_stats(gt, DETS, [2, 3])
    assert (m2.result()["map"], m2.result()["map50"]) == (want[0], want[1])
    assert capsys.readouterr().out == ""     # pycocotools' prints are silenced


def test_detect_perfect_and_empty():
    pytest.importorskip("pycocotools", reason="--task detect needs pycocotools (the 'tasks' extra)")
    gt = _gt()
    m = Detect(gt)
    for img in gt["images"]:
        anns = [a for a in gt["annotations"] if a["image_id"] == img["id"]]
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)], np.float32)
        m.add([{"boxes": boxes, "scores": np.ones(len(anns)), "labels": np.array([a["category_id"] for a in anns])}],
              [{"image_id": np.int64(img["id"])}])
    assert m.result() == {"map": 1.0, "map50": 1.0, "map75": 1.0, "images": 3, "detections": 6}
    m = m.fresh()
    assert m.result() == {"map": None, "map50": None, "map75": None, "images": 0, "detections": 0}
    m.add([(np.zeros((0, 4)), [], [])] * 2, [{"image_id": 1}, {"image_id": 3}])
    assert m.result() == {"map": 0.0, "map50": 0.0, "map75": 0.0, "images": 2, "detections": 0}
    assert m.detections() == []


def test_detect_errors(tmp_path):
    pytest.importorskip("pycocotools", reason="--task detect needs pycocotools (the 'tasks' extra)")
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(_gt()))
    m = Detect(str(path))
    one = ([[0, 0, 10, 10]], [0.5], [1])
    with pytest.raises(UserError, match=r"category id 7 is not in .*gt\.json"):
        m.add([([[0, 0, 10, 10]], [0.5], [7])], [{"image_id": 1}])
    with pytest.raises(UserError, match="image_id 9 is not in"):
        m.add([one], [{"image_id": 9}])
    with pytest.raises(UserError, match=r"boxes must be \[K, 4\]"):
        m.add([([0, 0, 10, 10], [0.5], [1])], [{"image_id": 1}])
    with pytest.raises(UserError, match="2 boxes, 1 scores and 1 labels"):
        m.add([([[0, 0, 10, 10]] * 2, [0.5], [1])], [{"image_id": 1}])
    with pytest.raises(UserError, match="finite"):
        m.add([([[0, 0, np.inf, 10]], [0.5], [1])], [{"image_id": 1}])
    with pytest.raises(UserError, match="x2 < x1"):
        m.add([([[10, 0, 5, 10]], [0.5], [1])], [{"image_id": 1}])
    with pytest.raises(UserError, match="1 predictions but 2 targets"):
        m.add([one], [{"image_id": 1}, {"image_id": 2}])
    m.add([one], [{"image_id": 1}])
    with pytest.raises(UserError, match="image_id 1 was added twice"):
        m.add([one], [{"image_id": 1}])
    with pytest.raises(UserError, match="cannot read COCO annotations"):
        Detect(tmp_path / "missing.json")
    with pytest.raises(UserError, match="list of 'categories'"):
        Detect({"images": []})


def test_detect_without_pycocotools(monkeypatch):
    monkeypatch.setitem(sys.modules, "pycocotools.coco", None)     # import fails
    with pytest.raises(UserError, match=r"task detect needs pycocotools: pip install 'onnx2snn\[tasks\]'"):
        Detect(_gt())


# ----------------------------------------------------------------------------------------- regress

def test_regress_mse_psnr_and_peak():
    m = Regress()
    m.add(np.array([[1.0, 2.0]]), np.array([[0.0, 2.0]]))
    m.add(np.array([[4.0, 4.0]], np.float32), np.array([[4.0, 6.0]]))
    # squared errors 1, 0, 0, 4 -> mse 5/4; targets' range 6 - 0 over both batches
    assert m.result() == pytest.approx({"mse": 1.25, "psnr": 10 * math.log10(36 / 1.25)})
    m = Regress(peak=255)
    m.add([1.0, 2.0, 4.0, 4.0], [0.0, 2.0, 4.0, 6.0])
    assert m.result() == pytest.approx({"mse": 1.25, "psnr": 10 * math.log10(255 ** 2 / 1.25)})
    m = m.fresh()
    assert m.result() == {"mse": None, "psnr": None}
    m.add([[0.5, 0.25]], [[0.5, 0.25]])
    assert m.result() == {"mse": 0.0, "psnr": math.inf}
    m = Regress()
    m.add([1.0, 3.0], [2.0, 2.0])                 # constant targets, no peak: psnr undefined
    assert m.result() == {"mse": 1.0, "psnr": None}


def test_regress_errors():
    with pytest.raises(UserError, match=r"prediction shape \(2, 1\) differs from target shape \(2,\)"):
        Regress().add(np.zeros((2, 1)), np.zeros(2))
    with pytest.raises(UserError, match="peak must be a positive number"):
        Regress(peak=0)


# ----------------------------------------------------------------------------------------- factory

def test_for_task():
    m = for_task("segment", num_classes=3, ignore_index=None)
    assert (type(m), m.num_classes, m.ignore_index) == (Segment, 3, None)
    assert [(c.name, c.primary, c.higher_is_better) for c in (Classify, Segment, Detect, Regress)] == [
        ("classify", "top1", True), ("segment", "miou", True), ("detect", "map", True), ("regress", "psnr", True)]
    assert isinstance(for_task("regress", peak=1.0), Regress)
    assert metrics.TASKS == ("classify", "segment", "detect", "regress")
    with pytest.raises(UserError, match=r"^task pose: expected classify, segment, detect or regress$"):
        for_task("pose")

"""The scoring metrics of `onnx2snn eval --task classify|segment|detect|regress`.

Each metric accumulates over batches (`add(pred, target)`) and reports once (`result()`); one
instance scores the ANN and one more each SNN time-step count T (`fresh()` makes an empty copy with
the same options; Detect's copies share the loaded ground truth). Sums are kept in float64 and
counts in int64, so memory stays flat over the data set - except for detection, whose COCO
evaluation needs every detection (kept as one small float64 array per image).

`result()` returns plain Python values: floats (accuracy-like figures as fractions in [0, 1]),
lists, or None for a figure that is undefined - in particular every figure when nothing was added.
NumPy only; detection imports pycocotools when a Detect is made.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import os

import numpy as np

from ..errors import UserError, param

TASKS = ("classify", "segment", "detect", "regress")


def _integers(a: np.ndarray, what: str) -> np.ndarray:
    """`a` as int64: integer arrays as they are, float arrays only when every value is whole."""
    if a.dtype.kind in "iu":
        return a.astype(np.int64, copy=False)
    if a.dtype.kind == "f" and np.all(np.isfinite(a)) and np.all(a == np.round(a)):
        return a.astype(np.int64)
    raise UserError(f"{what} must hold integer labels (got dtype {a.dtype})")


def _fraction(num, den):
    return float(num) / float(den) if den else None


class Metric:
    """Base of the task metrics: `add` batches, then read `result()`.

    name: the task ("classify", "segment", "detect", "regress"); primary: the key in `result()` of
    the headline figure; higher_is_better: whether a larger primary figure is better.
    """
    name: str = ""
    primary: str = ""
    higher_is_better: bool = True

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        raise NotImplementedError

    def fresh(self) -> "Metric":
        """An empty metric with the same options (for the next model or T)."""
        new = copy.copy(self)
        new._reset()
        return new

    def add(self, pred, target) -> None:
        raise NotImplementedError

    def merge(self, other: "Metric") -> None:
        """Add what `other` (a fresh copy given later batches: one batch, or a cluster shard's) has
        seen, as if its batches had been added here in order."""
        raise NotImplementedError

    def result(self) -> dict:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name}: {self.result()})"


class Classify(Metric):
    """Top-1 and top-5 accuracy.

    pred: scores [N, C] (any numeric dtype; rank > 2 is flattened to [N, -1]) or integer labels [N]
    (also [N, 1]); target: integer labels [N] (any shape with N elements).

    Ties: a sample is correct at k when fewer than k classes score strictly higher than its true
    class - ties go in the sample's favour, so the figure does not depend on any sort order. A NaN
    score of the true class counts as wrong. result: {"top1", "top5"} as fractions; top5 is None
    when C <= 5 or when any batch gave labels instead of scores.
    """
    name = "classify"
    primary = "top1"
    higher_is_better = True

    def _reset(self) -> None:
        self._n = 0
        self._top1 = 0
        self._top5 = 0
        self._top5_defined = True
        self._classes = None

    def add(self, pred, target) -> None:
        pred = np.asarray(pred)
        if pred.ndim == 0:
            raise UserError("classify: predictions must be scores [N, C] or labels [N], got a scalar")
        n = len(pred)
        target = _integers(np.asarray(target), "classify target").reshape(-1)
        if len(target) != n:
            raise UserError(f"classify: {n} predictions but {len(target)} targets")
        if pred.ndim == 1 or (pred.dtype.kind in "iu" and pred.size == n):
            labels = _integers(pred, "classify predictions of rank 1").reshape(-1)
            self._top1 += int(np.count_nonzero(labels == target))
            self._top5_defined = False
            self._n += n
            return
        scores = pred.reshape(n, -1)
        c = scores.shape[1]
        if self._classes is not None and c != self._classes:
            raise UserError(f"classify: predictions have {c} classes, earlier batches had {self._classes}")
        self._classes = c
        bad = (target < 0) | (target >= c)
        if bad.any():
            raise UserError(f"classify: target label {int(target[bad][0])} is outside [0, {c}) "
                            f"for predictions of {c} classes")
        true = scores[np.arange(n), target]
        higher = np.count_nonzero(scores > true[:, None], axis=1)
        if scores.dtype.kind in "fc":
            higher[np.isnan(true)] = c          # never correct
        self._top1 += int(np.count_nonzero(higher < 1))
        if c > 5:
            self._top5 += int(np.count_nonzero(higher < 5))
        else:
            self._top5_defined = False
        self._n += n

    def merge(self, other: "Classify") -> None:
        if not other._n:
            return
        if self._classes is not None and other._classes is not None and other._classes != self._classes:
            raise UserError(f"classify: predictions have {other._classes} classes, earlier batches had {self._classes}")
        self._classes = self._classes if other._classes is None else other._classes
        self._n += other._n
        self._top1 += other._top1
        self._top5 += other._top5
        self._top5_defined &= other._top5_defined

    def result(self) -> dict:
        return {"top1": _fraction(self._top1, self._n),
                "top5": _fraction(self._top5, self._n) if self._top5_defined else None}


def resize_nearest(labels: np.ndarray, size) -> np.ndarray:
    """Nearest-neighbour resize of label maps [N, *spatial] to [N, *size].

    Output index i along an axis of input length h and output length H reads input index
    floor((i + 0.5) * h / H) (pixel centres; computed exactly in integers as (2i + 1) * h // (2H),
    always < h) - the mapping of PIL's NEAREST and torch's "nearest-exact".
    """
    for axis, (h, H) in enumerate(zip(labels.shape[1:], size), start=1):
        if h != H:
            index = ((2 * np.arange(H, dtype=np.int64) + 1) * h) // (2 * H)
            labels = np.take(labels, index, axis=axis)
    return labels


class Segment(Metric):
    """Semantic segmentation: mean IoU by Pascal VOC's definition.

    pred: scores [N, C, H, W] (argmax over `channel_axis`) or integer label maps [N, H, W];
    target: integer masks [N, H', W'] (any number of spatial axes works the same way). A prediction
    of another spatial size is resized to the mask's by nearest neighbour (see resize_nearest) after
    the argmax. num_classes None: C is the channel count of the scores (label maps then need
    num_classes).

    One confusion matrix over all pixels of all images; pixels whose target is ignore_index (None:
    none) are skipped; any other target outside [0, C) is an error. IoU of class c = TP / (TP + FP +
    FN). result: {"miou": mean over the classes whose union TP + FP + FN > 0, "iou": per-class list
    (None where the union is empty: the class is neither in the targets nor predicted),
    "pixel_accuracy": TP summed over classes / counted pixels, "classes_present": classes counted in
    the mean}.
    """
    name = "segment"
    primary = "miou"
    higher_is_better = True

    def __init__(self, num_classes: int | None = None, ignore_index: int | None = 255,
                 channel_axis: int = 1) -> None:
        if num_classes is not None and int(num_classes) < 1:
            raise UserError(f"segment: num_classes must be >= 1, got {num_classes}")
        self.num_classes = None if num_classes is None else int(num_classes)
        self.ignore_index = ignore_index
        self.channel_axis = channel_axis
        super().__init__()

    def _reset(self) -> None:
        self._classes = self.num_classes
        self._confusion = None        # [target class, predicted class], int64
        self._added = False

    def add(self, pred, target) -> None:
        pred = np.asarray(pred)
        target = _integers(np.asarray(target), "segment target")
        if target.ndim < 2:
            raise UserError(f"segment: target masks must be [N, H, W], got shape {target.shape}")
        if pred.ndim == target.ndim + 1:
            axis = self.channel_axis + pred.ndim if self.channel_axis < 0 else self.channel_axis
            if not 1 <= axis < pred.ndim:
                raise UserError(f"segment: channel axis {self.channel_axis} does not fit predictions "
                                f"of shape {pred.shape}")
            c = pred.shape[axis]
            if self.num_classes is not None and c != self.num_classes:
                raise UserError(f"segment: predictions have {c} channels but num_classes is {self.num_classes}")
            labels = pred.argmax(axis=axis)
        elif pred.ndim == target.ndim:
            if pred.dtype.kind not in "iu":
                raise UserError(f"segment: predictions of shape {pred.shape} for masks of shape "
                                f"{target.shape} must be integer label maps (got dtype {pred.dtype})")
            if self.num_classes is None:
                raise UserError("segment: label-map predictions need num_classes")
            c = self.num_classes
            labels = pred
        else:
            raise UserError(f"segment: predictions of shape {pred.shape} do not fit masks of shape "
                            f"{target.shape}: expected scores [N, C, H, W] or label maps [N, H, W]")
        if len(labels) != len(target):
            raise UserError(f"segment: {len(labels)} predictions but {len(target)} masks")
        if self._classes is not None and c != self._classes:
            raise UserError(f"segment: predictions have {c} classes, earlier batches had {self._classes}")
        self._classes = c
        labels = resize_nearest(labels, target.shape[1:]).astype(np.int64, copy=False)
        if self.ignore_index is not None:
            keep = target != self.ignore_index
            target, labels = target[keep], labels[keep]
        else:
            target, labels = target.reshape(-1), labels.reshape(-1)
        bad = (target < 0) | (target >= c)
        if bad.any():
            raise UserError(f"segment: target value {int(target[bad][0])} is outside [0, {c}) and is not "
                            f"the ignore index {self.ignore_index}")
        bad = (labels < 0) | (labels >= c)
        if bad.any():
            raise UserError(f"segment: predicted label {int(labels[bad][0])} is outside [0, {c})")
        counts = np.bincount(target * c + labels, minlength=c * c).astype(np.int64, copy=False)
        if self._confusion is None:
            self._confusion = np.zeros((c, c), np.int64)
        self._confusion += counts.reshape(c, c)
        self._added = True

    def merge(self, other: "Segment") -> None:
        if not other._added:
            return
        if self._classes is not None and other._classes != self._classes:
            raise UserError(f"segment: predictions have {other._classes} classes, earlier batches had {self._classes}")
        self._classes = other._classes
        if self._confusion is None:
            self._confusion = np.zeros_like(other._confusion)
        self._confusion += other._confusion
        self._added = True

    def confusion(self) -> np.ndarray | None:
        """The confusion matrix so far: rows target classes, columns predicted classes."""
        return None if self._confusion is None else self._confusion.copy()

    def result(self) -> dict:
        if not self._added:
            return {"miou": None, "iou": None, "pixel_accuracy": None, "classes_present": None}
        cm = self._confusion
        tp = np.diag(cm)
        union = cm.sum(axis=0) + cm.sum(axis=1) - tp
        iou = [float(t) / float(u) if u else None for t, u in zip(tp.tolist(), union.tolist())]
        present = [v for v in iou if v is not None]
        return {"miou": float(np.mean(present)) if present else None,
                "iou": iou,
                "pixel_accuracy": _fraction(tp.sum(), cm.sum()),
                "classes_present": len(present)}


def _pycocotools():
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise UserError(f"{param('task')} detect needs pycocotools: pip install 'onnx2snn[tasks]'") from None
    return COCO, COCOeval


def _plain_id(value):
    """A NumPy scalar id as the Python value JSON would hold."""
    return value.item() if isinstance(value, np.generic) else value


def _ground_truth(annotations, source: str) -> dict:
    """A copy of a COCO annotation dict fit for pycocotools: every annotation gets "iscrowd" (0) and
    "area" (box w*h) when missing, and the annotations are numbered 1..n when any id is missing,
    repeated or < 1 (pycocotools takes a ground-truth id of 0 for "unmatched")."""
    if not isinstance(annotations, dict):
        raise UserError(f"{source}: a COCO annotation file holds an object, not {type(annotations).__name__}")
    for key in ("images", "categories"):
        if not isinstance(annotations.get(key), list):
            raise UserError(f"{source}: COCO annotations need a list of {key!r}")
    gt = dict(annotations)
    anns = []
    for i, ann in enumerate(annotations.get("annotations") or []):
        try:
            _, _, w, h = (float(v) for v in ann["bbox"])
            if "image_id" not in ann or "category_id" not in ann:
                raise KeyError("image_id")
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{source}: annotation {i} needs image_id, category_id and bbox [x, y, w, h]") from None
        ann = dict(ann)
        ann.setdefault("iscrowd", 0)
        if "area" not in ann:
            ann["area"] = w * h
        anns.append(ann)
    ids = [ann.get("id") for ann in anns]
    if any(not isinstance(i, (int, np.integer)) or i < 1 for i in ids) or len(set(ids)) != len(ids):
        for number, ann in enumerate(anns, start=1):
            ann["id"] = number
    gt["annotations"] = anns
    try:
        gt["images"] = [dict(img, id=img["id"]) for img in annotations["images"]]
        gt["categories"] = [dict(cat, id=cat["id"]) for cat in annotations["categories"]]
    except (KeyError, TypeError):
        raise UserError(f"{source}: every image and category needs an id") from None
    return gt


class Detect(Metric):
    """Object detection: COCO box mAP through pycocotools.

    annotations: the path of a COCO-format JSON file, or its loaded dict (not modified).
    pred: one entry per image, (boxes [K, 4] xyxy in the original image's pixels, scores [K],
    labels [K] COCO category ids), or a dict with keys "boxes", "scores", "labels"; target: one
    entry per image, a dict holding "image_id" (other keys ignored) or the id itself.

    result: COCOeval (iouType "bbox", COCO's default parameters: at most 100 detections an image)
    restricted to the images added: {"map": AP@[.5:.95] (stats[0]), "map50": stats[1], "map75":
    stats[2], "images": images added, "detections": detections added}. No detections at all give
    0.0 when the images hold ground-truth boxes; a figure pycocotools leaves undefined (-1: no
    ground truth in the images added) is None.
    """
    name = "detect"
    primary = "map"
    higher_is_better = True

    def __init__(self, annotations) -> None:
        COCO, _ = _pycocotools()
        if isinstance(annotations, (str, os.PathLike)):
            self.source = os.fspath(annotations)
            try:
                with open(self.source, encoding="utf-8") as f:
                    annotations = json.load(f)
            except (OSError, ValueError) as e:
                raise UserError(f"{self.source}: cannot read COCO annotations: {e}") from None
        else:
            self.source = "the COCO annotations"
        gt = _ground_truth(annotations, self.source)
        self._image_ids = {_plain_id(img["id"]) for img in gt["images"]}
        self._category_ids = {_plain_id(cat["id"]) for cat in gt["categories"]}
        with contextlib.redirect_stdout(io.StringIO()):
            self._coco = COCO()
            self._coco.dataset = gt
            self._coco.createIndex()
        super().__init__()

    def _reset(self) -> None:
        self._images = []        # image ids in the order added
        self._seen = set()
        self._dets = []          # per image: (image id, float64 [K, 6]: x, y, w, h, score, category)
        self._count = 0

    def add(self, pred, target) -> None:
        pred, target = list(pred), list(target)
        if len(pred) != len(target):
            raise UserError(f"detect: {len(pred)} predictions but {len(target)} targets")
        for p, t in zip(pred, target):
            image_id = _plain_id(t.get("image_id") if isinstance(t, dict) else t)
            if image_id is None:
                raise UserError("detect: a target has no image_id")
            if image_id not in self._image_ids:
                raise UserError(f"detect: image_id {image_id!r} is not in {self.source}")
            if image_id in self._seen:
                raise UserError(f"detect: image_id {image_id!r} was added twice")
            rows = self._rows(p, image_id)
            self._seen.add(image_id)
            self._images.append(image_id)
            if len(rows):
                self._dets.append((image_id, rows))
                self._count += len(rows)

    def _rows(self, p, image_id) -> np.ndarray:
        where = f"detect: image {image_id!r}"
        if isinstance(p, dict):
            try:
                p = (p["boxes"], p["scores"], p["labels"])
            except KeyError as e:
                raise UserError(f"{where}: prediction dict lacks {e}") from None
        try:
            boxes, scores, labels = p
        except (TypeError, ValueError):
            raise UserError(f"{where}: a prediction is (boxes, scores, labels)") from None
        boxes = np.asarray(boxes, dtype=np.float64)
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        labels = np.asarray(labels)
        if boxes.size == 0 and scores.size == 0 and labels.size == 0:
            return np.zeros((0, 6))
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise UserError(f"{where}: boxes must be [K, 4] (x1, y1, x2, y2), got shape {boxes.shape}")
        labels = _integers(labels, f"{where}: labels").reshape(-1)
        if not len(boxes) == len(scores) == len(labels):
            raise UserError(f"{where}: {len(boxes)} boxes, {len(scores)} scores and {len(labels)} labels")
        if not (np.all(np.isfinite(boxes)) and np.all(np.isfinite(scores))):
            raise UserError(f"{where}: boxes and scores must be finite")
        unknown = [c for c in np.unique(labels).tolist() if c not in self._category_ids]
        if unknown:
            raise UserError(f"{where}: category id {unknown[0]} is not in {self.source}")
        wh = boxes[:, 2:] - boxes[:, :2]
        if (wh < 0).any():
            raise UserError(f"{where}: box {boxes[(wh < 0).any(axis=1)][0].tolist()} has x2 < x1 or y2 < y1 "
                            "(boxes are x1, y1, x2, y2)")
        return np.concatenate([boxes[:, :2], wh, scores[:, None], labels[:, None].astype(np.float64)], axis=1)

    def merge(self, other: "Detect") -> None:
        for image_id in other._images:
            if image_id in self._seen:
                raise UserError(f"detect: image_id {image_id!r} was added twice")
            self._seen.add(image_id)
            self._images.append(image_id)
        self._dets.extend(other._dets)
        self._count += other._count

    def __getstate__(self):         # pickled (to or from a cluster's worker): without the ground truth,
        state = dict(self.__dict__)     # which stays with the metric that computes the result
        state["_coco"] = None
        return state

    def __copy__(self):             # fresh(): the copy keeps the ground truth
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        return new

    def detections(self) -> list:
        """The detections added, as a COCO result list (bbox x, y, w, h)."""
        return [{"image_id": image_id, "category_id": int(row[5]), "bbox": row[:4].tolist(), "score": float(row[4])}
                for image_id, rows in self._dets for row in rows]

    def result(self) -> dict:
        out = {"map": None, "map50": None, "map75": None, "images": len(self._images), "detections": self._count}
        if not self._images:
            return out
        COCO, COCOeval = _pycocotools()
        with contextlib.redirect_stdout(io.StringIO()):
            found = self.detections()
            if found:
                dt = self._coco.loadRes(found)
            else:       # loadRes cannot take an empty list: an empty result set of the same images
                dt = COCO()
                dt.dataset = {"images": list(self._coco.dataset["images"]),
                              "categories": copy.deepcopy(self._coco.dataset["categories"]), "annotations": []}
                dt.createIndex()
            evaluation = COCOeval(self._coco, dt, "bbox")
            evaluation.params.imgIds = sorted(self._images)
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
        for key, value in zip(("map", "map50", "map75"), evaluation.stats[:3]):
            out[key] = float(value) if value >= 0 else None
        return out


class Regress(Metric):
    """Regression / image restoration: mean squared error and PSNR.

    pred, target: float arrays of the same shape [N, ...]. result: {"mse": mean of the squared
    differences over every element added, "psnr": 10 * log10(peak^2 / mse) in dB}. peak: the given
    value (e.g. 1.0 or 255 for images), else the range of the targets, max - min over every target
    element added (so one data set's PSNR does not depend on batching; with constant targets the
    range is 0 and psnr is None). mse 0 gives psnr inf.
    """
    name = "regress"
    primary = "psnr"
    higher_is_better = True       # of psnr; mse is better lower

    def __init__(self, peak: float | None = None) -> None:
        if peak is not None and not (math.isfinite(float(peak)) and float(peak) > 0):
            raise UserError(f"regress: peak must be a positive number, got {peak}")
        self.peak = None if peak is None else float(peak)
        super().__init__()

    def _reset(self) -> None:
        self._sse = 0.0
        self._count = 0
        self._low = math.inf
        self._high = -math.inf

    def add(self, pred, target) -> None:
        pred = np.asarray(pred, dtype=np.float64)
        target = np.asarray(target, dtype=np.float64)
        if pred.shape != target.shape:
            raise UserError(f"regress: prediction shape {pred.shape} differs from target shape {target.shape}")
        if not target.size:
            return
        diff = (pred - target).reshape(-1)
        self._sse += float(np.dot(diff, diff))
        self._count += diff.size
        self._low = min(self._low, float(target.min()))
        self._high = max(self._high, float(target.max()))

    def merge(self, other: "Regress") -> None:
        self._sse += other._sse
        self._count += other._count
        self._low = min(self._low, other._low)
        self._high = max(self._high, other._high)

    def result(self) -> dict:
        if not self._count:
            return {"mse": None, "psnr": None}
        mse = self._sse / self._count
        peak = self.peak if self.peak is not None else self._high - self._low
        if mse == 0:
            psnr = math.inf
        elif not peak > 0:      # constant targets and no peak given
            psnr = None
        else:                   # a NaN mse stays NaN
            psnr = 10.0 * math.log10(peak * peak / mse)
        return {"mse": mse, "psnr": psnr}


def for_task(task: str, **options) -> Metric:
    """The metric of `--task`: classify, segment, detect or regress; options go to its constructor."""
    kinds = {"classify": Classify, "segment": Segment, "detect": Detect, "regress": Regress}
    if task not in kinds:
        raise UserError(f"{param('task')} {task}: expected classify, segment, detect or regress")
    return kinds[task](**options)

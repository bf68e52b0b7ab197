"""What `eval` scores: the task (classify, segment, detect, regress), inferred from the data and the
model's outputs or given with `--task`, and how a batch's outputs become the task's predictions.

    metrics.py   top-1/top-5, mIoU (VOC), COCO mAP (pycocotools), MSE/PSNR
(the VOC and COCO data sources are data/datasets.py)

Detection boxes come from the model's own outputs when it was exported with its post-processing
(outputs named like boxes, scores and labels), else from a user hook, `--decode FILE.py:FN`, called
as FN(outputs, meta) with the batch's output arrays by name and one dict per image (its original
`width` and `height`, `image_id`), returning one (boxes [K,4] xyxy in original pixels, scores [K],
labels [K] category ids) per image.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from ..errors import UserError, param
from ..files import raised, user_function
from .metrics import TASKS, Metric, for_task

__all__ = ["TaskSpec", "infer", "Decode", "TASKS"]


def _tensor_outputs(model: onnx.ModelProto) -> list:
    out = []
    for o in model.graph.output:
        if not o.type.HasField("tensor_type"):
            continue
        tt = o.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim] \
            if tt.HasField("shape") else None
        out.append((o.name, shape))
    return out


class Decode:
    """`--decode FILE.py:FN`: the user's function from model outputs to boxes, loaded like
    `--data-loader`; its failures and malformed returns become one-line errors naming it."""

    def __init__(self, spec: str):
        self.fn, self.spec = user_function(spec, param("decode")), spec

    def __reduce__(self):        # on a cluster worker the hook is loaded again from its file
        return Decode, (self.spec,)

    def __call__(self, outputs: dict, meta: list) -> list:
        try:
            found = self.fn(outputs, meta)
        except UserError:
            raise
        except Exception as err:
            raise raised(param("decode"), self.spec, err) from None
        found = list(found) if found is not None else None
        if found is None or len(found) != len(meta):
            raise UserError(f"{param('decode')} {self.spec}: returned {0 if found is None else len(found)} result(s) "
                            f"for "
                            f"{len(meta)} image(s); expected one (boxes, scores, labels) per image")
        out = []
        for i, item in enumerate(found):
            try:
                boxes, scores, labels = item
            except (TypeError, ValueError):
                raise UserError(f"{param('decode')} {self.spec}: image {i}: expected a (boxes, scores, labels) "
                                f"tuple") from None
            out.append((np.asarray(boxes, np.float64).reshape(-1, 4) if np.size(boxes) else np.zeros((0, 4)),
                        np.asarray(scores, np.float64).reshape(-1), np.asarray(labels).reshape(-1)))
        return out


class _Postprocessed:
    """Boxes from a model exported with its post-processing: outputs named like boxes [N,K,4] (xyxy
    in the model input's pixels), scores [N,K] and labels/classes [N,K]; scaled to each image's
    original size."""

    def __init__(self, names: dict, input_size: tuple):
        self.names, self.input_size = names, input_size

    def __call__(self, outputs: dict, meta: list) -> list:
        h, w = self.input_size
        out = []
        boxes, scores, labels = (outputs[self.names[k]] for k in ("boxes", "scores", "labels"))
        for i, m in enumerate(meta):
            b = np.asarray(boxes[i], np.float64).reshape(-1, 4) * \
                np.array([m["width"] / w, m["height"] / h] * 2)
            out.append((b, np.asarray(scores[i], np.float64).reshape(-1), np.asarray(labels[i]).reshape(-1)))
        return out


def _postprocessed_outputs(model) -> dict | None:
    """{boxes, scores, labels: output name} when the model's outputs are named that way."""
    found = {}
    for name, shape in _tensor_outputs(model):
        low = name.lower()
        for key, words in (("boxes", ("box",)), ("scores", ("score",)), ("labels", ("label", "class"))):
            if key not in found and any(wd in low for wd in words):
                found[key] = name
                break
    return found if len(found) == 3 else None


@dataclass
class TaskSpec:
    """A task to score: its metric (one fresh copy per T and one for the ANN), the outputs its
    predictions need (the scored output first) and why it was chosen."""
    name: str
    metric: Metric
    outputs: list
    reason: str
    decode: object = None            # detect: outputs, meta -> [(boxes, scores, labels)]
    extra: dict = field(default_factory=dict)

    def prediction(self, outs: dict, labels):
        if self.name == "detect":
            return self.decode({k: outs[k] for k in self.outputs}, labels)
        return outs[self.outputs[0]]

    def describe(self) -> str:
        return f"task: {self.name} ({self.reason})"


def infer(model: onnx.ModelProto, score_output: str, source=None, task: str | None = None,
          annotations=None, decode: str | None = None, input_size: tuple | None = None) -> TaskSpec | None:
    """The task `eval` scores (None: no labels and nothing to infer, so only agreement with the ANN
    and the relative error are measured). `task` (--task) wins over what the data suggests
    (`source.task_hint`: class ids, masks, boxes, float targets) and the outputs' shapes."""
    if task is not None and task not in TASKS:
        raise UserError(f"{param('task')} {task}: expected classify, segment, detect or regress")
    hint = getattr(source, "task_hint", None)
    outputs = dict(_tensor_outputs(model))
    shape = outputs.get(score_output)
    reason = "--task"
    if task is None:
        if annotations is not None or hint == "detect":
            task, reason = "detect", "boxes from --annotations"
        elif hint in ("classify", "segment", "regress"):
            task = hint
            reason = {"classify": "the data holds class ids", "segment": "the data holds masks",
                      "regress": "the data holds float targets"}[hint]
        elif decode is not None:
            task, reason = "detect", "--decode"
        else:
            return None
    if task == "detect":
        return _detect_spec(model, annotations, decode, input_size, reason, source)
    if hint is not None and hint != task and getattr(source, "labels_known", True):
        raise UserError(f"{param('task')} {task}: the data's labels are for {hint} ({type(source).__name__})")
    if task == "segment":
        if shape is not None and len(shape) != 4:
            raise UserError(f"{param('task')} segment: the scored output '{score_output}' has shape {shape}; "
                            "expected [N, classes, H, W]")
        metric = for_task("segment", num_classes=shape[1] if shape and shape[1] else None)
    else:
        metric = for_task(task)
    return TaskSpec(task, metric, [score_output], reason)


def _detect_spec(model, annotations, decode, input_size, reason, source) -> TaskSpec:
    if annotations is None:
        raise UserError(f"{param('task')} detect: needs {param('annotations')} FILE (COCO-format boxes) with "
                        f"{param('data')} the image folder")
    names = [n for n, _ in _tensor_outputs(model)]
    if decode is not None:
        fn, outs = Decode(decode), names
    else:
        post = _postprocessed_outputs(model)
        if post is None:
            raise UserError(f"{param('task')} detect: the model's outputs ({', '.join(names)}) are not boxes, scores "
                            f"and "
                            f"labels; give {param('decode')} FILE.py:FN to turn them into boxes")
        if input_size is None:
            raise UserError(f"{param('task')} detect: the model input's height and width are not known; pass "
                            f"{param('size')} H,W")
        fn, outs = _Postprocessed(post, input_size), list(post.values())
    metric = for_task("detect", annotations=str(annotations))
    return TaskSpec("detect", metric, outs, reason, decode=fn)


def for_check(model: onnx.ModelProto, source) -> TaskSpec | None:
    """The task the check after converting scores on the calibration data: as `eval` infers it,
    except detection (no decode there; its labels are then not used)."""
    if getattr(source, "task_hint", None) in (None, "detect"):
        return None
    from ..evaluate.evaluation import score_output
    return infer(model, score_output(model), source)

"""One scoring loop: the SNN's outputs for a set of (T, D) windows against the ANN and the labels.

`eval`, the check after converting and `--delay auto` all call `score`; they differ only in the
windows they ask for and in how the outputs of a batch are produced (see evaluate.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import runtime
from .errors import UserError


def top1(x) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 1 and x.dtype.kind in "iu":      # the output already is a class label
        return x
    return x.reshape(len(x), -1).argmax(axis=1)


@dataclass
class _Tally:
    correct: int = 0
    agree: float = 0.0    # samples whose top-1 agrees with the ANN's (segmentation: their fraction of pixels)
    err: float = 0.0      # sum of squared differences to the ANN's output
    steps: float = 0.0    # steps used (early exit), summed over samples
    sops: float = 0.0     # synaptic operations, summed over samples


def _agreement(task: str | None, out, ann_out) -> float | None:
    """Samples (summed) agreeing with the ANN: top-1 (classification, or no task), the fraction of
    pixels with the same class (segmentation: argmax over axis 1); None for detection and
    regression."""
    if task in (None, "classify"):
        return float(np.sum(top1(out) == top1(ann_out)))
    if task == "segment":
        same = np.asarray(out).argmax(axis=1) == np.asarray(ann_out).argmax(axis=1)
        return float(same.reshape(len(same), -1).mean(axis=1).sum())
    return None


class Scores:
    """Per window: the task's metric (`task`: tasks.TaskSpec; without one, top-1 accuracy when there
    are labels), agreement with the ANN, relative L2 error, steps used and SOPs."""

    def __init__(self, keys, ann_sess, out_name: str, task=None):
        self.keys, self.ann_sess, self.out_name, self.task = list(keys), ann_sess, out_name, task
        self.tally = {k: _Tally() for k in self.keys}
        self.metrics = {k: task.metric.fresh() for k in self.keys} if task is not None else {}
        self.ann_metric = task.metric.fresh() if task is not None and ann_sess is not None else None
        self.n = self.correct_ann = 0
        self.err_den = 0.0
        self.has_labels = True
        self.ann_inputs = {i.name for i in ann_sess.get_inputs()} if ann_sess is not None else set()
        self.out_names = task.outputs if task is not None else [out_name]
        if out_name not in self.out_names:
            self.out_names = [out_name] + list(self.out_names)
        self._ann_out = self._ann_outs = self._labels = None

    def start_batch(self, feeds: dict, labels) -> None:
        self._labels = labels
        self.has_labels &= labels is not None
        self._ann_out = None
        if self.ann_sess is not None:
            ann_feeds = {k: v for k, v in feeds.items() if k in self.ann_inputs}
            values = runtime.run_checked(self.ann_sess, self.out_names, ann_feeds, "--ann")
            self._ann_outs = dict(zip(self.out_names, values))
            self._ann_out = self._ann_outs[self.out_name]
            if self._ann_out.dtype.kind == "f":          # labels have agreement but no L2 error
                self.err_den += float(np.sum(self._ann_out.astype(np.float64) ** 2))
            if labels is not None and self.task is None:
                self.correct_ann += int(np.sum(top1(self._ann_out) == labels))
            elif labels is not None:
                self.ann_metric.add(self.task.prediction(self._ann_outs, labels), labels)

    def add(self, key, outs, steps_used=None, sops=None) -> None:
        """`outs`: the SNN's outputs of the batch by name (or the scored output alone)."""
        outs = outs if isinstance(outs, dict) else {self.out_name: outs}
        out = outs[self.out_name]
        t = self.tally[key]
        if steps_used is not None:
            t.steps += float(steps_used) * len(out)
        if sops is not None:
            t.sops += float(sops)
        if self._labels is not None and self.task is None:
            t.correct += int(np.sum(top1(out) == self._labels))
        elif self._labels is not None:
            self.metrics[key].add(self.task.prediction(outs, self._labels), self._labels)
        if self._ann_out is not None:
            if np.shape(out) != np.shape(self._ann_out):
                raise UserError(f"--ann: its output '{self.out_name}' has shape {list(np.shape(self._ann_out))}, "
                                f"the SNN's {list(np.shape(out))}; is it the model that was converted?")
            agree = _agreement(self.task.name if self.task else None, out, self._ann_out)
            t.agree = None if agree is None else t.agree + agree
            if self._ann_out.dtype.kind == "f":
                t.err += float(np.sum((out.astype(np.float64) - self._ann_out) ** 2))

    # ---- per-window figures (None when not measured) ----------------------------------------
    def metric(self, key) -> dict | None:
        """The task's figures for window `key` (metrics.Metric.result), None without a task or labels."""
        return self.metrics[key].result() if self.task is not None and self.has_labels and self.n else None

    def ann_metric_result(self) -> dict | None:
        return self.ann_metric.result() if self.ann_metric is not None and self.has_labels and self.n else None

    def accuracy(self, key):
        if self.task is not None:
            m = self.metric(key) if self.task.name == "classify" else None
            return m["top1"] if m else None
        return self.tally[key].correct / self.n if self.has_labels and self.n else None

    def agreement(self, key):
        if self.ann_sess is None or not self.n or self.tally[key].agree is None:
            return None
        return self.tally[key].agree / self.n

    def rel_error(self, key):
        if self.ann_sess is None or self.err_den <= 0:
            return None
        return float(np.sqrt(self.tally[key].err / self.err_den))

    def ann_accuracy(self):
        if self.task is not None:
            m = self.ann_metric_result() if self.task.name == "classify" else None
            return m["top1"] if m else None
        return self.correct_ann / self.n if self.ann_sess is not None and self.has_labels and self.n else None


def score(batches, outputs, keys, ann_sess, out_name: str, bar=None, task=None) -> Scores:
    """Run `outputs(feeds)` -> [(key, outputs by name, extras)] on every batch and score each window."""
    scores = Scores(keys, ann_sess, out_name, task)
    for feeds, labels in batches:
        scores.start_batch(feeds, labels)
        for key, out, extras in outputs(feeds):
            scores.add(key, out, **extras)
        n = len(next(iter(feeds.values())))
        scores.n += n
        if bar is not None:
            bar.update(n)
    if bar is not None:
        bar.close()
    return scores

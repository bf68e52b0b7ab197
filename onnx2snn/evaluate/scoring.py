"""One scoring loop: the SNN's outputs for a set of (T, D) windows against the ANN and the labels.

`eval`, the check after converting and `--delay auto` all call `score`; they differ only in the
windows they ask for and in how the outputs of a batch are produced (see evaluate.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import runtime
from ..errors import UserError, param


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
    are labels), agreement with the ANN, relative L2 error, steps used and SOPs. Pure tallies (no
    sessions): one batch's Scores (BatchScorer) merge into the running ones in batch order, in one
    process or from a cluster's shards (cluster/), with the same additions."""

    def __init__(self, keys, out_name: str, task=None, with_ann: bool = False):
        self.keys, self.out_name, self.task, self.with_ann = list(keys), out_name, task, with_ann
        self.tally = {k: _Tally() for k in self.keys}
        self.metrics = {k: task.metric.fresh() for k in self.keys} if task is not None else {}
        self.ann_metric = task.metric.fresh() if task is not None and with_ann else None
        self.n = self.correct_ann = 0
        self.err_den = 0.0
        self.has_labels = True

    def merge(self, other: "Scores") -> None:
        """Add the tallies of `other` (the next batch, or the next shard's batches)."""
        self.n += other.n
        self.correct_ann += other.correct_ann
        self.err_den += other.err_den
        self.has_labels &= other.has_labels
        for key, t in self.tally.items():
            o = other.tally[key]
            t.correct += o.correct
            t.agree = None if t.agree is None or o.agree is None else t.agree + o.agree
            t.err += o.err
            t.steps += o.steps
            t.sops += o.sops
        for key, m in self.metrics.items():
            m.merge(other.metrics[key])
        if self.ann_metric is not None:
            self.ann_metric.merge(other.ann_metric)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["task"] = None        # the task (its decode hook, its ground truth) stays where it was made
        return state

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
        if not self.with_ann or not self.n or self.tally[key].agree is None:
            return None
        return self.tally[key].agree / self.n

    def rel_error(self, key):
        if not self.with_ann or self.err_den <= 0:
            return None
        return float(np.sqrt(self.tally[key].err / self.err_den))

    def ann_accuracy(self):
        if self.task is not None:
            m = self.ann_metric_result() if self.task.name == "classify" else None
            return m["top1"] if m else None
        return self.correct_ann / self.n if self.with_ann and self.has_labels and self.n else None


class BatchScorer:
    """One batch's Scores: the SNN's outputs for every window (`outputs(feeds)` -> [(key, outputs
    by name, extras)]) against the ANN (`ann_sess`) and the labels."""

    def __init__(self, outputs, keys, ann_sess, out_name: str, task=None):
        self.outputs, self.keys, self.ann_sess, self.out_name, self.task = outputs, list(keys), ann_sess, out_name, task
        self.ann_inputs = {i.name for i in ann_sess.get_inputs()} if ann_sess is not None else set()
        self.out_names = task.outputs if task is not None else [out_name]
        if out_name not in self.out_names:
            self.out_names = [out_name] + list(self.out_names)

    def fresh(self) -> Scores:
        return Scores(self.keys, self.out_name, self.task, self.ann_sess is not None)

    def __call__(self, feeds: dict, labels) -> Scores:
        part = self.fresh()
        part.has_labels = labels is not None
        ann_out = None
        if self.ann_sess is not None:
            ann_feeds = {k: v for k, v in feeds.items() if k in self.ann_inputs}
            values = runtime.run_checked(self.ann_sess, self.out_names, ann_feeds, param("ann"))
            ann_outs = dict(zip(self.out_names, values))
            ann_out = ann_outs[self.out_name]
            if ann_out.dtype.kind == "f":          # labels have agreement but no L2 error
                part.err_den += float(np.sum(ann_out.astype(np.float64) ** 2))
            if labels is not None and self.task is None:
                part.correct_ann += int(np.sum(top1(ann_out) == labels))
            elif labels is not None:
                part.ann_metric.add(self.task.prediction(ann_outs, labels), labels)
        for key, outs, extras in self.outputs(feeds):
            self._add(part, key, outs, labels, ann_out, **extras)
        part.n = len(next(iter(feeds.values())))
        return part

    def _add(self, part: Scores, key, outs, labels, ann_out, steps_used=None, sops=None) -> None:
        """`outs`: the SNN's outputs of the batch by name (or the scored output alone)."""
        outs = outs if isinstance(outs, dict) else {self.out_name: outs}
        out = outs[self.out_name]
        t = part.tally[key]
        if steps_used is not None:
            t.steps += float(steps_used) * len(out)
        if sops is not None:
            t.sops += float(sops)
        if labels is not None and self.task is None:
            t.correct += int(np.sum(top1(out) == labels))
        elif labels is not None:
            part.metrics[key].add(self.task.prediction(outs, labels), labels)
        if ann_out is not None:
            if np.shape(out) != np.shape(ann_out):
                raise UserError(f"{param('ann')}: its output '{self.out_name}' has shape {list(np.shape(ann_out))}, "
                                f"the SNN's {list(np.shape(out))}; is it the model that was converted?")
            agree = _agreement(self.task.name if self.task else None, out, ann_out)
            t.agree = None if agree is None else t.agree + agree
            if ann_out.dtype.kind == "f":
                t.err += float(np.sum((out.astype(np.float64) - ann_out) ** 2))


def score(batches, scorer: BatchScorer, bar=None) -> Scores:
    """Score every batch of `batches` ((feeds, labels) pairs) and merge them in order."""
    scores = scorer.fresh()
    for feeds, labels in batches:
        part = scorer(feeds, labels)
        scores.merge(part)
        if bar is not None:
            bar.update(part.n)
    if bar is not None:
        bar.close()
    return scores

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
    agree: int = 0
    err: float = 0.0      # sum of squared differences to the ANN's output
    steps: float = 0.0    # steps used (early exit), summed over samples
    sops: float = 0.0     # synaptic operations, summed over samples


class Scores:
    """Accuracy, top-1 agreement, relative L2 error, steps used and SOPs per window."""

    def __init__(self, keys, ann_sess, out_name: str):
        self.keys, self.ann_sess, self.out_name = list(keys), ann_sess, out_name
        self.tally = {k: _Tally() for k in self.keys}
        self.n = self.correct_ann = 0
        self.err_den = 0.0
        self.has_labels = True
        self.ann_inputs = {i.name for i in ann_sess.get_inputs()} if ann_sess is not None else set()
        self._ann_out = self._labels = None

    def start_batch(self, feeds: dict, labels) -> None:
        self._labels = labels
        self.has_labels &= labels is not None
        self._ann_out = None
        if self.ann_sess is not None:
            ann_feeds = {k: v for k, v in feeds.items() if k in self.ann_inputs}
            self._ann_out = runtime.run_checked(self.ann_sess, [self.out_name], ann_feeds, "--ann")[0]
            if self._ann_out.dtype.kind == "f":          # labels have agreement but no L2 error
                self.err_den += float(np.sum(self._ann_out.astype(np.float64) ** 2))
            if labels is not None:
                self.correct_ann += int(np.sum(top1(self._ann_out) == labels))

    def add(self, key, out, steps_used=None, sops=None) -> None:
        t = self.tally[key]
        if steps_used is not None:
            t.steps += float(steps_used) * len(out)
        if sops is not None:
            t.sops += float(sops)
        if self._labels is not None:
            t.correct += int(np.sum(top1(out) == self._labels))
        if self._ann_out is not None:
            if np.shape(out) != np.shape(self._ann_out):
                raise UserError(f"--ann: its output '{self.out_name}' has shape {list(np.shape(self._ann_out))}, "
                                f"the SNN's {list(np.shape(out))}; is it the model that was converted?")
            t.agree += int(np.sum(top1(out) == top1(self._ann_out)))
            if self._ann_out.dtype.kind == "f":
                t.err += float(np.sum((out.astype(np.float64) - self._ann_out) ** 2))

    # ---- per-window figures (None when not measured) ----------------------------------------
    def accuracy(self, key):
        return self.tally[key].correct / self.n if self.has_labels and self.n else None

    def agreement(self, key):
        return self.tally[key].agree / self.n if self.ann_sess is not None and self.n else None

    def rel_error(self, key):
        if self.ann_sess is None or self.err_den <= 0:
            return None
        return float(np.sqrt(self.tally[key].err / self.err_den))

    def ann_accuracy(self):
        return self.correct_ann / self.n if self.ann_sess is not None and self.has_labels and self.n else None


def score(batches, outputs, keys, ann_sess, out_name: str, bar=None) -> Scores:
    """Run `outputs(feeds)` -> [(key, output, extras)] on every batch and score each window."""
    scores = Scores(keys, ann_sess, out_name)
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

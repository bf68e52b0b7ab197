"""A pure-NumPy simulation of a converted SNN: onnx's reference evaluator with the IF neuron
implemented by neuron.if_neuron. Slow, independent of onnxruntime and of the C++ operator; the
oracle the tests hold every graph form to.
"""
from __future__ import annotations

import numpy as np
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

from .neuron import DOMAIN, if_neuron


class IFNeuron(OpRun):
    op_domain = DOMAIN

    def _run(self, x, theta, v=None, v0=None, addend=None, bias=None, count=None, timesteps=None, axis=1,
             v_init=0.5, max_spikes=1, signed=0):
        x = np.asarray(x, np.float32)
        if addend is not None:       # the operator's order: (x + addend) + bias
            x = x + addend
        if bias is not None:
            bias = np.asarray(bias, np.float32).reshape(-1)
            shape = [1] * x.ndim
            if bias.size > 1:
                shape[int(axis) % x.ndim] = bias.size
            x = x + bias.reshape(shape)
        spikes, state, net = if_neuron(x, theta, int(timesteps), int(axis), np.float32(v_init), v=v,
                                       return_state=True, v0=v0, max_spikes=int(max_spikes), signed=bool(signed),
                                       count=count, return_count=True)
        return (spikes, state, net)[:max(1, len(self.output))]


class SpikingMaxPool(OpRun):
    """Running sums of the currents over the steps, MaxPool of the sums, step-to-step differences
    (timefold.TimeFold.spiking_pool's standard-op graph, computed the same way)."""
    op_domain = DOMAIN

    def _run(self, x, sums_in=None, peak_in=None, timesteps=None, kernel_shape=None, strides=None, pads=None,
             dilations=None):
        steps = x.reshape(int(timesteps), -1, *x.shape[1:])
        if sums_in is not None:
            steps = np.concatenate([steps[:1] + sums_in[None], steps[1:]])
        running = np.cumsum(steps, axis=0, dtype=np.float32)
        pooled = _max_pool(running.reshape(-1, *x.shape[1:]), kernel_shape, strides or (1, 1), pads or (0, 0, 0, 0),
                           dilations or (1, 1)).reshape(running.shape[0], -1, x.shape[1], *_pooled_hw(x, kernel_shape, strides, pads, dilations))
        previous = peak_in[None] if peak_in is not None else pooled[:1] * np.float32(0)
        current = (pooled - np.concatenate([previous, pooled[:-1]])).reshape(-1, *pooled.shape[2:])
        if len(self.output) > 1:
            return current, running[-1], pooled[-1]
        return (current,)


def _pooled_hw(x, kernel, strides, pads, dilations):
    strides, pads, dilations = strides or (1, 1), pads or (0, 0, 0, 0), dilations or (1, 1)
    return tuple((x.shape[2 + i] + pads[i] + pads[i + 2] - dilations[i] * (kernel[i] - 1) - 1) // strides[i] + 1
                 for i in range(2))


def _max_pool(x, kernel, strides, pads, dilations):
    padded = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])), constant_values=-np.inf)
    oh, ow = _pooled_hw(x, kernel, strides, pads, dilations)
    out = np.full(x.shape[:2] + (oh, ow), -np.inf, np.float32)
    for ky in range(kernel[0]):
        for kx in range(kernel[1]):
            y0, x0 = ky * dilations[0], kx * dilations[1]
            out = np.maximum(out, padded[:, :, y0:y0 + strides[0] * (oh - 1) + 1:strides[0],
                                         x0:x0 + strides[1] * (ow - 1) + 1:strides[1]])
    return out


def evaluator(model) -> ReferenceEvaluator:
    return ReferenceEvaluator(model, new_ops=[IFNeuron, SpikingMaxPool])


def run(model, feeds: dict, outputs=None):
    return evaluator(model).run(outputs, feeds)


def compensated(f, inputs, timesteps: int, steps_done: int = 0, sums=None, previous=None):
    """Expectation compensation (DESIGN §8) of `f` in NumPy, the oracle for snn/compensate.py.

    inputs: arrays [S*N, ...] of per-step values stacked time-major (S = `timesteps`); f maps the
    running means (one array per input, [N, ...]) to one array. Returns y [S*N, ...] with

        y_t = t·f(S_t / t) − (t−1)·f(S_{t−1} / (t−1))      (t counted from the first step ever)

    continuing a run that did `steps_done` steps before, with its running sums `sums` (per input)
    and its last t·f value `previous` (zero for a first run)."""
    xs = [np.asarray(x, np.float32).reshape((timesteps, -1) + np.shape(x)[1:]) for x in inputs]
    running = [np.zeros(x.shape[1:], np.float32) if sums is None else np.asarray(s, np.float32).copy()
               for x, s in zip(xs, sums or [None] * len(xs))]
    before = np.float32(0) if previous is None else np.asarray(previous, np.float32)
    out = []
    for k in range(timesteps):
        t = np.float32(steps_done + k + 1)
        for i, x in enumerate(xs):
            running[i] = running[i] + x[k]
        value = np.asarray(f(*[r / t for r in running]), np.float32) * t
        out.append(value - before)
        before = value
    y = np.stack(out)
    return y.reshape((-1,) + y.shape[2:])

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

    def _run(self, x, theta, v=None, v0=None, timesteps=None, axis=1, v_init=0.5):
        spikes, state = if_neuron(x, theta, int(timesteps), int(axis), np.float32(v_init), v=v,
                                  return_state=True, v0=v0)
        if len(self.output) > 1:
            return spikes, state
        return (spikes,)


def evaluator(model) -> ReferenceEvaluator:
    return ReferenceEvaluator(model, new_ops=[IFNeuron])


def run(model, feeds: dict, outputs=None):
    return evaluator(model).run(outputs, feeds)

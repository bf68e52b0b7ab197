"""What NIR 1.0 cannot express, refused by name with the reason and the way forward.

Every refusal is one line: `to_nir: <op> '<node>': <reason>; <way forward>`. A refusal in the
region before the first neuron is a PreRefused: the export then keeps that region on the host and
takes the current into the first neurons as the graph's input (current coding) instead of failing.

Refused here, by operator: nodes kept analog (--keep-analog), the nodes of expectation compensation, the spiking max pool and MaxPool (NIR
has no max pool), Transpose (NIR tensors are channel-first), operators of other domains and any op
without a NIR node. The mapping (mapping.py) refuses what it cannot fold: varying weights,
asymmetric pads, padded average pools that divide by fewer than k², reshapes other than a flatten,
spatial slices other than a stride from index 0, concatenation on an axis other than the
channels, constants computed inside the network.
"""
from __future__ import annotations

from ..errors import UserError
from ..ops.neuron import DOMAIN

WHERE = "to_nir"
WAY_LINEAR = "NIR 1.0 expresses Conv, Gemm/MatMul, average pooling, Flatten and sums between neurons"
_WAY_POOL = "train the ANN with average pooling, or swap the MaxPool for an AveragePool, and convert again"


class PreRefused(UserError):
    """A node before the first neuron has no NIR form: that part stays on the host."""


def refuse(node, reason: str, way: str, pre: bool = False) -> UserError:
    cls = PreRefused if pre else UserError
    return cls(f"{WHERE}: {node.op_type} '{node.name}': {reason}; {way}")



def check_compensation(node, compensated: list, pre: bool = False) -> None:
    """Refuse the nodes of expectation compensation (snn/compensate.py), naming the compensated
    nodes: NIR 1.0 has no running mean and no per-step difference of a non-linear function."""
    if node.name in compensated or "/running_mean/" in node.name or "/compensated/" in node.name \
            or node.name.startswith("onnx2snn.compensation/"):
        listed = ", ".join(f"'{n}'" for n in compensated[:3]) + (", ..." if len(compensated) > 3 else "")
        raise UserError(f"{WHERE}: {len(compensated)} non-ReLU node(s) between neurons ({listed}) are evaluated "
                        "with expectation compensation (running means of their inputs, per-step differences of "
                        "their outputs), which NIR 1.0 cannot express; export to NIR networks whose activations "
                        "between weighted layers are ReLU-like")


def check_expressible(node, analog: list, parsable, pre: bool = False) -> None:
    """Raise the refusal for a node whose operator NIR cannot express (`analog`: the nodes kept
    analog; `parsable`: the standard ops the mapping handles)."""
    op_type = node.op_type
    if node.name in analog:
        raise refuse(node, "kept analog (--keep-analog): it runs on each step's input without spiking and "
                     "NIR has no such node", "convert without --keep-analog (replace the op by ReLU in the ANN)", pre)
    if node.domain == DOMAIN:
        if op_type == "SpikingMaxPool":
            raise refuse(node, "a max pool driven by spikes (onnx2snn's spiking max pool) has no NIR form "
                         "(NIR 1.0 has no max pool)", _WAY_POOL, pre)
        if op_type == "IFNeuron":
            return
    if node.domain not in ("", "ai.onnx"):
        raise refuse(node, f"operator of domain '{node.domain}' has no NIR form", WAY_LINEAR, pre)
    if op_type == "MaxPool":
        raise refuse(node, "NIR 1.0 has no max pool", _WAY_POOL, pre)
    if op_type == "Transpose":
        raise refuse(node, "NIR tensors are channel-first and have no transpose", "export the ANN in NCHW "
                     "layout (e.g. tf2onnx --inputs-as-nchw) and convert again", pre)
    if op_type not in parsable:
        raise refuse(node, "no NIR 1.0 node expresses it", WAY_LINEAR, pre)

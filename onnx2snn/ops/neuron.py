"""The IF neuron's contract: its operator domain and the NumPy reference.

The reference is the oracle for the C++ operator (custom_ops/if_neuron.cc) and for every graph
form: the arithmetic is float32 in the same order as the operator, so results are identical bit for
bit. The semantics are those of docs/method/how-it-works.md.
"""
from __future__ import annotations

import numpy as np

DOMAIN = "ai.onnx2snn"     # custom-op domain of IFNeuron and ReLUXProbe
OPSET_VERSION = 1
# (input, output) positions of the state an operator carries from one run (or Loop iteration) to the next:
# IFNeuron's membrane potential (and, signed, its net spike count), SpikingMaxPool's summed inputs and
# running peak
STATES = {"IFNeuron": [(2, 1), (6, 2)], "SpikingMaxPool": [(1, 1), (2, 2)]}


def node_states(node) -> list:
    """The (input, output) state positions of an onnx NodeProto of ours: STATES, without the net
    spike count of an IFNeuron that is not signed (it has none)."""
    pairs = STATES.get(node.op_type, [])
    if node.op_type == "IFNeuron" and not any(a.name == "signed" and a.i for a in node.attribute):
        pairs = pairs[:1]
    return pairs


def if_neuron(x: np.ndarray, theta: np.ndarray, timesteps: int, axis: int = 1, v_init: float = 0.5,
              v: np.ndarray | None = None, return_state: bool = False, v0: np.ndarray | None = None,
              max_spikes: int = 1, signed: bool = False, count: np.ndarray | None = None,
              return_count: bool = False):
    """Run an IF neuron over `timesteps` steps stacked time-major on axis 0 of `x`.

    x: float32 [K*N, ...]; theta: [C] (channel axis `axis`) or [1]; v: optional state [N, ...];
    v0: optional initial potential of each neuron of one sample ([prod(...)] or [1]), used when
    there is no state (else v_init * theta). max_spikes M > 1: burst spikes, the firing repeated up
    to M times per step (a burst of n spikes is n * theta, summed one theta at a time).
    signed: a neuron whose net spike count n is positive fires a negative spike (-theta, v += theta,
    n -= 1) when v < -theta, so its net rate never goes below zero; every firing round is then
    f <- theta if v > theta, else -theta if v < -theta and n > 0, else 0. count: the net spike count
    carried in ([N, ...], float32; zero without it).
    Returns the weighted spikes (theta or 0; n * theta with bursts; negative with signed) shaped
    like x, then the final state and the final net count, as asked.
    """
    x = np.asarray(x, dtype=np.float32)
    theta = np.asarray(theta, dtype=np.float32).reshape(-1)
    _check_arguments(x, theta, timesteps, max_spikes, signed, count)
    steps = x.reshape((timesteps, x.shape[0] // timesteps) + x.shape[1:])
    th = np.broadcast_to(_theta_shaped(x, theta, axis), steps.shape[1:])
    state = _initial_state(steps, th, v, v0, v_init)
    if count is None:
        net = np.zeros(steps.shape[1:], np.float32)
    else:
        net = np.array(count, dtype=np.float32, copy=True)
        if net.shape != steps.shape[1:]:
            raise ValueError(f"count has shape {list(net.shape)}, expected {list(steps.shape[1:])}")
    out = np.empty_like(steps)
    zero, one = np.float32(0), np.float32(1)
    neg = -th

    def fire(v, n):
        if not signed:
            return np.where(v > th, th, zero), n
        up, down = v > th, (v < neg) & (n > zero)
        return np.where(up, th, np.where(down, neg, zero)), n + np.where(up, one, np.where(down, -one, zero))

    for t in range(timesteps):
        state = state + steps[t]
        spike, net = fire(state, net)
        state = state - spike
        for _ in range(max_spikes - 1):
            more, net = fire(state, net)
            state = state - more
            spike = spike + more
        out[t] = spike
    out = out.reshape(x.shape)
    extra = ((state,) if return_state else ()) + ((net,) if return_count else ())
    return (out, *extra) if extra else out


def _check_arguments(x, theta, timesteps: int, max_spikes: int, signed, count) -> None:
    """The same refusals as the C++ operator, so a fuzzed case either fails in both or in neither."""
    if timesteps < 1:
        raise ValueError("timesteps must be >= 1")
    if not 1 <= max_spikes <= 1024:
        raise ValueError(f"max_spikes must be in [1, 1024], got {max_spikes}")
    if signed not in (0, 1):
        raise ValueError(f"signed must be 0 or 1, got {signed}")
    if count is not None and not signed:
        raise ValueError("a net spike count is carried by signed neurons only")
    if x.ndim < 1:
        raise ValueError("input must have rank >= 1")
    if theta.size == 0:
        raise ValueError("theta is empty")
    if x.shape[0] % timesteps:
        raise ValueError(f"first dimension {x.shape[0]} is not a multiple of timesteps={timesteps}")


def _theta_shaped(x, theta, axis: int):
    """theta ([C] or [1]) shaped to broadcast along the channel axis of x."""
    if theta.size == 1:
        return theta.reshape((1,) * (x.ndim))
    if not -x.ndim <= axis < x.ndim or axis % x.ndim == 0:
        raise ValueError(f"axis {axis} is out of range for rank {x.ndim} (axis 0 is time x batch)")
    ax = axis % x.ndim
    if x.shape[ax] != theta.size:
        raise ValueError(f"theta has {theta.size} values, input has {x.shape[ax]} channels")
    shape = [1] * x.ndim
    shape[ax] = theta.size
    return theta.reshape(shape)


def _initial_state(steps, th, v, v0, v_init: float):
    """The potential before the first step: the state carried in, else v0, else v_init * theta."""
    if v is None and v0 is not None:
        v0 = np.asarray(v0, dtype=np.float32).reshape(-1)
        per_sample = int(np.prod(steps.shape[2:])) if steps.ndim > 2 else 1
        if v0.size not in (1, per_sample):
            raise ValueError(f"v0 has {v0.size} values; expected 1 or {per_sample}")
        return np.broadcast_to(v0.reshape(steps.shape[2:]) if v0.size == per_sample and steps.ndim > 2
                               else v0.reshape(()), steps.shape[1:]).astype(np.float32).copy()
    if v is None:
        return (np.float32(v_init) * th).astype(np.float32)
    state = np.array(v, dtype=np.float32, copy=True)
    if state.shape != steps.shape[1:]:
        raise ValueError(f"state has shape {list(state.shape)}, expected {list(steps.shape[1:])}")
    return state

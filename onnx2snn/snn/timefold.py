"""Time folded into the batch axis: the pieces every graph form is built from.

A graph run handles S steps of N samples as S*N rows, time-major (rows t*N..t*N+N-1 are step t);
S is T in the unrolled form and K (the chunk) in a loop body. The spiking max pool and the readout
are written here once; in a loop their state (running sums, pooled maxima, accumulated readout) is
carried between iterations, in the unrolled form it starts at zero.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..graph.builder import Builder
from ..ops.neuron import DOMAIN

BIG = np.iinfo(np.int64).max


def theta_broadcast(theta, axis: int, rank: int) -> np.ndarray:
    """theta [C] shaped to broadcast over a rank-`rank` tensor whose channels are on `axis` (a
    single theta stays [1])."""
    theta = np.asarray(theta, np.float32).reshape(-1)
    axis = axis % max(rank, 1)
    shape = [theta.size] + [1] * (rank - 1 - axis) if theta.size > 1 else [1]
    return theta.reshape(shape)


class TimeFold:
    """Builds the reshapes between [S*N, ...] and [S, N, ...] with `steps` (an int64 [1] constant)."""

    def __init__(self, b: Builder, steps: gs.Constant):
        self.b, self.steps = b, steps

    def _i64(self, *values) -> gs.Constant:
        return self.b.const(np.array(values, np.int64))

    def tile(self, x):
        """[N, ...] -> [S*N, ...], the N rows repeated for each step (time-major)."""
        b = self.b
        b.prefix = f"{x.name}/repeat_steps"
        up = b.op("Unsqueeze", [x, self._i64(0)], dtype=x.dtype)
        full = b.concat([self.steps, b.op("Shape", [x], dtype=np.int64)], dtype=np.int64)
        rep = b.op("Expand", [up, full], dtype=x.dtype)
        out = b.reshape(rep, b.concat([self._i64(-1), b.shape_tail(x)], dtype=np.int64), dtype=x.dtype)
        out.shape = None if x.shape is None else ["TN"] + list(x.shape[1:])
        return out

    def unfold(self, x, tail_of=None):
        """[S*N, ...] -> [S, N, ...]."""
        b = self.b
        tail = b.shape_tail(tail_of if tail_of is not None else x)
        return b.reshape(x, b.concat([self.steps, self._i64(-1), tail], dtype=np.int64), dtype=x.dtype)

    def fold(self, x, like, out=None):
        """[S, N, ...] -> [S*N, ...] with the trailing dims of `like`."""
        b = self.b
        shape = b.concat([self._i64(-1), b.shape_tail(like)], dtype=np.int64)
        if out is not None:
            return b.op("Reshape", [x, shape], out=[out])
        return b.reshape(x, shape, dtype=x.dtype)

    def _slice(self, x, start: int, end: int):
        return self.b.op("Slice", [x, self._i64(start), self._i64(end), self._i64(0)], dtype=x.dtype)

    def _last(self, x):
        """[S, N, ...] -> [N, ...]: the last step."""
        return self.b.op("Squeeze", [self._slice(x, -1, BIG), self._i64(0)])

    # ---- readout ------------------------------------------------------------------------------
    def mean_readout(self, x, delay: int, out=None):
        """Mean over steps D+1..S of [S*N, ...] -> [N, ...] (delayed evaluation)."""
        b = self.b
        b.prefix = f"{x.name}/readout"
        steps = self.unfold(x)
        if delay:
            steps = self._slice(steps, delay, BIG)
        mean = b.reduce("ReduceMean", steps, [0], keepdims=0)
        if out is not None:
            mean.inputs[0].outputs = [out]
            mean = out
        mean.dtype = x.dtype
        return mean

    def accumulate_readout(self, x, acc, weight, rank: int):
        """acc + sum over the S steps of x weighted per step (0 for steps not averaged)."""
        b = self.b
        b.prefix = f"{x.name}/accumulate"
        w = b.reshape(weight, [-1] + [1] * rank)
        return b.op("Add", [acc, b.reduce("ReduceSum", b.op("Mul", [self.unfold(x), w]), [0], keepdims=0)])

    @staticmethod
    def averaged_steps(b: Builder, steps_done, delay):
        """max(steps done - D, 1) as float: the divisor of the readout's accumulated sum (`delay`:
        an int or an int64 scalar tensor)."""
        delay = b.const(np.array(delay, np.int64)) if isinstance(delay, (int, np.integer)) else delay
        over = b.op("Sub", [steps_done, delay], dtype=np.int64)
        return b.op("Cast", [b.op("Max", [over, b.const(np.array(1, np.int64))], dtype=np.int64)],
                    {"to": onnx.TensorProto.FLOAT})

    # ---- spiking max pool ---------------------------------------------------------------------
    def spiking_pool(self, node: gs.Node, state=None, fused: bool = False):
        """MaxPool on spike-driven input: pool the running sums of the currents and emit the
        step-to-step difference of the pooled maximum, so the input accumulated by step t is the
        window's largest accumulated current (converges to the ANN's max as T grows).

        `state`: (running sums in, pooled maximum in) carried from earlier steps, or None (zero).
        `fused`: one SpikingMaxPool node of the operator library doing the same arithmetic, where
        the pool's attributes allow (2-D, no ceil_mode or auto_pad).
        Returns the state after the S steps, or None without state."""
        if fused and _fusable_pool(node):
            return self._fused_pool(node, state)
        b = self.b
        b.prefix = f"{node.name}/spiking"
        x, out = node.inputs[0], node.outputs[0]
        steps = self.unfold(x)
        if state is not None:
            sums_in, peak_in = state
            first = b.op("Add", [self._slice(steps, 0, 1), b.op("Unsqueeze", [sums_in, self._i64(0)])])
            steps = b.concat([first, self._slice(steps, 1, BIG)], axis=0)
        running = b.op("CumSum", [steps, b.const(np.array(0, np.int64))], dtype=np.float32)
        pooled = gs.Variable(f"{node.name}/pooled_sums", np.float32)
        node.inputs = [self.fold(running, x)]
        node.outputs = [pooled]
        p_steps = self.unfold(pooled)
        first = None if state is not None else self._slice(p_steps, 0, 1)
        earlier = self._slice(p_steps, 0, -1)
        if state is not None:
            previous = b.op("Unsqueeze", [peak_in, self._i64(0)])
        else:
            previous = b.op("Mul", [first, b.const(np.float32(0))])
        shifted = b.concat([previous, earlier], axis=0)
        self.fold(b.op("Sub", [p_steps, shifted]), pooled, out=out)
        if state is None:
            return None
        return self._last(running), self._last(p_steps)

    def _fused_pool(self, node: gs.Node, state):
        attrs = {k: v for k, v in node.attrs.items() if k in ("kernel_shape", "strides", "pads", "dilations")}
        attrs["timesteps"] = int(self.steps.values[0])
        node.op, node.domain = "SpikingMaxPool", DOMAIN
        node.attrs = attrs
        if state is None:
            return None
        sums_out = gs.Variable(f"{node.name}/sums_out", np.float32)
        peak_out = gs.Variable(f"{node.name}/peak_out", np.float32)
        node.inputs = node.inputs[:1] + list(state)
        node.outputs = node.outputs[:1] + [sums_out, peak_out]
        return sums_out, peak_out


def _fusable_pool(node: gs.Node) -> bool:
    kernel = node.attrs.get("kernel_shape", [])
    return (len(kernel) == 2 and not node.attrs.get("ceil_mode", 0)
            and node.attrs.get("auto_pad", "NOTSET") in ("NOTSET", b"NOTSET"))

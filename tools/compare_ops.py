"""Run every custom operator on fixed inputs and compare two builds of the library bit for bit.

    python tools/compare_ops.py run OUT.npz [--library PATH]   # outputs of one build
    python tools/compare_ops.py diff A.npz B.npz                # are they bit-identical?

`run` loads the library (default: the one the importable onnx2snn package bundles, i.e. the
installed wheel or the source build, whichever this Python imports) into a plain onnxruntime
session per case -- IFNeuron (with state, v0, addend, bias, repeat_input, layerwise thresholds,
NaN/Inf inputs, a case split across threads), ReLUXProbe (with cap, layerwise, the blocked channel
layout that takes the AVX-512 kernel), SpikingMaxPool (with state, strides, pads, dilations, the
blocked layout) and EventConv (sparse spikes; strides, pads, dilations, groups, bias) -- on inputs
drawn from fixed seeds, plus inputs the ops must reject, whose onnxruntime error messages are
recorded too. `diff` compares two such files: same cases, same dtypes and shapes, same bytes, same
error messages. .ci/wheel runs it in the wheel's venv and in the source build's.
"""
import argparse
import hashlib
import sys

import numpy as np

DOMAIN = "ai.onnx2snn"


def _session(library, op, inputs, outputs, attrs, initializers=None):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    initializers = initializers or {}
    node = helper.make_node(op, list(inputs), list(outputs), domain=DOMAIN, **attrs)
    graph = helper.make_graph(
        [node], op,
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in inputs if n and n not in initializers],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],
        [numpy_helper.from_array(v, k) for k, v in initializers.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)])
    model.ir_version = 8
    opts = ort.SessionOptions()
    opts.register_custom_ops_library(library)
    opts.intra_op_num_threads = 2
    opts.log_severity_level = 4
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _f32(a):
    return np.ascontiguousarray(a, dtype=np.float32)


def if_neuron_cases(rng):
    for shape, axis, steps, layerwise in [((3, 5, 7, 7), 1, 16, False), ((2, 8), 1, 32, False),
                                          ((4, 6, 10), 2, 8, False), ((1, 3, 4, 5, 2), 1, 5, False),
                                          ((2, 64, 9, 9), 1, 64, False), ((6, 7), 1, 12, True), ((5,), 0, 9, True)]:
        x = _f32(rng.normal(size=(steps * shape[0],) + shape[1:]) * 0.7)
        theta = _f32(rng.uniform(0.05, 2.0, size=1 if layerwise else shape[axis]))
        attrs = dict(timesteps=steps, axis=axis, v_init=float(rng.choice([0.0, 0.25, 0.5])))
        yield f"IFNeuron{shape}ax{axis}T{steps}", "IFNeuron", ["x", "theta"], ["s"], attrs, {"x": x, "theta": theta}, {}
    n, c, t = 3, 4, 10
    x = _f32(rng.normal(size=(t * n, c, 5)))
    theta = _f32(rng.uniform(0.2, 1.0, size=c))
    v = _f32(rng.normal(size=(n, c, 5)))
    yield "IFNeuron_state", "IFNeuron", ["x", "theta", "v"], ["s", "v_out"], dict(timesteps=t, axis=1), \
        {"x": x, "theta": theta, "v": v}, {}
    v0 = _f32(rng.uniform(0, 1, size=c * 5))
    addend = _f32(rng.normal(size=x.shape) * 0.3)
    bias = _f32(rng.normal(size=c) * 0.1)
    yield "IFNeuron_v0_addend_bias", "IFNeuron", ["x", "theta", "", "v0", "addend", "bias"], ["s", "v_out"], \
        dict(timesteps=t, axis=1), {"x": x, "theta": theta, "v0": v0, "addend": addend, "bias": bias}, {}
    yield "IFNeuron_repeat_input", "IFNeuron", ["x", "theta"], ["s"], dict(timesteps=t, axis=1, repeat_input=1), \
        {"x": x[:n], "theta": theta}, {}
    special = _f32(rng.choice([-3.0, -0.25, 0.0, 0.125, 0.5, 1.0, 7.0, np.nan, np.inf, -np.inf], size=(8 * 2, 3, 4)))
    yield "IFNeuron_nan_inf", "IFNeuron", ["x", "theta"], ["s", "v_out"], dict(timesteps=8, axis=1), \
        {"x": special, "theta": _f32([0.5, np.inf, 1.0])}, {}
    blocked = _f32(rng.normal(size=(4 * 2, 32, 5, 5)))
    yield "IFNeuron_blocked", "IFNeuron", ["x", "theta"], ["s"], dict(timesteps=4, axis=1, channel_block=16, channels=30), \
        {"x": blocked, "theta": _f32(rng.uniform(0.1, 1.0, size=30))}, {}


def probe_cases(rng):
    for shape, axis, layerwise, cap in [((8, 5, 6, 6), 1, False, None), ((40, 7), 1, False, 1.5),
                                        ((4, 3, 9), 2, False, None), ((6, 4, 5, 5), 1, True, None),
                                        ((64, 32, 16, 16), 1, False, None)]:
        feeds = {"x": _f32(rng.normal(size=shape)), "theta": _f32(rng.uniform(0, 1, size=1 if layerwise else shape[axis])),
                 "step": _f32(2.0)}
        if cap is not None:
            feeds["cap"] = _f32(cap)
        yield f"ReLUXProbe{shape}ax{axis}", "ReLUXProbe", list(feeds), ["y", "grad", "excess", "activity"], dict(axis=axis), feeds, {}
    for channels in (32, 30):       # the blocked layout: the AVX-512 one-pass kernel on CPUs with AVX-512F
        feeds = {"x": _f32(rng.normal(size=(4, 32, 7, 7))), "theta": _f32(rng.uniform(0, 1, size=channels)),
                 "step": _f32(0.5)}
        yield f"ReLUXProbe_blocked{channels}", "ReLUXProbe", list(feeds), ["y", "grad", "excess", "activity"], \
            dict(axis=1, channel_block=16, channels=channels), feeds, {}


def pool_cases(rng):
    def spikes(shape):
        return _f32((rng.uniform(size=shape) < 0.3) * rng.uniform(0.2, 1.5, size=shape))

    for shape, steps, attrs in [((4 * 2, 3, 8, 8), 4, dict(kernel_shape=[2, 2], strides=[2, 2])),
                                ((6 * 1, 5, 9, 7), 6, dict(kernel_shape=[3, 3], strides=[2, 1], pads=[1, 1, 1, 0])),
                                ((3 * 2, 4, 10, 10), 3, dict(kernel_shape=[2, 3], dilations=[2, 1])),
                                ((8 * 2, 32, 12, 12), 8, dict(kernel_shape=[2, 2], strides=[2, 2]))]:
        yield f"SpikingMaxPool{shape}T{steps}", "SpikingMaxPool", ["x"], ["current"], dict(timesteps=steps, **attrs), {"x": spikes(shape)}, {}
    x = spikes((5 * 2, 3, 6, 6))
    sums = _f32(rng.uniform(0, 2, size=(2, 3, 6, 6)))
    peak = _f32(rng.uniform(0, 2, size=(2, 3, 3, 3)))
    yield "SpikingMaxPool_state", "SpikingMaxPool", ["x", "sums", "peak"], ["current", "sums_out", "peak_out"], \
        dict(timesteps=5, kernel_shape=[2, 2], strides=[2, 2]), {"x": x, "sums": sums, "peak": peak}, {}
    yield "SpikingMaxPool_blocked", "SpikingMaxPool", ["x"], ["current"], \
        dict(timesteps=2, kernel_shape=[2, 2], strides=[2, 2], channel_block=16), {"x": spikes((2 * 3, 32, 8, 8))}, {}


def conv_cases(rng):
    for shape, filters, kernel, attrs in [((2, 3, 9, 9), 8, (3, 3), {}),
                                          ((1, 16, 12, 12), 32, (3, 3), dict(pads=[1, 1, 1, 1])),
                                          ((3, 8, 11, 10), 20, (3, 2), dict(strides=[2, 1], pads=[1, 0, 1, 1])),
                                          ((2, 6, 10, 10), 6, (3, 3), dict(dilations=[2, 2], group=3)),
                                          ((1, 4, 16, 16), 48, (1, 1), {})]:
        density = 0.15
        x = _f32((rng.uniform(size=shape) < density) * rng.choice([0.5, 1.0, 1.75], size=shape))
        groups = attrs.get("group", 1)
        w = _f32(rng.normal(size=(filters, shape[1] // groups) + kernel))
        b = _f32(rng.normal(size=filters))
        yield f"EventConv{shape}F{filters}k{kernel}{sorted(attrs)}", "EventConv", ["x", "w", "b"], ["y"], attrs, {"x": x}, \
            {"w": w, "b": b}


# Inputs the ops must reject: their onnxruntime errors (messages included) are compared too.
def error_cases(rng):
    x = np.zeros((8, 3, 2), np.float32)
    yield "err_IFNeuron_theta", "IFNeuron", ["x", "theta"], ["s"], dict(timesteps=4, axis=1), {"x": x, "theta": _f32([1, 1])}, {}
    yield "err_IFNeuron_steps", "IFNeuron", ["x", "theta"], ["s"], dict(timesteps=4, axis=1), {"x": x[:7], "theta": _f32([1] * 3)}, {}
    yield "err_ReLUXProbe_theta", "ReLUXProbe", ["x", "theta", "step"], ["y", "grad", "excess", "activity"], dict(axis=1), \
        {"x": _f32(np.zeros((2, 3, 4))), "theta": _f32([0, 0]), "step": _f32(1)}, {}
    yield "err_SpikingMaxPool_rank", "SpikingMaxPool", ["x"], ["current"], dict(timesteps=2, kernel_shape=[2, 2]), \
        {"x": _f32(np.zeros((4, 3, 5)))}, {}
    yield "err_EventConv_channels", "EventConv", ["x", "w"], ["y"], {}, {"x": _f32(np.zeros((1, 2, 5, 5)))}, \
        {"w": _f32(np.ones((4, 3, 3, 3)))}
    # thrown while onnxruntime creates the kernel (the session), not while it runs
    yield "err_EventConv_strides", "EventConv", ["x", "w"], ["y"], dict(strides=[1]), \
        {"x": _f32(np.zeros((1, 3, 5, 5)))}, {"w": _f32(np.ones((4, 3, 3, 3)))}


GROUPS = [if_neuron_cases, probe_cases, pool_cases, conv_cases, error_cases]


def run(out, library):
    if library is None:
        from onnx2snn import library_path
        library = library_path()
    digest = hashlib.sha256(open(library, "rb").read()).hexdigest()[:16]
    results = {}
    for index, group in enumerate(GROUPS):
        rng = np.random.default_rng(1000 + index)
        for name, op, inputs, outputs, attrs, feeds, inits in group(rng):
            try:
                sess = _session(library, op, inputs, outputs, attrs, inits)
                got = sess.run(None, feeds)
                for out_name, value in zip(outputs, got):
                    results[f"{name}/{out_name}"] = value
            except Exception as err:          # noqa: BLE001 - the message is the result
                if not name.startswith("err_"):
                    raise
                results[f"{name}/error"] = np.array(f"{type(err).__name__}: {err}")
            else:
                if name.startswith("err_"):
                    sys.exit(f"compare_ops: {name} was accepted; the library no longer rejects it")
    np.savez(out, **results)
    arrays = [v for k, v in results.items() if not k.endswith("/error")]
    print(f"compare_ops: {len(arrays)} outputs ({sum(a.nbytes for a in arrays)} bytes) and "
          f"{len(results) - len(arrays)} error messages from {library} (sha256 {digest}) -> {out}")


def diff(a_path, b_path):
    a, b = np.load(a_path), np.load(b_path)
    if set(a.files) != set(b.files):
        sys.exit(f"compare_ops: different cases: {sorted(set(a.files) ^ set(b.files))}")
    bad = []
    for key in sorted(a.files):
        x, y = a[key], b[key]
        if x.dtype != y.dtype or x.shape != y.shape or x.tobytes() != y.tobytes():
            bad.append(key)
    errors = [k for k in a.files if k.endswith("/error")]
    for key in sorted(errors):
        message = str(a[key])
        print(f"  {key.split('/')[0]}: {message.split(' : ')[0]}: ...{message.split('Status Message:')[-1][-90:]}")
    if bad:
        sys.exit(f"compare_ops: {len(bad)} of {len(a.files)} results differ: {', '.join(bad[:10])}")
    print(f"compare_ops: bit-identical: {len(a.files) - len(errors)} outputs and {len(errors)} error messages")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run every case and save the outputs")
    r.add_argument("out")
    r.add_argument("--library", help="the operator library (default: the one onnx2snn bundles)")
    d = sub.add_parser("diff", help="compare two saved runs bit for bit")
    d.add_argument("a")
    d.add_argument("b")
    args = parser.parse_args()
    if args.command == "run":
        run(args.out, args.library)
    else:
        diff(args.a, args.b)


if __name__ == "__main__":
    main()

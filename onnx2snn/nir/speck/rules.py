"""Per Speck layer: the layer rules, the 8-bit quantisation with one scale per layer, the memory
(sinabs's validator) and the assignment of layers to cores."""
from __future__ import annotations

import math

import numpy as np

from ..folding import FIRING, RESET
from .layers import pair, type_name
from .limits import CORES, LIMITS, STATE_BITS, THRESHOLD_LOW, WEIGHT_BITS


def check_rules(G, layer):
    node, w, p = G.node(layer.weight), layer.weight, layer.problems
    kh, kw = layer.kernel
    what = f"{type_name(node)} '{w}'"
    if layer.kind == "linear":
        c, h, ww = layer.in_shape
        became = f"{what}: reads a {c}x{h}x{ww} map, which sinabs turns into a {h}x{ww} kernel (convert_linear_to_conv)"
        if kh != kw:
            p.append(f"{became}, not square (Speck needs square kernels)")
        if max(kh, kw) > LIMITS["max_kernel"][0]:
            p.append(f"{became}, larger than Speck's 16x16 (pool or shrink the map before it)")
    else:
        if kh != kw:
            p.append(f"{what}: kernel {kh}x{kw} is not square (Speck needs square kernels)")
        if max(kh, kw) > LIMITS["max_kernel"][0]:
            p.append(f"{what}: kernel {kh}x{kw} is larger than Speck's 16x16")
        bad = [s for s in layer.stride if s not in LIMITS["strides"][0]]
        if bad:
            p.append(f"{what}: stride {layer.stride[0]}x{layer.stride[1]} (Speck strides are 1, 2, 4 or 8)")
        if pair(node.dilation) != (1, 1):
            p.append(f"{what}: dilation {pair(node.dilation)} (Speck convolutions have no dilation)")
        if int(node.groups) != 1:
            p.append(f"{what}: groups={int(node.groups)} (a Speck core holds a dense kernel: expand it in the ANN, "
                     f"{int(node.groups)}x the kernel memory)")
        if isinstance(node.padding, str):
            p.append(f"{what}: padding '{node.padding}' (write explicit padding)")
    if layer.neuron_shape[0] > LIMITS["max_output_channels"][0]:
        p.append(f"{what}: {layer.neuron_shape[0]} output channels (Speck at most 1024 per layer)")
    # the neurons
    neuron = G.node(layer.neuron)
    meta = neuron.metadata or {}
    reset = str(meta.get("reset", (G.g.metadata or {}).get("reset", RESET)))
    firing = str(meta.get("firing", (G.g.metadata or {}).get("firing", FIRING)))
    if not np.all(np.asarray(neuron.r) == 1):
        p.append(f"IF '{layer.neuron}': r != 1 (Speck integrates each input once)")
    theta = np.asarray(neuron.v_threshold, np.float64)
    if theta.size and not np.all(theta == theta.reshape(-1)[0]):
        p.append(f"IF '{layer.neuron}': thresholds differ between neurons (a Speck core has one threshold: fold them "
                 "into the weights, as to_nir does)")
    elif theta.size and theta.reshape(-1)[0] <= 0:
        p.append(f"IF '{layer.neuron}': threshold {theta.reshape(-1)[0]:g} is not positive")
    if reset not in (RESET, "zero", "to v_reset"):
        p.append(f"IF '{layer.neuron}': reset '{reset}' (Speck subtracts the threshold or returns to zero)")
    elif reset != RESET and np.any(np.asarray(neuron.v_reset) != 0):
        p.append(f"IF '{layer.neuron}': resets to a non-zero v_reset (Speck returns to zero)")
    if firing not in (FIRING, "v >= v_threshold"):
        p.append(f"IF '{layer.neuron}': firing rule '{firing}'")
    # pooling per chip destination
    if len(layer.destinations) > LIMITS["destinations"][0]:
        p.append(f"IF '{layer.neuron}': sends its spikes to {len(layer.destinations)} layers "
                 f"({', '.join(d['layer'] for d in layer.destinations)}); a Speck core has 2 destinations")
    seen = set()
    for d in layer.destinations:
        for pool in d["pools"]:
            if pool in seen:
                continue
            seen.add(pool)
            pn = G.node(pool)
            k, s, pad = pair(pn.kernel_size), pair(pn.stride), pair(pn.padding)
            if k[0] != k[1] or k[0] not in LIMITS["pooling"][0] or s != k or pad != (0, 0):
                extra = "" if s == k else f", stride {s[0]}x{s[1]}"
                extra += "" if pad == (0, 0) else f", padding {pad[0]}x{pad[1]}"
                p.append(f"SumPool2d '{pool}': pooling {k[0]}x{k[1]}{extra} (Speck pools 1, 2 or 4 with stride = "
                         "kernel, no padding)")
        ph, pw = d["pooling"]
        if len(d["pools"]) > 1 and (ph != pw or ph not in LIMITS["pooling"][0]):
            p.append(f"SumPool2d {' + '.join(repr(x) for x in d['pools'])}: chained pooling {ph}x{pw} towards "
                     f"'{d['layer']}' (sinabs multiplies chained pools; Speck pools 1, 2 or 4)")


def fit_scale(values, bits) -> float:
    """The largest factor s that keeps s * values within a signed `bits`-bit range (inf for zeros);
    sinabs discretize.py determine_discretization_scale chooses the same way."""
    v = np.asarray(values, np.float64)
    if v.size == 0:
        return math.inf
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    out = math.inf
    if v.max() > 0:
        out = min(out, hi / float(v.max()))
    if v.min() < 0:
        out = min(out, lo / float(v.min()))
    return out


def quantise_layer(G, layer):
    neuron = G.node(layer.neuron)
    w, b = layer._weight, layer._bias
    theta = float(np.asarray(neuron.v_threshold, np.float64).reshape(-1)[0])
    shape = tuple(int(d) for d in neuron.output_type["output"])
    v0 = np.broadcast_to(np.asarray((neuron.metadata or {}).get("v0", np.zeros(shape)), np.float64), shape)
    raw = min(fit_scale(w, WEIGHT_BITS), fit_scale(b, WEIGHT_BITS), fit_scale([theta], STATE_BITS),
              fit_scale(v0, STATE_BITS))
    if not math.isfinite(raw) or raw <= 0:
        layer.problems.append(f"IF '{layer.neuron}': no scale fits its threshold {theta:g}")
        return
    scale = float(math.floor(raw)) if raw >= 1 else raw
    wq, bq = np.round(w * scale), np.round(b * scale)
    thr = round(theta * scale)
    v0q = np.round(v0 * scale)
    top = float(np.abs(w).max()) if w.size else 0.0
    layer.scale, layer.threshold = scale, thr
    layer.weight_range = (int(wq.min()), int(wq.max()))
    layer.bias_range = (int(bq.min()), int(bq.max()))
    layer.v0_range = (int(v0q.min()), int(v0q.max()))
    err = np.abs(wq / scale - w)
    layer.error = {
        "weight_max_rel": float(err.max() / top) if top > 0 else 0.0,
        "weight_mean_rel": float(err.mean() / top) if top > 0 else 0.0,
        "bias_max_abs": float(np.abs(bq / scale - b).max()) if b.size else 0.0,       # in thresholds
        "threshold_rel": abs(thr / scale - theta) / theta,
        "v0_max_abs": float(np.abs(v0q / scale - v0).max()) if v0.size else 0.0,      # in thresholds
        "weight_levels_used": int(np.abs(wq).max()) if wq.size else 0,
    }
    if thr < 1:
        layer.problems.append(f"IF '{layer.neuron}': the integer threshold rounds to {thr} (weights over "
                              f"{2 ** (WEIGHT_BITS - 1) - 1} thresholds; scale {scale:g})")
    if top > 0 and np.count_nonzero(wq) < np.count_nonzero(w):
        lost = np.count_nonzero(w) - np.count_nonzero(wq)
        layer.notes.append(f"{lost} of {np.count_nonzero(w)} non-zero weights round to 0 at 8 bits")
    # the core's configuration (sinabs chips/dynapcnn.py get_dynapcnn_layer_config_dict); the chip fires at
    # v >= threshold_high, the export at v > threshold: with reset by subtraction, starting one unit lower is
    # the same rule; with reset to zero, the threshold is one unit higher
    subtract = str((neuron.metadata or {}).get("reset", (G.g.metadata or {}).get("reset", RESET))) == RESET
    strict = str((neuron.metadata or {}).get("firing", (G.g.metadata or {}).get("firing", FIRING))) == FIRING
    offset = 1 if strict else 0
    layer.chip = {"threshold_high": thr + (0 if subtract else offset), "threshold_low": THRESHOLD_LOW,
                  "return_to_zero": not subtract,
                  "neurons_initial_value_range": (int(v0q.min()) - (offset if subtract else 0),
                                                  int(v0q.max()) - (offset if subtract else 0)),
                  "leak_enable": bool(np.any(bq != 0))}
    if np.any(bq != 0):
        layer.notes.append("its bias is Speck's leak, added at each tick of the chip's slow clock (sinabs sets "
                           "leak_enable): the clock period must be one step")
    layer._q = {layer.weight: {"weight": wq, "bias": bq, "scale": scale},
                layer.neuron: {"threshold": thr, "v0": v0q, "scale": scale}}


def check_memory(validator, layer):
    c_in = layer.in_shape[0]
    c_out = layer.neuron_shape[0]
    dims = layer.in_shape[1:]
    try:
        v = validator(c_in, c_out, tuple(layer.kernel), tuple(layer.stride),
                      tuple(layer.padding) if not isinstance(layer.padding, str) else (0, 0), list(dims), True)
        kernel_ki, neuron_ki, kernel_err, neuron_err = v.calculate_total_memory()
    except Exception as err:   # noqa: BLE001 - sinabs refuses the layer before computing memory
        layer.problems.append(f"{layer.op} '{layer.weight}': sinabs validate_memory_speck refuses the layer ({err})")
        return
    layer.memory = {"kernel_ki": float(kernel_ki), "neuron_ki": float(neuron_ki), "bias": int(c_out),
                    "source": "sinabs validate_memory_speck.ValidateMapping"}
    for msg in dict.fromkeys(m for m in (kernel_err, neuron_err) if m):
        layer.problems.append(f"{layer.op} '{layer.weight}': needs {float(kernel_ki):g}Ki kernel and "
                              f"{float(neuron_ki):g}Ki neuron memory: {msg} (sinabs validate_memory_speck)")
    need = (kernel_ki * 1024, neuron_ki * 1024, c_out)
    layer.cores = [i for i, cap in enumerate(CORES) if all(n <= c for n, c in zip(need, cap))]
    if not layer.cores and not any("validate_memory_speck" in p for p in layer.problems):
        layer.problems.append(f"{layer.op} '{layer.weight}': {float(kernel_ki):g}Ki kernel, {float(neuron_ki):g}Ki "
                              "neuron memory fits no core")


def assign_cores(layers, problems):
    """A core per layer: bipartite matching over the cores each layer fits (as sinabs mapping.py
    get_valid_mapping does with Edmonds' flow)."""
    if not layers or len(layers) > len(CORES) or any(not L.cores for L in layers):
        return
    owner = {}

    def place(i, seen):
        for core in layers[i].cores:
            if core in seen:
                continue
            seen.add(core)
            if core not in owner or place(owner[core], seen):
                owner[core] = i
                return True
        return False

    unplaced = [L for i, L in enumerate(layers) if not place(i, set())]
    if unplaced:
        problems.append(f"no assignment of the {len(layers)} layers to Speck's cores fits every memory: "
                        + ", ".join(f"'{L.weight}' fits cores {L.cores}" for L in layers)
                        + " (sinabs mapping.get_valid_mapping)")
        return
    for core, i in owner.items():
        layers[i].core = core

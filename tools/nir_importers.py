"""The NIR importer table: each framework's NIR importer (and settings) x exported test model ->
spike-count entries (IF neuron x sample) that differ from onnx2snn's reference run_nir (reset by
subtraction), or from its reset-to-zero variant for Norse. Uses the runners of
tools/fixtures/nir_peers.py, the ones tests/nir/test_nir_importers.py checks (docs/guide/nir.md):

    python -m tools.nir_importers          # from the repository root

Needs the cross-check frameworks (docs/reference/tests.md: nirtorch, snntorch, norse, sinabs, pbr).
"""
import contextlib
import io
import os
import time
import warnings

import numpy as np

# sessions' graph rewrites may not fall back silently to the graph as written (as under pytest)
os.environ.setdefault("ONNX2SNN_REWRITE", "strict")

from tools.fixtures import nir_peers as t  # noqa: E402

warnings.simplefilter("ignore", DeprecationWarning)
MODELS = ["conv_pool_linear", "residual_block", "conv_pool_linear_float", "residual_block_float"]


def sinabs_single_spike(c):
    from sinabs.activation import SingleSpike
    return t.run_sinabs_from_nir(c, spike_fn=SingleSpike)


def snntorch_import_from_nir(c):
    from snntorch.import_nir import import_from_nir
    import torch
    with contextlib.redirect_stdout(io.StringIO()):          # it prints "replace rnn subgraph ..."
        model = import_from_nir(c.graph)
    model(torch.from_numpy(c.x))
    raise AssertionError("ran")                               # not reached in snntorch 1.0.0


ROWS = [
    ("sinabs.from_nir as built (MultiSpike, min_v_mem=-1, v_mem 0)", lambda c: t.run_sinabs_from_nir(c, settings=False), "subtract"),
    ("sinabs.from_nir + SingleSpike (fires v>=1), min_v_mem=None, v0", sinabs_single_spike, "subtract"),
    ("sinabs.from_nir + strict single spike (v>1), min_v_mem=None, v0", t.run_sinabs_from_nir, "subtract"),
    ("sinabs IAFSqueeze (strict, v0) + nir.Scale mapped, nirtorch.load", t.run_sinabs_nirtorch_load, "subtract"),
    ("sinabs IAFSqueeze (strict, v0) via nirtorch.nir_to_torch", t.run_sinabs_nir_to_torch, "subtract"),
    ("snntorch.import_nir.import_from_nir (as shipped)", snntorch_import_from_nir, "subtract"),
    ("snnTorch Leaky(beta=1, subtract, reset_delay=True, v0) via nir_to_torch", t.run_snntorch, "subtract"),
    ("snnTorch Leaky(beta=1, subtract, reset_delay=False, v0) via nir_to_torch", lambda c: t.run_snntorch(c, False), "subtract"),
    ("norse.torch.from_nir, one sample at a time, v0 -- vs run_nir (subtract)", t.run_norse_from_nir, "subtract"),
    ("norse.torch.from_nir, one sample at a time, v0 -- vs run_nir reset 'zero'", t.run_norse_from_nir, "zero"),
    ("Norse IAFCell (v0) via nir_to_torch, batched -- vs run_nir (subtract)", t.run_norse_nir_to_torch, "subtract"),
    ("Norse IAFCell (v0) via nir_to_torch, batched -- vs run_nir reset 'zero'", t.run_norse_nir_to_torch, "zero"),
]


def cell(run, c, ref):
    try:
        counts, _ = run(c)
    except Exception as err:   # noqa: BLE001 -- an importer failing is a table entry
        return f"fails: {type(err).__name__} {str(err).splitlines()[0][:70]}"
    want = c.ref if ref == "subtract" else c.ref_zero
    d, n = t.differing(counts, want["spike_counts"])
    delta = sum(int(np.abs(counts[k] - v).sum()) for k, v in want["spike_counts"].items())
    return f"{d:,} of {n:,} differ" + (f" (Σ|Δ| {delta:,} spikes)" if d else "")


def main():
    start = time.time()
    cases = {name: t.case(name) for name in MODELS}
    print("| model | T, D | samples | IF entries | spikes (run_nir, subtract) | spikes (reset 'zero') |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, c in cases.items():
        n = sum(v.size for v in c.ref["spike_counts"].values())
        s = sum(int(v.sum()) for v in c.ref["spike_counts"].values())
        z = sum(int(v.sum()) for v in c.ref_zero["spike_counts"].values())
        print(f"| {name} | {c.T}, {c.D} | {len(c.x)} | {n:,} | {s:,} | {z:,} |")
    print()
    print("| importer / settings | " + " | ".join(MODELS) + " |")
    print("| --- |" + " --- |" * len(MODELS))
    for label, run, ref in ROWS:
        print(f"| {label} | " + " | ".join(cell(run, cases[m], ref) for m in MODELS) + " |", flush=True)
    # the residual graph without its skip edge: what nirtorch.load's order computes
    c = cases["residual_block"]
    counts, _ = t.run_sinabs_nirtorch_load(c)
    cut = t.run_nir(t.without_skip(c.graph, ("relu1.scale", "relu2")), c.x, c.T, c.D)
    print(f"\nresidual_block, nirtorch.load order vs run_nir of the graph without the skip edge: "
          f"{t.differing(counts, cut['spike_counts'])[0]} differ")
    print(f"total {time.time() - start:.1f} s")


if __name__ == "__main__":
    main()

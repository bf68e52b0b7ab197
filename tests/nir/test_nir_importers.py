"""Other frameworks' NIR importers (sinabs, snnTorch through nirtorch, Norse) run the NIR export, each
against run_nir, spike count per IF node and sample; tools/fixtures/nir_peers.py says what each
importer reads and how every run sets the semantics the importers ignore."""
import warnings

import numpy as np
import pytest

nir = pytest.importorskip("nir", reason="the NIR export needs the optional `nir` package (pip install nir==1.0.8)")
torch = pytest.importorskip("torch", reason="the NIR importers run on PyTorch (torch==2.13.0, the test extra)")
nirtorch = pytest.importorskip("nirtorch", reason="the NIR importers need nirtorch "
                                                  "(pip install --no-deps nirtorch==2.6)")

from onnx2snn.nir import run_nir  # noqa: E402
from tools.fixtures.nir_peers import (  # noqa: E402
    without_skip, case, differing, run_norse_from_nir, run_norse_nir_to_torch, run_sinabs_from_nir,
    run_sinabs_nir_to_torch, run_sinabs_nirtorch_load, run_snntorch)

SINABS = "the sinabs cross-check needs sinabs 3.1.3 (pip install --no-deps sinabs==3.1.3 pbr, and matplotlib)"
SNNTORCH = "the snnTorch cross-check needs snntorch 1.0.0 (pip install --no-deps snntorch==1.0.0)"
NORSE = "the Norse cross-check needs norse 1.1.0 (pip install --no-deps norse==1.1.0)"


def _assert_counts_equal(counts, ref_counts):
    for name, want in ref_counts.items():
        assert counts[name].shape == want.shape and np.array_equal(counts[name], want), \
            f"{name}: {np.sum(counts[name] != want)} of {want.size} counts differ"


def test_sinabs_from_nir_with_strict_single_spikes_equals_run_nir_on_conv_pool_linear():
    pytest.importorskip("sinabs", reason=SINABS)
    from sinabs.activation import SingleSpike
    c = case("conv_pool_linear")
    counts, out = run_sinabs_from_nir(c)
    _assert_counts_equal(counts, c.ref["spike_counts"])
    assert sum(int(v.sum()) for v in counts.values()) > 1000
    # from_nir dropped the readout's nir.Scale: its output is relu3's spikes, the factor is missing
    scale = np.asarray(c.graph.nodes["relu3.scale"].scale, np.float32)
    assert np.any(scale != 1) and not np.array_equal(out, c.readout)
    assert np.array_equal(out * scale, c.readout)
    # sinabs' own SingleSpike fires on v >= 1: potentials landing exactly on 1 fire a step early
    ge, total = differing(run_sinabs_from_nir(c, spike_fn=SingleSpike)[0], c.ref["spike_counts"])
    assert 0 < ge < total
    # from_nir's layers as built (MultiSpike, v_mem clipped at -1, v0 not set) are further off
    assert differing(run_sinabs_from_nir(c, settings=False)[0], c.ref["spike_counts"])[0] > ge


def test_sinabs_from_nir_fails_on_the_residual_block_and_nirtorch_load_loses_its_skip():
    """The residual block's graph has two nir.Scale nodes (the skip converts relu1's θ to relu2's, the
    readout restores relu2's θ). sinabs.from_nir maps neither: nirtorch.load keys its modules by
    object, the two None modules collide and it fails with a KeyError. With the Scale mapped,
    nirtorch.load orders the nodes depth first from the input (relu1, conv2, relu2, ..., then
    relu1.scale), so relu2 runs before the skip branch and sums conv2 alone: its spikes are exactly
    those of the graph without the skip edge."""
    pytest.importorskip("sinabs", reason=SINABS)
    c = case("residual_block")
    with pytest.raises(KeyError, match="relu1_scale"):
        run_sinabs_from_nir(c)
    counts, _ = run_sinabs_nirtorch_load(c)
    assert np.array_equal(counts["relu1"], c.ref["spike_counts"]["relu1"])
    assert not np.array_equal(counts["relu2"], c.ref["spike_counts"]["relu2"])
    no_skip = run_nir(without_skip(c.graph, ("relu1.scale", "relu2")), c.x, c.T, c.D)
    _assert_counts_equal(counts, no_skip["spike_counts"])


def test_sinabs_layers_through_nir_to_torch_equal_run_nir_on_the_residual_block():
    pytest.importorskip("sinabs", reason=SINABS)
    c = case("residual_block")
    counts, readout = run_sinabs_nir_to_torch(c)
    _assert_counts_equal(counts, c.ref["spike_counts"])
    assert np.array_equal(readout, c.readout)


@pytest.mark.parametrize("name", ["conv_pool_linear", "residual_block"])
def test_snntorch_leaky_through_nir_to_torch_equals_run_nir(name):
    pytest.importorskip("snntorch", reason=SNNTORCH)
    c = case(name)
    counts, readout = run_snntorch(c)
    _assert_counts_equal(counts, c.ref["spike_counts"])
    assert np.array_equal(readout, c.readout)
    assert 0.2 < np.mean(readout != 0)


def test_norse_from_nir_resets_to_zero_so_it_differs_from_the_export_on_conv_pool_linear():
    """Norse's IAFCell resets to v_reset whatever the metadata says: on one sample at a time (a batch
    axis would be flattened by nir.Flatten(start_dim=0) into the Affine) its spikes are run_nir's with
    reset "zero" exactly, and not the export's (reset by subtraction)."""
    pytest.importorskip("norse", reason=NORSE)
    c = case("conv_pool_linear")
    counts, out = run_norse_from_nir(c)
    _assert_counts_equal(counts, c.ref_zero["spike_counts"])
    scale = np.asarray(c.graph.nodes["relu3.scale"].scale, np.float32)
    (zero_readout,) = c.ref_zero["readout"].values()
    assert np.array_equal(out * scale, zero_readout)     # the readout's nir.Scale was dropped, as in sinabs
    # the difference from the export (6 samples): 236 of 2,172 counts differ, 15,986 spikes against
    # 17,036: a reset to 0 throws away the potential above the threshold
    diff, total = differing(counts, c.ref["spike_counts"])
    assert 0 < diff < total
    lost = sum(int((c.ref["spike_counts"][k] - counts[k]).sum()) for k in counts)
    assert lost > 0


def test_norse_from_nir_fails_on_the_residual_block_its_iaf_cells_reset_to_zero_through_nir_to_torch():
    """from_nir has no nir.Scale (KeyError as sinabs); Norse's IAFCell wired by nir_to_torch runs the
    residual block, batched, and equals run_nir with reset "zero"."""
    norse = pytest.importorskip("norse.torch", reason=NORSE)
    c = case("residual_block")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with pytest.raises(KeyError, match="relu1_scale"):
            norse.from_nir(c.graph)
    counts, readout = run_norse_nir_to_torch(c)
    _assert_counts_equal(counts, c.ref_zero["spike_counts"])
    (zero_readout,) = c.ref_zero["readout"].values()
    assert np.array_equal(readout, zero_readout)
    assert differing(counts, c.ref["spike_counts"])[0] > 0

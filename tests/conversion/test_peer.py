"""The same SNN built from SpikingJelly's parts (tools/peer_spikingjelly.py, the PyTorch peer the
benchmark times beside onnx2snn) gives onnx2snn's outputs: same thresholds, T and neuron (reset by
subtraction, no initial charge). Skipped without torch and spikingjelly."""

import numpy as np
import pytest

import onnx2snn
from onnx2snn import CalibConfig, SNNConfig, runtime, to_snn
from tools import peer_spikingjelly as peer

pytestmark = pytest.mark.skipif(peer.available() is not None,
                                reason=f"{peer.available()} (install spikingjelly==2.0.0 with --no-deps, and loguru)")


def test_spikingjelly_build_of_the_snn_matches_onnx2snn(resnet_path, digits_npz):
    ann = onnx2snn.graph.onnx_io.load(resnet_path)
    calib, test = digits_npz
    th = onnx2snn.calibrate(ann, onnx2snn.api.open_source(ann, str(calib)), CalibConfig(iters=30))
    x = np.load(test)["input"][:64]
    ours = runtime.session(to_snn(ann, th, SNNConfig(timesteps=32, v_init=0.0))[0]).run(None, {"input": x})[0]
    theirs = peer.SpikingJellySNN(ann, th.values, 32)(x)
    assert theirs.shape == ours.shape
    # float rounding differs (x / theta in SpikingJelly, v >= 1 against v > theta): a few spikes move
    assert np.abs(theirs - ours).mean() <= 0.02 * np.abs(ours).mean()
    assert np.mean(theirs.argmax(1) == ours.argmax(1)) >= 0.95

"""Models exported by other tools convert too: scikit-learn (skl2onnx), torch.export (dynamo)."""
import io

import numpy as np
import onnx
import pytest

import onnx2snn
from onnx2snn import CalibConfig, SNNConfig, evaluate_file, runtime


def test_scikit_learn_mlp_via_skl2onnx(digits_data, tmp_path):
    from sklearn.neural_network import MLPClassifier
    from skl2onnx import to_onnx
    x_train, y_train, x_test, y_test = digits_data
    flat_train, flat_test = x_train.reshape(len(x_train), -1), x_test.reshape(len(x_test), -1)
    clf = MLPClassifier((64, 32), max_iter=300, random_state=0).fit(flat_train, y_train)
    model = to_onnx(clf, flat_train[:1], options={"zipmap": False}, target_opset=17)
    path = tmp_path / "mlp.onnx"
    onnx.save(model, path)
    name = model.graph.input[0].name
    np.savez(tmp_path / "calib.npz", **{name: flat_train, "y": y_train})
    np.savez(tmp_path / "test.npz", **{name: flat_test, "y": y_test})
    result = onnx2snn.convert(path, data=str(tmp_path / "calib.npz"), output=tmp_path / "mlp.snn.onnx",
                              calib=CalibConfig(iters=200), snn=SNNConfig(timesteps=64))
    sess = runtime.session(result.output)
    # a drop-in replacement: label (int64) and probabilities, computed once from averaged values
    assert [o.name for o in sess.get_outputs()] == [o.name for o in model.graph.output]
    label, proba = sess.run(None, {name: flat_test[:20]})
    assert label.dtype == np.int64 and np.array_equal(label, proba.argmax(1))
    np.testing.assert_allclose(proba.sum(1), 1, rtol=1e-5)
    ev = evaluate_file(result.output, data=str(tmp_path / "test.npz"), ann_path=path, timesteps=[16, 128],
                       batch_size=100)
    assert ev.ann_accuracy == pytest.approx(clf.score(flat_test, y_test), abs=0.005)
    assert ev.rows[-1]["accuracy"] >= ev.ann_accuracy - 0.01


def test_torch_export_dynamo_model(digits_data, tmp_path):
    import torch
    import models
    net, x = models.digits_cnn(epochs=5)
    buf = io.BytesIO()
    # static batch of 2, as torch.export gives by default: calibration and inference use batches of 2
    program = torch.onnx.export(net, (torch.from_numpy(x[:2]),), input_names=["input"], output_names=["logits"],
                                dynamo=True, opset_version=18)
    program.save(str(tmp_path / "dyn.onnx"))
    x_train, y_train, x_test, y_test = digits_data
    np.savez(tmp_path / "calib.npz", input=x_train[:500])
    result = onnx2snn.convert(tmp_path / "dyn.onnx", data=str(tmp_path / "calib.npz"), output=tmp_path / "d.snn.onnx",
                              calib=CalibConfig(iters=50, batch_size=2), snn=SNNConfig(timesteps=64))
    assert len(result.layers) == 3
    ann = runtime.session(tmp_path / "dyn.onnx")
    snn = runtime.session(result.output)
    agree = np.mean([ann.run(None, {"input": x_test[i:i + 2]})[0].argmax(1) ==
                     snn.run(None, {"input": x_test[i:i + 2]})[0].argmax(1) for i in range(0, 200, 2)])
    assert agree >= 0.95

"""`eval --task`: a segmenter and a detector trained here on synthetic shapes, converted with the CLI's
defaults and scored in their task's metric (mIoU from .npz masks and from a Pascal VOC root; COCO
mAP from an image folder and its annotations through a --decode hook), regression scores, and the
T sweep below the model's delay (scaled, fixed and chosen delays; unrolled and looped forms)."""
import json

import numpy as np
import onnx
import pytest

from tools.fixtures import tasks as tm
from onnx2snn.cli import main


def _cli(args, capsys):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory):
    folder = tmp_path_factory.mktemp("seg")
    net, x = tm.train_segmenter(seed=0)
    (folder / "seg.onnx").write_bytes(tm.export(net, x[:2], ["logits"]))
    calib, calib_masks = tm.shapes_segmentation(300, seed=101)
    np.savez(folder / "calib.npz", input=calib)
    test, masks = tm.shapes_segmentation(120, seed=202)
    np.savez(folder / "test.npz", input=test, mask=masks)
    return folder, test, masks


def test_segmenter_scores_miou_from_npz_masks_and_a_voc_root(segmenter, tmp_path, capsys):
    folder, test, masks = segmenter
    snn = tmp_path / "seg.snn.onnx"
    _cli([folder / "seg.onnx", "--data", folder / "calib.npz", "-o", snn, "-T", 64, "-q"], capsys)
    out = _cli(["eval", snn, "--data", folder / "test.npz", "--ann", folder / "seg.onnx", "-T", "16,32,64",
                "--json", tmp_path / "r.json"], capsys)
    assert "task: segment (the data holds masks)" in out and "mIoU" in out and "pixel acc." in out
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["task"] == "segment" and [row["T"] for row in r["snn"]] == [16, 32, 64]
    ann, snn64 = r["ann"]["metrics"]["miou"], r["snn"][-1]["metrics"]["miou"]
    assert ann > 0.8 and snn64 >= ann - 0.02, (ann, snn64)
    assert r["snn"][0]["metrics"]["miou"] <= snn64 + 0.01          # fewer steps, no better
    assert len(r["snn"][-1]["metrics"]["iou"]) == 4 and r["snn"][-1]["agreement"] > 0.95
    # the same images as a Pascal VOC root (JPEG images, palette masks, a val split): scored alike
    root, ids = tm.write_voc_root(tmp_path / "VOC", test, masks, {"val": list(range(60))})
    out = _cli(["eval", snn, "--data", root, "--split", "val", "--ann", folder / "seg.onnx", "-T", "64",
                "--json", tmp_path / "voc.json"], capsys)
    voc = json.loads((tmp_path / "voc.json").read_text())
    assert voc["samples"] == 60 and voc["task"] == "segment"
    assert voc["snn"][-1]["metrics"]["miou"] >= voc["ann"]["metrics"]["miou"] - 0.03
    # the report's SOP90 is measured in mIoU
    _cli(["eval", snn, "--data", folder / "test.npz", "--ann", folder / "seg.onnx", "-T", "16,64",
          "--report", tmp_path / "rep.json", "-q"], capsys)
    rep = json.loads((tmp_path / "rep.json").read_text())
    assert rep["metric"] == "miou" and rep["sop90"]["basis"] == "miou"


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    pytest.importorskip("pycocotools", reason="--task detect needs pycocotools (the 'tasks' extra)")
    folder = tmp_path_factory.mktemp("det")
    net, x = tm.train_detector(seed=0)
    (folder / "det.onnx").write_bytes(tm.export(net, x[:2], tm.DETECTOR_OUTPUTS))
    calib, _, _ = tm.shapes_detection(300, seed=101)
    np.savez(folder / "calib.npz", input=calib)
    (folder / "decode.py").write_text(tm.decode_source())
    test, boxes, labels = tm.shapes_detection(150, seed=202)
    images, annotations = tm.write_coco_folder(folder / "coco", test, boxes, labels, original_size=64)
    return folder, images, annotations


def test_detector_exported_up_to_its_heads_scores_coco_map_through_a_decode_hook(detector, tmp_path, capsys):
    folder, images, annotations = detector
    snn = tmp_path / "det.snn.onnx"
    _cli([folder / "det.onnx", "--data", folder / "calib.npz", "-o", snn, "-T", 128, "-q"], capsys)
    args = [str(a) for a in ("eval", snn, "--data", images, "--annotations", annotations, "--ann", folder / "det.onnx")]
    out = _cli(args + ["--decode", f"{folder / 'decode.py'}:decode", "-T", "32,128",
                       "--json", tmp_path / "r.json"], capsys)
    assert "task: detect (boxes from --annotations)" in out and "mAP@.5" in out
    r = json.loads((tmp_path / "r.json").read_text())
    ann, snn128 = r["ann"]["metrics"]["map50"], r["snn"][-1]["metrics"]["map50"]
    assert ann > 0.8 and snn128 >= ann - 0.03, (ann, snn128)
    assert 0 < r["snn"][-1]["metrics"]["map"] <= snn128
    # without a decode hook, outputs that are not boxes are refused, naming them and the flag
    assert main(args + ["-T", "128"]) == 1
    assert "heatmap, size, offset" in capsys.readouterr().err
    # a hook that fails is named
    (tmp_path / "bad.py").write_text("def decode(outputs, meta):\n    raise KeyError('boxes')\n")
    assert main(args + ["--decode", f"{tmp_path / 'bad.py'}:decode", "-T", "128"]) == 1
    assert "--decode" in capsys.readouterr().err


def test_regression_targets_score_mse_and_psnr(mlp_path, digits_npz, tmp_path, capsys):
    import onnxruntime as ort
    calib, test = digits_npz
    x = np.load(test)["input"][:100]
    ann_out = ort.InferenceSession(str(mlp_path)).run(None, {"input": x})[0]
    np.savez(tmp_path / "reg.npz", input=x, target=ann_out + 0.1)     # targets 0.1 off the ANN everywhere
    snn = tmp_path / "mlp.snn.onnx"
    _cli([mlp_path, "--data", calib, "-o", snn, "-T", 32, "-q"], capsys)
    _cli(["eval", snn, "--data", tmp_path / "reg.npz", "--ann", mlp_path, "-T", "32", "--json",
          tmp_path / "r.json"], capsys)
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["task"] == "regress" and r["ann"]["metrics"]["mse"] == pytest.approx(0.01, rel=1e-3)
    peak = float(np.ptp(ann_out + 0.1))
    assert r["ann"]["metrics"]["psnr"] == pytest.approx(10 * np.log10(peak ** 2 / 0.01), rel=1e-3)
    assert r["snn"][0]["metrics"]["mse"] > 0


def test_any_t_list_sweeps_below_the_models_delay_in_every_form(resnet_path, digits_npz, tmp_path, capsys):
    calib, test = digits_npz
    unrolled, loop, th = tmp_path / "u.snn.onnx", tmp_path / "l.snn.onnx", tmp_path / "th.json"
    _cli([resnet_path, "--data", calib, "-o", unrolled, "-T", 32, "--iters", 5, "--delay", 12, "-q",
          "--save-thresholds", th], capsys)
    _cli([resnet_path, "--data", calib, "--thresholds", th, "-o", loop, "-T", 32, "--delay", 12, "--form", "loop",
          "--chunk", 4, "-q"], capsys)
    d = int(dict((p.key, p.value) for p in onnx.load(unrolled).metadata_props)["onnx2snn.delay"])
    assert d == 12
    rows = {}
    for name, path in (("unrolled", unrolled), ("loop", loop)):
        out = _cli(["eval", path, "--data", test, "--ann", resnet_path, "-T", "8,16,32", "--json",
                    tmp_path / f"{name}.json"], capsys)
        scaled = {8: round(d * 8 / 32), 16: round(d * 16 / 32), 32: d}
        assert f"the model's D={d} at its T=32, scaled in proportion to T" in out
        assert ", ".join(f"T={t} D={scaled[t]}" for t in (8, 16, 32)) in out
        assert "correction made for T=32 is kept at every T" in out
        r = json.loads((tmp_path / f"{name}.json").read_text())
        assert [(row["T"], row["delay"]) for row in r["snn"]] == sorted(scaled.items())
        assert r["snn"][0]["metrics"]["top5"] is not None
        rows[name] = r["snn"]
    for a, b in zip(rows["unrolled"], rows["loop"]):      # the forms agree at every window
        assert a["accuracy"] == b["accuracy"] and a["rel_error"] == pytest.approx(b["rel_error"], abs=1e-6)
    out = _cli(["eval", unrolled, "--data", test, "--ann", resnet_path, "-T", "8,32", "--delay", "2"], capsys)
    assert "T=8 D=2, T=32 D=2" in out
    out = _cli(["eval", unrolled, "--data", test, "--ann", resnet_path, "-T", "8,32", "--delay", "auto",
                "--json", tmp_path / "auto.json"], capsys)
    auto = json.loads((tmp_path / "auto.json").read_text())["snn"]
    assert "--delay auto" in out and all(0 <= row["delay"] < row["T"] for row in auto)
    assert main(["eval", str(unrolled), "--data", str(test), "-T", "8", "--delay", "8"]) == 1
    assert "--delay 8: every T must exceed it" in capsys.readouterr().err
    # a looped model converted before its delay was a named constant keeps its own D, above which it sweeps
    from onnx2snn.snn.loop import DELAY_NAME
    old = onnx.load(loop)
    for graph in [old.graph] + [a.g for n in old.graph.node for a in n.attribute if a.type == onnx.AttributeProto.GRAPH]:
        for init in graph.initializer:
            if init.name.startswith(DELAY_NAME):
                renamed = init.name.replace(DELAY_NAME, "old.delay")
                for node in graph.node:
                    node.input[:] = [renamed if i == init.name else i for i in node.input]
                init.name = renamed
    onnx.save(old, tmp_path / "old.snn.onnx")
    out = _cli(["eval", tmp_path / "old.snn.onnx", "--data", test, "-T", "16,32"], capsys)
    assert "the model's D=12 at every T (built into this older looped model) (T=16 D=12, T=32 D=12)" in out
    assert main(["eval", str(tmp_path / "old.snn.onnx"), "--data", str(test), "-T", "8,32"]) == 1
    assert "delay D=12 is built in" in capsys.readouterr().err


def test_imagenet_style_resize_and_center_crop_are_recorded_and_reused(cnn_path, digits_data, tmp_path, capsys):
    from PIL import Image
    _, _, x_test, y_test = digits_data
    folder = tmp_path / "digits"
    for i, (img, label) in enumerate(zip(x_test[:200], y_test[:200])):
        big = np.kron(img[0], np.ones((5, 5)))                    # 40x40, then a 4-pixel band above and below
        tall = np.pad(big, ((4, 4), (0, 0)))                      # 48 high, 40 wide: the crop removes the bands
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray((255 * tall).astype(np.uint8)).save(folder / str(label) / f"{i}.png")
    snn = tmp_path / "cnn.snn.onnx"
    _cli([cnn_path, "--data", folder, "--resize", 8, "-o", snn, "-T", 32, "--iters", 5, "-q"], capsys)
    meta = {p.key: p.value for p in onnx.load(snn).metadata_props}
    prep = json.loads(meta["onnx2snn.preprocessing"])
    assert prep["resize"] == 8 and list(prep["crop"] or [8, 8]) == [8, 8]
    _cli(["eval", snn, "--data", folder, "--ann", cnn_path, "-T", 32, "--json", tmp_path / "r.json"], capsys)
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["task"] == "classify" and r["ann"]["accuracy"] > 0.8 and r["snn"][-1]["metrics"]["top5"] > 0.9
    assert main(["eval", str(snn), "--data", str(folder), "--crop", "9,9"]) == 1
    assert "--crop" in capsys.readouterr().err


def _with_postprocessing(net, top_k: int = 20):
    """The detector with its decoding in the graph (3x3 peak picking, top-K over classes and cells):
    outputs boxes [N, K, 4] xyxy in the model input's pixels, scores [N, K], labels [N, K]."""
    import torch
    from torch import nn
    import torch.nn.functional as F

    class Decoded(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            heat, size, offset = self.net(x)
            heat = torch.sigmoid(heat)
            heat = heat * (F.max_pool2d(heat, 3, 1, 1) == heat).float()
            n, c, h, w = heat.shape
            scores, idx = heat.reshape(n, -1).topk(top_k)
            pos = idx % (h * w)
            ys, xs = (pos // w).float(), (pos % w).float()
            pick = pos[:, None, :].expand(n, 2, top_k)
            sz, off = size.reshape(n, 2, -1).gather(2, pick).abs(), offset.reshape(n, 2, -1).gather(2, pick)
            cx, cy = (xs + off[:, 0]) * tm.STRIDE, (ys + off[:, 1]) * tm.STRIDE
            bw, bh = sz[:, 0] * tm.STRIDE, sz[:, 1] * tm.STRIDE
            boxes = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], dim=-1)
            return boxes, scores, idx // (h * w) + 1

    return Decoded().eval()


def test_a_detector_exported_with_its_postprocessing_is_scored_on_its_own_boxes(detector, tmp_path, capsys):
    folder, images, annotations = detector
    import torch
    net, x = tm.train_detector(seed=0)
    full = _with_postprocessing(net)
    with torch.no_grad():
        (tmp_path / "full.onnx").write_bytes(tm.export(full, x[:2], ["boxes", "scores", "labels"]))
    snn = tmp_path / "full.snn.onnx"
    _cli([tmp_path / "full.onnx", "--data", folder / "calib.npz", "-o", snn, "-T", 64, "-q"], capsys)
    out = _cli(["eval", snn, "--data", images, "--annotations", annotations, "--ann", tmp_path / "full.onnx",
                "-T", "64", "--json", tmp_path / "r.json"], capsys)
    assert "task: detect" in out
    r = json.loads((tmp_path / "r.json").read_text())
    ann, snn64 = r["ann"]["metrics"]["map50"], r["snn"][-1]["metrics"]["map50"]
    assert ann > 0.8 and snn64 >= ann - 0.05, (ann, snn64)     # boxes scaled from 48x48 inputs to 64x64 images

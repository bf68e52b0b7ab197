"""Real pretrained mobile networks from a package registry, as ONNX files, for manual checks and
benchmarks of depthwise/ReLU6 networks (never for the tests: they fetch a package).

npm's `@mediapipe/objectron` (Apache-2.0) bundles, inside `objectron_solution_packed_assets.data`,
MediaPipe's SSD detector on a MobileNetV2 1.0 backbone trained on an Open Images v4 subset (fp16
weights), and next to it 224x224 MBConv-style landmark networks with a pooled head. This tool packs
the npm tarball (`npm pack`, registry only), cuts the TFLite files out of the packed data at the
offsets its loader script lists, converts them with tf2onnx (`--tflite`, NCHW inputs) and writes:

    ssd_mobilenetv2_oidv4.onnx        the whole SSD: input [1, 3, 300, 300] in [-1, 1], raw box
                                      encodings [1, 1917, 4] and class logits [1, 1917, 24]
    mobilenet_v2_224_features.onnx    its MobileNetV2 1.0 backbone up to the 1280-channel ReLU6, a
                                      global average pool: input [N, 3, 224, 224] in [-1, 1]
                                      (`--mean 0.5,0.5,0.5 --std 0.5,0.5,0.5`), output [N, 1280]
    objectron_chair.onnx              a 224x224 landmark network (depthwise, ReLU6, residual adds,
                                      pooled dense head): input [N, 3, 224, 224] in [0, 1]

    python -m tools.mobile_models OUT_DIR [--cache DIR]

Needs npm, and tensorflow-cpu with tf2onnx (the `exporters` extra).
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PACKAGE = "@mediapipe/objectron@0.4.1675468480"
SSD = "object_detection_ssd_mobilenetv2_oidv4_fp16.tflite"
BACKBONE_END = "Relu6__94:0"          # the 1280-channel 1x1 convolution's ReLU6 in tf2onnx's names


def _pack(cache: Path) -> Path:
    cache.mkdir(parents=True, exist_ok=True)
    found = sorted(cache.glob("mediapipe-objectron-*.tgz"))
    if not found:
        subprocess.run(["npm", "pack", PACKAGE, "--pack-destination", str(cache)], check=True,
                       stdout=subprocess.DEVNULL)
        found = sorted(cache.glob("mediapipe-objectron-*.tgz"))
    return found[-1]


def _tflites(tgz: Path, out: Path) -> dict:
    """The packed TFLite files and the chair model, written to `out`: name -> path."""
    with tarfile.open(tgz) as tar:
        def read(name):
            return tar.extractfile(f"package/{name}").read()
        loader = read("objectron_solution_packed_assets_loader.js").decode()
        data = read("objectron_solution_packed_assets.data")
        files = {}
        for entry in re.findall(r'\{"filename":[^}]*\}', loader):
            f = json.loads(entry)
            name = f["filename"].rsplit("/", 1)[-1]
            if name.endswith(".tflite"):
                files[name] = out / name
                files[name].write_bytes(data[f["start"]:f["end"]])
        files["chair"] = out / "object_detection_3d_chair.tflite"
        files["chair"].write_bytes(read("object_detection_3d_chair.tflite"))
    return files


def _tf2onnx(tflite: Path, dst: Path, nchw_input: str) -> None:
    subprocess.run([sys.executable, "-m", "tf2onnx.convert", "--tflite", str(tflite), "--opset", "13",
                    "--inputs-as-nchw", nchw_input, "--output", str(dst)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _batch_free(model, name: str):
    """The model with input `name` renamed "input" and its batch dim symbolic ("N")."""
    import onnx
    g = model.graph
    old = g.input[0].name
    g.input[0].name = name
    for node in g.node:
        for i, x in enumerate(node.input):
            if x == old:
                node.input[i] = name
    dim = g.input[0].type.tensor_type.shape.dim[0]
    dim.ClearField("dim_value")
    dim.dim_param = "N"
    del g.value_info[:]
    for o in g.output:
        if o.type.tensor_type.shape.dim:
            o.type.tensor_type.shape.dim[0].ClearField("dim_value")
            o.type.tensor_type.shape.dim[0].dim_param = "N"
    return onnx.shape_inference.infer_shapes(model)


def _features(ssd: Path, dst: Path, size: int = 224) -> None:
    """The SSD's backbone up to BACKBONE_END, a global average pool and a flatten, at size x size."""
    import onnx
    from onnx import helper
    with tempfile.TemporaryDirectory() as tmp:
        cut = Path(tmp) / "cut.onnx"
        onnx.utils.extract_model(str(ssd), str(cut), [onnx.load(str(ssd)).graph.input[0].name], [BACKBONE_END])
        m = onnx.load(str(cut))
    g = m.graph
    g.node.extend([helper.make_node("GlobalAveragePool", [BACKBONE_END], ["pooled"], name="head/GlobalAveragePool"),
                   helper.make_node("Flatten", ["pooled"], ["features"], name="head/Flatten", axis=1)])
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("features", onnx.TensorProto.FLOAT, [1, 1280]))
    for d, v in zip(g.input[0].type.tensor_type.shape.dim[2:], (size, size)):
        d.ClearField("dim_param")
        d.dim_value = v
    m = _batch_free(m, "input")
    onnx.checker.check_model(m)
    onnx.save(m, str(dst))


def build(out: Path, cache: Path) -> dict:
    import onnx
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tflites = _tflites(_pack(cache), Path(tmp))
        ssd = out / "ssd_mobilenetv2_oidv4.onnx"
        _tf2onnx(tflites[SSD], ssd, "normalized_input_image_tensor")
        chair = out / "objectron_chair.onnx"
        _tf2onnx(tflites["chair"], chair, "input_1")
        onnx.save(_batch_free(onnx.load(str(chair)), "input"), str(chair))
    features = out / "mobilenet_v2_224_features.onnx"
    _features(ssd, features)
    return {"ssd": ssd, "features": features, "chair": chair}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="folder for the ONNX files")
    ap.add_argument("--cache", default=str(Path.home() / ".cache" / "onnx2snn" / "npm"),
                    help="where the npm tarball is kept (packed once)")
    args = ap.parse_args(argv)
    for name, path in build(Path(args.out), Path(args.cache)).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()

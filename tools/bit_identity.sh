#!/usr/bin/env bash
# Byte-identity of what a build writes, for a change that must not move any number (a restructuring):
#
#     bash tools/bit_identity.sh /tmp/before /path/to/old/checkout     # a checkout with its ops built
#     bash tools/bit_identity.sh /tmp/after  .
#     diff <(cd /tmp/before && sha256sum *) <(cd /tmp/after && sha256sum *)
#
# Converts the bench ResNet-32 and VGG-7 (../shared/bench, or $BENCH) with the defaults (calibration
# shortened to 30 batches, T=32, the check on 32 samples) and evaluates each SNN against its ANN on 300
# validation images with --json. The memory budget is fixed (--max-memory 8G): by default it is half of
# the memory free at the time, and the batch sizes that follow from it change the corrections.
set -euo pipefail
out=$(realpath -m "$1"); checkout=$(realpath "$2")
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$root/.venv/bin/python}
bench=${BENCH:-$root/../shared/bench}
R="--mean 0.485,0.456,0.406 --std 0.229,0.224,0.225"
V="--mean 0.4914,0.4822,0.4465 --std 0.2470,0.2435,0.2616"
mkdir -p "$out" && cd "$out"
run() { PYTHONPATH="$checkout" "$python" -m onnx2snn "$@" --max-memory 8G -q > /dev/null; }
run "$bench/models/resnet32_cifar10.onnx" --data "$bench/cifar10/calib" $R --iters 30 -T 32 --check 32 \
    -o resnet.snn.onnx --save-thresholds resnet_th.json
run "$bench/models/vgg7_pool_cifar10.onnx" --data "$bench/cifar10/calib" $V --iters 30 -T 32 --check 32 \
    -o vgg.snn.onnx --save-thresholds vgg_th.json
run eval resnet.snn.onnx --data "$bench/cifar10/val" --ann "$bench/models/resnet32_cifar10.onnx" --limit 300 \
    --json resnet_eval.json
run eval vgg.snn.onnx --data "$bench/cifar10/val" --ann "$bench/models/vgg7_pool_cifar10.onnx" --limit 300 \
    --json vgg_eval.json
sha256sum *.onnx *.json

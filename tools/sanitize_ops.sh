#!/usr/bin/env bash
# Build the operator library with AddressSanitizer + UndefinedBehaviorSanitizer and run the
# property-based fuzz test (tests/ops/test_op_fuzz.py) and the operators' other modes (blocked layout,
# fused inputs, EventConv, SpikingMaxPool: tests/runtime/test_session_graph.py) against that build.
#
#   bash tools/sanitize_ops.sh [EXAMPLES]      # default 3000 cases per op; needs the test extra
#
# The instrumented library is loaded through ONNX2SNN_OPS_LIBRARY; libasan is preloaded because
# the Python interpreter itself is not instrumented. Leak detection is off (CPython keeps its
# allocations until exit); any memory error or undefined behaviour aborts the run with a report.
set -euo pipefail
cd "$(dirname "$0")/.."
EXAMPLES="${1:-3000}"
PY="${PYTHON:-.venv/bin/python}"
CXX="${CXX:-g++}"
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
INCLUDE="$("$PY" -c 'from tests.support.native import build_support; print(build_support.find_onnxruntime_headers())')"
"$CXX" -std=c++17 -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined \
    -ffp-contract=off -fno-trapping-math -fPIC -shared -I"$INCLUDE" \
    custom_ops/if_neuron.cc custom_ops/relux_probe.cc custom_ops/event_conv.cc custom_ops/spiking_max_pool.cc custom_ops/register.cc -o "$OUT/libonnx2snn_asan.so"
LIBASAN="$("$CXX" -print-file-name=libasan.so)"
LIBUBSAN="$("$CXX" -print-file-name=libubsan.so)"
echo "sanitized library: $OUT/libonnx2snn_asan.so; $EXAMPLES cases per op"
# reports go to files (onnxruntime's runtime may hold stderr), printed below when there are any
status=0
ONNX2SNN_OPS_LIBRARY="$OUT/libonnx2snn_asan.so" ONNX2SNN_FUZZ_EXAMPLES="$EXAMPLES" \
    ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:log_path=$OUT/asan" \
    UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:log_path=$OUT/ubsan" \
    LD_PRELOAD="$LIBASAN $LIBUBSAN" \
    "$PY" -m pytest -q -p no:cacheprovider tests/ops/test_op_fuzz.py tests/runtime/test_session_graph.py || status=$?
reports=$(find "$OUT" -maxdepth 1 \( -name 'asan.*' -o -name 'ubsan.*' \) -type f)
if [ -n "$reports" ]; then
    echo "sanitizer reports:"
    cat $reports
    status=1
fi
[ "$status" -eq 0 ] && echo "sanitizers: no findings"
exit "$status"

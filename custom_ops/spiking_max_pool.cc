// Spiking max pool for time-folded spike currents (domain ai.onnx2snn, version 1).
//
// SpikingMaxPool(x[, sums_in, peak_in]) -> (current[, sums_out, peak_out])
//   x        float32 [K*N, C, H, W]: K steps of N samples, time-major, the currents into the pool.
//   sums_in  float32 [N, C, H, W] (optional, with peak_in): running sums carried from earlier steps.
//   peak_in  float32 [N, C, H', W']: the pooled maximum after the earlier steps.
//   current  float32 [K*N, C, H', W']: step t's pooled maximum of the running sums minus step t-1's.
//   sums_out, peak_out: the running sums and the pooled maximum after the K steps.
// Attributes: timesteps K (int), kernel_shape (2 ints), strides (default 1), pads (4 ints, default
// 0), dilations (default 1) as MaxPool's (ceil_mode 0, NOTSET padding); channel_block b (int,
// default 0): with b > 0 every tensor is in onnxruntime's blocked channel layout ([.., C/b, H, W, b]
// in memory for the logical [.., C, H, W]; padding channels hold zeros and stay zero). Set by
// onnx2snn.runtime.layout (a session-time pass) on onnxruntime's optimized graph, never in files.
//
// The same float32 operations in the same order as the standard-op graph it replaces
// (timefold.TimeFold.spiking_pool: CumSum over steps, MaxPool, difference of consecutive steps),
// so the results are bit-identical; one read of x and one write of the pooled currents instead of
// a pass per operator.

#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "ops.h"

namespace onnx2snn {
namespace {

struct PoolTask {
  const float* x;
  const float* sums_in;   // may be null (then peak_in too)
  const float* peak_in;
  float* current;
  float* sums_out;        // may be null (then peak_out too)
  float* peak_out;
  int64_t steps, planes_per_step, h, w, oh, ow;   // planes_per_step = N * C
  int64_t kh, kw, sh, sw, pt, pl, dh, dw;
  int64_t lanes;          // 1, or the channel block: a plane then holds `lanes` channels, interleaved
};

// pooled[oy, ox] = max of the sums in the window (max is exact: any order gives the same value).
void PoolSums(const PoolTask& t, const float* sums, float* pooled) {
  const int64_t L = t.lanes;
  const bool inside = t.pt == 0 && t.pl == 0 && (t.oh - 1) * t.sh + (t.kh - 1) * t.dh < t.h &&
                      (t.ow - 1) * t.sw + (t.kw - 1) * t.dw < t.w;
  if (inside) {   // no window reaches the padding: no bounds checks, kernel rows accumulated
    for (int64_t oy = 0; oy < t.oh; ++oy) {
      float* out = pooled + oy * t.ow * L;
      for (int64_t ky = 0; ky < t.kh; ++ky) {
        const float* row = sums + (oy * t.sh + ky * t.dh) * t.w * L;
        for (int64_t ox = 0; ox < t.ow; ++ox) {
          const float* in = row + ox * t.sw * L;
          float* o = out + ox * L;
          for (int64_t l = 0; l < L; ++l) {      // the lanes: contiguous channels of the block
            float m = ky == 0 ? in[l] : std::max(o[l], in[l]);
            for (int64_t kx = 1; kx < t.kw; ++kx) m = std::max(m, in[kx * t.dw * L + l]);
            o[l] = m;
          }
        }
      }
    }
    return;
  }
  for (int64_t oy = 0; oy < t.oh; ++oy)
    for (int64_t ox = 0; ox < t.ow; ++ox)
      for (int64_t l = 0; l < L; ++l) {
        float m = -std::numeric_limits<float>::infinity();
        for (int64_t ky = 0; ky < t.kh; ++ky) {
          const int64_t y = oy * t.sh - t.pt + ky * t.dh;
          if (y < 0 || y >= t.h) continue;
          for (int64_t kx = 0; kx < t.kw; ++kx) {
            const int64_t x = ox * t.sw - t.pl + kx * t.dw;
            if (x >= 0 && x < t.w) m = std::max(m, sums[(y * t.w + x) * L + l]);
          }
        }
        pooled[(oy * t.ow + ox) * L + l] = m;
      }
}

// One (sample, channel) plane through the K steps.
ONNX2SNN_VECTOR_CLONES void PoolPlane(void* data, size_t index) {
  const PoolTask& t = *static_cast<const PoolTask*>(data);
  const int64_t plane = t.h * t.w * t.lanes, out_plane = t.oh * t.ow * t.lanes, p = static_cast<int64_t>(index);
  std::vector<float> sums(static_cast<size_t>(plane)), peak(static_cast<size_t>(out_plane));
  std::vector<float> pooled(static_cast<size_t>(out_plane));
  for (int64_t s = 0; s < t.steps; ++s) {
    const float* xs = t.x + (s * t.planes_per_step + p) * plane;
    if (s == 0 && t.sums_in) {          // Add(first step, sums in)
      const float* si = t.sums_in + p * plane;
      for (int64_t i = 0; i < plane; ++i) sums[i] = xs[i] + si[i];
    } else if (s == 0) {                // CumSum's first element
      std::copy(xs, xs + plane, sums.begin());
    } else {                            // CumSum: running + x_t
      for (int64_t i = 0; i < plane; ++i) sums[i] = sums[i] + xs[i];
    }
    PoolSums(t, sums.data(), pooled.data());
    float* out = t.current + (s * t.planes_per_step + p) * out_plane;
    if (s == 0 && t.peak_in) {
      const float* pi = t.peak_in + p * out_plane;
      for (int64_t i = 0; i < out_plane; ++i) out[i] = pooled[i] - pi[i];
    } else if (s == 0) {                // Sub(pooled, Mul(pooled, 0))
      for (int64_t i = 0; i < out_plane; ++i) out[i] = pooled[i] - pooled[i] * 0.0f;
    } else {
      for (int64_t i = 0; i < out_plane; ++i) out[i] = pooled[i] - peak[i];
    }
    peak.swap(pooled);
  }
  if (t.sums_out) {
    std::copy(sums.begin(), sums.end(), t.sums_out + p * plane);
    std::copy(peak.begin(), peak.end(), t.peak_out + p * out_plane);
  }
}

struct SpikingMaxPoolKernel : GuardedKernel<SpikingMaxPoolKernel> {
  static constexpr const char* kName = "SpikingMaxPool";
  static constexpr size_t kInputs = 3, kRequiredInputs = 1, kOutputs = 3, kRequiredOutputs = 1;
  static constexpr int kInplaceInput = -1;
  int64_t steps = 1;
  int64_t cblock = 0;
  std::vector<int64_t> kernel, strides, pads, dilations;

  explicit SpikingMaxPoolKernel(const OrtKernelInfo* info) {
    Ort::ConstKernelInfo ki(info);
    steps = OptionalAttribute<int64_t>(ki, "timesteps", 0, kName);
    kernel = OptionalInts(ki, "kernel_shape", {});
    strides = OptionalInts(ki, "strides", {1, 1});
    pads = OptionalInts(ki, "pads", {0, 0, 0, 0});
    dilations = OptionalInts(ki, "dilations", {1, 1});
    cblock = OptionalAttribute<int64_t>(ki, "channel_block", 0, kName);
    if (cblock < 0) throw InvalidInput("SpikingMaxPool: channel_block must be >= 0");
    if (steps < 1) throw InvalidInput("SpikingMaxPool: attribute timesteps (int) is required and must be >= 1");
    if (kernel.size() != 2 || strides.size() != 2 || pads.size() != 4 || dilations.size() != 2)
      throw InvalidInput("SpikingMaxPool: 2-D kernel_shape, strides, pads (4 values) and dilations are expected");
    for (int64_t v : kernel)
      if (v < 1) throw InvalidInput("SpikingMaxPool: kernel_shape must be >= 1");
    for (int64_t v : strides)
      if (v < 1) throw InvalidInput("SpikingMaxPool: strides must be >= 1");
    for (int64_t v : dilations)
      if (v < 1) throw InvalidInput("SpikingMaxPool: dilations must be >= 1");
    for (int64_t v : pads)
      if (v < 0) throw InvalidInput("SpikingMaxPool: pads must be >= 0");
  }

  void Compute(OrtKernelContext* context) {
    Ort::KernelContext ctx(context);
    Ort::ConstValue x = ctx.GetInput(0);
    const std::vector<int64_t> xs = x.GetTensorTypeAndShapeInfo().GetShape();
    if (xs.size() != 4) throw InvalidInput("SpikingMaxPool: x must be [K*N, C, H, W], got " + ShapeString(xs));
    ElementCount(xs, "SpikingMaxPool: x");
    if (xs[0] % steps != 0)
      throw InvalidInput("SpikingMaxPool: first dimension of " + ShapeString(xs) + " is not a multiple of timesteps=" +
                         std::to_string(steps));
    const int64_t n = xs[0] / steps, span_h = dilations[0] * (kernel[0] - 1) + 1;
    const int64_t span_w = dilations[1] * (kernel[1] - 1) + 1;
    const int64_t ph = xs[2] + pads[0] + pads[2], pw = xs[3] + pads[1] + pads[3];
    if (ph < span_h || pw < span_w) throw InvalidInput("SpikingMaxPool: kernel larger than the padded input " + ShapeString(xs));
    const int64_t oh = (ph - span_h) / strides[0] + 1, ow = (pw - span_w) / strides[1] + 1;
    const std::vector<int64_t> state_shape{n, xs[1], xs[2], xs[3]}, peak_shape{n, xs[1], oh, ow};
    const float* sums_in = nullptr;
    const float* peak_in = nullptr;
    Ort::ConstValue s{nullptr}, p{nullptr};
    const bool has_sums = GivenInput(ctx, 1, s), has_peak = GivenInput(ctx, 2, p);
    if (has_sums != has_peak) throw InvalidInput("SpikingMaxPool: sums_in and peak_in come together");
    if (has_sums) {
      if (s.GetTensorTypeAndShapeInfo().GetShape() != state_shape || p.GetTensorTypeAndShapeInfo().GetShape() != peak_shape)
        throw InvalidInput("SpikingMaxPool: states must be " + ShapeString(state_shape) + " and " + ShapeString(peak_shape));
      sums_in = s.GetTensorData<float>();
      peak_in = p.GetTensorData<float>();
    }
    float* current = ctx.GetOutput(0, std::vector<int64_t>{xs[0], xs[1], oh, ow}).GetTensorMutableData<float>();
    float* sums_out = nullptr;
    float* peak_out = nullptr;
    if (ctx.GetOutputCount() > 1) {
      sums_out = ctx.GetOutput(1, state_shape).GetTensorMutableData<float>();
      peak_out = ctx.GetOutput(2, peak_shape).GetTensorMutableData<float>();
    }
    if (cblock > 0 && xs[1] % cblock != 0)
      throw InvalidInput("SpikingMaxPool: " + std::to_string(xs[1]) + " channels are not blocks of " + std::to_string(cblock));
    const int64_t lanes = cblock > 0 ? cblock : 1;
    const int64_t planes = n * xs[1] / lanes;
    if (planes == 0 || xs[2] * xs[3] == 0) return;
    PoolTask task{x.GetTensorData<float>(), sums_in, peak_in, current, sums_out, peak_out, steps, planes,
                  xs[2], xs[3], oh, ow, kernel[0], kernel[1], strides[0], strides[1], pads[0], pads[1],
                  dilations[0], dilations[1], lanes};
    ctx.ParallelFor(PoolPlane, static_cast<size_t>(planes), 0, &task);
  }
};

}  // namespace

OrtCustomOp* SpikingMaxPoolOp() { return OpInstance<SpikingMaxPoolKernel>(); }

}  // namespace onnx2snn

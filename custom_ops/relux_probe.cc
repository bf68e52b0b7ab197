// Calibration probe for local threshold balancing (domain ai.onnx2snn, version 1).
//
// ReLUXProbe(x, theta, step[, cap]) -> (y, grad, excess, activity)
//   x        float32, any rank; channel axis `axis` (attribute, default 1)
//   theta    float32 [C] or [1]: current thresholds (one per channel, or one for the layer)
//   step     float32 scalar: 2 * lr
//   cap      float32 scalar (optional): upper bound of theta (a Clip's max, e.g. ReLU6)
//   grad     float32 [C] or [1]: mean over all other axes of (x - theta) * H(x - theta)
//   y        float32 like x: clip(x, 0, theta') with theta' = min(theta + step * grad, cap)
//   excess   float32 scalar: mean of (x - theta) * H(x - theta) over all elements
//   activity float32 scalar: mean of relu(x) over all elements
// One read for the statistics, one read and one write for y: the fused form of the probe's
// standard-op graph, so calibration costs little more than the ANN's own inference.

#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "ops.h"

namespace onnx2snn {
namespace {

struct ProbeTask {
  const float* x;
  float* y;
  const float* theta;      // current thresholds (pass 1) or updated ones (pass 2)
  int64_t outer, channels, inner, per_theta;  // per_theta: C or 1
  int64_t rows_per_block;
  double* partial;         // [blocks][channels][2]: sum of excess, sum of relu
};

// Calls f(channel, threshold, offset) for each contiguous row of `inner` elements in the block.
template <typename F>
void ForEachRow(const ProbeTask& t, size_t block, F f) {
  const int64_t begin = static_cast<int64_t>(block) * t.rows_per_block;
  const int64_t end = std::min(begin + t.rows_per_block, t.outer);
  for (int64_t o = begin; o < end; ++o)
    for (int64_t c = 0; c < t.channels; ++c) f(c, t.theta[t.per_theta == 1 ? 0 : c], (o * t.channels + c) * t.inner);
}

void Statistics(void* data, size_t block) {
  const ProbeTask& t = *static_cast<const ProbeTask*>(data);
  double* acc = t.partial + block * t.channels * 2;
  ForEachRow(t, block, [&](int64_t c, float th, int64_t offset) {
    const float* xs = t.x + offset;
    float ex = 0.0f, act = 0.0f;  // float partials per row, summed in double across rows
    for (int64_t i = 0; i < t.inner; ++i) {
      const float v = xs[i];
      const float d = v - th;
      ex += d > 0.0f ? d : 0.0f;
      act += v > 0.0f ? v : 0.0f;
    }
    acc[2 * c] += ex;
    acc[2 * c + 1] += act;
  });
}

void Clip(void* data, size_t block) {
  const ProbeTask& t = *static_cast<const ProbeTask*>(data);
  ForEachRow(t, block, [&](int64_t, float th, int64_t offset) {
    const float* xs = t.x + offset;
    float* ys = t.y + offset;
    for (int64_t i = 0; i < t.inner; ++i) {
      const float v = xs[i] > 0.0f ? xs[i] : 0.0f;
      ys[i] = v < th ? v : th;
    }
  });
}

struct ProbeKernel : GuardedKernel<ProbeKernel> {
  static constexpr const char* kName = "ReLUXProbe";
  static constexpr size_t kInputs = 4, kRequiredInputs = 3, kOutputs = 4, kRequiredOutputs = 4;
  static constexpr int kInplaceInput = -1;   // y must not overwrite x: the statistics pass reads x first
  int64_t axis = 1;

  explicit ProbeKernel(const OrtKernelInfo* info) {
    Ort::ConstKernelInfo ki(info);
    axis = OptionalAttribute<int64_t>(ki, "axis", 1, kName);
  }

  void Compute(OrtKernelContext* context) {
    Ort::KernelContext ctx(context);
    Ort::ConstValue x = ctx.GetInput(0);
    Ort::ConstValue theta = ctx.GetInput(1);
    Ort::ConstValue step_v = ctx.GetInput(2);
    const std::vector<int64_t> shape = x.GetTensorTypeAndShapeInfo().GetShape();
    const int64_t rank = static_cast<int64_t>(shape.size());
    ElementCount(shape, "ReLUXProbe: input");
    const int64_t per_theta = static_cast<int64_t>(theta.GetTensorTypeAndShapeInfo().GetElementCount());
    if (rank < 1) throw InvalidInput("ReLUXProbe: input must have rank >= 1");
    if (per_theta < 1) throw InvalidInput("ReLUXProbe: theta is empty");
    const int64_t ax = axis < 0 ? axis + rank : axis;
    if (ax < 0 || ax >= rank) throw InvalidInput("ReLUXProbe: axis out of range for input " + ShapeString(shape));
    if (per_theta != 1 && per_theta != shape[ax]) {
      throw InvalidInput("ReLUXProbe: theta has " + std::to_string(per_theta) + " values but input " +
                         ShapeString(shape) + " has " + std::to_string(shape[ax]) + " channels on axis " +
                         std::to_string(ax));
    }
    if (step_v.GetTensorTypeAndShapeInfo().GetElementCount() != 1)
      throw InvalidInput("ReLUXProbe: step must be a scalar");
    const float step = step_v.GetTensorData<float>()[0];
    bool has_cap = false;
    float cap = 0.0f;
    if (ctx.GetInputCount() > 3) {
      Ort::ConstValue c = ctx.GetInput(3);
      if (static_cast<const OrtValue*>(c) != nullptr) {
        if (c.GetTensorTypeAndShapeInfo().GetElementCount() != 1)
          throw InvalidInput("ReLUXProbe: cap must hold exactly one value");
        has_cap = true;
        cap = c.GetTensorData<float>()[0];
      }
    }
    int64_t outer = 1, inner = 1;
    for (int64_t d = 0; d < ax; ++d) outer *= shape[d];
    for (int64_t d = ax + 1; d < rank; ++d) inner *= shape[d];
    const int64_t channels = shape[ax];
    const int64_t total = outer * channels * inner;

    Ort::UnownedValue y = ctx.GetOutput(0, shape);
    const std::vector<int64_t> gshape{per_theta};
    float* grad = ctx.GetOutput(1, gshape).GetTensorMutableData<float>();
    const std::vector<int64_t> scalar;
    float* excess = ctx.GetOutput(2, scalar).GetTensorMutableData<float>();
    float* activity = ctx.GetOutput(3, scalar).GetTensorMutableData<float>();

    const float* th = theta.GetTensorData<float>();
    const int64_t row = std::max<int64_t>(1, channels * inner);
    const int64_t rows_per_block = std::max<int64_t>(1, 32768 / row);
    const int64_t blocks = total == 0 ? 0 : (outer + rows_per_block - 1) / rows_per_block;
    std::vector<double> partial(static_cast<size_t>(std::max<int64_t>(blocks, 1) * channels * 2), 0.0);
    ProbeTask task{x.GetTensorData<float>(), y.GetTensorMutableData<float>(), th, outer, channels, inner,
                   per_theta, rows_per_block, partial.data()};
    if (blocks > 1) ctx.ParallelFor(Statistics, static_cast<size_t>(blocks), 0, &task);
    else if (blocks == 1) Statistics(&task, 0);

    std::vector<double> ex_c(static_cast<size_t>(channels), 0.0), act_c(static_cast<size_t>(channels), 0.0);
    for (int64_t b = 0; b < blocks; ++b)
      for (int64_t c = 0; c < channels; ++c) {
        ex_c[c] += partial[(b * channels + c) * 2];
        act_c[c] += partial[(b * channels + c) * 2 + 1];
      }
    double ex_all = 0.0, act_all = 0.0;
    for (int64_t c = 0; c < channels; ++c) {
      ex_all += ex_c[c];
      act_all += act_c[c];
    }
    const double count = total > 0 ? static_cast<double>(total) : 1.0;
    *excess = static_cast<float>(ex_all / count);
    *activity = static_cast<float>(act_all / count);
    std::vector<float> updated(static_cast<size_t>(per_theta));
    if (per_theta == 1) {
      grad[0] = static_cast<float>(ex_all / count);
    } else {
      const double per_channel = total > 0 ? static_cast<double>(outer * inner) : 1.0;
      for (int64_t c = 0; c < channels; ++c) grad[c] = static_cast<float>(ex_c[c] / per_channel);
    }
    // theta' = theta + step * grad in float32, as the NumPy side computes it
    for (int64_t c = 0; c < per_theta; ++c) {
      float t = th[c] + step * grad[c];
      if (has_cap) t = std::min(t, cap);
      updated[c] = t;
    }
    task.theta = updated.data();
    if (blocks > 1) ctx.ParallelFor(Clip, static_cast<size_t>(blocks), 0, &task);
    else if (blocks == 1) Clip(&task, 0);
  }
};

}  // namespace

const OrtCustomOp* ReLUXProbeOp() { return OpInstance<ProbeKernel>(); }

}  // namespace onnx2snn

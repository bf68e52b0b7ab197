// Integrate-and-fire neuron for onnxruntime's CPU provider (domain ai.onnx2snn, version 1).
//
// IFNeuron(x, theta[, v_in[, v0]]) -> (spikes[, v_out])
//   x      float32 [K*N, ...]: K time steps of N samples, time-major (step t = rows t*N..t*N+N-1).
//   theta  float32 [C] or [1]: threshold per channel of axis `axis`.
//   v_in   float32 [N, ...] (optional): membrane potential carried in from earlier steps.
//   v0     float32 [prod(...)] or [1] (optional): the initial membrane potential of each neuron of one
//          sample (or of all), in the input's units, the same for every sample. Without v_in and v0
//          the potential starts at v_init * theta (README, "Neuron"); v_in takes precedence over v0.
//   spikes float32 like x: theta where the neuron fired, 0 elsewhere (weighted spikes).
//   v_out  float32 [N, ...] (optional): membrane potential after the K steps.
// Attributes: timesteps K (int, >= 1), axis (int, default 1), v_init (float, default 0.5).
//
// Per step: v += x_t; s_t = (v > theta) ? theta : 0; v -= s_t. The arithmetic is plain float32 in
// this order, compiled without FMA contraction, so results equal the NumPy reference bit for bit.

#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "ops.h"

namespace onnx2snn {
namespace {

struct NeuronTask {
  const float* x;
  const float* theta;
  const float* v_in;  // may be null
  const float* v0;    // may be null: initial potential per neuron of one sample ([per_sample] or [1])
  float* spikes;
  float* v_out;       // may be null
  int64_t steps;      // K
  int64_t step_size;  // elements per step (N * prod(rest))
  int64_t inner;      // product of dims after the channel axis
  int64_t channels;   // length of theta (1 = shared threshold)
  float v_init;
  int64_t block;      // elements per parallel work item
  int64_t per_sample; // neurons per sample (step_size / N)
  int64_t v0_size;    // 1 or per_sample
};

void RunBlock(void* data, size_t index) {
  const NeuronTask& t = *static_cast<const NeuronTask*>(data);
  const int64_t begin = static_cast<int64_t>(index) * t.block;
  const int64_t end = std::min(begin + t.block, t.step_size);
  const int64_t n = end - begin;
  // The state lives in the v_out buffer when there is one (the looped forms), else locally.
  std::vector<float> local(t.v_out ? 0 : static_cast<size_t>(n));
  std::vector<float> th(static_cast<size_t>(n));
  float* __restrict vp = t.v_out ? t.v_out + begin : local.data();
  float* __restrict tp = th.data();
  // channel of element i is (i / inner) % channels: walked incrementally, no division per element
  int64_t c = t.channels == 1 ? 0 : (begin / t.inner) % t.channels;
  int64_t r = t.channels == 1 ? 0 : begin % t.inner;
  for (int64_t j = 0; j < n; ++j) {
    tp[j] = t.theta[c];
    if (t.channels != 1 && ++r == t.inner) {
      r = 0;
      if (++c == t.channels) c = 0;
    }
  }
  if (t.v_in) {
    std::copy(t.v_in + begin, t.v_in + end, vp);
  } else if (t.v0) {
    // neuron of element i is i % per_sample: walked incrementally
    int64_t k = t.v0_size == 1 ? 0 : begin % t.per_sample;
    for (int64_t j = 0; j < n; ++j) {
      vp[j] = t.v0[k];
      if (t.v0_size != 1 && ++k == t.per_sample) k = 0;
    }
  } else {
    for (int64_t j = 0; j < n; ++j) vp[j] = t.v_init * tp[j];
  }
  for (int64_t s = 0; s < t.steps; ++s) {
    const float* xs = t.x + s * t.step_size + begin;     // may alias `out` (in place)
    float* out = t.spikes + s * t.step_size + begin;
    for (int64_t j = 0; j < n; ++j) {  // vectorised: branch-free select
      const float thj = tp[j];
      float vj = vp[j] + xs[j];
      const float spike = vj > thj ? thj : 0.0f;
      vj = vj - spike;
      vp[j] = vj;
      out[j] = spike;
    }
  }
}

struct IFNeuronKernel : GuardedKernel<IFNeuronKernel> {
  static constexpr const char* kName = "IFNeuron";
  static constexpr size_t kInputs = 4, kRequiredInputs = 2, kOutputs = 2, kRequiredOutputs = 1;
  static constexpr int kInplaceInput = 0;   // spikes may overwrite x: each x is read before its spike is written
  int64_t steps = 1;
  int64_t axis = 1;
  float v_init = 0.5f;

  explicit IFNeuronKernel(const OrtKernelInfo* info) {
    Ort::ConstKernelInfo ki(info);
    steps = OptionalAttribute<int64_t>(ki, "timesteps", 0, kName);
    if (steps < 1) throw InvalidInput("IFNeuron: attribute timesteps (int) is required and must be >= 1");
    axis = OptionalAttribute<int64_t>(ki, "axis", 1, kName);
    v_init = OptionalAttribute<float>(ki, "v_init", 0.5f, kName);
  }

  void Compute(OrtKernelContext* context) {
    Ort::KernelContext ctx(context);
    Ort::ConstValue x = ctx.GetInput(0);
    Ort::ConstValue theta = ctx.GetInput(1);
    const float* v_in = nullptr;
    std::vector<int64_t> shape = x.GetTensorTypeAndShapeInfo().GetShape();
    const std::vector<int64_t> tshape = theta.GetTensorTypeAndShapeInfo().GetShape();
    const int64_t rank = static_cast<int64_t>(shape.size());
    if (rank < 1) throw InvalidInput("IFNeuron: input must have rank >= 1 (time-major batch axis first)");
    const int64_t total = ElementCount(shape, "IFNeuron: input");
    if (shape[0] % steps != 0) {
      throw InvalidInput("IFNeuron: first dimension of input " + ShapeString(shape) +
                         " is not a multiple of timesteps=" + std::to_string(steps));
    }
    const int64_t ax = axis < 0 ? axis + rank : axis;
    if (tshape.size() > 1) throw InvalidInput("IFNeuron: theta must be a vector, got " + ShapeString(tshape));
    const int64_t channels = ElementCount(tshape, "IFNeuron: theta");
    if (channels == 0) throw InvalidInput("IFNeuron: theta is empty");
    if (channels != 1) {
      if (ax < 1 || ax >= rank) {
        throw InvalidInput("IFNeuron: axis " + std::to_string(axis) + " is out of range for input " +
                           ShapeString(shape));
      }
      if (shape[ax] != channels) {
        throw InvalidInput("IFNeuron: theta has " + std::to_string(channels) + " values but input " +
                           ShapeString(shape) + " has " + std::to_string(shape[ax]) +
                           " channels on axis " + std::to_string(ax));
      }
    }
    const int64_t step_size = total / steps;
    int64_t inner = 1;
    if (channels != 1)
      for (int64_t d = ax + 1; d < rank; ++d) inner *= shape[d];

    std::vector<int64_t> state_shape = shape;
    state_shape[0] = shape[0] / steps;
    if (ctx.GetInputCount() > 2) {
      Ort::ConstValue v = ctx.GetInput(2);
      if (static_cast<const OrtValue*>(v) != nullptr) {
        const std::vector<int64_t> vshape = v.GetTensorTypeAndShapeInfo().GetShape();
        if (vshape != state_shape) {
          throw InvalidInput("IFNeuron: state input has shape " + ShapeString(vshape) + ", expected " +
                             ShapeString(state_shape));
        }
        v_in = v.GetTensorData<float>();
      }
    }
    int64_t per_sample = 1;
    for (int64_t d = 1; d < rank; ++d) per_sample *= shape[d];
    const float* v0 = nullptr;
    int64_t v0_size = 0;
    if (ctx.GetInputCount() > 3) {
      Ort::ConstValue v = ctx.GetInput(3);
      if (static_cast<const OrtValue*>(v) != nullptr) {
        v0_size = ElementCount(v.GetTensorTypeAndShapeInfo().GetShape(), "IFNeuron: v0");
        if (v0_size != 1 && v0_size != per_sample) {
          throw InvalidInput("IFNeuron: v0 has " + std::to_string(v0_size) + " values; expected 1 or " +
                             std::to_string(per_sample) + " (one per neuron of a sample of " + ShapeString(shape) + ")");
        }
        v0 = v.GetTensorData<float>();
      }
    }
    Ort::UnownedValue out = ctx.GetOutput(0, shape);
    float* v_out = nullptr;
    if (ctx.GetOutputCount() > 1) {
      Ort::UnownedValue vo = ctx.GetOutput(1, state_shape);
      v_out = vo.GetTensorMutableData<float>();
    }
    if (total == 0) return;

    NeuronTask task{x.GetTensorData<float>(), theta.GetTensorData<float>(), v_in, v0,
                    out.GetTensorMutableData<float>(), v_out, steps, step_size, inner, channels,
                    v_init, 0, per_sample, v0_size};
    // Work items of ~16k neurons: large enough to amortise scheduling, small enough to balance.
    task.block = std::max<int64_t>(1, std::min<int64_t>(step_size, 16384));
    const size_t items = static_cast<size_t>((step_size + task.block - 1) / task.block);
    if (items == 1) {
      RunBlock(&task, 0);
    } else {
      ctx.ParallelFor(RunBlock, items, 0, &task);
    }
  }
};

}  // namespace

const OrtCustomOp* IFNeuronOp() { return OpInstance<IFNeuronKernel>(); }

}  // namespace onnx2snn

// Integrate-and-fire neuron for onnxruntime's CPU provider (domain ai.onnx2snn, version 1).
//
// IFNeuron(x, theta[, v_in[, v0[, addend[, bias[, n_in]]]]]) -> (spikes[, v_out[, n_out]])
//   x      float32 [K*N, ...]: K time steps of N samples, time-major (step t = rows t*N..t*N+N-1);
//          with attribute repeat_input = 1, [N, ...]: the same input at each of the K steps.
//   theta  float32 [C] or [1]: threshold per channel of axis `axis`.
//   v_in   float32 [N, ...] (optional): membrane potential carried in from earlier steps.
//   v0     float32 [prod(...)] or [1] (optional): the initial membrane potential of each neuron of one
//          sample (or of all), in the input's units, the same for every sample. Without v_in and v0
//          the potential starts at v_init * theta (docs/method/how-it-works.md); v_in takes precedence over v0.
//   addend float32 [K*N, ...] (optional): added to x (a residual sum fused into the neuron).
//   bias   float32 [C] or [1] (optional): a constant input current per channel, added after addend.
//   spikes float32 [K*N, ...]: theta where the neuron fired, 0 elsewhere (weighted spikes).
//   v_out  float32 [N, ...] (optional): membrane potential after the K steps.
//   n_in   float32 [N, ...] (optional, signed only): net spike count carried in (zero without it).
//   n_out  float32 [N, ...] (optional, signed only): net spike count after the K steps.
// Attributes: timesteps K (int, >= 1), axis (int, default 1), v_init (float, default 0.5),
//   max_spikes M (int, default 1: binary spikes; M > 1: burst spikes, up to M per step),
//   signed (int, default 0; 1: negative spikes, see below),
//   channel_block b (int, default 0) and channels C (int): with b > 0 the tensors are in
//   onnxruntime's blocked channel layout (NCHWc: [K*N, Cpad/b, H, W, b] in memory for the logical
//   shape [K*N, Cpad, H, W], Cpad = C rounded up to b), axis must be 1, and the Cpad - C padding
//   channels never fire. Set by onnx2snn.runtime.layout (a session-time pass) on onnxruntime's
//   optimized graph, never in files.
//
// addend, bias and repeat_input are set by onnx2snn.runtime.fusion when a session is created (the
// Add nodes and the time tiling in front of a neuron, fused); files keep the Adds.
//
// Per step: v += (x_t [+ addend_t] [+ bias]); s_t = (v > theta) ? theta : 0; v -= s_t. With max_spikes M > 1 the
// firing repeats up to M times within the step: s_t = 0; M times { f = (v > theta) ? theta : 0; v -= f; s_t += f }
// (a burst of n spikes is n * theta, summed in that order). With signed = 1 each firing round is
// f = (v > theta) ? theta : ((v < -theta && n > 0) ? -theta : 0), n += (v > theta) ? 1 : ((v < -theta && n > 0) ? -1 : 0)
// with n the neuron's net spike count (a float32 integer), so the net rate never goes below zero.
// The arithmetic is plain float32 in this order,
// compiled without FMA contraction, so results equal the NumPy reference bit for bit.

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
  int64_t cblock;     // channel block of the blocked layout (0: plain layout)
  int64_t real_channels;  // channels that are not padding (blocked layout)
  const float* addend;    // may be null: [K * step_size]
  const float* bias;      // may be null: [bias_size]
  int64_t bias_size;      // 1 or channels
  bool repeat;            // x holds one step, read at every step
  int64_t max_spikes;     // spikes per step at most (1: binary)
  bool sign;              // negative spikes while the net count is positive
  const float* n_in;      // may be null: net spike count carried in (signed)
  float* n_out;           // may be null: net spike count out (signed)
};

// values[channel of element] for the elements begin..begin+n-1 of a step (plain or blocked channel
// layout; `count` 1: one value for all; padding channels get `pad`).
void ChannelValues(const NeuronTask& t, int64_t begin, int64_t n, const float* values, int64_t count, float pad,
                   float* tp) {
  if (t.cblock > 0) {
    // element o of a sample sits at [o / (inner*b)][.][o % b]: channel (o / (inner*b))*b + o % b;
    // lane, position in the plane and channel group are walked incrementally
    const int64_t b = t.cblock, plane = t.inner * b, groups = t.per_sample / plane;
    const int64_t o = begin % t.per_sample;
    int64_t lane = o % b, pos = (o % plane) / b, group = o / plane;
    for (int64_t j = 0; j < n; ++j) {
      const int64_t c = group * b + lane;
      tp[j] = c >= t.real_channels ? pad : values[count == 1 ? 0 : c];
      if (++lane == b) {
        lane = 0;
        if (++pos == t.inner) {
          pos = 0;
          if (++group == groups) group = 0;
        }
      }
    }
    return;
  }
  // channel of element i is (i / inner) % count: walked incrementally, no division per element
  int64_t c = count == 1 ? 0 : (begin / t.inner) % count;
  int64_t r = count == 1 ? 0 : begin % t.inner;
  for (int64_t j = 0; j < n; ++j) {
    tp[j] = values[c];
    if (count != 1 && ++r == t.inner) {
      r = 0;
      if (++c == count) c = 0;
    }
  }
}

// One firing round of a signed neuron: the spike (theta, -theta or 0); v and the net count nj updated.
inline float SignedRound(float& vj, float& nj, float thj) {
  const bool up = vj > thj;
  const bool down = vj < -thj && nj > 0.0f;
  const float f = up ? thj : (down ? -thj : 0.0f);
  nj = nj + (up ? 1.0f : (down ? -1.0f : 0.0f));
  vj = vj - f;
  return f;
}

// The K steps of elements begin..begin+n-1; kAdd / kBias: addend / bias inputs present; kBurst: up to
// t.max_spikes spikes per step; kSigned: negative spikes too, with the net counts in np_.
template <bool kAdd, bool kBias, bool kBurst, bool kSigned>
inline void Steps(const NeuronTask& t, int64_t begin, int64_t n, float* __restrict vp, const float* __restrict tp,
                  const float* __restrict bp, float* __restrict np_) {
  for (int64_t s = 0; s < t.steps; ++s) {
    const float* xs = t.x + (t.repeat ? 0 : s * t.step_size) + begin;   // may alias `out` (in place)
    const float* as = kAdd ? t.addend + s * t.step_size + begin : nullptr;
    float* out = t.spikes + s * t.step_size + begin;
    for (int64_t j = 0; j < n; ++j) {  // vectorised: branch-free select
      float current = xs[j];
      if (kAdd) current = current + as[j];
      if (kBias) current = current + bp[j];
      const float thj = tp[j];
      float vj = vp[j] + current;
      float spike;
      if (kSigned) {
        float nj = np_[j];
        spike = SignedRound(vj, nj, thj);
        if (kBurst)
          for (int64_t m = 1; m < t.max_spikes; ++m) spike = spike + SignedRound(vj, nj, thj);
        np_[j] = nj;
      } else {
        spike = vj > thj ? thj : 0.0f;
        vj = vj - spike;
        if (kBurst) {
          for (int64_t m = 1; m < t.max_spikes; ++m) {
            const float more = vj > thj ? thj : 0.0f;
            vj = vj - more;
            spike = spike + more;
          }
        }
      }
      vp[j] = vj;
      out[j] = spike;
    }
  }
}

template <bool kAdd, bool kBias>
inline void StepsOf(const NeuronTask& t, int64_t begin, int64_t n, float* vp, const float* tp, const float* bp,
                    float* np_) {
  if (t.sign) {
    if (t.max_spikes > 1) Steps<kAdd, kBias, true, true>(t, begin, n, vp, tp, bp, np_);
    else Steps<kAdd, kBias, false, true>(t, begin, n, vp, tp, bp, np_);
  } else if (t.max_spikes > 1) {
    Steps<kAdd, kBias, true, false>(t, begin, n, vp, tp, bp, nullptr);
  } else {
    Steps<kAdd, kBias, false, false>(t, begin, n, vp, tp, bp, nullptr);
  }
}

ONNX2SNN_VECTOR_CLONES void RunBlock(void* data, size_t index) {
  const NeuronTask& t = *static_cast<const NeuronTask*>(data);
  const int64_t begin = static_cast<int64_t>(index) * t.block;
  const int64_t end = std::min(begin + t.block, t.step_size);
  const int64_t n = end - begin;
  // The state lives in the v_out buffer when there is one (the looped forms), else locally.
  std::vector<float> local(t.v_out ? 0 : static_cast<size_t>(n));
  std::vector<float> counts(t.sign && !t.n_out ? static_cast<size_t>(n) : 0);   // net counts (signed)
  float* np_ = t.sign ? (t.n_out ? t.n_out + begin : counts.data()) : nullptr;
  if (t.sign) {
    if (t.n_in) std::copy(t.n_in + begin, t.n_in + end, np_);
    else std::fill(np_, np_ + n, 0.0f);
  }
  std::vector<float> th(static_cast<size_t>(n)), bi(t.bias ? static_cast<size_t>(n) : 0);
  float* __restrict vp = t.v_out ? t.v_out + begin : local.data();
  float* __restrict tp = th.data();
  ChannelValues(t, begin, n, t.theta, t.channels, std::numeric_limits<float>::max(), tp);
  if (t.bias) ChannelValues(t, begin, n, t.bias, t.bias_size, 0.0f, bi.data());
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
  if (t.addend && t.bias) StepsOf<true, true>(t, begin, n, vp, tp, bi.data(), np_);
  else if (t.addend) StepsOf<true, false>(t, begin, n, vp, tp, nullptr, np_);
  else if (t.bias) StepsOf<false, true>(t, begin, n, vp, tp, bi.data(), np_);
  else StepsOf<false, false>(t, begin, n, vp, tp, nullptr, np_);
}

struct IFNeuronKernel : GuardedKernel<IFNeuronKernel> {
  static constexpr const char* kName = "IFNeuron";
  static constexpr size_t kInputs = 7, kRequiredInputs = 2, kOutputs = 3, kRequiredOutputs = 1;
  static constexpr int kInplaceInput = 0;   // spikes may overwrite x: each x is read before its spike is written
  int64_t steps = 1;
  int64_t axis = 1;
  float v_init = 0.5f;
  int64_t cblock = 0;       // blocked channel layout (see the header comment)
  int64_t real_channels = -1;
  bool repeat = false;
  int64_t max_spikes = 1;
  bool sign = false;

  explicit IFNeuronKernel(const OrtKernelInfo* info) {
    Ort::ConstKernelInfo ki(info);
    steps = OptionalAttribute<int64_t>(ki, "timesteps", 0, kName);
    if (steps < 1) throw InvalidInput("IFNeuron: attribute timesteps (int) is required and must be >= 1");
    axis = OptionalAttribute<int64_t>(ki, "axis", 1, kName);
    v_init = OptionalAttribute<float>(ki, "v_init", 0.5f, kName);
    cblock = OptionalAttribute<int64_t>(ki, "channel_block", 0, kName);
    real_channels = OptionalAttribute<int64_t>(ki, "channels", -1, kName);
    if (cblock < 0) throw InvalidInput("IFNeuron: attribute channel_block must be >= 0");
    const int64_t rep = OptionalAttribute<int64_t>(ki, "repeat_input", 0, kName);
    if (rep != 0 && rep != 1) throw InvalidInput("IFNeuron: attribute repeat_input must be 0 or 1");
    repeat = rep == 1;
    max_spikes = OptionalAttribute<int64_t>(ki, "max_spikes", 1, kName);
    if (max_spikes < 1 || max_spikes > 1024)
      throw InvalidInput("IFNeuron: attribute max_spikes must be in [1, 1024], got " + std::to_string(max_spikes));
    const int64_t sg = OptionalAttribute<int64_t>(ki, "signed", 0, kName);
    if (sg != 0 && sg != 1) throw InvalidInput("IFNeuron: attribute signed must be 0 or 1");
    sign = sg == 1;
  }

  void Compute(OrtKernelContext* context) {
    Ort::KernelContext ctx(context);
    Ort::ConstValue x = ctx.GetInput(0);
    Ort::ConstValue theta = ctx.GetInput(1);
    const float* v_in = nullptr;
    std::vector<int64_t> shape = x.GetTensorTypeAndShapeInfo().GetShape();   // of the spikes
    const std::vector<int64_t> tshape = theta.GetTensorTypeAndShapeInfo().GetShape();
    const int64_t rank = static_cast<int64_t>(shape.size());
    if (rank < 1) throw InvalidInput("IFNeuron: input must have rank >= 1 (time-major batch axis first)");
    if (repeat) shape[0] *= steps;   // one step of input, K steps of spikes
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
      if (shape[ax] != channels && cblock == 0) {
        throw InvalidInput("IFNeuron: theta has " + std::to_string(channels) + " values but input " +
                           ShapeString(shape) + " has " + std::to_string(shape[ax]) +
                           " channels on axis " + std::to_string(ax));
      }
    }
    // channels of the channel axis (wherever it is: 1 for NCHW, last for NHWC or features)
    const int64_t real = cblock > 0 && real_channels >= 0 ? real_channels : (ax >= 1 && ax < rank ? shape[ax] : 1);
    if (cblock > 0) {
      if (rank < 3 || ax != 1 || shape[1] % cblock != 0) {
        throw InvalidInput("IFNeuron: channel_block " + std::to_string(cblock) + " needs axis 1 and a channel count "
                           "that is a multiple of it, got input " + ShapeString(shape));
      }
      if (real > shape[1] || real <= shape[1] - cblock || (channels != 1 && channels != real)) {
        throw InvalidInput("IFNeuron: blocked input " + ShapeString(shape) + " cannot hold " + std::to_string(real) +
                           " channels with theta of " + std::to_string(channels) + " values");
      }
    }
    const int64_t step_size = total / steps;
    int64_t inner = 1;
    if (ax >= 0)
      for (int64_t d = ax + 1; d < rank; ++d) inner *= shape[d];

    std::vector<int64_t> state_shape = shape;
    state_shape[0] = shape[0] / steps;
    Ort::ConstValue given{nullptr};
    if (GivenInput(ctx, 2, given)) {
      const std::vector<int64_t> vshape = given.GetTensorTypeAndShapeInfo().GetShape();
      if (vshape != state_shape) {
        throw InvalidInput("IFNeuron: state input has shape " + ShapeString(vshape) + ", expected " +
                           ShapeString(state_shape));
      }
      v_in = given.GetTensorData<float>();
    }
    int64_t per_sample = 1;
    for (int64_t d = 1; d < rank; ++d) per_sample *= shape[d];
    const float* v0 = nullptr;
    int64_t v0_size = 0;
    if (GivenInput(ctx, 3, given)) {
      v0_size = ElementCount(given.GetTensorTypeAndShapeInfo().GetShape(), "IFNeuron: v0");
      if (v0_size != 1 && v0_size != per_sample) {
        throw InvalidInput("IFNeuron: v0 has " + std::to_string(v0_size) + " values; expected 1 or " +
                           std::to_string(per_sample) + " (one per neuron of a sample of " + ShapeString(shape) + ")");
      }
      v0 = given.GetTensorData<float>();
    }
    const float* addend = nullptr;
    if (GivenInput(ctx, 4, given)) {
      const std::vector<int64_t> ashape = given.GetTensorTypeAndShapeInfo().GetShape();
      if (ashape != shape)
        throw InvalidInput("IFNeuron: addend has shape " + ShapeString(ashape) + ", expected " + ShapeString(shape));
      addend = given.GetTensorData<float>();
    }
    const float* bias = nullptr;
    int64_t bias_size = 0;
    if (GivenInput(ctx, 5, given)) {
      bias_size = ElementCount(given.GetTensorTypeAndShapeInfo().GetShape(), "IFNeuron: bias");
      if (bias_size != 1 && (rank < 2 || bias_size != real))
        throw InvalidInput("IFNeuron: bias has " + std::to_string(bias_size) + " values; expected 1 or one per channel");
      bias = given.GetTensorData<float>();
    }
    if (bias && bias_size != 1 && cblock == 0 && (ax < 1 || ax >= rank || shape[ax] != bias_size))
      throw InvalidInput("IFNeuron: bias has " + std::to_string(bias_size) + " values but input " + ShapeString(shape) +
                         " has other channel counts on axis " + std::to_string(axis));
    const float* n_in = nullptr;
    if (GivenInput(ctx, 6, given)) {
      if (!sign) throw InvalidInput("IFNeuron: input n_in (a net spike count) needs attribute signed = 1");
      const std::vector<int64_t> nshape = given.GetTensorTypeAndShapeInfo().GetShape();
      if (nshape != state_shape)
        throw InvalidInput("IFNeuron: n_in has shape " + ShapeString(nshape) + ", expected " + ShapeString(state_shape));
      n_in = given.GetTensorData<float>();
    }
    if (ctx.GetOutputCount() > 2 && !sign)
      throw InvalidInput("IFNeuron: output n_out (a net spike count) needs attribute signed = 1");
    Ort::UnownedValue out = ctx.GetOutput(0, shape);
    float* v_out = nullptr;
    if (ctx.GetOutputCount() > 1) {     // an omitted optional output comes as a null value
      Ort::UnownedValue vo = ctx.GetOutput(1, state_shape);
      if (static_cast<OrtValue*>(vo) != nullptr) v_out = vo.GetTensorMutableData<float>();
    }
    float* n_out = nullptr;
    if (ctx.GetOutputCount() > 2) {
      Ort::UnownedValue no = ctx.GetOutput(2, state_shape);
      if (static_cast<OrtValue*>(no) != nullptr) n_out = no.GetTensorMutableData<float>();
    }
    if (total == 0) return;

    NeuronTask task{x.GetTensorData<float>(), theta.GetTensorData<float>(), v_in, v0,
                    out.GetTensorMutableData<float>(), v_out, steps, step_size, inner, channels,
                    v_init, 0, per_sample, v0_size, cblock, real, addend, bias, bias_size, repeat, max_spikes,
                    sign, n_in, n_out};
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

OrtCustomOp* IFNeuronOp() { return OpInstance<IFNeuronKernel>(); }

}  // namespace onnx2snn

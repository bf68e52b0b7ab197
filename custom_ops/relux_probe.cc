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
// Attributes: axis (int, default 1); channel_block b (int, default 0) and channels C (int): with
//   b > 0, x and y are in onnxruntime's blocked channel layout (memory [N, Cpad/b, H, W, b] for the
//   logical shape [N, Cpad, H, W]), axis must be 1 and the padding channels (C..Cpad-1) are left out
//   of every statistic. Set by onnx2snn.runtime.layout (a session-time pass) on onnxruntime's
//   optimized graph, never in files.
// The fused form of the probe's standard-op graph, so calibration costs little more than the ANN's
// own inference: one read for the statistics, one read and one write for y; in the blocked layout
// on AVX-512 one pass that writes y = clip(x, 0, theta) with the statistics and records the entries
// above theta, then re-clips only those at theta' (theta' >= theta; else, or when more than a
// quarter of a block is above theta, that block is clipped again whole). Same results either way.

#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

#include <algorithm>
#include <atomic>
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
  int64_t cblock;          // blocked layout: channel block (0: plain); `channels` is then Cpad
  int64_t real_channels;   // blocked layout: channels that are not padding
  // one-pass mode (blocked, 16 lanes, AVX-512): y = clip(x, 0, theta) written with the statistics,
  // and the entries above theta recorded per block to be re-clipped at theta' (>= theta) after
  std::vector<int32_t>* above = nullptr;   // [blocks]: offsets within the block
  uint8_t* overflow = nullptr;             // [blocks]: too many entries above theta to record
};

constexpr int64_t kMaxBlock = 64;   // widest channel block accepted (MLAS uses 8 or 16)

int64_t BlockBase(const ProbeTask& t, size_t block) {
  return static_cast<int64_t>(block) * t.rows_per_block * t.channels * t.inner;
}
[[maybe_unused]] int64_t BlockEnd(const ProbeTask& t, size_t block) {  // used by the x86-64 AVX-512 kernel only
  return std::min<int64_t>(BlockBase(t, block + 1), t.outer * t.channels * t.inner);
}

// Blocked layout: calls f(first channel, offset) for each contiguous row of inner*b elements
// (one channel block of one sample: element i of the row belongs to channel first + i % b).
template <typename F>
void ForEachBlockRow(const ProbeTask& t, size_t block, F f) {
  const int64_t begin = static_cast<int64_t>(block) * t.rows_per_block;
  const int64_t end = std::min(begin + t.rows_per_block, t.outer);
  const int64_t groups = t.channels / t.cblock;
  for (int64_t o = begin; o < end; ++o)
    for (int64_t g = 0; g < groups; ++g) f(g * t.cblock, (o * groups + g) * t.inner * t.cblock);
}

float ThetaOf(const ProbeTask& t, int64_t c) { return t.theta[t.per_theta == 1 ? 0 : c]; }

void StatisticsBlocked(void* data, size_t block) {
  const ProbeTask& t = *static_cast<const ProbeTask*>(data);
  double* acc = t.partial + block * t.channels * 2;
  const int64_t b = t.cblock;
  float th[kMaxBlock], ex[kMaxBlock], act[kMaxBlock];   // per lane, kept in registers
  ForEachBlockRow(t, block, [&](int64_t first, int64_t offset) {
    const int64_t lanes = std::min(b, t.real_channels - first);  // padding lanes are skipped
    for (int64_t k = 0; k < b; ++k) {
      th[k] = k < lanes ? ThetaOf(t, first + k) : 0.0f;
      ex[k] = 0.0f;
      act[k] = 0.0f;
    }
    const float* xs = t.x + offset;
    for (int64_t i = 0; i < t.inner; ++i, xs += b)
      for (int64_t k = 0; k < b; ++k) {
        const float v = xs[k];
        const float d = v - th[k];
        ex[k] += d > 0.0f ? d : 0.0f;
        act[k] += v > 0.0f ? v : 0.0f;
      }
    for (int64_t k = 0; k < lanes; ++k) {
      acc[2 * (first + k)] += ex[k];
      acc[2 * (first + k) + 1] += act[k];
    }
  });
}

void ClipBlocked(void* data, size_t block) {
  const ProbeTask& t = *static_cast<const ProbeTask*>(data);
  const int64_t b = t.cblock;
  float th[kMaxBlock];
  ForEachBlockRow(t, block, [&](int64_t first, int64_t offset) {
    for (int64_t k = 0; k < b; ++k) th[k] = first + k < t.real_channels ? ThetaOf(t, first + k) : 0.0f;
    const float* xs = t.x + offset;
    float* ys = t.y + offset;
    for (int64_t i = 0; i < t.inner; ++i, xs += b, ys += b)
      for (int64_t k = 0; k < b; ++k) {
        const float v = xs[k] > 0.0f ? xs[k] : 0.0f;
        ys[k] = v < th[k] ? v : th[k];
      }
  });
}

#if ONNX2SNN_X86
// The statistics of StatisticsBlocked (the same float sums, lane by lane, in the same order) with
// y = min(relu(x), theta) written in the same pass and the offsets of the entries above theta
// recorded (up to a quarter of the block; more sets the block's overflow flag).
ONNX2SNN_TARGET_AVX512 void StatisticsAndClip16(void* data, size_t block) {
  const ProbeTask& t = *static_cast<const ProbeTask*>(data);
  double* acc = t.partial + block * t.channels * 2;
  std::vector<int32_t>& above = t.above[block];
  const int64_t base = BlockBase(t, block), capacity = (BlockEnd(t, block) - base) / 4;
  above.resize(static_cast<size_t>(capacity + 16));
  int64_t n = 0;
  bool overflow = false;
  const __m512 zero = _mm512_setzero_ps();
  const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  // the rows of ForEachBlockRow, written out: a lambda would not be compiled for AVX-512
  const int64_t row_begin = static_cast<int64_t>(block) * t.rows_per_block;
  const int64_t row_end = std::min(row_begin + t.rows_per_block, t.outer), groups = t.channels / 16;
  for (int64_t o = row_begin; o < row_end; ++o)
   for (int64_t g = 0; g < groups; ++g) {
    const int64_t first = g * 16, offset = (o * groups + g) * t.inner * 16;
    const int64_t lanes = std::min<int64_t>(16, t.real_channels - first);  // padding lanes are skipped
    const __mmask16 real = static_cast<__mmask16>((1u << lanes) - 1);
    alignas(64) float th_lanes[16];
    for (int64_t k = 0; k < 16; ++k) th_lanes[k] = k < lanes ? ThetaOf(t, first + k) : 0.0f;
    const __m512 th = _mm512_load_ps(th_lanes);
    __m512 ex = zero, act = zero;
    const float* xs = t.x + offset;
    float* ys = t.y + offset;
    for (int64_t i = 0; i < t.inner; ++i, xs += 16, ys += 16) {
      const __m512 v = _mm512_loadu_ps(xs);
      const __m512 d = _mm512_sub_ps(v, th);
      const __m512 relu = _mm512_max_ps(v, zero);
      ex = _mm512_add_ps(ex, _mm512_max_ps(d, zero));
      act = _mm512_add_ps(act, relu);
      _mm512_storeu_ps(ys, _mm512_min_ps(relu, th));
      const __mmask16 up = _mm512_mask_cmp_ps_mask(real, d, zero, _CMP_GT_OQ);
      if (up && !overflow) {
        if (n + 16 > capacity) {
          overflow = true;
        } else {
          const __m512i at = _mm512_add_epi32(iota, _mm512_set1_epi32(static_cast<int32_t>(offset + i * 16 - base)));
          _mm512_mask_compressstoreu_epi32(above.data() + n, up, at);
          n += ONNX2SNN_POPCOUNT(up);
        }
      }
    }
    alignas(64) float e[16], a[16];
    _mm512_store_ps(e, ex);
    _mm512_store_ps(a, act);
    for (int64_t k = 0; k < lanes; ++k) {
      acc[2 * (first + k)] += e[k];
      acc[2 * (first + k) + 1] += a[k];
    }
   }
  above.resize(static_cast<size_t>(overflow ? 0 : n));
  t.overflow[block] = overflow;
}
#endif

// After StatisticsAndClip16: the recorded entries clipped at theta' (t.theta), or the whole block
// again where the records overflowed.
void ReclipAbove(void* data, size_t block) {
  const ProbeTask& t = *static_cast<const ProbeTask*>(data);
  if (t.overflow[block]) return ClipBlocked(data, block);
  const int64_t base = BlockBase(t, block), plane = t.inner * t.cblock, groups = t.channels / t.cblock;
  for (int32_t r : t.above[block]) {
    const int64_t at = base + r, c = (at / plane) % groups * t.cblock + at % t.cblock;
    const float v = t.x[at] > 0.0f ? t.x[at] : 0.0f;
    const float th = ThetaOf(t, c);
    t.y[at] = v < th ? v : th;
  }
}

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
  static constexpr int kInplaceInput = -1;   // the one-pass mode writes y while x is still to be read
  std::atomic<int> two_pass_calls{0};        // calls left in the two-pass mode after records overflowed
  int64_t axis = 1;
  int64_t cblock = 0;
  int64_t real_channels = -1;

  explicit ProbeKernel(const OrtKernelInfo* info) {
    Ort::ConstKernelInfo ki(info);
    axis = OptionalAttribute<int64_t>(ki, "axis", 1, kName);
    cblock = OptionalAttribute<int64_t>(ki, "channel_block", 0, kName);
    real_channels = OptionalAttribute<int64_t>(ki, "channels", -1, kName);
    if (cblock < 0) throw InvalidInput("ReLUXProbe: attribute channel_block must be >= 0");
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
    const int64_t real = cblock > 0 && real_channels >= 0 ? real_channels : shape[ax];
    if (cblock > kMaxBlock) throw InvalidInput("ReLUXProbe: channel_block above " + std::to_string(kMaxBlock));
    if (cblock > 0 && (rank < 3 || ax != 1 || shape[1] % cblock != 0 || real > shape[1] || real <= shape[1] - cblock)) {
      throw InvalidInput("ReLUXProbe: channel_block " + std::to_string(cblock) + " with " + std::to_string(real) +
                         " channels does not fit input " + ShapeString(shape));
    }
    if (per_theta != 1 && per_theta != real) {
      throw InvalidInput("ReLUXProbe: theta has " + std::to_string(per_theta) + " values but input " +
                         ShapeString(shape) + " has " + std::to_string(shape[ax]) + " channels on axis " +
                         std::to_string(ax));
    }
    if (step_v.GetTensorTypeAndShapeInfo().GetElementCount() != 1)
      throw InvalidInput("ReLUXProbe: step must be a scalar");
    const float step = step_v.GetTensorData<float>()[0];
    bool has_cap = false;
    float cap = 0.0f;
    Ort::ConstValue c{nullptr};
    if (GivenInput(ctx, 3, c)) {
      if (c.GetTensorTypeAndShapeInfo().GetElementCount() != 1)
        throw InvalidInput("ReLUXProbe: cap must hold exactly one value");
      has_cap = true;
      cap = c.GetTensorData<float>()[0];
    }
    int64_t outer = 1, inner = 1;
    for (int64_t d = 0; d < ax; ++d) outer *= shape[d];
    for (int64_t d = ax + 1; d < rank; ++d) inner *= shape[d];
    const int64_t channels = shape[ax];              // Cpad in the blocked layout
    const int64_t total = outer * channels * inner;
    const int64_t counted = outer * real * inner;    // padding channels are not counted

    Ort::UnownedValue y = ctx.GetOutput(0, shape);
    const std::vector<int64_t> gshape{per_theta};
    float* grad = ctx.GetOutput(1, gshape).GetTensorMutableData<float>();
    const std::vector<int64_t> scalar;
    float* excess = ctx.GetOutput(2, scalar).GetTensorMutableData<float>();
    float* activity = ctx.GetOutput(3, scalar).GetTensorMutableData<float>();

    const float* th = theta.GetTensorData<float>();
    const int64_t row = std::max<int64_t>(1, real * inner);  // the same blocks in either layout
    const int64_t rows_per_block = std::max<int64_t>(1, 32768 / row);
    const int64_t blocks = total == 0 ? 0 : (outer + rows_per_block - 1) / rows_per_block;
    std::vector<double> partial(static_cast<size_t>(std::max<int64_t>(blocks, 1) * channels * 2), 0.0);
    ProbeTask task{x.GetTensorData<float>(), y.GetTensorMutableData<float>(), th, outer, channels, inner,
                   per_theta, rows_per_block, partial.data(), cblock, real};
    auto statistics = cblock > 0 ? StatisticsBlocked : Statistics;
    auto clip = cblock > 0 ? ClipBlocked : Clip;
    // One pass over x where it pays: blocked 16-lane layout on AVX-512, unless the last try found most
    // entries above theta (the first calibration batches, theta still near 0).
    std::vector<std::vector<int32_t>> above;
    std::vector<uint8_t> overflow;
#if ONNX2SNN_X86
    if (cblock == 16 && HasAvx512() && blocks > 0 && two_pass_calls.load() == 0) {
      above.resize(static_cast<size_t>(blocks));
      overflow.assign(static_cast<size_t>(blocks), 0);
      task.above = above.data();
      task.overflow = overflow.data();
      statistics = StatisticsAndClip16;
    } else if (two_pass_calls.load() > 0) {
      --two_pass_calls;
    }
#endif
    if (blocks > 1) ctx.ParallelFor(statistics, static_cast<size_t>(blocks), 0, &task);
    else if (blocks == 1) statistics(&task, 0);

    std::vector<double> ex_c(static_cast<size_t>(channels), 0.0), act_c(static_cast<size_t>(channels), 0.0);
    for (int64_t b = 0; b < blocks; ++b)
      for (int64_t c = 0; c < channels; ++c) {
        ex_c[c] += partial[(b * channels + c) * 2];
        act_c[c] += partial[(b * channels + c) * 2 + 1];
      }
    double ex_all = 0.0, act_all = 0.0;
    for (int64_t c = 0; c < real; ++c) {
      ex_all += ex_c[c];
      act_all += act_c[c];
    }
    const double count = counted > 0 ? static_cast<double>(counted) : 1.0;
    *excess = static_cast<float>(ex_all / count);
    *activity = static_cast<float>(act_all / count);
    std::vector<float> updated(static_cast<size_t>(per_theta));
    if (per_theta == 1) {
      grad[0] = static_cast<float>(ex_all / count);
    } else {
      const double per_channel = total > 0 ? static_cast<double>(outer * inner) : 1.0;
      for (int64_t c = 0; c < real; ++c) grad[c] = static_cast<float>(ex_c[c] / per_channel);
    }
    // theta' = theta + step * grad in float32, as the NumPy side computes it
    for (int64_t c = 0; c < per_theta; ++c) {
      float t = th[c] + step * grad[c];
      if (has_cap) t = std::min(t, cap);
      updated[c] = t;
    }
    task.theta = updated.data();
    if (task.above) {
      bool raised = true;     // y holds clip(x, 0, theta): entries below theta are final if theta' >= theta
      for (int64_t c = 0; c < per_theta; ++c) raised = raised && updated[c] >= th[c];
      const int64_t overflowed = std::count(overflow.begin(), overflow.end(), 1);
      if (2 * overflowed > blocks) two_pass_calls = 4;
      if (raised) clip = ReclipAbove;
    }
    if (blocks > 1) ctx.ParallelFor(clip, static_cast<size_t>(blocks), 0, &task);
    else if (blocks == 1) clip(&task, 0);
  }
};

}  // namespace

OrtCustomOp* ReLUXProbeOp() { return OpInstance<ProbeKernel>(); }

}  // namespace onnx2snn

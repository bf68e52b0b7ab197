// Event-driven 2-D convolution for spike inputs (domain ai.onnx2snn, version 1).
//
// EventConv(X, W[, B]) -> Y: the ONNX Conv of a float32 [N, C, H, W] input X (2-D; attributes
// strides, pads, dilations, group; NOTSET padding) with filter W [F, C / group, kh, kw] and bias
// B [F], computed from X's non-zero entries only: each adds value * W[f, c, ky, kx] to the outputs
// it reaches. An SNN's neurons fire in a small fraction of their steps, so a convolution after them
// does that fraction of a dense one's work. onnx2snn.runtime.events puts it after the neurons
// when a session is created.
//
// Arithmetic: each output is its bias plus value * w terms added in the order (kernel row, kernel
// column, input channel) -- each product rounded, then added (compiled without FMA contraction):
// the same bits on every CPU and in every graph form, equal to a dense convolution's up to float
// rounding (exactly equal where the sums are exact, e.g. integer inputs and weights).

#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "ops.h"

// The per-image routine (event_conv_image.inc) is compiled twice on x86-64 (see ONNX2SNN_X86 in
// ops.h): for the baseline instruction set and for AVX-512, picked at run time. GCC compiles the
// AVX-512 copy in a `#pragma GCC target` region, Clang (which ignores that pragma) in a
// `#pragma clang attribute` region giving each of its functions target("avx512f"); MSVC needs
// neither (its intrinsics compile whatever /arch says).

namespace onnx2snn {
namespace {

struct ConvGeometry {
  int64_t channels, height, width;        // input, per image
  int64_t filters, kh, kw;                // output channels, kernel
  int64_t out_h, out_w;
  int64_t stride_h, stride_w, pad_t, pad_l, dil_h, dil_w, groups;
  int64_t per_group_in() const { return channels / groups; }
  int64_t per_group_out() const { return filters / groups; }
};

struct ConvTask {
  ConvGeometry g;
  const float* x;        // NCHW
  const float* packed;   // [kh][kw][C][filters per group]
  const float* bias;     // may be null
  float* y;              // NCHW
  const int32_t* out_col;  // [kw][width]: output column input column x reaches with kernel column kx, or -1
  int64_t images, images_per_item;
};

// The non-zero entries of one input image, row by row, in (channel, column) order.
struct Events {
  std::vector<int32_t> column, channel;
  std::vector<float> value;
  std::vector<int64_t> row_start;  // [height + 1]
  int64_t size = 0;
  void reserve(int64_t entries, int64_t rows) {
    if (static_cast<int64_t>(column.size()) < entries) {
      column.resize(static_cast<size_t>(entries));
      channel.resize(static_cast<size_t>(entries));
      value.resize(static_cast<size_t>(entries));
    }
    row_start.resize(static_cast<size_t>(rows + 1));
  }
  void clear() { size = 0; }
  void push(int32_t x, int32_t c, float v) {
    column[size] = x;
    channel[size] = c;
    value[size] = v;
    ++size;
  }
};

// The first 64-byte aligned element of a buffer allocated with 15 floats to spare: the packed
// filter's vectors of 16 then start on a cache line.
float* Aligned(std::vector<float>& buffer) {
  const auto address = reinterpret_cast<std::uintptr_t>(buffer.data());
  return buffer.data() + ((64 - address % 64) % 64) / sizeof(float);
}

namespace generic {
#define ONNX2SNN_AVX512 0
#include "event_conv_image.inc"
#undef ONNX2SNN_AVX512
}  // namespace generic

#if ONNX2SNN_X86
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f"))), apply_to = function)
#elif defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx512f")
#endif
namespace avx512 {
#define ONNX2SNN_AVX512 1
#include "event_conv_image.inc"
#undef ONNX2SNN_AVX512
}  // namespace avx512
#if defined(__clang__)
#pragma clang attribute pop
#elif defined(__GNUC__)
#pragma GCC pop_options
#endif
#endif

void RunImage(void* data, size_t index) {
  const ConvTask& t = *static_cast<const ConvTask*>(data);
  Events events;
  events.reserve(t.g.height * t.g.width * t.g.channels, t.g.height);
  std::vector<float> scratch;
  const int64_t first = static_cast<int64_t>(index) * t.images_per_item;
  const int64_t last = std::min(first + t.images_per_item, t.images);
  for (int64_t n = first; n < last; ++n) {
#if ONNX2SNN_X86
    if (HasAvx512()) {
      avx512::ConvImage(t, n, events, scratch);
      continue;
    }
#endif
    generic::ConvImage(t, n, events, scratch);
  }
}

struct EventConvKernel : GuardedKernel<EventConvKernel> {
  static constexpr const char* kName = "EventConv";
  static constexpr size_t kInputs = 3, kRequiredInputs = 2, kOutputs = 1, kRequiredOutputs = 1;
  static constexpr int kInplaceInput = -1;
  std::vector<int64_t> strides, pads, dilations;
  int64_t groups = 1;
  std::vector<float> packed;          // the constant filter, packed once
  std::vector<int64_t> packed_shape;

  explicit EventConvKernel(const OrtKernelInfo* info) {
    Ort::ConstKernelInfo ki(info);
    strides = OptionalInts(ki, "strides", {1, 1});
    pads = OptionalInts(ki, "pads", {0, 0, 0, 0});
    dilations = OptionalInts(ki, "dilations", {1, 1});
    groups = OptionalAttribute<int64_t>(ki, "group", 1, kName);
    if (strides.size() != 2 || pads.size() != 4 || dilations.size() != 2)
      throw InvalidInput("EventConv: 2-D strides, pads (4 values) and dilations are expected");
    for (int64_t s : strides)
      if (s < 1) throw InvalidInput("EventConv: strides must be >= 1");
    for (int64_t d : dilations)
      if (d < 1) throw InvalidInput("EventConv: dilations must be >= 1");
    for (int64_t p : pads)
      if (p < 0) throw InvalidInput("EventConv: pads must be >= 0");
    if (groups < 1) throw InvalidInput("EventConv: group must be >= 1");
    int is_constant = 0;
    Ort::ConstValue w = ki.GetTensorConstantInput(1, &is_constant);
    if (is_constant) {
      packed_shape = w.GetTensorTypeAndShapeInfo().GetShape();
      Pack(w.GetTensorData<float>(), packed_shape, packed);
    }
  }

  void Pack(const float* w, const std::vector<int64_t>& shape, std::vector<float>& out) const {
    if (shape.size() != 4) throw InvalidInput("EventConv: W must have rank 4, got " + ShapeString(shape));
    const int64_t F = shape[0], Cg = shape[1], kh = shape[2], kw = shape[3];
    ElementCount(shape, "EventConv: W");
    if (F % groups != 0) throw InvalidInput("EventConv: W's " + std::to_string(F) + " filters do not split into " +
                                            std::to_string(groups) + " groups");
    const int64_t Fg = F / groups, C = Cg * groups;
    out.assign(static_cast<size_t>(F * Cg * kh * kw) + 15, 0.0f);
    float* packed_at = Aligned(out);
    for (int64_t c = 0; c < C; ++c) {
      const int64_t group = c / Cg, cl = c % Cg;
      for (int64_t ky = 0; ky < kh; ++ky)
        for (int64_t kx = 0; kx < kw; ++kx)
          for (int64_t f = 0; f < Fg; ++f)
            packed_at[((ky * kw + kx) * C + c) * Fg + f] = w[(((group * Fg + f) * Cg + cl) * kh + ky) * kw + kx];
    }
  }

  void Compute(OrtKernelContext* context) {
    Ort::KernelContext ctx(context);
    Ort::ConstValue x = ctx.GetInput(0);
    Ort::ConstValue w = ctx.GetInput(1);
    const std::vector<int64_t> xs = x.GetTensorTypeAndShapeInfo().GetShape();
    const std::vector<int64_t> ws = w.GetTensorTypeAndShapeInfo().GetShape();
    if (xs.size() != 4) throw InvalidInput("EventConv: X must be [N, C, H, W], got " + ShapeString(xs));
    ElementCount(xs, "EventConv: X");
    std::vector<float> local;
    std::vector<float>* pk = &packed;
    if (packed.empty() || ws != packed_shape) {
      Pack(w.GetTensorData<float>(), ws, local);
      pk = &local;
    }
    ConvGeometry g{xs[1], xs[2], xs[3], ws[0], ws[2], ws[3], 0, 0,
                   strides[0], strides[1], pads[0], pads[1], dilations[0], dilations[1], groups};
    if (ws[1] * groups != xs[1]) {
      throw InvalidInput("EventConv: X " + ShapeString(xs) + " has " + std::to_string(xs[1]) + " channels; W " +
                         ShapeString(ws) + " with group " + std::to_string(groups) + " expects " +
                         std::to_string(ws[1] * groups));
    }
    const int64_t span_h = g.dil_h * (g.kh - 1) + 1, span_w = g.dil_w * (g.kw - 1) + 1;
    const int64_t padded_h = g.height + pads[0] + pads[2], padded_w = g.width + pads[1] + pads[3];
    if (padded_h < span_h || padded_w < span_w) {
      throw InvalidInput("EventConv: kernel " + ShapeString(ws) + " is larger than the padded input " + ShapeString(xs));
    }
    g.out_h = (padded_h - span_h) / g.stride_h + 1;
    g.out_w = (padded_w - span_w) / g.stride_w + 1;
    const float* bias = nullptr;
    Ort::ConstValue b{nullptr};
    if (GivenInput(ctx, 2, b)) {
      if (static_cast<int64_t>(b.GetTensorTypeAndShapeInfo().GetElementCount()) != g.filters)
        throw InvalidInput("EventConv: B must hold one value per filter (" + std::to_string(g.filters) + ")");
      bias = b.GetTensorData<float>();
    }
    const std::vector<int64_t> ys{xs[0], g.filters, g.out_h, g.out_w};
    float* y = ctx.GetOutput(0, ys).GetTensorMutableData<float>();
    if (xs[0] == 0 || g.filters == 0 || g.out_h * g.out_w == 0) return;
    std::vector<int32_t> out_col(static_cast<size_t>(g.kw * g.width), -1);
    for (int64_t kx = 0; kx < g.kw; ++kx)
      for (int64_t xx = 0; xx < g.width; ++xx) {
        const int64_t num = xx + g.pad_l - kx * g.dil_w;
        if (num >= 0 && num % g.stride_w == 0 && num / g.stride_w < g.out_w)
          out_col[kx * g.width + xx] = static_cast<int32_t>(num / g.stride_w);
      }
    // work items of a few images: the scratch buffers are allocated once per item
    const int64_t per_item = std::max<int64_t>(1, std::min<int64_t>(8, xs[0] / 8));
    ConvTask task{g, x.GetTensorData<float>(), Aligned(*pk), bias, y, out_col.data(), xs[0], per_item};
    const size_t items = static_cast<size_t>((xs[0] + per_item - 1) / per_item);
    if (items == 1) RunImage(&task, 0);
    else ctx.ParallelFor(RunImage, items, 0, &task);
  }
};

}  // namespace

OrtCustomOp* EventConvOp() { return OpInstance<EventConvKernel>(); }

}  // namespace onnx2snn

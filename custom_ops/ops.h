// Shared pieces of the onnx2snn operator library (domain ai.onnx2snn).
#pragma once

#include <onnxruntime_cxx_api.h>

#include <cstdint>
#include <cstdlib>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

namespace onnx2snn {

inline const char* kDomain = "ai.onnx2snn";

// Element-wise kernels are compiled for AVX-512, AVX2 and the baseline on x86-64 Linux with GCC, the
// loader picking the widest the CPU has. They vectorise across independent elements only (no FMA
// contraction, no reassociated sums), so every version computes the same bits.
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__)
#define ONNX2SNN_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define ONNX2SNN_VECTOR_CLONES
#endif

// Kernels written with AVX-512 intrinsics (in functions compiled for it) exist on x86-64 with GCC
// or Clang and run where the CPU has AVX-512F.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define ONNX2SNN_X86 1
#include <immintrin.h>
#else
#define ONNX2SNN_X86 0
#endif

inline bool HasAvx512() {
#if ONNX2SNN_X86
  static const bool has = __builtin_cpu_supports("avx512f");
  return has;
#else
  return false;
#endif
}

// Bad input from the graph or the caller: reported as an onnxruntime INVALID_ARGUMENT status.
struct InvalidInput : std::runtime_error {
  using std::runtime_error::runtime_error;
};

inline std::string ShapeString(const std::vector<int64_t>& shape) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? "," : "") << shape[i];
  os << "]";
  return os.str();
}

// Runs a kernel body and turns exceptions into statuses: errors never cross the C API boundary.
template <typename F>
OrtStatusPtr GuardCompute(F&& body) {
  try {
    body();
    return nullptr;
  } catch (const InvalidInput& e) {
    return Ort::GetApi().CreateStatus(ORT_INVALID_ARGUMENT, e.what());
  } catch (const Ort::Exception& e) {
    return Ort::GetApi().CreateStatus(e.GetOrtErrorCode(), e.what());
  } catch (const std::exception& e) {
    return Ort::GetApi().CreateStatus(ORT_FAIL, e.what());
  }
}

// Optional attribute: `fallback` when the node does not have it; InvalidInput when it has it with
// another type (a v_init given as an int must not be silently replaced by the default).
template <typename T>
T OptionalAttribute(const Ort::ConstKernelInfo& info, const char* name, T fallback, const char* op) {
  try {
    return info.GetAttribute<T>(name);
  } catch (const Ort::Exception&) {
  }
  bool other_type = false;
  try {
    info.GetAttribute<int64_t>(name);
    other_type = true;
  } catch (const Ort::Exception&) {
  }
  try {
    info.GetAttribute<float>(name);
    other_type = true;
  } catch (const Ort::Exception&) {
  }
  try {
    info.GetAttribute<std::string>(name);
    other_type = true;
  } catch (const Ort::Exception&) {
  }
  if (other_type) {
    throw InvalidInput(std::string(op) + ": attribute " + name + " has the wrong type (expected " +
                       (std::is_same<T, float>::value ? "float" : "int") + ")");
  }
  return fallback;
}

// An optional ints attribute (strides, pads, ...): `fallback` when the node does not have it.
inline std::vector<int64_t> OptionalInts(const Ort::ConstKernelInfo& info, const char* name,
                                         std::vector<int64_t> fallback) {
  try {
    return info.GetAttributes<int64_t>(name);
  } catch (const Ort::Exception&) {
    return fallback;
  }
}

// Optional input `index`: true and the value in `out` when the node has it and it is given.
inline bool GivenInput(Ort::KernelContext& ctx, size_t index, Ort::ConstValue& out) {
  if (ctx.GetInputCount() <= index) return false;
  out = ctx.GetInput(index);
  return static_cast<const OrtValue*>(out) != nullptr;
}

// The onnxruntime description of one of the library's float32 operators. `Kernel` provides kName,
// kInputs / kRequiredInputs, kOutputs / kRequiredOutputs, a constructor from OrtKernelInfo and
// Compute(OrtKernelContext*); errors become statuses, never exceptions across the C API.
template <typename Kernel>
struct FloatOp : Ort::CustomOpBase<FloatOp<Kernel>, Kernel, true> {
  FloatOp() {
    if (Kernel::kInplaceInput >= 0) {
      // onnxruntime may reuse input kInplaceInput's buffer for output 0 (when nothing else reads
      // it): the kernel reads each element before writing the same position.
      OrtCustomOp::GetMayInplace = [](int** input_index, int** output_index) -> size_t {
        *input_index = static_cast<int*>(std::malloc(sizeof(int)));
        *output_index = static_cast<int*>(std::malloc(sizeof(int)));
        **input_index = Kernel::kInplaceInput;
        **output_index = 0;
        return 1;
      };
      OrtCustomOp::ReleaseMayInplace = [](int* input_index, int* output_index) {
        std::free(input_index);
        std::free(output_index);
      };
    }
  }
  OrtStatusPtr CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const {
    try {
      *kernel = new Kernel(info);
      return nullptr;
    } catch (const std::exception& e) {
      return api.CreateStatus(ORT_INVALID_ARGUMENT, e.what());
    }
  }
  const char* GetName() const { return Kernel::kName; }
  size_t GetInputTypeCount() const { return Kernel::kInputs; }
  ONNXTensorElementDataType GetInputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t index) const {
    return index < Kernel::kRequiredInputs ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
  }
  size_t GetOutputTypeCount() const { return Kernel::kOutputs; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
  OrtCustomOpInputOutputCharacteristic GetOutputCharacteristic(size_t index) const {
    return index < Kernel::kRequiredOutputs ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
  }
};

// Base of the kernels: ComputeV2 runs Derived::Compute with exceptions turned into statuses.
template <typename Derived>
struct GuardedKernel {
  OrtStatusPtr ComputeV2(OrtKernelContext* context) {
    return GuardCompute([&] { static_cast<Derived*>(this)->Compute(context); });
  }
};

// The one registered instance of an operator.
template <typename Kernel>
const OrtCustomOp* OpInstance() {
  static FloatOp<Kernel> op;
  return &op;
}

// Element count of a shape, refusing negative (symbolic) dims.
inline int64_t ElementCount(const std::vector<int64_t>& shape, const char* what) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) throw InvalidInput(std::string(what) + " has a negative dimension " + ShapeString(shape));
    n *= d;
  }
  return n;
}

const OrtCustomOp* IFNeuronOp();
const OrtCustomOp* ReLUXProbeOp();
const OrtCustomOp* EventConvOp();
const OrtCustomOp* SpikingMaxPoolOp();

}  // namespace onnx2snn

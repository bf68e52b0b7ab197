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

// ---- Portability -------------------------------------------------------------------------------
// Compilers: GCC (Linux), Clang (Linux, Apple clang on macOS x86-64 and arm64, MinGW) and MSVC
// (Windows x64). Every build is to compute the same bits: each product and each sum is rounded on
// its own (no FMA contraction: -ffp-contract=off for GCC and Clang, see build_support.py; the
// fp_contract pragma below for MSVC) and vector code only works across independent elements.

// Kernels written with AVX-512 intrinsics exist on x86-64 and run where the CPU and the OS support
// AVX-512F (HasAvx512). GCC and Clang compile them in functions marked for AVX-512F
// (ONNX2SNN_TARGET_AVX512, or a target region: event_conv.cc). MSVC has no per-function target but
// compiles any intrinsic whatever /arch says, so there they are plain functions of the same
// translation unit (the rest stays on the default SSE2 baseline), likewise called only after
// HasAvx512(). ARM64EC defines _M_X64 but has no AVX-512. Building with -DONNX2SNN_BASELINE_ONLY
// leaves out every x86 kernel and clone: the baseline code alone, on any CPU.
#if !defined(ONNX2SNN_BASELINE_ONLY) && ((defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))) || \
                                         (defined(_M_X64) && !defined(_M_ARM64EC)))
#define ONNX2SNN_X86 1
#else
#define ONNX2SNN_X86 0
#endif

#if defined(_MSC_VER)
#include <intrin.h>        // __cpuidex, _xgetbv, _BitScanForward
#endif
#if ONNX2SNN_X86
#include <immintrin.h>
#if defined(__APPLE__)
#include <sys/sysctl.h>    // sysctlbyname
#elif !defined(__linux__) && !defined(_MSC_VER)
#include <cpuid.h>         // __cpuid_count (MinGW, BSDs)
#endif
#endif

#if ONNX2SNN_X86 && (defined(__GNUC__) || defined(__clang__))
#define ONNX2SNN_TARGET_AVX512 __attribute__((target("avx512f")))
#else
#define ONNX2SNN_TARGET_AVX512
#endif

// Element-wise kernels are compiled for AVX-512, AVX2 and the baseline on x86-64 Linux with GCC, the
// loader picking the widest the CPU has (an ifunc). Everywhere else they are compiled once, for the
// baseline instruction set: Mach-O (macOS) has no ifunc, MSVC has no target_clones, and Clang's
// target_clones (x86 ELF, Clang >= 14) is left out: Clang 22 was seen to leave undefined
// references to inline functions (std::vector's constructor, ...) that a clone of a function with
// internal linkage calls, so the library would not load. Either way they vectorise across
// independent elements only (no FMA contraction, no reassociated sums): every version computes the
// same bits.
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__) && \
    !defined(ONNX2SNN_BASELINE_ONLY)
#define ONNX2SNN_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define ONNX2SNN_VECTOR_CLONES
#endif

// MSVC: no contraction into FMA, whatever the /fp and /arch options (Visual Studio 2022 17.0 and
// later already do not contract under /fp:precise; earlier versions did where /arch allowed FMA).
// clang-cl likewise.
#if defined(_MSC_VER) && !defined(__clang__)
#pragma fp_contract(off)
#elif defined(_MSC_VER) && defined(__clang__)
#pragma clang fp contract(off)
#endif

// The library's entry points (register.cc): exported from the DLL on Windows, visible in the
// otherwise hidden (-fvisibility=hidden) ELF / Mach-O library elsewhere.
#if defined(_WIN32)
#define ONNX2SNN_EXPORT __declspec(dllexport)
#else
#define ONNX2SNN_EXPORT __attribute__((visibility("default")))
#endif

// Bit counts of a 32-bit mask: the GCC / Clang builtins, MSVC's _BitScanForward and a plain C++
// population count (no POPCNT instruction needed). ONNX2SNN_CTZ needs a non-zero mask.
#if defined(__GNUC__) || defined(__clang__)
#define ONNX2SNN_POPCOUNT(mask) __builtin_popcount(mask)
#define ONNX2SNN_CTZ(mask) __builtin_ctz(mask)
#else
#define ONNX2SNN_POPCOUNT(mask) ::onnx2snn::PortablePopcount(mask)
#define ONNX2SNN_CTZ(mask) ::onnx2snn::PortableCtz(mask)
#endif

namespace onnx2snn {

inline const char* kDomain = "ai.onnx2snn";

#if !defined(__GNUC__) && !defined(__clang__)
inline int PortablePopcount(uint32_t mask) {
  mask = mask - ((mask >> 1) & 0x55555555u);                      // 2-bit counts
  mask = (mask & 0x33333333u) + ((mask >> 2) & 0x33333333u);      // 4-bit counts
  mask = (mask + (mask >> 4)) & 0x0F0F0F0Fu;                      // byte counts
  return static_cast<int>((mask * 0x01010101u) >> 24);            // their sum in the top byte
}

inline int PortableCtz(uint32_t mask) {
#if defined(_MSC_VER)
  unsigned long index = 0;
  _BitScanForward(&index, mask);
  return static_cast<int>(index);
#else
  int n = 0;
  while (!(mask & 1u)) {
    mask >>= 1;
    ++n;
  }
  return n;
#endif
}
#endif

#if ONNX2SNN_X86 && !defined(__APPLE__) && !(defined(__linux__) && defined(__GNUC__))
// CPUID leaf / subleaf -> eax, ebx, ecx, edx.
inline void Cpuid(uint32_t leaf, uint32_t subleaf, uint32_t regs[4]) {
#if defined(_MSC_VER)
  int r[4];
  __cpuidex(r, static_cast<int>(leaf), static_cast<int>(subleaf));
  for (int i = 0; i < 4; ++i) regs[i] = static_cast<uint32_t>(r[i]);
#else
  __cpuid_count(leaf, subleaf, regs[0], regs[1], regs[2], regs[3]);
#endif
}

// XCR0: the register states the OS saves on a context switch (read only when CPUID says OSXSAVE).
inline uint64_t EnabledStates() {
#if defined(_MSC_VER) && !defined(__clang__)
  return _xgetbv(0);
#else  // inline asm: Clang's _xgetbv would need the function compiled for XSAVE
  uint32_t lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (static_cast<uint64_t>(hi) << 32) | lo;
#endif
}

// AVX-512F usable: the CPU has it (CPUID.7.0:EBX bit 16) and the OS saves the XMM, YMM, opmask and
// both ZMM upper parts (XCR0 bits 1, 2, 5, 6, 7), which it says it manages with XSAVE (CPUID.1:ECX
// bit 27, OSXSAVE).
inline bool CpuidAvx512() {
  uint32_t r[4];
  Cpuid(0, 0, r);
  if (r[0] < 7) return false;
  Cpuid(1, 0, r);
  if (!(r[2] & (1u << 27))) return false;
  if ((EnabledStates() & 0xE6u) != 0xE6u) return false;
  Cpuid(7, 0, r);
  return (r[1] & (1u << 16)) != 0;
}
#endif

// Linux (GCC, Clang): libgcc's / compiler-rt's __builtin_cpu_supports (CPUID and the OS's XCR0).
// macOS: the kernel's hw.optional.avx512f (macOS enables the AVX-512 state lazily, on first use, so
// XCR0 alone would say no). Windows and other x86-64 systems: CPUID and XCR0 directly.
inline bool HasAvx512() {
#if !ONNX2SNN_X86
  return false;
#elif defined(__APPLE__)
  static const bool has = [] {
    int value = 0;
    size_t size = sizeof(value);
    return sysctlbyname("hw.optional.avx512f", &value, &size, nullptr, 0) == 0 && value != 0;
  }();
  return has;
#elif defined(__linux__) && defined(__GNUC__)
  static const bool has = __builtin_cpu_supports("avx512f");
  return has;
#else
  static const bool has = CpuidAvx512();
  return has;
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

// The one registered instance of an operator (register.cc sets its version to the runtime's API).
template <typename Kernel>
OrtCustomOp* OpInstance() {
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

OrtCustomOp* IFNeuronOp();
OrtCustomOp* ReLUXProbeOp();
OrtCustomOp* EventConvOp();
OrtCustomOp* SpikingMaxPoolOp();

}  // namespace onnx2snn

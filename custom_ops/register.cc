// Entry point onnxruntime calls when the library is registered (RegisterCustomOpsLibrary).
#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <string>

#include "ops.h"

namespace {

// The oldest C API the operators can run on: KernelContext_ParallelFor, the newest function they
// call, is API 17 (onnxruntime 1.17).
constexpr uint32_t kOldestApi = 17;

// The C API version of the onnxruntime that loads the library: for onnxruntime 1.x it is x, read
// from its version string. Asking a runtime for a newer API than its own gets no table at all, and a
// runtime refuses an operator whose version is newer than its own, so the library asks for, and
// declares its operators as, the older of the runtime's API and the headers' (ORT_API_VERSION). The
// fields of OrtCustomOp newer than that version (GetMayInplace, ...) are then not read, by design.
uint32_t ApiToUse(const OrtApiBase* api_base) {
  const char* text = api_base->GetVersionString();
  uint32_t runtime = ORT_API_VERSION;
  if (text != nullptr && text[0] == '1' && text[1] == '.') {
    runtime = static_cast<uint32_t>(std::strtoul(text + 2, nullptr, 10));
  }
  return runtime < ORT_API_VERSION ? runtime : ORT_API_VERSION;
}

}  // namespace

extern "C" ONNX2SNN_EXPORT OrtStatus* ORT_API_CALL
RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  const uint32_t version = ApiToUse(api_base);
  const OrtApi* api = api_base->GetApi(version);
  if (api == nullptr) api = api_base->GetApi(1);  // CreateStatus is in every version
  if (api == nullptr) return nullptr;
  if (version < kOldestApi) {
    std::string message = std::string("onnx2snn's operators need onnxruntime >= 1.") + std::to_string(kOldestApi) +
                          "; this is onnxruntime " + api_base->GetVersionString();
    return api->CreateStatus(ORT_FAIL, message.c_str());
  }
  Ort::InitApi(api);
  static std::once_flag once;
  static Ort::CustomOpDomain* domain = nullptr;
  try {
    std::call_once(once, [version] {
      domain = new Ort::CustomOpDomain(onnx2snn::kDomain);  // lives as long as the process
      for (OrtCustomOp* op : {onnx2snn::IFNeuronOp(), onnx2snn::ReLUXProbeOp(), onnx2snn::EventConvOp(),
                              onnx2snn::SpikingMaxPoolOp()}) {
        op->version = version;
        domain->Add(op);
      }
    });
    Ort::UnownedSessionOptions(options).Add(*domain);
  } catch (const std::exception& e) {
    return Ort::GetApi().CreateStatus(ORT_FAIL, e.what());
  }
  return nullptr;
}

// Python extension-module symbol so the library can live in the package as a setuptools extension;
// importing it is never needed (onnxruntime loads it with dlopen).
extern "C" ONNX2SNN_EXPORT void* PyInit__ops(void) { return nullptr; }

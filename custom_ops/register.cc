// Entry point onnxruntime calls when the library is registered (RegisterCustomOpsLibrary).
#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

#include <mutex>

#include "ops.h"

extern "C" ONNX2SNN_EXPORT OrtStatus* ORT_API_CALL
RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  Ort::InitApi(api_base->GetApi(ORT_API_VERSION));
  static std::once_flag once;
  static Ort::CustomOpDomain* domain = nullptr;
  try {
    std::call_once(once, [] {
      domain = new Ort::CustomOpDomain(onnx2snn::kDomain);  // lives as long as the process
      domain->Add(onnx2snn::IFNeuronOp());
      domain->Add(onnx2snn::ReLUXProbeOp());
      domain->Add(onnx2snn::EventConvOp());
      domain->Add(onnx2snn::SpikingMaxPoolOp());
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

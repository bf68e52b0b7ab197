// Shared pieces of the onnx2snn operator library (domain ai.onnx2snn).
#pragma once

#include <onnxruntime_cxx_api.h>

#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace onnx2snn {

inline const char* kDomain = "ai.onnx2snn";

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

const OrtCustomOp* IFNeuronOp();
const OrtCustomOp* ReLUXProbeOp();

}  // namespace onnx2snn

// Run a model converted by onnx2snn from C++, with no Python: onnxruntime's C++ API plus the
// onnx2snn operator library (the one file `onnx2snn.library_path()` names).
//
//   snn_run MODEL.snn.onnx LIBRARY.so INPUT.npy OUTPUT.npy
//
// INPUT.npy: float32, C order, the model's first input (batch included). OUTPUT.npy receives the
// model's first output (float32). A --portable model needs no library: pass "-" instead.
#include <onnxruntime_cxx_api.h>

#include <cstdint>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

struct Array {
  std::vector<int64_t> shape;
  std::vector<float> data;
};

// The part of the .npy format this program needs: version 1-3 headers, '<f4', C order.
Array ReadNpy(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot open");
  char magic[8];
  in.read(magic, 8);
  if (std::memcmp(magic, "\x93NUMPY", 6) != 0) throw std::runtime_error(path + ": not a .npy file");
  uint32_t header_len = 0;
  if (magic[6] == 1) {
    uint16_t len16 = 0;
    in.read(reinterpret_cast<char*>(&len16), 2);
    header_len = len16;
  } else {
    in.read(reinterpret_cast<char*>(&header_len), 4);
  }
  std::string header(header_len, ' ');
  in.read(&header[0], header_len);
  if (header.find("'descr': '<f4'") == std::string::npos || header.find("'fortran_order': False") == std::string::npos)
    throw std::runtime_error(path + ": expected a C-order float32 array");
  Array a;
  const size_t open = header.find('(', header.find("'shape'")), close = header.find(')', open);
  std::stringstream dims(header.substr(open + 1, close - open - 1));
  std::string item;
  int64_t count = 1;
  while (std::getline(dims, item, ',')) {
    if (item.find_first_not_of(' ') == std::string::npos) continue;
    a.shape.push_back(std::stoll(item));
    count *= a.shape.back();
  }
  a.data.resize(static_cast<size_t>(count));
  in.read(reinterpret_cast<char*>(a.data.data()), static_cast<std::streamsize>(count * sizeof(float)));
  if (!in) throw std::runtime_error(path + ": truncated data");
  return a;
}

void WriteNpy(const std::string& path, const float* data, const std::vector<int64_t>& shape) {
  std::string dims;
  size_t count = 1;
  for (int64_t d : shape) {
    dims += std::to_string(d) + ",";
    count *= static_cast<size_t>(d);
  }
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + dims + "), }";
  header.append(64 - (10 + header.size() + 1) % 64, ' ');
  header += '\n';
  const uint16_t len = static_cast<uint16_t>(header.size());
  std::ofstream out(path, std::ios::binary);
  out.write("\x93NUMPY\x01\x00", 8);
  out.write(reinterpret_cast<const char*>(&len), 2);
  out << header;
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(count * sizeof(float)));
  if (!out) throw std::runtime_error(path + ": cannot write");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 5) {
    std::cerr << "usage: snn_run MODEL.onnx LIBRARY.so|- INPUT.npy OUTPUT.npy\n";
    return 2;
  }
  try {
    Ort::Env env(ORT_LOGGING_LEVEL_WARNING, "snn_run");
    Ort::SessionOptions options;
    if (std::string(argv[2]) != "-") options.RegisterCustomOpsLibrary(argv[2]);   // the IF neuron
    Ort::Session session(env, argv[1], options);
    Array input = ReadNpy(argv[3]);
    Ort::AllocatorWithDefaultOptions allocator;
    auto in_name = session.GetInputNameAllocated(0, allocator);
    auto out_name = session.GetOutputNameAllocated(0, allocator);
    auto memory = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
    Ort::Value tensor = Ort::Value::CreateTensor<float>(memory, input.data.data(), input.data.size(),
                                                        input.shape.data(), input.shape.size());
    const char* in_names[] = {in_name.get()};
    const char* out_names[] = {out_name.get()};
    auto outputs = session.Run(Ort::RunOptions{nullptr}, in_names, &tensor, 1, out_names, 1);
    WriteNpy(argv[4], outputs[0].GetTensorData<float>(), outputs[0].GetTensorTypeAndShapeInfo().GetShape());
  } catch (const std::exception& e) {
    std::cerr << "snn_run: error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}

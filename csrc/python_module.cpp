// The Python module clusiam_fast._C (pybind11). Importing it loads this library, whose
// static initialisers register the ops (TORCH_LIBRARY in cluster_loss.cpp, kernels in
// cpu/ and cuda/); the module itself holds one function, build_info(): how this very
// library was compiled, read from the compiler's own macros and from the definitions
// setup.py passes (CLUSIAM_FAST_*). `python -m clusiam_fast.info` prints it.
// (Not part of the CMake build, which makes a plain libtorch library.)
#include <pybind11/pybind11.h>
#include <torch/version.h>

#include <string>

#include "cpu/vec_ops.h"

#ifdef CLUSIAM_FAST_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace py = pybind11;

// Stringises a definition given on the command line as bare tokens (-DX=80,90).
#define CLUSIAM_STR_(...) #__VA_ARGS__
#define CLUSIAM_STR(...) CLUSIAM_STR_(__VA_ARGS__)

namespace {

std::string compiler() {
#if defined(__clang__)
  return "clang " __clang_version__;
#elif defined(__GNUC__)
  return "gcc " __VERSION__;
#else
  return "unknown";
#endif
}

std::string cxx_standard() {
  const long v = __cplusplus;
  return v >= 202302L ? "C++23" : v >= 202002L ? "C++20" : v >= 201703L ? "C++17" : std::to_string(v);
}

py::object openmp() {
#ifdef _OPENMP
  return py::int_(_OPENMP);  // the spec's date, e.g. 201511 for OpenMP 4.5
#else
  return py::none();
#endif
}

py::list split(const std::string& text) {
  py::list out;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find(',', start);
    if (end == std::string::npos) end = text.size();
    if (end > start) out.append(text.substr(start, end - start));
    start = end + 1;
  }
  return out;
}

py::dict build_info() {
  py::dict info;
  info["compiler"] = compiler();
  info["cxx_standard"] = cxx_standard();
  info["openmp"] = openmp();
  info["vector_isa_compiled"] = split(clusiam::vec_isa_compiled());
  info["vector_isa_selected"] = std::string(clusiam::vec_isa_selected());
  info["torch_version"] = std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR) + "." +
                          std::to_string(TORCH_VERSION_PATCH);
#ifdef CLUSIAM_FAST_WITH_CUDA
  info["cuda"] = true;
  info["cuda_version"] = std::to_string(CUDART_VERSION / 1000) + "." + std::to_string(CUDART_VERSION % 1000 / 10);
  info["cuda_archs"] = split(CLUSIAM_STR(CLUSIAM_FAST_CUDA_ARCHS));
#else
  info["cuda"] = false;
  info["cuda_version"] = py::none();
  info["cuda_archs"] = py::list();
#endif
#ifdef CLUSIAM_FAST_GIT_COMMIT
  info["git_commit"] = std::string(CLUSIAM_STR(CLUSIAM_FAST_GIT_COMMIT));
#else
  info["git_commit"] = py::none();
#endif
  return info;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "clusiam_fast's compiled ops (torch.ops.clusiam.*) and how they were built";
  m.def("build_info", &build_info,
        "How this extension was built: compiler, C++ standard, OpenMP, vector ISA, torch and CUDA versions it was "
        "compiled against, CUDA archs (sm_XX: machine code, compute_XX: PTX) and git commit.");
}

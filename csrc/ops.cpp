// agd._C: registration glue of the C++ CPU operator library.
//
// Scheme: Python (agd/ops/, one module per op family) defines every op schema, its fake implementation and its PyTorch
// reference (CompositeExplicitAutograd); this library adds CPU kernels with TORCH_LIBRARY_IMPL
// (see csrc/cpu/*.cpp) and defines two ops of its own: agd::build_info, which says how it was built,
// and agd::block_gemm_backend, the GEMM the block kernels run.
// The library is loaded with torch.ops.load_library and has no Python module init (it is built with
// Py_LIMITED_API and never includes Python headers).

#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/version.h>

#include <sstream>
#include <string>

#include "cpu/blocks_common.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#ifndef AGD_BUILD_FLAGS
#define AGD_BUILD_FLAGS "unknown (AGD_BUILD_FLAGS not defined by the build)"
#endif

namespace agd {
namespace {

std::string compiler() {
#if defined(__clang__)
  return std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  return std::string("gcc ") + __VERSION__;
#elif defined(_MSC_VER)
  return "msvc " + std::to_string(_MSC_VER);
#else
  return "unknown compiler";
#endif
}

// One line: compiler; flags; OpenMP; the block kernels' GEMM; torch headers the library was
// compiled against.
std::string build_info() {
  std::ostringstream s;
  s << compiler() << "; flags " << AGD_BUILD_FLAGS << "; ";
#ifdef _OPENMP
  s << "OpenMP " << _OPENMP << " (max " << omp_get_max_threads() << " threads)";
#else
  s << "no OpenMP (at::parallel_for runs on one thread)";
#endif
  std::string gemm;
  try {
    gemm = blocks::gemm_backend();
  } catch (const c10::Error& e) {  // a bad AGD_BLOCK_GEMM value: say so here too
    gemm = e.what_without_backtrace();
  }
  s << "; block GEMM: " << gemm;
  s << "; built against torch " << TORCH_VERSION_MAJOR << "." << TORCH_VERSION_MINOR << "."
    << TORCH_VERSION_PATCH;
  return s.str();
}

// "avx512", "blas" or "loop": the GEMM the block kernels run (AGD_BLOCK_GEMM or the fastest here).
std::string block_gemm_backend() { return blocks::gemm_kind_name(blocks::block_gemm_kind()); }

}  // namespace
}  // namespace agd

TORCH_LIBRARY_FRAGMENT(agd, m) {
  m.def("build_info() -> str", &agd::build_info);
  m.def("block_gemm_backend() -> str", &agd::block_gemm_backend);
}

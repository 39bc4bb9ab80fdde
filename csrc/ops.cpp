// agd._C: registration glue of the C++ CPU operator library.
//
// Scheme: Python (agd/ops.py) defines every op schema, its fake implementation and its PyTorch
// reference (CompositeExplicitAutograd); this library adds CPU kernels with TORCH_LIBRARY_IMPL
// (see csrc/cpu/*.cpp) and defines one op of its own, agd::build_info, which says how it was built.
// The library is loaded with torch.ops.load_library and has no Python module init (it is built with
// Py_LIMITED_API and never includes Python headers).

#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/version.h>

#include <sstream>
#include <string>

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

// One line: compiler; flags; OpenMP; torch headers the library was compiled against.
std::string build_info() {
  std::ostringstream s;
  s << compiler() << "; flags " << AGD_BUILD_FLAGS << "; ";
#ifdef _OPENMP
  s << "OpenMP " << _OPENMP << " (max " << omp_get_max_threads() << " threads)";
#else
  s << "no OpenMP (at::parallel_for runs on one thread)";
#endif
  s << "; built against torch " << TORCH_VERSION_MAJOR << "." << TORCH_VERSION_MINOR << "."
    << TORCH_VERSION_PATCH;
  return s.str();
}

}  // namespace
}  // namespace agd

TORCH_LIBRARY_FRAGMENT(agd, m) {
  m.def("build_info() -> str", &agd::build_info);
}

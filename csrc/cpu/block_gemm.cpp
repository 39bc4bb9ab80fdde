// agd::block_gemm (schema in agd/ops/fused.py): the block kernels' GEMM as an op of its own, for tests and
// benchmarks. Transposed views (a.t(), b.t()) are passed to the GEMM as transposes, not copied.

#include <ATen/ATen.h>
#include <torch/library.h>

#include "cpu/blocks_common.h"

namespace agd {
namespace {

// (row-major view, transposed?, leading dimension) of a 2-D tensor without copying when possible.
struct Operand {
  at::Tensor t;
  bool trans;
  int64_t ld;
};

Operand operand(const at::Tensor& x) {
  if (x.stride(1) == 1 && x.stride(0) >= std::max<int64_t>(1, x.size(1))) return {x, false, x.stride(0)};
  if (x.stride(0) == 1 && x.stride(1) >= std::max<int64_t>(1, x.size(0))) return {x, true, x.stride(1)};
  at::Tensor c = x.contiguous();
  return {c, false, std::max<int64_t>(1, c.size(1))};
}

at::Tensor block_gemm_cpu(const at::Tensor& a, const at::Tensor& b, c10::string_view backend) {
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2 && a.size(1) == b.size(0),
              "agd::block_gemm: needs (m, k) @ (k, n), got ", a.sizes(), " @ ", b.sizes());
  TORCH_CHECK(a.scalar_type() == b.scalar_type() &&
                  (a.scalar_type() == at::kFloat || a.scalar_type() == at::kDouble),
              "agd::block_gemm: a and b must both be float32 or float64, got ", a.scalar_type(), ", ",
              b.scalar_type());
  const blocks::GemmKind kind = blocks::parse_gemm_kind(std::string(backend), "agd::block_gemm");
  const int64_t m = a.size(0), k = a.size(1), n = b.size(1);
  at::Tensor out = at::empty({m, n}, a.options());
  if (out.numel() == 0) return out;
  const Operand A = operand(a), B = operand(b);
  if (a.scalar_type() == at::kFloat) {
    const blocks::GemmKind use = kind == blocks::GemmKind::kAuto ? blocks::block_gemm_kind()
                                                                 : blocks::resolve_gemm_kind(kind);
    blocks::gemm_f32(use, A.trans, B.trans, m, n, k, A.t.data_ptr<float>(), A.ld,
                     B.t.data_ptr<float>(), B.ld, 0.f, out.data_ptr<float>(), n);
  } else {
    blocks::gemm<double>(A.trans, B.trans, m, n, k, A.t.data_ptr<double>(), A.ld,
                         B.t.data_ptr<double>(), B.ld, 0.0, out.data_ptr<double>(), n);
  }
  return out;
}

}  // namespace
}  // namespace agd

TORCH_LIBRARY_IMPL(agd, CPU, m) {
  m.impl("block_gemm", &agd::block_gemm_cpu);
}

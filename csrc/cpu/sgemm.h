// Single-precision GEMM of the block kernels: an AVX-512 packed micro-kernel (sgemm_avx512.cpp).
//
// Why its own GEMM: the block kernels' 1x1 convolutions are GEMMs on bands of rows, called from
// inside at::parallel_for. The BLAS in x86-64 torch wheels is MKL, which on AMD CPUs runs its AVX2
// kernel (about 100 GFLOP/s on one core of the Zen 5 VM BENCHMARKS.md names) while the core sustains
// about 240 with AVX-512 (oneDNN's JIT reaches it). This kernel is compiled for AVX-512 only and
// used when the CPU has it; elsewhere the callers fall back to BLAS sgemm_ (blocks_common.h).
#pragma once

#include <cstdint>

namespace agd {
namespace blocks {

// True when this CPU runs the AVX-512 kernel (AVX-512F, checked once) and the build has it.
bool sgemm_avx512_supported();

// Row-major C (m x n, ldc) = A' (m x k) * B' (k x n) + beta * C, A' = A or A^T (ta), B' = B or B^T
// (tb). beta == 0 never reads C. Runs on the calling thread; outside a parallel region with more
// than one intra-op thread and enough work, it splits the columns over at::parallel_for. Returns
// false (doing nothing) when the AVX-512 kernel is not supported.
bool sgemm_avx512(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const float* A, int64_t lda,
                  const float* B, int64_t ldb, float beta, float* C, int64_t ldc);

}  // namespace blocks
}  // namespace agd

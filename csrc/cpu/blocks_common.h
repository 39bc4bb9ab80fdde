// Shared helpers of the block kernels (dwconv3x3.cpp, residual.cpp, dws_block.cpp):
// activations, fused element-wise loops, per-thread scratch memory, and a row-major GEMM: agd's
// AVX-512 kernel (sgemm.h) when the CPU has AVX-512, else the BLAS sgemm_ linked into libtorch_cpu
// (MKL on x86-64 wheels) when present, else a plain loop. AGD_BLOCK_GEMM=avx512|blas|loop forces one.
#pragma once

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "cpu/sgemm.h"
#include "cpu/simd.h"

// Fortran BLAS (LP64) and MKL's per-thread thread count, weak so the library still loads against a
// torch built without them (then the loop GEMM below runs).
extern "C" {
void sgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k,
            const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
            const float* beta, float* c, const int* ldc) __attribute__((weak));
int MKL_Set_Num_Threads_Local(int n) __attribute__((weak));
}

namespace agd {
namespace blocks {

// Activation codes shared with agd/ops/activations.py (ACT_CODES).
enum Act : int64_t { kNone = 0, kRelu = 1, kLeaky = 2, kTanh = 3 };

// Branch-free forms (GCC keeps `v > 0 ? v : v * slope` scalar under -ftrapping-math), so the loops
// that call these vectorize.
template <typename T>
inline T leaky(T v, T slope) {
  return std::max(v, T(0)) + slope * std::min(v, T(0));
}

template <typename T>
inline T activate(T v, int64_t act, T slope) {
  switch (act) {
    case kRelu: return std::max(v, T(0));
    case kLeaky: return leaky(v, slope);
    case kTanh: return std::tanh(v);
    default: return v;
  }
}

// d act / d pre-activation, written with the activation's output (all four are monotone).
template <typename T>
inline T activate_grad_from_out(T out, int64_t act, T slope) {
  switch (act) {
    case kRelu: return out > T(0) ? T(1) : T(0);
    case kLeaky: return out > T(0) ? T(1) : slope;
    case kTanh: return T(1) - out * out;
    default: return T(1);
  }
}

// p[i] = act(p[i] * a + b) over n elements; the switch is hoisted out of the loop, and the loops are
// compiled for AVX-512 / AVX2 / baseline (the caller's own code may be baseline-only).
template <typename T>
AGD_SIMD_CLONES static void affine_act(T* __restrict p, int64_t n, T a, T b, int64_t act, T slope) {
  switch (act) {
    case kRelu:
      for (int64_t i = 0; i < n; ++i) p[i] = std::max(p[i] * a + b, T(0));
      break;
    case kLeaky:
      for (int64_t i = 0; i < n; ++i) p[i] = leaky(p[i] * a + b, slope);
      break;
    case kTanh:
      for (int64_t i = 0; i < n; ++i) p[i] = std::tanh(p[i] * a + b);
      break;
    default:
      for (int64_t i = 0; i < n; ++i) p[i] = p[i] * a + b;
  }
}

// o[i] += s[i] over n elements.
template <typename T>
AGD_SIMD_CLONES static void add_rows(T* __restrict o, const T* __restrict s, int64_t n) {
  for (int64_t i = 0; i < n; ++i) o[i] += s[i];
}

// o[i] = act(o[i] * a + b + s[i]) over n elements.
template <typename T>
AGD_SIMD_CLONES static void affine_add_act(T* __restrict o, const T* __restrict s, int64_t n, T a, T b,
                                            int64_t act, T slope) {
  switch (act) {
    case kRelu:
      for (int64_t i = 0; i < n; ++i) o[i] = std::max(o[i] * a + b + s[i], T(0));
      break;
    case kLeaky:
      for (int64_t i = 0; i < n; ++i) o[i] = leaky(o[i] * a + b + s[i], slope);
      break;
    case kTanh:
      for (int64_t i = 0; i < n; ++i) o[i] = std::tanh(o[i] * a + b + s[i]);
      break;
    default:
      for (int64_t i = 0; i < n; ++i) o[i] = o[i] * a + b + s[i];
  }
}

// Per-thread scratch memory reused across calls. Fresh multi-megabyte buffers on every call come
// from mmap and cost a page fault per 4 KiB on first touch (about 1 ms per 6 MB here), as much as
// the arithmetic of a small block; a buffer kept per thread and slot is touched once. Buffers above
// kMaxCachedBytes are released after the call instead (`Scratch` frees them on destruction).
constexpr size_t kMaxCachedBytes = size_t(64) << 20;

template <typename T>
class Scratch {
 public:
  Scratch(int slot, size_t n) {
    std::vector<T>& cached = pool(slot);
    if (n * sizeof(T) <= kMaxCachedBytes) {
      if (cached.size() < n) cached.resize(n);
      ptr_ = cached.data();
    } else {
      own_.resize(n);
      ptr_ = own_.data();
    }
  }
  T* data() const { return ptr_; }

 private:
  static std::vector<T>& pool(int slot) {
    static thread_local std::vector<T> slots[4];
    return slots[slot];
  }
  T* ptr_ = nullptr;
  std::vector<T> own_;
};

// Row-major C (m x n, ldc) = A' (m x k) * B' (k x n) + beta * C, where A' = A or A^T (ta) and
// B' = B or B^T (tb), all row-major with the given leading dimensions. Called from inside
// at::parallel_for: MKL is asked for one thread on the calling thread.
template <typename T>
inline void gemm_loop(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const T* A, int64_t lda,
                      const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  for (int64_t i = 0; i < m; ++i) {
    T* c = C + i * ldc;
    if (beta == T(0)) {
      std::fill(c, c + n, T(0));
    } else if (beta != T(1)) {
      for (int64_t j = 0; j < n; ++j) c[j] *= beta;
    }
    for (int64_t p = 0; p < k; ++p) {
      const T a = ta ? A[p * lda + i] : A[i * lda + p];
      if (a == T(0)) continue;
      if (!tb) {
        const T* b = B + p * ldb;
        for (int64_t j = 0; j < n; ++j) c[j] += a * b[j];
      } else {
        for (int64_t j = 0; j < n; ++j) c[j] += a * B[j * ldb + p];
      }
    }
  }
}

template <typename T>
inline void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const T* A, int64_t lda,
                 const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  gemm_loop(ta, tb, m, n, k, A, lda, B, ldb, beta, C, ldc);
}

enum class GemmKind { kAuto, kAvx512, kBlas, kLoop };

inline bool blas_linked() { return sgemm_ != nullptr; }

inline const char* gemm_kind_name(GemmKind k) {
  switch (k) {
    case GemmKind::kAvx512: return "avx512";
    case GemmKind::kBlas: return "blas";
    case GemmKind::kLoop: return "loop";
    default: return "auto";
  }
}

// "auto", "avx512", "blas" or "loop"; anything else stops with the valid names.
inline GemmKind parse_gemm_kind(const std::string& name, const char* what) {
  for (GemmKind k : {GemmKind::kAuto, GemmKind::kAvx512, GemmKind::kBlas, GemmKind::kLoop})
    if (name == gemm_kind_name(k)) return k;
  TORCH_CHECK(false, what, ": unknown GEMM '", name, "'; expected auto, avx512, blas or loop");
  return GemmKind::kAuto;
}

// What "auto" and a forced kind resolve to on this machine; a forced kind that cannot run here stops.
inline GemmKind resolve_gemm_kind(GemmKind k) {
  if (k == GemmKind::kAuto)
    return sgemm_avx512_supported() ? GemmKind::kAvx512 : blas_linked() ? GemmKind::kBlas : GemmKind::kLoop;
  TORCH_CHECK(k != GemmKind::kAvx512 || sgemm_avx512_supported(),
              "agd: the AVX-512 GEMM was asked for, but this CPU or build does not have AVX-512F");
  TORCH_CHECK(k != GemmKind::kBlas || blas_linked(),
              "agd: the BLAS GEMM was asked for, but libtorch_cpu links no sgemm_");
  return k;
}

// The GEMM the block kernels use: AGD_BLOCK_GEMM if set (read once), else the fastest available.
inline GemmKind block_gemm_kind() {
  static const GemmKind kind = [] {
    const char* env = std::getenv("AGD_BLOCK_GEMM");
    return resolve_gemm_kind(env ? parse_gemm_kind(env, "AGD_BLOCK_GEMM") : GemmKind::kAuto);
  }();
  return kind;
}

inline void gemm_f32(GemmKind kind, bool ta, bool tb, int64_t m, int64_t n, int64_t k,
                     const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
                     int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (kind == GemmKind::kAvx512 && sgemm_avx512(ta, tb, m, n, k, A, lda, B, ldb, beta, C, ldc))
    return;
  const bool fits = m < (1LL << 31) && n < (1LL << 31) && k < (1LL << 31) && lda < (1LL << 31) &&
                    ldb < (1LL << 31) && ldc < (1LL << 31);
  if (kind != GemmKind::kLoop && blas_linked() && fits && k > 0) {
    // Column-major view: C^T (n x m) = B'^T (n x k) * A'^T (k x m).
    const int mi = static_cast<int>(n), ni = static_cast<int>(m), ki = static_cast<int>(k);
    const int la = static_cast<int>(ldb), lb = static_cast<int>(lda), lc = static_cast<int>(ldc);
    const float one = 1.0f;
    const char tA = tb ? 'T' : 'N', tB = ta ? 'T' : 'N';
    int previous = 0;
    const bool nested = at::in_parallel_region() && MKL_Set_Num_Threads_Local != nullptr;
    if (nested) previous = MKL_Set_Num_Threads_Local(1);
    sgemm_(&tA, &tB, &mi, &ni, &ki, &one, B, &la, A, &lb, &beta, C, &lc);
    if (nested) MKL_Set_Num_Threads_Local(previous);
    return;
  }
  gemm_loop(ta, tb, m, n, k, A, lda, B, ldb, beta, C, ldc);
}

template <>
inline void gemm<float>(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const float* A,
                        int64_t lda, const float* B, int64_t ldb, float beta, float* C,
                        int64_t ldc) {
  gemm_f32(block_gemm_kind(), ta, tb, m, n, k, A, lda, B, ldb, beta, C, ldc);
}

inline const char* gemm_backend() {
  switch (block_gemm_kind()) {
    case GemmKind::kAvx512: return "agd AVX-512 sgemm";
    case GemmKind::kBlas: return "BLAS sgemm_";
    default: return "loop GEMM";
  }
}

}  // namespace blocks
}  // namespace agd

// AVX-512 single-precision GEMM for the block kernels (declared in sgemm.h).
//
// Layout (the usual packed scheme): C is cut into blocks of kNC columns; for each block of kKC
// values of k, B' is packed into micro-panels of kKC x kNR (kNR = 64 columns, four zmm registers,
// zero-padded) and A' into micro-panels of kMR x kKC (6 rows, k-major, zero-padded). The micro-kernel
// keeps a 6 x 64 tile of C in 24 zmm accumulators; per k it loads four vectors of B and broadcasts
// six values of A into 24 FMAs. A B micro-panel is 32 KiB (kKC = 128), so it stays in L1 while the
// kernel walks every A micro-panel of the block (in L2). Partial tiles are written with masked
// stores, so edges need no scalar code. Only the functions marked AGD_AVX512_FN use AVX-512; the
// library itself stays baseline x86-64 and calls them only after checking the CPU.

#include "cpu/sgemm.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(AGD_NO_AVX512_GEMM)
#define AGD_HAVE_AVX512_GEMM 1
#include <immintrin.h>
#define AGD_AVX512_FN __attribute__((target("avx512f,fma")))
#endif

namespace agd {
namespace blocks {

#ifdef AGD_HAVE_AVX512_GEMM
namespace {

constexpr int64_t kMR = 6;     // rows of the register tile
constexpr int64_t kNR = 64;    // columns of the register tile (4 x 16 floats)
constexpr int64_t kKC = 128;   // depth of a packed block: a B micro-panel is kKC * kNR * 4 = 32 KiB
constexpr int64_t kMC = 384;   // rows of a packed A block (multiple of kMR): at most 192 KiB
constexpr int64_t kNC = 2048;  // columns of a packed B block (multiple of kNR): at most 1 MiB

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// A 64-byte aligned per-thread buffer that only grows.
class PackBuffer {
 public:
  ~PackBuffer() { std::free(p_); }
  float* get(int64_t n) {
    if (n > n_) {
      std::free(p_);
      p_ = static_cast<float*>(std::aligned_alloc(64, static_cast<size_t>(round_up(n * 4, 64))));
      TORCH_CHECK(p_ != nullptr, "agd: out of memory packing a GEMM block (", n * 4, " bytes)");
      n_ = n;
    }
    return p_;
  }

 private:
  float* p_ = nullptr;
  int64_t n_ = 0;
};

PackBuffer& a_buffer() {
  static thread_local PackBuffer b;
  return b;
}
PackBuffer& b_buffer() {
  static thread_local PackBuffer b;
  return b;
}

// A' rows [i0, i0 + mc), columns [p0, p0 + kc) -> micro-panels of kc x kMR (k-major); panel r / kMR
// starts at dst + r * kc. Rows past mc are zeros.
void pack_a(bool ta, const float* A, int64_t lda, int64_t i0, int64_t mc, int64_t p0, int64_t kc,
            float* dst) {
  for (int64_t r = 0; r < mc; r += kMR) {
    const int64_t rows = std::min(kMR, mc - r);
    float* d = dst + r * kc;
    if (!ta) {
      const float* src[kMR];
      for (int64_t i = 0; i < kMR; ++i) src[i] = A + (i0 + r + std::min(i, rows - 1)) * lda + p0;
      for (int64_t p = 0; p < kc; ++p)
        for (int64_t i = 0; i < kMR; ++i) d[p * kMR + i] = i < rows ? src[i][p] : 0.f;
    } else {
      for (int64_t p = 0; p < kc; ++p) {
        const float* s = A + (p0 + p) * lda + i0 + r;
        for (int64_t i = 0; i < kMR; ++i) d[p * kMR + i] = i < rows ? s[i] : 0.f;
      }
    }
  }
}

// B' rows [p0, p0 + kc), columns [j0, j0 + nc) -> micro-panels of kc x kNR; panel s / kNR starts at
// dst + s * kc. Columns past nc are zeros.
void pack_b(bool tb, const float* B, int64_t ldb, int64_t p0, int64_t kc, int64_t j0, int64_t nc,
            float* dst) {
  for (int64_t s = 0; s < nc; s += kNR) {
    const int64_t cols = std::min(kNR, nc - s);
    float* d = dst + s * kc;
    if (!tb) {
      for (int64_t p = 0; p < kc; ++p) {
        std::memcpy(d + p * kNR, B + (p0 + p) * ldb + j0 + s, sizeof(float) * cols);
        if (cols < kNR) std::memset(d + p * kNR + cols, 0, sizeof(float) * (kNR - cols));
      }
    } else {
      if (cols < kNR) std::memset(d, 0, sizeof(float) * kc * kNR);
      for (int64_t j = 0; j < cols; ++j) {
        const float* src = B + (j0 + s + j) * ldb + p0;
        for (int64_t p = 0; p < kc; ++p) d[p * kNR + j] = src[p];
      }
    }
  }
}

// C tile (mr x nr valid of kMR x kNR) = A panel * B panel + beta * C tile.
AGD_AVX512_FN void micro_kernel(int64_t kc, const float* __restrict a, const float* __restrict b,
                                float* __restrict c, int64_t ldc, int64_t mr, int64_t nr,
                                float beta) {
  __m512 acc[kMR][4];
#pragma GCC unroll 6
  for (int i = 0; i < kMR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) acc[i][j] = _mm512_setzero_ps();
  for (int64_t p = 0; p < kc; ++p) {
    const __m512 b0 = _mm512_load_ps(b);
    const __m512 b1 = _mm512_load_ps(b + 16);
    const __m512 b2 = _mm512_load_ps(b + 32);
    const __m512 b3 = _mm512_load_ps(b + 48);
#pragma GCC unroll 6
    for (int i = 0; i < kMR; ++i) {
      const __m512 ai = _mm512_set1_ps(a[i]);
      acc[i][0] = _mm512_fmadd_ps(ai, b0, acc[i][0]);
      acc[i][1] = _mm512_fmadd_ps(ai, b1, acc[i][1]);
      acc[i][2] = _mm512_fmadd_ps(ai, b2, acc[i][2]);
      acc[i][3] = _mm512_fmadd_ps(ai, b3, acc[i][3]);
    }
    a += kMR;
    b += kNR;
  }
  const __m512 vb = _mm512_set1_ps(beta);
  if (mr == kMR && nr == kNR) {
#pragma GCC unroll 6
    for (int i = 0; i < kMR; ++i)
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) {
        float* cp = c + i * ldc + 16 * j;
        __m512 v = acc[i][j];
        if (beta == 1.f) {
          v = _mm512_add_ps(v, _mm512_loadu_ps(cp));
        } else if (beta != 0.f) {
          v = _mm512_fmadd_ps(vb, _mm512_loadu_ps(cp), v);
        }
        _mm512_storeu_ps(cp, v);
      }
    return;
  }
  __mmask16 mask[4];
  for (int j = 0; j < 4; ++j) {
    const int64_t v = nr - 16 * j;
    mask[j] = v >= 16 ? __mmask16(0xFFFF) : v <= 0 ? __mmask16(0) : __mmask16((1u << v) - 1u);
  }
#pragma GCC unroll 6
  for (int i = 0; i < kMR; ++i) {
    if (i >= mr) break;
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) {
      if (mask[j] == 0) continue;
      float* cp = c + i * ldc + 16 * j;
      __m512 v = acc[i][j];
      if (beta == 1.f) {
        v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask[j], cp));
      } else if (beta != 0.f) {
        v = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(mask[j], cp), v);
      }
      _mm512_mask_storeu_ps(cp, mask[j], v);
    }
  }
}

void scale_c(int64_t m, int64_t n, float beta, float* C, int64_t ldc) {
  for (int64_t i = 0; i < m; ++i) {
    float* c = C + i * ldc;
    if (beta == 0.f) {
      std::fill(c, c + n, 0.f);
    } else if (beta != 1.f) {
      for (int64_t j = 0; j < n; ++j) c[j] *= beta;
    }
  }
}

void gemm_serial(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const float* A, int64_t lda,
                 const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (k == 0) {
    scale_c(m, n, beta, C, ldc);
    return;
  }
  float* bp = b_buffer().get(kKC * round_up(std::min(n, kNC), kNR));
  float* ap = a_buffer().get(round_up(std::min(m, kMC), kMR) * kKC);
  for (int64_t jc = 0; jc < n; jc += kNC) {
    const int64_t nc = std::min(kNC, n - jc);
    for (int64_t pc = 0; pc < k; pc += kKC) {
      const int64_t kc = std::min(kKC, k - pc);
      const float bt = pc == 0 ? beta : 1.f;
      pack_b(tb, B, ldb, pc, kc, jc, nc, bp);
      for (int64_t ic = 0; ic < m; ic += kMC) {
        const int64_t mc = std::min(kMC, m - ic);
        pack_a(ta, A, lda, ic, mc, pc, kc, ap);
        for (int64_t jr = 0; jr < nc; jr += kNR) {
          const int64_t nr = std::min(kNR, nc - jr);
          for (int64_t ir = 0; ir < mc; ir += kMR) {
            micro_kernel(kc, ap + ir * kc, bp + jr * kc, C + (ic + ir) * ldc + jc + jr, ldc,
                         std::min(kMR, mc - ir), nr, bt);
          }
        }
      }
    }
  }
}

}  // namespace

bool sgemm_avx512_supported() {
  static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma");
  return ok;
}

bool sgemm_avx512(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const float* A, int64_t lda,
                  const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (!sgemm_avx512_supported()) return false;
  if (m <= 0 || n <= 0) return true;
  const int64_t threads = at::in_parallel_region() ? 1 : at::get_num_threads();
  // Below about 4 MFLOP a second thread costs more than it saves.
  if (threads <= 1 || m * n * k < (int64_t(1) << 21)) {
    gemm_serial(ta, tb, m, n, k, A, lda, B, ldb, beta, C, ldc);
    return true;
  }
  const int64_t col_panels = (n + kNR - 1) / kNR;
  if (col_panels >= threads) {
    // Split the columns of C (whole micro-panels) over the threads.
    at::parallel_for(0, col_panels, 1, [&](int64_t b, int64_t e) {
      const int64_t j0 = b * kNR, j1 = std::min(n, e * kNR);
      gemm_serial(ta, tb, m, j1 - j0, k, A, lda, tb ? B + j0 * ldb : B + j0, ldb, beta, C + j0, ldc);
    });
  } else {
    const int64_t row_panels = (m + kMR - 1) / kMR;
    at::parallel_for(0, row_panels, 1, [&](int64_t b, int64_t e) {
      const int64_t i0 = b * kMR, i1 = std::min(m, e * kMR);
      gemm_serial(ta, tb, i1 - i0, n, k, ta ? A + i0 : A + i0 * lda, lda, B, ldb, beta,
                  C + i0 * ldc, ldc);
    });
  }
  return true;
}

#else  // no AVX-512 kernel in this build

bool sgemm_avx512_supported() { return false; }

bool sgemm_avx512(bool, bool, int64_t, int64_t, int64_t, const float*, int64_t, const float*, int64_t,
                  float, float*, int64_t) {
  return false;
}

#endif

}  // namespace blocks
}  // namespace agd

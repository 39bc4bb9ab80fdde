// CPU kernel of agd::resample(Tensor x, int dim, Tensor idx, Tensor w) -> Tensor
//
//   out[..., j, ...] = sum_t w[j, t] * x[..., idx[j, t], ...]     (along dim)
//
// Conventions (shared with the reference in agd/ops/resampling.py):
// - idx is int64 (out, taps) with values in [0, x.size(dim)); w has idx's shape and x's dtype;
// - float32 and float64 accumulate in their own dtype; float16 and bfloat16 are computed in float32
//   and rounded once at the end;
// - the output is a new contiguous tensor shaped like x with size(dim) = out.
//
// x (made contiguous) is viewed as (outer, L, inner) around dim. Two schemes:
// - direct (inner large, e.g. the H pass of an NCHW image): one task per output row (o, j); the row
//   of `inner` elements is a sum of `taps` contiguous source rows, vectorized over inner and
//   accumulated in chunks that stay in L1;
// - packed (inner small, e.g. the W pass where inner = 1): a block of B outer slices is transposed
//   into a (L, lane) buffer with lane = B * inner <= kLane elements, so each output position is
//   `taps` multiply-adds of one contiguous lane held in registers; a tile of results is then
//   written back as one contiguous run per slice. Used while the buffer stays small
//   (L * 128 B <= 16 MiB); otherwise the direct scheme runs.
// Work is split with at::parallel_for (OpenMP threads when built with -fopenmp).

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu/simd.h"

#if defined(__GNUC__)
#define AGD_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define AGD_ALWAYS_INLINE inline
#endif

namespace agd {
namespace {

// Output elements of one row accumulated at a time by the direct scheme.
constexpr int64_t kChunk = 512;
// Bytes of one packed lane: 128 B = 32 floats or 16 doubles (several SIMD registers).
constexpr int64_t kLaneBytes = 128;
// Largest per-thread packing buffer (L * kLaneBytes); longer dims use the direct scheme.
constexpr int64_t kMaxPackBytes = 16 << 20;
// Output positions computed per tile by the packed scheme before they are written out.
constexpr int64_t kPositionTile = 128;
// Multiply-adds below which at::parallel_for does not split the work further.
constexpr int64_t kMinWorkPerTask = 1 << 15;

struct Geometry {
  int64_t outer;  // product of the sizes before dim
  int64_t L;      // x.size(dim)
  int64_t inner;  // product of the sizes after dim
  int64_t M;      // output positions along dim (idx.size(0))
  int64_t taps;   // idx.size(1)
};

// d[i] (=|+=) w0*s0[i] + ... + w{K-1}*s{K-1}[i]; K taps per pass over d halves the loads and
// stores of d compared with one tap per pass.
template <int K, bool kAssign, typename T>
AGD_ALWAYS_INLINE void fma_pass(T* __restrict d, const T* __restrict s0, const T* __restrict s1,
                     const T* __restrict s2, const T* __restrict s3, T w0, T w1, T w2, T w3,
                     int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    T v = w0 * s0[i];
    if constexpr (K > 1) v += w1 * s1[i];
    if constexpr (K > 2) v += w2 * s2[i];
    if constexpr (K > 3) v += w3 * s3[i];
    if constexpr (kAssign) {
      d[i] = v;
    } else {
      d[i] += v;
    }
  }
}

// One output chunk d[0:n] = sum over the taps of w[t] * (src + idx[t] * stride)[0:n].
template <typename T>
AGD_ALWAYS_INLINE void accumulate_row(T* d, const T* src, int64_t stride, const int64_t* ij, const T* wj,
                           int64_t taps, int64_t n) {
  if (taps == 0) {
    std::fill(d, d + n, T(0));
    return;
  }
  int64_t t = 0;
  bool first = true;
  for (; t + 4 <= taps; t += 4) {
    const T* s0 = src + ij[t] * stride;
    const T* s1 = src + ij[t + 1] * stride;
    const T* s2 = src + ij[t + 2] * stride;
    const T* s3 = src + ij[t + 3] * stride;
    if (first) {
      fma_pass<4, true>(d, s0, s1, s2, s3, wj[t], wj[t + 1], wj[t + 2], wj[t + 3], n);
      first = false;
    } else {
      fma_pass<4, false>(d, s0, s1, s2, s3, wj[t], wj[t + 1], wj[t + 2], wj[t + 3], n);
    }
  }
  const int64_t rest = taps - t;
  if (rest == 0) return;
  const T* s0 = src + ij[t] * stride;
  const T* s1 = rest > 1 ? src + ij[t + 1] * stride : s0;
  const T* s2 = rest > 2 ? src + ij[t + 2] * stride : s0;
  const T w1 = rest > 1 ? wj[t + 1] : T(0);
  const T w2 = rest > 2 ? wj[t + 2] : T(0);
  if (first) {
    if (rest == 1) fma_pass<1, true>(d, s0, s0, s0, s0, wj[t], w1, w2, T(0), n);
    if (rest == 2) fma_pass<2, true>(d, s0, s1, s0, s0, wj[t], w1, w2, T(0), n);
    if (rest == 3) fma_pass<3, true>(d, s0, s1, s2, s0, wj[t], w1, w2, T(0), n);
  } else {
    if (rest == 1) fma_pass<1, false>(d, s0, s0, s0, s0, wj[t], w1, w2, T(0), n);
    if (rest == 2) fma_pass<2, false>(d, s0, s1, s0, s0, wj[t], w1, w2, T(0), n);
    if (rest == 3) fma_pass<3, false>(d, s0, s1, s2, s0, wj[t], w1, w2, T(0), n);
  }
}

// Rows [begin, end) of the direct scheme: row r = (o, j) of out viewed as (outer * M, inner).
template <typename T>
AGD_ALWAYS_INLINE void direct_rows(const T* x, T* out, const int64_t* idx, const T* w,
                                   const Geometry& g, int64_t begin, int64_t end) {
  for (int64_t r = begin; r < end; ++r) {
    const int64_t o = r / g.M;
    const int64_t j = r - o * g.M;
    const T* xo = x + o * g.L * g.inner;
    T* dst = out + r * g.inner;
    for (int64_t c0 = 0; c0 < g.inner; c0 += kChunk) {
      const int64_t n = std::min(kChunk, g.inner - c0);
      accumulate_row(dst + c0, xo + c0, g.inner, idx + j * g.taps, w + j * g.taps, g.taps, n);
    }
  }
}

template <typename T>
constexpr int64_t lane_width() {
  return kLaneBytes / static_cast<int64_t>(sizeof(T));
}

// Outer slices per block of the packed scheme.
inline int64_t slices_per_block(int64_t lane, int64_t inner) {
  return std::max<int64_t>(1, lane / inner);
}

// Blocks [begin, end) of the packed scheme; buf holds L * kLane elements, obuf kPositionTile * kLane.
template <typename T>
AGD_ALWAYS_INLINE void packed_blocks(const T* x, T* out, const int64_t* idx, const T* w,
                                     const Geometry& g, int64_t begin, int64_t end, T* buf,
                                     T* obuf) {
  constexpr int64_t kLane = lane_width<T>();
  const int64_t B = slices_per_block(kLane, g.inner);
  for (int64_t blk = begin; blk < end; ++blk) {
    const int64_t o0 = blk * B;
    const int64_t nb = std::min(B, g.outer - o0);
    // pack: buf[l, b * inner + i] = x[o0 + b, l, i]. Lanes past nb * inner hold zeros or values of
    // an earlier block: they are computed but never stored.
    for (int64_t b = 0; b < nb; ++b) {
      const T* src = x + (o0 + b) * g.L * g.inner;
      T* col = buf + b * g.inner;
      if (g.inner == 1) {
        for (int64_t l = 0; l < g.L; ++l) col[l * kLane] = src[l];
      } else {
        for (int64_t l = 0; l < g.L; ++l)
          for (int64_t i = 0; i < g.inner; ++i) col[l * kLane + i] = src[l * g.inner + i];
      }
    }
    // compute a tile of output positions into obuf[j - j0, lane], then write each slice's
    // contiguous run out[o0 + b, j0:j1, :] (storing one lane per position would write nb rows
    // M * inner elements apart, which thrashes the cache sets)
    for (int64_t j0 = 0; j0 < g.M; j0 += kPositionTile) {
      const int64_t nj = std::min(kPositionTile, g.M - j0);
      for (int64_t jj = 0; jj < nj; ++jj) {
        const int64_t j = j0 + jj;
        accumulate_row(obuf + jj * kLane, buf, kLane, idx + j * g.taps, w + j * g.taps, g.taps,
                       kLane);
      }
      for (int64_t b = 0; b < nb; ++b) {
        T* dst = out + ((o0 + b) * g.M + j0) * g.inner;
        const T* src = obuf + b * g.inner;
        if (g.inner == 1) {
          for (int64_t jj = 0; jj < nj; ++jj) dst[jj] = src[jj * kLane];
        } else {
          for (int64_t jj = 0; jj < nj; ++jj)
            for (int64_t i = 0; i < g.inner; ++i) dst[jj * g.inner + i] = src[jj * kLane + i];
        }
      }
    }
  }
}

// Non-template entry points compiled once per instruction set (see AGD_SIMD_CLONES).
AGD_SIMD_CLONES void direct_rows_f32(const float* x, float* out, const int64_t* idx,
                                     const float* w, const Geometry& g, int64_t begin,
                                     int64_t end) {
  direct_rows<float>(x, out, idx, w, g, begin, end);
}
AGD_SIMD_CLONES void direct_rows_f64(const double* x, double* out, const int64_t* idx,
                                     const double* w, const Geometry& g, int64_t begin,
                                     int64_t end) {
  direct_rows<double>(x, out, idx, w, g, begin, end);
}
AGD_SIMD_CLONES void packed_blocks_f32(const float* x, float* out, const int64_t* idx,
                                       const float* w, const Geometry& g, int64_t begin,
                                       int64_t end, float* buf, float* obuf) {
  packed_blocks<float>(x, out, idx, w, g, begin, end, buf, obuf);
}
AGD_SIMD_CLONES void packed_blocks_f64(const double* x, double* out, const int64_t* idx,
                                       const double* w, const Geometry& g, int64_t begin,
                                       int64_t end, double* buf, double* obuf) {
  packed_blocks<double>(x, out, idx, w, g, begin, end, buf, obuf);
}

inline void run_direct(const float* x, float* out, const int64_t* idx, const float* w,
                       const Geometry& g, int64_t b, int64_t e) {
  direct_rows_f32(x, out, idx, w, g, b, e);
}
inline void run_direct(const double* x, double* out, const int64_t* idx, const double* w,
                       const Geometry& g, int64_t b, int64_t e) {
  direct_rows_f64(x, out, idx, w, g, b, e);
}
inline void run_packed(const float* x, float* out, const int64_t* idx, const float* w,
                       const Geometry& g, int64_t b, int64_t e, float* buf, float* obuf) {
  packed_blocks_f32(x, out, idx, w, g, b, e, buf, obuf);
}
inline void run_packed(const double* x, double* out, const int64_t* idx, const double* w,
                       const Geometry& g, int64_t b, int64_t e, double* buf, double* obuf) {
  packed_blocks_f64(x, out, idx, w, g, b, e, buf, obuf);
}

template <typename T>
void resample_kernel(const at::Tensor& x, at::Tensor& out, const at::Tensor& idx,
                     const at::Tensor& w, const Geometry& g) {
  const T* px = x.const_data_ptr<T>();
  T* po = out.mutable_data_ptr<T>();
  const int64_t* pi = idx.const_data_ptr<int64_t>();
  const T* pw = w.const_data_ptr<T>();
  constexpr int64_t kLane = lane_width<T>();
  const int64_t taps = std::max<int64_t>(1, g.taps);
  // The packed scheme pays off when a lane holds at least two slices and one block is full.
  if (g.inner * 2 <= kLane && g.outer >= slices_per_block(kLane, g.inner) &&
      g.L * kLaneBytes <= kMaxPackBytes) {
    const int64_t blocks = (g.outer + slices_per_block(kLane, g.inner) - 1) /
                           slices_per_block(kLane, g.inner);
    const int64_t grain = std::max<int64_t>(1, kMinWorkPerTask / (kLane * (g.L + g.M * taps)));
    at::parallel_for(0, blocks, grain, [&](int64_t begin, int64_t end) {
      std::vector<T> buf(static_cast<size_t>(g.L * kLane), T(0));
      std::vector<T> obuf(static_cast<size_t>(kPositionTile * kLane), T(0));
      run_packed(px, po, pi, pw, g, begin, end, buf.data(), obuf.data());
    });
  } else {
    const int64_t grain = std::max<int64_t>(1, kMinWorkPerTask / std::max<int64_t>(1, g.inner * taps));
    at::parallel_for(0, g.outer * g.M, grain, [&](int64_t begin, int64_t end) {
      run_direct(px, po, pi, pw, g, begin, end);
    });
  }
}

bool supported_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

at::Tensor resample_cpu(const at::Tensor& x, int64_t dim, const at::Tensor& idx,
                        const at::Tensor& w) {
  TORCH_CHECK_TYPE(supported_dtype(x.scalar_type()),
                   "agd::resample: x must be a floating-point tensor (float16, bfloat16, float32, "
                   "float64), got ", x.scalar_type());
  TORCH_CHECK_VALUE(x.dim() >= 1, "agd::resample: x must have at least one dimension");
  const int64_t nd = x.dim();
  TORCH_CHECK_INDEX(dim >= -nd && dim < nd, "agd::resample: dim ", dim,
                    " is out of range for x with ", nd, " dimensions");
  const int64_t d = dim < 0 ? dim + nd : dim;
  TORCH_CHECK_TYPE(idx.scalar_type() == at::kLong, "agd::resample: idx must be int64, got ",
                   idx.scalar_type());
  TORCH_CHECK_VALUE(idx.dim() == 2, "agd::resample: idx must be 2-D (out, taps), got shape ",
                    idx.sizes());
  TORCH_CHECK_TYPE(w.scalar_type() == x.scalar_type(), "agd::resample: w must have x's dtype ",
                   x.scalar_type(), ", got ", w.scalar_type());
  TORCH_CHECK_VALUE(w.sizes() == idx.sizes(), "agd::resample: w must have idx's shape ",
                    idx.sizes(), ", got ", w.sizes());
  TORCH_CHECK_VALUE(idx.device() == x.device() && w.device() == x.device(),
                    "agd::resample: idx and w must be on x's device ", x.device(), ", got idx on ",
                    idx.device(), ", w on ", w.device());

  const at::Tensor idx_c = idx.contiguous();
  const int64_t L = x.size(d);
  const int64_t M = idx_c.size(0);
  const int64_t taps = idx_c.size(1);
  {
    const int64_t* p = idx_c.const_data_ptr<int64_t>();
    const int64_t n = idx_c.numel();
    for (int64_t k = 0; k < n; ++k) {
      TORCH_CHECK_INDEX(p[k] >= 0 && p[k] < L, "agd::resample: idx values must lie in [0, ", L,
                        ") (x.shape[", d, "]), found ", p[k], " at idx[", k / taps, ", ",
                        k % taps, "]");
    }
  }

  const at::ScalarType compute =
      (x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16) ? at::kFloat
                                                                           : x.scalar_type();
  const at::Tensor xc = x.to(compute).contiguous();
  const at::Tensor wc = w.to(compute).contiguous();
  std::vector<int64_t> out_sizes(x.sizes().begin(), x.sizes().end());
  out_sizes[d] = M;
  at::Tensor out = at::empty(out_sizes, xc.options());
  if (out.numel() > 0) {
    Geometry g{1, L, 1, M, taps};
    for (int64_t k = 0; k < d; ++k) g.outer *= x.size(k);
    for (int64_t k = d + 1; k < nd; ++k) g.inner *= x.size(k);
    AT_DISPATCH_FLOATING_TYPES(compute, "agd::resample", [&] {
      resample_kernel<scalar_t>(xc, out, idx_c, wc, g);
    });
  }
  return compute == x.scalar_type() ? out : out.to(x.scalar_type());
}

}  // namespace
}  // namespace agd

TORCH_LIBRARY_IMPL(agd, CPU, m) {
  m.impl("resample", &agd::resample_cpu);
}

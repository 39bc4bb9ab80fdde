// CPU kernel of agd::conv_narrow (agd/ops/fused.py, conv_narrow): a K x K convolution, stride 1,
// dilation 1, "same" padding (K // 2, zeros or reflect), with few output channels (1 to 4), then
// bias and activation, for inference:
//   out[n, o, h, w] = act(b[o] + sum_{c, i, j} W[o, c, i, j] * xpad[n, c, h + i, w + j])
// Generators end in such a layer (the translation head, 7x7 to RGB at full resolution; the SR
// space's conv_last, 3x3 to RGB at the high resolution). oneDNN and im2col GEMMs reach a small
// fraction of the machine's speed there, because a GEMM with 3 output rows cannot use a register
// tile. This kernel vectorizes along the image row instead: one task per (image, 8 output rows) keeps
// those rows of the C_out outputs in a small accumulator, and for every input channel builds the
// K + 7 padded source rows once (padding applied while copying, so the input is never padded as a
// whole) and adds K * K * C_out row AXPYs per output row into the accumulators, a chunk of the row
// at a time so the partial sums stay in registers. float32 and float64 (for tests); NCHW (other layouts are made contiguous).

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstring>
#include <vector>

#include "cpu/blocks_common.h"

namespace agd {
namespace {

constexpr int64_t kMaxOut = 4;
constexpr int kChunkBytes = 128;  // accumulator bytes per output kept in registers: 2 zmm / 4 ymm
template <typename T>
constexpr int64_t chunk_of() { return kChunkBytes / sizeof(T); }

// Copy image row `r` of one channel plane (H x W) into dst[0 .. W + 2p), padded by p on both sides;
// rows outside the image are reflected or zero.
template <typename T>
void padded_row(const T* plane, int64_t H, int64_t W, int64_t r, int64_t p, bool reflect, T* dst) {
  if (r < 0 || r >= H) {
    if (!reflect) {
      std::fill(dst, dst + W + 2 * p, T(0));
      return;
    }
    r = r < 0 ? -r : 2 * (H - 1) - r;
  }
  const T* src = plane + r * W;
  std::memcpy(dst + p, src, sizeof(T) * W);
  for (int64_t j = 1; j <= p; ++j) {
    dst[p - j] = reflect ? src[j] : T(0);
    dst[p + W - 1 + j] = reflect ? src[W - 1 - j] : T(0);
  }
}

// acc[o][w0 + c] += sum_{i, j} wk[o][i][j] * rows[i][w0 + c + j] for c < n (n <= kChunk), where
// wk[o] = this channel's K x K weights of output o (stride cs between outputs). KT > 0: K is a
// compile-time constant (the loops unroll; 1, 3, 5, 7); KT == 0: any K at run time. The partial sums
// are GCC vectors of 64 bytes (one zmm, two ymm or four xmm, whichever the clone targets).
template <typename T>
struct Vec64 {
  typedef T type __attribute__((vector_size(64)));
  static constexpr int kLanes = 64 / sizeof(T);
};

template <typename T, int NO, int KT>
AGD_SIMD_CLONES void accumulate_chunk(const T* const* rows, const T* __restrict wk, int64_t cs, int64_t k_rt,
                                       T* __restrict acc, int64_t accs, int64_t w0, int64_t n) {
  using V = typename Vec64<T>::type;
  constexpr int L = Vec64<T>::kLanes;
  constexpr int NV = kChunkBytes / 64;
  const int64_t K = KT > 0 ? KT : k_rt;
  V a[NO][NV];
  for (int o = 0; o < NO; ++o) {
    T tmp[NV * L] = {};
    std::memcpy(tmp, acc + o * accs + w0, sizeof(T) * n);
    for (int v = 0; v < NV; ++v) std::memcpy(&a[o][v], tmp + v * L, sizeof(V));
  }
  for (int64_t i = 0; i < K; ++i) {
    const T* r = rows[i] + w0;
    for (int64_t j = 0; j < K; ++j) {
      V xv[NV];
      for (int v = 0; v < NV; ++v) std::memcpy(&xv[v], r + j + v * L, sizeof(V));
      for (int o = 0; o < NO; ++o) {
        const T wv = wk[o * cs + i * K + j];
        for (int v = 0; v < NV; ++v) a[o][v] += wv * xv[v];
      }
    }
  }
  for (int o = 0; o < NO; ++o) {
    T tmp[NV * L];
    for (int v = 0; v < NV; ++v) std::memcpy(tmp + v * L, &a[o][v], sizeof(V));
    std::memcpy(acc + o * accs + w0, tmp, sizeof(T) * n);
  }
}

template <typename T, int NO>
void accumulate_chunk_k(const T* const* rows, const T* wk, int64_t cs, int64_t K, T* acc, int64_t accs, int64_t w0,
                        int64_t n) {
  switch (K) {
    case 1: accumulate_chunk<T, NO, 1>(rows, wk, cs, K, acc, accs, w0, n); break;
    case 3: accumulate_chunk<T, NO, 3>(rows, wk, cs, K, acc, accs, w0, n); break;
    case 5: accumulate_chunk<T, NO, 5>(rows, wk, cs, K, acc, accs, w0, n); break;
    case 7: accumulate_chunk<T, NO, 7>(rows, wk, cs, K, acc, accs, w0, n); break;
    default: accumulate_chunk<T, NO, 0>(rows, wk, cs, K, acc, accs, w0, n); break;
  }
}

// Output rows [h0, h0 + R) of one image: for each input channel the R + K - 1 padded source rows
// are built once and serve all R output rows (each source row is copied (R + K - 1) / R times, not K).
template <typename T, int NO>
void conv_rows(const T* xn, const T* w, const T* b, int64_t C, int64_t H, int64_t W, int64_t K, int64_t h0,
               int64_t R, bool reflect, int64_t act, T slope, T* on, std::vector<T>& rowbuf, std::vector<T>& acc) {
  const int64_t p = K / 2, Wp = W + 2 * p, nsrc = R + K - 1;
  // rows are read up to kChunk - 1 + K - 1 past a chunk start: pad the buffer's tail
  constexpr int64_t kChunk = chunk_of<T>();
  const int64_t stride = Wp + kChunk;
  rowbuf.assign(static_cast<size_t>(nsrc * stride), T(0));
  acc.assign(static_cast<size_t>(NO * R * W), T(0));
  std::vector<const T*> rows(static_cast<size_t>(nsrc));
  for (int64_t i = 0; i < nsrc; ++i) rows[i] = rowbuf.data() + i * stride;
  const int64_t cs = C * K * K;
  for (int64_t c = 0; c < C; ++c) {
    const T* plane = xn + c * H * W;
    for (int64_t i = 0; i < nsrc; ++i)
      padded_row<T>(plane, H, W, h0 + i - p, p, reflect, rowbuf.data() + i * stride);
    for (int64_t r = 0; r < R; ++r)
      for (int64_t w0 = 0; w0 < W; w0 += kChunk)
        accumulate_chunk_k<T, NO>(rows.data() + r, w + c * K * K, cs, K, acc.data() + r * W, R * W, w0,
                                  std::min(kChunk, W - w0));
  }
  for (int o = 0; o < NO; ++o)
    for (int64_t r = 0; r < R; ++r) {
      T* dst = on + o * H * W + (h0 + r) * W;
      std::memcpy(dst, acc.data() + (o * R + r) * W, sizeof(T) * W);
      blocks::affine_act<T>(dst, W, T(1), b ? b[o] : T(0), act, slope);
    }
}

constexpr int64_t kRowsPerTask = 8;

template <typename T, int NO>
void conv_narrow_impl(const at::Tensor& x, const at::Tensor& w, const T* b, int64_t K, bool reflect, int64_t act,
                      double slope, at::Tensor& out) {
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t blocks_per_image = (H + kRowsPerTask - 1) / kRowsPerTask;
  const T* xp = x.data_ptr<T>();
  const T* wp = w.data_ptr<T>();
  T* op = out.data_ptr<T>();
  at::parallel_for(0, N * blocks_per_image, 1, [&](int64_t lo, int64_t hi) {
    std::vector<T> rowbuf, acc;
    for (int64_t t = lo; t < hi; ++t) {
      const int64_t n = t / blocks_per_image, h0 = (t % blocks_per_image) * kRowsPerTask;
      conv_rows<T, NO>(xp + n * C * H * W, wp, b, C, H, W, K, h0, std::min(kRowsPerTask, H - h0), reflect, act,
                       T(slope), op + n * NO * H * W, rowbuf, acc);
    }
  });
}

at::Tensor conv_narrow_cpu(const at::Tensor& x_in, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                           bool reflect, int64_t act, double slope) {
  TORCH_CHECK(x_in.dim() == 4 && weight.dim() == 4, "agd::conv_narrow: x and weight must be 4-D");
  const auto t = x_in.scalar_type();
  TORCH_CHECK(t == at::kFloat || t == at::kDouble, "agd::conv_narrow (CPU): x must be float32 or float64, got ", t);
  const int64_t C = x_in.size(1), H = x_in.size(2), W = x_in.size(3), O = weight.size(0), K = weight.size(2);
  TORCH_CHECK(O >= 1 && O <= kMaxOut, "agd::conv_narrow: 1 to ", kMaxOut, " output channels, got ", O);
  TORCH_CHECK(weight.size(1) == C && weight.size(3) == K && K % 2 == 1,
              "agd::conv_narrow: weight must be (C_out, ", C, ", K, K) with K odd, got ", weight.sizes());
  TORCH_CHECK(!reflect || (H > K / 2 && W > K / 2), "agd::conv_narrow: reflect padding ", K / 2,
              " needs H and W > ", K / 2, ", got ", H, "x", W);
  const at::Tensor x = x_in.contiguous();
  const at::Tensor w = weight.to(t).contiguous();
  at::Tensor b;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->numel() == O, "agd::conv_narrow: bias must have ", O, " elements");
    b = bias->to(t).contiguous();
  }
  at::Tensor out = at::empty({x.size(0), O, H, W}, x.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(t, "agd::conv_narrow", [&] {
    const scalar_t* bp = b.defined() ? b.data_ptr<scalar_t>() : nullptr;
    switch (O) {
      case 1: conv_narrow_impl<scalar_t, 1>(x, w, bp, K, reflect, act, slope, out); break;
      case 2: conv_narrow_impl<scalar_t, 2>(x, w, bp, K, reflect, act, slope, out); break;
      case 3: conv_narrow_impl<scalar_t, 3>(x, w, bp, K, reflect, act, slope, out); break;
      default: conv_narrow_impl<scalar_t, 4>(x, w, bp, K, reflect, act, slope, out); break;
    }
  });
  return out;
}

}  // namespace
}  // namespace agd

TORCH_LIBRARY_IMPL(agd, CPU, m) {
  m.impl("conv_narrow", &agd::conv_narrow_cpu);
}

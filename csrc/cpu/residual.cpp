// CPU kernels of the fused residual epilogue (agd/ops/blocks.py, norm_act_residual):
//   z   = norm ? (y - mean[n,c]) * rstd[n,c] : y        (instance norm: statistics over H x W)
//   out = act(z * weight[c] + bias[c] + shortcut)       (weight/bias/shortcut optional)
// Forward returns (out, mean, rstd), mean/rstd float32-or-input-dtype (N, C) (empty when norm is off).
// One task per (n, c) plane: statistics in two passes over the plane (mean, then centred sum of
// squares; blocks of 1024 values summed in T, the blocks in double), then one fused pass writing out. Backward per plane:
//   g   = grad * act'(out)         (from the output: relu, leaky relu, tanh are monotone)
//   gs  = g,  gb[c] = sum g,  gw[c] = sum g * z,  gz = g * weight[c]
//   gy  = rstd * (gz - mean(gz) - z * mean(gz * z))    (norm on; gy = gz otherwise)
// Forward on a channels-last y (C > 1) runs in NHWC and returns a channels-last `out`: the statistics
// are per-channel vectors accumulated over pixel blocks (each thread its own partial sums, two passes:
// mean, then centred squares), and the apply pass is one loop over C per pixel. Other layouts, and
// the backward, are made NCHW-contiguous first. float32 and float64.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "cpu/blocks_common.h"

namespace agd {
namespace {

using blocks::activate_grad_from_out;

// Sum of y[i] (center null) or (y[i] - *center)^2 over L values, in double: sixteen T accumulators
// (independent, so the loop vectorizes without -ffast-math) over blocks of 1024 values, each block
// added to the double total. A single running float sum over a 256 x 256 plane loses about 1e-4.
template <typename T>
AGD_SIMD_CLONES double plane_sum(const T* __restrict y, int64_t L, const T* center) {
  constexpr int kLanes = 16;
  constexpr int64_t kBlock = 1024;
  const bool sq = center != nullptr;
  const T c = sq ? *center : T(0);
  double total = 0;
  for (int64_t b = 0; b < L; b += kBlock) {
    const int64_t e = std::min(L, b + kBlock);
    T acc[kLanes] = {};
    int64_t i = b;
    if (sq) {
      for (; i + kLanes <= e; i += kLanes)
        for (int j = 0; j < kLanes; ++j) {
          const T d = y[i + j] - c;
          acc[j] += d * d;
        }
      for (; i < e; ++i) acc[0] += (y[i] - c) * (y[i] - c);
    } else {
      for (; i + kLanes <= e; i += kLanes)
        for (int j = 0; j < kLanes; ++j) acc[j] += y[i + j];
      for (; i < e; ++i) acc[0] += y[i];
    }
    for (int j = 0; j < kLanes; ++j) total += static_cast<double>(acc[j]);
  }
  return total;
}

template <typename T>
void plane_stats(const T* __restrict y, int64_t L, double eps, T& mean_out, T& rstd_out) {
  const double mean = plane_sum<T>(y, L, nullptr) / static_cast<double>(L);
  const T m = static_cast<T>(mean);
  const double var = plane_sum<T>(y, L, &m) / static_cast<double>(L);
  mean_out = m;
  rstd_out = static_cast<T>(1.0 / std::sqrt(var + eps));
}

template <typename T>
AGD_SIMD_CLONES void plane_apply(const T* __restrict y, const T* __restrict s, T* __restrict o,
                                  int64_t L, T a, T b, int64_t act, T slope) {
  // one loop per activation so each vectorizes (a switch inside the loop keeps it scalar)
#define AGD_PLANE_LOOP(EXPR)                                                        \
  if (s != nullptr) {                                                               \
    for (int64_t i = 0; i < L; ++i) { const T v = y[i] * a + b + s[i]; o[i] = EXPR; } \
  } else {                                                                          \
    for (int64_t i = 0; i < L; ++i) { const T v = y[i] * a + b; o[i] = EXPR; }        \
  }
  switch (act) {
    case blocks::kRelu: AGD_PLANE_LOOP(std::max(v, T(0))) break;
    case blocks::kLeaky: AGD_PLANE_LOOP(blocks::leaky(v, slope)) break;
    case blocks::kTanh: AGD_PLANE_LOOP(std::tanh(v)) break;
    default: AGD_PLANE_LOOP(v) break;
  }
#undef AGD_PLANE_LOOP
}

// NHWC: acc[c] += y[r, c] (center null) or (y[r, c] - center[c])^2, over `rows` pixels.
template <typename T>
AGD_SIMD_CLONES void nhwc_rows_sum(const T* __restrict y, int64_t rows, int64_t C,
                                    const T* __restrict center, T* __restrict acc) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* p = y + r * C;
    if (center == nullptr) {
      for (int64_t c = 0; c < C; ++c) acc[c] += p[c];
    } else {
      for (int64_t c = 0; c < C; ++c) {
        const T d = p[c] - center[c];
        acc[c] += d * d;
      }
    }
  }
}

// NHWC: o[r, c] = act(y[r, c] * a[c] + b[c] (+ s[r, c])) over `rows` pixels.
template <typename T>
AGD_SIMD_CLONES void nhwc_apply(const T* __restrict y, const T* __restrict s, T* __restrict o,
                                 int64_t rows, int64_t C, const T* __restrict a,
                                 const T* __restrict b, int64_t act, T slope) {
#define AGD_NHWC_LOOP(EXPR)                                                    \
  for (int64_t r = 0; r < rows; ++r) {                                         \
    const T* yp = y + r * C;                                                   \
    const T* sp = s != nullptr ? s + r * C : nullptr;                          \
    T* op = o + r * C;                                                         \
    if (sp != nullptr) {                                                       \
      for (int64_t c = 0; c < C; ++c) { const T v = yp[c] * a[c] + b[c] + sp[c]; op[c] = EXPR; } \
    } else {                                                                   \
      for (int64_t c = 0; c < C; ++c) { const T v = yp[c] * a[c] + b[c]; op[c] = EXPR; } \
    }                                                                          \
  }
  switch (act) {
    case blocks::kRelu: AGD_NHWC_LOOP(std::max(v, T(0))) break;
    case blocks::kLeaky: AGD_NHWC_LOOP(blocks::leaky(v, slope)) break;
    case blocks::kTanh: AGD_NHWC_LOOP(std::tanh(v)) break;
    default: AGD_NHWC_LOOP(v) break;
  }
#undef AGD_NHWC_LOOP
}

// Per-channel sums over the pixels of image n (NHWC, L pixels), in double: each thread sums blocks
// of kBlock pixels in T, then adds them to its own double partials.
template <typename T>
std::vector<double> nhwc_channel_sums(const T* yn, int64_t L, int64_t C, const T* center) {
  constexpr int64_t kBlock = 64;
  const int64_t nthreads = at::get_num_threads();
  std::vector<double> part(static_cast<size_t>(nthreads * C), 0.0);
  const int64_t blocks = (L + kBlock - 1) / kBlock;
  at::parallel_for(0, blocks, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, C * kBlock)),
                   [&](int64_t b0, int64_t b1) {
    double* mine = part.data() + at::get_thread_num() * C;
    std::vector<T> acc(static_cast<size_t>(C));
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t r0 = blk * kBlock, rows = std::min(kBlock, L - r0);
      std::fill(acc.begin(), acc.end(), T(0));
      nhwc_rows_sum<T>(yn + r0 * C, rows, C, center, acc.data());
      for (int64_t c = 0; c < C; ++c) mine[c] += static_cast<double>(acc[c]);
    }
  });
  std::vector<double> sums(static_cast<size_t>(C), 0.0);
  for (int64_t t = 0; t < nthreads; ++t)
    for (int64_t c = 0; c < C; ++c) sums[c] += part[t * C + c];
  return sums;
}

// The forward on channels-last y: same results as the NCHW path, out channels-last.
template <typename T>
void norm_act_residual_nhwc(const at::Tensor& y, const at::Tensor& s, const at::Tensor& w,
                            const at::Tensor& b, at::Tensor& out, at::Tensor& mean,
                            at::Tensor& rstd, bool norm, int64_t act, double slope, double eps) {
  const int64_t N = y.size(0), C = y.size(1), L = y.size(2) * y.size(3);
  const T* yp = y.data_ptr<T>();
  const T* sp = s.defined() ? s.data_ptr<T>() : nullptr;
  const T* wp = w.defined() ? w.data_ptr<T>() : nullptr;
  const T* bp = b.defined() ? b.data_ptr<T>() : nullptr;
  T* op = out.data_ptr<T>();
  std::vector<T> a(static_cast<size_t>(C)), sh(static_cast<size_t>(C)), m(static_cast<size_t>(C));
  for (int64_t n = 0; n < N; ++n) {
    const T* yn = yp + n * L * C;
    for (int64_t c = 0; c < C; ++c) {
      a[c] = wp ? wp[c] : T(1);
      sh[c] = bp ? bp[c] : T(0);
    }
    if (norm) {
      const std::vector<double> s1 = nhwc_channel_sums<T>(yn, L, C, nullptr);
      for (int64_t c = 0; c < C; ++c) m[c] = static_cast<T>(s1[c] / static_cast<double>(L));
      const std::vector<double> s2 = nhwc_channel_sums<T>(yn, L, C, m.data());
      T* mp = mean.data_ptr<T>() + n * C;
      T* rp = rstd.data_ptr<T>() + n * C;
      for (int64_t c = 0; c < C; ++c) {
        const T r = static_cast<T>(1.0 / std::sqrt(s2[c] / static_cast<double>(L) + eps));
        mp[c] = m[c];
        rp[c] = r;
        sh[c] = sh[c] - m[c] * r * a[c];
        a[c] = a[c] * r;
      }
    }
    const int64_t grain = std::max<int64_t>(1, 8192 / std::max<int64_t>(1, C));
    at::parallel_for(0, L, grain, [&](int64_t r0, int64_t r1) {
      nhwc_apply<T>(yn + r0 * C, sp ? sp + (n * L + r0) * C : nullptr, op + (n * L + r0) * C,
                    r1 - r0, C, a.data(), sh.data(), act, static_cast<T>(slope));
    });
  }
}

at::Tensor opt_contig(const c10::optional<at::Tensor>& t, at::ScalarType ct) {
  return t.has_value() && t->defined() ? t->to(ct).contiguous() : at::Tensor();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> norm_act_residual_cpu(
    const at::Tensor& y_in, const c10::optional<at::Tensor>& shortcut,
    const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias, bool norm,
    int64_t act, double slope, double eps) {
  TORCH_CHECK(y_in.dim() == 4, "agd::norm_act_residual: y must be 4-D, got ", y_in.dim(), "-D");
  TORCH_CHECK(act >= 0 && act <= 3, "agd::norm_act_residual: act code ", act, " is not 0..3");
  const auto t = y_in.scalar_type();
  TORCH_CHECK(at::isFloatingType(t), "agd::norm_act_residual: y must be floating point");
  const auto ct = (t == at::kHalf || t == at::kBFloat16) ? at::kFloat : t;
  const bool nhwc = y_in.size(1) > 1 && y_in.is_contiguous(at::MemoryFormat::ChannelsLast);
  const auto fmt = nhwc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const at::Tensor y = y_in.to(ct).contiguous(fmt);
  const at::Tensor s = shortcut.has_value() && shortcut->defined() ? shortcut->to(ct).contiguous(fmt)
                                                                   : at::Tensor();
  const at::Tensor w = opt_contig(weight, ct), b = opt_contig(bias, ct);
  const int64_t N = y.size(0), C = y.size(1), L = y.size(2) * y.size(3);
  if (s.defined())
    TORCH_CHECK(s.sizes() == y.sizes(), "agd::norm_act_residual: shortcut ", s.sizes(),
                " must have y's shape ", y.sizes());
  if (w.defined()) TORCH_CHECK(w.numel() == C, "agd::norm_act_residual: weight needs ", C, " values");
  if (b.defined()) TORCH_CHECK(b.numel() == C, "agd::norm_act_residual: bias needs ", C, " values");
  at::Tensor out = at::empty_like(y, fmt);
  at::Tensor mean = at::empty({norm ? N : 0, norm ? C : 0}, y.options());
  at::Tensor rstd = at::empty({norm ? N : 0, norm ? C : 0}, y.options());
  if (y.numel() == 0) return {out.to(t), mean, rstd};  // statistics stay in the compute type
  if (nhwc) {
    AT_DISPATCH_FLOATING_TYPES(ct, "agd::norm_act_residual", [&] {
      norm_act_residual_nhwc<scalar_t>(y, s, w, b, out, mean, rstd, norm, act, slope, eps);
    });
    return {out.to(t), mean, rstd};  // statistics stay in the compute type
  }
  AT_DISPATCH_FLOATING_TYPES(ct, "agd::norm_act_residual", [&] {
    const scalar_t* yp = y.data_ptr<scalar_t>();
    const scalar_t* sp = s.defined() ? s.data_ptr<scalar_t>() : nullptr;
    const scalar_t* wp = w.defined() ? w.data_ptr<scalar_t>() : nullptr;
    const scalar_t* bp = b.defined() ? b.data_ptr<scalar_t>() : nullptr;
    scalar_t* op = out.data_ptr<scalar_t>();
    scalar_t* mp = norm ? mean.data_ptr<scalar_t>() : nullptr;
    scalar_t* rp = norm ? rstd.data_ptr<scalar_t>() : nullptr;
    const int64_t grain = std::max<int64_t>(1, 8192 / L);
    at::parallel_for(0, N * C, grain, [&](int64_t beg, int64_t end) {
      for (int64_t p = beg; p < end; ++p) {
        const int64_t c = p % C;
        scalar_t a = wp ? wp[c] : scalar_t(1);
        scalar_t sh = bp ? bp[c] : scalar_t(0);
        if (norm) {
          scalar_t m, r;
          plane_stats(yp + p * L, L, eps, m, r);
          mp[p] = m;
          rp[p] = r;
          sh = sh - m * r * a;
          a = a * r;
        }
        plane_apply(yp + p * L, sp ? sp + p * L : nullptr, op + p * L, L, a, sh, act,
                    static_cast<scalar_t>(slope));
      }
    });
  });
  return {out.to(t), mean, rstd};  // statistics stay in the compute type
}

template <typename T>
AGD_SIMD_CLONES void plane_backward(const T* __restrict g, const T* __restrict y,
                                     const T* __restrict o, T* __restrict gy, T* __restrict gs,
                                     int64_t L, bool norm, T m, T r, T wc, int64_t act, T slope,
                                     double& sum_g, double& sum_gz) {
  // pass 1: g_pre (into gs when there is a shortcut, else into gy as scratch), sums
  T* gp = gs != nullptr ? gs : gy;
  T acc_g = 0, acc_gz = 0;
  for (int64_t i = 0; i < L; ++i) {
    const T v = g[i] * activate_grad_from_out(o[i], act, slope);
    gp[i] = v;
    acc_g += v;
    acc_gz += v * (norm ? (y[i] - m) * r : y[i]);
  }
  sum_g = static_cast<double>(acc_g);
  sum_gz = static_cast<double>(acc_gz);
  if (!norm) {
    if (gp != gy)
      for (int64_t i = 0; i < L; ++i) gy[i] = gp[i] * wc;
    else
      for (int64_t i = 0; i < L; ++i) gy[i] *= wc;
    return;
  }
  // gz = g_pre * wc; mean(gz) = wc * sum_g / L; mean(gz * z) = wc * sum_gz / L
  const T mg = static_cast<T>(static_cast<double>(wc) * sum_g / static_cast<double>(L));
  const T mgz = static_cast<T>(static_cast<double>(wc) * sum_gz / static_cast<double>(L));
  for (int64_t i = 0; i < L; ++i) {
    const T z = (y[i] - m) * r;
    gy[i] = r * (gp[i] * wc - mg - z * mgz);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> norm_act_residual_backward_cpu(
    const at::Tensor& grad_in, const at::Tensor& y_in, const at::Tensor& out_in,
    const at::Tensor& mean_in, const at::Tensor& rstd_in, const c10::optional<at::Tensor>& weight,
    bool norm, int64_t act, double slope, bool has_shortcut, bool has_bias) {
  const auto t = y_in.scalar_type();
  const auto ct = (t == at::kHalf || t == at::kBFloat16) ? at::kFloat : t;
  const at::Tensor g = grad_in.to(ct).contiguous(), y = y_in.to(ct).contiguous();
  const at::Tensor o = out_in.to(ct).contiguous();
  const at::Tensor mean = mean_in.to(ct).contiguous(), rstd = rstd_in.to(ct).contiguous();
  const at::Tensor w = opt_contig(weight, ct);
  const int64_t N = y.size(0), C = y.size(1), L = y.size(2) * y.size(3);
  if (norm)
    TORCH_CHECK(mean.numel() == N * C && rstd.numel() == N * C,
                "agd::norm_act_residual_backward: mean/rstd must hold N*C values");
  at::Tensor gy = at::empty_like(y);
  at::Tensor gs = has_shortcut ? at::empty_like(y) : at::empty({0}, y.options());
  at::Tensor sums = at::zeros({N, C, 2}, y.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES(ct, "agd::norm_act_residual_backward", [&] {
    const scalar_t* gp = g.data_ptr<scalar_t>();
    const scalar_t* yp = y.data_ptr<scalar_t>();
    const scalar_t* opp = o.data_ptr<scalar_t>();
    const scalar_t* mp = norm ? mean.data_ptr<scalar_t>() : nullptr;
    const scalar_t* rp = norm ? rstd.data_ptr<scalar_t>() : nullptr;
    const scalar_t* wp = w.defined() ? w.data_ptr<scalar_t>() : nullptr;
    scalar_t* gyp = gy.data_ptr<scalar_t>();
    scalar_t* gsp = has_shortcut ? gs.data_ptr<scalar_t>() : nullptr;
    double* sp = sums.data_ptr<double>();
    const int64_t grain = std::max<int64_t>(1, 8192 / std::max<int64_t>(1, L));
    at::parallel_for(0, N * C, grain, [&](int64_t beg, int64_t end) {
      for (int64_t p = beg; p < end; ++p) {
        const int64_t c = p % C;
        plane_backward(gp + p * L, yp + p * L, opp + p * L, gyp + p * L,
                       gsp ? gsp + p * L : nullptr, L, norm, mp ? mp[p] : scalar_t(0),
                       rp ? rp[p] : scalar_t(1), wp ? wp[c] : scalar_t(1), act,
                       static_cast<scalar_t>(slope), sp[2 * p], sp[2 * p + 1]);
      }
    });
  });
  const at::Tensor red = sums.sum(0);  // (C, 2)
  at::Tensor gw = w.defined() ? red.select(1, 1).to(t) : at::empty({0}, y.options().dtype(t));
  at::Tensor gb = has_bias ? red.select(1, 0).to(t) : at::empty({0}, y.options().dtype(t));
  return {gy.to(t), gs.to(t), gw, gb};
}

}  // namespace
}  // namespace agd

TORCH_LIBRARY_IMPL(agd, CPU, m) {
  m.impl("norm_act_residual", &agd::norm_act_residual_cpu);
  m.impl("norm_act_residual_backward", &agd::norm_act_residual_backward_cpu);
}

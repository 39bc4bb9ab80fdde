// CPU kernels of the depthwise 3x3 convolution (agd/ops/blocks.py, dwconv3x3):
//   out[n, c, oh, ow] = sum_{i,j<3} w[c, 0, i, j] * x[n, c, oh*s + (i-1)*d, ow*s + (j-1)*d]
// with zero padding d (so the output is (H + 2d - 2d - 1) // s + 1 = (H - 1) // s + 1), stride s in
// {1, 2}, dilation d in {1, 2}, no bias. float32 and float64 (float16/bfloat16 are computed in float32).
//
// Memory formats: NCHW (contiguous) works plane by plane, each kernel tap a loop over the valid
// output columns of a row (contiguous loads for s = 1); channels_last works pixel by pixel with the
// channel dimension innermost (weights transposed to [9][C]), so every tap is one vector FMA over C.
// The output keeps the input's memory format.
//
// Backward: grad_x is a scatter per plane in NCHW (planes in parallel) and a gather per input row in
// channels_last; grad_w reduces per channel (NCHW: channels in parallel; channels_last: rows in
// parallel into per-thread [9][C] partial sums).

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "cpu/blocks_common.h"

namespace agd {
namespace {

struct DwGeom {
  int64_t N, C, H, W, OH, OW, s, d;
};

// Output columns ow with 0 <= ow*s + off < W: [lo, hi).
inline void valid_cols(int64_t off, int64_t s, int64_t W, int64_t OW, int64_t& lo, int64_t& hi) {
  lo = off >= 0 ? 0 : (-off + s - 1) / s;
  hi = W - 1 - off < 0 ? 0 : std::min(OW, (W - 1 - off) / s + 1);
  if (hi < lo) hi = lo;
}

// ---------------------------------------------------------------------------------- NCHW
template <typename T>
AGD_SIMD_CLONES void fwd_row_nchw(const T* __restrict xp, const T* __restrict k, T* __restrict o,
                                   int64_t oh, const DwGeom& g) {
  std::fill(o, o + g.OW, T(0));
  for (int64_t i = 0; i < 3; ++i) {
    const int64_t ih = oh * g.s + (i - 1) * g.d;
    if (ih < 0 || ih >= g.H) continue;
    const T* xr = xp + ih * g.W;
    for (int64_t j = 0; j < 3; ++j) {
      const int64_t off = (j - 1) * g.d;
      int64_t lo, hi;
      valid_cols(off, g.s, g.W, g.OW, lo, hi);
      const T kv = k[i * 3 + j];
      if (g.s == 1) {
        const T* src = xr + off;
        for (int64_t ow = lo; ow < hi; ++ow) o[ow] += kv * src[ow];
      } else {
        for (int64_t ow = lo; ow < hi; ++ow) o[ow] += kv * xr[ow * 2 + off];
      }
    }
  }
}

template <typename T>
void forward_nchw(const T* x, const T* w, T* out, const DwGeom& g) {
  const int64_t planes = g.N * g.C;
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, g.OH * g.OW));
  at::parallel_for(0, planes * g.OH, grain * g.OH, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const int64_t p = r / g.OH, oh = r % g.OH;
      fwd_row_nchw(x + p * g.H * g.W, w + (p % g.C) * 9, out + p * g.OH * g.OW + oh * g.OW, oh, g);
    }
  });
}

template <typename T>
AGD_SIMD_CLONES void bwd_input_plane_nchw(const T* __restrict gp, const T* __restrict k,
                                           T* __restrict gx, const DwGeom& g) {
  std::fill(gx, gx + g.H * g.W, T(0));
  for (int64_t oh = 0; oh < g.OH; ++oh) {
    const T* gr = gp + oh * g.OW;
    for (int64_t i = 0; i < 3; ++i) {
      const int64_t ih = oh * g.s + (i - 1) * g.d;
      if (ih < 0 || ih >= g.H) continue;
      T* xr = gx + ih * g.W;
      for (int64_t j = 0; j < 3; ++j) {
        const int64_t off = (j - 1) * g.d;
        int64_t lo, hi;
        valid_cols(off, g.s, g.W, g.OW, lo, hi);
        const T kv = k[i * 3 + j];
        if (g.s == 1) {
          T* dst = xr + off;
          for (int64_t ow = lo; ow < hi; ++ow) dst[ow] += kv * gr[ow];
        } else {
          for (int64_t ow = lo; ow < hi; ++ow) xr[ow * 2 + off] += kv * gr[ow];
        }
      }
    }
  }
}

template <typename T>
AGD_SIMD_CLONES void bwd_weight_plane_nchw(const T* __restrict gp, const T* __restrict xp,
                                            double* __restrict acc9, const DwGeom& g) {
  for (int64_t oh = 0; oh < g.OH; ++oh) {
    const T* gr = gp + oh * g.OW;
    for (int64_t i = 0; i < 3; ++i) {
      const int64_t ih = oh * g.s + (i - 1) * g.d;
      if (ih < 0 || ih >= g.H) continue;
      const T* xr = xp + ih * g.W;
      for (int64_t j = 0; j < 3; ++j) {
        const int64_t off = (j - 1) * g.d;
        int64_t lo, hi;
        valid_cols(off, g.s, g.W, g.OW, lo, hi);
        T sum = 0;
        if (g.s == 1) {
          const T* src = xr + off;
          for (int64_t ow = lo; ow < hi; ++ow) sum += gr[ow] * src[ow];
        } else {
          for (int64_t ow = lo; ow < hi; ++ow) sum += gr[ow] * xr[ow * 2 + off];
        }
        acc9[i * 3 + j] += static_cast<double>(sum);
      }
    }
  }
}

template <typename T>
void backward_nchw(const T* grad, const T* x, const T* w, T* gx, T* gw, const DwGeom& g) {
  const int64_t planes = g.N * g.C;
  at::parallel_for(0, planes, 1, [&](int64_t b, int64_t e) {
    for (int64_t p = b; p < e; ++p)
      bwd_input_plane_nchw(grad + p * g.OH * g.OW, w + (p % g.C) * 9, gx + p * g.H * g.W, g);
  });
  at::parallel_for(0, g.C, 1, [&](int64_t b, int64_t e) {
    for (int64_t c = b; c < e; ++c) {
      double acc9[9] = {0, 0, 0, 0, 0, 0, 0, 0, 0};
      for (int64_t n = 0; n < g.N; ++n) {
        const int64_t p = n * g.C + c;
        bwd_weight_plane_nchw(grad + p * g.OH * g.OW, x + p * g.H * g.W, acc9, g);
      }
      for (int t = 0; t < 9; ++t) gw[c * 9 + t] = static_cast<T>(acc9[t]);
    }
  });
}

// ---------------------------------------------------------------------------------- NHWC
// wt: weights transposed to [9][C].
template <typename T>
AGD_SIMD_CLONES void fwd_row_nhwc(const T* __restrict xn, const T* __restrict wt,
                                   T* __restrict o, int64_t oh, const DwGeom& g) {
  const int64_t C = g.C;
  for (int64_t ow = 0; ow < g.OW; ++ow) {
    T* oc = o + ow * C;
    std::fill(oc, oc + C, T(0));
    for (int64_t i = 0; i < 3; ++i) {
      const int64_t ih = oh * g.s + (i - 1) * g.d;
      if (ih < 0 || ih >= g.H) continue;
      for (int64_t j = 0; j < 3; ++j) {
        const int64_t iw = ow * g.s + (j - 1) * g.d;
        if (iw < 0 || iw >= g.W) continue;
        const T* xc = xn + (ih * g.W + iw) * C;
        const T* kc = wt + (i * 3 + j) * C;
        for (int64_t c = 0; c < C; ++c) oc[c] += kc[c] * xc[c];
      }
    }
  }
}

template <typename T>
AGD_SIMD_CLONES void bwd_input_row_nhwc(const T* __restrict gn, const T* __restrict wt,
                                         T* __restrict gxr, int64_t ih, const DwGeom& g) {
  const int64_t C = g.C;
  for (int64_t iw = 0; iw < g.W; ++iw) {
    T* dst = gxr + iw * C;
    std::fill(dst, dst + C, T(0));
    for (int64_t i = 0; i < 3; ++i) {
      const int64_t t = ih - (i - 1) * g.d;  // = oh * s
      if (t < 0 || t % g.s != 0 || t / g.s >= g.OH) continue;
      const int64_t oh = t / g.s;
      for (int64_t j = 0; j < 3; ++j) {
        const int64_t u = iw - (j - 1) * g.d;
        if (u < 0 || u % g.s != 0 || u / g.s >= g.OW) continue;
        const T* gc = gn + (oh * g.OW + u / g.s) * C;
        const T* kc = wt + (i * 3 + j) * C;
        for (int64_t c = 0; c < C; ++c) dst[c] += kc[c] * gc[c];
      }
    }
  }
}

template <typename T>
AGD_SIMD_CLONES void bwd_weight_row_nhwc(const T* __restrict gn, const T* __restrict xn,
                                          T* __restrict part, int64_t oh, const DwGeom& g) {
  const int64_t C = g.C;
  for (int64_t i = 0; i < 3; ++i) {
    const int64_t ih = oh * g.s + (i - 1) * g.d;
    if (ih < 0 || ih >= g.H) continue;
    for (int64_t j = 0; j < 3; ++j) {
      T* pc = part + (i * 3 + j) * C;
      for (int64_t ow = 0; ow < g.OW; ++ow) {
        const int64_t iw = ow * g.s + (j - 1) * g.d;
        if (iw < 0 || iw >= g.W) continue;
        const T* xc = xn + (ih * g.W + iw) * C;
        const T* gc = gn + (oh * g.OW + ow) * C;
        for (int64_t c = 0; c < C; ++c) pc[c] += gc[c] * xc[c];
      }
    }
  }
}

template <typename T>
void forward_nhwc(const T* x, const T* wt, T* out, const DwGeom& g) {
  at::parallel_for(0, g.N * g.OH, 1, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const int64_t n = r / g.OH, oh = r % g.OH;
      fwd_row_nhwc(x + n * g.H * g.W * g.C, wt, out + (n * g.OH + oh) * g.OW * g.C, oh, g);
    }
  });
}

template <typename T>
void backward_nhwc(const T* grad, const T* x, const T* wt, T* gx, T* gwt, const DwGeom& g) {
  at::parallel_for(0, g.N * g.H, 1, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const int64_t n = r / g.H, ih = r % g.H;
      bwd_input_row_nhwc(grad + n * g.OH * g.OW * g.C, wt, gx + (n * g.H + ih) * g.W * g.C, ih, g);
    }
  });
  const int64_t rows = g.N * g.OH;
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(rows, at::get_num_threads()));
  std::vector<T> partial(static_cast<size_t>(chunks * 9 * g.C), T(0));
  at::parallel_for(0, chunks, 1, [&](int64_t b, int64_t e) {
    for (int64_t ch = b; ch < e; ++ch) {
      T* part = partial.data() + ch * 9 * g.C;
      for (int64_t r = ch * rows / chunks; r < (ch + 1) * rows / chunks; ++r) {
        const int64_t n = r / g.OH, oh = r % g.OH;
        bwd_weight_row_nhwc(grad + n * g.OH * g.OW * g.C, x + n * g.H * g.W * g.C, part, oh, g);
      }
    }
  });
  for (int64_t t = 0; t < 9 * g.C; ++t) {
    double s = 0;
    for (int64_t ch = 0; ch < chunks; ++ch) s += partial[ch * 9 * g.C + t];
    gwt[t] = static_cast<T>(s);
  }
}

// ---------------------------------------------------------------------------------- glue
DwGeom geometry(const at::Tensor& x, const at::Tensor& w, int64_t stride, int64_t dilation) {
  TORCH_CHECK(x.dim() == 4, "agd::dwconv3x3: x must be 4-D (N, C, H, W), got ", x.dim(), "-D");
  TORCH_CHECK(w.dim() == 4 && w.size(0) == x.size(1) && w.size(1) == 1 && w.size(2) == 3 &&
                  w.size(3) == 3,
              "agd::dwconv3x3: weight must be (C, 1, 3, 3) with C = ", x.size(1), ", got ",
              w.sizes());
  TORCH_CHECK(stride == 1 || stride == 2, "agd::dwconv3x3: stride must be 1 or 2, got ", stride);
  TORCH_CHECK(dilation == 1 || dilation == 2, "agd::dwconv3x3: dilation must be 1 or 2, got ",
              dilation);
  const int64_t H = x.size(2), W = x.size(3);
  return DwGeom{x.size(0), x.size(1), H, W, (H - 1) / stride + 1, (W - 1) / stride + 1, stride,
                dilation};
}

bool use_channels_last(const at::Tensor& x) {
  return x.size(1) > 1 && x.is_contiguous(at::MemoryFormat::ChannelsLast) &&
         !x.is_contiguous(at::MemoryFormat::Contiguous);
}

at::ScalarType compute_type(const at::Tensor& x) {
  const auto t = x.scalar_type();
  TORCH_CHECK(at::isFloatingType(t), "agd::dwconv3x3: x must be floating point, got ", t);
  return (t == at::kHalf || t == at::kBFloat16) ? at::kFloat : t;
}

at::Tensor dwconv3x3_cpu(const at::Tensor& x_in, const at::Tensor& w_in, int64_t stride,
                         int64_t dilation) {
  const DwGeom g = geometry(x_in, w_in, stride, dilation);
  const auto ct = compute_type(x_in);
  const bool cl = use_channels_last(x_in);
  const auto fmt = cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const at::Tensor x = x_in.to(ct).contiguous(fmt);
  const at::Tensor w = w_in.to(ct).contiguous();
  at::Tensor out = at::empty({g.N, g.C, g.OH, g.OW}, x.options().memory_format(fmt));
  if (out.numel() == 0) return out.to(x_in.scalar_type());
  AT_DISPATCH_FLOATING_TYPES(ct, "agd::dwconv3x3", [&] {
    if (cl) {
      const at::Tensor wt = w.reshape({g.C, 9}).t().contiguous();
      forward_nhwc<scalar_t>(x.data_ptr<scalar_t>(), wt.data_ptr<scalar_t>(),
                             out.data_ptr<scalar_t>(), g);
    } else {
      forward_nchw<scalar_t>(x.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(),
                             out.data_ptr<scalar_t>(), g);
    }
  });
  return ct == x_in.scalar_type() ? out : out.to(x_in.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> dwconv3x3_backward_cpu(const at::Tensor& grad_in,
                                                          const at::Tensor& x_in,
                                                          const at::Tensor& w_in, int64_t stride,
                                                          int64_t dilation) {
  const DwGeom g = geometry(x_in, w_in, stride, dilation);
  TORCH_CHECK(grad_in.dim() == 4 && grad_in.size(0) == g.N && grad_in.size(1) == g.C &&
                  grad_in.size(2) == g.OH && grad_in.size(3) == g.OW,
              "agd::dwconv3x3_backward: grad must be (", g.N, ", ", g.C, ", ", g.OH, ", ", g.OW,
              "), got ", grad_in.sizes());
  const auto ct = compute_type(x_in);
  const bool cl = use_channels_last(x_in);
  const auto fmt = cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const at::Tensor x = x_in.to(ct).contiguous(fmt);
  const at::Tensor grad = grad_in.to(ct).contiguous(fmt);
  const at::Tensor w = w_in.to(ct).contiguous();
  at::Tensor gx = at::zeros_like(x);  // keeps x's memory format
  at::Tensor gw = at::zeros({g.C, 1, 3, 3}, w.options());
  if (x.numel() > 0 && grad.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES(ct, "agd::dwconv3x3_backward", [&] {
      if (cl) {
        const at::Tensor wt = w.reshape({g.C, 9}).t().contiguous();
        at::Tensor gwt = at::empty({9, g.C}, w.options());
        backward_nhwc<scalar_t>(grad.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(),
                                wt.data_ptr<scalar_t>(), gx.data_ptr<scalar_t>(),
                                gwt.data_ptr<scalar_t>(), g);
        gw.copy_(gwt.t().reshape({g.C, 1, 3, 3}));
      } else {
        backward_nchw<scalar_t>(grad.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(),
                                w.data_ptr<scalar_t>(), gx.data_ptr<scalar_t>(),
                                gw.data_ptr<scalar_t>(), g);
      }
    });
  }
  return {gx.to(x_in.scalar_type()), gw.to(w_in.scalar_type())};
}

}  // namespace
}  // namespace agd

TORCH_LIBRARY_IMPL(agd, CPU, m) {
  m.impl("dwconv3x3", &agd::dwconv3x3_cpu);
  m.impl("dwconv3x3_backward", &agd::dwconv3x3_backward_cpu);
}

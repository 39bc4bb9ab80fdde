// CPU kernel of the fused inference DwsBlock (agd/ops/fused.py, dws_block):
//   h   = act(N1(W_e x))             1x1 expand to `hidden` channels
//   d   = act(N2(dw3x3(h)))          depthwise 3x3, stride 1, padding 1 (zeros or reflect)
//   out = act(N3(W_p d) + S(x))      1x1 project; S = identity or N_s(W_s x)
// N* are instance norms (statistics over H x W per (n, c), optional affine) or nothing.
//
// Tiling: each thread owns a contiguous range of output rows of one image and walks it in bands of
// `th` rows. The hidden activation of a band (th + 2 rows with the 3x3 halo) lives in a per-thread
// buffer: the two halo rows are carried from one band to the next (never recomputed), new rows come
// from one GEMM (BLAS sgemm_, single-threaded inside the band) on the rows of x, the depthwise
// output of the band goes to a second per-thread buffer, and the projection GEMM writes the band of
// `out` directly. Without norms (the SR space) that is the whole block: the expanded activation
// never leaves the thread's cache-sized buffers.
//
// With instance norms (the translation space) the statistics are global over H x W, so:
// - N1 and N_s are exact without touching the expanded tensor: W_e x is linear in x, so its mean is
//   W_e mu_x and its variance diag(W_e Cov(x) W_e^T); Cov(x) is one (C_in x C_in) GEMM over x. N1
//   is folded into the expand weights (scale) and a per-channel bias; N_s likewise.
// - N2 needs the depthwise output over the whole image: pass 1 runs expand + N1 + act + dw per band
//   and writes the depthwise output (hidden channels, the one round trip of an expanded tensor)
//   while summing its statistics; pass 2 reads it back band by band, applies N2 + act and projects
//   into `out`, summing N3's statistics; pass 3 applies N3, adds the shortcut and the activation in
//   place. Eager PyTorch writes and reads the hidden tensor six times (conv, norm, act, conv, norm,
//   act); this writes it once and reads it once.
// float32 uses BLAS; float64 runs the same code with a loop GEMM (for tests).

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstring>
#include <memory>
#include <vector>

#include "cpu/blocks_common.h"

namespace agd {
namespace {

using blocks::add_rows;
using blocks::affine_act;
using blocks::affine_add_act;
using blocks::gemm;

struct DwsGeom {
  int64_t N, Cin, Hid, Cout, H, W, HW;
  bool norm, reflect, proj;
  int64_t act;
  double slope, eps;
};

// Rows of one band: the target is a hidden buffer of about 1 MiB per thread, at least 2 rows.
int64_t band_rows(const DwsGeom& g) {
  const int64_t per_row = g.Hid * g.W * 4;
  return std::max<int64_t>(2, std::min<int64_t>(g.H, (1 << 20) / std::max<int64_t>(1, per_row)));
}

template <typename T>
AGD_SIMD_CLONES void dw_row(const T* __restrict r0, const T* __restrict r1, const T* __restrict r2,
                             const T* __restrict k, T* __restrict o, int64_t W, bool reflect) {
  const T* rows[3] = {r0, r1, r2};
  if (W == 1) {
    o[0] = k[1] * r0[0] + k[4] * r1[0] + k[7] * r2[0];
    return;
  }
  for (int64_t w = 1; w < W - 1; ++w) {
    o[w] = k[0] * r0[w - 1] + k[1] * r0[w] + k[2] * r0[w + 1] + k[3] * r1[w - 1] + k[4] * r1[w] +
           k[5] * r1[w + 1] + k[6] * r2[w - 1] + k[7] * r2[w] + k[8] * r2[w + 1];
  }
  T left = 0, right = 0;
  for (int i = 0; i < 3; ++i) {
    const T* r = rows[i];
    const T lpad = reflect ? r[1] : T(0);
    const T rpad = reflect ? r[W - 2] : T(0);
    left += k[i * 3] * lpad + k[i * 3 + 1] * r[0] + k[i * 3 + 2] * r[1];
    right += k[i * 3] * r[W - 2] + k[i * 3 + 1] * r[W - 1] + k[i * 3 + 2] * rpad;
  }
  o[0] = left;
  o[W - 1] = right;
}

// Per-thread band state: the hidden buffer holds image rows [lo - 1, lo + th] at buffer rows
// 0 .. th + 1 (each channel a (th_max + 2) x W slab).
template <typename T>
struct Band {
  const DwsGeom& g;
  const T* we;     // expand weights (Hid x Cin), N1 folded in
  const T* be;     // expand bias (Hid) or nullptr
  const T* wdw;    // (Hid x 9)
  int64_t thmax;
  blocks::Scratch<T> hid;  // Hid x (thmax + 2) x W (this thread's scratch slot 0)
  blocks::Scratch<T> dw;   // Hid x thmax x W (slot 1)
  int64_t next = -1;   // the row the carried halo belongs to (band start), -1: nothing carried

  Band(const DwsGeom& g_, const T* we_, const T* be_, const T* wdw_, int64_t thmax_)
      : g(g_), we(we_), be(be_), wdw(wdw_), thmax(thmax_),
        hid(0, static_cast<size_t>(g_.Hid * (thmax_ + 2) * g_.W)),
        dw(1, static_cast<size_t>(g_.Hid * thmax_ * g_.W)) {}

  int64_t slab() const { return (thmax + 2) * g.W; }

  // expand + N1 + act for image rows [a, b) (clipped to the image) into buffer rows from row a - base.
  void expand_rows(const T* xn, int64_t a, int64_t b, int64_t base) {
    a = std::max<int64_t>(a, 0);
    b = std::min<int64_t>(b, g.H);
    if (b <= a) return;
    const int64_t ncol = (b - a) * g.W;
    T* c0 = hid.data() + (a - base) * g.W;
    gemm<T>(false, false, g.Hid, ncol, g.Cin, we, g.Cin, xn + a * g.W, g.HW, T(0), c0, slab());
    for (int64_t h = 0; h < g.Hid; ++h)
      affine_act<T>(c0 + h * slab(), ncol, T(1), be ? be[h] : T(0), g.act, T(g.slope));
  }

  // Fill buffer row `idx` (image row r outside the image) by reflection or zeros.
  void pad_row(int64_t r, int64_t base) {
    const int64_t idx = r - base;
    for (int64_t h = 0; h < g.Hid; ++h) {
      T* dst = hid.data() + h * slab() + idx * g.W;
      if (g.reflect) {
        const int64_t src = r < 0 ? -r : 2 * (g.H - 1) - r;
        std::memcpy(dst, hid.data() + h * slab() + (src - base) * g.W, sizeof(T) * g.W);
      } else {
        std::fill(dst, dst + g.W, T(0));
      }
    }
  }

  // Compute the depthwise output (pre-N2) of output rows [lo, lo + th) into `dw` (Hid x th x W).
  void run(const T* xn, int64_t lo, int64_t th) {
    const int64_t base = lo - 1;
    if (next == lo) {
      // carry the last two hidden rows of the previous band (image rows lo - 1, lo)
      const int64_t prev_th = carried_th;
      for (int64_t h = 0; h < g.Hid; ++h) {
        T* s = hid.data() + h * slab();
        std::memmove(s, s + prev_th * g.W, sizeof(T) * 2 * g.W);
      }
      expand_rows(xn, lo + 1, lo + th + 1, base);
    } else {
      expand_rows(xn, lo - 1, lo + th + 1, base);
    }
    if (lo - 1 < 0) pad_row(lo - 1, base);
    if (lo + th >= g.H) pad_row(lo + th, base);
    for (int64_t h = 0; h < g.Hid; ++h) {
      const T* s = hid.data() + h * slab();
      T* o = dw.data() + h * th * g.W;
      for (int64_t t = 0; t < th; ++t)
        dw_row<T>(s + t * g.W, s + (t + 1) * g.W, s + (t + 2) * g.W, wdw + h * 9, o + t * g.W,
                  g.W, g.reflect);
    }
    next = lo + th;
    carried_th = th;
  }

  int64_t carried_th = 0;
};

// Split N*H rows into one contiguous range per thread, then bands. f(thread, n, lo, th).
template <typename F>
void for_each_band(const DwsGeom& g, int64_t thmax, const F& f) {
  const int64_t rows = g.N * g.H;
  const int64_t grain = std::max<int64_t>(thmax, 1);
  at::parallel_for(0, rows, grain, [&](int64_t b, int64_t e) {
    const int64_t tid = at::get_thread_num();
    int64_t r = b;
    while (r < e) {
      const int64_t n = r / g.H, lo = r % g.H;
      const int64_t th = std::min<int64_t>({thmax, g.H - lo, e - r});
      f(tid, n, lo, th);
      r += th;
    }
  });
}

template <typename T>
const T* ptr_or_null(const at::Tensor& t) {
  return t.defined() && t.numel() > 0 ? t.data_ptr<T>() : nullptr;
}

// Per (n, c): scale, shift of an instance norm from (sum, sum of squares) and optional affine.
template <typename T>
void finish_stats(const std::vector<double>& sums, int64_t N, int64_t C, int64_t L, double eps,
                  const T* gamma, const T* beta, std::vector<T>& scale, std::vector<T>& shift) {
  scale.assign(static_cast<size_t>(N * C), T(1));
  shift.assign(static_cast<size_t>(N * C), T(0));
  for (int64_t p = 0; p < N * C; ++p) {
    const int64_t c = p % C;
    const double mean = sums[2 * p] / L;
    const double var = std::max(0.0, sums[2 * p + 1] / L - mean * mean);
    const double r = 1.0 / std::sqrt(var + eps);
    const double gm = gamma ? static_cast<double>(gamma[c]) : 1.0;
    const double bt = beta ? static_cast<double>(beta[c]) : 0.0;
    scale[p] = static_cast<T>(gm * r);
    shift[p] = static_cast<T>(bt - gm * r * mean);
  }
}

// Per-thread partial sums (sum, sumsq) of `len` values, added to s2[0], s2[1]. Sixteen independent
// accumulators: without -ffast-math a single running sum cannot be vectorized (FP reassociation).
template <typename T>
AGD_SIMD_CLONES void add_row_stats(const T* __restrict p, int64_t len, double* __restrict s2) {
  constexpr int kLanes = 16;
  T s[kLanes] = {}, q[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= len; i += kLanes)
    for (int j = 0; j < kLanes; ++j) {
      s[j] += p[i + j];
      q[j] += p[i + j] * p[i + j];
    }
  double ds = 0, dq = 0;
  for (; i < len; ++i) {
    ds += static_cast<double>(p[i]);
    dq += static_cast<double>(p[i]) * p[i];
  }
  for (int j = 0; j < kLanes; ++j) {
    ds += static_cast<double>(s[j]);
    dq += static_cast<double>(q[j]);
  }
  s2[0] += ds;
  s2[1] += dq;
}

template <typename T>
at::Tensor dws_block_impl(const at::Tensor& x, const at::Tensor& we_t, const at::Tensor& wdw_t,
                          const at::Tensor& wp_t, const at::Tensor& ws_t,
                          const std::vector<at::Tensor>& aff, const DwsGeom& g) {
  at::Tensor out = at::empty({g.N, g.Cout, g.H, g.W}, x.options());
  const T* xp = x.data_ptr<T>();
  T* op = out.data_ptr<T>();
  const T* wdw = wdw_t.data_ptr<T>();
  const int64_t thmax = band_rows(g);
  const int64_t nthreads = at::get_num_threads();
  auto aff_ptr = [&](size_t i) -> const T* { return aff.empty() ? nullptr : ptr_or_null<T>(aff[i]); };

  if (!g.norm) {
    const T* we = we_t.data_ptr<T>();
    const T* wp = wp_t.data_ptr<T>();
    const T* ws = g.proj ? ws_t.data_ptr<T>() : nullptr;
    std::vector<std::unique_ptr<Band<T>>> bands(static_cast<size_t>(nthreads));
    std::vector<int64_t> image(static_cast<size_t>(nthreads), -1);
    for_each_band(g, thmax, [&](int64_t tid, int64_t n, int64_t lo, int64_t th) {
      auto& bp = bands[static_cast<size_t>(tid)];
      if (!bp) bp = std::make_unique<Band<T>>(g, we, nullptr, wdw, thmax);
      Band<T>& band = *bp;
      if (image[tid] != n) band.next = -1;
      image[tid] = n;
      const T* xn = xp + n * g.Cin * g.HW;
      band.run(xn, lo, th);
      const int64_t ncol = th * g.W;
      for (int64_t h = 0; h < g.Hid; ++h)
        affine_act<T>(band.dw.data() + h * ncol, ncol, T(1), T(0), g.act, T(g.slope));
      T* on = op + n * g.Cout * g.HW + lo * g.W;
      gemm<T>(false, false, g.Cout, ncol, g.Hid, wp, g.Hid, band.dw.data(), ncol, T(0), on, g.HW);
      if (ws != nullptr) {
        gemm<T>(false, false, g.Cout, ncol, g.Cin, ws, g.Cin, xn + lo * g.W, g.HW, T(1), on, g.HW);
      } else {
        for (int64_t c = 0; c < g.Cout; ++c) add_rows<T>(on + c * g.HW, xn + c * g.HW + lo * g.W, ncol);
      }
      for (int64_t c = 0; c < g.Cout; ++c)
        affine_act<T>(on + c * g.HW, ncol, T(1), T(0), g.act, T(g.slope));
    });
    return out;
  }

  // ---- instance-norm path: statistics of x, folded N1 / N_s
  const double L = static_cast<double>(g.HW);
  std::vector<T> we_f(static_cast<size_t>(g.N * g.Hid * g.Cin)), be_f(static_cast<size_t>(g.N * g.Hid));
  std::vector<T> ws_f, bs_f;
  if (g.proj) {
    ws_f.resize(static_cast<size_t>(g.N * g.Cout * g.Cin));
    bs_f.resize(static_cast<size_t>(g.N * g.Cout));
  }
  {
    std::vector<T> cov(static_cast<size_t>(g.Cin * g.Cin));
    std::vector<double> mu(static_cast<size_t>(g.Cin));
    for (int64_t n = 0; n < g.N; ++n) {
      const T* xn = xp + n * g.Cin * g.HW;
      at::parallel_for(0, g.Cin, 1, [&](int64_t b, int64_t e) {
        for (int64_t c = b; c < e; ++c) {
          double s = 0;
          const T* r = xn + c * g.HW;
          for (int64_t i = 0; i < g.HW; ++i) s += r[i];
          mu[c] = s / L;
        }
      });
      // E[x x^T] (one GEMM over the image), then Cov = E[x x^T] - mu mu^T
      gemm<T>(false, true, g.Cin, g.Cin, g.HW, xn, g.HW, xn, g.HW, T(0), cov.data(), g.Cin);
      for (int64_t i = 0; i < g.Cin; ++i)
        for (int64_t j = 0; j < g.Cin; ++j)
          cov[i * g.Cin + j] = static_cast<T>(static_cast<double>(cov[i * g.Cin + j]) / L - mu[i] * mu[j]);
      auto fold = [&](const T* w, int64_t rows, const T* gamma, const T* beta, T* wf, T* bf) {
        std::vector<T> wc(static_cast<size_t>(rows * g.Cin));
        gemm<T>(false, false, rows, g.Cin, g.Cin, w, g.Cin, cov.data(), g.Cin, T(0), wc.data(), g.Cin);
        for (int64_t r = 0; r < rows; ++r) {
          double var = 0, mean = 0;
          for (int64_t j = 0; j < g.Cin; ++j) {
            var += static_cast<double>(wc[r * g.Cin + j]) * w[r * g.Cin + j];
            mean += mu[j] * w[r * g.Cin + j];
          }
          const double rs = 1.0 / std::sqrt(std::max(var, 0.0) + g.eps);
          const double sc = (gamma ? static_cast<double>(gamma[r]) : 1.0) * rs;
          for (int64_t j = 0; j < g.Cin; ++j) wf[r * g.Cin + j] = static_cast<T>(sc * w[r * g.Cin + j]);
          bf[r] = static_cast<T>((beta ? static_cast<double>(beta[r]) : 0.0) - sc * mean);
        }
      };
      fold(we_t.data_ptr<T>(), g.Hid, aff_ptr(0), aff_ptr(1), we_f.data() + n * g.Hid * g.Cin,
           be_f.data() + n * g.Hid);
      if (g.proj)
        fold(ws_t.data_ptr<T>(), g.Cout, aff_ptr(6), aff_ptr(7), ws_f.data() + n * g.Cout * g.Cin,
             bs_f.data() + n * g.Cout);
    }
  }

  // ---- pass 1: expand + N1 + act + dw per band -> dbuf, statistics of the dw output
  blocks::Scratch<T> dbuf_s(2, static_cast<size_t>(g.N * g.Hid * g.HW));  // the calling thread's slot 2
  T* dbuf = dbuf_s.data();
  std::vector<double> part(static_cast<size_t>(nthreads * g.N * g.Hid * 2), 0.0);
  {
    std::vector<std::unique_ptr<Band<T>>> bands(static_cast<size_t>(nthreads));
    std::vector<int64_t> image(static_cast<size_t>(nthreads), -1);
    for_each_band(g, thmax, [&](int64_t tid, int64_t n, int64_t lo, int64_t th) {
      auto& bp = bands[static_cast<size_t>(tid)];
      if (!bp || image[tid] != n) {
        bp = std::make_unique<Band<T>>(g, we_f.data() + n * g.Hid * g.Cin, be_f.data() + n * g.Hid,
                                       wdw, thmax);
        image[tid] = n;
      }
      Band<T>& band = *bp;
      band.run(xp + n * g.Cin * g.HW, lo, th);
      const int64_t ncol = th * g.W;
      double* ps = part.data() + (tid * g.N + n) * g.Hid * 2;
      for (int64_t h = 0; h < g.Hid; ++h) {
        const T* src = band.dw.data() + h * ncol;
        add_row_stats<T>(src, ncol, ps + 2 * h);
        std::memcpy(dbuf + (n * g.Hid + h) * g.HW + lo * g.W, src, sizeof(T) * ncol);
      }
    });
  }
  std::vector<double> sums(static_cast<size_t>(g.N * g.Hid * 2), 0.0);
  for (int64_t t = 0; t < nthreads; ++t)
    for (size_t i = 0; i < sums.size(); ++i) sums[i] += part[t * sums.size() + i];
  std::vector<T> s2, c2;
  finish_stats<T>(sums, g.N, g.Hid, g.HW, g.eps, aff_ptr(2), aff_ptr(3), s2, c2);

  // ---- pass 2: N2 + act in place, project into out, statistics of the projection
  const T* wp = wp_t.data_ptr<T>();
  std::vector<double> part3(static_cast<size_t>(nthreads * g.N * g.Cout * 2), 0.0);
  for_each_band(g, thmax, [&](int64_t tid, int64_t n, int64_t lo, int64_t th) {
    const int64_t ncol = th * g.W;
    T* dn = dbuf + n * g.Hid * g.HW + lo * g.W;
    for (int64_t h = 0; h < g.Hid; ++h)
      affine_act<T>(dn + h * g.HW, ncol, s2[n * g.Hid + h], c2[n * g.Hid + h], g.act, T(g.slope));
    T* on = op + n * g.Cout * g.HW + lo * g.W;
    gemm<T>(false, false, g.Cout, ncol, g.Hid, wp, g.Hid, dn, g.HW, T(0), on, g.HW);
    double* ps = part3.data() + (tid * g.N + n) * g.Cout * 2;
    for (int64_t c = 0; c < g.Cout; ++c) add_row_stats<T>(on + c * g.HW, ncol, ps + 2 * c);
  });
  std::vector<double> sums3(static_cast<size_t>(g.N * g.Cout * 2), 0.0);
  for (int64_t t = 0; t < nthreads; ++t)
    for (size_t i = 0; i < sums3.size(); ++i) sums3[i] += part3[t * sums3.size() + i];
  std::vector<T> s3, c3;
  finish_stats<T>(sums3, g.N, g.Cout, g.HW, g.eps, aff_ptr(4), aff_ptr(5), s3, c3);

  // ---- pass 3: N3, shortcut, act
  for_each_band(g, thmax, [&](int64_t, int64_t n, int64_t lo, int64_t th) {
    const int64_t ncol = th * g.W;
    const T* xn = xp + n * g.Cin * g.HW;
    T* on = op + n * g.Cout * g.HW + lo * g.W;
    blocks::Scratch<T> sc(3, g.proj ? static_cast<size_t>(g.Cout * ncol) : 0);
    if (g.proj) {
      gemm<T>(false, false, g.Cout, ncol, g.Cin, ws_f.data() + n * g.Cout * g.Cin, g.Cin,
              xn + lo * g.W, g.HW, T(0), sc.data(), ncol);
    }
    for (int64_t c = 0; c < g.Cout; ++c) {
      T* o = on + c * g.HW;
      const T a = s3[n * g.Cout + c];
      const T b = c3[n * g.Cout + c] + (g.proj ? bs_f[n * g.Cout + c] : T(0));
      const T* s = g.proj ? sc.data() + c * ncol : xn + c * g.HW + lo * g.W;
      affine_add_act<T>(o, s, ncol, a, b, g.act, T(g.slope));
    }
  });
  return out;
}

at::Tensor dws_block_cpu(const at::Tensor& x_in, const at::Tensor& w_expand,
                         const at::Tensor& w_dw, const at::Tensor& w_project,
                         const c10::optional<at::Tensor>& w_shortcut,
                         at::TensorList affine, bool norm, int64_t act, double slope,
                         bool reflect, double eps) {
  TORCH_CHECK(x_in.dim() == 4, "agd::dws_block: x must be 4-D, got ", x_in.dim(), "-D");
  const auto t = x_in.scalar_type();
  TORCH_CHECK(t == at::kFloat || t == at::kDouble,
              "agd::dws_block (CPU): x must be float32 or float64, got ", t);
  DwsGeom g;
  g.N = x_in.size(0);
  g.Cin = x_in.size(1);
  g.H = x_in.size(2);
  g.W = x_in.size(3);
  g.HW = g.H * g.W;
  g.Hid = w_expand.size(0);
  g.Cout = w_project.size(0);
  g.norm = norm;
  g.reflect = reflect;
  g.proj = w_shortcut.has_value() && w_shortcut->defined();
  g.act = act;
  g.slope = slope;
  g.eps = eps;
  TORCH_CHECK(w_expand.numel() == g.Hid * g.Cin, "agd::dws_block: w_expand must be (hidden, ", g.Cin, ", 1, 1)");
  TORCH_CHECK(w_dw.numel() == g.Hid * 9, "agd::dws_block: w_dw must be (", g.Hid, ", 1, 3, 3)");
  TORCH_CHECK(w_project.numel() == g.Cout * g.Hid, "agd::dws_block: w_project must be (C_out, ", g.Hid, ", 1, 1)");
  TORCH_CHECK(g.proj || g.Cin == g.Cout, "agd::dws_block: an identity shortcut needs C_in == C_out");
  if (g.proj)
    TORCH_CHECK(w_shortcut->numel() == g.Cout * g.Cin, "agd::dws_block: w_shortcut must be (", g.Cout, ", ", g.Cin, ", 1, 1)");
  TORCH_CHECK(!reflect || (g.H >= 2 && g.W >= 2), "agd::dws_block: reflect padding needs H, W >= 2");
  TORCH_CHECK(affine.empty() || affine.size() == 8, "agd::dws_block: affine must hold 0 or 8 tensors");
  const at::Tensor x = x_in.contiguous();
  auto prep = [&](const at::Tensor& w) { return w.to(t).contiguous(); };
  std::vector<at::Tensor> aff;
  for (const auto& a : affine) aff.push_back(a.defined() ? prep(a) : a);
  const at::Tensor ws = g.proj ? prep(*w_shortcut) : at::Tensor();
  if (x.numel() == 0) return at::empty({g.N, g.Cout, g.H, g.W}, x.options());
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES(t, "agd::dws_block", [&] {
    out = dws_block_impl<scalar_t>(x, prep(w_expand), prep(w_dw), prep(w_project), ws, aff, g);
  });
  return out;
}

}  // namespace
}  // namespace agd

TORCH_LIBRARY_IMPL(agd, CPU, m) {
  m.impl("dws_block", &agd::dws_block_cpu);
}

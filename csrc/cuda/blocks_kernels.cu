// CUDA kernels of agd's block ops (declared in blocks_cuda.h, bound to torch in bind_cuda.cpp).
// Only CUDA headers are included: `nvcc -std=c++17 -c blocks_kernels.cu` is the compile check on a
// machine whose torch has no CUDA. Accumulation is float32 for every storage dtype.
//
// - dwconv3x3: one thread per output (forward) / input (grad_x, a gather) element; grad_w one block
//   per channel reducing 9 sums over N x OH x OW.
// - norm_act_residual: one block per (n, c) plane: mean, centred variance, then the fused pass;
//   backward the two plane sums, then grad_y / grad_shortcut, per-plane grad_w / grad_b partials.
// - dws_block (float32): without norms one fused kernel per 8x8 output tile: the tile's 10x10 hidden
//   activation is computed chunk by chunk of hidden channels in shared memory, depthwise-convolved
//   there, and projected into the output tile (reflect padding by reading x at reflected
//   coordinates, valid because the expansion is pointwise). With instance norms the statistics are
//   global: a stats-only 1x1 pass gives N1, the same tile kernel writes the depthwise output (one
//   round trip of the hidden tensor) with N2's statistics, a 1x1 pass with N2 + act on its input
//   gives the projection and N3's statistics, and a final pass applies N3, the shortcut and act.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "blocks_cuda.h"

namespace agd {
namespace cuda {
namespace {

constexpr int kThreads = 256;

template <typename T> __device__ __forceinline__ float to_f(T v) { return static_cast<float>(v); }
template <> __device__ __forceinline__ float to_f<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> __device__ __forceinline__ T from_f(float v) { return static_cast<T>(v); }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16(v); }

__device__ __forceinline__ float act_f(float v, int act, float slope) {
  switch (act) {
    case 1: return v > 0.f ? v : 0.f;
    case 2: return v > 0.f ? v : v * slope;
    case 3: return tanhf(v);
    default: return v;
  }
}
__device__ __forceinline__ float act_grad_out(float o, int act, float slope) {
  switch (act) {
    case 1: return o > 0.f ? 1.f : 0.f;
    case 2: return o > 0.f ? 1.f : slope;
    case 3: return 1.f - o * o;
    default: return 1.f;
  }
}

// Block-wide sum of one float (all threads get the result).
__device__ float block_sum(float v, float* shm) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) shm[warp] = v;
  __syncthreads();
  float t = 0.f;
  const int nw = (blockDim.x + 31) >> 5;
  for (int i = 0; i < nw; ++i) t += shm[i];
  return t;
}

int blocks_for(int64_t n) { return static_cast<int>((n + kThreads - 1) / kThreads); }

// ------------------------------------------------------------------------------- dwconv3x3
template <typename T>
__global__ void dw_fwd(const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ out,
                       int64_t total, int64_t C, int64_t H, int64_t W, int64_t OH, int64_t OW,
                       int s, int d) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t ow = i % OW, oh = (i / OW) % OH, p = i / (OW * OH);
    const T* xp = x + p * H * W;
    const T* k = w + (p % C) * 9;
    float acc = 0.f;
#pragma unroll
    for (int a = 0; a < 3; ++a) {
      const int64_t ih = oh * s + (a - 1) * d;
      if (ih < 0 || ih >= H) continue;
#pragma unroll
      for (int b = 0; b < 3; ++b) {
        const int64_t iw = ow * s + (b - 1) * d;
        if (iw < 0 || iw >= W) continue;
        acc += to_f(k[a * 3 + b]) * to_f(xp[ih * W + iw]);
      }
    }
    out[i] = from_f<T>(acc);
  }
}

template <typename T>
__global__ void dw_bwd_input(const T* __restrict__ g, const T* __restrict__ w, T* __restrict__ gx,
                             int64_t total, int64_t C, int64_t H, int64_t W, int64_t OH,
                             int64_t OW, int s, int d) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t iw = i % W, ih = (i / W) % H, p = i / (W * H);
    const T* gp = g + p * OH * OW;
    const T* k = w + (p % C) * 9;
    float acc = 0.f;
    for (int a = 0; a < 3; ++a) {
      const int64_t t = ih - (a - 1) * d;
      if (t < 0 || t % s != 0 || t / s >= OH) continue;
      for (int b = 0; b < 3; ++b) {
        const int64_t u = iw - (b - 1) * d;
        if (u < 0 || u % s != 0 || u / s >= OW) continue;
        acc += to_f(k[a * 3 + b]) * to_f(gp[(t / s) * OW + u / s]);
      }
    }
    gx[i] = from_f<T>(acc);
  }
}

template <typename T>
__global__ void dw_bwd_weight(const T* __restrict__ g, const T* __restrict__ x,
                              float* __restrict__ gw, int64_t N, int64_t C, int64_t H, int64_t W,
                              int64_t OH, int64_t OW, int s, int d) {
  __shared__ float shm[32];
  const int64_t c = blockIdx.x;
  float acc[9] = {0, 0, 0, 0, 0, 0, 0, 0, 0};
  const int64_t per = OH * OW;
  for (int64_t j = threadIdx.x; j < N * per; j += blockDim.x) {
    const int64_t n = j / per, q = j % per, oh = q / OW, ow = q % OW;
    const float gv = to_f(g[(n * C + c) * per + q]);
    const T* xp = x + (n * C + c) * H * W;
    for (int a = 0; a < 3; ++a) {
      const int64_t ih = oh * s + (a - 1) * d;
      if (ih < 0 || ih >= H) continue;
      for (int b = 0; b < 3; ++b) {
        const int64_t iw = ow * s + (b - 1) * d;
        if (iw < 0 || iw >= W) continue;
        acc[a * 3 + b] += gv * to_f(xp[ih * W + iw]);
      }
    }
  }
  for (int t = 0; t < 9; ++t) {
    const float v = block_sum(acc[t], shm);
    if (threadIdx.x == 0) gw[c * 9 + t] = v;
  }
}

// ------------------------------------------------------------------------------- epilogue
template <typename T>
__global__ void epi_fwd(const T* __restrict__ y, const T* __restrict__ sc, const T* __restrict__ w,
                        const T* __restrict__ b, T* __restrict__ out, float* mean, float* rstd,
                        int64_t C, int64_t L, bool norm, int act, float slope, float eps) {
  __shared__ float shm[32];
  const int64_t p = blockIdx.x, c = p % C;
  const T* yp = y + p * L;
  float a = w ? to_f(w[c]) : 1.f, sh = b ? to_f(b[c]) : 0.f;
  if (norm) {
    float s = 0.f;
    for (int64_t i = threadIdx.x; i < L; i += blockDim.x) s += to_f(yp[i]);
    const float m = block_sum(s, shm) / static_cast<float>(L);
    float q = 0.f;
    for (int64_t i = threadIdx.x; i < L; i += blockDim.x) {
      const float dlt = to_f(yp[i]) - m;
      q += dlt * dlt;
    }
    const float r = rsqrtf(block_sum(q, shm) / static_cast<float>(L) + eps);
    if (threadIdx.x == 0) {
      mean[p] = m;
      rstd[p] = r;
    }
    sh -= m * r * a;
    a *= r;
  }
  for (int64_t i = threadIdx.x; i < L; i += blockDim.x) {
    float v = to_f(yp[i]) * a + sh;
    if (sc) v += to_f(sc[p * L + i]);
    out[p * L + i] = from_f<T>(act_f(v, act, slope));
  }
}

template <typename T>
__global__ void epi_bwd(const T* __restrict__ g, const T* __restrict__ y, const T* __restrict__ o,
                        const float* __restrict__ mean, const float* __restrict__ rstd,
                        const T* __restrict__ w, T* __restrict__ gy, T* __restrict__ gs,
                        float* gw_part, float* gb_part, int64_t C, int64_t L, bool norm, int act,
                        float slope) {
  __shared__ float shm[32];
  const int64_t p = blockIdx.x, c = p % C, base = p * L;
  const float m = norm ? mean[p] : 0.f, r = norm ? rstd[p] : 1.f;
  const float wc = w ? to_f(w[c]) : 1.f;
  float sg = 0.f, sgz = 0.f;
  for (int64_t i = threadIdx.x; i < L; i += blockDim.x) {
    const float gp = to_f(g[base + i]) * act_grad_out(to_f(o[base + i]), act, slope);
    const float z = norm ? (to_f(y[base + i]) - m) * r : to_f(y[base + i]);
    sg += gp;
    sgz += gp * z;
  }
  sg = block_sum(sg, shm);
  sgz = block_sum(sgz, shm);
  if (threadIdx.x == 0) {
    if (gw_part) gw_part[p] = sgz;
    if (gb_part) gb_part[p] = sg;
  }
  const float mg = wc * sg / static_cast<float>(L), mgz = wc * sgz / static_cast<float>(L);
  for (int64_t i = threadIdx.x; i < L; i += blockDim.x) {
    const float gp = to_f(g[base + i]) * act_grad_out(to_f(o[base + i]), act, slope);
    if (gs) gs[base + i] = from_f<T>(gp);
    if (norm) {
      const float z = (to_f(y[base + i]) - m) * r;
      gy[base + i] = from_f<T>(r * (gp * wc - mg - z * mgz));
    } else {
      gy[base + i] = from_f<T>(gp * wc);
    }
  }
}

// ------------------------------------------------------------------------------- dws_block
constexpr int kTile = 8;         // output tile kTile x kTile
constexpr int kHalo = kTile + 2;  // hidden tile with the 3x3 halo
constexpr int kChunk = 32;       // hidden channels per shared-memory chunk

__device__ __forceinline__ int64_t reflect_idx(int64_t i, int64_t n) {
  return i < 0 ? -i : (i >= n ? 2 * (n - 1) - i : i);
}

// mode 0: full block without norms (out = act(project(...) + shortcut));
// mode 1: write the depthwise output (pre-N2) to dout and add its per-(n, h) statistics to st2.
// sc1/sh1: per (n, h) scale/shift after the expansion (N1), null for none.
__global__ void dws_tile(const float* __restrict__ x, const float* __restrict__ we,
                         const float* __restrict__ wdw, const float* __restrict__ wp,
                         const float* __restrict__ ws, const float* __restrict__ sc1,
                         const float* __restrict__ sh1, float* __restrict__ out,
                         float* __restrict__ dout, double* __restrict__ st2, int64_t Cin,
                         int64_t Hid, int64_t Cout, int64_t H, int64_t W, int act, float slope,
                         bool reflect, int mode) {
  __shared__ float hs[kChunk][kHalo * kHalo];
  __shared__ float ds[kChunk][kTile * kTile];
  const int64_t tiles_w = (W + kTile - 1) / kTile;
  const int64_t n = blockIdx.y;
  const int64_t oh0 = (blockIdx.x / tiles_w) * kTile, ow0 = (blockIdx.x % tiles_w) * kTile;
  const int64_t HW = H * W;
  const float* xn = x + n * Cin * HW;
  for (int64_t h0 = 0; h0 < Hid; h0 += kChunk) {
    const int hc = static_cast<int>(Hid - h0 < kChunk ? Hid - h0 : kChunk);
    for (int e = threadIdx.x; e < hc * kHalo * kHalo; e += blockDim.x) {
      const int hh = e / (kHalo * kHalo), q = e % (kHalo * kHalo);
      int64_t ih = oh0 - 1 + q / kHalo, iw = ow0 - 1 + q % kHalo;
      float v = 0.f;
      const bool inside = ih >= 0 && ih < H && iw >= 0 && iw < W;
      if (inside || reflect) {
        ih = reflect_idx(ih, H);
        iw = reflect_idx(iw, W);
        if (ih >= 0 && ih < H && iw >= 0 && iw < W) {
          const float* wr = we + (h0 + hh) * Cin;
          for (int64_t ci = 0; ci < Cin; ++ci) v += wr[ci] * xn[ci * HW + ih * W + iw];
          if (sc1) v = v * sc1[n * Hid + h0 + hh] + sh1[n * Hid + h0 + hh];
          v = act_f(v, act, slope);
        }
      }
      hs[hh][q] = v;
    }
    __syncthreads();
    for (int e = threadIdx.x; e < hc * kTile * kTile; e += blockDim.x) {
      const int hh = e / (kTile * kTile), q = e % (kTile * kTile), ty = q / kTile, tx = q % kTile;
      const float* k = wdw + (h0 + hh) * 9;
      float v = 0.f;
#pragma unroll
      for (int a = 0; a < 3; ++a)
#pragma unroll
        for (int b = 0; b < 3; ++b) v += k[a * 3 + b] * hs[hh][(ty + a) * kHalo + tx + b];
      ds[hh][q] = mode == 0 ? act_f(v, act, slope) : v;
    }
    __syncthreads();
    if (mode == 0) {
      for (int e = threadIdx.x; e < Cout * kTile * kTile; e += blockDim.x) {
        const int64_t co = e / (kTile * kTile);
        const int q = e % (kTile * kTile);
        const int64_t oh = oh0 + q / kTile, ow = ow0 + q % kTile;
        if (oh >= H || ow >= W) continue;
        float v = h0 == 0 ? 0.f : out[(n * Cout + co) * HW + oh * W + ow];
        for (int hh = 0; hh < hc; ++hh) v += wp[co * Hid + h0 + hh] * ds[hh][q];
        out[(n * Cout + co) * HW + oh * W + ow] = v;
      }
    } else {
      for (int hh = threadIdx.x >> 5; hh < hc; hh += blockDim.x >> 5) {
        float s = 0.f, s2 = 0.f;
        for (int q = threadIdx.x & 31; q < kTile * kTile; q += 32) {
          const int64_t oh = oh0 + q / kTile, ow = ow0 + q % kTile;
          if (oh >= H || ow >= W) continue;
          const float v = ds[hh][q];
          s += v;
          s2 += v * v;
          dout[(n * Hid + h0 + hh) * HW + oh * W + ow] = v;
        }
        for (int o = 16; o > 0; o >>= 1) {
          s += __shfl_down_sync(0xffffffffu, s, o);
          s2 += __shfl_down_sync(0xffffffffu, s2, o);
        }
        if ((threadIdx.x & 31) == 0) {
          atomicAdd(st2 + 2 * (n * Hid + h0 + hh), static_cast<double>(s));
          atomicAdd(st2 + 2 * (n * Hid + h0 + hh) + 1, static_cast<double>(s2));
        }
      }
    }
    __syncthreads();
  }
  if (mode == 0) {
    for (int e = threadIdx.x; e < Cout * kTile * kTile; e += blockDim.x) {
      const int64_t co = e / (kTile * kTile);
      const int q = e % (kTile * kTile);
      const int64_t oh = oh0 + q / kTile, ow = ow0 + q % kTile;
      if (oh >= H || ow >= W) continue;
      float s = 0.f;
      if (ws) {
        for (int64_t ci = 0; ci < Cin; ++ci) s += ws[co * Cin + ci] * xn[ci * HW + oh * W + ow];
      } else {
        s = xn[co * HW + oh * W + ow];
      }
      float* o = out + (n * Cout + co) * HW + oh * W + ow;
      *o = act_f(*o + s, act, slope);
    }
  }
}

// out[n, co, p] = sum_ci w[co, ci] * f(in[n, ci, p]), f = act(a * v + b) per (n, ci) when a is given;
// statistics (sum, sumsq) per (n, co) into st; the output is written only when out is non-null.
__global__ void conv1x1_stats(const float* __restrict__ in, const float* __restrict__ w,
                              const float* __restrict__ a, const float* __restrict__ b, int act_in,
                              float slope, float* __restrict__ out, double* __restrict__ st,
                              int64_t Ci, int64_t Co, int64_t HW) {
  __shared__ float shm[32];
  const int64_t co = blockIdx.y, n = blockIdx.z;
  const int64_t p = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  float v = 0.f;
  if (p < HW) {
    for (int64_t ci = 0; ci < Ci; ++ci) {
      float t = in[(n * Ci + ci) * HW + p];
      if (a) t = act_f(t * a[n * Ci + ci] + b[n * Ci + ci], act_in, slope);
      v += w[co * Ci + ci] * t;
    }
    if (out) out[(n * Co + co) * HW + p] = v;
  }
  const float s = block_sum(p < HW ? v : 0.f, shm);
  const float s2 = block_sum(p < HW ? v * v : 0.f, shm);
  if (threadIdx.x == 0) {
    atomicAdd(st + 2 * (n * Co + co), static_cast<double>(s));
    atomicAdd(st + 2 * (n * Co + co) + 1, static_cast<double>(s2));
  }
}

__global__ void finish_stats(const double* __restrict__ st, const float* __restrict__ gamma,
                             const float* __restrict__ beta, float* scale, float* shift,
                             int64_t NC, int64_t C, int64_t L, float eps) {
  const int64_t p = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (p >= NC) return;
  const double m = st[2 * p] / L;
  double var = st[2 * p + 1] / L - m * m;
  var = var > 0 ? var : 0;
  const float r = static_cast<float>(1.0 / sqrt(var + eps));
  const float g = gamma ? gamma[p % C] : 1.f, bt = beta ? beta[p % C] : 0.f;
  scale[p] = g * r;
  shift[p] = bt - g * r * static_cast<float>(m);
}

__global__ void dws_final(float* __restrict__ out, const float* __restrict__ x,
                          const float* __restrict__ s, const float* a3, const float* b3,
                          const float* as, const float* bs, int64_t total, int64_t HW, int act,
                          float slope) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t p = i / HW;
    const float sc = s ? s[i] * as[p] + bs[p] : x[i];
    out[i] = act_f(out[i] * a3[p] + b3[p] + sc, act, slope);
  }
}

template <typename T>
int dw_fwd_launch(const void* x, const void* w, void* out, int64_t N, int64_t C, int64_t H,
                  int64_t W, int64_t s, int64_t d, cudaStream_t st) {
  const int64_t OH = (H - 1) / s + 1, OW = (W - 1) / s + 1, total = N * C * OH * OW;
  if (total == 0) return 0;
  const int grid = blocks_for(total) < 65535 ? blocks_for(total) : 65535;
  dw_fwd<T><<<grid, kThreads, 0, st>>>(static_cast<const T*>(x), static_cast<const T*>(w),
                                        static_cast<T*>(out), total, C, H, W, OH, OW, (int)s, (int)d);
  return static_cast<int>(cudaGetLastError());
}

template <typename T>
int dw_bwd_launch(const void* g, const void* x, const void* w, void* gx, float* gw, int64_t N,
                  int64_t C, int64_t H, int64_t W, int64_t s, int64_t d, cudaStream_t st) {
  const int64_t OH = (H - 1) / s + 1, OW = (W - 1) / s + 1, total = N * C * H * W;
  if (total == 0) return 0;
  const int grid = blocks_for(total) < 65535 ? blocks_for(total) : 65535;
  dw_bwd_input<T><<<grid, kThreads, 0, st>>>(static_cast<const T*>(g), static_cast<const T*>(w),
                                              static_cast<T*>(gx), total, C, H, W, OH, OW, (int)s,
                                              (int)d);
  dw_bwd_weight<T><<<static_cast<unsigned>(C), kThreads, 0, st>>>(
      static_cast<const T*>(g), static_cast<const T*>(x), gw, N, C, H, W, OH, OW, (int)s, (int)d);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace

#define AGD_CUDA_DISPATCH(dtype, CALL)                        \
  switch (dtype) {                                            \
    case 0: { using scalar_t = float; return CALL; }          \
    case 1: { using scalar_t = __half; return CALL; }         \
    case 2: { using scalar_t = __nv_bfloat16; return CALL; }  \
    default: return static_cast<int>(cudaErrorInvalidValue);  \
  }

int dwconv3x3_forward(int dtype, const void* x, const void* w, void* out, int64_t N, int64_t C,
                      int64_t H, int64_t W, int64_t stride, int64_t dilation, void* stream) {
  auto st = static_cast<cudaStream_t>(stream);
  AGD_CUDA_DISPATCH(dtype, dw_fwd_launch<scalar_t>(x, w, out, N, C, H, W, stride, dilation, st));
}

int dwconv3x3_backward(int dtype, const void* grad, const void* x, const void* w, void* grad_x,
                       float* grad_w, int64_t N, int64_t C, int64_t H, int64_t W, int64_t stride,
                       int64_t dilation, void* stream) {
  auto st = static_cast<cudaStream_t>(stream);
  AGD_CUDA_DISPATCH(dtype, dw_bwd_launch<scalar_t>(grad, x, w, grad_x, grad_w, N, C, H, W, stride,
                                                   dilation, st));
}

namespace {
template <typename T>
int epi_fwd_launch(const void* y, const void* s, const void* w, const void* b, void* out,
                   float* mean, float* rstd, int64_t NC, int64_t C, int64_t L, bool norm, int act,
                   float slope, float eps, cudaStream_t st) {
  if (NC == 0 || L == 0) return 0;
  epi_fwd<T><<<static_cast<unsigned>(NC), kThreads, 0, st>>>(
      static_cast<const T*>(y), static_cast<const T*>(s), static_cast<const T*>(w),
      static_cast<const T*>(b), static_cast<T*>(out), mean, rstd, C, L, norm, act, slope, eps);
  return static_cast<int>(cudaGetLastError());
}
template <typename T>
int epi_bwd_launch(const void* g, const void* y, const void* o, const float* mean,
                   const float* rstd, const void* w, void* gy, void* gs, float* gwp, float* gbp,
                   int64_t NC, int64_t C, int64_t L, bool norm, int act, float slope,
                   cudaStream_t st) {
  if (NC == 0 || L == 0) return 0;
  epi_bwd<T><<<static_cast<unsigned>(NC), kThreads, 0, st>>>(
      static_cast<const T*>(g), static_cast<const T*>(y), static_cast<const T*>(o), mean, rstd,
      static_cast<const T*>(w), static_cast<T*>(gy), static_cast<T*>(gs), gwp, gbp, C, L, norm,
      act, slope);
  return static_cast<int>(cudaGetLastError());
}
}  // namespace

int norm_act_residual_forward(int dtype, const void* y, const void* shortcut, const void* weight,
                              const void* bias, void* out, float* mean, float* rstd, int64_t NC,
                              int64_t C, int64_t L, bool norm, int act, float slope, float eps,
                              void* stream) {
  auto st = static_cast<cudaStream_t>(stream);
  AGD_CUDA_DISPATCH(dtype, epi_fwd_launch<scalar_t>(y, shortcut, weight, bias, out, mean, rstd, NC,
                                                    C, L, norm, act, slope, eps, st));
}

int norm_act_residual_backward(int dtype, const void* grad, const void* y, const void* out,
                               const float* mean, const float* rstd, const void* weight,
                               void* grad_y, void* grad_s, float* gw_part, float* gb_part,
                               int64_t NC, int64_t C, int64_t L, bool norm, int act, float slope,
                               void* stream) {
  auto st = static_cast<cudaStream_t>(stream);
  AGD_CUDA_DISPATCH(dtype, epi_bwd_launch<scalar_t>(grad, y, out, mean, rstd, weight, grad_y,
                                                    grad_s, gw_part, gb_part, NC, C, L, norm, act,
                                                    slope, st));
}

// Scratch (floats): D (N*Hid*HW), S (N*Cout*HW), 4 stats arrays of doubles (2 per (n, c)),
// 8 scale/shift arrays.
int64_t dws_block_scratch_floats(int64_t N, int64_t Cin, int64_t Hid, int64_t Cout, int64_t H,
                                 int64_t W, bool norm) {
  if (!norm) return 0;
  const int64_t HW = H * W;
  return N * Hid * HW + N * Cout * HW + 4 * (N * Hid * 2 + N * Cout * 2) +
         4 * (N * Hid + N * Cout) + 8;
}

int dws_block_forward(const float* x, const float* we, const float* wdw, const float* wp,
                      const float* ws, const float* const* affine, float* out, float* scratch,
                      int64_t N, int64_t Cin, int64_t Hid, int64_t Cout, int64_t H, int64_t W,
                      bool norm, int act, float slope, bool reflect, float eps, void* stream) {
  auto st = static_cast<cudaStream_t>(stream);
  const int64_t HW = H * W;
  if (N == 0 || HW == 0) return 0;
  const dim3 tiles(static_cast<unsigned>(((H + kTile - 1) / kTile) * ((W + kTile - 1) / kTile)),
                   static_cast<unsigned>(N));
  if (!norm) {
    dws_tile<<<tiles, kThreads, 0, st>>>(x, we, wdw, wp, ws, nullptr, nullptr, out, nullptr,
                                         nullptr, Cin, Hid, Cout, H, W, act, slope, reflect, 0);
    return static_cast<int>(cudaGetLastError());
  }
  const float* g[8];
  for (int i = 0; i < 8; ++i) g[i] = affine ? affine[i] : nullptr;
  float* D = scratch;
  float* S = D + N * Hid * HW;
  double* st1 = reinterpret_cast<double*>(S + N * Cout * HW);
  double* st2 = st1 + N * Hid * 2;
  double* st3 = st2 + N * Hid * 2;
  double* sts = st3 + N * Cout * 2;
  float* f = reinterpret_cast<float*>(sts + N * Cout * 2);
  float *a1 = f, *b1 = a1 + N * Hid, *a2 = b1 + N * Hid, *b2 = a2 + N * Hid;
  float *a3 = b2 + N * Hid, *b3 = a3 + N * Cout, *as = b3 + N * Cout, *bs = as + N * Cout;
  cudaMemsetAsync(st1, 0, sizeof(double) * 2 * (2 * N * Hid + 2 * N * Cout), st);
  const dim3 pix(static_cast<unsigned>(blocks_for(HW)));
  conv1x1_stats<<<dim3(pix.x, (unsigned)Hid, (unsigned)N), kThreads, 0, st>>>(
      x, we, nullptr, nullptr, 0, slope, nullptr, st1, Cin, Hid, HW);
  finish_stats<<<blocks_for(N * Hid), kThreads, 0, st>>>(st1, g[0], g[1], a1, b1, N * Hid, Hid, HW, eps);
  dws_tile<<<tiles, kThreads, 0, st>>>(x, we, wdw, wp, ws, a1, b1, nullptr, D, st2, Cin, Hid,
                                       Cout, H, W, act, slope, reflect, 1);
  finish_stats<<<blocks_for(N * Hid), kThreads, 0, st>>>(st2, g[2], g[3], a2, b2, N * Hid, Hid, HW, eps);
  conv1x1_stats<<<dim3(pix.x, (unsigned)Cout, (unsigned)N), kThreads, 0, st>>>(
      D, wp, a2, b2, act, slope, out, st3, Hid, Cout, HW);
  finish_stats<<<blocks_for(N * Cout), kThreads, 0, st>>>(st3, g[4], g[5], a3, b3, N * Cout, Cout, HW, eps);
  if (ws) {
    conv1x1_stats<<<dim3(pix.x, (unsigned)Cout, (unsigned)N), kThreads, 0, st>>>(
        x, ws, nullptr, nullptr, 0, slope, S, sts, Cin, Cout, HW);
    finish_stats<<<blocks_for(N * Cout), kThreads, 0, st>>>(sts, g[6], g[7], as, bs, N * Cout, Cout, HW, eps);
  }
  const int64_t total = N * Cout * HW;
  const int grid = blocks_for(total) < 65535 ? blocks_for(total) : 65535;
  dws_final<<<grid, kThreads, 0, st>>>(out, x, ws ? S : nullptr, a3, b3, as, bs, total, HW, act, slope);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace cuda
}  // namespace agd

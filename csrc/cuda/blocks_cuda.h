// Launchers of agd's CUDA block kernels (csrc/cuda/blocks_kernels.cu). Plain C++ with raw pointers
// and a cudaStream_t passed as void*, so the .cu file needs no torch header (it compiles with a bare
// `nvcc -c`) and the torch glue (bind_cuda.cpp) needs no CUDA header.
#pragma once

#include <cstdint>

namespace agd {
namespace cuda {

// dtype codes: 0 float32, 1 float16, 2 bfloat16
int dwconv3x3_forward(int dtype, const void* x, const void* w, void* out, int64_t N, int64_t C,
                      int64_t H, int64_t W, int64_t stride, int64_t dilation, void* stream);
// grad_w is float32 (C x 9), accumulated with atomics (zeroed by the caller)
int dwconv3x3_backward(int dtype, const void* grad, const void* x, const void* w, void* grad_x,
                       float* grad_w, int64_t N, int64_t C, int64_t H, int64_t W, int64_t stride,
                       int64_t dilation, void* stream);
// mean/rstd float32 (N*C); weight/bias/shortcut may be null
int norm_act_residual_forward(int dtype, const void* y, const void* shortcut, const void* weight,
                              const void* bias, void* out, float* mean, float* rstd, int64_t NC,
                              int64_t C, int64_t L, bool norm, int act, float slope, float eps,
                              void* stream);
// grad_w/grad_b float32 (N*C) partial sums per plane (reduced by the caller); may be null
int norm_act_residual_backward(int dtype, const void* grad, const void* y, const void* out,
                               const float* mean, const float* rstd, const void* weight,
                               void* grad_y, void* grad_s, float* gw_part, float* gb_part,
                               int64_t NC, int64_t C, int64_t L, bool norm, int act, float slope,
                               void* stream);
// Fused DwsBlock, float32. scratch: see dws_block_scratch_floats.
int64_t dws_block_scratch_floats(int64_t N, int64_t Cin, int64_t Hid, int64_t Cout, int64_t H,
                                 int64_t W, bool norm);
int dws_block_forward(const float* x, const float* we, const float* wdw, const float* wp,
                      const float* ws, const float* const* affine, float* out, float* scratch,
                      int64_t N, int64_t Cin, int64_t Hid, int64_t Cout, int64_t H, int64_t W,
                      bool norm, int act, float slope, bool reflect, float eps, void* stream);

}  // namespace cuda
}  // namespace agd

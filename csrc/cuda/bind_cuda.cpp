// torch glue of agd's CUDA block kernels: TORCH_LIBRARY_IMPL(agd, CUDA, m) for dwconv3x3(_backward),
// norm_act_residual(_backward) and dws_block (schemas in agd/ops/blocks.py and agd/ops/fused.py). Built only into agd/_C_cuda
// (setup.py: a CUDA torch and nvcc). It includes no CUDA header: the current stream comes from the
// device-guard interface as a c10::Stream and is passed to the launchers as a void*.
#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <torch/library.h>

#include <vector>

#include "cuda/blocks_cuda.h"

namespace agd {
namespace {

void* current_stream(const at::Tensor& t) {
  return c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)->getStream(t.device()).native_handle();
}

int dtype_code(at::ScalarType t, const char* op) {
  switch (t) {
    case at::kFloat: return 0;
    case at::kHalf: return 1;
    case at::kBFloat16: return 2;
    default: TORCH_CHECK(false, op, " (CUDA): dtype must be float32, float16 or bfloat16, got ", t);
  }
  return -1;
}

void check(int err, const char* op) { TORCH_CHECK(err == 0, op, " (CUDA): kernel launch failed, cudaError ", err); }

at::Tensor dwconv3x3_cuda(const at::Tensor& x_in, const at::Tensor& w_in, int64_t s, int64_t d) {
  TORCH_CHECK(x_in.dim() == 4 && w_in.dim() == 4 && w_in.size(0) == x_in.size(1),
              "agd::dwconv3x3: x (N, C, H, W) and weight (C, 1, 3, 3) expected");
  TORCH_CHECK((s == 1 || s == 2) && (d == 1 || d == 2), "agd::dwconv3x3: stride and dilation must be 1 or 2");
  c10::DeviceGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), w = w_in.to(x.scalar_type()).contiguous();
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  at::Tensor out = at::empty({N, C, (H - 1) / s + 1, (W - 1) / s + 1}, x.options());
  check(cuda::dwconv3x3_forward(dtype_code(x.scalar_type(), "agd::dwconv3x3"), x.data_ptr(), w.data_ptr(),
                                out.data_ptr(), N, C, H, W, s, d, current_stream(x)),
        "agd::dwconv3x3");
  return x_in.is_contiguous(at::MemoryFormat::ChannelsLast) && !x_in.is_contiguous()
             ? out.contiguous(at::MemoryFormat::ChannelsLast)
             : out;
}

std::tuple<at::Tensor, at::Tensor> dwconv3x3_backward_cuda(const at::Tensor& g_in, const at::Tensor& x_in,
                                                           const at::Tensor& w_in, int64_t s, int64_t d) {
  c10::DeviceGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), g = g_in.to(x.scalar_type()).contiguous();
  const at::Tensor w = w_in.to(x.scalar_type()).contiguous();
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  at::Tensor gx = at::empty_like(x);
  at::Tensor gw = at::zeros({C, 9}, x.options().dtype(at::kFloat));
  check(cuda::dwconv3x3_backward(dtype_code(x.scalar_type(), "agd::dwconv3x3_backward"), g.data_ptr(),
                                 x.data_ptr(), w.data_ptr(), gx.data_ptr(), gw.data_ptr<float>(), N, C, H, W,
                                 s, d, current_stream(x)),
        "agd::dwconv3x3_backward");
  const bool cl = x_in.is_contiguous(at::MemoryFormat::ChannelsLast) && !x_in.is_contiguous();
  return {cl ? gx.contiguous(at::MemoryFormat::ChannelsLast) : gx,
          gw.reshape({C, 1, 3, 3}).to(w_in.scalar_type())};
}

at::Tensor opt(const c10::optional<at::Tensor>& t, at::ScalarType st) {
  return t.has_value() && t->defined() ? t->to(st).contiguous() : at::Tensor();
}

const void* ptr(const at::Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }

std::tuple<at::Tensor, at::Tensor, at::Tensor> norm_act_residual_cuda(
    const at::Tensor& y_in, const c10::optional<at::Tensor>& shortcut, const c10::optional<at::Tensor>& weight,
    const c10::optional<at::Tensor>& bias, bool norm, int64_t act, double slope, double eps) {
  TORCH_CHECK(y_in.dim() == 4, "agd::norm_act_residual: y must be 4-D");
  c10::DeviceGuard guard(y_in.device());
  const auto st = y_in.scalar_type();
  const at::Tensor y = y_in.contiguous(), s = opt(shortcut, st), w = opt(weight, st), b = opt(bias, st);
  const int64_t N = y.size(0), C = y.size(1), L = y.size(2) * y.size(3);
  at::Tensor out = at::empty_like(y);
  at::Tensor mean = at::empty({norm ? N : 0, norm ? C : 0}, y.options().dtype(at::kFloat));
  at::Tensor rstd = at::empty_like(mean);
  check(cuda::norm_act_residual_forward(dtype_code(st, "agd::norm_act_residual"), y.data_ptr(), ptr(s), ptr(w),
                                        ptr(b), out.data_ptr(), norm ? mean.data_ptr<float>() : nullptr,
                                        norm ? rstd.data_ptr<float>() : nullptr, N * C, C, L, norm,
                                        static_cast<int>(act), static_cast<float>(slope), static_cast<float>(eps),
                                        current_stream(y)),
        "agd::norm_act_residual");
  return {out, mean, rstd};  // float32 statistics for every dtype (the backward reads them)
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> norm_act_residual_backward_cuda(
    const at::Tensor& grad, const at::Tensor& y_in, const at::Tensor& out, const at::Tensor& mean,
    const at::Tensor& rstd, const c10::optional<at::Tensor>& weight, bool norm, int64_t act, double slope,
    bool has_shortcut, bool has_bias) {
  c10::DeviceGuard guard(y_in.device());
  const auto st = y_in.scalar_type();
  const at::Tensor y = y_in.contiguous(), g = grad.to(st).contiguous(), o = out.to(st).contiguous();
  const at::Tensor m = mean.to(at::kFloat).contiguous(), r = rstd.to(at::kFloat).contiguous();
  const at::Tensor w = opt(weight, st);
  const int64_t N = y.size(0), C = y.size(1), L = y.size(2) * y.size(3);
  at::Tensor gy = at::empty_like(y);
  at::Tensor gs = has_shortcut ? at::empty_like(y) : at::empty({0}, y.options());
  at::Tensor gwp = at::zeros({N, C}, y.options().dtype(at::kFloat));
  at::Tensor gbp = at::zeros({N, C}, y.options().dtype(at::kFloat));
  check(cuda::norm_act_residual_backward(dtype_code(st, "agd::norm_act_residual_backward"), g.data_ptr(),
                                         y.data_ptr(), o.data_ptr(), norm ? m.data_ptr<float>() : nullptr,
                                         norm ? r.data_ptr<float>() : nullptr, ptr(w), gy.data_ptr(),
                                         has_shortcut ? gs.data_ptr() : nullptr, gwp.data_ptr<float>(),
                                         gbp.data_ptr<float>(), N * C, C, L, norm, static_cast<int>(act),
                                         static_cast<float>(slope), current_stream(y)),
        "agd::norm_act_residual_backward");
  at::Tensor gw = w.defined() ? gwp.sum(0).to(st) : at::empty({0}, y.options());
  at::Tensor gb = has_bias ? gbp.sum(0).to(st) : at::empty({0}, y.options());
  return {gy, gs, gw, gb};
}

at::Tensor dws_block_cuda(const at::Tensor& x_in, const at::Tensor& we, const at::Tensor& wdw,
                          const at::Tensor& wp, const c10::optional<at::Tensor>& ws_in, at::TensorList affine,
                          bool norm, int64_t act, double slope, bool reflect, double eps) {
  TORCH_CHECK(x_in.dim() == 4 && x_in.scalar_type() == at::kFloat,
              "agd::dws_block (CUDA): x must be a 4-D float32 tensor");
  TORCH_CHECK(affine.empty() || affine.size() == 8, "agd::dws_block: affine must hold 0 or 8 tensors");
  c10::DeviceGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const int64_t N = x.size(0), Cin = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t Hid = we.size(0), Cout = wp.size(0);
  auto f32 = [](const at::Tensor& t) { return t.to(at::kFloat).contiguous(); };
  const at::Tensor e = f32(we), dw = f32(wdw), p = f32(wp);
  const at::Tensor s = ws_in.has_value() && ws_in->defined() ? f32(*ws_in) : at::Tensor();
  TORCH_CHECK(s.defined() || Cin == Cout, "agd::dws_block: an identity shortcut needs C_in == C_out");
  std::vector<at::Tensor> aff;
  std::vector<const float*> aff_ptr(8, nullptr);
  for (size_t i = 0; i < affine.size(); ++i) {
    aff.push_back(affine[i].numel() ? f32(affine[i]) : at::Tensor());
    aff_ptr[i] = aff.back().defined() ? aff.back().data_ptr<float>() : nullptr;
  }
  at::Tensor out = at::empty({N, Cout, H, W}, x.options());
  const int64_t nscratch = cuda::dws_block_scratch_floats(N, Cin, Hid, Cout, H, W, norm);
  at::Tensor scratch = at::empty({nscratch > 0 ? nscratch : 1}, x.options());
  check(cuda::dws_block_forward(x.data_ptr<float>(), e.data_ptr<float>(), dw.data_ptr<float>(), p.data_ptr<float>(),
                                s.defined() ? s.data_ptr<float>() : nullptr, aff_ptr.data(), out.data_ptr<float>(),
                                scratch.data_ptr<float>(), N, Cin, Hid, Cout, H, W, norm, static_cast<int>(act),
                                static_cast<float>(slope), reflect, static_cast<float>(eps), current_stream(x)),
        "agd::dws_block");
  return out;
}

}  // namespace
}  // namespace agd

TORCH_LIBRARY_IMPL(agd, CUDA, m) {
  m.impl("dwconv3x3", &agd::dwconv3x3_cuda);
  m.impl("dwconv3x3_backward", &agd::dwconv3x3_backward_cuda);
  m.impl("norm_act_residual", &agd::norm_act_residual_cuda);
  m.impl("norm_act_residual_backward", &agd::norm_act_residual_backward_cuda);
  m.impl("dws_block", &agd::dws_block_cuda);
}

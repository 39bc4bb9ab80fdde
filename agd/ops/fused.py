"""The inference-only fused block ops: the whole DwsBlock (``agd::dws_block``), the few-output-channel
last layer (``agd::conv_narrow``) and the GEMM inside the CPU block kernels (``agd::block_gemm``).
Kernels: csrc/cpu/{dws_block,conv_narrow,sgemm_avx512}.cpp; conventions as in :mod:`agd.ops.blocks`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from agd.ops import library
from agd.ops.activations import act_code, act_forward
from agd.ops.blocks import check_act, use_reference
from agd.ops.library import LIB as _LIB

# ---- dws_block: the fused inference DwsBlock (see csrc/cpu/dws_block.cpp for what is fused)

_LIB.define(
    "dws_block(Tensor x, Tensor w_expand, Tensor w_dw, Tensor w_project, Tensor? w_shortcut, Tensor[] affine, "
    "bool norm, int act, float negative_slope, bool reflect, float eps) -> Tensor"
)


def _check_dws_args(x, w_expand, w_dw, w_project, w_shortcut, affine, act) -> None:
    torch._check_value(x.dim() == 4, lambda: f"agd::dws_block: x must be 4-D, got {x.dim()}-D")
    cin, hid, cout = x.shape[1], w_expand.shape[0], w_project.shape[0]
    torch._check_value(tuple(w_expand.shape) == (hid, cin, 1, 1),
                       lambda: f"agd::dws_block: w_expand must be (hidden, {cin}, 1, 1), got {tuple(w_expand.shape)}")
    torch._check_value(tuple(w_dw.shape) == (hid, 1, 3, 3),
                       lambda: f"agd::dws_block: w_dw must be ({hid}, 1, 3, 3), got {tuple(w_dw.shape)}")
    torch._check_value(tuple(w_project.shape) == (cout, hid, 1, 1),
                       lambda: f"agd::dws_block: w_project must be (C_out, {hid}, 1, 1), got {tuple(w_project.shape)}")
    if w_shortcut is None:
        torch._check_value(cin == cout, lambda: f"agd::dws_block: identity shortcut needs C_in == C_out, got {cin}, {cout}")
    else:
        torch._check_value(tuple(w_shortcut.shape) == (cout, cin, 1, 1),
                           lambda: f"agd::dws_block: w_shortcut must be ({cout}, {cin}, 1, 1), got {tuple(w_shortcut.shape)}")
    torch._check_value(len(affine) in (0, 8), lambda: f"agd::dws_block: affine holds 0 or 8 tensors, got {len(affine)}")
    check_act(act)


def dws_block_reference(x, w_expand, w_dw, w_project, w_shortcut, affine, norm: bool, act: int,
                        negative_slope: float = 0.2, reflect: bool = False, eps: float = 1e-5) -> torch.Tensor:
    """PyTorch reference of the DwsBlock: expand → N → act → dw3x3 → N → act → project → N, plus the
    shortcut (identity, or 1x1 → N), → act. ``affine`` is [] or [g1, b1, g2, b2, g3, b3, gs, bs]
    (empty tensors where a norm has no affine)."""
    _check_dws_args(x, w_expand, w_dw, w_project, w_shortcut, affine, act)
    aff = [a if a is not None and a.numel() else None for a in affine] if affine else [None] * 8

    def nrm(y, k):
        return F.instance_norm(y, weight=aff[2 * k], bias=aff[2 * k + 1], eps=eps) if norm else y

    y = act_forward(nrm(F.conv2d(x, w_expand), 0), act, negative_slope)
    if reflect:
        y = F.conv2d(F.pad(y, (1, 1, 1, 1), mode="reflect"), w_dw, groups=y.shape[1])
    else:
        y = F.conv2d(y, w_dw, padding=1, groups=y.shape[1])
    y = nrm(F.conv2d(act_forward(nrm(y, 1), act, negative_slope), w_project), 2)
    s = x if w_shortcut is None else nrm(F.conv2d(x, w_shortcut), 3)
    return act_forward(y + s, act, negative_slope).contiguous()


_LIB.impl("dws_block", dws_block_reference, "CompositeExplicitAutograd")


@torch.library.register_fake("agd::dws_block", lib=_LIB)
def _dws_block_fake(x, w_expand, w_dw, w_project, w_shortcut, affine, norm, act, negative_slope, reflect, eps):
    _check_dws_args(x, w_expand, w_dw, w_project, w_shortcut, affine, act)
    return x.new_empty((x.shape[0], w_project.shape[0], x.shape[2], x.shape[3]))


def dws_block(x: torch.Tensor, w_expand: torch.Tensor, w_dw: torch.Tensor, w_project: torch.Tensor,
              w_shortcut: torch.Tensor | None = None, affine: list[torch.Tensor] | None = None, *, norm: bool,
              act: str, negative_slope: float = 0.2, reflect: bool = False, eps: float = 1e-5) -> torch.Tensor:
    """The fused DwsBlock for inference. When autograd needs a gradient (grad mode on and any input
    requires grad) the differentiable reference runs instead: the fused op has no backward."""
    code = act_code(act, "dws_block")
    affine = list(affine or [])
    tensors = [x, w_expand, w_dw, w_project, *([w_shortcut] if w_shortcut is not None else []), *affine]
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    if needs_grad or use_reference(x):
        return dws_block_reference(x, w_expand, w_dw, w_project, w_shortcut, affine, norm, code,
                                   negative_slope, reflect, eps)
    return torch.ops.agd.dws_block(x, w_expand, w_dw, w_project, w_shortcut, affine, norm, code,
                                   negative_slope, reflect, eps)


# ---- conv_narrow: K x K "same" convolution to 1-4 output channels + bias + act (inference), the
# generators' last layer (see csrc/cpu/conv_narrow.cpp)

CONV_NARROW_MAX_OUT = 4

_LIB.define(
    "conv_narrow(Tensor x, Tensor weight, Tensor? bias, bool reflect, int act, float negative_slope) -> Tensor"
)


def _check_conv_narrow_args(x, weight, bias, reflect, act) -> None:
    torch._check_value(x.dim() == 4 and weight.dim() == 4,
                       lambda: f"agd::conv_narrow: x and weight must be 4-D, got {x.dim()}-D and {weight.dim()}-D")
    o, c, kh, kw = weight.shape
    torch._check_value(1 <= o <= CONV_NARROW_MAX_OUT,
                       lambda: f"agd::conv_narrow: 1 to {CONV_NARROW_MAX_OUT} output channels, got {o}")
    torch._check_value(c == x.shape[1] and kh == kw and kh % 2 == 1,
                       lambda: f"agd::conv_narrow: weight must be (C_out, {x.shape[1]}, K, K) with K odd, "
                               f"got {tuple(weight.shape)}")
    torch._check_value(bias is None or bias.numel() == o,
                       lambda: f"agd::conv_narrow: bias must have {o} elements")
    if reflect:
        torch._check_value(x.shape[2] > kh // 2 and x.shape[3] > kh // 2,
                           lambda: f"agd::conv_narrow: reflect padding {kh // 2} needs H and W > {kh // 2}, "
                                   f"got {x.shape[2]}x{x.shape[3]}")
    check_act(act)


def conv_narrow_reference(x, weight, bias, reflect: bool, act: int, negative_slope: float = 0.2) -> torch.Tensor:
    """PyTorch reference: act(conv2d(pad(x), weight, bias)), padding K // 2 (zeros or reflect)."""
    _check_conv_narrow_args(x, weight, bias, reflect, act)
    p = weight.shape[-1] // 2
    if reflect and p:
        y = F.conv2d(F.pad(x, (p, p, p, p), mode="reflect"), weight, bias)
    else:
        y = F.conv2d(x, weight, bias, padding=p)
    return act_forward(y, act, negative_slope).contiguous()


_LIB.impl("conv_narrow", conv_narrow_reference, "CompositeExplicitAutograd")


@torch.library.register_fake("agd::conv_narrow", lib=_LIB)
def _conv_narrow_fake(x, weight, bias, reflect, act, negative_slope):
    _check_conv_narrow_args(x, weight, bias, reflect, act)
    return x.new_empty((x.shape[0], weight.shape[0], x.shape[2], x.shape[3]))


def conv_narrow(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *, reflect: bool = False,
                act: str = "none", negative_slope: float = 0.2) -> torch.Tensor:
    """The few-output-channel convolution for inference; the differentiable reference runs when autograd
    needs a gradient or the compiled kernel cannot run."""
    code = act_code(act, "conv_narrow")
    tensors = [x, weight, *([bias] if bias is not None else [])]
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    if needs_grad or use_reference(x):
        return conv_narrow_reference(x, weight, bias, reflect, code, negative_slope)
    return torch.ops.agd.conv_narrow(x, weight, bias, reflect, code, negative_slope)


# ---- block_gemm: out = a @ b, the GEMM inside the CPU block kernels (csrc/cpu/sgemm_avx512.cpp),
# exposed so it is tested and benchmarked on its own. backend: "auto" (what the block kernels use:
# AGD_BLOCK_GEMM if set, else AVX-512 when the CPU has it, else BLAS), "avx512", "blas" or "loop".

BLOCK_GEMM_BACKENDS = ("auto", "avx512", "blas", "loop")

_LIB.define("block_gemm(Tensor a, Tensor b, str backend) -> Tensor")


def block_gemm_name() -> str:
    """The GEMM the C++ block kernels run here ("avx512", "blas" or "loop"), or why none does."""
    ok, why = library.CPU_LIBRARY.load()
    if not ok:
        return f"none ({why})"
    try:
        return torch.ops.agd.block_gemm_backend()
    except RuntimeError as e:  # a bad AGD_BLOCK_GEMM value
        return f"none ({str(e).splitlines()[0]})"


def _check_block_gemm_args(a, b, backend) -> None:
    torch._check_value(a.dim() == 2 and b.dim() == 2 and a.shape[1] == b.shape[0],
                       lambda: f"agd::block_gemm: needs (m, k) @ (k, n), got {tuple(a.shape)} @ {tuple(b.shape)}")
    torch._check_value(a.dtype == b.dtype and a.dtype in (torch.float32, torch.float64),
                       lambda: f"agd::block_gemm: a and b must both be float32 or float64, got {a.dtype}, {b.dtype}")
    torch._check_value(backend in BLOCK_GEMM_BACKENDS,
                       lambda: f"agd::block_gemm: backend {backend!r} is not one of {', '.join(BLOCK_GEMM_BACKENDS)}")


def block_gemm_reference(a: torch.Tensor, b: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """PyTorch reference: a @ b."""
    _check_block_gemm_args(a, b, backend)
    return torch.mm(a, b)


_LIB.impl("block_gemm", block_gemm_reference, "CompositeExplicitAutograd")


@torch.library.register_fake("agd::block_gemm", lib=_LIB)
def _block_gemm_fake(a, b, backend):
    _check_block_gemm_args(a, b, backend)
    return a.new_empty((a.shape[0], b.shape[1]))


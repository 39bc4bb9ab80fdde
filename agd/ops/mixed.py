"""The mixed layer's ops: the weighted candidate sum, and the candidates' epilogues fused with it.

Registration and loading: :mod:`agd.ops.library`; the Triton kernels: agd.kernels.mixed_epilogue.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from agd.io import AgdError
from agd.kernels.status import triton_status
from agd.ops.activations import EPILOGUE_ACTS, act_forward, act_grad
from agd.ops.library import LIB as _LIB
from agd.status import BackendStatus

# --------------------------------------------------------------------------------------------
# mixed_sum: the weighted sum of a mixed layer's candidate outputs, out = sum_k w[k] * outs[k]
# Every supernet layer goes through here; a fused kernel (Triton) replaces the fast path only.
# --------------------------------------------------------------------------------------------


def mixed_sum_reference(weights: torch.Tensor, outs: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> torch.Tensor:
    """PyTorch reference: ``sum_k weights[k] * outs[k]`` (all outputs of one shape), differentiable in both."""
    if weights.dim() != 1 or weights.shape[0] != len(outs) or not outs:
        raise ValueError(f"mixed_sum: {weights.shape[0] if weights.dim() == 1 else tuple(weights.shape)} weights "
                         f"for {len(outs)} candidate outputs")
    shape = outs[0].shape
    for k, o in enumerate(outs):
        if o.shape != shape:
            raise ValueError(f"mixed_sum: candidate {k} has shape {tuple(o.shape)}, candidate 0 {tuple(shape)}")
    w = weights.to(outs[0].dtype)
    acc = w[0] * outs[0]
    for k in range(1, len(outs)):
        acc = acc + w[k] * outs[k]
    return acc


def mixed_sum(weights: torch.Tensor, outs: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The weighted candidate sum of a mixed layer (see :func:`mixed_sum_reference`)."""
    return mixed_sum_reference(weights, outs)


# --------------------------------------------------------------------------------------------
# mixed_epilogue: a mixed layer's candidate epilogues and weighted sum, fused
#   out = sum_k w[k] * act_k(norm_k(z_k[:, :C]) + s_k[:, :C])
# z_k: candidate k's pre-epilogue output (the last conv's output; identity: the layer input, its
# channels truncated or zero-padded to C); norm_k: none or instance norm over H x W (affine or not);
# s_k: an optional shortcut; act_k: none, relu or lrelu (negative slope ``slope``).
#
# Backends (``mixed_epilogue(..., backend=)``):
# - "triton": the op below with its Triton kernels (agd.kernels.mixed_epilogue); CUDA tensors, or CPU
#   tensors when the kernels were decorated under TRITON_INTERPRET=1 (tests);
# - "reference": the same op with its PyTorch implementation (any device; recompute backward);
# - "eager": plain PyTorch autograd of :func:`mixed_epilogue_reference` (no custom op);
# - "auto": "triton" for CUDA tensors when the Triton backend is usable there (not AGD_DISABLE_TRITON=1),
#   else "eager".
# Op calling convention: ``xs`` are the distinct input tensors (a tensor used by several candidates, e.g.
# the layer input as identity's z and as the blocks' shortcut, appears once and gets one gradient);
# ``params`` the affine norm parameters (gamma at i, beta at i + 1); ``spec`` holds 5 ints per candidate:
# (index of z in xs, index of the shortcut or -1, index of gamma in params or -1, norm 0/1, act code).
# --------------------------------------------------------------------------------------------

EPILOGUE_BACKENDS = ("auto", "triton", "reference", "eager")
_EPILOGUE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass(frozen=True)
class EpilogueCandidate:
    """One candidate's pre-epilogue output and how to finish it (see the section comment)."""

    z: torch.Tensor
    shortcut: torch.Tensor | None = None
    norm: bool = False
    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    act: str = "none"


_LIB.define("mixed_epilogue(Tensor weights, Tensor[] xs, Tensor[] params, int[] spec, SymInt channels, "
            "float eps, float slope, str impl) -> (Tensor, Tensor)")
_LIB.define("mixed_epilogue_backward(Tensor grad, Tensor weights, Tensor[] xs, Tensor[] params, Tensor stats, "
            "int[] spec, SymInt channels, float eps, float slope, str impl) -> (Tensor, Tensor[], Tensor[])")


def _fit_channels(z: torch.Tensor, channels: int) -> torch.Tensor:
    """The first ``channels`` channels of z, zero-padded where z has fewer (identity's convention)."""
    c = z.shape[1]
    if c == channels:
        return z
    if c > channels:
        return z[:, :channels]
    return F.pad(z, (0, 0, 0, 0, 0, channels - c))


def _check_epilogue_args(weights, xs, params, spec, channels) -> int:
    """Validate shapes, dtypes and the spec (also on fake tensors); return the number of candidates."""
    torch._check_value(len(spec) % 5 == 0 and len(spec) > 0,
                       lambda: f"agd::mixed_epilogue: spec must hold 5 ints per candidate, got {len(spec)}")
    k = len(spec) // 5
    torch._check_value(weights.dim() == 1 and weights.shape[0] == k,
                       lambda: f"agd::mixed_epilogue: {tuple(weights.shape)} weights for {k} candidates")
    torch._check_value(len(xs) > 0, lambda: "agd::mixed_epilogue: no input tensors")
    x0 = xs[0]
    torch._check_type(x0.dtype in _EPILOGUE_DTYPES,
                      lambda: f"agd::mixed_epilogue: inputs must be float16, bfloat16, float32 or float64, got {x0.dtype}")
    for i, x in enumerate(xs):
        torch._check_value(x.dim() == 4 and x.shape[0] == x0.shape[0] and x.shape[2:] == x0.shape[2:],
                           lambda: f"agd::mixed_epilogue: input {i} has shape {tuple(x.shape)}, input 0 {tuple(x0.shape)}")
        torch._check_type(x.dtype == x0.dtype and x.device == x0.device,
                          lambda: f"agd::mixed_epilogue: input {i} is {x.dtype} on {x.device}, input 0 {x0.dtype} on {x0.device}")
    for j in range(k):
        zi, si, ai, norm, act = spec[5 * j: 5 * j + 5]
        torch._check_index(0 <= zi < len(xs), lambda: f"agd::mixed_epilogue: candidate {j}: z index {zi} out of range")
        torch._check_index(-1 <= si < len(xs), lambda: f"agd::mixed_epilogue: candidate {j}: shortcut index {si} out of range")
        torch._check_index(ai == -1 or 0 <= ai < len(params) - 1,
                           lambda: f"agd::mixed_epilogue: candidate {j}: affine index {ai} out of range")
        torch._check_value(norm in (0, 1) and act in (0, 1, 2),
                           lambda: f"agd::mixed_epilogue: candidate {j}: norm {norm} / act {act} unknown")
        torch._check_value(not norm or xs[zi].shape[1] >= channels,
                           lambda: f"agd::mixed_epilogue: candidate {j}: a normalised z needs >= {channels} channels")
        torch._check_value(si < 0 or xs[si].shape[1] >= channels,
                           lambda: f"agd::mixed_epilogue: candidate {j}: the shortcut needs >= {channels} channels")
        torch._check_value(ai < 0 or bool(norm), lambda: f"agd::mixed_epilogue: candidate {j}: affine without a norm")
    return k


def _epilogue_acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _epilogue_terms(weights, xs, params, spec, channels, eps, stats=None):
    """Per candidate (xhat, u, act code, gamma or None, rstd or None), computed in the accumulation dtype."""
    acc = _epilogue_acc(xs[0].dtype)
    out = []
    for j in range(len(spec) // 5):
        zi, si, ai, norm, act = spec[5 * j: 5 * j + 5]
        z = _fit_channels(xs[zi], channels).to(acc)
        gamma = rstd = None
        if norm:
            if stats is None:
                var, mean = torch.var_mean(z, dim=(2, 3), unbiased=False, keepdim=True)
                rstd = torch.rsqrt(var + eps)
            else:
                mean, rstd = stats[j, ..., 0, None, None], stats[j, ..., 1, None, None]
            xhat = (z - mean) * rstd
            u = xhat
            if ai >= 0:
                gamma = params[ai][:channels].to(acc).view(1, -1, 1, 1)
                u = xhat * gamma + params[ai + 1][:channels].to(acc).view(1, -1, 1, 1)
        else:
            xhat = u = z
        if si >= 0:
            u = u + xs[si][:, :channels].to(acc)
        out.append((xhat, u, act, gamma, rstd, mean if norm else None))
    return out


def _mixed_epilogue_torch(weights, xs, params, spec, channels, eps, slope):
    """The op's PyTorch implementation: (out, stats (K, N, C, 2) of (mean, rstd))."""
    k = _check_epilogue_args(weights, xs, params, spec, channels)
    acc = _epilogue_acc(xs[0].dtype)
    n = xs[0].shape[0]
    stats = torch.zeros((k, n, channels, 2), dtype=acc, device=xs[0].device)
    w = weights.to(acc)
    out = None
    for j, (xhat, u, act, _, rstd, mean) in enumerate(_epilogue_terms(weights, xs, params, spec, channels, eps)):
        if rstd is not None:
            stats[j, ..., 0] = mean[..., 0, 0]
            stats[j, ..., 1] = rstd[..., 0, 0]
        term = w[j] * act_forward(u, act, slope)
        out = term if out is None else out + term
    return out.to(xs[0].dtype).contiguous(), stats


def _mixed_epilogue_backward_torch(grad, weights, xs, params, stats, spec, channels, eps, slope):
    """The PyTorch backward, from the saved statistics (recomputes xhat, u): (grad w, grads xs, grads params)."""
    _check_epilogue_args(weights, xs, params, spec, channels)
    acc = _epilogue_acc(xs[0].dtype)
    g = grad.to(acc)
    w = weights.to(acc)
    grads_x = [torch.zeros(x.shape, dtype=acc, device=x.device) for x in xs]
    grads_p = [torch.zeros(p.shape, dtype=acc, device=p.device) for p in params]
    grad_w = []
    hw = xs[0].shape[2] * xs[0].shape[3]
    for j, (xhat, u, act, gamma, rstd, _) in enumerate(_epilogue_terms(weights, xs, params, spec, channels, eps, stats)):
        zi, si, ai = spec[5 * j: 5 * j + 3]
        grad_w.append((g * act_forward(u, act, slope)).sum())
        du = g * w[j] * act_grad(u, act, slope)
        if si >= 0:
            grads_x[si][:, :channels] += du
        if rstd is not None:
            gam = gamma if gamma is not None else torch.ones((), dtype=acc, device=g.device)
            dxhat = du * gam
            dz = rstd * (dxhat - dxhat.sum((2, 3), keepdim=True) / hw
                         - xhat * (dxhat * xhat).sum((2, 3), keepdim=True) / hw)
            if ai >= 0:
                grads_p[ai][:channels] += (du * xhat).sum((0, 2, 3))
                grads_p[ai + 1][:channels] += du.sum((0, 2, 3))
        else:
            dz = du
        c = min(channels, xs[zi].shape[1])
        grads_x[zi][:, :c] += dz[:, :c]
    dt = xs[0].dtype
    return (torch.stack(grad_w).to(weights.dtype), [gx.to(dt) for gx in grads_x],
            [gp.to(p.dtype) for gp, p in zip(grads_p, params)])


def _epilogue_kernels():
    """agd.kernels.mixed_epilogue, imported on first use: importing it imports triton, an optional dependency
    (agd.kernels.status says whether it is there), and decorates the kernels, which must happen after the
    caller has chosen TRITON_INTERPRET. The one lazy import of this package."""
    from agd.kernels import mixed_epilogue as mod

    return mod


def _triton_runs_on(device: torch.device) -> tuple[bool, str]:
    """Whether the Triton kernels can run on tensors of ``device`` now, and why not."""
    if device.type == "cuda":
        s = triton_status(device)
        return s.available, s.reason
    if device.type == "cpu":
        if os.environ.get("AGD_DISABLE_TRITON", "") == "1":
            return False, "disabled by AGD_DISABLE_TRITON=1"
        s = triton_status("cpu")
        if not s.available:
            return False, s.reason
        if not _epilogue_kernels().interpreted():
            return False, "the kernels were decorated without TRITON_INTERPRET=1 (set it before agd.kernels.mixed_epilogue is imported)"
        return True, s.reason
    return False, f"no Triton kernels for {device.type} tensors"


def _mixed_epilogue_impl(weights, xs, params, spec, channels, eps, slope, impl):
    if impl == "triton":
        ok, why = _triton_runs_on(xs[0].device)
        if not ok:
            raise AgdError(f"mixed_epilogue: the Triton backend cannot run here: {why}")
        _check_epilogue_args(weights, xs, params, spec, channels)
        acc = _epilogue_acc(xs[0].dtype)
        ps = [p.detach().to(acc).contiguous() for p in params]
        return _epilogue_kernels().epilogue_forward(weights, list(xs), ps, list(spec), channels, eps, slope)
    if impl != "reference":
        raise AgdError(f"mixed_epilogue: implementation {impl!r} is not triton or reference")
    return _mixed_epilogue_torch(weights, xs, params, spec, channels, eps, slope)


def _mixed_epilogue_backward_impl(grad, weights, xs, params, stats, spec, channels, eps, slope, impl):
    if impl == "triton":
        ok, why = _triton_runs_on(xs[0].device)
        if not ok:
            raise AgdError(f"mixed_epilogue: the Triton backend cannot run here: {why}")
        acc = _epilogue_acc(xs[0].dtype)
        ps = [p.detach().to(acc).contiguous() for p in params]
        gw, gx, gp = _epilogue_kernels().epilogue_backward(grad, weights, list(xs), ps, stats, list(spec), channels,
                                                           eps, slope)
        return gw.to(weights.dtype), gx, [g.to(p.dtype) for g, p in zip(gp, params)]
    return _mixed_epilogue_backward_torch(grad, weights, xs, params, stats, spec, channels, eps, slope)


_LIB.impl("mixed_epilogue", _mixed_epilogue_impl, "CompositeExplicitAutograd")
_LIB.impl("mixed_epilogue_backward", _mixed_epilogue_backward_impl, "CompositeExplicitAutograd")


@torch.library.register_fake("agd::mixed_epilogue", lib=_LIB)
def _mixed_epilogue_fake(weights, xs, params, spec, channels, eps, slope, impl):
    k = _check_epilogue_args(weights, xs, params, spec, channels)
    n, _, h, w = xs[0].shape
    acc = _epilogue_acc(xs[0].dtype)
    return xs[0].new_empty((n, channels, h, w)), xs[0].new_empty((k, n, channels, 2), dtype=acc)


@torch.library.register_fake("agd::mixed_epilogue_backward", lib=_LIB)
def _mixed_epilogue_backward_fake(grad, weights, xs, params, stats, spec, channels, eps, slope, impl):
    _check_epilogue_args(weights, xs, params, spec, channels)
    return weights.new_empty(weights.shape), [x.new_empty(x.shape) for x in xs], [p.new_empty(p.shape) for p in params]


def _mixed_epilogue_setup_context(ctx, inputs, output) -> None:
    weights, xs, params, spec, channels, eps, slope, impl = inputs
    ctx.save_for_backward(weights, output[1], *xs, *params)
    ctx.n_xs = len(xs)
    ctx.args = (list(spec), channels, eps, slope, impl)
    ctx.mark_non_differentiable(output[1])


def _mixed_epilogue_backward(ctx, grad, _grad_stats):
    weights, stats, *rest = ctx.saved_tensors
    xs, params = rest[: ctx.n_xs], rest[ctx.n_xs:]
    spec, channels, eps, slope, impl = ctx.args
    gw, gx, gp = torch.ops.agd.mixed_epilogue_backward(grad.contiguous(), weights, xs, params, stats, spec, channels,
                                                       eps, slope, impl)
    return gw, list(gx), list(gp), None, None, None, None, None


torch.library.register_autograd("agd::mixed_epilogue", _mixed_epilogue_backward,
                                setup_context=_mixed_epilogue_setup_context, lib=_LIB)


def mixed_epilogue_reference(weights: torch.Tensor, candidates: list[EpilogueCandidate], channels: int, *,
                             eps: float = 1e-5, slope: float = 0.2) -> torch.Tensor:
    """Plain PyTorch (autograd) reference, in the inputs' dtype, the way the blocks compute it: per
    candidate ``F.instance_norm`` → ``+ shortcut`` → activation, then ``sum_k w[k] * ...``."""
    out = None
    for k, cand in enumerate(candidates):
        y = _fit_channels(cand.z, channels)
        if cand.norm:
            g = cand.weight[:channels] if cand.weight is not None else None
            b = cand.bias[:channels] if cand.bias is not None else None
            y = F.instance_norm(y, None, None, g, b, True, 0.0, eps)
        if cand.shortcut is not None:
            y = y + cand.shortcut[:, :channels]
        y = act_forward(y, EPILOGUE_ACTS[cand.act], slope)
        term = weights[k].to(y.dtype) * y
        out = term if out is None else out + term
    return out


def _pack_candidates(candidates: list[EpilogueCandidate], channels: int):
    """(xs, params, spec) of the op's calling convention; tensors shared between candidates appear once.
    H x W planes must be contiguous: other layouts are made contiguous (a copy)."""
    xs: list[torch.Tensor] = []
    seen: dict[int, int] = {}

    def index(t: torch.Tensor) -> int:
        if id(t) not in seen:
            ok = t.shape[2] * t.shape[3] <= 1 or (t.stride(3) == 1 and t.stride(2) == t.shape[3])
            seen[id(t)] = len(xs)
            xs.append(t if ok else t.contiguous())
        return seen[id(t)]

    params: list[torch.Tensor] = []
    spec: list[int] = []
    for j, c in enumerate(candidates):
        if c.act not in EPILOGUE_ACTS:
            raise AgdError(f"mixed_epilogue: candidate {j}: activation {c.act!r} is not one of {', '.join(EPILOGUE_ACTS)}")
        if (c.weight is None) != (c.bias is None):
            raise AgdError(f"mixed_epilogue: candidate {j}: an affine norm needs both weight and bias")
        zi = index(c.z)
        si = index(c.shortcut) if c.shortcut is not None else -1
        ai = -1
        if c.weight is not None:
            ai = len(params)
            params += [c.weight, c.bias]
        spec += [zi, si, ai, int(c.norm), EPILOGUE_ACTS[c.act]]
    dtypes = {x.dtype for x in xs}
    if len(dtypes) > 1:  # e.g. autocast: a conv output in bfloat16 next to a float32 layer input
        dt = functools.reduce(torch.promote_types, dtypes)
        xs = [x.to(dt) for x in xs]
    return xs, params, spec


def mixed_epilogue_backend(device: torch.device | str, requested: str = "auto") -> str:
    """The backend :func:`mixed_epilogue` uses for tensors on ``device``: "triton", "reference" or "eager"."""
    if requested not in EPILOGUE_BACKENDS:
        raise AgdError(f"mixed_epilogue: backend {requested!r} is not one of {', '.join(EPILOGUE_BACKENDS)}")
    if requested != "auto":
        return requested
    device = torch.device(device)
    if device.type == "cuda" and _triton_runs_on(device)[0]:
        return "triton"
    return "eager"


def mixed_epilogue_status(device: torch.device | str | None = None) -> BackendStatus:
    """Which backend a mixed layer's epilogue uses on ``device`` (default: CUDA if visible, else CPU), and why."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    backend = mixed_epilogue_backend(device)
    if backend == "triton":
        return BackendStatus("mixed epilogue", True, f"fused Triton kernel on {device.type}: {triton_status(device).reason}")
    why = triton_status(device).reason if device.type == "cuda" else "the fused kernel runs on CUDA tensors only"
    return BackendStatus("mixed epilogue", False, f"eager PyTorch reference on {device.type} ({why})")


def mixed_epilogue(weights: torch.Tensor, candidates: list[EpilogueCandidate], channels: int, *,
                   eps: float = 1e-5, slope: float = 0.2, backend: str = "auto") -> torch.Tensor:
    """A mixed layer's output ``sum_k weights[k] * act_k(norm_k(z_k) + s_k)`` at ``channels`` channels.

    Differentiable in ``weights``, every ``z``, ``shortcut`` and affine ``weight``/``bias``. See the
    section comment for the backends; "triton" and "reference" call the op ``torch.ops.agd.mixed_epilogue``
    (one node under torch.compile / torch.export), "eager" the plain reference."""
    if not candidates or weights.dim() != 1 or weights.shape[0] != len(candidates):
        raise AgdError(f"mixed_epilogue: weights of shape {tuple(weights.shape)} for {len(candidates)} candidates")
    b = mixed_epilogue_backend(candidates[0].z.device, backend)
    if b == "eager":
        return mixed_epilogue_reference(weights, candidates, channels, eps=eps, slope=slope)
    xs, params, spec = _pack_candidates(candidates, channels)
    return torch.ops.agd.mixed_epilogue(weights, xs, params, spec, channels, eps, slope, b)[0]

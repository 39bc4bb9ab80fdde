"""Fused epilogue of a supernet mixed layer, in Triton.

    out[n, c] = sum_k w[k] * act_k(norm_k(z_k[n, c]) + s_k[n, c])         (c < channels)

Each candidate ``k`` of a mixed layer hands over its pre-epilogue output ``z_k`` (the last conv's output,
or the layer input for ``identity``), optionally a shortcut ``s_k`` and an instance norm (optionally
affine), and an activation (none, ReLU, LeakyReLU: the codes of ``agd.ops.activations.EPILOGUE_ACTS``).
The PyTorch equivalent (``agd.ops.mixed``) makes one pass per norm statistic, normalisation, add,
activation and weighted sum; here one program owns one ``(n, c)`` plane: a statistics pass over the K
candidates' planes, then one pass that writes the output. The second read of a plane comes from L2 (a
64x64 fp32 plane is 16 KB).

Layout contract (the launcher in this module checks it; ``agd.ops.mixed`` makes inputs conform):
- ``xs``: the distinct input tensors, each (N, C_i, H, W) with each H x W plane contiguous (any batch
  and channel strides, so channel-prefix slices need no copy); candidate k reads tensor ``z_of[k]``'s
  first ``min(C_i, channels)`` channels (fewer channels than ``channels`` read as zeros: identity's
  zero padding) and, if it has one, the shortcut tensor ``s_of[k]``'s first ``channels`` channels;
- all of ``xs`` share one dtype (float16, bfloat16, float32, float64); the arithmetic is float32
  (float64 for float64 inputs);
- the per-candidate description (norm, shortcut, affine, activation, and in the backward whether a
  gradient buffer was already written by an earlier candidate) is packed into one constexpr integer,
  so every combination compiles to straight-line code; pointers and strides travel in an int64 table.

Backward: recomputes the normalised values from ``z_k`` and the saved (mean, rstd) rather than storing
any K-sized intermediate. Per plane: one reduction pass (sum of du and du * xhat, and the weight
gradient's partial sum) and one pass writing dz and ds. Candidates that share an input tensor (the layer
input is both identity's z and the shortcut of resblock/dwsblock) accumulate into one gradient buffer.
"""

from __future__ import annotations

import struct

import torch
import triton
import triton.language as tl

MAX_CANDIDATES = 8
ROW = 16  # int64 entries per candidate in the pointer table
BITS = 8  # flag bits per candidate in the packed constexpr

# flag bits of one candidate
NORM, SHORTCUT, AFFINE, ACC_Z, ACC_S = 1, 2, 4, 8, 16
ACT_SHIFT = 5  # two bits: 0 none, 1 relu, 2 leaky relu

# table columns
_Z, _Z_SN, _Z_SC, _Z_C, _S, _S_SN, _S_SC, _G, _B, _DZ, _DZ_SN, _DS, _DS_SN = range(13)

_TL_DTYPES = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32,
              torch.float64: tl.float64}


@triton.jit
def _act(u, ACT: tl.constexpr, slope):
    if ACT == 1:
        return tl.maximum(u, 0.0)
    elif ACT == 2:
        return tl.where(u > 0.0, u, u * slope)
    else:
        return u


@triton.jit
def _dact(u, ACT: tl.constexpr, slope):
    """d act / du, as torch's backward defines it (0 at u == 0 for ReLU, slope for LeakyReLU)."""
    if ACT == 1:
        return tl.where(u > 0.0, 1.0, 0.0)
    elif ACT == 2:
        return tl.where(u > 0.0, 1.0, slope)
    else:
        return tl.full(u.shape, 1.0, u.dtype)


@triton.jit
def _pre_act(tab_ptr, stats_ptr, n, c, pid, NC, idx, m, K_IDX: tl.constexpr, CODE: tl.constexpr,
             DTYPE: tl.constexpr, ACC: tl.constexpr):
    """(xhat, u) of candidate K_IDX on one block of a plane: xhat = the normalised z (z itself without a
    norm), u = the activation's input."""
    row = tab_ptr + K_IDX * 16
    zp = tl.load(row + 0).to(tl.pointer_type(DTYPE))
    zc = tl.load(row + 3)
    v = tl.load(zp + n * tl.load(row + 1) + c * tl.load(row + 2) + idx, mask=m & (c < zc), other=0.0).to(ACC)
    if CODE & 1:
        mean = tl.load(stats_ptr + (K_IDX * NC + pid) * 2)
        rstd = tl.load(stats_ptr + (K_IDX * NC + pid) * 2 + 1)
        xhat = (v - mean) * rstd
        if CODE & 4:
            gp = tl.load(row + 7).to(tl.pointer_type(ACC))
            bp = tl.load(row + 8).to(tl.pointer_type(ACC))
            u = xhat * tl.load(gp + c) + tl.load(bp + c)
        else:
            u = xhat
    else:
        xhat = v
        u = v
    if CODE & 2:
        sp = tl.load(row + 4).to(tl.pointer_type(DTYPE))
        u += tl.load(sp + n * tl.load(row + 5) + c * tl.load(row + 6) + idx, mask=m, other=0.0).to(ACC)
    return xhat, u


@triton.jit
def _stats(tab_ptr, stats_ptr, n, c, pid, NC, HW, eps, offs, K_IDX: tl.constexpr, CODE: tl.constexpr,
           DTYPE: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    """Store (mean, rstd) of candidate K_IDX's plane when it is normalised (shifted sums for accuracy)."""
    if CODE & 1:
        row = tab_ptr + K_IDX * 16
        zp = tl.load(row + 0).to(tl.pointer_type(DTYPE))
        base = zp + n * tl.load(row + 1) + c * tl.load(row + 2)
        shift = tl.load(base).to(ACC)
        s1 = tl.zeros([BLOCK], ACC)
        s2 = tl.zeros([BLOCK], ACC)
        for start in range(0, HW, BLOCK):
            idx = start + offs
            m = idx < HW
            d = tl.where(m, tl.load(base + idx, mask=m, other=0.0).to(ACC) - shift, 0.0)
            s1 += d
            s2 += d * d
        md = tl.sum(s1, 0) / HW
        var = tl.maximum(tl.sum(s2, 0) / HW - md * md, 0.0)
        tl.store(stats_ptr + (K_IDX * NC + pid) * 2, shift + md)
        tl.store(stats_ptr + (K_IDX * NC + pid) * 2 + 1, 1.0 / tl.sqrt(var + eps))


@triton.jit
def _program(C, const_ptr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    """(program id, its plane's n and c, the block's offsets, eps, slope) of one program (one (n, c) plane)."""
    pid = tl.program_id(0)
    eps = tl.load(const_ptr).to(ACC)  # (eps, slope) travel as float64: float64 runs get exact constants
    slope = tl.load(const_ptr + 1).to(ACC)
    return pid, (pid // C).to(tl.int64), (pid % C).to(tl.int64), tl.arange(0, BLOCK), eps, slope


@triton.jit
def _mixed_epilogue_fwd(out_ptr, stats_ptr, w_ptr, tab_ptr, const_ptr, C, HW, NC,
                        K: tl.constexpr, FLAGS: tl.constexpr, DTYPE: tl.constexpr, ACC: tl.constexpr,
                        BLOCK: tl.constexpr):
    pid, n, c, offs, eps, slope = _program(C, const_ptr, ACC, BLOCK)
    # pass 1: per-plane statistics of every normalised candidate
    for k in tl.static_range(K):
        _stats(tab_ptr, stats_ptr, n, c, pid, NC, HW, eps, offs, k, (FLAGS >> (8 * k)) & 255, DTYPE, ACC, BLOCK)
    tl.debug_barrier()
    # pass 2: the weighted sum of the finished candidates
    outp = out_ptr + pid.to(tl.int64) * HW
    for start in range(0, HW, BLOCK):
        idx = start + offs
        m = idx < HW
        acc = tl.zeros([BLOCK], ACC)
        for k in tl.static_range(K):
            xhat, u = _pre_act(tab_ptr, stats_ptr, n, c, pid, NC, idx, m, k, (FLAGS >> (8 * k)) & 255, DTYPE, ACC)
            acc += tl.load(w_ptr + k) * _act(u, (FLAGS >> (8 * k + 5)) & 3, slope)
        tl.store(outp + idx, acc.to(DTYPE), mask=m)


@triton.jit
def _store_grad(ptr, val, m, ACCUM: tl.constexpr, DTYPE: tl.constexpr):
    if ACCUM:
        val += tl.load(ptr, mask=m, other=0.0).to(val.dtype)
    tl.store(ptr, val.to(DTYPE), mask=m)


@triton.jit
def _bwd_candidate(gp, stats_ptr, w_ptr, tab_ptr, gw_ptr, ggamma_ptr, gbeta_ptr, n, c, pid, NC, HW, slope, offs,
                   K_IDX: tl.constexpr, CODE: tl.constexpr, DTYPE: tl.constexpr, ACC: tl.constexpr,
                   BLOCK: tl.constexpr):
    """Candidate K_IDX's share of the backward on one plane: weight-gradient partial, dz, ds (and the
    affine partials). The three loops are written out on purpose: sharing their body through a helper, or
    one write loop for both branches, made the norm-free backward 5-12 % slower on an H200."""
    ACT: tl.constexpr = (CODE >> 5) & 3
    row = tab_ptr + K_IDX * 16
    wk = tl.load(w_ptr + K_IDX)
    zc = tl.load(row + 3)
    dzp = tl.load(row + 9).to(tl.pointer_type(DTYPE)) + n * tl.load(row + 10) + c * HW
    dsp = tl.load(row + 11).to(tl.pointer_type(DTYPE)) + n * tl.load(row + 12) + c * HW
    sw = tl.zeros([BLOCK], ACC)
    if CODE & 1:
        # reductions: sum g * act(u) (weight gradient), sum du, sum du * xhat
        sa = tl.zeros([BLOCK], ACC)
        sb = tl.zeros([BLOCK], ACC)
        for start in range(0, HW, BLOCK):
            idx = start + offs
            m = idx < HW
            g = tl.load(gp + idx, mask=m, other=0.0).to(ACC)
            xhat, u = _pre_act(tab_ptr, stats_ptr, n, c, pid, NC, idx, m, K_IDX, CODE, DTYPE, ACC)
            sw += g * _act(u, ACT, slope)
            du = g * wk * _dact(u, ACT, slope)
            sa += du
            sb += du * xhat
        a_sum = tl.sum(sa, 0)
        b_sum = tl.sum(sb, 0)
        rstd = tl.load(stats_ptr + (K_IDX * NC + pid) * 2 + 1)
        if CODE & 4:
            gamma = tl.load(tl.load(row + 7).to(tl.pointer_type(ACC)) + c)
            tl.store(ggamma_ptr + K_IDX * NC + pid, b_sum)
            tl.store(gbeta_ptr + K_IDX * NC + pid, a_sum)
            mean_a = gamma * a_sum / HW
            mean_b = gamma * b_sum / HW
        else:
            gamma = 1.0
            mean_a = a_sum / HW
            mean_b = b_sum / HW
        for start in range(0, HW, BLOCK):
            idx = start + offs
            m = idx < HW
            g = tl.load(gp + idx, mask=m, other=0.0).to(ACC)
            xhat, u = _pre_act(tab_ptr, stats_ptr, n, c, pid, NC, idx, m, K_IDX, CODE, DTYPE, ACC)
            du = g * wk * _dact(u, ACT, slope)
            dz = rstd * (du * gamma - mean_a - xhat * mean_b)
            _store_grad(dzp + idx, dz, m & (c < zc), (CODE & 8) != 0, DTYPE)
            if CODE & 2:
                _store_grad(dsp + idx, du, m, (CODE & 16) != 0, DTYPE)
    else:
        for start in range(0, HW, BLOCK):
            idx = start + offs
            m = idx < HW
            g = tl.load(gp + idx, mask=m, other=0.0).to(ACC)
            xhat, u = _pre_act(tab_ptr, stats_ptr, n, c, pid, NC, idx, m, K_IDX, CODE, DTYPE, ACC)
            sw += g * _act(u, ACT, slope)
            du = g * wk * _dact(u, ACT, slope)
            _store_grad(dzp + idx, du, m & (c < zc), (CODE & 8) != 0, DTYPE)
            if CODE & 2:
                _store_grad(dsp + idx, du, m, (CODE & 16) != 0, DTYPE)
    tl.store(gw_ptr + K_IDX * NC + pid, tl.sum(sw, 0))


@triton.jit
def _mixed_epilogue_bwd(g_ptr, stats_ptr, w_ptr, tab_ptr, const_ptr, gw_ptr, ggamma_ptr, gbeta_ptr, C, HW, NC,
                        K: tl.constexpr, FLAGS: tl.constexpr, DTYPE: tl.constexpr, ACC: tl.constexpr,
                        BLOCK: tl.constexpr):
    pid, n, c, offs, eps, slope = _program(C, const_ptr, ACC, BLOCK)
    gp = g_ptr + pid.to(tl.int64) * HW
    for k in tl.static_range(K):
        _bwd_candidate(gp, stats_ptr, w_ptr, tab_ptr, gw_ptr, ggamma_ptr, gbeta_ptr, n, c, pid, NC, HW, slope, offs,
                       k, (FLAGS >> (8 * k)) & 255, DTYPE, ACC, BLOCK)
        # a later candidate may accumulate into the buffer just written by other threads
        tl.debug_barrier()


# ------------------------------------------------------------------------------------------------
# launchers
# ------------------------------------------------------------------------------------------------


def interpreted() -> bool:
    """Whether these kernels were decorated under TRITON_INTERPRET=1 (they then run on CPU tensors)."""
    return type(_mixed_epilogue_fwd).__name__ == "InterpretedFunction"


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _block(hw: int, device: torch.device) -> tuple[int, int]:
    """(BLOCK, num_warps): large blocks under the interpreter (cost is per program and per iteration)."""
    b = triton.next_power_of_2(hw)
    if device.type == "cpu":
        return min(b, 4096), 1
    b = min(max(b, 128), 2048)
    return b, 4 if b <= 1024 else 8


def _check(xs, params, spec, channels: int) -> tuple[int, int, int, int]:
    if not xs:
        raise ValueError("mixed_epilogue kernel: no input tensors")
    k = len(spec) // 5
    if not 1 <= k <= MAX_CANDIDATES:
        raise ValueError(f"mixed_epilogue kernel: {k} candidates, the kernel takes 1..{MAX_CANDIDATES}")
    n, _, h, w = xs[0].shape
    dev, dt = xs[0].device, xs[0].dtype
    for i, x in enumerate(xs):
        if x.dim() != 4 or x.shape[0] != n or x.shape[2:] != (h, w):
            raise ValueError(f"mixed_epilogue kernel: input {i} has shape {tuple(x.shape)}, expected ({n}, C, {h}, {w})")
        if x.device != dev or x.dtype != dt:
            raise ValueError(f"mixed_epilogue kernel: input {i} is {x.dtype} on {x.device}, expected {dt} on {dev}")
        if h * w > 1 and (x.stride(3) != 1 or x.stride(2) != w):
            raise ValueError(f"mixed_epilogue kernel: input {i}'s H x W planes are not contiguous (strides {x.stride()})")
    return k, n, h * w, channels


def _f64_bits(x: float) -> int:
    return struct.unpack("<q", struct.pack("<d", x))[0]


def _grad_entry(tab: list[int], col: int, col_sn: int, grad: torch.Tensor, hw: int, index: int, written: set[int],
                accumulate: int) -> int:
    """Enter gradient buffer ``grad`` (of input ``index``) in the table: its pointer at ``col``, its batch stride
    at ``col_sn``; return the ``accumulate`` flag when an earlier candidate writes that buffer first, else 0."""
    tab[col], tab[col_sn] = grad.data_ptr(), grad.shape[1] * hw
    first = index not in written
    written.add(index)
    return 0 if first else accumulate


def _flags_and_table(xs, params, spec, channels, eps: float, slope: float, grads_x=None
                     ) -> tuple[int, torch.Tensor, torch.Tensor]:
    """(packed per-candidate flags, int64 pointer table (K, ROW), float64 (eps, slope)), both on the inputs'
    device. Built as one host list and sent in one copy that does not wait for the device (pinned memory,
    non-blocking): a blocking copy would drain the GPU's queue on every call, and the host could no longer
    run ahead of the kernels."""
    k = len(spec) // 5
    hw = xs[0].shape[2] * xs[0].shape[3]
    tab = [0] * (k * ROW + 2)
    flags, written = 0, set()
    for j in range(k):
        zi, si, ai, norm, act = spec[5 * j: 5 * j + 5]
        r = j * ROW
        z = xs[zi]
        code = (NORM if norm else 0) | (act << ACT_SHIFT)
        tab[r + _Z], tab[r + _Z_SN], tab[r + _Z_SC], tab[r + _Z_C] = z.data_ptr(), z.stride(0), z.stride(1), z.shape[1]
        if grads_x is not None:
            code |= _grad_entry(tab, r + _DZ, r + _DZ_SN, grads_x[zi], hw, zi, written, ACC_Z)
        if si >= 0:
            s = xs[si]
            code |= SHORTCUT
            tab[r + _S], tab[r + _S_SN], tab[r + _S_SC] = s.data_ptr(), s.stride(0), s.stride(1)
            if grads_x is not None:
                code |= _grad_entry(tab, r + _DS, r + _DS_SN, grads_x[si], hw, si, written, ACC_S)
        if ai >= 0:
            code |= AFFINE
            tab[r + _G], tab[r + _B] = params[ai].data_ptr(), params[ai + 1].data_ptr()
        flags |= code << (BITS * j)
    tab[k * ROW], tab[k * ROW + 1] = _f64_bits(eps), _f64_bits(slope)
    host = torch.tensor(tab, dtype=torch.int64)
    dev = xs[0].device
    if dev.type == "cuda":
        host = host.pin_memory()  # the caching host allocator keeps it until the copy has run
    both = host.to(dev, non_blocking=True)
    return flags, both[: k * ROW].view(k, ROW), both[k * ROW:].view(torch.float64)


def epilogue_forward(weights: torch.Tensor, xs: list[torch.Tensor], params: list[torch.Tensor], spec: list[int],
                     channels: int, eps: float, slope: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(out (N, channels, H, W) in the inputs' dtype, stats (K, N, channels, 2) = (mean, rstd) per plane).

    ``params`` must already be in the accumulation dtype (float32, float64 for float64 inputs)."""
    k, n, hw, c = _check(xs, params, spec, channels)
    dev, dt = xs[0].device, xs[0].dtype
    acc = _acc_dtype(dt)
    out = torch.empty((n, c) + tuple(xs[0].shape[2:]), dtype=dt, device=dev)
    stats = torch.zeros((k, n, c, 2), dtype=acc, device=dev)
    if out.numel() == 0:
        return out, stats
    flags, table, consts = _flags_and_table(xs, params, spec, c, eps, slope)
    w = weights.detach().to(device=dev, dtype=acc).contiguous()
    block, warps = _block(hw, dev)
    _mixed_epilogue_fwd[(n * c,)](out, stats, w, table, consts, c, hw, n * c,
                                  K=k, FLAGS=flags, DTYPE=_TL_DTYPES[dt], ACC=_TL_DTYPES[acc], BLOCK=block,
                                  num_warps=warps)
    return out, stats


def epilogue_backward(grad: torch.Tensor, weights: torch.Tensor, xs: list[torch.Tensor], params: list[torch.Tensor],
                      stats: torch.Tensor, spec: list[int], channels: int, eps: float, slope: float
                      ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """(grad of weights (K,) in the accumulation dtype, one gradient per ``xs`` (its shape, contiguous),
    one per ``params``)."""
    k, n, hw, c = _check(xs, params, spec, channels)
    dev, dt = xs[0].device, xs[0].dtype
    acc = _acc_dtype(dt)
    grads_x = [torch.zeros(x.shape, dtype=dt, device=dev) if x.shape[1] > c else torch.empty(x.shape, dtype=dt, device=dev)
               for x in xs]
    part_w = torch.zeros((k, n * c), dtype=acc, device=dev)
    part_gamma = torch.zeros((k, n, c), dtype=acc, device=dev)
    part_beta = torch.zeros((k, n, c), dtype=acc, device=dev)
    if n * c > 0 and hw > 0:
        flags, table, consts = _flags_and_table(xs, params, spec, c, eps, slope, grads_x)
        w = weights.detach().to(device=dev, dtype=acc).contiguous()
        g = grad.to(dt).contiguous()
        block, warps = _block(hw, dev)
        _mixed_epilogue_bwd[(n * c,)](g, stats.contiguous(), w, table, consts, part_w, part_gamma, part_beta, c, hw,
                                      n * c, K=k, FLAGS=flags, DTYPE=_TL_DTYPES[dt], ACC=_TL_DTYPES[acc],
                                      BLOCK=block, num_warps=warps)
    grads_p = [torch.zeros_like(p) for p in params]
    for j in range(k):
        ai = spec[5 * j + 2]
        if ai >= 0:
            grads_p[ai][:c] += part_gamma[j].sum(0)
            grads_p[ai + 1][:c] += part_beta[j].sum(0)
    return part_w.sum(1), grads_x, grads_p

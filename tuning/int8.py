"""int8 convolutions for x86 CPUs with AVX-512 VNNI (``vpdpbusd``) and for aarch64 CPUs with the Armv8.2
dot-product extension (``sdot``): post-training quantization of agd's exported Relax program, and proof
from the built library's disassembly that those instructions are used.

Scheme (what every quantized ``conv2d`` computes):

* activations: **uint8, asymmetric, per tensor** (``vpdpbusd`` multiplies unsigned bytes of its first
  source with signed bytes of its second): ``q = clip(floor(x / s_a + z + 1/2), 0, 255)`` with
  ``s_a = (hi - lo) / 255``, ``z = round(-lo / s_a)``, where ``[lo, hi]`` is the calibrated range of the
  convolution's input widened to hold 0 (so zero padding is exact: padded positions hold ``z``);
* weights: **int8, symmetric, per output channel**: ``w_q = clip(round(w / s_w[o]), -127, 127)``,
  ``s_w[o] = max|w[o]| / 127``;
* int32 accumulation ``acc[o] = sum q * w_q`` (``vpdpbusd`` does not saturate), then float32
  ``y[o] = s_a s_w[o] (acc[o] - z sum w_q[o])``; the bias ``add`` that follows in the exported graph, the
  instance norms, activations and resampling stay float32.

Calibration (:func:`calibrate`): forward hooks on every ``nn.Conv2d`` / ``nn.ConvTranspose2d`` input of the
float PyTorch model over the calibration images, per tensor; ``method="minmax"`` (default: the running min
and max) or ``"percentile"`` (the ``percentile`` / ``100 - percentile`` quantiles of each batch, averaged).

Layout. ``vpdpbusd`` adds, into each of 16 int32 lanes, a dot product of 4 u8 with 4 s8. The convolution
is therefore computed in blocked layouts whose two innermost axes are exactly that 16 x 4 tile: data
``N C/4 H W 4c`` (u8), weights ``O/16 I/4 KH KW 16o 4i`` (s8, packed once here), output ``N O/16 H W 16o``
(int32). Channels are zero-padded to multiples of 4 (input) and 16 (output).

TVM 0.27 and VNNI. MetaSchedule picks its x86 VNNI rules from the target's LLVM features
(``target_has_feature("avx512vnni")``, true for ``-mcpu=znver5``) and tensorizes with the registered
intrinsic ``dot_16x4_vnni`` (``tvm.s_tir.tensor_intrin.x86``). That intrinsic's implementation calls
``llvm.x86.avx512.vpdpbusd.512`` with ``<16 x i32>`` operands; the LLVM 22 inside the 0.27 wheel declares
them ``<64 x i8>``, so every tensorized kernel fails LLVM verification ("Call parameter type does not match
function signature!"). :func:`register_vnni_intrinsic` registers a correct implementation (same semantics,
byte-vector operands) under agd's own name and, for MetaSchedule, over ``dot_16x4_vnni``.

aarch64 (scheme ``"sdot"``). ``sdot`` multiplies signed bytes by signed bytes (4 int32 lanes of 4-byte dot
products). The activations are quantized exactly as above and then stored as ``q - 128`` (int8); the
compensation becomes ``(z - 128) sum w_q[o]``, so the result is the same integer ``sum q w_q - z sum w_q``
as on x86. The layouts are the same; one 16 x 4 tile is four ``sdot``. It needs ``+dotprod`` (Cortex-A55,
A76 and later, Apple M, Neoverse; not the Cortex-A53 / A72 of a Raspberry Pi 3 / 4), which the int8 build
adds to the target. No MetaSchedule tuning there: the fixed schedule only.

Two ways to schedule the int8 convolution:

* ``schedule="vnni"`` (:func:`schedule_conv_vnni`): a fixed schedule, tensorized with the intrinsic, needing
  no tuning; the kernel is kept out of operator fusion;
* ``schedule=None``: plain TE compute, fused with its epilogue; tune it with :func:`tune_int8` (MetaSchedule's
  VNNI rules tensorize it) and build with :func:`build_int8`.
"""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from agd import machine
from agd.data.samples import sample_images
from agd.io import AgdError
from agd.tuning.build import fused_module, tvm_target
from agd.tuning.export import RelaxProgram, to_relax
from agd.tuning.measure import CompiledModel, rpc_session
from agd.tuning.rewrite import SPACE_TO_DEPTH, SUBPIXEL, replace_modules
from agd.tuning.tune import TuneConfig, import_tensor_intrinsics, tune
from agd.tuning.tvm_env import (
    PyExprMutator,
    T,
    TensorIntrin,
    extract_tasks,
    mutator,
    relax,
    s_tir,
    te,
    tirx,
    transform,
    tvm,
)

INTRIN_NAME = "agd_dot_16x4_u8s8i32_vpdpbusd"
SDOT_INTRIN_NAME = "agd_dot_16x4_s8s8i32_sdot"
SCHEMES = ("vnni", "sdot")  # x86 AVX512-VNNI (u8 activations), aarch64 dotprod (s8 activations)
TVM_VNNI_INTRIN = "dot_16x4_vnni"  # MetaSchedule's x86 "vnni" rule tensorizes with this name
OC_BLOCK, IC_BLOCK = 16, 4  # int32 lanes x bytes per lane of one vpdpbusd


@dataclass(frozen=True)
class ActRange:
    """Calibrated range of one convolution's input (execution order)."""

    lo: float
    hi: float


@dataclass(frozen=True)
class ActQuant:
    scale: float
    zero_point: int  # uint8


def act_quant(r: ActRange) -> ActQuant:
    """uint8 asymmetric parameters of a range (widened to hold 0, so 0.0 is exactly representable)."""
    lo, hi = min(float(r.lo), 0.0), max(float(r.hi), 0.0)
    if hi - lo < 1e-12:
        hi = lo + 1e-12
    scale = (hi - lo) / 255.0
    zp = int(np.clip(np.round(-lo / scale), 0, 255))
    return ActQuant(float(np.float32(scale)), zp)


def quantize_weight(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-output-channel symmetric int8 of an OIHW weight: (int8 weight, float32 scale per channel)."""
    w = np.asarray(w, dtype=np.float64)
    amax = np.abs(w.reshape(w.shape[0], -1)).max(axis=1)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.round(w / scale.astype(np.float64)[:, None, None, None]), -127, 127).astype(np.int8)
    return q, scale


def pack_weight(q: np.ndarray) -> np.ndarray:
    """OIHW int8 → O/16 I/4 KH KW 16o 4i, zero-padded to whole blocks."""
    o, i, kh, kw = q.shape
    op, ip = -(-o // OC_BLOCK) * OC_BLOCK, -(-i // IC_BLOCK) * IC_BLOCK
    full = np.zeros((op, ip, kh, kw), np.int8)
    full[:o, :i] = q
    return np.ascontiguousarray(full.reshape(op // OC_BLOCK, OC_BLOCK, ip // IC_BLOCK, IC_BLOCK, kh, kw)
                                .transpose(0, 2, 4, 5, 1, 3))


# ---------------------------------------------------------------------------------------------- calibration

def _conv_modules(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]


def calibrate(model: nn.Module, images: Iterable[torch.Tensor] | torch.Tensor, method: str = "minmax",
              percentile: float = 99.99) -> list[ActRange]:
    """Per-tensor input range of every ``nn.Conv2d`` / ``nn.ConvTranspose2d`` of the float model, in the
    order they run (the order of the ``conv2d`` calls in its exported Relax graph), over ``images``
    (a batch tensor, or an iterable of batches)."""
    if method not in ("minmax", "percentile"):
        raise AgdError(f"calibration method {method!r}: expected 'minmax' or 'percentile'")
    model = model.eval()
    batches = [images] if isinstance(images, torch.Tensor) else list(images)
    order: list[int] = []  # module index per call, in execution order of the first batch
    stats: dict[int, list[float]] = {}
    counts: dict[int, int] = {}
    mods = _conv_modules(model)
    first = [True]

    def hook(idx: int):
        def f(_m, inputs):
            x = inputs[0].detach().float()
            if method == "minmax":
                lo, hi = float(x.min()), float(x.max())
            else:
                flat = x.flatten()
                if flat.numel() > 1 << 22:  # quantile's input limit: a strided subsample
                    flat = flat[:: -(-flat.numel() // (1 << 22))]
                qs = torch.quantile(flat, torch.tensor([1 - percentile / 100, percentile / 100]))
                lo, hi = float(qs[0]), float(qs[1])
            if first[0]:
                order.append(idx)
            if idx not in stats:
                stats[idx], counts[idx] = [lo, hi], 1
            elif method == "minmax":
                stats[idx] = [min(stats[idx][0], lo), max(stats[idx][1], hi)]
            else:
                n = counts[idx]
                stats[idx] = [(stats[idx][0] * n + lo) / (n + 1), (stats[idx][1] * n + hi) / (n + 1)]
                counts[idx] = n + 1
        return f

    handles = [m.register_forward_pre_hook(hook(i)) for i, m in enumerate(mods)]
    try:
        with torch.no_grad():
            for b in batches:
                model(b)
                first[0] = False
    finally:
        for h in handles:
            h.remove()
    if len(set(order)) != len(order):
        raise AgdError("calibrate: a convolution module runs more than once per forward (shared module); "
                       "per-call ranges are not supported")
    return [ActRange(*stats[i]) for i in order]


# ------------------------------------------------------------------------------------------------- export

def for_int8(model: nn.Module) -> nn.Module:
    """:func:`agd.tuning.rewrite.for_tvm` without the Winograd rewrite (its transforms need float: the int8
    path wants every convolution direct). Sub-pixel and space-to-depth forms each stay one ``conv2d``."""
    return replace_modules(model, (SUBPIXEL, SPACE_TO_DEPTH))


def to_relax_int8(model: nn.Module, example: torch.Tensor) -> RelaxProgram:
    """:func:`agd.tuning.export.to_relax` with every convolution a direct ``conv2d`` (:func:`for_int8`)."""
    return to_relax(model.eval(), example, rewrite=for_int8)


# ------------------------------------------------------------------------------------ VNNI tensor intrinsic

# per scheme: (activation byte type, LLVM intrinsic, int32 lanes it accumulates, calls per 16 x 4 tile)
_TILE_INSTRUCTIONS = {"vnni": ("uint8", "llvm.x86.avx512.vpdpbusd.512", 16, 1),
                      "sdot": ("int8", "llvm.aarch64.neon.sdot", 4, 4)}


def _intrin_funcs(scheme: str = "vnni") -> tuple[Any, Any]:
    """(description, implementation) of a 16 x 4 dot-product tile: ``c[o] += sum_i a[i] b[o, i]``, ``b`` int8,
    ``c`` int32, ``a`` uint8 (``"vnni"``) or int8 (``"sdot"``); ``a``'s 4 bytes are broadcast to every lane
    and ``b``'s bytes read contiguously. ``"vnni"``: one 512-bit ``vpdpbusd`` (LLVM 22 types both byte
    operands ``<64 x i8>``); ``"sdot"``: four ``llvm.aarch64.neon.sdot`` (``<4 x i32>`` accumulators,
    ``<16 x i8>`` operands), one per row of 4 x 4 bytes of ``b``."""
    a_dtype, llvm_intrinsic, lanes, calls = _TILE_INSTRUCTIONS[scheme]
    word_t, acc_t, bytes_t = f"{a_dtype}x4", f"int32x{lanes}", f"int8x{4 * lanes}"
    # the tile's buffers, the same for both functions (TVMScript takes them as annotations)
    a_t = T.Buffer((4,), a_dtype, offset_factor=1)
    b_t = T.Buffer((16, 4), "int8", offset_factor=1)
    c_t = T.Buffer((16,), "int32", offset_factor=1)

    @T.prim_func(s_tir=True)
    def desc(a: a_t, b: b_t, c: c_t) -> None:
        with T.sblock("root"):
            T.reads(c[0:16], a[0:4], b[0:16, 0:4])
            T.writes(c[0:16])
            for o, i in T.grid(16, 4):
                with T.sblock("update"):
                    vo, vi = T.axis.remap("SR", [o, i])
                    c[vo] = c[vo] + T.cast(a[vi], "int32") * T.cast(b[vo, vi], "int32")

    @T.prim_func(s_tir=True)
    def impl(a: a_t, b: b_t, c: c_t) -> None:
        with T.sblock("root"):
            T.reads(c[0:16], a[0:4], b[0:16, 0:4])
            T.writes(c[0:16])
            word = T.reinterpret(a.vload([0], word_t), dtype="int32")
            for j in T.unroll(calls):
                c[T.ramp(j * lanes, 1, lanes)] = T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id(llvm_intrinsic),
                    c.vload([j * lanes], dtype=acc_t),
                    T.reinterpret(T.broadcast(word, lanes), dtype=bytes_t),
                    b.vload([j * lanes, 0], dtype=bytes_t),
                    dtype=acc_t)

    return desc, impl


_REGISTERED: set[str] = set()


def register_vnni_intrinsic(override_tvm: bool = False) -> str:
    """Register agd's VNNI intrinsic (:data:`INTRIN_NAME`); with ``override_tvm`` also over TVM's
    ``dot_16x4_vnni`` (importing ``tvm.s_tir.tensor_intrin`` first, which registers the broken one), so
    that MetaSchedule's x86 VNNI rule and the replay of its records produce code LLVM accepts. Idempotent."""
    desc, impl = _intrin_funcs()
    if INTRIN_NAME not in _REGISTERED:
        TensorIntrin.register(INTRIN_NAME, desc, impl, override=True)
        _REGISTERED.add(INTRIN_NAME)
    if override_tvm and TVM_VNNI_INTRIN not in _REGISTERED:
        import_tensor_intrinsics()
        TensorIntrin.register(TVM_VNNI_INTRIN, desc, impl, override=True)
        _REGISTERED.add(TVM_VNNI_INTRIN)
    return INTRIN_NAME


def register_sdot_intrinsic() -> str:
    """Register agd's aarch64 ``sdot`` tile (:data:`SDOT_INTRIN_NAME`). Idempotent."""
    if SDOT_INTRIN_NAME not in _REGISTERED:
        TensorIntrin.register(SDOT_INTRIN_NAME, *_intrin_funcs("sdot"), override=True)
        _REGISTERED.add(SDOT_INTRIN_NAME)
    return SDOT_INTRIN_NAME


def scheme_for(spec: Any) -> str:
    """The int8 scheme of a target: ``"sdot"`` for aarch64 LLVM targets, ``"vnni"`` for x86 ones."""
    tgt = spec.tvm_target
    if tgt.get("kind") != "llvm":
        raise AgdError(f"int8: target {spec.name} is not a CPU (the int8 path builds VNNI or sdot kernels)")
    return "sdot" if str(tgt.get("mtriple", "")).startswith("aarch64") else "vnni"


# ------------------------------------------------------------------------------------------- TE kernels

def te_quantize_pack(x: Any, scale: float, zp: int, pad: tuple[int, int, int, int], cpad: int,
                     signed: bool = False) -> Any:
    """float NCHW → uint8 N C/4 H W 4c, spatially padded (top, left, bottom, right) with the zero point;
    ``signed``: the same codes minus 128, as int8 (the aarch64 ``sdot`` scheme)."""
    n, c, h, w = (int(v) for v in x.shape)
    pt, pl, pb, pr = pad
    inv = 1.0 / scale

    def f(b, cb, y, xx, ci):
        ch = cb * IC_BLOCK + ci
        yy, xw = y - pt, xx - pl
        inside = tirx.all(ch < c, yy >= 0, yy < h, xw >= 0, xw < w)
        v = x[b, tirx.min(ch, c - 1), tirx.max(tirx.min(yy, h - 1), 0), tirx.max(tirx.min(xw, w - 1), 0)]
        # round half up without a rounding call (which LLVM leaves scalar): clamp, then truncate
        q = v * tirx.const(inv, "float32") + tirx.const(zp + 0.5, "float32")
        q = tirx.max(tirx.min(q, tirx.const(255.0, "float32")), tirx.const(0.0, "float32"))
        if signed:
            return tirx.if_then_else(inside, (q.astype("int32") - 128).astype("int8"), tirx.const(zp - 128, "int8"))
        return tirx.if_then_else(inside, q.astype("uint8"), tirx.const(zp, "uint8"))

    return te.compute((n, cpad // IC_BLOCK, h + pt + pb, w + pl + pr, IC_BLOCK), f, name="quantize_pack")


def te_conv_u8s8(data: Any, wgt: Any, stride: tuple[int, int]) -> Any:
    """int32 N O/16 OH OW 16o = conv(uint8 (or int8) N C/4 H W 4c, int8 O/16 C/4 KH KW 16o 4i), no padding."""
    n, cb, h, w, _ = (int(v) for v in data.shape)
    ob, _, kh, kw, _, _ = (int(v) for v in wgt.shape)
    sh, sw = stride
    oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
    rc = te.reduce_axis((0, cb), "rc")
    ry = te.reduce_axis((0, kh), "ry")
    rx = te.reduce_axis((0, kw), "rx")
    ri = te.reduce_axis((0, IC_BLOCK), "ri")
    return te.compute(
        (n, ob, oh, ow, OC_BLOCK),
        lambda b, o, y, x, oi: te.sum(
            data[b, rc, y * sh + ry, x * sw + rx, ri].astype("int32") * wgt[o, rc, ry, rx, oi, ri].astype("int32"),
            axis=[rc, ry, rx, ri]),
        name="conv_u8s8")


def te_dequantize_unpack(acc: Any, mult: Any, comp: Any, channels: int) -> Any:
    """float32 NCHW ``(acc - comp[o]) * mult[o]`` of int32 N O/16 H W 16o (first ``channels`` channels)."""
    n, _, h, w, _ = (int(v) for v in acc.shape)
    return te.compute((n, channels, h, w), lambda b, o, y, x: (
        acc[b, o // OC_BLOCK, y, x, o % OC_BLOCK] - comp[o]).astype("float32") * mult[o], name="dequantize")


def _pick_tile(extent: int, choices: tuple[int, ...] = (16, 14, 12, 8, 7, 6, 4, 2)) -> int:
    for c in choices:
        if extent % c == 0:
            return c
    return 1


def schedule_conv_vnni(func: Any, scheme: str = "vnni") -> Any:
    """A fixed VNNI schedule of a :func:`te_conv_u8s8` PrimFunc: per (batch, output block, row) in parallel,
    output columns tiled by up to 16, the reduction over input blocks and taps outside, the 16o x 4i tile
    tensorized with :data:`INTRIN_NAME` (``scheme="sdot"``: with :data:`SDOT_INTRIN_NAME`)."""
    intrin = register_sdot_intrinsic() if scheme == "sdot" else register_vnni_intrinsic()
    sch = s_tir.Schedule(func)
    blk = sch.get_sblock("conv_u8s8")
    b, o, y, x, oi, rc, ry, rx, ri = sch.get_loops(blk)
    ow = int(sch.get(x).extent)
    xo, xi = sch.split(x, [None, _pick_tile(ow)])
    sch.reorder(b, o, y, xo, rc, ry, rx, xi, oi, ri)
    sch.parallel(sch.fuse(b, o, y))
    sch.decompose_reduction(blk, rc)
    sch.tensorize(oi, intrin)
    return sch.mod["main"].without_attr("global_symbol").with_attr("op_pattern", 8)  # kOpaque: not fused (its body is already scheduled)


# ------------------------------------------------------------------------------------------ Relax rewrite

@dataclass
class QuantizedConv:
    index: int  # conv2d call in execution order
    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    act: ActQuant
    quantized: bool
    why_not: str = ""


def quantize_program(program: Any, ranges: list[ActRange], schedule: str | None = "vnni",
                     scheme: str = "vnni") -> tuple[Any, list[QuantizedConv]]:
    """The Relax module of ``program`` (an :class:`agd.tuning.export.RelaxProgram`, ``main(input, *params)``)
    with every ``conv2d`` (groups 1, NCHW / OIHW, dilation 1, weight a parameter or constant) as
    quantize-pack → int8 VNNI convolution → dequantize (see the module docstring); ``ranges`` from
    :func:`calibrate`, one per ``conv2d`` call in execution order (grouped ones keep theirs unused).
    ``schedule="vnni"``: the int8 kernels carry :func:`schedule_conv_vnni`; ``None``: unscheduled, for
    MetaSchedule. ``scheme``: ``"vnni"`` (u8 activations) or ``"sdot"`` (s8 activations, aarch64; fixed
    schedule only). Returns (module, per-convolution report). ``main``'s signature and ``program.params``
    are unchanged (the packed int8 weights are constants of the module)."""
    if schedule not in ("vnni", None):
        raise AgdError(f"schedule {schedule!r}: expected 'vnni' or None")
    if scheme not in SCHEMES:
        raise AgdError(f"int8 scheme {scheme!r}: expected one of {', '.join(SCHEMES)}")
    signed = scheme == "sdot"
    offset = 128 if signed else 0  # stored activation code = q - offset
    main = program.mod["main"]
    param_values = {p: v for p, v in zip(list(main.params)[1:], program.params)}
    conv_op = tvm.ir.Op.get("relax.nn.conv2d")
    n_convs = [0]

    # count first: the ranges must line up with the conv2d calls
    def count(expr: Any) -> None:
        if isinstance(expr, relax.Call) and expr.op.same_as(conv_op):
            n_convs[0] += 1

    relax.analysis.post_order_visit(main.body, count)
    if n_convs[0] != len(ranges):
        raise AgdError(f"quantize_program: {len(ranges)} calibrated ranges for {n_convs[0]} conv2d calls "
                       "(export with to_relax_int8, whose convolutions stay direct, and calibrate the same model)")
    report: list[QuantizedConv] = []

    @mutator
    class Quantize(PyExprMutator):
        def visit_call_(self, call: Any) -> Any:  # noqa: N802 (TVM's visitor name)
            call = super().visit_call_(call)
            if not (isinstance(call, relax.Call) and call.op.same_as(conv_op)):
                return call
            idx = len(report)
            a = call.attrs
            data, weight = call.args
            wval = param_values.get(weight) if isinstance(weight, relax.Var) else (
                weight.data if isinstance(weight, relax.Constant) else None)
            wshape = [int(v) for v in weight.ty.shape]
            aq = act_quant(ranges[idx])
            why = ""
            if int(a.groups) != 1:
                why = f"groups {int(a.groups)}"
            elif str(a.data_layout) != "NCHW" or str(a.kernel_layout) != "OIHW" or str(a.out_layout) != "NCHW":
                why = f"layout {a.data_layout}/{a.kernel_layout}"
            elif any(int(d) != 1 for d in a.dilation):
                why = "dilated"
            elif wval is None:
                why = "weight is computed, not a parameter"
            elif str(data.ty.dtype) != "float32":
                why = f"input dtype {data.ty.dtype}"
            report.append(QuantizedConv(idx, wshape[1], wshape[0], (wshape[2], wshape[3]), aq, not why, why))
            if why:
                return call
            w = wval.numpy() if hasattr(wval, "numpy") else np.asarray(wval)
            wq, ws = quantize_weight(w)
            o, i = w.shape[0], w.shape[1]
            op_ = -(-o // OC_BLOCK) * OC_BLOCK
            ip = -(-i // IC_BLOCK) * IC_BLOCK
            mult = np.zeros(op_, np.float32)
            mult[:o] = (np.float64(aq.scale) * ws.astype(np.float64)).astype(np.float32)
            comp = np.zeros(op_, np.int32)
            comp[:o] = (aq.zero_point - offset) * wq.reshape(o, -1).astype(np.int64).sum(axis=1)
            pad = tuple(int(p) for p in a.padding)  # top, left, bottom, right
            bb = self.builder_
            q = bb.emit_te(te_quantize_pack, data, aq.scale, aq.zero_point, pad, ip, signed,
                           primfunc_name_hint="quantize_pack")
            wpacked = pack_weight(wq)
            wc = relax.const(wpacked, "int8")
            stride = (int(a.strides[0]), int(a.strides[1]))
            if schedule == "vnni":
                dph = te.placeholder([int(v) for v in q.ty.shape], "int8" if signed else "uint8", name="data")
                wph = te.placeholder(list(wpacked.shape), "int8", name="wgt")
                out = te_conv_u8s8(dph, wph, stride)
                func = schedule_conv_vnni(te.create_prim_func([dph, wph, out]), scheme)
                gv = bb.add_func(func, "conv_u8s8_vnni" if scheme == "vnni" else "conv_s8s8_sdot")
                acc = bb.emit(relax.call_tir(gv, [q, wc], relax.TensorType(
                    [int(v) for v in out.shape], "int32")))
            else:
                acc = bb.emit_te(te_conv_u8s8, q, wc, stride, primfunc_name_hint="conv_u8s8")
            return bb.emit_te(te_dequantize_unpack, acc, relax.const(mult, "float32"), relax.const(comp, "int32"),
                              o, primfunc_name_hint="dequantize")

    mut = Quantize(program.mod)
    new_main = mut.visit_expr(main)
    mod = mut.builder_.get()
    mod["main"] = new_main
    return mod, report


# ----------------------------------------------------------------------------------- build, tune, inspect

def schedule_injective(func: Any, cores: int) -> Any | None:
    """Parallel + vectorized schedule of a PrimFunc whose blocks are all spatial (quantize-pack, the fused
    dequantize / bias / activation epilogues), every block but the last inlined; None if it has a
    reduction or cannot be scheduled so. TVM's default CPU schedule of these is one thread, scalar: on
    the 128-channel 64 x 64 convolution the quantize-pack alone took 2 ms against the convolution's 1.2."""
    sch = s_tir.Schedule(func)
    try:
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
    except Exception:  # noqa: BLE001 (no root block: a hand-written function)
        return None
    for b in blocks:
        if any(int(iv.iter_type) != 0 for iv in sch.get(b).iter_vars):  # 0: data parallel
            return None
    try:
        for b in blocks[:-1]:
            sch.compute_inline(b)
        b = blocks[-1]
        loops = sch.get_loops(b)
        if not loops:
            return None
        inner = loops[-1]
        ext = int(sch.get(inner).extent)
        if ext > 64:
            loops = list(loops[:-1]) + list(sch.split(inner, [None, 16 if ext % 16 == 0 else 8 if ext % 8 == 0 else 1]))
            inner = loops[-1]
        outer = loops[:-1]
        if outer:
            total = 1
            take = []
            for lp in outer:  # fuse outer loops until there is work for every core several times over
                take.append(lp)
                total *= int(sch.get(lp).extent)
                if total >= 16 * cores:
                    break
            par = sch.fuse(*take) if len(take) > 1 else take[0]
            sch.parallel(par)
        if int(sch.get(inner).extent) > 1:
            sch.vectorize(inner)
    except Exception:  # noqa: BLE001 (a schedule primitive refused: keep TVM's default)
        return None
    return sch.mod["main"].with_attr("tir.is_scheduled", True)


def build_int8(mod: Any, spec: Any, database_dir: str | Path | None = None) -> Any:
    """Build an int8 module for ``spec``: fused (as :func:`agd.tuning.build.fused_module`), the all-spatial
    functions (quantize-pack, dequantize epilogues) scheduled by :func:`schedule_injective`, then with
    ``database_dir`` the MetaSchedule records applied to the rest (TVM's ``dot_16x4_vnni`` replaced
    first: the tensorized records replay it); functions without a record keep TVM's defaults (instance
    norms) or the :func:`schedule_conv_vnni` schedule. MetaSchedule gave the elementwise tasks a single
    trial and marked them done (design space exhausted) at 0.5-2 ms each, hence the fixed schedule."""
    register_vnni_intrinsic(override_tvm=database_dir is not None)
    target = tvm_target(spec)
    fused = fused_module(mod, target)
    cores = int(spec.tvm_target.get("num-cores", 1))
    for gv, func in list(fused.functions.items()):
        if not isinstance(func, tirx.PrimFunc) or func.attrs is not None and (
                "tir.is_scheduled" in func.attrs or "op_pattern" in func.attrs and int(func.attrs["op_pattern"]) == 8):
            continue
        done = schedule_injective(func, cores)
        if done is None:
            done = schedule_channel_reduction(func, cores)
        if done is not None:
            fused[gv] = done
    try:
        if database_dir is not None:
            with target, transform.PassContext(opt_level=3):
                fused = relax.transform.MetaScheduleApplyDatabase(str(database_dir))(fused)
        return tvm.compile(fused, target=target)
    except Exception as e:
        first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise AgdError(f"int8 TVM build for target {spec.name} failed: {first}") from None


def tune_int8(mod: Any, spec: Any, work_dir: str | Path, config: Any = None) -> Any:
    """:func:`agd.tuning.tune.tune` of an unscheduled int8 module (``quantize_program(..., schedule=None)``)
    with TVM's ``dot_16x4_vnni`` replaced by the working implementation, so MetaSchedule's VNNI rule
    (chosen for targets whose LLVM features include avx512vnni) produces buildable candidates."""
    register_vnni_intrinsic(override_tvm=True)
    return tune(mod, spec, work_dir, config or TuneConfig())


DISASSEMBLY_KEYS = ("vpdpbusd", "vpdpbusds", "vpdpwssd", "vpmaddubsw", "vpmaddwd", "vfmadd",
                    "sdot", "udot", "usdot", "smlal", "fmla")


def disassembly_counts(lib_path: str | Path, objdump: str = "objdump") -> dict[str, dict[str, int]]:
    """``objdump -d`` of a shared library: per function symbol, how many ``vpdpbusd`` (VNNI u8 x s8),
    ``vpdpbusds``, ``vpdpwssd``, ``vpmaddubsw`` / ``vpmaddwd`` (the pre-VNNI int8 sequence) and ``vfmadd*``
    (float FMA) instructions it holds, and on aarch64 (``objdump="aarch64-linux-gnu-objdump"``) ``sdot`` /
    ``udot`` / ``usdot`` (dot product), ``smlal`` (the widening multiply-add without it) and ``fmla``
    (float FMA); key ``"total"`` sums them. Symbols without any are left out."""
    try:
        out = subprocess.run([objdump, "-d", "--no-show-raw-insn", str(lib_path)], check=True,
                             capture_output=True, text=True).stdout
    except FileNotFoundError:
        raise AgdError(f"{objdump} not found (apt-get install binutils"
                       + ("-aarch64-linux-gnu" if "aarch64" in objdump else "") + ")") from None
    sym_re = re.compile(r"^[0-9a-f]+ <(.+)>:$")
    counts: dict[str, dict[str, int]] = {}
    total = dict.fromkeys(DISASSEMBLY_KEYS, 0)
    sym = "?"
    for line in out.splitlines():
        m = sym_re.match(line)
        if m:
            sym = m.group(1)
            continue
        parts = line.split("\t")
        if len(parts) < 2:
            continue
        mn = parts[1].split()[0] if parts[1].split() else ""
        key = "vfmadd" if mn.startswith("vfmadd") else "smlal" if mn.startswith("smlal") else mn
        if key in total:
            total[key] += 1
            counts.setdefault(sym, dict.fromkeys(total, 0))[key] += 1
    counts["total"] = total
    return counts


# ------------------------------------------------------------------------------------- whole generators

SCHEME = "int8 u8xs8 VNNI"
SDOT_SCHEME = "int8 s8xs8 aarch64 sdot"


def with_dotprod(spec: Any) -> Any:
    """An aarch64 target spec with ``+dotprod`` among its LLVM attributes (what ``sdot`` needs)."""
    mattr = list(spec.tvm_target.get("mattr", []))
    if "+dotprod" in mattr:
        return spec
    return replace(spec, tvm_target={**spec.tvm_target, "mattr": mattr + ["+dotprod"]})


@dataclass
class Int8Build:
    """A whole generator built with int8 convolutions (:func:`compile_int8`).

    ``executable`` and ``params`` are what :class:`agd.tuning.measure.CompiledModel` takes (``params`` is
    the exported program's float parameter list, unchanged; the packed int8 weights are constants of the
    executable); ``run`` is a numpy → numpy call of it on this machine. ``convs`` reports every ``conv2d``
    of the exported graph (``quantized`` / ``why_not``)."""

    executable: Any
    params: list[Any]
    run: Any  # Callable[[np.ndarray], np.ndarray]: a CompiledModel on this machine's CPU
    convs: list[QuantizedConv]
    calibration_method: str
    calibration_images: int
    tune_report: Any  # agd.tuning.tune.TuneReport or None (trials=0: the fixed VNNI schedule)
    trials: int
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    note: str
    seconds: float = 0.0  # export + calibration + quantization + tuning + build
    scheme: str = "vnni"  # SCHEMES
    spec: Any = None  # the target it was built for (aarch64: with +dotprod added)

    @property
    def n_int8(self) -> int:
        return sum(c.quantized for c in self.convs)

    @property
    def n_float(self) -> int:
        return sum(not c.quantized for c in self.convs)

    def float_reasons(self) -> dict[str, int]:
        """Why convolutions stayed float32: reason → count."""
        out: dict[str, int] = {}
        for c in self.convs:
            if not c.quantized:
                out[c.why_not] = out.get(c.why_not, 0) + 1
        return out


def vnni_reason() -> str | None:
    """Why this machine cannot run the int8 path (None: it can). The kernels are 512-bit ``vpdpbusd``:
    AVX512-VNNI specifically (AVX-VNNI, the 256-bit VEX form, or AMX alone are not enough)."""
    c = machine.cpu()
    if c.has("avx512_vnni"):
        return None
    return (f"int8 needs AVX512-VNNI (512-bit vpdpbusd); this CPU ({c.model}) has "
            + ("AVX-VNNI only (256-bit)" if c.has("avx_vnni") else "no AVX512-VNNI") + "; use fp32")


def _describe_float(convs: list[QuantizedConv]) -> str:
    reasons: dict[str, int] = {}
    for c in convs:
        if not c.quantized:
            key = "depthwise" if c.why_not.startswith("groups") and c.in_channels == 1 else (
                "grouped" if c.why_not.startswith("groups") else c.why_not)
            reasons[key] = reasons.get(key, 0) + 1
    return ", ".join(f"{n} {k}" for k, n in reasons.items())


def _injective_names(mod: Any, spec: Any) -> tuple[list[str], list[str]]:
    """(task names :func:`build_int8` schedules itself, the others) of an unscheduled int8 module."""
    target = tvm_target(spec)
    cores = int(spec.tvm_target.get("num-cores", 1))
    own, rest = [], []
    for t in extract_tasks(fused_module(mod, target), target):
        f = t.dispatched[0]["main"]
        mine = schedule_injective(f, cores) is not None or schedule_channel_reduction(f, cores) is not None
        (own if mine else rest).append(t.task_name)
    return own, rest


def compile_int8(model: nn.Module, example: torch.Tensor, calibration: list[torch.Tensor], spec: Any,
                 database: Path | None = None, trials: int = 0, method: str = "minmax",
                 progress: Any = None) -> Int8Build:
    """Export ``model`` at ``example``'s shape (NCHW float32, agd's [-1, 1] images), calibrate its
    convolution inputs on ``calibration`` (a list of NCHW batches, any spatial size; not the example),
    quantize every eligible ``conv2d`` to uint8 x int8 → int32 on AVX512-VNNI (see the module docstring)
    and build it for ``spec`` (an x86 :class:`agd.tuning.targets.TargetSpec` run on this machine).

    ``trials=0``: the fixed tensorized schedule (:func:`schedule_conv_vnni`) and :func:`schedule_injective`,
    no tuning, ``database`` unused. ``trials > 0``: MetaSchedule (:func:`tune_int8`) into ``database`` for the
    tasks :func:`build_int8` does not schedule itself (the int8 and depthwise convolutions; the elementwise
    functions and instance norms keep :func:`schedule_injective` / :func:`schedule_channel_reduction`),
    then built from its records. What stays float32: grouped / depthwise convolutions (a 9-tap
    per-channel reduction has no 4-byte dot products for ``vpdpbusd``; they are a few percent of the
    arithmetic), and anything :func:`quantize_program` reports. ``progress``: a callable taking a line."""
    t0 = time.perf_counter()
    say = progress or (lambda _s: None)
    scheme = scheme_for(spec)
    session = None
    if scheme == "vnni":
        why = vnni_reason()
        if why:
            raise AgdError(why)
        if spec.rpc is not None or spec.cross_compiler is not None:
            raise AgdError(f"int8: target {spec.name} is not this x86 CPU (the x86 int8 path builds AVX512-VNNI "
                           "kernels for the machine it runs on: use target x86)")
    else:
        if trials > 0:
            raise AgdError(f"int8 on target {spec.name}: no MetaSchedule tuning for the aarch64 sdot kernels "
                           "(they use a fixed schedule); use --trials 0")
        spec = with_dotprod(spec)
        if spec.rpc is not None:
            session = rpc_session(spec)
        elif spec.cross_compiler is not None:
            raise AgdError(f"int8 on target {spec.name}: built here for aarch64, it needs an aarch64 device to "
                           "calibrate-check and time it; give it as rpc://HOST:PORT/KEY")
    if method not in ("minmax", "percentile"):
        raise AgdError(f"calibration method {method!r}: expected 'minmax' or 'percentile'")
    batches = [calibration] if isinstance(calibration, torch.Tensor) else list(calibration or [])
    if not batches or sum(int(b.shape[0]) for b in batches) == 0:
        raise AgdError("int8 calibration needs at least one image (got none); pass a few real images in [-1, 1]")
    for b in batches:
        if b.ndim != 4 or b.shape[1] != example.shape[1]:
            raise AgdError(f"int8 calibration image of shape {tuple(b.shape)}: expected N x {example.shape[1]} x H x W")
    if trials > 0 and database is None:
        raise AgdError("int8 tuning (trials > 0) needs a database folder")
    n_images = sum(int(b.shape[0]) for b in batches)
    model = model.eval()
    ranges = calibrate(model, [b.float() for b in batches], method=method)
    say(f"int8: calibrated {len(ranges)} convolution inputs on {n_images} images ({method})")
    prog = to_relax_int8(model, example.float())
    mod, convs = quantize_program(prog, ranges, schedule="vnni" if trials == 0 else None, scheme=scheme)
    n_q = sum(c.quantized for c in convs)
    say(f"int8: {n_q} of {len(convs)} convolutions int8")
    report = None
    if trials > 0:
        own, rest = _injective_names(mod, spec)
        say(f"int8: tuning {len(rest)} tasks ({len(own)} elementwise / norm tasks keep agd's schedules), {trials} trials")
        report = tune_int8(mod, spec, database, TuneConfig(trials=trials, task_filter=tuple(rest)))
        say(f"int8: tuned in {report.seconds:.0f} s ({report.tasks} tasks, {report.tasks_unscheduled} without a schedule)")
    ex = build_int8(mod, spec, database if trials > 0 else None)
    run = CompiledModel(ex, prog.params, spec, session=session)
    floats = _describe_float(convs)
    note = (f"{SCHEME if scheme == 'vnni' else SDOT_SCHEME}, {n_q} convs int8" + (f" ({floats} left fp32)" if floats else "")
            + f", {method} calibration on {n_images} image{'s' if n_images != 1 else ''}, "
            + (f"{trials} trials" if trials > 0 else f"fixed {scheme} schedule (untuned)"))
    if report is not None and report.tasks_unscheduled:
        note += f", {report.tasks_unscheduled} tasks without a tuned schedule"
    return Int8Build(ex, prog.params, run, convs, method, n_images, report, trials, prog.input_shape,
                     prog.output_shape, note, time.perf_counter() - t0, scheme, spec)


def kernel_profile(ex: Any, params: list[Any], x: np.ndarray, repeats: int = 3) -> list[tuple[str, int, float]]:
    """Where a CPU build's time goes: (kernel symbol, calls per forward, milliseconds per forward), slowest
    first, from the Relax VM's instrumentation (a wall clock around every call; the CPU kernels are
    synchronous), the median over ``repeats`` forwards after one warm-up. Builtins (allocation, shape
    handling) are included under their names."""
    dev = tvm.cpu()
    vm = relax.VirtualMachine(ex, dev)
    inp = tvm.runtime.tensor(np.ascontiguousarray(x, dtype=np.float32), dev)
    ps = [tvm.runtime.tensor(p.numpy(), dev) for p in params]
    vm["main"](inp, *ps)
    runs: list[dict[str, list[float]]] = []
    cur: dict[str, list[float]] = {}
    start: list[float] = []

    def instrument(_func: Any, symbol: str, before: bool, _ret: Any, *_args: Any) -> int:
        if before:
            start.append(time.perf_counter())
        else:
            cur.setdefault(str(symbol), []).append(time.perf_counter() - start.pop())
        return 0  # VMInstrumentReturnKind.NO_OP

    vm.set_instrument(tvm.runtime.convert(instrument) if hasattr(tvm.runtime, "convert") else instrument)
    for _ in range(repeats):
        cur = {}
        vm["main"](inp, *ps)
        runs.append(cur)
    out = []
    for sym in runs[0]:
        totals = sorted(sum(r[sym]) for r in runs)
        out.append((sym, len(runs[0][sym]), 1e3 * totals[len(totals) // 2]))
    return sorted(out, key=lambda t: -t[2])


def _vectorize_reduction(sch: Any, block: Any) -> None:
    """rfactor a per-channel sum (innermost reduction loop a multiple of 16) into 16 vector lanes."""
    loops = sch.get_loops(block)
    inner = loops[-1]
    ext = int(sch.get(inner).extent)
    if ext % 16:
        raise ValueError("row not a multiple of 16")
    _, ki = sch.split(inner, [None, 16])
    rf = sch.rfactor(ki, 1)  # partial sums rf[channel, lane]; ki is the innermost loop, spatial in rf
    sch.vectorize(sch.get_loops(rf)[-1])
    sch.decompose_reduction(rf, sch.get_loops(rf)[1])  # zero-init outside the rows (loop 0: the channels)


def schedule_channel_reduction(func: Any, cores: int) -> Any | None:
    """Parallel schedule of an instance norm's fused PrimFunc (per-channel sums, then the normalization and
    its elementwise epilogue: add, activation, padding): spatial blocks inlined into the last one, whose
    (batch x channel) loop runs in parallel with each channel's sums computed inside it, innermost loop
    vectorized. None if the function is not of that form. TVM's default schedule of these is one thread,
    scalar: on the translation student at 256 x 256 the instance norms took a third of the int8 build's
    time (33 of 91 ms) with it."""
    sch = s_tir.Schedule(func)
    try:
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
    except Exception:  # noqa: BLE001
        return None
    if len(blocks) < 2:
        return None
    kinds = [[int(iv.iter_type) for iv in sch.get(b).iter_vars] for b in blocks]
    reds = [i for i, k in enumerate(kinds) if any(t != 0 for t in k)]
    if not reds or reds[-1] == len(blocks) - 1 or any(kinds[i].count(0) != 1 for i in reds):
        return None  # reductions must each keep one spatial axis (the channel) and not be last
    try:
        for i, b in enumerate(blocks[:-1]):
            if i not in reds:
                sch.compute_inline(b)
        last = blocks[-1]
        loops = sch.get_loops(last)
        if len(loops) < 3:
            return None
        lead = sch.fuse(loops[0], loops[1])  # batch x channel
        for i in reversed(reds):
            sch.compute_at(blocks[i], lead)
        sch.parallel(lead)
        for i in reds:  # the sums: 16 partial sums per channel, vectorized (rfactor), when rows are whole vectors
            try:
                _vectorize_reduction(sch, blocks[i])
            except Exception:  # noqa: BLE001 (scalar sums, still parallel)
                pass
        inner = sch.get_loops(last)[-1]
        ext = int(sch.get(inner).extent)
        vec = 16 if ext % 16 == 0 else 8 if ext % 8 == 0 else 0
        if vec:
            _, vi = sch.split(inner, [None, vec])
            sch.vectorize(vi)
    except Exception:  # noqa: BLE001 (a primitive refused: keep TVM's default)
        return None
    return sch.mod["main"].with_attr("tir.is_scheduled", True)


def sample_calibration(n: int, size: tuple[int, int], seed: int = 0,
                       exclude: tuple[str, ...] = ()) -> list[torch.Tensor]:
    """``n`` calibration images: random ``size`` crops (1 x 3 x H x W, mapped to [-1, 1]) of agd's built-in
    sample photographs (:mod:`agd.data.samples`; those named in ``exclude`` left out), cycling over the
    samples large enough, one crop position per draw from ``seed``."""
    h, w = size
    imgs = [(name, im) for name, im in sample_images() if name not in exclude
            and im.shape[-2] >= h and im.shape[-1] >= w]
    if not imgs:
        raise AgdError(f"int8 calibration: no built-in sample image of at least {h} x {w}")
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(imgs), generator=gen).tolist()
    out = []
    for k in range(n):
        _, im = imgs[order[k % len(imgs)]]
        y = int(torch.randint(0, im.shape[-2] - h + 1, (1,), generator=gen))
        x = int(torch.randint(0, im.shape[-1] - w + 1, (1,), generator=gen))
        out.append((im[None, :3, y:y + h, x:x + w].float() * 2 - 1).contiguous())
    return out

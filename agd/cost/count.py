"""MACs and parameters by tracing real execution.

What runs is what is counted: the model's forward is executed (on the ``meta`` device by default, so a
large model at a large input size costs no memory or time) under a ``TorchDispatchMode`` that sees every
ATen operator actually dispatched.

Convention (the one of the compression literature's tables):
- one MAC is one multiply-accumulate of a convolution, transposed convolution, linear layer, matrix
  multiply or attention product; bias additions, normalisation, activations, pooling, padding, resampling
  and other elementwise work count 0;
- convolutions: ``N * C_out * H_out * W_out * (C_in / groups) * kH * kW`` (so depthwise and grouped
  convolutions are exact, strides and dilation included);
- transposed convolutions, ``transposed="input"`` (default, the true count):
  ``N * C_in * H_in * W_in * (C_out / groups) * kH * kW``, each input pixel scattered through the
  kernel once; ``transposed="output"``: ``N * C_out * H_out * W_out * (C_in / groups) * kH * kW``, as if
  it were a convolution at the output resolution (what GAN Compression and torchprofile report, which
  overstates stride-2 upsampling about 4x);
- parameters: every distinct parameter tensor's element count (buffers such as BatchNorm running
  statistics are not parameters).
"""

from __future__ import annotations

import copy
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from agd.io import AgdError

aten = torch.ops.aten

TRANSPOSED_CONVENTIONS = ("input", "output")


def _prod(xs) -> int:
    return math.prod(int(x) for x in xs)


def _conv_macs(args, out, transposed_convention: str) -> int:
    x, w = args[0], args[1]
    transposed = bool(args[6]) if len(args) > 6 else False
    groups = int(args[8]) if len(args) > 8 else 1
    k = _prod(w.shape[2:])
    if not transposed:
        # weight (C_out, C_in / g, k...)
        return out.numel() * int(w.shape[1]) * k
    # weight (C_in, C_out / g, k...)
    if transposed_convention == "input":
        return x.numel() * int(w.shape[1]) * k
    c_in = int(w.shape[0])
    return out.numel() * (c_in // groups) * k


def _mm_macs(a, b) -> int:
    return _prod(a.shape) * int(b.shape[-1])


def _bmm_macs(a, b) -> int:
    return _prod(a.shape) * int(b.shape[-1])


def _sdpa_macs(q, k, v) -> int:
    # q (..., L, E), k (..., S, E), v (..., S, Ev): QK^T and (softmax) V
    batch = _prod(q.shape[:-2])
    L, E = int(q.shape[-2]), int(q.shape[-1])
    S, Ev = int(k.shape[-2]), int(v.shape[-1])
    return batch * L * S * (E + Ev)


def _first_tensor(out):
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        for o in out:
            if isinstance(o, torch.Tensor):
                return o
    return None


def _op_macs(func, args, kwargs, out, transposed_convention: str) -> int:
    packet = func.overloadpacket
    if packet in (aten.convolution, aten._convolution, aten.convolution_overrideable):
        return _conv_macs(args, _first_tensor(out), transposed_convention)
    if packet in (aten.mm,):
        return _mm_macs(args[0], args[1])
    if packet in (aten.addmm,):
        return _mm_macs(args[1], args[2])
    if packet in (aten.bmm,):
        return _bmm_macs(args[0], args[1])
    if packet in (aten.baddbmm,):
        return _bmm_macs(args[1], args[2])
    sdpa = [getattr(aten, n) for n in ("_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
                                       "_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_cudnn_attention")
            if hasattr(aten, n)]
    if packet in sdpa:
        return _sdpa_macs(args[0], args[1], args[2])
    return 0


@dataclass
class Cost:
    """The result of :func:`count`."""

    macs: int
    params: int
    input_shapes: list[tuple[int, ...]]
    transposed: str
    device: str
    by_module: dict[str, int] = field(default_factory=dict)  # innermost module name -> MACs
    by_op: dict[str, int] = field(default_factory=dict)  # ATen op -> MACs

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9

    def summary(self) -> str:
        return f"{format_macs(self.macs)} MACs, {format_count(self.params)} params at {self.input_shapes}"


_INTERPOLATIONS = {aten.upsample_bicubic2d, aten.upsample_bilinear2d}


def _interpolated_shape(func, args, kwargs) -> torch.Tensor:
    """The (meta) output of a bicubic / bilinear upsampling, by shape only. Interpolation counts no MACs
    (the convention of FlopCounterMode and torchprofile), and on meta tensors torch runs these ops through
    their elementwise decompositions: about a second per call, minutes for a space's MACs tables."""
    x = args[0]
    names = [a.name for a in func._schema.arguments]
    bound = dict(zip(names, args)) | kwargs
    size = bound.get("output_size")
    if not size:
        factors = bound.get("scale_factors") or (bound.get("scales_h"), bound.get("scales_w"))
        size = [int(math.floor(d * f)) for d, f in zip(x.shape[2:], factors)]
    return x.new_empty((*x.shape[:2], *size))


class _Counter(TorchDispatchMode):
    def __init__(self, transposed: str, scope: list[str]) -> None:
        super().__init__()
        self.transposed = transposed
        self.scope = scope
        self.total = 0
        self.by_module: dict[str, int] = defaultdict(int)
        self.by_op: dict[str, int] = defaultdict(int)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.overloadpacket in _INTERPOLATIONS and args and args[0].device.type == "meta":
            return _interpolated_shape(func, args, kwargs)
        out = func(*args, **kwargs)
        n = _op_macs(func, args, kwargs, out, self.transposed)
        if n:
            self.total += n
            self.by_module[self.scope[-1] if self.scope else ""] += n
            self.by_op[str(func.overloadpacket.__name__)] += n
        return out


def count_params(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameter elements (each shared tensor counted once)."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def _as_inputs(inputs, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    if isinstance(inputs, torch.Tensor):
        return (inputs.to(device),)
    if isinstance(inputs, (str, bytes)):
        raise AgdError(f"cost: inputs must be a shape like (1, 3, 256, 256), a tensor or a tuple of them, got {inputs!r}")
    if isinstance(inputs, Sequence) and inputs and all(isinstance(d, int) for d in inputs):
        return (torch.zeros(tuple(inputs), device=device, dtype=dtype),)
    if isinstance(inputs, Sequence) and inputs:
        return tuple(t for x in inputs for t in _as_inputs(x, device, dtype))
    raise AgdError(f"cost: inputs must be a shape like (1, 3, 256, 256), a tensor or a tuple of them, got {inputs!r}")


def count(model: nn.Module, inputs, *, transposed: str = "input", device: str | torch.device = "meta",
          dtype: torch.dtype = torch.float32) -> Cost:
    """Trace one forward pass of ``model`` on ``inputs`` and count MACs and parameters.

    ``inputs``: an input shape such as ``(1, 3, 256, 256)``, a tensor, or a tuple of either for models with
    several inputs. ``device="meta"`` (default) runs a copy of the model on meta tensors (no memory, no
    arithmetic); pass a real device for models whose forward needs real values (data-dependent control
    flow). The model itself is not modified.
    """
    if transposed not in TRANSPOSED_CONVENTIONS:
        raise AgdError(f"cost: transposed convention {transposed!r} is not one of {TRANSPOSED_CONVENTIONS}")
    device = torch.device(device)
    if device.type == "meta":
        m = copy.deepcopy(model).to(device)
    else:
        m = model
    xs = _as_inputs(inputs, device, dtype)
    scope: list[str] = []
    hooks = []

    def enter(name: str):
        def hook(_module, _inputs) -> None:
            scope.append(name)
        return hook

    def leave(_module, _inputs, _output) -> None:
        scope.pop()

    for name, mod in m.named_modules():
        hooks.append(mod.register_forward_pre_hook(enter(name)))
        hooks.append(mod.register_forward_hook(leave))
    counter = _Counter(transposed, scope)
    was_training = m.training
    try:
        m.eval()
        with torch.no_grad(), counter:
            m(*xs)
    except AgdError:
        raise
    except Exception as e:
        if device.type == "meta":
            raise AgdError(f"cost: {type(model).__name__}'s forward failed on meta tensors of shape "
                           f"{[tuple(x.shape) for x in xs]} ({type(e).__name__}: {e}); if it needs real values, "
                           "count on a real device (device='cpu')") from e
        raise
    finally:
        for h in hooks:
            h.remove()
        m.train(was_training)
    return Cost(macs=counter.total, params=count_params(model), input_shapes=[tuple(x.shape) for x in xs],
                transposed=transposed, device=str(device), by_module=dict(counter.by_module), by_op=dict(counter.by_op))


def count_macs(model: nn.Module, inputs, *, transposed: str = "input", device: str | torch.device = "meta") -> int:
    """MACs of one forward pass (see :func:`count` and the module docstring for the convention)."""
    return count(model, inputs, transposed=transposed, device=device).macs


def format_count(n: float, unit: str = "") -> str:
    """1174850000000 -> '1.17 T', 16697987 -> '16.70 M'."""
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.2f} {suffix}{unit}"
    return f"{n:.0f} {unit}".rstrip()


def format_macs(n: float) -> str:
    """MACs in G (or T/M) with two decimals, e.g. '49.55 G'."""
    return format_count(n)
